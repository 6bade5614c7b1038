//! `spectrum` and `input-hessian`.

use crate::common::{cli_enum, emit, model_and_data, Common, ModelData};

cli_enum!(
    /// Eigen solver.
    Method { Lanczos = "lanczos", Power = "power" }
);
cli_enum!(
    /// Curvature matrix.
    Operator { Hessian = "hessian", Ggn = "ggn" }
);
cli_enum!(
    /// Trace estimator.
    TraceArg { Hutchinson = "hutchinson", HutchPlusPlus = "hutch++" | "hutchpp", Exact = "exact" }
);
use anyhow::{Context, Result};
use clap::Args;
use hessian_lab::curvature::{
    self, CurvatureOperator, DataSource, GgnOperator, HessianOperator, LanczosOpts, PowerOpts,
    SlqOpts, TraceMethod, TraceOpts, WithProgress,
};
use serde_json::json;
use std::time::Instant;

#[derive(Args)]
pub struct SpectrumArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub md: ModelData,
    /// Number of top eigenvalues
    #[arg(long, default_value_t = 1)]
    pub top_k: usize,
    #[arg(long, value_enum, default_value_t = Method::Lanczos)]
    pub method: Method,
    /// ggn: the Gauss–Newton matrix
    #[arg(long, value_enum, default_value_t = Operator::Hessian)]
    pub operator: Operator,
    /// Power: max iterations per eigenpair; Lanczos: max Krylov dimension
    #[arg(long, default_value_t = 100)]
    pub max_iter: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub tol: f64,
    /// Samples per chunk when streaming the split (bounded memory)
    #[arg(long, default_value_t = 1000)]
    pub chunk: usize,
    /// Restrict to parameters whose names start with these prefixes, e.g. fc1.,fc2.
    #[arg(long, value_delimiter = ',')]
    pub filter: Vec<String>,
    /// Also estimate the trace
    #[arg(long)]
    pub trace: bool,
    #[arg(long, value_enum, default_value_t = TraceArg::Hutchinson)]
    pub trace_method: TraceArg,
    /// Max probes (Hutchinson) or matvecs (Hutch++)
    #[arg(long, default_value_t = 100)]
    pub trace_iter: usize,
    /// Also compute the spectral density (SLQ)
    #[arg(long)]
    pub density: bool,
    #[arg(long, default_value_t = 100)]
    pub density_iter: usize,
    #[arg(long, default_value_t = 1)]
    pub density_runs: usize,
    #[arg(long, default_value_t = 1000)]
    pub density_grid: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn spectrum(a: SpectrumArgs) -> Result<()> {
    // Every option checked before the model, the data and the eigen solve.
    let trace_opts = TraceOpts {
        method: if a.trace_method == TraceArg::Hutchinson {
            TraceMethod::Hutchinson
        } else {
            TraceMethod::HutchPlusPlus
        },
        max_iter: a.trace_iter,
        seed: a.md.seed,
        ..Default::default()
    };
    let slq_opts = SlqOpts {
        iter: a.density_iter,
        runs: a.density_runs,
        grid: a.density_grid,
        seed: a.md.seed,
        ..Default::default()
    };
    if a.trace {
        trace_opts.validate().context("--trace-iter")?;
    }
    if a.density {
        slq_opts
            .validate()
            .context("--density-iter / --density-runs / --density-grid")?;
    }
    let (rt, model, split, src) = model_and_data(&a.common, &a.md)?;
    let t0 = Instant::now();
    let source = DataSource::from_split(&split, a.chunk, &rt)?;
    let prefixes: Vec<&str> = a.filter.iter().map(|s| s.as_str()).collect();
    let op: Box<dyn CurvatureOperator> = match a.operator {
        Operator::Hessian => Box::new(HessianOperator::with_filter(
            &*model,
            source.clone(),
            &prefixes,
        )?),
        Operator::Ggn => {
            if !prefixes.is_empty() {
                anyhow::bail!("--filter is supported with --operator hessian only");
            }
            Box::new(GgnOperator::new(&*model, source.clone())?)
        }
    };
    let expected = match a.method {
        Method::Power => a.top_k * a.max_iter,
        Method::Lanczos => a.max_iter,
    };
    let bars = crate::bars::Bars::default();
    let prog = WithProgress::new(op.as_ref(), Some(&bars), expected, a.method.name());
    let eig = match a.method {
        Method::Power => curvature::top_eigen(
            &prog,
            a.top_k,
            &PowerOpts {
                max_iter: a.max_iter,
                tol: a.tol,
                seed: a.md.seed,
                ..Default::default()
            },
        )?,
        Method::Lanczos => curvature::lanczos(
            &prog,
            a.top_k,
            &LanczosOpts {
                max_iter: a.max_iter,
                tol: a.tol,
                seed: a.md.seed,
            },
        )?,
    };
    drop(prog);
    let eig_seconds = t0.elapsed().as_secs_f64();
    for (i, (&c, &r)) in eig.converged.iter().zip(&eig.residuals).enumerate() {
        if !c {
            eprintln!(
                "warning: eigenpair {} did not converge: relative residual {r:.2e} > {:.0e} \
                 (raise --max-iter, or use --method lanczos)",
                i + 1,
                eig.residual_tol
            );
        }
    }
    let mut out = json!({
        "model": a.md.net.label(),
        "arch": a.md.net.arch_json()?,
        "dataset": src.name(),
        "split": src.split_name(),
        "samples": split.len(),
        "operator": a.operator,
        "method": a.method,
        "dtype": format!("{:?}", rt.dtype).to_lowercase(),
        "parameters": op.dim(),
        "eigenvalues": eig.eigenvalues,
        "residuals": eig.residuals,
        "converged": eig.converged,
        "residual_tol": eig.residual_tol,
        "rule_met": eig.rule_met,
        "iterations": eig.iterations,
        "hvps": eig.hvps,
        "eigen_seconds": eig_seconds,
    });
    if a.trace {
        let t = Instant::now();
        let tr = match a.trace_method {
            TraceArg::Exact => {
                let sel = curvature::ParamSelection::with_prefixes(&*model, &prefixes)?;
                let te = curvature::trace_exact(&*model, &source, Some(&sel))?;
                json!({"trace": te.trace, "std_error": 0.0, "method": "exact", "backward_passes": te.backward_passes,
                       "per_parameter": te.per_parameter.iter().map(|(n, v)| json!({"name": n, "trace": v})).collect::<Vec<_>>()})
            }
            TraceArg::Hutchinson | TraceArg::HutchPlusPlus => {
                let p = WithProgress::new(op.as_ref(), Some(&bars), a.trace_iter, "trace");
                let r = curvature::trace(&p, &trace_opts)?;
                drop(p);
                serde_json::to_value(&r)?
            }
        };
        out["trace"] = tr;
        out["trace"]["seconds"] = json!(t.elapsed().as_secs_f64());
    }
    if a.density {
        let t = Instant::now();
        let p = WithProgress::new(
            op.as_ref(),
            Some(&bars),
            a.density_iter * a.density_runs,
            "density",
        );
        let d = curvature::density(&p, &slq_opts)?;
        drop(p);
        out["density"] = serde_json::to_value(&d)?;
        out["density"]["seconds"] = json!(t.elapsed().as_secs_f64());
    }
    out["seconds"] = json!(t0.elapsed().as_secs_f64());
    emit(a.json, &out, || {
        let mut s = format!(
            "{} on {} {} ({} samples, {} parameters), {} {}: eigenvalues {:?} (residuals {:?}) in {} HVPs",
            a.md.net.label(), src.name(), src.split_name(), split.len(), op.dim(), a.operator, a.method,
            eig.eigenvalues, eig.residuals, eig.hvps
        );
        if let Some(t) = out.get("trace") {
            s += &format!("; trace {} ± {}", t["trace"], t["std_error"]);
        }
        s
    })
}

