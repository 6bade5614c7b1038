//! The detached backward workers (`runtime::backward_detached`): same values as candle's own
//! backward, no graph recorded, safe from rayon threads, and exact Hessian-vector products when
//! the second backward runs there.

mod common;
use candle_core::{Tensor, Var};
use common::*;
use hessian_lab::curvature::{self, ParamSelection, ParamVec};
use hessian_lab::models::{Model, ModelConfig, ModelKind};
use hessian_lab::runtime::{backward_detached, detached_workers_active};

/// x's gradient in `store` as a vector.
fn grad_of(store: &candle_core::backprop::GradStore, x: &Var) -> Vec<f64> {
    store.get(x.as_tensor()).unwrap().to_vec1::<f64>().unwrap()
}

/// f(x) = Σ sin(x)² · x³ on a few values: a graph with several consumers per node.
fn f(x: &Tensor) -> Tensor {
    (x.sin().unwrap().sqr().unwrap() * x.powf(3.0).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
}

#[test]
fn workers_start_and_give_candles_gradient_without_a_graph() {
    let _ = rt64();
    assert!(
        detached_workers_active(),
        "init() starts the workers on Linux"
    );
    let x = Var::new(&[0.3f64, -1.2, 2.5], &candle_core::Device::Cpu).unwrap();
    let y = f(x.as_tensor());
    let inline = grad_of(&y.backward().unwrap(), &x);
    let store = backward_detached(&y).unwrap();
    let g = store.get(x.as_tensor()).unwrap();
    assert_eq!(grad_of(&store, &x), inline, "bit-identical values");
    // The analytic derivative, so the comparison is not code against itself.
    for (xi, gi) in [0.3f64, -1.2, 2.5].iter().zip(&inline) {
        let d = 2.0 * xi.sin() * xi.cos() * xi.powi(3) + 3.0 * xi.sin().powi(2) * xi.powi(2);
        assert!((d - gi).abs() < 1e-12, "{d} vs {gi}");
    }
    // Inline (this thread keeps graphs) the gradient can be differentiated again; from the
    // workers it cannot: no graph was recorded.
    let inline_g = y.backward().unwrap().get(x.as_tensor()).unwrap().clone();
    assert!(inline_g
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
        .get(x.as_tensor())
        .is_some());
    let again = g.sum_all().unwrap().backward().unwrap();
    assert!(
        again.get(x.as_tensor()).is_none(),
        "detached gradient has no graph"
    );
}

#[test]
fn works_from_rayon_threads_and_many_threads_at_once() {
    use rayon::prelude::*;
    let _ = rt64();
    let x = Var::new(&[0.7f64, 1.1], &candle_core::Device::Cpu).unwrap();
    let want = grad_of(&f(x.as_tensor()).backward().unwrap(), &x);
    // From rayon's global pool it crosses into the workers' pool (no deadlock); from plain
    // threads it waits for a worker.
    let from_pool: Vec<Vec<f64>> = (0..8)
        .into_par_iter()
        .map(|_| grad_of(&backward_detached(&f(x.as_tensor())).unwrap(), &x))
        .collect();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let x = x.clone();
            std::thread::spawn(move || grad_of(&backward_detached(&f(x.as_tensor())).unwrap(), &x))
        })
        .collect();
    for g in from_pool
        .into_iter()
        .chain(handles.into_iter().map(|h| h.join().unwrap()))
    {
        assert_eq!(g, want);
    }
}

#[test]
fn hvp_with_detached_second_backward_matches_inline_and_finite_differences() {
    // A small conv net (fused kernels): H v by the workers vs H v by finite differences of
    // exact gradients, and vs the same product with the second backward run inline.
    let rt = rt64();
    let m = Model::from_config(ModelConfig::tiny(ModelKind::C2, [3, 8, 8], 4, 0), &rt, 3).unwrap();
    let b = random_batch(5, [3, 8, 8], 4, 11, &rt);
    let sel = ParamSelection::all(&m);
    let v = ParamVec::randn_like(&sel.tensors(&m), 5).unwrap();
    let hv = curvature::hvp(&m, &b, &v).unwrap();
    let (_, g) = curvature::hvp::gradient_with_graph(&m, &b, &sel).unwrap();
    let dot = g
        .iter()
        .zip(&v.0)
        .map(|(a, b)| (a * b).unwrap().sum_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    let st = dot.backward().unwrap(); // inline, on a graph-keeping thread
    let inline = ParamVec(
        sel.tensors(&m)
            .iter()
            .map(|t| st.get(t).unwrap().detach())
            .collect(),
    );
    let diff = hv.axpy(-1.0, &inline).unwrap().norm().unwrap();
    assert!(
        diff <= 1e-12 * inline.norm().unwrap(),
        "workers vs inline: {diff}"
    );
    let fd = curvature::hvp_fd(&m, &b, &sel, &v, None).unwrap();
    let rel = hv.axpy(-1.0, &fd).unwrap().norm().unwrap() / fd.norm().unwrap();
    assert!(rel < 1e-6, "vs finite differences: {rel}");
}

#[test]
fn worker_pools_run_closures_in_their_mode_and_nest() {
    use hessian_lab::runtime::{
        on_detached, on_graph_keeping, on_workers, probe_second_derivative,
    };
    let _ = rt64();
    let cpu = candle_core::Device::Cpu;
    // d²/dx² x⁴ at 1 is 12 only where double backward is exact
    let keeping = on_graph_keeping(&cpu, || probe_second_derivative().unwrap());
    let detached = on_detached(&cpu, || probe_second_derivative().unwrap());
    assert_eq!(keeping, 12.0);
    assert_ne!(detached, 12.0);
    // nested: each pool keeps its own mode, also when entered from the other one
    let nested = on_graph_keeping(&cpu, || {
        let inner = on_detached(&cpu, || probe_second_derivative().unwrap());
        (probe_second_derivative().unwrap(), inner)
    });
    assert_eq!(nested.0, 12.0);
    assert_ne!(nested.1, 12.0);
    // on_workers moves work off a plain thread onto a rayon pool, and stays where it is on one
    let from_plain = std::thread::spawn(move || on_workers(&cpu, rayon::current_thread_index))
        .join()
        .unwrap();
    assert!(from_plain.is_some());
    let name = on_graph_keeping(&candle_core::Device::Cpu, || {
        on_workers(&candle_core::Device::Cpu, || {
            std::thread::current().name().map(String::from)
        })
    });
    assert!(name.unwrap().starts_with("hessian-lab-graph"));
}
