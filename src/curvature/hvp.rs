//! Gradients and exact Hessian-vector products by double backward, w.r.t. parameters and
//! inputs, plus a finite-difference HVP for cross-checks.
//!
//! Conventions (PyHessian's): parameter-space quantities use the **mean** cross-entropy over
//! the batch; input-space quantities use the **sum** over samples, so that each sample's input
//! gradient and input Hessian are its own (the input Hessian of a batch is block diagonal).
//! The model always runs in eval mode here.

use super::vector::ParamVec;
use crate::autodiff::{self, on_pool, Graph};
use crate::data::Batch;
use crate::models::{layers, Network};
use crate::ops::Projections;
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var};

/// Which parameters a curvature computation is over: indices into
/// [`crate::models::Network::params`].
#[derive(Clone, Debug)]
pub struct ParamSelection {
    pub indices: Vec<usize>,
    pub names: Vec<String>,
}

impl ParamSelection {
    /// Every trainable parameter (BN running statistics are buffers and never included).
    pub fn all(model: &dyn Network) -> Self {
        ParamSelection {
            indices: (0..model.params().len()).collect(),
            names: model.params().iter().map(|(n, _)| n.clone()).collect(),
        }
    }
    /// The parameters whose names start with one of `prefixes` (e.g. `["fc1."]` for the fc1
    /// block). An error when nothing matches.
    pub fn with_prefixes(model: &dyn Network, prefixes: &[&str]) -> Result<Self> {
        if prefixes.is_empty() {
            return Ok(Self::all(model));
        }
        let mut s = ParamSelection {
            indices: vec![],
            names: vec![],
        };
        for (i, (n, _)) in model.params().iter().enumerate() {
            if prefixes.iter().any(|p| n.starts_with(p)) {
                s.indices.push(i);
                s.names.push(n.clone());
            }
        }
        if s.indices.is_empty() {
            return Err(Error::invalid(
                "parameter filter",
                format!("no parameter name starts with any of {prefixes:?}"),
            ));
        }
        Ok(s)
    }
    /// The selected parameter tensors (current values, with autograd identity).
    pub fn tensors(&self, model: &dyn Network) -> Vec<Tensor> {
        self.indices
            .iter()
            .map(|&i| model.params()[i].1.as_tensor().clone())
            .collect()
    }
    /// Number of scalars selected.
    pub fn dim(&self, model: &dyn Network) -> usize {
        self.indices
            .iter()
            .map(|&i| model.params()[i].1.elem_count())
            .sum()
    }
}

/// Mean-loss gradient with its autograd graph kept (for a following second backward).
/// Returns (loss value, gradient tensors). Cost: 1 forward + 1 backward; memory: the graph of
/// both passes, until the gradients are dropped.
pub fn gradient_with_graph(
    model: &dyn Network,
    batch: &Batch,
    sel: &ParamSelection,
) -> Result<(f64, Vec<Tensor>)> {
    on_pool(model.device(), || {
        let (loss, lv) = finite_loss(model, batch)?;
        Ok((
            lv,
            autodiff::grads(&loss, &sel.tensors(model), Graph::Keep)?,
        ))
    })
}

/// Mean-loss gradient ∇θ (1/N)Σᵢ ℓᵢ (eval mode), detached. Cost: 1 forward + 1 backward.
pub fn gradient(
    model: &dyn Network,
    batch: &Batch,
    sel: &ParamSelection,
) -> Result<(f64, ParamVec)> {
    on_pool(model.device(), || {
        let (loss, lv) = finite_loss(model, batch)?;
        Ok((
            lv,
            ParamVec(autodiff::grads(&loss, &sel.tensors(model), Graph::Drop)?),
        ))
    })
}

/// The mean loss (graph node) and its value; an error when it is NaN or infinite.
fn finite_loss(model: &dyn Network, batch: &Batch) -> Result<(Tensor, f64)> {
    let loss = model.loss(batch)?;
    let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !lv.is_finite() {
        return Err(Error::NonFinite("loss".into()));
    }
    Ok((loss, lv))
}

