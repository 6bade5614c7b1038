//! Curvature: exact Hessian-vector products, operators, eigenvalues (power iteration with
//! deflation, Lanczos), trace (Hutchinson, Hutch++, exact for piecewise-linear nets), spectral
//! density (SLQ) and the input Hessian of Theorem 1.
//!
//! Every backward pass goes through [`crate::autodiff`]: these work on any thread, with no setup.

pub mod density;
pub mod eigen;
pub mod hessian;
pub mod hvp;
pub mod input;
pub mod operator;
pub mod trace;
pub mod vector;

pub use density::{density, Density, SlqOpts};
pub use eigen::{lanczos, top_eigen, EigenResult, LanczosOpts, PowerOpts};
pub use hessian::{Data, Hessian};
pub use hvp::{
    check_hvp, gradient, hvp, hvp_closure, hvp_fd, hvp_selected, input_gradient, input_hvp,
    HvpCheck, ParamSelection,
};
pub use input::{
    input_hessian, input_hessian_split, input_lambda1_power, InputHessian, InputHessianSample,
    InputHessianSummary,
};
pub use operator::{
    ggn_vector_product, CurvatureOperator, DataSource, DenseOperator, GgnOperator, HessianOperator,
    WithProgress,
};
pub use trace::{trace, trace_exact, TraceExact, TraceMethod, TraceOpts, TraceResult};
pub use vector::ParamVec;
