//! Your own network: candle-nn models through `CandleNet` against closed-form Hessians, the
//! same network as a built-in model and as a candle-nn model, BatchNorm buffers, the HVP
//! self-check, and every verb on a user's CNN.
mod common;

use common::*;
use hessian_lab::candle_nn::{self, Module, ModuleT, VarBuilder, VarMap};
use hessian_lab::curvature::*;
use hessian_lab::prelude::*;
use nalgebra::{DMatrix, DVector};

fn vb(varmap: &VarMap) -> VarBuilder<'static> {
    VarBuilder::from_varmap(varmap, DType::F64, &Device::Cpu)
}

/// Softmax regression z = Wx + b written with candle-nn: H = (1/N) Σᵢ (diag pᵢ − pᵢpᵢᵀ) ⊗ x̃ᵢx̃ᵢᵀ
/// with x̃ = [1; x]; parameters in name order: fc.bias (C), fc.weight (C×d, row major).
#[test]
fn candle_nn_softmax_regression_matches_the_closed_form_hessian() {
    let rt = rt64();
    let (n, c, d) = (6, 3, 4);
    let varmap = VarMap::new();
    let fc = candle_nn::linear(d, c, vb(&varmap).pp("fc")).unwrap();
    let net = CandleNet::new(&varmap, c, fc)
        .unwrap()
        .with_seed(0)
        .unwrap();
    let names: Vec<&str> = net.params().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["fc.bias", "fc.weight"]);
    let b = random_batch(n, [1, 2, 2], c, 8, &rt);
    let b = Batch::new(b.x.reshape((n, d)).unwrap(), b.y).unwrap();
    let sel = ParamSelection::all(&net);
    let like = sel.tensors(&net);
    let np = sel.dim(&net);
    let h = dense(np, &like, |v| hvp(&net, &b, v).unwrap());
    let p: Vec<Vec<f64>> = hessian_lab::models::layers::softmax(&net.forward(&b.x).unwrap())
        .unwrap()
        .to_vec2()
        .unwrap();
    let xs: Vec<Vec<f64>> = b.x.to_vec2().unwrap();
    let mut want = DMatrix::zeros(np, np);
    let idx = |cls: usize, j: Option<usize>| match j {
        None => cls,
        Some(j) => c + cls * d + j,
    };
    for (pi, xi) in p.iter().zip(&xs) {
        let xt: Vec<(Option<usize>, f64)> = std::iter::once((None, 1.0))
            .chain(xi.iter().enumerate().map(|(j, &v)| (Some(j), v)))
            .collect();
        for a in 0..c {
            for bb in 0..c {
                let aab = if a == bb { pi[a] } else { 0.0 } - pi[a] * pi[bb];
                for &(j1, v1) in &xt {
                    for &(j2, v2) in &xt {
                        want[(idx(a, j1), idx(bb, j2))] += aab * v1 * v2 / n as f64;
                    }
                }
            }
        }
    }
    assert!(rel(&h, &want) < 1e-12, "{}", rel(&h, &want));
    // the streamed operator and the Gauss–Newton matrix (= H for a linear model) agree
    let op = HessianOperator::new(&net, DataSource::Batch(b.clone())).unwrap();
    assert!(rel(&dense(np, &like, |v| op.apply(v).unwrap()), &want) < 1e-12);
    let ggn = GgnOperator::new(&net, DataSource::Batch(b.clone())).unwrap();
    assert!(rel(&dense(np, &like, |v| ggn.apply(v).unwrap()), &want) < 1e-12);
    // and Lanczos finds the closed form's top eigenvalues
    let want_eig = want.symmetric_eigen();
    let mut ev: Vec<f64> = want_eig.eigenvalues.iter().copied().collect();
    ev.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let got = lanczos(&op, 3, &LanczosOpts::default()).unwrap();
    for k in 0..3 {
        assert!(
            (got.eigenvalues[k] - ev[k]).abs() < 1e-6 * ev[0],
            "λ{k}: {} vs {}",
            got.eigenvalues[k],
            ev[k]
        );
    }
}

