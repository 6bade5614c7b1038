//! safetensors save/load with PyTorch `state_dict` names.
//!
//! Files written here carry metadata (`model`, `input_shape`, `num_classes`, `hidden`,
//! `activation`, `norm_mean`, `norm_std`) so that [`Model::load`] can rebuild the exact model;
//! files from PyTorch (no metadata) get the paper's configuration for the named model.

use super::{Activation, Model, ModelConfig, ModelKind, Network, Normalization};
use crate::{Error, Result, Runtime};
use candle_core::{DType, Tensor, Var};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

fn meta_config(kind: ModelKind, meta: &HashMap<String, String>) -> Result<ModelConfig> {
    let mut cfg = ModelConfig::paper(kind);
    let parse_list = |s: &str| -> Option<Vec<f64>> {
        s.split(',').map(|t| t.trim().parse::<f64>().ok()).collect()
    };
    let bad = |key: &str, v: &str, want: &str| {
        Error::invalid(
            "weights metadata",
            format!("`{key}` is `{v}`, expected {want} (a file saved by hessian-lab has it right; remove the key to use the {} defaults)", kind.name()),
        )
    };
    if let Some(s) = meta.get("input_shape") {
        let v: Vec<usize> = s
            .split(',')
            .map(|t| t.trim().parse::<usize>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad("input_shape", s, "three positive integers C,H,W"))?;
        match v[..] {
            [c, h, w] if c > 0 && h > 0 && w > 0 => cfg.input_shape = [c, h, w],
            _ => return Err(bad("input_shape", s, "three positive integers C,H,W")),
        }
    }
    if let Some(s) = meta.get("num_classes") {
        cfg.num_classes = s
            .trim()
            .parse()
            .ok()
            .filter(|&n: &usize| n >= 2)
            .ok_or_else(|| bad("num_classes", s, "an integer ≥ 2"))?;
    }
    if let Some(s) = meta.get("hidden") {
        cfg.hidden = s
            .trim()
            .parse()
            .map_err(|_| bad("hidden", s, "an integer"))?;
    }
    if meta.get("activation").map(|s| s.as_str()) == Some("tanh") {
        cfg.activation = Activation::Tanh;
    }
    if let (Some(m), Some(s)) = (
        meta.get("norm_mean").and_then(|s| parse_list(s)),
        meta.get("norm_std").and_then(|s| parse_list(s)),
    ) {
        cfg.normalization = Normalization { mean: m, std: s };
    }
    Ok(cfg)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    crate::files::read_regular(path).map_err(|e| Error::io(path, e))
}

/// Writes named tensors to safetensors (see [`Network::save`](super::Network::save)).
pub(crate) fn save_vars<'a>(
    vars: impl Iterator<Item = &'a (String, Var)>,
    meta: impl Iterator<Item = (String, String)>,
    path: &Path,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut bad = vec![];
    for (n, v) in vars {
        let t = v
            .as_tensor()
            .detach()
            .to_device(&candle_core::Device::Cpu)?;
        if let Some(c) = NonFiniteCount::of(&t)? {
            bad.push(format!("{n} ({c})"));
        }
        tensors.push((n.clone(), t));
    }
    if !bad.is_empty() {
        // A file the crate would refuse to load is never written.
        return Err(Error::NonFinite(format!(
            "network to be saved to {}: {}",
            path.display(),
            bad.join(", ")
        )));
    }
    let meta: HashMap<String, String> = std::iter::once(("format".to_string(), "pt".to_string()))
        .chain(meta)
        .collect();
    let bytes = safetensors::serialize(tensors, Some(meta))
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
    crate::files::write_atomic(path, &sorted_header(bytes)?)
}

