//! Attacks: exact norms, clipping, projections, Newton directions against the dense
//! pseudo-inverse, ascent, monotonicity on a trained M1, robust training.
mod common;

use candle_core::{DType, Tensor};
use common::*;
use hessian_lab::attack::{self, *};
use hessian_lab::curvature::{input_gradient, input_hessian};
use hessian_lab::data::{DatasetKind, SplitKind};
use hessian_lab::models::{Activation, Model, ModelConfig, ModelKind};
use hessian_lab::train::{self, TrainConfig};
use hessian_lab::Error;
use nalgebra::DVector;

fn tiny() -> (Model, hessian_lab::data::Batch) {
    let rt = rt64();
    let m = Model::from_config(ModelConfig::tiny(ModelKind::Mlp, [1, 3, 3], 4, 6), &rt, 3).unwrap();
    let b = random_batch(12, [1, 3, 3], 4, 5, &rt);
    (m, b)
}

fn all_kinds() -> Vec<AttackKind> {
    vec![
        AttackKind::Fgsm,
        AttackKind::L2Grad,
        AttackKind::Fhsm(NewtonSolver::Exact),
        AttackKind::L2Hess(NewtonSolver::Exact),
    ]
}

#[test]
fn perturbations_have_the_promised_norms_and_ascend() {
    let (m, b) = tiny();
    let (_, g) = input_gradient(&m, &b).unwrap();
    let gnorm = to_vec(&attack::l2_norms(&g).unwrap());
    for kind in all_kinds() {
        let eps = 0.07;
        let d = perturbation(&m, &b, kind, eps).unwrap();
        let linf = to_vec(&attack::linf_norms(&d).unwrap());
        let l2 = to_vec(&attack::l2_norms(&d).unwrap());
        let gd = to_vec(&(&g * &d).unwrap().flatten_from(1).unwrap().sum(1).unwrap());
        for i in 0..b.len() {
            assert!(gnorm[i] > 0.0);
            match kind {
                AttackKind::Fgsm | AttackKind::Fhsm(_) => {
                    assert!((linf[i] - eps).abs() < 1e-15, "{kind:?}")
                }
                _ => assert!((l2[i] - eps).abs() < 1e-12, "{kind:?} {}", l2[i]),
            }
            assert!(gd[i] > 0.0, "{kind:?}: gᵀΔx = {} on sample {i}", gd[i]);
        }
    }
}

#[test]
fn adversarial_inputs_stay_in_the_box_and_the_ball() {
    let (m, b) = tiny();
    let x = to_vec(&b.x);
    let mut kinds = all_kinds();
    kinds.push(AttackKind::Ifgsm { steps: 10 });
    for kind in kinds {
        for o in attack::attack(&m, &b, kind, &[0.0, 0.3, 0.8]).unwrap() {
            let xa = to_vec(&o.x_adv);
            assert!(xa.iter().all(|v| (0.0..=1.0).contains(v)), "{kind:?}");
            if matches!(
                kind,
                AttackKind::Ifgsm { .. } | AttackKind::Fgsm | AttackKind::Fhsm(_)
            ) {
                assert!(
                    max_abs_diff(&xa, &x) <= o.eps + 1e-12,
                    "{kind:?} left the L∞ ball"
                );
            }
            if o.eps == 0.0 {
                assert_eq!(xa, x);
            }
            assert_eq!(o.success.len(), b.len());
        }
    }
}

