//! PyTorch-exported models (tests/fixtures/export_pytorch.py) load and give the same logits;
//! every model's parameter/buffer names and shapes equal PyTorch's state_dict.
mod common;

use common::*;
use hessian_lab::models::{Model, ModelKind};
use std::collections::BTreeMap;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn pytorch_weights_give_pytorch_logits() {
    for (kind, name) in [(ModelKind::M1, "m1"), (ModelKind::C1, "c1")] {
        for rt in [rt32(), rt64()] {
            let m = Model::load(kind, fixture(&format!("{name}_torch.safetensors")), &rt).unwrap();
            let io = candle_core::safetensors::load(
                fixture(&format!("{name}_io.safetensors")),
                &rt.device,
            )
            .unwrap();
            let x = io["x"].to_dtype(rt.dtype).unwrap();
            let want = to_vec(&io["logits"]);
            let got = to_vec(&m.forward(&x).unwrap());
            let err = max_abs_diff(&got, &want);
            let scale = want.iter().fold(0.0f64, |a, b| a.max(b.abs()));
            assert!(
                err < 2e-5 * scale.max(1.0),
                "{name} {:?}: max |Δlogit| = {err}",
                rt.dtype
            );
        }
    }
}

#[test]
fn state_dict_names_and_shapes_match_pytorch() {
    let s = std::fs::read_to_string(fixture("state_dict_shapes.json")).unwrap();
    let all: BTreeMap<String, BTreeMap<String, Vec<usize>>> = serde_json::from_str(&s).unwrap();
    let rt = rt32();
    for (name, want) in all {
        let kind: ModelKind = name.parse().unwrap();
        let m = Model::new(kind, &rt, 0).unwrap();
        let got: BTreeMap<String, Vec<usize>> = m
            .params()
            .iter()
            .chain(m.buffers())
            .map(|(n, v)| (n.clone(), v.dims().to_vec()))
            .collect();
        // PyTorch's num_batches_tracked counters are accepted and ignored.
        let want: BTreeMap<String, Vec<usize>> = want
            .into_iter()
            .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
            .collect();
        assert_eq!(got, want, "{name}");
    }
}
