//! The SparK wrapper: sparse encoder → densify (norm, mask token, projection) →
//! LightDecoder → masked-patch loss, as one static graph with its backward pass and
//! the LAMB update.

use anyhow::{Context as _, Result};
use std::sync::Arc;

use super::config::{DensifyNorm, EncoderConfig, PATCH, SparkConfig};
use super::convnext::{ConvNeXt, LN_EPS};
use super::decoder::LightDecoder;
use super::resnet::ResNet;
use super::{Backbone, DeclaredBackbone, declare_bn, declare_conv};
use crate::gpu::{Dispatch, DryRunReport, GpuContext, GpuTensor, MemoryPlan, MemoryStats};
use crate::graph::nodes::{BnIds, ConvIds};
use crate::graph::{Graph, GraphOptions, Init, Kind, LossOutputs, ParamId, ParamRegistry, ParamStore, Pass, Var};
use crate::ops::densify::gather_rows;
use crate::optim::lamb::{Lamb, LambConfig, ParamSegment, no_weight_decay};
use crate::sparse::{PatchMask, Window};

enum Encoder {
    Resnet(ResNet),
    Convnext(ConvNeXt),
    Custom(Box<dyn DeclaredBackbone>),
}

enum DensifyNormIds {
    Bn(BnIds),
    Ln(ParamId, ParamId),
}

struct Densify {
    norm: DensifyNormIds,
    token: ParamId,
    /// None: identity (encoder width equals decoder width at the smallest map).
    proj: Option<(ConvIds, usize /*k*/)>,
    dec_width: usize,
}

/// A built SparK training (or evaluation) graph.
pub struct SparkModel<'c> {
    cfg: SparkConfig,
    batch: usize,
    graph: Graph<'c>,
    /// The unmasked image `[B, H, W, 3]` (written per step: the loss target, and the
    /// source of the visible input pixels gathered on the GPU).
    image: GpuTensor,
    loss: LossOutputs,
    /// Encoder feature maps (strides 4, 8, 16, 32), sparse rows.
    features: Vec<Var>,
    /// Reconstruction `[B, H, W, 3]`.
    rec: Var,
    optimizer: Option<Lamb>,
    /// `graph.forward()[..encoder_forward]` is the encoder (after the GPU build of the
    /// step's sets and maps).
    encoder_forward: usize,
    /// `graph.backward()[encoder_backward..]` is the encoder's backward.
    encoder_backward: usize,
    drop_path_seed: u64,
    /// `params.grads[decoder_grad_start..]` are the gradients of the decoder and densify
    /// stages: final once `graph.backward()[..encoder_backward]` has run.
    decoder_grad_start: usize,
    /// The graph's buffers by kind (from its memory plan).
    memory: MemoryStats,
    /// The physical buffers the memory plan shares between tensors.
    shared_buffers: Vec<Arc<wgpu::Buffer>>,
}

/// Builds a [`SparkModel`]: `SparkModel::builder(ctx, cfg, batch)`, options as calls,
/// then [`SparkBuilder::build`]. By default an evaluation graph with the official
/// initialisation from seed 0 and every image showing `cfg.visible_per_image()` patches.
#[derive(Clone)]
pub struct SparkBuilder<'c> {
    ctx: &'c GpuContext,
    cfg: SparkConfig,
    batch: usize,
    optimizer: Option<LambConfig>,
    visible_per_image: Option<usize>,
    graph: GraphOptions,
    drop_path_rate: f64,
    drop_path_seed: u64,
    /// Seed of the official initialisation; None: leave the weights zero (they are
    /// loaded next, from a checkpoint or a parity case).
    init_seed: Option<u64>,
    /// An encoder defined outside the crate (`cfg.encoder` is then `Custom`).
    backbone: Option<std::sync::Arc<dyn Backbone>>,
    /// Give every tensor a buffer of its own instead of sharing buffers by liveness
    /// (`gpu::plan`).
    dedicated_buffers: bool,
}

impl<'c> SparkBuilder<'c> {
    /// A training graph: record the backward and a LAMB step with these settings
    /// (see [`LambConfig::spark`]).
    pub fn optimizer(mut self, lamb: LambConfig) -> Self {
        self.optimizer = Some(lamb);
        self.graph.train = true;
        self
    }

    /// Build for masks with `n` visible patches per image (default:
    /// `cfg.visible_per_image()`; parity cases and `reconstruct` bring their own mask).
    pub fn visible_per_image(mut self, n: usize) -> Self {
        self.visible_per_image = Some(n);
        self
    }

