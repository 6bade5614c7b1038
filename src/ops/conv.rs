//! Convolution on the CPU as three mutually adjoint custom ops, each one im2col/col2im per
//! sample plus one gemm, so that no backward pass ever calls candle's naive CPU
//! `conv_transpose2d` and no im2col matrix outlives the op that built it.
//!
//! With Cᵢ = im2col(xᵢ) (in·k² × H'W') and W the weight as an (out × in·k²) matrix:
//!
//! | op | value | backward w.r.t. 1st arg | backward w.r.t. 2nd arg |
//! |---|---|---|---|
//! | `Fwd(x, W)` | yᵢ = W Cᵢ | `Data(ȳ, W)` | `Filter(x, ȳ)` |
//! | `Data(dy, W)` | dxᵢ = col2im(Wᵀ dyᵢ) | `Fwd(ḡ, W)` | `Filter(ḡ, dy)` |
//! | `Filter(x, dy)` | dW = Σᵢ dyᵢ Cᵢᵀ | `Data(dy, Ḡ)` | `Fwd(x, Ḡ)` |
//!
//! The family is closed under differentiation, so gradients, Hessian-vector products and any
//! higher derivative are exact. An argument that does not track gradients (the images in a
//! parameter-space Hessian) gets no gradient at all: the first layer's input gradient, which
//! candle computes and throws away, is skipped.
//!
//! Memory: each op keeps only its two inputs in the graph (as PyTorch does); the im2col
//! buffer is per task and group of samples, freed when the op returns.
//!
//! Samples share a gemm in groups ([`group_size`]). Groups of at least [`LANE_SAMPLES`] (layers
//! with few output pixels) keep images and columns sample-fastest, so that im2col and col2im
//! copy and add runs of the group's samples ([`im2col_lanes`], [`col2im_lanes`]).
//!
//! 3×3 stride-1 convolutions with ≥ 16 channels each way and maps of ≥ 16 pixels (C2's and
//! C3's conv2–4, ResNet18's but the stem) run the same three ops by Winograd's minimal
//! filtering instead ([`winograd`]): F(4×4, 3×3) on maps of ≥ 8 × 8 pixels, 4× fewer
//! multiplications, F(2×2, 3×3) on smaller ones, 2.25× fewer; exact up to rounding.

use super::{if_tracked, op2, op3, Grads2, Grads3, In, Op2, Op3, Out};
use crate::{Error, Result};
use candle_core::{CpuStorage, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

mod winograd;

/// Geometry of one convolution: batch n, in-channels c, input h×w, out-channels co, kernel
/// k×k, stride s, zero padding p.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    co: usize,
    k: usize,
    s: usize,
    p: usize,
}

/// Output length of a window of `k` sliding with stride `s` over `len` + 2·`p` (floor mode).
pub(crate) fn out_len(len: usize, k: usize, s: usize, p: usize) -> usize {
    (len + 2 * p - k) / s + 1
}

impl Geom {
    fn oh(&self) -> usize {
        out_len(self.h, self.k, self.s, self.p)
    }
    fn ow(&self) -> usize {
        out_len(self.w, self.k, self.s, self.p)
    }
    /// Output pixels per channel (columns of Cᵢ).
    fn l(&self) -> usize {
        self.oh() * self.ow()
    }
    /// Rows of Cᵢ.
    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }
    fn x_len(&self) -> usize {
        self.c * self.h * self.w
    }
    fn y_len(&self) -> usize {
        self.co * self.l()
    }
    fn x_shape(&self) -> Shape {
        Shape::from((self.n, self.c, self.h, self.w))
    }
    fn y_shape(&self) -> Shape {
        Shape::from((self.n, self.co, self.oh(), self.ow()))
    }
    fn w_shape(&self) -> Shape {
        Shape::from((self.co, self.c, self.k, self.k))
    }
    /// For kernel offset `d` along an axis of length `len` with `out` outputs: the range of
    /// output indices o whose input index o·s + d − p lies inside [0, len).
    #[inline]
    fn valid(&self, d: usize, len: usize, out: usize) -> (usize, usize) {
        let (s, p) = (self.s, self.p);
        // clamped: with padding ≥ half the kernel a window can lie wholly in the padding
        let lo = p.saturating_sub(d).div_ceil(s).min(out);
        let hi = if len + p > d {
            (len + p - d).div_ceil(s).min(out)
        } else {
            0
        };
        (lo, hi.max(lo))
    }
}

/// The im2col gather for one sample of a strided convolution: entry (r, l) of Cᵢ is
/// xᵢ[idx[r·L + l]], where the index `c·h·w` (one past the image) stands for a padding zero.
/// Built once per op call and shared by every sample (ckk·L u32); a gather through it is
/// 1.3× faster than strided row copies on LeNet's second layer (7-element rows). Empty for
/// stride 1, whose rows are copied whole.
fn im2col_index(g: &Geom) -> GatherIndex {
    if g.s == 1 {
        // stride 1 copies row segments instead
        return GatherIndex {
            v: vec![],
            bound: 0,
        };
    }
    let (oh, ow, k, l) = (g.oh(), g.ow(), g.k, g.l());
    let pad = g.x_len() as u32;
    let mut idx = vec![pad; g.ckk() * l];
    for ci in 0..g.c {
        for di in 0..k {
            for dj in 0..k {
                let row = &mut idx[((ci * k + di) * k + dj) * l..][..l];
                for oi in 0..oh {
                    let ii = (oi * g.s + di) as isize - g.p as isize;
                    if ii < 0 || ii >= g.h as isize {
                        continue;
                    }
                    for oj in 0..ow {
                        let jj = (oj * g.s + dj) as isize - g.p as isize;
                        if jj >= 0 && jj < g.w as isize {
                            row[oi * ow + oj] =
                                ((ci * g.h + ii as usize) * g.w + jj as usize) as u32;
                        }
                    }
                }
            }
        }
    }
    GatherIndex {
        v: idx,
        bound: g.x_len() + 1,
    }
}

