//! The examples' logic, run as tests so that `.ci/run` (`cargo test --release`) keeps
//! them working: the custom backbone trains and exports from the public API.

#[path = "../examples/custom_backbone.rs"]
mod custom_backbone;

use spark_wgpu::gpu::GpuContext;
use spark_wgpu::io::tensors::read_safetensors;

#[test]
fn custom_backbone_trains_and_exports() {
    let ctx = GpuContext::new_default().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("encoder.safetensors");
    let losses = custom_backbone::run(&ctx, 64, 2, 3, &out).unwrap();
    assert_eq!(losses.len(), 3);
    assert!(losses.iter().all(|l| l.is_finite() && *l > 0.0), "{losses:?}");
    assert!(losses.windows(2).any(|w| w[0] != w[1]), "the loss never changed: {losses:?}");
    let (t, _) = read_safetensors(&out).unwrap();
    // Five conv + BN layers: conv weight and five BN entries each, nothing of the decoder.
    assert_eq!(t.len(), 5 * 6, "{:?}", t.keys().collect::<Vec<_>>());
    assert_eq!(t["features.0.conv.weight"].shape, [8, 3, 3, 3]);
    assert_eq!(t["features.4.bn.running_var"].shape, [64]);
    assert!(t.keys().all(|k| k.starts_with("features.")));
}
