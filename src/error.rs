//! The one error type of hessian-lab.
//!
//! Every fallible public function returns [`Result<T>`]. Variants carry enough structure that a
//! caller (or a notebook reader) can tell *what* was wrong without parsing strings.

use std::path::PathBuf;

/// Everything that can go wrong in hessian-lab.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data file could not be read or is malformed (missing, truncated, wrong magic, ...).
    #[error("data file {path}: {reason}")]
    DataFile { path: PathBuf, reason: String },

    /// Plain I/O failure on a path (weights, logs, figures).
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A model name that hessian-lab does not know.
    #[error("unknown model `{0}` (expected one of: {names})", names = crate::models::ModelKind::names())]
    UnknownModel(String),

    /// A dataset name that hessian-lab does not know.
    #[error("unknown dataset `{0}` (expected one of: mnist, fashion-mnist, cifar10, cifar100, cifar10-sample, cifar100-sample)")]
    UnknownDataset(String),

    /// A model and a dataset whose shapes or class counts do not fit together.
    #[error("model `{model}` expects inputs {expected:?} with {classes} classes, but dataset `{dataset}` has inputs {got:?} with {got_classes} classes")]
    ModelDataMismatch {
        model: String,
        dataset: String,
        expected: Vec<usize>,
        classes: usize,
        got: Vec<usize>,
        got_classes: usize,
    },

    /// An architecture spec that cannot be parsed or does not fit its input: which module
    /// (0-based, as in PyTorch's `nn.Sequential`), its text and the problem.
    #[error("architecture spec, module {index} `{layer}`: {problem}")]
    Spec {
        index: usize,
        layer: String,
        problem: String,
    },

    /// A weights file that does not fit the model: names, shapes or dtypes.
    #[error("weights {path} do not fit model `{model}`: {}", .problems.join("; "))]
    WeightsMismatch {
        path: PathBuf,
        model: String,
        problems: Vec<String>,
    },

    /// A parameter value that fails validation (k = 0, ε < 0, batch size 0, ...).
    #[error("invalid value for `{name}`: {reason}")]
    InvalidArgument { name: String, reason: String },

    /// Tensors or vectors whose shapes do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),

    /// NaN or Inf where a finite number is required.
    #[error("non-finite value in {0}")]
    NonFinite(String),

    /// Training diverged (loss grown by orders of magnitude, or NaN/±Inf parameters): nothing
    /// was saved from the diverged state.
    #[error("training diverged: {0}")]
    Diverged(String),

    /// Training was stopped (Ctrl-C) before it finished.
    #[error("training interrupted in epoch {epoch}; {}", match .checkpoint {
        Some(p) => format!("the last complete epoch is saved in {}", p.display()),
        None => "no epoch had completed, nothing was saved".to_string(),
    })]
    Interrupted {
        epoch: usize,
        checkpoint: Option<PathBuf>,
    },

    /// An empty batch or empty data split where at least one sample is required.
    #[error("empty input: {0}")]
    Empty(String),

    /// An operator that gave two different results for the same vector (BatchNorm in train
    /// mode, dropout, shuffled data): its eigenvalues would be meaningless.
    #[error("the curvature operator is not deterministic: applying it twice to the same vector differed by {rel_diff:e} (relative); is BatchNorm in train mode or the data shuffled?")]
    NonDeterministic { rel_diff: f64 },

    /// A method that is mathematically invalid for this model (e.g. exact trace on a tanh net).
    #[error("not supported: {0}")]
    Unsupported(String),

    /// A plotting or image-encoding error.
    #[error("plot error: {0}")]
    Plot(String),

    /// An error from the tensor library.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),

    /// A JSON (de)serialisation error.
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
}

/// hessian-lab's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn data(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::DataFile {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
