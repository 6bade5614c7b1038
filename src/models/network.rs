//! [`Network`]: what every verb of the crate needs from a classifier, and nothing more.
//!
//! Curvature operators, eigenvalues, trace and density, the input Hessian, attacks, training and
//! landscapes take `&dyn Network`, so they work on the built-in [`Model`](super::Model)s, on any
//! candle-nn model wrapped by [`CandleNet`](super::CandleNet) and on PyTorch `nn.Sequential`
//! networks loaded by spec ([`Sequential`](super::Sequential)).
//!
//! The contract, PyHessian's: a network maps a batch of inputs (N, …) to logits (N, C); the loss
//! is the mean softmax cross-entropy; parameters are candle [`Var`]s with unique names (the
//! order of [`Network::params`] is the order of every parameter vector, eigenvector and
//! direction); buffers (BatchNorm running statistics) are state, never differentiated.
//! A network is a *handle*: `clone` shares the parameters (operators keep one), so the
//! trait requires `Clone` through [`dyn_clone`].

use crate::data::{Batch, Split};
use crate::models::layers;
use crate::{Error, Result, Runtime};
use candle_core::{DType, Device, Tensor, Var};

/// The box inputs live in (pixels in [0, 1] for the built-in data): attacks clip to it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct InputBox {
    pub lo: f64,
    pub hi: f64,
}

impl InputBox {
    /// [0, 1], images as the data loaders deliver them.
    pub const UNIT: InputBox = InputBox { lo: 0.0, hi: 1.0 };
    /// No bounds: attacks do not clip.
    pub const NONE: InputBox = InputBox {
        lo: f64::NEG_INFINITY,
        hi: f64::INFINITY,
    };
    pub fn new(lo: f64, hi: f64) -> Result<Self> {
        if lo.is_nan() || hi.is_nan() || lo >= hi {
            return Err(Error::invalid(
                "input box",
                format!("need lo < hi, got [{lo}, {hi}]"),
            ));
        }
        Ok(InputBox { lo, hi })
    }
    pub fn is_bounded(&self) -> bool {
        self.lo.is_finite() || self.hi.is_finite()
    }
}

