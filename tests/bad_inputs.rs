//! Bad input through the CLI, as a hostile but realistic user would give it: every case
//! asserts the exit code, the kind of error (words of its message) and that no file of the
//! user's was lost or replaced. Files are corrupted by the test itself.
//!
//! Exit codes: 0 success, 1 a typed error, 2 a usage error from the argument parser, 130
//! interrupted. A panic (101) or a hang (the watchdog) fails every case.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hessian_lab::models::{Model, ModelKind};
use hessian_lab::Runtime;

const BIN: &str = env!("CARGO_BIN_EXE_hessian-lab");

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hl-bad-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the CLI with a time limit (a hang is a failure, not a stuck CI).
fn run_for(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("hessian-lab {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(args: &[&str]) -> Output {
    run_for(args, Duration::from_secs(120))
}

/// Asserts exit code `code` and that stderr contains every one of `words` (case-insensitive).
fn expect(args: &[&str], code: i32, words: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "{args:?}\nstderr: {err}");
    let low = err.to_lowercase();
    for w in words {
        assert!(
            low.contains(&w.to_lowercase()),
            "{args:?}: `{w}` not in: {err}"
        );
    }
    assert!(!low.contains("panicked"), "{args:?} panicked: {err}");
    err
}

/// A freshly initialised M1 saved by the crate.
fn m1_file(dir: &Path) -> PathBuf {
    let p = dir.join("m1.safetensors");
    Model::new(ModelKind::M1, &Runtime::cpu_f32(), 0)
        .unwrap()
        .save(&p)
        .unwrap();
    p
}

/// Overwrites element `at` (a fraction of the tensor's length) of f32 tensor `name` in a
/// safetensors file with `value`.
fn poke(path: &Path, name: &str, at: f64, value: f32) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let off = &header[name]["data_offsets"];
    let (a, b) = (
        off[0].as_u64().unwrap() as usize,
        off[1].as_u64().unwrap() as usize,
    );
    let count = (b - a) / 4;
    let i = ((count as f64 * at) as usize).min(count - 1);
    let pos = 8 + n + a + 4 * i;
    bytes[pos..pos + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A short `train` run; `extra` flags replace the defaults of the same name.
fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let defaults = [
        ("--samples", "256"),
        ("--batch-size", "64"),
        ("--epochs", "1"),
        ("--eval-train-samples", "0"),
    ];
    let mut v = vec![
        "train",
        "--model",
        "m1",
        "--dataset",
        "mnist",
        "--quiet",
        "--out",
        out,
    ];
    for (k, val) in defaults {
        if !extra.contains(&k) {
            v.extend([k, val]);
        }
    }
    v.extend_from_slice(extra);
    v
}

#[test]
fn non_finite_weights_are_refused_by_every_command_naming_the_tensor() {
    let d = tmp("nan");
    let nan = m1_file(&d);
    poke(&nan, "fc1.weight", 0.5, f32::NAN);
    let inf = d.join("inf.safetensors");
    std::fs::copy(&nan, &inf).unwrap();
    poke(&inf, "fc1.weight", 0.5, 1.0);
    poke(&inf, "conv2.bias", 1.0, f32::NEG_INFINITY);
    for (file, what) in [
        (&nan, "fc1.weight (1 nan"),
        (&inf, "conv2.bias (0 nan and 1 ±inf"),
    ] {
        let w = s(file);
        let common = [
            "--model",
            "m1",
            "--weights",
            w,
            "--dataset",
            "mnist",
            "--samples",
            "32",
        ];
        for cmd in [
            vec!["eval"],
            vec!["spectrum", "--top-k", "1"],
            vec!["attack", "--attack", "fgsm", "--eps", "0.1"],
            vec!["input-hessian"],
        ] {
            let mut args = cmd.clone();
            args.extend_from_slice(&common);
            expect(&args, 1, &["non-finite", what]);
        }
    }
    // train --init from it: refused before any training, nothing written
    let out = d.join("out.safetensors");
    expect(
        &train_args(s(&out), &["--init", s(&nan)]),
        1,
        &["non-finite", "fc1.weight"],
    );
    assert!(!out.exists());
}

