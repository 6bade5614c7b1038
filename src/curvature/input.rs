//! The Hessian of the loss w.r.t. the **input** (the paper's Theorem 1).
//!
//! For a net that is piecewise linear in its input (ReLU, max-pool, BN in eval mode, linear
//! layers) with softmax cross-entropy, per sample
//!
//!   ∇ₓℓ = Jᵀ(p − e_y),   ∇²ₓℓ = Jᵀ (diag p − ppᵀ) J,   J = ∂logits/∂x  (C×d),
//!
//! so the input Hessian is PSD almost everywhere with rank ≤ C − 1. Everything is computed
//! exactly from J through C×C matrices: with A = diag p − ppᵀ = S² and K = JJᵀ, the nonzero
//! eigenvalues of H are those of M = S K S = Y diag(μ) Yᵀ, its eigenvectors are
//! uₖ = Jᵀ S yₖ/√μₖ, and the minimum-norm Newton direction is
//! H⁺g = Jᵀ S Y diag(1/μ²) Yᵀ S K (p − e_y).

use super::hvp::input_hvp;
use super::trace::softmax_core_sqrt;
use crate::autodiff::Graph;
use crate::data::Batch;
use crate::models::{layers, Network};
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var};
use nalgebra::{DMatrix, DVector};
use serde::Serialize;

/// Per-sample input-Hessian facts.
#[derive(Clone, Debug, Serialize)]
pub struct InputHessianSample {
    /// Cross-entropy of the sample.
    pub loss: f64,
    /// ‖∇ₓℓ‖₂.
    pub grad_norm: f64,
    /// λ₁^x, the largest eigenvalue of ∇²ₓℓ.
    pub lambda1: f64,
    /// The C eigenvalues of M (descending): the nonzero spectrum of H plus zeros.
    pub eigenvalues: Vec<f64>,
    /// Numerical rank (eigenvalues above rank_tol·λ₁).
    pub rank: usize,
    /// Smallest eigenvalue of H (≥ −rounding for a PSD Hessian): min(min μ, 0 if d > C).
    pub min_eigenvalue: f64,
}

struct SampleFactors {
    j: DMatrix<f64>, // C×d
    s: DMatrix<f64>, // C×C, A^{1/2}
    mu: Vec<f64>,    // eigenvalues of M, descending
    y: DMatrix<f64>, // eigenvectors of M (columns, matching mu)
    r: DVector<f64>, // p − e_y
    rank: usize,
}

/// The exact input Hessians of a batch (one per sample), from Theorem 1.
pub struct InputHessian {
    pub samples: Vec<InputHessianSample>,
    factors: Vec<SampleFactors>,
    x_shape: Vec<usize>,
    like: Tensor,
}

impl InputHessian {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
    fn d(&self) -> usize {
        self.x_shape[1..].iter().product()
    }
    /// The dense d×d input Hessian Jᵀ(diag p − ppᵀ)J of sample `i` (for checks; O(d²) memory).
    pub fn dense(&self, i: usize) -> Result<DMatrix<f64>> {
        let f = self.factor(i)?;
        let b = &f.s * &f.j;
        Ok(b.transpose() * b)
    }
    /// ∂logits/∂x of sample `i` (C×d).
    pub fn jacobian(&self, i: usize) -> Result<DMatrix<f64>> {
        Ok(self.factor(i)?.j.clone())
    }
    fn factor(&self, i: usize) -> Result<&SampleFactors> {
        self.factors
            .get(i)
            .ok_or_else(|| Error::invalid("sample", format!("{i} ≥ {}", self.factors.len())))
    }
    /// Unit eigenvectors of sample `i`'s input Hessian for its nonzero eigenvalues (d×rank),
    /// columns ordered like `samples[i].eigenvalues`.
    pub fn eigenvectors(&self, i: usize) -> Result<DMatrix<f64>> {
        let f = self.factor(i)?;
        let mut u = DMatrix::zeros(self.d(), f.rank);
        for k in 0..f.rank {
            let col = f.j.transpose() * (&f.s * f.y.column(k)) / f.mu[k].sqrt();
            u.set_column(k, &col);
        }
        Ok(u)
    }
    /// Per-sample input gradients gᵢ = Jᵢᵀ(pᵢ − e_yᵢ), shaped like the inputs.
    pub fn gradients(&self) -> Result<Tensor> {
        self.per_sample_tensor(|f| f.j.transpose() * &f.r)
    }
    /// Per-sample minimum-norm Newton directions H⁺ᵢgᵢ (exact), shaped like the inputs.
    /// Samples with zero gradient or zero Hessian get 0.
    pub fn newton_direction(&self) -> Result<Tensor> {
        self.per_sample_tensor(|f| {
            let k = &f.j * f.j.transpose();
            let t = &f.s * (k * &f.r); // S K r
            let mut c = DVector::zeros(f.s.nrows());
            for kk in 0..f.rank {
                let yk = f.y.column(kk);
                c += yk * (yk.dot(&t) / (f.mu[kk] * f.mu[kk]));
            }
            f.j.transpose() * (&f.s * c)
        })
    }
    fn per_sample_tensor(&self, f: impl Fn(&SampleFactors) -> DVector<f64>) -> Result<Tensor> {
        let mut out = Vec::with_capacity(self.factors.len() * self.d());
        for fa in &self.factors {
            out.extend(f(fa).iter().copied());
        }
        Ok(
            Tensor::from_vec(out, self.x_shape.clone(), &candle_core::Device::Cpu)?
                .to_dtype(self.like.dtype())?
                .to_device(self.like.device())?,
        )
    }
    /// Mean and max of λ₁^x and mean ‖∇ₓℓ‖ over the samples.
    /// Sample `i`'s input-Hessian eigenvectors (columns, d × rank, by descending eigenvalue)
    /// as an `ndarray` array.
    pub fn eigenvectors_ndarray(&self, i: usize) -> Result<ndarray::Array2<f64>> {
        let u = self.eigenvectors(i)?;
        Ok(ndarray::Array2::from_shape_fn(
            (u.nrows(), u.ncols()),
            |(r, c)| u[(r, c)],
        ))
    }
    /// Per-sample λ₁^x, ‖∇ₓℓ‖ and loss as `ndarray` arrays, in sample order.
    pub fn per_sample_ndarray(&self) -> [ndarray::Array1<f64>; 3] {
        let col = |f: fn(&InputHessianSample) -> f64| self.samples.iter().map(f).collect();
        [col(|s| s.lambda1), col(|s| s.grad_norm), col(|s| s.loss)]
    }
    pub fn summary(&self) -> InputHessianSummary {
        InputHessianSummary::from_samples(&self.samples)
    }
}

