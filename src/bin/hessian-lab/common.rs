//! Options and helpers shared by the subcommands.

/// A `clap::ValueEnum` whose command-line name is also its value in JSON output and messages
/// (names and JSON values are a contract: scripts use both).
macro_rules! cli_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
        pub enum $name {
            $($(#[$vm])* #[value(name = $s $(, alias = $alias)*)] $var),+
        }
        impl $name {
            pub fn name(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
    };
}
pub(crate) use cli_enum;

cli_enum!(
    /// Where tensors live.
    DeviceArg { Cpu = "cpu", Cuda = "cuda" | "gpu" }
);
cli_enum!(
    /// Float type.
    DtypeArg { F32 = "f32", F64 = "f64" }
);

use anyhow::Result;
use clap::Args;
use hessian_lab::data::{self, DatasetKind, Split, SplitKind};
use hessian_lab::models::{Model, ModelConfig, ModelKind, Network, Sequential};
use hessian_lab::Runtime;
use std::path::PathBuf;

#[derive(Args, Clone)]
pub struct Common {
    /// Data root: data sets are read from <DATA_DIR>/<dataset>/
    #[arg(long, default_value = "data", global = true)]
    pub data_dir: PathBuf,
    /// Read the data set from exactly this folder (overrides --data-dir)
    #[arg(long, global = true)]
    pub dataset_path: Option<PathBuf>,
    /// cuda needs the `cuda` feature; falls back to cpu with a message
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu, global = true)]
    pub device: DeviceArg,
    #[arg(long, value_enum, default_value_t = DtypeArg::F32, global = true)]
    pub dtype: DtypeArg,
}

/// Which network: a built-in model (`--model`) or a PyTorch `nn.Sequential` by spec (`--arch`
/// or `--arch-file`), the same flags for every command that takes a network.
#[derive(Args, Clone)]
pub struct NetArgs {
    /// A built-in model
    #[arg(long, value_enum, required_unless_present_any = ["arch", "arch_file"], conflicts_with_all = ["arch", "arch_file"])]
    pub model: Option<ModelKind>,
    /// A PyTorch nn.Sequential by spec, e.g. "Conv2d(1, 32, 5, padding=2), ReLU, MaxPool2d(2),
    /// Flatten, Linear(6272, 10)"; --weights is then its state_dict in safetensors (PyTorch's
    /// names) and --dataset is required
    #[arg(long, conflicts_with = "arch_file")]
    pub arch: Option<String>,
    /// The spec of --arch read from a file (one module per line allowed, # comments)
    #[arg(long)]
    pub arch_file: Option<PathBuf>,
    /// With --arch: the network was trained on inputs normalised with the data set's
    /// per-channel mean and std (torchvision's Normalize); the CLI applies it first
    #[arg(long)]
    pub normalize: bool,
}

impl NetArgs {
    /// The spec text of --arch / --arch-file, if one was given.
    fn spec(&self) -> Result<Option<String>> {
        Ok(match (&self.arch, &self.arch_file) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(p)) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("--arch-file {}: {e}", p.display()))?,
            ),
            (None, None) => None,
        })
    }
    /// The data set: --dataset, else the built-in model's own.
    pub fn dataset(&self, given: Option<DatasetKind>) -> Result<DatasetKind> {
        match (given, self.model) {
            (Some(d), _) => Ok(d),
            (None, Some(k)) => Ok(k.default_dataset()),
            (None, None) => anyhow::bail!("--arch needs --dataset (the data the network takes)"),
        }
    }
    /// What JSON and titles call the network: the model's name, or "sequential".
    pub fn label(&self) -> String {
        self.model
            .map(|k| k.name().to_string())
            .unwrap_or_else(|| "sequential".into())
    }
    /// The network for data `d`, its weights loaded (or freshly initialised from `seed`).
    pub fn build(
        &self,
        weights: Option<&std::path::Path>,
        d: &DataDesc,
        rt: &Runtime,
        seed: u64,
    ) -> Result<Box<dyn Network>> {
        if let Some(spec) = self.spec()? {
            let shape = &d.input_shape;
            let net = match weights {
                Some(p) => Sequential::load(&spec, &shape, p, rt)?,
                None => Sequential::new(&spec, &shape, rt, seed)?,
            };
            // your own data: no [0, 1] pixel box to clip attacks to
            let net = if d.dataset.is_none() {
                net.with_input_box(hessian_lab::models::InputBox::NONE)
            } else {
                net
            };
            let net = if self.normalize {
                let ds = d.dataset.ok_or_else(|| {
                    anyhow::anyhow!("--normalize uses a built-in data set's mean and std; normalise your .npy inputs yourself")
                })?;
                let (m, s) = ds.normalization();
                net.with_normalization(&m, &s)?
            } else {
                net
            };
            return Ok(Box::new(net));
        }
        if self.normalize {
            anyhow::bail!(
                "--normalize applies to --arch networks (built-in models normalise already)"
            );
        }
        let kind = self
            .model
            .ok_or_else(|| anyhow::anyhow!("give --model, --arch or --arch-file"))?;
        let config = match (d.dataset, &d.input_shape[..]) {
            (Some(ds), _) => ModelConfig::for_dataset(kind, ds),
            // your own images: the model sized for them, no normalisation
            (None, &[c, h, w]) => ModelConfig::tiny(kind, [c, h, w], d.num_classes, 100),
            (None, s) => anyhow::bail!(
                "built-in models take (C, H, W) images; the data has samples of shape {s:?} (use --arch)"
            ),
        };
        Ok(Box::new(match weights {
            Some(p) => Model::load(kind, p, rt)?,
            None => Model::from_config(config, rt, seed)?,
        }))
    }
    /// The spec as JSON (null for built-in models), next to "model" in every output.
    pub fn arch_json(&self) -> Result<serde_json::Value> {
        Ok(self
            .spec()?
            .map(serde_json::Value::from)
            .unwrap_or_default())
    }
}

