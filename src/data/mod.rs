//! Data sets: MNIST, Fashion-MNIST (IDX, gzipped or raw), CIFAR-10/100 (binary records).
//!
//! Pixels are kept as `u8` in memory and scaled to [0, 1] when a batch is made, so that attack
//! budgets ε are always in pixel units. Per-dataset normalisation lives inside the model
//! ([`crate::models::Normalization`]), never in the data.

pub mod cifar;
pub mod idx;
pub mod npy;

pub use npy::{load_npy, to_ndarray};

use crate::{Error, Result, Runtime};
use candle_core::{DType, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};

/// The data sets hessian-lab reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum DatasetKind {
    #[cfg_attr(feature = "cli", value(name = "mnist"))]
    Mnist,
    #[cfg_attr(
        feature = "cli",
        value(name = "fashion-mnist", alias = "fashion_mnist", alias = "fmnist")
    )]
    FashionMnist,
    /// Full CIFAR-10 from a user-given folder (`data_batch_{1..5}.bin`, `test_batch.bin`).
    #[cfg_attr(feature = "cli", value(name = "cifar10", alias = "cifar-10"))]
    Cifar10,
    /// Full CIFAR-100 from a user-given folder (`train.bin`, `test.bin`).
    #[cfg_attr(feature = "cli", value(name = "cifar100", alias = "cifar-100"))]
    Cifar100,
    /// The shipped CIFAR-10 sample: train = 2,000 cat/dog images, test = the first 20 test images.
    #[cfg_attr(feature = "cli", value(name = "cifar10-sample"))]
    Cifar10Sample,
    /// The shipped CIFAR-100 sample: the first 20 test images (test split only).
    #[cfg_attr(feature = "cli", value(name = "cifar100-sample"))]
    Cifar100Sample,
}

/// Train or test split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum SplitKind {
    Train,
    Test,
}

impl std::str::FromStr for SplitKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(SplitKind::Train),
            "test" => Ok(SplitKind::Test),
            _ => Err(Error::invalid(
                "split",
                format!("`{s}` (expected train or test)"),
            )),
        }
    }
}

impl SplitKind {
    pub fn name(self) -> &'static str {
        match self {
            SplitKind::Train => "train",
            SplitKind::Test => "test",
        }
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "mnist" => DatasetKind::Mnist,
            "fashion-mnist" | "fashion_mnist" | "fmnist" => DatasetKind::FashionMnist,
            "cifar10" | "cifar-10" => DatasetKind::Cifar10,
            "cifar100" | "cifar-100" => DatasetKind::Cifar100,
            "cifar10-sample" => DatasetKind::Cifar10Sample,
            "cifar100-sample" => DatasetKind::Cifar100Sample,
            _ => return Err(Error::UnknownDataset(s.to_string())),
        })
    }
}

impl DatasetKind {
    /// The canonical name (as accepted by the CLI).
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Cifar10Sample => "cifar10-sample",
            DatasetKind::Cifar100Sample => "cifar100-sample",
        }
    }

    /// Input shape (C, H, W).
    pub fn input_shape(self) -> [usize; 3] {
        match self {
            DatasetKind::Mnist | DatasetKind::FashionMnist => [1, 28, 28],
            _ => [3, 32, 32],
        }
    }

    pub fn num_classes(self) -> usize {
        match self {
            DatasetKind::Cifar100 | DatasetKind::Cifar100Sample => 100,
            _ => 10,
        }
    }

    /// Per-channel (mean, std) used by the models' fixed first step.
    pub fn normalization(self) -> (Vec<f64>, Vec<f64>) {
        match self {
            DatasetKind::Mnist => (vec![0.1307], vec![0.3081]),
            DatasetKind::FashionMnist => (vec![0.2860], vec![0.3530]),
            DatasetKind::Cifar10 | DatasetKind::Cifar10Sample => {
                (vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616])
            }
            DatasetKind::Cifar100 | DatasetKind::Cifar100Sample => {
                (vec![0.5071, 0.4865, 0.4409], vec![0.2673, 0.2564, 0.2762])
            }
        }
    }

    /// The folder under a data root where this data set is looked for by default.
    pub fn default_subdir(self) -> &'static str {
        self.name()
    }
}

