//! The paper's architectures (Table 8) plus two small test models, as parameter specs and
//! forward functions. ReLU follows every convolution and every hidden fully connected layer.
//!
//! Parameter names are exactly PyTorch `state_dict` names.
//!
//! Note on C2: the seed table says 63 channels and omits the pools; the authors' code
//! (HessianFlow `c2_model`) pools after conv2 and conv4 and uses 64 channels — 63 is a typo.
//! With the pools, fc1 has 128·8·8 = 8192 inputs.

use super::layers::{BnBuffers, Kernels};
use super::ModelKind;
use crate::{Error, Result};
use candle_core::Tensor;

/// How a parameter is initialised (PyTorch defaults).
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// U(−b, b) with b = 1/√fan_in (PyTorch's kaiming_uniform(a=√5) for weights and its bias rule).
    Uniform(f64),
    Ones,
    Zeros,
}

/// One named tensor of a model: shape and initialisation.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// Hidden-layer activation of the `mlp` test model (tanh breaks Theorem 1's PSD property).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Tanh,
}

impl Activation {
    /// The activation on the given CPU kernels.
    pub fn apply(self, kernels: Kernels, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Relu => kernels.relu(x)?,
            Activation::Tanh => x.tanh()?,
        })
    }
}

pub(crate) struct Specs {
    pub params: Vec<TensorSpec>,
    pub buffers: Vec<TensorSpec>,
}

impl Specs {
    fn new() -> Self {
        Specs {
            params: vec![],
            buffers: vec![],
        }
    }
    fn conv(&mut self, name: &str, cin: usize, cout: usize, k: usize, bias: bool) {
        let b = 1.0 / ((cin * k * k) as f64).sqrt();
        self.params.push(TensorSpec {
            name: format!("{name}.weight"),
            shape: vec![cout, cin, k, k],
            init: Init::Uniform(b),
        });
        if bias {
            self.params.push(TensorSpec {
                name: format!("{name}.bias"),
                shape: vec![cout],
                init: Init::Uniform(b),
            });
        }
    }
    fn linear(&mut self, name: &str, din: usize, dout: usize) {
        let b = 1.0 / (din as f64).sqrt();
        self.params.push(TensorSpec {
            name: format!("{name}.weight"),
            shape: vec![dout, din],
            init: Init::Uniform(b),
        });
        self.params.push(TensorSpec {
            name: format!("{name}.bias"),
            shape: vec![dout],
            init: Init::Uniform(b),
        });
    }
    fn bn(&mut self, name: &str, c: usize) {
        for (suffix, init) in [("weight", Init::Ones), ("bias", Init::Zeros)] {
            self.params.push(TensorSpec {
                name: format!("{name}.{suffix}"),
                shape: vec![c],
                init,
            });
        }
        for (suffix, init) in [("running_mean", Init::Zeros), ("running_var", Init::Ones)] {
            self.buffers.push(TensorSpec {
                name: format!("{name}.{suffix}"),
                shape: vec![c],
                init,
            });
        }
    }
}

/// ResNet-18 stages: (name, in planes, planes, stride) of each BasicBlock.
fn resnet_blocks() -> Vec<(String, usize, usize, usize)> {
    let mut v = vec![];
    let mut inp = 64;
    for (li, (planes, stride)) in [(64, 1), (128, 2), (256, 2), (512, 2)].iter().enumerate() {
        for bi in 0..2 {
            let s = if bi == 0 { *stride } else { 1 };
            v.push((format!("layer{}.{}", li + 1, bi), inp, *planes, s));
            inp = *planes;
        }
    }
    v
}

