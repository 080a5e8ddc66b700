//! Recognise the architecture of a state dict from its tensor names and shapes, so that
//! any checkpoint (ours or an official `.pth`) opens without naming the model.

use anyhow::{Context as _, Result, bail};

use super::config::{DensifyNorm, EncoderConfig};
use crate::io::tensors::TensorMap;

const P: &str = "sparse_encoder.sp_cnn.";

/// How many of `{prefix}0.`, `{prefix}1.`, … are present. One ordered-map lookup per index
/// (the names sharing a prefix are adjacent), not a scan of every name per index, which a
/// file with 10^5 names would make quadratic.
fn count_indexed(t: &TensorMap, prefix: &str) -> usize {
    (0..)
        .take_while(|i| {
            let p = format!("{prefix}{i}.");
            t.range::<str, _>((std::ops::Bound::Included(p.as_str()), std::ops::Bound::Unbounded))
                .next()
                .is_some_and(|(k, _)| k.starts_with(&p))
        })
        .count()
}

fn shape<'a>(t: &'a TensorMap, name: &str) -> Result<&'a [usize]> {
    Ok(&t.get(name).with_context(|| format!("the checkpoint has no {name}"))?.shape)
}

/// The leading dimension of `name` (an error for a scalar, which no weight is).
fn dim0(t: &TensorMap, name: &str) -> Result<usize> {
    shape(t, name)?.first().copied().with_context(|| format!("the checkpoint's {name} is a scalar, not a weight"))
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
            channels.push(dim0(t, &format!("{prefix}0.conv1.weight"))?);
        }
        if layers.len() != 4 {
            bail!("the checkpoint's ResNet has {} stages; SparK needs 4", layers.len());
        }
        EncoderConfig::Resnet { bottleneck, layers, channels }
    } else if t.contains_key(&format!("{P}downsample_layers.0.0.weight")) {
        let n = count_indexed(t, &format!("{P}stages."));
        let depths = (0..n).map(|i| count_indexed(t, &format!("{P}stages.{i}."))).collect();
        let dims = (0..n)
            .map(|i| dim0(t, &format!("{P}stages.{i}.0.gamma")))
            .collect::<Result<Vec<_>>>()?;
        EncoderConfig::Convnext { depths, dims }
    } else {
        bail!("not a SparK checkpoint: no {P}conv1.weight (ResNet) nor {P}downsample_layers.0.0.weight (ConvNeXt)");
    };
    let dec_width =
        dim0(t, "dense_decoder.dec.0.up_sample.weight").context("the checkpoint has no decoder (an encoder-only file cannot reconstruct)")?;
    let norm = if t.contains_key("densify_norms.0.running_mean") { DensifyNorm::Bn } else { DensifyNorm::Ln };
    Ok((encoder, dec_width, norm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::tensors::HostTensor;

    #[test]
    fn hostile_state_dicts_error_quickly() {
        // 10^5 blocks in one stage: counted with one lookup each (a scan per index would
        // be 10^10 string comparisons).
        let mut t = TensorMap::new();
        let w = |shape: Vec<usize>| HostTensor::f32(shape.clone(), vec![0.0; shape.iter().product()]);
        t.insert(format!("{P}conv1.weight"), w(vec![1]));
        for i in 0..100_000 {
            t.insert(format!("{P}layer1.{i}.conv1.weight"), w(vec![1]));
        }
        assert_eq!(count_indexed(&t, &format!("{P}layer1.")), 100_000);
        assert_eq!(count_indexed(&t, &format!("{P}layer2.")), 0);
        let err = format!("{:#}", infer_architecture(&t).unwrap_err());
        assert!(err.contains("1 stages"), "{err}");

        // A scalar where a weight should be: an error, not an index panic.
        let mut t = TensorMap::new();
        t.insert(format!("{P}conv1.weight"), w(vec![1]));
        for s in 1..=4 {
            t.insert(format!("{P}layer{s}.0.conv1.weight"), w(vec![]));
        }
        let err = format!("{:#}", infer_architecture(&t).unwrap_err());
        assert!(err.contains("is a scalar"), "{err}");
    }
}
