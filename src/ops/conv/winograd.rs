//! Winograd's minimal filtering F(m×m, 3×3), m = 2 or 4, for 3×3 stride-1 convolutions (Lavin
//! & Gray, *Fast Algorithms for Convolutional Neural Networks*, 2016): the three members of the
//! convolution's adjoint family ([`super::Role`]) with α² = (m + 2)² multiplications per m×m
//! output tile and input channel instead of im2col's 9m².
//!
//! One output tile Y (m×m) of one channel pair is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A, with d the α×α
//! input tile (zero outside the image), g the 3×3 kernel and, for F(2×2, 3×3) (points 0, ±1, ∞),
//!
//! ```text
//! Bᵀ = [1  0 −1  0]    G = [1    0    0 ]    Aᵀ = [1 1  1  0]
//!      [0  1  1  0]        [½    ½    ½ ]         [0 1 −1 −1]
//!      [0 −1  1  0]        [½   −½    ½ ]
//!      [0  1  0 −1]        [0    0    1 ]
//! ```
//!
//! and for F(4×4, 3×3) (points 0, ±1, ±2, ∞)
//!
//! ```text
//! Bᵀ = [4  0 −5  0  1  0]    G = [ ¼     0     0 ]    Aᵀ = [1 1  1 1  1 0]
//!      [0 −4 −4  1  1  0]        [−⅙   −⅙    −⅙ ]         [0 1 −1 2 −2 0]
//!      [0  4 −4 −1  1  0]        [−⅙    ⅙    −⅙ ]         [0 1  1 4  4 0]
//!      [0 −2 −1  2  1  0]        [1/24  1/12  ⅙ ]         [0 1 −1 8 −8 1]
//!      [0  2 −1 −2  1  0]        [1/24 −1/12  ⅙ ]
//!      [0  4  0 −5  0  1]        [ 0     0     1 ]
//! ```
//!
//! Summed over input channels, each of the α² tile positions ξ is a matrix product:
//! M_ξ (out × tiles) = U_ξ (out × in) · V_ξ (in × tiles) with U = G g Gᵀ, V = Bᵀ d B.
//!
//! - **Forward**: transform the weights (U) and inputs (V), α² gemms, Aᵀ M A per tile.
//! - **Input gradient** (`Data`): for stride 1 it is the forward convolution of dy with the
//!   kernel rotated by 180° and its channel axes swapped, at padding 2 − p; so any p ≤ 2.
//! - **Weight gradient** (`Filter`): the forward is linear in U, so the exact adjoint of the
//!   tiling is dU_ξ = Σ_tiles (A dy Aᵀ)_ξ · V_ξᵀ (α² gemms) and dW = Gᵀ dU G. Output positions
//!   past the map's edge (sizes not a multiple of m) are computed by the forward and dropped,
//!   so their dy is 0.
//!
//! Every identity is exact, so the three ops stay each other's adjoints up to rounding and the
//! family remains closed under differentiation. F(2×2, 3×3)'s transforms only add, subtract
//! and halve (error of the order of the direct sum's); F(4×4, 3×3)'s scale by up to 8 and by
//! ⅙, 1/24 (not exact in binary), which makes its f32 rounding error ~6× F(2×2)'s (the
//! tests below, 256 input channels: ~1.2e-6 relative, F(2×2) ~2e-7, the same sums accumulated
//! one product at a time in f32 ~8e-7).
//!
//! Layout: the transforms run along channels, on a group of samples turned channel-last
//! (h·w × c per sample), so their vectors are as long as the channel count whatever the map
//! size (an 8 × 8 map has 4 tiles of F(2×2) per row); V_ξ and M_ξ are tiles × channels, and the
//! output is turned back to channels-first. The weight gradient's dU (α²·in·out) is split
//! between the threads by rows of tile positions, not copied per thread.
//!
//! Cost per sample and channel pair: the gemms do α²·tiles multiply-adds against im2col's
//! 9·m²·tiles (F(2×2): 2.25× fewer, F(4×4): 4× fewer); besides them, two transposes, the tile
//! transforms (V is α²/m² times the input: 4× for F(2×2), 2.25× for F(4×4); M alike for the
//! output) and the weight transform (α²·in·out, over threads). Used where gemm dominates: both
//! channel counts ≥ [`MIN_CHANNELS`] (ResNet18's stem with 3 input channels keeps im2col) and
//! at least [`MIN_PIXELS`] output pixels per map; F(4×4) where both sides of the map are
//! ≥ [`F4_MIN_SIDE`] (C2, C3, ResNet18's first three stages), F(2×2) on smaller maps
//! (ResNet18's 4 × 4 last stage).
//!
//! Threads: per group of samples, or, when the whole batch has few tiles (ResNet18's last two
//! stages at batch 32), the whole batch at once with the tile positions split between the
//! threads, so that each gemm has all the batch's tiles as rows.

use super::{gemm, per_group, row_major, transposed, Epilogue, Geom};
use crate::ops::with_avx2;
use candle_core::WithDType;
use rayon::prelude::*;

/// Fewer channels make the α² gemms too thin (inner dimension = input channels) for gemm to
/// run near its peak; im2col's inner dimension is 9× larger.
const MIN_CHANNELS: usize = 16;

/// Fewer output pixels per map leave too few tiles per sample to pay for the weight transform
/// (α²·in·out per call). ResNet18's 4 × 4 maps (last stage) gain with F(2×2, 3×3) since the
/// weight transform runs on vectors and small batches are multiplied whole
/// ([`fwd_u_wide`]); F(4×4, 3×3) there, one tile per sample, was slower (BENCHMARKS.md,
/// eleventh sitting).
const MIN_PIXELS: usize = 16;

/// F(4×4, 3×3) where both sides of the output map are at least this long (two whole tiles
/// each way); smaller maps keep F(2×2, 3×3).
const F4_MIN_SIDE: usize = 8;

/// Output tile of the minimal filtering algorithm: F(2×2, 3×3) or F(4×4, 3×3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tile {
    F2,
    F4,
}

/// Which tile a convolution of geometry `g` runs with, or `None` for im2col + gemm. The
/// environment variable `HESSIAN_LAB_WINOGRAD` (read once) overrides the choice for A/B
/// measurements: `0` leaves every convolution on im2col + gemm, `2` uses F(2×2, 3×3) wherever
/// Winograd applies.
pub(super) fn choose(g: &Geom) -> Option<Tile> {
    static MODE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let mode = MODE.get_or_init(|| std::env::var("HESSIAN_LAB_WINOGRAD").ok());
    let applies = g.k == 3
        && g.s == 1
        && g.p <= 2
        && g.c >= MIN_CHANNELS
        && g.co >= MIN_CHANNELS
        && g.oh() >= 2
        && g.ow() >= 2
        && g.l() >= MIN_PIXELS;
    match mode.as_deref() {
        _ if !applies => None,
        Some("0") => None,
        Some("2") => Some(Tile::F2),
        _ if g.oh() >= F4_MIN_SIDE && g.ow() >= F4_MIN_SIDE => Some(Tile::F4),
        _ => Some(Tile::F2),
    }
}

