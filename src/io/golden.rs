//! Parity cases produced by the official SparK code (format: tests/data/golden/README.md).
//! A case is one safetensors file: `in.*` (initial parameters, BN buffers, input batch and
//! patch mask), `out.*`/`grad0.*`/`after.*` (reference results) and a `spark_case` JSON
//! header describing the model and optimiser. This module parses it and implements the
//! README's error metric and tolerance rule, so every parity consumer judges the same way.

use super::tensors::{HostData, HostTensor, TensorMap, read_safetensors};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The LAMB settings of a case (fixed lr and weight decay, no schedule).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct OptimizerMeta {
    /// Learning rate of every step.
    pub lr: f64,
    /// Weight decay of every step.
    pub wd: f64,
    /// First-moment decay β1.
    pub beta1: f64,
    /// Second-moment decay β2.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Global gradient-norm clip: gradients are scaled down to this norm when above it.
    pub max_grad_norm: f64,
    /// Optimizer steps the case records.
    pub steps: usize,
    /// `"lamb"` in the official cases.
    #[serde(default)]
    pub name: Option<String>,
    /// Prose statement of the no-weight-decay rule (1-D params, `.bias`, mask tokens, gamma).
    #[serde(default)]
    pub no_weight_decay: Option<String>,
}

/// The `spark_case` JSON object. Architecture fields are optional because each arch uses
/// its own set (ResNet: block/layers/channels/stem_width; ConvNeXt: depths/dims).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct CaseMeta {
    /// `"resnet"` or `"convnext"`.
    pub arch: String,
    /// ResNet block: `"basic"` or `"bottleneck"`.
    #[serde(default)]
    pub block: Option<String>,
    /// ResNet blocks per stage.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// ResNet stage widths (before the bottleneck expansion).
    #[serde(default)]
    pub channels: Option<Vec<usize>>,
    /// ResNet stem output channels.
    #[serde(default)]
    pub stem_width: Option<usize>,
    /// ConvNeXt blocks per stage.
    #[serde(default)]
    pub depths: Option<Vec<usize>>,
    /// ConvNeXt stage widths.
    #[serde(default)]
    pub dims: Option<Vec<usize>>,
    /// Square input side in pixels.
    pub input_size: usize,
    /// Images in the batch.
    pub batch: usize,
    /// Fraction of patches masked.
    pub mask_ratio: f64,
    /// Decoder width (channels of its first stage).
    pub dec_width: usize,
    /// `"bn"` (sparse BatchNorm) or `"ln"` (LayerNorm) for the densify norms.
    pub densify_norm: String,
    /// The case's LAMB settings.
    pub optimizer: OptimizerMeta,
    /// Per-step losses (also stored as `out.loss.K`).
    pub losses: Vec<f64>,
    /// Per output key: its error between the official fp32 and f64 runs.
    #[serde(default)]
    pub noise_floor: BTreeMap<String, f64>,
    /// Seed the official run drew its initialisation and masks from.
    #[serde(default)]
    pub seed: Option<u64>,
    /// The case's name (informative only: build from the fields above, never from this).
    #[serde(default)]
    pub case: Option<String>,
}

/// One loaded parity case.
#[derive(Clone, Debug)]
pub struct GoldenCase {
    /// The case's description (`spark_case` metadata).
    pub meta: CaseMeta,
    /// Inputs (`in.*`) and official outputs (`out.*`).
    pub tensors: TensorMap,
}

/// One tensor's comparison against the reference.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// The output tensor's key (`out.…`).
    pub key: String,
    /// Largest element-wise |ours − reference| (infinite on a shape mismatch).
    pub max_abs: f64,
    /// The README metric for this key (see [`error_metric`]).
    pub error: f64,
    /// The largest `error` that passes for this key.
    pub tolerance: f64,
    /// Whether `error <= tolerance`.
    pub pass: bool,
}

/// The safetensors metadata key holding a case's JSON description.
pub const CASE_METADATA: &str = "spark_case";

/// [`GoldenCase::inputs`] of a case's tensors.
pub fn case_inputs(tensors: &TensorMap) -> TensorMap {
    tensors
        .iter()
        .filter_map(|(k, t)| k.strip_prefix("in.").map(|n| (n, t)))
        .filter(|(n, _)| *n != "input" && *n != "active")
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect()
}

