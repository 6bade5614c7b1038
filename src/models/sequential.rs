//! [`Sequential`]: a PyTorch `nn.Sequential` from a textual spec, with its `state_dict` loaded
//! from safetensors under PyTorch's own names — no Python needed.
//!
//! The spec lists the modules in order, separated by commas, semicolons or new lines, written
//! as in PyTorch (the `nn.` prefix and letter case are optional):
//!
//! ```text
//! Conv2d(1, 32, 5, padding=2), ReLU, MaxPool2d(2), Conv2d(32, 64, 5), ReLU, MaxPool2d(2),
//! Flatten, Linear(1600, 10)
//! ```
//!
//! | module | arguments (PyTorch's names and defaults) |
//! |---|---|
//! | `Conv2d` | in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=True |
//! | `Linear` | in_features, out_features, bias=True |
//! | `ReLU`, `Tanh`, `Sigmoid`, `GELU` | — (GELU is the exact, erf form) |
//! | `MaxPool2d`, `AvgPool2d` | kernel_size, stride=kernel_size, padding=0 |
//! | `BatchNorm2d`, `BatchNorm1d` | num_features (eps 1e-5, momentum 0.1) |
//! | `Flatten` | — |
//! | `Dropout` | p (the identity: curvature runs in eval mode; training runs without it) |
//!
//! Module *i* (0-based, counting every module as PyTorch does) owns the tensors `i.weight`,
//! `i.bias`, and for BatchNorm `i.running_mean`, `i.running_var` (`i.num_batches_tracked` is
//! accepted and ignored) — exactly the keys of `model.state_dict()` saved with
//! `safetensors.torch.save_file`. Shapes are inferred from the input shape and checked layer
//! by layer; the width of the last layer is the number of classes.

use super::layers::{BnBuffers, ConvArgs};
use super::network::{parts_accessors, InputBox, Network, Parts};
use crate::models::layers;
use crate::{Error, Result, Runtime};
use candle_core::{Tensor, Var};
use std::path::Path;

/// A `Conv2d` module (PyTorch's arguments; square kernels, dilation 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
    pub bias: bool,
}

/// One module of a spec.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    Conv2d(Conv2dSpec),
    Linear {
        in_features: usize,
        out_features: usize,
        bias: bool,
    },
    Relu,
    Tanh,
    Sigmoid,
    Gelu,
    MaxPool2d {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    AvgPool2d {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    BatchNorm {
        features: usize,
    },
    Flatten,
    Dropout,
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Layer::Conv2d(c) => write!(
                f,
                "Conv2d({}, {}, {}, stride={}, padding={}, groups={}, bias={})",
                c.in_channels, c.out_channels, c.kernel, c.stride, c.padding, c.groups, c.bias
            ),
            Layer::Linear {
                in_features,
                out_features,
                bias,
            } => write!(f, "Linear({in_features}, {out_features}, bias={bias})"),
            Layer::Relu => write!(f, "ReLU"),
            Layer::Tanh => write!(f, "Tanh"),
            Layer::Sigmoid => write!(f, "Sigmoid"),
            Layer::Gelu => write!(f, "GELU"),
            Layer::MaxPool2d {
                kernel,
                stride,
                padding,
            } => write!(f, "MaxPool2d({kernel}, stride={stride}, padding={padding})"),
            Layer::AvgPool2d {
                kernel,
                stride,
                padding,
            } => write!(f, "AvgPool2d({kernel}, stride={stride}, padding={padding})"),
            Layer::BatchNorm { features } => write!(f, "BatchNorm({features})"),
            Layer::Flatten => write!(f, "Flatten"),
            Layer::Dropout => write!(f, "Dropout"),
        }
    }
}

fn spec_err(index: usize, layer: &str, problem: impl Into<String>) -> Error {
    Error::Spec {
        index,
        layer: layer.trim().to_string(),
        problem: problem.into(),
    }
}

