//! [`Hessian`]: PyHessian's three verbs on any network and data — `eigenvalues(k)`, `trace()`,
//! `density()` — each result printable as a table or plotted inline in evcxr.
//!
//! ```no_run
//! use hessian_lab::prelude::*;
//! # fn main() -> hessian_lab::Result<()> {
//! # let rt = Runtime::cpu_f32();
//! # let net = Model::new(ModelKind::M1, &rt, 0)?;
//! # let batch = data::load(DatasetKind::Mnist, SplitKind::Test, "data")?.first(200)?.to_batch(&rt)?;
//! let h = Hessian::new(&net, batch)?;
//! let top = h.eigenvalues(3)?;     // Lanczos: values, vectors, residuals
//! let tr = h.trace()?;             // Hutchinson, with its standard error
//! h.density()?.plot()?.save("density.png")?;
//! # Ok(()) }
//! ```

use super::{
    density, lanczos, trace, CurvatureOperator, DataSource, Density, EigenResult, GgnOperator,
    HessianOperator, LanczosOpts, SlqOpts, TraceOpts, TraceResult,
};
use crate::data::{Batch, Split};
use crate::models::Network;
use crate::Result;

/// Samples per streamed chunk when a split is larger than one batch.
const CHUNK: usize = 500;

/// The curvature of a network's mean cross-entropy on some data (eval mode): the Hessian, or
/// with [`Hessian::gauss_newton`] the generalised Gauss–Newton matrix. Owns a handle on the
/// network and the data, so it can live in a notebook variable across cells.
pub struct Hessian {
    op: Box<dyn CurvatureOperator>,
}

/// Data a [`Hessian`] is taken over: a batch, several batches, a split, or a [`DataSource`].
pub enum Data {
    Source(DataSource),
    Split(Split),
}

impl From<Batch> for Data {
    fn from(b: Batch) -> Self {
        Data::Source(DataSource::Batch(b))
    }
}
impl From<Vec<Batch>> for Data {
    fn from(b: Vec<Batch>) -> Self {
        Data::Source(DataSource::Batches(b))
    }
}
impl From<DataSource> for Data {
    fn from(s: DataSource) -> Self {
        Data::Source(s)
    }
}
impl From<Split> for Data {
    fn from(s: Split) -> Self {
        Data::Split(s)
    }
}
impl From<&Split> for Data {
    fn from(s: &Split) -> Self {
        Data::Split(s.clone())
    }
}

impl Data {
    /// As a [`DataSource`] for `net`: a split of up to 500 samples becomes one batch (its
    /// gradient graph, or Jᵀu graph, reused across products), a larger one is streamed in
    /// chunks of 500.
    pub fn into_source(self, net: &dyn Network) -> Result<DataSource> {
        match self {
            Data::Source(s) => Ok(s),
            Data::Split(s) => DataSource::from_split(&s, CHUNK, net.runtime()),
        }
    }
}

impl Hessian {
    /// The Hessian of the mean loss over `data` (a `Batch`, `Vec<Batch>`, `Split` or
    /// `DataSource`). Cost: nothing yet; each verb below runs HVPs.
    pub fn new(net: &dyn Network, data: impl Into<Data>) -> Result<Self> {
        let src = data.into().into_source(net)?;
        Ok(Hessian {
            op: Box::new(HessianOperator::new(net, src)?),
        })
    }
    /// The generalised Gauss–Newton matrix Jᵀ(diag p − ppᵀ)J instead (PSD; = H for linear
    /// models). On one batch its Jᵀu graph is built once and reused, as the Hessian's gradient
    /// graph is ([`GgnOperator`]).
    pub fn gauss_newton(net: &dyn Network, data: impl Into<Data>) -> Result<Self> {
        let src = data.into().into_source(net)?;
        Ok(Hessian {
            op: Box::new(GgnOperator::new(net, src)?),
        })
    }
    /// The top `k` eigenpairs by Lanczos (default options: ≤ 100 HVPs, relative residual 1e-3).
    pub fn eigenvalues(&self, k: usize) -> Result<EigenResult> {
        lanczos(self.op.as_ref(), k, &LanczosOpts::default())
    }
    /// The top `k` eigenpairs by Lanczos with your options.
    pub fn eigenvalues_with(&self, k: usize, opts: &LanczosOpts) -> Result<EigenResult> {
        lanczos(self.op.as_ref(), k, opts)
    }
    /// tr(H) by Hutchinson's estimator (default options), with its standard error.
    pub fn trace(&self) -> Result<TraceResult> {
        trace(self.op.as_ref(), &TraceOpts::default())
    }
    /// The spectral density by stochastic Lanczos quadrature (default options).
    pub fn density(&self) -> Result<Density> {
        density(self.op.as_ref(), &SlqOpts::default())
    }
    /// The operator itself, for the solvers' full options (`top_eigen`, `trace`, `density`).
    pub fn operator(&self) -> &dyn CurvatureOperator {
        self.op.as_ref()
    }
    /// Number of parameters (the matrix is dim × dim).
    pub fn dim(&self) -> usize {
        self.op.like().iter().map(|t| t.elem_count()).sum()
    }
}