/// `k` as a `T`, summed from ones so that it folds to a constant once inlined (candle's
/// `WithDType::from_f64` is not inlined across crates, and a coefficient that is not a
/// constant keeps its ±1 products).
#[inline(always)]
fn int<T: WithDType>(k: i8) -> T {
    let mut v = T::zero();
    for _ in 0..k.unsigned_abs() {
        v += T::one();
    }
    if k < 0 {
        T::zero() - v
    } else {
        v
    }
}

/// −x (`WithDType` has no `Neg`).
#[inline(always)]
fn neg<T: WithDType>(x: T) -> T {
    T::zero() - x
}

/// dst[i] = Σ_k coef[k]·src[k][i] for K terms (the coefficients are constants at every call
/// site, so once inlined the ±1 products fold into additions and the loop vectorises).
#[inline(always)]
fn comb<T: WithDType, const K: usize>(dst: &mut [T], src: [&[T]; K], coef: [i8; K]) {
    lin(dst, src, coef.map(int::<T>))
}

/// dst[i] = Σ_k coef[k]·src[k][i].
#[inline(always)]
fn lin<T: WithDType, const K: usize>(dst: &mut [T], src: [&[T]; K], coef: [T; K]) {
    let n = dst.len();
    let src = src.map(|s| &s[..n]);
    for (i, d) in dst.iter_mut().enumerate() {
        // SAFETY: i < n and every src[k] was cut to length n above (indexing with bounds
        // checks kept this loop from vectorising).
        let at = |k: usize| unsafe { *src[k].get_unchecked(i) };
        let mut s = coef[0] * at(0);
        for (k, &c) in coef.iter().enumerate().skip(1) {
            s += c * at(k);
        }
        *d = s;
    }
}

/// The weight transforms' fractions, converted once per call.
struct Frac<T> {
    half: T,
    quarter: T,
    sixth: T,
    twelfth: T,
    twenty_fourth: T,
}

impl<T: WithDType> Frac<T> {
    fn new() -> Self {
        let f = T::from_f64;
        Frac {
            half: f(0.5),
            quarter: f(0.25),
            sixth: f(1. / 6.),
            twelfth: f(1. / 12.),
            twenty_fourth: f(1. / 24.),
        }
    }
}

impl Tile {
    /// Output tile side m.
    fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }
    /// Input tile side α = m + 2.
    fn alpha(self) -> usize {
        self.m() + 2
    }
    /// Tile positions ξ: α².
    fn planes(self) -> usize {
        self.alpha() * self.alpha()
    }

    /// dst = row r of Bᵀ applied to the α vectors d (rows r < α).
    #[inline(always)]
    fn bt<'a, T: WithDType>(self, r: usize, d: impl Fn(usize) -> &'a [T], dst: &mut [T]) {
        match (self, r) {
            (Tile::F2, 0) => comb(dst, [d(0), d(2)], [1, -1]),
            (Tile::F2, 1) => comb(dst, [d(1), d(2)], [1, 1]),
            (Tile::F2, 2) => comb(dst, [d(2), d(1)], [1, -1]),
            (Tile::F2, _) => comb(dst, [d(1), d(3)], [1, -1]),
            (Tile::F4, 0) => comb(dst, [d(0), d(2), d(4)], [4, -5, 1]),
            (Tile::F4, 1) => comb(dst, [d(1), d(2), d(3), d(4)], [-4, -4, 1, 1]),
            (Tile::F4, 2) => comb(dst, [d(1), d(2), d(3), d(4)], [4, -4, -1, 1]),
            (Tile::F4, 3) => comb(dst, [d(1), d(2), d(3), d(4)], [-2, -1, 2, 1]),
            (Tile::F4, 4) => comb(dst, [d(1), d(2), d(3), d(4)], [2, -1, -2, 1]),
            (Tile::F4, _) => comb(dst, [d(1), d(3), d(5)], [4, -5, 1]),
        }
    }

    /// dst = row r of Aᵀ applied to the α vectors x (rows r < m).
    #[inline(always)]
    fn at<'a, T: WithDType>(self, r: usize, x: impl Fn(usize) -> &'a [T], dst: &mut [T]) {
        match (self, r) {
            (Tile::F2, 0) => comb(dst, [x(0), x(1), x(2)], [1, 1, 1]),
            (Tile::F2, _) => comb(dst, [x(1), x(2), x(3)], [1, -1, -1]),
            (Tile::F4, 0) => comb(dst, [x(0), x(1), x(2), x(3), x(4)], [1, 1, 1, 1, 1]),
            (Tile::F4, 1) => comb(dst, [x(1), x(2), x(3), x(4)], [1, -1, 2, -2]),
            (Tile::F4, 2) => comb(dst, [x(1), x(2), x(3), x(4)], [1, 1, 4, 4]),
            (Tile::F4, _) => comb(dst, [x(1), x(2), x(3), x(4), x(5)], [1, -1, 8, -8, 1]),
        }
    }

    /// dst = row k of A (= column k of Aᵀ) applied to the m vectors y (rows k < α).
    #[inline(always)]
    fn a<'a, T: WithDType>(self, k: usize, y: impl Fn(usize) -> &'a [T], dst: &mut [T]) {
        match (self, k) {
            (_, 0) => dst.copy_from_slice(&y(0)[..dst.len()]),
            (Tile::F2, 1) => comb(dst, [y(0), y(1)], [1, 1]),
            (Tile::F2, 2) => comb(dst, [y(0), y(1)], [1, -1]),
            (Tile::F2, _) => comb(dst, [y(1)], [-1]),
            (Tile::F4, 1) => comb(dst, [y(0), y(1), y(2), y(3)], [1, 1, 1, 1]),
            (Tile::F4, 2) => comb(dst, [y(0), y(1), y(2), y(3)], [1, -1, 1, -1]),
            (Tile::F4, 3) => comb(dst, [y(0), y(1), y(2), y(3)], [1, 2, 4, 8]),
            (Tile::F4, 4) => comb(dst, [y(0), y(1), y(2), y(3)], [1, -2, 4, -8]),
            (Tile::F4, _) => dst.copy_from_slice(&y(3)[..dst.len()]),
        }
    }

    /// Row r of Bᵀ or A (see [`Side`]).
    #[inline(always)]
    fn one_d<'a, T: WithDType>(
        self,
        side: Side,
        r: usize,
        x: impl Fn(usize) -> &'a [T],
        dst: &mut [T],
    ) {
        match side {
            Side::Bt => self.bt(r, x, dst),
            Side::A => self.a(r, x, dst),
        }
    }

    /// dst = row r of G applied to the three vectors k (rows r < α).
    #[inline(always)]
    fn g<T: WithDType>(self, r: usize, k: [&[T]; 3], dst: &mut [T], f: &Frac<T>) {
        let [a, b, c] = k;
        match (self, r) {
            (Tile::F2, 0) => dst.copy_from_slice(&a[..dst.len()]),
            (Tile::F2, 1) => lin(dst, [a, b, c], [f.half, f.half, f.half]),
            (Tile::F2, 2) => lin(dst, [a, b, c], [f.half, neg(f.half), f.half]),
            (Tile::F4, 0) => lin(dst, [a], [f.quarter]),
            (Tile::F4, 1) => lin(dst, [a, b, c], [neg(f.sixth), neg(f.sixth), neg(f.sixth)]),
            (Tile::F4, 2) => lin(dst, [a, b, c], [neg(f.sixth), f.sixth, neg(f.sixth)]),
            (Tile::F4, 3) => lin(dst, [a, b, c], [f.twenty_fourth, f.twelfth, f.sixth]),
            (Tile::F4, 4) => lin(dst, [a, b, c], [f.twenty_fourth, neg(f.twelfth), f.sixth]),
            (_, _) => dst.copy_from_slice(&c[..dst.len()]),
        }
    }

    /// dst = row a of Gᵀ (= column a of G) applied to the α vectors u (rows a < 3): the
    /// adjoint of [`Tile::g`].
    #[inline(always)]
    fn gt<'a, T: WithDType>(
        self,
        a: usize,
        u: impl Fn(usize) -> &'a [T],
        dst: &mut [T],
        f: &Frac<T>,
    ) {
        let (h, q, s, tw, tf) = (f.half, f.quarter, f.sixth, f.twelfth, f.twenty_fourth);
        match (self, a) {
            (Tile::F2, 0) => lin(dst, [u(0), u(1), u(2)], [T::one(), h, h]),
            (Tile::F2, 1) => lin(dst, [u(1), u(2)], [h, neg(h)]),
            (Tile::F2, _) => lin(dst, [u(1), u(2), u(3)], [h, h, T::one()]),
            (Tile::F4, 0) => lin(
                dst,
                [u(0), u(1), u(2), u(3), u(4)],
                [q, neg(s), neg(s), tf, tf],
            ),
            (Tile::F4, 1) => lin(dst, [u(1), u(2), u(3), u(4)], [neg(s), s, tw, neg(tw)]),
            (Tile::F4, _) => lin(
                dst,
                [u(1), u(2), u(3), u(4), u(5)],
                [neg(s), neg(s), s, s, T::one()],
            ),
        }
    }
}

