//! Fused CPU kernels for the elementwise and per-channel layers, each a candle custom op
//! whose backward is built from ops of this family (or from candle ops), so derivatives of
//! any order stay exact. They replace chains of candle ops whose backward passes allocate
//! full-size zero tensors and broadcast buffers (see `layers::Kernels`).
//!
//! | op | value | backward |
//! |---|---|---|
//! | [`Relu`]`(x)` | max(x, 0) | [`ReluMask`]`(ḡ, x)` |
//! | [`ReluMask`]`(g, x)` | g·1[x>0] | `ReluMask(ḡ, x)`; none for x (ReLU'' = 0 a.e.) |
//! | [`ChanAffine`]`(x, a, b)` | x·a_c + b_c | `ChanScale(ḡ, a)`, `ChanDot(ḡ, x)`, `ChanSum(ḡ)` |
//! | [`ChanScale`]`(t, a)` | t·a_c | `ChanScale(ḡ, a)`, `ChanDot(ḡ, t)` |
//! | [`ChanDot`]`(u, v)` | Σ_{n,pixels} u·v per channel | `ChanScale(v, ḡ)`, `ChanScale(u, ḡ)` |
//! | [`ChanSum`]`(t)` | Σ_{n,pixels} t per channel | `ChanBroadcast(ḡ)` |
//! | [`ChanBroadcast`]`(g)` | g_c at every sample and pixel of channel c | `ChanSum(ḡ)` |
//! | [`LinearFwd`]`(x, W, b)` | x Wᵀ + b | `Data(ḡ, W)`, `Filter(ḡ, x)`, Σₙ ḡ |
//! | [`LinearOp`] `Fwd(x, W)` | x Wᵀ | `Data(ḡ, W)`, `Filter(ḡ, x)` |
//! | `Data(dy, W)` | dy W | `Fwd(ḡ, W)`, `Filter(dy, ḡ)` |
//! | `Filter(dy, x)` | dyᵀ x | `Fwd(x, ḡ)`, `Data(dy, ḡ)` |
//! | [`PoolArgmax`]`(x)` | each window's arg-max (u32) | none (piecewise constant) |
//! | [`PoolGather`]`(v, i)` | v at the positions i | `PoolScatter(ḡ, i)`; none for i |
//! | [`PoolScatter`]`(g, i)` | g added at the positions i | `PoolGather(ḡ, i)`; none for i |
//!
//! Max pooling is `PoolGather(x, PoolArgmax(x))`: the gradient flows through the first
//! argument only, to the first maximum of each window (PyTorch's rule; ties are measure-zero
//! except in all-equal windows, where any choice is a valid subgradient).

use super::conv::{binary_op, gemm, out_len, row_major, slice, ternary_op, transposed};
use super::{if_tracked, op1, op2, op3, with_avx2, Grad1, Grads2, Grads3, In, Op1, Op2, Op3, Out};
use crate::Result;
use candle_core::{CpuStorage, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::hint::select_unpredictable;

/// A tensor seen as (n, c, l): batch, channels (dim 1), everything after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chan {
    n: usize,
    c: usize,
    l: usize,
}

impl Chan {
    fn of(shape: &Shape) -> candle_core::Result<Self> {
        let d = shape.dims();
        if d.len() < 2 {
            candle_core::bail!("per-channel op: need at least 2 dims, got {d:?}");
        }
        Ok(Chan {
            n: d[0],
            c: d[1],
            l: d[2..].iter().product(),
        })
    }
    fn len(&self) -> usize {
        self.n * self.c * self.l
    }
}

fn unary<F32, F64>(s: &CpuStorage, f32f: F32, f64f: F64) -> candle_core::Result<CpuStorage>
where
    F32: FnOnce(&[f32]) -> candle_core::Result<Vec<f32>>,
    F64: FnOnce(&[f64]) -> candle_core::Result<Vec<f64>>,
{
    Ok(match s {
        CpuStorage::F32(v) => CpuStorage::F32(f32f(v)?),
        CpuStorage::F64(v) => CpuStorage::F64(f64f(v)?),
        _ => candle_core::bail!("fused kernels: f32 or f64 only"),
    })
}

/// Wraps a kernel's output for [`binary_op!`] / [`ternary_op!`].
fn ok<T>(v: Vec<T>) -> candle_core::Result<Vec<T>> {
    Ok(v)
}

/// Elements per rayon task for the elementwise kernels (below this, threads cost more than
/// they save).
const GRAIN: usize = 1 << 14;

/// Minimum number of `len`-sized chunks per rayon task.
pub(super) fn min_chunks(len: usize) -> usize {
    (GRAIN / len.max(1)).max(1)
}

fn par_map<T: WithDType>(v: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    let mut out = super::zeros(v.len());
    out.par_chunks_mut(GRAIN)
        .zip(v.par_chunks(GRAIN))
        .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &i)| *o = f(i)));
    out
}