/// Logistic regression as a two-logit network z = [wᵀx + b, 0] over the user's own `Var`s
/// (no VarMap): the cross-entropy is the logistic loss and H = (1/N) Σ σ(1−σ) x̃x̃ᵀ.
#[test]
fn logistic_regression_over_own_vars_matches_the_closed_form_hessian() {
    let (n, d) = (11, 3);
    let x = randn(&[n, d], 6, DType::F64);
    let y = Tensor::from_vec(
        (0..n).map(|i| (i % 2) as u32).collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )
    .unwrap();
    let w = Var::from_tensor(&randn(&[d, 1], 7, DType::F64)).unwrap();
    let b0 = Var::from_tensor(&randn(&[1], 9, DType::F64)).unwrap();
    let (wf, bf) = (w.clone(), b0.clone());
    let net = CandleNet::from_vars(
        vec![("w".into(), w.clone()), ("b".into(), b0.clone())],
        2,
        move |x, _| {
            let s = x.matmul(wf.as_tensor())?.broadcast_add(bf.as_tensor())?;
            Tensor::cat(&[&s, &s.zeros_like()?], 1)
        },
    )
    .unwrap()
    .with_input_box(InputBox::NONE);
    let batch = Batch::new(x.clone(), y).unwrap();
    let sel = ParamSelection::all(&net);
    let like = sel.tensors(&net);
    // name order: b, then w
    let h = dense(d + 1, &like, |v| hvp(&net, &batch, v).unwrap());
    let xm = DMatrix::from_row_slice(n, d, &to_vec(&x));
    let b = to_vec(b0.as_tensor())[0];
    let s = &xm * DVector::from_vec(to_vec(w.as_tensor())) + DVector::from_element(n, b);
    let xt = DMatrix::from_fn(n, d + 1, |i, j| if j == 0 { 1.0 } else { xm[(i, j - 1)] });
    let dd = DMatrix::from_diagonal(&s.map(|v| {
        let sg = 1.0 / (1.0 + (-v).exp());
        sg * (1.0 - sg)
    }));
    let want = xt.transpose() * dd * &xt / n as f64;
    assert!(rel(&h, &want) < 1e-12, "{}", rel(&h, &want));
}

/// Linear regression with a candle-nn `Linear` and a squared loss of one's own, through the
/// adapter's parameters and `hvp_closure`: H = (2/N) X̃ᵀX̃.
#[test]
fn candle_nn_linear_regression_with_own_loss_matches_the_closed_form_hessian() {
    let (n, d) = (9, 4);
    let varmap = VarMap::new();
    let fc = candle_nn::linear(d, 1, vb(&varmap).pp("fc")).unwrap();
    let x = randn(&[n, d], 3, DType::F64);
    let y = randn(&[n, 1], 4, DType::F64);
    let fc2 = fc.clone();
    let net = CandleNet::from_fn(&varmap, 2, move |x, _| {
        let s = fc2.forward(x)?;
        Tensor::cat(&[&s, &s.zeros_like()?], 1)
    })
    .unwrap();
    let vars: Vec<Var> = net.params().iter().map(|(_, v)| v.clone()).collect();
    let like: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().detach()).collect();
    let loss = || -> hessian_lab::Result<Tensor> { Ok((fc.forward(&x)? - &y)?.sqr()?.mean_all()?) };
    let h = dense(d + 1, &like, |v| hvp_closure(&vars, loss, v).unwrap());
    let xm = DMatrix::from_row_slice(n, d, &to_vec(&x));
    let xt = DMatrix::from_fn(n, d + 1, |i, j| if j == 0 { 1.0 } else { xm[(i, j - 1)] });
    let want = xt.transpose() * &xt * (2.0 / n as f64);
    assert!(rel(&h, &want) < 1e-13, "{}", rel(&h, &want));
}

