//! Loss landscapes: 1-D and 2-D slices θ + α·d₁ (+ β·d₂) along Hessian eigenvectors,
//! filter-normalised random directions or the gradient; interpolation between two models
//! (BatchNorm running statistics interpolated too); λ₁ and ‖g‖ per training epoch.
//!
//! Grids are evaluated point by point, each point streamed over its data in chunks (bounded
//! memory), with a progress bar. The model's original parameters (and buffers) are restored
//! afterwards, also on error.

use crate::curvature::{self, DataSource, HessianOperator, LanczosOpts, ParamSelection, ParamVec};
use crate::models::Network;
use crate::train::{EpochHook, EpochRecord};
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use serde::Serialize;

/// Restores a model's parameters and buffers when dropped.
struct Restore<'a> {
    model: &'a dyn Network,
    params: Vec<Tensor>,
    buffers: Vec<Tensor>,
}

impl<'a> Restore<'a> {
    fn new(model: &'a dyn Network) -> Result<Self> {
        Ok(Restore {
            model,
            params: model.param_values()?,
            buffers: model.buffer_values()?,
        })
    }
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        // Shapes are the model's own: these cannot fail short of a device error.
        let _ = self.model.set_param_values(&self.params);
        let _ = self.model.set_buffer_values(&self.buffers);
    }
}

/// Mean loss and accuracy over a data source (eval mode, chunk weights |b|/N).
/// Cost: one forward per chunk.
pub fn evaluate_source(model: &dyn Network, source: &DataSource) -> Result<(f64, f64)> {
    let (mut loss, mut acc) = (0.0, 0.0);
    source.for_each(model.runtime(), |b, w| {
        let (l, a) = model.loss_and_accuracy(b)?;
        loss += w * l;
        acc += w * a;
        Ok(())
    })?;
    Ok((loss, acc))
}

/// A random direction with filter normalisation (Li et al. 2018): Gaussian entries, then each
/// filter (each row of a weight: output channel of a conv, output unit of a linear layer)
/// rescaled to the norm of the same filter of θ. Parameters with ≤ 1 dimension (biases, BN
/// γ/β) are set to 0 (loss-landscape's `--xignore biasbn`). Deterministic from `seed`.
pub fn filter_normalized_direction(model: &dyn Network, seed: u64) -> Result<ParamVec> {
    let theta = model.param_values()?;
    let r = ParamVec::randn_like(&theta, seed)?;
    let mut out = vec![];
    for (t, d) in theta.iter().zip(&r.0) {
        if t.rank() <= 1 {
            out.push(d.zeros_like()?);
            continue;
        }
        let n = t.dims()[0];
        let tn = t
            .to_dtype(DType::F64)?
            .reshape((n, ()))?
            .sqr()?
            .sum(1)?
            .sqrt()?;
        let dn = d
            .to_dtype(DType::F64)?
            .reshape((n, ()))?
            .sqr()?
            .sum(1)?
            .sqrt()?;
        let scale = (tn / (dn + 1e-10)?)?.to_dtype(t.dtype())?;
        let mut shape = vec![n];
        shape.extend(std::iter::repeat_n(1, t.rank() - 1));
        out.push(d.broadcast_mul(&scale.reshape(shape)?)?);
    }
    Ok(ParamVec(out))
}

/// The top-k Hessian eigenvectors on `source` (Lanczos) as unit directions, with their
/// eigenvalues. Cost: as [`curvature::lanczos`].
pub fn eigen_directions(
    model: &dyn Network,
    source: &DataSource,
    k: usize,
    opts: &LanczosOpts,
) -> Result<(Vec<f64>, Vec<ParamVec>)> {
    let op = HessianOperator::new(model, source.clone())?;
    let r = curvature::lanczos(&op, k, opts)?;
    Ok((r.eigenvalues, r.eigenvectors))
}

/// The normalised mean-loss gradient on `source`. Cost: 1 forward + 1 backward per chunk.
pub fn gradient_direction(model: &dyn Network, source: &DataSource) -> Result<ParamVec> {
    let op = HessianOperator::new(model, source.clone())?;
    Ok(op.loss_and_gradient()?.1.normalized()?.0)
}

/// One labelled curve.
#[derive(Clone, Debug, Serialize)]
pub struct Series {
    pub label: String,
    pub loss: Vec<f64>,
    pub accuracy: Vec<f64>,
}

/// Loss/accuracy along a 1-D path, one series per data source.
#[derive(Clone, Debug, Serialize)]
pub struct Curve1d {
    pub alphas: Vec<f64>,
    pub series: Vec<Series>,
    /// λ₁ at each point (interpolation with `lambda1`), else empty.
    pub lambda1: Vec<f64>,
}

fn empty_series(sources: &[(&str, &DataSource)]) -> Vec<Series> {
    sources
        .iter()
        .map(|(l, _)| Series {
            label: l.to_string(),
            loss: vec![],
            accuracy: vec![],
        })
        .collect()
}

