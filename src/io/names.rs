//! SparK ↔ encoder-only parameter names. A SparK state dict names the encoder's tensors
//! `sparse_encoder.sp_cnn.<name>` where `<name>` is exactly the timm (ResNet) or official
//! (ConvNeXt) name the `*_timm_style.pth` checkpoints use; densify and decoder tensors have
//! no encoder-only counterpart.

/// The prefix SparK puts in front of every encoder tensor.
pub const ENCODER_PREFIX: &str = "sparse_encoder.sp_cnn.";

/// The encoder-only (timm-style) name of a SparK tensor, or `None` for the densify
/// norms/projections, mask tokens and decoder, which encoder-only checkpoints do not hold.
pub fn to_timm_name(spark_name: &str) -> Option<String> {
    spark_name.strip_prefix(ENCODER_PREFIX).filter(|n| !n.is_empty()).map(str::to_string)
}

/// The SparK name of an encoder-only tensor (inverse of [`to_timm_name`]); a name that
/// already carries the prefix is returned unchanged.
pub fn from_encoder_name(name: &str) -> String {
    if name.starts_with(ENCODER_PREFIX) { name.to_string() } else { format!("{ENCODER_PREFIX}{name}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::golden::{GOLDEN_CASES, GoldenCase, golden_dir};
    use crate::io::pth::load_state_dict;

    #[test]
    fn golden_names_map_both_ways() {
        for case in GOLDEN_CASES {
            let g = GoldenCase::load(&golden_dir().join(format!("{case}.safetensors"))).unwrap();
            let (timm, _) = load_state_dict(&golden_dir().join(format!("{case}_1kpretrained_timm_style.pth"))).unwrap();
            let mut mapped = Vec::new();
            for name in g.inputs().keys() {
                match to_timm_name(name) {
                    Some(t) => {
                        assert_eq!(from_encoder_name(&t), *name);
                        mapped.push(t);
                    }
                    None => assert!(
                        ["densify_norms.", "densify_projs.", "mask_tokens.", "dense_decoder."].iter().any(|p| name.starts_with(p)),
                        "{case}: {name} has no timm name"
                    ),
                }
            }
            mapped.sort();
            assert_eq!(mapped, timm.keys().cloned().collect::<Vec<_>>(), "{case}");
        }
    }

    #[test]
    fn edge_cases() {
        assert_eq!(to_timm_name("sparse_encoder.sp_cnn.conv1.weight").as_deref(), Some("conv1.weight"));
        assert_eq!(to_timm_name("mask_tokens.0"), None);
        assert_eq!(to_timm_name("sparse_encoder.sp_cnn."), None);
        assert_eq!(from_encoder_name("stages.0.0.gamma"), "sparse_encoder.sp_cnn.stages.0.0.gamma");
        assert_eq!(from_encoder_name("sparse_encoder.sp_cnn.bn1.bias"), "sparse_encoder.sp_cnn.bn1.bias");
    }
}
