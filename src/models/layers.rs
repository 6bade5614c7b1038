//! Differentiable building blocks, exact to second order under candle's autograd: the layers
//! as methods of [`Kernels`] (the fused CPU ops of `crate::ops`, or candle's own), and the
//! losses.
//!
//! Everything here is composed of candle primitives whose backward passes are themselves
//! differentiable (conv2d, matmul, elementwise ops, reductions, narrow/reshape). candle 0.11's
//! own `max_pool2d` backward is wrong (a unique maximum gets 1/k² of its gradient) and
//! `softmax_last_dim` cuts the graph, so neither is used.

use crate::{Error, Result};
use candle_core::{DType, Tensor, Var, D};

pub use crate::runtime::Kernels;

/// Stride and zero padding of a 2-D convolution, and whether a ReLU follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvArgs {
    pub stride: usize,
    pub padding: usize,
    pub relu: bool,
}

impl ConvArgs {
    /// Stride `stride`, padding `padding`, no activation.
    pub fn new(stride: usize, padding: usize) -> Self {
        ConvArgs {
            stride,
            padding,
            relu: false,
        }
    }
    /// The same convolution followed by max(·, 0).
    pub fn relu(self) -> Self {
        ConvArgs { relu: true, ..self }
    }
}

impl Kernels {
    pub(crate) fn fused_on(self, x: &Tensor) -> bool {
        self == Kernels::Fused
            && x.device().is_cpu()
            && matches!(x.dtype(), DType::F32 | DType::F64)
    }

    /// 2-D convolution y = w ⋆ x + b, PyTorch semantics (weight [out, in, k, k], zero padding),
    /// then max(y, 0) when `c.relu`: on the fused CPU kernels one op (the bias and the clamp are
    /// applied to each output block inside the convolution; no pre-activation tensor is kept).
    /// Cost: see `ops::conv::conv2d_gemm` (or candle's `conv2d`); the ReLU adds no
    /// pass forward and one in its backward.
    pub fn conv2d(self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, c: ConvArgs) -> Result<Tensor> {
        if self.fused_on(x) {
            return crate::ops::conv::conv2d_gemm(x, w, b, c.stride, c.padding, c.relu);
        }
        let y = x.conv2d(w, c.padding, c.stride, 1, 1)?;
        let y = match b {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?,
            None => y,
        };
        if c.relu {
            self.relu(&y)
        } else {
            Ok(y)
        }
    }

    /// max(x, 0). Cost: one pass (fused kernels) and one pass in its backward.
    pub fn relu(self, x: &Tensor) -> Result<Tensor> {
        if self.fused_on(x) {
            return crate::ops::fused::relu(x);
        }
        Ok(x.relu()?)
    }

    /// Affine map y = x wᵀ + b, PyTorch semantics (weight [out, in]).
    pub fn linear(self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        if self.fused_on(x) && x.rank() == 2 && w.rank() == 2 {
            return crate::ops::fused::linear(x, w, b);
        }
        let y = x.matmul(&w.t()?)?;
        match b {
            Some(b) => Ok(y.broadcast_add(b)?),
            None => Ok(y),
        }
    }

    /// Max pooling with kernel `k`, stride `s` and implicit −∞ padding `p` (PyTorch's
    /// `MaxPool2d(k, s, p)`, floor mode).
    ///
    /// Built from shifted narrows and elementwise maxima (or reshape + max when the windows tile
    /// the input exactly), so first and second derivatives are exact. Cost: k² strided copies.
    pub fn max_pool2d(self, x: &Tensor, k: usize, s: usize, p: usize) -> Result<Tensor> {
        let (n, c, h, w) = pool_input("max_pool2d", x, k, s, p)?;
        if self.fused_on(x) {
            return crate::ops::fused::max_pool2d(x, k, s, p);
        }
        if p == 0 && k == s && h % k == 0 && w % k == 0 {
            return Ok(x.reshape((n, c, h / k, k, w / k, k))?.max(5)?.max(3)?);
        }
        windows(x, k, s, p, f64::NEG_INFINITY, |a, b| Ok(a.maximum(b)?))
    }

    /// Eval-mode BatchNorm (the per-channel affine map x·a + b of `bn_eval_affine`) followed
    /// by `MaxPool2d(k, s, p)`. On the fused kernels one op that never keeps the BatchNorm's
    /// full-size output (see `ops::fused::affine_max_pool2d`); otherwise the affine map, then
    /// the pool.
    pub fn affine_max_pool2d(
        self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        (k, s, p): (usize, usize, usize),
    ) -> Result<Tensor> {
        pool_input("max_pool2d", x, k, s, p)?;
        if self.fused_on(x) {
            return crate::ops::fused::affine_max_pool2d(x, a, b, k, s, p);
        }
        let c = x.dim(1)?;
        let z = x
            .broadcast_mul(&a.reshape((1, c, 1, 1))?)?
            .broadcast_add(&b.reshape((1, c, 1, 1))?)?;
        self.max_pool2d(&z, k, s, p)
    }
}

