//! Exact HVPs against math: full Hessians column by column vs finite differences, closed forms
//! (linear, logistic, softmax regression), GGN, streaming, input Hessian (Theorem 1).
mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use hessian_lab::curvature::{self, *};
use hessian_lab::data::Batch;
use hessian_lab::models::{Activation, Model, ModelConfig, ModelKind};
use nalgebra::{DMatrix, DVector};

fn tiny_mlp(act: Activation, seed: u64) -> (Model, Batch) {
    let rt = rt64();
    let cfg = ModelConfig::tiny(ModelKind::Mlp, [1, 2, 3], 4, 5).with_activation(act);
    let m = Model::from_config(cfg, &rt, seed).unwrap();
    let b = random_batch(7, [1, 2, 3], 4, seed + 100, &rt);
    (m, b)
}

#[test]
fn full_hessian_from_hvp_equals_finite_differences_and_is_symmetric() {
    for act in [Activation::Relu, Activation::Tanh] {
        let (m, b) = tiny_mlp(act, 1);
        let sel = ParamSelection::all(&m);
        let like = sel.tensors(&m);
        let n = sel.dim(&m);
        assert_eq!(n, 6 * 5 + 5 + 5 * 4 + 4);
        let h = dense(n, &like, |v| hvp(&m, &b, v).unwrap());
        let hfd = dense(n, &like, |v| hvp_fd(&m, &b, &sel, v, Some(1e-5)).unwrap());
        assert!(rel(&h, &hfd) < 1e-7, "{act:?}: {}", rel(&h, &hfd));
        assert!(rel(&h, &h.transpose()) < 1e-12);
        // The operator (graph reused across HVPs) gives the same matrix.
        let op = HessianOperator::new(&m, DataSource::Batch(b.clone())).unwrap();
        let h2 = dense(n, &like, |v| op.apply(v).unwrap());
        assert!(rel(&h2, &h) < 1e-13);
        assert_eq!(op.matvecs(), n);
    }
}

#[test]
fn linear_regression_closed_form() {
    let rt = rt64();
    let (n, d) = (9, 4);
    let x = randn(&[n, d], 3, DType::F64);
    let y = randn(&[n, 1], 4, DType::F64);
    let w = Var::from_tensor(&randn(&[d, 1], 5, DType::F64)).unwrap();
    let loss = || -> hessian_lab::Result<Tensor> {
        Ok((x.matmul(w.as_tensor())? - &y)?.sqr()?.mean_all()?)
    };
    let like = vec![w.as_tensor().detach()];
    let h = dense(d, &like, |v| hvp_closure(&[w.clone()], loss, v).unwrap());
    let xm = DMatrix::from_row_slice(n, d, &to_vec(&x));
    let want = xm.transpose() * &xm * (2.0 / n as f64);
    assert!(rel(&h, &want) < 1e-13, "{}", rel(&h, &want));
    let _ = rt;
}

#[test]
fn logistic_regression_closed_form() {
    let (n, d) = (11, 3);
    let x = randn(&[n, d], 6, DType::F64);
    let t = Tensor::from_vec(
        (0..n).map(|i| (i % 2) as f64).collect::<Vec<_>>(),
        (n, 1),
        &Device::Cpu,
    )
    .unwrap();
    let w = Var::from_tensor(&randn(&[d, 1], 7, DType::F64)).unwrap();
    // mean binary cross-entropy: softplus(s) − t·s with s = Xw
    let loss = || -> hessian_lab::Result<Tensor> {
        let s = x.matmul(w.as_tensor())?;
        let softplus = (s.exp()? + 1.0)?.log()?;
        Ok((softplus - (&t * &s)?)?.mean_all()?)
    };
    let like = vec![w.as_tensor().detach()];
    let h = dense(d, &like, |v| hvp_closure(&[w.clone()], loss, v).unwrap());
    let xm = DMatrix::from_row_slice(n, d, &to_vec(&x));
    let s = &xm * DVector::from_vec(to_vec(w.as_tensor()));
    let dd = DMatrix::from_diagonal(&s.map(|v| {
        let sg = 1.0 / (1.0 + (-v).exp());
        sg * (1.0 - sg)
    }));
    let want = xm.transpose() * dd * &xm / n as f64;
    assert!(rel(&h, &want) < 1e-13, "{}", rel(&h, &want));
}

