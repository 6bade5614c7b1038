//! Training: SGD with momentum, step schedule, Goyal et al. linear LR scaling with warm-up,
//! gradient accumulation, per-epoch evaluation, checkpoints and a JSON log.
//!
//! Each step's backward pass records no graph ([`crate::autodiff::Graph::Drop`]), so every
//! intermediate gradient is freed as soon as it is used.

pub mod sgd;

use crate::data::{Batch, Split};
use crate::models::{layers, Network};
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

pub use sgd::{LrSchedule, Sgd};

/// Everything that defines a training run.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub schedule: LrSchedule,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Largest micro-batch run at once; a batch larger than this is split and its gradients
    /// accumulated with weights |micro|/|batch| (exactly the mean-loss gradient, except that
    /// BatchNorm sees micro-batch statistics — "ghost batches").
    pub micro_batch: usize,
    pub seed: u64,
    /// Evaluate the train loss/accuracy each epoch on the first N train samples (0 = skip;
    /// `usize::MAX` = the whole split).
    pub eval_train_samples: usize,
    /// Evaluate on the test split each epoch.
    pub eval_test: bool,
    pub eval_chunk: usize,
    /// Where to report progress (steps, running loss, one line per epoch); `None`: silent.
    pub progress: Option<crate::progress::Reporter>,
    /// After each epoch, save the weights to `<checkpoint>.epoch-N` (atomically; the previous
    /// epoch's file is removed once the new one is complete, so at most one exists). The
    /// caller writes the final model where it wants once `train` returns; a run that fails or
    /// is stopped leaves the last complete epoch here and every other file untouched.
    pub checkpoint: Option<PathBuf>,
    /// Write the per-epoch log as JSON here after every epoch (atomically).
    pub log_path: Option<PathBuf>,
    /// Checked before every step: when set, training stops with [`Error::Interrupted`]
    /// (the CLI sets it on Ctrl-C).
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Stop after the first epoch whose train accuracy (on the first `eval_train_samples`
    /// samples, evaluated in eval mode) reaches this; `epochs` is then the cap.
    pub until_train_accuracy: Option<f64>,
}

/// `<path>.epoch-N`: where [`train`] saves the checkpoint of epoch `n` (1-based).
pub fn checkpoint_path(path: &std::path::Path, epoch: usize) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".epoch-{epoch}"));
    PathBuf::from(p)
}

/// A step's loss above this many times max(the first step's loss, ln C) counts as divergence:
/// cross-entropy that large means logits off by hundreds.
const DIVERGENCE_FACTOR: f64 = 100.0;

impl TrainConfig {
    pub fn new(epochs: usize, batch_size: usize, lr: f64) -> Self {
        TrainConfig {
            epochs,
            batch_size,
            schedule: LrSchedule::constant(lr),
            momentum: 0.9,
            weight_decay: 0.0,
            micro_batch: 1024,
            seed: 0,
            eval_train_samples: 10_000,
            eval_test: true,
            eval_chunk: 1000,
            progress: None,
            checkpoint: None,
            log_path: None,
            stop: None,
            until_train_accuracy: None,
        }
    }
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::invalid("epochs", "must be ≥ 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("batch size", "must be ≥ 1"));
        }
        if self.micro_batch == 0 {
            return Err(Error::invalid("micro batch", "must be ≥ 1"));
        }
        if self.eval_chunk == 0 {
            return Err(Error::invalid("eval chunk", "must be ≥ 1"));
        }
        if let Some(t) = self.until_train_accuracy {
            if !(t > 0.0 && t <= 1.0) || self.eval_train_samples == 0 {
                return Err(Error::invalid(
                    "until_train_accuracy",
                    "a target in (0, 1] needs eval_train_samples > 0",
                ));
            }
        }
        self.schedule.validate()
    }
}

/// Metrics of one epoch.
#[derive(Clone, Debug, Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    /// Mean of the mini-batch losses seen during the epoch (train mode).
    pub train_loss: f64,
    /// Loss/accuracy on the first `eval_train_samples` train samples after the epoch (eval mode).
    pub train_eval_loss: Option<f64>,
    pub train_eval_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    pub seconds: f64,
    /// λ₁^θ after the epoch, when an epoch hook measured it
    /// ([`crate::landscape::curvature_epoch_hook`]: the paper's Fig. 17).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda1: Option<f64>,
    /// ‖∇θ L‖ after the epoch, when an epoch hook measured it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Further values recorded by a user's epoch hook, by name.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub epochs: Vec<EpochRecord>,
    pub seconds: f64,
    pub iterations: usize,
    /// With [`TrainConfig::until_train_accuracy`]: whether it was reached within the cap.
    pub reached: Option<bool>,
}

