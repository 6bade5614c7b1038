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
use hessian_lab::models::{Model, ModelConfig, Network};
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

/// Model + data selection shared by the analysis commands.
#[derive(Args, Clone)]
pub struct ModelData {
    #[arg(long, value_enum)]
    pub model: hessian_lab::models::ModelKind,
    /// Weights (safetensors); without them a freshly initialised model (seed --seed) is used
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub dataset: Option<hessian_lab::data::DatasetKind>,
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

/// Loads (or initialises) the model and the requested split.
pub fn model_and_data(
    c: &Common,
    md: &ModelData,
) -> Result<(Runtime, Model, Split, DatasetKind, SplitKind)> {
    let rt = runtime(c)?;
    let kind = md.model;
    let ds = md.dataset.unwrap_or(kind.default_dataset());
    let sk = md.split;
    let split = load_split(c, ds, sk, md.samples)?;
    let model = match &md.weights {
        Some(p) => Model::load(kind, p, &rt)?,
        None => {
            eprintln!(
                "note: no --weights given; using a freshly initialised {} (seed {})",
                kind.name(),
                md.seed
            );
            Model::from_config(ModelConfig::for_dataset(kind, ds), &rt, md.seed)?
        }
    };
    model.check_data(&split)?;
    Ok((rt, model, split, ds, sk))
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