/// Softmax regression: H = (1/N) Σᵢ (diag pᵢ − pᵢpᵢᵀ) ⊗ x̃ᵢx̃ᵢᵀ with x̃ = [x; 1]; our logreg
/// orders parameters by name: linear.bias (C) then linear.weight (C×d, row major).
#[test]
fn softmax_regression_closed_form_and_ggn_equals_hessian() {
    let rt = rt64();
    let (c, shape) = (3, [1, 2, 2]);
    let d = 4;
    let m = Model::from_config(ModelConfig::tiny(ModelKind::LogReg, shape, c, 0), &rt, 2).unwrap();
    let b = random_batch(6, shape, c, 8, &rt);
    let sel = ParamSelection::all(&m);
    let like = sel.tensors(&m);
    let np = sel.dim(&m);
    let h = dense(np, &like, |v| hvp(&m, &b, v).unwrap());
    let p = hessian_lab::models::layers::softmax(&m.forward(&b.x).unwrap()).unwrap();
    let p: Vec<Vec<f64>> = p.to_vec2().unwrap();
    let xs: Vec<Vec<f64>> = b.x.reshape((6, d)).unwrap().to_vec2().unwrap();
    let mut want = DMatrix::zeros(np, np);
    let idx = |cls: usize, j: Option<usize>| match j {
        None => cls,
        Some(j) => c + cls * d + j,
    };
    for (pi, xi) in p.iter().zip(&xs) {
        for a in 0..c {
            for bb in 0..c {
                let aab = if a == bb { pi[a] } else { 0.0 } - pi[a] * pi[bb];
                let xt: Vec<(Option<usize>, f64)> = std::iter::once((None, 1.0))
                    .chain(xi.iter().enumerate().map(|(j, &v)| (Some(j), v)))
                    .collect();
                for &(j1, v1) in &xt {
                    for &(j2, v2) in &xt {
                        want[(idx(a, j1), idx(bb, j2))] += aab * v1 * v2 / 6.0;
                    }
                }
            }
        }
    }
    assert!(rel(&h, &want) < 1e-12, "{}", rel(&h, &want));
    // Linear model: the Gauss–Newton matrix is the Hessian.
    let ggn = GgnOperator::new(&m, DataSource::Batch(b.clone())).unwrap();
    let g = dense(np, &like, |v| ggn.apply(v).unwrap());
    assert!(rel(&g, &want) < 1e-12, "{}", rel(&g, &want));
}

#[test]
fn ggn_is_jt_a_j_and_psd_on_an_mlp() {
    let (m, b) = tiny_mlp(Activation::Tanh, 3);
    let sel = ParamSelection::all(&m);
    let like = sel.tensors(&m);
    let n = sel.dim(&m);
    let ggn = GgnOperator::new(
        &m,
        DataSource::Batches(vec![b.narrow(0, 3).unwrap(), b.narrow(3, 4).unwrap()]),
    )
    .unwrap();
    let g = dense(n, &like, |v| ggn.apply(v).unwrap());
    assert!(rel(&g, &g.transpose()) < 1e-12);
    let e = nalgebra::SymmetricEigen::new(g.clone());
    assert!(e.eigenvalues.min() > -1e-12 * e.eigenvalues.max());
    // Reference: (1/N) Σᵢ Jᵢᵀ Aᵢ Jᵢ with Jᵢ from FD-free exact per-sample Jacobians.
    let mut want = DMatrix::zeros(n, n);
    for i in 0..b.len() {
        let bi = b.narrow(i, 1).unwrap();
        let z = m.forward(&bi.x).unwrap();
        let p: Vec<f64> = hessian_lab::models::layers::softmax(&z)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let c = p.len();
        let mut j = DMatrix::zeros(c, n);
        for k in 0..c {
            let st = z
                .narrow(1, k, 1)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward_with_graph(true)
                .unwrap();
            let row: Vec<f64> = like
                .iter()
                .flat_map(|t| to_vec(st.get(t).unwrap()))
                .collect();
            for (q, v) in row.iter().enumerate() {
                j[(k, q)] = *v;
            }
        }
        let a = DMatrix::from_fn(c, c, |r, s| if r == s { p[r] } else { 0.0 } - p[r] * p[s]);
        want += j.transpose() * a * j / b.len() as f64;
    }
    assert!(rel(&g, &want) < 1e-12, "{}", rel(&g, &want));
}