/// f(a_i, b_i) for equal-length a, b (f inlined into each chunk's loop, so selects vectorise).
fn par_map2<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let mut out = super::zeros(a.len());
    out.par_chunks_mut(GRAIN)
        .zip(a.par_chunks(GRAIN).zip(b.par_chunks(GRAIN)))
        .for_each(|(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        });
    out
}

// ---------------------------------------------------------------------------------------
// ReLU

/// max(x, 0) with backward [`ReluMask`]: one pass where candle's ReLU backward makes four
/// (zeros, ≥, cast, ×). Derivative at 0 is 0, as in PyTorch (candle uses 1).
pub(super) struct Relu;

impl Op1 for Relu {
    fn name(&self) -> &'static str {
        "hessian-lab-relu"
    }
    fn fwd(&self, (s, l): In) -> Out {
        let len = l.shape().elem_count();
        let st = unary(
            s,
            |v| Ok(par_map(slice(v, l, len, "x")?, |a| a.max(0.0))),
            |v| Ok(par_map(slice(v, l, len, "x")?, |a| a.max(0.0))),
        )?;
        Ok((st, l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Grad1 {
        Ok(Some(op2(g, x, ReluMask)?))
    }
}

/// g · 1[x > 0]: linear in g (its backward w.r.t. g is itself), zero derivative w.r.t. x
/// (ReLU'' = 0 almost everywhere), so ReLU stays exact to any order.
pub(super) struct ReluMask;

fn mask<T: WithDType>(g: &[T], x: &[T]) -> Vec<T> {
    // A select on every element, not a conditional store: it vectorises, and the sign of x
    // is a coin flip that a branch would mispredict (7× slower measured).
    par_map2(g, x, |g, x| if x > T::zero() { g } else { T::zero() })
}

impl Op2 for ReluMask {
    fn name(&self) -> &'static str {
        "hessian-lab-relu-mask"
    }
    fn fwd(&self, [(s1, l1), (s2, l2)]: [In; 2]) -> Out {
        if l2.shape() != l1.shape() {
            candle_core::bail!("relu mask: shapes differ");
        }
        let len = l1.shape().elem_count();
        let st = binary_op!(s1, l1, len, s2, l2, len, |g, x| ok(mask(g, x)));
        Ok((st, l1.shape().clone()))
    }
    fn bwd(&self, [_g, x]: [&Tensor; 2], _res: &Tensor, gg: &Tensor) -> Grads2 {
        Ok((Some(op2(gg, x, ReluMask)?), None))
    }
}

/// max(a + b, 0), a residual sum and its ReLU as one op: the sum is never materialised nor
/// kept (ResNet's graph held it as the ReLU's input, one activation per block). Backward: the
/// mask of the output, g·1[out > 0], for both arguments — exact to any order like [`Relu`].
pub(super) struct AddRelu;

fn add_relu_kernel<T: WithDType>(a: &[T], b: &[T]) -> Vec<T> {
    par_map2(a, b, |a, b| (a + b).max(T::zero()))
}

impl Op2 for AddRelu {
    fn name(&self) -> &'static str {
        "hessian-lab-add-relu"
    }
    fn fwd(&self, [(s1, l1), (s2, l2)]: [In; 2]) -> Out {
        if l2.shape() != l1.shape() {
            candle_core::bail!("add-relu: shapes differ");
        }
        let len = l1.shape().elem_count();
        let st = binary_op!(s1, l1, len, s2, l2, len, |a, b| ok(add_relu_kernel(a, b)));
        Ok((st, l1.shape().clone()))
    }
    fn bwd(&self, _args: [&Tensor; 2], res: &Tensor, g: &Tensor) -> Grads2 {
        let m = op2(g, res, ReluMask)?;
        Ok((Some(m.clone()), Some(m)))
    }
}

/// max(a + b, 0) through [`AddRelu`] (CPU, f32/f64, equal shapes). Cost: one pass; its
/// backward one pass.
pub(crate) fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(op2(&a.contiguous()?, &b.contiguous()?, AddRelu)?)
}

/// max(x, 0) through [`Relu`] (CPU, f32/f64). Cost: one pass; its backward one pass.
pub(crate) fn relu(x: &Tensor) -> Result<Tensor> {
    Ok(op1(x, Relu)?)
}

// ---------------------------------------------------------------------------------------
// Per-channel ops

/// t·s_c + h_c per channel c, with (s_c, h_c) = `coef(c)`. One pass.
fn chan_map<T: WithDType>(t: &[T], ch: Chan, coef: impl Fn(usize) -> (T, T) + Sync) -> Vec<T> {
    let mut out = super::zeros(t.len());
    out.par_chunks_mut(ch.l.max(1))
        .zip(t.par_chunks(ch.l.max(1)))
        .with_min_len(min_chunks(ch.l))
        .enumerate()
        .for_each(|(j, (o, i))| {
            let (s, sh) = coef(j % ch.c);
            o.iter_mut().zip(i).for_each(|(o, &v)| *o = v * s + sh);
        });
    out
}

