//! Parameter-space reductions (`ParamVec::dot`, `norm`) against a plain f64 sum, on blocks
//! that cross the kernel's chunk size with remainders, in f32 and f64, contiguous or not.

use candle_core::{DType, Device, Tensor};
use hessian_lab::curvature::ParamVec;

/// Blocks of awkward sizes: below, at, and across the 16,384-element chunk, with tails.
fn blocks(dtype: DType, seed: u64) -> ParamVec {
    let like: Vec<Tensor> = [
        vec![3usize],
        vec![7, 5],
        vec![16_384],
        vec![3, 16_385],
        vec![40_001],
    ]
    .iter()
    .map(|s| Tensor::zeros(s.as_slice(), dtype, &Device::Cpu).unwrap())
    .collect();
    ParamVec::randn_like(&like, seed).unwrap()
}

fn naive_dot(a: &ParamVec, b: &ParamVec) -> f64 {
    let (x, y) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    x.iter().zip(&y).map(|(u, v)| u * v).sum()
}

#[test]
fn dot_and_norm_equal_a_plain_f64_sum() {
    for dtype in [DType::F32, DType::F64] {
        let (a, b) = (blocks(dtype, 1), blocks(dtype, 2));
        let want = naive_dot(&a, &b);
        let got = a.dot(&b).unwrap();
        assert!(
            (got - want).abs() <= 1e-12 * want.abs().max(1.0),
            "{dtype:?}: {got} vs {want}"
        );
        let n2 = naive_dot(&a, &a);
        let n = a.norm().unwrap();
        assert!(
            (n * n - n2).abs() <= 1e-12 * n2,
            "{dtype:?}: {} vs {n2}",
            n * n
        );
        // the same tensors on both sides
        let self_dot = a.dot(&a).unwrap();
        assert!((self_dot - n2).abs() <= 1e-12 * n2);
        // a wrong kernel (e.g. one chunk dropped) would be off by far more than rounding
        assert!(n2 > 1e4);
    }
}

#[test]
fn non_contiguous_blocks_fall_back_to_the_same_value() {
    let a = Tensor::randn(0f32, 1f32, (64, 300), &Device::Cpu).unwrap();
    let b = Tensor::randn(0f32, 1f32, (300, 64), &Device::Cpu).unwrap();
    let at = a.t().unwrap(); // (300, 64), strided
    assert!(!at.is_contiguous());
    let (pa, pb) = (ParamVec(vec![at.clone()]), ParamVec(vec![b.clone()]));
    let want = naive_dot(&ParamVec(vec![at.contiguous().unwrap()]), &pb);
    let got = pa.dot(&pb).unwrap();
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{got} vs {want}"
    );
    let n2 = naive_dot(&pa, &pa);
    assert!((pa.norm().unwrap().powi(2) - n2).abs() <= 1e-9 * n2);
}

#[test]
fn reductions_do_not_depend_on_the_thread_count() {
    let (a, b) = (blocks(DType::F32, 3), blocks(DType::F32, 4));
    let run = |t: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap()
            .install(|| (a.dot(&b).unwrap(), a.norm().unwrap()))
    };
    let one = run(1);
    for t in [2, 3] {
        assert_eq!(run(t), one, "{t} threads");
    }
}
