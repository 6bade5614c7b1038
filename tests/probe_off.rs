//! With double backward OFF (no `init()`, variable removed), every curvature call returns the
//! typed error instead of a silently wrong Hessian-vector product. This file is its own test
//! binary (process) so no other test can have switched it on.

use hessian_lab::curvature::*;
use hessian_lab::models::{Model, ModelConfig, ModelKind};
use hessian_lab::{Error, Runtime};

#[test]
fn curvature_calls_fail_loudly_when_double_backward_is_off() {
    std::env::remove_var("CANDLE_GRAD_DO_NOT_DETACH");
    let d2 = hessian_lab::runtime::probe_second_derivative().unwrap();
    // Upstream candle's detached mode gives 4, the vendored one 0; exact is 12.
    assert!(
        (d2 - 4.0).abs() < 1e-12 || d2 == 0.0,
        "detached candle gives 4 or 0, got {d2}"
    );
    assert!(!hessian_lab::double_backward_enabled().unwrap());
    let rt = Runtime::cpu_f64();
    let m = Model::from_config(ModelConfig::tiny(ModelKind::Mlp, [1, 2, 2], 3, 4), &rt, 0).unwrap();
    let x = candle_core::Tensor::ones((2, 1, 2, 2), candle_core::DType::F64, &rt.device).unwrap();
    let y = candle_core::Tensor::new(&[0u32, 1], &rt.device).unwrap();
    let b = hessian_lab::data::Batch::new(x.clone(), y).unwrap();
    let v = ParamVec::randn_like(&ParamSelection::all(&m).tensors(&m), 0).unwrap();
    let e = hvp(&m, &b, &v).unwrap_err();
    assert!(matches!(e, Error::DoubleBackwardOff { .. }));
    assert!(
        e.to_string().contains("hessian_lab::init()"),
        "the fix is in the message: {e}"
    );
    assert!(matches!(
        HessianOperator::new(&m, DataSource::Batch(b.clone())),
        Err(Error::DoubleBackwardOff { .. })
    ));
    assert!(matches!(
        GgnOperator::new(&m, DataSource::Batch(b.clone())),
        Err(Error::DoubleBackwardOff { .. })
    ));
    assert!(matches!(
        input_hvp(&m, &b, &x),
        Err(Error::DoubleBackwardOff { .. })
    ));
    assert!(matches!(
        trace_exact(&m, &DataSource::Batch(b.clone()), None),
        Err(Error::DoubleBackwardOff { .. })
    ));
    // Calling init() now cannot help this thread (candle read the variable already), and the
    // probe keeps saying so.
    hessian_lab::init();
    assert!(matches!(
        hvp(&m, &b, &v),
        Err(Error::DoubleBackwardOff { .. })
    ));
    // A fresh thread started after init() sees it.
    let ok = std::thread::spawn(|| hessian_lab::double_backward_enabled().unwrap())
        .join()
        .unwrap();
    assert!(ok);
}
