//! Shared test helpers: tolerances, tiny data, finite differences.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use hessian_lab::data::{Batch, DatasetKind, Split, SplitKind};
use hessian_lab::Runtime;
// every test that touches a network uses its trait methods
pub use hessian_lab::models::Network;
use rand::{Rng, SeedableRng};

pub fn rt64() -> Runtime {
    Runtime::cpu_f64()
}

pub fn rt32() -> Runtime {
    Runtime::cpu_f32()
}

pub fn data_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// A random batch of `n` inputs of shape `shape` in [0,1] with labels < `classes`.
pub fn random_batch(n: usize, shape: [usize; 3], classes: usize, seed: u64, rt: &Runtime) -> Batch {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let d: usize = shape.iter().product();
    let x: Vec<f64> = (0..n * d).map(|_| rng.random::<f64>()).collect();
    let y: Vec<u32> = (0..n)
        .map(|_| rng.random_range(0..classes as u32))
        .collect();
    let x = Tensor::from_vec(x, (n, shape[0], shape[1], shape[2]), &rt.device)
        .unwrap()
        .to_dtype(rt.dtype)
        .unwrap();
    let y = Tensor::from_vec(y, n, &rt.device).unwrap();
    Batch::new(x, y).unwrap()
}

/// Random standard normal tensor.
pub fn randn(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            // Box–Muller
            let u1: f64 = rng.random::<f64>().max(1e-300);
            let u2: f64 = rng.random::<f64>();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        })
        .collect();
    Tensor::from_vec(v, shape.to_vec(), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

pub fn to_vec(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-300);
    num / den
}

/// A synthetic split of `n` MNIST-shaped samples (for tests that need a Split).
pub fn synthetic_split(n: usize, seed: u64) -> Split {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let px: Vec<u8> = (0..n * 784).map(|_| rng.random::<u8>()).collect();
    let ys: Vec<u32> = (0..n).map(|_| rng.random_range(0..10)).collect();
    Split::from_parts(DatasetKind::Mnist, SplitKind::Train, px, ys).unwrap()
}

/// The unit vector e_j shaped like `like`.
pub fn unit(like: &[Tensor], j: usize) -> hessian_lab::curvature::ParamVec {
    let n: usize = like.iter().map(|t| t.elem_count()).sum();
    let mut v = vec![0.0; n];
    v[j] = 1.0;
    hessian_lab::curvature::ParamVec::from_f64_slice(&v, like).unwrap()
}

/// The dense matrix of a linear map given as a closure, built column by column.
pub fn dense(
    n: usize,
    like: &[Tensor],
    f: impl Fn(&hessian_lab::curvature::ParamVec) -> hessian_lab::curvature::ParamVec,
) -> nalgebra::DMatrix<f64> {
    let mut h = nalgebra::DMatrix::zeros(n, n);
    for j in 0..n {
        let col = f(&unit(like, j)).to_f64_vec().unwrap();
        for i in 0..n {
            h[(i, j)] = col[i];
        }
    }
    h
}

/// ‖a − b‖_F / ‖b‖_F.
pub fn rel(a: &nalgebra::DMatrix<f64>, b: &nalgebra::DMatrix<f64>) -> f64 {
    (a - b).norm() / b.norm().max(1e-300)
}

/// `epochs` epochs of the default SGD recipe with batches of `batch_size`.
pub fn fit_briefly(
    net: &dyn Network,
    split: &Split,
    epochs: usize,
    batch_size: usize,
) -> hessian_lab::train::TrainReport {
    hessian_lab::train::fit(
        net,
        split,
        &hessian_lab::train::FitOpts {
            epochs,
            batch_size,
            ..Default::default()
        },
    )
    .unwrap()
}
