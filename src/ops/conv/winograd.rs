//! Winograd F(2×2, 3×3) for 3×3 stride-1 convolutions (Lavin & Gray, *Fast Algorithms for
//! Convolutional Neural Networks*, 2016): the three members of the convolution's adjoint
//! family ([`super::Role`]) with 16 multiplications per 2×2 output tile and input channel
//! instead of im2col's 36.
//!
//! One output tile Y (2×2) of one channel pair is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A, with d the 4×4
//! input tile (zero outside the image), g the 3×3 kernel and
//!
//! ```text
//! Bᵀ = [1  0 −1  0]    G = [1    0    0 ]    Aᵀ = [1 1  1  0]
//!      [0  1  1  0]        [½    ½    ½ ]         [0 1 −1 −1]
//!      [0 −1  1  0]        [½   −½    ½ ]
//!      [0  1  0 −1]        [0    0    1 ]
//! ```
//!
//! Summed over input channels, each of the 16 tile positions ξ is a matrix product:
//! M_ξ (out × tiles) = U_ξ (out × in) · V_ξ (in × tiles) with U = G g Gᵀ, V = Bᵀ d B.
//!
//! - **Forward**: transform the weights (U) and inputs (V), 16 gemms, Aᵀ M A per tile.
//! - **Input gradient** (`Data`): for stride 1 it is the forward convolution of dy with the
//!   kernel rotated by 180° and its channel axes swapped, at padding 2 − p; so any p ≤ 2.
//! - **Weight gradient** (`Filter`): the forward is linear in U, so the exact adjoint of the
//!   tiling is dU_ξ = Σ_tiles (A dy Aᵀ)_ξ · V_ξᵀ (16 gemms) and dW = Gᵀ dU G. Output positions
//!   past the map's edge (odd sizes) are computed by the forward and dropped, so their dy is 0.
//!
//! Every identity is exact, so the three ops stay each other's adjoints up to rounding and the
//! family remains closed under differentiation. The transforms only add, subtract and halve
//! (error of the same order as the direct sum's in f32 and f64).
//!
//! Layout: the transforms run along channels, on a group of samples turned channel-last
//! (h·w × c per sample), so their vectors are as long as the channel count whatever the map
//! size (an 8 × 8 map has 4 tiles per row); V_ξ and M_ξ are tiles × channels, and the output is
//! turned back to channels-first. The weight gradient's dU (16·in·out) is split between the
//! threads by tile positions, not copied per thread.
//!
//! Cost per sample: the gemms do 16·in·out·tiles multiply-adds against im2col's 9·in·out·4·tiles
//! (2.25× fewer); besides them, two transposes, the tile transforms (V is 4× the input, M 4×
//! the output) and the weight transform (16·in·out, over threads). Used where gemm dominates:
//! both channel counts ≥ [`MIN_CHANNELS`] (ResNet18's stem with 3 input channels keeps im2col)
//! and at least [`MIN_PIXELS`] output pixels per map (its last stage's 4 × 4 maps keep it too).

use super::{gemm, per_group, row_major, transposed, Epilogue, Geom};
use candle_core::WithDType;
use rayon::prelude::*;

/// Fewer channels make the 16 gemms too thin (inner dimension = input channels) for gemm to
/// run near its peak; im2col's inner dimension is 9× larger.
const MIN_CHANNELS: usize = 16;

/// Fewer output pixels per map leave too few tiles per sample to pay for the weight transform
/// (16·in·out per call): on ResNet18's 4 × 4 maps Winograd was 5–15 % slower forward and no
/// faster in gradients, at batch 32 and 128 (AMD EPYC, 2 threads).
const MIN_PIXELS: usize = 64;

/// Whether a convolution of geometry `g` runs here. Off when the environment variable
/// `HESSIAN_LAB_WINOGRAD` is `0` (read once), which leaves every convolution on im2col + gemm,
/// for A/B measurements.
pub(super) fn applies(g: &Geom) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    g.k == 3
        && g.s == 1
        && g.p <= 2
        && g.c >= MIN_CHANNELS
        && g.co >= MIN_CHANNELS
        && g.oh() >= 2
        && g.ow() >= 2
        && g.l() >= MIN_PIXELS
        && *ON.get_or_init(|| std::env::var("HESSIAN_LAB_WINOGRAD").as_deref() != Ok("0"))
}

/// Tile rows, tile columns and tiles per sample.
fn tiles(g: &Geom) -> (usize, usize, usize) {
    let (th, tw) = (g.oh().div_ceil(2), g.ow().div_ceil(2));
    (th, tw, th * tw)
}

