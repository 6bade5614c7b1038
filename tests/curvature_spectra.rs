//! Eigen solvers, trace and density on operators with known spectra.
mod common;

use common::*;
use hessian_lab::curvature::*;
use hessian_lab::Error;
use nalgebra::{DMatrix, DVector};
use rand::SeedableRng;

/// Q diag(λ) Qᵀ with a random orthogonal Q (QR of a Gaussian matrix).
fn planted(eigs: &[f64], seed: u64) -> (DenseOperator, DMatrix<f64>) {
    let n = eigs.len();
    let g = to_vec(&randn(&[n, n], seed, candle_core::DType::F64));
    let q = DMatrix::from_row_slice(n, n, &g).qr().q();
    let a = &q * DMatrix::from_diagonal(&DVector::from_vec(eigs.to_vec())) * q.transpose();
    let a = (&a + a.transpose()) * 0.5;
    (DenseOperator::from_nalgebra(&a).unwrap(), a)
}

fn spectrum(n: usize, top: &[f64], bulk_max: f64, seed: u64) -> Vec<f64> {
    use rand::Rng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut v: Vec<f64> = top.to_vec();
    while v.len() < n {
        v.push(rng.random::<f64>() * bulk_max);
    }
    v
}

#[test]
fn power_iteration_converged_means_small_residual_not_a_settled_eigenvalue() {
    // λ₁ = 10 and λ₂ = 9.9: the Rayleigh quotient settles (relative change < 1e-3) long
    // before v does, so PyHessian's rule is met while ‖Hv − λv‖/|λ| is still large. The
    // flag must follow the residual, and the residual must be the true one (checked here
    // against the planted matrix).
    let eigs = spectrum(40, &[10.0, 9.9, 9.8], 1.0, 3);
    let (op, a) = planted(&eigs, 4);
    let opts = PowerOpts {
        max_iter: 100,
        tol: 1e-3,
        seed: 0,
        residual_tol: 1e-3,
    };
    let r = top_eigen(&op, 2, &opts).unwrap();
    assert_eq!(r.residual_tol, 1e-3);
    assert!(
        r.rule_met.iter().any(|&m| m),
        "the relative-change rule stops early"
    );
    let n = a.nrows();
    for ((l, v), (res, conv)) in r
        .eigenvalues
        .iter()
        .zip(&r.eigenvectors)
        .zip(r.residuals.iter().zip(&r.converged))
    {
        let x = nalgebra::DVector::from_vec(v.to_f64_vec().unwrap());
        assert_eq!(x.len(), n);
        let true_res = (&a * &x - &x * *l).norm() / l.abs();
        assert!(
            (true_res - res).abs() <= 1e-9 * (1.0 + true_res),
            "{true_res} vs {res}"
        );
        assert_eq!(*conv, *res <= 1e-3, "converged must follow the residual");
    }
    assert!(
        r.converged.iter().any(|&c| !c),
        "close eigenvalues after a rule stop leave a large residual: {:?}",
        r.residuals
    );
}

#[test]
fn power_iteration_with_deflation_recovers_planted_top_k() {
    let eigs = spectrum(60, &[10.0, 6.0, 3.5], 1.0, 1);
    let (op, a) = planted(&eigs, 2);
    let r = top_eigen(
        &op,
        3,
        &PowerOpts {
            max_iter: 500,
            tol: 1e-8,
            seed: 0,
            ..Default::default()
        },
    )
    .unwrap();
    for (got, want) in r.eigenvalues.iter().zip([10.0, 6.0, 3.5]) {
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
    }
    assert!(r.converged.iter().all(|&c| c));
    assert!(r.residuals.iter().all(|&x| x < 1e-2), "{:?}", r.residuals);
    // eigenvectors: A v = λ v
    for (l, v) in r.eigenvalues.iter().zip(&r.eigenvectors) {
        let v = DVector::from_vec(v.to_f64_vec().unwrap());
        assert!((&a * &v - &v * *l).norm() < 1e-2 * l);
    }
    assert_eq!(r.hvps, op.matvecs());
    // PyHessian's default tolerance (1e-3 on the change of λ) is much looser.
    let d = top_eigen(&op, 1, &PowerOpts::default()).unwrap();
    assert!((d.eigenvalues[0] - 10.0).abs() < 2e-2 * 10.0);
}