/// The built-in `mlp` and the same network written in candle-nn, with the same weights: same
/// logits, gradient, Hessian-vector products and top eigenvalues.
#[test]
fn built_in_model_and_candle_nn_model_have_the_same_spectrum() {
    let rt = rt64();
    let cfg = ModelConfig::tiny(ModelKind::Mlp, [1, 3, 3], 4, 6);
    let m = Model::from_config(cfg, &rt, 3).unwrap();
    let varmap = VarMap::new();
    let v = vb(&varmap);
    let fc1 = candle_nn::linear(9, 6, v.pp("fc1")).unwrap();
    let fc2 = candle_nn::linear(6, 4, v.pp("fc2")).unwrap();
    let net = CandleNet::from_fn(&varmap, 4, move |x, _| {
        fc2.forward(&fc1.forward(&x.flatten_from(1)?)?.relu()?)
    })
    .unwrap()
    .with_input_shape(&[1, 3, 3])
    .with_piecewise_linear(true);
    // same names, so the built-in's values load in the same order
    let names =
        |n: &dyn Network| -> Vec<String> { n.params().iter().map(|(k, _)| k.clone()).collect() };
    assert_eq!(names(&m), names(&net));
    net.set_param_values(&m.param_values().unwrap()).unwrap();
    let b = random_batch(10, [1, 3, 3], 4, 5, &rt);
    let (za, zb) = (m.forward(&b.x).unwrap(), net.forward(&b.x).unwrap());
    assert!(max_abs_diff(&to_vec(&za), &to_vec(&zb)) < 1e-13);
    let src = DataSource::Batch(b.clone());
    let (oa, ob) = (
        HessianOperator::new(&m, src.clone()).unwrap(),
        HessianOperator::new(&net, src).unwrap(),
    );
    let (ea, eb) = (
        lanczos(&oa, 3, &LanczosOpts::default()).unwrap(),
        lanczos(&ob, 3, &LanczosOpts::default()).unwrap(),
    );
    for k in 0..3 {
        assert!(
            (ea.eigenvalues[k] - eb.eigenvalues[k]).abs() < 1e-10 * ea.eigenvalues[0].abs(),
            "{:?} vs {:?}",
            ea.eigenvalues,
            eb.eigenvalues
        );
    }
    // Theorem 1's exact input Hessian is available once the net is declared piecewise linear
    let (ha, hb) = (
        input_hessian(&m, &b).unwrap(),
        input_hessian(&net, &b).unwrap(),
    );
    for (sa, sb) in ha.samples.iter().zip(&hb.samples) {
        assert!((sa.lambda1 - sb.lambda1).abs() <= 1e-12 * sa.lambda1.abs().max(1e-12));
    }
}

fn small_cnn(varmap: &VarMap, bn: bool, seed: u64) -> CandleNet {
    let v = vb(varmap);
    let conv = candle_nn::conv2d(
        1,
        4,
        3,
        candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        },
        v.pp("conv"),
    )
    .unwrap();
    let norm = bn.then(|| candle_nn::batch_norm(4, 1e-5, v.pp("bn")).unwrap());
    let fc = candle_nn::linear(4 * 14 * 14, 10, v.pp("fc")).unwrap();
    CandleNet::from_fn(varmap, 10, move |x, train| {
        let mut h = conv.forward(x)?;
        if let Some(n) = &norm {
            h = n.forward_t(&h, train)?;
        }
        let h = h.relu()?.avg_pool2d(2)?;
        fc.forward(&h.flatten_from(1)?)
    })
    .unwrap()
    .named("small-cnn")
    .with_input_shape(&[1, 28, 28])
    .with_piecewise_linear(true)
    .with_seed(seed)
    .unwrap()
}

