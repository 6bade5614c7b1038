//! Your own data from `.npy` files: the same images as the built-in loader gives the same
//! batches and eigenvalues; typed errors for dtype, rank, counts, labels and NaN; results as
//! `ndarray` arrays.
mod common;

use common::*;
use hessian_lab::curvature::*;
use hessian_lab::data::{load_npy, to_ndarray};
use hessian_lab::ndarray::{Array1, Array2, Array4};
use hessian_lab::prelude::*;
use ndarray_npy::WriteNpyExt;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "hl-npy-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write<A: WriteNpyExt>(p: &Path, a: &A) {
    a.write_npy(std::fs::File::create(p).unwrap()).unwrap();
}

/// MNIST's first 64 test images saved as float32 (N, 1, 28, 28) and int64 labels, loaded back:
/// the same batch as the built-in loader's, the same loss and top eigenvalue on it.
#[test]
fn npy_images_equal_the_builtin_loader() {
    let rt = rt64();
    let test = hessian_lab::data::load(DatasetKind::Mnist, SplitKind::Test, data_dir())
        .unwrap()
        .first(64)
        .unwrap();
    let px: Vec<f32> = test
        .pixels()
        .unwrap()
        .iter()
        .map(|&p| p as f32 / 255.0)
        .collect();
    let d = dir();
    let (xp, yp) = (d.join("x.npy"), d.join("y.npy"));
    write(&xp, &Array4::from_shape_vec((64, 1, 28, 28), px).unwrap());
    write(
        &yp,
        &Array1::from_iter(test.labels().iter().map(|&l| l as i64)),
    );
    let mine = load_npy(&xp, &yp, Some(10)).unwrap();
    assert_eq!(mine.len(), 64);
    assert_eq!(mine.input_shape(), vec![1, 28, 28]);
    assert_eq!(mine.name(), "x");
    assert_eq!(mine.dataset(), None);
    let (a, b) = (test.to_batch(&rt).unwrap(), mine.to_batch(&rt).unwrap());
    assert_eq!(to_vec(&a.x), to_vec(&b.x));
    assert_eq!(to_vec(&a.y), to_vec(&b.y));
    let net = Model::from_config(
        ModelConfig::tiny(ModelKind::Mlp, [1, 28, 28], 10, 16),
        &rt,
        0,
    )
    .unwrap();
    net.check_data(&mine).unwrap();
    let (ea, eb) = (
        Hessian::new(&net, &test).unwrap().eigenvalues(1).unwrap(),
        Hessian::new(&net, &mine).unwrap().eigenvalues(1).unwrap(),
    );
    assert_eq!(ea.eigenvalues, eb.eigenvalues);
    // results as ndarray arrays
    let v = ea.eigenvectors[0].to_ndarray().unwrap();
    assert_eq!(v.len(), net.params().len());
    assert_eq!(v[1].shape(), net.params()[1].1.dims());
    let flat = ea.eigenvectors[0].to_flat_ndarray().unwrap();
    assert!((flat.dot(&flat) - 1.0).abs() < 1e-9);
    let ih = input_hessian(&net, &a).unwrap();
    let [l1, g, _] = ih.per_sample_ndarray();
    assert_eq!(l1.len(), 64);
    assert!(g.iter().all(|&x| x >= 0.0));
    let u = ih.eigenvectors_ndarray(0).unwrap();
    assert_eq!(u.nrows(), 784);
    let x = to_ndarray(&a.x).unwrap();
    assert_eq!(x.shape(), &[64, 1, 28, 28]);
    std::fs::remove_dir_all(&d).ok();
}

