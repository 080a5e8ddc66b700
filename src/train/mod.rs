//! `spark-wgpu pretrain`: the training loop around the static graph — data, schedule,
//! asynchronous loss read-back, logs, checkpoints, resume and Ctrl-C.

pub mod checkpoint;
mod loss_ring;
pub mod plot;
pub mod ranges;
pub mod tensorboard;
pub mod viz;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::data::{FolderSource, ImageSource, Loader, LoaderConfig, ProceduralSource};
use crate::gpu::GpuContext;
use crate::model::{EncoderConfig, SparkConfig, SparkModel};
use crate::optim::lamb::LambConfig;
use crate::optim::schedule::{lr_wd_at, peak_lr};
use loss_ring::LossRing;

/// Everything that defines a run (saved as `config.json` in the run directory).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PretrainConfig {
    pub model: String,
    pub spark: SparkConfig,
    pub data: Option<PathBuf>,
    pub procedural_images: usize,
    pub batch: usize,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub base_lr: f64,
    pub warmup_epochs: f64,
    pub weight_decay: f64,
    pub weight_decay_end: f64,
    pub beta2: f64,
    pub seed: u64,
    pub workers: usize,
    pub init_weights: Option<PathBuf>,
    pub save_every: Option<usize>,
    /// Stochastic depth rate of the encoder (official per-model default).
    #[serde(default)]
    pub drop_path: f64,
    /// Write a reconstruction grid of fixed held-out images every N steps (`viz/`).
    #[serde(default)]
    pub viz_every: Option<usize>,
    /// Write TensorBoard scalars to `tb/` (on unless `--no-tensorboard`).
    #[serde(default = "default_true")]
    pub tensorboard: bool,
    /// Data-parallel runs: BatchNorm statistics over every rank's share of the batch, as
    /// the official recipe does whenever more than one process runs (`--no-sync-bn`: off).
    #[serde(default = "default_true")]
    pub sync_bn: bool,
}

fn default_true() -> bool {
    true
}

pub const CONFIG_FILE: &str = "config.json";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const LOG_FILE: &str = "log.jsonl";
pub const CURVE_FILE: &str = "loss.png";
/// Largest `config.json` read back (ours are ~1 KB): a larger file is not one of ours.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// loss.png size: three 300-px panels keep tick labels legible.
pub const CURVE_SIZE: (u32, u32) = (900, 900);

impl PretrainConfig {
    pub fn encoder(&self) -> &EncoderConfig {
        &self.spark.encoder
    }

    /// Every option in its range (see [`ranges`]): a `config.json` edited by hand, or one
    /// holding `null` where an older version wrote a NaN, is refused with the option's name.
    pub fn validate(&self) -> Result<()> {
        self.spark.validate()?;
        ranges::BATCH.check("--batch", self.batch)?;
        ranges::EPOCHS.check("--epochs", self.epochs)?;
        if let Some(m) = self.max_steps {
            ranges::MAX_STEPS.check("--max-steps", m)?;
        }
        if let Some(s) = self.save_every {
            ranges::SAVE_EVERY.check("--save-every", s)?;
        }
        ranges::BASE_LR.check("--base-lr", self.base_lr)?;
        ranges::WARMUP_EPOCHS.check("--warmup-epochs", self.warmup_epochs)?;
        ranges::WEIGHT_DECAY.check("--weight-decay", self.weight_decay)?;
        ranges::WEIGHT_DECAY.check("--weight-decay-end", self.weight_decay_end)?;
        ranges::BETA2.check("--beta2", self.beta2)?;
        ranges::DROP_PATH.check("--drop-path", self.drop_path)?;
        ranges::WORKERS.check("--workers", self.workers)?;
        if self.data.is_none() {
            ranges::IMAGES.check("--procedural-images", self.procedural_images)?;
        }
        Ok(())
    }

    fn lamb(&self) -> LambConfig {
        LambConfig::spark(self.beta2 as f32)
    }
}

