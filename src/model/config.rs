//! Model configuration: encoder architecture, presets, SparK settings.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::ranges::{FloatRange, IntRange, open};

/// The encoder's architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum EncoderConfig {
    /// timm ResNet (default 7×7 stem of width 64, 3×3/2 max-pool).
    Resnet {
        /// Bottleneck blocks (ResNet-50 and up) rather than basic ones.
        bottleneck: bool,
        /// Blocks per stage.
        layers: Vec<usize>,
        /// Stage widths before the bottleneck expansion.
        channels: Vec<usize>,
    },
    /// Official ConvNeXt.
    Convnext {
        /// Blocks per stage.
        depths: Vec<usize>,
        /// Stage widths.
        dims: Vec<usize>,
    },
    /// An encoder defined outside the crate (a [`crate::model::Backbone`], given to the
    /// builder with [`crate::model::SparkBuilder::backbone`]): its name and feature widths.
    Custom {
        /// The backbone's name (saved in `config.json`).
        name: String,
        /// Channels of its four feature maps, finest first.
        feature_widths: Vec<usize>,
    },
}

/// The norm of the densify layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DensifyNorm {
    /// Sparse BatchNorm (ResNets).
    Bn,
    /// LayerNorm over channels (ConvNeXts).
    Ln,
}

/// A SparK model: encoder, input size, decoder width, densify norm and mask ratio.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparkConfig {
    /// The encoder's architecture.
    pub encoder: EncoderConfig,
    /// Square input side in pixels (a multiple of 32).
    pub input_size: usize,
    /// Decoder width (channels of its first stage).
    pub dec_width: usize,
    /// The densify layers' norm.
    pub densify_norm: DensifyNorm,
    /// Fraction of patches masked.
    pub mask_ratio: f64,
}

/// SparK's input patch (the encoder's downsample ratio).
pub const PATCH: usize = 32;

/// The defaults of every command and of [`crate::data::LoaderConfig`]: the official
/// recipe's mask ratio 0.6 and 224² input, and a decoder 768 wide.
pub const DEFAULT_MASK_RATIO: f64 = 0.6;
/// See [`DEFAULT_MASK_RATIO`].
pub const DEFAULT_INPUT_SIZE: usize = 224;
/// See [`DEFAULT_MASK_RATIO`].
pub const DEFAULT_DEC_WIDTH: usize = 768;

// The valid ranges of the model's options (the CLI parses with them too).
/// 0 masks nothing (nothing to reconstruct, the loss is 0); 1 shows nothing to the encoder.
pub const MASK_RATIO: FloatRange = open(0.0, 1.0, "0 leaves nothing to reconstruct, 1 nothing to see");
/// A drop probability; 1 would drop every residual branch of every image.
pub const DROP_PATH: FloatRange = FloatRange { lo: 0.0, hi: 1.0, lo_open: false, hi_open: true, why: "a drop probability" };
/// The encoder downsamples by 32 and the mask has one patch per 32×32 pixels.
pub const INPUT_SIZE: IntRange =
    IntRange { lo: PATCH, hi: usize::MAX, multiple_of: PATCH, why: "the patch size" };
/// The decoder halves its width five times.
pub const DEC_WIDTH: IntRange = IntRange { lo: 32, hi: usize::MAX, multiple_of: 32, why: "the decoder halves it five times" };

