//! SparK models: sparse encoders (timm ResNet, official ConvNeXt) with the official
//! parameter names, densify layers, the LightDecoder and the loss.

pub mod config;
mod convnext;
mod decoder;
pub mod infer;
mod resnet;
pub mod spark;

pub use config::{DensifyNorm, EncoderConfig, SparkConfig, PATCH};
pub use spark::SparkModel;

use crate::graph::nodes::{BnIds, ConvIds};
use crate::graph::{Kind, ParamRegistry};

/// Declare a BatchNorm's five state-dict entries under `prefix`.
pub(crate) fn declare_bn(reg: &mut ParamRegistry, prefix: &str, c: usize) -> BnIds {
    BnIds {
        weight: reg.trainable(format!("{prefix}.weight"), &[c]),
        bias: reg.trainable(format!("{prefix}.bias"), &[c]),
        running_mean: reg.declare(format!("{prefix}.running_mean"), &[c], Kind::Buffer),
        running_var: reg.declare(format!("{prefix}.running_var"), &[c], Kind::Buffer),
        num_batches_tracked: reg.declare(format!("{prefix}.num_batches_tracked"), &[], Kind::Counter),
    }
}

/// Declare a Conv2d `[cout, cin, k, k]` (or ConvTranspose2d `[cin, cout, k, k]` when
/// `transposed`) under `prefix`.
pub(crate) fn declare_conv(
    reg: &mut ParamRegistry,
    prefix: &str,
    cin: usize,
    cout: usize,
    k: usize,
    bias: bool,
    transposed: bool,
) -> ConvIds {
    let shape = if transposed { [cin, cout, k, k] } else { [cout, cin, k, k] };
    ConvIds {
        weight: reg.trainable(format!("{prefix}.weight"), &shape),
        bias: bias.then(|| reg.trainable(format!("{prefix}.bias"), &[cout])),
    }
}

/// Declare an nn.Linear `[out, in]` (+ bias) under `prefix`, as a 1×1 convolution.
pub(crate) fn declare_linear(reg: &mut ParamRegistry, prefix: &str, cin: usize, cout: usize) -> ConvIds {
    ConvIds {
        weight: reg.trainable(format!("{prefix}.weight"), &[cout, cin]),
        bias: Some(reg.trainable(format!("{prefix}.bias"), &[cout])),
    }
}
