//! Curvature operators: v ↦ Hv (Hessian) or v ↦ Gv (Gauss–Newton) over a data source, and a
//! dense matrix operator for tests and small problems. Eigen solvers, trace and density
//! estimators take any [`CurvatureOperator`].

use super::hvp::{
    check_shapes, fresh_hvp, gradient, gradient_with_graph, hvp_from_graph, projected_dot,
    projected_grads, ParamSelection,
};
use super::vector::ParamVec;
use crate::autodiff::{self, Graph};
use crate::data::{Batch, Split};
use crate::models::{layers, Network};
use crate::ops::Projections;
use crate::{Error, Result, Runtime};
use candle_core::{DType, Device, Tensor, Var};
use std::cell::{Cell, RefCell};

/// A symmetric linear operator on parameter space.
pub trait CurvatureOperator {
    /// y = A v. One call = one "HVP" in cost accounting.
    fn apply(&self, v: &ParamVec) -> Result<ParamVec>;
    /// Tensors with the shapes, dtype and device of the operator's vectors.
    fn like(&self) -> &[Tensor];
    /// Names of the blocks of a vector (parameter names).
    fn names(&self) -> Vec<String> {
        (0..self.like().len())
            .map(|i| format!("block{i}"))
            .collect()
    }
    /// Dimension n of the operator.
    fn dim(&self) -> usize {
        self.like().iter().map(|t| t.elem_count()).sum()
    }
    /// How many times [`CurvatureOperator::apply`] has run.
    fn matvecs(&self) -> usize;

    /// curvlinops-style determinism check: applies the operator twice to the same random v and
    /// fails with [`Error::NonDeterministic`] if the results differ by more than `rtol`
    /// (relative). Cost: 2 matvecs.
    fn check_deterministic(&self, seed: u64, rtol: f64) -> Result<()> {
        let v = ParamVec::randn_like(self.like(), seed)?;
        let a = self.apply(&v)?;
        let b = self.apply(&v)?;
        let d = a.axpy(-1.0, &b)?.norm()?;
        let rel = d / a.norm()?.max(1e-300);
        if rel > rtol {
            return Err(Error::NonDeterministic { rel_diff: rel });
        }
        Ok(())
    }
}

/// Where the loss is evaluated.
#[derive(Clone, Debug)]
pub enum DataSource {
    /// One batch (its gradient graph is computed once and reused by every HVP, as PyHessian
    /// does; memory: one backward graph).
    Batch(Batch),
    /// Several batches: H = Σ_b |b|·H_b / N.
    Batches(Vec<Batch>),
    /// A whole split streamed in chunks of `chunk` samples: H = Σ_b |b|·H_b / N in bounded
    /// memory (one chunk's graph at a time).
    Split { split: Split, chunk: usize },
}