#[derive(Args)]
pub struct InputHessianArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub md: ModelData,
    /// Samples per chunk
    #[arg(long, default_value_t = 100)]
    pub chunk: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn input_hessian(a: InputHessianArgs) -> Result<()> {
    let (rt, model, split, src) = model_and_data(&a.common, &a.md)?;
    let t0 = Instant::now();
    if model.piecewise_linear() != Some(true) {
        return input_hessian_by_power(&a, &*model, &split, &src, &rt, t0);
    }
    let bar = indicatif::ProgressBar::new(split.len() as u64);
    let per = curvature::input_hessian_split(&*model, &split, a.chunk, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let s = curvature::InputHessianSummary::from_samples(&per);
    // The summary's keys (samples, lambda1_x_mean, lambda1_x_max, grad_norm_mean, rank_max,
    // min_eigenvalue_min) at the top level, plus the per-sample values.
    let mut out = serde_json::to_value(&s)?;
    out["model"] = json!(a.md.net.label());
    out["arch"] = a.md.net.arch_json()?;
    out["dataset"] = json!(src.name());
    out["split"] = json!(src.split_name());
    out["seconds"] = json!(t0.elapsed().as_secs_f64());
    out["per_sample"] = serde_json::to_value(&per)?;
    emit(a.json, &out, || {
        format!(
            "{} on {} {} ({} samples): λ₁^x mean {:.4e} max {:.4e}, ‖∇ₓJ‖ mean {:.4e}, rank ≤ {}, min eigenvalue {:.2e}",
            a.md.net.label(), src.name(), src.split_name(), s.samples,
            s.lambda1_x_mean, s.lambda1_x_max, s.grad_norm_mean, s.rank_max, s.min_eigenvalue_min
        )
    })
}

/// λ₁^x and ‖∇ₓJ‖ per sample for a network Theorem 1 does not cover (tanh, sigmoid, GELU, or
/// unknown): power iteration on exact input HVPs (≤ 100 iterations, relative change 1e-6), no
/// rank or PSD certificate. The JSON says so ("method": "power", "reason").
fn input_hessian_by_power(
    a: &InputHessianArgs,
    model: &dyn hessian_lab::models::Network,
    split: &hessian_lab::data::Split,
    src: &crate::common::Src,
    rt: &hessian_lab::Runtime,
    t0: Instant,
) -> Result<()> {
    let reason = match model.piecewise_linear() {
        Some(false) => "the network is not piecewise linear in its input",
        _ => "the network is not known to be piecewise linear in its input",
    };
    eprintln!("note: Theorem 1 does not apply ({reason}); λ₁^x by power iteration on input HVPs");
    let (mut l1, mut gn) = (vec![], vec![]);
    for r in split.chunks(a.chunk)? {
        let b = split.range_batch(r.start, r.len(), rt)?;
        l1.extend(curvature::input_lambda1_power(
            model, &b, 100, 1e-6, a.md.seed,
        )?);
        let (_, g) = curvature::input_gradient(model, &b)?;
        let norms: Vec<f64> = hessian_lab::attack::l2_norms(&g)?
            .to_dtype(candle_core::DType::F64)?
            .to_vec1()?;
        gn.extend(norms);
    }
    let n = l1.len().max(1) as f64;
    let out = json!({
        "model": a.md.net.label(), "arch": a.md.net.arch_json()?, "dataset": src.name(),
        "split": src.split_name(), "samples": l1.len(), "method": "power", "reason": reason,
        "lambda1_x_mean": l1.iter().sum::<f64>() / n,
        "lambda1_x_max": l1.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        "grad_norm_mean": gn.iter().sum::<f64>() / n,
        "seconds": t0.elapsed().as_secs_f64(),
        "per_sample": l1.iter().zip(&gn).map(|(l, g)| json!({"lambda1": l, "grad_norm": g})).collect::<Vec<_>>(),
    });
    emit(a.json, &out, || {
        format!(
            "{} on {} {} ({} samples, power iteration: {reason}): λ₁^x mean {:.4e} max {:.4e}, ‖∇ₓJ‖ mean {:.4e}",
            a.md.net.label(), src.name(), src.split_name(), l1.len(),
            out["lambda1_x_mean"].as_f64().unwrap_or(f64::NAN),
            out["lambda1_x_max"].as_f64().unwrap_or(f64::NAN),
            out["grad_norm_mean"].as_f64().unwrap_or(f64::NAN)
        )
    })
}
