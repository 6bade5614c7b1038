//! Device, dtype and CPU kernels, chosen once and passed around; optional process tuning.

use candle_core::{DType, Device};

/// Optional process tuning for speed; nothing in the crate needs it for correct results.
///
/// - glibc's malloc keeps freed memory for reuse (mmap threshold 1 GiB, no trimming) and uses
///   one arena for all threads: CIFAR activations at batch 128 are 16–34 MB, above glibc's
///   adaptive mmap cap, and would otherwise be a fresh `mmap` and page faults each time. Skip
///   with `HESSIAN_LAB_MALLOC_TUNING=0`. (Also applied when the compute pool starts.)
/// - candle's CPU thread pool parks at once between ops instead of spinning
///   (`CANDLE_BARRIER_POOL_SPIN_LIMIT=0` unless set): its spinning steals a core from the
///   rayon kernels on a 2-core machine. This sets an environment variable, so call it at the
///   top of `main`, before other threads start; the CLI does.
///
/// Measured effects are in BENCHMARKS.md. Idempotent.
pub fn init() {
    tune_malloc();
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Edition 2021: set_var is safe; documented above as a call for the top of `main`.
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
}

/// rayon's own rule for its global pool's size, read without starting that pool.
pub(crate) fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn tune_malloc() {
    static DONE: std::sync::Once = std::sync::Once::new();
    if std::env::var("HESSIAN_LAB_MALLOC_TUNING").as_deref() == Ok("0") {
        return;
    }
    DONE.call_once(|| {
        // SAFETY: mallopt only changes allocator parameters; it is thread-safe in glibc.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            // never give the heap top back
            libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
            // One arena for all threads: the compute pool frees what the calling thread
            // allocated and vice versa; with per-thread arenas neither reuses the other's
            // memory (BENCHMARKS.md has the measurement).
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    });
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn tune_malloc() {}

/// Which kernels [`Kernels::conv2d`], [`Kernels::linear`], [`Kernels::relu`],
/// [`Kernels::max_pool2d`] and eval-mode [`Kernels::batch_norm`] run on the CPU (both exact to
/// any order), as methods: `Kernels::Fused.conv2d(x, w, b, stride, pad)`. A model takes its
/// choice from its [`Runtime`].
///
/// The fused kernels are the faster and leaner ones (BENCHMARKS.md); `Candle` is there for
/// cross-checks, and is what runs on other devices either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// Our custom ops (the default): convolution as im2col + gemm per group of samples (3×3
    /// stride-1 ones with ≥ 16 channels each way and maps of ≥ 16 pixels by Winograd's
    /// F(4×4, 3×3), or F(2×2, 3×3) on maps smaller than 8 × 8) with the bias inside and a
    /// backward built from its own adjoint ops, never
    /// `conv_transpose2d` (see `crate::ops`); ReLU with a one-pass backward. On other devices:
    /// candle's ops.
    Fused,
    /// candle's `conv2d` (its CPU backward uses the naive `conv_transpose2d`) and `relu`.
    Candle,
}

impl Default for Kernels {
    fn default() -> Self {
        Kernels::Fused
    }
}

/// Where tensors live, which float type they use and which CPU kernels run them; chosen once
/// and passed around (a model keeps the one it was built with).
#[derive(Clone, Debug)]
pub struct Runtime {
    pub device: Device,
    pub dtype: DType,
    /// CPU kernels for convolution, linear, ReLU, max pool and eval-mode BatchNorm.
    pub kernels: Kernels,
}

impl Runtime {
    /// CPU, f32 (the default for training and attacks).
    pub fn cpu_f32() -> Self {
        Runtime {
            device: Device::Cpu,
            dtype: DType::F32,
            kernels: Kernels::Fused,
        }
    }

    /// CPU, f64 (exact checks).
    pub fn cpu_f64() -> Self {
        Runtime {
            device: Device::Cpu,
            dtype: DType::F64,
            kernels: Kernels::Fused,
        }
    }

    /// The first CUDA device when built with the `cuda` feature and one is usable; CPU otherwise.
    /// Prints why it fell back to the CPU on stderr.
    pub fn best_available(dtype: DType) -> Self {
        let device = match Device::cuda_if_available(0) {
            Ok(d) => d,
            Err(e) => {
                // First line only: candle appends a backtrace when RUST_BACKTRACE is set.
                let e = e.to_string();
                let first = e.lines().next().unwrap_or("unknown error");
                eprintln!("hessian-lab: no usable CUDA device ({first}); running on CPU");
                Device::Cpu
            }
        };
        if !cfg!(feature = "cuda") {
            eprintln!(
                "hessian-lab: this build has no CUDA support (rebuild with `--features cuda`, \
                 see scripts/build-cuda.sh); running on CPU"
            );
        } else if device.is_cpu() {
            eprintln!(
                "hessian-lab: built with `cuda` but no GPU is usable (driver, libraries or \
                 device missing); running on CPU"
            );
        }
        Runtime {
            device,
            dtype,
            kernels: Kernels::Fused,
        }
    }

    /// The same runtime with other CPU kernels (cross-checks and benchmarks).
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }
}
