//! Checkpoints: safetensors with the official parameter names, the optimizer state
//! (`optimizer.exp_avg.<name>`, `optimizer.exp_avg_sq.<name>`) and, in the metadata,
//! the run configuration and the next step. Written to a temporary file and renamed,
//! so an interrupted write never destroys the previous checkpoint.
//!
//! Loading accepts this format, official SparK `.pth` checkpoints (with decoder) and
//! encoder-only timm-style `.pth`/safetensors files.

use anyhow::{Context as _, Result, bail};
use std::collections::HashMap;
use std::path::Path;

use crate::graph::{Kind, ParamId};
use crate::io::names::from_encoder_name;
use crate::io::pth::{CheckpointStyle, load_state_dict};
use crate::io::tensors::{HostData, HostTensor, TensorMap, read_safetensors, write_safetensors_atomic};
use crate::model::SparkModel;

/// The `format` metadata of a training checkpoint (what `export --out` refuses to replace).
pub const CHECKPOINT_FORMAT: &str = "spark-wgpu checkpoint v1";
/// Key prefix of LAMB's first moment in a checkpoint.
pub const EXP_AVG: &str = "optimizer.exp_avg.";
/// Key prefix of LAMB's second moment in a checkpoint.
pub const EXP_AVG_SQ: &str = "optimizer.exp_avg_sq.";
/// Where the encoder's tensors live in SparK names.
const ENCODER_PREFIX: &str = "sparse_encoder.";

/// Every parameter, buffer and counter of the model under its official name (blocking).
pub fn state_dict(model: &SparkModel) -> Result<TensorMap> {
    let ctx = model.ctx();
    let ps = model.params();
    let mut out = TensorMap::new();
    for p in ps.ids() {
        let s = ps.spec(p);
        let t = match s.kind {
            Kind::Counter => HostTensor { shape: vec![], data: HostData::I64(vec![ps.counters[p.0]]) },
            _ => HostTensor::f32(s.shape.clone(), ps.get(ctx, p)?),
        };
        out.insert(s.name.clone(), t);
    }
    Ok(out)
}

/// Write a full training checkpoint (model + optimizer state + metadata).
pub fn save(model: &SparkModel, path: &Path, metadata: &HashMap<String, String>) -> Result<()> {
    let ctx = model.ctx();
    let mut t = state_dict(model)?;
    if let Some(opt) = model.optimizer() {
        let m = ctx.read_f32(opt.exp_avg())?;
        let v = ctx.read_f32(opt.exp_avg_sq())?;
        let ps = model.params();
        for p in ps.ids().filter(|&p| ps.spec(p).kind == Kind::Trainable) {
            let s = ps.spec(p);
            let (o, n) = (ps.offset(p), s.numel());
            t.insert(format!("{EXP_AVG}{}", s.name), HostTensor::f32(s.shape.clone(), m[o..o + n].to_vec()));
            t.insert(format!("{EXP_AVG_SQ}{}", s.name), HostTensor::f32(s.shape.clone(), v[o..o + n].to_vec()));
        }
    }
    write_safetensors_atomic(path, &t, metadata).with_context(|| format!("writing checkpoint {}", path.display()))
}

/// Read any supported checkpoint file: (tensors under SparK names, metadata).
pub fn read_any(path: &Path) -> Result<(TensorMap, HashMap<String, String>)> {
    if !path.exists() {
        bail!("checkpoint {} does not exist", path.display());
    }
    let is_pth = matches!(path.extension().and_then(|e| e.to_str()), Some("pth" | "pt" | "bin" | "tar"));
    if is_pth {
        let (t, style) = load_state_dict(path)?;
        let t = match style {
            CheckpointStyle::SparkFull => t,
            CheckpointStyle::EncoderOnly => t.into_iter().map(|(k, v)| (from_encoder_name(&k), v)).collect(),
        };
        return Ok((t, HashMap::new()));
    }
    let (t, meta) = read_safetensors(path)?;
    if meta.contains_key(crate::io::golden::CASE_METADATA) {
        // A parity case: its initial model is `in.<SparK name>` (the batch and mask, and the
        // reference outputs, are not model tensors).
        return Ok((crate::io::golden::case_inputs(&t), HashMap::new()));
    }
    // An exported encoder (timm names) is recognised by the absence of SparK prefixes.
    let spark = t.keys().any(|k| k.starts_with("sparse_encoder.") || k.starts_with("dense_decoder."));
    let t = if spark { t } else { t.into_iter().map(|(k, v)| (from_encoder_name(&k), v)).collect() };
    Ok((t, meta))
}

