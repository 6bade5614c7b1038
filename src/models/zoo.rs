//! The paper's architectures (Table 8) plus two small test models, each defined once, by
//! `architecture`, over the crate's `Net` trait. Run with `Shapes` it yields the parameter and
//! buffer specs (names, shapes, initialisation) from the input shape alone; run with
//! `Forward` it computes the logits. Names are exactly PyTorch `state_dict` names, and a
//! layer's input width is read from its input, so the two runs cannot disagree.
//!
//! Note on C2: the seed table says 63 channels and omits the pools; the authors' code
//! (HessianFlow `c2_model`) pools after conv2 and conv4 and uses 64 channels — 63 is a typo.
//! With the pools, fc1 has 128·8·8 = 8192 inputs.

use super::layers::{self, BnBuffers, ConvArgs, Kernels};
use super::ModelKind;
use crate::ops::conv::out_len;
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

/// A convolution layer: `cout` filters of k×k, stride, zero padding, bias (PyTorch's default:
/// yes), followed by a ReLU when `relu` (one fused op where the kernels allow).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conv {
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    bias: bool,
    relu: bool,
}

impl Conv {
    fn new(cout: usize, k: usize) -> Self {
        Conv {
            cout,
            k,
            stride: 1,
            pad: 0,
            bias: true,
            relu: false,
        }
    }
    fn stride(self, stride: usize) -> Self {
        Conv { stride, ..self }
    }
    fn pad(self, pad: usize) -> Self {
        Conv { pad, ..self }
    }
    fn no_bias(self) -> Self {
        Conv {
            bias: false,
            ..self
        }
    }
    fn relu(self) -> Self {
        Conv { relu: true, ..self }
    }
}

/// The operations an architecture is written in. `V` is what flows between layers: a shape
/// for [`Shapes`], a tensor for [`Forward`].
pub(crate) trait Net {
    type V;
    /// 2-D convolution `name` over x's channels (see [`Conv`]).
    fn conv(&mut self, name: &str, x: &Self::V, c: Conv) -> Result<Self::V>;
    /// BatchNorm2d `name` over x's channels.
    fn bn(&mut self, name: &str, x: &Self::V) -> Result<Self::V>;
    /// Convolution `conv` (see [`Conv`], its ReLU applied last), then BatchNorm2d `bn`, then
    /// the ReLU when `c.relu`. [`Forward`] folds an eval-mode BatchNorm into the convolution.
    fn conv_bn(&mut self, conv: &str, bn: &str, x: &Self::V, c: Conv) -> Result<Self::V> {
        conv_then_bn(self, conv, bn, x, c)
    }
    /// BatchNorm2d `bn`, then `MaxPool2d(k, s, p)`. [`Forward`] pools an eval-mode BatchNorm's
    /// affine map in one op, without keeping the BatchNorm's output.
    fn bn_max_pool(
        &mut self,
        bn: &str,
        x: &Self::V,
        ksp: (usize, usize, usize),
    ) -> Result<Self::V> {
        bn_then_max_pool(self, bn, x, ksp)
    }
    /// Affine layer `name` with `dout` outputs (and bias) over x's last dimension.
    fn linear(&mut self, name: &str, x: &Self::V, dout: usize) -> Result<Self::V>;
    fn act(&mut self, a: Activation, x: &Self::V) -> Result<Self::V>;
    fn max_pool(&mut self, x: &Self::V, k: usize, s: usize, p: usize) -> Result<Self::V>;
    fn flatten(&mut self, x: &Self::V) -> Result<Self::V>;
    fn add(&mut self, a: &Self::V, b: &Self::V) -> Result<Self::V>;
    /// ReLU of a residual sum, relu(a + b). [`Forward`] runs it as one op on the fused kernels.
    fn add_relu(&mut self, a: &Self::V, b: &Self::V) -> Result<Self::V> {
        add_then_relu(self, a, b)
    }
    /// Mean over the spatial dimensions: (N, C, H, W) → (N, C).
    fn global_avg_pool(&mut self, x: &Self::V) -> Result<Self::V>;
}

