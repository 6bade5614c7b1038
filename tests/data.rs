//! Loaders on the shipped real data, and typed errors on corrupted files.
mod common;

use common::*;
use hessian_lab::data::{self, DatasetKind, SplitKind};
use hessian_lab::Error;
use std::io::Write;

#[test]
fn mnist_train_and_test_counts_and_histograms() {
    let rt = rt32();
    let tr = data::load(DatasetKind::Mnist, SplitKind::Train, data_dir()).unwrap();
    let te = data::load(DatasetKind::Mnist, SplitKind::Test, data_dir()).unwrap();
    assert_eq!(tr.len(), 60_000);
    assert_eq!(te.len(), 10_000);
    // The official MNIST label counts.
    assert_eq!(
        tr.label_histogram(),
        vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        te.label_histogram(),
        vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    // First training labels of MNIST are 5, 0, 4, 1, 9, 2.
    assert_eq!(&tr.labels()[..6], &[5, 0, 4, 1, 9, 2]);
    let b = te.first(7).unwrap().to_batch(&rt).unwrap();
    assert_eq!(b.x.dims(), &[7, 1, 28, 28]);
    let v = to_vec(&b.x);
    assert!(v.iter().all(|&p| (0.0..=1.0).contains(&p)));
    assert!(v.iter().any(|&p| p == 1.0) && v.iter().any(|&p| p == 0.0));
}

#[test]
fn fashion_mnist_counts() {
    let tr = data::load(DatasetKind::FashionMnist, SplitKind::Train, data_dir()).unwrap();
    let te = data::load(DatasetKind::FashionMnist, SplitKind::Test, data_dir()).unwrap();
    assert_eq!(tr.len(), 60_000);
    assert_eq!(te.len(), 10_000);
    assert!(tr.label_histogram().iter().all(|&c| c == 6000));
    assert!(te.label_histogram().iter().all(|&c| c == 1000));
}

#[test]
fn cifar_samples() {
    let rt = rt32();
    let tr = data::load(DatasetKind::Cifar10Sample, SplitKind::Train, data_dir()).unwrap();
    assert_eq!(tr.len(), 2000);
    let h = tr.label_histogram();
    // cats (3) and dogs (5) only, 1000 each
    assert_eq!(h[3] + h[5], 2000);
    assert_eq!((h[3], h[5]), (1000, 1000));
    let te = data::load(DatasetKind::Cifar10Sample, SplitKind::Test, data_dir()).unwrap();
    assert_eq!(te.len(), 20);
    // The first CIFAR-10 test labels: cat, ship, ship, airplane, frog, frog, automobile, frog.
    assert_eq!(&te.labels()[..8], &[3, 8, 8, 0, 6, 6, 1, 6]);
    let b = te.to_batch(&rt).unwrap();
    assert_eq!(b.x.dims(), &[20, 3, 32, 32]);
    let c100 = data::load(DatasetKind::Cifar100Sample, SplitKind::Test, data_dir()).unwrap();
    assert_eq!(c100.len(), 20);
    // The first CIFAR-100 test fine labels: mountain(49), forest(33), seal(72), mushroom(51).
    assert_eq!(&c100.labels()[..4], &[49, 33, 72, 51]);
    assert!(matches!(
        data::load(DatasetKind::Cifar100Sample, SplitKind::Train, data_dir()),
        Err(Error::DataFile { .. })
    ));
}

/// `select` picks exactly the requested samples (pixels and labels), and refuses empty or
/// out-of-range index lists with a typed error. The held-out fifth of the CIFAR sample that
/// `reproduce table10 --sample` uses is class-balanced (the file is sorted by class).
#[test]
fn select_picks_samples_and_checks_indices() {
    let tr = data::load(DatasetKind::Cifar10Sample, SplitKind::Train, data_dir()).unwrap();
    let d = 3 * 32 * 32;
    let idx = [1999, 0, 7, 7];
    let s = tr.select(&idx).unwrap();
    assert_eq!(s.len(), 4);
    for (k, &i) in idx.iter().enumerate() {
        assert_eq!(s.labels()[k], tr.labels()[i]);
        assert_eq!(
            &s.pixels().unwrap()[k * d..(k + 1) * d],
            &tr.pixels().unwrap()[i * d..(i + 1) * d]
        );
    }
    let ho: Vec<usize> = (0..tr.len()).filter(|i| i % 5 == 4).collect();
    let h = tr.select(&ho).unwrap().label_histogram();
    assert_eq!((h[3], h[5]), (200, 200));
    assert!(matches!(tr.select(&[]), Err(Error::InvalidArgument { .. })));
    assert!(matches!(
        tr.select(&[2000]),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn first_and_shuffle_are_deterministic() {
    let s = synthetic_split(300, 1);
    let f = s.first(10).unwrap();
    assert_eq!(f.labels(), &s.labels()[..10]);
    assert_eq!(f.pixels().unwrap(), &s.pixels().unwrap()[..7840]);
    let a = s.shuffled_batches(64, 7, false).unwrap();
    let b = s.shuffled_batches(64, 7, false).unwrap();
    let c = s.shuffled_batches(64, 8, false).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.len(), 5);
    assert_eq!(a.last().unwrap().len(), 300 - 256);
    let mut all: Vec<usize> = a.concat();
    all.sort();
    assert_eq!(all, (0..300).collect::<Vec<_>>());
    assert_eq!(s.shuffled_batches(64, 7, true).unwrap().len(), 4);
    assert!(matches!(s.first(0), Err(Error::InvalidArgument { .. })));
    assert!(matches!(s.first(301), Err(Error::InvalidArgument { .. })));
    assert!(matches!(
        s.shuffled_batches(0, 0, false),
        Err(Error::InvalidArgument { .. })
    ));
}

fn idx_images(n: u32, r: u32, c: u32, body: usize) -> Vec<u8> {
    let mut v = vec![];
    v.extend(0x0803u32.to_be_bytes());
    v.extend(n.to_be_bytes());
    v.extend(r.to_be_bytes());
    v.extend(c.to_be_bytes());
    v.extend(vec![7u8; body]);
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = vec![];
    v.extend(0x0801u32.to_be_bytes());
    v.extend((labels.len() as u32).to_be_bytes());
    v.extend(labels);
    v
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn reason(e: Error) -> (std::path::PathBuf, String) {
    match e {
        Error::DataFile { path, reason } => (path, reason),
        other => panic!("expected DataFile error, got {other:?}"),
    }
}

#[test]
fn corrupted_idx_files_give_typed_errors() {
    let dir = tempdir("idx");
    let load = |img: &std::path::Path, lab: &std::path::Path| {
        data::load_idx_pair(DatasetKind::Mnist, SplitKind::Test, img, lab)
    };
    let good_lab = write(&dir, "lab", &idx_labels(&[1, 2]));
    let good_img = write(&dir, "img", &idx_images(2, 28, 28, 2 * 784));
    assert_eq!(load(&good_img, &good_lab).unwrap().len(), 2);

    // missing file
    let (p, r) = reason(load(&dir.join("nope"), &good_lab).unwrap_err());
    assert!(p.ends_with("nope") && r.contains("not found"), "{r}");
    // truncated body
    let img = write(&dir, "trunc", &idx_images(2, 28, 28, 784 + 5));
    let (p, r) = reason(load(&img, &good_lab).unwrap_err());
    assert!(p.ends_with("trunc") && r.contains("truncated"), "{r}");
    // truncated header
    let img = write(&dir, "hdr", &[0, 0, 8]);
    assert!(reason(load(&img, &good_lab).unwrap_err())
        .1
        .contains("truncated header"));
    // wrong magic (a label file given as images)
    let long_lab = write(&dir, "longlab", &idx_labels(&[1; 20]));
    let (_, r) = reason(load(&long_lab, &good_lab).unwrap_err());
    assert!(r.contains("wrong magic"), "{r}");
    // count mismatch between images and labels
    let lab3 = write(&dir, "lab3", &idx_labels(&[1, 2, 3]));
    let (p, r) = reason(load(&good_img, &lab3).unwrap_err());
    assert!(p.ends_with("lab3") && r.contains("count mismatch"), "{r}");
    // extra bytes after the images
    let img = write(&dir, "extra", &idx_images(2, 28, 28, 2 * 784 + 3));
    assert!(reason(load(&img, &good_lab).unwrap_err())
        .1
        .contains("count mismatch"));
    // label out of range
    let bad = write(&dir, "badlab", &idx_labels(&[1, 10]));
    let (_, r) = reason(load(&good_img, &bad).unwrap_err());
    assert!(
        r.contains("label out of range") && r.contains("sample 1"),
        "{r}"
    );
    // wrong image size for the data set
    let img = write(&dir, "small", &idx_images(2, 8, 8, 128));
    assert!(reason(load(&img, &good_lab).unwrap_err())
        .1
        .contains("expected 28x28"));
    // corrupt gzip
    let img = write(&dir, "bad.gz", &[0x1f, 0x8b, 1, 2, 3, 4]);
    assert!(reason(load(&img, &good_lab).unwrap_err())
        .1
        .contains("gzip"));
    // gzipped good file works
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&idx_images(2, 28, 28, 2 * 784)).unwrap();
    let img = write(&dir, "good.gz", &enc.finish().unwrap());
    assert_eq!(load(&img, &good_lab).unwrap().len(), 2);
}

#[test]
fn corrupted_cifar_files_give_typed_errors() {
    let dir = tempdir("cifar");
    let rec = |l: u8| {
        let mut v = vec![l];
        v.extend(vec![9u8; 3072]);
        v
    };
    let mut ok = rec(1);
    ok.extend(rec(2));
    write(&dir, "test_batch.bin", &ok);
    let s = data::load_from_dir(DatasetKind::Cifar10, SplitKind::Test, &dir).unwrap();
    assert_eq!(s.labels(), &[1, 2]);
    // truncated
    write(&dir, "test_batch.bin", &ok[..ok.len() - 10]);
    let (_, r) =
        reason(data::load_from_dir(DatasetKind::Cifar10, SplitKind::Test, &dir).unwrap_err());
    assert!(r.contains("truncated"), "{r}");
    // label out of range
    write(&dir, "test_batch.bin", &rec(10));
    let (_, r) =
        reason(data::load_from_dir(DatasetKind::Cifar10, SplitKind::Test, &dir).unwrap_err());
    assert!(r.contains("label out of range"), "{r}");
    // empty
    write(&dir, "test_batch.bin", &[]);
    assert!(data::load_from_dir(DatasetKind::Cifar10, SplitKind::Test, &dir).is_err());
    // missing train batches: the message says where to put the official files
    let (p, r) =
        reason(data::load_from_dir(DatasetKind::Cifar10, SplitKind::Train, &dir).unwrap_err());
    assert!(
        p.ends_with("data_batch_1.bin") && r.contains("official binary files"),
        "{r}"
    );
    // CIFAR-100 uses the second (fine) label byte
    let mut r100 = vec![3u8, 42];
    r100.extend(vec![0u8; 3072]);
    write(&dir, "test.bin", &r100);
    let s = data::load_from_dir(DatasetKind::Cifar100, SplitKind::Test, &dir).unwrap();
    assert_eq!(s.labels(), &[42]);
}

#[test]
fn unknown_names_are_typed_errors() {
    assert!(matches!(
        "imagenet".parse::<DatasetKind>(),
        Err(Error::UnknownDataset(_))
    ));
    assert!(matches!(
        "validation".parse::<SplitKind>(),
        Err(Error::InvalidArgument { .. })
    ));
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("hessian-lab-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
