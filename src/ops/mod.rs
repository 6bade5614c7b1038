//! CPU kernels: convolution, linear, ReLU, max pool and per-channel (BatchNorm) ops as candle
//! custom ops whose backward passes are built from ops of the same families, so derivatives of
//! any order are exact. Crate-private: [`crate::models::layers`] is their only public face,
//! and chooses between them and candle's own ops by [`crate::models::layers::Kernels`].
//!
//! Layering: `ops` depends on candle and gemm only; `models::layers` depends on `ops`.

pub(crate) mod conv;
pub(crate) mod fused;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};

/// `fn name<T>(args)`: `body(args)` (a function or `Type::method` path), compiled with AVX2
/// where the CPU has it (checked at run time). The crate compiles for the x86-64 baseline
/// (SSE2); loops that vectorise (Winograd's tile transforms along channels, the max pool's
/// plane lanes) get twice the vector width. No FMA, so the arithmetic, and every result, is
/// the same (BENCHMARKS.md, sixteenth sitting).
macro_rules! with_avx2 {
    (fn $name:ident = $($body:ident)::+($($arg:ident: $ty:ty),* $(,)?)) => {
        #[allow(clippy::too_many_arguments)]
        fn $name<T: WithDType>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<T: WithDType>($($arg: $ty),*) {
                    $($body)::+($($arg),*)
                }
                // SAFETY: the CPU has AVX2 (checked above).
                return unsafe { avx2($($arg),*) };
            }
            $($body)::+($($arg),*)
        }
    };
}
pub(crate) use with_avx2;

static CALLS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static CALLS_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn count_call() {
    CALLS.fetch_add(1, Ordering::Relaxed);
    CALLS_HERE.with(|c| c.set(c.get() + 1));
}

/// How many times a kernel of this module has run on the CPU in this process (forward and
/// backward ops alike). It lets a test prove which kernels a whole model ran: the count moves
/// under [`crate::models::layers::Kernels::Fused`] and stands still under `Candle`.
/// Process-wide: other threads' work (tests running in parallel) moves it too.
pub fn kernel_calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

/// [`kernel_calls`] counted on the calling thread only: candle runs an op's CPU forward on
/// the thread that builds the graph or drives the backward pass (the kernels' own worker
/// threads are inside that call), so this counts exactly the kernels this thread's work ran,
/// whatever other threads do meanwhile.
pub fn kernel_calls_on_this_thread() -> u64 {
    CALLS_HERE.with(|c| c.get())
}

/// A zeroed output buffer of `n` elements, zeroed by all threads when it is large. The kernels
/// allocate every output on the thread that drives the graph; `vec![0; n]` zeroes it there
/// while the other threads wait (C1's first convolution output is 8 MB per forward).
pub(super) fn zeros<T: candle_core::WithDType>(n: usize) -> Vec<T> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    if n < 4 * CHUNK {
        return vec![T::zero(); n];
    }
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut().par_chunks_mut(CHUNK).for_each(|c| {
        for x in c {
            x.write(T::zero());
        }
    });
    // SAFETY: the loop above initialised all n elements of the capacity.
    unsafe { v.set_len(n) };
    v
}

/// One argument of a CPU forward: its storage and layout.
pub(super) type In<'a> = (&'a CpuStorage, &'a Layout);
/// The result of a CPU forward: storage and shape.
pub(super) type Out = candle_core::Result<(CpuStorage, Shape)>;
/// Gradients of a one-, two- or three-argument op (`None`: not needed).
pub(super) type Grad1 = candle_core::Result<Option<Tensor>>;
pub(super) type Grads2 = candle_core::Result<(Option<Tensor>, Option<Tensor>)>;
pub(super) type Grads3 = candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)>;