    /// Compute the encoder densely at every site, as the official code does before
    /// masking (`bench --dense-encoder`): for speed comparisons only.
    pub fn dense_encoder(mut self, dense: bool) -> Self {
        self.graph.dense_encoder = dense;
        self
    }

    /// Stochastic depth of the encoder at network rate `rate` (0: none, the default),
    /// the per-step draws reproducible from `seed`.
    pub fn drop_path(mut self, rate: f64, seed: u64) -> Self {
        self.drop_path_rate = rate;
        self.drop_path_seed = seed;
        self
    }

    /// Run every op in chunks of at most this many images (`graph::chunks`), even where
    /// the batch fits the adapter: to test and measure the chunked path.
    pub fn chunk_images(mut self, images: Option<usize>) -> Self {
        self.graph.chunk_images = images;
        self
    }

    /// Recompute BatchNorm-apply, activation and up-sampling outputs in the backward
    /// instead of keeping them (default on; bit-identical either way, see
    /// [`GraphOptions::recompute`]): off to measure what it saves and costs.
    pub fn recompute(mut self, on: bool) -> Self {
        self.graph.recompute = on;
        self
    }

    /// Data-parallel training (issue 10): this graph's `batch` images start at `first`
    /// of a global batch of `global`; with `sync_bn_world` > 1, BatchNorm statistics are
    /// taken over that many ranks.
    pub fn data_parallel(mut self, first: usize, global: usize, sync_bn_world: usize) -> Self {
        self.graph.shard = Some((first, global));
        self.graph.sync_bn_world = sync_bn_world.max(1);
        self
    }

    /// Use an encoder defined outside the crate (see [`Backbone`]); `cfg` must come from
    /// [`SparkConfig::for_backbone`] of the same backbone.
    pub fn backbone(mut self, backbone: impl Backbone + 'static) -> Self {
        self.backbone = Some(std::sync::Arc::new(backbone));
        self
    }

    /// Give every tensor a buffer of its own instead of sharing buffers by liveness (the
    /// memory plan, `gpu::plan`): to measure and test the plan against.
    pub fn dedicated_buffers(mut self, dedicated: bool) -> Self {
        self.dedicated_buffers = dedicated;
        self
    }

    /// Initialise with the official initialisation drawn from `seed` (the default is 0).
    pub fn init_seed(mut self, seed: u64) -> Self {
        self.init_seed = Some(seed);
        self
    }

    /// Leave every weight zero: for graphs whose weights are loaded right after the build
    /// (a checkpoint, a parity case), which would overwrite the initialisation anyway.
    pub fn without_init(mut self) -> Self {
        self.init_seed = None;
        self
    }