fn chan_scale<T: WithDType>(t: &[T], a: &[T], ch: Chan) -> Vec<T> {
    chan_map(t, ch, |c| (a[c], T::zero()))
}

fn chan_affine<T: WithDType>(t: &[T], a: &[T], b: &[T], ch: Chan) -> Vec<T> {
    chan_map(t, ch, |c| (a[c], b[c]))
}

fn chan_reduce<T: WithDType>(ch: Chan, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    (0..ch.c)
        .into_par_iter()
        .map(|j| (0..ch.n).fold(T::zero(), |s, i| s + f(i * ch.c + j)))
        .collect()
}

/// Lanes of the reductions below: independent partial sums the compiler keeps in vector
/// registers. A single running sum is one dependent add per element (latency-bound, ~8×
/// slower); the fixed lane order keeps results deterministic.
const LANES: usize = 16;

/// Σ f(aᵢ, bᵢ) in [`LANES`] partial sums.
#[inline]
fn lane_sum<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let mut acc = [T::zero(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += f(x[k], y[k]);
        }
    }
    let mut s = T::zero();
    for (&x, &y) in ra.iter().zip(rb) {
        s += f(x, y);
    }
    acc.iter().fold(s, |s, &v| s + v)
}

fn chan_dot<T: WithDType>(u: &[T], v: &[T], ch: Chan) -> Vec<T> {
    chan_reduce(ch, |k| {
        let r = k * ch.l..(k + 1) * ch.l;
        lane_sum(&u[r.clone()], &v[r], |a, b| a * b)
    })
}

fn chan_sum<T: WithDType>(t: &[T], ch: Chan) -> Vec<T> {
    chan_reduce(ch, |k| {
        let r = &t[k * ch.l..(k + 1) * ch.l];
        lane_sum(r, r, |a, _| a)
    })
}

/// y = x·a_c + b_c per channel (BatchNorm in eval mode, a conv bias).
pub(super) struct ChanAffine;
/// y = t·a_c per channel.
pub(super) struct ChanScale;
/// y_c = Σ_{n, pixels} u·v.
pub(super) struct ChanDot;
/// y_c = Σ_{n, pixels} t (a bias gradient); `Shape` is t's, for the broadcast backward.
pub(super) struct ChanSum(Shape);
/// g_c repeated over batch and pixels: a tensor of the given shape (ChanSum's adjoint).
pub(super) struct ChanBroadcast(Shape);

impl Op3 for ChanAffine {
    fn name(&self) -> &'static str {
        "hessian-lab-channel-affine"
    }
    fn fwd(&self, [(s1, l1), (s2, l2), (s3, l3)]: [In; 3]) -> Out {
        let ch = Chan::of(l1.shape())?;
        let st = ternary_op!(s1, l1, ch.len(), s2, l2, ch.c, s3, l3, ch.c, |x, a, b| ok(
            chan_affine(x, a, b, ch)
        ));
        Ok((st, l1.shape().clone()))
    }
    fn bwd(&self, [x, a, b]: [&Tensor; 3], _res: &Tensor, g: &Tensor) -> Grads3 {
        let g = g.contiguous()?;
        Ok((
            if_tracked(x, || op2(&g, a, ChanScale))?,
            if_tracked(a, || op2(&g, x, ChanDot))?,
            if_tracked(b, || chan_sum_op(&g))?,
        ))
    }
}

impl Op2 for ChanScale {
    fn name(&self) -> &'static str {
        "hessian-lab-channel-scale"
    }
    fn fwd(&self, [(s1, l1), (s2, l2)]: [In; 2]) -> Out {
        let ch = Chan::of(l1.shape())?;
        let st = binary_op!(s1, l1, ch.len(), s2, l2, ch.c, |t, a| ok(chan_scale(
            t, a, ch
        )));
        Ok((st, l1.shape().clone()))
    }
    fn bwd(&self, [t, a]: [&Tensor; 2], _res: &Tensor, g: &Tensor) -> Grads2 {
        let g = g.contiguous()?;
        Ok((
            if_tracked(t, || op2(&g, a, ChanScale))?,
            if_tracked(a, || op2(&g, t, ChanDot))?,
        ))
    }
}

impl Op2 for ChanDot {
    fn name(&self) -> &'static str {
        "hessian-lab-channel-dot"
    }
    fn fwd(&self, [(s1, l1), (s2, l2)]: [In; 2]) -> Out {
        let ch = Chan::of(l1.shape())?;
        if l2.shape() != l1.shape() {
            candle_core::bail!("channel dot: shapes differ");
        }
        let st = binary_op!(s1, l1, ch.len(), s2, l2, ch.len(), |u, v| ok(chan_dot(
            u, v, ch
        )));
        Ok((st, Shape::from(ch.c)))
    }
    fn bwd(&self, [u, v]: [&Tensor; 2], _res: &Tensor, g: &Tensor) -> Grads2 {
        Ok((
            if_tracked(u, || op2(v, g, ChanScale))?,
            if_tracked(v, || op2(u, g, ChanScale))?,
        ))
    }
}

