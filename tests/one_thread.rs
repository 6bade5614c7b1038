//! One thread per worker pool (`RAYON_NUM_THREADS=1`, as `bench --threads 1` sets it): work
//! that crosses from one pool to the other and back must not deadlock, and the curvature
//! results must stay exact. Its own test binary, so that the variable is set before `init()`.

mod common;
use common::*;
use hessian_lab::curvature::{self, ParamSelection, ParamVec};
use hessian_lab::models::{Model, ModelConfig, ModelKind};
use hessian_lab::runtime::{on_detached, on_graph_keeping, probe_second_derivative};

#[test]
fn one_thread_pools_nest_both_ways_and_hvps_stay_exact() {
    std::env::set_var("RAYON_NUM_THREADS", "1");
    // A deadlock would hang CI: fail loudly instead.
    std::thread::spawn(|| {
        std::thread::sleep(std::time::Duration::from_secs(120));
        eprintln!("one_thread: still running after 120 s (deadlock between the worker pools?)");
        std::process::exit(1);
    });
    let rt = rt64();
    let cpu = candle_core::Device::Cpu;
    assert_eq!(rayon::current_num_threads(), 1);
    let names = on_detached(&cpu, || {
        let a = std::thread::current().name().map(String::from);
        // detached → graph-keeping → detached: each waiting worker is its pool's only thread
        let (b, c, d2) = on_graph_keeping(&cpu, || {
            let b = std::thread::current().name().map(String::from);
            let (c, d2) = on_detached(&cpu, || {
                (
                    std::thread::current().name().map(String::from),
                    probe_second_derivative().unwrap(),
                )
            });
            (b, c, d2)
        });
        assert_ne!(d2, 12.0, "back on the detached pool");
        (a, b, c)
    });
    assert_eq!(names.0.as_deref(), Some("hessian-lab-backward-0"));
    assert_eq!(names.1.as_deref(), Some("hessian-lab-graph-0"));
    assert_eq!(names.2.as_deref(), Some("hessian-lab-backward-0"));

    // A fresh HVP (graph-keeping first backward, detached second) against finite differences
    // of gradients (detached pool), on a small conv net.
    let m = Model::from_config(ModelConfig::tiny(ModelKind::C2, [3, 8, 8], 4, 0), &rt, 2).unwrap();
    let b = random_batch(6, [3, 8, 8], 4, 5, &rt);
    let sel = ParamSelection::all(&m);
    let v = ParamVec::randn_like(&sel.tensors(&m), 9).unwrap();
    let hv = curvature::hvp(&m, &b, &v).unwrap();
    let fd = curvature::hvp_fd(&m, &b, &sel, &v, None).unwrap();
    let rel = hv.axpy(-1.0, &fd).unwrap().norm().unwrap() / fd.norm().unwrap();
    assert!(rel < 1e-6, "HVP vs finite differences: {rel}");
}
