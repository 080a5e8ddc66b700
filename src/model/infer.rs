//! Recognise the architecture of a state dict from its tensor names and shapes, so that
//! any checkpoint (ours or an official `.pth`) opens without naming the model.

use anyhow::{Context as _, Result, bail};

use super::config::{DensifyNorm, EncoderConfig};
use crate::io::tensors::TensorMap;

const P: &str = "sparse_encoder.sp_cnn.";

fn count_indexed(t: &TensorMap, prefix: &str) -> usize {
    (0..).take_while(|i| t.keys().any(|k| k.starts_with(&format!("{prefix}{i}.")))).count()
}

fn shape<'a>(t: &'a TensorMap, name: &str) -> Result<&'a [usize]> {
    Ok(&t.get(name).with_context(|| format!("the checkpoint has no {name}"))?.shape)
}

/// (encoder, decoder width, densify norm) of a SparK state dict.
pub fn infer_architecture(t: &TensorMap) -> Result<(EncoderConfig, usize, DensifyNorm)> {
    let encoder = if t.contains_key(&format!("{P}conv1.weight")) {
        let bottleneck = t.keys().any(|k| k.starts_with(P) && k.ends_with(".conv3.weight"));
        let mut layers = vec![];
        let mut channels = vec![];
        // timm numbers the stages layer1..layer4.
        for s in 1..=4 {
            let prefix = format!("{P}layer{s}.");
            let n = count_indexed(t, &prefix);
            if n == 0 {
                continue;
            }
            layers.push(n);
            channels.push(shape(t, &format!("{prefix}0.conv1.weight"))?[0]);
        }
        if layers.len() != 4 {
            bail!("the checkpoint's ResNet has {} stages; SparK needs 4", layers.len());
        }
        EncoderConfig::Resnet { bottleneck, layers, channels }
    } else if t.contains_key(&format!("{P}downsample_layers.0.0.weight")) {
        let n = count_indexed(t, &format!("{P}stages."));
        let depths = (0..n).map(|i| count_indexed(t, &format!("{P}stages.{i}."))).collect();
        let dims = (0..n)
            .map(|i| shape(t, &format!("{P}stages.{i}.0.gamma")).map(|s| s[0]))
            .collect::<Result<Vec<_>>>()?;
        EncoderConfig::Convnext { depths, dims }
    } else {
        bail!("not a SparK checkpoint: no {P}conv1.weight (ResNet) nor {P}downsample_layers.0.0.weight (ConvNeXt)");
    };
    let dec_width = shape(t, "dense_decoder.dec.0.up_sample.weight")
        .context("the checkpoint has no decoder (an encoder-only file cannot reconstruct)")?[0];
    let norm = if t.contains_key("densify_norms.0.running_mean") { DensifyNorm::Bn } else { DensifyNorm::Ln };
    Ok((encoder, dec_width, norm))
}