/// Called after each epoch's evaluation; may add values to the record's `extra`.
pub type EpochHook<'a> = dyn FnMut(&dyn Network, &mut EpochRecord) -> Result<()> + 'a;

/// Called on each (micro-)batch before the gradient step; may replace it (e.g. with a mix of
/// clean and adversarial examples).
pub type BatchHook<'a> = dyn FnMut(&dyn Network, Batch) -> Result<Batch> + 'a;

/// Mean-loss gradient of a batch in train mode (BN batch statistics, running stats updated),
/// accumulated over micro-batches. Returns (loss, detached gradients in parameter order).
/// Cost: one forward + one backward per micro-batch.
pub fn batch_gradient(
    model: &dyn Network,
    batch: &Batch,
    micro: usize,
    train: bool,
) -> Result<(f64, Vec<Tensor>)> {
    let n = batch.len();
    if n == 0 {
        return Err(Error::Empty("batch with 0 samples".into()));
    }
    let mut grads: Option<Vec<Tensor>> = None;
    let mut loss_sum = 0.0;
    let mut start = 0;
    while start < n {
        let len = micro.min(n - start);
        let mb = if len == n {
            batch.clone()
        } else {
            batch.narrow(start, len)?
        };
        let w = len as f64 / n as f64;
        let (lv, g) =
            crate::autodiff::on_pool(model.device(), || -> Result<(f64, Vec<Tensor>)> {
                let logits = model.forward_t(&mb.x, train)?;
                let loss = layers::cross_entropy(&logits, &mb.y)?;
                let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if !lv.is_finite() {
                    return Err(Error::NonFinite(
                        "training loss (diverged? lower the learning rate)".into(),
                    ));
                }
                let params: Vec<&Tensor> =
                    model.params().iter().map(|(_, v)| v.as_tensor()).collect();
                let g =
                    crate::autodiff::grads(&(loss * w)?, &params, crate::autodiff::Graph::Drop)?;
                Ok((lv, g))
            })?;
        loss_sum += lv * w;
        grads = Some(match grads {
            None => g,
            Some(acc) => acc
                .iter()
                .zip(g.iter())
                .map(|(a, b)| Ok((a + b)?.detach()))
                .collect::<Result<_>>()?,
        });
        start += len;
    }
    Ok((loss_sum, grads.unwrap_or_default()))
}

/// What [`train`] is given besides its configuration: a test split to evaluate on after each
/// epoch and hooks. `TrainWith::default()`: none of them.
#[derive(Default)]
pub struct TrainWith<'a> {
    /// Evaluated after each epoch (when `TrainConfig::eval_test`).
    pub test: Option<&'a Split>,
    /// Called on each batch before its step; may replace it (robust training).
    pub batch_hook: Option<&'a mut BatchHook<'a>>,
    /// Called after each epoch's evaluation; may record extra values.
    pub epoch_hook: Option<&'a mut EpochHook<'a>>,
}