/// A kernel of one tensor: candle's `CustomOp1` without the boilerplate. `bwd` gets the
/// argument, the forward's result and the upstream gradient, and must build its result from
/// differentiable ops (ours or candle's), so that derivatives of any order are exact.
pub(super) trait Op1: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn fwd(&self, x: In) -> Out;
    fn bwd(&self, x: &Tensor, res: &Tensor, g: &Tensor) -> Grad1;
}
/// A kernel of two tensors (see [`Op1`]).
pub(super) trait Op2: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn fwd(&self, args: [In; 2]) -> Out;
    fn bwd(&self, args: [&Tensor; 2], res: &Tensor, g: &Tensor) -> Grads2;
}
/// A kernel of three tensors (see [`Op1`]).
pub(super) trait Op3: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn fwd(&self, args: [In; 3]) -> Out;
    fn bwd(&self, args: [&Tensor; 3], res: &Tensor, g: &Tensor) -> Grads3;
}

/// An op as candle sees it; every CPU forward is counted (see [`kernel_calls`]).
struct Counted<T>(T);

impl<T: Op1> CustomOp1 for Counted<T> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Out {
        count_call();
        self.0.fwd((s, l))
    }
    fn bwd(&self, x: &Tensor, res: &Tensor, g: &Tensor) -> Grad1 {
        self.0.bwd(x, res, g)
    }
}

impl<T: Op2> CustomOp2 for Counted<T> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Out {
        count_call();
        self.0.fwd([(s1, l1), (s2, l2)])
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, res: &Tensor, g: &Tensor) -> Grads2 {
        self.0.bwd([a, b], res, g)
    }
}

impl<T: Op3> CustomOp3 for Counted<T> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    #[rustfmt::skip]
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Out {
        count_call();
        self.0.fwd([(s1, l1), (s2, l2), (s3, l3)])
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, c: &Tensor, res: &Tensor, g: &Tensor) -> Grads3 {
        self.0.bwd([a, b, c], res, g)
    }
}

/// Runs a one-tensor kernel (on a contiguous copy of `x` if needed).
pub(super) fn op1<T: Op1>(x: &Tensor, op: T) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Counted(op))
}
/// Runs a two-tensor kernel (on contiguous arguments).
pub(super) fn op2<T: Op2>(a: &Tensor, b: &Tensor, op: T) -> candle_core::Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, Counted(op))
}
/// Runs a three-tensor kernel (on contiguous arguments).
pub(super) fn op3<T: Op3>(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    op: T,
) -> candle_core::Result<Tensor> {
    a.contiguous()?
        .apply_op3(&b.contiguous()?, &c.contiguous()?, Counted(op))
}
/// `f()` when the running backward pass needs `t`'s gradient, else `None`: `t` tracks
/// gradients and, inside a pass restricted to some variables ([`crate::autodiff::grads`]),
/// lies on a path to one of them (an input gradient skips every weight gradient).
pub(super) fn if_tracked(
    t: &Tensor,
    f: impl FnOnce() -> candle_core::Result<Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    candle_core::backprop::needs_grad(t).then(f).transpose()
}

/// One parameter's direction during a projected first backward: (the parameter's id, v, ‖v‖²).
type Direction = (candle_core::TensorId, Tensor, f64);

/// This thread's projected backward pass, if one is running: the registered directions and
/// the placeholders [`weight_grad`] has made so far.
#[derive(Default)]
struct Projecting {
    dirs: Vec<Direction>,
    made: Vec<(candle_core::TensorId, Tensor)>,
}

thread_local! {
    static PROJECTING: std::cell::RefCell<Projecting> = const {
        std::cell::RefCell::new(Projecting { dirs: Vec::new(), made: Vec::new() })
    };
}

/// The weight gradients a projected first backward replaced ([`with_directions`]): each
/// placeholder's id with s = ⟨ḡ, op(x, v)⟩, which is ⟨placeholder, v⟩ as a function.
#[derive(Default)]
pub(crate) struct Projections(Vec<(candle_core::TensorId, Tensor)>);

