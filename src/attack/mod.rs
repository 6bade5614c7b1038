//! Adversarial attacks of the paper's Table 7, first- and second-order, in pixel units on
//! inputs in [0, 1], and adversarial accuracy.
//!
//! With gᵢ = ∇ₓℓᵢ and Hᵢ = ∇²ₓℓᵢ per sample (ℓᵢ the cross-entropy of sample i):
//!
//! | attack | Δx |
//! |---|---|
//! | `fgsm` | ε·sign(g) |
//! | `ifgsm` (FGSM-k) | k steps of ε/k·sign(g), each projected onto the L∞ ball of radius ε and \[0,1\] |
//! | `l2_grad` | ε·g/‖g‖ |
//! | `fhsm` | ε·sign(H⁺g), oriented so that gᵀΔx ≥ 0 |
//! | `l2_hess` | ε·H⁺g/‖H⁺g‖ |
//!
//! H⁺g is the minimum-norm Newton direction, exact from Theorem 1 (the paper used inexact
//! Newton-CG; [`NewtonSolver::Cg`] is offered for comparison). A second-order model
//! ℓ(x+Δ) ≈ ℓ + gᵀΔ + ½ΔᵀHΔ is even in its quadratic term, so for FHSM we take whichever of
//! ±sign(H⁺g) increases the first-order term (for L2-HESS gᵀH⁺g ≥ 0 always holds).
//! Samples with g = 0 are left unperturbed. The model always runs in eval mode (BatchNorm uses
//! its running statistics; nothing about the model changes).

use crate::curvature::{input_gradient, input_hessian, input_hvp};
use crate::data::{Batch, Split};
use crate::models::{count_correct, Network};
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use serde::Serialize;

/// How H⁺g is computed for the second-order attacks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NewtonSolver {
    /// Exact minimum-norm solution from Theorem 1 (piecewise-linear nets).
    Exact,
    /// Conjugate gradients on input HVPs from x₀ = 0 (converges to the minimum-norm solution
    /// in exact arithmetic when g ∈ range(H)); stops at `iters` or relative residual `tol`.
    Cg { iters: usize, tol: f64 },
}

/// Which attack.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttackKind {
    Fgsm,
    /// Iterated FGSM with `steps` steps of size ε/steps (the paper's FGSM-10: 10 steps).
    Ifgsm {
        steps: usize,
    },
    L2Grad,
    Fhsm(NewtonSolver),
    L2Hess(NewtonSolver),
}

impl std::str::FromStr for AttackKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "fgsm" => AttackKind::Fgsm,
            "ifgsm" | "fgsm10" | "fgsm-10" => AttackKind::Ifgsm { steps: 10 },
            "l2grad" | "l2_grad" | "l2-grad" => AttackKind::L2Grad,
            "fhsm" => AttackKind::Fhsm(NewtonSolver::Exact),
            "l2hess" | "l2_hess" | "l2-hess" => AttackKind::L2Hess(NewtonSolver::Exact),
            _ => {
                return Err(Error::invalid(
                    "attack",
                    format!("`{s}` (expected fgsm, ifgsm, l2grad, fhsm or l2hess)"),
                ))
            }
        })
    }
}

impl AttackKind {
    pub fn name(&self) -> &'static str {
        match self {
            AttackKind::Fgsm => "fgsm",
            AttackKind::Ifgsm { .. } => "ifgsm",
            AttackKind::L2Grad => "l2grad",
            AttackKind::Fhsm(_) => "fhsm",
            AttackKind::L2Hess(_) => "l2hess",
        }
    }
    /// The name the paper prints: FGSM, FGSM-10 (any step count: FGSM-n), L2 GRAD, FHSM, L2 HESS.
    pub fn paper_name(&self) -> String {
        match self {
            AttackKind::Fgsm => "FGSM".into(),
            AttackKind::Ifgsm { steps } => format!("FGSM-{steps}"),
            AttackKind::L2Grad => "L2 GRAD".into(),
            AttackKind::Fhsm(_) => "FHSM".into(),
            AttackKind::L2Hess(_) => "L2 HESS".into(),
        }
    }
    /// Replaces the Newton solver of a second-order attack.
    pub fn with_solver(self, s: NewtonSolver) -> Self {
        match self {
            AttackKind::Fhsm(_) => AttackKind::Fhsm(s),
            AttackKind::L2Hess(_) => AttackKind::L2Hess(s),
            k => k,
        }
    }
}