/// Tile rows, tile columns and tiles per sample.
fn tiles(g: &Geom, tile: Tile) -> (usize, usize, usize) {
    let (th, tw) = (g.oh().div_ceil(tile.m()), g.ow().div_ceil(tile.m()));
    (th, tw, th * tw)
}

/// Samples per group of tiles transformed and multiplied together: ≥ 512 tile columns per
/// gemm where the batch allows, V and M of a group ≤ 2²⁰ elements, at least as many groups as
/// threads, shared evenly ([`super::balanced_group`]).
fn group_size(g: &Geom, tile: Tile) -> usize {
    let t = tiles(g, tile).2.max(1);
    let by_cols = 512usize.div_ceil(t);
    let by_mem = ((1usize << 20) / (tile.planes() * (g.c + g.co) * t).max(1)).max(1);
    let threads = rayon::current_num_threads().max(1);
    let cap = by_cols.min(by_mem).min((g.n / threads).max(1)).max(1);
    super::balanced_group(g.n, cap)
}

/// Output channels per task of the weight transforms.
const O_BLOCK: usize = 16;

/// U (α² × co × c): U[ξ][o][i] = (G w[o, i] Gᵀ)[ξ] for a weight `w` (co × c × 3 × 3), or, when
/// `rotated`, of the kernels w[i, o] (w: c × co × 3 × 3) rotated by 180° (the input gradient's
/// convolution, without a copy of the rotated weight). Per output channel, its 9 kernel
/// entries are gathered as rows along the input channels, so the transform runs on vectors
/// and writes each plane's row whole; blocks of output channels over threads (ResNet18's third
/// stage: 65,536 channel pairs per call, each convolution transformed twice per gradient).
fn weight_transform<T: WithDType>(
    w: &[T],
    co: usize,
    c: usize,
    rotated: bool,
    tile: Tile,
) -> Vec<T> {
    let (al, f) = (tile.alpha(), Frac::new());
    let mut u = super::super::zeros(tile.planes() * co * c);
    // per block of output channels: its rows of each of the α² planes
    let blk = (O_BLOCK * c).max(1);
    let mut blocks: Vec<Vec<&mut [T]>> = (0..co.div_ceil(O_BLOCK)).map(|_| vec![]).collect();
    for plane in u.chunks_mut((co * c).max(1)) {
        for (b, rows) in plane.chunks_mut(blk).enumerate() {
            blocks[b].push(rows);
        }
    }
    blocks
        .into_par_iter()
        .enumerate()
        .for_each(|(bi, mut planes)| {
            // kernel entry a of every input channel (9 rows of c), then G g by columns
            let mut k9 = vec![T::zero(); 9 * c];
            let mut gg = [[T::zero(); CH]; 18];
            for ol in 0..planes[0].len() / c.max(1) {
                let o = bi * O_BLOCK + ol;
                for i in 0..c {
                    for a in 0..9 {
                        k9[a * c + i] = if rotated {
                            w[(i * co + o) * 9 + 8 - a]
                        } else {
                            w[(o * c + i) * 9 + a]
                        };
                    }
                }
                for c0 in (0..c).step_by(CH) {
                    let len = CH.min(c - c0);
                    let k = |a: usize| &k9[a * c + c0..][..len];
                    for r in 0..al {
                        for j in 0..3 {
                            tile.g(r, [k(j), k(3 + j), k(6 + j)], &mut gg[3 * r + j][..len], &f);
                        }
                    }
                    for r in 0..al {
                        let row = |j: usize| &gg[3 * r + j][..len];
                        for b in 0..al {
                            let dst = &mut planes[r * al + b][ol * c + c0..][..len];
                            tile.g(b, [row(0), row(1), row(2)], dst, &f);
                        }
                    }
                }
            }
        });
    u
}