/// Where a split's samples come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// One of the data sets above (u8 pixels, scaled to [0, 1] in batches).
    Builtin(DatasetKind),
    /// Your own arrays (e.g. [`load_npy`]): float inputs taken as they are.
    Custom {
        name: String,
        /// Shape of one sample: (C, H, W) or (D,).
        input_shape: Vec<usize>,
        num_classes: usize,
    },
}

/// The inputs of a split, sample after sample.
#[derive(Clone, Debug)]
enum Inputs {
    Pixels(Vec<u8>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// One split of a data set held in memory: inputs (sample-major) and `u32` labels.
#[derive(Clone, Debug)]
pub struct Split {
    origin: std::sync::Arc<Origin>,
    pub kind: SplitKind,
    inputs: Inputs,
    labels: Vec<u32>,
}

/// A batch on a device: `x` is (N, C, H, W) in [0, 1] of the runtime dtype, `y` is (N,) u32.
#[derive(Clone, Debug)]
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.x.dims().first().copied().unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Builds a batch from tensors, checking that x is 4-D, y is 1-D u32 of the same length and
    /// the batch is not empty.
    pub fn new(x: Tensor, y: Tensor) -> Result<Self> {
        if x.rank() < 2 {
            return Err(Error::Shape(format!(
                "batch inputs must be (N, …) — (N, C, H, W) images or (N, D) features — got {:?}",
                x.dims()
            )));
        }
        if y.rank() != 1 || y.dims()[0] != x.dims()[0] {
            return Err(Error::Shape(format!(
                "labels {:?} do not match inputs {:?}",
                y.dims(),
                x.dims()
            )));
        }
        if y.dtype() != DType::U32 {
            return Err(Error::Shape(format!(
                "labels must be u32, got {:?}",
                y.dtype()
            )));
        }
        if x.dims()[0] == 0 {
            return Err(Error::Empty("batch with 0 samples".into()));
        }
        Ok(Batch { x, y })
    }
    /// Samples `start..start+len` of this batch.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Batch> {
        Batch::new(self.x.narrow(0, start, len)?, self.y.narrow(0, start, len)?)
    }
}

impl Split {
    /// Builds a split from raw parts, checking sizes and labels.
    pub fn from_parts(
        dataset: DatasetKind,
        kind: SplitKind,
        images: Vec<u8>,
        labels: Vec<u32>,
    ) -> Result<Self> {
        let d: usize = dataset.input_shape().iter().product();
        if images.len() != labels.len() * d {
            return Err(Error::Shape(format!(
                "{} pixels for {} labels of size {d}",
                images.len(),
                labels.len()
            )));
        }
        if let Some(l) = labels
            .iter()
            .find(|&&l| l as usize >= dataset.num_classes())
        {
            return Err(Error::invalid("labels", format!("label {l} out of range")));
        }
        Ok(Split {
            origin: std::sync::Arc::new(Origin::Builtin(dataset)),
            kind,
            inputs: Inputs::Pixels(images),
            labels,
        })
    }

    /// A split of your own: `inputs` sample-major (N × prod(`input_shape`) floats, taken as they
    /// are: no scaling), labels in 0..`num_classes`. Checks sizes, labels and finiteness.
    pub fn from_floats(
        name: &str,
        input_shape: &[usize],
        num_classes: usize,
        inputs: impl Into<FloatVec>,
        labels: Vec<u32>,
    ) -> Result<Self> {
        let inputs = inputs.into();
        let d: usize = input_shape.iter().product();
        if input_shape.is_empty() || d == 0 {
            return Err(Error::Shape(format!(
                "{name}: sample shape {input_shape:?} has no values"
            )));
        }
        if inputs.len() != labels.len() * d {
            return Err(Error::Shape(format!(
                "{name}: {} input values for {} labels of shape {input_shape:?}",
                inputs.len(),
                labels.len()
            )));
        }
        if num_classes < 2 {
            return Err(Error::invalid("num_classes", "need at least 2 classes"));
        }
        if let Some(l) = labels.iter().find(|&&l| l as usize >= num_classes) {
            return Err(Error::invalid(
                "labels",
                format!("{name}: label {l} out of range 0..{num_classes}"),
            ));
        }
        if let Some(i) = inputs.first_non_finite() {
            return Err(Error::NonFinite(format!(
                "{name}: input value {i} (sample {})",
                i / d
            )));
        }
        Ok(Split {
            origin: std::sync::Arc::new(Origin::Custom {
                name: name.to_string(),
                input_shape: input_shape.to_vec(),
                num_classes,
            }),
            kind: SplitKind::Test,
            inputs: match inputs {
                FloatVec::F32(v) => Inputs::F32(v),
                FloatVec::F64(v) => Inputs::F64(v),
            },
            labels,
        })
    }

