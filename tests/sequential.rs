//! PyTorch `nn.Sequential` networks by spec: logits and a Hessian-vector product exported by
//! PyTorch (tests/fixtures/export_sequential.py, f64) reproduced to 1e-10; the same network
//! as a spec, a built-in model and a candle-nn model has the same spectrum; typed errors that
//! name the module and the tensor.
mod common;

use common::*;
use hessian_lab::candle_nn::{self, Module, VarBuilder, VarMap};
use hessian_lab::curvature::*;
use hessian_lab::models::{parse_spec, Conv2dSpec, Layer};
use hessian_lab::prelude::*;
use std::collections::HashMap;

const CNN_SPEC: &str = "Conv2d(1, 4, 3, padding=1), BatchNorm2d(4), ReLU, MaxPool2d(2), \
    Conv2d(4, 6, 3, stride=2, padding=1, groups=2), ReLU, AvgPool2d(2, stride=1), \
    Flatten, Dropout(0.25), Linear(24, 16), ReLU, Linear(16, 10)";
const MLP_SPEC: &str = "Linear(20, 12), BatchNorm1d(12), GELU, Linear(12, 8, bias=False), \
    Sigmoid, Linear(8, 3), Tanh, Linear(3, 4)";

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn io(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(&format!("seq_{name}_io.safetensors")), &Device::Cpu)
        .unwrap()
}

fn check_against_pytorch(name: &str, spec: &str, shape: &[usize]) {
    let rt = rt64();
    let net = Sequential::load(
        spec,
        shape,
        fixture(&format!("seq_{name}_torch.safetensors")),
        &rt,
    )
    .unwrap();
    let io = io(name);
    let x = io["x"].to_dtype(DType::F64).unwrap();
    let y = io["y"].to_dtype(DType::U32).unwrap();
    let b = Batch::new(x, y).unwrap();
    let got = to_vec(&net.forward(&b.x).unwrap());
    let want = to_vec(&io["logits"]);
    assert!(
        max_abs_diff(&got, &want) < 1e-10,
        "{name} logits: {}",
        max_abs_diff(&got, &want)
    );
    let loss = to_vec(&net.loss(&b).unwrap())[0];
    assert!((loss - to_vec(&io["loss"])[0]).abs() < 1e-12);
    let v = ParamVec(
        net.params()
            .iter()
            .map(|(n, _)| io[&format!("v.{n}")].clone())
            .collect(),
    );
    let hv = hvp(&net, &b, &v).unwrap();
    for ((n, _), h) in net.params().iter().zip(&hv.0) {
        let want = to_vec(&io[&format!("hv.{n}")]);
        let err = max_abs_diff(&to_vec(h), &want);
        assert!(err < 1e-10, "{name} Hv {n}: {err}");
    }
}

#[test]
fn pytorch_cnn_with_batchnorm_pools_and_groups_gives_pytorch_logits_and_hvp() {
    check_against_pytorch("cnn", CNN_SPEC, &[1, 12, 12]);
}

#[test]
fn pytorch_mlp_with_gelu_sigmoid_tanh_and_batchnorm1d_gives_pytorch_logits_and_hvp() {
    check_against_pytorch("mlp", MLP_SPEC, &[20]);
}

