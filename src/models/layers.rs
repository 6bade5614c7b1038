//! Differentiable building blocks, exact to second order under candle's autograd.
//!
//! Everything here is composed of candle primitives whose backward passes are themselves
//! differentiable (conv2d, matmul, elementwise ops, reductions, narrow/reshape). candle 0.11's
//! own `max_pool2d` backward is wrong (a unique maximum gets 1/k² of its gradient) and
//! `softmax_last_dim` cuts the graph, so neither is used.

use crate::{Error, Result};
use candle_core::{DType, Tensor, Var, D};

/// How [`conv2d`] is computed (both exact to any order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvImpl {
    /// im2col from differentiable strided slices + one batched matmul: every backward pass is
    /// slices and matmuls (no `conv_transpose2d`), and nothing is computed for the input
    /// gradient of a layer whose input is not a variable. The default.
    Im2col,
    /// candle's `conv2d` (its backward uses the naive CPU `conv_transpose2d`).
    Candle,
}

static CONV_IMPL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Chooses the convolution implementation process-wide (for benchmarks and cross-checks).
pub fn set_conv_impl(c: ConvImpl) {
    CONV_IMPL.store(if c == ConvImpl::Candle { 1 } else { 0 }, std::sync::atomic::Ordering::Relaxed);
}

/// The current convolution implementation.
pub fn conv_impl() -> ConvImpl {
    if CONV_IMPL.load(std::sync::atomic::Ordering::Relaxed) == 1 {
        ConvImpl::Candle
    } else {
        ConvImpl::Im2col
    }
}

/// Rows `start, start+s, …` (n of them) of dimension `dim`, by narrow + reshape (exact to any
/// order under autograd). The tensor must have at least start + n·s entries along `dim`.
fn strided(x: &Tensor, dim: usize, start: usize, n: usize, s: usize) -> Result<Tensor> {
    let t = x.narrow(dim, start, n * s)?;
    if s == 1 {
        return Ok(t);
    }
    let mut shape = t.dims().to_vec();
    shape[dim] = n;
    shape.insert(dim + 1, s);
    let out_shape: Vec<usize> = t.dims().iter().enumerate().map(|(i, &d)| if i == dim { n } else { d }).collect();
    Ok(t.reshape(shape)?.narrow(dim + 1, 0, 1)?.reshape(out_shape)?)
}

/// 2-D convolution y = w ⋆ x + b, PyTorch semantics (weight [out, in, k, k], zero padding).
/// Cost: one batched matmul of (out × in·k²) by (in·k² × H'W') per sample plus k² strided
/// copies (im2col); the backward pass is the same size.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let y = match conv_impl() {
        ConvImpl::Candle => x.conv2d(w, padding, stride, 1, 1)?,
        ConvImpl::Im2col => conv2d_im2col(x, w, stride, padding)?,
    };
    match b {
        Some(b) => Ok(y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?),
        None => Ok(y),
    }
}

fn conv2d_im2col(x: &Tensor, w: &Tensor, s: usize, p: usize) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (co, ci, kh, kw) = w.dims4()?;
    if ci != c {
        return Err(Error::Shape(format!("conv2d: input has {c} channels, weight expects {ci}")));
    }
    if s == 0 || h + 2 * p < kh || wd + 2 * p < kw {
        return Err(Error::Shape(format!("conv2d: input {h}x{wd} too small for kernel {kh}x{kw}")));
    }
    let oh = (h + 2 * p - kh) / s + 1;
    let ow = (wd + 2 * p - kw) / s + 1;
    if kh == 1 && kw == 1 && p == 0 {
        // 1×1 convolution: a strided subsample and a matmul.
        let xs = strided(&pad_const(x, 2, 0, (oh * s).saturating_sub(h), 0.0)?, 2, 0, oh, s)?;
        let xs = strided(&pad_const(&xs, 3, 0, (ow * s).saturating_sub(wd), 0.0)?, 3, 0, ow, s)?;
        let y = w.reshape((co, c))?.broadcast_matmul(&xs.reshape((n, c, oh * ow))?)?;
        return Ok(y.reshape((n, co, oh, ow))?);
    }
    // Pad so that every shift d < k has oh·s rows available.
    let need_h = kh - 1 + oh * s;
    let need_w = kw - 1 + ow * s;
    let xp = pad_const(x, 2, p, need_h.saturating_sub(h + p), 0.0)?;
    let xp = pad_const(&xp, 3, p, need_w.saturating_sub(wd + p), 0.0)?;
    let mut cols = Vec::with_capacity(kh * kw);
    for di in 0..kh {
        let rows = strided(&xp, 2, di, oh, s)?;
        for dj in 0..kw {
            cols.push(strided(&rows, 3, dj, ow, s)?);
        }
    }
    // (n, c, k², oh, ow) → (n, c·k², oh·ow); weight index ci·k² + di·k + dj matches.
    let cols = Tensor::stack(&cols, 2)?.reshape((n, c * kh * kw, oh * ow))?;
    let y = w.reshape((co, c * kh * kw))?.broadcast_matmul(&cols)?;
    Ok(y.reshape((n, co, oh, ow))?)
}

/// Affine map y = x wᵀ + b, PyTorch semantics (weight [out, in]).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
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
pub fn max_pool2d(x: &Tensor, k: usize, s: usize, p: usize) -> Result<Tensor> {
    if k == 0 || s == 0 {
        return Err(Error::invalid(
            "max_pool2d",
            "kernel and stride must be ≥ 1",
        ));
    }
    if 2 * p > k {
        return Err(Error::invalid(
            "max_pool2d",
            "padding must be at most half the kernel",
        ));
    }
    let (n, c, h, w) = x.dims4()?;
    if p == 0 && k == s && h % k == 0 && w % k == 0 {
        return Ok(x.reshape((n, c, h / k, k, w / k, k))?.max(5)?.max(3)?);
    }
    if h + 2 * p < k || w + 2 * p < k {
        return Err(Error::Shape(format!(
            "max_pool2d: input {h}x{w} smaller than kernel {k}"
        )));
    }
    let oh = (h + 2 * p - k) / s + 1;
    let ow = (w + 2 * p - k) / s + 1;
    // Pad so that every shifted window start di ∈ [0, k) has oh·s rows available.
    let need_h = k - 1 + oh * s;
    let need_w = k - 1 + ow * s;
    let xp = pad_const(x, 2, p, need_h - h - p, f64::NEG_INFINITY)?;
    let xp = pad_const(&xp, 3, p, need_w - w - p, f64::NEG_INFINITY)?;
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
                Some(o) => o.maximum(&t)?,
            });
        }
    }
    out.ok_or_else(|| Error::invalid("max_pool2d", "empty kernel"))
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

/// BatchNorm2d, PyTorch semantics (eps 1e-5, momentum 0.1, unbiased running variance).
///
/// Eval mode: y = γ (x − μ_run)/√(σ²_run + ε) + β with the running statistics as constants.
/// Train mode: batch statistics (biased variance) in the graph; the running statistics are
/// updated in place (outside the graph).
pub fn batch_norm(
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
        let new_rv =
            ((rv * (1.0 - MOMENTUM))? + (var.detach().reshape(c)? * (MOMENTUM * m / (m - 1.0)))?)?;
        bufs.running_mean.set(&new_rm.detach())?;
        bufs.running_var.set(&new_rv.detach())?;
        (xc.broadcast_div(&(var + EPS)?.sqrt()?)?, ())
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
