//! A tiny `reproduce table9` end to end: table shape, JSON keys, finite numbers in range.
use serde_json::Value;
use std::process::Command;

#[test]
fn tiny_table9_has_the_papers_shape_and_sane_numbers() {
    let out = std::env::temp_dir().join(format!("hl-table9-{}", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_hessian-lab"))
        .args([
            "reproduce",
            "table9",
            "--quick",
            "--batch-sizes",
            "32,128",
            "--train-samples",
            "384",
            "--epochs",
            "1",
            "--hessian-samples",
            "64",
            "--input-samples",
            "64",
            "--out",
            out.to_str().unwrap(),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("| Batch | Acc | λ₁^θ | λ₁^x | ‖∂ₓJ‖ | Acc ε=0.2 | Acc ε=0.1 | Epochs (steps) | Train loss |"),
        "{stdout}"
    );
    // one epoch cannot reach 99.9 % train accuracy: both rows are marked, never mixed in
    assert!(
        stdout.contains("| 32 † |") && stdout.contains("† did not reach 99.9% train accuracy"),
        "{stdout}"
    );
    assert!(stdout.contains("settings:"));
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("| 32 ") || l.starts_with("| 128 "))
            .count(),
        2
    );
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("table9.json")).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(v["settings"].is_object());
    assert_eq!(v["settings"]["target_train_accuracy"].as_f64(), Some(0.999));
    for r in rows {
        assert_eq!(r["converged"], false);
        assert_eq!(r["epochs"], 1);
        assert!(r["steps"].as_u64().unwrap() >= 3);
        assert!(r["final_train_loss"].as_f64().unwrap() > 0.0);
        for k in ["train_accuracy", "test_accuracy"] {
            let x = r[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x), "{k} = {x}");
        }
        for k in [
            "lambda1_theta_train",
            "lambda1_theta_test",
            "lambda1_x_train",
            "lambda1_x_test",
            "grad_norm_x_train",
            "grad_norm_x_test",
        ] {
            let x = r[k].as_f64().unwrap();
            assert!(x.is_finite() && x >= 0.0, "{k} = {x}");
        }
        for eps in ["0.2", "0.1"] {
            for s in ["train", "test"] {
                let x = r["fgsm_accuracy"][eps][s].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&x));
            }
        }
        // FGSM at ε=0.2 is at least as damaging as at ε=0.1 (on these samples, same model)
        assert!(
            r["fgsm_accuracy"]["0.2"]["test"].as_f64().unwrap()
                <= r["fgsm_accuracy"]["0.1"]["test"].as_f64().unwrap() + 0.05
        );
    }
    assert!(out.join("table9_lambda1.png").exists() && out.join("table9_fgsm.png").exists());
}

/// The convergence protocol: a row that reaches the target stops there (epochs < cap), is
/// flagged converged and really has that train accuracy.
#[test]
fn table9_rows_train_until_the_target_accuracy() {
    let out = std::env::temp_dir().join(format!("hl-table9c-{}", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_hessian-lab"))
        .args([
            "reproduce",
            "table9",
            "--quick",
            "--batch-sizes",
            "16",
            "--train-samples",
            "96",
            "--epochs",
            "80",
            "--target-train-accuracy",
            "0.99",
            "--hessian-samples",
            "32",
            "--input-samples",
            "32",
            "--out",
            out.to_str().unwrap(),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("table9.json")).unwrap()).unwrap();
    let r = &v["rows"][0];
    assert_eq!(r["converged"], true, "{r}");
    assert!(r["train_accuracy"].as_f64().unwrap() >= 0.99);
    let e = r["epochs"].as_u64().unwrap();
    assert!(e < 80 && r["steps"].as_u64().unwrap() == e * 6, "{r}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains('†'));
}

#[test]
fn table10_without_data_says_what_is_needed() {
    let o = Command::new(env!("CARGO_BIN_EXE_hessian-lab"))
        .args(["reproduce", "table10"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("--cifar10 DIR") && err.contains("--sample"),
        "{err}"
    );
}

/// `table10 --sample` runs the whole pipeline (baseline, LR scaling, robust training of C1)
/// on the shipped sample and writes a table whose accuracies are fractions on the balanced
/// held-out fifth (a multiple of 1/400).
#[test]
fn table10_sample_runs_end_to_end() {
    let out = std::env::temp_dir().join(format!("hl-t10-{}", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_hessian-lab"))
        .args([
            "reproduce",
            "table10",
            "--sample",
            "--batch-sizes",
            "400,1600",
            "--epochs",
            "1",
        ])
        .arg("--out")
        .arg(&out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("| 400 |") && stdout.contains("| 1600 |"),
        "{stdout}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("table10.json")).unwrap()).unwrap();
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        for k in ["baseline", "lr_scaling", "robust"] {
            let a = r[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&a), "{k} = {a}");
            assert!(
                (a * 400.0 - (a * 400.0).round()).abs() < 1e-6,
                "{k} = {a} not k/400"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}