#[test]
fn streaming_split_hvp_equals_one_big_batch() {
    let rt = rt64();
    let split = synthetic_split(300, 4);
    let m = Model::from_config(
        ModelConfig::tiny(ModelKind::Mlp, [1, 28, 28], 10, 8),
        &rt,
        5,
    )
    .unwrap();
    let big = DataSource::Batch(split.to_batch(&rt).unwrap());
    let streamed = DataSource::Split {
        split: split.clone(),
        chunk: 64,
    };
    let a = HessianOperator::new(&m, big).unwrap();
    let s = HessianOperator::new(&m, streamed).unwrap();
    let v = ParamVec::randn_like(a.like(), 9).unwrap();
    let ha = a.apply(&v).unwrap().to_f64_vec().unwrap();
    let hs = s.apply(&v).unwrap().to_f64_vec().unwrap();
    assert!(rel_err(&hs, &ha) < 1e-12, "{}", rel_err(&hs, &ha));
    // Unequal chunks (64·4 + 44) are weighted by size: also equal to a list of batches.
    let parts = vec![
        split.range_batch(0, 100, &rt).unwrap(),
        split.range_batch(100, 200, &rt).unwrap(),
    ];
    let l = HessianOperator::new(&m, DataSource::Batches(parts)).unwrap();
    assert!(rel_err(&l.apply(&v).unwrap().to_f64_vec().unwrap(), &ha) < 1e-12);
    let (la, ga) = a.loss_and_gradient().unwrap();
    let (ls, gs) = s.loss_and_gradient().unwrap();
    assert!((la - ls).abs() < 1e-12);
    assert!(rel_err(&gs.to_f64_vec().unwrap(), &ga.to_f64_vec().unwrap()) < 1e-12);
}

#[test]
fn parameter_filter_gives_the_diagonal_block() {
    let (m, b) = tiny_mlp(Activation::Relu, 6);
    let sel = ParamSelection::all(&m);
    let like = sel.tensors(&m);
    let n = sel.dim(&m);
    let h = dense(n, &like, |v| hvp(&m, &b, v).unwrap());
    let op = HessianOperator::with_filter(&m, DataSource::Batch(b.clone()), &["fc2."]).unwrap();
    assert_eq!(
        op.names(),
        vec!["fc2.bias".to_string(), "fc2.weight".to_string()]
    );
    let k = op.dim();
    let blk = dense(k, op.like(), |v| op.apply(v).unwrap());
    // fc2.* come last in name order (fc1.bias, fc1.weight, fc2.bias, fc2.weight).
    let want = h.view((n - k, n - k), (k, k)).into_owned();
    assert!(rel(&blk, &want) < 1e-13);
    assert!(HessianOperator::with_filter(&m, DataSource::Batch(b), &["conv9."]).is_err());
}