#[test]
fn power_iteration_finds_largest_magnitude_and_reports_negative() {
    let mut eigs = spectrum(40, &[-9.0, 5.0], 1.0, 3);
    eigs.push(-0.5);
    let (op, _) = planted(&eigs, 4);
    let r = top_eigen(
        &op,
        2,
        &PowerOpts {
            max_iter: 1000,
            tol: 1e-10,
            seed: 1,
            ..Default::default()
        },
    )
    .unwrap();
    // sorted descending: 5 then −9
    assert!((r.eigenvalues[0] - 5.0).abs() < 1e-5);
    assert!((r.eigenvalues[1] + 9.0).abs() < 1e-5);
    // Lanczos gives the largest algebraic ones.
    let l = lanczos(
        &op,
        2,
        &LanczosOpts {
            max_iter: 41,
            tol: 1e-10,
            seed: 0,
        },
    )
    .unwrap();
    assert!((l.eigenvalues[0] - 5.0).abs() < 1e-8);
    assert!(l.eigenvalues[1] < 1.0 && l.eigenvalues[1] > 0.0);
}

#[test]
fn lanczos_recovers_top_k_in_far_fewer_matvecs() {
    let eigs = spectrum(400, &[10.0, 9.0, 8.5, 8.0], 7.0, 5);
    let (op, _) = planted(&eigs, 6);
    let l = lanczos(
        &op,
        4,
        &LanczosOpts {
            max_iter: 200,
            tol: 1e-6,
            seed: 0,
        },
    )
    .unwrap();
    for (got, want) in l.eigenvalues.iter().zip([10.0, 9.0, 8.5, 8.0]) {
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
    }
    assert!(l.converged.iter().all(|&c| c), "{:?}", l.residuals);
    // HVPs needed to reach λ₁ to 1e-3 relative: smallest budget whose estimate is that close.
    let need = |f: &dyn Fn(usize) -> f64| (1..400).find(|&m| (f(m) - 10.0).abs() < 1e-2).unwrap();
    let power_m = need(&|m| {
        let (o, _) = planted(&eigs, 6);
        top_eigen(
            &o,
            1,
            &PowerOpts {
                max_iter: m,
                tol: 1e-15,
                seed: 0,
                ..Default::default()
            },
        )
        .unwrap()
        .eigenvalues[0]
    });
    let lanczos_m = need(&|m| {
        let (o, _) = planted(&eigs, 6);
        lanczos(
            &o,
            1,
            &LanczosOpts {
                max_iter: m,
                tol: 1e-15,
                seed: 0,
            },
        )
        .unwrap()
        .eigenvalues[0]
    });
    assert!(
        lanczos_m * 2 <= power_m,
        "lanczos {lanczos_m} vs power {power_m}"
    );
    // The residual bound of each Ritz pair is honest: ‖Ax − θx‖ ≤ bound·|θ| (+ rounding).
    let a = {
        let (_, a) = planted(&eigs, 6);
        a
    };
    for ((t, v), r) in l.eigenvalues.iter().zip(&l.eigenvectors).zip(&l.residuals) {
        let x = DVector::from_vec(v.to_f64_vec().unwrap());
        let true_res = (&a * &x - &x * *t).norm() / t.abs();
        assert!(true_res <= r * 1.01 + 1e-10, "{true_res} > {r}");
    }
}