impl Projections {
    /// ⟨g, v⟩ as a graph node without touching a weight-sized tensor, when `g` is a
    /// placeholder as it came out of the backward pass (one use of the weight; a weight used
    /// twice gets the sum of two placeholders, a new tensor, and `None`).
    pub(crate) fn dot(&self, g: &Tensor) -> Option<&Tensor> {
        self.0.iter().find(|(id, _)| *id == g.id()).map(|(_, s)| s)
    }
    /// How many placeholders were made.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Runs `f` (the first backward pass of a Hessian-vector product) with a direction `v`
/// registered for each parameter of `dirs`, on this thread.
///
/// Why: an HVP is ∇θ⟨g, v⟩ and uses the first backward's weight gradient g_W only through
/// ⟨g_W, v_W⟩. For an op y = op(x, W) linear in W, ⟨g_W, v_W⟩ = ⟨ḡ, op(x, v_W)⟩ (ḡ the
/// gradient of y), so the kernels here return (s / ‖v_W‖²)·v_W in place of g_W, where s is a
/// node [`DirDot`] standing for ⟨ḡ, op(x, v_W)⟩: its inner product with v_W, as a function of
/// everything upstream, is the same, so ∇θ⟨g, v⟩ — the HVP — is exact. s's derivatives are
/// op(x, v_W) (for ḡ) and the adjoint of op(·, v_W) applied to ḡ (for x): the two products
/// the second backward differentiated the weight gradient into before, so per convolution
/// the fresh HVP runs one weight-gradient (Filter) op fewer.
/// Inside `f` the "gradients" are **not** the gradient (their values are not computed; only
/// their inner products with the directions, as functions, are right): nothing but the first
/// backward of a fresh HVP (or of a fresh Gauss–Newton product's Jᵀu, used only through
/// ⟨Jᵀu, v⟩ likewise) may run inside. Restored on return and on unwind; a zero or non-finite
/// direction, one whose shape or dtype differs from its parameter's, or one of a parameter
/// listed twice is not registered (that parameter gets its true gradient). Also returns the
/// placeholders made ([`Projections`]), so that ⟨g, v⟩ can use s itself rather than a
/// weight-sized product with v and its backward.
pub(crate) fn with_directions<R>(
    dirs: &[(&Tensor, &Tensor)],
    f: impl FnOnce() -> R,
) -> (R, Projections) {
    struct Restore(Projecting);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = std::mem::take(&mut self.0);
            PROJECTING.with(|p| *p.borrow_mut() = prev);
        }
    }
    let mut reg = Vec::with_capacity(dirs.len());
    for (p, v) in dirs {
        // A parameter listed twice (with two directions) gets its true gradient: the
        // placeholder would be right along one of them only.
        if dirs.iter().filter(|(q, _)| q.id() == p.id()).count() > 1 {
            continue;
        }
        let n2 = v
            .sqr()
            .and_then(|q| q.sum_all())
            .and_then(|q| q.to_dtype(candle_core::DType::F64))
            .and_then(|q| q.to_scalar::<f64>());
        if let Ok(n2) = n2 {
            if n2 > 0.0 && n2.is_finite() && p.dims() == v.dims() && p.dtype() == v.dtype() {
                reg.push((p.id(), v.detach(), n2));
            }
        }
    }
    let ours = Projecting {
        dirs: reg,
        made: vec![],
    };
    let _restore = Restore(PROJECTING.with(|p| p.replace(ours)));
    let r = f();
    let made = PROJECTING.with(|p| std::mem::take(&mut p.borrow_mut().made));
    (r, Projections(made))
}

/// An op y = op(x, W) as a linear map of its weight, for [`DirDot`].
pub(super) trait LinearIn: Send + Sync + 'static {
    /// op(x, v): y's derivative along W = v.
    fn tangent(&self, x: &Tensor, v: &Tensor) -> candle_core::Result<Tensor>;
    /// The adjoint of x ↦ op(x, v) applied to ḡ: ⟨ḡ, op(x, v)⟩ = ⟨adjoint(ḡ, v), x⟩.
    fn adjoint(&self, g: &Tensor, v: &Tensor) -> candle_core::Result<Tensor>;
}

/// s(ḡ, x) = ⟨ḡ, op(x, v)⟩ for a constant v, as a graph node whose **value is not computed**
/// (it is 0: only its derivatives are used, see [`with_directions`]). Backward:
/// ∂s/∂ḡ = op(x, v), ∂s/∂x = adjointᵥ(ḡ), each times the upstream scalar — ops of the same
/// differentiable families, so exact to any order.
struct DirDot<L> {
    op: L,
    v: Tensor,
}