#[test]
fn zero_gradient_samples_are_left_unperturbed() {
    // Zero weights ⇒ ∂logits/∂x = 0 ⇒ g = 0 and H = 0: every attack must return Δx = 0
    // (not NaN), in f64 and in f32, with the exact and the CG Newton solver.
    for rt in [rt64(), rt32()] {
        let m = Model::from_config(
            ModelConfig::tiny(ModelKind::LogReg, [1, 2, 2], 3, 0),
            &rt,
            0,
        )
        .unwrap();
        let zeros: Vec<Tensor> = m
            .param_values()
            .unwrap()
            .iter()
            .map(|t| t.zeros_like().unwrap())
            .collect();
        m.set_param_values(&zeros).unwrap();
        let b = random_batch(3, [1, 2, 2], 3, 1, &rt);
        let mut kinds = all_kinds();
        kinds.push(AttackKind::L2Hess(NewtonSolver::Cg {
            iters: 5,
            tol: 1e-6,
        }));
        kinds.push(AttackKind::Fhsm(NewtonSolver::Cg {
            iters: 5,
            tol: 1e-6,
        }));
        for kind in kinds {
            let d = perturbation(&m, &b, kind, 0.5).unwrap();
            let v = to_vec(&d);
            assert!(
                v.iter().all(|&x| x == 0.0),
                "{kind:?} {:?}: {v:?}",
                rt.dtype
            );
        }
    }
}

#[test]
fn newton_directions_equal_the_dense_pseudo_inverse_and_cg_agrees() {
    let (m, b) = tiny();
    let ih = input_hessian(&m, &b).unwrap();
    let (s_exact, g) = newton_direction(&m, &b, NewtonSolver::Exact).unwrap();
    let (s_cg, _) = newton_direction(
        &m,
        &b,
        NewtonSolver::Cg {
            iters: 50,
            tol: 1e-12,
        },
    )
    .unwrap();
    for i in 0..b.len() {
        let h = ih.dense(i).unwrap();
        let lmax = nalgebra::SymmetricEigen::new(h.clone()).eigenvalues.max();
        let gi = DVector::from_vec(to_vec(&g.narrow(0, i, 1).unwrap()));
        let want = h.pseudo_inverse(1e-9 * lmax).unwrap() * gi;
        let got = DVector::from_vec(to_vec(&s_exact.narrow(0, i, 1).unwrap()));
        assert!(
            (&got - &want).norm() <= 1e-7 * want.norm(),
            "exact, sample {i}"
        );
        let cg = DVector::from_vec(to_vec(&s_cg.narrow(0, i, 1).unwrap()));
        let cos = cg.dot(&want) / (cg.norm() * want.norm());
        assert!(cos > 1.0 - 1e-6, "cg cosine {cos} on sample {i}");
    }
    // Directions of the attacks are those of the pseudo-inverse.
    let d = perturbation(&m, &b, AttackKind::L2Hess(NewtonSolver::Exact), 1.0).unwrap();
    let s_unit = s_exact
        .broadcast_div(
            &attack::l2_norms(&s_exact)
                .unwrap()
                .reshape((12, 1, 1, 1))
                .unwrap(),
        )
        .unwrap();
    assert!(max_abs_diff(&to_vec(&d), &to_vec(&s_unit)) < 1e-10);
    let f = perturbation(&m, &b, AttackKind::Fhsm(NewtonSolver::Exact), 1.0).unwrap();
    let sg = to_vec(&s_exact.sign().unwrap());
    let fv = to_vec(&f);
    // FHSM is ±sign(H⁺g) per sample.
    for i in 0..12 {
        let (a, c) = (&fv[i * 9..(i + 1) * 9], &sg[i * 9..(i + 1) * 9]);
        assert!(a == c || a.iter().zip(c).all(|(x, y)| *x == -*y));
    }
}

#[test]
fn bad_arguments_are_typed_errors() {
    let (m, b) = tiny();
    assert!(matches!(
        perturbation(&m, &b, AttackKind::Fgsm, -0.1),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        perturbation(&m, &b, AttackKind::Fgsm, f64::NAN),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        attack::attack(&m, &b, AttackKind::Fgsm, &[]),
        Err(Error::InvalidArgument { .. })
    ));
    let nan = (b.x.clone() * f64::NAN).unwrap();
    let bn = hessian_lab::data::Batch::new(nan, b.y.clone()).unwrap();
    assert!(matches!(
        perturbation(&m, &bn, AttackKind::Fgsm, 0.1),
        Err(Error::NonFinite(_))
    ));
    let wrong = random_batch(2, [1, 4, 4], 4, 0, &rt64());
    assert!(matches!(
        perturbation(&m, &wrong, AttackKind::Fgsm, 0.1),
        Err(Error::Shape(_))
    ));
    let tanh = Model::from_config(
        ModelConfig::tiny(ModelKind::Mlp, [1, 3, 3], 4, 6).with_activation(Activation::Tanh),
        &rt64(),
        0,
    )
    .unwrap();
    assert!(matches!(
        perturbation(&tanh, &b, AttackKind::Fhsm(NewtonSolver::Exact), 0.1),
        Err(Error::Unsupported(_))
    ));
    // ... but CG works there.
    perturbation(
        &tanh,
        &b,
        AttackKind::Fhsm(NewtonSolver::Cg {
            iters: 5,
            tol: 1e-6,
        }),
        0.1,
    )
    .unwrap();
    assert!("pgd".parse::<AttackKind>().is_err());
}