#[test]
fn determinism_check_catches_bn_in_train_mode_like_noise() {
    struct Noisy(DenseOperator, std::cell::Cell<u64>);
    impl CurvatureOperator for Noisy {
        fn apply(&self, v: &ParamVec) -> hessian_lab::Result<ParamVec> {
            self.1.set(self.1.get() + 1);
            let y = self.0.apply(v)?;
            y.axpy(1e-3, &ParamVec::randn_like(self.like(), self.1.get())?)
        }
        fn like(&self) -> &[Tensor] {
            self.0.like()
        }
        fn matvecs(&self) -> usize {
            self.0.matvecs()
        }
    }
    let d = DenseOperator::new(2, vec![2.0, 0.5, 0.5, 1.0]).unwrap();
    d.check_deterministic(0, 1e-12).unwrap();
    let noisy = Noisy(
        DenseOperator::new(2, vec![2.0, 0.5, 0.5, 1.0]).unwrap(),
        Default::default(),
    );
    assert!(matches!(
        noisy.check_deterministic(0, 1e-9),
        Err(hessian_lab::Error::NonDeterministic { .. })
    ));
    // A BN model's Hessian operator is deterministic (eval mode, running stats frozen).
    let rt = rt64();
    let m = Model::new(ModelKind::C1, &rt, 0).unwrap();
    let b = random_batch(2, [3, 32, 32], 10, 1, &rt);
    let before = to_vec(m.buffers()[0].1.as_tensor());
    let op = HessianOperator::with_filter(&m, DataSource::Batch(b), &["fc3."]).unwrap();
    op.check_deterministic(1, 1e-12).unwrap();
    assert_eq!(
        before,
        to_vec(m.buffers()[0].1.as_tensor()),
        "running stats untouched"
    );
}

/// Theorem 1 on ReLU nets: the input Hessian equals the dense one built from input HVPs and
/// Jᵀ(diag p − ppᵀ)J, is PSD, and has rank ≤ C − 1; its λ₁ matches power iteration; H⁺g is
/// the pseudo-inverse applied to g. On a tanh net the input Hessian is not PSD in general.
#[test]
fn input_hessian_theorem1_on_relu_and_counterexample_on_tanh() {
    let (m, b) = tiny_mlp(Activation::Relu, 11);
    let d = 6;
    let ih = input_hessian(&m, &b).unwrap();
    let v_like = vec![b.x.narrow(0, 1, 1).unwrap().detach()];
    for i in 0..b.len() {
        let bi = b.narrow(i, 1).unwrap();
        let hd = dense(d, &v_like, |v| {
            ParamVec(vec![input_hvp(&m, &bi, &v.0[0]).unwrap()])
        });
        let th = ih.dense(i).unwrap();
        assert!(rel(&th, &hd) < 1e-12, "sample {i}: {}", rel(&th, &hd));
        assert!(rel(&hd, &hd.transpose()) < 1e-12);
        let e = nalgebra::SymmetricEigen::new(hd.clone());
        let lmax = e.eigenvalues.max();
        assert!(e.eigenvalues.min() > -1e-12 * lmax.max(1.0), "PSD");
        let rank = e.eigenvalues.iter().filter(|&&l| l > 1e-9 * lmax).count();
        assert!(rank <= 3, "rank {rank} > C-1");
        assert_eq!(ih.samples[i].rank, rank);
        assert!((ih.samples[i].lambda1 - lmax).abs() < 1e-10 * lmax.max(1.0));
        // Gradient norm and H⁺g against the dense pseudo-inverse.
        let (_, g) = input_gradient(&m, &bi).unwrap();
        let g = DVector::from_vec(to_vec(&g));
        assert!((ih.samples[i].grad_norm - g.norm()).abs() < 1e-12);
        let pinv = hd.clone().pseudo_inverse(1e-9 * lmax).unwrap();
        let want = &pinv * &g;
        let got = DVector::from_vec(to_vec(
            &ih.newton_direction().unwrap().narrow(0, i, 1).unwrap(),
        ));
        assert!(
            (&got - &want).norm() <= 1e-7 * want.norm().max(1e-12),
            "H⁺g sample {i}"
        );
        // Eigenvectors: H u = λ u, orthonormal.
        let u = ih.eigenvectors(i).unwrap();
        for k in 0..u.ncols() {
            let uk = u.column(k);
            assert!((&hd * uk - uk * ih.samples[i].eigenvalues[k]).norm() < 1e-9 * lmax);
            assert!((uk.norm() - 1.0).abs() < 1e-9);
        }
    }
    let s = ih.summary();
    assert!(s.rank_max <= 3 && s.min_eigenvalue_min > -1e-12);
    // Power iteration on input HVPs agrees with Theorem 1's λ₁.
    let lp = input_lambda1_power(&m, &b, 500, 1e-10, 0).unwrap();
    for (a, s) in lp.iter().zip(&ih.samples) {
        assert!(
            (a - s.lambda1).abs() <= 1e-4 * s.lambda1.max(1e-12),
            "{a} vs {}",
            s.lambda1
        );
    }

    // tanh: Theorem 1 is refused, and the true input Hessian has a negative eigenvalue.
    let (mt, bt) = tiny_mlp(Activation::Tanh, 12);
    assert!(matches!(
        input_hessian(&mt, &bt),
        Err(hessian_lab::Error::Unsupported(_))
    ));
    let mut most_negative = 0.0f64;
    for i in 0..bt.len() {
        let bi = bt.narrow(i, 1).unwrap();
        let hd = dense(d, &v_like, |v| {
            ParamVec(vec![input_hvp(&mt, &bi, &v.0[0]).unwrap()])
        });
        let e = nalgebra::SymmetricEigen::new(hd);
        most_negative = most_negative.min(e.eigenvalues.min() / e.eigenvalues.abs().max());
    }
    assert!(
        most_negative < -1e-3,
        "tanh input Hessians were all PSD ({most_negative})"
    );
}

