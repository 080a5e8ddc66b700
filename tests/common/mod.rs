//! Fixtures shared by the integration tests.

use spark_wgpu::model::SparkConfig;
use spark_wgpu::train::PretrainConfig;

/// A resnet_tiny run at 64², batch 2, on 16 procedural images (seconds on lavapipe);
/// tests override what they are about with struct-update syntax.
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
