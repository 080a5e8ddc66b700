//! `spark-wgpu bench`: headless throughput of the whole training step on synthetic data.

use anyhow::Result;
use std::collections::BTreeMap;
use std::time::Instant;

use super::{GpuArgs, ModelArgs};
use crate::gpu::{Dispatch, GpuContext};
use crate::model::spark::SparkBuilder;
use crate::model::{SparkConfig, SparkModel};
use crate::optim::lamb::LambConfig;
use crate::train::ranges as R;
use crate::rng::{random_patch_mask, random_vec};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub spark: ModelArgs,
    #[arg(long, default_value_t = 8, value_parser = |s: &str| R::BENCH_BATCH.parse(s))]
    pub batch: usize,
    /// Timed steps (after the warm-up steps); 0 with --warmup 0 times only the encoder.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Compute the encoder densely at every site (the official code's dense-then-mask cost).
    #[arg(long)]
    pub dense_encoder: bool,
    /// Run every op in chunks of at most N images, as a batch over the adapter's binding
    /// limit does (to measure what the chunking costs).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk_images: Option<u64>,
    /// Give every tensor its own buffer instead of sharing buffers by liveness (the
    /// memory plan), to measure what the plan saves.
    #[arg(long)]
    pub dedicated_buffers: bool,
    /// Keep BatchNorm, activation and up-sampling outputs from the forward instead of
    /// recomputing them in the backward (same results), to measure what recomputing
    /// saves in memory and costs in time.
    #[arg(long)]
    pub no_recompute: bool,
    /// Skip the per-kernel timestamp profile.
    #[arg(long)]
    pub no_profile: bool,
    /// Also list the N slowest single dispatches.
    #[arg(long, default_value_t = 0)]
    pub top: usize,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Under MPI: only time the bucketed gradient all-reduce of this model's gradient
    /// size (no graph is built), e.g. the ResNet-50 size on a machine too slow to train it.
    #[arg(long)]
    pub allreduce_only: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn timed(ctx: &GpuContext, dispatches: &[&Dispatch]) -> Result<f64> {
    let t = Instant::now();
    ctx.run(dispatches.iter().copied())?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

pub fn run(gpu: &GpuArgs, a: &BenchArgs, world: &dyn crate::dist::Collective) -> Result<()> {
    if world.size() > 1 || a.allreduce_only {
        return run_dist(gpu, a, world);
    }
    let ctx = gpu.open()?;
    let cfg = spark_config(a)?;
    let t_build = Instant::now();
    let mut model = bench_builder(&ctx, a, cfg.clone(), a.batch).build()?;
    if let Some(line) = ctx.tuner.summary() {
        eprintln!("{line}");
    }
    ctx.check("building the benchmark graph")?;
    let build_s = t_build.elapsed().as_secs_f64();
    let tune = ctx.tuner.report();
    let f = cfg.grid();
    let s = a.spark.input_size;
    let images = random_vec(7, a.batch * s * s * 3);
    let visible_ratio = cfg.visible_per_image() as f64 / (f * f) as f64;
    eprintln!("adapter: {}", ctx.describe());
    eprintln!(
        "model {} {}×{} batch {} ({} encoder): graph built in {build_s:.1} s, {} dispatches per step, {:.1} MiB of GPU buffers",
        a.spark.model,
        s,
        s,
        a.batch,
        if a.dense_encoder { "dense" } else { "sparse" },
        model.dispatch_count(),
        model.gpu_memory_bytes() as f64 / (1 << 20) as f64
    );
    let (mut step_ms, mut host_ms) = (vec![], vec![]);
    for i in 0..a.warmup + a.steps {
        let mask = random_patch_mask(100 + i as u64, a.batch, f, f, visible_ratio);
        let t = Instant::now();
        model.set_batch(&images, &mask)?;
        // The host's share of the step: checking the mask and queueing its upload and the
        // images' (the sets and maps are built by the graph's GPU prologue).
        let host = t.elapsed().as_secs_f64() * 1e3;
        model.train_step(i as u32 + 1, 1e-4, 0.04)?;
        ctx.check(&format!("benchmark step {}", i + 1))?;
        ctx.wait()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        eprintln!("step {i}: {ms:.1} ms{}", if i < a.warmup { " (warm-up)" } else { "" });
        if i >= a.warmup {
            step_ms.push(ms);
            host_ms.push(host);
        }
    }
    if a.warmup + a.steps == 0 {
        // Encoder-only timing still needs a mask and its maps.
        let mask = random_patch_mask(100, a.batch, f, f, visible_ratio);
        model.set_batch(&images, &mask)?;
    }
    let step = median(step_ms);
    let host = median(host_ms);
    let enc: Vec<&Dispatch> = model.encoder_dispatches().collect();
    let encoder_ms = median((0..a.steps.max(1)).map(|_| timed(&ctx, &enc)).collect::<Result<Vec<_>>>()?);

    // Per-kernel breakdown from timestamp queries.
    let mut breakdown = Breakdown::default();
    let profile_note = if a.no_profile {
        "skipped (--no-profile)".to_string()
    } else if !ctx.has_timestamps() {
        format!("adapter {} has no timestamp queries: no per-kernel breakdown", ctx.info.name)
    } else {
        let all: Vec<&Dispatch> = model
            .forward_backward()
            .chain(model.optimizer_dispatches())
            .collect();
        let ms = ctx.profile(&all)?;
        if a.top > 0 {
            let mut idx: Vec<usize> = (0..all.len()).collect();
            idx.sort_by(|&i, &j| ms[j].total_cmp(&ms[i]));
            for &i in idx.iter().take(a.top) {
                let gf = if all[i].flops > 0 { format!("{:.2} GFLOP/s", all[i].flops as f64 / (ms[i] * 1e6)) } else { String::new() };
                eprintln!("  {:>8.2} ms  {:<28} {} {gf}", ms[i], all[i].kernel.name, all[i].label);
            }
        }
        breakdown = Breakdown::new(&all, &ms);
        "timestamp queries, one pass per dispatch".to_string()
    };
    let kernels = &breakdown.by_kernel;
    let total: f64 = kernels.iter().map(|k| k.1).sum();
    println!("adapter        {}", ctx.describe());
    println!("model          {} {}×{} batch {} dec-width {} ({} encoder)", a.spark.model, s, s, a.batch, a.spark.dec_width, if a.dense_encoder { "dense" } else { "sparse" });
    println!("step           {step:.1} ms (median of {})", a.steps);
    println!("images/s       {:.2}", a.batch as f64 / step * 1e3);
    println!("host per step  {host:.2} ms (mask and image upload; maps are built on the GPU)");
    println!("encoder f+b    {encoder_ms:.1} ms");
    let m = model.memory();
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "GPU memory     {:.1} MiB = {:.1} dedicated (parameters, gradients, optimizer state, inputs) + {:.1} shared by liveness ({:.1} unshared; {:.1} of it activations kept for the backward); {:.1} MiB per image",
        mb(m.total()),
        mb(m.dedicated),
        mb(m.shared),
        mb(m.unshared),
        mb(m.kept_for_backward),
        mb(m.total()) / a.batch as f64
    );
    println!("dispatches     {}", model.dispatch_count());
    println!("kernels        {profile_note}");
    for (name, ms, gf) in kernels.iter().take(20) {
        println!("  {name:<40} {ms:>9.2} ms {:>5.1}% {}", 100.0 * ms / total, gflops(*gf));
    }
    if !breakdown.by_op.is_empty() {
        println!("by op          (pass and op; conv passes by layer below)");
        for (op, ms, gf) in &breakdown.by_op {
            println!("  {op:<40} {ms:>9.2} ms {:>5.1}% {}", 100.0 * ms / total, gflops(*gf));
        }
        println!("conv layers    (each pass of each conv node: the variant it runs, slowest first)");
        for c in breakdown.conv_nodes.iter().take(if a.top > 0 { a.top } else { 30 }) {
            println!("  {:<5} {:>8.2} ms {:>15}  {}  [{}]", c.pass, c.ms, gflops(c.gflops), c.layer, c.variant);
        }
    }
    // The GPU's busy time is the profile's sum (each dispatch timed alone); the rest of the
    // step is host work, submission and waiting. An estimate: replayed together, dispatches
    // may overlap or cost more than alone.
    let idle_share = (total > 0.0 && step.is_finite()).then(|| (1.0 - total / step).max(0.0));
    if let Some(idle) = idle_share {
        println!("GPU idle       {:.1}% of the step (step {step:.1} ms, kernels {total:.1} ms)", 100.0 * idle);
    }
    if a.json {
        let j = serde_json::json!({
            "adapter": ctx.info.name,
            "backend": format!("{:?}", ctx.info.backend),
            "driver": format!("{} {}", ctx.info.driver, ctx.info.driver_info),
            "model": a.spark.model,
            "input_size": s,
            "batch": a.batch,
            "dec_width": a.spark.dec_width,
            "step_ms": step.is_finite().then_some(step),
            "images_per_s": step.is_finite().then(|| a.batch as f64 / step * 1e3),
            "encoder_ms": encoder_ms,
            "host_ms": host.is_finite().then_some(host),
            "gpu_memory_bytes": m.total(),
            "memory": {"dedicated": m.dedicated, "shared": m.shared, "unshared": m.unshared,
                "kept_for_backward": m.kept_for_backward, "bytes_per_image": m.total() / a.batch as u64},
            "dispatches": model.dispatch_count(),
            "dense_encoder": a.dense_encoder,
            "kernels": kernels.iter().map(|(n, ms, gf)| serde_json::json!({"name": n, "ms": ms, "gflops": gf})).collect::<Vec<_>>(),
            "ops": breakdown.by_op.iter().map(|(n, ms, gf)| serde_json::json!({"op": n, "ms": ms, "gflops": gf})).collect::<Vec<_>>(),
            "conv_nodes": breakdown.conv_nodes.iter().map(|c| serde_json::json!({
                "pass": c.pass, "layer": c.layer, "variant": c.variant, "ms": c.ms, "gflops": c.gflops})).collect::<Vec<_>>(),
            "gpu_busy_ms": (total > 0.0).then_some(total),
            "gpu_idle_share": idle_share,
            "build_s": build_s,
            "tune": {"mode": ctx.tuner.mode().name(), "timed": tune.timed, "cached": tune.cached,
                "spent_s": tune.spent.as_secs_f64(), "choices": ctx.tuner.choices()},
        });
        println!("{j}");
    }
    Ok(())
}

