//! The SparK wrapper: sparse encoder → densify (norm, mask token, projection) →
//! LightDecoder → masked-patch loss, as one static graph with its backward pass and
//! the LAMB update.

use anyhow::{Context as _, Result};
use std::sync::Arc;

use super::config::{DensifyNorm, EncoderConfig, PATCH, SparkConfig};
use super::convnext::{ConvNeXt, LN_EPS};
use super::decoder::LightDecoder;
use super::resnet::ResNet;
use super::{declare_bn, declare_conv};
use crate::gpu::{Dispatch, DryRunReport, GpuContext, GpuTensor, MemoryPlan, MemoryStats};
use crate::graph::nodes::{BnIds, ConvIds};
use crate::graph::{Graph, Kind, ParamId, ParamRegistry, ParamStore, Pass, Var};
use crate::ops::densify::gather_rows;
use crate::ops::loss::{LossTensors, masked_patch_loss_chunked};
use crate::optim::lamb::{Lamb, LambConfig, ParamSegment, no_weight_decay};
use crate::sparse::{PatchMask, Window};

enum Encoder {
    Resnet(ResNet),
    Convnext(ConvNeXt),
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
    pub cfg: SparkConfig,
    pub batch: usize,
    pub graph: Graph<'c>,
    /// The unmasked image `[B, H, W, 3]` (written per step: the loss target, and the
    /// source of the visible input pixels gathered on the GPU).
    image: GpuTensor,
    pub loss: GpuTensor,
    pub per_patch_loss: GpuTensor,
    /// Encoder feature maps (strides 4, 8, 16, 32), sparse rows.
    pub features: Vec<Var>,
    /// Reconstruction `[B, H, W, 3]`.
    pub rec: Var,
    pub optimizer: Option<Lamb>,
    /// `graph.forward[..encoder_forward]` is the encoder (after the GPU build of the
    /// step's sets and maps).
    pub encoder_forward: usize,
    /// `graph.backward[encoder_backward..]` is the encoder's backward.
    pub encoder_backward: usize,
    drop_path_seed: u64,
    /// `params.grads[decoder_grad_start..]` are the gradients of the decoder and densify
    /// stages: final once `graph.backward[..encoder_backward]` has run.
    decoder_grad_start: usize,
    /// The graph's buffers by kind (from its memory plan).
    pub memory: MemoryStats,
    /// The physical buffers the memory plan shares between tensors.
    shared_buffers: Vec<Arc<wgpu::Buffer>>,
}

/// Build options beyond the configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildOptions {
    /// Compute the encoder densely (every site), for speed comparisons (`bench --dense-encoder`).
    pub dense_encoder: bool,
    /// Stochastic depth rate of the encoder (0: none, as in the parity cases).
    pub drop_path_rate: f64,
    /// Seed of the drop-path draws.
    pub seed: u64,
    /// Run every op in chunks of at most this many images (`graph::chunks`), even where
    /// the batch fits the adapter: to test and measure the chunked path.
    pub chunk_images: Option<usize>,
    /// Data-parallel training (issue 10): BatchNorm statistics over this many ranks
    /// (0 or 1: this process's batch only).
    pub sync_bn_world: usize,
    /// Data-parallel training: this graph's `batch` images start at this position of a
    /// global batch of the given size `(first, global)` (None: the batch is global).
    pub shard: Option<(usize, usize)>,
    /// Give every tensor a buffer of its own instead of sharing buffers by liveness
    /// (`gpu::plan`): to measure and test the memory plan against.
    pub dedicated_buffers: bool,
}

/// The encoder, densify stages and decoder of `cfg`, and how many of the declared
/// parameters are the encoder's (they come first).
fn declare(
    reg: &mut ParamRegistry,
    cfg: &SparkConfig,
    drop_path_rate: f64,
) -> (Encoder, Vec<Densify>, LightDecoder, usize) {
    let encoder = match &cfg.encoder {
        EncoderConfig::Resnet { bottleneck, layers, channels } => {
            Encoder::Resnet(ResNet::declare(reg, *bottleneck, layers, channels, drop_path_rate))
        }
        EncoderConfig::Convnext { depths, dims } => Encoder::Convnext(ConvNeXt::declare(reg, depths, dims, drop_path_rate)),
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
        let token = reg.trainable(format!("mask_tokens.{i}"), &[1, e, 1, 1]);
        let norm = match cfg.densify_norm {
            DensifyNorm::Bn => DensifyNormIds::Bn(declare_bn(reg, &format!("densify_norms.{i}"), e)),
            DensifyNorm::Ln => DensifyNormIds::Ln(
                reg.trainable(format!("densify_norms.{i}.weight"), &[e]),
                reg.trainable(format!("densify_norms.{i}.bias"), &[e]),
            ),
        };
        let proj = if i == 0 && e == d {
            None
        } else {
            let k = if i == 0 { 1 } else { 3 };
            Some((declare_conv(reg, &format!("densify_projs.{i}"), e, d, k, true, false), k))
        };
        densify.push(Densify { norm, token, proj, dec_width: d });
        d /= 2;
    }
    (encoder, densify, decoder, encoder_specs)
}