/// dW (co × c × 3 × 3) = Gᵀ dU G per channel pair, for dU laid out as U: the adjoint of
/// [`weight_transform`], on vectors along the input channels alike.
fn weight_transform_adjoint<T: WithDType>(du: &[T], co: usize, c: usize, tile: Tile) -> Vec<T> {
    let (al, f) = (tile.alpha(), Frac::new());
    let plane = co * c;
    let mut w = super::super::zeros(9 * plane);
    w.par_chunks_mut(9 * (O_BLOCK * c).max(1))
        .enumerate()
        .for_each(|(bi, wb)| {
            // Gᵀ dU (3 × α) and Gᵀ dU G (3 × 3) of one chunk of input channels
            let mut gu = [[T::zero(); CH]; 18];
            let mut k9 = [[T::zero(); CH]; 9];
            for (ol, wo) in wb.chunks_exact_mut(9 * c.max(1)).enumerate() {
                let o = bi * O_BLOCK + ol;
                for c0 in (0..c).step_by(CH) {
                    let len = CH.min(c - c0);
                    for j in 0..al {
                        let col = |r: usize| &du[(r * al + j) * plane + o * c + c0..][..len];
                        for a in 0..3 {
                            tile.gt(a, col, &mut gu[al * a + j][..len], &f);
                        }
                    }
                    for a in 0..3 {
                        let row = |j: usize| &gu[al * a + j][..len];
                        for b in 0..3 {
                            tile.gt(b, row, &mut k9[3 * a + b][..len], &f);
                        }
                    }
                    for i in 0..len {
                        for (e, k) in k9.iter().enumerate() {
                            wo[(c0 + i) * 9 + e] = k[i];
                        }
                    }
                }
            }
        });
    w
}

/// Channels per step of the transforms: their intermediate rows stay in L1.
const CH: usize = 64;

/// `b` (cols × rows) = `a`ᵀ for a row-major `a` (rows × cols). 32-bit values on a CPU with
/// AVX go through [`simd::transpose32`] (8 × 8 blocks in registers); others: strips of 16 rows,
/// each output run of 16 written whole (16 × 16 blocks written along a's rows, at stride
/// `rows`, were 2× slower, 13× for 1024 × 64).
fn transpose<T: Copy>(a: &[T], rows: usize, cols: usize, b: &mut [T]) {
    let n = rows * cols;
    let (a, b) = (&a[..n], &mut b[..n]);
    #[cfg(target_arch = "x86_64")]
    if std::mem::size_of::<T>() == 4 && std::mem::align_of::<T>() >= 4 && simd::has_avx() {
        // SAFETY: T is Copy with f32's size and at least its alignment, and every bit pattern
        // is an f32, so the slices are valid as f32; the kernel only moves bits.
        let (a32, b32) = unsafe {
            (
                std::slice::from_raw_parts(a.as_ptr().cast::<f32>(), n),
                std::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<f32>(), n),
            )
        };
        simd::transpose32(a32, rows, cols, b32);
        return;
    }
    transpose_strips(a, rows, cols, b)
}

fn transpose_strips<T: Copy>(a: &[T], rows: usize, cols: usize, b: &mut [T]) {
    const S: usize = 16;
    let full = rows / S * S;
    for r0 in (0..full).step_by(S) {
        for c in 0..cols {
            let d = &mut b[c * rows + r0..][..S];
            for (i, d) in d.iter_mut().enumerate() {
                *d = a[(r0 + i) * cols + c];
            }
        }
    }
    for r in full..rows {
        for c in 0..cols {
            b[c * rows + r] = a[r * cols + c];
        }
    }
}

/// The transposes of the Winograd layouts (channel-last and back) in AVX registers: they were
/// 11 % of ResNet18's fresh HVP as scalar loops (the crate compiles for the x86-64 baseline).
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    pub(super) fn has_avx() -> bool {
        std::arch::is_x86_feature_detected!("avx")
    }

    /// `b` (cols × rows) = `a`ᵀ in 8 × 8 blocks (needs AVX: callers check [`has_avx`]). Block
    /// order by shape (measured on 64…2048 × 8…1024): for wide `a` (rows < cols), 16 × 16
    /// squares, so that each visit reads and writes whole cache lines; otherwise one column
    /// of blocks at a time, down all the rows, so that only 8 rows of `b` are written at once
    /// (16 × 16 squares there write 16-float runs at a power-of-two stride into rows of b
    /// that share cache sets: 0.2–0.6 ns per value instead of 0.1). 2–6× the scalar strips.
    pub(super) fn transpose32(a: &[f32], rows: usize, cols: usize, b: &mut [f32]) {
        const S: usize = 8;
        assert!(a.len() >= rows * cols && b.len() >= rows * cols);
        let block = |b: &mut [f32], r0: usize, c0: usize| {
            debug_assert!(r0 + S <= rows && c0 + S <= cols);
            // SAFETY: AVX is present (the caller's check); the block's reads
            // a[(r0 + i)·cols + c0 + 0..8] and writes b[(c0 + j)·rows + r0 + 0..8], i, j < 8,
            // lie below rows·cols because r0 + 8 ≤ rows and c0 + 8 ≤ cols.
            unsafe {
                tr8(
                    a.as_ptr().add(r0 * cols + c0),
                    cols,
                    b.as_mut_ptr().add(c0 * rows + r0),
                    rows,
                )
            }
        };
        let (fr, fc);
        if rows < cols {
            (fr, fc) = (rows / (2 * S) * (2 * S), cols / (2 * S) * (2 * S));
            for r0 in (0..fr).step_by(2 * S) {
                for c0 in (0..fc).step_by(2 * S) {
                    for (dr, dc) in [(0, 0), (0, S), (S, 0), (S, S)] {
                        block(b, r0 + dr, c0 + dc);
                    }
                }
            }
        } else {
            (fr, fc) = (rows / S * S, cols / S * S);
            for c0 in (0..fc).step_by(S) {
                for r0 in (0..fr).step_by(S) {
                    block(b, r0, c0);
                }
            }
        }
        for c in fc..cols {
            for r in 0..fr {
                b[c * rows + r] = a[r * cols + c];
            }
        }
        for r in fr..rows {
            for c in 0..cols {
                b[c * rows + r] = a[r * cols + c];
            }
        }
    }

    /// One 8 × 8 block: rows a, a + lda, … (8 values each) → rows b, b + ldb, … transposed.
    /// Unpack pairs of rows, shuffle pairs of pairs, then swap 128-bit halves.
    #[target_feature(enable = "avx")]
    unsafe fn tr8(a: *const f32, lda: usize, b: *mut f32, ldb: usize) {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(a.add(i * lda)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let o = [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ];
        for (j, o) in o.into_iter().enumerate() {
            _mm256_storeu_ps(b.add(j * ldb), o);
        }
    }
}

/// Samples `i0..i0 + m` of `x` (n × c × h × w) channel-last into `xt` (m × h·w × c), so that
/// the transforms run along channels: long vectors whatever the map size.
fn channel_last<T: WithDType>(x: &[T], c: usize, hw: usize, i0: usize, m: usize, xt: &mut [T]) {
    let l = c * hw;
    for j in 0..m {
        transpose(
            &x[(i0 + j) * l..(i0 + j + 1) * l],
            c,
            hw,
            &mut xt[j * l..(j + 1) * l],
        );
    }
}

