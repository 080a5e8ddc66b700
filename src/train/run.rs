//! The pre-training loop as named steps: open the data, build the model, restore or
//! start the run directory, then train step by step (record, checkpoint, visualise),
//! and report what was written.

use anyhow::{Context as _, Result, bail};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::loss_ring::LossRing;
use super::record::Recorder;
use super::{
    CHECKPOINT_FILE, CONFIG_FILE, CURVE_FILE, CURVE_SIZE, KERNEL_CHOICES_FILE, KERNELS_META, LOG_FILE, PretrainConfig, RunSummary, WORLD_META,
    checkpoint, open_source, plot, recover_checkpoint, save_checkpoint, truncate_log, viz, write_run_config,
};
use crate::data::{ImageSource, Loader, LoaderConfig};
use crate::dist::Collective;
use crate::gpu::GpuContext;
use crate::model::SparkModel;
use crate::optim::schedule::{lr_wd_at, peak_lr};

/// Run (or resume) a pre-training run in `run_dir`. `stop` is set by Ctrl-C: the step
/// in flight finishes, a checkpoint is written and the run returns.
pub fn pretrain(
    ctx: &GpuContext,
    cfg: &PretrainConfig,
    run_dir: &Path,
    resume: bool,
    stop: Arc<AtomicBool>,
    progress: bool,
) -> Result<RunSummary> {
    pretrain_dist(ctx, cfg, run_dir, resume, stop, progress, &crate::dist::Solo)
}

/// [`pretrain`] as one rank of a data-parallel world (issue 10): this rank trains on its
/// share of every global batch of `cfg.batch`; gradients, the loss, the stop flag and
/// (with `cfg.sync_bn`) the BatchNorm statistics are combined over `coll`; only the root
/// rank writes the run directory.
pub fn pretrain_dist(
    ctx: &GpuContext,
    cfg: &PretrainConfig,
    run_dir: &Path,
    resume: bool,
    stop: Arc<AtomicBool>,
    progress: bool,
    coll: &dyn Collective,
) -> Result<RunSummary> {
    cfg.validate()?;
    let root = coll.is_root();
    let share = crate::dist::shard(cfg.batch, coll.rank(), coll.size())?;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating run directory {}", run_dir.display()))?;
    let source = open_source(cfg)?;
    let mut loader = open_loader(cfg, source.clone(), share.clone())?;
    let sched = Schedule::new(cfg, loader.steps_per_epoch())?;
    if resume {
        // Before the graph is built: its nodes take the kernels the run started with.
        let (family, choices) = super::read_kernel_choices(run_dir)?;
        check_family(ctx, family.as_deref(), &run_dir.join(KERNEL_CHOICES_FILE))?;
        ctx.tuner.replay(choices);
    }
    let mut model = build_model(ctx, cfg, &share, coll.size(), resume)?;
    let ckpt_path = run_dir.join(CHECKPOINT_FILE);
    prepare_run_dir(run_dir, &ckpt_path, resume, coll)?;
    let start = match resume {
        true => restore(&mut model, &ckpt_path, run_dir, &sched, cfg, coll)?,
        false => start_fresh(&mut model, run_dir, cfg, root)?,
    };
    if root {
        announce(&model, cfg, &sched, coll.size(), share.len());
        if let Some(line) = ctx.tuner.summary() {
            eprintln!("{line}");
        }
    }

    let mut rec = Recorder::open(cfg, run_dir, (start, sched.total, sched.spe), coll.size(), root, progress)?;
    let mut ring = LossRing::new(ctx, 4);
    let grad_norm = model.optimizer().map(|o| o.grad_norm());
    let mut viz = match cfg.viz_every {
        Some(n) if n > 0 && root => Some((n, viz::Viz::new(ctx, cfg, source.as_ref(), run_dir)?)),
        _ => None,
    };
    let mut last_viz: Option<PathBuf> = None;
    let save_every = cfg.save_every.unwrap_or(sched.spe).max(1);
    loader.start(start / sched.spe, start % sched.spe);
    let (mut step, mut last_ckpt, mut interrupted) = (start, start, false);
    let mut split = crate::dist::StepTimes::default();
    while step < sched.total {
        // Ctrl-C on any rank stops every rank after the same step.
        if coll.any(stop.load(Ordering::SeqCst))? {
            interrupted = true;
            break;
        }
        split += train_one_step(&mut model, &mut loader, &sched, step, cfg, coll, &mut rec)?;
        let mut done = vec![];
        ring.push(ctx, step, &model.loss().loss, grad_norm.as_ref(), &mut done)?;
        ctx.check(&format!("training step {step}"))?;
        // Every rank must judge each step's (global) loss at the same step, or one rank
        // would stop on a NaN while the others wait for it: with several ranks the step
        // is synchronous anyway, so collect its loss now.
        done.extend(if coll.size() > 1 { ring.drain(ctx)? } else { ring.ready(ctx)? });
        rec.record(done)?;
        step += 1;
        rec.bar.set_position(step as u64);
        if step.is_multiple_of(save_every) || step == sched.total {
            // Never checkpoint past a non-finite loss: collect every loss first.
            rec.record(ring.drain(ctx)?)?;
            if root {
                save_checkpoint(&model, &ckpt_path, cfg, step, coll.size())?;
            }
            last_ckpt = step;
        }
        if let Some((n, v)) = viz.as_mut()
            && (step.is_multiple_of(*n) || step == sched.total)
        {
            let (path, loss) = v.write(&model, step)?;
            if let Some(tb) = rec.tb.as_mut() {
                tb.scalars(step, &[("viz_loss", loss)])?;
            }
            last_viz = Some(path);
        }
    }
    rec.record(ring.drain(ctx)?)?;
    if step != last_ckpt && root {
        save_checkpoint(&model, &ckpt_path, cfg, step, coll.size())?;
    }
    rec.bar.finish_and_clear();
    if coll.size() > 1 && step > start {
        report_rank_times(coll, &split, step - start, share.len(), rec.elapsed_s());
    }
    // The root writes the checkpoint: the others must not return (and exit) before it
    // is on disk, or a launcher could end the job while it is written.
    coll.barrier()?;
    report_loader(&loader, rec.elapsed_s());
    finish(rec, ckpt_path, last_viz, step, interrupted, loader.skipped_images(), root)
}

