//! The paper's figures as library calls: Fig. 8 (1-D landscape along v₁), Fig. 11
//! (interpolation clean → robust with λ₁ along the path), Fig. 13 (spectra of sub-sampled
//! Hessians), Fig. 15 (2-D landscape along v₁, v₂), Fig. 17 (λ₁^θ and ‖g‖ per epoch), and the two
//! figures of Table 9. Each returns a [`FigureResult`]: the figure, its data as JSON (the keys
//! the CLI writes to `<name>.json`) and the lines worth printing. Nothing is written to disk
//! except the trained models' cache when [`FigSettings::cache_dir`] is set.

use super::{Table9, Table9Row, Table9Settings};
use crate::attack::AttackKind;
use crate::curvature::{DataSource, LanczosOpts, SlqOpts};
use crate::data::{self, DatasetKind, Split, SplitKind};
use crate::landscape;
use crate::models::{Model, ModelKind, Network};
use crate::plot::{self, Figure, Line};
use crate::progress::{Progress, Reporter};
use crate::train::{self, TrainConfig};
use crate::{Result, Runtime};
use serde_json::json;
use std::path::PathBuf;

/// What every figure is computed from: M1 on MNIST, trained clean and FGSM-robust.
#[derive(Clone, Debug)]
pub struct FigSettings {
    /// Quick: 10,000 training images, 2 epochs, evaluations on 2,000 images; else all 60,000,
    /// 10 epochs, 10,000.
    pub quick: bool,
    pub seed: u64,
    /// The folder that holds `mnist/`.
    pub data_dir: PathBuf,
    /// Trained models are saved here and reused by later figures (`None`: trained each time).
    pub cache_dir: Option<PathBuf>,
    /// Where training and long loops report progress (`None`: silent).
    pub progress: Option<Reporter>,
}

impl FigSettings {
    pub fn new(quick: bool, data_dir: impl Into<PathBuf>) -> Self {
        FigSettings {
            quick,
            seed: 0,
            data_dir: data_dir.into(),
            cache_dir: None,
            progress: None,
        }
    }
    fn progress(&self) -> Option<&dyn Progress> {
        self.progress.as_ref().map(|r| r.as_dyn())
    }
    fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// A figure with its data and the lines a report prints.
pub struct FigureResult {
    /// `fig8`, `fig11`, …: the file name the CLI uses.
    pub name: &'static str,
    pub figure: Figure,
    /// The figure's data (and settings) as JSON.
    pub data: serde_json::Value,
    /// Settings and per-point values, one line each.
    pub notes: Vec<String>,
}

struct Setup {
    rt: Runtime,
    train: Split,
    test: Split,
    epochs: usize,
    eval_n: usize,
    notes: Vec<String>,
}

fn setup(rt: &Runtime, s: &FigSettings) -> Result<Setup> {
    let (n, epochs, eval_n) = s.pick((10_000, 2, 2000), (60_000, 10, 10_000));
    let train = data::load(DatasetKind::Mnist, SplitKind::Train, &s.data_dir)?.first(n)?;
    let test = data::load(DatasetKind::Mnist, SplitKind::Test, &s.data_dir)?;
    let notes = vec![format!(
        "settings: M1 trained on {n} MNIST images for {epochs} epochs at batch 128 (lr 0.02, \
         momentum 0.9, seed {}); robust = FGSM ε=0.1 on half of each batch; evaluations on \
         {eval_n} images; {}",
        s.seed,
        s.pick("quick", "full")
    )];
    Ok(Setup {
        rt: rt.clone(),
        train,
        test,
        epochs,
        eval_n,
        notes,
    })
}

/// How the robust models are trained, for captions of figures that draw one.
const ROBUST: &str = "robust: FGSM ε = 0.1 on half of each batch; ";

impl Setup {
    /// The caption line of a figure drawn from M1 trained on these settings; `what` adds the
    /// figure's own settings (ending in "; ").
    fn caption(&self, seed: u64, what: &str) -> String {
        format!(
            "MNIST, M1 trained {} epochs on {} images; {what}seed {seed}",
            self.epochs,
            self.train.len()
        )
    }
}

/// Train and test evaluation sources (first `eval_n` images of each).
fn eval_sources(f: &Setup) -> Result<(DataSource, DataSource)> {
    let src = |split: &Split| -> Result<DataSource> {
        Ok(DataSource::Split {
            split: split.first(f.eval_n)?,
            chunk: 1000,
        })
    };
    Ok((src(&f.train)?, src(&f.test)?))
}

/// The clean and the FGSM-robust M1 of these settings, from the cache when it holds them.
fn clean_and_robust(s: &FigSettings, f: &Setup) -> Result<(Model, Model)> {
    let mut ts = Table9Settings::quick();
    ts.epochs = f.epochs;
    ts.seed = s.seed;
    // the figures train for a fixed number of epochs (their captions say how many)
    ts.target_train_accuracy = None;
    let tag = format!("n{}_e{}_s{}", f.train.len(), f.epochs, s.seed);
    let get = |name: &str, adv: Option<(AttackKind, f64, f64)>| -> Result<Model> {
        let path = s
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("m1_{name}_{tag}.safetensors")));
        if let Some(p) = path.as_ref().filter(|p| p.exists()) {
            if let Some(pr) = s.progress() {
                pr.log(&format!("reusing {}", p.display()));
            }
            return Model::load(ModelKind::M1, p, &f.rt);
        }
        if let Some(pr) = s.progress() {
            pr.log(&format!("training the {name} M1 ..."));
        }
        let (m, _) = super::train_m1(&f.rt, &f.train, 128, &ts, adv)?;
        if let Some(p) = &path {
            m.save(p)?;
        }
        Ok(m)
    };
    Ok((
        get("clean", None)?,
        get("robust", Some((AttackKind::Fgsm, 0.1, 0.5)))?,
    ))
}