/// Splits at top-level separators (`,` `;` new line), outside parentheses.
fn split_items(spec: &str) -> Result<Vec<String>> {
    let (mut items, mut cur, mut depth) = (vec![], String::new(), 0i32);
    for ch in spec.chars() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return Err(spec_err(items.len(), &cur, "unbalanced ')'"));
        }
        if depth == 0 && matches!(ch, ',' | ';' | '\n') {
            items.push(std::mem::take(&mut cur));
        } else {
            cur.push(ch);
        }
    }
    if depth != 0 {
        return Err(spec_err(items.len(), &cur, "unclosed '('"));
    }
    items.push(cur);
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.starts_with('#'))
        .collect())
}

/// A module's arguments: positional, then `name=value`.
struct Args<'a> {
    index: usize,
    text: &'a str,
    pos: Vec<String>,
    named: Vec<(String, String)>,
    used: Vec<bool>,
}

impl<'a> Args<'a> {
    fn parse(index: usize, text: &'a str, inner: &str) -> Result<Self> {
        let (mut pos, mut named) = (vec![], vec![]);
        let mut parts = vec![];
        let (mut cur, mut depth) = (String::new(), 0i32);
        for ch in inner.chars() {
            match ch {
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                _ => {}
            }
            if ch == ',' && depth == 0 {
                parts.push(std::mem::take(&mut cur));
            } else {
                cur.push(ch);
            }
        }
        parts.push(cur);
        for a in parts.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            match a.split_once('=') {
                Some((k, v)) => named.push((k.trim().to_string(), v.trim().to_string())),
                None if named.is_empty() => pos.push(a.to_string()),
                None => {
                    return Err(spec_err(
                        index,
                        text,
                        format!("positional argument `{a}` after a named one"),
                    ))
                }
            }
        }
        let used = vec![false; named.len()];
        Ok(Args {
            index,
            text,
            pos,
            named,
            used,
        })
    }
    /// Argument `i` (positional) or `name`, parsed; `default` when absent.
    fn get<T: std::str::FromStr>(&mut self, i: usize, name: &str, default: Option<T>) -> Result<T> {
        let raw = match self.named.iter().position(|(k, _)| k == name) {
            Some(j) => {
                if i < self.pos.len() {
                    return Err(spec_err(
                        self.index,
                        self.text,
                        format!("`{name}` given twice"),
                    ));
                }
                self.used[j] = true;
                Some(self.named[j].1.clone())
            }
            None => self.pos.get(i).cloned(),
        };
        match raw {
            None => default.ok_or_else(|| {
                spec_err(self.index, self.text, format!("missing argument `{name}`"))
            }),
            Some(r) => {
                let r = match r.as_str() {
                    "True" => "true".to_string(),
                    "False" => "false".to_string(),
                    _ => r,
                };
                // (k, k) tuples: square kernels, strides and paddings only
                let r = match r.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
                    Some(t) => {
                        let parts: Vec<&str> = t.split(',').map(str::trim).collect();
                        if parts.len() != 2 || parts[0] != parts[1] {
                            return Err(spec_err(
                                self.index,
                                self.text,
                                format!("`{name}` = {r}: only square (k, k) values are supported"),
                            ));
                        }
                        parts[0].to_string()
                    }
                    None => r,
                };
                r.parse::<T>().map_err(|_| {
                    spec_err(
                        self.index,
                        self.text,
                        format!("`{name}` = `{r}` is not a valid value"),
                    )
                })
            }
        }
    }
    fn positive(&mut self, i: usize, name: &str, default: Option<usize>) -> Result<usize> {
        let v = self.get(i, name, default)?;
        if v == 0 {
            return Err(spec_err(
                self.index,
                self.text,
                format!("`{name}` must be ≥ 1"),
            ));
        }
        Ok(v)
    }
    /// Errors on arguments nobody read (typos, unsupported options).
    fn finish(self, max_pos: usize) -> Result<()> {
        if self.pos.len() > max_pos {
            return Err(spec_err(
                self.index,
                self.text,
                format!(
                    "{} positional arguments, at most {max_pos} expected",
                    self.pos.len()
                ),
            ));
        }
        if let Some(((k, _), _)) = self.named.iter().zip(&self.used).find(|(_, u)| !**u) {
            return Err(spec_err(
                self.index,
                self.text,
                format!("unknown or unsupported argument `{k}`"),
            ));
        }
        Ok(())
    }
}

