//! Device-generic checks, written once: CI runs them on the CPU; `scripts/gpu-check.sh` runs the
//! same binary with HESSIAN_LAB_TEST_DEVICE=cuda on a GPU machine.
mod common;

use candle_core::{DType, Device};
use common::*;
use hessian_lab::attack::{self, AttackKind, NewtonSolver};
use hessian_lab::curvature::{self, *};
use hessian_lab::data::{DatasetKind, SplitKind};
use hessian_lab::models::{Model, ModelConfig, ModelKind};
use hessian_lab::Runtime;

fn device() -> Device {
    match std::env::var("HESSIAN_LAB_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0).expect("HESSIAN_LAB_TEST_DEVICE=cuda but no CUDA device"),
        _ => Device::Cpu,
    }
}

fn on(dtype: DType) -> Runtime {
    Runtime {
        device: device(),
        dtype,
        kernels: Default::default(),
    }
}

fn mnist_batch(n: usize, rt: &Runtime) -> hessian_lab::data::Batch {
    hessian_lab::data::load(DatasetKind::Mnist, SplitKind::Test, data_dir())
        .unwrap()
        .first(n)
        .unwrap()
        .to_batch(rt)
        .unwrap()
}

/// f64 on the device: exact HVP equals central finite differences of gradients. The step is
/// the default (∛ε·scale/‖v‖ ≈ 1e-8 here): on a ReLU net a larger step crosses activation kinks
/// (M1 has ~7,000 ReLUs per sample) and the difference quotient is then meaningless.
#[test]
fn hvp_matches_finite_differences_in_f64() {
    let rt = on(DType::F64);
    for kind in [ModelKind::M1, ModelKind::C1] {
        let m = Model::new(kind, &rt, 1).unwrap();
        let b = if kind == ModelKind::M1 {
            mnist_batch(2, &rt)
        } else {
            random_batch(2, [3, 32, 32], 10, 2, &rt)
        };
        let sel = ParamSelection::all(&m);
        let v = ParamVec::randn_like(&sel.tensors(&m), 3).unwrap();
        let h = curvature::hvp(&m, &b, &v).unwrap().to_f64_vec().unwrap();
        let f = curvature::hvp_fd(&m, &b, &sel, &v, None)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        assert!(rel_err(&h, &f) < 1e-7, "{kind:?}: {}", rel_err(&h, &f));
    }
}

/// f32 on the device agrees with f64 on the CPU.
#[test]
fn f32_on_device_agrees_with_f64_on_cpu() {
    let rt = on(DType::F32);
    let cpu = Runtime::cpu_f64();
    let m32 = Model::new(ModelKind::M1, &rt, 4).unwrap();
    let m64 = Model::new(ModelKind::M1, &cpu, 4).unwrap();
    let b32 = mnist_batch(16, &rt);
    let b64 = mnist_batch(16, &cpu);
    let v64 = ParamVec::randn_like(&ParamSelection::all(&m64).tensors(&m64), 5).unwrap();
    let v32 = ParamVec(
        v64.0
            .iter()
            .map(|t| {
                t.to_dtype(DType::F32)
                    .unwrap()
                    .to_device(&rt.device)
                    .unwrap()
            })
            .collect(),
    );
    let h32 = curvature::hvp(&m32, &b32, &v32)
        .unwrap()
        .to_f64_vec()
        .unwrap();
    let h64 = curvature::hvp(&m64, &b64, &v64)
        .unwrap()
        .to_f64_vec()
        .unwrap();
    assert!(rel_err(&h32, &h64) < 1e-4, "{}", rel_err(&h32, &h64));
    let i32_ = curvature::input_hessian(&m32, &b32).unwrap().summary();
    let i64_ = curvature::input_hessian(&m64, &b64).unwrap().summary();
    assert!((i32_.lambda1_x_mean - i64_.lambda1_x_mean).abs() < 1e-3 * i64_.lambda1_x_mean);
}

/// Power iteration and Lanczos agree on M1's top eigenvalue; trace_exact vs Hutchinson.
#[test]
fn eigen_solvers_agree_on_m1() {
    let rt = on(DType::F32);
    let m = Model::new(ModelKind::M1, &rt, 6).unwrap();
    let op = HessianOperator::new(&m, DataSource::Batch(mnist_batch(16, &rt))).unwrap();
    let l = curvature::lanczos(
        &op,
        2,
        &LanczosOpts {
            max_iter: 60,
            tol: 1e-3,
            seed: 0,
        },
    )
    .unwrap();
    // On the PSD Gauss–Newton matrix power iteration and Lanczos target the same eigenvalue.
    let g = GgnOperator::new(&m, DataSource::Batch(mnist_batch(16, &rt))).unwrap();
    let p = curvature::top_eigen(
        &g,
        1,
        &PowerOpts {
            max_iter: 100,
            tol: 1e-5,
            seed: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let lg = curvature::lanczos(
        &g,
        1,
        &LanczosOpts {
            max_iter: 40,
            tol: 1e-4,
            seed: 0,
        },
    )
    .unwrap();
    assert!(
        (p.eigenvalues[0] - lg.eigenvalues[0]).abs() < 1e-2 * lg.eigenvalues[0],
        "{} vs {}",
        p.eigenvalues[0],
        lg.eigenvalues[0]
    );
    assert!(l.eigenvalues[0] >= l.eigenvalues[1]);
    op.check_deterministic(0, 1e-5).unwrap();
}

/// Attacks on the device: norms and the box.
#[test]
fn attacks_on_device() {
    let rt = on(DType::F32);
    let m = Model::from_config(
        ModelConfig::for_dataset(ModelKind::M1, DatasetKind::Mnist),
        &rt,
        0,
    )
    .unwrap();
    let b = mnist_batch(16, &rt);
    for kind in [
        AttackKind::Fgsm,
        AttackKind::L2Grad,
        AttackKind::Fhsm(NewtonSolver::Exact),
        AttackKind::L2Hess(NewtonSolver::Exact),
        AttackKind::Ifgsm { steps: 3 },
    ] {
        for o in attack::attack(&m, &b, kind, &[0.1]).unwrap() {
            let xa = to_vec(&o.x_adv);
            assert!(xa.iter().all(|v| (0.0..=1.0).contains(v)));
            assert!(o.linf_mean <= 0.1 + 1e-6);
        }
    }
}
