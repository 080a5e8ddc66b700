//! The data pipeline of `spark-wgpu pretrain`: image sources (a folder, or procedural
//! images), the official SparK augmentation, patch-mask sampling, and a seeded,
//! resumable, prefetching loader.

mod loader;
mod mask;
/// The seeded streams (shared with the drop-path draws; see `crate::rng`).
pub use crate::rng;
mod source;
mod transform;

pub use loader::{Batch, Loader, LoaderConfig};
pub use mask::{len_keep, sample_mask};
pub use source::{decode_image_file, image_extensions, jpeg_is_complete, FolderSource, ImageSource, ProceduralSource};
pub use transform::{
    augment, center_crop_normalized, normalize, random_resized_crop_params, CropBox, CROP_RATIO, CROP_SCALE,
};

/// timm's `IMAGENET_DEFAULT_MEAN`, used by the official Normalize.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// timm's `IMAGENET_DEFAULT_STD`.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