/// The parameter layout of a configuration (names, shapes, kinds) without a GPU.
pub fn parameter_specs(cfg: &SparkConfig) -> Vec<crate::graph::ParamSpec> {
    let mut reg = ParamRegistry::default();
    declare(&mut reg, cfg, 0.0);
    reg.specs
}

impl<'c> SparkModel<'c> {
    /// Build the graph for `batch` images. `optimizer`: None for evaluation graphs
    /// (BatchNorm then uses running statistics and no backward is recorded).
    pub fn build(ctx: &'c GpuContext, cfg: SparkConfig, batch: usize, optimizer: Option<LambConfig>) -> Result<Self> {
        let visible = cfg.visible_per_image();
        Self::build_with_visible(ctx, cfg, batch, optimizer, visible)
    }

    /// As `build`, for masks with `visible_per_image` visible patches per image (parity
    /// cases bring their own mask).
    pub fn build_with_visible(
        ctx: &'c GpuContext,
        cfg: SparkConfig,
        batch: usize,
        optimizer: Option<LambConfig>,
        visible_per_image: usize,
    ) -> Result<Self> {
        Self::build_full(ctx, cfg, batch, optimizer, visible_per_image, BuildOptions::default())
    }

    pub fn build_full(
        ctx: &'c GpuContext,
        cfg: SparkConfig,
        batch: usize,
        optimizer: Option<LambConfig>,
        visible_per_image: usize,
        options: BuildOptions,
    ) -> Result<Self> {
        cfg.validate()?;
        crate::train::ranges::DROP_PATH.check("drop-path rate", options.drop_path_rate)?;
        anyhow::ensure!(visible_per_image >= 1, "every image must keep at least one visible patch");
        if ctx.is_dry_run() {
            return Self::build_graph(ctx, cfg, batch, optimizer, visible_per_image, options);
        }
        let sized = Self::check_fits(ctx, &cfg, batch, optimizer, visible_per_image, options)?;
        let memory = match sized.plan {
            Some(plan) => {
                let stats = plan.stats;
                ctx.follow_plan(plan);
                stats
            }
            None => MemoryStats { dedicated: sized.requested_bytes, ..Default::default() },
        };
        let built = Self::build_graph(ctx, cfg, batch, optimizer, visible_per_image, options);
        let shared_buffers = ctx.end_plan()?;
        Ok(Self { memory, shared_buffers, ..built? })
    }

