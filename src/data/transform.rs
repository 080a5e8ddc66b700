//! Image transforms: the official pre-training augmentation and the evaluation crop.
//!
//! Official (`pretrain/utils/imagenet.py`): `RandomResizedCrop(size, scale=(0.67, 1.0),
//! interpolation=BICUBIC)` (default ratio 3/4…4/3), `RandomHorizontalFlip()`, `ToTensor()`,
//! `Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)`. The crop parameters follow
//! torchvision's `RandomResizedCrop.get_params` step by step (draw order included); the
//! random numbers themselves come from our seeded ChaCha streams, not torch's generator.
//! Bicubic resampling is the image crate's Catmull-Rom filter: the same a = -0.5 cubic as
//! PIL's BICUBIC, with the kernel widened by the scale factor when shrinking (antialias,
//! as PIL does); pixels may differ from PIL by rounding (PIL keeps an 8-bit intermediate
//! between its two passes, the image crate an f32 one).

use super::rng::{below, py_round, uniform, unit};
use super::{IMAGENET_MEAN, IMAGENET_STD};
use image::imageops::{self, FilterType};
use image::{GenericImageView, RgbImage};
use rand_chacha::ChaCha8Rng;

/// `scale` of the official RandomResizedCrop: fraction of the image area kept.
pub const CROP_SCALE: (f64, f64) = (0.67, 1.0);
/// torchvision's default `ratio` (width / height of the crop).
pub const CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// A crop rectangle in pixels: left `x`, top `y`, width `w`, height `h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

/// torchvision `RandomResizedCrop.get_params(img, scale, ratio)`: up to 10 tries of a
/// random area fraction and log-uniform aspect ratio whose rounded box fits the image,
/// then the fallback: the largest centred box whose ratio is clamped into `ratio`
/// (the whole image when its own ratio is inside). Images smaller than the output size
/// need nothing special: the box is always inside the image and is resized to the
/// output size afterwards, upsampling when the box is small (as torchvision does).
pub fn random_resized_crop_params(width: u32, height: u32, rng: &mut ChaCha8Rng) -> CropBox {
    let (wf, hf) = (width as f64, height as f64);
    let area = wf * hf;
    let (log_lo, log_hi) = (CROP_RATIO.0.ln(), CROP_RATIO.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, CROP_SCALE.0, CROP_SCALE.1);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let w = py_round((target_area * aspect).sqrt());
        let h = py_round((target_area / aspect).sqrt());
        if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
            // torch.randint(0, height - h + 1) for the top, then the same for the left.
            let y = below(rng, (height as i64 - h + 1) as u64) as u32;
            let x = below(rng, (width as i64 - w + 1) as u64) as u32;
            return CropBox { x, y, w: w as u32, h: h as u32 };
        }
    }
    let in_ratio = wf / hf;
    let (w, h) = if in_ratio < CROP_RATIO.0 {
        (width, py_round(wf / CROP_RATIO.0) as u32)
    } else if in_ratio > CROP_RATIO.1 {
        (py_round(hf * CROP_RATIO.1) as u32, height)
    } else {
        (width, height)
    };
    // Rounding can exceed the image by one pixel only in degenerate 1-pixel cases.
    let (w, h) = (w.clamp(1, width), h.clamp(1, height));
    CropBox { x: (width - w) / 2, y: (height - h) / 2, w, h }
}

/// ToTensor + Normalize of an RGB8 image into channels-last f32 `[h, w, 3]`, optionally
/// mirrored left–right. Same f32 operations as torchvision: `v / 255`, `- mean`, `/ std`.
pub fn normalize(img: &RgbImage, flip: bool) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    let raw = img.as_raw();
    for y in 0..h as usize {
        let row = &raw[y * w as usize * 3..(y + 1) * w as usize * 3];
        for x in 0..w as usize {
            let sx = if flip { w as usize - 1 - x } else { x };
            for c in 0..3 {
                let v = row[sx * 3 + c] as f32 / 255.0;
                out.push((v - IMAGENET_MEAN[c]) / IMAGENET_STD[c]);
            }
        }
    }
    out
}

/// The official training augmentation of one image: random resized crop to
/// `size`×`size` (bicubic), horizontal flip with probability 0.5, normalisation.
/// Returns channels-last f32 `[size, size, 3]`.
pub fn augment(img: &RgbImage, size: u32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    assert!(img.width() > 0 && img.height() > 0, "augment: empty image");
    let b = random_resized_crop_params(img.width(), img.height(), rng);
    let crop = imageops::resize(&*img.view(b.x, b.y, b.w, b.h), size, size, FilterType::CatmullRom);
    // RandomHorizontalFlip: `if torch.rand(1) < p: flip`.
    let flip = unit(rng) < 0.5;
    normalize(&crop, flip)
}

/// Evaluation transform (`Resize(size)` + `CenterCrop(size)`, bicubic, then normalise),
/// used for reconstruction demos: the shorter side becomes `size` (the longer one
/// `int(size * long / short)`, as torchvision), then the centred `size`×`size` square.
pub fn center_crop_normalized(img: &RgbImage, size: u32) -> Vec<f32> {
    assert!(img.width() > 0 && img.height() > 0, "center_crop_normalized: empty image");
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (size, ((size as f64 * h as f64 / w as f64) as u32).max(size))
    } else {
        (((size as f64 * w as f64 / h as f64) as u32).max(size), size)
    };
    let resized = imageops::resize(img, nw, nh, FilterType::CatmullRom);
    // CenterCrop: int(round((H - size) / 2.0)), ties to even as in Python.
    let top = py_round((nh - size) as f64 / 2.0) as u32;
    let left = py_round((nw - size) as f64 / 2.0) as u32;
    let crop = resized.view(left, top, size, size).to_image();
    normalize(&crop, false)
}