pub(crate) fn specs(
    kind: ModelKind,
    input: [usize; 3],
    classes: usize,
    hidden: usize,
) -> Result<Specs> {
    let [c, h, w] = input;
    let mut s = Specs::new();
    let need = |ok: bool, what: &str| -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                "model config",
                format!("{} needs {what}, got input {:?}", kind.name(), input),
            ))
        }
    };
    match kind {
        ModelKind::M1 => {
            need(h % 4 == 0 && w % 4 == 0, "H and W divisible by 4")?;
            s.conv("conv1", c, 20, 5, true);
            s.conv("conv2", 20, 50, 5, true);
            s.linear("fc1", 50 * (h / 4) * (w / 4), 500);
            s.linear("fc2", 500, classes);
        }
        ModelKind::C1 => {
            need(h % 16 == 0 && w % 16 == 0, "H and W divisible by 16")?;
            s.conv("conv1", c, 64, 5, true);
            s.bn("bn1", 64);
            s.conv("conv2", 64, 64, 5, true);
            s.bn("bn2", 64);
            s.linear("fc1", 64 * (h / 16) * (w / 16), 384);
            s.linear("fc2", 384, 192);
            s.linear("fc3", 192, classes);
        }
        ModelKind::C2 | ModelKind::C3 => {
            need(h % 4 == 0 && w % 4 == 0, "H and W divisible by 4")?;
            let bn = kind == ModelKind::C2;
            for (i, (ci, co)) in [(c, 64), (64, 64), (64, 128), (128, 128)]
                .iter()
                .enumerate()
            {
                s.conv(&format!("conv{}", i + 1), *ci, *co, 3, true);
                if bn {
                    s.bn(&format!("bn{}", i + 1), *co);
                }
            }
            s.linear("fc1", 128 * (h / 4) * (w / 4), 256);
            s.linear("fc2", 256, 256);
            s.linear("fc3", 256, classes);
        }
        ModelKind::ResNet18 => {
            need(h % 8 == 0 && w % 8 == 0, "H and W divisible by 8")?;
            s.conv("conv1", c, 64, 3, false);
            s.bn("bn1", 64);
            for (name, inp, planes, stride) in resnet_blocks() {
                s.conv(&format!("{name}.conv1"), inp, planes, 3, false);
                s.bn(&format!("{name}.bn1"), planes);
                s.conv(&format!("{name}.conv2"), planes, planes, 3, false);
                s.bn(&format!("{name}.bn2"), planes);
                if stride != 1 || inp != planes {
                    s.conv(&format!("{name}.shortcut.0"), inp, planes, 1, false);
                    s.bn(&format!("{name}.shortcut.1"), planes);
                }
            }
            s.linear("linear", 512, classes);
        }
        ModelKind::LogReg => s.linear("linear", c * h * w, classes),
        ModelKind::Mlp => {
            if hidden == 0 {
                return Err(Error::invalid(
                    "hidden",
                    "mlp needs at least one hidden unit",
                ));
            }
            s.linear("fc1", c * h * w, hidden);
            s.linear("fc2", hidden, classes);
        }
    }
    Ok(s)
}

/// Read access to a model's named tensors during a forward pass.
pub(crate) trait Lookup {
    fn p(&self, name: &str) -> Result<&Tensor>;
    fn bufs(&self, prefix: &str) -> Result<BnBuffers<'_>>;
    /// The CPU kernels of the model's runtime.
    fn kernels(&self) -> Kernels;
}

fn relu<L: Lookup>(l: &L, x: &Tensor) -> Result<Tensor> {
    l.kernels().relu(x)
}

fn max_pool2d<L: Lookup>(l: &L, x: &Tensor, k: usize, s: usize, p: usize) -> Result<Tensor> {
    l.kernels().max_pool2d(x, k, s, p)
}

fn bn<L: Lookup>(l: &L, name: &str, x: &Tensor, train: bool) -> Result<Tensor> {
    l.kernels().batch_norm(
        x,
        l.p(&format!("{name}.weight"))?,
        l.p(&format!("{name}.bias"))?,
        &l.bufs(name)?,
        train,
    )
}

fn conv<L: Lookup>(l: &L, name: &str, x: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let b = l.p(&format!("{name}.bias")).ok();
    l.kernels()
        .conv2d(x, l.p(&format!("{name}.weight"))?, b, stride, pad)
}