/// ⟨g, v⟩ = Σᵢ Σ gᵢ⊙vᵢ as a graph node (g keeps its graph, v is a constant). For the
/// gradients in `proj`, placeholders of a projected first backward ([`projected_grads`];
/// `Projections::default()` for none), ⟨gᵢ, vᵢ⟩ is the node s the placeholder was made from,
/// so neither this sum nor the second backward forms a weight-sized product (for M1's fc1,
/// 1.2 M values: the product here, and in the backward pass v times the upstream scalar and
/// the sum of its product with v).
pub(crate) fn projected_dot(grads: &[Tensor], v: &ParamVec, proj: &Projections) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (g, vi) in grads.iter().zip(&v.0) {
        let t = match proj.dot(g) {
            Some(s) => s.clone(),
            None => (g * vi.detach())?.sum_all()?,
        };
        acc = Some(match acc {
            None => t,
            Some(a) => (a + t)?,
        });
    }
    acc.ok_or_else(|| Error::Empty("no parameters selected".into()))
}

/// H·v from a gradient that still carries its graph: ∇θ ⟨g, v⟩. Cost: 1 backward (through
/// the first backward's graph).
pub fn hvp_from_graph(
    model: &dyn Network,
    grads: &[Tensor],
    sel: &ParamSelection,
    v: &ParamVec,
) -> Result<ParamVec> {
    hvp_projected(model, grads, sel, v, &Projections::default())
}

/// [`hvp_from_graph`] of a projected first backward's gradients (see [`projected_dot`]).
fn hvp_projected(
    model: &dyn Network,
    grads: &[Tensor],
    sel: &ParamSelection,
    v: &ParamVec,
    proj: &Projections,
) -> Result<ParamVec> {
    check_shapes(grads, v)?;
    on_pool(model.device(), || {
        Ok(ParamVec(autodiff::grads(
            &projected_dot(grads, v, proj)?,
            &sel.tensors(model),
            Graph::Drop,
        )?))
    })
}

pub(crate) fn check_shapes(like: &[Tensor], v: &ParamVec) -> Result<()> {
    if like.len() != v.0.len() || like.iter().zip(&v.0).any(|(a, b)| a.dims() != b.dims()) {
        return Err(Error::Shape(
            "vector does not match the selected parameters".into(),
        ));
    }
    Ok(())
}

/// H v by double backward with a graph built for this v alone: the first backward's weight
/// gradients of the crate's convolution and linear kernels are projected onto v
/// ([`projected_grads`]). Cost: 1 forward + 2 backward passes, the first without weight
/// gradients and the second without their second derivatives.
pub(crate) fn fresh_hvp(
    model: &dyn Network,
    batch: &Batch,
    sel: &ParamSelection,
    v: &ParamVec,
) -> Result<ParamVec> {
    let params = sel.tensors(model);
    check_shapes(&params, v)?;
    on_pool(model.device(), || {
        let (loss, _) = finite_loss(model, batch)?;
        let (g, proj) = projected_grads(&loss, &params, v)?;
        hvp_projected(model, &g, sel, v, &proj)
    })
}

/// The first backward of a fresh HVP (or of a fresh Gauss–Newton product's Jᵀu):
/// ∂loss/∂params with the graph kept, where the crate's convolution and linear kernels
/// project their weight gradients onto v (`ops::with_directions`): only ⟨g, v⟩ is right, and
/// so its derivatives, one weight-gradient op per layer fewer. Directions are set for this
/// backward pass only, not around the user's forward. `HESSIAN_LAB_PROJECTED_HVP=0` (read
/// once) builds the plain gradient graph instead, for A/B measurements. Also returns the
/// placeholders made, for [`projected_dot`].
pub(crate) fn projected_grads(
    loss: &Tensor,
    params: &[Tensor],
    v: &ParamVec,
) -> Result<(Vec<Tensor>, Projections)> {
    static PLAIN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let plain =
        *PLAIN.get_or_init(|| std::env::var("HESSIAN_LAB_PROJECTED_HVP").is_ok_and(|s| s == "0"));
    let dirs: Vec<(&Tensor, &Tensor)> = if plain {
        vec![]
    } else {
        params.iter().zip(&v.0).collect()
    };
    let (g, proj) =
        crate::ops::with_directions(&dirs, || autodiff::grads(loss, params, Graph::Keep));
    Ok((g?, proj))
}