/// Trains `model` in place with SGD on `train`, evaluating on `with.test` after each epoch.
///
/// Cost per epoch: ⌈N/B⌉ steps of one forward + backward per micro-batch, plus the
/// evaluation forwards.
pub fn train(
    model: &dyn Network,
    train_split: &Split,
    cfg: &TrainConfig,
    with: TrainWith<'_>,
) -> Result<TrainReport> {
    let TrainWith {
        test: test_split,
        mut batch_hook,
        mut epoch_hook,
    } = with;
    cfg.validate()?;
    if train_split.is_empty() {
        return Err(Error::Empty("training split has no samples".into()));
    }
    model.check_data(train_split)?;
    let vars: Vec<_> = model.params().iter().map(|(_, v)| v.clone()).collect();
    let mut opt = Sgd::new(vars, cfg.momentum, cfg.weight_decay)?;
    // the samples evaluated after each epoch, selected once (the whole split is not copied)
    let train_eval: Option<std::borrow::Cow<Split>> = match cfg.eval_train_samples {
        0 => None,
        n if n >= train_split.len() => Some(std::borrow::Cow::Borrowed(train_split)),
        n => Some(std::borrow::Cow::Owned(train_split.first(n)?)),
    };
    let rt = model.runtime().clone();
    let t0 = Instant::now();
    let mut records = Vec::new();
    let mut iterations = 0;
    let steps_per_epoch = train_split.len().div_ceil(cfg.batch_size);
    let bar = crate::progress::Task::start(
        cfg.progress.as_ref().map(|r| r.as_dyn()),
        "train",
        steps_per_epoch * cfg.epochs,
    );
    let mut lr = cfg.schedule.lr;
    let mut start_loss: Option<f64> = None;
    let mut last_checkpoint: Option<PathBuf> = None;
    let floor = (model.num_classes() as f64).ln();
    for epoch in 0..cfg.epochs {
        let te = Instant::now();
        let batches = train_split.shuffled_batches(
            cfg.batch_size,
            cfg.seed.wrapping_add(epoch as u64),
            false,
        )?;
        let mut loss_acc = 0.0;
        let mut seen = 0usize;
        for (bi, idx) in batches.iter().enumerate() {
            let t = epoch as f64 + bi as f64 / batches.len() as f64;
            lr = cfg.schedule.at(t, cfg.batch_size);
            if let Some(stop) = &cfg.stop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(Error::Interrupted {
                        epoch: epoch + 1,
                        checkpoint: last_checkpoint,
                    });
                }
            }
            let mut batch = train_split.batch(idx, &rt)?;
            if let Some(h) = batch_hook.as_deref_mut() {
                batch = h(model, batch)?;
            }
            let (loss, grads) = batch_gradient(model, &batch, cfg.micro_batch, true)?;
            // the first step's loss is the model's before any update
            let start = *start_loss.get_or_insert(loss);
            if loss > DIVERGENCE_FACTOR * start.max(floor) {
                return Err(Error::Diverged(format!(
                    "training loss {loss:.3e} at epoch {} step {} (it started at {start:.3}); \
                     lower the learning rate ({lr})",
                    epoch + 1,
                    bi + 1
                )));
            }
            opt.step(&grads, lr)?;
            // after every step: ReLU can hide a NaN weight from the loss
            if !params_sum_finite(model)? {
                check_params_finite(model, epoch + 1, lr)?;
            }
            loss_acc += loss * idx.len() as f64;
            seen += idx.len();
            iterations += 1;
            bar.advance(1);
            if bi % 10 == 0 {
                bar.message(|| {
                    format!(
                        "epoch {} loss {:.4} lr {:.4}",
                        epoch + 1,
                        loss_acc / seen as f64,
                        lr
                    )
                });
            }
        }
        let mut rec = EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_acc / seen.max(1) as f64,
            train_eval_loss: None,
            train_eval_accuracy: None,
            test_loss: None,
            test_accuracy: None,
            lr,
            seconds: 0.0,
            lambda1: None,
            grad_norm: None,
            extra: Default::default(),
        };
        if let Some(te) = &train_eval {
            let (l, a) = model.evaluate(te, cfg.eval_chunk)?;
            rec.train_eval_loss = Some(l);
            rec.train_eval_accuracy = Some(a);
        }
        if let (true, Some(ts)) = (cfg.eval_test, test_split) {
            let (l, a) = model.evaluate(ts, cfg.eval_chunk)?;
            rec.test_loss = Some(l);
            rec.test_accuracy = Some(a);
        }
        rec.seconds = te.elapsed().as_secs_f64();
        if let Some(h) = epoch_hook.as_deref_mut() {
            h(model, &mut rec)?;
        }
        bar.log(|| {
            format!(
                "epoch {}: train_loss {:.4}{}{} lr {:.4} ({:.1}s)",
                rec.epoch,
                rec.train_loss,
                rec.train_eval_accuracy
                    .map(|a| format!(" train_acc {:.4}", a))
                    .unwrap_or_default(),
                rec.test_accuracy
                    .map(|a| format!(" test_acc {:.4}", a))
                    .unwrap_or_default(),
                rec.lr,
                rec.seconds
            )
        });
        records.push(rec);
        if let Some(p) = &cfg.checkpoint {
            let path = checkpoint_path(p, epoch + 1);
            model.save(&path)?;
            bar.log(|| format!("checkpoint: {}", path.display()));
            if let Some(old) = last_checkpoint.replace(path) {
                let _ = std::fs::remove_file(old);
            }
        }
        let reached = cfg.until_train_accuracy.map(|t| {
            records
                .last()
                .and_then(|r| r.train_eval_accuracy)
                .is_some_and(|a| a >= t)
        });
        let report = TrainReport {
            epochs: records.clone(),
            seconds: t0.elapsed().as_secs_f64(),
            iterations,
            reached,
        };
        if let Some(p) = &cfg.log_path {
            write_json(p, &report)?;
        }
        if reached == Some(true) {
            return Ok(report);
        }
    }
    Ok(TrainReport {
        epochs: records,
        seconds: t0.elapsed().as_secs_f64(),
        iterations,
        reached: cfg.until_train_accuracy.map(|_| false),
    })
}

