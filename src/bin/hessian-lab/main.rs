//! The hessian-lab command line: train, evaluate, and (later) reproduce the paper.

mod attack;
mod bars;
mod bench;
mod common;
mod curv;
mod landscape;
mod reproduce;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use common::{load_split, runtime, Common, NetArgs};
use hessian_lab::data::SplitKind;
use hessian_lab::models::Network;
use hessian_lab::train::{self, LrSchedule, TrainConfig};
use serde_json::json;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "hessian-lab",
    version,
    about = "Second-order analysis of neural networks (Yao et al., NeurIPS 2018) on candle"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a model with SGD (momentum, weight decay, step schedule, optional LR scaling)
    Train(TrainArgs),
    /// Evaluate a model's loss and accuracy on (the first N samples of) a split
    Eval(EvalArgs),
    /// Top Hessian eigenvalues (Lanczos or power iteration), trace and spectral density
    Spectrum(curv::SpectrumArgs),
    /// Per-sample input Hessians by Theorem 1: λ₁^x, ‖∇ₓJ‖, rank, PSD certificate
    InputHessian(curv::InputHessianArgs),
    /// Time forward, gradient, HVP and power iteration; peak memory
    Bench(bench::BenchArgs),
    /// Adversarial accuracy under fgsm, ifgsm, l2grad, fhsm or l2hess at several ε
    Attack(attack::AttackArgs),
    /// Loss landscape along Hessian eigenvectors, random or gradient directions (1-D or 2-D)
    Landscape(landscape::LandscapeArgs),
    /// Loss (and λ₁) along the segment between two models, BN statistics included
    Interpolate(landscape::InterpolateArgs),
    /// Reproduce the paper's tables and figures (table9, fig13, fig8, fig11, fig15, fig17, table10)
    Reproduce(reproduce::ReproduceArgs),
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    net: NetArgs,
    #[arg(long, value_enum)]
    dataset: Option<hessian_lab::data::DatasetKind>,
    #[command(flatten)]
    npy: common::NpyArgs,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Base learning rate
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Epochs at which the LR is multiplied by --lr-gamma, e.g. 10,20 (default: the last
    /// epoch, when there are at least two and no --lr-scale-base)
    #[arg(long, value_delimiter = ',')]
    lr_steps: Option<Vec<usize>>,
    #[arg(long, default_value_t = 0.2)]
    lr_gamma: f64,
    /// Keep the learning rate constant (no default last-epoch step)
    #[arg(long, conflicts_with = "lr_steps")]
    constant_lr: bool,
    /// Goyal et al.: scale the LR linearly by batch/<BASE> (with warm-up)
    #[arg(long)]
    lr_scale_base: Option<usize>,
    /// Warm-up epochs for the linear scaling rule
    #[arg(long, default_value_t = 5.0)]
    warmup_epochs: f64,
    /// Largest micro-batch computed at once (gradient accumulation above it)
    #[arg(long, default_value_t = 1024)]
    micro_batch: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on the first N training samples only
    #[arg(long)]
    samples: Option<usize>,
    /// Evaluate train loss/accuracy each epoch on the first N train samples (0 = skip)
    #[arg(long, default_value_t = 10_000)]
    eval_train_samples: usize,
    /// Start from these weights instead of a fresh initialisation
    #[arg(long)]
    init: Option<PathBuf>,
    /// Where to save the weights (safetensors)
    #[arg(long)]
    out: PathBuf,
    /// Per-epoch JSON log (default: <out>.log.json)
    #[arg(long)]
    log: Option<PathBuf>,
    /// Robust training: mix in adversarial examples from this attack (fgsm, ifgsm, l2grad, fhsm, l2hess)
    #[arg(long, value_enum)]
    adversarial: Option<crate::attack::AttackArg>,
    /// Budget ε of the adversarial examples
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    adv_eps: f64,
    /// Fraction of each batch replaced by adversarial examples
    #[arg(long, default_value_t = 0.5)]
    adv_ratio: f64,
    /// Print one JSON object on stdout
    #[arg(long)]
    json: bool,
    /// No progress bar
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    net: NetArgs,
    #[arg(long)]
    weights: PathBuf,
    #[arg(long, value_enum)]
    dataset: Option<hessian_lab::data::DatasetKind>,
    #[command(flatten)]
    npy: common::NpyArgs,
    #[arg(long, value_enum, default_value_t = hessian_lab::data::SplitKind::Test)]
    split: hessian_lab::data::SplitKind,
    /// The first N samples of the split (default: all)
    #[arg(long)]
    samples: Option<usize>,
    #[arg(long)]
    json: bool,
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let rt = runtime(&a.common)?;
    // your own .npy data is the training set (no test set); a built-in data set has both
    let (train_split, test_split) = match a.npy.load(a.samples)? {
        Some(s) => (s, None),
        None => {
            let ds = a.net.dataset(a.dataset)?;
            (
                load_split(&a.common, ds, SplitKind::Train, a.samples)?,
                load_split(&a.common, ds, SplitKind::Test, None).ok(),
            )
        }
    };
    let desc = common::DataDesc::of(&train_split);
    let model = a.net.build(a.init.as_deref(), &desc, &rt, a.seed)?;
    model.check_data(&train_split)?;
    let mut cfg = TrainConfig::new(a.epochs, a.batch_size, a.lr);
    if !(a.warmup_epochs >= 0.0) || !a.warmup_epochs.is_finite() {
        anyhow::bail!(
            "--warmup-epochs {}: must be finite and ≥ 0",
            a.warmup_epochs
        );
    }
    cfg.schedule = LrSchedule {
        lr: a.lr,
        milestones: match &a.lr_steps {
            Some(s) => s.clone(),
            None if !a.constant_lr && a.lr_scale_base.is_none() => {
                LrSchedule::last_epoch_decay(a.lr, a.epochs, a.lr_gamma).milestones
            }
            None => vec![],
        },
        gamma: a.lr_gamma,
        scale_from_batch: a.lr_scale_base,
        warmup_epochs: if a.lr_scale_base.is_some() {
            a.warmup_epochs
        } else {
            0.0
        },
    };
    cfg.momentum = a.momentum;
    cfg.weight_decay = a.weight_decay;
    cfg.micro_batch = a.micro_batch;
    cfg.seed = a.seed;
    cfg.eval_train_samples = a.eval_train_samples;
    cfg.progress = (!a.quiet).then(bars::Bars::reporter);
    // Per-epoch checkpoints go to <out>.epoch-N; --out itself is written once, at the end.
    cfg.checkpoint = Some(a.out.clone());
    let log = a.log.clone().unwrap_or_else(|| {
        let mut p = a.out.clone().into_os_string();
        p.push(".log.json");
        PathBuf::from(p)
    });
    cfg.log_path = Some(log.clone());
    cfg.stop = Some(stop_on_ctrl_c());
    cfg.validate()?;
    // Found now, not after the training: outputs that cannot be written.
    for p in [&a.out, &log] {
        hessian_lab::files::check_writable(p)?;
    }
    eprintln!(
        "training {} on {} ({} samples), batch {}, {} epochs, lr {} (peak {}), {:?} on {:?}",
        a.net.label(),
        train_split.name(),
        train_split.len(),
        a.batch_size,
        a.epochs,
        a.lr,
        cfg.schedule.peak(a.batch_size),
        rt.dtype,
        rt.device
    );
    let adv = match &a.adversarial {
        Some(name) => Some(attack::parse_attack(
            *name,
            10,
            attack::NewtonArg::Exact,
            20,
            1e-3,
        )?),
        None => None,
    };
    if !(0.0..=1.0).contains(&a.adv_ratio) || !(a.adv_eps >= 0.0) {
        anyhow::bail!("--adv-ratio must be in [0,1] and --adv-eps ≥ 0");
    }
    let (eps, ratio) = (a.adv_eps, a.adv_ratio);
    let mut hook = |m: &dyn Network, b: hessian_lab::data::Batch| match adv {
        Some(k) => hessian_lab::attack::adversarial_batch(m, b, k, eps, ratio),
        None => Ok(b),
    };
    let report = train::train(
        &*model,
        &train_split,
        &cfg,
        train::TrainWith {
            test: test_split.as_ref(),
            batch_hook: if adv.is_some() { Some(&mut hook) } else { None },
            ..Default::default()
        },
    )?;
    model
        .save(&a.out)
        .with_context(|| format!("saving {}", a.out.display()))?;
    let _ = std::fs::remove_file(train::checkpoint_path(&a.out, a.epochs));
    let last = report.epochs.last().context("no epoch ran")?;
    let out = json!({
        "model": a.net.label(),
        "arch": a.net.arch_json()?,
        "dataset": train_split.name(),
        "samples": train_split.len(),
        "batch_size": a.batch_size,
        "epochs": a.epochs,
        "lr": a.lr,
        "peak_lr": cfg.schedule.peak(a.batch_size),
        "seed": a.seed,
        "adversarial": a.adversarial,
        "adv_eps": a.adversarial.as_ref().map(|_| a.adv_eps),
        "adv_ratio": a.adversarial.as_ref().map(|_| a.adv_ratio),
        "train_loss": last.train_loss,
        "train_accuracy": last.train_eval_accuracy,
        "test_loss": last.test_loss,
        "test_accuracy": last.test_accuracy,
        "seconds": report.seconds,
        "seconds_per_epoch": report.seconds / a.epochs as f64,
        "weights": a.out,
        "log": log,
        "history": report.epochs,
    });
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        let test = last
            .test_accuracy
            .map(|t| format!("test accuracy {t:.4}, "))
            .unwrap_or_default();
        println!(
            "{}: {test}train loss {:.4}, {:.1}s; weights → {}",
            a.net.label(),
            last.train_loss,
            report.seconds,
            a.out.display()
        );
    }
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let rt = runtime(&a.common)?;
    let (s, split_name) = match a.npy.load(a.samples)? {
        Some(s) => (s, "npy"),
        None => {
            let ds = a.net.dataset(a.dataset)?;
            (
                load_split(&a.common, ds, a.split, a.samples)?,
                a.split.name(),
            )
        }
    };
    let model = a
        .net
        .build(Some(&a.weights), &common::DataDesc::of(&s), &rt, 0)?;
    model.check_data(&s)?;
    let t = std::time::Instant::now();
    let (loss, acc) = model.evaluate(&s, 1000)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&json!({
                "model": a.net.label(), "arch": a.net.arch_json()?, "dataset": s.name(), "split": split_name,
                "samples": s.len(), "loss": loss, "accuracy": acc,
                "seconds": t.elapsed().as_secs_f64(),
            }))?
        );
    } else {
        println!(
            "{} on {} {} ({} samples): loss {:.4}, accuracy {:.4}",
            a.net.label(),
            s.name(),
            split_name,
            s.len(),
            loss,
            acc
        );
    }
    Ok(())
}