#[test]
fn trace_exact_equals_dense_trace_and_diagonal() {
    let (m, b) = tiny_mlp(Activation::Relu, 21);
    let sel = ParamSelection::all(&m);
    let like = sel.tensors(&m);
    let n = sel.dim(&m);
    let h = dense(n, &like, |v| hvp(&m, &b, v).unwrap());
    let te = trace_exact(&m, &DataSource::Batch(b.clone()), None).unwrap();
    assert!((te.trace - h.trace()).abs() < 1e-10 * h.trace().abs());
    let diag = te.diagonal.to_f64_vec().unwrap();
    for i in 0..n {
        assert!((diag[i] - h[(i, i)]).abs() < 1e-10 * h.trace().abs());
    }
    assert_eq!(te.backward_passes, 7 * 4);
    let per: f64 = te.per_parameter.iter().map(|(_, t)| t).sum();
    assert!((per - te.trace).abs() < 1e-12);
    let (mt, bt) = tiny_mlp(Activation::Tanh, 1);
    assert!(matches!(
        trace_exact(&mt, &DataSource::Batch(bt), None),
        Err(hessian_lab::Error::Unsupported(_))
    ));
}

/// On the paper's M1 (convs with stride) and C1 (3×3/2/1 max-pool + BN in eval mode), the
/// exact diagonal equals eⱼᵀHeⱼ from HVPs at random coordinates.
#[test]
fn trace_exact_diagonal_matches_hvp_on_m1_and_c1() {
    let rt = rt64();
    for kind in [ModelKind::M1, ModelKind::C1] {
        let m = Model::new(kind, &rt, 3).unwrap();
        let b = random_batch(2, m.config.input_shape, 10, 4, &rt);
        let te = trace_exact(&m, &DataSource::Batch(b.clone()), None).unwrap();
        let diag = te.diagonal.to_f64_vec().unwrap();
        let sel = ParamSelection::all(&m);
        let like: Vec<Tensor> = sel.tensors(&m).iter().map(|t| t.detach()).collect();
        let n = sel.dim(&m);
        let op = HessianOperator::new(&m, DataSource::Batch(b)).unwrap();
        let mut checked = 0;
        for j in (0..n).step_by(n / 7) {
            let hj = op.apply(&unit(&like, j)).unwrap().to_f64_vec().unwrap()[j];
            assert!(
                (hj - diag[j]).abs() <= 1e-9 * hj.abs().max(1e-6),
                "{kind:?} coord {j}: {hj} vs {}",
                diag[j]
            );
            checked += 1;
        }
        assert!(checked >= 7);
    }
    let _ = curvature::DataSource::Batch;
}
