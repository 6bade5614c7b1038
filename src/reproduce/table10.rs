//! Table 10: C1 on CIFAR-10 at large batch sizes — the baseline, Goyal et al.'s linear LR
//! scaling, and FGSM robust training (test accuracy of each).

use crate::attack::AttackKind;
use crate::data::{self, DatasetKind, Split, SplitKind};
use crate::models::{Model, ModelConfig, ModelKind, Network};
use crate::train::{self, TrainConfig};
use crate::{Error, Result, Runtime};
use serde::Serialize;
use std::path::PathBuf;

/// Which data Table 10 is computed on.
#[derive(Clone, Debug)]
pub enum Table10Data {
    /// The official CIFAR-10 binary files in this folder.
    Cifar10(PathBuf),
    /// The shipped 2,000-image cat/dog sample under this data root: every fifth image is held
    /// out (200 of each class), the other 1,600 train.
    Sample(PathBuf),
}

/// Settings of a Table 10 run.
#[derive(Clone, Debug)]
pub struct Table10Settings {
    pub data: Table10Data,
    /// Empty: 8,000…50,000 on CIFAR-10, 200…1,600 on the sample.
    pub batch_sizes: Vec<usize>,
    /// `None`: 30 on CIFAR-10 (3 when `quick`), 3 on the sample.
    pub epochs: Option<usize>,
    pub quick: bool,
    pub seed: u64,
}

/// One row: test accuracy of each variant at one batch size.
#[derive(Clone, Debug, Serialize)]
pub struct Table10Row {
    pub batch_size: usize,
    pub baseline: f64,
    pub lr_scaling: f64,
    pub robust: f64,
}

/// Table 10 with what it was computed on (`table10.json`: rows, epochs, sample).
#[derive(Clone, Debug, Serialize)]
pub struct Table10 {
    pub rows: Vec<Table10Row>,
    pub epochs: usize,
    pub sample: bool,
    /// The settings line printed above the table.
    #[serde(skip)]
    pub header: String,
}

impl Table10 {
    /// The table as Markdown (accuracies in %).
    pub fn markdown(&self) -> String {
        let mut s = String::from("| Batch | Baseline | LR scaling | Robust |\n|---|---|---|---|\n");
        for r in &self.rows {
            s += &r.markdown_line();
        }
        s
    }
}

impl Table10Row {
    pub fn markdown_line(&self) -> String {
        format!(
            "| {} | {:.2} | {:.2} | {:.2} |\n",
            self.batch_size,
            100.0 * self.baseline,
            100.0 * self.lr_scaling,
            100.0 * self.robust
        )
    }
}

/// Trains C1 three ways at each batch size and evaluates it. `report` receives the report as
/// it grows: the settings line, the table's head, then each row (Markdown) when it is done.
/// Cost: 3 × |batch sizes| trainings of `epochs` epochs.
pub fn table10(rt: &Runtime, s: &Table10Settings, mut report: impl FnMut(&str)) -> Result<Table10> {
    let (train_split, test_split, default_bs, sample): (Split, Split, Vec<usize>, bool) =
        match &s.data {
            Table10Data::Cifar10(dir) => (
                data::load_from_dir(DatasetKind::Cifar10, SplitKind::Train, dir)?,
                data::load_from_dir(DatasetKind::Cifar10, SplitKind::Test, dir)?,
                vec![8000, 16000, 32000, 50000],
                false,
            ),
            Table10Data::Sample(root) => {
                // The sample file holds 1,000 dogs then 1,000 cats.
                let all = data::load(DatasetKind::Cifar10Sample, SplitKind::Train, root)?;
                let (tr, ho): (Vec<usize>, Vec<usize>) = (0..all.len()).partition(|i| i % 5 != 4);
                (
                    all.select(&tr)?,
                    all.select(&ho)?,
                    vec![200, 400, 800, 1600],
                    true,
                )
            }
        };
    let bs = if s.batch_sizes.is_empty() {
        default_bs
    } else {
        s.batch_sizes.clone()
    };
    if bs.contains(&0) {
        return Err(Error::invalid("batch sizes", "must be ≥ 1"));
    }
    let epochs = s.epochs.unwrap_or(if s.quick || sample { 3 } else { 30 });
    let header = format!(
        "# Table 10 — C1 on {} ({} training images; accuracy on {} {} images); {} epochs, SGD momentum 0.9, lr 0.02 (baseline), lr·B/{} with warm-up (LR scaling), FGSM ε=0.01 on half of each batch (robust); micro-batches of 1024 (BatchNorm sees ghost batches)",
        if sample { "the shipped CIFAR-10 sample (cats and dogs only)" } else { "CIFAR-10" },
        train_split.len(),
        test_split.len(),
        if sample { "held-out sample (every 5th image; cats and dogs balanced)" } else { "test" },
        epochs,
        bs[0]
    );
    report(&header);
    report("\n| Batch | Baseline | LR scaling | Robust |\n|---|---|---|---|");
    let mut rows = vec![];
    for &b in &bs {
        let mut accs = vec![];
        for variant in ["baseline", "scaled", "robust"] {
            let m = Model::from_config(
                ModelConfig::for_dataset(ModelKind::C1, DatasetKind::Cifar10),
                rt,
                s.seed,
            )?;
            let mut cfg = TrainConfig::new(epochs, b.min(train_split.len()), 0.02);
            cfg.eval_train_samples = 0;
            cfg.eval_test = false;
            cfg.seed = s.seed;
            if variant == "scaled" {
                cfg.schedule.scale_from_batch = Some(bs[0]);
                cfg.schedule.warmup_epochs = 1.0;
            }
            let mut adv = |m: &dyn Network, batch| {
                crate::attack::adversarial_batch(m, batch, AttackKind::Fgsm, 0.01, 0.5)
            };
            let hook: Option<&mut train::BatchHook<'_>> = if variant == "robust" {
                Some(&mut adv)
            } else {
                None
            };
            train::train(
                &m,
                &train_split,
                &cfg,
                train::TrainWith {
                    batch_hook: hook,
                    ..Default::default()
                },
            )?;
            accs.push(m.evaluate(&test_split, 500)?.1);
        }
        let row = Table10Row {
            batch_size: b,
            baseline: accs[0],
            lr_scaling: accs[1],
            robust: accs[2],
        };
        report(row.markdown_line().trim_end());
        rows.push(row);
    }
    Ok(Table10 {
        rows,
        epochs,
        sample,
        header,
    })
}