/// What a finished (or interrupted) run reports.
pub struct RunSummary {
    pub steps_done: usize,
    pub last_loss: Option<f32>,
    pub first_loss: Option<f32>,
    pub interrupted: bool,
    pub run_dir: PathBuf,
    /// Unreadable images reported and skipped.
    pub skipped_images: usize,
    /// The checkpoint a `--resume` continues from (None: stopped before any was written).
    pub checkpoint: Option<PathBuf>,
    /// Everything the run wrote, for the closing summary: (what, path).
    pub outputs: Vec<(&'static str, PathBuf)>,
    /// The TensorBoard folder, when written.
    pub tensorboard_dir: Option<PathBuf>,
}

fn open_source(cfg: &PretrainConfig) -> Result<Arc<dyn ImageSource>> {
    Ok(match &cfg.data {
        Some(dir) => Arc::new(FolderSource::open(dir)?),
        None => Arc::new(ProceduralSource::new(cfg.procedural_images, cfg.spark.input_size as u32, cfg.seed)),
    })
}

fn write_json_line(log: &mut std::fs::File, v: serde_json::Value) -> Result<()> {
    writeln!(log, "{v}").context("writing the run log")
}

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
    coll: &dyn crate::dist::Collective,
) -> Result<RunSummary> {
    cfg.validate()?;
    let (world, root) = (coll.size(), coll.is_root());
    let share = crate::dist::shard(cfg.batch, coll.rank(), world)?;
    let local_batch = share.len();
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating run directory {}", run_dir.display()))?;
    let source = open_source(cfg)?;
    let mut loader = Loader::new_shard(
        source.clone(),
        LoaderConfig {
            batch: cfg.batch,
            size: cfg.spark.input_size as u32,
            mask_ratio: cfg.spark.mask_ratio,
            seed: cfg.seed,
            workers: cfg.workers,
            prefetch: 4,
        },
        share.clone(),
    )?;
    // The loader's messages carry their own "warning:".
    loader.on_skip(|msg| eprintln!("{msg}"));
    let spe = loader.steps_per_epoch();
    let schedule_len = cfg.epochs * spe;
    let total = cfg.max_steps.map_or(schedule_len, |m| m.min(schedule_len));
    if total == 0 {
        bail!("nothing to do: --epochs {} × {spe} steps per epoch is 0 steps", cfg.epochs);
    }
    let warmup_it = (cfg.warmup_epochs * spe as f64).round() as usize;
    let peak = peak_lr(cfg.base_lr, cfg.batch);

    let builder = SparkModel::builder(ctx, cfg.spark.clone(), local_batch)
        .optimizer(cfg.lamb())
        .drop_path(cfg.drop_path, cfg.seed)
        .data_parallel(share.start, cfg.batch, if cfg.sync_bn { world } else { 1 });
    // A resumed run's weights come from its checkpoint.
    let builder = if resume { builder.without_init() } else { builder.init_seed(cfg.seed) };
    let mut model = builder.build()?;
    ctx.check("building the training graph")?;
    let ckpt_path = run_dir.join(CHECKPOINT_FILE);
    if resume && root {
        recover_checkpoint(&ckpt_path)?;
    }
    // The other ranks read the checkpoint once the root has recovered it.
    coll.barrier()?;
    // Temporaries of writes a kill interrupted (a checkpoint's is as large as the
    // checkpoint): nothing else writes this run directory, so they are garbage now.
    for f in [CHECKPOINT_FILE, CONFIG_FILE, LOG_FILE, CURVE_FILE].into_iter().filter(|_| root) {
        let freed = crate::io::atomic::remove_stale_temps(&run_dir.join(f));
        if freed > 0 {
            eprintln!("removed {:.1} MiB of temporary files an interrupted write of {f} left", freed as f64 / (1 << 20) as f64);
        }
    }
    let mut start = 0usize;
    if resume {
        let (t, meta) = checkpoint::read_any(&ckpt_path)?;
        if let Some(rec) = meta.get(KERNELS_META).filter(|k| k.as_str() != ctx.kernel_set.name()) {
            bail!(
                "{}: this run was trained with the {rec} kernel family, but {} would run the {} family, \
                 which sums in another order; resume with --kernels {rec} to continue it bit-identically",
                ckpt_path.display(),
                ctx.info.name,
                ctx.kernel_set.name()
            );
        }
        checkpoint::load(&mut model, &t, &ckpt_path, true)?;
        start = meta
            .get("next_step")
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{}: no next_step in the metadata", ckpt_path.display()))?;
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
        if start >= total {
            bail!(
                "nothing to do: {} is at step {start} and the run ends at step {total} \
                 ({} epochs × {spe} steps{}); raise --max-steps or --epochs to continue",
                run_dir.display(),
                cfg.epochs,
                cfg.max_steps.map_or(String::new(), |m| format!(", --max-steps {m}"))
            );
        }
        eprintln!("resuming at step {start} of {total} from {}", ckpt_path.display());
    } else {
        if let Some(w) = &cfg.init_weights {
            let (t, _) = checkpoint::read_any(w)?;
            let r = checkpoint::load(&mut model, &t, w, false)?;
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
        }
    }
    if root {
        eprintln!(
            "{} on {}: {} steps ({} per epoch), batch {}{}, peak lr {peak:.2e}, {} dispatches per step, {:.1} MiB of GPU buffers",
            cfg.model,
            ctx.info.name,
            total,
            spe,
            cfg.batch,
            if world > 1 {
                format!(" ({world} ranks × {local_batch}, BatchNorm {})", if cfg.sync_bn { "synchronised" } else { "per rank" })
            } else {
                String::new()
            },
            model.dispatch_count(),
            model.gpu_memory_bytes() as f64 / (1 << 20) as f64
        );
    }
    // Only the root writes the run directory; the other ranks keep no log.
    let mut log = match root {
        true => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(run_dir.join(LOG_FILE))
                .context("opening log.jsonl")?,
        ),
        false => None,
    };
    let bar = if progress && root { indicatif::ProgressBar::new(total as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}")
            .unwrap(),
    );
    bar.set_position(start as u64);

    let mut losses: Vec<plot::StepRecord> = read_log_records(&run_dir.join(LOG_FILE), start);
    let mut ring = LossRing::new(ctx, 4);
    let grad_norm = model.optimizer().map(|o| o.grad_norm());
    let tb_dir = run_dir.join(tensorboard::TB_DIR);
    let mut tb = if cfg.tensorboard && root { Some(tensorboard::EventWriter::create(&tb_dir)?) } else { None };
    let mut viz = match cfg.viz_every {
        Some(n) if n > 0 && root => Some((n, viz::Viz::new(ctx, cfg, source.as_ref(), run_dir)?)),
        _ => None,
    };
    let mut last_viz: Option<PathBuf> = None;
    let save_every = cfg.save_every.unwrap_or(spe).max(1);
    let mut pending: Vec<(usize, f32, f32)> = vec![];
    let mut sched: HashMap<usize, (f64, f64)> = HashMap::new();
    loader.start(start / spe, start % spe);
    let t0 = Instant::now();
    let mut interrupted = false;
    let mut step = start;
    let mut last_ckpt = start;
    let record = |log: &mut Option<std::fs::File>,
                      tb: &mut Option<tensorboard::EventWriter>,
                      losses: &mut Vec<plot::StepRecord>,
                      done: &[(usize, f32, f32)],
                      sched: &HashMap<usize, (f64, f64)>,
                      bar: &indicatif::ProgressBar|
     -> Result<()> {
        for &(s, l, gn) in done {
            let (lr, wd) = sched.get(&s).copied().unwrap_or((0.0, 0.0));
            let ips = ((s + 1 - start) * cfg.batch) as f64 / t0.elapsed().as_secs_f64();
            if let Some(log) = log {
                write_json_line(
                    log,
                    serde_json::json!({"step": s, "epoch": s / spe, "loss": l, "lr": lr, "wd": wd, "images_per_s": ips,
                        "world_size": world, "images_per_s_per_rank": ips / world as f64, "elapsed_s": t0.elapsed().as_secs_f64()}),
                )?;
            }
            if let Some(tb) = tb {
                tb.scalars(
                    s,
                    &[("loss", l), ("lr", lr as f32), ("wd", wd as f32), ("images_per_s", ips as f32), ("grad_norm", gn)],
                )?;
            }
            bar.set_message(format!("loss {l:.4}  {ips:.1} img/s"));
            losses.push(plot::StepRecord { step: s, loss: l, lr, wd, images_per_s: ips });
            if !l.is_finite() {
                let ckpt = run_dir.join(CHECKPOINT_FILE);
                if ckpt.exists() {
                    bail!(
                        "the loss became {l} at step {s}; stopping. The last good checkpoint ({}) is intact: \
                         lower --base-lr or check the data, then --resume {} --base-lr …",
                        ckpt.display(),
                        run_dir.display()
                    );
                }
                bail!(
                    "the loss became {l} at step {s}, before any checkpoint was written; stopping. \
                     Lower --base-lr or check the data and start again (a new --out, or delete {})",
                    run_dir.display()
                );
            }
        }
        Ok(())
    };
    let mut split = crate::dist::StepTimes::default();
    while step < total {
        // Ctrl-C on any rank stops every rank after the same step.
        if coll.any(stop.load(Ordering::SeqCst))? {
            interrupted = true;
            break;
        }
        let batch = loader.next_batch()?;
        model.set_batch(&batch.images, &batch.mask)?;
        let (lr, wd) = lr_wd_at(peak, cfg.weight_decay, cfg.weight_decay_end, step, warmup_it, schedule_len);
        sched.insert(step, (lr, wd));
        if world > 1 {
            split += model.train_step_dist(coll, step as u32 + 1, lr as f32, wd as f32, false)?;
        } else {
            model.train_step(step as u32 + 1, lr as f32, wd as f32)?;
        }
        ring.push(ctx, step, &model.loss().loss, grad_norm.as_ref(), &mut pending)?;
        ctx.check(&format!("training step {step}"))?;
        // Every rank must judge each step's (global) loss at the same step, or one rank
        // would stop on a NaN while the others wait for it: with several ranks the step
        // is synchronous anyway, so collect its loss now.
        pending.extend(if world > 1 { ring.drain(ctx)? } else { ring.ready(ctx)? });
        pending.sort_by_key(|p| p.0);
        record(&mut log, &mut tb, &mut losses, &pending, &sched, &bar)?;
        pending.clear();
        step += 1;
        bar.set_position(step as u64);
        if step.is_multiple_of(save_every) || step == total {
            // Never checkpoint past a non-finite loss: collect every loss first.
            let done = ring.drain(ctx)?;
            record(&mut log, &mut tb, &mut losses, &done, &sched, &bar)?;
            if root {
                save_checkpoint(&model, &ckpt_path, cfg, step, world)?;
            }
            last_ckpt = step;
        }
        if let Some((n, v)) = viz.as_mut()
            && (step.is_multiple_of(*n) || step == total)
        {
            let (path, loss) = v.write(&model, step)?;
            if let Some(tb) = tb.as_mut() {
                tb.scalars(step, &[("viz_loss", loss)])?;
            }
            last_viz = Some(path);
        }
    }
    let done = ring.drain(ctx)?;
    record(&mut log, &mut tb, &mut losses, &done, &sched, &bar)?;
    if step != last_ckpt && root {
        save_checkpoint(&model, &ckpt_path, cfg, step, world)?;
    }
    bar.finish_and_clear();
    if world > 1 && step > start {
        let n = (step - start) as f64;
        eprintln!(
            "rank {} of {world}: {:.1} img/s on this rank; per step {:.0} ms compute, {:.0} ms all-reduce and waiting ({:.1} MiB summed)",
            coll.rank(),
            ((step - start) * local_batch) as f64 / t0.elapsed().as_secs_f64(),
            split.compute_s / n * 1e3,
            split.reduce_s / n * 1e3,
            split.reduced_bytes as f64 / n / (1 << 20) as f64
        );
    }
    // The root writes the checkpoint: the others must not return (and exit) before it
    // is on disk, or a launcher could end the job while it is written.
    coll.barrier()?;
    if loader.skipped_images() > 0 {
        eprintln!("{} unreadable images were skipped", loader.skipped_images());
    }
    let stall = loader.stall_seconds();
    let wall = t0.elapsed().as_secs_f64();
    if wall > 0.0 && stall / wall > 0.1 {
        eprintln!(
            "note: the GPU waited {stall:.1} s of {wall:.1} s for images: the CPU cannot decode fast enough \
             (raise --workers or use smaller images)"
        );
    }
    losses.sort_by_key(|p| p.step);
    if root {
        plot::write_loss_curve(&run_dir.join(CURVE_FILE), &losses, CURVE_SIZE.0, CURVE_SIZE.1)?;
    }
    let mut outputs = vec![
        ("config", run_dir.join(CONFIG_FILE)),
        ("log", run_dir.join(LOG_FILE)),
        ("checkpoint", ckpt_path.clone()),
        ("loss curve", run_dir.join(CURVE_FILE)),
    ];
    if let Some(tb) = &tb {
        outputs.push(("TensorBoard events", tb.path.clone()));
    }
    if let Some(p) = last_viz {
        outputs.push(("latest reconstruction grid", p));
    }
    Ok(RunSummary {
        steps_done: step,
        first_loss: losses.first().map(|l| l.loss),
        last_loss: losses.last().map(|l| l.loss),
        outputs,
        tensorboard_dir: tb.map(|_| tb_dir),
        interrupted,
        run_dir: run_dir.to_path_buf(),
        skipped_images: loader.skipped_images(),
        checkpoint: ckpt_path.exists().then_some(ckpt_path),
    })
}