/// Whether Σ of all parameters is finite: one vectorised sum per tensor, in the parameters'
/// dtype (a NaN or ±Inf anywhere makes it non-finite; so would finite values near the dtype's
/// maximum, which [`check_params_finite`] then tells apart). Costs about a tenth of a
/// gradient's memory traffic, so it runs after every step.
fn params_sum_finite(model: &dyn Network) -> Result<bool> {
    let mut total = 0.0f64;
    for (_, v) in model.params() {
        total += v
            .as_tensor()
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(total.is_finite())
}

/// Errors with [`Error::Diverged`], naming the tensors, when a parameter holds NaN or ±Inf.
fn check_params_finite(model: &dyn Network, epoch: usize, lr: f64) -> Result<()> {
    let mut bad = vec![];
    for (n, v) in model.params() {
        if let Some(c) = crate::models::io::NonFiniteCount::of(v.as_tensor())? {
            bad.push(format!("{n} ({c})"));
        }
    }
    if bad.is_empty() {
        // the sum overflowed on finite values
        return Ok(());
    }
    Err(Error::Diverged(format!(
        "non-finite parameters in epoch {epoch}: {}; lower the learning rate ({lr}) or check \
         the initial weights",
        bad.join(", ")
    )))
}

/// Writes a value as pretty JSON, atomically ([`crate::files::write_atomic`]).
pub fn write_json<T: Serialize>(path: &std::path::Path, v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v)?;
    crate::files::write_atomic(path, s.as_bytes())
}

/// Robust training: each batch has a fraction `ratio` replaced by adversarial examples of
/// `attack` at budget `eps` (the paper's recipe: FGSM, ε = 0.1, half of each batch).
#[derive(Clone, Copy, Debug)]
pub struct Adversarial {
    pub attack: crate::attack::AttackKind,
    pub eps: f64,
    pub ratio: f64,
}

/// Options of [`fit`]. The defaults are the CLI's: SGD with momentum 0.9, batch 128, lr 0.05
/// for all but the last epoch and 0.01 for it, 2 epochs (M1 on MNIST: ≥ 98.5 % test
/// accuracy, BENCHMARKS.md).
#[derive(Clone, Debug)]
pub struct FitOpts {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// The rate is multiplied by this for the last epoch (1.0: constant).
    pub last_epoch_factor: f64,
    pub seed: u64,
    pub adversarial: Option<Adversarial>,
    /// Where to report progress; `None`: silent.
    pub progress: Option<crate::progress::Reporter>,
}

impl Default for FitOpts {
    fn default() -> Self {
        FitOpts {
            epochs: 2,
            batch_size: 128,
            lr: 0.05,
            last_epoch_factor: 0.2,
            seed: 0,
            adversarial: None,
            progress: None,
        }
    }
}

impl FitOpts {
    /// The learning-rate schedule these options describe.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule::last_epoch_decay(self.lr, self.epochs, self.last_epoch_factor)
    }
}

/// Trains `model` in place on `split` — the one-call version of [`train`] for notebooks and
/// scripts: no per-epoch evaluation, no files; robust training when `opts.adversarial` is
/// set. Cost: ⌈N/B⌉ forward + backward passes per epoch (more with adversarial examples).
pub fn fit(model: &dyn Network, split: &Split, opts: &FitOpts) -> Result<TrainReport> {
    let mut cfg = TrainConfig::new(opts.epochs, opts.batch_size, opts.lr);
    cfg.schedule = opts.schedule();
    cfg.seed = opts.seed;
    cfg.eval_train_samples = 0;
    cfg.eval_test = false;
    cfg.progress = opts.progress.clone();
    match opts.adversarial {
        Some(a) => {
            let mut hook = move |m: &dyn Network, b: Batch| {
                crate::attack::adversarial_batch(m, b, a.attack, a.eps, a.ratio)
            };
            let with = TrainWith {
                batch_hook: Some(&mut hook),
                ..Default::default()
            };
            train(model, split, &cfg, with)
        }
        None => train(model, split, &cfg, TrainWith::default()),
    }
}