/// The gather index of a strided im2col: every entry of `v` is < `bound` (= one image plus the
/// padding zero), by construction in [`im2col_index`], the only place that builds one. The
/// gather loop checks its buffer against `bound` once and then indexes without per-element
/// bounds checks (which kept it from vectorising: 15 % of an M1 gradient).
struct GatherIndex {
    v: Vec<u32>,
    bound: usize,
}

/// Cᵢ = im2col(xᵢ) into columns `off..off + L` of `col` (ckk rows, row stride `ld`), every
/// entry written. Stride 1: row segments copied whole (padding entries zeroed); other
/// strides: the gather [`im2col_index`] (`idx`), with `xz` as scratch for xᵢ and one zero.
#[allow(clippy::too_many_arguments)]
fn im2col_into<T: WithDType>(
    x: &[T],
    idx: &GatherIndex,
    xz: &mut Vec<T>,
    col: &mut [T],
    ld: usize,
    off: usize,
    g: &Geom,
) {
    let (l, k, ow) = (g.l(), g.k, g.ow());
    if g.s == 1 {
        for ci in 0..g.c {
            for di in 0..k {
                let (ilo, ihi) = g.valid(di, g.h, g.oh());
                for dj in 0..k {
                    let (jlo, jhi) = g.valid(dj, g.w, ow);
                    let row = ((ci * k + di) * k + dj) * ld + off;
                    let dst = &mut col[row..row + l];
                    dst[..ilo * ow].fill(T::zero());
                    dst[ihi * ow..].fill(T::zero());
                    for oi in ilo..ihi {
                        let ii = oi + di - g.p;
                        let xrow = &x[(ci * g.h + ii) * g.w..(ci * g.h + ii + 1) * g.w];
                        let d = &mut dst[oi * ow..(oi + 1) * ow];
                        d[..jlo].fill(T::zero());
                        d[jhi..].fill(T::zero());
                        if jhi > jlo {
                            let j0 = jlo + dj - g.p;
                            d[jlo..jhi].copy_from_slice(&xrow[j0..j0 + (jhi - jlo)]);
                        }
                    }
                }
            }
        }
        return;
    }
    xz.clear();
    xz.extend_from_slice(x);
    xz.push(T::zero());
    let xz = &xz[..];
    assert!(
        xz.len() >= idx.bound,
        "im2col: index built for another geometry"
    );
    for (r, ir) in idx.v.chunks_exact(l.max(1)).enumerate() {
        let dst = &mut col[r * ld + off..r * ld + off + l];
        for (d, &i) in dst.iter_mut().zip(ir) {
            // SAFETY: i < idx.bound ≤ xz.len() (GatherIndex invariant, checked above)
            *d = unsafe { *xz.get_unchecked(i as usize) };
        }
    }
}

/// xᵢ += col2im(columns `off..off + L` of `col`, row stride `ld`): the adjoint of
/// [`im2col_into`]. Each row of Cᵢ (one channel and kernel offset) is added, output row by
/// output row, to the input positions it was gathered from: whole segments for stride 1,
/// every s-th input for stride s — unlike a scatter-add through [`im2col_index`], no index
/// loads and no scratch image (BENCHMARKS.md, thirteenth sitting).
fn col2im_from<T: WithDType>(col: &[T], ld: usize, off: usize, x: &mut [T], g: &Geom) {
    let (k, s, ow) = (g.k, g.s, g.ow());
    for ci in 0..g.c {
        for di in 0..k {
            let (ilo, ihi) = g.valid(di, g.h, g.oh());
            for dj in 0..k {
                let (jlo, jhi) = g.valid(dj, g.w, ow);
                if jhi == jlo {
                    continue; // this kernel column only ever sees padding
                }
                let row = ((ci * k + di) * k + dj) * ld + off;
                for oi in ilo..ihi {
                    let ii = oi * s + di - g.p;
                    let xrow = &mut x[(ci * g.h + ii) * g.w..(ci * g.h + ii + 1) * g.w];
                    let src = &col[row + oi * ow + jlo..row + oi * ow + jhi];
                    let j0 = jlo * s + dj - g.p;
                    if s == 1 {
                        let d = &mut xrow[j0..j0 + src.len()];
                        d.iter_mut().zip(src).for_each(|(d, &v)| *d += v);
                    } else {
                        // the last input index, j0 + (len − 1)·s, is < w (Geom::valid)
                        for (t, &v) in src.iter().enumerate() {
                            xrow[j0 + t * s] += v;
                        }
                    }
                }
            }
        }
    }
}

/// A row-major matrix view for [`gemm`]: element (r, c) at `r * rs + c * cs`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a, T> {
    v: &'a [T],
    rs: usize,
    cs: usize,
}

pub(super) fn row_major<T>(v: &[T], cols: usize) -> Mat<'_, T> {
    Mat { v, rs: cols, cs: 1 }
}

pub(super) fn transposed<T>(v: &[T], cols: usize) -> Mat<'_, T> {
    Mat { v, rs: 1, cs: cols }
}