/// What `load` did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Model tensors loaded from the file.
    pub loaded: usize,
    /// Model tensors the file did not have (they keep their current values).
    pub missing: Vec<String>,
    /// File tensors the model does not have.
    pub unexpected: Vec<String>,
    /// Whether the file carried optimizer state (and it was loaded).
    pub optimizer_state: bool,
}

/// Load tensors into the model by name. A tensor whose shape does not fit is an error
/// naming it and both shapes (a checkpoint of another architecture). With `strict`,
/// every model tensor must be present.
pub fn load(model: &mut SparkModel, tensors: &TensorMap, path: &Path, strict: bool) -> Result<LoadReport> {
    let ctx = model.ctx();
    let mut report = LoadReport::default();
    let ids: Vec<ParamId> = model.params().ids().collect();
    for p in ids {
        let (name, shape) = {
            let s = model.params().spec(p);
            (s.name.clone(), s.shape.clone())
        };
        match tensors.get(&name) {
            Some(t) => {
                let numel = |s: &[usize]| s.iter().product::<usize>();
                if t.shape != shape && !(numel(&t.shape) == 1 && numel(&shape) == 1) {
                    bail!(
                        "{}: parameter {name} has shape {:?} in the checkpoint but {:?} in this model \
                         (a checkpoint of another architecture or width? check --model and --dec-width)",
                        path.display(),
                        t.shape,
                        shape
                    );
                }
                model.params_mut().set(ctx, &name, &shape, &t.to_f32())?;
                report.loaded += 1;
            }
            None => report.missing.push(name),
        }
    }
    // Loading nothing into the encoder is never what was meant (a ConvNeXt file into a
    // ResNet, an unrelated file): training would silently start from scratch.
    let encoder_loaded = model
        .params()
        .specs
        .iter()
        .filter(|s| s.name.starts_with(ENCODER_PREFIX) && tensors.contains_key(&s.name))
        .count();
    if encoder_loaded == 0 {
        let found: Vec<&str> = tensors.keys().filter(|k| !k.starts_with("optimizer.")).take(3).map(String::as_str).collect();
        let example = model.params().specs.iter().find(|s| s.name.starts_with(ENCODER_PREFIX)).map_or("", |s| s.name.as_str());
        bail!(
            "{}: none of its {} tensors is a tensor of this model's encoder (such as {example}); it holds {}{}: \
             a checkpoint of another architecture (check --model), or not a SparK/timm checkpoint",
            path.display(),
            tensors.len(),
            if found.is_empty() { "no tensors".to_string() } else { found.join(", ") },
            if tensors.len() > found.len() { ", …" } else { "" }
        );
    }
    if strict && !report.missing.is_empty() {
        bail!("{}: missing {} tensors, first {}", path.display(), report.missing.len(), report.missing[0]);
    }
    let known: std::collections::HashSet<String> = model.params().specs.iter().map(|s| s.name.clone()).collect();
    report.unexpected = tensors
        .keys()
        .filter(|k| !known.contains(*k) && !k.starts_with("optimizer."))
        .cloned()
        .collect();
    if let Some(opt) = model.optimizer()
        && tensors.keys().any(|k| k.starts_with(EXP_AVG)) {
            let ps = model.params();
            let mut m = vec![0f32; ps.flat.len];
            let mut v = vec![0f32; ps.flat.len];
            for p in ps.ids().filter(|&p| ps.spec(p).kind == Kind::Trainable) {
                let s = ps.spec(p);
                let (o, n) = (ps.offset(p), s.numel());
                let get = |prefix: &str| {
                    tensors
                        .get(&format!("{prefix}{}", s.name))
                        .map(|t| t.to_f32())
                        .filter(|x| x.len() == n)
                        .with_context(|| format!("{}: optimizer state for {} missing or of the wrong size", path.display(), s.name))
                };
                m[o..o + n].copy_from_slice(&get(EXP_AVG)?);
                v[o..o + n].copy_from_slice(&get(EXP_AVG_SQ)?);
            }
            ctx.write(opt.exp_avg(), &m);
            ctx.write(opt.exp_avg_sq(), &v);
            report.optimizer_state = true;
        }
    Ok(report)
}