/// Tile t = j·tiles + ti·tw + tj of the group (sample j, tile row ti, column tj).
fn tile_of(t: usize, g: &Geom, tile: Tile) -> (usize, usize, usize) {
    let (_, tw, nt) = tiles(g, tile);
    (t / nt, (t % nt) / tw, t % tw)
}

/// The 1-D transform of a two-sided tile transform: Bᵀ (α → α, inputs) or A (m → α, output
/// gradients).
#[derive(Clone, Copy)]
enum Side {
    Bt,
    A,
}

/// Rows `rows` of S s Sᵀ (α × α) for one tile s (`n` × `n` channel vectors, row-major in `src`,
/// channels `c0..c0 + len`), S = Bᵀ or A: the 1-D transform on the columns into `tmp`, then on
/// the rows of the result; position ξ = α·r + b goes to `out[(ξ − α·rows.start)·plane..][..len]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn two_sided<T: WithDType>(
    tile: Tile,
    side: Side,
    src: &[&[T]],
    n: usize,
    (c0, len): (usize, usize),
    rows: std::ops::Range<usize>,
    tmp: &mut [[T; CH]; 36],
    (out, plane): (&mut [T], usize),
) {
    let al = tile.alpha();
    // row r, column q of S s at [n·r + q]
    for r in rows.clone() {
        for q in 0..n {
            let x = |k: usize| &src[n * k + q][c0..c0 + len];
            tile.one_d(side, r, x, &mut tmp[n * r + q][..len]);
        }
    }
    for r in rows.clone() {
        for b in 0..al {
            let at = (al * (r - rows.start) + b) * plane;
            tile.one_d(side, b, |k| &tmp[n * r + k][..len], &mut out[at..][..len]);
        }
    }
}

with_avx2!(fn input_transform = input_transform_body(
    xt: &[T], g: &Geom, tile: Tile, m: usize, rows: std::ops::Range<usize>, v: &mut [T]
));

/// V (α² planes of T × c, T = m·tiles) of the group's channel-last inputs `xt` (`m` samples):
/// V = Bᵀ d B for every tile, the tile of output (m·ti, m·tj) starting at input
/// (m·ti − p, m·tj − p), zero outside the image. Only the planes of V's rows `rows` (of α),
/// into `v` from its start.
#[inline(always)]
fn input_transform_body<T: WithDType>(
    xt: &[T],
    g: &Geom,
    tile: Tile,
    m: usize,
    rows: std::ops::Range<usize>,
    v: &mut [T],
) {
    let (c, nt, al, tm) = (g.c, tiles(g, tile).2, tile.alpha(), tile.m());
    let plane = m * nt * c;
    let zero = vec![T::zero(); c];
    let mut tmp = [[T::zero(); CH]; 36];
    for t in 0..m * nt {
        let (j, ti, tj) = tile_of(t, g, tile);
        let xs = &xt[j * g.h * g.w * c..(j + 1) * g.h * g.w * c];
        let src: [&[T]; 36] = std::array::from_fn(|k| {
            let (ii, jj) = (
                (tm * ti + k / al).checked_sub(g.p),
                (tm * tj + k % al).checked_sub(g.p),
            );
            match (ii, jj) {
                (Some(ii), Some(jj)) if k < al * al && ii < g.h && jj < g.w => {
                    &xs[(ii * g.w + jj) * c..(ii * g.w + jj + 1) * c]
                }
                _ => &zero[..],
            }
        });
        for c0 in (0..c).step_by(CH) {
            let ch = (c0, CH.min(c - c0));
            let out = (&mut v[t * c + c0..], plane);
            two_sided(tile, Side::Bt, &src, al, ch, rows.clone(), &mut tmp, out);
        }
    }
}

with_avx2!(fn grad_transform = grad_transform_body(
    dyt: &[T], g: &Geom, tile: Tile, m: usize, rows: std::ops::Range<usize>, p: &mut [T]
));

/// P (α² planes of T × co) = A dy Aᵀ for every m×m tile of the group's channel-last output
/// gradient `dyt` (m × oh·ow × co; positions past the map are 0): the adjoint of
/// [`output_transform`]'s Aᵀ M A. Only the planes of P's rows `rows`, into `p` from its start.
#[inline(always)]
fn grad_transform_body<T: WithDType>(
    dyt: &[T],
    g: &Geom,
    tile: Tile,
    m: usize,
    rows: std::ops::Range<usize>,
    p: &mut [T],
) {
    let (co, nt, (oh, ow), tm) = (g.co, tiles(g, tile).2, (g.oh(), g.ow()), tile.m());
    let plane = m * nt * co;
    let zero = vec![T::zero(); co];
    let mut tmp = [[T::zero(); CH]; 36];
    for t in 0..m * nt {
        let (j, ti, tj) = tile_of(t, g, tile);
        let ys = &dyt[j * oh * ow * co..(j + 1) * oh * ow * co];
        let src: [&[T]; 16] = std::array::from_fn(|k| {
            let (ii, jj) = (tm * ti + k / tm, tm * tj + k % tm);
            if k < tm * tm && ii < oh && jj < ow {
                &ys[(ii * ow + jj) * co..(ii * ow + jj + 1) * co]
            } else {
                &zero[..]
            }
        });
        for c0 in (0..co).step_by(CH) {
            let ch = (c0, CH.min(co - c0));
            let out = (&mut p[t * co + c0..], plane);
            two_sided(tile, Side::A, &src, tm, ch, rows.clone(), &mut tmp, out);
        }
    }
}

with_avx2!(fn output_transform = output_transform_body(
    mm: &[T], g: &Geom, tile: Tile, m: usize, samples: std::ops::Range<usize>, yt: &mut [T],
    ep: &Epilogue<T>
));

/// The outputs channel-last of the group's samples `samples` (of `m`), `yt` (samples × oh·ow ×
/// co) = Aᵀ M A for each of their tiles in `mm` (α² planes of T × co, T = m·tiles, as the gemms
/// leave them), cropped to oh × ow, then the epilogue (bias, ReLU).
#[inline(always)]
fn output_transform_body<T: WithDType>(
    mm: &[T],
    g: &Geom,
    tile: Tile,
    m: usize,
    samples: std::ops::Range<usize>,
    yt: &mut [T],
    ep: &Epilogue<T>,
) {
    let (co, nt, (oh, ow)) = (g.co, tiles(g, tile).2, (g.oh(), g.ow()));
    let (al, tm) = (tile.alpha(), tile.m());
    let plane = m * nt * co;
    // Aᵀ M of one chunk of channels: row r, column c at [α·r + c]
    let mut am = [[T::zero(); CH]; 24];
    for t in samples.start * nt..samples.end * nt {
        let (j, ti, tj) = tile_of(t, g, tile);
        let j = j - samples.start;
        for c0 in (0..co).step_by(CH) {
            let len = CH.min(co - c0);
            for c in 0..al {
                let x = |r: usize| &mm[(al * r + c) * plane + t * co + c0..][..len];
                for r in 0..tm {
                    tile.at(r, x, &mut am[al * r + c][..len]);
                }
            }
            for k in 0..tm * tm {
                let (ii, jj) = (tm * ti + k / tm, tm * tj + k % tm);
                if ii >= oh || jj >= ow {
                    continue;
                }
                let dst = &mut yt[((j * oh + ii) * ow + jj) * co + c0..][..len];
                // row k / m of Aᵀ M, then column k % m of it times A
                let r = |c: usize| &am[al * (k / tm) + c][..len];
                tile.at(k % tm, r, dst);
                if let Some(b) = ep.bias {
                    dst.iter_mut()
                        .zip(&b[c0..c0 + len])
                        .for_each(|(d, &b)| *d += b);
                }
                if ep.relu {
                    dst.iter_mut().for_each(|d| *d = d.max(T::zero()));
                }
            }
        }
    }
}