    /// Build the graph (refusing, before anything large is allocated, a batch the
    /// adapter cannot bind) and initialise its weights.
    pub fn build(self) -> Result<SparkModel<'c>> {
        self.cfg.validate()?;
        super::config::DROP_PATH.check("drop-path rate", self.drop_path_rate)?;
        anyhow::ensure!(self.visible() >= 1, "every image must keep at least one visible patch");
        let mut model = if self.ctx.is_dry_run() {
            self.build_graph()?
        } else {
            self.ctx.tuner.clear_pending();
            let sized = self.check_fits()?;
            // The sizing queued the tuning of the conv shapes it saw; with their choices
            // made, size again (a choice can change a scratch buffer's size).
            let sized = if self.ctx.tuner.run_pending(self.ctx)? { self.dry_run()? } else { sized };
            let memory = match sized.plan {
                Some(plan) => {
                    let stats = plan.stats;
                    self.ctx.follow_plan(plan);
                    stats
                }
                None => MemoryStats { dedicated: sized.requested_bytes, ..Default::default() },
            };
            let built = self.build_graph();
            let shared_buffers = self.ctx.end_plan()?;
            SparkModel { memory, shared_buffers, ..built? }
        };
        if let Some(seed) = self.init_seed.filter(|_| !self.ctx.is_dry_run()) {
            let specs = model.params().specs.clone();
            for (s, v) in specs.iter().zip(crate::graph::init_params(&specs, seed)) {
                model.params_mut().set(self.ctx, &s.name, &s.shape, &v)?;
            }
        }
        Ok(model)
    }

    fn visible(&self) -> usize {
        self.visible_per_image.unwrap_or_else(|| self.cfg.visible_per_image())
    }

    /// What the graph would need and bind, with its memory plan (unless
    /// `dedicated_buffers`), from a dry run of its build: nothing is allocated.
    pub fn dry_run(&self) -> Result<DryRunReport> {
        let sized = SparkBuilder { init_seed: None, ..self.clone() };
        self.ctx.dry_run(|| {
            let m = sized.build()?;
            if !self.dedicated_buffers {
                m.plan_memory();
            }
            Ok(())
        })
    }

    /// Size the graph with a dry run (`gpu::sizing`) and refuse a batch whose tensors the
    /// adapter cannot bind, naming the largest batch that fits; the report carries the
    /// memory plan the real build follows.
    fn check_fits(&self) -> Result<DryRunReport> {
        let ctx = self.ctx;
        let size = |b: usize| SparkBuilder { batch: b, ..self.clone() }.dry_run();
        let batch = self.batch;
        let report = size(batch)?;
        let Some(why) = report.misfit(ctx) else { return Ok(report) };
        let fits = GpuContext::largest_fitting(batch - 1, |b| Ok(size(b)?.misfit(ctx).is_none()))?;
        let advice = match fits {
            Some(b) => format!("the largest batch that fits this adapter is {b}: use --batch {b} (or a smaller --input-size or --dec-width)"),
            None => "not even batch 1 fits: use a smaller --input-size or --dec-width".to_string(),
        };
        anyhow::bail!(
            "batch {batch} does not fit adapter {:?} at input {}² with decoder width {}: {why}; \
             the graph would allocate {} in all (nothing was allocated); {advice}",
            ctx.info.name,
            self.cfg.input_size,
            self.cfg.dec_width,
            crate::gpu::mib(report.needed_bytes()),
        )
    }

    fn build_graph(&self) -> Result<SparkModel<'c>> {
        let (ctx, cfg, batch) = (self.ctx, &self.cfg, self.batch);
        let mut reg = ParamRegistry::default();
        let (encoder, densify, decoder, encoder_specs) = declare(&mut reg, cfg, self.backbone.as_deref(), self.drop_path_rate)?;
        // Parameters, gradients and BatchNorm running statistics outlive the step.
        let store = ctx.pinned(|| ParamStore::allocate(ctx, reg));
        let decoder_grad_start = (encoder_specs..store.specs.len())
            .map(ParamId)
            .filter(|&p| store.spec(p).kind == Kind::Trainable)
            .map(|p| store.offset(p))
            .min()
            .unwrap_or(store.grads.len);
        let f = cfg.grid();
        let mut g = Graph::new(ctx, store, batch, (f, f), self.visible(), self.graph)?;
        let size = cfg.input_size;
        let input_set = g.set(size, size, true);
        let pixels = g.input(input_set, 3);
        // The visible pixels are gathered on the GPU from the uploaded image (in the
        // prologue, after the input set's rows exist), per chunk of images when large.
        let image = ctx.pinned(|| ctx.zeros(batch * size * size * 3));
        let image_set = g.set(size, size, false);
        let ch = g.chunks_for(&[(input_set, 3), (image_set, 3), (input_set, 1)]);
        let (_, site_of_row) = g.row_indices(input_set, ch);
        let pixels_t = g.tensor(pixels).clone();
        let per = g.rows_per_image(input_set);
        let d = g.per_chunk(ch, |g, r| {
            let (iv, sv, pv) = (g.view(&image, image_set, 3, r), g.view(&site_of_row, input_set, 1, r), g.view(&pixels_t, input_set, 3, r));
            gather_rows(ctx, &iv, &sv, &pv, per * r.len(), 3)
        })?;
        g.push_prologue(d);
        let features = match &encoder {
            Encoder::Resnet(r) => r.forward(&mut g, pixels, size)?,
            Encoder::Convnext(c) => c.forward(&mut g, pixels, size)?,
            Encoder::Custom(c) => c.forward(&mut g, pixels, size)?,
        };
        check_features(&g, &features, &cfg.encoder.feature_widths(), size)?;
        let encoder_forward = g.forward().len();
        let encoder_tape = g.tape_len();
        let mut to_dec = vec![];
        for (i, d) in densify.iter().enumerate() {
            let x = features[features.len() - 1 - i];
            let x = match d.norm {
                DensifyNormIds::Bn(bn) => g.batchnorm(x, bn)?,
                DensifyNormIds::Ln(w, b) => g.layernorm(x, w, b, LN_EPS)?,
            };
            let x = g.fill_masked(x, d.token)?;
            let x = match d.proj {
                Some((conv, k)) => {
                    let set = g.set_of(x);
                    g.conv(x, set, conv, d.dec_width, Window::new(k, 1, k / 2), false)?
                }
                None => x,
            };
            to_dec.push(x);
        }
        let rec = decoder.forward(&mut g, &to_dec)?;
        // What the host reads after a step keeps its memory.
        ctx.pin_tensor(g.tensor(rec));
        for &v in &features {
            ctx.pin_tensor(g.tensor(v));
        }
        let loss = ctx.pinned(|| g.masked_patch_loss(rec, &image, PATCH))?;
        let mut encoder_backward = 0;
        let optimizer = match self.optimizer {
            Some(lamb_cfg) => {
                encoder_backward = g.build_backward(encoder_tape)?;
                let params = g.params();
                let segments = params
                    .ids()
                    .filter(|&p| params.spec(p).kind == Kind::Trainable)
                    .map(|p| {
                        let s = params.spec(p);
                        ParamSegment {
                            name: s.name.clone(),
                            offset: params.offset(p),
                            len: s.numel(),
                            weight_decay: !no_weight_decay(&s.name, &s.shape),
                        }
                    })
                    .collect();
                Some(ctx.pinned(|| Lamb::new(ctx, &params.flat, &params.grads, segments, lamb_cfg))?)
            }
            None => None,
        };
        // The GPU build of the step's sets and maps runs first (it counts as encoder work).
        let encoder_forward = encoder_forward + g.finish_prologue();
        // Validation errors of the recorded bind groups (a real build only: a dry run's
        // placeholders raise some by design).
        if !ctx.is_dry_run() {
            ctx.check("building the graph")?;
        }
        Ok(SparkModel {
            cfg: cfg.clone(),
            batch,
            graph: g,
            image,
            loss,
            features,
            rec,
            optimizer,
            encoder_forward,
            encoder_backward,
            drop_path_seed: self.drop_path_seed,
            decoder_grad_start,
            memory: MemoryStats::default(),
            shared_buffers: vec![],
        })
    }
}