/// Checkpoint metadata key of the kernel family the run trains with.
const KERNELS_META: &str = "kernels";
/// Checkpoint metadata key of the number of ranks that trained the run.
const WORLD_META: &str = "world_size";

fn save_checkpoint(model: &SparkModel, path: &Path, cfg: &PretrainConfig, next_step: usize, world: usize) -> Result<()> {
    let mut meta = HashMap::new();
    meta.insert("spark_wgpu_config".to_string(), serde_json::to_string(cfg)?);
    meta.insert("next_step".to_string(), next_step.to_string());
    meta.insert("format".to_string(), checkpoint::CHECKPOINT_FORMAT.to_string());
    // The kernel family fixes every summation order of the step (tiles, split-K counts
    // follow from it and the shapes): resume must replay it to stay bit-identical.
    meta.insert(KERNELS_META.to_string(), model.ctx().kernel_set.name().to_string());
    // The rank count fixes the order of the cross-rank sums, like the kernel family.
    meta.insert(WORLD_META.to_string(), world.to_string());
    checkpoint::save(model, path, &meta)
}

/// Logged records of earlier steps (for the curves of a resumed run).
fn read_log_records(path: &Path, before: usize) -> Vec<plot::StepRecord> {
    let Ok(text) = std::fs::read_to_string(path) else { return vec![] };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(plot::StepRecord {
                step: v["step"].as_u64()? as usize,
                loss: v["loss"].as_f64()? as f32,
                lr: v["lr"].as_f64().unwrap_or(0.0),
                wd: v["wd"].as_f64().unwrap_or(0.0),
                images_per_s: v["images_per_s"].as_f64().unwrap_or(0.0),
            })
        })
        .filter(|r| r.step < before)
        .collect()
}

