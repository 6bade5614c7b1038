//! The CPU kernels are part of the model's `Runtime`: `Kernels::Candle` runs candle's ops and
//! `Kernels::Fused` ours through a whole forward, gradient and Hessian-vector product, counted
//! by the fused ops' own call counter, and both agree to f64 precision. Its own test binary:
//! the counter is process-wide.
//!
//! C2 is left out of the value comparison on purpose: there BatchNorm follows a ReLU, so the
//! ReLU's zeros become equal values that tie in the next max pool, and candle's max reduction
//! sends the full gradient to every tied maximum while the fused kernel (as PyTorch) sends it
//! to the first only — `Kernels::Candle` over-counts BN's β gradient there.

mod common;
use common::*;
use hessian_lab::curvature::{self, ParamSelection, ParamVec};
use hessian_lab::models::layers::Kernels;
use hessian_lab::models::{Model, ModelConfig, ModelKind};
use hessian_lab::ops::kernel_calls;

#[test]
fn the_runtimes_kernels_run_through_a_whole_model() {
    let mut results = vec![];
    for kind in [ModelKind::M1, ModelKind::C1, ModelKind::C3] {
        for kernels in [Kernels::Candle, Kernels::Fused] {
            let rt = rt64().with_kernels(kernels);
            let shape = match kind {
                ModelKind::M1 => [1, 12, 12],
                ModelKind::C1 => [3, 16, 16],
                _ => [3, 8, 8],
            };
            let m = Model::from_config(ModelConfig::tiny(kind, shape, 4, 0), &rt, 3).unwrap();
            let b = random_batch(4, shape, 4, 11, &rt);
            let sel = ParamSelection::all(&m);
            let v = ParamVec::randn_like(&sel.tensors(&m), 5).unwrap();
            // run from other threads too: the choice travels with the model, not the thread
            let before = kernel_calls();
            let (logits, g, hv) = std::thread::scope(|s| {
                s.spawn(|| {
                    let logits = to_vec(&m.forward(&b.x).unwrap());
                    let (_, g) = curvature::hvp::gradient(&m, &b, &sel).unwrap();
                    let hv = curvature::hvp(&m, &b, &v).unwrap();
                    (logits, g.to_f64_vec().unwrap(), hv.to_f64_vec().unwrap())
                })
                .join()
                .unwrap()
            });
            let calls = kernel_calls() - before;
            match kernels {
                Kernels::Candle => assert_eq!(calls, 0, "{kind:?}: candle's ops only"),
                Kernels::Fused => assert!(calls > 20, "{kind:?}: fused ops ran {calls} times"),
            }
            results.push((kind, kernels, logits, g, hv));
        }
    }
    for pair in results.chunks(2) {
        let (kind, _, l0, g0, h0) = &pair[0];
        let (_, _, l1, g1, h1) = &pair[1];
        for (what, a, b) in [("logits", l0, l1), ("gradient", g0, g1), ("HVP", h0, h1)] {
            let e = rel_err(a, b);
            assert!(e < 1e-10, "{kind:?} {what}: candle vs fused {e}");
        }
    }
}
