//! Convolution as im2col + matmul with hand-written, mutually-adjoint `Im2Col` / `Col2Im`
//! custom ops (CPU): the backward of im2col is col2im and vice versa, so gradients and
//! Hessian-vector products are exact to any order, and no backward pass ever calls candle's
//! naive CPU `conv_transpose2d` (the input gradient becomes a matmul plus a col2im, the weight
//! gradient a matmul).

use crate::{Error, Result};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Geometry shared by the two ops: kernel k×k, stride s, zero padding p, input H×W.
#[derive(Clone, Copy, Debug)]
struct Geom {
    k: usize,
    s: usize,
    p: usize,
    h: usize,
    w: usize,
}

impl Geom {
    fn out(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.p - self.k) / self.s + 1,
            (self.w + 2 * self.p - self.k) / self.s + 1,
        )
    }
    /// For output row `o` and kernel offset `d`: the input row, if inside the image.
    #[inline]
    fn src(&self, o: usize, d: usize, len: usize) -> Option<usize> {
        let i = (o * self.s + d) as isize - self.p as isize;
        (i >= 0 && (i as usize) < len).then_some(i as usize)
    }
}

struct Im2Col(Geom);
struct Col2Im(Geom);

fn contiguous<'a, T: WithDType>(v: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("im2col/col2im need contiguous inputs"),
    }
}

fn im2col<T: WithDType>(x: &[T], n: usize, c: usize, g: Geom) -> Vec<T> {
    let (oh, ow) = g.out();
    let (k, l) = (g.k, oh * ow);
    let per = c * k * k * l;
    let mut out = vec![T::zero(); n * per];
    out.par_chunks_mut(per).enumerate().for_each(|(ni, o)| {
        let xs = &x[ni * c * g.h * g.w..(ni + 1) * c * g.h * g.w];
        for ci in 0..c {
            for di in 0..k {
                for dj in 0..k {
                    let row = ((ci * k + di) * k + dj) * l;
                    for oi in 0..oh {
                        let Some(ii) = g.src(oi, di, g.h) else {
                            continue;
                        };
                        let xrow = &xs[(ci * g.h + ii) * g.w..(ci * g.h + ii + 1) * g.w];
                        for oj in 0..ow {
                            if let Some(jj) = g.src(oj, dj, g.w) {
                                o[row + oi * ow + oj] = xrow[jj];
                            }
                        }
                    }
                }
            }
        }
    });
    out
}

fn col2im<T: WithDType>(cols: &[T], n: usize, c: usize, g: Geom) -> Vec<T> {
    let (oh, ow) = g.out();
    let (k, l) = (g.k, oh * ow);
    let per = c * g.h * g.w;
    let mut out = vec![T::zero(); n * per];
    out.par_chunks_mut(per).enumerate().for_each(|(ni, xs)| {
        let cs = &cols[ni * c * k * k * l..(ni + 1) * c * k * k * l];
        for ci in 0..c {
            for di in 0..k {
                for dj in 0..k {
                    let row = ((ci * k + di) * k + dj) * l;
                    for oi in 0..oh {
                        let Some(ii) = g.src(oi, di, g.h) else {
                            continue;
                        };
                        let base = (ci * g.h + ii) * g.w;
                        for oj in 0..ow {
                            if let Some(jj) = g.src(oj, dj, g.w) {
                                xs[base + jj] += cs[row + oi * ow + oj];
                            }
                        }
                    }
                }
            }
        }
    });
    out
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "hessian-lab-im2col"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        if (h, w) != (self.0.h, self.0.w) {
            candle_core::bail!("im2col: geometry mismatch");
        }
        let (oh, ow) = self.0.out();
        let shape = Shape::from((n, c * self.0.k * self.0.k, oh * ow));
        let st = match s {
            CpuStorage::F32(v) => CpuStorage::F32(im2col(contiguous(v, l)?, n, c, self.0)),
            CpuStorage::F64(v) => CpuStorage::F64(im2col(contiguous(v, l)?, n, c, self.0)),
            _ => candle_core::bail!("im2col: f32 or f64 only"),
        };
        Ok((st, shape))
    }
    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Col2Im(self.0))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "hessian-lab-col2im"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, ckk, _) = l.shape().dims3()?;
        let c = ckk / (self.0.k * self.0.k);
        let shape = Shape::from((n, c, self.0.h, self.0.w));
        let st = match s {
            CpuStorage::F32(v) => CpuStorage::F32(col2im(contiguous(v, l)?, n, c, self.0)),
            CpuStorage::F64(v) => CpuStorage::F64(col2im(contiguous(v, l)?, n, c, self.0)),
            _ => candle_core::bail!("col2im: f32 or f64 only"),
        };
        Ok((st, shape))
    }
    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Im2Col(self.0))?))
    }
}

/// y = w ⋆ x (no bias) by im2col + batched matmul on the CPU. Cost: one im2col copy and one
/// (out × in·k²)·(in·k² × H'W') matmul per sample; backward: two matmuls and one col2im.
pub fn conv2d_im2col(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (co, ci, kh, kw) = w.dims4()?;
    if ci != c || kh != kw {
        return Err(Error::Shape(format!(
            "conv2d: weight {:?} for input {:?}",
            w.dims(),
            x.dims()
        )));
    }
    if stride == 0 || h + 2 * padding < kh || wd + 2 * padding < kw {
        return Err(Error::Shape(format!(
            "conv2d: input {h}x{wd} too small for kernel {kh}x{kw}"
        )));
    }
    let g = Geom {
        k: kh,
        s: stride,
        p: padding,
        h,
        w: wd,
    };
    let (oh, ow) = g.out();
    let cols = x.contiguous()?.apply_op1(Im2Col(g))?;
    let y = w.reshape((co, c * kh * kw))?.broadcast_matmul(&cols)?;
    Ok(y.reshape((n, co, oh, ow))?)
}
