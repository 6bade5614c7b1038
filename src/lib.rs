//! # hessian-lab
//!
//! Second-order analysis of neural networks on
//! [candle](https://github.com/huggingface/candle): Hessian-vector products, top eigenvalues,
//! input Hessians, adversarial attacks and loss landscapes, following Yao, Gholami, Lei,
//! Keutzer & Mahoney, *Hessian-based Analysis of Large Batch Training and Robustness to
//! Adversaries* (NeurIPS 2018).
//!
//! Nothing needs to be called first: every backward pass goes through [`autodiff`], where
//! keeping the gradient graph (for exact Hessian-vector products) is an argument of the call,
//! on any thread. [`init()`] is optional process tuning for speed. The crate links its own
//! candle ([`candle_core`], [`candle_nn`], vendored with a patch): use these re-exports in your
//! code rather than a separate candle dependency. The layers are described in ARCHITECTURE.md.
//!
//! Every verb takes `&dyn` [`models::Network`]: the paper's built-in models, any candle-nn
//! model wrapped in one line by [`models::CandleNet`], or your own implementation of the trait.
//!
//! ```no_run
//! use hessian_lab::prelude::*;
//! let rt = Runtime::cpu_f32();
//! let test = data::load(DatasetKind::Mnist, SplitKind::Test, "data")?;
//! let model = Model::new(ModelKind::M1, &rt, 0)?;
//! let batch = test.first(128)?.to_batch(&rt)?;
//! let (loss, acc) = model.loss_and_accuracy(&batch)?;
//! let op = HessianOperator::new(&model, DataSource::Batch(batch))?;
//! let top = curvature::lanczos(&op, 2, &LanczosOpts::default())?;
//! # Ok::<(), hessian_lab::Error>(())
//! ```

pub mod attack;
pub mod autodiff;
pub mod curvature;
pub mod data;
pub mod error;
pub mod files;
pub mod landscape;
pub mod models;
pub mod ops;
pub mod plot;
pub mod prelude;
pub mod progress;
pub mod reproduce;
pub mod runtime;
pub mod train;

/// Re-exported so notebooks and users need only one dependency.
pub use candle_core;
pub use candle_nn;
pub use error::{Error, Result};
pub use nalgebra;
pub use ndarray;
pub use runtime::{init, Runtime};
