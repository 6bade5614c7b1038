//! Top eigenpairs: power iteration with deflation (PyHessian's algorithm and defaults) and
//! Lanczos with full re-orthogonalisation.

use super::operator::CurvatureOperator;
use super::vector::ParamVec;
use crate::{Error, Result};
use candle_core::Tensor;
use serde::Serialize;

/// Options of [`top_eigen`] (PyHessian's defaults: 100 iterations, relative tolerance 1e-3).
#[derive(Clone, Debug)]
pub struct PowerOpts {
    pub max_iter: usize,
    /// Stop when |λₜ − λₜ₋₁| / (|λₜ₋₁| + 1e-6) < tol (PyHessian's rule).
    pub tol: f64,
    pub seed: u64,
    /// A pair counts as converged when its relative residual ‖Hv − λv‖/|λ| ≤ this. PyHessian's
    /// rule can stop long before (the eigenvalue settles quadratically faster than the
    /// vector), so it is reported separately ([`EigenResult::rule_met`]).
    pub residual_tol: f64,
}

impl Default for PowerOpts {
    fn default() -> Self {
        PowerOpts {
            max_iter: 100,
            tol: 1e-3,
            seed: 0,
            residual_tol: 1e-2,
        }
    }
}

/// Options of [`lanczos`].
#[derive(Clone, Debug)]
pub struct LanczosOpts {
    /// Largest Krylov dimension (capped at the operator's dimension).
    pub max_iter: usize,
    /// Stop when each wanted Ritz pair has residual bound β·|yₘ| ≤ tol·|θ|.
    pub tol: f64,
    pub seed: u64,
}

impl Default for LanczosOpts {
    fn default() -> Self {
        LanczosOpts {
            max_iter: 100,
            tol: 1e-3,
            seed: 0,
        }
    }
}

/// Eigenpairs, sorted by eigenvalue (descending). Serialises without the vectors and names.
#[derive(Clone, Debug, Serialize)]
pub struct EigenResult {
    pub eigenvalues: Vec<f64>,
    /// Unit eigenvectors, one tensor per parameter (names in `names`).
    #[serde(skip)]
    pub eigenvectors: Vec<ParamVec>,
    /// Relative residuals ‖Hv − λv‖ / |λ| (measured with one extra HVP per pair for power
    /// iteration; the Lanczos bound β|yₘ|/|θ| for Lanczos).
    pub residuals: Vec<f64>,
    /// `residuals[i] ≤ residual_tol`: the pair is an eigenpair to that accuracy.
    pub converged: Vec<bool>,
    /// The relative-residual tolerance `converged` refers to.
    pub residual_tol: f64,
    /// Whether the solver's own stopping rule was met for each pair (power iteration:
    /// PyHessian's relative change of λ; Lanczos: the residual bound, as `converged`).
    pub rule_met: Vec<bool>,
    /// Iterations used per eigenpair (power) or Krylov dimension (Lanczos).
    pub iterations: Vec<usize>,
    /// Total operator applications.
    pub hvps: usize,
    #[serde(skip)]
    pub names: Vec<String>,
}

impl EigenResult {
    /// Eigenvector `k` as (parameter name, tensor) pairs.
    pub fn named_eigenvector(&self, k: usize) -> Result<Vec<(String, Tensor)>> {
        let v = self.eigenvectors.get(k).ok_or_else(|| {
            Error::invalid(
                "k",
                format!("only {} eigenvectors", self.eigenvectors.len()),
            )
        })?;
        Ok(self
            .names
            .iter()
            .cloned()
            .zip(v.0.iter().cloned())
            .collect())
    }
    fn sort_desc(mut self) -> Self {
        let mut idx: Vec<usize> = (0..self.eigenvalues.len()).collect();
        idx.sort_by(|&a, &b| self.eigenvalues[b].total_cmp(&self.eigenvalues[a]));
        let pick = |v: &Vec<f64>| idx.iter().map(|&i| v[i]).collect::<Vec<_>>();
        self.eigenvalues = pick(&self.eigenvalues);
        self.residuals = pick(&self.residuals);
        self.converged = idx.iter().map(|&i| self.converged[i]).collect();
        self.rule_met = idx.iter().map(|&i| self.rule_met[i]).collect();
        self.iterations = idx.iter().map(|&i| self.iterations[i]).collect();
        self.eigenvectors = idx.iter().map(|&i| self.eigenvectors[i].clone()).collect();
        self
    }
}

fn check_k(op: &dyn CurvatureOperator, k: usize) -> Result<()> {
    if k == 0 {
        return Err(Error::invalid("k", "must be ≥ 1"));
    }
    if k > op.dim() {
        return Err(Error::invalid(
            "k",
            format!("{k} exceeds the dimension {}", op.dim()),
        ));
    }
    Ok(())
}

