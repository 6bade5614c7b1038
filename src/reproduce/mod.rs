//! The paper's experiments as functions: Table 9 (M1, batch size vs curvature and robustness),
//! Fig. 13 (spectra of sub-sampled Hessians), Figs. 8/11/15 (landscapes), Fig. 17 (λ₁ per
//! epoch) in [`figures`], Table 10 (C1 on CIFAR-10, large batch) in [`table10`]. The CLI's
//! `reproduce` only parses its arguments, calls these and writes what they return.

pub mod figures;
pub mod table10;
pub mod table3;

use crate::attack::{self, AttackKind};
use crate::curvature::{self, DataSource, HessianOperator, LanczosOpts, SlqOpts};
use crate::data::{self, DatasetKind, Split, SplitKind};
use crate::models::{Model, ModelKind, Network};
use crate::train::{self, LrSchedule, TrainConfig};
use crate::{Error, Result, Runtime};
use serde::Serialize;
use std::path::Path;

/// Settings of a Table 9 run (printed in the output header and stored in `table9.json`).
#[derive(Clone, Debug, Serialize)]
pub struct Table9Settings {
    pub batch_sizes: Vec<usize>,
    /// Train on the first N training images (60,000 = all).
    pub train_samples: usize,
    pub epochs: usize,
    pub lr: f64,
    /// `Some(B₀)`: Goyal et al. linear scaling lr·B/B₀ with warm-up; `None`: the same lr for all.
    pub lr_scale_base: Option<usize>,
    pub momentum: f64,
    pub seed: u64,
    /// λ₁^θ on the first N train / test images.
    pub hessian_samples: usize,
    /// λ₁^x, ‖∇ₓJ‖ and FGSM accuracy on the first N train / test images.
    pub input_samples: usize,
    pub lanczos_tol: f64,
    pub lanczos_max_iter: usize,
    pub chunk: usize,
    /// The paper's protocol: every batch size trained to the same state before it is measured.
    /// Training stops after the first epoch whose accuracy on the whole training subset reaches
    /// this; `epochs` is the cap. A row that does not reach it is marked (`converged: false`).
    pub target_train_accuracy: Option<f64>,
}

impl Table9Settings {
    /// `--quick`: three batch sizes (64, 256, 1024) on 2,000 training images, each trained to
    /// 99.9 % train accuracy (at most 150 epochs: B = 1024 needs ≈ 90), Hessians on 1,000
    /// samples; about a minute on a 2-core CPU.
    pub fn quick() -> Self {
        Table9Settings {
            batch_sizes: vec![64, 256, 1024],
            train_samples: 2_000,
            epochs: 150,
            lr: 0.02,
            lr_scale_base: None,
            momentum: 0.9,
            seed: 0,
            hessian_samples: 1000,
            input_samples: 1000,
            lanczos_tol: 1e-2,
            lanczos_max_iter: 40,
            chunk: 1000,
            target_train_accuracy: Some(0.999),
        }
    }
    /// The full run: the paper's six batch sizes, all 60,000 images, each trained to 99.9 % train
    /// accuracy (at most 60 epochs: B = 2048 is at 99.81 % after 40), Hessians on 5,000 samples
    /// (the stable regime per PyHessian's maintainers).
    pub fn full() -> Self {
        Table9Settings {
            batch_sizes: vec![64, 128, 256, 512, 1024, 2048],
            train_samples: 60_000,
            epochs: 60,
            hessian_samples: 5000,
            input_samples: 5000,
            lanczos_tol: 1e-3,
            lanczos_max_iter: 100,
            ..Self::quick()
        }
    }
    /// A short line for figure captions: data, samples, epochs, seed.
    pub fn caption(&self) -> String {
        format!(
            "MNIST, M1: {} training images, {}, SGD lr {}{}; λ₁^θ, FGSM on {} / {} images; seed {}",
            self.train_samples,
            self.stopping(),
            self.lr,
            if self.lr_scale_base.is_some() {
                " (scaled)"
            } else {
                ""
            },
            self.hessian_samples,
            self.input_samples,
            self.seed
        )
    }
    /// How long each batch size trains: to the target train accuracy (with the cap), or a fixed
    /// number of epochs.
    pub fn stopping(&self) -> String {
        match self.target_train_accuracy {
            Some(t) => format!(
                "trained to {}% train accuracy (≤ {})",
                t * 100.0,
                epochs(self.epochs)
            ),
            None => epochs(self.epochs),
        }
    }
    /// One line that says what the run does (printed above the table).
    pub fn describe(&self, dtype: candle_core::DType) -> String {
        let s = self;
        format!(
            "settings: batch sizes {:?}; {} training images, {}, SGD momentum {}, lr {}{}; λ₁^θ on the first {} train/test images (Lanczos, tol {}); λ₁^x, ‖∂ₓJ‖ (per-sample means) and FGSM on the first {} train/test images; seed {}; {:?}",
            s.batch_sizes, s.train_samples, s.stopping(), s.momentum, s.lr,
            match s.lr_scale_base {
                Some(b) => format!(" scaled linearly by B/{b} with 1 warm-up epoch"),
                None => " for every batch size (no scaling)".into(),
            },
            s.hessian_samples, s.lanczos_tol, s.input_samples, s.seed, dtype
        )
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(t) = self.target_train_accuracy {
            if !(t > 0.0 && t <= 1.0) {
                return Err(Error::invalid(
                    "target train accuracy",
                    format!("{t}: must be in (0, 1]"),
                ));
            }
        }
        if self.batch_sizes.is_empty() || self.batch_sizes.contains(&0) {
            return Err(Error::invalid(
                "batch sizes",
                "need ≥ 1 batch size, each ≥ 1",
            ));
        }
        for (n, v) in [
            ("train samples", self.train_samples),
            ("hessian samples", self.hessian_samples),
            ("input samples", self.input_samples),
            ("epochs", self.epochs),
        ] {
            if v == 0 {
                return Err(Error::invalid(n, "must be ≥ 1"));
            }
        }
        Ok(())
    }
}

