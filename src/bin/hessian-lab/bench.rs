//! `bench`: forward, gradient, HVP and power-iteration timings and memory.

use crate::common::{emit, runtime, Common};
use anyhow::Result;
use clap::Args;
use hessian_lab::curvature::{
    self, eigen, CurvatureOperator, DataSource, HessianOperator, ParamSelection, ParamVec,
    PowerOpts,
};
use hessian_lab::data::{DatasetKind, SplitKind};
use hessian_lab::models::{Model, ModelConfig, Network};
use serde_json::json;
use std::time::Instant;

crate::common::cli_enum!(
    /// CPU kernels.
    KernelsArg { Fused = "fused", Candle = "candle" }
);

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum, default_value_t = hessian_lab::models::ModelKind::M1)]
    pub model: hessian_lab::models::ModelKind,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// CPU threads (sets RAYON_NUM_THREADS before any work; default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed repetitions per measurement (median reported)
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// Trained weights (optional; the eigen comparison is more meaningful on a trained model)
    #[arg(long)]
    pub weights: Option<std::path::PathBuf>,
    /// CPU kernels for convolution and ReLU: fused (our custom ops, the default) or candle
    /// (candle's own ops, for comparison)
    #[arg(long, alias = "conv", value_enum, default_value_t = KernelsArg::Fused)]
    pub kernels: KernelsArg,
    /// Also count the HVPs power iteration and Lanczos need to reach λ₁ to 1e-3
    #[arg(long)]
    pub eig_compare: bool,
    #[arg(long)]
    pub json: bool,
}

/// Untimed calls before each measurement: at least [`WARMUP`] calls and at least
/// [`WARMUP_S`] seconds of them, as criterion warms up (`benches/pytorch_reference.py` uses the
/// same rule). Fast calls take a while to reach their steady state (heap growth, idle pool
/// threads): M1's forward at 2 threads read 7–10 ms after one warm-up call, 5.2–7.5 ms after
/// three, 5.1–5.2 ms after 30.
const WARMUP: usize = 3;
const WARMUP_S: f64 = 1.0;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median of `repeats` timed calls after the warm-up ([`WARMUP`], [`WARMUP_S`]).
fn time_ms(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    let mut calls = 0;
    while calls < WARMUP || start.elapsed().as_secs_f64() < WARMUP_S {
        f()?;
        calls += 1;
    }
    let mut t = vec![];
    for _ in 0..repeats {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(t))
}

