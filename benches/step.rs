//! Whole training step of small SparK models (forward, loss, backward, LAMB), so that
//! regressions anywhere in the graph show in `cargo bench`. Run: `cargo bench --bench step`.

use spark_wgpu::gpu::GpuContext;
use spark_wgpu::model::{SparkConfig, SparkModel};
use spark_wgpu::optim::lamb::LambConfig;
use spark_wgpu::rng::{random_patch_mask, random_vec};
use std::time::Instant;

fn bench(ctx: &GpuContext, model: &str, size: usize, batch: usize, dec_width: usize, steps: usize) {
    let cfg = SparkConfig::from_preset(model, size, dec_width, 0.6).unwrap();
    let beta2 = cfg.encoder.default_beta2() as f32;
    let f = cfg.grid();
    let ratio = cfg.visible_per_image() as f64 / (f * f) as f64;
    let mut m = SparkModel::builder(ctx, cfg, batch).optimizer(LambConfig::spark(beta2)).build().unwrap();
    let images = random_vec(1, batch * size * size * 3);
    let mut times = vec![];
    for i in 0..=steps {
        m.set_batch(&images, &random_patch_mask(i as u64, batch, f, f, ratio)).unwrap();
        let t = Instant::now();
        m.train_step(i as u32 + 1, 1e-4, 0.04).unwrap();
        ctx.wait().unwrap();
        if i > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let med = times[times.len() / 2];
    println!(
        "{model:<14} {size}×{size} batch {batch} dec {dec_width}: step {med:>9.1} ms (median of {steps}), {:>7.2} images/s, {} dispatches",
        batch as f64 / med * 1e3,
        m.dispatch_count()
    );
}

fn main() {
    let ctx = GpuContext::new_default().expect("a wgpu adapter");
    println!("adapter: {}", ctx.describe());
    bench(&ctx, "resnet_tiny", 64, 8, 64, 3);
    bench(&ctx, "convnext_pico", 64, 8, 64, 3);
    if std::env::var("SPARK_BENCH_FULL").is_ok() {
        bench(&ctx, "resnet18", 224, 8, 768, 2);
    }
}