/// A classifier the crate can analyse: forward in train/eval mode, named parameters and
/// buffers, its runtime (device, dtype, kernels), number of classes, input shape and box, and
/// whether Theorem 1's premise (piecewise linear in the input) is known to hold.
///
/// Implement the five required methods for a network of your own, or wrap a candle-nn model
/// in one line with [`CandleNet`](super::CandleNet). Everything else is provided.
pub trait Network: Send + Sync + dyn_clone::DynClone + 'static {
    /// Logits (N, C) of inputs (N, …) in [`Network::input_box`]; `train` selects train mode
    /// (BatchNorm batch statistics, running statistics updated) or eval mode. Must keep the
    /// autograd graph (no `detach`), so that gradients and Hessian-vector products flow.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;
    /// Trainable parameters, in a fixed order (the built-in models: by name).
    fn params(&self) -> &[(String, Var)];
    /// Device, dtype and kernel choice of the parameters and of the inputs the network takes.
    fn runtime(&self) -> &Runtime;
    /// Number of classes C (width of the logits).
    fn num_classes(&self) -> usize;
    /// A short name for titles and JSON (`"m1"`, `"my-cnn"`).
    fn name(&self) -> String;

    /// Non-trainable state updated in train mode (BatchNorm running statistics).
    fn buffers(&self) -> &[(String, Var)] {
        &[]
    }
    /// Shape of one input (e.g. `[1, 28, 28]`), when the network fixes it; batches are checked
    /// against it.
    fn input_shape(&self) -> Option<Vec<usize>> {
        None
    }
    /// Where inputs live; attacks clip to it.
    fn input_box(&self) -> InputBox {
        InputBox::UNIT
    }
    /// `Some(true)` when every layer is piecewise linear in the input (ReLU, max-pool, linear,
    /// BatchNorm in eval mode): Theorem 1's premise, which makes the input Hessian
    /// Jᵀ(diag p − ppᵀ)J exact. `None` when unknown; then the exact low-rank form is refused and
    /// the HVP-based one is used.
    fn piecewise_linear(&self) -> Option<bool> {
        None
    }

    /// Logits in eval mode. Cost: one forward pass.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
    fn device(&self) -> &Device {
        &self.runtime().device
    }
    fn dtype(&self) -> DType {
        self.runtime().dtype
    }
    /// The parameter named `name`.
    fn param(&self, name: &str) -> Result<&Var> {
        self.params()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| Error::invalid("parameter", format!("no parameter named {name}")))
    }
    /// Total number of trainable scalars.
    fn num_params(&self) -> usize {
        self.params().iter().map(|(_, v)| v.elem_count()).sum()
    }
    /// Whether the network has running statistics (BatchNorm).
    fn has_batch_norm(&self) -> bool {
        !self.buffers().is_empty()
    }

    /// Checks that a batch fits: the network's input shape (if fixed), at least one sample,
    /// its dtype.
    fn check_input(&self, x: &Tensor) -> Result<()> {
        let d = x.dims();
        if let Some(s) = self.input_shape() {
            if d.len() != s.len() + 1 || d[1..] != s[..] {
                return Err(Error::Shape(format!(
                    "{} expects inputs (N, {}), got {:?}",
                    self.name(),
                    s.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    d
                )));
            }
        } else if d.len() < 2 {
            return Err(Error::Shape(format!(
                "{} expects a batch (N, …), got {:?}",
                self.name(),
                d
            )));
        }
        if d[0] == 0 {
            return Err(Error::Empty("batch with 0 samples".into()));
        }
        if x.dtype() != self.dtype() {
            return Err(Error::Shape(format!(
                "input dtype {:?} but network dtype {:?}",
                x.dtype(),
                self.dtype()
            )));
        }
        Ok(())
    }

    /// Checks that a split fits: its input shape (when the network fixes one) and its number
    /// of classes.
    fn check_data(&self, split: &Split) -> Result<()> {
        let got = split.input_shape();
        let classes = split.num_classes();
        let shape_ok = self.input_shape().is_none_or(|s| s == got);
        if !shape_ok || classes != self.num_classes() {
            return Err(Error::ModelDataMismatch {
                model: self.name(),
                dataset: split.name(),
                expected: self.input_shape().unwrap_or_else(|| got.clone()),
                classes: self.num_classes(),
                got,
                got_classes: classes,
            });
        }
        Ok(())
    }

    /// Extra safetensors metadata written by [`Network::save`] (the built-in models: their
    /// configuration, so that `Model::load` can check it).
    fn metadata(&self) -> Vec<(String, String)> {
        vec![]
    }
    /// Saves parameters and buffers to safetensors under their names (PyTorch's, for the
    /// built-in models and specs), in the network's dtype, with `format = pt`, `network` and
    /// [`Network::metadata`] as metadata. The write is atomic (a crash leaves the old file) and
    /// keeps an existing file's permissions; the same network always gives the same bytes. A
    /// network with a NaN or ±Inf is refused, naming the tensors.
    fn save(&self, path: &std::path::Path) -> Result<()> {
        super::io::save_vars(
            self.params().iter().chain(self.buffers()),
            self.metadata()
                .into_iter()
                .chain([("network".to_string(), self.name())]),
            path,
        )
    }

    /// Mean cross-entropy (1/N) Σ −log softmax(f(xᵢ))_{yᵢ} in eval mode, as a graph node.
    fn loss(&self, batch: &Batch) -> Result<Tensor> {
        layers::cross_entropy(&self.forward(&batch.x)?, &batch.y)
    }

    /// (mean loss, accuracy) of one batch in eval mode. One forward pass.
    fn loss_and_accuracy(&self, batch: &Batch) -> Result<(f64, f64)> {
        let logits = self.forward(&batch.x)?.detach();
        let loss = layers::cross_entropy(&logits, &batch.y)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let correct = super::count_correct(&logits, &batch.y)?;
        Ok((loss, correct as f64 / batch.len() as f64))
    }

    /// (mean loss, accuracy) over a whole split, streamed in chunks of `chunk` samples (eval
    /// mode, bounded memory). ⌈N/chunk⌉ forward passes.
    fn evaluate(&self, split: &Split, chunk: usize) -> Result<(f64, f64)> {
        if split.is_empty() {
            return Err(Error::Empty("cannot evaluate on an empty split".into()));
        }
        let (mut loss, mut correct) = (0.0, 0usize);
        for r in split.chunks(chunk)? {
            let b = split.range_batch(r.start, r.len(), self.runtime())?;
            let logits = self.forward(&b.x)?.detach();
            let l = layers::cross_entropy_per_sample(&logits, &b.y)?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            if !l.is_finite() {
                return Err(Error::NonFinite(format!("loss on samples {r:?}")));
            }
            loss += l;
            correct += super::count_correct(&logits, &b.y)?;
        }
        Ok((
            loss / split.len() as f64,
            correct as f64 / split.len() as f64,
        ))
    }

    /// Copies of the current parameter values (in [`Network::params`] order).
    fn param_values(&self) -> Result<Vec<Tensor>> {
        copies(self.params())
    }
    /// Copies of the current buffer values.
    fn buffer_values(&self) -> Result<Vec<Tensor>> {
        copies(self.buffers())
    }
    /// Overwrites all parameters (same order and shapes as [`Network::params`]).
    fn set_param_values(&self, values: &[Tensor]) -> Result<()> {
        set_all(self.params(), values, "parameters")
    }
    /// Overwrites all buffers (same order and shapes as [`Network::buffers`]).
    fn set_buffer_values(&self, values: &[Tensor]) -> Result<()> {
        set_all(self.buffers(), values, "buffers")
    }
}

dyn_clone::clone_trait_object!(Network);

