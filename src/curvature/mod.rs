//! Curvature: exact Hessian-vector products, operators, eigenvalues (power iteration with
//! deflation, Lanczos), trace (Hutchinson, Hutch++, exact for piecewise-linear nets), spectral
//! density (SLQ) and the input Hessian of Theorem 1.
//!
//! Every entry point checks that exact double backward works in the calling thread (see
//! [`crate::init`]) and returns [`crate::Error::DoubleBackwardOff`] otherwise.

pub mod hvp;
pub mod operator;
pub mod vector;

pub use hvp::{gradient, hvp, hvp_fd, hvp_selected, input_gradient, input_hvp, ParamSelection};
pub use operator::{CurvatureOperator, DataSource, DenseOperator, GgnOperator, HessianOperator};
pub use vector::ParamVec;
