//! Device and dtype, chosen once; the double-backward switch and its probe.

use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

/// Turns on exact double backward for every thread that has not yet run a backward pass.
///
/// candle 0.11 reads `CANDLE_GRAD_DO_NOT_DETACH` once per thread, at that thread's first
/// `backward()`. Without it the gradient graph is cut and Hessian-vector products come back
/// silently wrong. Call this at the very top of `main`, of each test and of each notebook.
/// Idempotent; the first call starts the worker pools (about a millisecond), later calls
/// cost nothing.
///
/// On glibc it also raises malloc's mmap threshold to 1 GiB and turns off heap trimming (skip with
/// `HESSIAN_LAB_MALLOC_TUNING=0`): activations of CIFAR models at batch 128 are 16–34 MB,
/// above glibc's 32 MB cap on its adaptive threshold, so every one was a fresh `mmap`, page
/// faults and `munmap`. Measured on C2 (2 threads): gradient 1.21 → 0.88 s, system time per
/// run 48 → 11 s; freed memory is kept for reuse rather than returned to the OS. All threads
/// share one malloc arena (`M_ARENA_MAX` = 1), so memory freed by the backward workers is
/// reused by the calling thread and vice versa (see [`backward_detached`]).
///
/// It also tells candle's own CPU thread pool to park instead of spinning between ops
/// (`CANDLE_BARRIER_POOL_SPIN_LIMIT=0` unless set): M1 forward on 2 cores 5.9 → 5.2 ms, user
/// time −10 %.
///
/// The first call also starts two rayon pools as large as rayon's global one (so set
/// `RAYON_NUM_THREADS` before it): the detached workers ([`backward_detached`],
/// [`on_detached`]) and the graph-keeping workers ([`on_graph_keeping`]). To do so it switches
/// `CANDLE_GRAD_DO_NOT_DETACH` off for a moment, so call it before other threads run backward
/// passes.
pub fn init() {
    // Allocator first: threads started before M_ARENA_MAX would keep arenas of their own.
    tune_malloc();
    // candle 0.11's CPU thread pool (elementwise ops) spins 25,000 rounds after each op
    // before parking; next to our rayon kernels that steals a core (10 % of an M1 forward's
    // samples on 2 cores). Park at once unless the user chose otherwise.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
    static WORKERS: std::sync::Once = std::sync::Once::new();
    WORKERS.call_once(workers::start);
    if std::env::var("CANDLE_GRAD_DO_NOT_DETACH").map(|v| v == "1") != Ok(true) {
        // Edition 2021: set_var is safe. We set it before any backward pass runs in this thread.
        std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1");
    }
}

/// A backward pass whose gradients will not be differentiated again: `t.backward()` run on a
/// thread where candle detaches (see [`init`]).
///
/// With `CANDLE_GRAD_DO_NOT_DETACH=1` every gradient candle computes is itself a graph node that
/// keeps its inputs alive, so the whole backward pass stays in memory until its last gradient
/// is dropped. That is needed for the *first* backward of a Hessian-vector product and for
/// nothing else: the second backward, plain gradients (training, attacks) and Jacobian rows
/// run here instead, freeing each intermediate gradient as soon as it is used. Measured
/// (BENCHMARKS.md, with the vendored candle-core, which also detaches pending gradients):
/// C2 HVP memory above baseline 1.6 → 0.64 GB, PyTorch's level.
///
/// Values are identical either way (detaching changes which graph is *recorded*, not what is
/// computed). Runs inline — same values, more memory — when [`init`] has not started the
/// detached workers and for non-CPU tensors. Safe from any thread, rayon's pools included.
/// Cost: one backward pass plus a thread hand-off (microseconds; none on a worker).
pub fn backward_detached(t: &Tensor) -> Result<GradStore> {
    // a panic inside comes back to the caller, as from an inline call
    Ok(on_detached(t.device(), || t.backward())?)
}

/// Whether [`backward_detached`] runs on detached worker threads in this process (off with
/// `HESSIAN_LAB_DETACHED_WORKERS=0`, for comparisons).
pub fn detached_workers_active() -> bool {
    workers::DETACHED.active()
}

/// Runs `f` on the detached backward workers ([`backward_detached`]) when `device` is the
/// CPU: every backward pass inside records no graph, and the rayon-parallel kernels `f` calls
/// run on the workers' own pool, so that a one-thread run hands no kernel between threads (M1
/// gradient, one thread, in-process: −2.4 %). Runs inline for other devices, when [`init`] has
/// not started the workers, or when called on one already. Cost: one hand-off to a worker
/// and back (microseconds).
pub fn on_detached<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    workers::DETACHED.install(device, f)
}

/// Runs `f` on the graph-keeping workers when `device` is the CPU: a rayon pool whose threads
/// run exact double backward (as the thread that called [`init`] does), for the first backward
/// of a Hessian-vector product; its kernels run on that pool as in [`on_detached`]. Runs inline
/// otherwise (as there). Cost: one hand-off.
pub fn on_graph_keeping<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    workers::KEEPING.install(device, f)
}

/// Runs `f` where its rayon-parallel kernels need no hand-off: inline on a thread of any rayon
/// pool, otherwise (CPU only) on the detached workers. For work that runs no backward pass,
/// such as a forward pass. Cost: at most one hand-off.
pub fn on_workers<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        workers::DETACHED.install(device, f)
    }
}

mod workers {
    //! Two rayon thread pools as large as rayon's global pool (`RAYON_NUM_THREADS`, else one
    //! thread per core): on [`DETACHED`] every thread ran its first backward pass while
    //! `CANDLE_GRAD_DO_NOT_DETACH` was off, so candle's thread-local switch is off there for
    //! good; on [`KEEPING`] while it was on. Each thread proves its mode with the probe before
    //! the pool is used; a pool that cannot be built or proven is absent, and work meant for
    //! it runs inline on the calling thread.
    use super::*;
    use std::sync::OnceLock;