/// Samples per group of tiles transformed and multiplied together: ≥ 512 tile columns per
/// gemm where the batch allows, V and M of a group ≤ 2²⁰ elements, at least as many groups as
/// threads, shared evenly ([`super::balanced_group`]).
fn group_size(g: &Geom) -> usize {
    let t = tiles(g).2.max(1);
    let by_cols = 512usize.div_ceil(t);
    let by_mem = ((1usize << 20) / (16 * (g.c + g.co) * t).max(1)).max(1);
    let threads = rayon::current_num_threads().max(1);
    let cap = by_cols.min(by_mem).min((g.n / threads).max(1)).max(1);
    super::balanced_group(g.n, cap)
}

/// Output channels per task of the weight transforms.
const O_BLOCK: usize = 16;

/// U (16 × co × c): U[ξ][o][i] = (G w[o, i] Gᵀ)[ξ] for a weight `w` (co × c × 3 × 3), or, when
/// `rotated`, of the kernels w[i, o] (w: c × co × 3 × 3) rotated by 180° (the input gradient's
/// convolution, without a copy of the rotated weight); blocks of output channels over threads
/// (ResNet18's third stage: 65,536 channel pairs per call, each convolution transformed twice
/// per gradient).
fn weight_transform<T: WithDType>(w: &[T], co: usize, c: usize, rotated: bool) -> Vec<T> {
    let half = T::from_f64(0.5);
    // G·(a, b, c) for a column (or row) of three
    let gv = move |a: T, b: T, c: T| [a, (a + b + c) * half, (a - b + c) * half, c];
    let mut u = super::super::zeros(16 * co * c);
    // per block of output channels: its rows of each of the 16 planes
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
            let o0 = bi * O_BLOCK;
            for oi in 0..planes[0].len() {
                let (o, i) = (o0 + oi / c.max(1), oi % c.max(1));
                let k: [T; 9] = if rotated {
                    let src = &w[(i * co + o) * 9..][..9];
                    std::array::from_fn(|a| src[8 - a])
                } else {
                    std::array::from_fn(|a| w[(o * c + i) * 9 + a])
                };
                let cols: [[T; 4]; 3] = std::array::from_fn(|j| gv(k[j], k[3 + j], k[6 + j]));
                for r in 0..4 {
                    let row = gv(cols[0][r], cols[1][r], cols[2][r]);
                    for (j, v) in row.into_iter().enumerate() {
                        planes[r * 4 + j][oi] = v;
                    }
                }
            }
        });
    u
}

/// dW (co × c × 3 × 3) = Gᵀ dU G per channel pair, for dU laid out as U: the adjoint of
/// [`weight_transform`].
fn weight_transform_adjoint<T: WithDType>(du: &[T], co: usize, c: usize) -> Vec<T> {
    let half = T::from_f64(0.5);
    let plane = co * c;
    // Gᵀ·(a, b, c, d)
    let gt = move |a: T, b: T, c: T, d: T| [a + (b + c) * half, (b - c) * half, (b + c) * half + d];
    let mut w = super::super::zeros(9 * plane);
    w.par_chunks_mut(9 * (O_BLOCK * c).max(1))
        .enumerate()
        .for_each(|(b, wb)| {
            for (k, oi) in wb.chunks_exact_mut(9).zip(b * O_BLOCK * c..) {
                let at = |r: usize, j: usize| du[(r * 4 + j) * plane + oi];
                let cols: [[T; 3]; 4] =
                    std::array::from_fn(|j| gt(at(0, j), at(1, j), at(2, j), at(3, j)));
                for a in 0..3 {
                    let row = gt(cols[0][a], cols[1][a], cols[2][a], cols[3][a]);
                    k[a * 3..a * 3 + 3].copy_from_slice(&row);
                }
            }
        });
    w
}

/// Channels per step of the transforms: their intermediate rows stay in L1.
const CH: usize = 64;

/// dst[i] = f(a[i], b[i]) (vectorises once inlined).
#[inline(always)]
fn map2<T: Copy>(dst: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
        *d = f(a, b);
    }
}

/// dst[i] = f(a[i], b[i], c[i]).
#[inline(always)]
fn map3<T: Copy>(dst: &mut [T], a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T) {
    for (((d, &a), &b), &c) in dst.iter_mut().zip(a).zip(b).zip(c) {
        *d = f(a, b, c);
    }
}

