//! Reconstruction grids: the official visualisation (per image one row of four panels:
//! input, masked input with masked patches grey, the raw reconstruction, and the
//! reconstruction with the visible patches pasted back), shared by `spark-wgpu
//! reconstruct` and by `pretrain --viz-every N`, which draws the same held-out images
//! under the same mask every N steps so a user can watch them improve.
//!
//! As the official `SparK.forward(vis=True)`: eval-mode BatchNorm, the reconstruction
//! de-normalised with each patch's own mean and std of the input, then ImageNet
//! de-normalisation and clamping.

use anyhow::{Result, anyhow};
use image::{Rgb, RgbImage};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use rand::SeedableRng;
use std::path::{Path, PathBuf};

use crate::data::{IMAGENET_MEAN, IMAGENET_STD, ImageSource, ProceduralSource, center_crop_normalized, sample_mask};
use crate::gpu::GpuContext;
use crate::model::{PATCH, SparkModel};
use crate::sparse::PatchMask;
use crate::train::plot::{FONT_FAMILY, register_font, save_png_atomic};
use crate::train::{PretrainConfig, checkpoint};

/// Result of reconstructing a batch, in normalised channels-last layout.
pub struct Reconstruction {
    /// Image side in pixels.
    pub size: usize,
    /// The normalised input images, (batch, size, size, 3).
    pub inputs: Vec<f32>,
    /// The decoder's reconstruction, same layout.
    pub rec: Vec<f32>,
    /// The patch mask used.
    pub mask: PatchMask,
    /// Per-image loss.
    pub losses: Vec<f32>,
}

fn to_pixel(v: f32, c: usize) -> u8 {
    ((v * IMAGENET_STD[c] + IMAGENET_MEAN[c]).clamp(0.0, 1.0) * 255.0).round() as u8
}

/// The four panels of every image, one row per image.
pub fn render_grid(r: &Reconstruction) -> RgbImage {
    let s = r.size;
    let f = s / PATCH;
    let b = r.mask.batch;
    let mut grid = RgbImage::new(4 * s as u32, (b * s) as u32);
    for i in 0..b {
        let img = &r.inputs[i * s * s * 3..(i + 1) * s * s * 3];
        let rec = &r.rec[i * s * s * 3..(i + 1) * s * s * 3];
        // Per-patch mean and std (unbiased, + 1e-6) of the input, as the loss target.
        let mut denorm = vec![0f32; s * s * 3];
        for py in 0..f {
            for px in 0..f {
                let idx = |y: usize, x: usize, c: usize| ((py * PATCH + y) * s + px * PATCH + x) * 3 + c;
                let n = (PATCH * PATCH * 3) as f64;
                let mut sum = 0f64;
                for y in 0..PATCH {
                    for x in 0..PATCH {
                        for c in 0..3 {
                            sum += img[idx(y, x, c)] as f64;
                        }
                    }
                }
                let mean = sum / n;
                let mut var = 0f64;
                for y in 0..PATCH {
                    for x in 0..PATCH {
                        for c in 0..3 {
                            var += (img[idx(y, x, c)] as f64 - mean).powi(2);
                        }
                    }
                }
                let std = (var / (n - 1.0) + 1e-6).sqrt();
                for y in 0..PATCH {
                    for x in 0..PATCH {
                        for c in 0..3 {
                            denorm[idx(y, x, c)] = (rec[idx(y, x, c)] as f64 * std + mean) as f32;
                        }
                    }
                }
            }
        }
        for y in 0..s {
            for x in 0..s {
                let visible = r.mask.is_visible(i, y / PATCH, x / PATCH);
                let px = |v: &[f32]| Rgb([to_pixel(v[0], 0), to_pixel(v[1], 1), to_pixel(v[2], 2)]);
                let o = (y * s + x) * 3;
                let input = px(&img[o..o + 3]);
                let recon = px(&denorm[o..o + 3]);
                let gy = (i * s + y) as u32;
                grid.put_pixel(x as u32, gy, input);
                grid.put_pixel((s + x) as u32, gy, if visible { input } else { Rgb([128, 128, 128]) });
                grid.put_pixel((2 * s + x) as u32, gy, recon);
                grid.put_pixel((3 * s + x) as u32, gy, if visible { input } else { recon });
            }
        }
    }
    grid
}

/// Eval-mode forward of `model` (built without optimizer) on `inputs` under `mask`; the
/// per-image loss is the mean over masked patches, as the training loss.
pub fn reconstruct_batch(model: &mut SparkModel, inputs: Vec<f32>, mask: PatchMask) -> Result<Reconstruction> {
    let ctx = model.ctx();
    let size = model.config().input_size;
    let f = size / PATCH;
    let b = mask.batch;
    model.set_batch(&inputs, &mask)?;
    model.run_forward()?;
    let rec = ctx.read_f32(model.graph().tensor(model.rec()))?;
    let per_patch = ctx.read_f32(&model.loss().per_patch)?;
    let losses: Vec<f32> = (0..b)
        .map(|i| {
            let masked = (0..f * f).filter(|&p| mask.visible[i * f * f + p] == 0).count().max(1);
            per_patch[i * f * f..(i + 1) * f * f].iter().sum::<f32>() / masked as f32
        })
        .collect();
    Ok(Reconstruction { size, inputs, rec, mask, losses })
}

/// The panels of a reconstruction figure, left to right.
pub const COLUMN_TITLES: [&str; 4] = ["input", "masked", "reconstruction", "pasted"];
/// Height of the title band above and of the caption band below the panels, in pixels.
pub const TITLE_BAND: u32 = 22;