/// BatchNorm statistics are buffers: not parameters, updated by training only, untouched by
/// curvature (eval mode), and the HVP self-check passes.
#[test]
fn candle_nn_batch_norm_statistics_are_buffers_and_curvature_runs_in_eval_mode() {
    let rt = rt64();
    let varmap = VarMap::new();
    let net = small_cnn(&varmap, true, 1);
    let bufs: Vec<&str> = net.buffers().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(bufs, ["bn.running_mean", "bn.running_var"]);
    assert!(net.params().iter().all(|(k, _)| !k.contains("running")));
    let b = random_batch(8, [1, 28, 28], 10, 2, &rt);
    let before = net.buffer_values().unwrap();
    let op = HessianOperator::new(&net, DataSource::Batch(b.clone())).unwrap();
    let v = ParamVec::randn_like(op.like(), 1).unwrap();
    let (h1, h2) = (op.apply(&v).unwrap(), op.apply(&v).unwrap());
    assert_eq!(h1.to_f64_vec().unwrap(), h2.to_f64_vec().unwrap());
    let after = net.buffer_values().unwrap();
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(
            to_vec(a),
            to_vec(b),
            "curvature changed the running statistics"
        );
    }
    let c = check_hvp(&net, &b, 3).unwrap();
    assert!(c.ok, "{c:?}");
    // training (train mode) moves them
    let split = synthetic_split(64, 4);
    let net32 = {
        let vm = VarMap::new();
        let n = small_cnn(&vm, true, 2);
        n.set_param_values(&net.param_values().unwrap()).unwrap();
        n
    };
    fit_briefly(&net32, &split, 1, 32);
    let moved = net32.buffer_values().unwrap();
    assert!(max_abs_diff(&to_vec(&moved[0]), &to_vec(&before[0])) > 1e-6);
}

/// A forward built on candle's `softmax_last_dim` (no backward at all: every gradient through it
/// is silently zero) is flagged by `check_hvp`, and the same network written with
/// `candle_nn::ops::softmax` passes.
#[test]
fn check_hvp_catches_a_forward_that_loses_its_second_derivative() {
    let rt = rt64();
    let b = random_batch(6, [1, 2, 2], 3, 1, &rt);
    let make = |cut: bool| {
        let varmap = VarMap::new();
        let fc = candle_nn::linear(4, 3, vb(&varmap).pp("fc")).unwrap();
        CandleNet::from_fn(&varmap, 3, move |x, _| {
            let z = fc.forward(&x.flatten_from(1)?)?;
            // log softmax of the logits: the same cross-entropy, so the same Hessian
            let p = if cut {
                candle_nn::ops::softmax_last_dim(&z)?
            } else {
                candle_nn::ops::softmax(&z, 1)?
            };
            p.log()
        })
        .unwrap()
    };
    let good = check_hvp(&make(false), &b, 0).unwrap();
    assert!(good.ok, "{good:?}");
    let bad = check_hvp(&make(true), &b, 0).unwrap();
    assert!(!bad.ok, "{bad:?}");
}

