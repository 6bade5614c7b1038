//! One operation of `bench`, repeated, for a profiler: `perf record -g` this while it loops.
//!
//! Run: `RAYON_NUM_THREADS=2 cargo run --release --example profile_op -- c1 grad 200`
//! (model: m1 c1 c2 c3 resnet18; op: forward grad hvp reuse ggn ggnreuse; repetitions; batch
//! 128 or the fourth argument; f32, or f64 as the fifth). Random inputs of the model's shape,
//! untrained weights.

use hessian_lab::prelude::*;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let kind: ModelKind = arg(0, "c1").parse().map_err(anyhow::Error::msg)?;
    let op = arg(1, "grad");
    let reps: usize = arg(2, "100").parse()?;
    let bs: usize = arg(3, "128").parse()?;
    let f64 = arg(4, "f32") == "f64";
    hessian_lab::runtime::init();
    let rt = if f64 {
        Runtime::cpu_f64()
    } else {
        Runtime::cpu_f32()
    };
    let model = Model::from_config(
        ModelConfig::for_dataset(kind, kind.default_dataset()),
        &rt,
        0,
    )?;
    let [c, h, w] = model.config.input_shape;
    let x = Tensor::rand(0f32, 1f32, (bs, c, h, w), &rt.device)?.to_dtype(rt.dtype)?;
    let y = Tensor::zeros(bs, DType::U32, &rt.device)?;
    let batch = Batch::new(x, y)?;
    let sel = ParamSelection::all(&model);
    let v = ParamVec::randn_like(&sel.tensors(&model), 1)?;
    let hop = HessianOperator::new(&model, DataSource::Batch(batch.clone()))?;
    let ggn = GgnOperator::new(&model, DataSource::Batch(batch.clone()))?;
    let step = || -> anyhow::Result<()> {
        match op.as_str() {
            "forward" => drop(model.forward(&batch.x)?),
            "grad" => drop(curvature::gradient(&model, &batch, &sel)?),
            "hvp" => drop(curvature::hvp(&model, &batch, &v)?),
            "reuse" => drop(hop.apply(&v)?),
            "ggn" => drop(curvature::ggn_vector_product(&model, &batch, &v)?),
            "ggnreuse" => drop(ggn.apply(&v)?),
            o => anyhow::bail!("unknown op {o}"),
        }
        Ok(())
    };
    step()?;
    let t = Instant::now();
    for _ in 0..reps {
        step()?;
    }
    println!(
        "{kind:?} {op}: {:.2} ms per call",
        t.elapsed().as_secs_f64() * 1e3 / reps as f64
    );
    Ok(())
}
