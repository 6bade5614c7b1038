//! Models: the paper's M1 (LeNet-5 variant), C1, C2, C3, ResNet-18, plus `logreg` and `mlp`.
//!
//! A [`Model`] owns its parameters as candle [`Var`]s in a list ordered by name, and its
//! BatchNorm running statistics as separate buffers (never part of parameter vectors, Hessian
//! eigenvectors or landscape directions). The per-dataset input normalisation is the model's
//! fixed first step, so inputs are always pixels in [0, 1].

mod candle_net;
pub mod io;
pub mod layers;
pub(crate) mod network;
mod sequential;
pub mod zoo;

pub use candle_net::CandleNet;
pub use network::{reset_parameters, InputBox, Network};
pub use sequential::{parse_spec, Conv2dSpec, Layer, Sequential};

use crate::data::DatasetKind;
use crate::{Error, Result, Runtime};
use candle_core::{DType, Tensor, Var};
use rand::SeedableRng;
use rand_distr::{Distribution, Uniform};
use std::collections::HashMap;
pub use zoo::{Activation, Init, TensorSpec};

/// Which architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum ModelKind {
    /// LeNet-5 variant for MNIST: conv(1→20,5,s2) conv(20→50,5,s2) fc(2450→500) fc(500→10).
    #[cfg_attr(feature = "cli", value(name = "m1"))]
    M1,
    /// CIFAR-10: conv(3→64,5,s2) pool(3,2,1) bn conv(64→64,5,s2) pool bn fc 256→384→192→10.
    #[cfg_attr(feature = "cli", value(name = "c1"))]
    C1,
    /// CIFAR-10: 4× conv3x3 (64,64,128,128) with BN, pools after conv2/conv4, fc 8192→256→256→10.
    #[cfg_attr(feature = "cli", value(name = "c2"))]
    C2,
    /// C2 without BatchNorm.
    #[cfg_attr(feature = "cli", value(name = "c3"))]
    C3,
    /// CIFAR ResNet-18 (kuangliu/pytorch-cifar layout), CIFAR-100.
    #[cfg_attr(feature = "cli", value(name = "resnet18", alias = "resnet-18"))]
    ResNet18,
    /// Softmax regression (test model).
    #[cfg_attr(feature = "cli", value(name = "logreg"))]
    LogReg,
    /// One hidden layer (ReLU or tanh) (test model).
    #[cfg_attr(feature = "cli", value(name = "mlp"))]
    Mlp,
}

impl std::str::FromStr for ModelKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let low = s.to_ascii_lowercase();
        let low = if low == "resnet-18" { "resnet18" } else { &low };
        ModelKind::ALL
            .into_iter()
            .find(|k| k.name() == low)
            .ok_or_else(|| Error::UnknownModel(s.to_string()))
    }
}

impl ModelKind {
    /// Every architecture, in the order lists and messages show them.
    pub const ALL: [ModelKind; 7] = [
        ModelKind::M1,
        ModelKind::C1,
        ModelKind::C2,
        ModelKind::C3,
        ModelKind::ResNet18,
        ModelKind::LogReg,
        ModelKind::Mlp,
    ];
    /// "m1, c1, …": the names [`ModelKind::from_str`](std::str::FromStr) accepts.
    pub fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::M1 => "m1",
            ModelKind::C1 => "c1",
            ModelKind::C2 => "c2",
            ModelKind::C3 => "c3",
            ModelKind::ResNet18 => "resnet18",
            ModelKind::LogReg => "logreg",
            ModelKind::Mlp => "mlp",
        }
    }
    /// The data set the paper uses this model with.
    pub fn default_dataset(self) -> DatasetKind {
        match self {
            ModelKind::M1 | ModelKind::LogReg | ModelKind::Mlp => DatasetKind::Mnist,
            ModelKind::C1 | ModelKind::C2 | ModelKind::C3 => DatasetKind::Cifar10,
            ModelKind::ResNet18 => DatasetKind::Cifar100,
        }
    }
    /// Whether every layer is piecewise linear in the input and in each single weight (ReLU,
    /// max-pool, BN in eval mode): the premise of Theorem 1 and of the exact trace.
    pub fn piecewise_linear(self, act: Activation) -> bool {
        !(self == ModelKind::Mlp && act == Activation::Tanh)
    }
}

/// The fixed first step x ↦ (x − mean_c)/std_c.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Normalization {
    pub fn identity(channels: usize) -> Self {
        Normalization {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }
    pub fn for_dataset(d: DatasetKind) -> Self {
        let (mean, std) = d.normalization();
        Normalization { mean, std }
    }
}