/// A memory field of /proc/self/status (VmHWM = peak, VmRSS = current) in MiB (Linux only).
fn status_mb(field: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
fn peak_rss_mb() -> Option<f64> {
    status_mb("VmHWM:")
}
fn rss_mb() -> Option<f64> {
    status_mb("VmRSS:")
}
/// Resets the peak (VmHWM) so the next reading covers what follows only.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if a.repeats == 0 || a.batch_size == 0 || a.threads == Some(0) {
        anyhow::bail!("--repeats, --batch-size and --threads must be ≥ 1");
    }
    let rt = runtime(&a.common)?.with_kernels(match a.kernels {
        KernelsArg::Fused => hessian_lab::models::layers::Kernels::Fused,
        KernelsArg::Candle => hessian_lab::models::layers::Kernels::Candle,
    });
    let kind = a.model;
    let ds = kind.default_dataset();
    let model = match &a.weights {
        Some(p) => Model::load(kind, p, &rt)?,
        None => Model::from_config(ModelConfig::for_dataset(kind, ds), &rt, 0)?,
    };
    // Real MNIST for m1; for CIFAR models the shipped sample (or random data of that shape).
    let split = match ds {
        DatasetKind::Mnist => hessian_lab::data::load(ds, SplitKind::Test, &a.common.data_dir).ok(),
        DatasetKind::Cifar10 => hessian_lab::data::load(
            DatasetKind::Cifar10Sample,
            SplitKind::Train,
            &a.common.data_dir,
        )
        .ok(),
        _ => None,
    };
    let batch = match split.filter(|s| s.len() >= a.batch_size) {
        Some(s) => s.first(a.batch_size)?.to_batch(&rt)?,
        None => {
            let [c, h, w] = model.config.input_shape;
            let x = candle_core::Tensor::rand(0f32, 1f32, (a.batch_size, c, h, w), &rt.device)?
                .to_dtype(rt.dtype)?;
            let y = candle_core::Tensor::zeros(a.batch_size, candle_core::DType::U32, &rt.device)?;
            hessian_lab::data::Batch::new(x, y)?
        }
    };
    let sel = ParamSelection::all(&model);
    let v = ParamVec::randn_like(&sel.tensors(&model), 1)?;
    let base_rss = rss_mb();
    let r = a.repeats.max(1);
    let forward_ms = time_ms(r, || {
        model.forward(&batch.x)?;
        Ok(())
    })?;
    let grad_ms = time_ms(r, || {
        curvature::gradient(&model, &batch, &sel)?;
        Ok(())
    })?;
    reset_peak();
    let before_hvp = rss_mb();
    let hvp_ms = time_ms(r, || {
        curvature::hvp(&model, &batch, &v)?;
        Ok(())
    })?;
    let hvp_peak = peak_rss_mb();
    let op = HessianOperator::new(&model, DataSource::Batch(batch.clone()))?;
    op.apply(&v)?;
    let hvp_reuse_ms = time_ms(r, || {
        op.apply(&v)?;
        Ok(())
    })?;
    // fresh: 1 forward + 3 backward passes for each v, as pytorch_reference.py's `ggn`
    let ggn_ms = time_ms(r, || {
        curvature::ggn_vector_product(&model, &batch, &v)?;
        Ok(())
    })?;
    let ggn = curvature::GgnOperator::new(&model, DataSource::Batch(batch.clone()))?;
    ggn.apply(&v)?;
    let ggn_reuse_ms = time_ms(r, || {
        ggn.apply(&v)?;
        Ok(())
    })?;
    drop(ggn);
    let t = Instant::now();
    let op2 = HessianOperator::new(&model, DataSource::Batch(batch.clone()))?;
    curvature::top_eigen(
        &op2,
        1,
        &PowerOpts {
            max_iter: 20,
            tol: 1e-300,
            seed: 0,
            ..Default::default()
        },
    )?;
    let power20_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut out = json!({
        "model": kind.name(),
        "batch_size": a.batch_size,
        "dtype": format!("{:?}", rt.dtype).to_lowercase(),
        "device": format!("{:?}", rt.device),
        "threads": a.threads.unwrap_or_else(candle_core::utils::get_num_threads),
        "parameters": model.num_params(),
        "kernels": a.kernels,
        "repeats": r,
        "forward_ms": forward_ms,
        "grad_ms": grad_ms,
        "hvp_ms": hvp_ms,
        "hvp_reuse_graph_ms": hvp_reuse_ms,
        "hvp_grad_ratio": hvp_ms / grad_ms,
        "hvp_reuse_grad_ratio": hvp_reuse_ms / grad_ms,
        "ggn_ms": ggn_ms,
        "ggn_grad_ratio": ggn_ms / grad_ms,
        "ggn_reuse_graph_ms": ggn_reuse_ms,
        "ggn_reuse_grad_ratio": ggn_reuse_ms / grad_ms,
        "cpu": cpu_model(),
        "simd": simd_level(),
        // gemm's AVX-512 microkernels compiled in (the `avx512` feature); they run only where
        // `simd` says the CPU has AVX-512
        "gemm_avx512": cfg!(feature = "avx512"),
        "power20_ms": power20_ms,
        "power20_hvps": op2.matvecs(),
        // one HVP of the power iteration (its first backward, vector work included) in gradients
        "power20_hvp_grad_ratio": power20_ms / op2.matvecs().max(1) as f64 / grad_ms,
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": base_rss,
        "hvp_peak_rss_above_baseline_mb": match (hvp_peak, before_hvp) { (Some(p), Some(b)) => Some(p - b), _ => None },
        // the two readings behind it: RSS right before the HVPs (after the forward and
        // gradient timings) and the peak over the HVPs alone
        "hvp_baseline_rss_mb": before_hvp,
        "hvp_peak_rss_mb": hvp_peak,
    });
    if a.eig_compare {
        let opc = HessianOperator::new(&model, DataSource::Batch(batch.clone()))?;
        let reference = curvature::lanczos(
            &opc,
            1,
            &curvature::LanczosOpts {
                max_iter: 150,
                tol: 1e-9,
                seed: 7,
            },
        )?;
        let l1 = reference.eigenvalues[0];
        let close = |x: f64| (x - l1).abs() <= 1e-3 * l1.abs();
        // Power iteration (PyHessian's update), λ after each HVP.
        let mut vv = ParamVec::randn_like(opc.like(), 0)?.normalized()?.0;
        let mut power_hvps = None;
        for i in 1..=1000 {
            let hv = opc.apply(&vv)?;
            if close(vv.dot(&hv)?) {
                power_hvps = Some(i);
                break;
            }
            vv = hv.normalized()?.0;
        }
        let mut lanczos_hvps = None;
        let v0 = ParamVec::randn_like(opc.like(), 0)?;
        eigen::lanczos_run(&opc, &v0, 300, |al, be, _| {
            let (vals, _) = eigen::tridiag_eigen(al, be);
            let top = *vals.last().unwrap_or(&f64::NAN);
            if close(top) {
                lanczos_hvps = Some(al.len());
                true
            } else {
                false
            }
        })?;
        out["lambda1_reference"] = json!(l1);
        out["power_hvps_to_1e-3"] = json!(power_hvps);
        out["lanczos_hvps_to_1e-3"] = json!(lanczos_hvps);
    }
    emit(a.json, &out, || {
        serde_json::to_string_pretty(&out).unwrap_or_default()
    })
}

/// The CPU's model name (`/proc/cpuinfo`), for tables per CPU kind.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The widest SIMD level the CPU offers (runtime detection): what gemm's kernels can use.
fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2";
        }
        if std::arch::is_x86_feature_detected!("sse4.2") {
            return "sse4.2";
        }
        "sse2"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}