#[test]
fn broken_weight_files_give_clear_errors_and_never_hang() {
    let d = tmp("weights");
    let good = m1_file(&d);
    let bytes = std::fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "truncated",
            bytes[..bytes.len() / 2].to_vec(),
            &["safetensors"],
        ),
        ("empty", vec![], &["safetensors"]),
        (
            "garbage",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
            &["safetensors"],
        ),
        ("header-only", bytes[..64].to_vec(), &["safetensors"]),
    ];
    for (name, content, words) in cases {
        let p = d.join(format!("{name}.safetensors"));
        std::fs::write(&p, content).unwrap();
        expect(
            &[
                "eval",
                "--model",
                "m1",
                "--weights",
                s(&p),
                "--samples",
                "8",
            ],
            1,
            words,
        );
    }
    // not regular files: errors at once, not an endless read
    let fifo = d.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for p in [Path::new("/dev/zero"), fifo.as_path(), d.as_path()] {
        let out = run_for(
            &["eval", "--model", "m1", "--weights", s(p), "--samples", "8"],
            Duration::from_secs(20),
        );
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert_eq!(out.status.code(), Some(1), "{p:?}: {err}");
        assert!(
            err.contains("not a regular file") || err.contains("folder"),
            "{p:?}: {err}"
        );
    }
    // missing file, wrong model, bad metadata
    let err = expect(
        &[
            "eval",
            "--model",
            "m1",
            "--weights",
            s(&d.join("nope.safetensors")),
        ],
        1,
        &["nope.safetensors", "no such file"],
    );
    // the OS's reason once, not once per level of the error chain
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    let e = Model::load(ModelKind::C1, &good, &Runtime::cpu_f32()).unwrap_err();
    assert!(e.to_string().contains("saved from model `m1`"), "{e}");
    // metadata that lies about the input shape
    let meta = d.join("meta.safetensors");
    let mut b = bytes.clone();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h = String::from_utf8(b[8..8 + n].to_vec()).unwrap();
    let h2 = h.replacen("\"1,28,28\"", "\"1,28,2x\"", 1); // same length: offsets stay
    assert_ne!(h, h2, "the header holds input_shape");
    b.splice(8..8 + n, h2.into_bytes());
    std::fs::write(&meta, b).unwrap();
    expect(
        &["eval", "--model", "m1", "--weights", s(&meta)],
        1,
        &["input_shape", "1,28,2x"],
    );
}