/// Checks a pooling's arguments (kernel and stride ≥ 1, padding ≤ k/2, input at least one
/// window) and returns the input's (N, C, H, W).
fn pool_input(
    what: &str,
    x: &Tensor,
    k: usize,
    s: usize,
    p: usize,
) -> Result<(usize, usize, usize, usize)> {
    if k == 0 || s == 0 {
        return Err(Error::invalid(what, "kernel and stride must be ≥ 1"));
    }
    if 2 * p > k {
        return Err(Error::invalid(
            what,
            "padding must be at most half the kernel",
        ));
    }
    let (n, c, h, w) = x.dims4()?;
    if h + 2 * p < k || w + 2 * p < k {
        return Err(Error::Shape(format!(
            "{what}: input {h}x{w} smaller than kernel {k}"
        )));
    }
    Ok((n, c, h, w))
}

/// Folds the k² shifted, strided views of x (one per window offset, padded by `p` copies of
/// `pad` on each side) with `combine`: pooling from elementwise ops, hence exact derivatives of
/// any order. Output (N, C, ⌊(H+2p−k)/s⌋+1, ⌊(W+2p−k)/s⌋+1). Cost: k² strided copies.
fn windows(
    x: &Tensor,
    k: usize,
    s: usize,
    p: usize,
    pad: f64,
    combine: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let oh = (h + 2 * p - k) / s + 1;
    let ow = (w + 2 * p - k) / s + 1;
    // Pad so that every shifted window start di ∈ [0, k) has oh·s rows available.
    let need_h = k - 1 + oh * s;
    let need_w = k - 1 + ow * s;
    let xp = pad_const(x, 2, p, need_h.saturating_sub(h + p), pad)?;
    let xp = pad_const(&xp, 3, p, need_w.saturating_sub(w + p), pad)?;
    let mut out: Option<Tensor> = None;
    for di in 0..k {
        for dj in 0..k {
            let t = xp.narrow(2, di, oh * s)?.narrow(3, dj, ow * s)?;
            let t = if s > 1 {
                t.reshape((n, c, oh, s, ow, s))?
                    .narrow(5, 0, 1)?
                    .narrow(3, 0, 1)?
                    .reshape((n, c, oh, ow))?
            } else {
                t
            };
            out = Some(match out {
                None => t,
                Some(o) => combine(&o, &t)?,
            });
        }
    }
    out.ok_or_else(|| Error::invalid("pooling", "empty kernel"))
}

/// Average pooling, PyTorch's `AvgPool2d(k, s, p)` (zero padding counted in the mean, floor
/// mode): the sum of the k² window views / k², linear, so every derivative is exact.
/// Cost: k² strided copies (one reshape and sum when the windows tile the input).
pub fn avg_pool2d(x: &Tensor, k: usize, s: usize, p: usize) -> Result<Tensor> {
    let (n, c, h, w) = pool_input("avg_pool2d", x, k, s, p)?;
    let sum = if p == 0 && k == s && h % k == 0 && w % k == 0 {
        x.reshape((n, c, h / k, k, w / k, k))?.sum(5)?.sum(3)?
    } else {
        windows(x, k, s, p, 0.0, |a, b| Ok((a + b)?))?
    };
    Ok((sum / (k * k) as f64)?)
}

/// Pads dimension `dim` with `left`/`right` copies of a constant (no gradient flows to the pad).
pub fn pad_const(x: &Tensor, dim: usize, left: usize, right: usize, value: f64) -> Result<Tensor> {
    if left == 0 && right == 0 {
        return Ok(x.clone());
    }
    let mut parts = Vec::with_capacity(3);
    let mut shape = x.dims().to_vec();
    if left > 0 {
        shape[dim] = left;
        parts.push(Tensor::full(value, shape.clone(), x.device())?.to_dtype(x.dtype())?);
    }
    parts.push(x.clone());
    if right > 0 {
        shape[dim] = right;
        parts.push(Tensor::full(value, shape, x.device())?.to_dtype(x.dtype())?);
    }
    Ok(Tensor::cat(&parts, dim)?)
}

/// Running statistics of a BatchNorm layer (buffers, not parameters).
pub struct BnBuffers<'a> {
    pub running_mean: &'a Var,
    pub running_var: &'a Var,
}