fn lanczos(max_iter: usize, tol: f64, seed: u64) -> LanczosOpts {
    LanczosOpts {
        max_iter,
        tol,
        seed,
    }
}

/// Fig. 13: spectral densities (SLQ) of the Hessian sub-sampled on 1, 320 and the full set of
/// training images, clean vs robust M1.
pub fn fig13(rt: &Runtime, s: &FigSettings) -> Result<FigureResult> {
    let mut f = setup(rt, s)?;
    let (clean, robust) = clean_and_robust(s, &f)?;
    let full = s.pick(2000, f.train.len());
    // Lanczos steps: one full-set HVP of M1 takes 12–20 s on a 2-core CPU, so the full run's 30
    // steps (two models) are 12–20 min; 30 steps resolve the spectrum's edge and its bulk, not
    // the fine structure PyHessian's default 100 would
    let iter = s.pick(40, 30);
    f.notes.push(format!(
        "spectra of the Hessian on the first 1, 320 and {full} training images (SLQ, {iter} Lanczos steps)"
    ));
    let opts = SlqOpts {
        iter,
        grid: 2000,
        seed: s.seed,
        ..Default::default()
    };
    let (mut js, mut spectra) = (vec![], vec![]);
    for (name, m) in [("clean", &clean), ("robust", &robust)] {
        let sp = super::spectra(m, &f.train, &[1, 320, full], &opts, 1000)?;
        for (n, d) in &sp {
            let nodes = d.nodes.iter().flatten().cloned();
            let (lo, hi) = nodes.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                (a.min(x), b.max(x))
            });
            f.notes
                .push(format!("{name:6} B={n:5}: λ range [{lo:.3e}, {hi:.3e}]"));
            js.push(json!({"model": name, "samples": n, "density": d}));
        }
        spectra.push(sp);
    }
    // one panel per sub-sample size, clean and robust overlaid on one axis
    let mut figs = vec![];
    for ((n, dc), (_, dr)) in spectra[0].iter().zip(&spectra[1]) {
        figs.push(plot::densities_figure(
            &format!("Hessian spectrum, B = {n}"),
            &[
                ("clean", dc, plot::colors::TRAIN),
                ("robust", dr, plot::colors::ROBUST),
            ],
        )?);
    }
    Ok(FigureResult {
        name: "fig13",
        figure: Figure::panels(figs, 3)?.with_caption(f.caption(
            s.seed,
            &format!("{ROBUST}SLQ, {iter} Lanczos steps, Hessian on the first 1 / 320 / {full} training images; "),
        )),
        data: json!({ "spectra": js }),
        notes: f.notes,
    })
}

