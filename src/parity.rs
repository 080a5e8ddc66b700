//! Parity with the official implementation: run a golden case (see
//! `tests/data/golden/README.md`) and compare every output tensor.

use anyhow::{Context as _, Result, bail};
use std::collections::HashMap;
use std::path::Path;

use crate::gpu::GpuContext;
use crate::graph::Kind;
use crate::io::golden::{CaseMeta, GoldenCase, error_metric, tolerance};
use crate::io::tensors::{HostData, HostTensor, TensorMap, write_safetensors_atomic};
use crate::model::spark::nchw_to_bhwc;
use crate::model::infer::infer_architecture;
use crate::model::{DensifyNorm, EncoderConfig, SparkConfig, SparkModel};
use crate::optim::lamb::LambConfig;
use crate::sparse::PatchMask;

/// One compared tensor.
#[derive(Clone, Debug)]
pub struct Row {
    /// The output tensor's key (`out.…`).
    pub key: String,
    /// Largest element-wise |ours − official|.
    pub max_abs: f64,
    /// The README metric for this key.
    pub error: f64,
    /// The largest `error` that passes.
    pub tolerance: f64,
}

impl Row {
    /// Whether this key is within its tolerance.
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance
    }
}

/// One case's comparison: a row per output key, and our outputs.
pub struct Report {
    /// The case's name.
    pub case: String,
    /// One row per compared output key.
    pub rows: Vec<Row>,
    /// Our outputs, under the case's `out.*` keys.
    pub outputs: TensorMap,
}

impl Report {
    /// Number of rows that failed.
    pub fn failed(&self) -> usize {
        self.rows.iter().filter(|r| !r.passed()).count()
    }
}

/// The model configuration a case describes (built from its metadata, never its name).
pub fn config_of(meta: &CaseMeta) -> Result<SparkConfig> {
    let encoder = match meta.arch.as_str() {
        "resnet" => EncoderConfig::Resnet {
            bottleneck: match meta.block.as_deref() {
                Some("basic") => false,
                Some("bottleneck") => true,
                other => bail!("unknown ResNet block {other:?}"),
            },
            layers: meta.layers.clone().context("resnet case without layers")?,
            channels: meta.channels.clone().context("resnet case without channels")?,
        },
        "convnext" => EncoderConfig::Convnext {
            depths: meta.depths.clone().context("convnext case without depths")?,
            dims: meta.dims.clone().context("convnext case without dims")?,
        },
        other => bail!("unknown arch {other:?}"),
    };
    let densify_norm = match meta.densify_norm.as_str() {
        "bn" => DensifyNorm::Bn,
        "ln" => DensifyNorm::Ln,
        other => bail!("unknown densify_norm {other:?}"),
    };
    Ok(SparkConfig { encoder, input_size: meta.input_size, dec_width: meta.dec_width, densify_norm, mask_ratio: meta.mask_ratio })
}

/// Reads a case and the model it describes, checked against its tensors before anything
/// is allocated for it.
pub fn load_case(path: &Path) -> Result<(GoldenCase, SparkConfig)> {
    let case = GoldenCase::load(path)?;
    let cfg = config_of(&case.meta).with_context(|| format!("{}: invalid `spark_case` metadata", path.display()))?;
    check_architecture(&cfg, &case).with_context(|| format!("{}: inconsistent parity case", path.display()))?;
    Ok((case, cfg))
}

/// The model the metadata describes must be the one its `in.*` tensors hold: the metadata
/// sizes what is allocated (layers, widths, decoder), the tensors are bounded by the file,
/// so a case cannot ask for a model larger than itself.
fn check_architecture(cfg: &SparkConfig, case: &GoldenCase) -> Result<()> {
    let (encoder, dec_width, norm) = infer_architecture(&case.inputs()).context("its in.* tensors are not a SparK model")?;
    if (&encoder, dec_width, norm) != (&cfg.encoder, cfg.dec_width, cfg.densify_norm) {
        bail!(
            "the metadata describes {:?} with decoder width {} and {:?} densify norms, its in.* tensors {encoder:?} \
             with decoder width {dec_width} and {norm:?} densify norms",
            cfg.encoder,
            cfg.dec_width,
            cfg.densify_norm
        );
    }
    Ok(())
}

fn f32_tensor(shape: Vec<usize>, v: Vec<f32>) -> HostTensor {
    HostTensor { shape, data: HostData::F32(v) }
}

