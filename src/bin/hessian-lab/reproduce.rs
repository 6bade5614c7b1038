//! `reproduce`: the paper's tables and figures.

use crate::common::runtime;
use crate::common::Common;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use hessian_lab::plot::Figure;
use hessian_lab::reproduce::figures::{self, FigSettings, FigureResult};
use hessian_lab::reproduce::table10::{Table10Data, Table10Settings};
use hessian_lab::reproduce::{self, Table9Settings};
use hessian_lab::Runtime;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct ReproduceArgs {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Args, Clone)]
pub struct Shared {
    #[command(flatten)]
    pub common: Common,
    /// Small, fast version (< 10 min on a 2-core CPU); settings are printed in the header
    #[arg(long)]
    pub quick: bool,
    /// Output folder for JSON and figures
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Subcommand)]
pub enum What {
    /// Table 9: M1 on MNIST per batch size — accuracy, λ₁^θ, λ₁^x, ‖∇ₓJ‖, FGSM accuracy
    Table9(Table9Args),
    /// Fig. 13: Hessian spectral density sub-sampled on B = 1, 320 and the full set, clean vs robust M1
    Fig13(FigArgs),
    /// Fig. 8: 1-D landscape along v₁ (batch, train and test loss)
    Fig8(FigArgs),
    /// Fig. 11: interpolation clean → robust with λ₁ along the path
    Fig11(FigArgs),
    /// Fig. 15: 2-D landscape along v₁, v₂
    Fig15(FigArgs),
    /// Fig. 17: λ₁^θ and ‖g‖ per epoch, small vs large batch vs robust
    Fig17(FigArgs),
    /// Table 10: C1 on CIFAR-10, large batches: baseline, LR scaling, robust training
    Table10(Table10Args),
    /// Table 3 (appendix): M_ORI and the five robust M1 models × clean and the five attacks, λ₁^θ
    Table3(Table3Args),
}

#[derive(Args)]
pub struct Table3Args {
    #[command(flatten)]
    pub shared: Shared,
    /// Training epochs of every model (default: 3, quick and full)
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub train_samples: Option<usize>,
    /// Attacked test images (default: 1,000 quick, 10,000 full)
    #[arg(long)]
    pub eval_samples: Option<usize>,
    #[arg(long)]
    pub hessian_samples: Option<usize>,
}