impl Model {
    /// [`Network::save`] taking any path-like argument.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        Network::save(self, path.as_ref())
    }

    /// The configuration as safetensors metadata (read back by [`Model::load`]).
    pub(crate) fn config_metadata(&self) -> Vec<(String, String)> {
        let c = &self.config;
        let join = |v: &[f64]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        [
            ("model", c.kind.name().to_string()),
            (
                "input_shape",
                c.input_shape
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("num_classes", c.num_classes.to_string()),
            ("hidden", c.hidden.to_string()),
            (
                "activation",
                match c.activation {
                    Activation::Relu => "relu",
                    Activation::Tanh => "tanh",
                }
                .to_string(),
            ),
            ("norm_mean", join(&c.normalization.mean)),
            ("norm_std", join(&c.normalization.std)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Loads model `kind` from a safetensors file (ours or a PyTorch `state_dict` saved with
    /// `safetensors.torch.save_file`). Float tensors are converted to the runtime's dtype.
    /// Missing, unexpected, wrongly shaped or non-float tensors give
    /// [`Error::WeightsMismatch`] listing every offending name. `*.num_batches_tracked` is
    /// accepted and ignored.
    pub fn load(kind: ModelKind, path: impl AsRef<Path>, rt: &Runtime) -> Result<Model> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::data(path, format!("not a safetensors file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if let Some(m) = meta.get("model") {
            if m != kind.name() {
                return Err(Error::WeightsMismatch {
                    path: path.to_path_buf(),
                    model: kind.name().into(),
                    problems: vec![format!("the file was saved from model `{m}`")],
                });
            }
        }
        let cfg = meta_config(kind, &meta)?;
        let model = Model::from_config(cfg, rt, 0)?;
        load_into(&model, path, &bytes, &|n| n.to_string())?;
        Ok(model)
    }

    /// Overwrites this model's parameters and buffers from a safetensors file (see
    /// [`Model::load`] for the checks).
    pub fn load_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        load_into(self, path, &bytes, &|n| n.to_string())
    }
}

/// Overwrites a network's parameters and buffers from safetensors bytes read from `path`,
/// checking names, shapes, dtypes and finiteness first (nothing is written unless everything
/// fits). `label` turns a tensor name into what the messages show (e.g. with its layer).
pub(crate) fn load_into(
    net: &dyn Network,
    path: &Path,
    bytes: &[u8],
    label: &dyn Fn(&str) -> String,
) -> Result<()> {
    let tensors = candle_core::safetensors::load_buffer(bytes, &candle_core::Device::Cpu)
        .map_err(|e| Error::data(path, format!("not a readable safetensors file: {e}")))?;
    let mut problems = Vec::new();
    let expected: BTreeSet<&str> = net
        .params()
        .iter()
        .chain(net.buffers().iter())
        .map(|(n, _)| n.as_str())
        .collect();
    let mut extra: Vec<&str> = tensors
        .keys()
        .map(|s| s.as_str())
        .filter(|n| !expected.contains(n) && !n.ends_with("num_batches_tracked"))
        .collect();
    extra.sort();
    let mut missing = vec![];
    let mut staged = vec![];
    for (n, v) in net.params().iter().chain(net.buffers().iter()) {
        match tensors.get(n) {
            None => missing.push(label(n)),
            Some(t) => {
                if !matches!(
                    t.dtype(),
                    DType::F16 | DType::BF16 | DType::F32 | DType::F64
                ) {
                    problems.push(format!(
                        "{}: dtype {:?}, expected a float type",
                        label(n),
                        t.dtype()
                    ));
                } else if t.dims() != v.dims() {
                    problems.push(format!(
                        "{}: shape {:?}, expected {:?}",
                        label(n),
                        t.dims(),
                        v.dims()
                    ));
                } else {
                    staged.push((n, v, t));
                }
            }
        }
    }
    if !missing.is_empty() {
        problems.insert(0, format!("missing tensors: {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        problems.push(format!("unexpected tensors: {}", extra.join(", ")));
    }
    if !problems.is_empty() {
        return Err(Error::WeightsMismatch {
            path: path.to_path_buf(),
            model: net.name(),
            problems,
        });
    }
    // Every value checked before any is written: a bad file leaves the model untouched.
    let mut converted = Vec::with_capacity(staged.len());
    let mut bad = vec![];
    for (n, v, t) in staged {
        let t = t.to_dtype(net.dtype())?;
        if let Some(c) = NonFiniteCount::of(&t)? {
            bad.push(format!("{n} ({c})"));
        }
        converted.push((v, t));
    }
    if !bad.is_empty() {
        return Err(Error::NonFinite(format!(
            "weights in {}: {}",
            path.display(),
            bad.join(", ")
        )));
    }
    for (v, t) in converted {
        v.set(&t.to_device(net.device())?)?;
    }
    Ok(())
}

/// How many NaN and ±Inf values a tensor holds, for error messages that say what is wrong.
pub(crate) struct NonFiniteCount {
    nan: usize,
    inf: usize,
    len: usize,
}

impl NonFiniteCount {
    /// `None` when every value is finite. Reads every value (one pass; `max(|w|)` would miss a
    /// NaN that is not first and every ±Inf).
    pub(crate) fn of(t: &Tensor) -> Result<Option<Self>> {
        let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let nan = v.iter().filter(|x| x.is_nan()).count();
        let inf = v.iter().filter(|x| x.is_infinite()).count();
        Ok((nan + inf > 0).then_some(NonFiniteCount {
            nan,
            inf,
            len: v.len(),
        }))
    }
}

impl std::fmt::Display for NonFiniteCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} NaN and {} ±Inf of {} values",
            self.nan, self.inf, self.len
        )
    }
}

/// The same safetensors file with its JSON header's keys in sorted order (the metadata comes
/// from a `HashMap`, whose order changes from run to run), so that one model gives one byte
/// string. Offsets are relative to the data section and stay valid; the header is padded with
/// spaces to a multiple of 8 bytes, as safetensors does.
fn sorted_header(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |why: &str| Error::Unsupported(format!("safetensors serialisation: {why}"));
    let n = u64::from_le_bytes(
        bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("no header length"))?,
    ) as usize;
    let header = bytes.get(8..8 + n).ok_or_else(|| bad("short header"))?;
    // serde_json's Map is a BTreeMap: sorted keys, at every level
    let v: serde_json::Value = serde_json::from_slice(header)?;
    let mut h = serde_json::to_vec(&v)?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}
