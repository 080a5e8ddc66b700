//! `spark-wgpu reconstruct`: the official visualisation of masked reconstructions.
//!
//! Per image one row of four panels: input, masked input (masked patches grey), the raw
//! reconstruction, and the reconstruction with the visible patches pasted back. As the
//! official `SparK.forward(vis=True)`: eval-mode BatchNorm, the reconstruction
//! de-normalised with each patch's own mean and std of the input, then ImageNet
//! de-normalisation and clamping.

use anyhow::{Context as _, Result, bail};
use rand::SeedableRng;
use std::path::PathBuf;

use super::GpuArgs;
use crate::data::{center_crop_normalized, sample_mask};
use crate::model::infer::infer_architecture;
use crate::model::{SparkConfig, SparkModel};
use crate::sparse::PatchMask;
use crate::train::checkpoint::{load, read_any};
use crate::train::ranges as R;
pub use crate::train::viz::{Reconstruction, render_grid};
use crate::train::viz::reconstruct_batch;

/// Options of `spark-wgpu reconstruct`.
#[derive(clap::Args, Debug)]
pub struct ReconstructArgs {
    /// A spark-wgpu checkpoint or an official SparK .pth with decoder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Images (any size: resized and centre-cropped to the input size).
    #[arg(long, num_args = 1.., required = true)]
    pub image: Vec<PathBuf>,
    /// The PNG grid to write.
    #[arg(long, default_value = "reconstruction.png")]
    pub out: PathBuf,
    /// Fraction of patches masked (ignored with `--mask`).
    #[arg(long, default_value_t = crate::model::config::DEFAULT_MASK_RATIO, allow_negative_numbers = true, value_parser = |s: &str| R::MASK_RATIO.parse(s))]
    pub mask_ratio: f64,
    /// Seed of the random masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Explicit patch mask for every image, row-major, 1 = visible (e.g. 0101… of f·f digits).
    #[arg(long)]
    pub mask: Option<String>,
    /// Input size (default: the checkpoint's, else 224).
    #[arg(long, value_parser = |s: &str| R::INPUT_SIZE.parse(s))]
    pub input_size: Option<usize>,
    /// Also write per-image masked-patch losses as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Reconstruct the given images with a checkpoint and write the PNG grid.
pub fn run(gpu: &GpuArgs, a: &ReconstructArgs) -> Result<()> {
    let ctx = gpu.open()?;
    let (tensors, meta) = read_any(&a.checkpoint)?;
    let (encoder, dec_width, densify_norm) =
        infer_architecture(&tensors).with_context(|| format!("reading {}", a.checkpoint.display()))?;
    let stored: Option<usize> = meta
        .get("spark_wgpu_config")
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        .and_then(|v| v["spark"]["input_size"].as_u64())
        .map(|v| v as usize);
    // Official .pth checkpoints store their input size at the top level.
    let official = || {
        crate::io::pth::load_pth(&a.checkpoint).ok()?.get("input_size")?.as_int().map(|v| v as usize)
    };
    let size = a.input_size.or(stored).or_else(official).unwrap_or(crate::model::config::DEFAULT_INPUT_SIZE);
    let cfg = SparkConfig { encoder, input_size: size, dec_width, densify_norm, mask_ratio: a.mask_ratio };
    cfg.validate()?;
    let f = cfg.grid();
    let b = a.image.len();
    let mut inputs = Vec::with_capacity(b * size * size * 3);
    for p in &a.image {
        let img = crate::data::decode_image_file(p).with_context(|| format!("reading image {}", p.display()))?;
        inputs.extend(center_crop_normalized(&img, size as u32));
    }
    let visible: Vec<u8> = match &a.mask {
        Some(m) => {
            let one: Vec<u8> = m.chars().filter(|c| !c.is_whitespace()).map(|c| (c == '1') as u8).collect();
            if one.len() != f * f || m.chars().any(|c| !matches!(c, '0' | '1' | ' ')) {
                bail!("--mask must be {} digits 0/1 (a {f}×{f} patch grid at --input-size {size}), got {m:?}", f * f);
            }
            one.iter().copied().cycle().take(b * f * f).collect()
        }
        None => sample_mask(&mut rand_chacha::ChaCha8Rng::seed_from_u64(a.seed), b, f, a.mask_ratio),
    };
    let mask = PatchMask::new(b, f, f, visible);
    let per_image = mask.visible_count() / b;
    let mut model = SparkModel::builder(&ctx, cfg, b).visible_per_image(per_image).without_init().build()?;
    let r = load(&mut model, &tensors, &a.checkpoint, true)?;
    // Official checkpoints also carry the ImageNet statistics and a constant (imn_m, imn_s, norm_black).
    let unexpected: Vec<&String> = r.unexpected.iter().filter(|k| !matches!(k.as_str(), "imn_m" | "imn_s" | "norm_black")).collect();
    if !unexpected.is_empty() {
        eprintln!("note: {} tensors of the checkpoint are not used by the model (e.g. {})", unexpected.len(), unexpected[0]);
    }
    let rc = reconstruct_batch(&mut model, inputs, mask)?;
    crate::train::plot::save_image_atomic_by_extension(&render_grid(&rc), &a.out)?;
    println!("wrote {} ({} rows × 4 panels of {size}×{size})", a.out.display(), b);
    if let Some(j) = &a.json {
        let v = serde_json::json!({
            "checkpoint": a.checkpoint.display().to_string(),
            "input_size": size,
            "images": a.image.iter().zip(&rc.losses).map(|(p, l)| serde_json::json!({"image": p.display().to_string(), "masked_patch_loss": l})).collect::<Vec<_>>(),
        });
        std::fs::write(j, serde_json::to_string_pretty(&v)?).with_context(|| format!("writing {}", j.display()))?;
    }
    Ok(())
}
