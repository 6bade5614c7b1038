//! `attack`: adversarial accuracy under one of the paper's attacks at several ε.

use crate::common::{emit, model_and_data, Common, ModelData};
use anyhow::Result;
use clap::Args;
use hessian_lab::attack::{self, AttackKind, NewtonSolver};
use serde_json::json;
use std::time::Instant;

crate::common::cli_enum!(
    /// The paper's attacks (FGSM-10 is `ifgsm`).
    AttackArg {
        Fgsm = "fgsm",
        Ifgsm = "ifgsm" | "fgsm10" | "fgsm-10",
        L2Grad = "l2grad",
        Fhsm = "fhsm",
        L2Hess = "l2hess",
    }
);

crate::common::cli_enum!(
    /// Newton solver of the second-order attacks.
    NewtonArg { Exact = "exact", Cg = "cg" }
);

#[derive(Args)]
pub struct AttackArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub md: ModelData,
    /// fgsm, ifgsm (FGSM-10), l2grad, fhsm or l2hess
    #[arg(long, value_enum)]
    pub attack: crate::attack::AttackArg,
    /// Budgets ε (pixel units in [0,1]), comma separated
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        allow_negative_numbers = true
    )]
    pub eps: Vec<f64>,
    /// ifgsm steps
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Newton solver for fhsm/l2hess
    #[arg(long, value_enum, default_value_t = NewtonArg::Exact)]
    pub newton: NewtonArg,
    #[arg(long, default_value_t = 20)]
    pub cg_iters: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub cg_tol: f64,
    /// Samples per chunk
    #[arg(long, default_value_t = 250)]
    pub chunk: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn parse_attack(
    name: AttackArg,
    steps: usize,
    newton: NewtonArg,
    cg_iters: usize,
    cg_tol: f64,
) -> Result<AttackKind> {
    let mut k: AttackKind = name.name().parse()?;
    if let AttackKind::Ifgsm { .. } = k {
        k = AttackKind::Ifgsm { steps };
    }
    let solver = match newton {
        NewtonArg::Exact => NewtonSolver::Exact,
        NewtonArg::Cg => NewtonSolver::Cg {
            iters: cg_iters,
            tol: cg_tol,
        },
    };
    Ok(k.with_solver(solver))
}

pub fn run(a: AttackArgs) -> Result<()> {
    let (_rt, model, split, src) = model_and_data(&a.common, &a.md)?;
    let kind = parse_attack(a.attack, a.steps, a.newton, a.cg_iters, a.cg_tol)?;
    let t0 = Instant::now();
    let rep = attack::adversarial_accuracy(
        &*model,
        &split,
        kind,
        &a.eps,
        &hessian_lab::attack::SplitOpts {
            chunk: a.chunk,
            progress: Some(&crate::bars::Bars::default()),
        },
    )?;
    let cg_cos = match kind {
        AttackKind::Fhsm(NewtonSolver::Cg { iters, tol })
        | AttackKind::L2Hess(NewtonSolver::Cg { iters, tol })
            if model.piecewise_linear() == Some(true) =>
        {
            let b = split.range_batch(0, split.len().min(a.chunk), model.runtime())?;
            let c: Vec<f64> = attack::cg_cosine_to_exact(&*model, &b, iters, tol)?
                .into_iter()
                .filter(|x| x.is_finite())
                .collect();
            Some(
                json!({"samples": c.len(), "mean": c.iter().sum::<f64>() / c.len().max(1) as f64,
                        "min": c.iter().cloned().fold(f64::INFINITY, f64::min)}),
            )
        }
        _ => None,
    };
    let mut per_eps = serde_json::Map::new();
    for e in &rep.per_eps {
        per_eps.insert(
            format!("{}", e.eps),
            json!({"accuracy": e.accuracy, "linf_mean": e.linf_mean, "l2_mean": e.l2_mean}),
        );
    }
    let out = json!({
        "model": a.md.net.label(),
        "arch": a.md.net.arch_json()?,
        "dataset": src.name(),
        "split": src.split_name(),
        "samples": rep.samples,
        "attack": rep.attack,
        "newton": a.newton,
        "clean_accuracy": rep.clean_accuracy,
        "per_eps": per_eps,
        "seconds": t0.elapsed().as_secs_f64(),
        "cg_cosine_to_exact": cg_cos,
    });
    emit(a.json, &out, || {
        let mut s = format!(
            "{} on {} {} ({} samples): clean accuracy {:.4}",
            rep.attack,
            src.name(),
            src.split_name(),
            rep.samples,
            rep.clean_accuracy
        );
        for e in &rep.per_eps {
            s += &format!("; ε={}: {:.4}", e.eps, e.accuracy);
        }
        s
    })
}