/// [`render_grid`] with the column titles above and `caption` below.
pub fn render_titled_grid(r: &Reconstruction, caption: &str) -> Result<RgbImage> {
    register_font();
    let grid = render_grid(r);
    let (w, h) = (grid.width(), grid.height() + 2 * TITLE_BAND);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let rows = grid.as_raw().len() / 3 / w as usize;
    let off = (TITLE_BAND * w * 3) as usize;
    buf[off..off + rows * w as usize * 3].copy_from_slice(grid.as_raw());
    {
        let err = |e: &dyn std::fmt::Display| anyhow!("drawing the reconstruction grid: {e}");
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        // Titles scale with the panel (a 32-px panel still gets readable 10-px text).
        let px = ((r.size as u32) / 8).clamp(10, 16);
        let style = TextStyle::from((FONT_FAMILY, px).into_font()).color(&BLACK);
        let centre = style.pos(Pos::new(HPos::Center, VPos::Center));
        for (c, t) in COLUMN_TITLES.iter().enumerate() {
            let x = (c * r.size + r.size / 2) as i32;
            root.draw_text(t, &centre, (x, (TITLE_BAND / 2) as i32)).map_err(|e| err(&e))?;
        }
        let left = style.pos(Pos::new(HPos::Left, VPos::Center));
        root.draw_text(caption, &left, (4, (h - TITLE_BAND / 2) as i32)).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("grid buffer size"))
}

/// Images in a `--viz-every` grid.
pub const VIZ_IMAGES: usize = 4;
/// Seed offset of the held-out procedural images and of the fixed viz mask, so neither
/// coincides with a training image or mask of the same `--seed`.
const VIZ_SEED: u64 = 0x5649_5a00; // "VIZ\0"
/// Sub-folder of the run directory for the grids.
pub const VIZ_DIR: &str = "viz";

/// The fixed images and mask of `--viz-every` and an eval-mode copy of the model.
pub struct Viz<'c> {
    model: SparkModel<'c>,
    inputs: Vec<f32>,
    mask: PatchMask,
    /// Folder the figures are written to.
    pub dir: PathBuf,
}

impl<'c> Viz<'c> {
    /// Procedural runs: `VIZ_IMAGES` procedural images of another seed (never trained on).
    /// Folder runs: the folder's last `VIZ_IMAGES` images, centre-cropped. They are also
    /// in the training set (a folder is one set; excluding them would change the data a
    /// run trains on), so for a truly held-out view point `reconstruct` at other images.
    pub fn new(ctx: &'c GpuContext, cfg: &PretrainConfig, source: &dyn ImageSource, run_dir: &Path) -> Result<Self> {
        let size = cfg.spark.input_size;
        let f = cfg.spark.grid();
        let held_out: Box<dyn ImageSource + '_> = match &cfg.data {
            None => Box::new(ProceduralSource::new(VIZ_IMAGES, size as u32, cfg.seed.wrapping_add(VIZ_SEED))),
            Some(_) => Box::new(Tail { inner: source, n: VIZ_IMAGES.min(source.len()) }),
        };
        let mut inputs = vec![];
        let mut n = 0;
        for i in 0..held_out.len() {
            match held_out.load(i) {
                Ok(img) => {
                    inputs.extend(center_crop_normalized(&img, size as u32));
                    n += 1;
                }
                Err(e) => eprintln!("warning: --viz-every: skipping {}: {e:#}", held_out.describe(i)),
            }
        }
        if n == 0 {
            anyhow::bail!("--viz-every: none of the images for the reconstruction grid could be read");
        }
        let visible = sample_mask(&mut rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(VIZ_SEED)), n, f, cfg.spark.mask_ratio);
        let mask = PatchMask::new(n, f, f, visible);
        let model = SparkModel::builder(ctx, cfg.spark.clone(), n).without_init().build()?;
        let dir = run_dir.join(VIZ_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| anyhow!("creating {}: {e}", dir.display()))?;
        Ok(Self { model, inputs, mask, dir })
    }

    /// Copy the training model's weights and BatchNorm statistics, reconstruct, and write
    /// `viz/step_<step>.png`. Returns the path and the mean masked-patch loss.
    pub fn write(&mut self, trained: &SparkModel, step: usize) -> Result<(PathBuf, f32)> {
        let state = checkpoint::state_dict(trained)?;
        checkpoint::load(&mut self.model, &state, Path::new("<training model>"), true)?;
        let r = reconstruct_batch(&mut self.model, self.inputs.clone(), self.mask.clone())?;
        let loss = r.losses.iter().sum::<f32>() / r.losses.len() as f32;
        let img = render_titled_grid(&r, &format!("step {step}   held-out masked-patch loss {loss:.4}"))?;
        let path = self.dir.join(format!("step_{step:07}.png"));
        save_png_atomic(&img, &path)?;
        Ok((path, loss))
    }
}

/// The last `n` images of a source.
struct Tail<'a> {
    inner: &'a dyn ImageSource,
    n: usize,
}

impl ImageSource for Tail<'_> {
    fn len(&self) -> usize {
        self.n
    }
    fn load(&self, i: usize) -> Result<RgbImage> {
        self.inner.load(self.inner.len() - self.n + i)
    }
    fn describe(&self, i: usize) -> String {
        self.inner.describe(self.inner.len() - self.n + i)
    }
}
