//! Model shapes, parameter counts, pools against brute force and finite differences,
//! safetensors round trips and typed errors.
mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use hessian_lab::models::layers::ConvArgs;
use hessian_lab::models::{layers, Model, ModelConfig, ModelKind};
use hessian_lab::Error;

#[test]
fn output_shapes_and_parameter_counts() {
    let rt = rt32();
    let cases = [
        (ModelKind::M1, 1_256_080usize, 10usize),
        (ModelKind::C1, 282_122, 10),
        (ModelKind::C2, 2_426_698, 10),
        (ModelKind::C3, 2_425_930, 10),
        (ModelKind::ResNet18, 11_220_132, 100),
    ];
    for (kind, count, classes) in cases {
        let m = Model::new(kind, &rt, 0).unwrap();
        assert_eq!(m.num_params(), count, "{kind:?}");
        let shape = m.config.input_shape;
        let b = random_batch(2, shape, classes, 1, &rt);
        let z = m.forward(&b.x).unwrap();
        assert_eq!(z.dims(), &[2, classes], "{kind:?}");
        assert!(to_vec(&z).iter().all(|v| v.is_finite()));
        // BN running statistics are buffers, never parameters.
        assert!(m.params().iter().all(|(n, _)| !n.contains("running")));
        let names: Vec<&str> = m.params().iter().map(|(n, _)| n.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "parameters are ordered by name");
    }
    let m1 = Model::new(ModelKind::M1, &rt, 0).unwrap();
    let shapes: Vec<(String, Vec<usize>)> = m1
        .params()
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .collect();
    assert_eq!(
        shapes,
        vec![
            ("conv1.bias".into(), vec![20]),
            ("conv1.weight".into(), vec![20, 1, 5, 5]),
            ("conv2.bias".into(), vec![50]),
            ("conv2.weight".into(), vec![50, 20, 5, 5]),
            ("fc1.bias".into(), vec![500]),
            ("fc1.weight".into(), vec![500, 2450]),
            ("fc2.bias".into(), vec![10]),
            ("fc2.weight".into(), vec![10, 500]),
        ]
    );
    let r = Model::new(ModelKind::ResNet18, &rt, 0).unwrap();
    for n in [
        "layer2.0.shortcut.0.weight",
        "layer2.0.shortcut.1.weight",
        "layer4.1.bn2.bias",
        "linear.weight",
    ] {
        assert!(r.param(n).is_ok(), "{n}");
    }
    assert!(r
        .buffers()
        .iter()
        .any(|(n, _)| n == "layer3.0.shortcut.1.running_var"));
    assert!(
        r.param("layer1.0.shortcut.0.weight").is_err(),
        "no projection without a shape change"
    );
}

#[test]
fn seeded_init_is_deterministic_and_pytorch_scaled() {
    let rt = rt32();
    let a = Model::new(ModelKind::M1, &rt, 3).unwrap();
    let b = Model::new(ModelKind::M1, &rt, 3).unwrap();
    let c = Model::new(ModelKind::M1, &rt, 4).unwrap();
    let va = to_vec(a.param("fc1.weight").unwrap().as_tensor());
    assert_eq!(va, to_vec(b.param("fc1.weight").unwrap().as_tensor()));
    assert_ne!(va, to_vec(c.param("fc1.weight").unwrap().as_tensor()));
    // U(-1/sqrt(fan_in), 1/sqrt(fan_in)): max |w| close to the bound, variance bound²/3.
    let bound = 1.0 / (2450f64).sqrt();
    let mx = va.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(mx <= bound + 1e-7 && mx > 0.99 * bound);
    let var = va.iter().map(|v| v * v).sum::<f64>() / va.len() as f64;
    assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.01);
}

/// The input position o·s + d − p of output o's window offset d along an axis of `len`
/// inputs, or `None` where it falls in the padding.
fn tap(o: usize, d: usize, s: usize, p: usize, len: usize) -> Option<usize> {
    (o * s + d).checked_sub(p).filter(|&i| i < len)
}

fn brute_max_pool(
    x: &[f64],
    (n, c, h, w): (usize, usize, usize, usize),
    k: usize,
    s: usize,
    p: usize,
) -> Vec<f64> {
    let oh = (h + 2 * p - k) / s + 1;
    let ow = (w + 2 * p - k) / s + 1;
    let mut out = vec![];
    for ni in 0..n {
        for ci in 0..c {
            for i in 0..oh {
                for j in 0..ow {
                    let mut m = f64::NEG_INFINITY;
                    for di in 0..k {
                        for dj in 0..k {
                            if let (Some(r), Some(q)) = (tap(i, di, s, p, h), tap(j, dj, s, p, w)) {
                                m = m.max(x[((ni * c + ci) * h + r) * w + q]);
                            }
                        }
                    }
                    out.push(m);
                }
            }
        }
    }
    out
}