/// Evaluates the model's current parameters on every source and appends to its series.
fn push_point(
    model: &dyn Network,
    series: &mut [Series],
    sources: &[(&str, &DataSource)],
) -> Result<()> {
    for (s, (_, src)) in series.iter_mut().zip(sources) {
        let (l, acc) = evaluate_source(model, src)?;
        s.loss.push(l);
        s.accuracy.push(acc);
    }
    Ok(())
}

/// Parses "start:stop:count" (e.g. "-1:1:41") into an inclusive grid.
pub fn parse_range(s: &str) -> Result<Vec<f64>> {
    let p: Vec<&str> = s.split(':').collect();
    let bad = || {
        Error::invalid(
            "range",
            format!("`{s}` (expected start:stop:count, e.g. -1:1:41)"),
        )
    };
    if p.len() != 3 {
        return Err(bad());
    }
    let a: f64 = p[0].trim().parse().map_err(|_| bad())?;
    let b: f64 = p[1].trim().parse().map_err(|_| bad())?;
    let n: usize = p[2].trim().parse().map_err(|_| bad())?;
    linspace(a, b, n)
}

/// n evenly spaced points from a to b inclusive.
pub fn linspace(a: f64, b: f64, n: usize) -> Result<Vec<f64>> {
    if n == 0 || !a.is_finite() || !b.is_finite() {
        return Err(Error::invalid("grid", "need n ≥ 1 and finite ends"));
    }
    if n == 1 {
        return Ok(vec![a]);
    }
    Ok((0..n)
        .map(|i| a + (b - a) * i as f64 / (n - 1) as f64)
        .collect())
}

fn check_direction(model: &dyn Network, d: &ParamVec) -> Result<()> {
    let t = model.param_values()?;
    if d.0.len() != t.len() || d.0.iter().zip(&t).any(|(a, b)| a.dims() != b.dims()) {
        return Err(Error::Shape(
            "direction does not match the model's parameters (all parameters, name order)".into(),
        ));
    }
    d.check_finite("direction")
}

use crate::progress::{Progress, Task};

/// Loss and accuracy of θ + α·d for each α, on each labelled source (e.g. batch, train, test
/// in one pass: the paper's Figs. 8–10). Cost: |alphas| × Σ sources' forward passes.
pub fn landscape_1d(
    model: &dyn Network,
    direction: &ParamVec,
    alphas: &[f64],
    sources: &[(&str, &DataSource)],
    progress: Option<&dyn Progress>,
) -> Result<Curve1d> {
    check_direction(model, direction)?;
    if alphas.is_empty() || sources.is_empty() {
        return Err(Error::invalid(
            "landscape",
            "need at least one α and one data source",
        ));
    }
    let guard = Restore::new(model)?;
    let mut series = empty_series(sources);
    let pb = Task::start(progress, "landscape", alphas.len());
    for &a in alphas {
        let p = ParamVec(guard.params.clone()).axpy(a, direction)?;
        model.set_param_values(&p.0)?;
        push_point(model, &mut series, sources)?;
        pb.advance(1);
    }
    drop(guard);
    Ok(Curve1d {
        alphas: alphas.to_vec(),
        series,
        lambda1: vec![],
    })
}

/// Loss/accuracy of θ + α·d₁ + β·d₂ on a grid (rows: β, columns: α).
#[derive(Clone, Debug, Serialize)]
pub struct Surface2d {
    pub alphas: Vec<f64>,
    pub betas: Vec<f64>,
    pub loss: Vec<Vec<f64>>,
    pub accuracy: Vec<Vec<f64>>,
}

impl Surface2d {
    /// The loss grid as an `ndarray` array (rows: β, columns: α).
    pub fn loss_ndarray(&self) -> ndarray::Array2<f64> {
        grid(&self.loss)
    }
    /// The accuracy grid as an `ndarray` array (rows: β, columns: α).
    pub fn accuracy_ndarray(&self) -> ndarray::Array2<f64> {
        grid(&self.accuracy)
    }
}

fn grid(rows: &[Vec<f64>]) -> ndarray::Array2<f64> {
    let cols = rows.first().map_or(0, |r| r.len());
    ndarray::Array2::from_shape_fn((rows.len(), cols), |(i, j)| rows[i][j])
}

/// The plane θ + α·d₁ + β·d₂ sampled on a grid (for [`landscape_2d`]).
#[derive(Clone, Copy)]
pub struct Plane<'a> {
    pub d1: &'a ParamVec,
    pub d2: &'a ParamVec,
    pub alphas: &'a [f64],
    pub betas: &'a [f64],
}