impl Op1 for ChanSum {
    fn name(&self) -> &'static str {
        "hessian-lab-channel-sum"
    }
    fn fwd(&self, (s, l): In) -> Out {
        let ch = Chan::of(l.shape())?;
        let st = unary(
            s,
            |v| Ok(chan_sum(slice(v, l, ch.len(), "t")?, ch)),
            |v| Ok(chan_sum(slice(v, l, ch.len(), "t")?, ch)),
        )?;
        Ok((st, Shape::from(ch.c)))
    }
    fn bwd(&self, _t: &Tensor, _res: &Tensor, g: &Tensor) -> Grad1 {
        Ok(Some(op1(g, ChanBroadcast(self.0.clone()))?))
    }
}

impl Op1 for ChanBroadcast {
    fn name(&self) -> &'static str {
        "hessian-lab-channel-broadcast"
    }
    fn fwd(&self, (s, l): In) -> Out {
        let ch = Chan::of(&self.0)?;
        fn go<T: WithDType>(g: &[T], ch: Chan) -> Vec<T> {
            let mut out = super::zeros(ch.len());
            out.par_chunks_mut(ch.l.max(1))
                .with_min_len(min_chunks(ch.l))
                .enumerate()
                .for_each(|(j, o)| o.fill(g[j % ch.c]));
            out
        }
        let st = unary(
            s,
            |v| Ok(go(slice(v, l, ch.c, "g")?, ch)),
            |v| Ok(go(slice(v, l, ch.c, "g")?, ch)),
        )?;
        Ok((st, self.0.clone()))
    }
    fn bwd(&self, _g: &Tensor, _res: &Tensor, gg: &Tensor) -> Grad1 {
        Ok(Some(chan_sum_op(gg)?))
    }
}

/// Σ over batch and pixels per channel, as an op (used for bias gradients).
pub(super) fn chan_sum_op(t: &Tensor) -> candle_core::Result<Tensor> {
    op1(t, ChanSum(t.shape().clone()))
}

/// y = x·a_c + b_c per channel (dim 1). Cost: one pass; backward one pass per argument.
pub(crate) fn channel_affine(x: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(op3(x, a, b, ChanAffine)?)
}

// ---------------------------------------------------------------------------------------
// Max pooling

/// Planes whose windows [`Pool::argmax_lanes`] scans together (one vector lane each).
const PLANES: usize = 8;

/// Window geometry of a k×k max pool with stride s and −∞ padding p over an h×w map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pool {
    k: usize,
    s: usize,
    p: usize,
    h: usize,
    w: usize,
}