/// On M1 trained briefly on MNIST: accuracy falls monotonically with ε, FGSM-10 ≤ FGSM, and
/// FGSM robust training raises FGSM accuracy at ε = 0.1.
#[test]
fn trained_m1_monotone_in_eps_ifgsm_stronger_and_robust_training_helps() {
    let rt = rt32();
    let root = data_dir();
    let train_split = hessian_lab::data::load(DatasetKind::Mnist, SplitKind::Train, &root)
        .unwrap()
        .first(4000)
        .unwrap();
    let test = hessian_lab::data::load(DatasetKind::Mnist, SplitKind::Test, &root)
        .unwrap()
        .first(300)
        .unwrap();
    let mut cfg = TrainConfig::new(2, 64, 0.05);
    cfg.progress = None;
    cfg.eval_train_samples = 0;
    cfg.eval_test = false;
    let clean = Model::new(ModelKind::M1, &rt, 0).unwrap();
    train::train(&clean, &train_split, &cfg, train::TrainWith::default()).unwrap();
    let eps = [0.0, 0.05, 0.1, 0.15, 0.2];
    let f = adversarial_accuracy(
        &clean,
        &test,
        AttackKind::Fgsm,
        &eps,
        &SplitOpts::chunk(150),
    )
    .unwrap();
    let i = adversarial_accuracy(
        &clean,
        &test,
        AttackKind::Ifgsm { steps: 10 },
        &eps,
        &SplitOpts::chunk(150),
    )
    .unwrap();
    assert!(f.clean_accuracy > 0.9, "{}", f.clean_accuracy);
    assert_eq!(f.per_eps[0].accuracy, f.clean_accuracy);
    for w in f.per_eps.windows(2) {
        assert!(
            w[1].accuracy <= w[0].accuracy,
            "fgsm not monotone: {:?}",
            f.per_eps
        );
    }
    for w in i.per_eps.windows(2) {
        assert!(
            w[1].accuracy <= w[0].accuracy,
            "ifgsm not monotone: {:?}",
            i.per_eps
        );
    }
    for (a, c) in f.per_eps.iter().zip(&i.per_eps) {
        assert!(
            c.accuracy <= a.accuracy,
            "ifgsm {} > fgsm {} at ε={}",
            c.accuracy,
            a.accuracy,
            a.eps
        );
    }
    // Robust training (half of each batch FGSM at ε = 0.1).
    let robust = Model::new(ModelKind::M1, &rt, 0).unwrap();
    let mut hook = |m: &dyn Network, b| adversarial_batch(m, b, AttackKind::Fgsm, 0.1, 0.5);
    train::train(
        &robust,
        &train_split,
        &cfg,
        train::TrainWith {
            batch_hook: Some(&mut hook),
            ..Default::default()
        },
    )
    .unwrap();
    let fr = adversarial_accuracy(
        &robust,
        &test,
        AttackKind::Fgsm,
        &[0.1],
        &SplitOpts::chunk(150),
    )
    .unwrap();
    assert!(
        fr.per_eps[0].accuracy > f.per_eps[2].accuracy + 0.1,
        "robust {} vs clean {}",
        fr.per_eps[0].accuracy,
        f.per_eps[2].accuracy
    );
    assert!(fr.clean_accuracy > 0.85);
    let _ = DType::F32;
}