/// The 2-D loss surface (the paper's Figs. 14–15). Cost: |α|·|β| × the source's forwards.
pub fn landscape_2d(
    model: &dyn Network,
    plane: &Plane<'_>,
    source: &DataSource,
    progress: Option<&dyn Progress>,
) -> Result<Surface2d> {
    let Plane {
        d1,
        d2,
        alphas,
        betas,
    } = *plane;
    check_direction(model, d1)?;
    check_direction(model, d2)?;
    if alphas.is_empty() || betas.is_empty() {
        return Err(Error::invalid("landscape", "empty grid"));
    }
    let guard = Restore::new(model)?;
    let base = ParamVec(guard.params.clone());
    let pb = Task::start(progress, "surface", alphas.len() * betas.len());
    let (mut loss, mut acc) = (vec![], vec![]);
    for &b in betas {
        let (mut lr, mut ar) = (vec![], vec![]);
        let row = base.axpy(b, d2)?;
        for &a in alphas {
            model.set_param_values(&row.axpy(a, d1)?.0)?;
            let (l, ac) = evaluate_source(model, source)?;
            lr.push(l);
            ar.push(ac);
            pb.advance(1);
        }
        loss.push(lr);
        acc.push(ar);
    }
    drop(guard);
    Ok(Surface2d {
        alphas: alphas.to_vec(),
        betas: betas.to_vec(),
        loss,
        accuracy: acc,
    })
}

/// Loss/accuracy along (1−λ)·θ_A + λ·θ_B (parameters **and** BN running statistics), for λ
/// on a grid that may extend beyond [0, 1] (the paper's Figs. 11–12), optionally with λ₁^θ at
/// each point (Lanczos on `lambda1_source`). Neither model is changed.
/// Cost: |λ| × (sources' forwards [+ the Lanczos HVPs]).
pub fn interpolate(
    a: &dyn Network,
    b: &dyn Network,
    lambdas: &[f64],
    sources: &[(&str, &DataSource)],
    lambda1: Option<(&DataSource, &LanczosOpts)>,
    progress: Option<&dyn Progress>,
) -> Result<Curve1d> {
    let layout = |n: &dyn Network| -> Vec<(String, Vec<usize>)> {
        n.params()
            .iter()
            .chain(n.buffers())
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect()
    };
    if layout(a) != layout(b) {
        return Err(Error::Shape(
            "interpolation needs two networks with the same parameter and buffer names and shapes"
                .into(),
        ));
    }
    if lambdas.is_empty() || sources.is_empty() {
        return Err(Error::invalid(
            "interpolate",
            "need at least one λ and one data source",
        ));
    }
    let (pa, pb_) = (ParamVec(a.param_values()?), ParamVec(b.param_values()?));
    let (ba, bb) = (ParamVec(a.buffer_values()?), ParamVec(b.buffer_values()?));
    let mut series = empty_series(sources);
    let mut l1 = vec![];
    let pbar = Task::start(progress, "interpolate", lambdas.len());
    // `a` itself is the work copy (a user's network cannot be deep-copied in general); the
    // guard puts its parameters and buffers back however this returns
    let _restore = Restore::new(a)?;
    for &t in lambdas {
        a.set_param_values(&pa.scale(1.0 - t)?.axpy(t, &pb_)?.0)?;
        if !ba.0.is_empty() {
            a.set_buffer_values(&ba.scale(1.0 - t)?.axpy(t, &bb)?.0)?;
        }
        push_point(a, &mut series, sources)?;
        if let Some((src, opts)) = lambda1 {
            let op = HessianOperator::new(a, src.clone())?;
            l1.push(curvature::lanczos(&op, 1, opts)?.eigenvalues[0]);
        }
        pbar.advance(1);
    }
    Ok(Curve1d {
        alphas: lambdas.to_vec(),
        series,
        lambda1: l1,
    })
}

/// An epoch hook for [`crate::train::train`] recording λ₁^θ (Lanczos, top-1) and the
/// full-gradient norm ‖g‖ on `source` after every epoch into the record's `lambda1` and
/// `grad_norm`: the paper's Fig. 17. Cost per epoch: the Lanczos HVPs + 1 gradient.
pub fn curvature_epoch_hook(source: DataSource, opts: LanczosOpts) -> Box<EpochHook<'static>> {
    Box::new(move |model: &dyn Network, rec: &mut EpochRecord| {
        let op =
            HessianOperator::with_selection(model, source.clone(), ParamSelection::all(model))?;
        let l1 = curvature::lanczos(&op, 1, &opts)?.eigenvalues[0];
        let g = op.loss_and_gradient()?.1.norm()?;
        rec.lambda1 = Some(l1);
        rec.grad_norm = Some(g);
        Ok(())
    })
}

/// Loss and accuracy of θ + α·d for each α on `data` (a `Batch`, `Split`, …): the 1-D
/// landscape along a direction (e.g. the top Hessian eigenvector), silent. See
/// [`landscape_1d`] for several data sets at once. The network is left as it was.
pub fn along(
    model: &dyn Network,
    direction: &ParamVec,
    alphas: &[f64],
    data: impl Into<crate::curvature::Data>,
) -> Result<Curve1d> {
    let src = data.into().into_source(model)?;
    landscape_1d(model, direction, alphas, &[("loss", &src)], None)
}