fn check_eps(eps: f64) -> Result<()> {
    if !(eps >= 0.0) || !eps.is_finite() {
        return Err(Error::invalid(
            "eps",
            format!("ε = {eps}: ε must be finite and ≥ 0"),
        ));
    }
    Ok(())
}

fn check_batch(model: &dyn Network, batch: &Batch) -> Result<()> {
    model.check_input(&batch.x)?;
    let m = batch
        .x
        .abs()?
        .max_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    if !m.is_finite() {
        return Err(Error::NonFinite("attack inputs".into()));
    }
    Ok(())
}

/// Per-sample L2 norms of a (N, …) tensor, shape (N,).
pub fn l2_norms(t: &Tensor) -> Result<Tensor> {
    Ok(t.sqr()?.flatten_from(1)?.sum(1)?.sqrt()?)
}

/// Per-sample L∞ norms, shape (N,).
pub fn linf_norms(t: &Tensor) -> Result<Tensor> {
    Ok(t.abs()?.flatten_from(1)?.max(1)?)
}

/// Per-sample scalars t (N,) shaped (N, 1, …, 1) to broadcast over samples of `rank`-dim batches.
pub(crate) fn per_sample(t: &Tensor, rank: usize) -> Result<Tensor> {
    let mut shape = vec![1usize; rank.max(1)];
    shape[0] = t.elem_count();
    Ok(t.reshape(shape)?)
}

/// t / ‖t‖ per sample, 0 where ‖t‖ = 0.
fn unit_l2(t: &Tensor) -> Result<Tensor> {
    let norms = l2_norms(t)?;
    let nonzero = norms.gt(0.0)?.to_dtype(t.dtype())?;
    // ‖t‖ where nonzero, 1 elsewhere (so 0/1 = 0, never 0/0 — also in f32).
    let safe = ((&norms * &nonzero)? + nonzero.affine(-1.0, 1.0)?)?;
    Ok(t.broadcast_div(&per_sample(&safe, t.rank())?)?)
}

/// Flips each sample's direction d so that gᵀd ≥ 0.
fn oriented(d: &Tensor, g: &Tensor) -> Result<Tensor> {
    let gd = (g * d)?.flatten_from(1)?.sum(1)?;
    let sign = gd.ge(0.0)?.to_dtype(d.dtype())?.affine(2.0, -1.0)?;
    Ok(d.broadcast_mul(&per_sample(&sign, d.rank())?)?)
}

/// Minimum-norm Newton directions H⁺ᵢgᵢ for a batch, with the gradients g.
/// Cost: Exact: 1 forward + C backward passes; CG: 1 forward + 1 backward + iters × (1
/// forward + 2 backward).
pub fn newton_direction(
    model: &dyn Network,
    batch: &Batch,
    solver: NewtonSolver,
) -> Result<(Tensor, Tensor)> {
    match solver {
        NewtonSolver::Exact => {
            let ih = input_hessian(model, batch)?;
            Ok((ih.newton_direction()?, ih.gradients()?))
        }
        NewtonSolver::Cg { iters, tol } => {
            if iters == 0 || !(tol > 0.0) {
                return Err(Error::invalid("cg", "iters ≥ 1 and tol > 0 required"));
            }
            let (_, g) = input_gradient(model, batch)?;
            Ok((cg_solve(model, batch, &g, iters, tol)?, g))
        }
    }
}