/// Refuse encoder features that SparK's densify stages and decoder cannot take: the
/// widths declared, at strides 32, 16, 8, 4 counted from the last (smallest) map.
fn check_features(g: &Graph, features: &[Var], widths: &[usize], input_size: usize) -> Result<()> {
    anyhow::ensure!(
        !features.is_empty() && features.len() == widths.len() && widths.len() <= 4,
        "the encoder returned {} feature maps for {} declared widths (1 to 4 expected)",
        features.len(),
        widths.len()
    );
    for (i, (&v, &c)) in features.iter().rev().zip(widths.iter().rev()).enumerate() {
        let stride = PATCH >> i;
        let set = g.stage(g.set_of(v));
        anyhow::ensure!(
            g.channels(v) == c && set.h * stride == input_size && set.w * stride == input_size,
            "encoder feature map {} is {}×{} with {} channels; expected {}×{} (stride {stride}) with {c}",
            features.len() - 1 - i,
            set.h,
            set.w,
            g.channels(v),
            input_size / stride,
            input_size / stride
        );
    }
    Ok(())
}

/// The encoder, densify stages and decoder of `cfg`, and how many of the declared
/// parameters are the encoder's (they come first).
fn declare(
    reg: &mut ParamRegistry,
    cfg: &SparkConfig,
    backbone: Option<&dyn Backbone>,
    drop_path_rate: f64,
) -> Result<(Encoder, Vec<Densify>, LightDecoder, usize)> {
    let encoder = match (&cfg.encoder, backbone) {
        (EncoderConfig::Custom { name, feature_widths }, Some(b)) => {
            anyhow::ensure!(
                (b.name(), b.feature_widths()) == (name.clone(), feature_widths.clone()),
                "the configuration describes encoder {name:?} with feature widths {feature_widths:?}, the backbone is {:?} with {:?}",
                b.name(),
                b.feature_widths()
            );
            let e = b.declare(reg, drop_path_rate)?;
            if let Some(s) = reg.specs.iter().find(|s| !s.name.starts_with(crate::io::names::ENCODER_PREFIX)) {
                anyhow::bail!(
                    "backbone {name:?}: parameter {} is not named under {:?} (every encoder parameter must be)",
                    s.name,
                    crate::io::names::ENCODER_PREFIX
                );
            }
            Encoder::Custom(e)
        }
        (EncoderConfig::Custom { name, .. }, None) => {
            anyhow::bail!("encoder {name:?} is defined outside the crate: give its Backbone to SparkBuilder::backbone")
        }
        (_, Some(b)) => anyhow::bail!("backbone {:?} given for a configuration of a built-in encoder", b.name()),
        (EncoderConfig::Resnet { bottleneck, layers, channels }, None) => {
            Encoder::Resnet(ResNet::declare(reg, *bottleneck, layers, channels, drop_path_rate))
        }
        (EncoderConfig::Convnext { depths, dims }, None) => Encoder::Convnext(ConvNeXt::declare(reg, depths, dims, drop_path_rate)),
    };
    // Everything declared from here on (decoder, densify) lies after the encoder in the
    // flat buffers: `SparkModel::decoder_grad_start` relies on it.
    let encoder_specs = reg.specs.len();
    let decoder = LightDecoder::declare(reg, cfg.dec_width);
    let widths = cfg.encoder.feature_widths();
    let mut densify = vec![];
    let mut d = cfg.dec_width;
    for i in 0..widths.len() {
        let e = widths[widths.len() - 1 - i];
        // The official `trunc_normal_(mask_token, mean=0, std=.02, a=-.02, b=.02)`.
        let token = reg.trainable(format!("mask_tokens.{i}"), &[1, e, 1, 1], Init::TruncNormal { std: 0.02, lo: -0.02, hi: 0.02 });
        let norm = match cfg.densify_norm {
            DensifyNorm::Bn => DensifyNormIds::Bn(declare_bn(reg, &format!("densify_norms.{i}"), e, Init::ONE)),
            DensifyNorm::Ln => DensifyNormIds::Ln(
                reg.trainable(format!("densify_norms.{i}.weight"), &[e], Init::ONE),
                reg.trainable(format!("densify_norms.{i}.bias"), &[e], Init::ZERO),
            ),
        };
        let proj = if i == 0 && e == d {
            None
        } else {
            let k = if i == 0 { 1 } else { 3 };
            // PyTorch's default Conv2d init: the official code leaves these as built.
            let bias = Init::KaimingUniform { fan_in: e * k * k };
            Some((declare_conv(reg, &format!("densify_projs.{i}"), e, d, k, false, Init::torch_default_conv, Some(bias)), k))
        };
        densify.push(Densify { norm, token, proj, dec_width: d });
        d /= 2;
    }
    Ok((encoder, densify, decoder, encoder_specs))
}