fn gflops(gf: f64) -> String {
    if gf > 0.0 { format!("{gf:>7.2} GFLOP/s") } else { String::new() }
}

/// One pass of one conv node in the profile.
struct ConvNode {
    /// `fwd`, `dgrad` or `wgrad`.
    pass: String,
    /// The conv's parameter prefix (e.g. `sparse_encoder.sp_cnn.layer1.0.conv2`).
    layer: String,
    /// The kernels (shader:entry) its dispatches run, in order, each once.
    variant: String,
    ms: f64,
    gflops: f64,
}

/// The profile summed by kernel, by op (the pass and op of a conv's label, the kernel's
/// shader name otherwise) and by conv node, each sorted slowest first.
#[derive(Default)]
struct Breakdown {
    by_kernel: Vec<(String, f64, f64)>,
    by_op: Vec<(String, f64, f64)>,
    conv_nodes: Vec<ConvNode>,
}

impl Breakdown {
    fn new(all: &[&Dispatch], ms: &[f64]) -> Self {
        let rate = |t: f64, fl: u64| if fl > 0 { fl as f64 / (t * 1e6) } else { 0.0 };
        let sorted = |m: BTreeMap<String, (f64, u64)>| {
            let mut v: Vec<(String, f64, f64)> = m.into_iter().map(|(k, (t, fl))| (k, t, rate(t, fl))).collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            v
        };
        let (mut by_kernel, mut by_op) = (BTreeMap::<String, (f64, u64)>::new(), BTreeMap::<String, (f64, u64)>::new());
        // Conv launches carry "<pass> <layer>" labels (graph::nodes); consecutive dispatches
        // with one label are one node's pass.
        let mut nodes: Vec<(String, Vec<String>, f64, u64)> = vec![];
        for (d, &t) in all.iter().zip(ms) {
            let e = by_kernel.entry(d.kernel.name.clone()).or_default();
            e.0 += t;
            e.1 += d.flops;
            let shader = d.kernel.name.split(':').next().unwrap_or(&d.kernel.name).to_string();
            let op = match d.label.split_once(' ') {
                Some((pass, _)) => format!("conv {pass}"),
                None => shader,
            };
            let e = by_op.entry(op).or_default();
            e.0 += t;
            e.1 += d.flops;
            if d.label.is_empty() {
                continue;
            }
            match nodes.last_mut() {
                Some(n) if n.0 == d.label => {
                    if !n.1.contains(&d.kernel.name) {
                        n.1.push(d.kernel.name.clone());
                    }
                    n.2 += t;
                    n.3 += d.flops;
                }
                _ => nodes.push((d.label.clone(), vec![d.kernel.name.clone()], t, d.flops)),
            }
        }
        let mut conv_nodes: Vec<ConvNode> = nodes
            .into_iter()
            .map(|(label, kernels, t, fl)| {
                let (pass, layer) = label.split_once(' ').unwrap_or(("", &label));
                ConvNode { pass: pass.to_string(), layer: layer.to_string(), variant: kernels.join(" + "), ms: t, gflops: rate(t, fl) }
            })
            .collect();
        conv_nodes.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Self { by_kernel: sorted(by_kernel), by_op: sorted(by_op), conv_nodes }
    }
}