/// (N, D) float64 features with uint8 labels: a logistic-regression network trains on them and
/// the number of classes is max(y) + 1.
#[test]
fn npy_feature_vectors_train_a_network() {
    let d = dir();
    let n = 200;
    let x = randn(&[n, 5], 3, DType::F64);
    let xv = to_vec(&x);
    // a linearly separable rule on the first feature
    let y: Vec<u8> = (0..n)
        .map(|i| (xv[i * 5] > 0.0) as u8 + 2 * (xv[i * 5 + 1] > 1.0) as u8)
        .collect();
    let (xp, yp) = (d.join("feat.npy"), d.join("lab.npy"));
    write(&xp, &Array2::from_shape_vec((n, 5), xv).unwrap());
    write(&yp, &Array1::from_vec(y));
    let split = load_npy(&xp, &yp, None).unwrap();
    assert_eq!(split.num_classes(), 4);
    assert_eq!(split.input_shape(), vec![5]);
    let net = Sequential::new("Linear(5, 4)", &[5], &rt64(), 0)
        .unwrap()
        .with_input_box(InputBox::NONE);
    let (l0, _) = net.evaluate(&split, 100).unwrap();
    train::fit(
        &net,
        &split,
        &FitOpts {
            epochs: 5,
            batch_size: 20,
            ..Default::default()
        },
    )
    .unwrap();
    let (l1, acc) = net.evaluate(&split, 100).unwrap();
    assert!(l1 < l0 && acc > 0.8, "loss {l0} → {l1}, accuracy {acc}");
    // every attack on (N, D) inputs: perturbations of the requested size, per sample
    let b = split.first(16).unwrap().to_batch(&rt64()).unwrap();
    for kind in ["fgsm", "ifgsm", "l2grad", "fhsm", "l2hess"] {
        let k: AttackKind = kind.parse().unwrap();
        let o = attack::attack(&net, &b, k, &[0.3]).unwrap().remove(0);
        let (linf, l2) = (o.linf_mean, o.l2_mean);
        match kind {
            "l2grad" | "l2hess" => assert!((l2 - 0.3).abs() < 1e-9, "{kind}: {l2}"),
            _ => assert!((linf - 0.3).abs() < 1e-9, "{kind}: {linf}"),
        }
    }
    let cg = AttackKind::L2Hess(NewtonSolver::Cg {
        iters: 20,
        tol: 1e-8,
    });
    assert!(attack::attack(&net, &b, cg, &[0.3]).is_ok());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn npy_errors_are_typed_and_name_the_problem() {
    let d = dir();
    let p = |n: &str| d.join(n);
    let x = Array2::<f32>::zeros((4, 3));
    write(&p("x.npy"), &x);
    write(&p("y.npy"), &Array1::from_vec(vec![0i64, 1, 0, 1]));
    // ints as inputs, floats as labels
    write(&p("xi.npy"), &Array2::<i32>::zeros((4, 3)));
    let e = load_npy(p("xi.npy"), p("y.npy"), None).unwrap_err();
    assert!(e.to_string().contains("float32 or float64"), "{e}");
    write(&p("yf.npy"), &Array1::from_vec(vec![0.0f32; 4]));
    let e = load_npy(p("x.npy"), p("yf.npy"), None).unwrap_err();
    assert!(e.to_string().contains("labels must be integers"), "{e}");
    // rank
    write(
        &p("x3.npy"),
        &hessian_lab::ndarray::Array3::<f32>::zeros((4, 3, 2)),
    );
    let e = load_npy(p("x3.npy"), p("y.npy"), None).unwrap_err();
    assert!(e.to_string().contains("(N, C, H, W) or (N, D)"), "{e}");
    // counts
    write(&p("y5.npy"), &Array1::from_vec(vec![0i64, 1, 0, 1, 1]));
    let e = load_npy(p("x.npy"), p("y5.npy"), None).unwrap_err();
    assert!(
        matches!(e, hessian_lab::Error::Shape(_)) && e.to_string().contains("4 samples"),
        "{e}"
    );
    // labels: negative, out of range
    write(&p("yneg.npy"), &Array1::from_vec(vec![0i64, -1, 0, 1]));
    let e = load_npy(p("x.npy"), p("yneg.npy"), None).unwrap_err();
    assert!(e.to_string().contains("label 1 is -1"), "{e}");
    let e = load_npy(p("x.npy"), p("y.npy"), Some(1)).unwrap_err();
    assert!(e.to_string().contains("at least 2 classes"), "{e}");
    write(&p("y9.npy"), &Array1::from_vec(vec![0i64, 9, 0, 1]));
    let e = load_npy(p("x.npy"), p("y9.npy"), Some(3)).unwrap_err();
    assert!(e.to_string().contains("label 9 out of range 0..3"), "{e}");
    // NaN
    let mut xn = x.clone();
    xn[[2, 1]] = f32::NAN;
    write(&p("xn.npy"), &xn);
    let e = load_npy(p("xn.npy"), p("y.npy"), None).unwrap_err();
    assert!(
        matches!(e, hessian_lab::Error::NonFinite(_)) && e.to_string().contains("sample 2"),
        "{e}"
    );
    // not a file / not npy
    let e = load_npy(p("missing.npy"), p("y.npy"), None).unwrap_err();
    assert!(matches!(e, hessian_lab::Error::Io { .. }), "{e}");
    std::fs::write(p("junk.npy"), b"not numpy").unwrap();
    let e = load_npy(p("junk.npy"), p("y.npy"), None).unwrap_err();
    assert!(e.to_string().contains("not a readable .npy file"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}