/// The parameter layout of a built-in configuration (names, shapes, kinds) without a GPU.
pub fn parameter_specs(cfg: &SparkConfig) -> Result<Vec<crate::graph::ParamSpec>> {
    let mut reg = ParamRegistry::default();
    declare(&mut reg, cfg, None, 0.0)?;
    Ok(reg.specs)
}

impl<'c> SparkModel<'c> {
    /// A builder of the SparK graph of `cfg` for `batch` images (see [`SparkBuilder`]).
    pub fn builder(ctx: &'c GpuContext, cfg: SparkConfig, batch: usize) -> SparkBuilder<'c> {
        SparkBuilder {
            ctx,
            cfg,
            batch,
            optimizer: None,
            visible_per_image: None,
            graph: GraphOptions::new(false),
            drop_path_rate: 0.0,
            drop_path_seed: 0,
            init_seed: Some(0),
            backbone: None,
            dedicated_buffers: false,
        }
    }

    /// The GPU context the model runs on.
    pub fn ctx(&self) -> &'c GpuContext {
        self.graph.ctx()
    }

    /// Write one step's inputs: normalised images `[B, H, W, 3]` and the patch mask.
    pub fn set_batch(&mut self, images_bhwc: &[f32], mask: &PatchMask) -> Result<()> {
        let s = self.cfg.input_size;
        anyhow::ensure!(
            images_bhwc.len() == self.batch * s * s * 3,
            "batch of {} values, expected [{}, {s}, {s}, 3]",
            images_bhwc.len(),
            self.batch
        );
        self.graph.set_mask(mask).context("setting the patch mask")?;
        let ctx = self.graph.ctx();
        ctx.write(&self.image, images_bhwc);
        Ok(())
    }

    /// The dispatches of forward, loss and backward, in order.
    pub fn forward_backward(&self) -> impl Iterator<Item = &Dispatch> {
        self.graph.forward().iter().chain(self.graph.backward().iter())
    }