    /// Where the samples come from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }
    /// The built-in data set, if it is one.
    pub fn dataset(&self) -> Option<DatasetKind> {
        match *self.origin {
            Origin::Builtin(d) => Some(d),
            Origin::Custom { .. } => None,
        }
    }
    /// The data set's name (`mnist`, or the name given to your own data).
    pub fn name(&self) -> String {
        match &*self.origin {
            Origin::Builtin(d) => d.name().to_string(),
            Origin::Custom { name, .. } => name.clone(),
        }
    }
    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        match &*self.origin {
            Origin::Builtin(d) => d.num_classes(),
            Origin::Custom { num_classes, .. } => *num_classes,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }
    /// Raw pixels (NCHW, u8) of a built-in data set; `None` for float data.
    pub fn pixels(&self) -> Option<&[u8]> {
        match &self.inputs {
            Inputs::Pixels(p) => Some(p),
            _ => None,
        }
    }
    /// Shape of one sample: (C, H, W), or (D,) for feature vectors.
    pub fn input_shape(&self) -> Vec<usize> {
        match &*self.origin {
            Origin::Builtin(d) => d.input_shape().to_vec(),
            Origin::Custom { input_shape, .. } => input_shape.clone(),
        }
    }
    fn sample_size(&self) -> usize {
        self.input_shape().iter().product()
    }

    /// Count of each label, length = number of classes.
    pub fn label_histogram(&self) -> Vec<usize> {
        let mut h = vec![0; self.num_classes()];
        for &l in &self.labels {
            h[l as usize] += 1;
        }
        h
    }

    /// The samples at `idx`, in that order (a held-out subset, a class-balanced split).
    /// Errors when `idx` is empty or an index is out of range.
    pub fn select(&self, idx: &[usize]) -> Result<Split> {
        if idx.is_empty() {
            return Err(Error::invalid("samples", "no indices selected"));
        }
        if let Some(&i) = idx.iter().find(|&&i| i >= self.len()) {
            return Err(Error::invalid(
                "samples",
                format!(
                    "index {i} but the {} split has {}",
                    self.kind.name(),
                    self.len()
                ),
            ));
        }
        let d = self.sample_size();
        fn pick<T: Copy>(v: &[T], idx: &[usize], d: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(idx.len() * d);
            for &i in idx {
                out.extend_from_slice(&v[i * d..(i + 1) * d]);
            }
            out
        }
        let inputs = match &self.inputs {
            Inputs::Pixels(v) => Inputs::Pixels(pick(v, idx, d)),
            Inputs::F32(v) => Inputs::F32(pick(v, idx, d)),
            Inputs::F64(v) => Inputs::F64(pick(v, idx, d)),
        };
        Ok(Split {
            origin: self.origin.clone(),
            kind: self.kind,
            inputs,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        })
    }

    /// The first `n` samples in file order (deterministic; what every CLI `--samples N` means).
    /// Errors when `n` is 0 or larger than the split.
    pub fn first(&self, n: usize) -> Result<Split> {
        if n == 0 {
            return Err(Error::invalid("samples", "must be at least 1"));
        }
        if n > self.len() {
            return Err(Error::invalid(
                "samples",
                format!(
                    "{n} requested but the {} split has {}",
                    self.kind.name(),
                    self.len()
                ),
            ));
        }
        self.select(&(0..n).collect::<Vec<_>>())
    }