/// Batched CG for Hᵢsᵢ = gᵢ, each sample with its own step sizes, from s = 0.
fn cg_solve(
    model: &dyn Network,
    batch: &Batch,
    g: &Tensor,
    iters: usize,
    tol: f64,
) -> Result<Tensor> {
    let dot = |a: &Tensor, b: &Tensor| -> Result<Tensor> { Ok((a * b)?.flatten_from(1)?.sum(1)?) };
    let mut s = g.zeros_like()?;
    let mut r = g.clone();
    let mut p = g.clone();
    let mut rr = dot(&r, &r)?;
    let g2: Vec<f64> = rr.to_dtype(DType::F64)?.to_vec1()?;
    // Per-sample safe division: a/b where mask, 0 elsewhere (no inf·0 = NaN).
    let safe_div = |a: &Tensor, b: &Tensor, mask: &Tensor| -> Result<Tensor> {
        let one_minus = mask.affine(-1.0, 1.0)?;
        let denom = ((b * mask)? + one_minus)?;
        Ok(((a / denom)? * mask)?)
    };
    for _ in 0..iters {
        let hp = input_hvp(model, batch, &p)?;
        let php = dot(&p, &hp)?;
        // α = rr / pᵀHp where pᵀHp > 0 (curvature along p); the sample is frozen otherwise.
        let ok = php.gt(0.0)?.to_dtype(g.dtype())?;
        let alpha = safe_div(&rr, &php, &ok)?;
        s = (s + p.broadcast_mul(&per_sample(&alpha, g.rank())?)?)?;
        r = (r - hp.broadcast_mul(&per_sample(&alpha, g.rank())?)?)?;
        let rr_new = dot(&r, &r)?;
        let res: Vec<f64> = rr_new.to_dtype(DType::F64)?.to_vec1()?;
        if res
            .iter()
            .zip(&g2)
            .all(|(a, b)| a.sqrt() <= tol * b.sqrt().max(1e-300))
        {
            break;
        }
        let ok_rr = (rr.gt(0.0)?.to_dtype(g.dtype())? * &ok)?;
        let beta = safe_div(&rr_new, &rr, &ok_rr)?;
        p = (&r + p.broadcast_mul(&per_sample(&beta, g.rank())?)?)?;
        rr = rr_new;
    }
    Ok(s)
}