impl EncoderConfig {
    /// A named preset: resnet18/34/50/101/152/200, convnext_tiny/small/base/large, and
    /// the tiny test models resnet_tiny / convnext_pico.
    pub fn preset(name: &str) -> Result<Self> {
        let r = |bottleneck, layers: &[usize]| EncoderConfig::Resnet {
            bottleneck,
            layers: layers.to_vec(),
            channels: vec![64, 128, 256, 512],
        };
        let c = |depths: &[usize], dims: &[usize]| EncoderConfig::Convnext { depths: depths.to_vec(), dims: dims.to_vec() };
        Ok(match name {
            "resnet18" => r(false, &[2, 2, 2, 2]),
            "resnet34" => r(false, &[3, 4, 6, 3]),
            "resnet50" => r(true, &[3, 4, 6, 3]),
            "resnet101" => r(true, &[3, 4, 23, 3]),
            "resnet152" => r(true, &[3, 8, 36, 3]),
            "resnet200" => r(true, &[3, 24, 36, 3]),
            "resnet_tiny" => EncoderConfig::Resnet { bottleneck: false, layers: vec![1, 1, 1, 1], channels: vec![8, 16, 32, 64] },
            "convnext_tiny" => c(&[3, 3, 9, 3], &[96, 192, 384, 768]),
            "convnext_small" => c(&[3, 3, 27, 3], &[96, 192, 384, 768]),
            "convnext_base" => c(&[3, 3, 27, 3], &[128, 256, 512, 1024]),
            "convnext_large" => c(&[3, 3, 27, 3], &[192, 384, 768, 1536]),
            "convnext_pico" => c(&[1, 1, 1, 1], &[16, 32, 64, 128]),
            _ => bail!(
                "unknown --model {name:?}: choose resnet18, resnet34, resnet50, resnet101, resnet152, resnet200, \
                 convnext_tiny, convnext_small, convnext_base, convnext_large (or the test models resnet_tiny, convnext_pico)"
            ),
        })
    }

    /// The drop-path rate SparK pre-trains `model` with by default (keyu-tian/SparK
    /// `pretrain/models/__init__.py`, `pretrain_default_model_kwargs`; `--dp` defaults to 0
    /// in `pretrain/utils/arg_util.py`, and a non-zero `--dp` overrides this):
    ///
    /// ```text
    /// 'resnet50': dict(drop_path_rate=0.05),      'convnext_small': dict(sparse=True, drop_path_rate=0.2),
    /// 'resnet101': dict(drop_path_rate=0.08),     'convnext_base': dict(sparse=True, drop_path_rate=0.3),
    /// 'resnet152': dict(drop_path_rate=0.10),     'convnext_large': dict(sparse=True, drop_path_rate=0.4),
    /// 'resnet200': dict(drop_path_rate=0.15),
    /// ```
    ///
    /// resnet18, resnet34 and convnext_tiny are not in that table (the official pre-training
    /// code has no preset for them), so they, and any other name, get 0 (the timm / ConvNeXt
    /// constructor default).
    pub fn official_drop_path_rate(model: &str) -> f64 {
        match model {
            "resnet50" => 0.05,
            "resnet101" => 0.08,
            "resnet152" => 0.10,
            "resnet200" => 0.15,
            "convnext_small" => 0.2,
            "convnext_base" => 0.3,
            "convnext_large" => 0.4,
            // resnet18, resnet34, convnext_tiny and anything else: no official preset.
            _ => 0.0,
        }
    }

    /// Widths of the four feature maps (strides 4, 8, 16, 32).
    pub fn feature_widths(&self) -> Vec<usize> {
        match self {
            EncoderConfig::Resnet { bottleneck, channels, .. } => {
                channels.iter().map(|c| c * if *bottleneck { 4 } else { 1 }).collect()
            }
            EncoderConfig::Convnext { dims, .. } => dims.clone(),
            EncoderConfig::Custom { feature_widths, .. } => feature_widths.clone(),
        }
    }

    /// The official densify norm of the family.
    pub fn default_densify_norm(&self) -> DensifyNorm {
        match self {
            // BatchNorm for every CNN but ConvNeXt (whose blocks use LayerNorm).
            EncoderConfig::Resnet { .. } | EncoderConfig::Custom { .. } => DensifyNorm::Bn,
            EncoderConfig::Convnext { .. } => DensifyNorm::Ln,
        }
    }