/// Where the repository keeps the golden files (for tests and examples).
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden")
}

/// The case files shipped in [`golden_dir`].
pub const GOLDEN_CASES: [&str; 3] = ["resnet_basic_tiny", "resnet_bottleneck_tiny", "convnext_tiny"];

impl GoldenCase {
    /// Reads and validates a case: the `spark_case` metadata must parse, and `in.input` /
    /// `in.active` must exist with the README's dtypes and shapes matching the metadata.
    pub fn load(path: &Path) -> Result<Self> {
        let (tensors, metadata) = read_safetensors(path)?;
        let json = metadata
            .get(CASE_METADATA)
            .with_context(|| format!("{}: no `spark_case` metadata: not a parity case", path.display()))?;
        let meta: CaseMeta = serde_json::from_str(json).with_context(|| format!("{}: invalid `spark_case` metadata", path.display()))?;
        let case = GoldenCase { meta, tensors };
        case.validate().with_context(|| format!("{}: inconsistent parity case", path.display()))?;
        Ok(case)
    }

    fn validate(&self) -> Result<()> {
        let m = &self.meta;
        let (b, s) = (m.batch, m.input_size);
        let input = self.tensors.get("in.input").context("missing in.input")?;
        if !matches!(input.data, HostData::F32(_)) || input.shape != [b, 3, s, s] {
            bail!("in.input is {} {:?}, expected F32 [{b}, 3, {s}, {s}]", input.data.dtype_name(), input.shape);
        }
        let active = self.tensors.get("in.active").context("missing in.active")?;
        let f = s / 32;
        if !matches!(active.data, HostData::U8(_)) || active.shape != [b, 1, f, f] {
            bail!("in.active is {} {:?}, expected U8 [{b}, 1, {f}, {f}]", active.data.dtype_name(), active.shape);
        }
        // The step count drives a loop on the GPU: bound it by what the file holds.
        if m.optimizer.steps != m.losses.len() {
            bail!("optimizer.steps is {} but {} losses are recorded", m.optimizer.steps, m.losses.len());
        }
        if let Some(k) = (0..m.optimizer.steps).find(|k| !self.tensors.contains_key(&format!("out.loss.{k}"))) {
            bail!("missing out.loss.{k} for step {k} of {}", m.optimizer.steps);
        }
        match m.arch.as_str() {
            "resnet" if m.block.is_some() && m.layers.is_some() && m.channels.is_some() && m.stem_width.is_some() => {}
            "convnext" if m.depths.is_some() && m.dims.is_some() => {}
            a => bail!("arch {a:?} without its fields (resnet: block/layers/channels/stem_width; convnext: depths/dims)"),
        }
        Ok(())
    }

    /// Every initial parameter and BN buffer (`in.<name>`, prefix stripped), without the
    /// batch (`in.input`) and mask (`in.active`): the same naming as a SparK state dict.
    pub fn inputs(&self) -> TensorMap {
        case_inputs(&self.tensors)
    }

    /// The normalised image batch, f32 `[B, 3, H, W]`.
    pub fn input(&self) -> &HostTensor {
        &self.tensors["in.input"]
    }

    /// The patch mask, u8 `[B, 1, H/32, W/32]`, 1 = visible.
    pub fn active(&self) -> &HostTensor {
        &self.tensors["in.active"]
    }

    /// The reference keys to compare (`out.*`, `grad0.*`, `after.*`), sorted.
    pub fn output_keys(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).filter(|k| !k.starts_with("in.")).collect()
    }

    /// Compares `ours` with the reference under `key`, using the case's noise floor and,
    /// for `after.<param>`, the initial value `in.<param>`.
    pub fn check(&self, key: &str, ours: &HostTensor) -> Result<Check> {
        let reference = self.tensors.get(key).with_context(|| format!("no reference tensor {key}"))?;
        let initial = key.strip_prefix("after.").and_then(|n| self.tensors.get(&format!("in.{n}")));
        let error = error_metric(key, ours, reference, initial);
        let tolerance = tolerance(key, self.meta.noise_floor.get(key).copied());
        let max_abs = max_abs_diff(ours, reference);
        Ok(Check { key: key.to_string(), max_abs, error, tolerance, pass: error <= tolerance })
    }
}