/// Exact Hessian-vector product H v, H = ∇²θ (1/N)Σᵢ ℓᵢ over the selected parameters, by
/// double backward (eval mode). Cost: 1 forward + 2 backward passes (for many v on one
/// batch, [`super::HessianOperator`] keeps the first backward's graph: 1 backward each).
pub fn hvp_selected(
    model: &dyn Network,
    batch: &Batch,
    sel: &ParamSelection,
    v: &ParamVec,
) -> Result<ParamVec> {
    let hv = fresh_hvp(model, batch, sel, v)?;
    // Checked here, for the caller; the eigen, trace and density solvers, which run this in
    // their loops through the operators, check the scalars they build from it instead.
    hv.check_finite("Hessian-vector product")?;
    Ok(hv)
}

/// Exact H v over all parameters (see [`hvp_selected`]). Cost: 1 forward + 2 backward.
pub fn hvp(model: &dyn Network, batch: &Batch, v: &ParamVec) -> Result<ParamVec> {
    hvp_selected(model, batch, &ParamSelection::all(model), v)
}

/// Central finite difference of gradients, (∇L(θ+εv) − ∇L(θ−εv)) / 2ε, with
/// ε = ∛(machine ε) · max(1, ‖θ‖∞) / ‖v‖ unless `eps` is given. Parameters are restored
/// afterwards, also on error. Cost: 2 forward + 2 backward passes.
/// Accuracy: O(ε²) away from ReLU kinks; use f64 for checks (f32 gives ~1e-2 at best).
pub fn hvp_fd(
    model: &dyn Network,
    batch: &Batch,
    sel: &ParamSelection,
    v: &ParamVec,
    eps: Option<f64>,
) -> Result<ParamVec> {
    let theta: Vec<Tensor> = sel
        .tensors(model)
        .iter()
        .map(|t| t.detach().copy())
        .collect::<candle_core::Result<_>>()?;
    let vn = v.norm()?;
    if vn == 0.0 {
        return ParamVec::zeros_like(&theta);
    }
    let eps = match eps {
        Some(e) if e > 0.0 && e.is_finite() => e,
        Some(e) => {
            return Err(Error::invalid(
                "eps",
                format!("{e} must be positive and finite"),
            ))
        }
        None => default_step(model, &theta)? / vn,
    };
    let at = |alpha: f64| {
        shifted(model, sel, &theta, v, alpha, || {
            Ok(gradient(model, batch, sel)?.1)
        })
    };
    let gp = at(eps)?;
    let gm = at(-eps)?;
    gp.axpy(-1.0, &gm)?.scale(0.5 / eps)
}

/// ∛(machine ε)·max(1, ‖θ‖∞): the central-difference step that balances truncation (O(h²))
/// and round-off (O(ε/h)) for a unit direction.
fn default_step(model: &dyn Network, theta: &[Tensor]) -> Result<f64> {
    let meps = if model.dtype() == DType::F64 {
        f64::EPSILON
    } else {
        f32::EPSILON as f64
    };
    let mut tmax = 1.0f64;
    for t in theta {
        tmax = tmax.max(
            t.abs()?
                .max_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?,
        );
    }
    Ok(meps.cbrt() * tmax)
}