/// dst (m×n, row-major) = a (m×kk) · b (kk×n), or dst += a·b when `acc`. Bounds are checked
/// before the unsafe call; `par` lets gemm use rayon (when there are fewer samples than
/// threads).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm<T: WithDType>(
    m: usize,
    n: usize,
    kk: usize,
    dst: &mut [T],
    acc: bool,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    par: bool,
) -> candle_core::Result<()> {
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    if dst.len() < m * n
        || a.v.len() < last(m, kk, a.rs, a.cs)
        || b.v.len() < last(kk, n, b.rs, b.cs)
    {
        candle_core::bail!("conv gemm: buffer too small for {m}x{kk} · {kk}x{n}");
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if kk == 0 {
        if !acc {
            dst[..m * n].fill(T::zero());
        }
        return Ok(());
    }
    let t = rayon::current_num_threads();
    if par && t > 1 && b.rs == 1 && b.cs > 1 && n >= 32 * t {
        // b column-major (x Wᵀ of a linear layer): gemm's own thread split of this layout
        // scales badly (BENCHMARKS.md, thirteenth sitting), so the columns are split here, in
        // multiples of 16, each part a single-threaded gemm
        let cols = n.div_ceil(t).next_multiple_of(16);
        let ptrs = Shared((dst.as_mut_ptr(), a.v.as_ptr(), b.v.as_ptr()));
        (0..n.div_ceil(cols)).into_par_iter().for_each(|j| {
            let (c0, c1) = (j * cols, ((j + 1) * cols).min(n));
            let (d, av, bv) = ptrs.get();
            // SAFETY: as below, on columns c0..c1 of dst and of b; the tasks write disjoint
            // columns of dst.
            unsafe {
                raw_gemm::<T>(
                    (m, c1 - c0, kk),
                    d.add(c0),
                    n,
                    acc,
                    (av, a.cs, a.rs),
                    (bv.add(c0 * b.cs), b.cs, b.rs),
                    gemm::Parallelism::None,
                )
            }
        });
        return Ok(());
    }
    let par = if par {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index gemm touches is inside the slices (checked above); dst does not
    // alias a or b (distinct borrows).
    unsafe {
        raw_gemm::<T>(
            (m, n, kk),
            dst.as_mut_ptr(),
            n,
            acc,
            (a.v.as_ptr(), a.cs, a.rs),
            (b.v.as_ptr(), b.cs, b.rs),
            par,
        );
    }
    Ok(())
}

/// Pointers into buffers that tasks share, each task writing a disjoint part (see [`gemm`]).
struct Shared<P>(P);
// SAFETY: the tasks only read the operands and write disjoint elements of the output.
unsafe impl<P> Send for Shared<P> {}
unsafe impl<P> Sync for Shared<P> {}

impl<P: Copy> Shared<P> {
    fn get(&self) -> P {
        self.0
    }
}

/// gemm::gemm on row-major dst (row stride `ld`) and (pointer, column stride, row stride)
/// operands.
///
/// # Safety
/// Every element the product touches must lie in live allocations, dst aliasing neither
/// operand.
unsafe fn raw_gemm<T: WithDType>(
    (m, n, kk): (usize, usize, usize),
    dst: *mut T,
    ld: usize,
    acc: bool,
    (a, acs, ars): (*const T, usize, usize),
    (b, bcs, brs): (*const T, usize, usize),
    par: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        kk,
        dst,
        1,
        ld as isize,
        acc,
        a,
        acs as isize,
        ars as isize,
        b,
        bcs as isize,
        brs as isize,
        T::one(),
        T::one(),
        false,
        false,
        false,
        par,
    )
}

pub(super) fn slice<'a, T: WithDType>(
    v: &'a [T],
    l: &Layout,
    len: usize,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) if b - a == len => Ok(&v[a..b]),
        Some(_) => candle_core::bail!("conv: {what} has the wrong number of elements"),
        None => candle_core::bail!("conv: {what} must be contiguous"),
    }
}

/// `$f(a, b)` on the contiguous slices of two f32 (or two f64) storages of `$len1`/`$len2`
/// elements, as a `CpuStorage` of the same dtype; `$f` returns `candle_core::Result<Vec<T>>`
/// and is expanded once per dtype. Bails from the enclosing `cpu_fwd` on mixed or other dtypes.
macro_rules! binary_op {
    ($s1:expr, $l1:expr, $len1:expr, $s2:expr, $l2:expr, $len2:expr, $f:expr) => {
        match ($s1, $s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32($f(
                slice(a, $l1, $len1, "first argument")?,
                slice(b, $l2, $len2, "second argument")?,
            )?),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64($f(
                slice(a, $l1, $len1, "first argument")?,
                slice(b, $l2, $len2, "second argument")?,
            )?),
            _ => candle_core::bail!("fused kernels: arguments must be all f32 or all f64"),
        }
    };
}
pub(super) use binary_op;

/// [`binary_op!`] for three storages.
macro_rules! ternary_op {
    ($s1:expr, $l1:expr, $len1:expr, $s2:expr, $l2:expr, $len2:expr,
     $s3:expr, $l3:expr, $len3:expr, $f:expr) => {
        match ($s1, $s2, $s3) {
            (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(c)) => CpuStorage::F32($f(
                slice(a, $l1, $len1, "first argument")?,
                slice(b, $l2, $len2, "second argument")?,
                slice(c, $l3, $len3, "third argument")?,
            )?),
            (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c)) => CpuStorage::F64($f(
                slice(a, $l1, $len1, "first argument")?,
                slice(b, $l2, $len2, "second argument")?,
                slice(c, $l3, $len3, "third argument")?,
            )?),
            _ => candle_core::bail!("fused kernels: arguments must be all f32 or all f64"),
        }
    };
}
pub(super) use ternary_op;