/// The one-shot perturbation Δx **before clipping** (not defined for `ifgsm`, which is
/// iterative: use [`attack`]). Cost: as [`newton_direction`] for the Hessian attacks, else one
/// forward + one backward.
pub fn perturbation(
    model: &dyn Network,
    batch: &Batch,
    kind: AttackKind,
    eps: f64,
) -> Result<Tensor> {
    check_eps(eps)?;
    check_batch(model, batch)?;
    let d = match kind {
        AttackKind::Fgsm => (input_gradient(model, batch)?.1.sign()? * eps)?,
        AttackKind::L2Grad => (unit_l2(&input_gradient(model, batch)?.1)? * eps)?,
        AttackKind::Fhsm(solver) => {
            let (s, g) = newton_direction(model, batch, solver)?;
            (oriented(&s.sign()?, &g)? * eps)?
        }
        AttackKind::L2Hess(solver) => {
            let (s, g) = newton_direction(model, batch, solver)?;
            (oriented(&unit_l2(&s)?, &g)? * eps)?
        }
        AttackKind::Ifgsm { .. } => {
            return Err(Error::invalid(
                "attack",
                "ifgsm is iterative: use attack() for its adversarial inputs",
            ))
        }
    };
    // sign() of a NaN gradient is NaN, and clipping would hide it from the caller
    let m = d
        .abs()?
        .to_dtype(candle_core::DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    if !m.is_finite() {
        return Err(Error::NonFinite(format!("{} perturbation", kind.name())));
    }
    Ok(d)
}

/// Result of one attack at one ε.
#[derive(Clone, Debug)]
pub struct AttackOutcome {
    pub eps: f64,
    /// Adversarial inputs, clipped to [0, 1].
    pub x_adv: Tensor,
    /// Per sample: the model's prediction on x_adv differs from the label.
    pub success: Vec<bool>,
    /// Accuracy on x_adv.
    pub accuracy: f64,
    /// Mean per-sample L∞ and L2 norms of the applied perturbation x_adv − x (after clipping).
    pub linf_mean: f64,
    pub l2_mean: f64,
}

/// Attacks a batch at each ε in `eps_list` (several budgets in one call, like Foolbox).
/// Second-order directions are computed once and scaled per ε. Cost: one direction
/// computation (ifgsm: steps × (1 forward + 1 backward) per ε) + one forward per ε.
pub fn attack(
    model: &dyn Network,
    batch: &Batch,
    kind: AttackKind,
    eps_list: &[f64],
) -> Result<Vec<AttackOutcome>> {
    check_batch(model, batch)?;
    if eps_list.is_empty() {
        return Err(Error::invalid("eps", "give at least one ε"));
    }
    for &e in eps_list {
        check_eps(e)?;
    }
    let x = batch.x.detach();
    // Adversarial inputs stay where inputs live (pixels: [0, 1]); an unbounded box clips nothing.
    let bx = model.input_box();
    let clip = |t: Tensor| -> Result<Tensor> {
        Ok(if bx.is_bounded() {
            t.clamp(bx.lo, bx.hi)?
        } else {
            t
        })
    };
    // Unit direction (ε = 1) for the one-shot attacks.
    let unit = match kind {
        AttackKind::Ifgsm { steps } => {
            if steps == 0 {
                return Err(Error::invalid("steps", "ifgsm needs at least one step"));
            }
            None
        }
        k => Some(perturbation(model, batch, k, 1.0)?),
    };
    let mut out = Vec::with_capacity(eps_list.len());
    for &eps in eps_list {
        let x_adv = match (kind, &unit) {
            (AttackKind::Ifgsm { steps }, _) => {
                let step = eps / steps as f64;
                let lo = (&x - eps)?;
                let hi = (&x + eps)?;
                let mut xa = x.clone();
                for _ in 0..steps {
                    let b = Batch::new(xa.clone(), batch.y.clone())?;
                    let (_, g) = input_gradient(model, &b)?;
                    xa = (xa + (g.sign()? * step)?)?;
                    xa = clip(xa.maximum(&lo)?.minimum(&hi)?)?;
                }
                xa
            }
            (_, Some(u)) => clip((&x + (u * eps)?)?)?,
            (_, None) => return Err(Error::invalid("attack", "no direction")),
        };
        let logits = model.forward(&x_adv)?.detach();
        let pred: Vec<u32> = logits.argmax(1)?.to_vec1()?;
        let ys: Vec<u32> = batch.y.to_vec1()?;
        let success: Vec<bool> = pred.iter().zip(&ys).map(|(p, y)| p != y).collect();
        let correct = count_correct(&logits, &batch.y)?;
        let d = (&x_adv - &x)?;
        let mean = |t: Tensor| -> Result<f64> {
            Ok(t.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?)
        };
        let (linf_mean, l2_mean) = (mean(linf_norms(&d)?)?, mean(l2_norms(&d)?)?);
        if !linf_mean.is_finite() || !l2_mean.is_finite() {
            return Err(Error::NonFinite(format!(
                "{} adversarial inputs",
                kind.name()
            )));
        }
        out.push(AttackOutcome {
            eps,
            linf_mean,
            l2_mean,
            x_adv,
            success,
            accuracy: correct as f64 / batch.len() as f64,
        });
    }
    Ok(out)
}

/// Accuracy under attack for one ε over a split.
#[derive(Clone, Debug, Serialize)]
pub struct EpsReport {
    pub eps: f64,
    pub accuracy: f64,
    pub linf_mean: f64,
    pub l2_mean: f64,
}

/// Clean and adversarial accuracy over a split.
#[derive(Clone, Debug, Serialize)]
pub struct AdversarialReport {
    pub attack: String,
    /// Display name (the paper's: FGSM, FGSM-10, L2 GRAD, FHSM, L2 HESS).
    #[serde(skip)]
    pub label: String,
    pub samples: usize,
    pub clean_accuracy: f64,
    pub per_eps: Vec<EpsReport>,
}

/// How [`adversarial_accuracy`] walks a split. `SplitOpts::default()`: chunks of 500, silent.
#[derive(Clone, Copy)]
pub struct SplitOpts<'a> {
    /// Samples attacked at once (memory grows with it).
    pub chunk: usize,
    pub progress: Option<&'a dyn crate::progress::Progress>,
}