fn is_bn_stat(key: &str) -> bool {
    key.ends_with(".running_mean") || key.ends_with(".running_var")
}

fn is_count(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
}

/// max(base, 10 × noise floor); base 1e-5 for losses, 5e-4 for gradients, 5e-3 for
/// parameter updates, 1e-4 for features, the reconstruction and BN running statistics,
/// 0 for `num_batches_tracked` (exact).
pub fn tolerance(key: &str, noise_floor: Option<f64>) -> f64 {
    let base: f64 = if key.starts_with("out.loss.") {
        1e-5
    } else if key.starts_with("grad0.") {
        5e-4
    } else if is_count(key) {
        0.0
    } else if key.starts_with("after.") && !is_bn_stat(key) {
        5e-3
    } else {
        1e-4
    };
    base.max(10.0 * noise_floor.unwrap_or(0.0))
}

/// Largest |a − b| in f64; infinite on a shape mismatch or a non-finite difference
/// (`f64::max` would silently drop a NaN).
pub fn max_abs_diff(a: &HostTensor, b: &HostTensor) -> f64 {
    if a.shape != b.shape {
        return f64::INFINITY;
    }
    let mut m = 0f64;
    for (x, y) in a.to_f64().into_iter().zip(b.to_f64()) {
        let d = (x - y).abs();
        if !d.is_finite() {
            return f64::INFINITY;
        }
        m = m.max(d);
    }
    m
}

fn max_rel(ours: &HostTensor, reference: &HostTensor) -> f64 {
    let diff = max_abs_diff(ours, reference);
    let scale = reference.to_f64().iter().fold(0f64, |m, x| m.max(x.abs()));
    if scale > 0.0 { diff / scale } else { diff }
}

