//! The official implementation's parity cases (tests/data/golden): every output tensor
//! (losses, encoder features, reconstruction, every gradient, parameters and BN buffers
//! after the LAMB steps) within the tolerance the golden README states.

use spark_wgpu::gpu::GpuContext;
use spark_wgpu::parity::run_case;
use std::path::Path;

fn check(case: &str) {
    let ctx = GpuContext::new_default().unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden").join(format!("{case}.safetensors"));
    let report = run_case(&ctx, &path).unwrap();
    let failed: Vec<String> = report
        .rows
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{}: error {:.3e} > tolerance {:.1e}", r.key, r.error, r.tolerance))
        .collect();
    assert!(report.rows.len() > 200, "only {} tensors compared", report.rows.len());
    assert!(failed.is_empty(), "{case}: {} tensors out of tolerance:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn resnet_basic_tiny_matches_the_official_implementation() {
    check("resnet_basic_tiny");
}

#[test]
fn resnet_bottleneck_tiny_matches_the_official_implementation() {
    check("resnet_bottleneck_tiny");
}

#[test]
fn convnext_tiny_matches_the_official_implementation() {
    check("convnext_tiny");
}