/// Everything that defines a model's shape.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub kind: ModelKind,
    /// (C, H, W) of one input.
    pub input_shape: [usize; 3],
    pub num_classes: usize,
    /// Hidden width (`mlp` only).
    pub hidden: usize,
    /// Hidden activation (`mlp` only).
    pub activation: Activation,
    pub normalization: Normalization,
}

impl ModelConfig {
    /// The paper's configuration for `kind` on its default data set.
    pub fn paper(kind: ModelKind) -> Self {
        Self::for_dataset(kind, kind.default_dataset())
    }
    /// `kind` sized for data set `d` (its input shape, classes and normalisation).
    pub fn for_dataset(kind: ModelKind, d: DatasetKind) -> Self {
        ModelConfig {
            kind,
            input_shape: d.input_shape(),
            num_classes: d.num_classes(),
            hidden: 100,
            activation: Activation::Relu,
            normalization: Normalization::for_dataset(d),
        }
    }
    /// A small model on arbitrary input shape with identity normalisation (tests, notebooks).
    pub fn tiny(
        kind: ModelKind,
        input_shape: [usize; 3],
        num_classes: usize,
        hidden: usize,
    ) -> Self {
        ModelConfig {
            kind,
            input_shape,
            num_classes,
            hidden,
            activation: Activation::Relu,
            normalization: Normalization::identity(input_shape[0]),
        }
    }
    pub fn with_activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }
}

/// A network with named parameters (ordered by name) and BatchNorm buffers.
///
/// `clone()` gives a second *handle* on the same parameters (cheap; used by operators that
/// must own what they work on); [`Model::try_clone`] makes an independent deep copy.
#[derive(Clone)]
pub struct Model {
    pub config: ModelConfig,
    runtime: Runtime,
    params: Vec<(String, Var)>,
    buffers: Vec<(String, Var)>,
    index: HashMap<String, usize>,
    buf_index: HashMap<String, usize>,
    norm: Option<(Tensor, Tensor)>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Model({}, {} parameters in {} tensors, {} buffers, {:?})",
            self.config.kind.name(),
            self.num_params(),
            self.params.len(),
            self.buffers.len(),
            self.runtime.dtype
        )
    }
}

struct View<'a>(&'a Model);

impl Network for Model {
    /// Logits z = f(normalise(x); θ) of inputs in \[0,1\]; `train`: BN batch statistics, running
    /// statistics updated.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        // on the compute pool: with one thread, no kernel is handed between threads
        crate::autodiff::on_pool(x.device(), || {
            let xn = match &self.norm {
                Some((m, s)) => x.broadcast_sub(m)?.broadcast_div(s)?,
                None => x.clone(),
            };
            let c = &self.config;
            zoo::architecture(
                c.kind,
                c.activation,
                c.hidden,
                c.num_classes,
                &mut zoo::Forward {
                    l: &View(self),
                    train,
                },
                &xn,
            )
        })
    }
    /// Ordered by name. BN running statistics are not among them.
    fn params(&self) -> &[(String, Var)] {
        &self.params
    }
    fn runtime(&self) -> &Runtime {
        &self.runtime
    }
    fn num_classes(&self) -> usize {
        self.config.num_classes
    }
    fn name(&self) -> String {
        self.config.kind.name().into()
    }
    /// BatchNorm running statistics, ordered by name.
    fn buffers(&self) -> &[(String, Var)] {
        &self.buffers
    }
    fn input_shape(&self) -> Option<Vec<usize>> {
        Some(self.config.input_shape.to_vec())
    }
    fn piecewise_linear(&self) -> Option<bool> {
        Some(self.config.kind.piecewise_linear(self.config.activation))
    }
    fn metadata(&self) -> Vec<(String, String)> {
        self.config_metadata()
    }
    fn param(&self, name: &str) -> Result<&Var> {
        self.index
            .get(name)
            .map(|&i| &self.params[i].1)
            .ok_or_else(|| Error::invalid("parameter", format!("no parameter named {name}")))
    }
}