impl Pool {
    fn oh(&self) -> usize {
        out_len(self.h, self.k, self.s, self.p)
    }
    fn ow(&self) -> usize {
        out_len(self.w, self.k, self.s, self.p)
    }
    /// For each output pixel of one (n, c) plane, the flat index (in the plane) of the
    /// window's first maximum, written to `idx` (one entry per output pixel).
    ///
    /// Windows wholly inside the map (all of them when p = 0, all but a border ring
    /// otherwise) take the unclipped loop; both loops select instead of branching
    /// (`select_unpredictable`, which keeps LLVM from turning the selects back into branches):
    /// the comparisons are coin flips on real activations (3× faster measured for 2×2; the
    /// border ring is a quarter of C1's 8×8 pool outputs).
    fn argmax<T: WithDType>(&self, plane: &[T], idx: &mut [u32]) {
        let (oh, ow) = (self.oh(), self.ow());
        let (k, s, p, h, w) = (self.k, self.s, self.p, self.h, self.w);
        // Output rows/columns whose window starts at ≥ 0 and ends at ≤ h (resp. w).
        let inside = |o: usize, n: usize| o * s >= p && o * s + k <= n + p;
        for oi in 0..oh {
            let row_in = inside(oi, h);
            for oj in 0..ow {
                let best = if row_in && inside(oj, w) {
                    let base = (oi * s - p) * w + (oj * s - p);
                    let (mut bi, mut bv) = (base, plane[base]);
                    for r in 0..k {
                        let row = base + r * w;
                        for (c, &v) in plane[row..row + k].iter().enumerate() {
                            let gt = v > bv;
                            bi = select_unpredictable(gt, row + c, bi);
                            bv = select_unpredictable(gt, v, bv);
                        }
                    }
                    bi
                } else {
                    let r0 = (oi * s) as isize - p as isize;
                    let c0 = (oj * s) as isize - p as isize;
                    let (rlo, rhi) = (r0.max(0) as usize, ((r0 + k as isize) as usize).min(h));
                    let (clo, chi) = (c0.max(0) as usize, ((c0 + k as isize) as usize).min(w));
                    let (mut bi, mut bv) = (rlo * w + clo, plane[rlo * w + clo]);
                    for r in rlo..rhi {
                        for (c, &v) in plane[r * w + clo..r * w + chi].iter().enumerate() {
                            let gt = v > bv;
                            bi = select_unpredictable(gt, r * w + clo + c, bi);
                            bv = select_unpredictable(gt, v, bv);
                        }
                    }
                    bi
                };
                // Plane sizes are far below 2³², checked in `max_pool2d`.
                idx[oi * ow + oj] = best as u32;
            }
        }
    }
    /// [`Pool::argmax`] for [`PLANES`] planes at once (`x`: that many planes, `idx`: their
    /// outputs), the same scan, window by window, offset by offset, but on a lane per plane:
    /// the planes are first transposed into `xt` (pixel-major, [`PLANES`] values per pixel),
    /// so each compare-and-select of the scan is one vector operation for all of them, and
    /// the positions (the same in every plane) come back through `bt`. Same results as
    /// [`Pool::argmax`] on each plane, ties and NaNs included: each lane runs that scan.
    #[inline(always)]
    fn argmax_lanes<T: WithDType>(
        &self,
        x: &[T],
        idx: &mut [u32],
        xt: &mut Vec<[T; PLANES]>,
        bt: &mut Vec<[u32; PLANES]>,
    ) {
        let (oh, ow) = (self.oh(), self.ow());
        let (k, s, p, h, w) = (self.k, self.s, self.p, self.h, self.w);
        let (hw, ohw) = (h * w, oh * ow);
        xt.clear();
        xt.resize(hw, [T::zero(); PLANES]);
        for (l, plane) in x.chunks_exact(hw.max(1)).take(PLANES).enumerate() {
            for (t, &v) in xt.iter_mut().zip(plane) {
                t[l] = v;
            }
        }
        bt.clear();
        bt.resize(ohw, [0; PLANES]);
        // clipped window rows (columns) of output row (column) o: [o·s − p, o·s − p + k) ∩ [0, n)
        let span = |o: usize, n: usize| ((o * s).saturating_sub(p), (o * s + k - p).min(n));
        for oi in 0..oh {
            let (rlo, rhi) = span(oi, h);
            for oj in 0..ow {
                let (clo, chi) = span(oj, w);
                let first = rlo * w + clo;
                let (mut bv, mut bi) = (xt[first], [first as u32; PLANES]);
                for r in rlo..rhi {
                    for (c, v) in xt[r * w + clo..r * w + chi].iter().enumerate() {
                        // Plane sizes are far below 2³², checked in `max_pool2d`.
                        let q = (r * w + clo + c) as u32;
                        for l in 0..PLANES {
                            let gt = v[l] > bv[l];
                            bi[l] = if gt { q } else { bi[l] };
                            bv[l] = if gt { v[l] } else { bv[l] };
                        }
                    }
                }
                bt[oi * ow + oj] = bi;
            }
        }
        for (l, out) in idx.chunks_exact_mut(ohw.max(1)).take(PLANES).enumerate() {
            for (o, b) in out.iter_mut().zip(bt.iter()) {
                *o = b[l];
            }
        }
    }
    fn out_shape(&self, x: &Shape) -> candle_core::Result<Shape> {
        let (n, c, _, _) = x.dims4()?;
        Ok(Shape::from((n, c, self.oh(), self.ow())))
    }
    fn planes(&self) -> (usize, usize) {
        ((self.h * self.w).max(1), (self.oh() * self.ow()).max(1))
    }
}

with_avx2!(fn argmax_lanes = Pool::argmax_lanes(
    p: &Pool, x: &[T], idx: &mut [u32], xt: &mut Vec<[T; PLANES]>, bt: &mut Vec<[u32; PLANES]>
));

/// The arg-max of every window of x (u32, output shape, index within the (n, c) plane). It
/// is computed once per forward, on a detached x, and shared by the pooling's value, its
/// gradient and every higher derivative: they all route through the same positions, so an
/// HVP no longer searches each window four times.
struct PoolArgmax(Pool);
/// v (x's shape) at the given arg-max positions (output shape).
struct PoolGather(Pool);
/// g (output shape) added at the given arg-max positions (x's shape).
struct PoolScatter(Pool);

/// The u32 positions of a [`PoolArgmax`] result (as the second argument of a pool op).
fn positions<'a>(s: &'a CpuStorage, l: &Layout, len: usize) -> candle_core::Result<&'a [u32]> {
    match s {
        CpuStorage::U32(v) => slice(v, l, len, "arg-max positions"),
        _ => candle_core::bail!("max pool: arg-max positions must be u32"),
    }
}