/// Time `reps` bucketed all-reduces of `floats` floats (after one untimed): seconds each.
fn time_allreduce(world: &dyn crate::dist::Collective, floats: usize, reps: usize) -> Result<Vec<f64>> {
    let mut buf = random_vec(11, floats);
    let mut out = vec![];
    for i in 0..reps + 1 {
        world.barrier()?;
        let t = Instant::now();
        crate::dist::all_reduce_bucketed(world, &mut buf, crate::dist::ALLREDUCE_BUCKET_FLOATS)?;
        if i > 0 {
            out.push(t.elapsed().as_secs_f64());
        }
        // Keep the values bounded over the repetitions.
        let inv = 1.0 / world.size() as f32;
        buf.iter_mut().for_each(|x| *x *= inv);
    }
    Ok(out)
}

/// The benchmark's training graph of `batch` images: the official LAMB settings and
/// drop-path rate of the model, as `pretrain` trains it.
fn bench_builder<'c>(ctx: &'c GpuContext, a: &BenchArgs, cfg: SparkConfig, batch: usize) -> SparkBuilder<'c> {
    let beta2 = cfg.encoder.default_beta2() as f32;
    SparkModel::builder(ctx, cfg, batch)
        .optimizer(LambConfig::spark(beta2))
        .drop_path(crate::model::EncoderConfig::official_drop_path_rate(&a.spark.model), 0)
        .dense_encoder(a.dense_encoder)
        .chunk_images(a.chunk_images.map(|n| n as usize))
        .dedicated_buffers(a.dedicated_buffers)
        .recompute(!a.no_recompute)
}