/// "1 epoch", "n epochs".
fn epochs(n: usize) -> String {
    format!("{n} epoch{}", if n == 1 { "" } else { "s" })
}

/// A (train, test) pair of numbers.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TrainTest {
    pub train: f64,
    pub test: f64,
}

/// One row of Table 9.
#[derive(Clone, Debug, Serialize)]
pub struct Table9Row {
    pub batch_size: usize,
    pub lr: f64,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    pub lambda1_theta_train: f64,
    pub lambda1_theta_test: f64,
    pub lambda1_x_train: f64,
    pub lambda1_x_test: f64,
    pub grad_norm_x_train: f64,
    pub grad_norm_x_test: f64,
    /// FGSM accuracy keyed by ε ("0.2", "0.1").
    pub fgsm_accuracy: std::collections::BTreeMap<String, TrainTest>,
    pub train_seconds: f64,
    pub analysis_seconds: f64,
    /// Epochs and SGD steps the row trained for.
    pub epochs: usize,
    pub steps: usize,
    /// Mean cross-entropy on the training subset after training (eval mode).
    pub final_train_loss: f64,
    /// Whether the settings' target train accuracy was reached (always true without a target).
    pub converged: bool,
    /// Why training diverged, when it did (the row's measurements are then NaN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diverged: Option<String>,
}

/// Table 9 with its settings.
#[derive(Clone, Debug, Serialize)]
pub struct Table9 {
    pub rows: Vec<Table9Row>,
    pub settings: Table9Settings,
    pub seconds: f64,
}

/// Trains M1 on `train_split` at batch `b` with the settings' schedule.
pub fn train_m1(
    rt: &Runtime,
    train_split: &Split,
    b: usize,
    s: &Table9Settings,
    adversarial: Option<(AttackKind, f64, f64)>,
) -> Result<(Model, train::TrainReport)> {
    let m = Model::new(ModelKind::M1, rt, s.seed)?;
    let mut cfg = TrainConfig::new(s.epochs, b, s.lr);
    cfg.schedule = LrSchedule {
        lr: s.lr,
        milestones: vec![],
        gamma: 0.1,
        scale_from_batch: s.lr_scale_base,
        warmup_epochs: if s.lr_scale_base.is_some() { 1.0 } else { 0.0 },
    };
    cfg.momentum = s.momentum;
    cfg.seed = s.seed;
    cfg.progress = None;
    cfg.eval_train_samples = if s.target_train_accuracy.is_some() {
        usize::MAX
    } else {
        0
    };
    cfg.until_train_accuracy = s.target_train_accuracy;
    cfg.eval_test = false;
    cfg.micro_batch = 1024;
    let report = match adversarial {
        Some((k, eps, ratio)) => {
            let mut hook =
                move |m: &dyn Network, batch| attack::adversarial_batch(m, batch, k, eps, ratio);
            train::train(
                &m,
                train_split,
                &cfg,
                train::TrainWith {
                    batch_hook: Some(&mut hook),
                    ..Default::default()
                },
            )?
        }
        None => train::train(&m, train_split, &cfg, train::TrainWith::default())?,
    };
    Ok((m, report))
}

