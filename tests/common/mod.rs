//! Fixtures shared by the integration tests.

use spark_wgpu::gpu::GpuContext;
use spark_wgpu::model::{SparkConfig, SparkModel};
use spark_wgpu::rng::{random_patch_mask, random_vec};
use spark_wgpu::train::PretrainConfig;

/// A resnet_tiny run at 64², batch 2, on 16 procedural images (seconds on lavapipe);
/// tests override what they are about with struct-update syntax.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn tiny_pretrain_config(max_steps: usize) -> PretrainConfig {
    PretrainConfig {
        model: "resnet_tiny".into(),
        spark: SparkConfig::from_preset("resnet_tiny", 64, 32, 0.6).unwrap(),
        data: None,
        procedural_images: 16,
        batch: 2,
        epochs: 4,
        max_steps: Some(max_steps),
        base_lr: 2e-2,
        warmup_epochs: 1.0,
        weight_decay: 0.04,
        weight_decay_end: 0.2,
        beta2: 0.95,
        seed: 3,
        workers: 2,
        init_weights: None,
        save_every: None,
        drop_path: 0.1,
        viz_every: None,
        tensorboard: false,
        sync_bn: true,
    }
}

/// Three training steps of `m` on seeded random 64² batches (a 2×2 patch grid, half of
/// it masked); `before_step` runs once each batch is set, before its step. The losses.
#[allow(dead_code)] // as above
pub fn three_random_steps(ctx: &GpuContext, m: &mut SparkModel, before_step: impl Fn(&SparkModel)) -> Vec<f32> {
    let batch = m.batch();
    let mut losses = vec![];
    for step in 1..=3u32 {
        let images = random_vec(300 + step as u64, batch * 64 * 64 * 3);
        let mask = random_patch_mask(400 + step as u64, batch, 2, 2, 0.5);
        m.set_batch(&images, &mask).unwrap();
        before_step(m);
        m.set_drop_path_step(step as u64);
        m.train_step(step, 1e-3, 0.05).unwrap();
        ctx.check("a training step").unwrap();
        losses.push(m.read_loss().unwrap());
    }
    losses
}