impl Op1 for PoolArgmax {
    fn name(&self) -> &'static str {
        "hessian-lab-maxpool-argmax"
    }
    fn fwd(&self, (s, l): In) -> Out {
        let out = self.0.out_shape(l.shape())?;
        let (len, p) = (l.shape().elem_count(), self.0);
        fn go<T: WithDType>(p: Pool, x: &[T], olen: usize) -> Vec<u32> {
            let (hw, ohw) = p.planes();
            let mut idx = vec![0u32; olen];
            // groups of PLANES planes on lanes (8 f32 lanes: one AVX2 register); a last,
            // smaller group plane by plane
            // lanes only while the transposed planes fit in L1: beyond it the transposes cost
            // more than the lanes save (BENCHMARKS.md, sixteenth sitting)
            let lanes = PLANES * hw * std::mem::size_of::<T>() <= 32 << 10;
            idx.par_chunks_mut(PLANES * ohw)
                .zip(x.par_chunks(PLANES * hw))
                .with_min_len(min_chunks(PLANES * hw))
                .for_each_init(
                    || (Vec::new(), Vec::new()),
                    |sc, (i, x)| {
                        if x.len() < PLANES * hw || !lanes {
                            i.chunks_mut(ohw)
                                .zip(x.chunks(hw))
                                .for_each(|(i, x)| p.argmax(x, i));
                            return;
                        }
                        argmax_lanes(&p, x, i, &mut sc.0, &mut sc.1)
                    },
                );
            idx
        }
        let olen = out.elem_count();
        let idx = match s {
            CpuStorage::F32(v) => go(p, slice(v, l, len, "x")?, olen),
            CpuStorage::F64(v) => go(p, slice(v, l, len, "x")?, olen),
            _ => candle_core::bail!("max pool: f32 or f64 only"),
        };
        Ok((CpuStorage::U32(idx), out))
    }
    fn bwd(&self, _x: &Tensor, _res: &Tensor, _g: &Tensor) -> Grad1 {
        // Piecewise constant: no gradient (and x is detached anyway).
        Ok(None)
    }
}

impl Op2 for PoolGather {
    fn name(&self) -> &'static str {
        "hessian-lab-maxpool-gather"
    }
    fn fwd(&self, [(s1, l1), (s2, l2)]: [In; 2]) -> Out {
        let out = self.0.out_shape(l1.shape())?;
        let (len, olen, p) = (l1.shape().elem_count(), out.elem_count(), self.0);
        let idx = positions(s2, l2, olen)?;
        fn go<T: WithDType>(p: Pool, v: &[T], idx: &[u32], olen: usize) -> Vec<T> {
            let (hw, ohw) = p.planes();
            let mut y = super::zeros(olen);
            y.par_chunks_mut(ohw)
                .zip(v.par_chunks(hw).zip(idx.par_chunks(ohw)))
                .with_min_len(min_chunks(hw))
                .for_each(|(y, (v, idx))| {
                    y.iter_mut().zip(idx).for_each(|(y, &i)| *y = v[i as usize])
                });
            y
        }
        let st = unary(
            s1,
            |v| Ok(go(p, slice(v, l1, len, "v")?, idx, olen)),
            |v| Ok(go(p, slice(v, l1, len, "v")?, idx, olen)),
        )?;
        Ok((st, out))
    }
    fn bwd(&self, [_v, idx]: [&Tensor; 2], _res: &Tensor, g: &Tensor) -> Grads2 {
        Ok((Some(op2(g, idx, PoolScatter(self.0))?), None))
    }
}

impl Op2 for PoolScatter {
    fn name(&self) -> &'static str {
        "hessian-lab-maxpool-scatter"
    }
    fn fwd(&self, [(s1, l1), (s2, l2)]: [In; 2]) -> Out {
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "max-pool scatter: gradient shape {:?}, positions {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let (n, c, _, _) = l1.shape().dims4()?;
        let p = self.0;
        let (olen, len) = (l1.shape().elem_count(), n * c * p.h * p.w);
        let idx = positions(s2, l2, olen)?;
        fn go<T: WithDType>(p: Pool, g: &[T], idx: &[u32], len: usize) -> Vec<T> {
            let (hw, ohw) = p.planes();
            let mut d = super::zeros(len);
            d.par_chunks_mut(hw)
                .zip(g.par_chunks(ohw).zip(idx.par_chunks(ohw)))
                .with_min_len(min_chunks(hw))
                .for_each(|(d, (g, idx))| {
                    // Overlapping windows (s < k) can share a maximum: add, don't store.
                    g.iter().zip(idx).for_each(|(&g, &i)| d[i as usize] += g)
                });
            d
        }
        let st = unary(
            s1,
            |v| Ok(go(p, slice(v, l1, olen, "g")?, idx, len)),
            |v| Ok(go(p, slice(v, l1, olen, "g")?, idx, len)),
        )?;
        Ok((st, Shape::from((n, c, p.h, p.w))))
    }
    fn bwd(&self, [_g, idx]: [&Tensor; 2], _res: &Tensor, gg: &Tensor) -> Grads2 {
        Ok((Some(op2(gg, idx, PoolGather(self.0))?), None))
    }
}