/// Run `path` on the GPU: `steps` training steps on the case's input and mask.
pub fn run_case(ctx: &GpuContext, path: &Path) -> Result<Report> {
    let (case, cfg) = load_case(path)?;
    let meta = &case.meta;
    let opt = &meta.optimizer;
    let lamb = LambConfig {
        beta1: opt.beta1 as f32,
        beta2: opt.beta2 as f32,
        eps: opt.eps as f32,
        max_grad_norm: opt.max_grad_norm as f32,
    };
    let batch = meta.batch;
    let active = case.active().to_f32().iter().map(|&v| v as u8).collect::<Vec<u8>>();
    let f = cfg.grid();
    let mask = PatchMask::new(batch, f, f, active);
    let mut model = SparkModel::builder(ctx, cfg.clone(), batch).optimizer(lamb).visible_per_image(mask.visible_count() / batch).without_init().build()?;

    // Parameters and buffers by their official names.
    let inputs = case.inputs();
    for p in model.params().ids().collect::<Vec<_>>() {
        let name = model.params().spec(p).name.clone();
        let t = inputs.get(&name).with_context(|| format!("{}: no in.{name} for the model's parameter {name}", path.display()))?;
        model.params_mut().set(ctx, &name, &t.shape, &t.to_f32())?;
    }
    let input = case.input();
    let s = cfg.input_size;
    let images = nchw_to_bhwc(&input.to_f32(), batch, 3, s, s);

    let mut out = TensorMap::new();
    let specs = model.params().specs.clone();
    for step in 0..opt.steps {
        model.set_batch(&images, &mask)?;
        model.submit_forward_backward();
        let loss = model.read_loss()? as f64;
        out.insert(format!("out.loss.{step}"), HostTensor { shape: vec![1], data: HostData::F64(vec![loss]) });
        if step == 0 {
            for i in 0..model.features().len() {
                let (shape, v) = model.read_feature_nchw(i)?;
                out.insert(format!("out.enc.{i}"), f32_tensor(shape, v));
            }
            out.insert("out.rec".into(), f32_tensor(vec![batch, 3, s, s], model.read_rec_nchw()?));
            for p in model.params().ids() {
                let spec = model.params().spec(p);
                if spec.kind == Kind::Trainable {
                    let g = ctx.read_f32(&model.params().grad(p))?;
                    out.insert(format!("grad0.{}", spec.name), f32_tensor(spec.shape.clone(), g));
                }
            }
        }
        model.submit_optimizer(step as u32 + 1, opt.lr as f32, opt.wd as f32)?;
    }
    for (i, spec) in specs.iter().enumerate() {
        let p = crate::graph::ParamId(i);
        let t = match spec.kind {
            Kind::Counter => HostTensor { shape: vec![], data: HostData::I64(vec![model.params().counters[i]]) },
            _ => f32_tensor(spec.shape.clone(), model.params().get(ctx, p)?),
        };
        out.insert(format!("after.{}", spec.name), t);
    }

    let mut rows = vec![];
    for (key, reference) in &case.tensors {
        if !(key.starts_with("out.") || key.starts_with("grad0.") || key.starts_with("after.")) {
            continue;
        }
        let tol = tolerance(key, meta.noise_floor.get(key).copied());
        let Some(ours) = out.get(key) else {
            rows.push(Row { key: key.clone(), max_abs: f64::INFINITY, error: f64::INFINITY, tolerance: tol });
            continue;
        };
        let initial = key.strip_prefix("after.").and_then(|n| case.tensors.get(&format!("in.{n}")));
        let error = error_metric(key, ours, reference, initial);
        // Infinite on NaN/Inf or a shape mismatch (a plain f64::max fold would drop a NaN).
        let max_abs = crate::io::golden::max_abs_diff(ours, reference);
        rows.push(Row { key: key.clone(), max_abs, error, tolerance: tol });
    }
    let name = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    Ok(Report { case: name, rows, outputs: out })
}

/// Write our outputs under the golden keys.
pub fn dump(report: &Report, path: &Path) -> Result<()> {
    let mut meta = HashMap::new();
    meta.insert("producer".to_string(), format!("spark-wgpu {}", env!("CARGO_PKG_VERSION")));
    write_safetensors_atomic(path, &report.outputs, &meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::golden::{CASE_METADATA, golden_dir};
    use crate::io::tensors::read_safetensors;

    /// The resnet_basic_tiny case with its metadata edited by `edit`.
    fn edited(dir: &Path, edit: impl Fn(&mut serde_json::Value)) -> std::path::PathBuf {
        let (t, mut meta) = read_safetensors(&golden_dir().join("resnet_basic_tiny.safetensors")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&meta[CASE_METADATA]).unwrap();
        edit(&mut v);
        meta.insert(CASE_METADATA.to_string(), v.to_string());
        let p = dir.join("edited.safetensors");
        write_safetensors_atomic(&p, &t, &meta).unwrap();
        p
    }

    #[test]
    fn metadata_cannot_ask_for_more_than_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_case(&edited(dir.path(), |_| {})).is_ok());
        // A million blocks, a huge decoder, a billion steps: refused before any allocation.
        for (edit, what) in [
            (&(|v: &mut serde_json::Value| v["layers"] = serde_json::json!([1000000, 1, 1, 1])) as &dyn Fn(&mut serde_json::Value), "inconsistent parity case"),
            (&|v: &mut serde_json::Value| v["dec_width"] = serde_json::json!(1 << 20), "decoder width"),
            (&|v: &mut serde_json::Value| v["optimizer"]["steps"] = serde_json::json!(1_000_000_000u64), "losses are recorded"),
        ] {
            let err = format!("{:#}", load_case(&edited(dir.path(), edit)).unwrap_err());
            assert!(err.contains("edited.safetensors") && err.contains(what), "{err}");
        }
    }
}