    /// The build itself (run twice: dry to size and plan it, then for real).
    fn build_graph(
        ctx: &'c GpuContext,
        cfg: SparkConfig,
        batch: usize,
        optimizer: Option<LambConfig>,
        visible_per_image: usize,
        options: BuildOptions,
    ) -> Result<Self> {
        let train = optimizer.is_some();
        let mut reg = ParamRegistry::default();
        let (encoder, densify, decoder, encoder_specs) = declare(&mut reg, &cfg, options.drop_path_rate);
        // Parameters, gradients and BatchNorm running statistics outlive the step.
        let store = ctx.pinned(|| ParamStore::allocate(ctx, reg));
        let decoder_grad_start = (encoder_specs..store.specs.len())
            .map(ParamId)
            .filter(|&p| store.spec(p).kind == Kind::Trainable)
            .map(|p| store.offset(p))
            .min()
            .unwrap_or(store.grads.len);
        let f = cfg.grid();
        let mut g = Graph::new(ctx, store, batch, f, f, visible_per_image, train);
        g.dense_encoder = options.dense_encoder;
        g.sync_bn_world = options.sync_bn_world.max(1);
        if let Some((first, global)) = options.shard {
            anyhow::ensure!(first + batch <= global, "shard {first}..{} outside the global batch of {global}", first + batch);
            (g.image_offset, g.global_batch) = (first, global);
        }
        g.chunk_images = options.chunk_images;
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
        };
        let encoder_forward = g.forward.len();
        let encoder_tape = g.tape_len();
        // Everything after the encoder is dense.
        g.dense_encoder = false;
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
        let visible = g.mask.clone();
        // What the host reads after a step keeps its memory.
        let (loss, per_patch_loss) = ctx.pinned(|| (ctx.zeros(1), ctx.zeros(batch * f * f)));
        ctx.pin_tensor(g.tensor(rec));
        for &v in &features {
            ctx.pin_tensor(g.tensor(v));
        }
        let d_rec = ctx.zeros(batch * size * size * 3);
        let rec_t = g.tensor(rec).clone();
        let rec_set = g.set_of(rec);
        let ch = g.chunks_for(&[(rec_set, 3)]);
        let views: Vec<_> = ch
            .ranges()
            .map(|r| (g.view(&image, rec_set, 3, &r), g.view(&rec_t, rec_set, 3, &r), g.view(&d_rec, rec_set, 3, &r)))
            .collect();
        let t = LossTensors { visible: &visible, loss: &loss, per_patch: &per_patch_loss };
        g.forward.extend(masked_patch_loss_chunked(ctx, &views, &t, batch, size, size, PATCH)?);
        let mut encoder_backward = 0;
        let optimizer = match optimizer {
            Some(lamb_cfg) => {
                g.seed_grad(rec, d_rec);
                encoder_backward = g.build_backward(encoder_tape)?;
                let segments = g
                    .params
                    .ids()
                    .filter(|&p| g.params.spec(p).kind == Kind::Trainable)
                    .map(|p| {
                        let s = g.params.spec(p);
                        ParamSegment {
                            name: s.name.clone(),
                            offset: g.params.offset(p),
                            len: s.numel(),
                            weight_decay: !no_weight_decay(&s.name, &s.shape),
                        }
                    })
                    .collect();
                Some(ctx.pinned(|| Lamb::new(ctx, &g.params.flat, &g.params.grads, segments, lamb_cfg))?)
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
        Ok(Self {
            cfg,
            batch,
            graph: g,
            image,
            loss,
            per_patch_loss,
            features,
            rec,
            optimizer,
            encoder_forward,
            encoder_backward,
            drop_path_seed: options.seed,
            decoder_grad_start,
            memory: MemoryStats::default(),
            shared_buffers: vec![],
        })
    }

    /// Size the graph with a dry run (`gpu::sizing`) and refuse, before anything large is
    /// allocated, a batch whose tensors the adapter cannot bind, naming the largest batch
    /// that fits.
    fn check_fits(
        ctx: &'c GpuContext,
        cfg: &SparkConfig,
        batch: usize,
        optimizer: Option<LambConfig>,
        visible_per_image: usize,
        options: BuildOptions,
    ) -> Result<DryRunReport> {
        let size = |b: usize| Self::dry_run(ctx, cfg, b, optimizer, visible_per_image, options);
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
            cfg.input_size,
            cfg.dec_width,
            crate::gpu::mib(report.needed_bytes()),
        )
    }

    /// What the graph for `batch` images would need and bind, with its memory plan
    /// (unless `options.dedicated_buffers`), from a dry run of its build: nothing is
    /// allocated.
    pub fn dry_run(
        ctx: &'c GpuContext,
        cfg: &SparkConfig,
        batch: usize,
        optimizer: Option<LambConfig>,
        visible_per_image: usize,
        options: BuildOptions,
    ) -> Result<DryRunReport> {
        ctx.dry_run(|| {
            let m = Self::build_full(ctx, cfg.clone(), batch, optimizer, visible_per_image, options)?;
            if !options.dedicated_buffers {
                m.plan_memory();
            }
            Ok(())
        })
    }

    /// Dry runs: plan the graph's memory from what its dispatches touch, in the order a
    /// training step submits them (forward, backward, optimizer).
    fn plan_memory(&self) {
        let g = &self.graph;
        let opt = self.optimizer.as_ref().map_or(&[][..], |o| o.dispatches());
        let order: Vec<&Dispatch> = g.forward.iter().chain(&g.backward).chain(opt).collect();
        let host: std::collections::HashSet<usize> = g.host_points.iter().map(|h| Arc::as_ptr(&h.sum.sums.buffer) as usize).collect();
        let fwd = g.forward.len();
        self.graph.ctx.with_dry(|d| {
            let mut plan = MemoryPlan::new(&d.allocs, &order, fwd, &host);
            // Uploads (data from the host) are never shared: count them as dedicated.
            let zeros: u64 = d.allocs.iter().map(|a| a.bytes).sum();
            plan.stats.dedicated += d.requested_bytes - zeros;
            d.plan = Some(plan);
        });
    }