/// Samples per gemm. One sample's product has only H'W' columns (49 for LeNet's second
/// layer), too few for gemm to amortise packing the weight; a group of samples side by side
/// gives it ≥ 1024 columns. Capped so the group's im2col buffer stays ≤ 2²⁰ elements (unless
/// one sample is larger) and so there are at least as many groups as threads.
///
/// Within the upper half of that cap, the size whose groups the threads share most evenly
/// (ties: the larger): the threads take groups in equal runs, so 128 samples in groups of
/// 40 (40 + 40 on one thread, 40 + 8 on the other) left a core idle for over a third of C1's
/// largest layer, where groups of 32 split 64 / 64.
fn group_size(g: &Geom) -> usize {
    let l = g.l().max(1);
    let by_cols = 1024usize.div_ceil(l);
    let by_mem = ((1usize << 20) / (g.ckk() * l).max(1)).max(1);
    let t = rayon::current_num_threads().max(1);
    let cap = by_cols.min(by_mem).min((g.n / t).max(1)).max(1);
    balanced_group(g.n, cap)
}

/// The group size in `⌈cap/2⌉..=cap` whose groups of `n` samples the threads share most
/// evenly (ties: the larger).
fn balanced_group(n: usize, cap: usize) -> usize {
    let t = rayon::current_num_threads().max(1);
    // samples on the busiest thread when each takes ⌈groups / t⌉ consecutive groups
    let busiest = |gs: usize| (n.div_ceil(gs).div_ceil(t) * gs).min(n);
    (cap.div_ceil(2)..=cap)
        .rev()
        .min_by_key(|&gs| busiest(gs))
        .unwrap_or(cap)
}

/// Calls `one(scratch, (group index, out chunk), gemm_parallel)` for every group's chunk of
/// `out` (`per` elements per sample): groups over threads when there are at least two,
/// otherwise in turn with a parallel gemm. `scratch` (`scratch_len` elements) is shared by the
/// groups a task runs, so it holds whatever the previous group left in it. It is not kept
/// across ops: a long-lived block fragments the single malloc arena (BENCHMARKS.md, tenth
/// sitting).
fn per_group<T: WithDType>(
    out: &mut [T],
    per: usize,
    gs: usize,
    scratch_len: usize,
    one: impl Fn(&mut Vec<T>, (usize, &mut [T]), bool) -> candle_core::Result<()> + Sync,
) -> candle_core::Result<()> {
    let chunk = (per * gs).max(1);
    if out.len() > chunk {
        // runs of ⌈groups / threads⌉ groups per task, so one zeroed scratch per thread rather
        // than one per group (memset of megabytes each)
        let groups = out.len().div_ceil(chunk);
        out.par_chunks_mut(chunk)
            .enumerate()
            .with_min_len(groups.div_ceil(rayon::current_num_threads()).max(1))
            .try_for_each_init(|| vec![T::zero(); scratch_len], |sc, t| one(sc, t, false))
    } else {
        let mut sc = vec![T::zero(); scratch_len];
        out.chunks_mut(chunk)
            .enumerate()
            .try_for_each(|t| one(&mut sc, t, true))
    }
}

/// Samples `i0..i0 + m` of a group side by side: `col` (ckk × m·L) = [C_i0 … C_i0+m−1].
fn im2col_group<T: WithDType>(
    x: &[T],
    idx: &GatherIndex,
    i0: usize,
    m: usize,
    col: &mut [T],
    g: &Geom,
) {
    let (xl, l) = (g.x_len(), g.l());
    let mut xz = Vec::with_capacity(xl + 1);
    for j in 0..m {
        let i = i0 + j;
        im2col_into(&x[i * xl..(i + 1) * xl], idx, &mut xz, col, m * l, j * l, g);
    }
}

/// Output gradients of samples `i0..i0 + m` as a co × m·L matrix: a slice of `dy` itself for
/// one sample, otherwise copied into `buf`, side by side or (groups of [`LANE_SAMPLES`] or
/// more) sample-fastest.
fn dy_group<'a, T: WithDType>(
    dy: &'a [T],
    i0: usize,
    m: usize,
    buf: &'a mut [T],
    g: &Geom,
) -> &'a [T] {
    let (yl, l) = (g.y_len(), g.l());
    let dys = &dy[i0 * yl..(i0 + m) * yl];
    if m == 1 {
        return dys;
    }
    let buf = &mut buf[..g.co * m * l];
    if m >= LANE_SAMPLES {
        to_lanes(dys, m, yl, buf);
    } else {
        side_by_side(dys, buf, m, g.co, l);
    }
    buf
}

/// Sample-major `a` (m × r × L) → side by side `b` (r × m·L).
fn side_by_side<T: WithDType>(a: &[T], b: &mut [T], m: usize, r: usize, l: usize) {
    for j in 0..m {
        for c in 0..r {
            b[(c * m + j) * l..(c * m + j + 1) * l]
                .copy_from_slice(&a[(j * r + c) * l..(j * r + c + 1) * l]);
        }
    }
}