#[derive(Args)]
pub struct Table9Args {
    #[command(flatten)]
    pub shared: Shared,
    #[arg(long, value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    /// The epoch cap (with the convergence target) or the fixed number of epochs
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Train each batch size until this train accuracy (default 0.999, the paper's "100 %")
    #[arg(long, conflicts_with = "fixed_epochs")]
    pub target_train_accuracy: Option<f64>,
    /// Train every batch size for exactly --epochs epochs (no convergence target)
    #[arg(long)]
    pub fixed_epochs: bool,
    /// Also run the table with Goyal et al.'s linear LR scaling (lr·B/B₀ with one warm-up
    /// epoch, B₀ = --lr-scale-base or the smallest batch size): a second table,
    /// table9_scaling.json
    #[arg(long, conflicts_with = "lr_scale_base")]
    pub with_scaling: bool,
    #[arg(long)]
    pub train_samples: Option<usize>,
    #[arg(long)]
    pub hessian_samples: Option<usize>,
    #[arg(long)]
    pub input_samples: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// Goyal et al. linear LR scaling relative to this batch size (default: same LR for all)
    #[arg(long)]
    pub lr_scale_base: Option<usize>,
}

#[derive(Args)]
pub struct FigArgs {
    #[command(flatten)]
    pub shared: Shared,
}

#[derive(Args)]
pub struct Table10Args {
    #[command(flatten)]
    pub shared: Shared,
    /// Folder with the official CIFAR-10 binary files (data_batch_1.bin … test_batch.bin)
    #[arg(long)]
    pub cifar10: Option<PathBuf>,
    /// Run the pipeline on the shipped 2,000-image sample instead (batch sizes scaled down)
    #[arg(long)]
    pub sample: bool,
    #[arg(long, value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    #[arg(long)]
    pub epochs: Option<usize>,
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    hessian_lab::train::write_json(path, v)?;
    Ok(())
}

/// Saves `<out>/<name>.png` (2× for high-DPI screens) and `<out>/<name>.svg`.
fn save_png_svg(out: &Path, name: &str, fig: &Figure) -> Result<()> {
    fig.save(out.join(format!("{name}.png")))?;
    fig.save(out.join(format!("{name}.svg")))?;
    Ok(())
}

/// Saves `<out>/<name>.png`, `.svg` and `.json` (with the elapsed seconds) and says so.
fn save_figure(
    sh: &Shared,
    name: &str,
    fig: &Figure,
    mut value: serde_json::Value,
    t0: Instant,
) -> Result<()> {
    std::fs::create_dir_all(&sh.out).with_context(|| format!("creating {}", sh.out.display()))?;
    save_png_svg(&sh.out, name, fig)?;
    value["seconds"] = json!(t0.elapsed().as_secs_f64());
    write_json(&sh.out.join(format!("{name}.json")), &value)?;
    println!(
        "wrote {}/{name}.png, {name}.svg, {name}.json ({:.0}s)",
        sh.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn run(a: ReproduceArgs) -> Result<()> {
    match a.what {
        What::Table9(t) => table9(t),
        What::Fig13(f) => figure(f.shared, figures::fig13),
        What::Fig8(f) => figure(f.shared, |rt, s| figures::fig_landscape(rt, s, false)),
        What::Fig15(f) => figure(f.shared, |rt, s| figures::fig_landscape(rt, s, true)),
        What::Fig11(f) => figure(f.shared, figures::fig11),
        What::Fig17(f) => figure(f.shared, figures::fig17),
        What::Table10(t) => table10(t),
        What::Table3(t) => table3(t),
    }
}

fn table3(a: Table3Args) -> Result<()> {
    use hessian_lab::reproduce::table3::{self as t3, Table3Settings};
    let sh = &a.shared;
    let rt = runtime(&sh.common)?;
    let mut s = if sh.quick {
        Table3Settings::quick()
    } else {
        Table3Settings::full()
    };
    s.seed = sh.seed;
    s.epochs = a.epochs.unwrap_or(s.epochs);
    s.train_samples = a.train_samples.unwrap_or(s.train_samples);
    s.eval_samples = a.eval_samples.unwrap_or(s.eval_samples);
    s.hessian_samples = a.hessian_samples.unwrap_or(s.hessian_samples);
    if s.epochs == 0 || s.train_samples == 0 || s.eval_samples == 0 || s.hessian_samples == 0 {
        anyhow::bail!("epochs and sample counts must be at least 1");
    }
    hessian_lab::files::check_writable(&sh.out.join("table3.json"))?;
    println!(
        "# Table 3 — robust M1 models × attacks on MNIST{}",
        if sh.quick { " (quick)" } else { "" }
    );
    println!(
        "settings: {} training images, {} epochs, batch {}, lr {}, half of each batch adversarial; ε = {} (FGSM, FGSM-10, FHSM), {} (L2 GRAD, L2 HESS); attacks on {} test images; λ₁^θ on {} training images; seed {}\n",
        s.train_samples, s.epochs, s.batch_size, s.lr, s.eps_linf, s.eps_l2, s.eval_samples, s.hessian_samples, s.seed
    );
    let t0 = Instant::now();
    let t = t3::table3(&rt, &sh.common.data_dir, &s, |name, row, l1| {
        let cells: Vec<String> = row.iter().map(|a| format!("{:.1}", 100.0 * a)).collect();
        eprintln!(
            "{name}: {} | λ₁^θ {l1:.3} ({:.0}s)",
            cells.join(" "),
            t0.elapsed().as_secs_f64()
        );
    })?;
    println!("{}", t.markdown());
    println!(
        "(accuracy in % on the attacked test images; total {:.0}s)",
        t.seconds
    );
    save_figure(sh, "table3", &t.figure()?, serde_json::to_value(&t)?, t0)?;
    std::fs::write(sh.out.join("table3.md"), t.markdown())
        .with_context(|| format!("writing {}", sh.out.join("table3.md").display()))?;
    Ok(())
}

fn table9(a: Table9Args) -> Result<()> {
    let sh = &a.shared;
    let rt = runtime(&sh.common)?;
    let mut s = if sh.quick {
        Table9Settings::quick()
    } else {
        Table9Settings::full()
    };
    if !a.batch_sizes.is_empty() {
        s.batch_sizes = a.batch_sizes.clone();
    }
    s.epochs = a.epochs.unwrap_or(s.epochs);
    if a.fixed_epochs {
        s.target_train_accuracy = None;
    } else if let Some(t) = a.target_train_accuracy {
        s.target_train_accuracy = Some(t);
    }
    s.train_samples = a.train_samples.unwrap_or(s.train_samples);
    s.hessian_samples = a.hessian_samples.unwrap_or(s.hessian_samples);
    s.input_samples = a.input_samples.unwrap_or(s.input_samples);
    s.lr = a.lr.unwrap_or(s.lr);
    s.lr_scale_base = a.lr_scale_base;
    s.seed = sh.seed;
    println!(
        "# Table 9 — M1 on MNIST ({})",
        if sh.quick { "quick" } else { "full" }
    );
    println!("{}", s.describe(rt.dtype));
    if !sh.quick {
        // measured on the 2-core AMD EPYC VM (README): 16 min with the convergence target
        // (cap 60 epochs), 8 min with a fixed 10 epochs
        let training = if a.fixed_epochs {
            format!("exactly {} epochs", s.epochs)
        } else {
            format!(
                "until the target train accuracy, at most {} epochs",
                s.epochs
            )
        };
        println!(
            "expected time: 8–30 min on a 2-core CPU (analysis ~25 s per batch size; training {training} of 60,000 images, 4–8 s each)"
        );
    }
    println!();
    let t = reproduce::table9(&rt, &sh.common.data_dir, &s, |r| {
        eprintln!(
            "B={}: acc {:.4} ({:.4}), λ₁^θ {:.3} ({:.3}) [train {:.0}s, analysis {:.0}s]",
            r.batch_size,
            r.train_accuracy,
            r.test_accuracy,
            r.lambda1_theta_train,
            r.lambda1_theta_test,
            r.train_seconds,
            r.analysis_seconds
        )
    })?;
    println!("{}", t.markdown());
    println!(
        "(train, test in parentheses; accuracies in %, FGSM accuracies as fractions; total {:.0}s)",
        t.seconds
    );
    std::fs::create_dir_all(&sh.out).with_context(|| format!("creating {}", sh.out.display()))?;
    write_json(&sh.out.join("table9.json"), &serde_json::to_value(&t)?)?;
    let [lambda1, fgsm] = figures::table9_figures(&t)?;
    save_png_svg(&sh.out, "table9_lambda1", &lambda1)?;
    save_png_svg(&sh.out, "table9_fgsm", &fgsm)?;
    println!(
        "wrote {}/table9.json, table9_lambda1.png/.svg, table9_fgsm.png/.svg",
        sh.out.display()
    );
    if a.with_scaling {
        let mut s2 = s.clone();
        let base = s.batch_sizes.iter().copied().min().unwrap_or(64);
        s2.lr_scale_base = Some(base);
        println!(
            "\n# Table 9 with Goyal et al.'s linear LR scaling: lr {}·B/{base}, one warm-up epoch\n",
            s.lr
        );
        let t2 = reproduce::table9(&rt, &sh.common.data_dir, &s2, |r| {
            eprintln!(
                "scaled B={}: lr {}, acc {:.4} ({:.4}), λ₁^θ {:.3} ({:.3})",
                r.batch_size,
                r.lr,
                r.train_accuracy,
                r.test_accuracy,
                r.lambda1_theta_train,
                r.lambda1_theta_test
            )
        })?;
        println!("{}", t2.markdown());
        write_json(
            &sh.out.join("table9_scaling.json"),
            &serde_json::to_value(&t2)?,
        )?;
        println!("wrote {}/table9_scaling.json", sh.out.display());
    }
    Ok(())
}

fn fig_settings(sh: &Shared) -> FigSettings {
    FigSettings {
        quick: sh.quick,
        seed: sh.seed,
        data_dir: sh.common.data_dir.clone(),
        cache_dir: Some(sh.out.join("models")),
        progress: Some(crate::bars::Bars::reporter()),
    }
}

/// Computes one figure in the library, prints its notes, writes `<out>/<name>.png/.json`.
fn figure(
    sh: Shared,
    f: impl FnOnce(&Runtime, &FigSettings) -> hessian_lab::Result<FigureResult>,
) -> Result<()> {
    let t0 = Instant::now();
    hessian_lab::files::check_writable(&sh.out.join("probe.json"))?;
    let rt = runtime(&sh.common)?;
    let r = f(&rt, &fig_settings(&sh))?;
    for line in &r.notes {
        println!("{line}");
    }
    save_figure(&sh, r.name, &r.figure, r.data, t0)
}

fn table10(a: Table10Args) -> Result<()> {
    let sh = &a.shared;
    let rt = runtime(&sh.common)?;
    let data = match (&a.cifar10, a.sample) {
        (Some(dir), _) => Table10Data::Cifar10(dir.clone()),
        (None, true) => Table10Data::Sample(sh.common.data_dir.clone()),
        (None, false) => anyhow::bail!(
            "table10 needs the full CIFAR-10 data set, which hessian-lab cannot download: put the official binary files \
             (data_batch_1.bin … data_batch_5.bin, test_batch.bin from cifar-10-binary.tar.gz) in a folder and pass \
             --cifar10 DIR (e.g. data/cifar10). To run the pipeline on the shipped 2,000-image cat/dog sample instead, pass --sample."
        ),
    };
    hessian_lab::files::check_writable(&sh.out.join("table10.json"))?;
    let settings = Table10Settings {
        data,
        batch_sizes: a.batch_sizes.clone(),
        epochs: a.epochs,
        quick: sh.quick,
        seed: sh.seed,
    };
    let t = reproduce::table10::table10(&rt, &settings, |line| println!("{line}"))?;
    write_json(&sh.out.join("table10.json"), &serde_json::to_value(&t)?)?;
    Ok(())
}
