//! The CLI's JSON contract: flags and keys named in the issues.
use serde_json::Value;
use std::process::Command;

fn run(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hessian-lab"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (out.status.success(), v, stderr)
}

fn keys(v: &Value, ks: &[&str]) {
    for k in ks {
        assert!(v.get(k).is_some(), "missing key {k} in {v}");
    }
}

#[test]
fn train_eval_spectrum_input_hessian_json() {
    let dir = std::env::temp_dir().join(format!("hl-cli-{}", std::process::id()));
    let w = dir.join("m1.safetensors");
    let ws = w.to_str().unwrap();
    let (ok, v, err) = run(&[
        "train",
        "--model",
        "m1",
        "--dataset",
        "mnist",
        "--batch-size",
        "64",
        "--epochs",
        "1",
        "--lr",
        "0.05",
        "--seed",
        "0",
        "--samples",
        "256",
        "--eval-train-samples",
        "256",
        "--out",
        ws,
        "--json",
        "--quiet",
    ]);
    assert!(ok, "{err}");
    keys(
        &v,
        &[
            "model",
            "dataset",
            "samples",
            "test_accuracy",
            "train_loss",
            "epochs",
            "seconds",
            "history",
        ],
    );
    assert_eq!(v["samples"], 256);
    let (ok, v, err) = run(&[
        "eval",
        "--model",
        "m1",
        "--weights",
        ws,
        "--dataset",
        "mnist",
        "--split",
        "test",
        "--samples",
        "100",
        "--json",
    ]);
    assert!(ok, "{err}");
    keys(
        &v,
        &["model", "dataset", "split", "samples", "loss", "accuracy"],
    );
    assert_eq!(v["samples"], 100);
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));

    let (ok, v, err) = run(&[
        "spectrum",
        "--model",
        "m1",
        "--weights",
        ws,
        "--dataset",
        "mnist",
        "--split",
        "test",
        "--samples",
        "32",
        "--top-k",
        "2",
        "--method",
        "lanczos",
        "--trace",
        "--trace-iter",
        "6",
        "--density",
        "--density-iter",
        "8",
        "--density-grid",
        "200",
        "--json",
    ]);
    assert!(ok, "{err}");
    keys(
        &v,
        &[
            "eigenvalues",
            "residuals",
            "hvps",
            "seconds",
            "trace",
            "density",
        ],
    );
    let e: Vec<f64> = serde_json::from_value(v["eigenvalues"].clone()).unwrap();
    assert_eq!(e.len(), 2);
    assert!(e[0] >= e[1] && e[0] > 0.0);
    assert_eq!(v["density"]["grid"].as_array().unwrap().len(), 200);
    let (ok, v2, err) = run(&[
        "spectrum",
        "--model",
        "m1",
        "--weights",
        ws,
        "--samples",
        "32",
        "--top-k",
        "1",
        "--method",
        "power",
        "--json",
    ]);
    assert!(ok, "{err}");
    // Power iteration targets the largest |λ|, which this barely trained net may have negative.
    let p = v2["eigenvalues"][0].as_f64().unwrap();
    assert!(p.is_finite() && p.abs() <= 1.5 * e[0].max(p.abs()));
    assert!(v2["hvps"].as_u64().unwrap() >= 2);

    let (ok, v, err) = run(&[
        "input-hessian",
        "--model",
        "m1",
        "--weights",
        ws,
        "--dataset",
        "mnist",
        "--split",
        "test",
        "--samples",
        "20",
        "--json",
    ]);
    assert!(ok, "{err}");
    keys(
        &v,
        &[
            "lambda1_x_mean",
            "lambda1_x_max",
            "grad_norm_mean",
            "rank_max",
            "min_eigenvalue_min",
            "per_sample",
        ],
    );
    assert_eq!(v["per_sample"].as_array().unwrap().len(), 20);
    assert!(v["rank_max"].as_u64().unwrap() <= 9);
}