/// M_ξ (T × co) = V_ξ (T × c) · U_ξᵀ (c × co) for the planes of `v` (each T × c; `u` and `mm`
/// from the same plane on). U_ξ read in place would be slower: gemm then skips repacking it and
/// strides over its rows.
fn forward_gemms<T: WithDType>(
    v: &[T],
    u: &[T],
    mm: &mut [T],
    tc: usize,
    g: &Geom,
    par: bool,
) -> candle_core::Result<()> {
    let (pv, pu, pm) = (g.c * tc, g.co * g.c, g.co * tc);
    for xi in 0..v.len() / pv.max(1) {
        gemm(
            tc,
            g.co,
            g.c,
            &mut mm[xi * pm..(xi + 1) * pm],
            false,
            row_major(&v[xi * pv..(xi + 1) * pv], g.c),
            transposed(&u[xi * pu..(xi + 1) * pu], g.c),
            par,
        )?;
    }
    Ok(())
}

/// y = conv(x, w) (+ bias, ReLU): see the module docs.
pub(super) fn fwd<T: WithDType>(
    x: &[T],
    w: &[T],
    g: &Geom,
    ep: Epilogue<T>,
    tile: Tile,
) -> candle_core::Result<Vec<T>> {
    fwd_u(x, &weight_transform(w, g.co, g.c, false, tile), g, ep, tile)
}

/// [`fwd`] with the weights already transformed.
fn fwd_u<T: WithDType>(
    x: &[T],
    u: &[T],
    g: &Geom,
    ep: Epilogue<T>,
    tile: Tile,
) -> candle_core::Result<Vec<T>> {
    let (nt, gs, yl, xl) = (tiles(g, tile).2, group_size(g, tile), g.y_len(), g.x_len());
    let np = tile.planes();
    if g.n * nt <= WIDE_TILES && np * (g.c + g.co) * g.n * nt <= WIDE_ELEMS {
        return fwd_u_wide(x, u, g, ep, tile);
    }
    let mut y = super::super::zeros(g.n * yl);
    // scratch: channel-last inputs, V, M, channel-last outputs
    let (vl, ml) = (np * g.c * gs * nt, np * g.co * gs * nt);
    let one = |sc: &mut Vec<T>, (t, yg): (usize, &mut [T]), par: bool| {
        let m = yg.len() / yl.max(1);
        let tc = m * nt;
        let (xt, rest) = sc.split_at_mut(xl * gs);
        let (v, rest) = rest.split_at_mut(vl);
        let (mm, yt) = rest.split_at_mut(ml);
        let (v, mm) = (&mut v[..np * g.c * tc], &mut mm[..np * g.co * tc]);
        channel_last(x, g.c, g.h * g.w, t * gs, m, xt);
        input_transform(xt, g, tile, m, 0..tile.alpha(), v);
        forward_gemms(v, u, mm, tc, g, par)?;
        output_transform(mm, g, tile, m, 0..m, yt, &ep);
        let l = g.l();
        for j in 0..m {
            transpose(
                &yt[j * yl..(j + 1) * yl],
                l,
                g.co,
                &mut yg[j * yl..(j + 1) * yl],
            );
        }
        Ok(())
    };
    per_group(&mut y, yl, gs, xl * gs + vl + ml + yl * gs, one)?;
    Ok(y)
}

/// At most this many tiles in the whole batch, [`fwd_u`] transforms and multiplies the batch at
/// once, the threads splitting the α² gemms (as [`bwd_filter`] does) instead of the samples:
/// per-sample groups would give each gemm only a few dozen rows (ResNet18's third stage at
/// batch 32: 4 tiles per sample), too few to amortise packing the c × co operand U_ξ.
const WIDE_TILES: usize = 512;

/// ... and at most this many elements of V and M together.
const WIDE_ELEMS: usize = 1 << 22;

/// [`fwd_u`] for the whole batch at once, the α × α tile positions split between threads by
/// rows: each transforms its rows of V for every tile and runs its gemms, with all tiles of
/// the batch as rows; then the output transform over samples.
fn fwd_u_wide<T: WithDType>(
    x: &[T],
    u: &[T],
    g: &Geom,
    ep: Epilogue<T>,
    tile: Tile,
) -> candle_core::Result<Vec<T>> {
    let (n, nt, yl, xl, al) = (g.n, tiles(g, tile).2, g.y_len(), g.x_len(), tile.alpha());
    let tc = n * nt;
    let (pv, pm) = (g.c * tc, g.co * tc);
    let mut xt = super::super::zeros(n * xl);
    xt.par_chunks_mut(xl.max(1))
        .enumerate()
        .for_each(|(j, d)| transpose(&x[j * xl..(j + 1) * xl], g.c, g.h * g.w, d));
    let mut v = super::super::zeros(tile.planes() * pv);
    let mut mm = super::super::zeros(tile.planes() * pm);
    let tasks = rayon::current_num_threads().clamp(1, al);
    let rows_per = al.div_ceil(tasks);
    v.par_chunks_mut((al * rows_per * pv).max(1))
        .zip(mm.par_chunks_mut((al * rows_per * pm).max(1)))
        .enumerate()
        .try_for_each(|(k, (vr, mr))| {
            let r0 = k * rows_per;
            let rows = r0..(r0 + vr.len() / (al * pv).max(1)).min(al);
            input_transform(&xt, g, tile, n, rows.clone(), vr);
            let ur = &u[al * r0 * g.co * g.c..];
            forward_gemms(vr, ur, mr, tc, g, tasks == 1)?;
            Ok::<(), candle_core::Error>(())
        })?;
    drop(v);
    let mut y = super::super::zeros(n * yl);
    y.par_chunks_mut(yl.max(1)).enumerate().for_each_init(
        || vec![T::zero(); yl],
        |yt, (j, yj)| {
            output_transform(&mm, g, tile, n, j..j + 1, yt, &ep);
            transpose(yt, g.l(), g.co, yj);
        },
    );
    Ok(y)
}