/// The run's length and learning-rate schedule, in steps.
struct Schedule {
    /// Steps per epoch.
    spe: usize,
    /// Steps of the whole schedule (`epochs` × `spe`): the cosine decays over these.
    schedule_len: usize,
    /// Steps this run trains to (`--max-steps` may stop it early).
    total: usize,
    warmup_it: usize,
    peak_lr: f64,
}

impl Schedule {
    fn new(cfg: &PretrainConfig, spe: usize) -> Result<Self> {
        let schedule_len = cfg.epochs * spe;
        let total = cfg.max_steps.map_or(schedule_len, |m| m.min(schedule_len));
        if total == 0 {
            bail!("nothing to do: --epochs {} × {spe} steps per epoch is 0 steps", cfg.epochs);
        }
        Ok(Self {
            spe,
            schedule_len,
            total,
            warmup_it: (cfg.warmup_epochs * spe as f64).round() as usize,
            peak_lr: peak_lr(cfg.base_lr, cfg.batch),
        })
    }
}

/// This rank's loader over its `share` of every global batch.
fn open_loader(cfg: &PretrainConfig, source: Arc<dyn ImageSource>, share: Range<usize>) -> Result<Loader> {
    let mut loader = Loader::new_shard(
        source,
        LoaderConfig {
            batch: cfg.batch,
            size: cfg.spark.input_size as u32,
            mask_ratio: cfg.spark.mask_ratio,
            seed: cfg.seed,
            workers: cfg.workers,
            prefetch: 4,
        },
        share,
    )?;
    // The loader's messages carry their own "warning:".
    loader.on_skip(|msg| eprintln!("{msg}"));
    Ok(loader)
}

/// The training graph of this rank's share; a resumed run's weights come from its
/// checkpoint, a new run's from the official initialisation.
fn build_model<'c>(ctx: &'c GpuContext, cfg: &PretrainConfig, share: &Range<usize>, world: usize, resume: bool) -> Result<SparkModel<'c>> {
    let builder = SparkModel::builder(ctx, cfg.spark.clone(), share.len())
        .optimizer(cfg.lamb())
        .drop_path(cfg.drop_path, cfg.seed)
        .data_parallel(share.start, cfg.batch, if cfg.sync_bn { world } else { 1 });
    let builder = if resume { builder.without_init() } else { builder.init_seed(cfg.seed) };
    let model = builder.build()?;
    ctx.check("building the training graph")?;
    Ok(model)
}