impl Default for SplitOpts<'_> {
    fn default() -> Self {
        SplitOpts {
            chunk: 500,
            progress: None,
        }
    }
}

impl SplitOpts<'_> {
    /// Chunks of `chunk` samples, silent.
    pub fn chunk(chunk: usize) -> Self {
        SplitOpts {
            chunk,
            ..Default::default()
        }
    }
}

/// Adversarial accuracy of `model` on `split` under `kind` for each ε, chunk by chunk
/// (bounded memory). Cost: as [`attack`] per chunk.
pub fn adversarial_accuracy(
    model: &dyn Network,
    split: &Split,
    kind: AttackKind,
    eps_list: &[f64],
    opts: &SplitOpts<'_>,
) -> Result<AdversarialReport> {
    let (chunk, progress) = (opts.chunk, opts.progress);
    if split.is_empty() {
        return Err(Error::Empty("split has no samples".into()));
    }
    let bar = crate::progress::Task::start(progress, "attack", split.len());
    let mut clean = 0usize;
    let mut acc = vec![(0.0, 0.0, 0.0); eps_list.len()];
    for r in split.chunks(chunk)? {
        let b = split.range_batch(r.start, r.len(), model.runtime())?;
        clean += count_correct(&model.forward(&b.x)?, &b.y)?;
        for (i, o) in attack(model, &b, kind, eps_list)?.into_iter().enumerate() {
            let w = r.len() as f64;
            acc[i].0 += o.accuracy * w;
            acc[i].1 += o.linf_mean * w;
            acc[i].2 += o.l2_mean * w;
        }
        bar.advance(r.len());
    }
    let n = split.len() as f64;
    Ok(AdversarialReport {
        attack: kind.name().into(),
        label: kind.paper_name(),
        samples: split.len(),
        clean_accuracy: clean as f64 / n,
        per_eps: eps_list
            .iter()
            .zip(acc)
            .map(|(&eps, (a, l, l2))| EpsReport {
                eps,
                accuracy: a / n,
                linf_mean: l / n,
                l2_mean: l2 / n,
            })
            .collect(),
    })
}

/// A batch hook for robust training: replaces the first ⌈ratio·|b|⌉ samples of each batch by
/// adversarial versions made with the current model (eval mode) at budget `eps`.
pub fn adversarial_batch(
    model: &dyn Network,
    batch: Batch,
    kind: AttackKind,
    eps: f64,
    ratio: f64,
) -> Result<Batch> {
    if !(0.0..=1.0).contains(&ratio) {
        return Err(Error::invalid(
            "adv ratio",
            format!("{ratio} not in [0, 1]"),
        ));
    }
    let n = batch.len();
    let k = ((ratio * n as f64).ceil() as usize).min(n);
    if k == 0 || eps == 0.0 {
        return Ok(batch);
    }
    let head = batch.narrow(0, k)?;
    let adv = attack(model, &head, kind, &[eps])?.remove(0).x_adv;
    let x = if k < n {
        Tensor::cat(&[adv, batch.x.narrow(0, k, n - k)?], 0)?
    } else {
        adv
    };
    Batch::new(x.detach(), batch.y)
}