/// A flag that the first Ctrl-C (SIGINT) sets, so that training stops between two steps and
/// says where its last checkpoint is; a second Ctrl-C ends the process at once.
fn stop_on_ctrl_c() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, OnceLock};
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    extern "C" fn on_sigint(_: libc::c_int) {
        if let Some(f) = FLAG.get() {
            if f.swap(true, Ordering::SeqCst) {
                // SAFETY: _exit is async-signal-safe.
                unsafe { libc::_exit(130) };
            }
        }
    }
    let flag = FLAG
        .get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone();
    // SAFETY: the handler only touches an atomic and calls _exit.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    flag
}

fn main() {
    let cli = Cli::parse();
    if let Cmd::Bench(b) = &cli.cmd {
        if let Some(t) = b.threads {
            // Read by candle, rayon and the crate's compute pool when they start.
            std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        }
    }
    // Allocator and candle thread-pool tuning (speed only), before other threads start.
    hessian_lab::init();
    let r = match cli.cmd {
        Cmd::Train(a) => cmd_train(a),
        Cmd::Eval(a) => cmd_eval(a),
        Cmd::Spectrum(a) => curv::spectrum(a),
        Cmd::InputHessian(a) => curv::input_hessian(a),
        Cmd::Bench(a) => bench::bench(a),
        Cmd::Attack(a) => attack::run(a),
        Cmd::Landscape(a) => landscape::landscape_cmd(a),
        Cmd::Interpolate(a) => landscape::interpolate_cmd(a),
        Cmd::Reproduce(a) => reproduce::run(a),
    };
    if let Err(e) = r {
        // The chain, each cause once: typed errors already name their source (an I/O error
        // says the OS's reason), which the chain would repeat.
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            let c = cause.to_string();
            if !msg.contains(&c) {
                msg = format!("{msg}: {c}");
            }
        }
        eprintln!("error: {msg}");
        let interrupted = matches!(
            e.downcast_ref::<hessian_lab::Error>(),
            Some(hessian_lab::Error::Interrupted { .. })
        );
        std::process::exit(if interrupted { 130 } else { 1 });
    }
}