/// Recover a checkpoint a kill left as a temporary (resume), and remove the temporaries
/// of interrupted writes.
fn prepare_run_dir(run_dir: &Path, ckpt_path: &Path, resume: bool, coll: &dyn Collective) -> Result<()> {
    if resume && coll.is_root() {
        recover_checkpoint(ckpt_path)?;
    }
    // The other ranks read the checkpoint once the root has recovered it.
    coll.barrier()?;
    // Temporaries of writes a kill interrupted (a checkpoint's is as large as the
    // checkpoint): nothing else writes this run directory, so they are garbage now.
    for f in [CHECKPOINT_FILE, CONFIG_FILE, LOG_FILE, CURVE_FILE, KERNEL_CHOICES_FILE].into_iter().filter(|_| coll.is_root()) {
        let freed = crate::io::atomic::remove_stale_temps(&run_dir.join(f));
        if freed > 0 {
            eprintln!("removed {:.1} MiB of temporary files an interrupted write of {f} left", freed as f64 / (1 << 20) as f64);
        }
    }
    Ok(())
}

/// Refuse to continue a run recorded (in `file`) with the kernel family `rec` under another.
fn check_family(ctx: &GpuContext, rec: Option<&str>, file: &Path) -> Result<()> {
    if let Some(rec) = rec.filter(|k| *k != ctx.kernel_set.name()) {
        bail!(
            "{}: this run was trained with the {rec} kernel family, but {} would run the {} family, \
             which sums in another order; resume with --kernels {rec} to continue it bit-identically",
            file.display(),
            ctx.info.name,
            ctx.kernel_set.name()
        );
    }
    Ok(())
}

/// Load the run's checkpoint into `model`; returns the step to continue at.
fn restore(
    model: &mut SparkModel,
    ckpt_path: &Path,
    run_dir: &Path,
    sched: &Schedule,
    cfg: &PretrainConfig,
    coll: &dyn Collective,
) -> Result<usize> {
    let ctx = model.ctx();
    let (t, meta) = checkpoint::read_any(ckpt_path)?;
    check_family(ctx, meta.get(KERNELS_META).map(String::as_str), ckpt_path)?;
    checkpoint::load(model, &t, ckpt_path, true)?;
    let start: usize = meta
        .get("next_step")
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{}: no next_step in the metadata", ckpt_path.display()))?;
    let (world, root) = (coll.size(), coll.is_root());
    let saved_world: usize = meta.get(WORLD_META).and_then(|s| s.parse().ok()).unwrap_or(1);
    if saved_world != world && root {
        eprintln!(
            "note: {} was written by {saved_world} rank(s) and is resumed by {world}: the run continues \
             correctly, but its sums run in another order, so it will not be bit-identical to an uninterrupted run",
            ckpt_path.display()
        );
    }
    // Log lines are written before the checkpoint that covers them: drop those of
    // steps the checkpoint does not hold, or the resumed run would log them twice.
    if root {
        truncate_log(&run_dir.join(LOG_FILE), start)?;
    }
    if start >= sched.total {
        bail!(
            "nothing to do: {} is at step {start} and the run ends at step {} \
             ({} epochs × {} steps{}); raise --max-steps or --epochs to continue",
            run_dir.display(),
            sched.total,
            cfg.epochs,
            sched.spe,
            cfg.max_steps.map_or(String::new(), |m| format!(", --max-steps {m}"))
        );
    }
    eprintln!("resuming at step {start} of {} from {}", sched.total, ckpt_path.display());
    Ok(start)
}

/// A new run: optional `--init-weights`, then `config.json`. Starts at step 0.
fn start_fresh(model: &mut SparkModel, run_dir: &Path, cfg: &PretrainConfig, root: bool) -> Result<usize> {
    if let Some(w) = &cfg.init_weights {
        let (t, _) = checkpoint::read_any(w)?;
        let r = checkpoint::load(model, &t, w, false)?;
        eprintln!(
            "initialised {} tensors from {} ({} kept their fresh initialisation{})",
            r.loaded,
            w.display(),
            r.missing.len(),
            if r.unexpected.is_empty() { String::new() } else { format!(", {} in the file unused", r.unexpected.len()) }
        );
    }
    if root {
        write_run_config(run_dir, cfg)?;
        super::write_kernel_choices(run_dir, model.ctx())?;
    }
    Ok(0)
}