/// The k eigenvalues of largest magnitude by power iteration with deflation: for each pair,
/// v ← Hv/‖Hv‖ with v Gram–Schmidt-orthogonalised against the pairs already found at every
/// step (PyHessian), λ = vᵀHv, until λ changes by less than `tol` (relative). Returns them
/// sorted descending, with the true relative residuals ‖Hv−λv‖/|λ| (H not deflated, so an
/// inaccurate earlier pair shows in the later ones) and `converged` from those residuals.
///
/// Cost: at most k·(max_iter + 1) HVPs.
pub fn top_eigen(op: &dyn CurvatureOperator, k: usize, opts: &PowerOpts) -> Result<EigenResult> {
    check_k(op, k)?;
    if opts.max_iter == 0 || !(opts.tol > 0.0) || !(opts.residual_tol > 0.0) {
        return Err(Error::invalid(
            "power options",
            "max_iter ≥ 1, tol > 0 and residual_tol > 0 required",
        ));
    }
    let start = op.matvecs();
    let mut vals = vec![];
    let mut vecs: Vec<ParamVec> = vec![];
    let (mut res, mut conv, mut iters) = (vec![], vec![], vec![]);
    for j in 0..k {
        let mut v = ParamVec::randn_like(op.like(), opts.seed.wrapping_add(j as u64))?
            .orthogonalize(&vecs)?
            .normalized()?
            .0;
        let mut lambda: Option<f64> = None;
        let mut done = false;
        let mut it = 0;
        let mut hv = op.apply(&v)?;
        while it < opts.max_iter {
            it += 1;
            let hvo = hv.orthogonalize(&vecs)?;
            let l = v.dot(&hvo)?;
            if !l.is_finite() {
                return Err(Error::NonFinite("Rayleigh quotient".into()));
            }
            if let Some(p) = lambda {
                if (l - p).abs() / (p.abs() + 1e-6) < opts.tol {
                    lambda = Some(l);
                    done = true;
                    break;
                }
            }
            lambda = Some(l);
            v = match hvo.normalized() {
                Ok((u, _)) => u,
                Err(_) => break, // Hv = 0: v is in the null space, λ = 0
            };
            hv = op.apply(&v)?;
        }
        let l = lambda.unwrap_or(0.0);
        // hv = H v for the current v.
        let r = hv.axpy(-l, &v)?.norm()? / l.abs().max(1e-300);
        if !r.is_finite() {
            return Err(Error::NonFinite("eigen residual".into()));
        }
        vals.push(l);
        vecs.push(v);
        res.push(r);
        conv.push(done);
        iters.push(it);
    }
    Ok(EigenResult {
        eigenvalues: vals,
        eigenvectors: vecs,
        converged: res.iter().map(|&r| r <= opts.residual_tol).collect(),
        residuals: res,
        residual_tol: opts.residual_tol,
        rule_met: conv,
        iterations: iters,
        hvps: op.matvecs() - start,
        names: op.names(),
    }
    .sort_desc())
}

/// A Lanczos run: orthonormal basis Q, tridiagonal T = tridiag(β, α, β), and the norm of the
/// last residual vector β_m (T's Ritz pair (θ, y) has ‖Hx − θx‖ = β_m·|y_m| for x = Qy).
pub struct Krylov {
    pub alphas: Vec<f64>,
    pub betas: Vec<f64>,
    pub beta_last: f64,
    pub basis: Vec<ParamVec>,
}

/// Eigen-decomposition of the tridiagonal T (ascending): (values, column-major vectors).
pub fn tridiag_eigen(alphas: &[f64], betas: &[f64]) -> (Vec<f64>, nalgebra::DMatrix<f64>) {
    let m = alphas.len();
    let mut t = nalgebra::DMatrix::<f64>::zeros(m, m);
    for i in 0..m {
        t[(i, i)] = alphas[i];
        if i + 1 < m {
            t[(i, i + 1)] = betas[i];
            t[(i + 1, i)] = betas[i];
        }
    }
    sorted_symmetric_eigen(t, false)
}

/// Eigen-decomposition of a small dense symmetric matrix with the eigenvalues sorted
/// (descending or ascending) and the eigenvector columns in the same order (nalgebra returns
/// them unsorted). Cost: O(n³).
pub(crate) fn sorted_symmetric_eigen(
    m: nalgebra::DMatrix<f64>,
    descending: bool,
) -> (Vec<f64>, nalgebra::DMatrix<f64>) {
    let n = m.nrows();
    let e = nalgebra::SymmetricEigen::new(m);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| e.eigenvalues[a].total_cmp(&e.eigenvalues[b]));
    if descending {
        idx.reverse();
    }
    let vals = idx.iter().map(|&i| e.eigenvalues[i]).collect();
    let vecs = nalgebra::DMatrix::from_fn(n, n, |r, c| e.eigenvectors[(r, idx[c])]);
    (vals, vecs)
}