/// Side by side `b` (r × m·L) → sample-major `a` (m × r × L): the inverse of [`side_by_side`].
fn sample_major<T: WithDType>(b: &[T], a: &mut [T], m: usize, r: usize, l: usize) {
    for j in 0..m {
        for c in 0..r {
            a[(j * r + c) * l..(j * r + c + 1) * l]
                .copy_from_slice(&b[(c * m + j) * l..(c * m + j + 1) * l]);
        }
    }
}

/// What [`fwd`] does to each output block while it is still in cache: start from the bias
/// (the gemm then accumulates onto it) and/or clamp at zero.
#[derive(Clone, Copy)]
struct Epilogue<'a, T> {
    bias: Option<&'a [T]>,
    relu: bool,
}

/// Rows of `l` elements of `y` (channel-major, `co` channels) set to the channel's bias.
fn fill_bias<T: WithDType>(y: &mut [T], bias: &[T], l: usize) {
    for (j, row) in y.chunks_mut(l.max(1)).enumerate() {
        row.fill(bias[j % bias.len()]);
    }
}

fn relu_in_place<T: WithDType>(y: &mut [T]) {
    y.iter_mut().for_each(|v| *v = v.max(T::zero()));
}

fn fwd<T: WithDType>(x: &[T], w: &[T], g: &Geom, ep: Epilogue<T>) -> candle_core::Result<Vec<T>> {
    if let Some(tile) = winograd::choose(g) {
        return winograd::fwd(x, w, g, ep, tile);
    }
    let (yl, ckk, l, gs) = (g.y_len(), g.ckk(), g.l(), group_size(g));
    let idx = im2col_index(g);
    let mut y = super::zeros(g.n * yl);
    // scratch: the group's im2col, then (groups of ≥ 2) the gemm's side-by-side (or
    // sample-fastest) output, then (sample-fastest groups) the group's images sample-fastest
    let one = |sc: &mut Vec<T>, (t, yg): (usize, &mut [T]), par: bool| {
        let m = yg.len() / yl.max(1);
        let (col, tmp) = sc.split_at_mut(ckk * gs * l);
        let (tmp, xt) = tmp.split_at_mut(g.co * gs * l);
        let col = &mut col[..ckk * m * l];
        let lanes = m >= LANE_SAMPLES;
        if lanes {
            im2col_lanes(x, t * gs, m, xt, col, g);
        } else {
            im2col_group(x, &idx, t * gs, m, col, g);
        }
        let out: &mut [T] = if m == 1 { yg } else { &mut tmp[..g.co * m * l] };
        if let Some(b) = ep.bias {
            fill_bias(out, b, m * l);
        }
        gemm(
            g.co,
            m * l,
            ckk,
            out,
            ep.bias.is_some(),
            row_major(w, ckk),
            row_major(col, m * l),
            par,
        )?;
        if lanes {
            from_lanes(&tmp[..g.co * m * l], m, yl, yg);
        } else if m > 1 {
            sample_major(&tmp[..g.co * m * l], yg, m, g.co, l);
        }
        if ep.relu {
            relu_in_place(yg);
        }
        Ok(())
    };
    per_group(
        &mut y,
        yl,
        gs,
        (ckk + g.co) * gs * l + lane_images(g, gs),
        one,
    )?;
    Ok(y)
}

/// Samples per group from which the convolution ops lay a group's columns out sample-fastest
/// ([`im2col_lanes`], [`col2im_lanes`]): enough for a vector of copies or additions per
/// column entry. Smaller groups (layers with many output pixels) stay sample by sample.
const LANE_SAMPLES: usize = 8;

/// Scratch for a group's images sample-fastest: none unless groups of `gs` are laid out so.
fn lane_images(g: &Geom, gs: usize) -> usize {
    if gs >= LANE_SAMPLES {
        g.x_len() * gs
    } else {
        0
    }
}

fn bwd_data<T: WithDType>(dy: &[T], w: &[T], g: &Geom) -> candle_core::Result<Vec<T>> {
    if let Some(tile) = winograd::choose(g) {
        return winograd::bwd_data(dy, w, g, tile);
    }
    let (xl, ckk, l, gs) = (g.x_len(), g.ckk(), g.l(), group_size(g));
    let mut dx = super::zeros(g.n * xl);
    // scratch: the group's column gradient, then its dy side by side (or sample-fastest),
    // then (sample-fastest groups) the group's input gradient sample-fastest
    let one = |sc: &mut Vec<T>, (t, dxg): (usize, &mut [T]), par: bool| {
        let m = dxg.len() / xl.max(1);
        let (col, rest) = sc.split_at_mut(ckk * gs * l);
        let (dyg, xt) = rest.split_at_mut(g.co * gs * l);
        let col = &mut col[..ckk * m * l];
        let b = dy_group(dy, t * gs, m, dyg, g);
        gemm(
            ckk,
            m * l,
            g.co,
            col,
            false,
            transposed(w, ckk),
            row_major(b, m * l),
            par,
        )?;
        if m >= LANE_SAMPLES {
            let xt = &mut xt[..xl * m];
            xt.fill(T::zero());
            col2im_lanes(col, m, xt, g);
            from_lanes(xt, m, xl, dxg);
        } else {
            for (j, dxj) in dxg.chunks_exact_mut(xl.max(1)).enumerate() {
                col2im_from(col, m * l, j * l, dxj, g);
            }
        }
        Ok(())
    };
    per_group(
        &mut dx,
        xl,
        gs,
        (ckk + g.co) * gs * l + lane_images(g, gs),
        one,
    )?;
    Ok(dx)
}