/// Parses a spec into its modules (see the module docs for the syntax).
pub fn parse_spec(spec: &str) -> Result<Vec<Layer>> {
    let items = split_items(spec)?;
    if items.is_empty() {
        return Err(spec_err(0, spec, "the spec has no modules"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, text)| parse_layer(i, text))
        .collect()
}

fn parse_layer(i: usize, text: &str) -> Result<Layer> {
    let (name, inner) = match text.find('(') {
        Some(p) => {
            let inner = text[p + 1..]
                .strip_suffix(')')
                .ok_or_else(|| spec_err(i, text, "expected `Name(arguments)`"))?;
            (&text[..p], inner)
        }
        None => (text, ""),
    };
    let name = name.trim();
    let key = name
        .strip_prefix("nn.")
        .or_else(|| name.strip_prefix("torch.nn."))
        .unwrap_or(name)
        .to_ascii_lowercase();
    let mut a = Args::parse(i, text, inner)?;
    let (layer, max_pos) = match key.as_str() {
        "conv2d" => {
            let c = Conv2dSpec {
                in_channels: a.positive(0, "in_channels", None)?,
                out_channels: a.positive(1, "out_channels", None)?,
                kernel: a.positive(2, "kernel_size", None)?,
                stride: a.positive(3, "stride", Some(1))?,
                padding: a.get(4, "padding", Some(0))?,
                groups: {
                    let d: usize = a.get(5, "dilation", Some(1))?;
                    if d != 1 {
                        return Err(spec_err(i, text, "dilation other than 1 is not supported"));
                    }
                    a.positive(6, "groups", Some(1))?
                },
                bias: a.get(7, "bias", Some(true))?,
            };
            if c.in_channels % c.groups != 0 || c.out_channels % c.groups != 0 {
                return Err(spec_err(
                    i,
                    text,
                    format!("groups={} must divide in and out channels", c.groups),
                ));
            }
            (Layer::Conv2d(c), 8)
        }
        "linear" => (
            Layer::Linear {
                in_features: a.positive(0, "in_features", None)?,
                out_features: a.positive(1, "out_features", None)?,
                bias: a.get(2, "bias", Some(true))?,
            },
            3,
        ),
        "relu" => (Layer::Relu, 0),
        "tanh" => (Layer::Tanh, 0),
        "sigmoid" => (Layer::Sigmoid, 0),
        "gelu" => {
            let approx: String = a.get(0, "approximate", Some("'none'".to_string()))?;
            if approx.trim_matches(|c| c == '\'' || c == '"') != "none" {
                return Err(spec_err(i, text, "only the exact (erf) GELU is supported"));
            }
            (Layer::Gelu, 1)
        }
        "maxpool2d" | "avgpool2d" => {
            let kernel = a.positive(0, "kernel_size", None)?;
            let stride = a.positive(1, "stride", Some(kernel))?;
            let padding: usize = a.get(2, "padding", Some(0))?;
            if 2 * padding > kernel {
                return Err(spec_err(i, text, "padding must be at most half the kernel"));
            }
            let l = if key == "maxpool2d" {
                Layer::MaxPool2d {
                    kernel,
                    stride,
                    padding,
                }
            } else {
                Layer::AvgPool2d {
                    kernel,
                    stride,
                    padding,
                }
            };
            (l, 3)
        }
        "batchnorm2d" | "batchnorm1d" => {
            let features = a.positive(0, "num_features", None)?;
            let eps: f64 = a.get(1, "eps", Some(1e-5))?;
            let momentum: f64 = a.get(2, "momentum", Some(0.1))?;
            if eps != 1e-5 || momentum != 0.1 {
                return Err(spec_err(
                    i,
                    text,
                    "only PyTorch's defaults eps=1e-5, momentum=0.1 are supported",
                ));
            }
            (Layer::BatchNorm { features }, 3)
        }
        "flatten" => (Layer::Flatten, 0),
        "dropout" => {
            let p: f64 = a.get(0, "p", Some(0.5))?;
            if !(0.0..=1.0).contains(&p) {
                return Err(spec_err(i, text, "p must be in [0, 1]"));
            }
            (Layer::Dropout, 1)
        }
        _ => {
            return Err(spec_err(
                i,
                text,
                format!(
                    "unknown module `{name}` (known: Conv2d, Linear, ReLU, Tanh, Sigmoid, GELU, \
                     MaxPool2d, AvgPool2d, BatchNorm2d, BatchNorm1d, Flatten, Dropout)"
                ),
            ))
        }
    };
    a.finish(max_pos)?;
    Ok(layer)
}

/// A PyTorch `nn.Sequential` classifier built from a spec (see the module docs).
#[derive(Clone)]
pub struct Sequential {
    p: Parts,
    layers: Vec<Layer>,
    /// The input shape (also in `p`, as the trait's optional one).
    shape: Vec<usize>,
    norm: Option<(Tensor, Tensor)>,
}

impl std::fmt::Debug for Sequential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sequential({}, {} modules, {} parameters, input {:?}, {} classes)",
            self.p.name,
            self.layers.len(),
            self.num_params(),
            self.shape,
            self.p.num_classes
        )
    }
}

