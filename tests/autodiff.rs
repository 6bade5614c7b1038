//! The autodiff seam: keeping the gradient graph is an argument of each backward pass, so any
//! thread gets exact second derivatives with no setup. This test binary never calls
//! `hessian_lab::init()` and removes `CANDLE_GRAD_DO_NOT_DETACH`, as a user's program would.

mod common;
use candle_core::{Device, Tensor, Var};
use common::*;
use hessian_lab::autodiff::{self, grads, Graph};
use hessian_lab::curvature::{self, ParamSelection, ParamVec};
use hessian_lab::models::{Model, ModelConfig, ModelKind};

/// f(x) = Σ sin(x)² · x³: a graph with several consumers per node.
fn f(x: &Tensor) -> Tensor {
    (x.sin().unwrap().sqr().unwrap() * x.powf(3.0).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
}

/// f'(x) and f''(x) of one coordinate, by hand.
fn df(x: f64) -> (f64, f64) {
    let (s, c) = (x.sin(), x.cos());
    let d1 = 2.0 * s * c * x.powi(3) + 3.0 * s * s * x * x;
    let d2 = 2.0 * (c * c - s * s) * x.powi(3) + 12.0 * s * c * x * x + 6.0 * s * s * x;
    (d1, d2)
}

fn no_setup() {
    std::env::remove_var("CANDLE_GRAD_DO_NOT_DETACH");
}

#[test]
fn fresh_thread_gets_exact_second_derivatives_with_no_setup() {
    no_setup();
    let xs = [0.3f64, -1.2, 2.5];
    std::thread::spawn(move || {
        let x = Var::new(&xs, &Device::Cpu).unwrap();
        let g = grads(&f(x.as_tensor()), &[x.as_tensor()], Graph::Keep)
            .unwrap()
            .remove(0);
        // f is separable, so the Hessian is diagonal: ∇(Σ g) = diag f''
        let h = grads(&g.sum_all().unwrap(), &[x.as_tensor()], Graph::Drop)
            .unwrap()
            .remove(0);
        let (g, h) = (to_vec(&g), to_vec(&h));
        for i in 0..3 {
            let (d1, d2) = df(xs[i]);
            assert!((g[i] - d1).abs() < 1e-12, "f' {} vs {d1}", g[i]);
            assert!((h[i] - d2).abs() < 1e-12, "f'' {} vs {d2}", h[i]);
        }
    })
    .join()
    .unwrap();
}

#[test]
fn drop_records_no_graph_and_keep_does_whatever_the_thread_variable_says() {
    no_setup();
    for env in [None, Some("1"), Some("0")] {
        std::thread::spawn(move || {
            if let Some(v) = env {
                std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", v);
            }
            let x = Var::new(&[0.7f64, 1.1], &Device::Cpu).unwrap();
            let y = f(x.as_tensor());
            let dropped = grads(&y, &[x.as_tensor()], Graph::Drop).unwrap().remove(0);
            let kept = grads(&y, &[x.as_tensor()], Graph::Keep).unwrap().remove(0);
            assert_eq!(to_vec(&dropped), to_vec(&kept), "same values ({env:?})");
            // A dropped gradient is a constant: its own backward reaches nothing.
            let again = autodiff::backward(&dropped.sum_all().unwrap(), Graph::Drop).unwrap();
            assert!(again.get(x.as_tensor()).is_none(), "{env:?}");
            let again = autodiff::backward(&kept.sum_all().unwrap(), Graph::Drop).unwrap();
            assert!(again.get(x.as_tensor()).is_some(), "{env:?}");
        })
        .join()
        .unwrap();
    }
}

#[test]
fn model_hvp_on_fresh_threads_and_rayon_threads_matches_finite_differences() {
    no_setup();
    use rayon::prelude::*;
    let rt = rt64();
    let m = Model::from_config(ModelConfig::tiny(ModelKind::C2, [3, 8, 8], 4, 0), &rt, 3).unwrap();
    let b = random_batch(5, [3, 8, 8], 4, 11, &rt);
    let sel = ParamSelection::all(&m);
    let v = ParamVec::randn_like(&sel.tensors(&m), 5).unwrap();
    let fd = curvature::hvp_fd(&m, &b, &sel, &v, None).unwrap();
    let check = |hv: &ParamVec| {
        let rel = hv.axpy(-1.0, &fd).unwrap().norm().unwrap() / fd.norm().unwrap();
        assert!(rel < 1e-6, "vs finite differences: {rel}");
    };
    let hv =
        std::thread::scope(|s| s.spawn(|| curvature::hvp(&m, &b, &v).unwrap()).join()).unwrap();
    check(&hv);
    let from_rayon: Vec<ParamVec> = (0..3)
        .into_par_iter()
        .map(|_| curvature::hvp(&m, &b, &v).unwrap())
        .collect();
    for h in &from_rayon {
        assert_eq!(h.axpy(-1.0, &hv).unwrap().norm().unwrap(), 0.0);
    }
}

#[test]
fn a_users_closure_loss_gets_the_closed_form_hessian() {
    // Least squares L(w) = ½‖Xw − y‖²: H = XᵀX, whatever w is.
    no_setup();
    std::thread::spawn(|| {
        let xm = randn(&[7, 3], 1, candle_core::DType::F64);
        let y = randn(&[7, 1], 2, candle_core::DType::F64);
        let w = Var::from_tensor(&randn(&[3, 1], 3, candle_core::DType::F64)).unwrap();
        let loss = || -> hessian_lab::Result<Tensor> {
            let r = (xm.matmul(w.as_tensor())? - &y)?;
            Ok((r.sqr()?.sum_all()? * 0.5)?)
        };
        let v = Tensor::new(&[[1.0f64], [-2.0], [0.5]], &Device::Cpu).unwrap();
        let hv = curvature::hvp_closure(std::slice::from_ref(&w), loss, &ParamVec(vec![v.clone()]))
            .unwrap();
        let want = xm.t().unwrap().matmul(&xm.matmul(&v).unwrap()).unwrap();
        assert!(max_abs_diff(&to_vec(&hv.0[0]), &to_vec(&want)) < 1e-12);
    })
    .join()
    .unwrap();
}

/// Least squares through the crate's linear kernels, whose weight gradients a fresh HVP
/// projects onto v: L(W, b) = ½‖X Wᵀ + 1 bᵀ − Y‖², so with R = X V_Wᵀ + 1 v_bᵀ the Hessian
/// applied to (V_W, v_b) is (Rᵀ X, Rᵀ 1); without a bias, V_W XᵀX. A variable listed twice
/// with directions v₁, v₂ is the same variable: both entries get H (v₁ + v₂).
#[test]
fn hvp_closure_through_the_linear_kernels_is_the_closed_form_also_for_a_variable_listed_twice() {
    use hessian_lab::models::layers::Kernels;
    let dt = candle_core::DType::F64;
    let (n, i, o) = (9, 4, 3);
    let xm = randn(&[n, i], 11, dt);
    let y = randn(&[n, o], 12, dt);
    let w = Var::from_tensor(&randn(&[o, i], 13, dt)).unwrap();
    let b = Var::from_tensor(&randn(&[o], 14, dt)).unwrap();
    let (vw, vb, vw2) = (
        randn(&[o, i], 15, dt),
        randn(&[o], 16, dt),
        randn(&[o, i], 17, dt),
    );
    let ones = Tensor::ones((n, 1), dt, &Device::Cpu).unwrap();
    let close = |got: &Tensor, want: &Tensor| {
        let e = max_abs_diff(&to_vec(got), &to_vec(want));
        assert!(e < 1e-10, "off by {e}");
    };
    // with a bias
    let loss = || -> hessian_lab::Result<Tensor> {
        let r = (Kernels::Fused.linear(&xm, w.as_tensor(), Some(b.as_tensor()))? - &y)?;
        Ok((r.sqr()?.sum_all()? * 0.5)?)
    };
    let v = ParamVec(vec![vw.clone(), vb.clone()]);
    let hv = curvature::hvp_closure(&[w.clone(), b.clone()], loss, &v).unwrap();
    let r = (xm.matmul(&vw.t().unwrap()).unwrap()
        + ones.matmul(&vb.unsqueeze(0).unwrap()).unwrap())
    .unwrap();
    close(&hv.0[0], &r.t().unwrap().matmul(&xm).unwrap());
    close(&hv.0[1], &r.sum(0).unwrap());
    // without a bias; then W listed twice
    let loss = || -> hessian_lab::Result<Tensor> {
        let r = (Kernels::Fused.linear(&xm, w.as_tensor(), None)? - &y)?;
        Ok((r.sqr()?.sum_all()? * 0.5)?)
    };
    let xtx = xm.t().unwrap().matmul(&xm).unwrap();
    let hv = curvature::hvp_closure(std::slice::from_ref(&w), loss, &ParamVec(vec![vw.clone()]))
        .unwrap();
    close(&hv.0[0], &vw.matmul(&xtx).unwrap());
    let v = ParamVec(vec![vw.clone(), vw2.clone()]);
    let hv = curvature::hvp_closure(&[w.clone(), w.clone()], loss, &v).unwrap();
    let want = (&vw + &vw2).unwrap().matmul(&xtx).unwrap();
    close(&hv.0[0], &want);
    close(&hv.0[1], &want);
}

#[test]
fn the_crate_runs_on_its_vendored_candle_and_nothing_else() {
    // The marker exists only in the vendored candle-core (vendor/candle-core/PATCH.md).
    assert!(autodiff::candle_build().contains("backward_with_graph"));
    assert_eq!(autodiff::candle_build(), candle_core::HESSIAN_LAB_PATCH);
    assert_eq!(autodiff::probe_second_derivative().unwrap(), 12.0);
    // One candle-core in the build, from vendor/ by path (a registry copy would carry a
    // `source` line): crates and notebooks depending on hessian-lab build the same one.
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    for name in ["candle-core", "candle-nn"] {
        let entries: Vec<&str> = lock
            .split("[[package]]")
            .filter(|p| p.contains(&format!("name = \"{name}\"\n")))
            .collect();
        assert_eq!(entries.len(), 1, "{name}: {entries:?}");
        assert!(
            !entries[0].contains("source ="),
            "{name} must come from vendor/: {}",
            entries[0]
        );
    }
}

/// A tiny C1 in f64 (5×5 strided convs, padded 3×3 max pools, BatchNorm, dense layers) and a
/// batch: every custom op's backward is on the path.
fn tiny_c1() -> (Model, hessian_lab::data::Batch) {
    let rt = rt64();
    let m =
        Model::from_config(ModelConfig::tiny(ModelKind::C1, [3, 16, 16], 4, 0), &rt, 7).unwrap();
    (m, random_batch(3, [3, 16, 16], 4, 21, &rt))
}

#[test]
fn gradients_restricted_to_the_input_are_the_full_passes_and_skip_the_weights() {
    no_setup();
    use hessian_lab::models::Network;
    let (m, b) = tiny_c1();
    let x = Var::from_tensor(&b.x).unwrap();
    let loss = || {
        m.loss(&hessian_lab::data::Batch::new(x.as_tensor().clone(), b.y.clone()).unwrap())
            .unwrap()
    };
    let before = hessian_lab::ops::kernel_calls_on_this_thread();
    let full = autodiff::backward(&loss(), Graph::Drop).unwrap();
    let full_calls = hessian_lab::ops::kernel_calls_on_this_thread() - before;
    let gx_full = full.get(x.as_tensor()).unwrap().clone();
    // the full pass also computed every weight gradient
    assert!(m
        .params()
        .iter()
        .all(|(_, p)| full.get(p.as_tensor()).is_some()));
    let before = hessian_lab::ops::kernel_calls_on_this_thread();
    let gx = grads(&loss(), &[x.as_tensor()], Graph::Drop)
        .unwrap()
        .remove(0);
    let restricted_calls = hessian_lab::ops::kernel_calls_on_this_thread() - before;
    assert!(rel_err(&to_vec(&gx), &to_vec(&gx_full)) < 1e-14);
    // each conv and linear layer skips its weight gradient (the forward ops are the same)
    assert!(
        restricted_calls < full_calls,
        "kernel calls: restricted {restricted_calls}, full {full_calls}"
    );
    // and the input gradient is the derivative: central differences along a random direction
    let d = randn(b.x.dims(), 5, candle_core::DType::F64);
    let at = |t: f64| -> f64 {
        let xt = (&b.x + (&d * t).unwrap()).unwrap();
        m.loss(&hessian_lab::data::Batch::new(xt, b.y.clone()).unwrap())
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    // a small step: ReLU and the pools' arg-max switch within 1e-5 of this point
    let h = 1e-7;
    let fd = (at(h) - at(-h)) / (2.0 * h);
    let dot: f64 = to_vec(&gx).iter().zip(to_vec(&d)).map(|(a, b)| a * b).sum();
    assert!(
        (fd - dot).abs() < 1e-6 * dot.abs().max(1.0),
        "fd {fd} vs ⟨g, d⟩ {dot}"
    );
}

#[test]
fn gauss_newton_product_on_a_conv_net_is_jt_a_j_v() {
    // G v = Jᵀ A J v, A = blockdiag(diag pᵢ − pᵢpᵢᵀ)/N, with J built row by row from the
    // gradients of single logits (independent of the operator's double-backward Jv, which
    // differentiates only the paths to its dummy variable u). Three ways to the product: the
    // operator on one batch (its Jᵀu graph built once, reused for a second v), on the batch
    // in two chunks, and `ggn_vector_product` — the last two build Jᵀu for each v with its
    // weight gradients projected onto v.
    no_setup();
    use hessian_lab::curvature::{ggn_vector_product, CurvatureOperator, DataSource, GgnOperator};
    use hessian_lab::models::Network;
    let (m, b) = tiny_c1();
    let sel = ParamSelection::all(&m);
    let ts = sel.tensors(&m);
    let z = m.forward(&b.x).unwrap();
    let (n, k) = z.dims2().unwrap();
    let zv = to_vec(&z);
    let mut rows = vec![];
    for i in 0..n {
        for c in 0..k {
            let zic = m.forward(&b.x).unwrap().get(i).unwrap().get(c).unwrap();
            rows.push(ParamVec(grads(&zic, &ts, Graph::Drop).unwrap()));
        }
    }
    let want = |v: &ParamVec| {
        let jv: Vec<f64> = rows.iter().map(|r| r.dot(v).unwrap()).collect();
        let mut gv = ParamVec::zeros_like(&ts).unwrap();
        for i in 0..n {
            let e: Vec<f64> = zv[i * k..(i + 1) * k].iter().map(|a| a.exp()).collect();
            let s: f64 = e.iter().sum();
            let p: Vec<f64> = e.iter().map(|a| a / s).collect();
            let pjv: f64 = (0..k).map(|c| p[c] * jv[i * k + c]).sum();
            for c in 0..k {
                let r = (p[c] * jv[i * k + c] - p[c] * pjv) / n as f64;
                gv = gv.axpy(r, &rows[i * k + c]).unwrap();
            }
        }
        gv
    };
    let check = |what: &str, got: &ParamVec, v: &ParamVec| {
        let gv = want(v);
        let rel = got.axpy(-1.0, &gv).unwrap().norm().unwrap() / gv.norm().unwrap();
        assert!(rel < 1e-12, "{what}: GGN product vs Jᵀ A J v: {rel}");
    };
    let one = GgnOperator::new(&m, DataSource::Batch(b.clone())).unwrap();
    let chunks = GgnOperator::new(
        &m,
        DataSource::Batches(vec![b.narrow(0, 1).unwrap(), b.narrow(1, 2).unwrap()]),
    )
    .unwrap();
    for seed in [9, 10] {
        let v = ParamVec::randn_like(&ts, seed).unwrap();
        check("one batch", &one.apply(&v).unwrap(), &v);
        check("two chunks", &chunks.apply(&v).unwrap(), &v);
        check("fresh", &ggn_vector_product(&m, &b, &v).unwrap(), &v);
    }
    assert_eq!(one.matvecs(), 2);
}

#[test]
fn gauss_newton_products_refuse_a_vector_of_other_shapes_and_report_a_non_finite_result() {
    no_setup();
    use hessian_lab::curvature::{ggn_vector_product, CurvatureOperator, DataSource, GgnOperator};
    use hessian_lab::Error;
    let (m, b) = tiny_c1();
    let ts = ParamSelection::all(&m).tensors(&m);
    let short = ParamVec(ParamVec::randn_like(&ts, 1).unwrap().0[1..].to_vec());
    assert!(matches!(
        ggn_vector_product(&m, &b, &short),
        Err(Error::Shape(_))
    ));
    let op = GgnOperator::new(&m, DataSource::Batch(b.clone())).unwrap();
    assert!(matches!(op.apply(&short), Err(Error::Shape(_))));
    let nan = ParamVec::randn_like(&ts, 1)
        .unwrap()
        .scale(f64::NAN)
        .unwrap();
    assert!(matches!(
        ggn_vector_product(&m, &b, &nan),
        Err(Error::NonFinite(_))
    ));
}

#[test]
fn operators_on_one_batch_follow_changed_parameters_after_invalidate() {
    // Both operators keep a graph of the batch (the gradient's, Jᵀu's); after the parameters
    // change, `invalidate` must make the next product that of the new parameters, equal to a
    // freshly built one.
    no_setup();
    use hessian_lab::curvature::{
        ggn_vector_product, CurvatureOperator, DataSource, GgnOperator, HessianOperator,
    };
    use hessian_lab::models::Network;
    let (m, b) = tiny_c1();
    let ts = ParamSelection::all(&m).tensors(&m);
    let v = ParamVec::randn_like(&ts, 3).unwrap();
    let h = HessianOperator::new(&m, DataSource::Batch(b.clone())).unwrap();
    let g = GgnOperator::new(&m, DataSource::Batch(b.clone())).unwrap();
    h.apply(&v).unwrap();
    g.apply(&v).unwrap();
    for (_, p) in m.params() {
        let t = p.as_tensor();
        p.set(&((t * 1.3).unwrap() + 0.01).unwrap()).unwrap();
    }
    h.invalidate();
    g.invalidate();
    let rel =
        |a: &ParamVec, b: &ParamVec| a.axpy(-1.0, b).unwrap().norm().unwrap() / b.norm().unwrap();
    let hv = curvature::hvp(&m, &b, &v).unwrap();
    let gv = ggn_vector_product(&m, &b, &v).unwrap();
    assert!(rel(&h.apply(&v).unwrap(), &hv) < 1e-12);
    assert!(rel(&g.apply(&v).unwrap(), &gv) < 1e-12);
}