/// [`Net::conv_bn`] as three layers: convolution, BatchNorm, then the ReLU when `c.relu`.
fn conv_then_bn<N: Net + ?Sized>(
    n: &mut N,
    conv: &str,
    bn: &str,
    x: &N::V,
    c: Conv,
) -> Result<N::V> {
    let y = n.conv(conv, x, Conv { relu: false, ..c })?;
    let y = n.bn(bn, &y)?;
    if c.relu {
        n.act(Activation::Relu, &y)
    } else {
        Ok(y)
    }
}

/// [`Net::bn_max_pool`] as two layers: BatchNorm, then the pool.
fn bn_then_max_pool<N: Net + ?Sized>(
    n: &mut N,
    bn: &str,
    x: &N::V,
    (k, s, p): (usize, usize, usize),
) -> Result<N::V> {
    let y = n.bn(bn, x)?;
    n.max_pool(&y, k, s, p)
}

/// [`Net::add_relu`] as two layers: the sum, then the ReLU.
fn add_then_relu<N: Net + ?Sized>(n: &mut N, a: &N::V, b: &N::V) -> Result<N::V> {
    let s = n.add(a, b)?;
    n.act(Activation::Relu, &s)
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

/// Every architecture, once: logits of a normalised input `x` (N, C, H, W). ReLU follows
/// every convolution and every hidden fully connected layer.
pub(crate) fn architecture<N: Net>(
    kind: ModelKind,
    act: Activation,
    hidden: usize,
    classes: usize,
    n: &mut N,
    x: &N::V,
) -> Result<N::V> {
    let relu = Activation::Relu;
    match kind {
        ModelKind::M1 => {
            let x = n.conv("conv1", x, Conv::new(20, 5).stride(2).pad(2).relu())?;
            let x = n.conv("conv2", &x, Conv::new(50, 5).stride(2).pad(2).relu())?;
            let x = n.flatten(&x)?;
            let x = n.linear("fc1", &x, 500)?;
            let x = n.act(relu, &x)?;
            n.linear("fc2", &x, classes)
        }
        ModelKind::C1 => {
            let x = n.conv("conv1", x, Conv::new(64, 5).stride(2).pad(2).relu())?;
            let x = n.max_pool(&x, 3, 2, 1)?;
            let x = n.bn("bn1", &x)?;
            let x = n.conv("conv2", &x, Conv::new(64, 5).stride(2).pad(2).relu())?;
            let x = n.max_pool(&x, 3, 2, 1)?;
            let x = n.bn("bn2", &x)?;
            let x = n.flatten(&x)?;
            let x = n.linear("fc1", &x, 384)?;
            let x = n.act(relu, &x)?;
            let x = n.linear("fc2", &x, 192)?;
            let x = n.act(relu, &x)?;
            n.linear("fc3", &x, classes)
        }
        ModelKind::C2 | ModelKind::C3 => {
            let with_bn = kind == ModelKind::C2;
            let mut x = n.conv("conv1", x, Conv::new(64, 3).pad(1).relu())?;
            for (i, co) in [64, 64, 128, 128].into_iter().enumerate() {
                if i > 0 {
                    x = n.conv(
                        &format!("conv{}", i + 1),
                        &x,
                        Conv::new(co, 3).pad(1).relu(),
                    )?;
                }
                let bn = format!("bn{}", i + 1);
                x = match (with_bn, i == 1 || i == 3) {
                    (true, true) => n.bn_max_pool(&bn, &x, (2, 2, 0))?,
                    (true, false) => n.bn(&bn, &x)?,
                    (false, true) => n.max_pool(&x, 2, 2, 0)?,
                    (false, false) => x,
                };
            }
            let x = n.flatten(&x)?;
            let x = n.linear("fc1", &x, 256)?;
            let x = n.act(relu, &x)?;
            let x = n.linear("fc2", &x, 256)?;
            let x = n.act(relu, &x)?;
            n.linear("fc3", &x, classes)
        }
        ModelKind::ResNet18 => {
            let c3 = |planes| Conv::new(planes, 3).pad(1).no_bias();
            let mut x = n.conv_bn("conv1", "bn1", x, c3(64).relu())?;
            for (name, inp, planes, stride) in resnet_blocks() {
                let o = n.conv_bn(
                    &format!("{name}.conv1"),
                    &format!("{name}.bn1"),
                    &x,
                    c3(planes).stride(stride).relu(),
                )?;
                let o = n.conv_bn(
                    &format!("{name}.conv2"),
                    &format!("{name}.bn2"),
                    &o,
                    c3(planes),
                )?;
                let sc = if stride != 1 || inp != planes {
                    n.conv_bn(
                        &format!("{name}.shortcut.0"),
                        &format!("{name}.shortcut.1"),
                        &x,
                        Conv::new(planes, 1).stride(stride).no_bias(),
                    )?
                } else {
                    x
                };
                x = n.add_relu(&o, &sc)?;
            }
            // Global average pool (kuangliu's avg_pool2d(out, 4) on the 4x4 map).
            let x = n.global_avg_pool(&x)?;
            n.linear("linear", &x, classes)
        }
        ModelKind::LogReg => {
            let x = n.flatten(x)?;
            n.linear("linear", &x, classes)
        }
        ModelKind::Mlp => {
            if hidden == 0 {
                return Err(Error::invalid(
                    "hidden",
                    "mlp needs at least one hidden unit",
                ));
            }
            let x = n.flatten(x)?;
            let h = n.linear("fc1", &x, hidden)?;
            let h = n.act(act, &h)?;
            n.linear("fc2", &h, classes)
        }
    }
}

/// Parameter and buffer specs of an architecture, in the order its layers are met (the
/// order in which initial values are drawn from the seeded generator).
pub(crate) struct Specs {
    pub params: Vec<TensorSpec>,
    pub buffers: Vec<TensorSpec>,
}

/// [`Net`] over shapes: records what each layer needs, computes nothing.
pub(crate) struct Shapes {
    kind: ModelKind,
    input: [usize; 3],
    specs: Specs,
}

impl Shapes {
    /// The specs of `kind` for one input of shape `input` (C, H, W).
    pub(crate) fn specs(
        kind: ModelKind,
        input: [usize; 3],
        classes: usize,
        hidden: usize,
        act: Activation,
    ) -> Result<Specs> {
        let mut s = Shapes {
            kind,
            input,
            specs: Specs {
                params: vec![],
                buffers: vec![],
            },
        };
        let x = vec![1, input[0], input[1], input[2]];
        architecture(kind, act, hidden, classes, &mut s, &x)?;
        Ok(s.specs)
    }

    fn too_small(&self, what: &str, x: &[usize]) -> Error {
        Error::invalid(
            "model config",
            format!(
                "{}: input {:?} is too small for {what} (its feature map is {:?})",
                self.kind.name(),
                self.input,
                &x[1..]
            ),
        )
    }

    fn param(&mut self, name: String, shape: Vec<usize>, init: Init) {
        self.specs.params.push(TensorSpec { name, shape, init });
    }

    fn window(&self, what: &str, x: &[usize], k: usize, s: usize, p: usize) -> Result<Vec<usize>> {
        if x.len() != 4 || x[2] + 2 * p < k || x[3] + 2 * p < k {
            return Err(self.too_small(what, x));
        }
        Ok(vec![
            x[0],
            x[1],
            out_len(x[2], k, s, p),
            out_len(x[3], k, s, p),
        ])
    }
}

impl Net for Shapes {
    type V = Vec<usize>;
    fn conv(&mut self, name: &str, x: &Vec<usize>, c: Conv) -> Result<Vec<usize>> {
        let Conv {
            cout,
            k,
            stride,
            pad,
            bias,
            ..
        } = c;
        let mut y = self.window(name, x, k, stride, pad)?;
        let cin = x[1];
        let b = 1.0 / ((cin * k * k) as f64).sqrt();
        self.param(
            format!("{name}.weight"),
            vec![cout, cin, k, k],
            Init::Uniform(b),
        );
        if bias {
            self.param(format!("{name}.bias"), vec![cout], Init::Uniform(b));
        }
        y[1] = cout;
        Ok(y)
    }
    fn bn(&mut self, name: &str, x: &Vec<usize>) -> Result<Vec<usize>> {
        let c = x[1];
        self.param(format!("{name}.weight"), vec![c], Init::Ones);
        self.param(format!("{name}.bias"), vec![c], Init::Zeros);
        for (suffix, init) in [("running_mean", Init::Zeros), ("running_var", Init::Ones)] {
            self.specs.buffers.push(TensorSpec {
                name: format!("{name}.{suffix}"),
                shape: vec![c],
                init,
            });
        }
        Ok(x.clone())
    }
    fn linear(&mut self, name: &str, x: &Vec<usize>, dout: usize) -> Result<Vec<usize>> {
        let din = *x.last().ok_or_else(|| self.too_small(name, x))?;
        let b = 1.0 / (din as f64).sqrt();
        self.param(format!("{name}.weight"), vec![dout, din], Init::Uniform(b));
        self.param(format!("{name}.bias"), vec![dout], Init::Uniform(b));
        let mut y = x.clone();
        let last = y.len() - 1;
        y[last] = dout;
        Ok(y)
    }
    fn act(&mut self, _: Activation, x: &Vec<usize>) -> Result<Vec<usize>> {
        Ok(x.clone())
    }
    fn max_pool(&mut self, x: &Vec<usize>, k: usize, s: usize, p: usize) -> Result<Vec<usize>> {
        self.window("max pool", x, k, s, p)
    }
    fn flatten(&mut self, x: &Vec<usize>) -> Result<Vec<usize>> {
        Ok(vec![x[0], x[1..].iter().product()])
    }
    fn add(&mut self, a: &Vec<usize>, b: &Vec<usize>) -> Result<Vec<usize>> {
        if a != b {
            return Err(Error::Shape(format!("residual sum of {a:?} and {b:?}")));
        }
        Ok(a.clone())
    }
    fn global_avg_pool(&mut self, x: &Vec<usize>) -> Result<Vec<usize>> {
        Ok(x[..2].to_vec())
    }
}

/// Read access to a model's named tensors during a forward pass.
pub(crate) trait Lookup {
    fn p(&self, name: &str) -> Result<&Tensor>;
    fn bufs(&self, prefix: &str) -> Result<BnBuffers<'_>>;
    /// The CPU kernels of the model's runtime.
    fn kernels(&self) -> Kernels;
}

/// [`Net`] over tensors: the forward pass, with the model's parameters, kernels and mode.
pub(crate) struct Forward<'a, L> {
    pub l: &'a L,
    pub train: bool,
}

