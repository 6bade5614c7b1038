//! safetensors save/load with PyTorch `state_dict` names.
//!
//! Files written here carry metadata (`model`, `input_shape`, `num_classes`, `hidden`,
//! `activation`, `norm_mean`, `norm_std`) so that [`Model::load`] can rebuild the exact model;
//! files from PyTorch (no metadata) get the paper's configuration for the named model.

use super::{Activation, Model, ModelConfig, ModelKind, Normalization};
use crate::{Error, Result, Runtime};
use candle_core::{DType, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

fn meta_config(kind: ModelKind, meta: &HashMap<String, String>) -> Result<ModelConfig> {
    let mut cfg = ModelConfig::paper(kind);
    let parse_list = |s: &str| -> Option<Vec<f64>> {
        s.split(',').map(|t| t.trim().parse::<f64>().ok()).collect()
    };
    if let Some(s) = meta.get("input_shape") {
        let v: Vec<usize> = s.split(',').filter_map(|t| t.trim().parse().ok()).collect();
        if v.len() == 3 {
            cfg.input_shape = [v[0], v[1], v[2]];
        }
    }
    if let Some(n) = meta.get("num_classes").and_then(|s| s.parse().ok()) {
        cfg.num_classes = n;
    }
    if let Some(n) = meta.get("hidden").and_then(|s| s.parse().ok()) {
        cfg.hidden = n;
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
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

impl Model {
    /// Saves parameters and BN buffers to safetensors under their PyTorch names (as f32 or
    /// f64, the model's dtype), with the model configuration as metadata.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (n, v) in self.params.iter().chain(self.buffers.iter()) {
            tensors.push((
                n.clone(),
                v.as_tensor()
                    .detach()
                    .to_device(&candle_core::Device::Cpu)?,
            ));
        }
        let c = &self.config;
        let join = |v: &[f64]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let meta: HashMap<String, String> = [
            ("format", "pt".to_string()),
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
        .collect();
        safetensors::serialize_to_file(tensors, Some(meta), path)
            .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
        Ok(())
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
        model.load_weights_from_bytes(path, &bytes)?;
        Ok(model)
    }

    /// Overwrites this model's parameters and buffers from a safetensors file (see
    /// [`Model::load`] for the checks).
    pub fn load_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        self.load_weights_from_bytes(path, &bytes)
    }

    fn load_weights_from_bytes(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &candle_core::Device::Cpu)
            .map_err(|e| Error::data(path, format!("not a readable safetensors file: {e}")))?;
        let mut problems = Vec::new();
        let expected: BTreeSet<&str> = self
            .params
            .iter()
            .chain(self.buffers.iter())
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
        for (n, v) in self.params.iter().chain(self.buffers.iter()) {
            match tensors.get(n) {
                None => missing.push(n.as_str()),
                Some(t) => {
                    if !matches!(
                        t.dtype(),
                        DType::F16 | DType::BF16 | DType::F32 | DType::F64
                    ) {
                        problems.push(format!("{n}: dtype {:?}, expected a float type", t.dtype()));
                    } else if t.dims() != v.dims() {
                        problems.push(format!(
                            "{n}: shape {:?}, expected {:?}",
                            t.dims(),
                            v.dims()
                        ));
                    } else {
                        staged.push((v, t));
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
                model: self.config.kind.name().into(),
                problems,
            });
        }
        for (v, t) in staged {
            let t = t.to_dtype(self.dtype())?.to_device(self.device())?;
            if t.to_dtype(DType::F64)?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?
                .is_nan()
            {
                return Err(Error::NonFinite(format!("weights in {}", path.display())));
            }
            v.set(&t)?;
        }
        Ok(())
    }
}
