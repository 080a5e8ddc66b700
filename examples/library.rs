//! Using spark-wgpu as a library: build a SparK graph, feed it batches from the data
//! pipeline, and train a few steps.
//!
//!     cargo run --release --example library

use std::sync::Arc;

use spark_wgpu::data::{Loader, LoaderConfig, ProceduralSource};
use spark_wgpu::gpu::GpuContext;
use spark_wgpu::model::{SparkConfig, SparkModel};
use spark_wgpu::optim::lamb::LambConfig;

fn main() -> anyhow::Result<()> {
    let ctx = GpuContext::new_default()?;
    println!("adapter: {}", ctx.describe());
    let cfg = SparkConfig::from_preset("convnext_pico", 64, 64, 0.6)?;
    let batch = 4;
    // A training graph with the official initialisation (seed 0) and LAMB settings.
    let lamb = LambConfig::spark(cfg.encoder.default_beta2() as f32);
    let mut model = SparkModel::builder(&ctx, cfg.clone(), batch).optimizer(lamb).init_seed(0).build()?;
    let source = Arc::new(ProceduralSource::new(64, 64, 0));
    let mut loader = Loader::new(source, LoaderConfig { batch, size: 64, mask_ratio: 0.6, seed: 0, workers: 2, prefetch: 2 })?;
    for step in 1..=10u32 {
        let b = loader.next_batch()?;
        model.set_batch(&b.images, &b.mask)?;
        model.train_step(step, 1e-3, 0.04)?;
        // A blocking read for the example; `spark-wgpu pretrain` reads losses asynchronously.
        println!("step {step:>2}: loss {:.4}", model.read_loss()?);
    }
    println!("{} dispatches per step, {:.1} MiB of GPU buffers", model.dispatch_count(), model.gpu_memory_bytes() as f64 / 1048576.0);
    Ok(())
}
