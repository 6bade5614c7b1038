//! # hessian-lab
//!
//! Second-order analysis of neural networks on [candle]: Hessian-vector products, top
//! eigenvalues, input Hessians, adversarial attacks and loss landscapes, following Yao, Gholami,
//! Lei, Keutzer & Mahoney, *Hessian-based Analysis of Large Batch Training and Robustness to
//! Adversaries* (NeurIPS 2018).
//!
//! **Call [`init()`] first**, before anything runs a backward pass: candle keeps the gradient
//! graph (needed for exact Hessian-vector products) only when `CANDLE_GRAD_DO_NOT_DETACH=1` is set
//! before a thread's first backward pass. Every curvature function checks this with a cheap probe
//! ([`double_backward_enabled`]) and returns [`Error::DoubleBackwardOff`] instead of a silently
//! wrong result.
//!
//! ```no_run
//! hessian_lab::init();
//! let dev = hessian_lab::Runtime::cpu_f32();
//! let test = hessian_lab::data::load(hessian_lab::data::DatasetKind::Mnist, hessian_lab::data::SplitKind::Test, "data")?;
//! let model = hessian_lab::models::Model::new(hessian_lab::models::ModelKind::M1, &dev, 0)?;
//! let batch = test.first(128)?.to_batch(&dev)?;
//! let (loss, acc) = model.loss_and_accuracy(&batch)?;
//! # Ok::<(), hessian_lab::Error>(())
//! ```

pub mod attack;
pub mod curvature;
pub mod data;
pub mod error;
pub mod landscape;
pub mod models;
pub mod plot;
pub mod reproduce;
pub mod runtime;
pub mod train;

/// Re-exported so notebooks and users need only one dependency.
pub use candle_core;
pub use error::{Error, Result};
pub use nalgebra;
pub use runtime::{double_backward_enabled, ensure_double_backward, init, Runtime};