#[test]
fn broken_data_files_give_clear_errors_and_multi_member_gzip_loads() {
    let d = tmp("data");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    let names: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let labels = names
        .iter()
        .find(|n| n.starts_with("t10k-labels"))
        .unwrap()
        .clone();
    let make = |case: &str, f: &dyn Fn(Vec<u8>) -> Vec<u8>| -> PathBuf {
        let dir = d.join(case);
        std::fs::create_dir_all(&dir).unwrap();
        for n in &names {
            let b = std::fs::read(src.join(n)).unwrap();
            let b = if *n == labels { f(b) } else { b };
            std::fs::write(dir.join(n), b).unwrap();
        }
        dir
    };
    let w = m1_file(&d);
    let eval = |dir: &Path| -> Output {
        run(&[
            "eval",
            "--model",
            "m1",
            "--weights",
            s(&w),
            "--dataset-path",
            s(dir),
            "--json",
        ])
    };
    // truncated gzip, corrupted gzip, truncated content
    let half = make("half", &|b| b[..b.len() / 2].to_vec());
    let bad = make("corrupt", &|mut b| {
        let l = b.len();
        for x in &mut b[l / 3..l / 3 + 64] {
            *x ^= 0x5a;
        }
        b
    });
    for dir in [&half, &bad] {
        let out = eval(dir);
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert_eq!(out.status.code(), Some(1), "{dir:?}: {err}");
        assert!(
            err.contains("t10k-labels") && (err.contains("gzip") || err.contains("truncated")),
            "{err}"
        );
    }
    // a valid gzip in two members (as `cat a.gz b.gz` makes) is valid data
    let two = make("two-members", &|b| {
        use std::io::{Read, Write};
        let mut raw = vec![];
        flate2::read::GzDecoder::new(&b[..])
            .read_to_end(&mut raw)
            .unwrap();
        let mut out = vec![];
        for part in [&raw[..raw.len() / 2], &raw[raw.len() / 2..]] {
            let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
            e.write_all(part).unwrap();
            out.extend(e.finish().unwrap());
        }
        out
    });
    let out = eval(&two);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn divergent_training_stops_with_an_error_and_saves_nothing() {
    let d = tmp("diverge");
    let out = d.join("m.safetensors");
    // the user's earlier model at --out must survive
    std::fs::write(&out, b"the user's good model").unwrap();
    for lr in ["1e30", "100"] {
        let err = expect(
            &train_args(s(&out), &["--lr", lr, "--samples", "4096"]),
            1,
            &["diverged"],
        );
        assert!(err.contains("learning rate"), "{err}");
        assert_eq!(
            std::fs::read(&out).unwrap(),
            b"the user's good model",
            "lr {lr}"
        );
        assert!(!hessian_lab::train::checkpoint_path(&out, 1).exists());
    }
}

#[test]
fn unwritable_outputs_are_found_before_training() {
    let d = tmp("unwritable");
    // 60 epochs on all of MNIST would take many minutes: the error must come first.
    for out in [d.to_str().unwrap(), "/proc/hessian-lab/x.safetensors"] {
        let out_ = run_for(
            &[
                "train",
                "--model",
                "m1",
                "--dataset",
                "mnist",
                "--epochs",
                "60",
                "--quiet",
                "--out",
                out,
            ],
            Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out_.stderr);
        assert_eq!(out_.status.code(), Some(1), "{out}: {err}");
        assert!(err.contains(out) || err.contains("/proc"), "{err}");
    }
}

#[test]
fn training_writes_reproducible_files_keeps_their_mode_and_cleans_checkpoints() {
    use std::os::unix::fs::PermissionsExt;
    let d = tmp("repro");
    let (a, b) = (d.join("a.safetensors"), d.join("b.safetensors"));
    std::fs::write(&b, b"old").unwrap();
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o640)).unwrap();
    for out in [&a, &b] {
        let o = run(&train_args(s(out), &["--epochs", "2", "--seed", "3"]));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for e in 1..=2 {
            assert!(
                !hessian_lab::train::checkpoint_path(out, e).exists(),
                "checkpoint {e} left"
            );
        }
    }
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same seed, same bytes"
    );
    let mode = std::fs::metadata(&b).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the file keeps its mode");
}

#[test]
fn ctrl_c_during_training_keeps_the_old_file_and_names_the_checkpoint() {
    let d = tmp("sigint");
    let out = d.join("m.safetensors");
    std::fs::write(&out, b"previous model").unwrap();
    let args = train_args(s(&out), &["--epochs", "1000", "--samples", "512"]);
    let child = Command::new(BIN)
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let first = hessian_lab::train::checkpoint_path(&out, 1);
    let t0 = Instant::now();
    while !first.exists() && !hessian_lab::train::checkpoint_path(&out, 2).exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no checkpoint after 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted") && err.contains(".epoch-"),
        "{err}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"previous model");
    // the named checkpoint is a loadable model
    let named: PathBuf = err
        .split_whitespace()
        .find(|w| w.contains(".epoch-"))
        .unwrap()
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .into();
    Model::load(ModelKind::M1, &named, &Runtime::cpu_f32()).unwrap();
}

#[test]
fn negative_numbers_parse_and_are_then_checked() {
    let d = tmp("neg");
    let w = m1_file(&d);
    let w = s(&w);
    // the README's own syntax reaches the command (not a parser error, exit 2)
    for args in [
        vec![
            "landscape",
            "--model",
            "m1",
            "--weights",
            w,
            "--samples",
            "8",
            "--range",
            "-1:1:3",
            "--direction",
            "random",
            "--eval",
            "batch",
            "--out",
            "/proc/nope/x.png",
        ],
        vec![
            "interpolate",
            "--model",
            "m1",
            "--from",
            w,
            "--to",
            w,
            "--samples",
            "8",
            "--range",
            "-0.5:1.5:3",
            "--out",
            "/proc/nope/x.png",
        ],
    ] {
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_ne!(o.status.code(), Some(2), "parser rejected {args:?}: {err}");
        assert!(!err.contains("unexpected argument"), "{err}");
    }
    for eps in ["-0.1", "nan", "inf"] {
        expect(
            &[
                "attack",
                "--model",
                "m1",
                "--weights",
                w,
                "--samples",
                "8",
                "--attack",
                "fgsm",
                "--eps",
                eps,
            ],
            1,
            &["ε", "≥ 0"],
        );
    }
    expect(
        &train_args(
            s(&d.join("o")),
            &["--adversarial", "fgsm", "--adv-eps", "-0.1"],
        ),
        1,
        &["adv-eps"],
    );
}

