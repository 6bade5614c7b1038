//! Trace of the Hessian: Hutchinson (PyHessian's stopping rule), Hutch++, and the exact trace
//! and diagonal for piecewise-linear networks.

use super::hvp::ParamSelection;
use super::operator::{CurvatureOperator, DataSource};
use super::vector::ParamVec;
use crate::models::{layers, Network};
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use serde::Serialize;

/// Which stochastic estimator (JSON: "hutchinson", "hutch++").
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum TraceMethod {
    /// vᵀHv averaged over Rademacher probes v; stops when the running mean changes by less
    /// than `tol` relative (PyHessian's rule) or at `max_iter` probes.
    #[serde(rename = "hutchinson")]
    Hutchinson,
    /// Hutch++ (Meyer, Musco, Musco & Woodruff 2021) with `max_iter` matvecs (rounded down to
    /// a multiple of 3): exact trace of a rank-m/3 sketch plus Hutchinson on the rest.
    #[serde(rename = "hutch++")]
    HutchPlusPlus,
}

/// Options of [`trace`].
#[derive(Clone, Debug)]
pub struct TraceOpts {
    pub method: TraceMethod,
    pub max_iter: usize,
    pub tol: f64,
    /// Hutchinson: never stop before this many probes (PyHessian: 1).
    pub min_iter: usize,
    pub seed: u64,
}

impl TraceOpts {
    /// Checks the options alone (call it before a long computation that precedes the trace).
    pub fn validate(&self) -> Result<()> {
        if self.max_iter == 0 || !(self.tol > 0.0) {
            return Err(Error::invalid(
                "trace options",
                "max_iter ≥ 1 and tol > 0 required",
            ));
        }
        Ok(())
    }
}

impl Default for TraceOpts {
    fn default() -> Self {
        TraceOpts {
            method: TraceMethod::Hutchinson,
            max_iter: 100,
            tol: 1e-3,
            min_iter: 1,
            seed: 0,
        }
    }
}

/// A trace estimate with its standard error.
#[derive(Clone, Debug, Serialize)]
pub struct TraceResult {
    pub trace: f64,
    /// Standard error of the estimate (sample std / √probes for the stochastic part).
    pub std_error: f64,
    pub probes: usize,
    pub hvps: usize,
    pub method: TraceMethod,
}

/// Estimates tr(H). Cost: `probes` HVPs (Hutchinson) or `max_iter` HVPs (Hutch++).
pub fn trace(op: &dyn CurvatureOperator, opts: &TraceOpts) -> Result<TraceResult> {
    opts.validate()?;
    let r = trace_unchecked(op, opts)?;
    if !r.trace.is_finite() || !r.std_error.is_finite() {
        return Err(Error::NonFinite("trace estimate".into()));
    }
    Ok(r)
}

fn trace_unchecked(op: &dyn CurvatureOperator, opts: &TraceOpts) -> Result<TraceResult> {
    let start = op.matvecs();
    match opts.method {
        TraceMethod::Hutchinson => {
            let mut samples: Vec<f64> = vec![];
            let mut mean_prev: Option<f64> = None;
            for i in 0..opts.max_iter {
                let v = ParamVec::rademacher_like(op.like(), opts.seed.wrapping_add(i as u64))?;
                let s = op.apply(&v)?.dot(&v)?;
                if !s.is_finite() {
                    return Err(Error::NonFinite("vᵀHv".into()));
                }
                samples.push(s);
                let mean = samples.iter().sum::<f64>() / samples.len() as f64;
                if let Some(p) = mean_prev {
                    if samples.len() >= opts.min_iter
                        && (mean - p).abs() / (p.abs() + 1e-6) < opts.tol
                    {
                        break;
                    }
                }
                mean_prev = Some(mean);
            }
            let (mean, se) = mean_se(&samples);
            Ok(TraceResult {
                trace: mean,
                std_error: se,
                probes: samples.len(),
                hvps: op.matvecs() - start,
                method: TraceMethod::Hutchinson,
            })
        }
        TraceMethod::HutchPlusPlus => {
            let m = (opts.max_iter / 3).max(1);
            if m * 2 >= op.dim() {
                return Err(Error::invalid(
                    "max_iter",
                    "Hutch++ sketch would exceed the dimension; use Hutchinson or fewer matvecs",
                ));
            }
            // Q = orth(A S)
            let mut q: Vec<ParamVec> = vec![];
            for i in 0..m {
                let s = ParamVec::rademacher_like(op.like(), opts.seed.wrapping_add(i as u64))?;
                let y = op.apply(&s)?.orthogonalize(&q)?;
                if let Ok((u, _)) = y.normalized() {
                    q.push(u);
                }
            }
            let mut t_low = 0.0;
            for u in &q {
                t_low += op.apply(u)?.dot(u)?;
            }
            let mut samples = vec![];
            for i in 0..m {
                let g = ParamVec::rademacher_like(
                    op.like(),
                    opts.seed.wrapping_add(1_000_003 + i as u64),
                )?;
                let gp = g.orthogonalize(&q)?;
                samples.push(op.apply(&gp)?.orthogonalize(&q)?.dot(&gp)?);
            }
            let (mean, se) = mean_se(&samples);
            Ok(TraceResult {
                trace: t_low + mean,
                std_error: se,
                probes: m,
                hvps: op.matvecs() - start,
                method: TraceMethod::HutchPlusPlus,
            })
        }
    }
}