/// dx = conv_transpose(dy, w) as the forward convolution of dy (co channels, oh × ow) with
/// w'[i, o] = w[o, i] rotated by 180°, at padding 2 − p: output oh + 2(2 − p) − 2 = h.
pub(super) fn bwd_data<T: WithDType>(
    dy: &[T],
    w: &[T],
    g: &Geom,
    tile: Tile,
) -> candle_core::Result<Vec<T>> {
    let gt = Geom {
        c: g.co,
        co: g.c,
        h: g.oh(),
        w: g.ow(),
        p: 2 - g.p,
        ..*g
    };
    fwd_u(
        dy,
        &weight_transform(w, gt.co, gt.c, true, tile),
        &gt,
        Epilogue {
            bias: None,
            relu: false,
        },
        tile,
    )
}

/// dW = Gᵀ (Σ_tiles P_ξᵀ V_ξ) G: see the module docs. The threads split dU by rows of the
/// α × α tile positions (each walks every group of samples and transforms only its rows of V
/// and P), so there is one dU and no sum of per-thread copies (α²·in·out each, α²/9 of the
/// weight). Each thread turns the group channel-last itself.
pub(super) fn bwd_filter<T: WithDType>(
    x: &[T],
    dy: &[T],
    g: &Geom,
    tile: Tile,
) -> candle_core::Result<Vec<T>> {
    let (nt, gs, xl, yl) = (tiles(g, tile).2, group_size(g, tile), g.x_len(), g.y_len());
    let al = tile.alpha();
    let plane = g.co * g.c;
    let tasks = rayon::current_num_threads().clamp(1, al);
    let rows_per = al.div_ceil(tasks);
    let mut du = super::super::zeros(tile.planes() * plane);
    du.par_chunks_mut((al * rows_per * plane).max(1))
        .enumerate()
        .try_for_each(|(k, dur)| {
            let r0 = k * rows_per;
            let rows = r0..(r0 + dur.len() / (al * plane).max(1)).min(al);
            let np = al * rows.len();
            let par = tasks == 1;
            let (vl, pl) = (np * g.c * gs * nt, np * g.co * gs * nt);
            let mut sc = vec![T::zero(); (xl + yl) * gs + vl + pl];
            for i0 in (0..g.n).step_by(gs.max(1)) {
                let m = gs.min(g.n - i0);
                let tc = m * nt;
                let (xt, rest) = sc.split_at_mut(xl * gs);
                let (dyt, rest) = rest.split_at_mut(yl * gs);
                let (v, p) = rest.split_at_mut(vl);
                let (v, p) = (&mut v[..np * g.c * tc], &mut p[..np * g.co * tc]);
                channel_last(x, g.c, g.h * g.w, i0, m, xt);
                channel_last(dy, g.co, g.l(), i0, m, dyt);
                input_transform(xt, g, tile, m, rows.clone(), v);
                grad_transform(dyt, g, tile, m, rows.clone(), p);
                for xi in 0..np {
                    // dU_ξ (co × c) += P_ξᵀ (co × T) · V_ξ (T × c)
                    gemm(
                        g.co,
                        g.c,
                        tc,
                        &mut dur[xi * plane..(xi + 1) * plane],
                        true,
                        transposed(&p[xi * g.co * tc..(xi + 1) * g.co * tc], g.co),
                        row_major(&v[xi * g.c * tc..(xi + 1) * g.c * tc], g.c),
                        par,
                    )?;
                }
            }
            Ok::<(), candle_core::Error>(())
        })?;
    Ok(weight_transform_adjoint(&du, g.co, g.c, tile))
}

#[cfg(test)]
mod tests {
    use super::{bwd_data, bwd_filter, fwd, Epilogue, Geom, Tile};

    #[test]
    fn transpose_is_the_transpose_on_every_path() {
        // wide and tall, whole blocks and remainders on both sides, one row or column
        for (rows, cols) in [
            (1, 1),
            (1, 37),
            (37, 1),
            (8, 8),
            (16, 48),
            (48, 16),
            (13, 29),
            (29, 13),
            (67, 9),
            (9, 67),
            (64, 1024),
            (1024, 64),
            (40, 40),
        ] {
            let a: Vec<f32> = (0..rows * cols).map(|i| i as f32 + 0.5).collect();
            let a64: Vec<f64> = a.iter().map(|&v| v as f64).collect();
            let au: Vec<u32> = (0..rows * cols).map(|i| i as u32).collect();
            let mut b = vec![f32::NAN; rows * cols];
            let mut b64 = vec![f64::NAN; rows * cols];
            let mut bu = vec![u32::MAX; rows * cols];
            super::transpose(&a, rows, cols, &mut b);
            super::transpose(&a64, rows, cols, &mut b64);
            super::transpose(&au, rows, cols, &mut bu);
            let mut strips = vec![f32::NAN; rows * cols];
            super::transpose_strips(&a, rows, cols, &mut strips);
            for r in 0..rows {
                for c in 0..cols {
                    let (i, j) = (r * cols + c, c * rows + r);
                    assert_eq!(b[j], a[i], "f32 ({r}, {c}) of {rows}×{cols}");
                    assert_eq!(b64[j], a64[i], "f64 ({r}, {c}) of {rows}×{cols}");
                    assert_eq!(bu[j], au[i], "u32 ({r}, {c}) of {rows}×{cols}");
                    assert_eq!(strips[j], a[i], "strips ({r}, {c}) of {rows}×{cols}");
                }
            }
        }
    }

