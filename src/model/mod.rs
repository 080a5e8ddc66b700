//! SparK models: sparse encoders (timm ResNet, official ConvNeXt) with the official
//! parameter names, densify layers, the LightDecoder and the loss.
//!
//! Model policy lives here, beside the layers it describes, one place each:
//! - presets (`--model` names → architecture) and their official drop-path rates and
//!   LAMB β2: [`EncoderConfig::preset`], [`EncoderConfig::official_drop_path_rate`],
//!   [`EncoderConfig::default_beta2`]; a whole configuration: [`SparkConfig::from_preset`];
//! - the spread of a network's drop-path rate over its blocks: `resnet::block_rates`
//!   (timm), `convnext::block_rates` (official linspace);
//! - the official initialisation, named where each parameter is declared
//!   ([`crate::graph::Init`]): timm ResNet convs kaiming-normal (fan_out, ReLU gain), BN
//!   1/0 with the last BN of each residual branch 0 (`zero_init_last`); ConvNeXt convs and
//!   linears truncated normal (std 0.02), biases 0, LayerNorms 1/0, gamma 1e-6;
//!   LightDecoder convs truncated normal, transposed convs kaiming-normal (fan_out), BN
//!   1/0; densify projections PyTorch's default Conv2d init; mask tokens truncated normal
//!   (std 0.02, cut at ±0.02).

pub mod backbone;
pub mod config;
mod convnext;
mod decoder;
pub mod infer;
mod resnet;
pub mod spark;

pub use config::{DensifyNorm, EncoderConfig, SparkConfig, PATCH};
pub use backbone::{Backbone, DeclaredBackbone};
pub use spark::{SparkBuilder, SparkModel};

use crate::graph::nodes::{BnIds, ConvIds};
use crate::graph::{Init, Kind, ParamRegistry};

/// Declare a BatchNorm's five state-dict entries under `prefix`: weight `weight` (1, or
/// 0 for the last BN of a ResNet branch), bias 0, running mean 0 and variance 1.
pub fn declare_bn(reg: &mut ParamRegistry, prefix: &str, c: usize, weight: Init) -> BnIds {
    BnIds {
        weight: reg.trainable(format!("{prefix}.weight"), &[c], weight),
        bias: reg.trainable(format!("{prefix}.bias"), &[c], Init::ZERO),
        running_mean: reg.declare(format!("{prefix}.running_mean"), &[c], Kind::Buffer, Init::ZERO),
        running_var: reg.declare(format!("{prefix}.running_var"), &[c], Kind::Buffer, Init::ONE),
        num_batches_tracked: reg.declare(format!("{prefix}.num_batches_tracked"), &[], Kind::Counter, Init::ZERO),
    }
}

/// Declare a Conv2d `[cout, cin, k, k]` (or ConvTranspose2d `[cin, cout, k, k]` when
/// `transposed`) under `prefix`: the weight initialised by `weight(shape)`, the bias (when
/// `bias` is Some) by its init.
#[allow(clippy::too_many_arguments)]
pub fn declare_conv(
    reg: &mut ParamRegistry,
    prefix: &str,
    cin: usize,
    cout: usize,
    k: usize,
    transposed: bool,
    weight: fn(&[usize]) -> Init,
    bias: Option<Init>,
) -> ConvIds {
    let shape = if transposed { [cin, cout, k, k] } else { [cout, cin, k, k] };
    ConvIds {
        weight: reg.trainable(format!("{prefix}.weight"), &shape, weight(&shape)),
        bias: bias.map(|init| reg.trainable(format!("{prefix}.bias"), &[cout], init)),
    }
}

/// Declare an nn.Linear `[out, in]` + bias under `prefix`, as a 1×1 convolution:
/// truncated normal weight (std 0.02), zero bias (timm / ConvNeXt).
pub fn declare_linear(reg: &mut ParamRegistry, prefix: &str, cin: usize, cout: usize) -> ConvIds {
    ConvIds {
        weight: reg.trainable(format!("{prefix}.weight"), &[cout, cin], Init::TRUNC_NORMAL),
        bias: Some(reg.trainable(format!("{prefix}.bias"), &[cout], Init::ZERO)),
    }
}

/// A truncated normal (std 0.02) conv weight of any shape (timm's `trunc_normal_`).
pub fn trunc_normal(_shape: &[usize]) -> Init {
    Init::TRUNC_NORMAL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_path_official_rates_and_block_spread() {
        assert_eq!(EncoderConfig::official_drop_path_rate("resnet50"), 0.05);
        assert_eq!(EncoderConfig::official_drop_path_rate("resnet200"), 0.15);
        assert_eq!(EncoderConfig::official_drop_path_rate("convnext_large"), 0.4);
        for m in ["resnet18", "resnet34", "convnext_tiny", "unknown"] {
            assert_eq!(EncoderConfig::official_drop_path_rate(m), 0.0, "{m}");
        }
        // timm ResNet-50: 16 blocks, rate * idx / 15.
        let r = resnet::block_rates(0.05, &[3, 4, 6, 3]);
        assert_eq!(r.len(), 16);
        assert_eq!((r[0], r[15]), (0.0, 0.05));
        assert_eq!(r[8], 0.05 * 8.0 / 15.0);
        // ConvNeXt-S: 36 blocks, torch.linspace(0, 0.2, 36) in f32.
        let r = convnext::block_rates(0.2, &[3, 3, 27, 3]);
        assert_eq!(r.len(), 36);
        assert_eq!((r[0], r[35]), (0.0, 0.2f32 as f64));
        assert_eq!(r[1], (0.2f32 / 35.0) as f64);
        assert_eq!(r[34], (0.2f32 - 0.2f32 / 35.0) as f64, "second half counts back from the end");
        assert!(r.windows(2).all(|w| w[0] < w[1]));
        for (i, v) in r.iter().enumerate() {
            assert!((v - 0.2 * i as f64 / 35.0).abs() < 1e-7, "block {i}: {v}");
        }
        assert_eq!(resnet::block_rates(0.0, &[2, 2, 2, 2]), vec![0.0; 8]);
        assert_eq!(convnext::block_rates(0.3, &[1]), vec![0.0]);
    }
}