/// Runs Lanczos with full re-orthogonalisation from `start` for up to `steps` steps. After
/// each step `stop(α, β, β_next)` may end the run; it also ends at an invariant subspace
/// (β_next ≈ 0, where T's eigenvalues are exact). Cost: one HVP per step.
pub fn lanczos_run(
    op: &dyn CurvatureOperator,
    start: &ParamVec,
    steps: usize,
    mut stop: impl FnMut(&[f64], &[f64], f64) -> bool,
) -> Result<Krylov> {
    let steps = steps.min(op.dim());
    let (q0, _) = start.normalized()?;
    let mut basis = vec![q0];
    let (mut alphas, mut betas) = (vec![], vec![]);
    let mut beta_last = 0.0;
    for j in 0..steps {
        let mut w = op.apply(&basis[j])?;
        let a = w.dot(&basis[j])?;
        if !a.is_finite() {
            return Err(Error::NonFinite("Lanczos α".into()));
        }
        alphas.push(a);
        // Full re-orthogonalisation (twice) against every basis vector.
        w = w.orthogonalize(&basis)?;
        let b = w.norm()?;
        beta_last = b;
        let scale = alphas
            .iter()
            .fold(0.0f64, |m, x| m.max(x.abs()))
            .max(1e-300);
        if stop(&alphas, &betas, b) || j + 1 == steps || b <= 1e-10 * scale {
            break;
        }
        betas.push(b);
        basis.push(w.scale(1.0 / b)?);
    }
    Ok(Krylov {
        alphas,
        betas,
        beta_last,
        basis,
    })
}

/// Relative residual bounds β_m·|y_m,i|/|θᵢ| of the top-k Ritz pairs (descending θ).
fn top_ritz_bounds(alphas: &[f64], betas: &[f64], b: f64, k: usize) -> Vec<(f64, f64)> {
    let (vals, vecs) = tridiag_eigen(alphas, betas);
    let m = alphas.len();
    (0..m)
        .rev()
        .take(k)
        .map(|c| {
            (
                vals[c],
                (b * vecs[(m - 1, c)]).abs() / vals[c].abs().max(1e-300),
            )
        })
        .collect()
}

/// The k largest (algebraic) eigenvalues by Lanczos with full re-orthogonalisation; the
/// tridiagonal eigenproblem is solved by nalgebra. Stops when every wanted Ritz pair has
/// residual bound β_m·|y_m| ≤ tol·|θ| (so ‖Hx−θx‖/|θ| ≤ tol), or at `max_iter`. Ritz
/// vectors are x = Q·y.
///
/// Cost: one HVP per Krylov step (typically far fewer than power iteration).
pub fn lanczos(op: &dyn CurvatureOperator, k: usize, opts: &LanczosOpts) -> Result<EigenResult> {
    check_k(op, k)?;
    if opts.max_iter < k || !(opts.tol > 0.0) {
        return Err(Error::invalid(
            "lanczos options",
            "max_iter ≥ k and tol > 0 required",
        ));
    }
    let start_count = op.matvecs();
    let v0 = ParamVec::randn_like(op.like(), opts.seed)?;
    let kry = lanczos_run(op, &v0, opts.max_iter, |a, b, bn| {
        a.len() >= k
            && top_ritz_bounds(a, b, bn, k)
                .iter()
                .all(|&(_, r)| r <= opts.tol)
    })?;
    let m = kry.alphas.len();
    let (vals, vecs) = tridiag_eigen(&kry.alphas, &kry.betas);
    let mut out = EigenResult {
        eigenvalues: vec![],
        eigenvectors: vec![],
        residuals: vec![],
        converged: vec![],
        residual_tol: opts.tol,
        rule_met: vec![],
        iterations: vec![],
        hvps: 0,
        names: op.names(),
    };
    for c in (0..m).rev().take(k) {
        let theta = vals[c];
        let bound = (kry.beta_last * vecs[(m - 1, c)]).abs() / theta.abs().max(1e-300);
        let mut x = kry.basis[0].scale(vecs[(0, c)])?;
        for i in 1..m {
            x = x.axpy(vecs[(i, c)], &kry.basis[i])?;
        }
        if !theta.is_finite() || !bound.is_finite() {
            return Err(Error::NonFinite("Lanczos Ritz value".into()));
        }
        out.eigenvalues.push(theta);
        out.eigenvectors.push(x.normalized()?.0);
        out.residuals.push(bound);
        out.converged.push(bound <= opts.tol);
        out.iterations.push(m);
    }
    // Lanczos stops on the residual bound itself
    out.rule_met = out.converged.clone();
    out.hvps = op.matvecs() - start_count;
    Ok(out)
}