fn mean_se(s: &[f64]) -> (f64, f64) {
    let n = s.len() as f64;
    let mean = s.iter().sum::<f64>() / n;
    if s.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Exact trace and diagonal of the Hessian.
#[derive(Clone, Debug)]
pub struct TraceExact {
    pub trace: f64,
    /// diag(H), one tensor per selected parameter.
    pub diagonal: ParamVec,
    /// tr of each parameter's block.
    pub per_parameter: Vec<(String, f64)>,
    pub samples: usize,
    pub backward_passes: usize,
}

/// A^{1/2} of the symmetric PSD matrix A = diag p − ppᵀ (negative rounding clamped to 0).
pub(crate) fn softmax_core_sqrt(p: &[f64]) -> nalgebra::DMatrix<f64> {
    let c = p.len();
    let a = nalgebra::DMatrix::from_fn(c, c, |i, j| if i == j { p[i] } else { 0.0 } - p[i] * p[j]);
    let e = nalgebra::SymmetricEigen::new(a);
    let d = nalgebra::DMatrix::from_diagonal(&e.eigenvalues.map(|l| l.max(0.0).sqrt()));
    &e.eigenvectors * d * e.eigenvectors.transpose()
}

/// The exact Hessian diagonal and trace of the mean cross-entropy for piecewise-linear nets
/// (ReLU, max-pool, BN in eval mode, linear layers).
///
/// Math: with a fixed activation pattern each logit is linear in every single weight, so
/// ∂²zᵢ/∂θⱼ² = 0 and diag(H) = diag(GGN) = (1/N) Σᵢ diag(Jᵢᵀ Aᵢ Jᵢ) with Jᵢ = ∂zᵢ/∂θ and
/// Aᵢ = diag pᵢ − pᵢpᵢᵀ = SᵢSᵢ (Sᵢ = Aᵢ^{1/2}). Hence diag(H) = (1/N) Σᵢ Σ_c (∇θ (Sᵢzᵢ)_c)².
/// Refused with [`Error::Unsupported`] for nets where this does not hold (tanh).
///
/// Cost: per sample, 1 forward and C backward passes (batch size 1).
pub fn trace_exact(
    model: &dyn Network,
    source: &DataSource,
    sel: Option<&ParamSelection>,
) -> Result<TraceExact> {
    crate::models::network::require_piecewise_linear(model, "the exact trace", "")?;
    let sel = match sel {
        Some(s) => s.clone(),
        None => ParamSelection::all(model),
    };
    let ts = sel.tensors(model);
    let mut diag = ParamVec::zeros_like(&ts.iter().map(|t| t.detach()).collect::<Vec<_>>())?;
    let c = model.num_classes();
    let n = source.len();
    let mut passes = 0;
    source.for_each(model.runtime(), |b, _| {
        for i in 0..b.len() {
            let xi = b.x.narrow(0, i, 1)?;
            let z = model.forward(&xi)?; // (1, C)
            let p: Vec<f64> = layers::softmax(&z.detach())?
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1()?;
            let s = softmax_core_sqrt(&p);
            let st =
                Tensor::from_vec(s.as_slice().to_vec(), (c, c), z.device())?.to_dtype(z.dtype())?;
            let zs = z.matmul(&st)?; // column c = Σ_c' z_c' S[c', c] = (S z)_c (S symmetric)
            let mut sq: Vec<Tensor> = ts
                .iter()
                .map(|t| t.zeros_like().map(|z| z.detach()))
                .collect::<candle_core::Result<_>>()?;
            for k in 0..c {
                let gs = crate::autodiff::grads(
                    &zs.narrow(1, k, 1)?.sum_all()?,
                    &ts,
                    crate::autodiff::Graph::Drop,
                )?;
                passes += 1;
                for (j, g) in gs.iter().enumerate() {
                    sq[j] = (&sq[j] + g.sqr()?)?;
                }
            }
            diag = diag.axpy(1.0 / n as f64, &ParamVec(sq))?;
        }
        Ok(())
    })?;
    let mut per = vec![];
    let mut total = 0.0;
    for (name, d) in sel.names.iter().zip(&diag.0) {
        let t = d.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        total += t;
        per.push((name.clone(), t));
    }
    Ok(TraceExact {
        trace: total,
        diagonal: diag,
        per_parameter: per,
        samples: n,
        backward_passes: passes,
    })
}