#[test]
fn bad_k_and_options_are_typed_errors() {
    let (op, _) = planted(&[1.0, 2.0, 3.0], 1);
    assert!(matches!(
        top_eigen(&op, 0, &PowerOpts::default()),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        top_eigen(&op, 4, &PowerOpts::default()),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        lanczos(
            &op,
            2,
            &LanczosOpts {
                max_iter: 1,
                ..Default::default()
            }
        ),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(
        DenseOperator::new(2, vec![1.0, 2.0, 3.0, 1.0]).is_err(),
        "asymmetric"
    );
    assert!(DenseOperator::new(2, vec![1.0, f64::NAN, f64::NAN, 1.0]).is_err());
    assert!(matches!(
        trace(
            &op,
            &TraceOpts {
                max_iter: 0,
                ..Default::default()
            }
        ),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn hutchinson_and_hutchpp_estimate_the_trace_within_their_error() {
    let eigs = spectrum(200, &[50.0, 40.0, 30.0], 1.0, 7);
    let exact: f64 = eigs.iter().sum();
    let (op, _) = planted(&eigs, 8);
    let h = trace(
        &op,
        &TraceOpts {
            max_iter: 300,
            tol: 1e-12,
            min_iter: 300,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(h.probes, 300);
    assert!(
        (h.trace - exact).abs() < 4.0 * h.std_error,
        "{} ± {} vs {exact}",
        h.trace,
        h.std_error
    );
    let hp = trace(
        &op,
        &TraceOpts {
            method: TraceMethod::HutchPlusPlus,
            max_iter: 60,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(hp.hvps, 60);
    assert!(
        (hp.trace - exact).abs() < 4.0 * hp.std_error.max(1e-9),
        "{} ± {}",
        hp.trace,
        hp.std_error
    );
    // Hutch++ captures the dominant eigenvalues exactly: far smaller error bar at the same cost.
    let h60 = trace(
        &op,
        &TraceOpts {
            max_iter: 60,
            tol: 1e-12,
            min_iter: 60,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        hp.std_error < 0.5 * h60.std_error,
        "{} vs {}",
        hp.std_error,
        h60.std_error
    );
}

#[test]
fn slq_density_has_unit_area_and_the_right_moments() {
    let eigs = spectrum(80, &[-2.0, 12.0], 3.0, 9);
    let (op, a) = planted(&eigs, 10);
    let d = density(
        &op,
        &SlqOpts {
            iter: 80,
            runs: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(d.hvps, 3 * 80);
    let step = d.grid[1] - d.grid[0];
    let area: f64 = d.density.iter().sum::<f64>() * step;
    assert!((area - 1.0).abs() < 1e-9);
    // With full Krylov dimension the quadrature is exact for the start vector:
    // Σ w θᵏ = v̂ᵀAᵏv̂ for each run.
    for r in 0..3 {
        let v = ParamVec::rademacher_like(op.like(), r as u64)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        let v = DVector::from_vec(v).normalize();
        for k in 1..4 {
            let q: f64 = d.nodes[r]
                .iter()
                .zip(&d.weights[r])
                .map(|(t, w)| w * t.powi(k))
                .sum();
            let want = v.dot(&(a.pow(k as u32) * &v));
            assert!(
                (q - want).abs() < 1e-8 * want.abs().max(1.0),
                "run {r} k {k}: {q} vs {want}"
            );
        }
        assert!((d.weights[r].iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
    // The smoothed curve's mean equals the quadrature's first moment, which estimates tr(A)/n.
    let mean: f64 = d
        .grid
        .iter()
        .zip(&d.density)
        .map(|(g, p)| g * p)
        .sum::<f64>()
        * step;
    assert!((mean - d.moment(1)).abs() < 1e-6);
    let exact_mean = eigs.iter().sum::<f64>() / 80.0;
    assert!((d.moment(1) - exact_mean).abs() < 0.25 * exact_mean.abs());
    // Extreme Ritz values bracket the true extremes.
    let lo = d
        .nodes
        .iter()
        .flatten()
        .cloned()
        .fold(f64::INFINITY, f64::min);
    let hi = d
        .nodes
        .iter()
        .flatten()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max);
    assert!((lo + 2.0).abs() < 1e-6 && (hi - 12.0).abs() < 1e-6);
}