impl<L: LinearIn> Op2 for DirDot<L> {
    fn name(&self) -> &'static str {
        "hessian-lab-directional-dot"
    }
    fn fwd(&self, [(s, _), _]: [In; 2]) -> Out {
        let zero = match s {
            CpuStorage::F32(_) => CpuStorage::F32(vec![0.0]),
            CpuStorage::F64(_) => CpuStorage::F64(vec![0.0]),
            _ => candle_core::bail!("directional dot: f32 or f64 only"),
        };
        Ok((zero, Shape::from(())))
    }
    fn bwd(&self, [g, x]: [&Tensor; 2], _res: &Tensor, c: &Tensor) -> Grads2 {
        Ok((
            if_tracked(g, || self.op.tangent(x, &self.v)?.broadcast_mul(c))?,
            if_tracked(x, || self.op.adjoint(g, &self.v)?.broadcast_mul(c))?,
        ))
    }
}

/// The gradient of the weight `w` of y = op(x, w) where the running backward pass needs it,
/// given ḡ = ∂/∂y: (⟨ḡ, op(x, v)⟩ / ‖v‖²)·v through [`DirDot`] when `w` has a direction v
/// (see [`with_directions`]), else `full()`.
pub(super) fn weight_grad<L: LinearIn>(
    w: &Tensor,
    g: &Tensor,
    x: &Tensor,
    op: L,
    full: impl FnOnce() -> candle_core::Result<Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    if !candle_core::backprop::needs_grad(w) {
        return Ok(None);
    }
    let dir = PROJECTING.with(|p| {
        p.borrow()
            .dirs
            .iter()
            .find(|(id, _, _)| *id == w.id())
            .map(|(_, v, n2)| (v.clone(), *n2))
    });
    let Some((v, n2)) = dir else {
        return full().map(Some);
    };
    let s = op2(g, x, DirDot { op, v: v.clone() })?;
    let placeholder = v.broadcast_mul(&(&s / n2)?)?;
    PROJECTING.with(|p| p.borrow_mut().made.push((placeholder.id(), s)));
    Ok(Some(placeholder))
}

#[cfg(test)]
mod tests {
    use super::PROJECTING;
    use candle_core::{Device, Tensor};

    fn registered() -> usize {
        PROJECTING.with(|p| p.borrow().dirs.len())
    }

    #[test]
    fn directions_register_only_usable_vectors_and_are_restored_on_unwind() {
        let p = Tensor::ones((2, 3), candle_core::DType::F64, &Device::Cpu).unwrap();
        let good = (&p * 2.0).unwrap();
        let zero = p.zeros_like().unwrap();
        let nan = (&p * f64::NAN).unwrap();
        let wrong_shape = Tensor::ones(6, candle_core::DType::F64, &Device::Cpu).unwrap();
        let wrong_dtype = p.to_dtype(candle_core::DType::F32).unwrap();
        // one parameter each (a parameter listed twice registers neither, see below)
        let ps: Vec<Tensor> = (0..5).map(|_| p.copy().unwrap()).collect();
        let q = &ps[0];
        let dirs = [
            (q, &good),
            (&ps[1], &zero),
            (&ps[2], &nan),
            (&ps[3], &wrong_shape),
            (&ps[4], &wrong_dtype),
        ];
        assert_eq!(super::with_directions(&dirs, registered).0, 1);
        // a parameter listed twice: neither direction
        let twice = [(q, &good), (q, &good)];
        assert_eq!(super::with_directions(&twice, registered).0, 0);
        assert_eq!(registered(), 0);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            super::with_directions(&dirs[..1], || {
                assert_eq!(
                    super::with_directions(&[], registered).0,
                    0,
                    "nested: replaced"
                );
                assert_eq!(registered(), 1, "nested: restored");
                panic!("inside");
            })
        }));
        assert!(caught.is_err());
        assert_eq!(registered(), 0, "restored on unwind");
    }

    #[test]
    fn zeros_has_the_length_and_only_zeros_on_both_paths() {
        for n in [0, 5, (1 << 18) - 1, (1 << 18) + 12_345] {
            let v: Vec<f32> = super::zeros(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x.to_bits() == 0), "n = {n}");
        }
    }
}
