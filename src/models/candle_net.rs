//! [`CandleNet`]: any candle-nn model (a `VarMap` plus a `Module`, `ModuleT` or closure) as a
//! [`Network`], in one line.
//!
//! ```no_run
//! use hessian_lab::prelude::*;
//! use hessian_lab::candle_nn::{linear, Module, VarBuilder, VarMap};
//! # fn main() -> hessian_lab::Result<()> {
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
//! let fc = linear(784, 10, vb.pp("fc"))?;
//! let net = CandleNet::from_fn(&varmap, 10, move |x, _train| fc.forward(&x.flatten_from(1)?))?
//!     .with_input_shape(&[1, 28, 28])
//!     .with_piecewise_linear(true);
//! # Ok(()) }
//! ```
//!
//! Parameters are the map's variables ordered by name; variables whose last name segment is
//! `running_mean`, `running_var` or `num_batches_tracked` (candle-nn's and PyTorch's BatchNorm
//! statistics) are buffers. Caveats of candle 0.11's own ops hold in a user's forward: its
//! `softmax_last_dim` and `layer_norm` cut the graph of a second derivative (use
//! `candle_nn::ops::softmax` or write them out), and its `max_pool2d` backward is wrong where
//! windows overlap; [`check_hvp`](crate::curvature::check_hvp) finds such problems on a batch.

use super::network::{parts_accessors, InputBox, Network, Parts};
use crate::runtime::Kernels;
use crate::{Error, Result, Runtime};
use candle_core::{DType, Tensor, Var};
use candle_nn::{ModuleT, VarMap};
use std::sync::Arc;

type ForwardFn = dyn Fn(&Tensor, bool) -> candle_core::Result<Tensor> + Send + Sync;

/// A candle-nn model as a [`Network`]. Cloning shares the parameters.
#[derive(Clone)]
pub struct CandleNet {
    p: Parts,
    forward: Arc<ForwardFn>,
    piecewise_linear: Option<bool>,
}

impl std::fmt::Debug for CandleNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CandleNet({}, {} parameters in {} tensors, {} buffers, {:?})",
            self.p.name,
            self.num_params(),
            self.p.params.len(),
            self.p.buffers.len(),
            self.p.runtime.dtype
        )
    }
}

fn is_buffer(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    matches!(last, "running_mean" | "running_var" | "num_batches_tracked")
}

impl CandleNet {
    /// Wraps a candle-nn model (anything `ModuleT`, hence any `Module`) whose variables live in
    /// `varmap`, with `num_classes` logits.
    pub fn new<M: ModuleT + Send + Sync + 'static>(
        varmap: &VarMap,
        num_classes: usize,
        module: M,
    ) -> Result<Self> {
        Self::from_fn(varmap, num_classes, move |x, train| {
            module.forward_t(x, train)
        })
    }

    /// Wraps a forward closure `(inputs, train) → logits` over the variables of `varmap`.
    pub fn from_fn(
        varmap: &VarMap,
        num_classes: usize,
        forward: impl Fn(&Tensor, bool) -> candle_core::Result<Tensor> + Send + Sync + 'static,
    ) -> Result<Self> {
        let vars: Vec<(String, Var)> = {
            let data = varmap
                .data()
                .lock()
                .map_err(|_| Error::invalid("varmap", "its lock is poisoned"))?;
            data.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
        };
        Self::from_vars(vars, num_classes, forward)
    }

    /// Wraps a forward closure over explicitly named variables (your own `Var`s, no VarMap).
    pub fn from_vars(
        mut vars: Vec<(String, Var)>,
        num_classes: usize,
        forward: impl Fn(&Tensor, bool) -> candle_core::Result<Tensor> + Send + Sync + 'static,
    ) -> Result<Self> {
        if num_classes < 2 {
            return Err(Error::invalid("num_classes", "need at least 2 classes"));
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = vars.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::invalid(
                "network",
                format!("two variables named {}", w[0].0),
            ));
        }
        let (buffers, params): (Vec<_>, Vec<_>) = vars.into_iter().partition(|(n, _)| is_buffer(n));
        let first = params
            .first()
            .ok_or_else(|| Error::Empty("the network has no trainable variables".into()))?;
        let (device, dtype) = (first.1.device().clone(), first.1.dtype());
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(Error::invalid(
                "network",
                format!("parameters must be f32 or f64, {} is {dtype:?}", first.0),
            ));
        }
        for (n, v) in params.iter().chain(&buffers) {
            if v.dtype() != dtype || !v.device().same_device(&device) {
                return Err(Error::invalid(
                    "network",
                    format!(
                        "all variables must share one dtype and device: {} is {:?} on {:?}, {} is {dtype:?} on {device:?}",
                        n,
                        v.dtype(),
                        v.device(),
                        first.0
                    ),
                ));
            }
        }
        Ok(CandleNet {
            p: Parts {
                name: "candle-net".into(),
                params,
                buffers,
                runtime: Runtime {
                    device,
                    dtype,
                    kernels: Kernels::default(),
                },
                num_classes,
                input_shape: None,
                input_box: InputBox::UNIT,
            },
            forward: Arc::new(forward),
            piecewise_linear: None,
        })
    }

    /// Re-initialises the parameters from `seed` with PyTorch's default initialisation (see
    /// [`reset_parameters`](super::reset_parameters)): candle's own CPU initialisation cannot
    /// be seeded, so this is how a candle-nn network becomes reproducible.
    pub fn with_seed(self, seed: u64) -> Result<Self> {
        super::reset_parameters(&self, seed)?;
        Ok(self)
    }
    /// Names the network in titles and JSON.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.p.name = name.into();
        self
    }
    /// Fixes the shape of one input (batches are checked against it).
    pub fn with_input_shape(mut self, shape: &[usize]) -> Self {
        self.p.input_shape = Some(shape.to_vec());
        self
    }
    /// The box inputs live in (default [0, 1]); attacks clip to it.
    pub fn with_input_box(mut self, b: InputBox) -> Self {
        self.p.input_box = b;
        self
    }
    /// Declares whether the forward is piecewise linear in the input (Theorem 1's premise).
    pub fn with_piecewise_linear(mut self, yes: bool) -> Self {
        self.piecewise_linear = Some(yes);
        self
    }
}

impl Network for CandleNet {
    parts_accessors!();
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        let z = (self.forward)(x, train)?;
        let n = x.dim(0)?;
        if z.dims() != [n, self.p.num_classes] {
            return Err(Error::Shape(format!(
                "{}: forward returned {:?} for {n} inputs, expected ({n}, {}) logits",
                self.p.name,
                z.dims(),
                self.p.num_classes
            )));
        }
        Ok(z)
    }
    fn piecewise_linear(&self) -> Option<bool> {
        self.piecewise_linear
    }
}
