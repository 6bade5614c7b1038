//! CPU kernels: convolution, linear, ReLU, max pool and per-channel (BatchNorm) ops as candle
//! custom ops whose backward passes are built from ops of the same families, so derivatives of
//! any order are exact. Crate-private: [`crate::models::layers`] is their only public face,
//! and chooses between them and candle's own ops by [`crate::models::layers::Kernels`].
//!
//! Layering: `ops` depends on candle and gemm only; `models::layers` depends on `ops`.

pub(crate) mod conv;
pub(crate) mod fused;

use std::sync::atomic::{AtomicU64, Ordering};

static CALLS: AtomicU64 = AtomicU64::new(0);

fn count_call() {
    CALLS.fetch_add(1, Ordering::Relaxed);
}

/// How many times a kernel of this module has run on the CPU in this process (forward and
/// backward ops alike). It lets a test prove which kernels a whole model ran: the count moves
/// under [`crate::models::layers::Kernels::Fused`] and stands still under `Candle`.
pub fn kernel_calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}