    pub(super) struct Workers {
        pool: OnceLock<Option<rayon::ThreadPool>>,
        keeps_graph: bool,
    }

    pub(super) static DETACHED: Workers = Workers {
        pool: OnceLock::new(),
        keeps_graph: false,
    };
    pub(super) static KEEPING: Workers = Workers {
        pool: OnceLock::new(),
        keeps_graph: true,
    };

    const VAR: &str = "CANDLE_GRAD_DO_NOT_DETACH";

    /// rayon's own rule for its global pool's size, read without starting that pool.
    fn threads() -> usize {
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

    /// Starts both pools (`HESSIAN_LAB_DETACHED_WORKERS=0`: neither), with the variable set
    /// for each while its threads run the probe, and restores the variable afterwards.
    pub(super) fn start() {
        let off = std::env::var("HESSIAN_LAB_DETACHED_WORKERS").as_deref() == Ok("0");
        let before = std::env::var_os(VAR);
        for w in [&DETACHED, &KEEPING] {
            let pool = if off { None } else { w.build() };
            let _ = w.pool.set(pool);
        }
        match before {
            Some(v) => std::env::set_var(VAR, v),
            None => std::env::remove_var(VAR),
        }
    }

    impl Workers {
        fn build(&self) -> Option<rayon::ThreadPool> {
            std::env::set_var(VAR, if self.keeps_graph { "1" } else { "0" });
            let kind = if self.keeps_graph {
                "graph"
            } else {
                "backward"
            };
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads())
                .thread_name(move |i| format!("hessian-lab-{kind}-{i}"))
                .build()
                .ok()?;
            // broadcast: once on every thread, before any other job reaches it
            let proven = pool
                .broadcast(|_| {
                    let exact =
                        matches!(probe_second_derivative(), Ok(d) if (d - 12.0).abs() < 1e-9);
                    exact == self.keeps_graph
                })
                .into_iter()
                .all(|ok| ok);
            proven.then_some(pool)
        }

        pub(super) fn active(&self) -> bool {
            matches!(self.pool.get(), Some(Some(_)))
        }

        pub(super) fn install<R: Send>(&self, device: &Device, f: impl FnOnce() -> R + Send) -> R {
            match self.pool.get() {
                // From any other thread (rayon's global pool included) this waits for a
                // worker; on a worker of this pool it runs at once.
                Some(Some(p)) if device.is_cpu() => p.install(f),
                _ => f(),
            }
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
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
            // One arena for all threads: the detached backward workers free what the calling
            // thread allocated and vice versa; with per-thread arenas neither reuses the
            // other's memory (C2 HVP above baseline 848 → 656 MB, gradient 779 → 622 ms).
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    });
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

/// The probe: d²/dx² (x²)² at x = 1, by double backward. Exact double backward gives 12;
/// candle's detached mode gives 4 (upstream) or 0 (the vendored candle-core, which also
/// detaches stored gradients). Cost: two tiny backward passes on a scalar (microseconds).
pub fn probe_second_derivative() -> Result<f64> {
    let x = Var::from_tensor(&Tensor::new(1.0f64, &Device::Cpu)?)?;
    let y = x.as_tensor().sqr()?.sqr()?;
    let g = y.backward()?;
    let dy = g
        .get(x.as_tensor())
        .ok_or_else(|| Error::Unsupported("probe: no gradient for x".into()))?
        .clone();
    let g2 = dy.backward()?;
    let d2 = match g2.get(x.as_tensor()) {
        Some(t) => t.to_scalar::<f64>()?,
        None => 0.0,
    };
    Ok(d2)
}

thread_local! {
    static PROBE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether exact double backward works in the *current thread* (cached per thread; the answer
/// cannot change once the thread has run a backward pass).
pub fn double_backward_enabled() -> Result<bool> {
    if let Some(v) = PROBE.with(|p| p.get()) {
        return Ok(v);
    }
    let d2 = probe_second_derivative()?;
    let ok = (d2 - 12.0).abs() < 1e-9;
    PROBE.with(|p| p.set(Some(ok)));
    Ok(ok)
}

/// Returns [`Error::DoubleBackwardOff`] (with the fix in its message) unless double backward
/// works in this thread. Every curvature entry point calls this first.
pub fn ensure_double_backward() -> Result<()> {
    if double_backward_enabled()? {
        Ok(())
    } else {
        Err(Error::DoubleBackwardOff {
            measured: probe_second_derivative()?,
        })
    }
}

/// Where tensors live and which float type they use; chosen once and passed around.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub device: Device,
    pub dtype: DType,
}

impl Runtime {
    /// CPU, f32 (the default for training and attacks).
    pub fn cpu_f32() -> Self {
        Runtime {
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }

    /// CPU, f64 (exact checks).
    pub fn cpu_f64() -> Self {
        Runtime {
            device: Device::Cpu,
            dtype: DType::F64,
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
        if cfg!(feature = "cuda") && device.is_cpu() {
            eprintln!(
                "hessian-lab: built with `cuda` but no GPU is usable (driver, libraries or \
                 device missing); running on CPU"
            );
        }
        Runtime { device, dtype }
    }

    /// Parses "f32"/"f64".
    pub fn parse_dtype(s: &str) -> Result<DType> {
        match s {
            "f32" => Ok(DType::F32),
            "f64" => Ok(DType::F64),
            _ => Err(Error::invalid(
                "dtype",
                format!("`{s}` (expected f32 or f64)"),
            )),
        }
    }
}