    /// LAMB β2 of the official recipe (0.95 for ResNet, 0.999 for ConvNeXt).
    pub fn default_beta2(&self) -> f64 {
        match self {
            // A custom encoder gets the recipe of the plain CNNs.
            EncoderConfig::Resnet { .. } | EncoderConfig::Custom { .. } => 0.95,
            EncoderConfig::Convnext { .. } => 0.999,
        }
    }
}

impl SparkConfig {
    /// The SparK configuration of a named encoder preset (see [`EncoderConfig::preset`])
    /// with the family's official densify norm: the one way every command, test and
    /// example turns a `--model` name into a configuration.
    pub fn from_preset(model: &str, input_size: usize, dec_width: usize, mask_ratio: f64) -> Result<Self> {
        let encoder = EncoderConfig::preset(model)?;
        Ok(Self { densify_norm: encoder.default_densify_norm(), encoder, input_size, dec_width, mask_ratio })
    }

    /// The SparK configuration of a backbone defined outside the crate (BatchNorm densify
    /// norms); build it with [`crate::model::SparkBuilder::backbone`].
    pub fn for_backbone(backbone: &dyn crate::model::Backbone, input_size: usize, dec_width: usize, mask_ratio: f64) -> Self {
        let encoder = EncoderConfig::Custom { name: backbone.name(), feature_widths: backbone.feature_widths() };
        Self { densify_norm: encoder.default_densify_norm(), encoder, input_size, dec_width, mask_ratio }
    }

    /// Refuse an input size, mask ratio or decoder width the model cannot be built for.
    pub fn validate(&self) -> Result<()> {
        INPUT_SIZE.check("--input-size", self.input_size)?;
        MASK_RATIO.check("--mask-ratio", self.mask_ratio)?;
        DEC_WIDTH.check("--dec-width", self.dec_width)
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.input_size / PATCH
    }

    /// Visible patches per image (see [`len_keep`]): what the graph is built for and what
    /// every mask the loader draws shows.
    pub fn visible_per_image(&self) -> usize {
        len_keep(self.grid(), self.mask_ratio)
    }
}

/// Visible patches per image of an `f`×`f` patch grid, as the official `SparK.len_keep`:
/// `round(f*f*(1 - mask_ratio))` with Python's `round`, ties to even (4.5 → 4), clamped to
/// the grid. The one place this is computed: the graph's size and the loader's masks must
/// agree exactly.
pub fn len_keep(f: usize, mask_ratio: f64) -> usize {
    ((f * f) as f64 * (1.0 - mask_ratio)).round_ties_even().clamp(0.0, (f * f) as f64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_and_loader_agree_on_visible_patches() {
        // resnet_tiny at 96² with --mask-ratio 0.5: 9 × 0.5 = 4.5 keeps 4 (ties to even).
        let cfg = SparkConfig {
            encoder: EncoderConfig::preset("resnet_tiny").unwrap(),
            input_size: 96,
            dec_width: 32,
            densify_norm: DensifyNorm::Bn,
            mask_ratio: 0.5,
        };
        assert_eq!(cfg.visible_per_image(), 4);
        for (f, ratio, keep) in [(3, 0.5, 4), (5, 0.5, 12), (1, 0.5, 0), (7, 0.5, 24), (7, 0.6, 20), (2, 0.75, 1), (4, 0.0, 16)] {
            assert_eq!(len_keep(f, ratio), keep, "f={f} ratio={ratio}");
        }
        // Every grid and ratio step: the graph's count is the loader's.
        for f in 1..=8 {
            for r in 0..100 {
                let cfg = SparkConfig { input_size: f * PATCH, mask_ratio: r as f64 / 100.0, ..cfg.clone() };
                assert_eq!(cfg.visible_per_image(), crate::data::len_keep(f, cfg.mask_ratio));
                let mask = crate::data::sample_mask(&mut crate::data::rng::stream(1, 2, 3, 4), 1, f, cfg.mask_ratio);
                assert_eq!(mask.iter().map(|&v| v as usize).sum::<usize>(), cfg.visible_per_image());
            }
        }
    }
}