impl Sequential {
    /// The network of `spec` for inputs of shape `input_shape` (one sample, e.g. `[1, 28, 28]`
    /// or `[784]`), initialised with PyTorch's defaults from `seed`. Every layer's shape is
    /// checked against its input; errors name the module.
    pub fn new(spec: &str, input_shape: &[usize], rt: &Runtime, seed: u64) -> Result<Self> {
        let layers = parse_spec(spec)?;
        let mut shape = input_shape.to_vec();
        if shape.is_empty() || shape.contains(&0) {
            return Err(Error::Shape(format!(
                "input shape {input_shape:?}: need one or more positive dimensions"
            )));
        }
        let (mut params, mut buffers) = (vec![], vec![]);
        let zeros = |dims: Vec<usize>| -> Result<Var> {
            Ok(Var::from_tensor(&Tensor::zeros(
                dims, rt.dtype, &rt.device,
            )?)?)
        };
        for (i, l) in layers.iter().enumerate() {
            let text = l.to_string();
            let want_image = |shape: &[usize]| -> Result<(usize, usize, usize)> {
                match shape {
                    [c, h, w] => Ok((*c, *h, *w)),
                    _ => Err(spec_err(
                        i,
                        &text,
                        format!("needs (C, H, W) inputs, gets {shape:?}"),
                    )),
                }
            };
            shape = match *l {
                Layer::Conv2d(Conv2dSpec {
                    in_channels,
                    out_channels,
                    kernel,
                    stride,
                    padding,
                    groups,
                    bias,
                }) => {
                    let (c, h, w) = want_image(&shape)?;
                    if c != in_channels {
                        return Err(spec_err(
                            i,
                            &text,
                            format!("gets {c} channels, declares {in_channels}"),
                        ));
                    }
                    let out = |n: usize| {
                        (n + 2 * padding)
                            .checked_sub(kernel)
                            .map(|d| d / stride + 1)
                    };
                    let (oh, ow) = match (out(h), out(w)) {
                        (Some(a), Some(b)) => (a, b),
                        _ => {
                            return Err(spec_err(
                                i,
                                &text,
                                format!("input {h}×{w} smaller than the kernel"),
                            ))
                        }
                    };
                    params.push((
                        format!("{i}.weight"),
                        zeros(vec![out_channels, in_channels / groups, kernel, kernel])?,
                    ));
                    if bias {
                        params.push((format!("{i}.bias"), zeros(vec![out_channels])?));
                    }
                    vec![out_channels, oh, ow]
                }
                Layer::Linear {
                    in_features,
                    out_features,
                    bias,
                } => {
                    if shape.last() != Some(&in_features) {
                        return Err(spec_err(
                            i,
                            &text,
                            format!(
                                "gets inputs {shape:?}, declares {in_features} features{}",
                                if shape.len() > 1 {
                                    " (a Flatten before it?)"
                                } else {
                                    ""
                                }
                            ),
                        ));
                    }
                    params.push((
                        format!("{i}.weight"),
                        zeros(vec![out_features, in_features])?,
                    ));
                    if bias {
                        params.push((format!("{i}.bias"), zeros(vec![out_features])?));
                    }
                    let mut s = shape.clone();
                    if let Some(last) = s.last_mut() {
                        *last = out_features;
                    }
                    s
                }
                Layer::MaxPool2d {
                    kernel,
                    stride,
                    padding,
                }
                | Layer::AvgPool2d {
                    kernel,
                    stride,
                    padding,
                } => {
                    let (c, h, w) = want_image(&shape)?;
                    if h + 2 * padding < kernel || w + 2 * padding < kernel {
                        return Err(spec_err(
                            i,
                            &text,
                            format!("input {h}×{w} smaller than the kernel"),
                        ));
                    }
                    let out = |n: usize| (n + 2 * padding - kernel) / stride + 1;
                    vec![c, out(h), out(w)]
                }
                Layer::BatchNorm { features } => {
                    if shape[0] != features || shape.len() == 2 {
                        return Err(spec_err(
                            i,
                            &text,
                            format!("gets inputs {shape:?}, declares {features} features"),
                        ));
                    }
                    params.push((format!("{i}.weight"), zeros(vec![features])?));
                    params.push((format!("{i}.bias"), zeros(vec![features])?));
                    buffers.push((format!("{i}.running_mean"), zeros(vec![features])?));
                    buffers.push((format!("{i}.running_var"), zeros(vec![features])?));
                    shape
                }
                Layer::Flatten => vec![shape.iter().product()],
                Layer::Relu | Layer::Tanh | Layer::Sigmoid | Layer::Gelu | Layer::Dropout => shape,
            };
        }
        let num_classes = match shape[..] {
            [c] if c >= 2 => c,
            _ => {
                return Err(spec_err(
                    layers.len() - 1,
                    &layers[layers.len() - 1].to_string(),
                    format!(
                        "the network must end in logits (C ≥ 2), it gives {shape:?} per sample"
                    ),
                ))
            }
        };
        let net = Sequential {
            p: Parts {
                name: "sequential".into(),
                params,
                buffers,
                runtime: rt.clone(),
                num_classes,
                input_shape: Some(input_shape.to_vec()),
                input_box: InputBox::UNIT,
            },
            layers,
            shape: input_shape.to_vec(),
            norm: None,
        };
        super::reset_parameters(&net, seed)?;
        Ok(net)
    }