/// The one line that says what is about to run.
fn announce(model: &SparkModel, cfg: &PretrainConfig, sched: &Schedule, world: usize, local_batch: usize) {
    eprintln!(
        "{} on {}: {} steps ({} per epoch), batch {}{}, peak lr {:.2e}, {} dispatches per step, {:.1} MiB of GPU buffers",
        cfg.model,
        model.ctx().info.name,
        sched.total,
        sched.spe,
        cfg.batch,
        if world > 1 {
            format!(" ({world} ranks × {local_batch}, BatchNorm {})", if cfg.sync_bn { "synchronised" } else { "per rank" })
        } else {
            String::new()
        },
        sched.peak_lr,
        model.dispatch_count(),
        model.gpu_memory_bytes() as f64 / (1 << 20) as f64
    );
}

/// Next batch in, the step's schedule, one optimisation step (all-reduced over the ranks
/// when there are several). Returns the step's compute/communication split.
fn train_one_step(
    model: &mut SparkModel,
    loader: &mut Loader,
    sched: &Schedule,
    step: usize,
    cfg: &PretrainConfig,
    coll: &dyn Collective,
    rec: &mut Recorder,
) -> Result<crate::dist::StepTimes> {
    let batch = loader.next_batch()?;
    model.set_batch(&batch.images, &batch.mask)?;
    let (lr, wd) = lr_wd_at(sched.peak_lr, cfg.weight_decay, cfg.weight_decay_end, step, sched.warmup_it, sched.schedule_len);
    rec.schedule(step, lr, wd);
    if coll.size() > 1 {
        model.train_step_dist(coll, step as u32 + 1, lr as f32, wd as f32, false)
    } else {
        model.train_step(step as u32 + 1, lr as f32, wd as f32)?;
        Ok(crate::dist::StepTimes::default())
    }
}

/// One rank's throughput and its split of a step (data-parallel runs).
fn report_rank_times(coll: &dyn Collective, split: &crate::dist::StepTimes, steps: usize, local_batch: usize, wall_s: f64) {
    let n = steps as f64;
    eprintln!(
        "rank {} of {}: {:.1} img/s on this rank; per step {:.0} ms compute, {:.0} ms all-reduce and waiting ({:.1} MiB summed)",
        coll.rank(),
        coll.size(),
        (steps * local_batch) as f64 / wall_s,
        split.compute_s / n * 1e3,
        split.reduce_s / n * 1e3,
        split.reduced_bytes as f64 / n / (1 << 20) as f64
    );
}

/// Skipped images, and a note when decoding could not keep up.
fn report_loader(loader: &Loader, wall_s: f64) {
    if loader.skipped_images() > 0 {
        eprintln!("{} unreadable images were skipped", loader.skipped_images());
    }
    let stall = loader.stall_seconds();
    if wall_s > 0.0 && stall / wall_s > 0.1 {
        eprintln!(
            "note: the GPU waited {stall:.1} s of {wall_s:.1} s for images: the CPU cannot decode fast enough \
             (raise --workers or use smaller images)"
        );
    }
}

/// Write the loss curve and say what the run wrote.
fn finish(
    mut rec: Recorder,
    ckpt_path: PathBuf,
    last_viz: Option<PathBuf>,
    step: usize,
    interrupted: bool,
    skipped_images: usize,
    root: bool,
) -> Result<RunSummary> {
    let run_dir = rec.run_dir.clone();
    let run_dir = run_dir.as_path();
    rec.losses.sort_by_key(|p| p.step);
    if root {
        plot::write_loss_curve(&run_dir.join(CURVE_FILE), &rec.losses, CURVE_SIZE.0, CURVE_SIZE.1)?;
    }
    let mut outputs = vec![
        ("config", run_dir.join(CONFIG_FILE)),
        ("log", run_dir.join(LOG_FILE)),
        ("checkpoint", ckpt_path.clone()),
        ("loss curve", run_dir.join(CURVE_FILE)),
    ];
    if let Some(tb) = &rec.tb {
        outputs.push(("TensorBoard events", tb.path.clone()));
    }
    if let Some(p) = last_viz {
        outputs.push(("latest reconstruction grid", p));
    }
    Ok(RunSummary {
        steps_done: step,
        first_loss: rec.losses.first().map(|l| l.loss),
        last_loss: rec.losses.last().map(|l| l.loss),
        outputs,
        tensorboard_dir: rec.tb.map(|_| rec.tb_dir),
        interrupted,
        run_dir: run_dir.to_path_buf(),
        skipped_images,
        checkpoint: ckpt_path.exists().then_some(ckpt_path),
    })
}