impl DataSource {
    /// A split as one batch when it has at most `chunk` samples (its gradient graph is then
    /// reused across HVPs), else streamed in chunks of `chunk`.
    pub fn from_split(split: &Split, chunk: usize, rt: &Runtime) -> Result<Self> {
        if split.len() <= chunk {
            Ok(DataSource::Batch(split.to_batch(rt)?))
        } else {
            Ok(DataSource::Split {
                split: split.clone(),
                chunk,
            })
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            DataSource::Batch(b) => b.len(),
            DataSource::Batches(bs) => bs.iter().map(|b| b.len()).sum(),
            DataSource::Split { split, .. } => split.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn validate(&self) -> Result<()> {
        match self {
            DataSource::Split { chunk: 0, .. } => Err(Error::invalid("chunk", "must be ≥ 1")),
            DataSource::Batches(bs) if bs.is_empty() => Err(Error::Empty("no batches".into())),
            _ if self.is_empty() => Err(Error::Empty("data source has no samples".into())),
            _ => Ok(()),
        }
    }
    /// Calls `f(batch, weight = |b|/N)` for each chunk.
    pub fn for_each(
        &self,
        rt: &Runtime,
        mut f: impl FnMut(&Batch, f64) -> Result<()>,
    ) -> Result<()> {
        let n = self.len() as f64;
        match self {
            DataSource::Batch(b) => f(b, 1.0),
            DataSource::Batches(bs) => bs.iter().try_for_each(|b| f(b, b.len() as f64 / n)),
            DataSource::Split { split, chunk } => {
                for r in split.chunks(*chunk)? {
                    let b = split.range_batch(r.start, r.len(), rt)?;
                    f(&b, r.len() as f64 / n)?;
                }
                Ok(())
            }
        }
    }

    /// Σ_b |b|/N · f(b) over the chunks: the mean of a per-batch mean, e.g. Hv = Σ |b|/N H_b v.
    pub fn weighted_sum(
        &self,
        rt: &Runtime,
        mut f: impl FnMut(&Batch) -> Result<ParamVec>,
    ) -> Result<ParamVec> {
        let mut acc: Option<ParamVec> = None;
        self.for_each(rt, |b, w| {
            let x = f(b)?;
            acc = Some(match acc.take() {
                None => x.scale(w)?,
                Some(a) => a.axpy(w, &x)?,
            });
            Ok(())
        })?;
        acc.ok_or_else(|| Error::Empty("no data".into()))
    }
}

/// What the parameter-space operators hold: a handle on the network, the data, the selected
/// parameters (`like`: detached, for shapes) and the number of products so far.
struct Over {
    model: Box<dyn Network>,
    source: DataSource,
    sel: ParamSelection,
    like: Vec<Tensor>,
    count: Cell<usize>,
}

impl Over {
    fn new(model: &dyn Network, source: DataSource, sel: ParamSelection) -> Result<Self> {
        source.validate()?;
        let like = sel.tensors(model).iter().map(|t| t.detach()).collect();
        Ok(Over {
            model: dyn_clone::clone_box(model),
            source,
            sel,
            like,
            count: Cell::new(0),
        })
    }
    fn tick(&self) {
        self.count.set(self.count.get() + 1);
    }
}

/// `like`, `names` and `matvecs` of an operator from its [`Over`] field `o`.
macro_rules! over_accessors {
    () => {
        fn like(&self) -> &[Tensor] {
            &self.o.like
        }
        fn names(&self) -> Vec<String> {
            self.o.sel.names.clone()
        }
        fn matvecs(&self) -> usize {
            self.o.count.get()
        }
    };
}

/// The Hessian of the mean cross-entropy w.r.t. (selected) parameters, model in eval mode.
pub struct HessianOperator {
    o: Over,
    cached: RefCell<Option<Vec<Tensor>>>,
}

impl HessianOperator {
    /// Over all parameters.
    pub fn new(model: &dyn Network, source: DataSource) -> Result<Self> {
        Self::with_selection(model, source, ParamSelection::all(model))
    }
    /// Over the parameters whose names start with one of `prefixes` (per-layer curvature).
    pub fn with_filter(model: &dyn Network, source: DataSource, prefixes: &[&str]) -> Result<Self> {
        let sel = ParamSelection::with_prefixes(model, prefixes)?;
        Self::with_selection(model, source, sel)
    }
    pub fn with_selection(
        model: &dyn Network,
        source: DataSource,
        sel: ParamSelection,
    ) -> Result<Self> {
        Ok(HessianOperator {
            o: Over::new(model, source, sel)?,
            cached: RefCell::new(None),
        })
    }
    pub fn selection(&self) -> &ParamSelection {
        &self.o.sel
    }
    pub fn source(&self) -> &DataSource {
        &self.o.source
    }
    /// Forgets the cached gradient graph (call after changing the parameters).
    pub fn invalidate(&self) {
        *self.cached.borrow_mut() = None;
    }
    /// Mean loss and gradient over the data source (detached). Cost: 1 fwd + 1 bwd per chunk.
    pub fn loss_and_gradient(&self) -> Result<(f64, ParamVec)> {
        let n = self.o.source.len() as f64;
        let mut loss = 0.0;
        let g = self.o.source.weighted_sum(self.o.model.runtime(), |b| {
            let (l, g) = gradient(&*self.o.model, b, &self.o.sel)?;
            loss += l * b.len() as f64 / n;
            Ok(g)
        })?;
        Ok((loss, g))
    }
}

impl CurvatureOperator for HessianOperator {
    /// Hv = Σ_b |b|/N · H_b v. Cost: 1 backward (single batch, graph reused) or
    /// 1 forward + 2 backward per chunk.
    fn apply(&self, v: &ParamVec) -> Result<ParamVec> {
        self.o.tick();
        if let DataSource::Batch(b) = &self.o.source {
            if self.cached.borrow().is_none() {
                let (_, g) = gradient_with_graph(&*self.o.model, b, &self.o.sel)?;
                *self.cached.borrow_mut() = Some(g);
            }
            let cache = self.cached.borrow();
            let g = cache
                .as_ref()
                .ok_or_else(|| Error::Empty("gradient cache".into()))?;
            return hvp_from_graph(&*self.o.model, g, &self.o.sel, v);
        }
        self.o.source.weighted_sum(self.o.model.runtime(), |b| {
            fresh_hvp(&*self.o.model, b, &self.o.sel, v)
        })
    }
    over_accessors!();
}

/// The generalised Gauss–Newton matrix G = (1/N) Σᵢ Jᵢᵀ (diag pᵢ − pᵢpᵢᵀ) Jᵢ of the mean
/// cross-entropy (Jᵢ = ∂logitsᵢ/∂θ), model in eval mode. PSD; equal to H for linear models.
///
/// Jv comes from the double-backward trick (Jv = ∇ᵤ⟨Jᵀu, v⟩ for a dummy u, Jᵀu = ∇θ⟨z, u⟩
/// with its graph kept). On a single batch that graph does not depend on v and is built once
/// and reused, as [`HessianOperator`] reuses its gradient graph (call
/// [`GgnOperator::invalidate`] after changing the parameters); on several batches or a
/// streamed split each product builds it again, with the weight gradients of Jᵀu projected
/// onto v (they are used only through ⟨Jᵀu, v⟩).
pub struct GgnOperator {
    o: Over,
    cached: RefCell<Option<JtuGraph>>,
}

/// A batch's logits z with their graph, the dummy u, Jᵀu = ∇θ⟨z, u⟩ with its graph, and the
/// softmax p of z: everything of a Gauss–Newton product that does not depend on v.
struct JtuGraph {
    z: Tensor,
    u: Var,
    jtu: Vec<Tensor>,
    proj: Projections,
    p: Tensor,
}

impl JtuGraph {
    /// Cost: 1 forward + 1 backward (whose weight gradients are projected onto `v` when given:
    /// the graph is then good for that v only).
    fn new(
        model: &dyn Network,
        sel: &ParamSelection,
        b: &Batch,
        v: Option<&ParamVec>,
    ) -> Result<Self> {
        let z = model.forward(&b.x)?;
        let u = Var::from_tensor(&z.zeros_like()?.detach())?;
        let s = (&z * u.as_tensor())?.sum_all()?;
        let ts = sel.tensors(model);
        // ∇θ⟨z, u⟩ = Jᵀu keeps its graph, so ∇ᵤ⟨Jᵀu, v⟩ = Jv
        let (jtu, proj) = match v {
            Some(v) => projected_grads(&s, &ts, v)?,
            None => (
                autodiff::grads(&s, &ts, Graph::Keep)?,
                Projections::default(),
            ),
        };
        let p = layers::softmax(&z.detach())?;
        Ok(JtuGraph { z, u, jtu, proj, p })
    }

    /// G_b v = Jᵀ r, r = (p⊙Jv − p(pᵀJv))/|b|. Cost: 2 backward passes, the first restricted
    /// to the paths to u (about one backward's work); the graph is kept for the next v.
    fn apply(&self, model: &dyn Network, sel: &ParamSelection, v: &ParamVec) -> Result<ParamVec> {
        let t = projected_dot(&self.jtu, v, &self.proj)?;
        // restricted to u: Jᵀu's weight-gradient branches, and the forward graph below them, lead
        // to no u and are not differentiated (as PyTorch's autograd.grad prunes; BENCHMARKS.md)
        let jv = autodiff::grads(&t, &[self.u.as_tensor()], Graph::Drop)?.remove(0);
        let pjv = (&self.p * &jv)?;
        let r = ((&pjv - self.p.broadcast_mul(&pjv.sum_keepdim(1)?)?)? / self.z.dim(0)? as f64)?;
        // not checked for NaN here: the solvers check the scalars they build from it
        Ok(ParamVec(autodiff::grads(
            &(&self.z * r.detach())?.sum_all()?,
            &sel.tensors(model),
            Graph::Drop,
        )?))
    }
}

impl GgnOperator {
    pub fn new(model: &dyn Network, source: DataSource) -> Result<Self> {
        Ok(GgnOperator {
            o: Over::new(model, source, ParamSelection::all(model))?,
            cached: RefCell::new(None),
        })
    }

    /// Forgets the cached Jᵀu graph of a single batch (call after changing the parameters).
    pub fn invalidate(&self) {
        *self.cached.borrow_mut() = None;
    }
}

/// The Gauss–Newton product G_b v on one batch with a graph built for this v alone (Jᵀu's
/// weight gradients projected onto v). Cost: 1 forward + 3 backward passes, the second
/// restricted to the paths to u; the first without weight gradients (about 2 gradients in
/// all for convolutional nets). A `v` of other shapes than the parameters' is a
/// [`Error::Shape`], a non-finite result an [`Error::NonFinite`].
pub fn ggn_vector_product(model: &dyn Network, batch: &Batch, v: &ParamVec) -> Result<ParamVec> {
    let sel = ParamSelection::all(model);
    check_shapes(&sel.tensors(model), v)?;
    let gv = fresh_ggn(model, &sel, batch, v)?;
    gv.check_finite("Gauss–Newton-vector product")?;
    Ok(gv)
}

/// G_b v with a Jᵀu graph projected onto this v (unchecked: see [`ggn_vector_product`]).
fn fresh_ggn(
    model: &dyn Network,
    sel: &ParamSelection,
    b: &Batch,
    v: &ParamVec,
) -> Result<ParamVec> {
    crate::autodiff::on_pool(model.device(), || {
        JtuGraph::new(model, sel, b, Some(v))?.apply(model, sel, v)
    })
}

impl CurvatureOperator for GgnOperator {
    /// Gv = Σ_b |b|/N · G_b v. Cost: 2 backward passes (single batch, the Jᵀu graph reused)
    /// or 1 forward + 3 backward per chunk.
    fn apply(&self, v: &ParamVec) -> Result<ParamVec> {
        self.o.tick();
        let (model, sel) = (&*self.o.model, &self.o.sel);
        check_shapes(&self.o.like, v)?;
        if let DataSource::Batch(b) = &self.o.source {
            let dev = model.device();
            if self.cached.borrow().is_none() {
                let g = crate::autodiff::on_pool(dev, || JtuGraph::new(model, sel, b, None))?;
                *self.cached.borrow_mut() = Some(g);
            }
            let cache = self.cached.borrow();
            let g = cache
                .as_ref()
                .ok_or_else(|| Error::Empty("Jᵀu cache".into()))?;
            return crate::autodiff::on_pool(dev, || g.apply(model, sel, v));
        }
        self.o
            .source
            .weighted_sum(model.runtime(), |b| fresh_ggn(model, sel, b, v))
    }
    over_accessors!();
}

/// A dense symmetric matrix as an operator (f64, CPU): for tests with known spectra and for
/// small problems.
pub struct DenseOperator {
    matrix: Tensor,
    like: Vec<Tensor>,
    count: Cell<usize>,
}

impl DenseOperator {
    /// From a row-major n×n matrix. Errors if it is not square or not symmetric (to 1e-12
    /// relative) or not finite.
    pub fn new(n: usize, data: Vec<f64>) -> Result<Self> {
        if data.len() != n * n || n == 0 {
            return Err(Error::Shape(format!(
                "{} entries for a {n}x{n} matrix",
                data.len()
            )));
        }
        if data.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite("matrix".into()));
        }
        let scale = data.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
        for i in 0..n {
            for j in 0..i {
                if (data[i * n + j] - data[j * n + i]).abs() > 1e-12 * scale {
                    return Err(Error::invalid(
                        "matrix",
                        format!("not symmetric at ({i},{j})"),
                    ));
                }
            }
        }
        let matrix = Tensor::from_vec(data, (n, n), &Device::Cpu)?;
        let like = vec![Tensor::zeros(n, DType::F64, &Device::Cpu)?];
        Ok(DenseOperator {
            matrix,
            like,
            count: Cell::new(0),
        })
    }
    /// From an nalgebra matrix.
    pub fn from_nalgebra(m: &nalgebra::DMatrix<f64>) -> Result<Self> {
        let n = m.nrows();
        let mut v = Vec::with_capacity(n * n);
        for i in 0..n {
            for j in 0..m.ncols() {
                v.push(m[(i, j)]);
            }
        }
        Self::new(n, v)
    }
}