/// Runs `f` with the selected parameters set to θ + α·v (θ: their values `theta`), and puts θ
/// back afterwards, also when `f` fails.
fn shifted<T>(
    model: &dyn Network,
    sel: &ParamSelection,
    theta: &[Tensor],
    v: &ParamVec,
    alpha: f64,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let set = |alpha: f64| -> Result<()> {
        for ((&i, t0), vi) in sel.indices.iter().zip(theta).zip(&v.0) {
            let t = if alpha == 0.0 {
                t0.clone()
            } else {
                (t0 + (vi * alpha)?)?
            };
            model.params()[i].1.set(&t)?;
        }
        Ok(())
    };
    let out = set(alpha).and_then(|_| f());
    set(0.0)?;
    out
}

/// The outcome of [`check_hvp`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct HvpCheck {
    /// |gᵀv − (L(θ+hv) − L(θ−hv))/2h| / max of the two: the gradient against the loss.
    pub grad_rel_err: f64,
    /// min over the step ladder of ‖Hv − FD‖ / max(‖Hv‖, ‖FD‖), FD the central difference of
    /// gradients along v.
    pub hvp_rel_err: f64,
    /// The step that gave `hvp_rel_err`.
    pub fd_step: f64,
    /// The tolerance `ok` was judged by: 1e-4 in f64, 5e-2 in f32.
    pub tol: f64,
    /// Both relative errors within `tol`, and the loss does change along v.
    pub ok: bool,
    pub grad_dot_v: f64,
    pub hv_norm: f64,
}

/// Checks a network's gradient against finite differences of its loss, and its exact
/// Hessian-vector product against finite differences of its gradient, along one random unit
/// direction v (seeded) on one batch. Catches forwards whose derivatives are silently lost (an
/// op without a backward gives a zero gradient; one that cuts the double-backward graph a wrong
/// Hv with a right gradient) before their eigenvalues are trusted.
///
/// A central difference across a ReLU kink is wrong by O(1), and the more samples and units,
/// the more kinks lie within any step; so the gradient difference is taken at seven steps
/// h₀·10^(−k/2), h₀ = ∛(machine ε)·max(1, ‖θ‖∞), and the best agreement counts. In f64 this is
/// sharp (agreement ~1e-9 on trained ReLU CNNs); in f32 round-off limits the small steps, so
/// check a few samples (≈ 8) or an f64 copy. Cost: 1 HVP + 15 gradients + 2 losses.
pub fn check_hvp(model: &dyn Network, batch: &Batch, seed: u64) -> Result<HvpCheck> {
    let sel = ParamSelection::all(model);
    let theta: Vec<Tensor> = sel
        .tensors(model)
        .iter()
        .map(|t| t.detach().copy())
        .collect::<candle_core::Result<_>>()?;
    let v = ParamVec::randn_like(&theta, seed)?;
    let v = v.scale(1.0 / v.norm()?)?;
    let (_, g) = gradient(model, batch, &sel)?;
    let grad_dot_v = g.dot(&v)?;
    let h0 = default_step(model, &theta)?;
    let loss_at = |a: f64| {
        shifted(model, &sel, &theta, &v, a, || {
            Ok(model
                .loss(batch)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?)
        })
    };
    let fd_dir = (loss_at(h0)? - loss_at(-h0)?) / (2.0 * h0);
    let rel = |d: f64, s: f64| if s > 0.0 { d / s } else { 0.0 };
    let grad_rel_err = rel(
        (grad_dot_v - fd_dir).abs(),
        grad_dot_v.abs().max(fd_dir.abs()),
    );
    let hv = hvp_selected(model, batch, &sel, &v)?;
    let hv_norm = hv.norm()?;
    let (mut hvp_rel_err, mut fd_step) = (f64::INFINITY, h0);
    for k in 0..7 {
        let h = h0 * 10f64.powf(-(k as f64) / 2.0);
        let fd = hvp_fd(model, batch, &sel, &v, Some(h))?;
        let e = rel(hv.axpy(-1.0, &fd)?.norm()?, hv_norm.max(fd.norm()?));
        if e < hvp_rel_err {
            (hvp_rel_err, fd_step) = (e, h);
        }
    }
    let tol = if model.dtype() == DType::F64 {
        1e-4
    } else {
        5e-2
    };
    Ok(HvpCheck {
        grad_rel_err,
        hvp_rel_err,
        fd_step,
        tol,
        ok: grad_rel_err <= tol && hvp_rel_err <= tol && fd_dir != 0.0,
        grad_dot_v,
        hv_norm,
    })
}