/// Eval-mode BatchNorm as one per-channel affine map x·a + b: a = γ/√(σ²+ε), b = β − μ·a, with
/// the running statistics μ, σ² as constants and γ, β differentiable (shapes (C,)).
pub(crate) fn bn_eval_affine(
    gamma: &Tensor,
    beta: &Tensor,
    bufs: &BnBuffers<'_>,
) -> Result<(Tensor, Tensor)> {
    const EPS: f64 = 1e-5;
    let rm = bufs.running_mean.as_detached_tensor();
    let rv = bufs.running_var.as_detached_tensor();
    let a = gamma.broadcast_div(&(rv + EPS)?.sqrt()?)?;
    let b = (beta - (&a * rm)?)?;
    Ok((a, b))
}

impl Kernels {
    /// BatchNorm2d, PyTorch semantics (eps 1e-5, momentum 0.1, unbiased running variance).
    ///
    /// Eval mode: y = γ (x − μ_run)/√(σ²_run + ε) + β with the running statistics as constants.
    /// Train mode: batch statistics (biased variance) in the graph; the running statistics are
    /// updated in place (outside the graph).
    pub fn batch_norm(
        self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        bufs: &BnBuffers<'_>,
        train: bool,
    ) -> Result<Tensor> {
        const EPS: f64 = 1e-5;
        const MOMENTUM: f64 = 0.1;
        let c = x.dim(1)?;
        let shape = (1, c, 1, 1);
        let (xhat, _) = if train {
            let (n, _, h, w) = x.dims4()?;
            let m = (n * h * w) as f64;
            if m < 2.0 {
                return Err(Error::invalid(
                    "batch_norm",
                    "train mode needs more than one value per channel",
                ));
            }
            let mean = (x.sum_keepdim((0, 2, 3))? / m)?;
            let xc = x.broadcast_sub(&mean)?;
            let var = (xc.sqr()?.sum_keepdim((0, 2, 3))? / m)?;
            let rm = bufs.running_mean.as_tensor();
            let rv = bufs.running_var.as_tensor();
            let new_rm = ((rm * (1.0 - MOMENTUM))? + (mean.detach().reshape(c)? * MOMENTUM)?)?;
            let new_rv = ((rv * (1.0 - MOMENTUM))?
                + (var.detach().reshape(c)? * (MOMENTUM * m / (m - 1.0)))?)?;
            bufs.running_mean.set(&new_rm.detach())?;
            bufs.running_var.set(&new_rv.detach())?;
            (xc.broadcast_div(&(var + EPS)?.sqrt()?)?, ())
        } else if self.fused_on(x) {
            let (a, b) = bn_eval_affine(gamma, beta, bufs)?;
            return crate::ops::fused::channel_affine(x, &a, &b);
        } else {
            let rm = bufs.running_mean.as_detached_tensor().reshape(shape)?;
            let rv = bufs.running_var.as_detached_tensor().reshape(shape)?;
            (
                x.broadcast_sub(&rm)?.broadcast_div(&(rv + EPS)?.sqrt()?)?,
                (),
            )
        };
        Ok(xhat
            .broadcast_mul(&gamma.reshape(shape)?)?
            .broadcast_add(&beta.reshape(shape)?)?)
    }
}

/// log softmax over the last dimension: z − max(z) − log Σ exp(z − max(z)), with the max
/// treated as a constant (the result does not depend on it), so it is exact to any order.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let z = logits.broadcast_sub(&m)?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(z.broadcast_sub(&lse)?)
}

/// softmax over the last dimension, exact to any order (see [`log_softmax`]).
pub fn softmax(logits: &Tensor) -> Result<Tensor> {
    Ok(log_softmax(logits)?.exp()?)
}

/// One-hot encoding of u32 labels as a (N, C) tensor of `dtype`.
pub fn one_hot(y: &Tensor, num_classes: usize, dtype: DType) -> Result<Tensor> {
    let classes = Tensor::arange(0u32, num_classes as u32, y.device())?.unsqueeze(0)?;
    Ok(y.unsqueeze(1)?.broadcast_eq(&classes)?.to_dtype(dtype)?)
}

/// Per-sample cross-entropy −log softmax(z)_y, shape (N,).
pub fn cross_entropy_per_sample(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (_, c) = logits.dims2()?;
    let oh = one_hot(y, c, logits.dtype())?;
    Ok((log_softmax(logits)? * oh)?.sum(1)?.neg()?)
}

/// Mean cross-entropy (1/N) Σᵢ −log softmax(zᵢ)_{yᵢ} (PyTorch's default reduction).
pub fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(cross_entropy_per_sample(logits, y)?.mean_all()?)
}