/// Fig. 8 (`two_d` false: loss along v₁ on a batch, train and test) or Fig. 15 (`two_d`: the
/// loss surface along v₁, v₂), v₁, v₂ the top Hessian eigenvectors of the clean M1 on 320
/// training images.
pub fn fig_landscape(rt: &Runtime, s: &FigSettings, two_d: bool) -> Result<FigureResult> {
    let mut f = setup(rt, s)?;
    let (clean, _) = clean_and_robust(s, &f)?;
    let batch = DataSource::Batch(f.train.first(320)?.to_batch(&f.rt)?);
    let (vals, vecs) = landscape::eigen_directions(&clean, &batch, 2, &lanczos(80, 1e-3, s.seed))?;
    f.notes.push(format!(
        "v₁, v₂ from the Hessian on the first 320 training images: λ = {vals:?}"
    ));
    let (figure, value) = if two_d {
        let g = landscape::linspace(-1.0, 1.0, s.pick(11, 21))?;
        let surf = landscape::landscape_2d(
            &clean,
            &landscape::Plane {
                d1: &vecs[0],
                d2: &vecs[1],
                alphas: &g,
                betas: &g,
            },
            &batch,
            s.progress(),
        )?;
        (
            plot::surface_figure(&surf, "M1: loss on θ + α v₁ + β v₂ (320 train images)")?
                .with_caption(f.caption(s.seed, &format!("{}×{} grid; ", g.len(), g.len()))),
            serde_json::to_value(&surf)?,
        )
    } else {
        let (tr, te) = eval_sources(&f)?;
        let g = landscape::linspace(-1.0, 1.0, s.pick(21, 41))?;
        let c = landscape::landscape_1d(
            &clean,
            &vecs[0],
            &g,
            &[("batch (320)", &batch), ("train", &tr), ("test", &te)],
            s.progress(),
        )?;
        (
            // the paper's Fig. 8 draws the loss on a logarithmic axis
            plot::landscape_figure(&c, "M1: loss along v₁", "ε", true)?
                .with_caption(f.caption(s.seed, "")),
            serde_json::to_value(&c)?,
        )
    };
    Ok(FigureResult {
        name: if two_d { "fig15" } else { "fig8" },
        figure,
        data: json!({"eigenvalues": vals, "data": value}),
        notes: f.notes,
    })
}

/// Fig. 11: loss on train and test and λ₁ along (1−t)·θ_clean + t·θ_robust.
pub fn fig11(rt: &Runtime, s: &FigSettings) -> Result<FigureResult> {
    let mut f = setup(rt, s)?;
    let (clean, robust) = clean_and_robust(s, &f)?;
    let (tr, te) = eval_sources(&f)?;
    let hb = DataSource::Batch(f.train.first(320)?.to_batch(&f.rt)?);
    let lams = landscape::linspace(-0.5, 1.5, s.pick(9, 21))?;
    let c = landscape::interpolate(
        &clean,
        &robust,
        &lams,
        &[("train", &tr), ("test", &te)],
        Some((&hb, &lanczos(40, 1e-2, s.seed))),
        s.progress(),
    )?;
    for (i, l) in lams.iter().enumerate() {
        f.notes.push(format!(
            "λ={l:+.2}: train loss {:.4}, test loss {:.4}, λ₁ {:.3}",
            c.series[0].loss[i], c.series[1].loss[i], c.lambda1[i]
        ));
    }
    Ok(FigureResult {
        name: "fig11",
        figure: plot::landscape_figure(&c, "M1: (1−t)·clean + t·robust", "t", true)?.with_caption(
            f.caption(
                s.seed,
                &format!(
                    "{ROBUST}loss on {} train/test images, λ₁ on 320; ",
                    f.eval_n
                ),
            ),
        ),
        data: json!({ "data": c }),
        notes: f.notes,
    })
}

/// Fig. 17: λ₁^θ (on 320 training images) and ‖g‖ after each epoch, for batch 128, batch 2048
/// and batch 128 with FGSM robust training.
pub fn fig17(rt: &Runtime, s: &FigSettings) -> Result<FigureResult> {
    let mut f = setup(rt, s)?;
    // at least three epochs, for a curve
    f.epochs = f.epochs.max(3);
    let hb = DataSource::Batch(f.train.first(320)?.to_batch(&f.rt)?);
    let runs: [(&str, usize, bool); 3] = [
        ("B=128", 128, false),
        ("B=2048", 2048, false),
        ("B=128 robust", 128, true),
    ];
    let (mut l1s, mut gns) = (vec![], vec![]);
    for (name, b, robust) in runs {
        if let Some(pr) = s.progress() {
            pr.log(&format!("training {name} with λ₁ tracking ..."));
        }
        let m = Model::new(ModelKind::M1, &f.rt, s.seed)?;
        let mut cfg = TrainConfig::new(f.epochs, b, 0.02);
        cfg.eval_train_samples = 0;
        cfg.seed = s.seed;
        let mut hook = landscape::curvature_epoch_hook(hb.clone(), lanczos(40, 1e-2, s.seed));
        let mut adv = |m: &dyn Network, batch| {
            crate::attack::adversarial_batch(m, batch, AttackKind::Fgsm, 0.1, 0.5)
        };
        let rep = train::train(
            &m,
            &f.train,
            &cfg,
            train::TrainWith {
                test: Some(&f.test),
                batch_hook: if robust { Some(&mut adv) } else { None },
                epoch_hook: Some(hook.as_mut()),
            },
        )?;
        let series = |f: fn(&train::EpochRecord) -> Option<f64>| -> Vec<f64> {
            rep.epochs
                .iter()
                .map(|e| f(e).unwrap_or(f64::NAN))
                .collect()
        };
        let (l1, gn) = (series(|e| e.lambda1), series(|e| e.grad_norm));
        f.notes
            .push(format!("{name}: λ₁ per epoch {l1:.3?}, ‖g‖ {gn:.4?}"));
        l1s.push((name.to_string(), l1));
        gns.push((name.to_string(), gn));
    }
    let figure = Figure::panels(
        vec![
            plot::per_epoch_figure(
                "λ₁^θ per epoch (320 train images)",
                "λ₁^θ",
                l1s.clone(),
                true,
            )?,
            plot::per_epoch_figure("‖g‖ per epoch", "‖g‖", gns.clone(), true)?,
        ],
        2,
    )?
    .with_caption(f.caption(
        s.seed,
        &format!("lr 0.02, {ROBUST}λ₁^θ by Lanczos on 320 images; "),
    ));
    Ok(FigureResult {
        name: "fig17",
        figure,
        data: json!({"lambda1": l1s, "grad_norm": gns}),
        notes: f.notes,
    })
}

