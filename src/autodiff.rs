//! The one place that runs candle's backward pass.
//!
//! Whether a backward pass records the graph of the gradients it computes — needed for the
//! first backward of a Hessian-vector product, wasted everywhere else — is an argument of each
//! call here ([`Graph`]), as `create_graph` is in PyTorch. It is not a property of the thread:
//! the vendored candle-core's `Tensor::backward_with_graph` (vendor/candle-core/PATCH.md)
//! takes it per call, so any thread — a notebook cell's, a test's, rayon's — gets exact second
//! derivatives with no setup, and nothing else in the crate calls `.backward()`.
//!
//! Cost model: a backward pass costs about two forward passes; with [`Graph::Keep`] every
//! intermediate gradient stays alive (and keeps its inputs alive) until the returned gradients
//! are dropped, so it costs the memory of a second forward graph. [`Graph::Drop`] frees each
//! intermediate gradient as soon as it is used.
//!
//! ```
//! use hessian_lab::autodiff::{grads, Graph};
//! use hessian_lab::candle_core::{Tensor, Var, Device};
//! // d²/dx² (x²)² = 12 x² = 12 at x = 1, on this thread, with no setup
//! let x = Var::new(1.0f64, &Device::Cpu)?;
//! let y = x.as_tensor().sqr()?.sqr()?;
//! let dy = grads(&y, &[x.as_tensor()], Graph::Keep)?.remove(0);
//! let d2 = grads(&dy, &[x.as_tensor()], Graph::Drop)?.remove(0);
//! assert_eq!(d2.to_scalar::<f64>()?, 12.0);
//! # Ok::<(), hessian_lab::Error>(())
//! ```

use crate::Result;
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use std::borrow::Borrow;

/// Whether the gradients a backward pass returns can be differentiated again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Graph {
    /// Record the gradients' own graph (PyTorch's `create_graph=True`): for the first
    /// backward of a Hessian-vector product.
    Keep,
    /// Plain gradients, detached (training, attacks, the second backward of an HVP).
    Drop,
}

/// All gradients of the scalar `loss`, as candle's [`GradStore`].
/// Cost: one backward pass (see the module docs for memory).
pub fn backward(loss: &Tensor, graph: Graph) -> Result<GradStore> {
    Ok(loss.backward_with_graph(graph == Graph::Keep)?)
}

/// ∂loss/∂t for each of `wrt` (tensors or references to them); zeros (t's shape) for a
/// tensor the loss does not reach. With [`Graph::Drop`] the results are detached.
///
/// When every one of `wrt` is a variable, the pass is restricted to them, as PyTorch's
/// `autograd.grad(loss, wrt)` is: other variables (a model's weights, when `wrt` is its input)
/// are constants, and nodes on no path to `wrt` are not differentiated. Cost: one backward
/// pass over the part of the graph that leads to `wrt`.
pub fn grads<T: Borrow<Tensor>>(loss: &Tensor, wrt: &[T], graph: Graph) -> Result<Vec<Tensor>> {
    let ts: Vec<&Tensor> = wrt.iter().map(|t| t.borrow()).collect();
    // A non-variable target would be pruned away (only variables are leaves): full pass.
    let store = if ts.iter().all(|t| t.is_variable()) {
        loss.backward_wrt(graph == Graph::Keep, &ts)?
    } else {
        backward(loss, graph)?
    };
    grads_in(&store, wrt, graph)
}

/// The gradient of each of `wrt` stored in `store`, zeros where the loss did not reach it
/// (so callers never branch on a missing gradient); detached for [`Graph::Drop`].
pub fn grads_in<T: Borrow<Tensor>>(
    store: &GradStore,
    wrt: &[T],
    graph: Graph,
) -> Result<Vec<Tensor>> {
    wrt.iter()
        .map(|t| {
            let t = t.borrow();
            Ok(match store.get(t) {
                Some(g) if graph == Graph::Keep => g.clone(),
                Some(g) => g.detach(),
                None => t.zeros_like()?,
            })
        })
        .collect()
}

/// d²/dx² (x²)² at x = 1 by double backward through this module: 12 when second
/// derivatives are exact. A self-check of the candle build (cost: two tiny backward passes).
pub fn probe_second_derivative() -> Result<f64> {
    let x = Var::from_tensor(&Tensor::new(1.0f64, &Device::Cpu)?)?;
    let y = x.as_tensor().sqr()?.sqr()?;
    let dy = grads(&y, &[x.as_tensor()], Graph::Keep)?.remove(0);
    let d2 = grads(&dy, &[x.as_tensor()], Graph::Drop)?.remove(0);
    Ok(d2.to_scalar::<f64>()?)
}

/// The build of candle-core this crate runs on (the vendored one, which the crate cannot be
/// built without): notebooks print it, and a test checks it.
pub fn candle_build() -> &'static str {
    candle_core::HESSIAN_LAB_PATCH
}

/// Runs `f` where the crate's rayon-parallel CPU kernels need no hand-off between threads:
/// inline on a thread of any rayon pool, otherwise on the crate's compute pool (CPU only;
/// inline for other devices). This is for speed alone — results are the same on any thread —
/// and saves the hand-off of every kernel from the caller's thread to a pool thread and back
/// (BENCHMARKS.md: measurable with one thread). The pool is as large as rayon's global one
/// (`RAYON_NUM_THREADS`, else one thread per core) and starts on first use.
pub fn on_pool<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() || !device.is_cpu() {
        return f();
    }
    match pool() {
        Some(p) => p.install(f),
        None => f(),
    }
}

fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        // Allocator settings first: threads started before them would keep arenas of their own.
        crate::runtime::tune_malloc();
        rayon::ThreadPoolBuilder::new()
            .num_threads(crate::runtime::threads())
            .thread_name(|i| format!("hessian-lab-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}