#[test]
fn bad_input_gives_clear_errors_not_panics() {
    let (ok, _, err) = run(&["eval", "--model", "lenet", "--weights", "x", "--json"]);
    assert!(
        !ok && err.contains("invalid value 'lenet'") && err.contains("m1, c1"),
        "{err}"
    );
    let (ok, _, err) = run(&[
        "eval",
        "--model",
        "m1",
        "--weights",
        "/nonexistent.safetensors",
    ]);
    assert!(!ok && err.contains("nonexistent"), "{err}");
    let (ok, _, err) = run(&["spectrum", "--model", "m1", "--samples", "0"]);
    assert!(!ok && err.contains("samples"), "{err}");
    let (ok, _, err) = run(&[
        "train",
        "--model",
        "m1",
        "--dataset",
        "cifar10",
        "--out",
        "/tmp/x.safetensors",
    ]);
    assert!(!ok && err.contains("official binary files"), "{err}");
    assert!(!err.contains("panicked"));
    let (ok, _, err) = run(&[
        "spectrum",
        "--model",
        "m1",
        "--samples",
        "4",
        "--top-k",
        "0",
    ]);
    assert!(!ok && err.contains("k"), "{err}");
}

#[test]
fn bench_json_has_the_issue_keys() {
    // #7's contract: forward_ms, grad_ms, hvp_ms, power20_ms, peak_rss_mb (plus ours).
    let (ok, v, err) = run(&[
        "bench",
        "--model",
        "m1",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--repeats",
        "1",
        "--json",
    ]);
    assert!(ok, "{err}");
    keys(
        &v,
        &[
            "forward_ms",
            "grad_ms",
            "hvp_ms",
            "power20_ms",
            "peak_rss_mb",
            "hvp_reuse_graph_ms",
            "hvp_grad_ratio",
            "hvp_reuse_grad_ratio",
            "ggn_ms",
            "cpu",
            "simd",
        ],
    );
    // #18: the CPU and its SIMD level go with every measurement
    assert!(!v["cpu"].as_str().unwrap_or("").is_empty());
    assert!(["avx512", "avx2", "sse4.2", "sse2", "neon", "scalar"]
        .contains(&v["simd"].as_str().unwrap_or("?")));
    for k in [
        "forward_ms",
        "grad_ms",
        "hvp_ms",
        "hvp_reuse_graph_ms",
        "ggn_ms",
        "power20_ms",
    ] {
        let t = v[k].as_f64().unwrap_or(-1.0);
        assert!(t > 0.0 && t.is_finite(), "{k} = {t}");
    }
    let r = v["hvp_reuse_grad_ratio"].as_f64().unwrap_or(-1.0);
    let want =
        v["hvp_reuse_graph_ms"].as_f64().unwrap_or(0.0) / v["grad_ms"].as_f64().unwrap_or(1.0);
    assert!(
        (r - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{r} vs {want}"
    );
    assert_eq!(v["power20_hvps"].as_u64(), Some(21));
    let p = v["power20_hvp_grad_ratio"].as_f64().unwrap_or(-1.0);
    let want =
        v["power20_ms"].as_f64().unwrap_or(0.0) / 21.0 / v["grad_ms"].as_f64().unwrap_or(1.0);
    assert!(
        (p - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{p} vs {want}"
    );
}

/// A newcomer's `train` with default settings reaches the accuracy the README states (the
/// paper's M1 reaches 99.2 % in far more epochs); one full run, ~20 s on 2 cores.
#[test]
fn default_training_reaches_98_5_percent() {
    let dir = std::env::temp_dir().join(format!("hl-cli-default-{}", std::process::id()));
    let w = dir.join("m1.safetensors");
    let (ok, v, err) = run(&[
        "train",
        "--model",
        "m1",
        "--dataset",
        "mnist",
        "--out",
        w.to_str().unwrap(),
        "--json",
        "--quiet",
    ]);
    assert!(ok, "{err}");
    let acc = v["test_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.985, "default training: test accuracy {acc}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--arch` in place of `--model`: train a spec network, then spectrum, input Hessian, attack,
/// eval and landscape on it, and the PyTorch fixture's weights load by spec; errors say what is
/// wrong.
#[test]
fn arch_spec_networks_go_through_every_command() {
    let dir = std::env::temp_dir().join(format!("hl-cli-arch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let w = dir.join("seq.safetensors");
    let ws = w.to_str().unwrap();
    let spec = "Conv2d(1, 4, 5, stride=2), ReLU, MaxPool2d(2), Flatten, Linear(144, 10)";
    let common = ["--arch", spec, "--dataset", "mnist"];
    let with = |extra: &[&str]| -> Vec<String> {
        extra
            .iter()
            .chain(common.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let go = |args: Vec<String>| {
        let r: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        run(&r)
    };
    let (ok, v, err) = go(with(&[
        "train",
        "--epochs",
        "1",
        "--samples",
        "512",
        "--eval-train-samples",
        "0",
        "--out",
        ws,
        "--json",
        "--quiet",
    ]));
    assert!(ok, "{err}");
    assert_eq!(v["model"], "sequential");
    assert_eq!(v["arch"], spec);
    let (ok, v, err) = go(with(&[
        "spectrum",
        "--weights",
        ws,
        "--top-k",
        "2",
        "--samples",
        "64",
        "--json",
    ]));
    assert!(ok, "{err}");
    assert_eq!(v["eigenvalues"].as_array().map(|a| a.len()), Some(2), "{v}");
    assert_eq!(v["arch"], spec);
    for cmd in [
        vec!["input-hessian", "--samples", "8"],
        vec![
            "attack",
            "--attack",
            "fgsm",
            "--eps",
            "0.1",
            "--samples",
            "64",
        ],
        vec!["eval", "--samples", "64"],
    ] {
        let mut args = cmd.clone();
        args.extend(["--weights", ws, "--json"]);
        let (ok, v, err) = go(with(&args));
        assert!(ok, "{cmd:?}: {err}");
        assert_eq!(v["model"], "sequential", "{cmd:?}");
    }
    let fig = dir.join("l.png");
    let (ok, _, err) = go(with(&[
        "landscape",
        "--weights",
        ws,
        "--direction",
        "random",
        "--range",
        "-0.5:0.5:3",
        "--samples",
        "64",
        "--out",
        fig.to_str().unwrap(),
        "--json",
    ]));
    assert!(ok, "{err}");
    // the PyTorch-exported MLP fixture by spec, from a file (one module per line)
    let specf = dir.join("mlp.spec");
    std::fs::write(
        &specf,
        "# exported by tests/fixtures/export_sequential.py\nLinear(20, 12)\nBatchNorm1d(12)\nGELU\n\
         Linear(12, 8, bias=False)\nSigmoid\nLinear(8, 3)\nTanh\nLinear(3, 4)\n",
    )
    .unwrap();
    let (ok, _, err) = run(&[
        "eval",
        "--arch-file",
        specf.to_str().unwrap(),
        "--dataset",
        "mnist",
        "--weights",
        "tests/fixtures/seq_mlp_torch.safetensors",
        "--samples",
        "8",
    ]);
    // MNIST images are 1×28×28, the MLP takes 20 features: refused, naming module 0
    assert!(!ok);
    assert!(
        err.contains("module 0") && err.contains("Flatten before it"),
        "{err}"
    );
    // errors: no --dataset, a typo in the spec, a spec and a model at once
    let (ok, _, err) = run(&["spectrum", "--arch", spec]);
    assert!(!ok && err.contains("--arch needs --dataset"), "{err}");
    let (ok, _, err) = run(&[
        "spectrum",
        "--arch",
        "Conv2d(1, 4, 5), Relu6",
        "--dataset",
        "mnist",
    ]);
    assert!(!ok && err.contains("unknown module `Relu6`"), "{err}");
    let (ok, _, err) = run(&["spectrum", "--arch", spec, "--model", "m1"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    let (ok, _, err) = run(&["spectrum", "--dataset", "mnist"]);
    assert!(!ok && err.contains("--model"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `--data-npy x.npy,y.npy` in place of `--dataset`: your own features train a spec network,
/// then spectrum, attack and eval run on them; errors say what is wrong.
#[test]
fn npy_data_goes_through_the_commands() {
    use ndarray_npy::WriteNpyExt;
    let dir = std::env::temp_dir().join(format!("hl-cli-npy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (xp, yp, w) = (
        dir.join("x.npy"),
        dir.join("y.npy"),
        dir.join("w.safetensors"),
    );
    let n = 120;
    let x = hessian_lab::ndarray::Array2::from_shape_fn((n, 6), |(i, j)| {
        ((i * 7 + j * 3) % 11) as f64 / 5.0 - 1.0
    });
    let y =
        hessian_lab::ndarray::Array1::from_shape_fn(n, |i| (x[[i, 0]] + x[[i, 1]] > 0.0) as i64);
    x.write_npy(std::fs::File::create(&xp).unwrap()).unwrap();
    y.write_npy(std::fs::File::create(&yp).unwrap()).unwrap();
    let data = format!("{},{}", xp.display(), yp.display());
    let spec = "Linear(6, 8), ReLU, Linear(8, 2)";
    let (ok, v, err) = run(&[
        "train",
        "--arch",
        spec,
        "--data-npy",
        &data,
        "--epochs",
        "2",
        "--batch-size",
        "20",
        "--out",
        w.to_str().unwrap(),
        "--json",
        "--quiet",
    ]);
    assert!(ok, "{err}");
    assert_eq!(v["dataset"], "x");
    assert_eq!(v["samples"], n);
    let ws = w.to_str().unwrap();
    let (ok, v, err) = run(&[
        "spectrum",
        "--arch",
        spec,
        "--weights",
        ws,
        "--data-npy",
        &data,
        "--top-k",
        "2",
        "--json",
    ]);
    assert!(ok, "{err}");
    assert_eq!(v["split"], "npy");
    let (ok, v, err) = run(&[
        "attack",
        "--arch",
        spec,
        "--weights",
        ws,
        "--data-npy",
        &data,
        "--attack",
        "l2grad",
        "--eps",
        "0.5",
        "--json",
    ]);
    assert!(ok, "{err}");
    assert_eq!(v["samples"], n);
    let (ok, _, err) = run(&[
        "eval",
        "--arch",
        spec,
        "--weights",
        ws,
        "--data-npy",
        xp.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("two files"), "{err}");
    let (ok, _, err) = run(&[
        "eval",
        "--model",
        "m1",
        "--weights",
        ws,
        "--data-npy",
        &data,
    ]);
    assert!(!ok && err.contains("(C, H, W) images"), "{err}");
    let (ok, _, err) = run(&[
        "eval",
        "--arch",
        spec,
        "--weights",
        ws,
        "--data-npy",
        &data,
        "--dataset",
        "mnist",
    ]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A network outside Theorem 1 (tanh) gets λ₁^x by power iteration on input HVPs, and the JSON
/// says which method and why; a ReLU network gets the exact form.
#[test]
fn input_hessian_falls_back_to_power_iteration_with_the_reason() {
    let (ok, v, err) = run(&[
        "input-hessian",
        "--arch",
        "Flatten, Linear(784, 16), Tanh, Linear(16, 10)",
        "--dataset",
        "mnist",
        "--samples",
        "6",
        "--json",
    ]);
    assert!(ok, "{err}");
    assert_eq!(v["method"], "power", "{v}");
    assert!(v["reason"]
        .as_str()
        .unwrap()
        .contains("not piecewise linear"));
    assert_eq!(v["per_sample"].as_array().map(|a| a.len()), Some(6));
    assert!(v["lambda1_x_max"].as_f64().unwrap().is_finite());
    let (ok, v, err) = run(&[
        "input-hessian",
        "--arch",
        "Flatten, Linear(784, 16), ReLU, Linear(16, 10)",
        "--dataset",
        "mnist",
        "--samples",
        "6",
        "--json",
    ]);
    assert!(ok, "{err}");
    assert!(
        v.get("method").is_none() && v["rank_max"].as_u64().unwrap() <= 9,
        "{v}"
    );
}