/// `b` (cols × rows) = `a`ᵀ for a row-major `a` (rows × cols): strips of 16 rows, each output
/// run of 16 written whole (16 × 16 blocks written along a's rows, at stride `rows`, were 2×
/// slower, 13× for 1024 × 64).
fn transpose<T: Copy>(a: &[T], rows: usize, cols: usize, b: &mut [T]) {
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
fn tile_of(t: usize, g: &Geom) -> (usize, usize, usize) {
    let (_, tw, nt) = tiles(g);
    (t / nt, (t % nt) / tw, t % tw)
}

/// V (16 planes of T × c, T = m·tiles) of the group's channel-last inputs `xt`: V = Bᵀ d B for
/// every tile, the tile of output (2ti, 2tj) starting at input (2ti − p, 2tj − p), zero
/// outside the image. Only the planes of V's rows `rows` (of 4), into `v` from its start.
fn input_transform<T: WithDType>(
    xt: &[T],
    g: &Geom,
    m: usize,
    rows: std::ops::Range<usize>,
    v: &mut [T],
) {
    let (c, nt, r0) = (g.c, tiles(g).2, rows.start);
    let plane = m * nt * c;
    let zero = vec![T::zero(); c];
    // Bᵀ d of one chunk of channels: row r, column b at [4r + b]
    let mut bd = [[T::zero(); CH]; 16];
    for t in 0..m * nt {
        let (j, ti, tj) = tile_of(t, g);
        let xs = &xt[j * g.h * g.w * c..(j + 1) * g.h * g.w * c];
        let src: [&[T]; 16] = std::array::from_fn(|k| {
            let (ii, jj) = (
                (2 * ti + k / 4).checked_sub(g.p),
                (2 * tj + k % 4).checked_sub(g.p),
            );
            match (ii, jj) {
                (Some(ii), Some(jj)) if ii < g.h && jj < g.w => {
                    &xs[(ii * g.w + jj) * c..(ii * g.w + jj + 1) * c]
                }
                _ => &zero[..],
            }
        });
        for c0 in (0..c).step_by(CH) {
            let len = CH.min(c - c0);
            let d = |r: usize, b: usize| &src[4 * r + b][c0..c0 + len];
            // rows d0 − d2, d1 + d2, d2 − d1, d1 − d3
            for r in rows.clone() {
                for b in 0..4 {
                    let dst = &mut bd[4 * r + b][..len];
                    match r {
                        0 => map2(dst, d(0, b), d(2, b), |x, y| x - y),
                        1 => map2(dst, d(1, b), d(2, b), |x, y| x + y),
                        2 => map2(dst, d(2, b), d(1, b), |x, y| x - y),
                        _ => map2(dst, d(1, b), d(3, b), |x, y| x - y),
                    }
                }
            }
            // then the same on the columns of each row
            for r in rows.clone() {
                let q = |k: usize| &bd[4 * r + k][..len];
                let at = |xi: usize| (xi - 4 * r0) * plane + t * c + c0;
                map2(&mut v[at(4 * r)..][..len], q(0), q(2), |x, y| x - y);
                map2(&mut v[at(4 * r + 1)..][..len], q(1), q(2), |x, y| x + y);
                map2(&mut v[at(4 * r + 2)..][..len], q(2), q(1), |x, y| x - y);
                map2(&mut v[at(4 * r + 3)..][..len], q(1), q(3), |x, y| x - y);
            }
        }
    }
}

/// P (16 planes of T × co) = A dy Aᵀ for every 2×2 tile of the group's channel-last output
/// gradient `dyt` (m × oh·ow × co; positions past the map are 0): the adjoint of
/// [`output_transform`]'s Aᵀ M A. Only the planes of P's rows `rows`, into `p` from its start.
fn grad_transform<T: WithDType>(
    dyt: &[T],
    g: &Geom,
    m: usize,
    rows: std::ops::Range<usize>,
    p: &mut [T],
) {
    let (co, nt, (oh, ow), r0) = (g.co, tiles(g).2, (g.oh(), g.ow()), rows.start);
    let plane = m * nt * co;
    let zero = vec![T::zero(); co];
    // A dy of one chunk of channels: row r, column q at [2r + q]
    let mut ad = [[T::zero(); CH]; 8];
    for t in 0..m * nt {
        let (j, ti, tj) = tile_of(t, g);
        let ys = &dyt[j * oh * ow * co..(j + 1) * oh * ow * co];
        let src: [&[T]; 4] = std::array::from_fn(|k| {
            let (ii, jj) = (2 * ti + k / 2, 2 * tj + k % 2);
            if ii < oh && jj < ow {
                &ys[(ii * ow + jj) * co..(ii * ow + jj + 1) * co]
            } else {
                &zero[..]
            }
        });
        for c0 in (0..co).step_by(CH) {
            let len = CH.min(co - c0);
            let y = |r: usize, q: usize| &src[2 * r + q][c0..c0 + len];
            // rows y0, y0 + y1, y0 − y1, −y1
            for r in rows.clone() {
                for q in 0..2 {
                    let dst = &mut ad[2 * r + q][..len];
                    match r {
                        0 => dst.copy_from_slice(y(0, q)),
                        1 => map2(dst, y(0, q), y(1, q), |a, b| a + b),
                        2 => map2(dst, y(0, q), y(1, q), |a, b| a - b),
                        _ => map2(dst, y(0, q), y(1, q), |_, b| T::zero() - b),
                    }
                }
            }
            // columns e, e + o, e − o, −o of each row
            for r in rows.clone() {
                let (e, o) = (&ad[2 * r][..len], &ad[2 * r + 1][..len]);
                let at = |xi: usize| (xi - 4 * r0) * plane + t * co + c0;
                p[at(4 * r)..][..len].copy_from_slice(e);
                map2(&mut p[at(4 * r + 1)..][..len], e, o, |a, b| a + b);
                map2(&mut p[at(4 * r + 2)..][..len], e, o, |a, b| a - b);
                map2(&mut p[at(4 * r + 3)..][..len], e, o, |_, b| T::zero() - b);
            }
        }
    }
}

/// The group's outputs channel-last, `yt` (m × oh·ow × co) = Aᵀ M A for every tile of `mm` (16
/// planes of T × co, as the gemms leave them), cropped to oh × ow, then the epilogue (bias,
/// ReLU).
fn output_transform<T: WithDType>(mm: &[T], g: &Geom, m: usize, yt: &mut [T], ep: &Epilogue<T>) {
    let (co, nt, (oh, ow)) = (g.co, tiles(g).2, (g.oh(), g.ow()));
    let plane = m * nt * co;
    // Aᵀ M of one chunk of channels: a_c = m0c + m1c + m2c at [c], b_c = m1c − m2c − m3c at [4 + c]
    let mut am = [[T::zero(); CH]; 8];
    for t in 0..m * nt {
        let (j, ti, tj) = tile_of(t, g);
        for c0 in (0..co).step_by(CH) {
            let len = CH.min(co - c0);
            let x = |r: usize, c: usize| &mm[(4 * r + c) * plane + t * co + c0..][..len];
            for c in 0..4 {
                map3(&mut am[c][..len], x(0, c), x(1, c), x(2, c), |a, b, d| {
                    a + b + d
                });
                map3(
                    &mut am[4 + c][..len],
                    x(1, c),
                    x(2, c),
                    x(3, c),
                    |a, b, d| a - b - d,
                );
            }
            for k in 0..4 {
                let (ii, jj) = (2 * ti + k / 2, 2 * tj + k % 2);
                if ii >= oh || jj >= ow {
                    continue;
                }
                let dst = &mut yt[((j * oh + ii) * ow + jj) * co + c0..][..len];
                // row k / 2 of Aᵀ M, then column k % 2 of it times A
                let r = |c: usize| &am[4 * (k / 2) + c][..len];
                if k % 2 == 0 {
                    map3(dst, r(0), r(1), r(2), |a, b, d| a + b + d);
                } else {
                    map3(dst, r(1), r(2), r(3), |a, b, d| a - b - d);
                }
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

/// y = conv(x, w) (+ bias, ReLU): see the module docs.
pub(super) fn fwd<T: WithDType>(
    x: &[T],
    w: &[T],
    g: &Geom,
    ep: Epilogue<T>,
) -> candle_core::Result<Vec<T>> {
    fwd_u(x, &weight_transform(w, g.co, g.c, false), g, ep)
}

/// [`fwd`] with the weights already transformed.
fn fwd_u<T: WithDType>(x: &[T], u: &[T], g: &Geom, ep: Epilogue<T>) -> candle_core::Result<Vec<T>> {
    let (nt, gs, yl, xl) = (tiles(g).2, group_size(g), g.y_len(), g.x_len());
    let mut y = super::super::zeros(g.n * yl);
    // scratch: channel-last inputs, V, M, channel-last outputs
    let (vl, ml) = (16 * g.c * gs * nt, 16 * g.co * gs * nt);
    let one = |sc: &mut Vec<T>, (t, yg): (usize, &mut [T]), par: bool| {
        let m = yg.len() / yl.max(1);
        let tc = m * nt;
        let (xt, rest) = sc.split_at_mut(xl * gs);
        let (v, rest) = rest.split_at_mut(vl);
        let (mm, yt) = rest.split_at_mut(ml);
        let (v, mm) = (&mut v[..16 * g.c * tc], &mut mm[..16 * g.co * tc]);
        channel_last(x, g.c, g.h * g.w, t * gs, m, xt);
        input_transform(xt, g, m, 0..4, v);
        for xi in 0..16 {
            // M_ξ (T × co) = V_ξ (T × c) · U_ξᵀ (c × co); U_ξ read in place would be
            // slower: gemm then skips repacking it and strides over its rows
            gemm(
                tc,
                g.co,
                g.c,
                &mut mm[xi * g.co * tc..(xi + 1) * g.co * tc],
                false,
                row_major(&v[xi * g.c * tc..(xi + 1) * g.c * tc], g.c),
                transposed(&u[xi * g.co * g.c..(xi + 1) * g.co * g.c], g.c),
                par,
            )?;
        }
        output_transform(mm, g, m, yt, &ep);
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

/// dx = conv_transpose(dy, w) as the forward convolution of dy (co channels, oh × ow) with
/// w'[i, o] = w[o, i] rotated by 180°, at padding 2 − p: output oh + 2(2 − p) − 2 = h.
pub(super) fn bwd_data<T: WithDType>(dy: &[T], w: &[T], g: &Geom) -> candle_core::Result<Vec<T>> {
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
        &weight_transform(w, gt.co, gt.c, true),
        &gt,
        Epilogue {
            bias: None,
            relu: false,
        },
    )
}

/// dW = Gᵀ (Σ_tiles P_ξᵀ V_ξ) G: see the module docs. The threads split dU by rows of the
/// 4 × 4 tile positions (each walks every group of samples and transforms only its rows of V
/// and P), so there is one dU and no sum of per-thread copies (16·in·out each, 16/9 of the
/// weight). Each thread turns the group channel-last itself.
pub(super) fn bwd_filter<T: WithDType>(x: &[T], dy: &[T], g: &Geom) -> candle_core::Result<Vec<T>> {
    let (nt, gs, xl, yl) = (tiles(g).2, group_size(g), g.x_len(), g.y_len());
    let plane = g.co * g.c;
    let tasks = rayon::current_num_threads().clamp(1, 4);
    let rows_per = 4usize.div_ceil(tasks);
    let mut du = super::super::zeros(16 * plane);
    du.par_chunks_mut((4 * rows_per * plane).max(1))
        .enumerate()
        .try_for_each(|(k, dur)| {
            let r0 = k * rows_per;
            let rows = r0..(r0 + dur.len() / (4 * plane).max(1)).min(4);
            let np = 4 * rows.len();
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
                input_transform(xt, g, m, rows.clone(), v);
                grad_transform(dyt, g, m, rows.clone(), p);
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
    Ok(weight_transform_adjoint(&du, g.co, g.c))
}

#[cfg(test)]
mod tests {
    use super::{bwd_data, bwd_filter, fwd, Epilogue, Geom};

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
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let what = format!("n{n} c{c} co{co} {h}×{w} p{p}, {threads} threads");
                    let none = Epilogue {
                        bias: None,
                        relu: false,
                    };
                    let yw = fwd(&x, &wt, &g, none).unwrap();
                    assert!(rel(&yw, &y) < 1e-14, "forward, {what}: {:e}", rel(&yw, &y));
                    let dxw = bwd_data(&dy, &wt, &g).unwrap();
                    assert!(
                        rel(&dxw, &dx) < 1e-14,
                        "input gradient, {what}: {:e}",
                        rel(&dxw, &dx)
                    );
                    let dww = bwd_filter(&x, &dy, &g).unwrap();
                    assert!(
                        rel(&dww, &dw) < 1e-14,
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
                    )
                    .unwrap();
                    let want: Vec<f64> = y
                        .iter()
                        .enumerate()
                        .map(|(k, v)| (v + bias[(k / l) % co]).max(0.0))
                        .collect();
                    assert!(rel(&yb, &want) < 1e-14, "bias + ReLU, {what}");
                });
            }
        }
    }
}