    /// Deterministic values in (−1, 1).
    fn vals(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    /// x[i, c, r, s] with zero outside the image (r, s as signed offsets).
    fn at(x: &[f64], g: &Geom, i: usize, c: usize, r: isize, s: isize) -> f64 {
        if r < 0 || s < 0 || r >= g.h as isize || s >= g.w as isize {
            return 0.0;
        }
        x[((i * g.c + c) * g.h + r as usize) * g.w + s as usize]
    }

    /// The three ops straight from the definition y[i,o,r,s] = Σ_{c,a,b} x[i,c,r+a−p,s+b−p]·w[o,c,a,b]:
    /// y, dx = ∂⟨y, dy⟩/∂x and dW = ∂⟨y, dy⟩/∂w by accumulating every product's two partials.
    fn brute(x: &[f64], w: &[f64], dy: &[f64], g: &Geom) -> [Vec<f64>; 3] {
        let (oh, ow) = (g.oh(), g.ow());
        let mut y = vec![0.0; g.n * g.co * oh * ow];
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        for i in 0..g.n {
            for o in 0..g.co {
                for r in 0..oh {
                    for s in 0..ow {
                        let yi = ((i * g.co + o) * oh + r) * ow + s;
                        for c in 0..g.c {
                            for a in 0..3 {
                                for b in 0..3 {
                                    let (xr, xs) = (
                                        (r + a) as isize - g.p as isize,
                                        (s + b) as isize - g.p as isize,
                                    );
                                    let wi = ((o * g.c + c) * 3 + a) * 3 + b;
                                    let xv = at(x, g, i, c, xr, xs);
                                    y[yi] += xv * w[wi];
                                    dw[wi] += dy[yi] * xv;
                                    let inside = xr >= 0
                                        && xs >= 0
                                        && xr < g.h as isize
                                        && xs < g.w as isize;
                                    if inside {
                                        let xi =
                                            ((i * g.c + c) * g.h + xr as usize) * g.w + xs as usize;
                                        dx[xi] += dy[yi] * w[wi];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw]
    }

    fn rel(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let d: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt();
        let n: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
        d / n.max(1e-300)
    }

    #[test]
    fn all_three_ops_equal_the_definition_for_every_padding_size_and_thread_count() {
        // odd and even maps (partial tiles), non-square, one-tile maps, padding 0–2, batches
        // that split into groups unevenly
        for &(n, c, co, h, w, p) in &[
            (1, 2, 3, 2, 2, 0),
            (3, 3, 2, 5, 7, 1),
            (5, 2, 4, 6, 6, 1),
            (2, 4, 3, 4, 5, 2),
            (4, 3, 3, 7, 3, 0),
            (7, 2, 2, 9, 8, 2),
            (2, 17, 16, 4, 4, 1),
            (3, 5, 4, 11, 10, 1),
            (2, 3, 2, 13, 8, 0),
            // more tiles than WIDE_TILES: the forward per group of samples (the rest run the
            // whole batch at once)
            (4, 2, 3, 50, 48, 1),
            // output channels in blocks of the weight transform plus a partial block
            (2, 3, 37, 5, 4, 1),
        ] {
            let g = Geom {
                n,
                c,
                h,
                w,
                co,
                k: 3,
                s: 1,
                p,
            };
            let x = vals(n * c * h * w, 1);
            let wt = vals(co * c * 9, 2);
            let dy = vals(n * co * g.oh() * g.ow(), 3);
            let bias = vals(co, 4);
            let [y, dx, dw] = brute(&x, &wt, &dy, &g);
            for (tile, threads) in [Tile::F2, Tile::F4]
                .into_iter()
                .flat_map(|t| [(t, 1), (t, 2), (t, 3)])
            {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                // F(4×4, 3×3)'s ⅙ and 1/24 are not exact in binary: a few roundings more
                let tol = if tile == Tile::F2 { 1e-14 } else { 1e-13 };
                pool.install(|| {
                    let what =
                        format!("{tile:?}, n{n} c{c} co{co} {h}×{w} p{p}, {threads} threads");
                    let none = Epilogue {
                        bias: None,
                        relu: false,
                    };
                    let yw = fwd(&x, &wt, &g, none, tile).unwrap();
                    assert!(rel(&yw, &y) < tol, "forward, {what}: {:e}", rel(&yw, &y));
                    let dxw = bwd_data(&dy, &wt, &g, tile).unwrap();
                    assert!(
                        rel(&dxw, &dx) < tol,
                        "input gradient, {what}: {:e}",
                        rel(&dxw, &dx)
                    );
                    let dww = bwd_filter(&x, &dy, &g, tile).unwrap();
                    assert!(
                        rel(&dww, &dw) < tol,
                        "weight gradient, {what}: {:e}",
                        rel(&dww, &dw)
                    );
                    // bias and ReLU epilogue
                    let l = g.oh() * g.ow();
                    let yb = fwd(
                        &x,
                        &wt,
                        &g,
                        Epilogue {
                            bias: Some(&bias),
                            relu: true,
                        },
                        tile,
                    )
                    .unwrap();
                    let want: Vec<f64> = y
                        .iter()
                        .enumerate()
                        .map(|(k, v)| (v + bias[(k / l) % co]).max(0.0))
                        .collect();
                    assert!(rel(&yb, &want) < tol, "bias + ReLU, {what}");
                });
            }
        }
    }

    /// f32 rounding against the f64 definition on a deep channel sum (256 input channels, the
    /// widest of ResNet18's Winograd layers), next to the same sums accumulated one product at
    /// a time in f32: F(2×2, 3×3) is below them, F(4×4, 3×3) within 3× (and 1e-5 relative).
    #[test]
    fn f32_rounding_stays_near_the_direct_sum() {
        let g = Geom {
            n: 2,
            c: 256,
            h: 8,
            w: 8,
            co: 8,
            k: 3,
            s: 1,
            p: 1,
        };
        let x = vals(g.n * g.c * g.h * g.w, 5);
        let wt = vals(g.co * g.c * 9, 6);
        let dy = vals(g.n * g.co * g.l(), 7);
        let want = brute(&x, &wt, &dy, &g);
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (x32, w32, dy32) = (f(&x), f(&wt), f(&dy));
        let back = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
        // the direct sum in f32: the definition's loops, accumulated in f32
        let mut direct = vec![0f32; g.n * g.co * g.l()];
        for i in 0..g.n {
            for o in 0..g.co {
                for r in 0..8isize {
                    for s in 0..8isize {
                        let mut acc = 0f32;
                        for c in 0..g.c {
                            for a in 0..3isize {
                                for b in 0..3isize {
                                    let (xr, xs) = (r + a - 1, s + b - 1);
                                    if (0..8).contains(&xr) && (0..8).contains(&xs) {
                                        let xi = ((i * g.c + c) * 64) as isize + xr * 8 + xs;
                                        let wi = (o * g.c + c) * 9 + (a * 3 + b) as usize;
                                        acc += x32[xi as usize] * w32[wi];
                                    }
                                }
                            }
                        }
                        direct[((i * g.co + o) * 8 + r as usize) * 8 + s as usize] = acc;
                    }
                }
            }
        }
        let base = rel(&back(direct), &want[0]);
        let none = Epilogue {
            bias: None,
            relu: false,
        };
        for (tile, factor) in [(Tile::F2, 1.0), (Tile::F4, 3.0)] {
            let errs = [
                rel(&back(fwd(&x32, &w32, &g, none, tile).unwrap()), &want[0]),
                rel(&back(bwd_data(&dy32, &w32, &g, tile).unwrap()), &want[1]),
                rel(&back(bwd_filter(&x32, &dy32, &g, tile).unwrap()), &want[2]),
            ];
            eprintln!(
                "{tile:?}: forward, input, weight gradient {:.2e} {:.2e} {:.2e} (direct {base:.2e})",
                errs[0], errs[1], errs[2]
            );
            for e in errs {
                assert!(
                    e < factor * base && e < 1e-5,
                    "{tile:?}: {errs:?} vs {base:e}"
                );
            }
        }
    }
}