/// What a network is built for: a built-in data set, or the shape and classes of your own.
pub struct DataDesc {
    pub dataset: Option<DatasetKind>,
    pub input_shape: Vec<usize>,
    pub num_classes: usize,
}

impl DataDesc {
    pub fn builtin(ds: DatasetKind) -> Self {
        DataDesc {
            dataset: Some(ds),
            input_shape: ds.input_shape().to_vec(),
            num_classes: ds.num_classes(),
        }
    }
    pub fn of(split: &Split) -> Self {
        DataDesc {
            dataset: split.dataset(),
            input_shape: split.input_shape(),
            num_classes: split.num_classes(),
        }
    }
}

/// Your own data: `--data-npy x.npy,y.npy` (and `--classes`).
#[derive(Args, Clone)]
pub struct NpyArgs {
    /// Your own data instead of --dataset: inputs and labels as .npy files, "x.npy,y.npy"
    /// (float32/float64 (N, C, H, W) or (N, D); integer labels), taken as they are
    #[arg(long, value_delimiter = ',', conflicts_with = "dataset")]
    pub data_npy: Option<Vec<PathBuf>>,
    /// With --data-npy: the number of classes (default: the largest label + 1)
    #[arg(long, requires = "data_npy")]
    pub classes: Option<usize>,
}

impl NpyArgs {
    /// The .npy split, if given (first `samples` samples).
    pub fn load(&self, samples: Option<usize>) -> Result<Option<Split>> {
        let Some(p) = &self.data_npy else {
            return Ok(None);
        };
        if p.len() != 2 {
            anyhow::bail!("--data-npy takes two files, inputs and labels: x.npy,y.npy");
        }
        let split = data::load_npy(&p[0], &p[1], self.classes)?;
        Ok(Some(match samples {
            Some(n) => split.first(n)?,
            None => split,
        }))
    }
}

/// Where the analysed samples come from, for JSON and messages.
pub struct Src {
    pub dataset: Option<DatasetKind>,
    name: String,
    split: &'static str,
}

impl Src {
    /// The data set's name (the inputs' file stem for .npy data).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// "train", "test", or "npy".
    pub fn split_name(&self) -> &str {
        self.split
    }
}

/// Network + data selection shared by the analysis commands.
#[derive(Args, Clone)]
pub struct ModelData {
    #[command(flatten)]
    pub net: NetArgs,
    /// Weights (safetensors); without them a freshly initialised network (seed --seed) is used
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub dataset: Option<hessian_lab::data::DatasetKind>,
    #[command(flatten)]
    pub npy: NpyArgs,
    #[arg(long, value_enum, default_value_t = hessian_lab::data::SplitKind::Test)]
    pub split: hessian_lab::data::SplitKind,
    /// Use the first N samples of the split (default: all)
    #[arg(long)]
    pub samples: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn runtime(c: &Common) -> Result<Runtime> {
    let dtype = match c.dtype {
        DtypeArg::F32 => candle_core::DType::F32,
        DtypeArg::F64 => candle_core::DType::F64,
    };
    Ok(match c.device {
        DeviceArg::Cpu => Runtime {
            device: candle_core::Device::Cpu,
            dtype,
            kernels: Default::default(),
        },
        DeviceArg::Cuda => Runtime::best_available(dtype),
    })
}

pub fn load_split(
    c: &Common,
    d: DatasetKind,
    s: SplitKind,
    samples: Option<usize>,
) -> Result<Split> {
    let split = match &c.dataset_path {
        Some(p) => data::load_from_dir(d, s, p)?,
        None => data::load(d, s, &c.data_dir)?,
    };
    Ok(match samples {
        Some(n) => split.first(n)?,
        None => split,
    })
}

/// Loads (or initialises) the network and the requested split, and checks that they fit.
pub fn model_and_data(
    c: &Common,
    md: &ModelData,
) -> Result<(Runtime, Box<dyn Network>, Split, Src)> {
    let rt = runtime(c)?;
    let (split, src) = match md.npy.load(md.samples)? {
        Some(s) => {
            let src = Src {
                dataset: None,
                name: s.name(),
                split: "npy",
            };
            (s, src)
        }
        None => {
            let ds = md.net.dataset(md.dataset)?;
            let src = Src {
                dataset: Some(ds),
                name: ds.name().into(),
                split: md.split.name(),
            };
            (load_split(c, ds, md.split, md.samples)?, src)
        }
    };
    if md.weights.is_none() {
        eprintln!(
            "note: no --weights given; using a freshly initialised {} (seed {})",
            md.net.label(),
            md.seed
        );
    }
    let model = md
        .net
        .build(md.weights.as_deref(), &DataDesc::of(&split), &rt, md.seed)?;
    model.check_data(&split)?;
    Ok((rt, model, split, src))
}

/// Prints JSON or a human line.
pub fn emit(json: bool, value: &serde_json::Value, human: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        println!("{}", human());
    }
    Ok(())
}
