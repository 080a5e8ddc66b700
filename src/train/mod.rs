//! `spark-wgpu pretrain`: the training loop around the static graph — data, schedule,
//! asynchronous loss read-back, logs, checkpoints, resume and Ctrl-C.

pub mod checkpoint;
mod loss_ring;
pub mod plot;
pub mod ranges;
mod record;
mod run;
pub mod tensorboard;
pub mod viz;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::data::{FolderSource, ImageSource, ProceduralSource};
use crate::model::{EncoderConfig, SparkConfig, SparkModel};
use crate::optim::lamb::LambConfig;
pub use run::{pretrain, pretrain_dist};

/// Everything that defines a run (saved as `config.json` in the run directory).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PretrainConfig {
    /// Model preset name (`resnet50`, `convnext_small`, …).
    pub model: String,
    /// The SparK model built from the preset.
    pub spark: SparkConfig,
    /// Image folder (None: procedural images).
    pub data: Option<PathBuf>,
    /// Number of procedural images when `data` is None.
    pub procedural_images: usize,
    /// Images per step (over all ranks).
    pub batch: usize,
    /// Epochs the schedules span.
    pub epochs: usize,
    /// Stop after this many steps (the schedules still span `epochs`).
    pub max_steps: Option<usize>,
    /// Learning rate per 256 images (scaled by the batch).
    pub base_lr: f64,
    /// Linear warm-up of the learning rate, in epochs.
    pub warmup_epochs: f64,
    /// Weight decay at the start of the cosine.
    pub weight_decay: f64,
    /// Weight decay at the end of the cosine.
    pub weight_decay_end: f64,
    /// LAMB's second-moment decay.
    pub beta2: f64,
    /// Seed of initialisation, shuffling, augmentation and masks.
    pub seed: u64,
    /// Image decoding threads.
    pub workers: usize,
    /// Encoder weights to start from (`.pth` or safetensors).
    pub init_weights: Option<PathBuf>,
    /// Checkpoint every this many steps (None: at the end only).
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

/// The run's configuration, in the run directory.
pub const CONFIG_FILE: &str = "config.json";
/// The run's latest checkpoint, in the run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// One JSON line per step, in the run directory.
pub const LOG_FILE: &str = "log.jsonl";
/// The loss / lr / wd curves, in the run directory.
pub const CURVE_FILE: &str = "loss.png";
/// The conv kernel each tunable node of the run's graph runs (`--tune`), written when
/// the run starts and replayed by `--resume`: a choice can fix a summation order.
pub const KERNEL_CHOICES_FILE: &str = "kernels.json";
/// Largest `kernels.json` read back (ResNet-50: ~10 KB).
const MAX_CHOICES_BYTES: u64 = 4 << 20;

/// Record the tuner's choices of `ctx` in `run_dir` (atomically).
pub fn write_kernel_choices(run_dir: &Path, ctx: &crate::gpu::GpuContext) -> Result<()> {
    let json = serde_json::json!({ "kernels": ctx.kernel_set.name(), "choices": ctx.tuner.choices() });
    crate::io::atomic::write_atomic(&run_dir.join(KERNEL_CHOICES_FILE), serde_json::to_string_pretty(&json)?.as_bytes())
}

/// The kernel family and the choices `write_kernel_choices` recorded in `run_dir`; an
/// empty record for a run that has none (started before tuning existed: it ran the fixed
/// rule everywhere).
pub fn read_kernel_choices(run_dir: &Path) -> Result<(Option<String>, std::collections::BTreeMap<String, String>)> {
    let path = run_dir.join(KERNEL_CHOICES_FILE);
    let Ok(meta) = std::fs::metadata(&path) else { return Ok(Default::default()) };
    anyhow::ensure!(meta.len() <= MAX_CHOICES_BYTES, "{}: {} bytes is not a kernel record of spark-wgpu", path.display(), meta.len());
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", path.display()))?;
    let family = v.get("kernels").and_then(|k| k.as_str()).map(str::to_string);
    let choices = serde_json::from_value(v.get("choices").cloned().unwrap_or_default())
        .with_context(|| format!("{}: \"choices\" is not a map of kernel names", path.display()))?;
    Ok((family, choices))
}
/// Largest `config.json` read back (ours are ~1 KB): a larger file is not one of ours.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// loss.png size: three 300-px panels keep tick labels legible.
pub const CURVE_SIZE: (u32, u32) = (900, 900);

impl PretrainConfig {
    /// The encoder's architecture.
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
    /// Steps completed, counting those of a resumed run.
    pub steps_done: usize,
    /// Loss of the last step.
    pub last_loss: Option<f32>,
    /// Loss of the first step of this process.
    pub first_loss: Option<f32>,
    /// Whether the run stopped on Ctrl-C before its last step (its checkpoint is saved).
    pub interrupted: bool,
    /// The run directory.
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