/// A resumed run's changed options: the new `config.json` and one log line
/// `{"event": "resume", "step": …, "changed": {option: [old, new]}}`.
pub fn record_resume_changes(run_dir: &Path, cfg: &PretrainConfig, changes: &[(String, String, String)]) -> Result<()> {
    write_run_config(run_dir, cfg)?;
    let changed: serde_json::Map<String, serde_json::Value> =
        changes.iter().map(|(o, a, b)| (o.clone(), serde_json::json!([a, b]))).collect();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join(LOG_FILE))
        .context("opening log.jsonl")?;
    write_json_line(&mut log, serde_json::json!({"event": "resume", "changed": changed}))
}

/// Write `config.json` (atomically).
pub fn write_run_config(run_dir: &Path, cfg: &PretrainConfig) -> Result<()> {
    let json = serde_json::to_string_pretty(cfg)?;
    crate::io::atomic::write_atomic(&run_dir.join(CONFIG_FILE), json.as_bytes())
}

/// Keep only the log lines of steps before `next_step` (the checkpoint's), atomically.
fn truncate_log(path: &Path, next_step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let mut kept = String::new();
    let mut dropped = 0usize;
    for line in text.lines() {
        let v = serde_json::from_str::<serde_json::Value>(line).ok();
        let keep = match v {
            // Events (a resume's changed options) carry no step.
            Some(v) if v.get("event").is_some() => true,
            Some(v) => v["step"].as_u64().is_some_and(|s| (s as usize) < next_step),
            // A torn last line (kill during a write).
            None => false,
        };
        match keep {
            true => {
                kept.push_str(line);
                kept.push('\n');
            }
            false => dropped += 1,
        }
    }
    if dropped > 0 {
        crate::io::atomic::write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

/// A kill between the last fsync and the rename of the *first* checkpoint leaves only its
/// temporary file. If the checkpoint is missing, adopt the newest temporary that reads as
/// a complete checkpoint (safetensors checks every tensor's extent against the file size,
/// so a torn write is refused); otherwise say what was found.
fn recover_checkpoint(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let temps = crate::io::atomic::stale_temps(path);
    for t in &temps {
        let complete = crate::io::read_safetensors(t).is_ok_and(|(_, meta)| meta.contains_key("next_step"));
        if complete {
            std::fs::rename(t, path).with_context(|| format!("renaming {} to {}", t.display(), path.display()))?;
            eprintln!("recovered {} from the complete temporary file {} (the run was killed as it renamed it)", path.display(), t.display());
            return Ok(());
        }
    }
    if let Some(t) = temps.first() {
        bail!(
            "{} does not exist; only {} (a checkpoint write that was cut short, incomplete) was found: \
             the run stopped before its first checkpoint, start it again",
            path.display(),
            t.display()
        );
    }
    bail!(
        "{} does not exist: the run stopped before its first checkpoint (start it again), or {} is not a run directory",
        path.display(),
        path.parent().unwrap_or(Path::new(".")).display()
    );
}

/// The configuration stored in a run directory.
pub fn read_run_config(run_dir: &Path) -> Result<PretrainConfig> {
    let p = run_dir.join(CONFIG_FILE);
    let text = crate::io::read_small_text(&p, MAX_CONFIG_BYTES).with_context(|| format!("is {} a run directory?", run_dir.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}