/// Per-sample cosine between the CG Newton direction and the exact minimum-norm one (how far
/// the paper's inexact Newton-CG is from H⁺g). Cost: as both solvers.
pub fn cg_cosine_to_exact(
    model: &dyn Network,
    batch: &Batch,
    iters: usize,
    tol: f64,
) -> Result<Vec<f64>> {
    let (exact, _) = newton_direction(model, batch, NewtonSolver::Exact)?;
    let (cg, _) = newton_direction(model, batch, NewtonSolver::Cg { iters, tol })?;
    let dot: Vec<f64> = (&exact * &cg)?
        .flatten_from(1)?
        .sum(1)?
        .to_dtype(DType::F64)?
        .to_vec1()?;
    let ne: Vec<f64> = l2_norms(&exact)?.to_dtype(DType::F64)?.to_vec1()?;
    let nc: Vec<f64> = l2_norms(&cg)?.to_dtype(DType::F64)?.to_vec1()?;
    Ok(dot
        .iter()
        .zip(ne.iter().zip(&nc))
        .map(|(d, (a, b))| if a * b > 0.0 { d / (a * b) } else { f64::NAN })
        .collect())
}

/// One attack at one budget (see [`attack`]).
fn one(model: &dyn Network, batch: &Batch, kind: AttackKind, eps: f64) -> Result<AttackOutcome> {
    attack(model, batch, kind, &[eps])?
        .pop()
        .ok_or_else(|| Error::invalid("attack", "no outcome"))
}

/// FGSM, x + ε·sign(∇ₓJ), clipped to the network's input box. Cost: 1 forward + 1 backward.
pub fn fgsm(model: &dyn Network, batch: &Batch, eps: f64) -> Result<AttackOutcome> {
    one(model, batch, AttackKind::Fgsm, eps)
}
/// Iterated FGSM: `steps` steps of ε/steps, projected on the L∞ ball and the box (the paper's
/// FGSM-10: 10 steps). Cost: `steps` × (1 forward + 1 backward).
pub fn ifgsm(model: &dyn Network, batch: &Batch, eps: f64, steps: usize) -> Result<AttackOutcome> {
    one(model, batch, AttackKind::Ifgsm { steps }, eps)
}
/// L2 GRAD, x + ε·g/‖g‖ per sample. Cost: 1 forward + 1 backward.
pub fn l2grad(model: &dyn Network, batch: &Batch, eps: f64) -> Result<AttackOutcome> {
    one(model, batch, AttackKind::L2Grad, eps)
}
/// FHSM, x + ε·sign(H⁻¹g) per sample (exact Newton step by Theorem 1). Cost: see
/// [`newton_direction`].
pub fn fhsm(model: &dyn Network, batch: &Batch, eps: f64) -> Result<AttackOutcome> {
    one(model, batch, AttackKind::Fhsm(NewtonSolver::Exact), eps)
}
/// L2 HESS, x + ε·H⁻¹g/‖H⁻¹g‖ per sample (exact Newton step by Theorem 1).
pub fn l2hess(model: &dyn Network, batch: &Batch, eps: f64) -> Result<AttackOutcome> {
    one(model, batch, AttackKind::L2Hess(NewtonSolver::Exact), eps)
}

/// Clean and adversarial accuracy on a split for each ε (chunks of 500, silent): the
/// accuracy-vs-ε curve. See [`adversarial_accuracy`] for the options.
pub fn accuracy_curve(
    model: &dyn Network,
    split: &Split,
    kind: AttackKind,
    eps_list: &[f64],
) -> Result<AdversarialReport> {
    adversarial_accuracy(model, split, kind, eps_list, &SplitOpts::default())
}