    /// The encoder's share of the step: its forward (after the GPU build of the step's sets
    /// and maps) and its backward (`bench`'s encoder timing).
    pub fn encoder_dispatches(&self) -> impl Iterator<Item = &Dispatch> {
        self.graph.forward()[..self.encoder_forward].iter().chain(self.graph.backward()[self.encoder_backward..].iter())
    }

    /// The optimizer's dispatches (empty for an evaluation graph).
    pub fn optimizer_dispatches(&self) -> &[Dispatch] {
        self.optimizer.as_ref().map_or(&[], |o| o.dispatches())
    }

    /// Number of dispatches of one training step (forward, backward, optimizer).
    pub fn dispatch_count(&self) -> usize {
        self.graph.forward().len() + self.graph.backward().len() + self.optimizer_dispatches().len()
    }

    /// Submit forward + loss + backward (no wait).
    pub fn submit_forward_backward(&mut self) {
        self.graph.ctx().submit(self.forward_backward());
        if self.graph.is_train() {
            self.graph.count_bn_forward();
        }
    }

    /// Run the forward (and loss) alone and wait: an evaluation graph's whole work.
    pub fn run_forward(&self) -> Result<()> {
        self.graph.ctx().run(self.graph.forward())
    }

    /// Submit the optimizer step `step` (1-based) with this step's lr and weight decay.
    pub fn submit_optimizer(&mut self, step: u32, lr: f32, weight_decay: f32) -> Result<()> {
        let ctx = self.graph.ctx();
        let opt = self.optimizer.as_ref().context("this graph was built without an optimizer")?;
        opt.set_hyper(ctx, step, lr, weight_decay);
        ctx.submit(opt.dispatches());
        Ok(())
    }

    /// One whole training step: forward, backward, LAMB.
    pub fn train_step(&mut self, step: u32, lr: f32, weight_decay: f32) -> Result<()> {
        self.graph.set_drop_path_step(self.drop_path_seed, step as u64);
        self.submit_forward_backward();
        self.submit_optimizer(step, lr, weight_decay)
    }