/// The preset's encoder and the benchmark's SparK configuration, validated.
fn spark_config(a: &BenchArgs) -> Result<SparkConfig> {
    let cfg = a.spark.spark_config()?;
    cfg.validate()?;
    Ok(cfg)
}

/// `bench` under MPI (issue 10): the data-parallel step split into compute, all-reduce
/// and waiting for the slowest rank, per rank, and the all-reduce bandwidth over the
/// model's gradient size. `--batch` is the global batch, as in `pretrain`.
fn run_dist(gpu: &GpuArgs, a: &BenchArgs, world: &dyn crate::dist::Collective) -> Result<()> {
    let cfg = spark_config(a)?;
    let n = world.size();
    let grad_floats: usize = crate::model::spark::parameter_specs(&cfg)?
        .iter()
        .filter(|s| s.kind == crate::graph::Kind::Trainable)
        .map(|s| s.numel())
        .sum();
    let mut split = (vec![], vec![], vec![]);
    let mut local = 0;
    if !a.allreduce_only {
        let ctx = gpu.open_for(world)?;
        let share = crate::dist::shard(a.batch, world.rank(), n)?;
        local = share.len();
        let mut model = bench_builder(&ctx, a, cfg.clone(), local).data_parallel(share.start, a.batch, n).build()?;
        ctx.check("building the benchmark graph")?;
        let f = cfg.grid();
        let s = a.spark.input_size;
        let images = random_vec(7 + world.rank() as u64, local * s * s * 3);
        let visible_ratio = cfg.visible_per_image() as f64 / (f * f) as f64;
        for i in 0..a.warmup + a.steps {
            let mask = random_patch_mask(100 + i as u64, local, f, f, visible_ratio);
            model.set_batch(&images, &mask)?;
            let t = model.train_step_dist(world, i as u32 + 1, 1e-4, 0.04, true)?;
            ctx.check(&format!("benchmark step {}", i + 1))?;
            ctx.wait()?;
            if i >= a.warmup {
                split.0.push(t.compute_s * 1e3);
                split.1.push(t.reduce_s * 1e3);
                split.2.push(t.wait_s * 1e3);
            }
        }
    }
    let (compute, reduce, wait) = (median(split.0), median(split.1), median(split.2));
    let ar = time_allreduce(world, grad_floats, a.steps.max(3))?;
    let ar_s = median(ar);
    let bytes = 4.0 * grad_floats as f64;
    // Algorithm bandwidth (bytes of the buffer per second) and the ring all-reduce's bus
    // bandwidth (each byte crosses 2(n−1)/n links), the usual NCCL/MPI figures.
    let algbw = bytes / ar_s / 1e9;
    let busbw = algbw * 2.0 * (n - 1) as f64 / n as f64;
    if !a.allreduce_only {
        eprintln!(
            "rank {} of {n}: batch {local} per rank, step {:.1} ms = compute {compute:.1} + all-reduce {reduce:.1} + waiting {wait:.1} (medians of {})",
            world.rank(),
            compute + reduce + wait,
            a.steps
        );
    }
    world.barrier()?;
    if world.is_root() {
        println!("ranks          {n}");
        println!("model          {} {}×{} global batch {} (gradient {grad_floats} floats = {:.1} MiB)", a.spark.model, a.spark.input_size, a.spark.input_size, a.batch, bytes / (1 << 20) as f64);
        if !a.allreduce_only {
            println!("step (rank 0)  compute {compute:.1} ms, all-reduce {reduce:.1} ms, waiting {wait:.1} ms");
        }
        println!(
            "all-reduce     {:.1} ms for the gradient: {algbw:.2} GB/s algorithm bandwidth, {busbw:.2} GB/s bus bandwidth (median of {}, {} floats per bucket)",
            ar_s * 1e3,
            a.steps.max(3),
            crate::dist::ALLREDUCE_BUCKET_FLOATS
        );
        if a.json {
            let j = serde_json::json!({
                "ranks": n, "model": a.spark.model, "input_size": a.spark.input_size, "batch": a.batch, "grad_floats": grad_floats,
                "compute_ms": compute.is_finite().then_some(compute), "allreduce_ms_in_step": reduce.is_finite().then_some(reduce),
                "wait_ms": wait.is_finite().then_some(wait), "allreduce_ms": ar_s * 1e3, "algbw_gbs": algbw, "busbw_gbs": busbw,
            });
            println!("{j}");
        }
    }
    Ok(())
}