/// Per-sample input gradients gᵢ = ∇ₓ ℓᵢ (sum reduction), with per-sample losses.
/// Returns (losses (N,), gradients shaped like x). Cost: 1 forward + 1 backward.
pub fn input_gradient(model: &dyn Network, batch: &Batch) -> Result<(Tensor, Tensor)> {
    on_pool(model.device(), || {
        let x = Var::from_tensor(&batch.x.detach())?;
        let losses = layers::cross_entropy_per_sample(&model.forward(x.as_tensor())?, &batch.y)?;
        let g = autodiff::grads(&losses.sum_all()?, &[x.as_tensor()], Graph::Drop)?.remove(0);
        Ok((losses.detach(), g))
    })
}

/// Per-sample input Hessian-vector products Hᵢvᵢ, Hᵢ = ∇²ₓ ℓᵢ (sum reduction: the batch's
/// input Hessian is block diagonal). `v` has the shape of the inputs. Cost: 1 forward +
/// 2 backward passes.
pub fn input_hvp(model: &dyn Network, batch: &Batch, v: &Tensor) -> Result<Tensor> {
    if v.dims() != batch.x.dims() {
        return Err(Error::Shape(format!(
            "v {:?} vs inputs {:?}",
            v.dims(),
            batch.x.dims()
        )));
    }
    on_pool(model.device(), || {
        let x = Var::from_tensor(&batch.x.detach())?;
        let losses = layers::cross_entropy_per_sample(&model.forward(x.as_tensor())?, &batch.y)?;
        let g = autodiff::grads(&losses.sum_all()?, &[x.as_tensor()], Graph::Keep)?.remove(0);
        let s = (g * v.detach().to_dtype(batch.x.dtype())?)?.sum_all()?;
        Ok(autodiff::grads(&s, &[x.as_tensor()], Graph::Drop)?.remove(0))
    })
}