/// `m` samples of `len` values each (`src`, one after another) → sample-fastest `dst`
/// (`len` × m): value q of sample j at q·m + j.
fn to_lanes<T: WithDType>(src: &[T], m: usize, len: usize, dst: &mut [T]) {
    let dst = &mut dst[..len * m];
    for (j, sj) in src[..len * m].chunks_exact(len.max(1)).enumerate() {
        for (d, &v) in dst.iter_mut().skip(j).step_by(m).zip(sj) {
            *d = v;
        }
    }
}

/// The inverse of [`to_lanes`]: sample-fastest `src` (`len` × m) → `m` samples in `dst`.
fn from_lanes<T: WithDType>(src: &[T], m: usize, len: usize, dst: &mut [T]) {
    for (j, dj) in dst[..len * m].chunks_exact_mut(len.max(1)).enumerate() {
        for (d, &v) in dj.iter_mut().zip(src.iter().skip(j).step_by(m)) {
            *d = v;
        }
    }
}

/// im2col of samples `i0..i0 + m` with samples fastest: the images go sample-fastest into
/// `xt` (scratch, c·h·w × m), then `col` (ckk × L·m) gets entry (r, p) of sample j at column
/// p·m + j — each entry a copy of m contiguous values (one run per output row for stride 1),
/// where the sample-by-sample gather ([`im2col_into`]) moves one value per index load.
fn im2col_lanes<T: WithDType>(x: &[T], i0: usize, m: usize, xt: &mut [T], col: &mut [T], g: &Geom) {
    let (k, s, oh, ow, l, xl) = (g.k, g.s, g.oh(), g.ow(), g.l(), g.x_len());
    let xt = &mut xt[..xl * m];
    to_lanes(&x[i0 * xl..(i0 + m) * xl], m, xl, xt);
    for ci in 0..g.c {
        for di in 0..k {
            let (ilo, ihi) = g.valid(di, g.h, oh);
            for dj in 0..k {
                let (jlo, jhi) = g.valid(dj, g.w, ow);
                let row = &mut col[((ci * k + di) * k + dj) * l * m..][..l * m];
                row[..ilo * ow * m].fill(T::zero());
                row[ihi * ow * m..].fill(T::zero());
                for oi in ilo..ihi {
                    let ii = oi * s + di - g.p;
                    let orow = &mut row[oi * ow * m..(oi + 1) * ow * m];
                    orow[..jlo * m].fill(T::zero());
                    orow[jhi * m..].fill(T::zero());
                    let xrow = &xt[(ci * g.h + ii) * g.w * m..(ci * g.h + ii + 1) * g.w * m];
                    if s == 1 {
                        let j0 = jlo + dj - g.p;
                        orow[jlo * m..jhi * m].copy_from_slice(&xrow[j0 * m..(j0 + jhi - jlo) * m]);
                    } else {
                        for oj in jlo..jhi {
                            let jj = oj * s + dj - g.p;
                            orow[oj * m..(oj + 1) * m].copy_from_slice(&xrow[jj * m..(jj + 1) * m]);
                        }
                    }
                }
            }
        }
    }
}

/// col2im of a group with samples fastest: `col` (ckk × L·m) holds entry (r, p) of sample j at
/// column p·m + j, `x` (c·h·w × m) receives input position q of sample j at q·m + j. Each
/// column entry becomes m contiguous additions (a vector or two), where sample by sample
/// ([`col2im_from`]) a layer with few output pixels spends its time on loop overhead and
/// strided single additions (4×4 and 7×7 outputs in C1 and LeNet). Each sample sees the same
/// additions in the same order as there.
fn col2im_lanes<T: WithDType>(col: &[T], m: usize, x: &mut [T], g: &Geom) {
    let (k, s, ow, l) = (g.k, g.s, g.ow(), g.l());
    for ci in 0..g.c {
        for di in 0..k {
            let (ilo, ihi) = g.valid(di, g.h, g.oh());
            for dj in 0..k {
                let (jlo, jhi) = g.valid(dj, g.w, ow);
                let row = &col[((ci * k + di) * k + dj) * l * m..][..l * m];
                for oi in ilo..ihi {
                    let ii = oi * s + di - g.p;
                    for oj in jlo..jhi {
                        let jj = oj * s + dj - g.p;
                        let src = &row[(oi * ow + oj) * m..][..m];
                        let dst = &mut x[((ci * g.h + ii) * g.w + jj) * m..][..m];
                        dst.iter_mut().zip(src).for_each(|(d, &v)| *d += v);
                    }
                }
            }
        }
    }
}