/// The paper's Table 9 (M1 on MNIST): batch size, λ₁^θ train, test, FGSM accuracy at ε = 0.2
/// train, test, at ε = 0.1 train, test.
pub const PAPER_TABLE9: [(usize, f64, f64, f64, f64, f64, f64); 6] = [
    (64, 0.49, 2.96, 0.53, 0.53, 0.85, 0.85),
    (128, 1.44, 8.10, 0.50, 0.51, 0.83, 0.83),
    (256, 2.71, 13.54, 0.45, 0.46, 0.81, 0.82),
    (512, 5.84, 26.35, 0.42, 0.42, 0.79, 0.80),
    (1024, 21.24, 36.96, 0.32, 0.33, 0.73, 0.74),
    (2048, 44.30, 49.36, 0.19, 0.19, 0.72, 0.73),
];

/// Table 9's two figures: λ₁^θ vs batch size (train, test; log-log) and FGSM accuracy vs batch
/// size (on [0, 1]), batch sizes on a log₂ axis, the paper's values dashed; the caption carries
/// the table's footnotes (rows that missed the train-accuracy target or diverged).
pub fn table9_figures(t: &Table9) -> Result<[Figure; 2]> {
    use plot::colors::{TEST, TRAIN};
    let bs: Vec<f64> = t.rows.iter().map(|r| r.batch_size as f64).collect();
    let line = |f: &dyn Fn(&Table9Row) -> f64, label: &str, c: usize| {
        Line::new(label, bs.clone(), t.rows.iter().map(f).collect())
            .markers()
            .color(c)
    };
    type PaperRow = (usize, f64, f64, f64, f64, f64, f64);
    let pb: Vec<f64> = PAPER_TABLE9.iter().map(|r| r.0 as f64).collect();
    let paper = |f: fn(&PaperRow) -> f64, label: &str, c: usize| {
        Line::new(label, pb.clone(), PAPER_TABLE9.iter().map(f).collect())
            .dashed()
            .color(c)
    };
    // rows unlike the others are drawn like them, so the caption says which they are (a line
    // each)
    let caption = std::iter::once(t.settings.caption())
        .chain(t.footnotes())
        .collect::<Vec<_>>()
        .join("\n");
    Ok([
        Figure::lines(
            "M1: λ₁^θ vs batch size",
            "batch size",
            "λ₁^θ",
            vec![
                line(&|r| r.lambda1_theta_train, "train", TRAIN),
                line(&|r| r.lambda1_theta_test, "test", TEST),
                paper(|r| r.1, "paper, train", TRAIN),
                paper(|r| r.2, "paper, test", TEST),
            ],
            true,
        )?
        .log2_x()
        .with_caption(caption.clone()),
        Figure::lines(
            "M1: FGSM accuracy vs batch size",
            "batch size",
            "accuracy under FGSM",
            vec![
                line(&|r| r.fgsm(0.1).train, "ε=0.1 train", TRAIN),
                line(&|r| r.fgsm(0.1).test, "ε=0.1 test", TEST),
                line(&|r| r.fgsm(0.2).train, "ε=0.2 train", 2),
                line(&|r| r.fgsm(0.2).test, "ε=0.2 test", 4),
                paper(|r| r.5, "paper ε=0.1, train", TRAIN),
                paper(|r| r.3, "paper ε=0.2, train", 2),
            ],
            false,
        )?
        .log2_x()
        .y_range(0.0, 1.0)
        .with_caption(caption),
    ])
}