impl<L: Lookup> Forward<'_, L> {
    /// BatchNorm `bn` in eval mode as its per-channel affine map (a, b), γ and β in the graph.
    fn bn_affine(&self, bn: &str) -> Result<(Tensor, Tensor)> {
        layers::bn_eval_affine(
            self.l.p(&format!("{bn}.weight"))?,
            self.l.p(&format!("{bn}.bias"))?,
            &self.l.bufs(bn)?,
        )
    }
}

/// Whether a convolution's weight has more than twice as many elements as its output
/// (ResNet18's last stage at batch 32 and 128): there folding BatchNorm into the weight would
/// keep a weight-sized a⊙W, and in an HVP's graph its weight-sized gradients, to save two
/// output-sized tensors (the convolution's and the BatchNorm's outputs).
fn weight_dominated(x: &Tensor, w: &Tensor, c: Conv) -> Result<bool> {
    let (n, _, h, wd) = x.dims4()?;
    let co = w.dim(0)?;
    let k = w.dim(2)?;
    let out = n * co * out_len(h, k, c.stride, c.pad) * out_len(wd, k, c.stride, c.pad);
    Ok(2 * out < w.elem_count())
}

impl<L: Lookup> Net for Forward<'_, L> {
    type V = Tensor;
    fn conv(&mut self, name: &str, x: &Tensor, c: Conv) -> Result<Tensor> {
        let w = self.l.p(&format!("{name}.weight"))?;
        let b = if c.bias {
            Some(self.l.p(&format!("{name}.bias"))?)
        } else {
            None
        };
        let args = ConvArgs::new(c.stride, c.pad);
        let args = if c.relu { args.relu() } else { args };
        self.l.kernels().conv2d(x, w, b, args)
    }
    /// Eval mode on the fused kernels: BatchNorm is the per-channel affine map a·y + b, folded
    /// into the convolution as conv(x, a⊙W) + (b + a·bias), one op whose output is the
    /// BatchNorm's (and the ReLU's, when `c.relu`). The fold is part of the graph (a⊙W is a
    /// differentiable product), so gradients reach W, γ and β exactly, to any order; the
    /// convolution's own output is never materialised or kept (ResNet18 keeps two activations
    /// per conv–BN–ReLU instead of three, and skips BatchNorm's passes). Where the weight
    /// outweighs the output ([`weight_dominated`]) it is not folded: convolution, BatchNorm
    /// (its eval-mode affine map) and ReLU as three layers, as in train mode (the HVP memory
    /// this saves: BENCHMARKS.md, eleventh sitting).
    fn conv_bn(&mut self, conv: &str, bn: &str, x: &Tensor, c: Conv) -> Result<Tensor> {
        let k = self.l.kernels();
        let w = self.l.p(&format!("{conv}.weight"))?;
        if self.train || !k.fused_on(x) || weight_dominated(x, w, c)? {
            return conv_then_bn(self, conv, bn, x, c);
        }
        let (a, b) = self.bn_affine(bn)?;
        let b = if c.bias {
            (b + (self.l.p(&format!("{conv}.bias"))? * &a)?)?
        } else {
            b
        };
        let wa = w.broadcast_mul(&a.reshape((a.dim(0)?, 1, 1, 1))?)?;
        let args = ConvArgs::new(c.stride, c.pad);
        let args = if c.relu { args.relu() } else { args };
        k.conv2d(x, &wa, Some(&b), args)
    }
    /// Eval mode: the pool is taken at the arg-max of the BatchNorm's affine map and the map
    /// applied to the pooled values (exact, any order), so C2 keeps neither full-size
    /// BatchNorm output before its pools, nor their full-size gradients in an HVP's graph.
    fn bn_max_pool(&mut self, bn: &str, x: &Tensor, ksp: (usize, usize, usize)) -> Result<Tensor> {
        if self.train || !self.l.kernels().fused_on(x) {
            return bn_then_max_pool(self, bn, x, ksp);
        }
        let (a, b) = self.bn_affine(bn)?;
        self.l.kernels().affine_max_pool2d(x, &a, &b, ksp)
    }
    fn bn(&mut self, name: &str, x: &Tensor) -> Result<Tensor> {
        self.l.kernels().batch_norm(
            x,
            self.l.p(&format!("{name}.weight"))?,
            self.l.p(&format!("{name}.bias"))?,
            &self.l.bufs(name)?,
            self.train,
        )
    }
    fn linear(&mut self, name: &str, x: &Tensor, _dout: usize) -> Result<Tensor> {
        self.l.kernels().linear(
            x,
            self.l.p(&format!("{name}.weight"))?,
            Some(self.l.p(&format!("{name}.bias"))?),
        )
    }
    fn act(&mut self, a: Activation, x: &Tensor) -> Result<Tensor> {
        match a {
            Activation::Relu => self.l.kernels().relu(x),
            Activation::Tanh => Ok(x.tanh()?),
        }
    }
    fn max_pool(&mut self, x: &Tensor, k: usize, s: usize, p: usize) -> Result<Tensor> {
        self.l.kernels().max_pool2d(x, k, s, p)
    }
    fn flatten(&mut self, x: &Tensor) -> Result<Tensor> {
        Ok(x.flatten_from(1)?)
    }
    fn add(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((a + b)?)
    }
    /// On the fused kernels one op that never keeps the sum (train mode too: it is exact).
    fn add_relu(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if !self.l.kernels().fused_on(a) {
            return add_then_relu(self, a, b);
        }
        crate::ops::fused::add_relu(a, b)
    }
    fn global_avg_pool(&mut self, x: &Tensor) -> Result<Tensor> {
        Ok(x.mean(3)?.mean(2)?)
    }
}