    /// Samples at `idx` as a batch on the runtime's device, pixels scaled to [0, 1] (float
    /// inputs as they are).
    pub fn batch(&self, idx: &[usize], rt: &Runtime) -> Result<Batch> {
        if idx.is_empty() {
            return Err(Error::Empty("batch with no indices".into()));
        }
        let d = self.sample_size();
        if let Some(&i) = idx.iter().find(|&&i| i >= self.len()) {
            return Err(Error::invalid(
                "index",
                format!("{i} out of range for {} samples", self.len()),
            ));
        }
        let ys: Vec<u32> = idx.iter().map(|&i| self.labels[i]).collect();
        fn gather<T: Copy, U>(v: &[T], idx: &[usize], d: usize, f: impl Fn(T) -> U) -> Vec<U> {
            let mut out = Vec::with_capacity(idx.len() * d);
            for &i in idx {
                out.extend(v[i * d..(i + 1) * d].iter().map(|&p| f(p)));
            }
            out
        }
        let mut shape = vec![idx.len()];
        shape.extend(self.input_shape());
        let x = match &self.inputs {
            Inputs::Pixels(v) => {
                Tensor::from_vec(gather(v, idx, d, |p| p as f32 / 255.0), shape, &rt.device)?
            }
            Inputs::F32(v) => Tensor::from_vec(gather(v, idx, d, |p| p), shape, &rt.device)?,
            Inputs::F64(v) => Tensor::from_vec(gather(v, idx, d, |p| p), shape, &rt.device)?,
        }
        .to_dtype(rt.dtype)?;
        let y = Tensor::from_vec(ys, idx.len(), &rt.device)?;
        Batch::new(x, y)
    }

    /// Samples `start..start+len` in file order as a batch.
    pub fn range_batch(&self, start: usize, len: usize, rt: &Runtime) -> Result<Batch> {
        let idx: Vec<usize> = (start..start + len).collect();
        self.batch(&idx, rt)
    }

    /// The whole split as one batch (mind the memory for large splits).
    pub fn to_batch(&self, rt: &Runtime) -> Result<Batch> {
        self.range_batch(0, self.len(), rt)
    }

    /// Consecutive chunks of at most `chunk` samples in file order (for evaluation and streaming).
    pub fn chunks(&self, chunk: usize) -> Result<Vec<std::ops::Range<usize>>> {
        if chunk == 0 {
            return Err(Error::invalid("chunk size", "must be at least 1"));
        }
        Ok((0..self.len())
            .step_by(chunk)
            .map(|s| s..(s + chunk).min(self.len()))
            .collect())
    }