impl zoo::Lookup for View<'_> {
    fn kernels(&self) -> layers::Kernels {
        self.0.runtime.kernels
    }
    fn p(&self, name: &str) -> Result<&Tensor> {
        self.0
            .index
            .get(name)
            .map(|&i| self.0.params[i].1.as_tensor())
            .ok_or_else(|| Error::invalid("parameter", format!("no parameter named {name}")))
    }
    fn bufs(&self, prefix: &str) -> Result<layers::BnBuffers<'_>> {
        let get = |s: &str| {
            self.0
                .buf_index
                .get(&format!("{prefix}.{s}"))
                .map(|&i| &self.0.buffers[i].1)
                .ok_or_else(|| Error::invalid("buffer", format!("no buffer {prefix}.{s}")))
        };
        Ok(layers::BnBuffers {
            running_mean: get("running_mean")?,
            running_var: get("running_var")?,
        })
    }
}

fn init_tensor(
    spec: &TensorSpec,
    rng: &mut rand_chacha::ChaCha8Rng,
    rt: &Runtime,
) -> Result<Tensor> {
    let n: usize = spec.shape.iter().product();
    let v: Vec<f64> = match spec.init {
        Init::Ones => vec![1.0; n],
        Init::Zeros => vec![0.0; n],
        Init::Uniform(b) => {
            let u =
                Uniform::new_inclusive(-b, b).map_err(|e| Error::invalid("init", e.to_string()))?;
            (0..n).map(|_| u.sample(rng)).collect()
        }
    };
    Ok(Tensor::from_vec(v, spec.shape.clone(), &rt.device)?.to_dtype(rt.dtype)?)
}

impl Model {
    /// The paper's model `kind` with PyTorch's default initialisation, seeded.
    pub fn new(kind: ModelKind, rt: &Runtime, seed: u64) -> Result<Self> {
        Self::from_config(ModelConfig::paper(kind), rt, seed)
    }

    /// A model of any configuration with PyTorch's default initialisation, seeded (ChaCha8).
    pub fn from_config(config: ModelConfig, rt: &Runtime, seed: u64) -> Result<Self> {
        if !matches!(rt.dtype, DType::F32 | DType::F64) {
            return Err(Error::invalid("dtype", "models run in f32 or f64"));
        }
        if config.num_classes < 2 {
            return Err(Error::invalid("num_classes", "need at least 2 classes"));
        }
        let [c, _, _] = config.input_shape;
        if config.normalization.mean.len() != c || config.normalization.std.len() != c {
            return Err(Error::Shape(format!(
                "normalisation has {} means / {} stds for {c} channels",
                config.normalization.mean.len(),
                config.normalization.std.len()
            )));
        }
        if config
            .normalization
            .std
            .iter()
            .any(|&s| !(s > 0.0) || !s.is_finite())
        {
            return Err(Error::invalid(
                "normalization",
                "std must be positive and finite",
            ));
        }
        let specs = zoo::Shapes::specs(
            config.kind,
            config.input_shape,
            config.num_classes,
            config.hidden,
            config.activation,
        )?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut params = Vec::new();
        for s in &specs.params {
            params.push((
                s.name.clone(),
                Var::from_tensor(&init_tensor(s, &mut rng, rt)?)?,
            ));
        }
        let mut buffers = Vec::new();
        for s in &specs.buffers {
            buffers.push((
                s.name.clone(),
                Var::from_tensor(&init_tensor(s, &mut rng, rt)?)?,
            ));
        }
        params.sort_by(|a, b| a.0.cmp(&b.0));
        buffers.sort_by(|a, b| a.0.cmp(&b.0));
        let index = params
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        let buf_index = buffers
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        let norm = if config.normalization == Normalization::identity(c) {
            None
        } else {
            let shape = (1, c, 1, 1);
            let m = Tensor::from_vec(config.normalization.mean.clone(), shape, &rt.device)?
                .to_dtype(rt.dtype)?;
            let s = Tensor::from_vec(config.normalization.std.clone(), shape, &rt.device)?
                .to_dtype(rt.dtype)?;
            Some((m, s))
        };
        Ok(Model {
            config,
            runtime: rt.clone(),
            params,
            buffers,
            index,
            buf_index,
            norm,
        })
    }

    pub fn kind(&self) -> ModelKind {
        self.config.kind
    }

    /// A deep copy with its own parameters (same runtime).
    pub fn try_clone(&self) -> Result<Model> {
        let m = Model::from_config(self.config.clone(), &self.runtime, 0)?;
        m.set_param_values(&self.param_values()?)?;
        m.set_buffer_values(&self.buffer_values()?)?;
        Ok(m)
    }
}

/// Number of rows whose argmax equals the label.
pub fn count_correct(logits: &Tensor, y: &Tensor) -> Result<usize> {
    let pred = logits.argmax(1)?;
    Ok(pred
        .eq(y)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()? as usize)
}
