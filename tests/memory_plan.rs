//! The memory plan (issue 11, item 1, `gpu::plan`): tensors whose lifetimes do not
//! overlap share buffers, and training is bit-identical to a build with a buffer per
//! tensor even when every shared buffer is filled with NaN before each step, so no
//! tensor reads what another left behind, nor what it held in the previous step.

mod common;

use spark_wgpu::gpu::{GpuContext, MemoryStats};
use spark_wgpu::model::{SparkConfig, SparkModel};
use spark_wgpu::optim::lamb::LambConfig;

fn tiny(model: &str) -> SparkConfig {
    SparkConfig::from_preset(model, 64, 32, 0.5).unwrap()
}

/// How the graph is built: chunks of images, and a buffer per tensor or the plan.
#[derive(Clone, Copy)]
struct Options {
    chunk_images: Option<usize>,
    dedicated_buffers: bool,
    recompute: bool,
}

/// Three training steps; with `scramble`, the shared buffers are NaN before each one.
/// Returns (losses, parameters and buffers as bits, the model's memory stats).
fn three_steps(ctx: &GpuContext, cfg: &SparkConfig, options: Options, scramble: bool) -> (Vec<u32>, Vec<Vec<u32>>, MemoryStats) {
    let batch = 3;
    let beta2 = cfg.encoder.default_beta2() as f32;
    let mut m = SparkModel::builder(ctx, cfg.clone(), batch)
        .optimizer(LambConfig::spark(beta2))
        .drop_path(0.1, 3)
        .chunk_images(options.chunk_images)
        .dedicated_buffers(options.dedicated_buffers)
        .recompute(options.recompute)
        .init_seed(9)
        .build()
        .unwrap();
    let scrambled = |m: &SparkModel| {
        if scramble {
            m.scramble_shared_memory();
        }
    };
    let losses = common::three_random_steps(ctx, &mut m, scrambled);
    for (step, loss) in losses.iter().enumerate() {
        assert!(loss.is_finite(), "step {}: loss {loss}", step + 1);
    }
    let losses: Vec<u32> = losses.iter().map(|l| l.to_bits()).collect();
    let params = m.params().ids().map(|p| m.params().get(ctx, p).unwrap().iter().map(|v| v.to_bits()).collect()).collect();
    (losses, params, *m.memory())
}

#[test]
fn shared_buffers_change_no_bit_of_training() {
    let ctx = GpuContext::new_default().unwrap();
    for model in ["resnet_tiny", "convnext_pico"] {
        for chunk_images in [None, Some(2)] {
            let cfg = tiny(model);
            let base = Options { chunk_images, dedicated_buffers: false, recompute: true };
            let own = three_steps(&ctx, &cfg, Options { dedicated_buffers: true, ..base }, false);
            let planned = three_steps(&ctx, &cfg, base, true);
            let what = format!("{model}, chunks of {chunk_images:?} images");
            let (m, o) = (planned.2, own.2);
            eprintln!(
                "{what}: {} bytes planned ({} dedicated + {} shared for {} unshared) vs {} with a buffer per tensor",
                m.total(),
                m.dedicated,
                m.shared,
                m.unshared,
                o.total()
            );
            // The plan shares something, and the memory it reports is less than a buffer each.
            assert!(m.shared > 0 && m.shared < m.unshared, "{what}: {m:?}");
            assert_eq!(m.dedicated + m.unshared, o.total(), "{what}: both builds make the same tensors");
            assert_eq!(o.shared, 0, "{what}: --dedicated-buffers shares nothing");
            assert_eq!(planned.0, own.0, "{what}: losses differ");
            for (i, (a, b)) in planned.1.iter().zip(&own.1).enumerate() {
                assert!(a == b, "{what}: parameter or buffer {i} differs");
            }
        }
    }
}

/// Recomputing BatchNorm, activation and up-sampling outputs in the backward (the
/// default) instead of keeping them gives the same bits, with shared buffers NaN-filled
/// before every step, and keeps less for the backward: on a ResNet (BN + ReLU/ReLU6,
/// decoder up-sampling) and a ConvNeXt (GELU), whole and in chunks of images.
#[test]
fn recomputing_in_the_backward_changes_no_bit_and_keeps_less() {
    let ctx = GpuContext::new_default().unwrap();
    for model in ["resnet_tiny", "convnext_pico"] {
        for chunk_images in [None, Some(2)] {
            let cfg = tiny(model);
            let kept = Options { chunk_images, dedicated_buffers: false, recompute: false };
            let a = three_steps(&ctx, &cfg, kept, true);
            let b = three_steps(&ctx, &cfg, Options { recompute: true, ..kept }, true);
            let what = format!("{model}, chunks of {chunk_images:?} images");
            let (m, k) = (b.2, a.2);
            eprintln!("{what}: kept for the backward {} → {} bytes, shared {} → {}", k.kept_for_backward, m.kept_for_backward, k.shared, m.shared);
            assert!(m.kept_for_backward < k.kept_for_backward * 9 / 10, "{what}: recomputing keeps {m:?}, keeping {k:?}");
            assert!(m.shared < k.shared, "{what}: {m:?} vs {k:?}");
            assert_eq!(a.0, b.0, "{what}: losses differ");
            for (i, (x, y)) in a.1.iter().zip(&b.1).enumerate() {
                assert!(x == y, "{what}: parameter or buffer {i} differs");
            }
        }
    }
}
