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
use crate::plot::{self, Figure};
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

fn source(net: &dyn Network, data: Data) -> Result<DataSource> {
    match data {
        Data::Source(s) => Ok(s),
        // up to CHUNK samples as one batch (graph reused across HVPs), else streamed
        Data::Split(s) => DataSource::from_split(&s, CHUNK, net.runtime()),
    }
}

impl Hessian {
    /// The Hessian of the mean loss over `data` (a `Batch`, `Vec<Batch>`, `Split` or
    /// `DataSource`). Cost: nothing yet; each verb below runs HVPs.
    pub fn new(net: &dyn Network, data: impl Into<Data>) -> Result<Self> {
        let src = source(net, data.into())?;
        Ok(Hessian {
            op: Box::new(HessianOperator::new(net, src)?),
        })
    }
    /// The generalised Gauss–Newton matrix Jᵀ(diag p − ppᵀ)J instead (PSD; = H for linear
    /// models).
    pub fn gauss_newton(net: &dyn Network, data: impl Into<Data>) -> Result<Self> {
        let src = source(net, data.into())?;
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

/// Writes HTML for evcxr to show (Jupyter renders it as a table).
pub(crate) fn show_html(html: &str) {
    println!("EVCXR_BEGIN_CONTENT text/html\n{html}\nEVCXR_END_CONTENT");
}

/// An HTML table with a caption.
pub(crate) fn html_table(caption: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let th: String = head.iter().map(|h| format!("<th>{h}</th>")).collect();
    let body: String = rows
        .iter()
        .map(|r| {
            let td: String = r.iter().map(|c| format!("<td>{c}</td>")).collect();
            format!("<tr>{td}</tr>")
        })
        .collect();
    format!("<table><caption>{caption}</caption><tr>{th}</tr>{body}</table>")
}

impl EigenResult {
    /// A table of the eigenpairs: λ, relative residual, converged.
    pub fn evcxr_display(&self) {
        let rows: Vec<Vec<String>> = (0..self.eigenvalues.len())
            .map(|i| {
                vec![
                    format!("λ<sub>{}</sub>", i + 1),
                    format!("{:.6}", self.eigenvalues[i]),
                    format!("{:.1e}", self.residuals[i]),
                    if self.converged[i] { "yes" } else { "no" }.to_string(),
                ]
            })
            .collect();
        show_html(&html_table(
            &format!("top eigenvalues ({} HVPs)", self.hvps),
            &["", "eigenvalue", "rel. residual", "converged"],
            &rows,
        ));
    }
}

impl TraceResult {
    pub fn evcxr_display(&self) {
        show_html(&format!(
            "tr = {:.6} ± {:.2e} (standard error; {} probes, {} HVPs)",
            self.trace, self.std_error, self.probes, self.hvps
        ));
    }
}

impl Density {
    /// The density on a log axis (see [`plot::density_figure`]).
    pub fn plot(&self) -> Result<Figure> {
        plot::density_figure(self, "Hessian spectral density (SLQ)")
    }
    pub fn evcxr_display(&self) {
        match self.plot() {
            Ok(f) => f.evcxr_display(),
            Err(e) => eprintln!("density could not be plotted: {e}"),
        }
    }
}