fn bwd_filter<T: WithDType>(x: &[T], dy: &[T], g: &Geom) -> candle_core::Result<Vec<T>> {
    if let Some(tile) = winograd::choose(g) {
        return winograd::bwd_filter(x, dy, g, tile);
    }
    let (ckk, l, gs) = (g.ckk(), g.l(), group_size(g));
    let idx = im2col_index(g);
    let wl = g.co * ckk;
    // gemm's speed depends on which operand it must repack: with ckk > co (every layer but
    // the first), accumulating dWᵀ = C·dyᵀ is the faster order (it repacks the smaller
    // operand; BENCHMARKS.md); the first layer keeps dW.
    let wt = ckk > g.co;
    // dW += [dy_i …] (co × m·L) · [C_i …]ᵀ (m·L × ckk), group by group (or its transpose)
    // the sum over a group's columns is the same in either order of its columns: sample-fastest
    // (as the data gradient) where the group is large enough
    let one = |(acc, col, dyg, xt): &mut (Vec<T>, Vec<T>, Vec<T>, Vec<T>), t: usize, par: bool| {
        let i0 = t * gs;
        let m = gs.min(g.n - i0);
        let col = &mut col[..ckk * m * l];
        if m >= LANE_SAMPLES {
            im2col_lanes(x, i0, m, xt, col, g);
        } else {
            im2col_group(x, &idx, i0, m, col, g);
        }
        let a = dy_group(dy, i0, m, dyg, g);
        let (rows, cols, lhs, rhs) = if wt {
            (ckk, g.co, &*col, a)
        } else {
            (g.co, ckk, a, &*col)
        };
        gemm(
            rows,
            cols,
            m * l,
            acc,
            true,
            row_major(lhs, m * l),
            transposed(rhs, m * l),
            par,
        )
    };
    let fresh = || {
        (
            vec![T::zero(); wl],
            vec![T::zero(); ckk * gs * l],
            vec![T::zero(); g.co * gs * l],
            vec![T::zero(); lane_images(g, gs)],
        )
    };
    let groups = g.n.div_ceil(gs);
    let dw = if groups >= 2 {
        let per = groups.div_ceil(rayon::current_num_threads()).max(1);
        let parts: Vec<Vec<T>> = (0..groups.div_ceil(per))
            .into_par_iter()
            .map(|p| {
                let mut st = fresh();
                for t in p * per..((p + 1) * per).min(groups) {
                    one(&mut st, t, false)?;
                }
                Ok(st.0)
            })
            .collect::<candle_core::Result<_>>()?;
        let mut it = parts.into_iter();
        let mut dw = it.next().unwrap_or_else(|| vec![T::zero(); wl]);
        for p in it {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        dw
    } else {
        let mut st = fresh();
        for t in 0..groups {
            one(&mut st, t, true)?;
        }
        st.0
    };
    if !wt {
        return Ok(dw);
    }
    // dWᵀ (ckk × co) → dW (co × ckk)
    let mut out = super::zeros(wl);
    transpose_into(&dw, ckk, g.co, &mut out);
    Ok(out)
}

/// `b` (cols × rows) = `a`ᵀ for a row-major `a` (rows × cols), in tiles of 32 output rows
/// (one rayon task each) walked 32 input rows at a time. A plain loop stores at stride `rows`
/// and missed cache and TLB on every element: 82 % of the weight-gradient op's own time on
/// ResNet18 (512 × 4608 weights), beside its gemm.
fn transpose_into<T: Copy + Send + Sync>(a: &[T], rows: usize, cols: usize, b: &mut [T]) {
    const TILE: usize = 32;
    if rows == 0 || cols == 0 {
        return;
    }
    b[..rows * cols]
        .par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(t, bt)| {
            let (c0, cn) = (t * TILE, bt.len() / rows);
            for r0 in (0..rows).step_by(TILE) {
                for r in r0..(r0 + TILE).min(rows) {
                    let src = &a[r * cols + c0..r * cols + c0 + cn];
                    for (j, &v) in src.iter().enumerate() {
                        bt[j * rows + r] = v;
                    }
                }
            }
        });
}

/// Which member of the convolution's adjoint family an op is (see the module docs' table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// y = conv(x, W)
    Fwd,
    /// dx = conv_transpose(dy, W), the input gradient
    Data,
    /// dW = Σᵢ dyᵢ im2col(xᵢ)ᵀ, the weight gradient
    Filter,
}

/// A convolution op of the given [`Role`] on geometry `Geom`. The three are each other's
/// adjoints, so every backward is a pair of the same three ops (exact to any order).
pub(super) struct ConvOp(Geom, Role);

impl Op2 for ConvOp {
    fn name(&self) -> &'static str {
        match self.1 {
            Role::Fwd => "hessian-lab-conv2d",
            Role::Data => "hessian-lab-conv2d-bwd-data",
            Role::Filter => "hessian-lab-conv2d-bwd-filter",
        }
    }
    fn fwd(&self, [(s1, l1), (s2, l2)]: [In; 2]) -> Out {
        let g = &self.0;
        let (xl, yl, wl) = (g.n * g.x_len(), g.n * g.y_len(), g.co * g.ckk());
        Ok(match self.1 {
            Role::Fwd => (
                binary_op!(s1, l1, xl, s2, l2, wl, |a, b| fwd(
                    a,
                    b,
                    g,
                    Epilogue {
                        bias: None,
                        relu: false
                    }
                )),
                g.y_shape(),
            ),
            Role::Data => (
                binary_op!(s1, l1, yl, s2, l2, wl, |a, b| bwd_data(a, b, g)),
                g.x_shape(),
            ),
            Role::Filter => (
                binary_op!(s1, l1, xl, s2, l2, yl, |a, b| bwd_filter(a, b, g)),
                g.w_shape(),
            ),
        })
    }
    /// Fwd(x, W): dx = Data(ḡ, W), dW = Filter(x, ḡ); Data(dy, W): d(dy) = Fwd(ḡ, W),
    /// dW = Filter(ḡ, dy); Filter(x, dy): dx = Data(dy, ḡ), d(dy) = Fwd(x, ḡ).
    fn bwd(&self, [a, b]: [&Tensor; 2], _res: &Tensor, g: &Tensor) -> Grads2 {
        let g = &g.contiguous()?;
        let op = |r| ConvOp(self.0, r);
        let ((a1, a2, ra), (b1, b2, rb)) = match self.1 {
            Role::Fwd => ((g, b, Role::Data), (a, g, Role::Filter)),
            Role::Data => ((g, b, Role::Fwd), (g, a, Role::Filter)),
            Role::Filter => ((b, g, Role::Data), (a, g, Role::Fwd)),
        };
        let db = if self.1 == Role::Fwd {
            // W's gradient, projected in a fresh HVP's first backward (Fwd is linear in W)
            super::weight_grad(b, g, a, self.0, || op2(b1, b2, op(rb)))?
        } else {
            if_tracked(b, || op2(b1, b2, op(rb)))?
        };
        Ok((if_tracked(a, || op2(a1, a2, op(ra)))?, db))
    }
}