/// relu(conv(…)) as one fused op where the kernels allow.
fn conv_relu<L: Lookup>(
    l: &L,
    name: &str,
    x: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let b = l.p(&format!("{name}.bias")).ok();
    l.kernels()
        .conv2d_relu(x, l.p(&format!("{name}.weight"))?, b, stride, pad)
}

fn fc<L: Lookup>(l: &L, name: &str, x: &Tensor) -> Result<Tensor> {
    l.kernels().linear(
        x,
        l.p(&format!("{name}.weight"))?,
        Some(l.p(&format!("{name}.bias"))?),
    )
}

/// Logits of a normalised input `x` (N, C, H, W).
pub(crate) fn forward<L: Lookup>(
    kind: ModelKind,
    act: Activation,
    l: &L,
    x: &Tensor,
    train: bool,
) -> Result<Tensor> {
    match kind {
        ModelKind::M1 => {
            let x = conv_relu(l, "conv1", x, 2, 2)?;
            let x = conv_relu(l, "conv2", &x, 2, 2)?;
            let x = relu(l, &fc(l, "fc1", &x.flatten_from(1)?)?)?;
            fc(l, "fc2", &x)
        }
        ModelKind::C1 => {
            let x = conv_relu(l, "conv1", x, 2, 2)?;
            let x = bn(l, "bn1", &max_pool2d(l, &x, 3, 2, 1)?, train)?;
            let x = conv_relu(l, "conv2", &x, 2, 2)?;
            let x = bn(l, "bn2", &max_pool2d(l, &x, 3, 2, 1)?, train)?;
            let x = relu(l, &fc(l, "fc1", &x.flatten_from(1)?)?)?;
            let x = relu(l, &fc(l, "fc2", &x)?)?;
            fc(l, "fc3", &x)
        }
        ModelKind::C2 | ModelKind::C3 => {
            let with_bn = kind == ModelKind::C2;
            let mut x = x.clone();
            for i in 1..=4 {
                x = conv_relu(l, &format!("conv{i}"), &x, 1, 1)?;
                if with_bn {
                    x = bn(l, &format!("bn{i}"), &x, train)?;
                }
                if i == 2 || i == 4 {
                    x = max_pool2d(l, &x, 2, 2, 0)?;
                }
            }
            let x = relu(l, &fc(l, "fc1", &x.flatten_from(1)?)?)?;
            let x = relu(l, &fc(l, "fc2", &x)?)?;
            fc(l, "fc3", &x)
        }
        ModelKind::ResNet18 => {
            let mut x = relu(l, &bn(l, "bn1", &conv(l, "conv1", x, 1, 1)?, train)?)?;
            for (name, inp, planes, stride) in resnet_blocks() {
                let o = relu(
                    l,
                    &bn(
                        l,
                        &format!("{name}.bn1"),
                        &conv(l, &format!("{name}.conv1"), &x, stride, 1)?,
                        train,
                    )?,
                )?;
                let o = bn(
                    l,
                    &format!("{name}.bn2"),
                    &conv(l, &format!("{name}.conv2"), &o, 1, 1)?,
                    train,
                )?;
                let sc = if stride != 1 || inp != planes {
                    let s = conv(l, &format!("{name}.shortcut.0"), &x, stride, 0)?;
                    bn(l, &format!("{name}.shortcut.1"), &s, train)?
                } else {
                    x.clone()
                };
                x = relu(l, &(o + sc)?)?;
            }
            // Global average pool (kuangliu's avg_pool2d(out, 4) on the 4x4 map).
            let x = x.mean(3)?.mean(2)?;
            fc(l, "linear", &x)
        }
        ModelKind::LogReg => fc(l, "linear", &x.flatten_from(1)?),
        ModelKind::Mlp => {
            let h = act.apply(l.kernels(), &fc(l, "fc1", &x.flatten_from(1)?)?)?;
            fc(l, "fc2", &h)
        }
    }
}
