//! The names a notebook or a small program needs, in one `use hessian_lab::prelude::*;`.
//!
//! Brings the [`Network`] trait into scope (its methods — `forward`, `params`, `evaluate`,
//! `save` … — are how every network is used), the built-in models, the candle-nn adapter,
//! data, the curvature operators and solvers with their options, attacks, training and the
//! plotting types, plus candle's `Tensor`, `DType`, `Device` and `Var`.

pub use crate::attack::{self, AttackKind, NewtonSolver};
pub use crate::candle_core::{DType, Device, Tensor, Var};
pub use crate::curvature::{
    self, CurvatureOperator, DataSource, GgnOperator, Hessian, HessianOperator, LanczosOpts,
    ParamSelection, ParamVec, PowerOpts, SlqOpts, TraceOpts,
};
pub use crate::data::{self, Batch, DatasetKind, Split, SplitKind};
pub use crate::landscape;
pub use crate::models::{
    Activation, CandleNet, InputBox, Model, ModelConfig, ModelKind, Network, Sequential,
};
pub use crate::plot::{self, Figure, Line};
pub use crate::train::{self, Adversarial, FitOpts};
pub use crate::Runtime;
