//! `landscape` and `interpolate`.

use crate::common::{
    emit, load_split, model_and_data, runtime, Common, DataDesc, ModelData, NetArgs,
};
use anyhow::Result;
use clap::Args;
use hessian_lab::curvature::{DataSource, LanczosOpts};
use hessian_lab::data::SplitKind;
use hessian_lab::landscape::{self, parse_range};
use hessian_lab::plot;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

crate::common::cli_enum!(
    /// Landscape direction(s).
    Direction {
        Eig1 = "eig1",
        Eig2 = "eig2",
        Random = "random",
        Gradient = "gradient",
        Eig2d = "eig2d",
        Random2d = "random2d",
    }
);

#[derive(Args)]
pub struct LandscapeArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub md: ModelData,
    /// random: filter-normalised; eig2d and random2d: a 2-D surface
    #[arg(long, value_enum, default_value_t = Direction::Eig1)]
    pub direction: Direction,
    /// start:stop:count
    #[arg(long, default_value = "-1:1:41", allow_hyphen_values = true)]
    pub range: String,
    /// Which losses to plot: any of batch (the --samples batch, also used for eigenvectors and
    /// gradient), train, test
    #[arg(long, value_delimiter = ',', default_value = "batch,train,test")]
    pub eval: Vec<String>,
    /// Limit the train/test evaluations to the first N samples (default: whole splits)
    #[arg(long)]
    pub eval_samples: Option<usize>,
    #[arg(long, default_value_t = 1000)]
    pub chunk: usize,
    /// Log-scale loss axis
    #[arg(long)]
    pub log_y: bool,
    /// Figure (.png or .svg)
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn landscape_cmd(a: LandscapeArgs) -> Result<()> {
    // options and the output first: nothing long runs before they are known to be fine
    let grid = parse_range(&a.range)?;
    if a.eval_samples == Some(0) {
        anyhow::bail!("--eval-samples must be at least 1");
    }
    hessian_lab::files::check_writable(&a.out)?;
    let (rt, model, split, src) = model_and_data(&a.common, &a.md)?;
    let t0 = Instant::now();
    let batch_src = DataSource::from_split(&split, a.chunk, &rt)?;
    let mut sources: Vec<(String, DataSource)> = vec![];
    for e in &a.eval {
        match e.as_str() {
            "batch" => sources.push((
                format!("batch ({} {})", split.len(), src.split_name()),
                batch_src.clone(),
            )),
            "train" | "test" => {
                let ds = src.dataset.ok_or_else(|| {
                    anyhow::anyhow!(
                        "--eval {e} needs a built-in data set (with --data-npy: --eval batch)"
                    )
                })?;
                let s = load_split(&a.common, ds, e.parse::<SplitKind>()?, a.eval_samples)?;
                sources.push((
                    format!("{e} ({})", s.len()),
                    DataSource::Split {
                        split: s,
                        chunk: a.chunk,
                    },
                ));
            }
            o => anyhow::bail!("unknown --eval `{o}` (batch, train, test)"),
        }
    }
    let srcs: Vec<(&str, &DataSource)> = sources.iter().map(|(l, s)| (l.as_str(), s)).collect();
    let lopts = LanczosOpts {
        max_iter: 100,
        tol: 1e-4,
        seed: a.md.seed,
    };
    let mut info = json!({});
    use Direction as D;
    let (fig, data) = match a.direction {
        D::Eig1 | D::Eig2 | D::Random | D::Gradient => {
            let d = match a.direction {
                D::Random => landscape::filter_normalized_direction(&*model, a.md.seed)?,
                D::Gradient => landscape::gradient_direction(&*model, &batch_src)?,
                k => {
                    let idx = if k == D::Eig1 { 0 } else { 1 };
                    let (vals, vecs) =
                        landscape::eigen_directions(&*model, &batch_src, idx + 1, &lopts)?;
                    info["eigenvalues"] = json!(vals);
                    vecs[idx].clone()
                }
            };
            let c = landscape::landscape_1d(
                &*model,
                &d,
                &grid,
                &srcs,
                Some(&crate::bars::Bars::default()),
            )?;
            let title = format!("{} loss along {}", a.md.net.label(), a.direction);
            (
                plot::landscape_figure(&c, &title, "ε", a.log_y)?,
                serde_json::to_value(&c)?,
            )
        }
        D::Eig2d | D::Random2d => {
            let (d1, d2) = if a.direction == D::Eig2d {
                let (vals, vecs) = landscape::eigen_directions(&*model, &batch_src, 2, &lopts)?;
                info["eigenvalues"] = json!(vals);
                (vecs[0].clone(), vecs[1].clone())
            } else {
                (
                    landscape::filter_normalized_direction(&*model, a.md.seed)?,
                    landscape::filter_normalized_direction(&*model, a.md.seed.wrapping_add(1))?,
                )
            };
            let src = srcs.first().map(|s| s.1).unwrap_or(&batch_src);
            let s = landscape::landscape_2d(
                &*model,
                &landscape::Plane {
                    d1: &d1,
                    d2: &d2,
                    alphas: &grid,
                    betas: &grid,
                },
                src,
                Some(&crate::bars::Bars::default()),
            )?;
            let title = format!("{} loss surface ({})", a.md.net.label(), a.direction);
            (plot::surface_figure(&s, &title)?, serde_json::to_value(&s)?)
        }
    };
    fig.save(&a.out)?;
    let out = json!({
        "model": a.md.net.label(), "arch": a.md.net.arch_json()?, "dataset": src.name(), "split": src.split_name(), "samples": split.len(),
        "direction": a.direction, "figure": a.out, "info": info, "data": data,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    emit(a.json, &out, || {
        format!("{} → {}", a.direction, a.out.display())
    })
}

#[derive(Args)]
pub struct InterpolateArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub net: NetArgs,
    /// Weights of the first model (λ = 0)
    #[arg(long)]
    pub from: PathBuf,
    /// Weights of the second model (λ = 1)
    #[arg(long)]
    pub to: PathBuf,
    #[arg(long, value_enum)]
    pub dataset: Option<hessian_lab::data::DatasetKind>,
    /// start:stop:count (may extend beyond [0, 1])
    #[arg(long, default_value = "-0.5:1.5:21", allow_hyphen_values = true)]
    pub range: String,
    /// Evaluate on the first N samples of train and test (default 1000; 0 = whole splits)
    #[arg(long, default_value_t = 1000)]
    pub samples: usize,
    /// Also compute λ₁^θ at each point (Lanczos on the first --samples test samples)
    #[arg(long)]
    pub lambda1: bool,
    #[arg(long, default_value_t = 1000)]
    pub chunk: usize,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn interpolate_cmd(a: InterpolateArgs) -> Result<()> {
    parse_range(&a.range)?;
    hessian_lab::files::check_writable(&a.out)?;
    let rt = runtime(&a.common)?;
    let ds = a.net.dataset(a.dataset)?;
    let desc = DataDesc::builtin(ds);
    let ma = a.net.build(Some(&a.from), &desc, &rt, 0)?;
    let mb = a.net.build(Some(&a.to), &desc, &rt, 0)?;
    let lim = if a.samples == 0 {
        None
    } else {
        Some(a.samples)
    };
    let tr = load_split(&a.common, ds, SplitKind::Train, lim)?;
    let te = load_split(&a.common, ds, SplitKind::Test, lim)?;
    let t0 = Instant::now();
    let srcs = [
        (
            format!("train ({})", tr.len()),
            DataSource::Split {
                split: tr,
                chunk: a.chunk,
            },
        ),
        (
            format!("test ({})", te.len()),
            DataSource::Split {
                split: te.clone(),
                chunk: a.chunk,
            },
        ),
    ];
    let refs: Vec<(&str, &DataSource)> = srcs.iter().map(|(l, s)| (l.as_str(), s)).collect();
    let lopts = LanczosOpts {
        max_iter: 60,
        tol: 1e-3,
        seed: 0,
    };
    let l1src = DataSource::Split {
        split: te,
        chunk: a.chunk,
    };
    let c = landscape::interpolate(
        &*ma,
        &*mb,
        &parse_range(&a.range)?,
        &refs,
        if a.lambda1 {
            Some((&l1src, &lopts))
        } else {
            None
        },
        Some(&crate::bars::Bars::default()),
    )?;
    plot::landscape_figure(&c, &format!("{}: (1−t)·A + t·B", a.net.label()), "t", true)?
        .save(&a.out)?;
    let out = json!({"model": a.net.label(), "arch": a.net.arch_json()?, "dataset": ds.name(), "figure": a.out, "data": c, "seconds": t0.elapsed().as_secs_f64()});
    emit(a.json, &out, || {
        format!("interpolation → {}", a.out.display())
    })
}
