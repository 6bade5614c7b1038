//! One compute thread (`RAYON_NUM_THREADS=1`, as `bench --threads 1` sets it): work that
//! enters the compute pool from a plain thread, from rayon's global pool and from the compute
//! pool itself must not deadlock, and Hessian-vector products must stay exact. Its own test
//! binary, so that the variable is set before any pool starts.

mod common;
use common::*;
use hessian_lab::autodiff::on_pool;
use hessian_lab::curvature::{self, ParamSelection, ParamVec};
use hessian_lab::models::{Model, ModelConfig, ModelKind};

#[test]
fn one_thread_pool_nests_and_hvps_stay_exact() {
    std::env::set_var("RAYON_NUM_THREADS", "1");
    // A deadlock would hang CI: fail loudly instead.
    std::thread::spawn(|| {
        std::thread::sleep(std::time::Duration::from_secs(120));
        eprintln!("one_thread: still running after 120 s (deadlock in the compute pool?)");
        std::process::exit(1);
    });
    let rt = rt64();
    let cpu = candle_core::Device::Cpu;
    assert_eq!(rayon::current_num_threads(), 1);
    // From a plain thread into the compute pool, and nested calls stay where they are.
    let (outer, inner) = on_pool(&cpu, || {
        let outer = std::thread::current().name().map(String::from);
        let inner = on_pool(&cpu, || std::thread::current().name().map(String::from));
        (outer, inner)
    });
    assert_eq!(outer.as_deref(), Some("hessian-lab-0"));
    assert_eq!(inner, outer);
    // The model runs its kernels on the pool; an HVP from inside the pool and from rayon's
    // global pool (one thread each) must not wait on itself.
    let m = Model::from_config(ModelConfig::tiny(ModelKind::C2, [3, 8, 8], 4, 0), &rt, 2).unwrap();
    let b = random_batch(6, [3, 8, 8], 4, 5, &rt);
    let sel = ParamSelection::all(&m);
    let v = ParamVec::randn_like(&sel.tensors(&m), 9).unwrap();
    let hv = curvature::hvp(&m, &b, &v).unwrap();
    let hv_in_pool = on_pool(&cpu, || curvature::hvp(&m, &b, &v).unwrap());
    let hv_global = rayon::scope(|_| curvature::hvp(&m, &b, &v).unwrap());
    for other in [&hv_in_pool, &hv_global] {
        assert_eq!(hv.axpy(-1.0, other).unwrap().norm().unwrap(), 0.0);
    }
    let fd = curvature::hvp_fd(&m, &b, &sel, &v, None).unwrap();
    let rel = hv.axpy(-1.0, &fd).unwrap().norm().unwrap() / fd.norm().unwrap();
    assert!(rel < 1e-6, "HVP vs finite differences: {rel}");
}