/// M1-like LeNet as a spec, as the built-in `m1`-style model of the crate would name it, and as
/// a candle-nn model, with the same weights: the same top eigenvalues.
#[test]
fn the_same_network_as_spec_built_in_and_candle_nn_has_one_spectrum() {
    let rt = rt64();
    let shape = [1usize, 3, 3];
    let built_in =
        Model::from_config(ModelConfig::tiny(ModelKind::Mlp, shape, 4, 6), &rt, 3).unwrap();
    let spec =
        Sequential::new("Flatten, Linear(9, 6), ReLU, Linear(6, 4)", &shape, &rt, 0).unwrap();
    // built-in names fc1/fc2 ↔ the spec's module indices 1 and 3
    let value = |n: &str| built_in.param(n).unwrap().as_tensor().clone();
    spec.set_param_values(&[
        value("fc1.weight"),
        value("fc1.bias"),
        value("fc2.weight"),
        value("fc2.bias"),
    ])
    .unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
    let fc1 = candle_nn::linear(9, 6, vb.pp("fc1")).unwrap();
    let fc2 = candle_nn::linear(6, 4, vb.pp("fc2")).unwrap();
    let cnet = CandleNet::from_fn(&varmap, 4, move |x, _| {
        fc2.forward(&fc1.forward(&x.flatten_from(1)?)?.relu()?)
    })
    .unwrap();
    cnet.set_param_values(&built_in.param_values().unwrap())
        .unwrap();
    let b = random_batch(12, shape, 4, 2, &rt);
    let top = |n: &dyn Network| {
        let op = HessianOperator::new(n, DataSource::Batch(b.clone())).unwrap();
        lanczos(
            &op,
            3,
            &LanczosOpts {
                tol: 1e-10,
                ..Default::default()
            },
        )
        .unwrap()
        .eigenvalues
    };
    let (a, s, c) = (top(&built_in), top(&spec), top(&cnet));
    for k in 0..3 {
        assert!((a[k] - s[k]).abs() < 1e-10 * a[0], "{a:?} vs spec {s:?}");
        assert!(
            (a[k] - c[k]).abs() < 1e-10 * a[0],
            "{a:?} vs candle-nn {c:?}"
        );
    }
    assert_eq!(spec.piecewise_linear(), Some(true));
}

#[test]
fn spec_syntax_accepts_pytorch_spellings() {
    let a = parse_spec("nn.Conv2d(3, 8, kernel_size=(3, 3), stride=1, padding=1, bias=False)\n nn.ReLU()\n # a comment\n nn.MaxPool2d(kernel_size=2); torch.nn.Flatten(); nn.Linear(in_features=8, out_features=2)").unwrap();
    assert_eq!(a.len(), 5);
    assert_eq!(
        a[0],
        Layer::Conv2d(Conv2dSpec {
            in_channels: 3,
            out_channels: 8,
            kernel: 3,
            stride: 1,
            padding: 1,
            groups: 1,
            bias: false
        })
    );
    assert_eq!(
        a[2],
        Layer::MaxPool2d {
            kernel: 2,
            stride: 2,
            padding: 0
        }
    );
}

