//! Using spark-wgpu as a library: build a SparK graph, feed it batches from the data
//! pipeline, and train a few steps.
//!
//!     cargo run --release --example library

use std::sync::Arc;

use spark_wgpu::data::{Loader, LoaderConfig, ProceduralSource};
use spark_wgpu::gpu::GpuContext;
use spark_wgpu::model::{EncoderConfig, SparkConfig, SparkModel};
use spark_wgpu::optim::lamb::LambConfig;
use spark_wgpu::sparse::PatchMask;
use spark_wgpu::train::init::init_params;

fn main() -> anyhow::Result<()> {
    let ctx = GpuContext::new_default()?;
    println!("adapter: {}", ctx.describe());
    let encoder = EncoderConfig::preset("convnext_pico")?;
    let cfg = SparkConfig { densify_norm: encoder.default_densify_norm(), encoder, input_size: 64, dec_width: 64, mask_ratio: 0.6 };
    let batch = 4;
    let mut model = SparkModel::build(&ctx, cfg.clone(), batch, Some(LambConfig::spark(0.999)))?;
    let specs = model.params().specs.clone();
    for (s, v) in specs.iter().zip(init_params(&specs, 0)) {
        model.params_mut().set(&ctx, &s.name, &s.shape, &v)?;
    }
    let source = Arc::new(ProceduralSource::new(64, 64, 0));
    let mut loader = Loader::new(source, LoaderConfig { batch, size: 64, mask_ratio: 0.6, seed: 0, workers: 2, prefetch: 2 })?;
    let f = cfg.grid();
    for step in 1..=10u32 {
        let b = loader.next_batch()?;
        model.set_batch(&b.images, &PatchMask::new(batch, f, f, b.visible))?;
        model.train_step(step, 1e-3, 0.04)?;
        // A blocking read for the example; `spark-wgpu pretrain` reads losses asynchronously.
        println!("step {step:>2}: loss {:.4}", model.read_loss()?);
    }
    println!("{} dispatches per step, {:.1} MiB of GPU buffers", model.dispatch_count(), model.memory.total() as f64 / 1048576.0);
    Ok(())
}