#[test]
fn out_of_range_options_are_rejected_before_any_long_computation() {
    let d = tmp("range");
    let w = m1_file(&d);
    let w = s(&w);
    let o = s(&d.join("o.safetensors")).to_string();
    let spec = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "spectrum",
            "--model",
            "m1",
            "--weights",
            w,
            "--samples",
            "16",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (spec(&["--top-k", "0"]), &["k"]),
        (spec(&["--trace", "--trace-iter", "0"]), &["--trace-iter"]),
        (spec(&["--density", "--density-grid", "1"]), &["--density"]),
        (
            [
                "spectrum",
                "--model",
                "m1",
                "--weights",
                w,
                "--samples",
                "0",
            ]
            .iter()
            .map(|x| x.to_string())
            .collect(),
            &["samples"],
        ),
        (
            train_args(&o, &["--batch-size", "0"])
                .iter()
                .map(|x| x.to_string())
                .collect(),
            &["batch"],
        ),
        (
            train_args(&o, &["--epochs", "0"])
                .iter()
                .map(|x| x.to_string())
                .collect(),
            &["epochs"],
        ),
    ];
    // names of enum-like flags are checked by the parser itself (exit 2), listing the choices
    for (flag, choice) in [
        ("--model", "resnet18"),
        ("--dataset", "fashion-mnist"),
        ("--split", "train"),
        ("--trace-method", "hutch++"),
        ("--method", "lanczos"),
        ("--operator", "ggn"),
        ("--device", "cuda"),
        ("--dtype", "f64"),
    ] {
        let mut a: Vec<String> = spec(&["--trace"]);
        if let Some(i) = a.iter().position(|x| x == flag) {
            a.drain(i..i + 2);
        }
        a.extend([flag.to_string(), "magic".to_string()]);
        let a: Vec<&str> = a.iter().map(|x| x.as_str()).collect();
        expect(&a, 2, &["invalid value 'magic'", flag, choice]);
    }
    for (args, words) in cases {
        let a: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
        let t0 = Instant::now();
        expect(&a, 1, words);
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{a:?} took {:?}",
            t0.elapsed()
        );
    }
    assert!(!Path::new(&o).exists());
}