/// λ₁^θ (Lanczos) of the mean loss on `split` (streamed in chunks).
pub fn lambda1_theta(model: &dyn Network, split: &Split, s: &Table9Settings) -> Result<f64> {
    let src = DataSource::from_split(split, s.chunk, model.runtime())?;
    let op = HessianOperator::new(model, src)?;
    let r = curvature::lanczos(
        &op,
        1,
        &LanczosOpts {
            max_iter: s.lanczos_max_iter,
            tol: s.lanczos_tol,
            seed: s.seed,
        },
    )?;
    Ok(r.eigenvalues[0])
}

/// Mean λ₁^x and mean ‖∇ₓJ‖ over the samples of `split` (Theorem 1, chunks of 200).
pub fn input_means(model: &dyn Network, split: &Split) -> Result<(f64, f64)> {
    let s = curvature::InputHessianSummary::from_samples(&curvature::input_hessian_split(
        model,
        split,
        200,
        |_| (),
    )?);
    Ok((s.lambda1_x_mean, s.grad_norm_mean))
}

/// Runs Table 9: one M1 per batch size, then accuracies, λ₁^θ, λ₁^x, ‖∇ₓJ‖ and FGSM accuracy
/// (ε = 0.2, 0.1) on train and test. `on_row` is called as each row completes.
pub fn table9(
    rt: &Runtime,
    data_root: &Path,
    s: &Table9Settings,
    mut on_row: impl FnMut(&Table9Row),
) -> Result<Table9> {
    s.validate()?;
    let t0 = std::time::Instant::now();
    let train_all = data::load(DatasetKind::Mnist, SplitKind::Train, data_root)?;
    let test_all = data::load(DatasetKind::Mnist, SplitKind::Test, data_root)?;
    let train_split = train_all.first(s.train_samples.min(train_all.len()))?;
    let h_tr = train_split.first(s.hessian_samples.min(train_split.len()))?;
    let h_te = test_all.first(s.hessian_samples.min(test_all.len()))?;
    let x_tr = train_split.first(s.input_samples.min(train_split.len()))?;
    let x_te = test_all.first(s.input_samples.min(test_all.len()))?;
    let mut rows = vec![];
    for &b in &s.batch_sizes {
        let lr = match s.lr_scale_base {
            Some(b0) => s.lr * b as f64 / b0 as f64,
            None => s.lr,
        };
        let (m, report) = match train_m1(rt, &train_split, b, s, None) {
            Ok(x) => x,
            // a scaled learning rate can be too large for a batch size: a row that says so
            Err(Error::Diverged(why)) => {
                let row = Table9Row::diverged(b, lr, why);
                on_row(&row);
                rows.push(row);
                continue;
            }
            Err(e) => return Err(e),
        };
        let ta = std::time::Instant::now();
        // with a target, training's last evaluation already covered the whole training subset
        let (final_train_loss, train_accuracy) = match report.epochs.last() {
            Some(r) if s.target_train_accuracy.is_some() => {
                match (r.train_eval_loss, r.train_eval_accuracy) {
                    (Some(l), Some(a)) => (l, a),
                    _ => m.evaluate(&train_split, s.chunk)?,
                }
            }
            _ => m.evaluate(&train_split, s.chunk)?,
        };
        let (_, test_accuracy) = m.evaluate(&test_all, s.chunk)?;
        let l_tr = lambda1_theta(&m, &h_tr, s)?;
        let l_te = lambda1_theta(&m, &h_te, s)?;
        let (lx_tr, gx_tr) = input_means(&m, &x_tr)?;
        let (lx_te, gx_te) = input_means(&m, &x_te)?;
        let eps = [0.2, 0.1];
        let fgsm_on = |split| {
            attack::adversarial_accuracy(
                &m,
                split,
                AttackKind::Fgsm,
                &eps,
                &attack::SplitOpts::chunk(s.chunk),
            )
        };
        let (f_tr, f_te) = (fgsm_on(&x_tr)?, fgsm_on(&x_te)?);
        let mut fgsm = std::collections::BTreeMap::new();
        for i in 0..eps.len() {
            fgsm.insert(
                eps_key(eps[i]),
                TrainTest {
                    train: f_tr.per_eps[i].accuracy,
                    test: f_te.per_eps[i].accuracy,
                },
            );
        }
        let row = Table9Row {
            batch_size: b,
            lr,
            train_accuracy,
            test_accuracy,
            lambda1_theta_train: l_tr,
            lambda1_theta_test: l_te,
            lambda1_x_train: lx_tr,
            lambda1_x_test: lx_te,
            grad_norm_x_train: gx_tr,
            grad_norm_x_test: gx_te,
            fgsm_accuracy: fgsm,
            train_seconds: report.seconds,
            analysis_seconds: ta.elapsed().as_secs_f64(),
            epochs: report.epochs.len(),
            steps: report.iterations,
            final_train_loss,
            converged: report.reached.unwrap_or(true),
            diverged: None,
        };
        on_row(&row);
        rows.push(row);
    }
    Ok(Table9 {
        rows,
        settings: s.clone(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

impl Table9Row {
    /// The row of a batch size whose training diverged: every measurement NaN.
    fn diverged(batch_size: usize, lr: f64, why: String) -> Self {
        let nan = f64::NAN;
        Table9Row {
            batch_size,
            lr,
            train_accuracy: nan,
            test_accuracy: nan,
            lambda1_theta_train: nan,
            lambda1_theta_test: nan,
            lambda1_x_train: nan,
            lambda1_x_test: nan,
            grad_norm_x_train: nan,
            grad_norm_x_test: nan,
            fgsm_accuracy: Default::default(),
            train_seconds: 0.0,
            analysis_seconds: 0.0,
            epochs: 0,
            steps: 0,
            final_train_loss: nan,
            converged: false,
            diverged: Some(why),
        }
    }
    /// FGSM accuracy (train, test) at ε, one of the table's ε (0.1, 0.2); NaN for another ε, so
    /// a figure shows a gap rather than the program stopping.
    pub fn fgsm(&self, eps: f64) -> TrainTest {
        self.fgsm_accuracy
            .get(&eps_key(eps))
            .cloned()
            .unwrap_or(TrainTest {
                train: f64::NAN,
                test: f64::NAN,
            })
    }
}

/// The JSON key of an ε in `fgsm_accuracy` ("0.1", "0.2": a contract of table9.json).
pub fn eps_key(eps: f64) -> String {
    format!("{eps}")
}

impl Table9 {
    /// The batch sizes that are not comparable with the other rows: those that missed the
    /// target train accuracy (marked †) and those whose training diverged (‡, no measurements).
    pub fn not_comparable(&self) -> (Vec<usize>, Vec<usize>) {
        let missed = self
            .rows
            .iter()
            .filter(|r| !r.converged && r.diverged.is_none());
        let diverged = self.rows.iter().filter(|r| r.diverged.is_some());
        (
            missed.map(|r| r.batch_size).collect(),
            diverged.map(|r| r.batch_size).collect(),
        )
    }

    /// One line per mark the table uses (†, ‡), naming its batch sizes; none when every row
    /// trained to the target. The Markdown table and both figures carry them.
    pub fn footnotes(&self) -> Vec<String> {
        let (missed, diverged) = self.not_comparable();
        let list = |b: &[usize]| {
            b.iter()
                .map(|b| format!("B = {b}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = vec![];
        if let (Some(t), false) = (self.settings.target_train_accuracy, missed.is_empty()) {
            out.push(format!(
                "† {} did not reach {}% train accuracy within {}: not comparable with the other rows.",
                list(&missed),
                t * 100.0,
                epochs(self.settings.epochs)
            ));
        }
        if !diverged.is_empty() {
            out.push(format!(
                "‡ {}: training diverged at this learning rate (no measurements).",
                list(&diverged)
            ));
        }
        out
    }

    /// The table as Markdown, shaped like the paper's Table 9 (train, test in parentheses).
    pub fn markdown(&self) -> String {
        let mut s = String::from("| Batch | Acc | λ₁^θ | λ₁^x | ‖∂ₓJ‖ | Acc ε=0.2 | Acc ε=0.1 | Epochs (steps) | Train loss |\n|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let f = |k: &str| {
                r.fgsm_accuracy
                    .get(k)
                    .map(|t| format!("{:.2} ({:.2})", t.train, t.test))
                    .unwrap_or_default()
            };
            s += &format!(
                "| {}{} | {:.2} ({:.2}) | {:.3} ({:.3}) | {:.3} ({:.3}) | {:.4} ({:.4}) | {} | {} | {} ({}) | {:.4} |\n",
                r.batch_size,
                match (&r.diverged, r.converged) {
                    (Some(_), _) => " ‡",
                    (None, false) => " †",
                    (None, true) => "",
                },
                100.0 * r.train_accuracy,
                100.0 * r.test_accuracy,
                r.lambda1_theta_train,
                r.lambda1_theta_test,
                r.lambda1_x_train,
                r.lambda1_x_test,
                r.grad_norm_x_train,
                r.grad_norm_x_test,
                f("0.2"),
                f("0.1"),
                r.epochs,
                r.steps,
                r.final_train_loss
            );
        }
        for note in self.footnotes() {
            s += &format!("\n{note}\n");
        }
        s
    }
}

/// Fig. 13: spectral densities of the Hessian sub-sampled on B = 1, 320 and `full` samples.
pub fn spectra(
    model: &dyn Network,
    split: &Split,
    sizes: &[usize],
    opts: &SlqOpts,
    chunk: usize,
) -> Result<Vec<(usize, curvature::Density)>> {
    let mut out = vec![];
    for &n in sizes {
        let sub = split.first(n.min(split.len()))?;
        let src = DataSource::from_split(&sub, chunk, model.runtime())?;
        let op = HessianOperator::new(model, src)?;
        out.push((sub.len(), curvature::density(&op, opts)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row that trained (to the target or not) with made-up measurements.
    fn row(batch_size: usize, converged: bool) -> Table9Row {
        Table9Row {
            converged,
            diverged: None,
            train_accuracy: 0.99,
            epochs: 3,
            ..Table9Row::diverged(batch_size, 0.02, String::new())
        }
    }

    #[test]
    fn footnotes_name_the_rows_that_missed_the_target_or_diverged_in_table_and_figures() {
        let mut t = Table9 {
            rows: vec![
                row(64, true),
                row(256, false),
                Table9Row::diverged(1024, 0.02, "loss NaN".into()),
                row(2048, false),
            ],
            settings: Table9Settings::quick(),
            seconds: 0.0,
        };
        assert_eq!(t.not_comparable(), (vec![256, 2048], vec![1024]));
        let notes = t.footnotes();
        assert_eq!(notes.len(), 2);
        assert!(
            notes[0].starts_with(
                "† B = 256, B = 2048 did not reach 99.9% train accuracy within 150 epochs"
            ),
            "{notes:?}"
        );
        assert!(
            notes[1].starts_with("‡ B = 1024: training diverged"),
            "{notes:?}"
        );
        let md = t.markdown();
        assert!(md.contains("| 256 † |") && md.contains("| 1024 ‡ |") && md.contains("| 64 |"));
        assert!(notes.iter().all(|n| md.contains(n.as_str())), "{md}");
        for f in crate::reproduce::figures::table9_figures(&t).unwrap() {
            let c = f.caption.clone().unwrap_or_default();
            assert!(notes.iter().all(|n| c.contains(n.as_str())), "{c}");
        }
        // every row at the target: no marks, no footnotes
        t.rows = vec![row(64, true), row(128, true)];
        assert!(t.footnotes().is_empty());
        assert!(!t.markdown().contains('†') && !t.markdown().contains('‡'));
        let f = crate::reproduce::figures::table9_figures(&t).unwrap();
        assert_eq!(f[0].caption.as_deref(), Some(t.settings.caption().as_str()));
    }
}
