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
        ],
    );
    for k in [
        "forward_ms",
        "grad_ms",
        "hvp_ms",
        "hvp_reuse_graph_ms",
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