    /// Fill every buffer the memory plan shares with NaN, as if other tensors had left
    /// garbage there: a step must then compute exactly what it computes with a buffer per
    /// tensor (`tests/memory_plan.rs`), since each shared tensor is written before it is
    /// read.
    pub fn scramble_shared_memory(&self) {
        let q = &self.graph.ctx.queue;
        for b in &self.shared_buffers {
            let nan = vec![f32::NAN; (b.size() / 4) as usize];
            q.write_buffer(b, 0, bytemuck::cast_slice(&nan));
        }
    }

    pub fn ctx(&self) -> &'c GpuContext {
        self.graph.ctx
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
        let ctx = self.graph.ctx;
        ctx.write(&self.image, images_bhwc);
        Ok(())
    }

    /// The dispatches of forward, loss and backward, in order.
    pub fn forward_backward(&self) -> impl Iterator<Item = &Dispatch> {
        self.graph.forward.iter().chain(self.graph.backward.iter())
    }

    /// Number of dispatches of one training step (forward, backward, optimizer).
    pub fn dispatch_count(&self) -> usize {
        self.graph.forward.len() + self.graph.backward.len() + self.optimizer.as_ref().map_or(0, |o| o.dispatches().len())
    }

    /// Submit forward + loss + backward (no wait).
    pub fn submit_forward_backward(&mut self) {
        let ctx = self.graph.ctx;
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("fwd+bwd"), timestamp_writes: None });
            for d in self.forward_backward() {
                d.encode(&mut pass);
            }
        }
        ctx.queue.submit([enc.finish()]);
        if self.graph.train {
            self.graph.count_bn_forward();
        }
    }

    /// Submit the optimizer step `step` (1-based) with this step's lr and weight decay.
    pub fn submit_optimizer(&mut self, step: u32, lr: f32, weight_decay: f32) -> Result<()> {
        let ctx = self.graph.ctx;
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
        let ctx = self.graph.ctx;
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
        let grads = self.graph.params.grads.clone();
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
        let overlap = 0 < self.encoder_backward && self.encoder_backward < self.graph.backward.len();
        self.graph.set_drop_path_step(self.drop_path_seed, step as u64);
        let t = Instant::now();
        for (pass, list) in [(Pass::Forward, &self.graph.forward), (Pass::Backward, &self.graph.backward)] {
            let mut cuts: Vec<(usize, Option<&crate::graph::HostPoint>)> =
                self.graph.host_points.iter().filter(|p| p.pass == pass).map(|p| (p.at, Some(p))).collect();
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
        if self.graph.train {
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
        let mut loss = ctx.read_f32(&self.loss)?;
        reduce(&mut loss, &mut times)?;
        ctx.write(&self.loss, &[loss[0] * inv]);
        self.submit_optimizer(step, lr, weight_decay)?;
        Ok(times)
    }

    /// The loss of the last submitted forward (blocking read).
    pub fn read_loss(&self) -> Result<f32> {
        Ok(self.graph.ctx.read_f32(&self.loss)?[0])
    }

    /// Encoder feature map `i` as dense NCHW with zeros at masked sites (blocking).
    pub fn read_feature_nchw(&self, i: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        let v = self.features[i];
        let set = self.graph.stage(self.graph.set_of(v));
        let c = self.graph.channels(v);
        let rows = self.graph.ctx.read_f32(self.graph.tensor(v))?;
        let dense = self.graph.active_set(self.graph.set_of(v)).scatter(&rows, c, &vec![0.0; c]);
        Ok((vec![self.batch, c, set.h, set.w], bhwc_to_nchw(&dense, self.batch, set.h, set.w, c)))
    }

    /// The reconstruction as NCHW (blocking).
    pub fn read_rec_nchw(&self) -> Result<Vec<f32>> {
        let s = self.cfg.input_size;
        let d = self.graph.ctx.read_f32(self.graph.tensor(self.rec))?;
        Ok(bhwc_to_nchw(&d, self.batch, s, s, 3))
    }

    pub fn params(&self) -> &ParamStore {
        &self.graph.params
    }

    pub fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.graph.params
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