/// PyTorch's `MaxPool2d(k, s, p)` (floor mode) as `PoolGather(x, PoolArgmax(x))`. The caller
/// checks the arguments. Cost: one pass over every window, then one gather; backward one
/// scatter pass (the windows are not searched again).
pub(crate) fn max_pool2d(x: &Tensor, k: usize, s: usize, p: usize) -> Result<Tensor> {
    let pool = pool_of(x, k, s, p)?;
    let x = x.contiguous()?;
    let idx = op1(&x.detach(), PoolArgmax(pool))?;
    Ok(op2(&x, &idx, PoolGather(pool))?)
}

/// The window geometry of a pool over x, refusing planes whose positions overflow u32.
fn pool_of(x: &Tensor, k: usize, s: usize, p: usize) -> Result<Pool> {
    let (_, _, h, w) = x.dims4()?;
    if h.saturating_mul(w) > u32::MAX as usize {
        return Err(crate::Error::Shape(format!(
            "max_pool2d: a {h}×{w} plane has more than 2³² pixels"
        )));
    }
    Ok(Pool { k, s, p, h, w })
}

/// MaxPool2d(k, s, p) of the per-channel affine map y·a_c + b_c (an eval-mode BatchNorm), as
/// a_c·PoolGather(y, idx) + b_c with idx the window arg-max of y·a_c + b_c. Same values, and
/// the same derivatives of every order (idx is piecewise constant; where a_c < 0 it is the
/// arg-min of y), but y·a_c + b_c is only a temporary for the arg-max: the graph keeps y
/// (which the op before it keeps anyway) and pooled tensors, not a full-size BatchNorm
/// output, and the backward passes scatter once instead of scattering then scaling.
/// Cost: two passes over y (affine, arg-max), then one gather and an affine on the pooled size.
pub(crate) fn affine_max_pool2d(
    y: &Tensor,
    a: &Tensor,
    b: &Tensor,
    k: usize,
    s: usize,
    p: usize,
) -> Result<Tensor> {
    let pool = pool_of(y, k, s, p)?;
    let y = y.contiguous()?;
    let idx = {
        let z = channel_affine(&y.detach(), &a.detach(), &b.detach())?;
        op1(&z, PoolArgmax(pool))?
    };
    let g = op2(&y, &idx, PoolGather(pool))?;
    channel_affine(&g, a, b)
}

// ---------------------------------------------------------------------------------------
// Linear

/// y = x Wᵀ + b for x (n, in), W (out, in), b (out): one gemm plus the bias; backward
/// dx = Data(dy, W) = dy W, dW = Filter(dy, x) = dyᵀ x (W's gradient in W's layout, no
/// transpose copy) and db = Σₙ dy (a candle sum: no broadcast buffers).
pub(super) struct LinearFwd;

impl Op3 for LinearFwd {
    fn name(&self) -> &'static str {
        "hessian-lab-linear"
    }
    fn fwd(&self, [(s1, l1), (s2, l2), (s3, l3)]: [In; 3]) -> Out {
        fn go<T: WithDType>(
            x: &[T],
            w: &[T],
            b: &[T],
            (n, i, o): (usize, usize, usize),
        ) -> candle_core::Result<Vec<T>> {
            let mut y = Lin::Fwd.product(x, w, (n, i, o))?;
            for row in y.chunks_mut(o) {
                row.iter_mut().zip(b).for_each(|(v, &bb)| *v += bb);
            }
            Ok(y)
        }
        let (n, i) = l1.shape().dims2()?;
        let (o, i2) = l2.shape().dims2()?;
        if i2 != i || l3.shape().dims() != [o] {
            candle_core::bail!(
                "linear: x {:?}, weight {:?}, bias {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let st = ternary_op!(s1, l1, n * i, s2, l2, o * i, s3, l3, o, |x, w, b| go(
            x,
            w,
            b,
            (n, i, o)
        ));
        Ok((st, Shape::from((n, o))))
    }
    fn bwd(&self, [x, w, b]: [&Tensor; 3], _res: &Tensor, dy: &Tensor) -> Grads3 {
        Ok((
            if_tracked(x, || op2(dy, w, LinearOp(Lin::Data)))?,
            // projected in a fresh HVP's first backward: x Wᵀ is linear in W
            super::weight_grad(w, dy, x, LinearFwd, || op2(dy, x, LinearOp(Lin::Filter)))?,
            if_tracked(b, || dy.sum(0))?,
        ))
    }
}

/// x Wᵀ as a linear map of W: tangent Fwd(x, v) = x vᵀ, adjoint Data(ḡ, v) = ḡ v.
impl super::LinearIn for LinearFwd {
    fn tangent(&self, x: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        op2(x, v, LinearOp(Lin::Fwd))
    }
    fn adjoint(&self, g: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        op2(g, v, LinearOp(Lin::Data))
    }
}