/// Exact H v for any scalar loss of any variables: H = ∇² loss() w.r.t. `vars`, by double
/// backward (for custom models and losses, e.g. least squares). `v` has one tensor per var.
/// Works on any thread with no setup. Cost: 1 evaluation of `loss` + 2 backward passes.
pub fn hvp_closure(
    vars: &[Var],
    loss: impl Fn() -> Result<Tensor>,
    v: &ParamVec,
) -> Result<ParamVec> {
    if vars.len() != v.0.len() || vars.iter().zip(&v.0).any(|(a, b)| a.dims() != b.dims()) {
        return Err(Error::Shape("v does not match the variables".into()));
    }
    let l = loss()?;
    if l.elem_count() != 1 {
        return Err(Error::Shape(format!(
            "loss must be a scalar, got {:?}",
            l.dims()
        )));
    }
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (g, proj) = projected_grads(&l.sum_all()?, &ts, v)?;
    let hv = autodiff::grads(&projected_dot(&g, v, &proj)?, &ts, Graph::Drop)?;
    let hv = ParamVec(hv);
    hv.check_finite("Hessian-vector product")?;
    Ok(hv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Model, ModelConfig, ModelKind};

    fn max_abs(t: &Tensor) -> f64 {
        t.abs()
            .and_then(|a| a.max_all())
            .and_then(|a| a.to_scalar::<f64>())
            .unwrap_or(f64::NAN)
    }

    /// A fresh HVP's first backward ([`projected_grads`]) replaces exactly the gradients of
    /// weights the crate's convolution and linear kernels use directly by placeholders (zero
    /// values: the projection's coefficient is never evaluated), leaves every other gradient
    /// as it is (none is zero here, so a placeholder cannot hide), and ∇θ⟨g, v⟩ through it is
    /// the full gradient graph's H v — on every model of the zoo (ResNet18 with both folded and
    /// unfolded BatchNorm: a folded weight, a⊙W, is not a parameter and keeps its true
    /// gradient).
    #[test]
    fn projected_first_backward_replaces_kernel_weight_gradients_only_and_keeps_hv() {
        let rt = crate::Runtime::cpu_f64();
        for (kind, shape) in [
            (ModelKind::M1, [1, 12, 12]),
            (ModelKind::C1, [3, 16, 16]),
            (ModelKind::C2, [3, 8, 8]),
            (ModelKind::C3, [3, 8, 8]),
            (ModelKind::ResNet18, [3, 8, 8]),
        ] {
            let m = Model::from_config(ModelConfig::tiny(kind, shape, 4, 0), &rt, 3).unwrap();
            let n = 3;
            let d: usize = shape.iter().product();
            let x: Vec<f64> = (0..n * d).map(|i| (i as f64 * 0.37).sin().abs()).collect();
            let x = Tensor::from_vec(x, (n, shape[0], shape[1], shape[2]), &rt.device).unwrap();
            let y = Tensor::from_vec(vec![0u32, 3, 1], n, &rt.device).unwrap();
            let b = Batch::new(x, y).unwrap();
            let sel = ParamSelection::all(&m);
            let params = sel.tensors(&m);
            let v = ParamVec::randn_like(&params, 5).unwrap();
            let loss = m.loss(&b).unwrap();
            let full = autodiff::grads(&loss, &params, Graph::Keep).unwrap();
            let (proj, made) = projected_grads(&loss, &params, &v).unwrap();
            let mut projected = vec![];
            for (((name, _), f), p) in m.params().iter().zip(&full).zip(&proj) {
                assert!(max_abs(f) > 0.0, "{kind:?} {name}: zero gradient");
                // a placeholder, or the same gradient (to rounding: the passes may sum in
                // another order)
                if max_abs(p) == 0.0 {
                    assert!(
                        name.ends_with(".weight") && p.rank() >= 2,
                        "{kind:?} {name}: a placeholder but not a kernel weight"
                    );
                    projected.push(name.clone());
                } else {
                    let e = max_abs(&(f - p).unwrap()) / max_abs(f);
                    assert!(e < 1e-13, "{kind:?} {name}: gradient changed by {e}");
                }
            }
            let convs_and_linears = m
                .params()
                .iter()
                .filter(|(n, p)| n.ends_with(".weight") && p.rank() >= 2)
                .count();
            match kind {
                // no BatchNorm: every weight is the kernels' own
                ModelKind::M1 => assert_eq!(projected.len(), convs_and_linears),
                _ => assert!(!projected.is_empty(), "{kind:?}: nothing projected"),
            }
            // each weight is used once: every placeholder comes out of the pass as it was made
            assert_eq!(
                made.len(),
                projected.len(),
                "{kind:?}: placeholders recorded"
            );
            let hv = |g: &[Tensor], p: &Projections| {
                let dot = projected_dot(g, &v, p).unwrap();
                ParamVec(autodiff::grads(&dot, &params, Graph::Drop).unwrap())
            };
            let hf = hv(&full, &Projections::default());
            // ⟨placeholder, v⟩ by the product with v, and by s itself
            for hp in [hv(&proj, &Projections::default()), hv(&proj, &made)] {
                let err = hf.axpy(-1.0, &hp).unwrap().norm().unwrap() / hf.norm().unwrap();
                assert!(err < 1e-12, "{kind:?}: H v {err} ({projected:?} projected)");
            }
            eprintln!(
                "{kind:?}: {} of {convs_and_linears} projected",
                projected.len()
            );
        }
    }
}