    /// One data-parallel training step over the ranks of `coll` (issue 10): forward and
    /// backward, cut at the synchronised BatchNorm's host points; the gradients (and the
    /// loss) averaged over the ranks in buckets of [`crate::dist::ALLREDUCE_BUCKET_FLOATS`];
    /// then LAMB, identical on every rank.
    ///
    /// Overlap: the decoder's gradients are final once the backward reaches the encoder
    /// (`encoder_backward`; about half the gradient of SparK-ResNet-50 at decoder width
    /// 768). Up to [`crate::dist::OVERLAP_BUCKETS`] of their buckets are read back there and
    /// all-reduced one per encoder backward segment while the GPU runs it (ConvNeXt: the
    /// whole encoder backward is one segment; synchronised-BN ResNets: one bucket per BN).
    /// The rest is all-reduced after the backward.
    ///
    /// With `measure_wait`, a barrier before every all-reduce separates the time spent
    /// waiting for slower ranks from the all-reduce itself (`bench`).
    pub fn train_step_dist(
        &mut self,
        coll: &dyn crate::dist::Collective,
        step: u32,
        lr: f32,
        weight_decay: f32,
        measure_wait: bool,
    ) -> Result<crate::dist::StepTimes> {
        use std::time::Instant;
        let ctx = self.graph.ctx();
        let mut times = crate::dist::StepTimes::default();
        let inv = (1.0 / coll.size() as f64) as f32;
        // One all-reduce of `v` (and the barrier before it in `bench`).
        let reduce = |v: &mut [f32], times: &mut crate::dist::StepTimes| -> Result<()> {
            if measure_wait {
                let w = Instant::now();
                coll.barrier()?;
                times.wait_s += w.elapsed().as_secs_f64();
            }
            let r = Instant::now();
            coll.all_reduce_sum(v)?;
            times.reduce_s += r.elapsed().as_secs_f64();
            times.reduced_bytes += 4 * v.len() as u64;
            Ok(())
        };
        let grads = self.graph.params().grads.clone();
        let bucket = crate::dist::ALLREDUCE_BUCKET_FLOATS;
        let buckets = |range: std::ops::Range<usize>| {
            let g = grads.clone();
            range.clone().step_by(bucket).map(move |off| g.slice(off, bucket.min(range.end - off)))
        };
        // Gradient buckets read back and waiting for their all-reduce.
        let mut pending: std::collections::VecDeque<(GpuTensor, Vec<f32>)> = Default::default();
        let reduce_pending = |pending: &mut std::collections::VecDeque<(GpuTensor, Vec<f32>)>,
                                  times: &mut crate::dist::StepTimes|
         -> Result<()> {
            if let Some((part, mut v)) = pending.pop_front() {
                reduce(&mut v, times)?;
                v.iter_mut().for_each(|x| *x *= inv);
                ctx.write(&part, &v);
            }
            Ok(())
        };
        let overlap_end =
            (self.decoder_grad_start + crate::dist::OVERLAP_BUCKETS * bucket).min(grads.len).max(self.decoder_grad_start);
        // Only when both the decoder's and the encoder's backward are non-empty.
        let overlap = 0 < self.encoder_backward && self.encoder_backward < self.graph.backward().len();
        self.graph.set_drop_path_step(self.drop_path_seed, step as u64);
        let t = Instant::now();
        for (pass, list) in [(Pass::Forward, self.graph.forward()), (Pass::Backward, self.graph.backward())] {
            let mut cuts: Vec<(usize, Option<&crate::graph::HostPoint>)> =
                self.graph.host_points().iter().filter(|p| p.pass == pass).map(|p| (p.at, Some(p))).collect();
            if pass == Pass::Backward {
                // Before the host point at the same index, so that bucket reads come first.
                let i = cuts.partition_point(|c| c.0 < self.encoder_backward);
                cuts.insert(i, (self.encoder_backward, None));
            }
            cuts.push((list.len(), None));
            let mut from = 0;
            for (to, point) in cuts {
                ctx.submit(&list[from..to]);
                // A bucket of decoder gradients reduced while the GPU runs this segment.
                if pass == Pass::Backward && from >= self.encoder_backward {
                    reduce_pending(&mut pending, &mut times)?;
                }
                from = to;
                match point {
                    Some(p) => {
                        let mut v = ctx.read_f32(&p.sum.sums)?;
                        reduce(&mut v, &mut times)?;
                        if p.sum.scale != 1.0 {
                            v.iter_mut().for_each(|x| *x *= p.sum.scale);
                        }
                        ctx.write(&p.sum.sums, &v);
                    }
                    None if pass == Pass::Backward && to == self.encoder_backward && overlap => {
                        for part in buckets(self.decoder_grad_start..overlap_end) {
                            let v = ctx.read_f32(&part)?;
                            pending.push_back((part, v));
                        }
                    }
                    None => {}
                }
            }
        }
        if self.graph.is_train() {
            self.graph.count_bn_forward();
        }
        while !pending.is_empty() {
            reduce_pending(&mut pending, &mut times)?;
        }
        ctx.wait()?;
        times.compute_s = t.elapsed().as_secs_f64() - times.reduce_s - times.wait_s;
        let overlapped = if overlap { self.decoder_grad_start..overlap_end } else { 0..0 };
        for range in [0..overlapped.start, overlapped.end..grads.len] {
            for part in buckets(range) {
                let mut v = ctx.read_f32(&part)?;
                reduce(&mut v, &mut times)?;
                v.iter_mut().for_each(|x| *x *= inv);
                ctx.write(&part, &v);
            }
        }
        // The loss every rank logs: the mean of the ranks' losses (each the mean over an
        // equal share of the masked patches) is the global batch's loss.
        let mut loss = ctx.read_f32(&self.loss.loss)?;
        reduce(&mut loss, &mut times)?;
        ctx.write(&self.loss.loss, &[loss[0] * inv]);
        self.submit_optimizer(step, lr, weight_decay)?;
        Ok(times)
    }

    /// The loss of the last submitted forward (blocking read).
    pub fn read_loss(&self) -> Result<f32> {
        Ok(self.graph.ctx().read_f32(&self.loss.loss)?[0])
    }

    /// Encoder feature map `i` as dense NCHW with zeros at masked sites (blocking).
    pub fn read_feature_nchw(&self, i: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        let v = self.features[i];
        let set = self.graph.stage(self.graph.set_of(v));
        let c = self.graph.channels(v);
        let rows = self.graph.ctx().read_f32(self.graph.tensor(v))?;
        let dense = self.graph.active_set(self.graph.set_of(v)).scatter(&rows, c, &vec![0.0; c]);
        Ok((vec![self.batch, c, set.h, set.w], bhwc_to_nchw(&dense, self.batch, set.h, set.w, c)))
    }