/// Batch-level summary (the `input-hessian` CLI's keys).
#[derive(Clone, Debug, Serialize)]
pub struct InputHessianSummary {
    pub samples: usize,
    pub lambda1_x_mean: f64,
    pub lambda1_x_max: f64,
    pub grad_norm_mean: f64,
    pub rank_max: usize,
    pub min_eigenvalue_min: f64,
}

impl InputHessianSummary {
    /// Means and extremes over per-sample results (e.g. several batches' samples together).
    pub fn from_samples(samples: &[InputHessianSample]) -> Self {
        let n = samples.len().max(1) as f64;
        InputHessianSummary {
            samples: samples.len(),
            lambda1_x_mean: samples.iter().map(|s| s.lambda1).sum::<f64>() / n,
            lambda1_x_max: samples
                .iter()
                .map(|s| s.lambda1)
                .fold(f64::NEG_INFINITY, f64::max),
            grad_norm_mean: samples.iter().map(|s| s.grad_norm).sum::<f64>() / n,
            rank_max: samples.iter().map(|s| s.rank).max().unwrap_or(0),
            min_eigenvalue_min: samples
                .iter()
                .map(|s| s.min_eigenvalue)
                .fold(f64::INFINITY, f64::min),
        }
    }
}

/// [`input_hessian`] over a whole split in chunks of `chunk` samples (bounded memory); the
/// per-sample results in file order. `on_chunk(n)` is called after each chunk (progress).
pub fn input_hessian_split(
    model: &dyn Network,
    split: &crate::data::Split,
    chunk: usize,
    mut on_chunk: impl FnMut(usize),
) -> Result<Vec<InputHessianSample>> {
    let mut out = Vec::with_capacity(split.len());
    for r in split.chunks(chunk)? {
        let b = split.range_batch(r.start, r.len(), model.runtime())?;
        out.extend(input_hessian(model, &b)?.samples);
        on_chunk(r.len());
    }
    Ok(out)
}

/// Per-sample logit Jacobians ∂zᵢ/∂xᵢ (C×d each), probabilities and losses, eval mode.
/// Cost: 1 forward + C backward passes (samples do not interact in eval mode, so one backward
/// of Σᵢ zᵢ,c gives row c of every Jᵢ).
pub fn logit_jacobians(
    model: &dyn Network,
    batch: &Batch,
) -> Result<(Vec<DMatrix<f64>>, Vec<Vec<f64>>)> {
    let x = Var::from_tensor(&batch.x.detach())?;
    let z = model.forward(x.as_tensor())?;
    let (n, c) = z.dims2()?;
    let d: usize = batch.x.dims()[1..].iter().product();
    let p: Vec<Vec<f64>> = layers::softmax(&z.detach())?
        .to_dtype(DType::F64)?
        .to_vec2()?;
    let mut jac = vec![DMatrix::<f64>::zeros(c, d); n];
    for k in 0..c {
        let g = crate::autodiff::grads(
            &z.narrow(1, k, 1)?.sum_all()?,
            &[x.as_tensor()],
            Graph::Drop,
        )?
        .remove(0)
        .to_dtype(DType::F64)?
        .reshape((n, d))?
        .to_vec2::<f64>()?;
        for (i, row) in g.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                jac[i][(k, j)] = v;
            }
        }
    }
    Ok((jac, p))
}