/// Which product of a linear layer y = x Wᵀ (x: n × in, W: out × in) a [`LinearOp`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lin {
    /// x Wᵀ (n × out)
    Fwd,
    /// dy W (n × in), dy: n × out
    Data,
    /// dyᵀ x (out × in)
    Filter,
}

impl Lin {
    /// The product on contiguous row-major operands (first, second) for sizes (n, in, out),
    /// through the crate's gemm (which splits x Wᵀ's columns over the threads itself).
    fn product<T: WithDType>(
        self,
        a: &[T],
        b: &[T],
        (n, i, o): (usize, usize, usize),
    ) -> candle_core::Result<Vec<T>> {
        let ((rows, cols, k), lhs, rhs) = match self {
            Lin::Fwd => ((n, o, i), row_major(a, i), transposed(b, i)),
            Lin::Data => ((n, i, o), row_major(a, o), row_major(b, i)),
            Lin::Filter => ((o, i, n), transposed(a, o), row_major(b, i)),
        };
        let mut y = super::zeros(rows * cols);
        gemm(
            rows,
            cols,
            k,
            &mut y,
            false,
            lhs,
            rhs,
            rows * cols * k > 1 << 16,
        )?;
        Ok(y)
    }
}

/// The three products of a linear layer as ops of one family (like the convolution's
/// `ConvOp`): each one's backward is two others, so derivatives of any order stay exact and
/// every product runs on the crate's gemm (candle's matmul backward would form x Wᵀ-shaped
/// products through gemm's own thread split, which scales badly on that layout).
pub(super) struct LinearOp(pub(super) Lin);

impl Op2 for LinearOp {
    fn name(&self) -> &'static str {
        match self.0 {
            Lin::Fwd => "hessian-lab-linear-fwd",
            Lin::Data => "hessian-lab-linear-data",
            Lin::Filter => "hessian-lab-linear-filter",
        }
    }
    fn fwd(&self, [(s1, l1), (s2, l2)]: [In; 2]) -> Out {
        let (d1, d2) = (l1.shape().dims2()?, l2.shape().dims2()?);
        // sizes (n, in, out) from the operands, which must agree
        let ((n, i, o), ok, out) = match self.0 {
            Lin::Fwd => ((d1.0, d1.1, d2.0), d1.1 == d2.1, (d1.0, d2.0)),
            Lin::Data => ((d1.0, d2.1, d1.1), d1.1 == d2.0, (d1.0, d2.1)),
            Lin::Filter => ((d1.0, d2.1, d1.1), d1.0 == d2.0, (d1.1, d2.1)),
        };
        if !ok {
            candle_core::bail!("{}: operands {d1:?} and {d2:?}", self.name());
        }
        let st = binary_op!(s1, l1, d1.0 * d1.1, s2, l2, d2.0 * d2.1, |a, b| self
            .0
            .product(a, b, (n, i, o)));
        Ok((st, Shape::from(out)))
    }
    /// Fwd(x, W): dx = Data(ḡ, W), dW = Filter(ḡ, x); Data(dy, W): d(dy) = Fwd(ḡ, W),
    /// dW = Filter(dy, ḡ); Filter(dy, x): d(dy) = Fwd(x, ḡ), dx = Data(dy, ḡ).
    fn bwd(&self, [a, b]: [&Tensor; 2], _res: &Tensor, g: &Tensor) -> Grads2 {
        let op = LinearOp;
        let ((a1, a2, ra), (b1, b2, rb)) = match self.0 {
            Lin::Fwd => ((g, b, Lin::Data), (g, a, Lin::Filter)),
            Lin::Data => ((g, b, Lin::Fwd), (a, g, Lin::Filter)),
            Lin::Filter => ((b, g, Lin::Fwd), (a, g, Lin::Data)),
        };
        let db = if self.0 == Lin::Fwd {
            // W's gradient, projected in a fresh HVP's first backward (x Wᵀ is linear in W)
            super::weight_grad(b, g, a, LinearFwd, || op2(b1, b2, op(rb)))?
        } else {
            if_tracked(b, || op2(b1, b2, op(rb)))?
        };
        Ok((if_tracked(a, || op2(a1, a2, op(ra)))?, db))
    }
}

/// y = x Wᵀ + b through [`LinearFwd`], or x Wᵀ through [`LinearOp`] without a bias (x 2-D).
/// Cost: one gemm; backward two.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (_, i) = x.dims2()?;
    let (o, i2) = w.dims2()?;
    if i2 != i || b.is_some_and(|b| b.dims() != [o]) {
        return Err(crate::Error::Shape(format!(
            "linear: input {:?}, weight {:?}, bias {:?}",
            x.dims(),
            w.dims(),
            b.map(|b| b.dims())
        )));
    }
    Ok(match b {
        Some(b) => op3(x, w, b, LinearFwd)?,
        None => op2(x, w, LinearOp(Lin::Fwd))?,
    })
}
