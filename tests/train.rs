//! A tiny training run lowers the loss; SGD matches its closed form; LR schedules.
mod common;

use common::*;
use hessian_lab::data::{DatasetKind, SplitKind};
use hessian_lab::models::{Model, ModelConfig, ModelKind};
use hessian_lab::train::{self, LrSchedule, Sgd, TrainConfig};
use hessian_lab::Error;

#[test]
fn tiny_training_run_lowers_the_loss() {
    let rt = rt32();
    let split = hessian_lab::data::load(DatasetKind::Mnist, SplitKind::Train, data_dir())
        .unwrap()
        .first(512)
        .unwrap();
    let m = Model::from_config(
        ModelConfig::for_dataset(ModelKind::Mlp, DatasetKind::Mnist),
        &rt,
        0,
    )
    .unwrap();
    let (l0, _) = m.evaluate(&split, 256).unwrap();
    let mut cfg = TrainConfig::new(3, 64, 0.05);
    cfg.progress = None;
    cfg.eval_train_samples = 512;
    cfg.eval_test = false;
    let rep = train::train(&m, &split, &cfg, train::TrainWith::default()).unwrap();
    let (l1, a1) = m.evaluate(&split, 256).unwrap();
    assert!(l1 < 0.5 * l0, "loss {l0} -> {l1}");
    assert!(a1 > 0.8, "accuracy {a1}");
    assert_eq!(rep.epochs.len(), 3);
    assert_eq!(rep.iterations, 3 * 8);
    assert!(rep.epochs[2].train_loss < rep.epochs[0].train_loss);
    // Same seed, same result.
    let m2 = Model::from_config(
        ModelConfig::for_dataset(ModelKind::Mlp, DatasetKind::Mnist),
        &rt,
        0,
    )
    .unwrap();
    train::train(&m2, &split, &cfg, train::TrainWith::default()).unwrap();
    assert_eq!(
        to_vec(m.params()[0].1.as_tensor()),
        to_vec(m2.params()[0].1.as_tensor())
    );
}

#[test]
fn gradient_accumulation_equals_the_full_batch_gradient() {
    let rt = rt64();
    let m = Model::from_config(ModelConfig::tiny(ModelKind::Mlp, [1, 4, 4], 3, 5), &rt, 1).unwrap();
    let b = random_batch(10, [1, 4, 4], 3, 3, &rt);
    let (l_full, g_full) = train::batch_gradient(&m, &b, 10, false).unwrap();
    let (l_acc, g_acc) = train::batch_gradient(&m, &b, 3, false).unwrap();
    assert!((l_full - l_acc).abs() < 1e-12);
    for (a, c) in g_full.iter().zip(&g_acc) {
        assert!(max_abs_diff(&to_vec(a), &to_vec(c)) < 1e-12);
    }
}

#[test]
fn sgd_momentum_weight_decay_closed_form() {
    // f(θ) = ½θ², g = θ. PyTorch: d = g + λθ; b = μb + d; θ -= ηb.
    let v = candle_core::Var::new(&[1.0f64], &candle_core::Device::Cpu).unwrap();
    let mut opt = Sgd::new(vec![v.clone()], 0.9, 0.1).unwrap();
    let (mut th, mut buf, eta) = (1.0f64, 0.0f64, 0.1);
    for i in 0..5 {
        let g = v.as_tensor().clone();
        opt.step(&[g], eta).unwrap();
        let d = th + 0.1 * th;
        buf = if i == 0 { d } else { 0.9 * buf + d };
        th -= eta * buf;
        assert!((v.as_tensor().to_vec1::<f64>().unwrap()[0] - th).abs() < 1e-14);
    }
    assert!(matches!(
        Sgd::new(vec![], 1.5, 0.0),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn lr_schedules() {
    let s = LrSchedule {
        lr: 0.1,
        milestones: vec![2, 4],
        gamma: 0.1,
        scale_from_batch: None,
        warmup_epochs: 0.0,
    };
    assert_eq!(s.at(0.0, 512), 0.1);
    assert!((s.at(2.0, 512) - 0.01).abs() < 1e-15);
    assert!((s.at(4.5, 512) - 0.001).abs() < 1e-15);
    // Goyal: η = η₀·B/B₀ after a linear warm-up from η₀.
    let g = LrSchedule {
        lr: 0.1,
        milestones: vec![],
        gamma: 0.1,
        scale_from_batch: Some(128),
        warmup_epochs: 2.0,
    };
    assert!((g.peak(1024) - 0.8).abs() < 1e-15);
    assert!((g.at(0.0, 1024) - 0.1).abs() < 1e-15);
    assert!((g.at(1.0, 1024) - 0.45).abs() < 1e-15);
    assert!((g.at(3.0, 1024) - 0.8).abs() < 1e-15);
    assert!(LrSchedule::constant(-1.0).validate().is_err());
    let mut c = TrainConfig::new(0, 1, 0.1);
    assert!(c.validate().is_err());
    c.epochs = 1;
    c.batch_size = 0;
    assert!(c.validate().is_err());
}

/// The Fig. 17 hook records, after each epoch, λ₁^θ and ‖g‖ of the model as it is then: the
/// last epoch's values must equal those of the trained model, computed independently (power
/// iteration instead of Lanczos; a plain gradient).
#[test]
fn curvature_epoch_hook_records_the_models_lambda1_and_gradient_norm() {
    use hessian_lab::curvature::{
        self, DataSource, HessianOperator, LanczosOpts, ParamSelection, PowerOpts,
    };
    let rt = rt64();
    let split = synthetic_split(96, 4);
    let m = Model::from_config(
        ModelConfig::for_dataset(ModelKind::LogReg, DatasetKind::Mnist),
        &rt,
        0,
    )
    .unwrap();
    let src = DataSource::Batch(split.first(64).unwrap().to_batch(&rt).unwrap());
    let mut hook = hessian_lab::landscape::curvature_epoch_hook(
        src.clone(),
        LanczosOpts {
            max_iter: 200,
            tol: 1e-10,
            seed: 0,
        },
    );
    let mut cfg = TrainConfig::new(2, 32, 0.05);
    cfg.eval_train_samples = 0;
    cfg.eval_test = false;
    let with = train::TrainWith {
        epoch_hook: Some(hook.as_mut()),
        ..Default::default()
    };
    let rep = train::train(&m, &split, &cfg, with).unwrap();
    assert!(rep
        .epochs
        .iter()
        .all(|e| e.lambda1.is_some() && e.grad_norm.is_some()));
    let last = rep.epochs.last().unwrap();
    let op = HessianOperator::new(&m, src.clone()).unwrap();
    let power = curvature::top_eigen(
        &op,
        1,
        &PowerOpts {
            max_iter: 2000,
            tol: 1e-12,
            ..Default::default()
        },
    )
    .unwrap();
    let l1 = last.lambda1.unwrap();
    assert!(
        (l1 - power.eigenvalues[0]).abs() < 1e-6 * l1,
        "{l1} vs {:?}",
        power.eigenvalues
    );
    let DataSource::Batch(b) = &src else {
        unreachable!()
    };
    let (_, g) = curvature::hvp::gradient(&m, b, &ParamSelection::all(&m)).unwrap();
    let gn = g.norm().unwrap();
    assert!((last.grad_norm.unwrap() - gn).abs() < 1e-10 * gn.max(1.0));
    // typed fields, and the JSON log keeps their names
    let js = serde_json::to_value(last).unwrap();
    assert_eq!(js["lambda1"].as_f64(), Some(l1));
}
