//! A tiny `reproduce table9` end to end: table shape, JSON keys, finite numbers in range.
use serde_json::Value;
use std::process::{Command, Output};

/// Its stdout, after checking that the command succeeded (else its stdout and stderr).
fn stdout_of(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Runs the CLI from the crate root.
fn hl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hessian-lab"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

#[test]
fn tiny_table9_has_the_papers_shape_and_sane_numbers() {
    let out = std::env::temp_dir().join(format!("hl-table9-{}", std::process::id()));
    let o = hl(&[
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
    ]);
    let stdout = stdout_of(&o);
    assert!(
        stdout.contains("| Batch | Acc | λ₁^θ | λ₁^x | ‖∂ₓJ‖ | Acc ε=0.2 | Acc ε=0.1 | Epochs (steps) | Train loss |"),
        "{stdout}"
    );
    // one epoch cannot reach 99.9 % train accuracy: both rows are marked, never mixed in
    assert!(
        stdout.contains("| 32 † |")
            && stdout.contains("† B = 32, B = 128 did not reach 99.9% train accuracy"),
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
    for name in ["table9_lambda1", "table9_fgsm"] {
        let png = std::fs::read(out.join(format!("{name}.png"))).unwrap();
        assert_eq!(&png[1..4], b"PNG", "{name}.png");
        let svg = std::fs::read_to_string(out.join(format!("{name}.svg"))).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("batch size"),
            "{name}.svg"
        );
    }
}

/// The convergence protocol: a row that reaches the target stops there (epochs < cap), is
/// flagged converged and really has that train accuracy.
#[test]
fn table9_rows_train_until_the_target_accuracy() {
    let out = std::env::temp_dir().join(format!("hl-table9c-{}", std::process::id()));
    let o = hl(&[
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
    ]);
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
    let o = hl(&["reproduce", "table10"]);
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

/// A tiny `reproduce table3`: six models × clean and five attacks, λ₁^θ per model, the
/// Markdown table, the JSON and the heat map.
#[test]
fn tiny_table3_has_every_model_and_attack() {
    let out = std::env::temp_dir().join(format!("hl-table3-{}", std::process::id()));
    let o = hl(&[
        "reproduce",
        "table3",
        "--quick",
        "--train-samples",
        "256",
        "--epochs",
        "1",
        "--eval-samples",
        "48",
        "--hessian-samples",
        "48",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = stdout_of(&o);
    assert!(
        stdout.contains("| Model | clean | FGSM | FGSM-10 | L2 GRAD | FHSM | L2 HESS | λ₁^θ |"),
        "{stdout}"
    );
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("table3.json")).unwrap()).unwrap();
    let models: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(
        models,
        [
            "M_ORI",
            "M_FGSM",
            "M_FGSM-10",
            "M_L2GRAD",
            "M_FHSM",
            "M_L2HESS"
        ]
    );
    let acc = v["accuracy"].as_array().unwrap();
    assert_eq!(acc.len(), 6);
    for row in acc {
        let row: Vec<f64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(row.len(), 6);
        assert!(row.iter().all(|a| (0.0..=1.0).contains(a)));
        // FGSM-10 (iterated, same budget) is at least as strong as FGSM, up to one image
        assert!(row[2] <= row[1] + 1.0 / 48.0 + 1e-12, "{row:?}");
    }
    assert!(v["lambda1_theta"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l.as_f64().unwrap() > 0.0));
    assert!(out.join("table3.png").exists() && out.join("table3.md").exists());
}

/// `--with-scaling` writes a second table at lr·B/B₀; a learning rate that blows training up
/// gives a row marked ‡ with the reason, not a failed command.
#[test]
fn table9_with_scaling_and_a_diverged_row() {
    let out = std::env::temp_dir().join(format!("hl-table9s-{}", std::process::id()));
    let run = |extra: &[&str]| {
        let mut args = vec![
            "reproduce",
            "table9",
            "--quick",
            "--batch-sizes",
            "16,32",
            "--train-samples",
            "96",
            "--hessian-samples",
            "32",
            "--input-samples",
            "32",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        hl(&args)
    };
    let o = run(&["--epochs", "2", "--with-scaling"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("table9_scaling.json")).unwrap())
            .unwrap();
    assert_eq!(v["settings"]["lr_scale_base"], 16);
    let lrs: Vec<f64> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["lr"].as_f64().unwrap())
        .collect();
    assert!(
        (lrs[0] - 0.02).abs() < 1e-12 && (lrs[1] - 0.04).abs() < 1e-12,
        "{lrs:?}"
    );
    let o = run(&["--epochs", "2", "--fixed-epochs", "--lr", "1e4"]);
    let stdout = stdout_of(&o);
    assert!(
        stdout.contains("| 16 ‡ |") && stdout.contains("‡ B = 16, B = 32: training diverged"),
        "{stdout}"
    );
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("table9.json")).unwrap()).unwrap();
    assert!(v["rows"][0]["diverged"].is_string(), "{}", v["rows"][0]);
}