/// Pools: values equal the definition; gradient and Hessian-vector product of
/// L(x) = Σ w ⊙ pool(x)² equal central finite differences (f64, distinct values so the
/// maxima are unique).
#[test]
fn pools_match_definition_and_finite_differences() {
    use hessian_lab::models::layers::Kernels;
    for kern in [Kernels::Fused, Kernels::Candle] {
        for &(k, s, p, h, w) in &[
            (2, 2, 0, 6, 8),
            (3, 2, 1, 8, 8),
            (3, 2, 1, 7, 5),
            (3, 1, 1, 5, 5),
            (2, 2, 0, 5, 7),
            (3, 2, 0, 7, 9),
            (3, 1, 0, 5, 6),
        ] {
            let shape = (2, 3, h, w);
            let x0 = randn(&[2, 3, h, w], 10 + k as u64 + h as u64, DType::F64);
            let xv = to_vec(&x0);
            let y = kern.max_pool2d(&x0, k, s, p).unwrap();
            assert_eq!(
                max_abs_diff(&to_vec(&y), &brute_max_pool(&xv, shape, k, s, p)),
                0.0
            );
            let wt = randn(y.dims(), 99, DType::F64);
            let loss = |x: &Tensor| -> Tensor {
                (kern.max_pool2d(x, k, s, p).unwrap().sqr().unwrap() * &wt)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let lossv = |v: &[f64]| -> f64 {
                let t = Tensor::from_vec(v.to_vec(), (2, 3, h, w), &Device::Cpu).unwrap();
                loss(&t).to_scalar::<f64>().unwrap()
            };
            let xvar = Var::from_tensor(&x0).unwrap();
            let g = loss(xvar.as_tensor()).backward_with_graph(true).unwrap();
            let grad = g.get(xvar.as_tensor()).unwrap().clone();
            let gv = to_vec(&grad);
            let eps = 1e-6;
            let mut fd = vec![0.0; xv.len()];
            for i in 0..xv.len() {
                let (mut a, mut b) = (xv.clone(), xv.clone());
                a[i] += eps;
                b[i] -= eps;
                fd[i] = (lossv(&a) - lossv(&b)) / (2.0 * eps);
            }
            assert!(
                rel_err(&gv, &fd) < 1e-8,
                "grad k{k} s{s} p{p}: {}",
                rel_err(&gv, &fd)
            );
            // Second order: Hv by double backward vs finite differences of the gradient.
            let v = randn(&[2, 3, h, w], 5, DType::F64);
            let hv = (grad * &v)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward_with_graph(true)
                .unwrap();
            let hv = to_vec(hv.get(xvar.as_tensor()).unwrap());
            let vv = to_vec(&v);
            let grad_at = |d: f64| -> Vec<f64> {
                let xs: Vec<f64> = xv.iter().zip(&vv).map(|(a, b)| a + d * b).collect();
                let t =
                    Var::from_tensor(&Tensor::from_vec(xs, (2, 3, h, w), &Device::Cpu).unwrap())
                        .unwrap();
                to_vec(
                    loss(t.as_tensor())
                        .backward_with_graph(true)
                        .unwrap()
                        .get(t.as_tensor())
                        .unwrap(),
                )
            };
            let (gp, gm) = (grad_at(1e-6), grad_at(-1e-6));
            let fdh: Vec<f64> = gp.iter().zip(&gm).map(|(a, b)| (a - b) / 2e-6).collect();
            assert!(
                rel_err(&hv, &fdh) < 1e-7,
                "hvp k{k} s{s} p{p} {kern:?}: {}",
                rel_err(&hv, &fdh)
            );
        }
    }
}

#[test]
fn save_load_round_trip_including_bn_buffers() {
    let rt = rt32();
    let dir = std::env::temp_dir().join(format!("hl-models-{}", std::process::id()));
    for kind in [ModelKind::M1, ModelKind::C1] {
        let m = Model::new(kind, &rt, 5).unwrap();
        // Make BN buffers non-trivial by one train-mode forward.
        let b = random_batch(4, m.config.input_shape, 10, 2, &rt);
        m.forward_t(&b.x, true).unwrap();
        let path = dir.join(format!("{}.safetensors", kind.name()));
        m.save(&path).unwrap();
        let l = Model::load(kind, &path, &rt).unwrap();
        assert_eq!(
            to_vec(&m.forward(&b.x).unwrap()),
            to_vec(&l.forward(&b.x).unwrap())
        );
        for ((n1, a), (n2, c)) in m.buffers().iter().zip(l.buffers()) {
            assert_eq!(n1, n2);
            assert_eq!(to_vec(a.as_tensor()), to_vec(c.as_tensor()));
        }
        // Loads into f64 too.
        let l64 = Model::load(kind, &path, &rt64()).unwrap();
        assert_eq!(l64.dtype(), DType::F64);
    }
    // A custom config survives through the metadata.
    let cfg = ModelConfig::tiny(ModelKind::Mlp, [1, 3, 3], 4, 7);
    let m = Model::from_config(cfg, &rt, 1).unwrap();
    let p = dir.join("mlp.safetensors");
    m.save(&p).unwrap();
    let l = Model::load(ModelKind::Mlp, &p, &rt).unwrap();
    assert_eq!(l.config.hidden, 7);
    assert_eq!(l.config.input_shape, [1, 3, 3]);
}

#[test]
fn wrong_names_shapes_and_dtypes_are_listed() {
    let rt = rt32();
    let dir = std::env::temp_dir().join(format!("hl-models-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = Model::new(ModelKind::M1, &rt, 0).unwrap();
    let mut t: std::collections::HashMap<String, Tensor> = m
        .params()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    t.remove("fc2.bias");
    t.insert(
        "fc3.weight".into(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    t.insert(
        "conv1.weight".into(),
        Tensor::zeros((20, 1, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    t.insert(
        "conv1.bias".into(),
        Tensor::zeros(20, DType::U32, &Device::Cpu).unwrap(),
    );
    let p = dir.join("bad.safetensors");
    candle_core::safetensors::save(&t, &p).unwrap();
    match Model::load(ModelKind::M1, &p, &rt) {
        Err(Error::WeightsMismatch { problems, .. }) => {
            let all = problems.join("\n");
            assert!(all.contains("missing tensors: fc2.bias"), "{all}");
            assert!(all.contains("unexpected tensors: fc3.weight"), "{all}");
            assert!(
                all.contains("conv1.weight: shape [20, 1, 3, 3], expected [20, 1, 5, 5]"),
                "{all}"
            );
            assert!(all.contains("conv1.bias: dtype U32"), "{all}");
        }
        other => panic!("expected WeightsMismatch, got {other:?}"),
    }
    // Saved from another model.
    let c1 = Model::new(ModelKind::C1, &rt, 0).unwrap();
    let pc = dir.join("c1.safetensors");
    c1.save(&pc).unwrap();
    assert!(matches!(
        Model::load(ModelKind::M1, &pc, &rt),
        Err(Error::WeightsMismatch { .. })
    ));
    // Not a safetensors file / missing file.
    std::fs::write(dir.join("junk"), b"hello").unwrap();
    assert!(matches!(
        Model::load(ModelKind::M1, dir.join("junk"), &rt),
        Err(Error::DataFile { .. })
    ));
    assert!(matches!(
        Model::load(ModelKind::M1, dir.join("none"), &rt),
        Err(Error::Io { .. })
    ));
    assert!(matches!(
        "lenet".parse::<ModelKind>(),
        Err(Error::UnknownModel(_))
    ));
}

#[test]
fn bad_inputs_are_typed_errors() {
    let rt = rt32();
    let m = Model::new(ModelKind::M1, &rt, 0).unwrap();
    let x = Tensor::zeros((2, 3, 28, 28), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(m.forward(&x), Err(Error::Shape(_))));
    let x = Tensor::zeros((2, 1, 28, 28), DType::F64, &Device::Cpu).unwrap();
    assert!(matches!(m.forward(&x), Err(Error::Shape(_))));
    let x = Tensor::zeros((0, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
    assert!(m.forward(&x).is_err());
}

/// The fused CPU kernels equal candle's ops on a convolution (with bias)
/// → ReLU → 2×2 max pool → BatchNorm (eval) → linear chain, with a loss cubic in the output: value,
/// gradient and HVP (f64) for the strides, paddings and kernels the paper's models use, for batch 1
/// (gemm threads) and batch 3 (samples over threads), with the input a variable (input
/// Hessians) and not (parameter Hessians: its gradient is skipped).
#[test]
fn fused_kernels_match_candle_to_second_order() {
    use hessian_lab::models::layers::Kernels;
    assert_eq!(
        hessian_lab::Runtime::cpu_f64().kernels,
        Kernels::Fused,
        "the fused kernels are the default"
    );
    for &(n, cin, cout, k, s, p, h) in &[
        (3, 1, 4, 5, 2, 2, 12),
        (1, 3, 5, 3, 1, 1, 9),
        (3, 4, 6, 1, 2, 0, 8),
        (2, 2, 3, 5, 2, 2, 7),
        (3, 3, 4, 3, 2, 1, 8),
        // several samples per gemm (grouping) with a short last group, see below
        (7, 2, 3, 3, 1, 1, 6),
        (9, 3, 2, 5, 2, 2, 7),
        // 3×3 stride 1 with ≥ 16 channels each way and ≥ 16 output pixels: the Winograd
        // kernels (F(4×4, 3×3) on maps of ≥ 8 × 8, F(2×2, 3×3) below), odd and even maps,
        // padding 0–2
        (3, 16, 16, 3, 1, 1, 9),
        (5, 16, 17, 3, 1, 0, 10),
        (2, 17, 16, 3, 1, 2, 7),
        (3, 16, 16, 3, 1, 1, 5),
    ] {
        for x_is_var in [true, false] {
            let xt = randn(&[n, cin, h, h], 1, DType::F64);
            let x = Var::from_tensor(&xt).unwrap();
            let w = Var::from_tensor(&randn(&[cout, cin, k, k], 2, DType::F64)).unwrap();
            let b = Var::from_tensor(&randn(&[cout], 5, DType::F64)).unwrap();
            let u = randn(&[cout, cin, k, k], 3, DType::F64);
            let ub = randn(&[cout], 6, DType::F64);
            let ux = randn(&[n, cin, h, h], 4, DType::F64);
            let bn_g = Var::from_tensor(&randn(&[cout], 7, DType::F64)).unwrap();
            let bn_b = Var::from_tensor(&randn(&[cout], 8, DType::F64)).unwrap();
            let rm = Var::from_tensor(&randn(&[cout], 9, DType::F64)).unwrap();
            let rv =
                Var::from_tensor(&(randn(&[cout], 10, DType::F64).sqr().unwrap() + 0.5).unwrap())
                    .unwrap();
            let bufs = layers::BnBuffers {
                running_mean: &rm,
                running_var: &rv,
            };
            let ug = randn(&[cout], 11, DType::F64);
            let ph = ((h + 2 * p - k) / s + 1) / 2;
            let lw = Var::from_tensor(&randn(&[3, cout * ph * ph], 12, DType::F64)).unwrap();
            let lb = Var::from_tensor(&randn(&[3], 13, DType::F64)).unwrap();
            let ul = randn(&[3, cout * ph * ph], 14, DType::F64);
            let oh = (h + 2 * p - k) / s + 1;
            let yr_coef = randn(&[n, cout, oh, oh], 15, DType::F64);
            let run = |imp: Kernels| -> Vec<Vec<f64>> {
                let xin = if x_is_var {
                    x.as_tensor().clone()
                } else {
                    xt.clone()
                };
                let y = imp
                    .conv2d(
                        &xin,
                        w.as_tensor(),
                        Some(b.as_tensor()),
                        ConvArgs::new(s, p),
                    )
                    .unwrap();
                // conv+bias+ReLU as one op (fused) vs conv then ReLU (candle's ops)
                let yr = imp
                    .conv2d(
                        &xin,
                        w.as_tensor(),
                        Some(b.as_tensor()),
                        ConvArgs::new(s, p).relu(),
                    )
                    .unwrap();
                let z = imp.relu(&(&y - 0.3).unwrap()).unwrap();
                // A max pool and BatchNorm in eval mode (running statistics as constants), in
                // C1's order: ties in a pool window are then only ReLU zeros, whose gradient
                // is zero whichever tie gets it (candle's reshape+max gives it to all ties).
                let z = imp.max_pool2d(&z, 2, 2, 0).unwrap();
                let z = imp
                    .batch_norm(&z, bn_g.as_tensor(), bn_b.as_tensor(), &bufs, false)
                    .unwrap();
                // A linear layer on top; a loss with a non-zero Hessian in every argument.
                let o = imp
                    .linear(
                        &z.flatten_from(1).unwrap(),
                        lw.as_tensor(),
                        Some(lb.as_tensor()),
                    )
                    .unwrap();
                let l = (z.powf(3.0).unwrap().sum_all().unwrap()
                    + y.sqr().unwrap().sum_all().unwrap()
                    + (yr.powf(3.0).unwrap().sum_all().unwrap() * 0.5).unwrap()
                    // a linear term: its gradient is non-zero where the ReLU clamps, so a
                    // missing mask shows
                    + (&yr * &yr_coef).unwrap().sum_all().unwrap()
                    + o.sqr().unwrap().sqr().unwrap().sum_all().unwrap())
                .unwrap();
                let g = l.backward_with_graph(true).unwrap();
                let (gw, gb, gg) = (
                    g.get(w.as_tensor()).unwrap().clone(),
                    g.get(b.as_tensor()).unwrap().clone(),
                    g.get(bn_g.as_tensor()).unwrap().clone(),
                );
                let mut gv = ((&gw * &u).unwrap().sum_all().unwrap()
                    + (&gb * &ub).unwrap().sum_all().unwrap()
                    + (&gg * &ug).unwrap().sum_all().unwrap())
                .unwrap();
                let gbeta = g.get(bn_b.as_tensor()).unwrap().clone();
                let glw = g.get(lw.as_tensor()).unwrap().clone();
                let glb = g.get(lb.as_tensor()).unwrap().clone();
                gv = (gv + (&glw * &ul).unwrap().sum_all().unwrap()).unwrap();
                let mut out = vec![
                    to_vec(&y),
                    to_vec(&yr),
                    to_vec(&z),
                    to_vec(&gw),
                    to_vec(&gb),
                    to_vec(&gg),
                    to_vec(&gbeta),
                    to_vec(&o),
                    to_vec(&glw),
                    to_vec(&glb),
                ];
                if x_is_var {
                    let gx = g.get(x.as_tensor()).unwrap().clone();
                    gv = (gv + (&gx * &ux).unwrap().sum_all().unwrap()).unwrap();
                    out.push(to_vec(&gx));
                } else {
                    assert!(g.get(x.as_tensor()).is_none());
                }
                let h2 = gv.backward_with_graph(true).unwrap();
                out.push(to_vec(h2.get(w.as_tensor()).unwrap()));
                out.push(to_vec(h2.get(b.as_tensor()).unwrap()));
                out.push(to_vec(h2.get(bn_g.as_tensor()).unwrap()));
                out.push(to_vec(h2.get(lw.as_tensor()).unwrap()));
                out.push(to_vec(h2.get(lb.as_tensor()).unwrap()));
                if x_is_var {
                    out.push(to_vec(h2.get(x.as_tensor()).unwrap()));
                }
                out
            };
            let a = run(Kernels::Candle);
            // The conv kernels put up to n/threads samples side by side in one gemm: run them
            // in pools of 1, 2 and 3 threads (one group of all samples; groups with a shorter
            // last one; groups over threads).
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let f = pool.install(|| run(Kernels::Fused));
                assert_eq!(a.len(), f.len());
                for (i, (a, f)) in a.iter().zip(&f).enumerate() {
                    let e = rel_err(f, a);
                    assert!(
                        e < 1e-12,
                        "n{n} k{k} s{s} p{p} x_var {x_is_var} threads {threads}: output {i} \
                         differs by {e:e}"
                    );
                }
            }
        }
    }
}

/// Linear layers with and without a bias on the fused kernels (three mutually adjoint
/// products, each one's backward built from the others) against candle's matmul: the value,
/// the gradient, a Hessian-vector product and a third derivative (the gradient of ⟨H v, u⟩),
/// through two layers and a tanh so that every third derivative is non-zero. Wide enough
/// (x Wᵀ with 70 output columns) that two threads split x Wᵀ by columns.
#[test]
fn linear_layers_on_the_fused_kernels_match_candle_to_third_order() {
    use hessian_lab::models::layers::Kernels;
    let (n, i, h, o) = (40, 50, 70, 3);
    let x = Var::from_tensor(&randn(&[n, i], 31, DType::F64)).unwrap();
    let w1 = Var::from_tensor(&(randn(&[h, i], 32, DType::F64) * 0.2).unwrap()).unwrap();
    let b1 = Var::from_tensor(&randn(&[h], 33, DType::F64)).unwrap();
    let w2 = Var::from_tensor(&(randn(&[o, h], 34, DType::F64) * 0.2).unwrap()).unwrap();
    let vars = [&x, &w1, &b1, &w2];
    let u: Vec<Tensor> = vars
        .iter()
        .enumerate()
        .map(|(j, v)| randn(v.dims(), 40 + j as u64, DType::F64))
        .collect();
    let u2: Vec<Tensor> = vars
        .iter()
        .enumerate()
        .map(|(j, v)| randn(v.dims(), 50 + j as u64, DType::F64))
        .collect();
    let dot = |g: &candle_core::backprop::GradStore, u: &[Tensor]| {
        let mut acc = Tensor::new(0f64, &Device::Cpu).unwrap();
        for (v, u) in vars.iter().zip(u) {
            if let Some(gv) = g.get(v.as_tensor()) {
                acc = (acc + (gv * u).unwrap().sum_all().unwrap()).unwrap();
            }
        }
        acc
    };
    for bias in [true, false] {
        let run = |k: Kernels| -> Vec<Vec<f64>> {
            let z = k
                .linear(
                    x.as_tensor(),
                    w1.as_tensor(),
                    bias.then_some(b1.as_tensor()),
                )
                .unwrap();
            let out = k.linear(&z.tanh().unwrap(), w2.as_tensor(), None).unwrap();
            let l = (out.powf(3.0).unwrap().sum_all().unwrap()
                + (z.sqr().unwrap().sum_all().unwrap() * 0.1).unwrap())
            .unwrap();
            let g = l.backward_with_graph(true).unwrap();
            let g2 = dot(&g, &u).backward_with_graph(true).unwrap();
            let g3 = dot(&g2, &u2).backward_with_graph(true).unwrap();
            let mut r = vec![to_vec(&out)];
            for store in [&g, &g2, &g3] {
                for (j, v) in vars.iter().enumerate() {
                    if j == 2 && !bias {
                        assert!(store.get(v.as_tensor()).is_none());
                        continue;
                    }
                    r.push(to_vec(store.get(v.as_tensor()).unwrap()));
                }
            }
            r
        };
        let a = run(Kernels::Candle);
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (f, calls) = pool.install(|| {
                let before = hessian_lab::ops::kernel_calls_on_this_thread();
                let f = run(Kernels::Fused);
                (f, hessian_lab::ops::kernel_calls_on_this_thread() - before)
            });
            assert!(calls > 0, "the fused linear kernels did not run");
            assert_eq!(a.len(), f.len());
            for (j, (a, f)) in a.iter().zip(&f).enumerate() {
                assert!(
                    a.iter().any(|v| *v != 0.0),
                    "bias {bias}: output {j} is zero"
                );
                let e = rel_err(f, a);
                assert!(
                    e < 1e-12,
                    "bias {bias}, threads {threads}: output {j} differs by {e:e}"
                );
            }
        }
    }
}

#[test]
fn max_pool_gradient_goes_to_the_first_tied_maximum() {
    // PyTorch's rule: within a window the first maximum in row-major order takes the whole
    // gradient. Windows: all equal; maximum twice (positions 1 and 3); unique maximum last.
    for (k, s, p) in [(2, 2, 0), (2, 2, 1)] {
        let vals = [
            0.0, 0.0, 5.0, 7.0, 1.0, 2.0, //
            0.0, 0.0, 7.0, 3.0, 3.0, 9.0,
        ];
        let x = Var::from_tensor(
            &candle_core::Tensor::from_vec(vals.to_vec(), (1, 1, 2, 6), &candle_core::Device::Cpu)
                .unwrap(),
        )
        .unwrap();
        let y = layers::Kernels::Fused
            .max_pool2d(x.as_tensor(), k, s, p)
            .unwrap();
        let g = y.sum_all().unwrap().backward_with_graph(true).unwrap();
        let gx = to_vec(g.get(x.as_tensor()).unwrap());
        let mut want = vec![0.0; 12];
        if p == 0 {
            // windows (cols 0-1), (2-3), (4-5): first of four zeros; 7 at (0,3) before (1,2)
            // in row-major order; 9 at (1,5)
            want[0] = 1.0;
            want[3] = 1.0;
            want[11] = 1.0;
        } else {
            // padded (−∞ outside): windows are clipped at the border; expected by brute force
            let shape = (1, 1, 2, 6);
            let y_bf = brute_max_pool(&vals, shape, k, s, p);
            assert_eq!(max_abs_diff(&to_vec(&y), &y_bf), 0.0);
            want = brute_first_argmax_grad(&vals, shape, k, s, p);
        }
        assert_eq!(gx, want, "k{k} s{s} p{p}");
    }
}

#[test]
fn max_pool_matches_brute_force_on_ties_borders_and_wide_rows() {
    // Values from {0, 1, 2, 3} make ties frequent; long rows, strides 1–3 and paddings up to
    // k/2 clip windows at every border. 15 planes: a group of 8 scanned on vector lanes and 7
    // scanned one by one (wide f64 planes: all one by one); f32 and f64.
    for (k, s, p, h, w) in [
        (3, 2, 1, 9, 16),
        (2, 2, 0, 6, 10),
        (3, 1, 1, 5, 7),
        (2, 1, 1, 4, 5),
        (3, 3, 1, 7, 8),
        (5, 2, 2, 9, 9),
        (3, 2, 1, 5, 150),
        (2, 1, 0, 3, 140),
        (3, 2, 1, 40, 40),
    ] {
        let shape = (3, 5, h, w);
        let vals: Vec<f64> = to_vec(&randn(&[3, 5, h, w], (k * h + w) as u64, DType::F64))
            .iter()
            .map(|v| (1.5 * v.abs()).floor().min(3.0))
            .collect();
        for dt in [DType::F64, DType::F32] {
            let x = Var::from_tensor(
                &Tensor::from_vec(vals.clone(), shape, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap(),
            )
            .unwrap();
            let y = layers::Kernels::Fused
                .max_pool2d(x.as_tensor(), k, s, p)
                .unwrap();
            let what = format!("k{k} s{s} p{p} {h}×{w} {dt:?}");
            assert_eq!(
                max_abs_diff(&to_vec(&y), &brute_max_pool(&vals, shape, k, s, p)),
                0.0,
                "{what}"
            );
            let g = y.sum_all().unwrap().backward_with_graph(true).unwrap();
            let gx = to_vec(g.get(x.as_tensor()).unwrap());
            assert_eq!(gx, brute_first_argmax_grad(&vals, shape, k, s, p), "{what}");
        }
    }
}

/// ∂(Σ maxpool)/∂x with PyTorch's first-maximum rule, by brute force.
fn brute_first_argmax_grad(
    x: &[f64],
    (n, c, h, w): (usize, usize, usize, usize),
    k: usize,
    s: usize,
    p: usize,
) -> Vec<f64> {
    let oh = (h + 2 * p - k) / s + 1;
    let ow = (w + 2 * p - k) / s + 1;
    let mut g = vec![0.0; x.len()];
    for b in 0..n * c {
        for oi in 0..oh {
            for oj in 0..ow {
                let mut best: Option<usize> = None;
                for r in 0..k {
                    for q in 0..k {
                        let (Some(i), Some(j)) = (tap(oi, r, s, p, h), tap(oj, q, s, p, w)) else {
                            continue;
                        };
                        let idx = b * h * w + i * w + j;
                        if best.is_none_or(|bi| x[idx] > x[bi]) {
                            best = Some(idx);
                        }
                    }
                }
                if let Some(bi) = best {
                    g[bi] += 1.0;
                }
            }
        }
    }
    g
}

#[test]
fn conv_with_windows_wholly_in_the_padding_matches_candle() {
    // padding ≥ half the kernel: some windows see only padding (stride 1 and 2)
    use hessian_lab::models::layers::Kernels;
    for &(h, w, k, s, p) in &[
        (1, 1, 5, 1, 2),
        (2, 3, 3, 1, 2),
        (3, 2, 3, 2, 2),
        (1, 4, 3, 1, 3),
    ] {
        let x = Var::from_tensor(&randn(&[2, 2, h, w], 21, DType::F64)).unwrap();
        let wt = Var::from_tensor(&randn(&[3, 2, k, k], 22, DType::F64)).unwrap();
        let b = Var::from_tensor(&randn(&[3], 23, DType::F64)).unwrap();
        let run = |imp: Kernels| {
            let y = imp
                .conv2d(
                    x.as_tensor(),
                    wt.as_tensor(),
                    Some(b.as_tensor()),
                    ConvArgs::new(s, p),
                )
                .unwrap();
            let g = y
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward_with_graph(true)
                .unwrap();
            vec![
                to_vec(&y),
                to_vec(g.get(x.as_tensor()).unwrap()),
                to_vec(g.get(wt.as_tensor()).unwrap()),
                to_vec(g.get(b.as_tensor()).unwrap()),
            ]
        };
        let a = run(Kernels::Candle);
        let f = run(Kernels::Fused);
        // the input gradient also against central differences of the loss (f64)
        let xv = to_vec(x.as_tensor());
        let loss = |v: &[f64]| -> f64 {
            let xt =
                candle_core::Tensor::from_vec(v.to_vec(), (2, 2, h, w), &candle_core::Device::Cpu)
                    .unwrap();
            let y = Kernels::Fused
                .conv2d(
                    &xt,
                    wt.as_tensor(),
                    Some(b.as_tensor()),
                    ConvArgs::new(s, p),
                )
                .unwrap();
            y.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let fd: Vec<f64> = (0..xv.len())
            .map(|i| {
                let (mut up, mut dn) = (xv.clone(), xv.clone());
                up[i] += 1e-5;
                dn[i] -= 1e-5;
                (loss(&up) - loss(&dn)) / 2e-5
            })
            .collect();
        assert!(
            rel_err(&f[1], &fd) < 1e-7,
            "h{h} w{w} k{k} s{s} p{p}: input gradient vs FD"
        );
        // Value, weight and bias gradients against candle. Not the input gradient: candle
        // 0.11's (conv_transpose2d) is wrong for stride 2 with padding 2 on a 3×2 map
        // (relative error 1.1 against these finite differences; ours 1e-10).
        for i in [0, 2, 3] {
            assert!(
                rel_err(&f[i], &a[i]) < 1e-12,
                "h{h} w{w} k{k} s{s} p{p}: output {i}"
            );
        }
    }
}

#[test]
fn resnet_batchnorm_folded_into_its_convolutions_is_exact_to_second_order() {
    // Eval mode on the fused kernels folds each BatchNorm into the convolution before it
    // (conv(x, a⊙W) + b) unless the weight outweighs the output (here the stem is folded, the
    // last stage on 1 × 1 maps is not); candle's kernels run conv, BatchNorm and ReLU as
    // separate ops. Same weights and running statistics: logits, gradient (W, γ, β) and HVP
    // must agree.
    use hessian_lab::curvature::{self, ParamSelection, ParamVec};
    use hessian_lab::models::layers::Kernels;
    use hessian_lab::models::{ModelConfig, Network};
    let cfg = ModelConfig::tiny(ModelKind::ResNet18, [3, 8, 8], 5, 0);
    let fused = Model::from_config(cfg.clone(), &rt64(), 4).unwrap();
    let plain_rt = rt64().with_kernels(Kernels::Candle);
    let plain = Model::from_config(cfg, &plain_rt, 4).unwrap();
    let b = random_batch(3, [3, 8, 8], 5, 6, &rt64());
    // non-trivial running statistics (one train-mode forward each, same batch)
    fused.forward_t(&b.x, true).unwrap();
    plain.forward_t(&b.x, true).unwrap();
    for ((_, p), (_, q)) in fused.buffers().iter().zip(plain.buffers()) {
        q.set(p.as_tensor()).unwrap();
    }
    let (zf, zp) = (fused.forward(&b.x).unwrap(), plain.forward(&b.x).unwrap());
    assert!(rel_err(&to_vec(&zf), &to_vec(&zp)) < 1e-12);
    let sel = ParamSelection::all(&fused);
    let (_, gf) = curvature::gradient(&fused, &b, &sel).unwrap();
    let (_, gp) = curvature::gradient(&plain, &b, &ParamSelection::all(&plain)).unwrap();
    let rel =
        |a: &ParamVec, c: &ParamVec| a.axpy(-1.0, c).unwrap().norm().unwrap() / c.norm().unwrap();
    assert!(rel(&gf, &gp) < 1e-11, "gradient {}", rel(&gf, &gp));
    let v = ParamVec::randn_like(&sel.tensors(&fused), 8).unwrap();
    let (hf, hp) = (
        curvature::hvp(&fused, &b, &v).unwrap(),
        curvature::hvp(&plain, &b, &v).unwrap(),
    );
    assert!(rel(&hf, &hp) < 1e-10, "HVP {}", rel(&hf, &hp));
    // the BatchNorm parameters get their share: γ's gradient is not zero
    let names: Vec<String> = fused.params().iter().map(|(n, _)| n.clone()).collect();
    let i = names
        .iter()
        .position(|n| n == "layer1.0.bn1.weight")
        .unwrap();
    assert!(
        gf.0[i]
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            > 0.0
    );
}

#[test]
fn batchnorm_then_pool_as_one_op_equals_the_two_ops_to_second_order() {
    // Kernels::Fused.affine_max_pool2d pools a·y + b as a·gather(y, idx) + b with idx the
    // arg-max of a·y + b; the reference is the affine map, then the (first-maximum) pool.
    // ReLU'd data (exact zeros: tied windows) and negative a (the pool must pick minima of y).
    use hessian_lab::models::layers::Kernels;
    let dev = Device::Cpu;
    let y = Var::from_tensor(
        &Tensor::randn(0f64, 1.0, (2, 4, 6, 6), &dev)
            .unwrap()
            .relu()
            .unwrap(),
    )
    .unwrap();
    let a = Var::from_tensor(&Tensor::new(&[1.5f64, -0.7, 0.3, -2.0], &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::new(&[0.1f64, -0.2, 0.0, 0.4], &dev).unwrap()).unwrap();
    let c = Tensor::randn(0f64, 1.0, (2, 4, 3, 3), &dev).unwrap();
    let vs = [
        Tensor::randn(0f64, 1.0, (2, 4, 6, 6), &dev).unwrap(),
        Tensor::randn(0f64, 1.0, 4, &dev).unwrap(),
        Tensor::randn(0f64, 1.0, 4, &dev).unwrap(),
    ];
    let vars = [y.as_tensor(), a.as_tensor(), b.as_tensor()];
    for (k, s, p) in [(2, 2, 0), (3, 2, 1)] {
        let run = |one_op: bool| -> Vec<Vec<f64>> {
            let out = if one_op {
                Kernels::Fused
                    .affine_max_pool2d(vars[0], vars[1], vars[2], (k, s, p))
                    .unwrap()
            } else {
                let z = vars[0]
                    .broadcast_mul(&vars[1].reshape((1, 4, 1, 1)).unwrap())
                    .unwrap()
                    .broadcast_add(&vars[2].reshape((1, 4, 1, 1)).unwrap())
                    .unwrap();
                Kernels::Fused.max_pool2d(&z, k, s, p).unwrap()
            };
            // a loss with curvature in y, a and b: Σ c ⊙ out²
            let loss = (out.sqr().unwrap() * &c).unwrap().sum_all().unwrap();
            let g = loss.backward_with_graph(true).unwrap();
            let mut res = vec![to_vec(&out)];
            let mut gv = Tensor::new(0f64, &dev).unwrap();
            for (t, v) in vars.iter().zip(&vs) {
                let gt = g.get(t).unwrap().clone();
                res.push(to_vec(&gt));
                gv = (gv + (&gt * v).unwrap().sum_all().unwrap()).unwrap();
            }
            let h = gv.backward_with_graph(true).unwrap();
            for t in vars {
                res.push(to_vec(h.get(t).unwrap()));
            }
            res
        };
        let (one, two) = (run(true), run(false));
        for (i, (u, w)) in one.iter().zip(&two).enumerate() {
            let e = rel_err(u, w);
            assert!(e < 1e-13, "k{k} s{s} p{p}: output {i} differs by {e:e}");
        }
    }
}

#[test]
fn c2_gradient_and_hvp_match_finite_differences_in_eval_mode() {
    // C2 in eval mode pools its bn2/bn4 outputs in one op (above); with non-trivial running
    // statistics and negative γ on bn2, the whole model's gradient and HVP against central
    // differences of its loss and gradient.
    use hessian_lab::curvature::check_hvp;
    use hessian_lab::models::{ModelConfig, Network};
    let cfg = ModelConfig::tiny(ModelKind::C2, [3, 8, 8], 5, 6);
    let m = Model::from_config(cfg, &rt64(), 4).unwrap();
    let b = random_batch(3, [3, 8, 8], 5, 6, &rt64());
    m.forward_t(&b.x, true).unwrap();
    for (name, p) in m.params() {
        if name == "bn2.weight" {
            p.set(&p.as_tensor().neg().unwrap()).unwrap();
        }
    }
    let c = check_hvp(&m, &b, 3).unwrap();
    assert!(c.ok, "{c:?}");
}

/// y = conv(x, W) by its definition, and for L = ⟨y, u⟩ the gradients ∂L/∂x and ∂L/∂W by
/// theirs (f64 loops; zero padding p, stride s).
#[allow(clippy::type_complexity)]
fn brute_conv(
    x: &[f64],
    wt: &[f64],
    u: &[f64],
    (n, c, h, w): (usize, usize, usize, usize),
    (co, k, s, p): (usize, usize, usize, usize),
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let mut y = vec![0.0; n * co * oh * ow];
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; wt.len()]);
    for b in 0..n {
        for o in 0..co {
            for oi in 0..oh {
                for oj in 0..ow {
                    let yi = ((b * co + o) * oh + oi) * ow + oj;
                    for ci in 0..c {
                        for di in 0..k {
                            for dj in 0..k {
                                let (Some(ii), Some(jj)) =
                                    (tap(oi, di, s, p, h), tap(oj, dj, s, p, w))
                                else {
                                    continue;
                                };
                                let xi = ((b * c + ci) * h + ii) * w + jj;
                                let wi = ((o * c + ci) * k + di) * k + dj;
                                y[yi] += wt[wi] * x[xi];
                                dx[xi] += wt[wi] * u[yi];
                                dw[wi] += x[xi] * u[yi];
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

#[test]
fn conv_on_batches_large_enough_for_sample_fastest_groups_matches_the_definition() {
    // 32 and 37 samples: groups of ≥ 8 samples, which the kernels lay out sample-fastest, and
    // (37) a last, smaller group laid out sample by sample; strides 1–3, windows clipped by
    // the padding or wholly in it, LeNet's and C1's strided 5×5 layers.
    for &(n, c, h, w, co, k, s, p) in &[
        (32, 3, 8, 8, 4, 5, 2, 2),
        (37, 2, 7, 7, 3, 5, 2, 2),
        (32, 2, 3, 2, 3, 3, 2, 2),
        (32, 3, 6, 5, 2, 3, 3, 1),
        (32, 2, 5, 6, 3, 3, 1, 1),
        (32, 2, 4, 4, 3, 2, 1, 0),
        (37, 4, 4, 4, 5, 1, 1, 0),
    ] {
        let what = format!("n{n} c{c} {h}×{w} co{co} k{k} s{s} p{p}");
        let x = Var::from_tensor(&randn(&[n, c, h, w], 31, DType::F64)).unwrap();
        let wt = Var::from_tensor(&randn(&[co, c, k, k], 32, DType::F64)).unwrap();
        let y = layers::Kernels::Fused
            .conv2d(x.as_tensor(), wt.as_tensor(), None, ConvArgs::new(s, p))
            .unwrap();
        let u = randn(y.dims(), 33, DType::F64);
        let g = (&y * &u)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward_with_graph(true)
            .unwrap();
        let (y0, dx0, dw0) = brute_conv(
            &to_vec(x.as_tensor()),
            &to_vec(wt.as_tensor()),
            &to_vec(&u),
            (n, c, h, w),
            (co, k, s, p),
        );
        assert!(rel_err(&to_vec(&y), &y0) < 1e-13, "{what}: value");
        let dx = to_vec(g.get(x.as_tensor()).unwrap());
        assert!(rel_err(&dx, &dx0) < 1e-13, "{what}: input gradient");
        let dw = to_vec(g.get(wt.as_tensor()).unwrap());
        assert!(rel_err(&dw, &dw0) < 1e-13, "{what}: weight gradient");
    }
}