    /// Shuffled mini-batch index lists for one epoch, seeded (ChaCha8, reproducible across
    /// platforms). The last batch may be smaller; `drop_last` drops it.
    pub fn shuffled_batches(
        &self,
        batch_size: usize,
        seed: u64,
        drop_last: bool,
    ) -> Result<Vec<Vec<usize>>> {
        if batch_size == 0 {
            return Err(Error::invalid("batch size", "must be at least 1"));
        }
        if self.is_empty() {
            return Err(Error::Empty(format!(
                "{} split has no samples",
                self.kind.name()
            )));
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        idx.shuffle(&mut rng);
        Ok(idx
            .chunks(batch_size)
            .filter(|c| !drop_last || c.len() == batch_size)
            .map(|c| c.to_vec())
            .collect())
    }
}

/// Float inputs of your own (f32 or f64), sample-major.
#[derive(Clone, Debug)]
pub enum FloatVec {
    F32(Vec<f32>),
    F64(Vec<f64>),
}
impl From<Vec<f32>> for FloatVec {
    fn from(v: Vec<f32>) -> Self {
        FloatVec::F32(v)
    }
}
impl From<Vec<f64>> for FloatVec {
    fn from(v: Vec<f64>) -> Self {
        FloatVec::F64(v)
    }
}
impl FloatVec {
    fn len(&self) -> usize {
        match self {
            FloatVec::F32(v) => v.len(),
            FloatVec::F64(v) => v.len(),
        }
    }
    fn first_non_finite(&self) -> Option<usize> {
        match self {
            FloatVec::F32(v) => v.iter().position(|x| !x.is_finite()),
            FloatVec::F64(v) => v.iter().position(|x| !x.is_finite()),
        }
    }
}

/// Where a data set's files are, given a data root (usually `data/`): `<root>/<name>/`.
pub fn dataset_dir(kind: DatasetKind, root: impl AsRef<Path>) -> PathBuf {
    root.as_ref().join(kind.default_subdir())
}

/// Loads one split of a data set from the data root (`<root>/<dataset-name>/...`).
///
/// For `cifar10`/`cifar100` the folder may also be the extracted official archive folder
/// (`cifar-10-batches-bin`, `cifar-100-binary`) inside `<root>/cifar10` etc.
pub fn load(kind: DatasetKind, split: SplitKind, root: impl AsRef<Path>) -> Result<Split> {
    load_from_dir(kind, split, dataset_dir(kind, root))
}

/// Loads one split of a data set from exactly this folder.
pub fn load_from_dir(kind: DatasetKind, split: SplitKind, dir: impl AsRef<Path>) -> Result<Split> {
    let dir = dir.as_ref();
    match kind {
        DatasetKind::Mnist | DatasetKind::FashionMnist => {
            let stem = match split {
                SplitKind::Train => "train",
                SplitKind::Test => "t10k",
            };
            let img = find_file(dir, &format!("{stem}-images-idx3-ubyte"))?;
            let lab = find_file(dir, &format!("{stem}-labels-idx1-ubyte"))?;
            load_idx_pair(kind, split, &img, &lab)
        }
        DatasetKind::Cifar10 => {
            let base = subfolder_with(dir, "cifar-10-batches-bin", "test_batch.bin");
            let files: Vec<PathBuf> = match split {
                SplitKind::Train => (1..=5)
                    .map(|i| base.join(format!("data_batch_{i}.bin")))
                    .collect(),
                SplitKind::Test => vec![base.join("test_batch.bin")],
            };
            load_cifar_files(kind, split, &files, dir)
        }
        DatasetKind::Cifar100 => {
            let base = subfolder_with(dir, "cifar-100-binary", "test.bin");
            let f = match split {
                SplitKind::Train => base.join("train.bin"),
                SplitKind::Test => base.join("test.bin"),
            };
            load_cifar_files(kind, split, &[f], dir)
        }
        DatasetKind::Cifar10Sample => {
            let f = match split {
                SplitKind::Train => dir.join("dogs5_cats3.bin"),
                SplitKind::Test => dir.join("test_batch_first20.bin"),
            };
            load_cifar_files(kind, split, &[f], dir)
        }
        DatasetKind::Cifar100Sample => match split {
            SplitKind::Train => Err(Error::data(
                dir,
                "the shipped CIFAR-100 sample has only a test split (test_first20.bin); \
                 put the full CIFAR-100 binary files in data/cifar100/ for a train split",
            )),
            SplitKind::Test => load_cifar_files(kind, split, &[dir.join("test_first20.bin")], dir),
        },
    }
}

/// Loads an IDX image/label pair (gzipped or raw) as a split of `kind`.
pub fn load_idx_pair(
    kind: DatasetKind,
    split: SplitKind,
    images: &Path,
    labels: &Path,
) -> Result<Split> {
    let ib = idx::read_maybe_gz(images)?;
    let (n, r, c, px) = idx::parse_images(images, &ib)?;
    let [_, h, w] = kind.input_shape();
    if (r, c) != (h, w) {
        return Err(Error::data(
            images,
            format!("images are {r}x{c}, expected {h}x{w} for {}", kind.name()),
        ));
    }
    let lb = idx::read_maybe_gz(labels)?;
    let ls = idx::parse_labels(labels, &lb, kind.num_classes())?;
    if ls.len() != n {
        return Err(Error::data(
            labels,
            format!(
                "count mismatch: {} labels but {} has {n} images",
                ls.len(),
                images.display()
            ),
        ));
    }
    Split::from_parts(kind, split, px, ls)
}

fn load_cifar_files(
    kind: DatasetKind,
    split: SplitKind,
    files: &[PathBuf],
    dir: &Path,
) -> Result<Split> {
    let label_bytes = if kind.num_classes() == 100 { 2 } else { 1 };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        if !f.exists() {
            return Err(Error::data(
                f,
                format!(
                    "file not found. {} needs the official binary files in {} \
                     (e.g. {}); they cannot be downloaded by hessian-lab",
                    kind.name(),
                    dir.display(),
                    f.file_name().and_then(|s| s.to_str()).unwrap_or("?")
                ),
            ));
        }
        let (px, ls) = cifar::parse_records(f, label_bytes, kind.num_classes())?;
        images.extend(px);
        labels.extend(ls);
    }
    Split::from_parts(kind, split, images, labels)
}

/// `<dir>/<name>` or `<dir>/<name>.gz`, whichever exists (raw first).
fn find_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let raw = dir.join(name);
    if raw.exists() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() {
        return Ok(gz);
    }
    Err(Error::data(
        raw,
        format!(
            "file not found (looked for {name} and {name}.gz in {})",
            dir.display()
        ),
    ))
}

fn subfolder_with(dir: &Path, sub: &str, probe: &str) -> PathBuf {
    let s = dir.join(sub);
    if !dir.join(probe).exists() && s.join(probe).exists() {
        s
    } else {
        dir.to_path_buf()
    }
}
