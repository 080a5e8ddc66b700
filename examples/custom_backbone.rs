//! Adding a backbone from outside the crate (see docs/backbone.md): a small VGG-style
//! encoder (plain 3×3 conv → BN → ReLU stages, each halving the resolution) declared and
//! recorded with the public API only, pre-trained a few steps with SparK, and its encoder
//! exported in the encoder-only naming `spark-wgpu export` writes.
//!
//!     cargo run --release --example custom_backbone

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use spark_wgpu::data::{Loader, LoaderConfig, ProceduralSource};
use spark_wgpu::gpu::GpuContext;
use spark_wgpu::graph::nodes::{BnIds, ConvIds};
use spark_wgpu::graph::{Graph, Init, ParamRegistry, Var};
use spark_wgpu::io::names::{ENCODER_PREFIX, to_timm_name};
use spark_wgpu::io::tensors::write_safetensors_atomic;
use spark_wgpu::model::{Backbone, DeclaredBackbone, SparkConfig, SparkModel, declare_bn, declare_conv};
use spark_wgpu::ops::activation::Activation;
use spark_wgpu::optim::lamb::LambConfig;
use spark_wgpu::sparse::Window;
use spark_wgpu::train::checkpoint::state_dict;

/// A VGG-style encoder: a stride-2 stem, then one stride-2 stage per feature map, so the
/// four maps sit at strides 4, 8, 16 and 32 as SparK's decoder needs.
pub struct TinyVgg {
    /// Channels of the stem and of the four stages.
    pub widths: [usize; 5],
}

struct DeclaredVgg {
    widths: [usize; 5],
    layers: Vec<(ConvIds, BnIds)>,
}

impl Backbone for TinyVgg {
    fn name(&self) -> String {
        "tiny_vgg".into()
    }

    fn feature_widths(&self) -> Vec<usize> {
        self.widths[1..].to_vec()
    }

    fn declare(&self, reg: &mut ParamRegistry, _drop_path_rate: f64) -> Result<Box<dyn DeclaredBackbone>> {
        let mut layers = vec![];
        let mut cin = 3;
        for (i, &c) in self.widths.iter().enumerate() {
            // Every encoder parameter lives under the encoder prefix; each names its init
            // (kaiming-normal convs and BN 1/0, as timm's VGG).
            let p = format!("{ENCODER_PREFIX}features.{i}");
            let conv = declare_conv(reg, &format!("{p}.conv"), cin, c, 3, false, Init::kaiming_conv, None);
            let bn = declare_bn(reg, &format!("{p}.bn"), c, Init::ONE);
            layers.push((conv, bn));
            cin = c;
        }
        Ok(Box::new(DeclaredVgg { widths: self.widths, layers }))
    }
}

impl DeclaredBackbone for DeclaredVgg {
    fn forward(&self, g: &mut Graph, pixels: Var, input_size: usize) -> Result<Vec<Var>> {
        let mut x = pixels;
        let mut res = input_size;
        let mut features = vec![];
        for (i, &(conv, bn)) in self.layers.iter().enumerate() {
            res /= 2;
            // A sparse set: only the visible patches' sites are computed.
            let set = g.set(res, res, true);
            x = g.conv(x, set, conv, self.widths[i], Window::new(3, 2, 1), false)?;
            x = g.batchnorm(x, bn)?;
            x = g.activation(x, Activation::Relu)?;
            if i > 0 {
                features.push(x);
            }
        }
        Ok(features)
    }
}

/// Pre-train `TinyVgg` for `steps` steps of `batch` procedural `size`² images and export its
/// encoder to `out`; returns the losses.
pub fn run(ctx: &GpuContext, size: usize, batch: usize, steps: u32, out: &Path) -> Result<Vec<f32>> {
    let backbone = TinyVgg { widths: [8, 16, 32, 48, 64] };
    let cfg = SparkConfig::for_backbone(&backbone, size, 64, 0.6);
    let lamb = LambConfig::spark(cfg.encoder.default_beta2() as f32);
    let mut model = SparkModel::builder(ctx, cfg.clone(), batch).backbone(backbone).optimizer(lamb).init_seed(0).build()?;
    let source = Arc::new(ProceduralSource::new(16, size as u32, 0));
    let loader_cfg = LoaderConfig { batch, size: size as u32, mask_ratio: cfg.mask_ratio, seed: 0, workers: 2, prefetch: 2 };
    let mut loader = Loader::new(source, loader_cfg)?;
    let mut losses = vec![];
    for step in 1..=steps {
        let b = loader.next_batch()?;
        model.set_batch(&b.images, &b.mask)?;
        model.train_step(step, 1e-3, 0.04)?;
        losses.push(model.read_loss()?);
    }
    // The encoder alone, under the names it declared minus the SparK prefix.
    let encoder = state_dict(&model)?.into_iter().filter_map(|(k, v)| to_timm_name(&k).map(|n| (n, v))).collect();
    write_safetensors_atomic(out, &encoder, &HashMap::new())?;
    Ok(losses)
}

#[allow(dead_code)] // `tests/examples.rs` includes this file for `run` only.
fn main() -> Result<()> {
    let ctx = GpuContext::new_default()?;
    println!("adapter: {}", ctx.describe());
    let out = Path::new("tiny_vgg_encoder.safetensors");
    for (i, l) in run(&ctx, 64, 4, 5, out)?.iter().enumerate() {
        println!("step {}: loss {l:.4}", i + 1);
    }
    println!("exported the encoder to {}", out.display());
    Ok(())
}