/// The README error metric for `key`:
/// - `out.loss.K`: absolute difference;
/// - `…num_batches_tracked`: 0 when equal, infinite otherwise;
/// - `after.<parameter>`: ‖(ours − initial) − (ref − initial)‖₂ / ‖ref − initial‖₂ (the
///   plain ‖ours − ref‖₂ when the reference update is zero); needs `initial`, infinite
///   without it;
/// - everything else (`out.enc.I`, `out.rec`, `grad0.*`, and the BN running statistics
///   under `after.`, which are buffers, not parameter updates): max |ours − ref| divided by
///   the reference's largest magnitude.
///
/// Any shape mismatch or non-finite value gives infinity, so `error <= tol` is a safe test.
pub fn error_metric(key: &str, ours: &HostTensor, reference: &HostTensor, initial: Option<&HostTensor>) -> f64 {
    if ours.shape != reference.shape {
        return f64::INFINITY;
    }
    if key.starts_with("out.loss.") {
        return max_abs_diff(ours, reference);
    }
    if is_count(key) {
        let equal = ours.to_f64() == reference.to_f64();
        return if equal { 0.0 } else { f64::INFINITY };
    }
    if key.starts_with("after.") && !is_bn_stat(key) {
        let Some(init) = initial.filter(|i| i.shape == reference.shape) else { return f64::INFINITY };
        let (o, r, i) = (ours.to_f64(), reference.to_f64(), init.to_f64());
        let (mut num, mut den) = (0f64, 0f64);
        for ((o, r), i) in o.iter().zip(&r).zip(&i) {
            // (o − i) − (r − i) = o − r exactly in real arithmetic; keep the README's form so
            // rounding matches what other tools compute.
            let d = (o - i) - (r - i);
            num += d * d;
            den += (r - i) * (r - i);
        }
        let e = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
        return if e.is_finite() { e } else { f64::INFINITY };
    }
    max_rel(ours, reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str) -> GoldenCase {
        GoldenCase::load(&golden_dir().join(format!("{name}.safetensors"))).unwrap()
    }

    /// Channel count of encoder feature map `i`.
    fn enc_channels(m: &CaseMeta, i: usize) -> usize {
        match m.arch.as_str() {
            "resnet" => m.channels.as_ref().unwrap()[i] * if m.block.as_deref() == Some("bottleneck") { 4 } else { 1 },
            _ => m.dims.as_ref().unwrap()[i],
        }
    }

    #[test]
    fn meta_parses() {
        let b = load("resnet_basic_tiny").meta;
        assert_eq!((b.arch.as_str(), b.block.as_deref()), ("resnet", Some("basic")));
        assert_eq!(b.layers, Some(vec![1, 1, 1, 1]));
        assert_eq!(b.channels, Some(vec![8, 16, 32, 64]));
        assert_eq!((b.stem_width, b.input_size, b.batch, b.dec_width), (Some(8), 64, 2, 32));
        assert_eq!((b.mask_ratio, b.densify_norm.as_str()), (0.6, "bn"));
        assert_eq!(b.optimizer.steps, 2);
        assert_eq!((b.optimizer.lr, b.optimizer.wd, b.optimizer.beta1, b.optimizer.beta2), (0.002, 0.04, 0.9, 0.95));
        assert_eq!((b.optimizer.eps, b.optimizer.max_grad_norm), (1e-6, 5.0));
        assert_eq!(b.losses.len(), 2);
        assert!(b.depths.is_none() && b.dims.is_none());

        let k = load("resnet_bottleneck_tiny").meta;
        assert_eq!((k.block.as_deref(), k.input_size, k.dec_width), (Some("bottleneck"), 96, 64));

        let c = load("convnext_tiny").meta;
        assert_eq!(c.arch, "convnext");
        assert_eq!((c.depths, c.dims), (Some(vec![1, 1, 1, 1]), Some(vec![16, 32, 64, 128])));
        assert_eq!((c.densify_norm.as_str(), c.optimizer.beta2), ("ln", 0.999));
        assert!(c.block.is_none() && c.stem_width.is_none());
    }

    #[test]
    fn keys_and_shapes() {
        for name in GOLDEN_CASES {
            let case = load(name);
            let m = &case.meta;
            let (b, s) = (m.batch, m.input_size);
            assert_eq!(case.input().shape, [b, 3, s, s], "{name}");
            assert_eq!(case.active().shape, [b, 1, s / 32, s / 32], "{name}");
            let HostData::U8(mask) = &case.active().data else { panic!() };
            assert!(mask.iter().all(|&v| v <= 1) && mask.contains(&0) && mask.contains(&1), "{name}");

            let inputs = case.inputs();
            assert!(!inputs.contains_key("input") && !inputs.contains_key("active"));
            assert!(inputs.keys().all(|k| ["sparse_encoder.sp_cnn.", "densify_norms.", "densify_projs.", "mask_tokens.", "dense_decoder."]
                .iter()
                .any(|p| k.starts_with(p))));
            for i in 0..4 {
                assert!(inputs.contains_key(&format!("mask_tokens.{i}")), "{name}");
            }

            // after.* covers every parameter and buffer; grad0.* every float parameter.
            let after: Vec<_> = case.tensors.keys().filter_map(|k| k.strip_prefix("after.")).collect();
            assert_eq!(after, inputs.keys().map(String::as_str).collect::<Vec<_>>(), "{name}");
            for (k, t) in case.tensors.iter().filter(|(k, _)| k.starts_with("grad0.") || k.starts_with("after.")) {
                let n = k.split_once('.').unwrap().1;
                assert_eq!(t.shape, inputs[n].shape, "{name} {k}");
            }
            let params: Vec<_> = inputs.keys().filter(|k| !is_bn_stat(k) && !is_count(k)).map(String::as_str).collect();
            let grads: Vec<_> = case.tensors.keys().filter_map(|k| k.strip_prefix("grad0.")).collect();
            assert_eq!(grads, params, "{name}");

            for i in 0..4 {
                let t = &case.tensors[&format!("out.enc.{i}")];
                let h = s / (4 << i);
                assert_eq!(t.shape, [b, enc_channels(m, i), h, h], "{name} out.enc.{i}");
            }
            assert_eq!(case.tensors["out.rec"].shape, [b, 3, s, s]);
            for (k, &l) in m.losses.iter().enumerate() {
                let t = &case.tensors[&format!("out.loss.{k}")];
                assert_eq!(t.data, HostData::F64(vec![l]), "{name} loss {k}");
            }
            assert!(!case.tensors.contains_key(&format!("out.loss.{}", m.losses.len())));
            // Every compared tensor has a noise floor.
            for k in case.output_keys() {
                assert!(m.noise_floor.contains_key(k), "{name}: no noise floor for {k}");
            }
        }
    }

    #[test]
    fn reference_passes_against_itself() {
        for name in GOLDEN_CASES {
            let case = load(name);
            for k in case.output_keys() {
                let c = case.check(k, &case.tensors[k]).unwrap();
                assert!(c.pass && c.error == 0.0 && c.max_abs == 0.0, "{name}: {c:?}");
            }
        }
    }

    #[test]
    fn metric_rules() {
        let case = load("resnet_basic_tiny");
        let w = "after.sparse_encoder.sp_cnn.conv1.weight";
        let (init, reference) = (&case.tensors["in.sparse_encoder.sp_cnn.conv1.weight"], &case.tensors[w]);
        // Doubling the update is a relative error of exactly 1 in the update metric.
        let doubled: Vec<f32> = init.to_f32().iter().zip(reference.to_f32()).map(|(i, r)| i + 2.0 * (r - i)).collect();
        let ours = HostTensor::f32(reference.shape.clone(), doubled);
        let e = error_metric(w, &ours, reference, Some(init));
        assert!((e - 1.0).abs() < 1e-3, "{e}");
        assert!(!case.check(w, &ours).unwrap().pass);
        assert_eq!(error_metric(w, reference, reference, None), f64::INFINITY);

        // Running statistics are buffers: max-abs over the reference's magnitude, base 1e-4.
        let rm = "after.sparse_encoder.sp_cnn.bn1.running_mean";
        let r = &case.tensors[rm];
        let mut v = r.to_f32();
        let scale = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        v[3] += 0.5 * scale;
        let e = error_metric(rm, &HostTensor::f32(r.shape.clone(), v), r, None);
        assert!((e - 0.5).abs() < 1e-5, "{e}");
        assert_eq!(tolerance(rm, Some(1e-7)), 1e-4);

        let nb = "after.sparse_encoder.sp_cnn.bn1.num_batches_tracked";
        let n = &case.tensors[nb];
        assert_eq!(n.data, HostData::I64(vec![2]));
        assert_eq!(error_metric(nb, n, n, None), 0.0);
        let off = HostTensor::new(vec![], HostData::I64(vec![1])).unwrap();
        assert_eq!(error_metric(nb, &off, n, None), f64::INFINITY);
        assert!(!case.check(nb, &off).unwrap().pass);

        let loss = &case.tensors["out.loss.0"];
        let HostData::F64(l) = &loss.data else { panic!() };
        let near = HostTensor::new(vec![1], HostData::F64(vec![l[0] + 3e-6])).unwrap();
        assert!((error_metric("out.loss.0", &near, loss, None) - 3e-6).abs() < 1e-12);

        // NaN and shape mismatches never pass.
        let rec = &case.tensors["out.rec"];
        let mut bad = rec.to_f32();
        bad[0] = f32::NAN;
        assert_eq!(error_metric("out.rec", &HostTensor::f32(rec.shape.clone(), bad), rec, None), f64::INFINITY);
        assert_eq!(error_metric("out.rec", &case.tensors["out.enc.0"], rec, None), f64::INFINITY);
    }

    #[test]
    fn tolerance_bases() {
        assert_eq!(tolerance("out.loss.1", None), 1e-5);
        assert_eq!(tolerance("out.enc.2", None), 1e-4);
        assert_eq!(tolerance("out.rec", Some(1e-6)), 1e-4);
        assert_eq!(tolerance("out.rec", Some(1e-4)), 1e-3);
        assert_eq!(tolerance("grad0.dense_decoder.proj.weight", None), 5e-4);
        assert_eq!(tolerance("after.dense_decoder.proj.weight", None), 5e-3);
        assert_eq!(tolerance("after.densify_norms.0.running_var", None), 1e-4);
        assert_eq!(tolerance("after.densify_norms.0.num_batches_tracked", Some(0.0)), 0.0);
    }

    #[test]
    fn not_a_case_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plain.safetensors");
        let mut m = TensorMap::new();
        m.insert("x".into(), HostTensor::f32(vec![1], vec![1.0]));
        super::super::tensors::write_safetensors_atomic(&p, &m, &Default::default()).unwrap();
        let e = format!("{:#}", GoldenCase::load(&p).unwrap_err());
        assert!(e.contains("plain.safetensors") && e.contains("spark_case"), "{e}");
    }
}