impl CurvatureOperator for DenseOperator {
    fn apply(&self, v: &ParamVec) -> Result<ParamVec> {
        self.count.set(self.count.get() + 1);
        let x =
            v.0.first()
                .ok_or_else(|| Error::Shape("empty vector".into()))?;
        let y = self
            .matrix
            .matmul(&x.to_dtype(DType::F64)?.unsqueeze(1)?)?
            .squeeze(1)?;
        Ok(ParamVec(vec![y]))
    }
    fn like(&self) -> &[Tensor] {
        &self.like
    }
    fn matvecs(&self) -> usize {
        self.count.get()
    }
}

/// Wraps an operator and reports one step to a [`crate::progress::Progress`] per application
/// (the task ends when this is dropped).
pub struct WithProgress<'a> {
    inner: &'a dyn CurvatureOperator,
    bar: crate::progress::Task<'a>,
}

impl<'a> WithProgress<'a> {
    /// `expected`: the number of applications expected (may be exceeded).
    pub fn new(
        inner: &'a dyn CurvatureOperator,
        progress: Option<&'a dyn crate::progress::Progress>,
        expected: usize,
        label: &str,
    ) -> Self {
        let bar = crate::progress::Task::start(progress, label, expected);
        WithProgress { inner, bar }
    }
}

impl CurvatureOperator for WithProgress<'_> {
    fn apply(&self, v: &ParamVec) -> Result<ParamVec> {
        let r = self.inner.apply(v);
        self.bar.advance(1);
        r
    }
    fn like(&self) -> &[Tensor] {
        self.inner.like()
    }
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
    fn matvecs(&self) -> usize {
        self.inner.matvecs()
    }
}