    /// [`Sequential::new`] with its parameters and buffers loaded from a safetensors
    /// `state_dict` (PyTorch's names). Missing, unexpected, mis-shaped or non-finite tensors
    /// give one error naming each tensor and its module; nothing is loaded unless all fit.
    pub fn load(
        spec: &str,
        input_shape: &[usize],
        path: impl AsRef<Path>,
        rt: &Runtime,
    ) -> Result<Self> {
        let net = Self::new(spec, input_shape, rt, 0)?;
        let path = path.as_ref();
        let bytes = crate::files::read_regular(path).map_err(|e| Error::io(path, e))?;
        let layers = net.layers.clone();
        super::io::load_into(&net, path, &bytes, &|n| {
            let l = n
                .split('.')
                .next()
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| layers.get(i).map(|l| (i, l)));
            match l {
                Some((i, l)) => format!("{n} (module {i}, {l})"),
                None => n.to_string(),
            }
        })?;
        Ok(net)
    }

    /// Names the network in titles and JSON.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.p.name = name.into();
        self
    }
    /// A fixed first step x ↦ (x − mean_c)/std_c per channel (the normalisation the network was
    /// trained with), so that inputs stay in their box ([0, 1] pixels) for attacks.
    pub fn with_normalization(mut self, mean: &[f64], std: &[f64]) -> Result<Self> {
        let c = self.shape[0];
        if mean.len() != c || std.len() != c || std.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
            return Err(Error::invalid(
                "normalization",
                format!("need {c} means and {c} positive finite stds"),
            ));
        }
        let mut shape = vec![1usize; self.shape.len() + 1];
        shape[1] = c;
        let t = |v: &[f64]| -> Result<Tensor> {
            Ok(
                Tensor::from_vec(v.to_vec(), shape.clone(), &self.p.runtime.device)?
                    .to_dtype(self.p.runtime.dtype)?,
            )
        };
        self.norm = Some((t(mean)?, t(std)?));
        Ok(self)
    }
    /// The box inputs live in (default [0, 1]); attacks clip to it.
    pub fn with_input_box(mut self, b: InputBox) -> Self {
        self.p.input_box = b;
        self
    }
    /// The modules.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    fn run(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let k = self.p.runtime.kernels;
        let p = |name: String| -> Result<&Tensor> {
            self.p
                .params
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_tensor())
                .ok_or_else(|| Error::invalid("parameter", format!("no parameter named {name}")))
        };
        let buf = |name: String| -> Result<&Var> {
            self.p
                .buffers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v)
                .ok_or_else(|| Error::invalid("buffer", format!("no buffer named {name}")))
        };
        let mut h = match &self.norm {
            Some((m, s)) => x.broadcast_sub(m)?.broadcast_div(s)?,
            None => x.clone(),
        };
        for (i, l) in self.layers.iter().enumerate() {
            let bias = |has: bool| -> Result<Option<&Tensor>> {
                if has {
                    Ok(Some(p(format!("{i}.bias"))?))
                } else {
                    Ok(None)
                }
            };
            h = match *l {
                Layer::Conv2d(c) => {
                    let (stride, padding, groups, has_bias) =
                        (c.stride, c.padding, c.groups, c.bias);
                    let w = p(format!("{i}.weight"))?;
                    if groups == 1 {
                        k.conv2d(&h, w, bias(has_bias)?, ConvArgs::new(stride, padding))?
                    } else {
                        let y = h.conv2d(w, padding, stride, 1, groups)?;
                        match bias(has_bias)? {
                            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?,
                            None => y,
                        }
                    }
                }
                Layer::Linear { bias: has_bias, .. } => {
                    k.linear(&h, p(format!("{i}.weight"))?, bias(has_bias)?)?
                }
                Layer::Relu => k.relu(&h)?,
                Layer::Tanh => h.tanh()?,
                // 1/(1 + e^{−x}) from elementary ops: exact to any order of derivative
                Layer::Sigmoid => (h.neg()?.exp()? + 1.0)?.recip()?,
                // x·Φ(x) = x·(1 + erf(x/√2))/2, the exact GELU, from elementary ops
                Layer::Gelu => {
                    let phi =
                        ((h.affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?.erf()? + 1.0)? * 0.5)?;
                    (&h * phi)?
                }
                Layer::MaxPool2d {
                    kernel,
                    stride,
                    padding,
                } => k.max_pool2d(&h, kernel, stride, padding)?,
                Layer::AvgPool2d {
                    kernel,
                    stride,
                    padding,
                } => layers::avg_pool2d(&h, kernel, stride, padding)?,
                Layer::BatchNorm { .. } => {
                    let bufs = BnBuffers {
                        running_mean: buf(format!("{i}.running_mean"))?,
                        running_var: buf(format!("{i}.running_var"))?,
                    };
                    let (g, b) = (p(format!("{i}.weight"))?, p(format!("{i}.bias"))?);
                    if h.rank() == 2 {
                        // BatchNorm1d on (N, C): per feature, as (N, C, 1, 1)
                        let (n, c) = h.dims2()?;
                        k.batch_norm(&h.reshape((n, c, 1, 1))?, g, b, &bufs, train)?
                            .reshape((n, c))?
                    } else {
                        k.batch_norm(&h, g, b, &bufs, train)?
                    }
                }
                Layer::Flatten => h.flatten_from(1)?,
                Layer::Dropout => h,
            };
        }
        Ok(h)
    }
}

impl Network for Sequential {
    parts_accessors!();
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        crate::autodiff::on_pool(x.device(), || self.run(x, train))
    }
    /// ReLU, pools, linear maps and BatchNorm (eval) are piecewise linear; Tanh, Sigmoid and
    /// GELU are not.
    fn piecewise_linear(&self) -> Option<bool> {
        Some(
            !self
                .layers
                .iter()
                .any(|l| matches!(l, Layer::Tanh | Layer::Sigmoid | Layer::Gelu)),
        )
    }
    fn metadata(&self) -> Vec<(String, String)> {
        vec![(
            "spec".to_string(),
            self.layers
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        )]
    }
}