/// What the crate's own network types carry for the [`Network`] accessors (`parts_accessors!()`
/// inside their `impl Network` reads them from a field `p`).
#[derive(Clone)]
pub(crate) struct Parts {
    pub name: String,
    pub params: Vec<(String, Var)>,
    pub buffers: Vec<(String, Var)>,
    pub runtime: Runtime,
    pub num_classes: usize,
    pub input_shape: Option<Vec<usize>>,
    pub input_box: InputBox,
}

/// The [`Network`] accessors over a field `p: Parts`.
macro_rules! parts_accessors {
    () => {
        fn params(&self) -> &[(String, Var)] {
            &self.p.params
        }
        fn runtime(&self) -> &Runtime {
            &self.p.runtime
        }
        fn num_classes(&self) -> usize {
            self.p.num_classes
        }
        fn name(&self) -> String {
            self.p.name.clone()
        }
        fn buffers(&self) -> &[(String, Var)] {
            &self.p.buffers
        }
        fn input_shape(&self) -> Option<Vec<usize>> {
            self.p.input_shape.clone()
        }
        fn input_box(&self) -> InputBox {
            self.p.input_box
        }
    };
}
pub(crate) use parts_accessors;

/// An [`Error::Unsupported`] naming `what` unless the network is known to be piecewise linear
/// in its input (Theorem 1's premise); `instead` says what to use otherwise.
pub(crate) fn require_piecewise_linear(net: &dyn Network, what: &str, instead: &str) -> Result<()> {
    let why = match net.piecewise_linear() {
        Some(true) => return Ok(()),
        Some(false) => "is not",
        None => "is not known to be (declare it, e.g. `CandleNet::with_piecewise_linear(true)`)",
    };
    Err(Error::Unsupported(format!(
        "{what} needs a piecewise-linear network (ReLU, max-pool, linear, BatchNorm in eval \
         mode); `{}` {why}{instead}",
        net.name()
    )))
}

/// Re-initialises every parameter as PyTorch's layers do by default, from a seed (ChaCha8), so
/// that a network built with candle-nn (whose CPU initialisation cannot be seeded) is
/// reproducible: a weight of rank ≥ 2 (linear, conv) and the bias of the same layer (`p.bias`
/// next to `p.weight`) ~ U(−1/√fan_in, 1/√fan_in), fan_in = the product of the weight's
/// dimensions after the first (kaiming-uniform with a = √5); other rank-1 weights (norm layers)
/// = 1 and biases = 0; running means 0 and variances 1. Parameters are visited in
/// [`Network::params`] order.
pub fn reset_parameters(net: &dyn Network, seed: u64) -> Result<()> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Uniform};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let fan_in = |name: &str| -> Option<usize> {
        let (prefix, _) = name.rsplit_once('.').unwrap_or(("", name));
        let w = if prefix.is_empty() {
            "weight".to_string()
        } else {
            format!("{prefix}.weight")
        };
        let d = net
            .params()
            .iter()
            .find(|(n, _)| *n == w)?
            .1
            .dims()
            .to_vec();
        (d.len() >= 2).then(|| d[1..].iter().product())
    };
    for (name, var) in net.params() {
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let last = name.rsplit('.').next().unwrap_or(name);
        let values: Vec<f64> = match (dims.len(), fan_in(name)) {
            (r, _) if r >= 2 => uniform(&mut rng, n, dims[1..].iter().product())?,
            (_, Some(f)) if last == "bias" => uniform(&mut rng, n, f)?,
            _ if last == "weight" => vec![1.0; n],
            _ => vec![0.0; n],
        };
        var.set(&Tensor::from_vec(values, dims, var.device())?.to_dtype(var.dtype())?)?;
    }
    for (name, var) in net.buffers() {
        let fill = if name.ends_with("running_var") {
            1.0
        } else {
            0.0
        };
        var.set(&var.ones_like()?.affine(0.0, fill)?)?;
    }
    fn uniform(rng: &mut rand_chacha::ChaCha8Rng, n: usize, fan_in: usize) -> Result<Vec<f64>> {
        let b = 1.0 / (fan_in.max(1) as f64).sqrt();
        let u = Uniform::new_inclusive(-b, b).map_err(|e| Error::invalid("init", e.to_string()))?;
        Ok((0..n).map(|_| u.sample(rng)).collect())
    }
    Ok(())
}

fn copies(vars: &[(String, Var)]) -> Result<Vec<Tensor>> {
    Ok(vars
        .iter()
        .map(|(_, v)| v.as_tensor().detach().copy())
        .collect::<candle_core::Result<_>>()?)
}

fn set_all(dst: &[(String, Var)], values: &[Tensor], what: &str) -> Result<()> {
    if dst.len() != values.len() {
        return Err(Error::Shape(format!(
            "{} {what} expected, got {}",
            dst.len(),
            values.len()
        )));
    }
    for ((n, v), t) in dst.iter().zip(values) {
        if v.dims() != t.dims() {
            return Err(Error::Shape(format!(
                "{n}: expected {:?}, got {:?}",
                v.dims(),
                t.dims()
            )));
        }
        v.set(&t.to_dtype(v.dtype())?.to_device(v.device())?)?;
    }
    Ok(())
}