/// Every verb on a user's candle-nn CNN: training, eigenvalues, trace, density, input Hessian
/// (both forms agree), attacks, landscapes and interpolation (which leaves both nets alone).
#[test]
fn every_verb_runs_on_a_candle_nn_cnn() {
    let rt = rt64();
    let varmap = VarMap::new();
    let net = small_cnn(&varmap, false, 3);
    let split = synthetic_split(96, 7);
    let report = fit_briefly(&net, &split, 1, 32);
    assert_eq!(report.epochs.len(), 1);
    let b = split.range_batch(0, 16, &rt).unwrap();
    let src = DataSource::Batch(b.clone());
    let op = HessianOperator::new(&net, src.clone()).unwrap();
    let top = lanczos(&op, 2, &LanczosOpts::default()).unwrap();
    assert!(top.eigenvalues[0] >= top.eigenvalues[1]);
    let power = top_eigen(&op, 1, &PowerOpts::default()).unwrap();
    // power iteration's Rayleigh quotient approaches λ₁ from below (default stopping: 1e-2)
    assert!(
        power.eigenvalues[0] <= top.eigenvalues[0] * (1.0 + 1e-9)
            && power.eigenvalues[0] > 0.99 * top.eigenvalues[0],
        "power {:?} vs Lanczos {:?}",
        power.eigenvalues,
        top.eigenvalues
    );
    let tr = trace(&op, &TraceOpts::default()).unwrap();
    assert!(tr.trace.is_finite());
    let dens = density(&op, &SlqOpts::default()).unwrap();
    assert!(!dens.nodes.is_empty());
    // Theorem 1's closed form vs power iteration on input HVPs
    let exact = input_hessian(&net, &b).unwrap();
    let power_x = input_lambda1_power(&net, &b, 200, 1e-10, 0).unwrap();
    for (s, p) in exact.samples.iter().zip(&power_x) {
        assert!(
            (s.lambda1 - p).abs() <= 1e-6 * s.lambda1.max(1e-12),
            "{} vs {p}",
            s.lambda1
        );
    }
    let adv = attack::adversarial_accuracy(
        &net,
        &split,
        AttackKind::Fgsm,
        &[0.0, 0.1],
        &attack::SplitOpts::chunk(48),
    )
    .unwrap();
    assert!((adv.per_eps[0].accuracy - adv.clean_accuracy).abs() < 1e-12);
    let d = landscape::filter_normalized_direction(&net, 1).unwrap();
    let before = net.param_values().unwrap();
    let curve =
        landscape::landscape_1d(&net, &d, &[-0.5, 0.0, 0.5], &[("batch", &src)], None).unwrap();
    assert_eq!(curve.alphas.len(), 3);
    let other = {
        let vm = VarMap::new();
        small_cnn(&vm, false, 4)
    };
    let other_before = other.param_values().unwrap();
    landscape::interpolate(
        &net,
        &other,
        &[0.0, 0.5, 1.0],
        &[("batch", &src)],
        None,
        None,
    )
    .unwrap();
    for (a, b) in net.param_values().unwrap().iter().zip(&before) {
        assert_eq!(to_vec(a), to_vec(b));
    }
    for (a, b) in other.param_values().unwrap().iter().zip(&other_before) {
        assert_eq!(to_vec(a), to_vec(b));
    }
    // saved under its own names
    let dir = std::env::temp_dir().join(format!("hl-candle-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("net.safetensors");
    net.save(&path).unwrap();
    let loaded = hessian_lab::candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert!(loaded.contains_key("conv.weight") && loaded.contains_key("fc.bias"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn candle_net_bad_inputs_give_typed_errors() {
    let rt = rt64();
    // no variables
    let e = CandleNet::from_fn(&VarMap::new(), 10, |x, _| Ok(x.clone())).unwrap_err();
    assert!(matches!(e, hessian_lab::Error::Empty(_)), "{e}");
    // fewer than two classes
    let varmap = VarMap::new();
    let fc = candle_nn::linear(4, 3, vb(&varmap).pp("fc")).unwrap();
    assert!(CandleNet::new(&varmap, 1, fc.clone()).is_err());
    // logits of the wrong width
    let net = CandleNet::new(&varmap, 5, fc.clone()).unwrap();
    let x = randn(&[2, 4], 1, DType::F64);
    let e = net.forward(&x).unwrap_err();
    assert!(e.to_string().contains("expected (2, 5) logits"), "{e}");
    // inputs of the wrong shape
    let net = CandleNet::new(&varmap, 3, fc)
        .unwrap()
        .with_input_shape(&[4]);
    let e = net.forward(&randn(&[2, 5], 1, DType::F64)).unwrap_err();
    assert!(matches!(e, hessian_lab::Error::Shape(_)), "{e}");
    // an undeclared network is refused Theorem 1's closed form, with the reason
    let b = random_batch(2, [1, 2, 2], 3, 1, &rt);
    let b = Batch::new(b.x.reshape((2, 4)).unwrap(), b.y).unwrap();
    let Err(e) = input_hessian(&net, &b) else {
        panic!("accepted")
    };
    assert!(e.to_string().contains("not known to be"), "{e}");
    // an f32 variable among f64 ones
    let vm = VarMap::new();
    let _ = candle_nn::linear(4, 3, vb(&vm).pp("a")).unwrap();
    let _ = candle_nn::linear(
        4,
        3,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu).pp("b"),
    )
    .unwrap();
    let e = CandleNet::from_fn(&vm, 3, |x, _| Ok(x.clone())).unwrap_err();
    assert!(e.to_string().contains("share one dtype"), "{e}");
}

/// `reset_parameters` follows PyTorch's defaults: bounds 1/√fan_in for weights and their
/// biases, ones/zeros for norm layers, and the same seed gives the same network.
#[test]
fn seeded_reset_follows_pytorch_defaults_and_is_reproducible() {
    let (a, b) = (VarMap::new(), VarMap::new());
    let (na, nb) = (small_cnn(&a, true, 9), small_cnn(&b, true, 9));
    for ((n, x), (_, y)) in na.params().iter().zip(nb.params()) {
        assert_eq!(to_vec(x.as_tensor()), to_vec(y.as_tensor()), "{n}");
    }
    let get = |n: &str| to_vec(na.param(n).unwrap().as_tensor());
    let within =
        |v: &[f64], b: f64| v.iter().all(|x| x.abs() <= b) && v.iter().any(|x| x.abs() > 0.5 * b);
    assert!(within(&get("conv.weight"), 1.0 / 9f64.sqrt()));
    assert!(within(&get("conv.bias"), 1.0 / 9f64.sqrt()));
    assert!(within(&get("fc.weight"), 1.0 / 784f64.sqrt()));
    assert!(get("bn.weight").iter().all(|&x| x == 1.0));
    assert!(get("bn.bias").iter().all(|&x| x == 0.0));
    let other = small_cnn(&VarMap::new(), true, 10);
    assert_ne!(
        get("fc.weight"),
        to_vec(other.param("fc.weight").unwrap().as_tensor())
    );
}

/// The three verbs and the one-line attack / landscape verbs are the solvers they name:
/// `Hessian::eigenvalues` is Lanczos on the Hessian operator, `gauss_newton` the GGN (= H on a
/// linear model), a split is the same matrix as its batch, `fgsm` is ε·sign(∇ₓJ), `along` at
/// α = 0 is the loss.
#[test]
fn three_verbs_are_the_solvers_they_name() {
    let rt = rt64();
    let net = small_cnn(&VarMap::new(), false, 6);
    let split = synthetic_split(40, 3);
    let b = split.to_batch(&rt).unwrap();
    let h = Hessian::new(&net, b.clone()).unwrap();
    assert_eq!(h.dim(), net.num_params());
    let op = HessianOperator::new(&net, DataSource::Batch(b.clone())).unwrap();
    let want = lanczos(&op, 2, &LanczosOpts::default())
        .unwrap()
        .eigenvalues;
    assert_eq!(h.eigenvalues(2).unwrap().eigenvalues, want);
    // a split (≤ 500 samples) is that batch
    let hs = Hessian::new(&net, &split).unwrap();
    assert_eq!(hs.eigenvalues(2).unwrap().eigenvalues, want);
    let tr = h.trace().unwrap();
    let exact = trace_exact(&net, &DataSource::Batch(b.clone()), None).unwrap();
    assert!(
        (tr.trace - exact.trace).abs() < 4.0 * tr.std_error.max(1e-12),
        "{} ± {} vs exact {}",
        tr.trace,
        tr.std_error,
        exact.trace
    );
    let d = h.density().unwrap();
    assert!(d.plot().is_ok());
    // softmax regression: Gauss–Newton = Hessian
    let vm = VarMap::new();
    let fc = candle_nn::linear(784, 10, vb(&vm).pp("fc")).unwrap();
    let lin = CandleNet::from_fn(&vm, 10, move |x, _| fc.forward(&x.flatten_from(1)?))
        .unwrap()
        .with_seed(1)
        .unwrap();
    let opts = LanczosOpts {
        tol: 1e-10,
        ..Default::default()
    };
    let eh = Hessian::new(&lin, b.clone())
        .unwrap()
        .eigenvalues_with(2, &opts)
        .unwrap();
    let eg = Hessian::gauss_newton(&lin, b.clone())
        .unwrap()
        .eigenvalues_with(2, &opts)
        .unwrap();
    for k in 0..2 {
        assert!((eh.eigenvalues[k] - eg.eigenvalues[k]).abs() < 1e-9 * eh.eigenvalues[0]);
    }
    // fgsm: the perturbation is ε·sign(g) where it is not clipped
    let o = attack::fgsm(&net, &b, 0.05).unwrap();
    let (_, g) = input_gradient(&net, &b).unwrap();
    let (dx, gx, x) = (
        to_vec(&(&o.x_adv - &b.x).unwrap()),
        to_vec(&g),
        to_vec(&b.x),
    );
    for i in 0..dx.len() {
        let free = x[i] + 0.05 * gx[i].signum() >= 0.0 && x[i] + 0.05 * gx[i].signum() <= 1.0;
        if free && gx[i] != 0.0 {
            assert!((dx[i] - 0.05 * gx[i].signum()).abs() < 1e-12);
        }
    }
    let curve = attack::accuracy_curve(&net, &split, AttackKind::Fgsm, &[0.05, 0.1]).unwrap();
    assert_eq!(curve.label, "FGSM");
    assert!(curve.plot().is_ok());
    let top = h.eigenvalues(1).unwrap();
    let c = landscape::along(&net, &top.eigenvectors[0], &[-0.1, 0.0, 0.1], b.clone()).unwrap();
    let (l0, _) = net.loss_and_accuracy(&b).unwrap();
    assert!((c.series[0].loss[1] - l0).abs() < 1e-12);
    assert!(c.plot().is_ok());
}

/// A user's network on the crate's own kernels that uses one convolution weight twice and a
/// fused linear layer. A fresh HVP's first backward replaces each use's weight gradient by a
/// projection onto v (`curvature::hvp`, `hvp_closure`); with the weight shared the two
/// projections add up, and H v stays exact: equal to the graph-reused HVP (the plain gradient
/// graph) and to central differences of gradients.
#[test]
fn shared_weights_on_the_crates_kernels_keep_the_fresh_hvp_exact() {
    use hessian_lab::models::layers::{ConvArgs, Kernels};
    let varmap = VarMap::new();
    let vb = vb(&varmap);
    let init = candle_nn::init::DEFAULT_KAIMING_NORMAL;
    let w = vb
        .get_with_hints((3, 3, 3, 3), "conv.weight", init)
        .unwrap();
    let cb = vb.get_with_hints(3, "conv.bias", init).unwrap();
    let fw = vb
        .get_with_hints((4, 3 * 6 * 6), "fc.weight", init)
        .unwrap();
    let fb = vb.get_with_hints(4, "fc.bias", init).unwrap();
    let net = CandleNet::from_fn(&varmap, 4, move |x, _| {
        let k = Kernels::Fused;
        let e = |e: hessian_lab::Error| candle_core::Error::msg(e);
        let h = k
            .conv2d(x, &w, Some(&cb), ConvArgs::new(1, 1).relu())
            .map_err(e)?;
        // the same weight again, on a 6 × 6 map (3 × 3 maps need no Winograd)
        let h = k
            .conv2d(&h, &w, Some(&cb), ConvArgs::new(1, 1))
            .map_err(e)?;
        k.linear(&h.flatten_from(1)?, &fw, Some(&fb)).map_err(e)
    })
    .unwrap()
    // deterministic weights (candle's initialisers are not seeded)
    .with_seed(4)
    .unwrap();
    let b = random_batch(5, [3, 6, 6], 4, 2, &rt64());
    let sel = ParamSelection::all(&net);
    let v = ParamVec::randn_like(&sel.tensors(&net), 9).unwrap();
    let fresh = hvp(&net, &b, &v).unwrap();
    let reused = HessianOperator::new(&net, DataSource::Batch(b.clone()))
        .unwrap()
        .apply(&v)
        .unwrap();
    let fd = hvp_fd(&net, &b, &sel, &v, None).unwrap();
    let rel =
        |a: &ParamVec, c: &ParamVec| a.axpy(-1.0, c).unwrap().norm().unwrap() / c.norm().unwrap();
    assert!(
        rel(&fresh, &reused) < 1e-12,
        "fresh vs reused {}",
        rel(&fresh, &reused)
    );
    assert!(
        rel(&fresh, &fd) < 1e-6,
        "fresh vs differences {}",
        rel(&fresh, &fd)
    );
    // the same loss as a closure over the variables
    let vars: Vec<candle_core::Var> = net.params().iter().map(|(_, p)| p.clone()).collect();
    let closure = hvp_closure(&vars, || net.loss(&b), &v).unwrap();
    assert!(
        rel(&closure, &reused) < 1e-12,
        "closure {}",
        rel(&closure, &reused)
    );
}