/// The convolution as a linear map of its weight: tangent Fwd(x, v), adjoint Data(ḡ, v).
impl super::LinearIn for Geom {
    fn tangent(&self, x: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        op2(x, v, ConvOp(*self, Role::Fwd))
    }
    fn adjoint(&self, g: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        op2(g, v, ConvOp(*self, Role::Data))
    }
}

/// y = W ⋆ x + b, then max(y, 0) when `relu` (no pre-activation tensor is stored and the
/// clamp costs no pass of its own), PyTorch semantics (weight [out, in, k, k], zero padding
/// `padding`), with the adjoint-op backward described in the module docs (the bias is added inside the op and
/// its gradient Σ_{i,pixels} dy is one contiguous pass). CPU, f32/f64.
///
/// Cost per sample: one im2col copy and one (out × in·k²)·(in·k² × H'W') gemm; its gradient
/// costs two such gemms, one im2col and one col2im (one gemm and one col2im fewer when x does
/// not need a gradient); an HVP through it about twice the gradient.
pub(crate) fn conv2d_gemm(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
    relu: bool,
) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (co, ci, kh, kw) = w.dims4()?;
    if ci != c || kh != kw {
        return Err(Error::Shape(format!(
            "conv2d: weight {:?} for input {:?}",
            w.dims(),
            x.dims()
        )));
    }
    if c * h * wd >= u32::MAX as usize {
        return Err(Error::Shape(format!(
            "conv2d: one sample of {c}x{h}x{wd} values is too large for the CPU kernels (< 2^32)"
        )));
    }
    if stride == 0 || h + 2 * padding < kh || wd + 2 * padding < kw {
        return Err(Error::Shape(format!(
            "conv2d: input {h}x{wd} too small for kernel {kh}x{kw} (stride {stride}, padding {padding})"
        )));
    }
    let g = Geom {
        n,
        c,
        h,
        w: wd,
        co,
        k: kh,
        s: stride,
        p: padding,
    };
    match b {
        None if relu => super::fused::relu(&op2(x, w, ConvOp(g, Role::Fwd))?),
        None => Ok(op2(x, w, ConvOp(g, Role::Fwd))?),
        Some(b) => {
            if b.dims() != [co] {
                return Err(Error::Shape(format!(
                    "conv2d: bias {:?} for {co} output channels",
                    b.dims()
                )));
            }
            Ok(op3(x, w, b, ConvBiasFwd { g, relu })?)
        }
    }
}

/// y = W ⋆ x + b as one op, or relu(W ⋆ x + b) when `relu`: [`ConvOp`] (`Fwd`) with the bias as the
/// gemm's starting value and the clamp applied to each sample's block while it is in cache.
/// Backward: ḡ = ḡ_y·1[y > 0] (`fused::ReluMask` on the output, when `relu`), then
/// its backward and db = `fused::ChanSum`(ḡ).
pub(super) struct ConvBiasFwd {
    g: Geom,
    relu: bool,
}

impl Op3 for ConvBiasFwd {
    fn name(&self) -> &'static str {
        if self.relu {
            "hessian-lab-conv2d-bias-relu"
        } else {
            "hessian-lab-conv2d-bias"
        }
    }
    fn fwd(&self, [(s1, l1), (s2, l2), (s3, l3)]: [In; 3]) -> Out {
        let g = &self.g;
        let relu = self.relu;
        let (xl, wl) = (g.n * g.x_len(), g.co * g.ckk());
        let st = ternary_op!(s1, l1, xl, s2, l2, wl, s3, l3, g.co, |x, w, b| fwd(
            x,
            w,
            g,
            Epilogue {
                bias: Some(b),
                relu
            }
        ));
        Ok((st, g.y_shape()))
    }
    fn bwd(&self, [x, w, b]: [&Tensor; 3], res: &Tensor, dy: &Tensor) -> Grads3 {
        let dy = if self.relu {
            // y > 0 exactly where the pre-activation is > 0; the mask's own derivative is 0
            op2(dy, res, super::fused::ReluMask)?
        } else {
            dy.clone()
        };
        let (dx, dw) = ConvOp(self.g, Role::Fwd).bwd([x, w], res, &dy)?;
        let db = if_tracked(b, || super::fused::chan_sum_op(&dy))?;
        Ok((dx, dw, db))
    }
}

#[cfg(test)]
mod tests {
    use super::transpose_into;

    #[test]
    fn tiled_transpose_is_the_transpose_for_partial_tiles() {
        for (rows, cols) in [(1, 1), (70, 45), (33, 100), (4608 / 64, 31)] {
            let a: Vec<f64> = (0..rows * cols).map(|i| i as f64).collect();
            let mut b = vec![f64::NAN; rows * cols];
            transpose_into(&a, rows, cols, &mut b);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        b[c * rows + r],
                        a[r * cols + c],
                        "({r}, {c}) of {rows}×{cols}"
                    );
                }
            }
        }
    }
}