#[test]
fn cuda_on_a_cpu_build_says_so() {
    if cfg!(feature = "cuda") {
        return;
    }
    let d = tmp("cuda");
    let w = m1_file(&d);
    let o = run(&[
        "eval",
        "--model",
        "m1",
        "--weights",
        s(&w),
        "--samples",
        "8",
        "--device",
        "cuda",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("no CUDA support"), "silent fallback: {err}");
}

/// Every numeric or named option of every analysis subcommand with out-of-range values: a
/// typed error (exit 1) or the parser's usage error (exit 2), never success, a panic or a
/// long run.
#[test]
fn every_option_out_of_range_is_an_error() {
    let d = tmp("sweep");
    let w = m1_file(&d);
    let w = s(&w).to_string();
    let out = s(&d.join("o.safetensors")).to_string();
    let png = s(&d.join("o.png")).to_string();
    let m = |cmd: &str| -> Vec<String> {
        let mut v = vec![cmd.to_string(), "--model".into(), "m1".into()];
        match cmd {
            "train" => v.extend(
                [
                    "--samples",
                    "128",
                    "--epochs",
                    "1",
                    "--quiet",
                    "--out",
                    &out,
                ]
                .map(String::from),
            ),
            "interpolate" => v.extend(
                ["--from", &w, "--to", &w, "--samples", "16", "--out", &png].map(String::from),
            ),
            "bench" => {}
            _ => v.extend(["--weights", &w, "--samples", "16"].map(String::from)),
        }
        if cmd == "landscape" {
            v.extend(["--out", &png, "--direction", "random"].map(String::from));
        }
        v
    };
    #[rustfmt::skip]
    let sweep: &[(&str, &str, &[&str])] = &[
        ("train", "--batch-size", &["0", "-1", "x"]),
        ("train", "--epochs", &["0"]),
        ("train", "--lr", &["-1", "nan", "inf"]),
        ("train", "--momentum", &["-0.5", "1.5", "nan"]),
        ("train", "--weight-decay", &["-1", "nan"]),
        ("train", "--lr-gamma", &["-1", "nan"]),
        ("train", "--lr-scale-base", &["0"]),
        ("train", "--warmup-epochs", &["-1", "nan"]),
        ("train", "--micro-batch", &["0"]),
        ("train", "--samples", &["0"]),
        ("train", "--adv-ratio", &["1.5", "-0.1"]),
        ("train", "--adversarial", &["magic"]),
        ("train", "--model", &["m7"]),
        ("train", "--dataset", &["imagenet"]),
        ("eval", "--samples", &["0"]),
        ("eval", "--split", &["validation"]),
        ("spectrum", "--top-k", &["0", "100000000"]),
        ("spectrum", "--max-iter", &["0"]),
        ("spectrum", "--tol", &["0", "-1", "nan"]),
        ("spectrum", "--chunk", &["0"]),
        ("spectrum", "--filter", &["nosuchlayer."]),
        ("spectrum", "--samples", &["0"]),
        ("input-hessian", "--chunk", &["0"]),
        ("input-hessian", "--samples", &["0"]),
        ("attack", "--eps", &["-0.1", "nan", "inf"]),
        ("attack", "--attack", &["magic"]),
        ("attack", "--chunk", &["0"]),
        ("landscape", "--range", &["0:1:0", "a:b:c", "0:1", "nan:1:3", "0:inf:3"]),
        ("landscape", "--eval", &["magic"]),
        ("landscape", "--chunk", &["0"]),
        ("landscape", "--eval-samples", &["0"]),
        ("interpolate", "--range", &["0:1:0", "x"]),
        ("interpolate", "--chunk", &["0"]),
        ("bench", "--batch-size", &["0"]),
        ("bench", "--repeats", &["0"]),
        ("bench", "--threads", &["0"]),
    ];
    let mut tried = 0;
    for (cmd, flag, values) in sweep {
        for v in *values {
            let mut args = m(cmd);
            // the flag given here replaces a default of the same name
            if let Some(i) = args.iter().position(|a| a == flag) {
                args.drain(i..i + 2);
            }
            args.extend([flag.to_string(), v.to_string()]);
            let a: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
            let t0 = Instant::now();
            let o = run_for(&a, Duration::from_secs(60));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                matches!(o.status.code(), Some(1) | Some(2)),
                "{cmd} {flag} {v}: exit {:?}\n{err}",
                o.status.code()
            );
            assert!(!err.contains("panicked"), "{cmd} {flag} {v}: {err}");
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{cmd} {flag} {v}: slow"
            );
            tried += 1;
        }
    }
    // the attack's iterations and the Newton solver, where they apply
    for (attack, flag, v) in [
        ("ifgsm", "--steps", "0"),
        ("fhsm", "--cg-iters", "0"),
        ("fhsm", "--cg-tol", "0"),
        ("fhsm", "--cg-tol", "nan"),
    ] {
        let mut args = m("attack");
        args.extend(
            [
                "--attack", attack, "--eps", "0.1", "--newton", "cg", flag, v,
            ]
            .map(String::from),
        );
        let a: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
        let o = run_for(&a, Duration::from_secs(60));
        assert_eq!(
            o.status.code(),
            Some(1),
            "{attack} {flag} {v}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        tried += 1;
    }
    assert!(tried >= 60, "{tried} cases");
    assert!(!Path::new(&out).exists() && !Path::new(&png).exists());
}