    /// The reconstruction as NCHW (blocking).
    pub fn read_rec_nchw(&self) -> Result<Vec<f32>> {
        let s = self.cfg.input_size;
        let d = self.graph.ctx().read_f32(self.graph.tensor(self.rec))?;
        Ok(bhwc_to_nchw(&d, self.batch, s, s, 3))
    }

    /// The model's parameters and buffers.
    pub fn params(&self) -> &ParamStore {
        self.graph.params()
    }

    /// The model's parameters and buffers, to write (checkpoints, weights from elsewhere).
    pub fn params_mut(&mut self) -> &mut ParamStore {
        self.graph.params_mut()
    }

    /// The configuration the model was built for.
    pub fn config(&self) -> &SparkConfig {
        &self.cfg
    }

    /// Images per step.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The static graph (read-only: its tensors, sets and dispatches).
    pub fn graph(&self) -> &Graph<'c> {
        &self.graph
    }

    /// The loss tensors: the mean masked-patch loss `[1]` and the per-patch losses.
    pub fn loss(&self) -> &LossOutputs {
        &self.loss
    }

    /// The reconstruction `[B, H, W, 3]`.
    pub fn rec(&self) -> Var {
        self.rec
    }

    /// The encoder's feature maps (strides 4, 8, 16, 32), sparse rows.
    pub fn features(&self) -> &[Var] {
        &self.features
    }

    /// The optimizer (None for an evaluation graph).
    pub fn optimizer(&self) -> Option<&Lamb> {
        self.optimizer.as_ref()
    }

    /// The optimizer, to restore its state from a checkpoint.
    pub fn optimizer_mut(&mut self) -> Option<&mut Lamb> {
        self.optimizer.as_mut()
    }

    /// Draw the drop-path masks of training step `step` (1-based, as `train_step` does).
    pub fn set_drop_path_step(&self, step: u64) {
        self.graph.set_drop_path_step(self.drop_path_seed, step);
    }

    /// Bytes of the buffers of this model's graph (after its memory plan).
    pub fn gpu_memory_bytes(&self) -> u64 {
        self.memory.total()
    }

    /// The graph's buffers by kind (see [`MemoryStats`]).
    pub fn memory(&self) -> &MemoryStats {
        &self.memory
    }

    /// Fill every buffer the memory plan shares with NaN, as if other tensors had left
    /// garbage there: a step must then compute exactly what it computes with a buffer per
    /// tensor (`tests/memory_plan.rs`), since each shared tensor is written before it is
    /// read.
    pub fn scramble_shared_memory(&self) {
        let q = &self.ctx().queue;
        for b in &self.shared_buffers {
            let nan = vec![f32::NAN; (b.size() / 4) as usize];
            q.write_buffer(b, 0, bytemuck::cast_slice(&nan));
        }
    }

    /// Dry runs: plan the graph's memory from what its dispatches touch, in the order a
    /// training step submits them (forward, backward, optimizer).
    fn plan_memory(&self) {
        let g = &self.graph;
        let order: Vec<&Dispatch> = g.forward().iter().chain(g.backward()).chain(self.optimizer_dispatches()).collect();
        let host: std::collections::HashSet<usize> = g.host_points().iter().map(|h| Arc::as_ptr(&h.sum.sums.buffer) as usize).collect();
        let fwd = g.forward().len();
        self.ctx().with_dry(|d| {
            let mut plan = MemoryPlan::new(&d.allocs, &order, fwd, &host);
            // Uploads (data from the host) are never shared: count them as dedicated.
            let zeros: u64 = d.allocs.iter().map(|a| a.bytes).sum();
            plan.stats.dedicated += d.requested_bytes - zeros;
            d.plan = Some(plan);
        });
    }
}

/// `[B, H, W, C]` → `[B, C, H, W]`.
pub fn bhwc_to_nchw(x: &[f32], b: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for y in 0..h {
            for xx in 0..w {
                for ci in 0..c {
                    out[((bi * c + ci) * h + y) * w + xx] = x[((bi * h + y) * w + xx) * c + ci];
                }
            }
        }
    }
    out
}

/// `[B, C, H, W]` → `[B, H, W, C]`.
pub fn nchw_to_bhwc(x: &[f32], b: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for ci in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    out[((bi * h + y) * w + xx) * c + ci] = x[((bi * c + ci) * h + y) * w + xx];
                }
            }
        }
    }
    out
}
