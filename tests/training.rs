//! End-to-end behaviour of the training step: a tiny model overfits one batch, and two
//! identical runs end with bitwise-identical parameters.

use spark_wgpu::gpu::GpuContext;
use spark_wgpu::model::{EncoderConfig, SparkConfig, SparkModel};
use spark_wgpu::optim::lamb::LambConfig;
use spark_wgpu::testing::{random_patch_mask, random_vec};
use spark_wgpu::train::init::init_params;

fn tiny(model: &str, dec_width: usize) -> SparkConfig {
    let encoder = EncoderConfig::preset(model).unwrap();
    SparkConfig { densify_norm: encoder.default_densify_norm(), encoder, input_size: 64, dec_width, mask_ratio: 0.5 }
}

fn build<'c>(ctx: &'c GpuContext, cfg: &SparkConfig, batch: usize, seed: u64) -> SparkModel<'c> {
    let beta2 = cfg.encoder.default_beta2() as f32;
    let mut m = SparkModel::build(ctx, cfg.clone(), batch, Some(LambConfig::spark(beta2))).unwrap();
    let specs = m.params().specs.clone();
    for (s, v) in specs.iter().zip(init_params(&specs, seed)) {
        m.params_mut().set(ctx, &s.name, &s.shape, &v).unwrap();
    }
    m
}

/// Smooth images (a model can learn them quickly): per-image colour gradients.
fn smooth_images(batch: usize, size: usize) -> Vec<f32> {
    let r = random_vec(5, batch * 9);
    let mut out = Vec::with_capacity(batch * size * size * 3);
    for b in 0..batch {
        for y in 0..size {
            for x in 0..size {
                for c in 0..3 {
                    let k = &r[b * 9 + c * 3..b * 9 + c * 3 + 3];
                    out.push(k[0] + k[1] * (x as f32 / size as f32) * 2.0 + k[2] * (y as f32 / size as f32) * 2.0);
                }
            }
        }
    }
    out
}

#[test]
fn a_tiny_model_overfits_one_batch() {
    let ctx = GpuContext::new_default().unwrap();
    let cfg = tiny("resnet_tiny", 32);
    let batch = 4;
    let mut m = build(&ctx, &cfg, batch, 0);
    let images = smooth_images(batch, 64);
    let mask = random_patch_mask(3, batch, 2, 2, 0.5);
    m.set_batch(&images, &mask).unwrap();
    let mut losses = vec![];
    for step in 1..=200u32 {
        m.train_step(step, 2e-3, 0.0).unwrap();
        if step == 1 || step % 50 == 0 {
            ctx.wait().unwrap();
            losses.push(m.read_loss().unwrap());
        }
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last.is_finite() && last < 0.5 * first, "loss {first} → {last} (all: {losses:?})");
}

fn run_five_steps(ctx: &GpuContext) -> Vec<Vec<f32>> {
    let cfg = tiny("convnext_pico", 32);
    let batch = 2;
    let mut m = build(ctx, &cfg, batch, 1);
    for step in 1..=5u32 {
        let images = random_vec(100 + step as u64, batch * 64 * 64 * 3);
        let mask = random_patch_mask(200 + step as u64, batch, 2, 2, 0.5);
        m.set_batch(&images, &mask).unwrap();
        m.train_step(step, 1e-3, 0.05).unwrap();
    }
    m.params().ids().map(|p| m.params().get(ctx, p).unwrap()).collect()
}

#[test]
fn two_identical_runs_are_bitwise_identical() {
    let ctx = GpuContext::new_default().unwrap();
    let a = run_five_steps(&ctx);
    let b = run_five_steps(&ctx);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(x), bits(y));
    }
    // and the run did change the parameters
    let init = {
        let cfg = tiny("convnext_pico", 32);
        let m = build(&ctx, &cfg, 2, 1);
        m.params().ids().map(|p| m.params().get(&ctx, p).unwrap()).collect::<Vec<_>>()
    };
    assert_ne!(a, init);
}