#[test]
fn spec_and_weight_errors_are_typed_and_name_the_module() {
    let rt = rt64();
    let spec_err = |spec: &str, shape: &[usize], want: &str, want_index: usize| {
        let e = Sequential::new(spec, shape, &rt, 0).unwrap_err();
        match &e {
            hessian_lab::Error::Spec { index, .. } => assert_eq!(index, &want_index, "{e}"),
            _ => panic!("not a spec error: {e}"),
        }
        assert!(e.to_string().contains(want), "{e}");
    };
    spec_err("Linear(4, 2), Softmax", &[4], "unknown module `Softmax`", 1);
    spec_err("Linear(4)", &[4], "missing argument `out_features`", 0);
    spec_err(
        "Linear(4, 2, bais=False)",
        &[4],
        "unknown or unsupported argument `bais`",
        0,
    );
    spec_err(
        "Linear(4, x)",
        &[4],
        "`out_features` = `x` is not a valid value",
        0,
    );
    spec_err(
        "Conv2d(1, 4, 3), ReLU, Linear(16, 2)",
        &[1, 6, 6],
        "a Flatten before it?",
        2,
    );
    spec_err(
        "Conv2d(3, 4, 3)",
        &[1, 6, 6],
        "gets 1 channels, declares 3",
        0,
    );
    spec_err("Conv2d(1, 4, 9)", &[1, 6, 6], "smaller than the kernel", 0);
    spec_err(
        "Flatten, Linear(36, 1)",
        &[1, 6, 6],
        "must end in logits",
        1,
    );
    spec_err("Linear(4, 2", &[4], "unclosed", 0);
    spec_err("Conv2d(1, 4, 3, dilation=2)", &[1, 6, 6], "dilation", 0);
    spec_err("BatchNorm2d(4, eps=0.001)", &[4, 2, 2], "defaults", 0);
    spec_err(
        "GELU(approximate='tanh'), Flatten, Linear(4, 2)",
        &[1, 2, 2],
        "exact",
        0,
    );
    spec_err("", &[4], "no modules", 0);

    // weights: wrong shape, missing and unexpected tensors, each with its module
    let dir = std::env::temp_dir().join(format!("hl-seq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    let t = |d: &[usize]| Tensor::zeros(d, DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &HashMap::from([
            ("0.weight".to_string(), t(&[3, 5])),
            ("2.weight".to_string(), t(&[2, 3])),
            ("7.weight".to_string(), t(&[1])),
        ]),
        &path,
    )
    .unwrap();
    let e = Sequential::load("Linear(4, 3), ReLU, Linear(3, 2)", &[4], &path, &rt).unwrap_err();
    let s = e.to_string();
    assert!(
        matches!(e, hessian_lab::Error::WeightsMismatch { .. }),
        "{s}"
    );
    assert!(
        s.contains("0.weight (module 0, Linear(4, 3, bias=true)): shape [3, 5], expected [3, 4]"),
        "{s}"
    );
    assert!(s.contains("missing tensors: 0.bias (module 0"), "{s}");
    assert!(s.contains("unexpected tensors: 7.weight"), "{s}");
    let e = Sequential::load("Linear(4, 2)", &[4], dir.join("nope.safetensors"), &rt).unwrap_err();
    assert!(matches!(e, hessian_lab::Error::Io { .. }), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A spec network is a full citizen: saved under PyTorch's names and loaded back, trained,
/// attacked, its input Hessian by Theorem 1 when piecewise linear.
#[test]
fn spec_network_saves_loads_trains_and_is_attacked() {
    let rt = rt64();
    let spec = "Conv2d(1, 2, 5, stride=3), ReLU, MaxPool2d(3), Flatten, Linear(8, 10)";
    let net = Sequential::new(spec, &[1, 28, 28], &rt, 5)
        .unwrap()
        .named("tiny-cnn");
    let split = synthetic_split(64, 1);
    fit_briefly(&net, &split, 1, 32);
    let dir = std::env::temp_dir().join(format!("hl-seq2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("net.safetensors");
    net.save(&path).unwrap();
    let back = Sequential::load(spec, &[1, 28, 28], &path, &rt).unwrap();
    let b = split.range_batch(0, 8, &rt).unwrap();
    assert_eq!(
        to_vec(&net.forward(&b.x).unwrap()),
        to_vec(&back.forward(&b.x).unwrap())
    );
    let ih = input_hessian(&back, &b).unwrap();
    assert_eq!(ih.len(), 8);
    let adv = attack::attack(&back, &b, AttackKind::Fgsm, &[0.1]).unwrap();
    assert!(adv[0].linf_mean <= 0.1 + 1e-12);
    assert!(check_hvp(&back, &b, 0).unwrap().ok);
    std::fs::remove_dir_all(&dir).ok();
}

/// A network trained by PyTorch on Fashion-MNIST (tests/fixtures/export_fashion_cnn.py), loaded
/// by the spec stored in its metadata, classifies the first 1,000 test images exactly as
/// PyTorch did (f32 and f64).
#[test]
fn pytorch_trained_fashion_cnn_predicts_as_pytorch_did() {
    let path = fixture("fashion_cnn_torch.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    let want: Vec<u32> = meta["predictions_first_1000"]
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let test = hessian_lab::data::load(DatasetKind::FashionMnist, SplitKind::Test, data_dir())
        .unwrap()
        .first(1000)
        .unwrap();
    for rt in [rt32(), rt64()] {
        let net = Sequential::load(&meta["spec"], &[1, 28, 28], &path, &rt).unwrap();
        let b = test.to_batch(&rt).unwrap();
        let pred: Vec<u32> = net
            .forward(&b.x)
            .unwrap()
            .argmax(1)
            .unwrap()
            .to_vec1()
            .unwrap();
        let differ = pred.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ, 0,
            "{:?}: {differ} of 1000 predictions differ",
            rt.dtype
        );
        let (_, acc) = net.evaluate(&test, 500).unwrap();
        let torch_acc: f64 = meta["accuracy_first_1000"].parse().unwrap();
        assert!((acc - torch_acc).abs() < 1e-6, "{acc} vs {torch_acc}");
    }
}