/// The exact per-sample input Hessians of a batch by Theorem 1 (see the module docs): λ₁^x,
/// ‖∇ₓℓ‖, full nonzero spectrum, rank, smallest eigenvalue, eigenvectors and H⁺g.
///
/// Refused with [`Error::Unsupported`] for nets that are not piecewise linear (tanh), where
/// the formula does not hold; use [`input_lambda1_power`] there.
/// Cost: 1 forward + C backward passes, then O(C²d + C³) per sample on the host.
pub fn input_hessian(model: &dyn Network, batch: &Batch) -> Result<InputHessian> {
    crate::models::network::require_piecewise_linear(
        model,
        "Theorem 1 (the exact input Hessian)",
        "; use input_lambda1_power",
    )?;
    model.check_input(&batch.x)?;
    let (jac, probs) = logit_jacobians(model, batch)?;
    let labels: Vec<u32> = batch.y.to_vec1()?;
    let c = model.num_classes();
    let d: usize = batch.x.dims()[1..].iter().product();
    let rank_tol = if model.dtype() == DType::F64 {
        1e-10
    } else {
        1e-5
    };
    let mut samples = vec![];
    let mut factors = vec![];
    for ((j, p), &y) in jac.into_iter().zip(probs).zip(&labels) {
        let s = softmax_core_sqrt(&p);
        let k = &j * j.transpose();
        let m = &s * k * &s;
        let m = (&m + m.transpose()) * 0.5;
        let (mu, yv) = super::eigen::sorted_symmetric_eigen(m, true);
        let top = mu[0].max(0.0);
        let rank = mu
            .iter()
            .filter(|&&m| m > rank_tol * top && top > 0.0)
            .count();
        let mut r = DVector::from_vec(p.clone());
        r[y as usize] -= 1.0;
        let g = j.transpose() * &r;
        let loss = -(p[y as usize].max(1e-300)).ln();
        let min_mu = *mu.last().unwrap_or(&0.0);
        samples.push(InputHessianSample {
            loss,
            grad_norm: g.norm(),
            lambda1: top,
            eigenvalues: mu.clone(),
            rank,
            min_eigenvalue: if d > c { min_mu.min(0.0) } else { min_mu },
        });
        factors.push(SampleFactors {
            j,
            s,
            mu,
            y: yv,
            r,
            rank,
        });
    }
    Ok(InputHessian {
        samples,
        factors,
        x_shape: batch.x.dims().to_vec(),
        like: batch.x.clone(),
    })
}

/// Per-sample λ₁^x by power iteration on [`input_hvp`], valid for any net (tanh too).
/// Stops when every sample's Rayleigh quotient changes by < tol relative, or at max_iter.
/// Cost: ≤ max_iter × (1 forward + 2 backward passes) on the batch.
pub fn input_lambda1_power(
    model: &dyn Network,
    batch: &Batch,
    max_iter: usize,
    tol: f64,
    seed: u64,
) -> Result<Vec<f64>> {
    if max_iter == 0 || !(tol > 0.0) {
        return Err(Error::invalid(
            "power options",
            "max_iter ≥ 1 and tol > 0 required",
        ));
    }
    let n = batch.len();
    let mut v = super::vector::ParamVec::randn_like(std::slice::from_ref(&batch.x), seed)?
        .0
        .remove(0);
    let norms = |t: &Tensor| -> Result<Tensor> { Ok(t.sqr()?.flatten_from(1)?.sum(1)?.sqrt()?) };
    let rank = batch.x.rank();
    let bshape = |t: &Tensor| crate::attack::per_sample(t, rank);
    v = v.broadcast_div(&bshape(&norms(&v)?)?)?;
    let mut prev: Option<Vec<f64>> = None;
    let mut lam = vec![0.0; n];
    for _ in 0..max_iter {
        let hv = input_hvp(model, batch, &v)?;
        lam = (&hv * &v)?
            .flatten_from(1)?
            .sum(1)?
            .to_dtype(DType::F64)?
            .to_vec1()?;
        let hn = norms(&hv)?;
        let safe = hn.clamp(1e-30, f64::INFINITY)?;
        v = hv.broadcast_div(&bshape(&safe)?)?;
        if let Some(p) = &prev {
            if lam
                .iter()
                .zip(p)
                .all(|(a, b)| (a - b).abs() / (b.abs() + 1e-6) < tol)
            {
                break;
            }
        }
        prev = Some(lam.clone());
    }
    Ok(lam)
}
