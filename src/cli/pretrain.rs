//! `spark-wgpu pretrain`.

use anyhow::{Result, bail};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{GpuArgs, ModelArgs};
use crate::optim::schedule as S;
use crate::train::ranges as R;
use crate::train::{PretrainConfig, pretrain_dist, read_run_config};

#[derive(clap::Args, Debug)]
pub struct PretrainArgs {
    /// Image folder (class sub-folders or flat; JPEG, PNG, WebP, …). Without it: a built-in
    /// procedural image set (no download).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub spark: ModelArgs,
    #[arg(long, default_value_t = 32, value_parser = |s: &str| R::BATCH.parse(s))]
    pub batch: usize,
    #[arg(long, default_value_t = S::EPOCHS, value_parser = |s: &str| R::EPOCHS.parse(s))]
    pub epochs: usize,
    /// Stop after this many steps (the schedule still spans --epochs).
    #[arg(long, value_parser = |s: &str| R::MAX_STEPS.parse(s))]
    pub max_steps: Option<usize>,
    /// Base learning rate; the peak is base_lr × batch / 256 (official scaling).
    #[arg(long, default_value_t = S::BASE_LR, allow_negative_numbers = true, value_parser = |s: &str| R::BASE_LR.parse(s))]
    pub base_lr: f64,
    #[arg(long, default_value_t = S::WARMUP_EPOCHS as f64, allow_negative_numbers = true, value_parser = |s: &str| R::WARMUP_EPOCHS.parse(s))]
    pub warmup_epochs: f64,
    #[arg(long, default_value_t = S::WEIGHT_DECAY, allow_negative_numbers = true, value_parser = |s: &str| R::WEIGHT_DECAY.parse(s))]
    pub weight_decay: f64,
    #[arg(long, default_value_t = S::WEIGHT_DECAY_END, allow_negative_numbers = true, value_parser = |s: &str| R::WEIGHT_DECAY.parse(s))]
    pub weight_decay_end: f64,
    /// LAMB β2 (default: 0.95 for ResNet, 0.999 for ConvNeXt, as the official recipe).
    #[arg(long, allow_negative_numbers = true, value_parser = |s: &str| R::BETA2.parse(s))]
    pub beta2: Option<f64>,
    /// Stochastic depth rate of the encoder (default: the official rate of the model,
    /// e.g. 0.05 for resnet50, 0.2 for convnext_small).
    #[arg(long, allow_negative_numbers = true, value_parser = |s: &str| R::DROP_PATH.parse(s))]
    pub drop_path: Option<f64>,
    /// Start from weights: an official SparK .pth (with decoder), an encoder-only timm-style
    /// .pth, or a spark-wgpu checkpoint/export.
    #[arg(long)]
    pub init_weights: Option<PathBuf>,
    /// Continue the run in this directory exactly where it stopped (its config.json is used;
    /// only --max-steps, --epochs, --save-every, --base-lr, --weight-decay and
    /// --weight-decay-end may be changed, and each change is logged).
    #[arg(long, conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Run directory (config, log, checkpoints, loss curve).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image decoding threads.
    #[arg(long, default_value_t = 4, value_parser = |s: &str| R::WORKERS.parse(s))]
    pub workers: usize,
    /// Images in the built-in procedural set.
    #[arg(long, default_value_t = 1024, value_parser = |s: &str| R::IMAGES.parse(s))]
    pub procedural_images: usize,
    /// Write a checkpoint every N steps (default: every epoch).
    #[arg(long, value_parser = |s: &str| R::SAVE_EVERY.parse(s))]
    pub save_every: Option<usize>,
    /// Every N steps write `viz/step_<N>.png`: the reconstruction grid (input, masked,
    /// reconstruction, pasted) of fixed held-out images under a fixed mask.
    #[arg(long)]
    pub viz_every: Option<usize>,
    /// Do not write TensorBoard scalars (by default: `<run>/tb/`, view with
    /// `tensorboard --logdir <run>/tb`).
    #[arg(long)]
    pub no_tensorboard: bool,
    /// Data-parallel runs (several MPI ranks): take each BatchNorm's statistics over this
    /// rank's share of the batch only, not over the global batch (the official recipe
    /// synchronises them whenever more than one process runs).
    #[arg(long)]
    pub no_sync_bn: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Option ids (field names) given on the command line, filled by `cli::parse`; with
    /// `--resume`, these decide what changes and what is refused.
    #[arg(skip)]
    pub given: Vec<String>,
}

/// Options a resumed run may change: they steer the rest of the schedule (the NaN
/// message's "lower --base-lr, then --resume" advice), not the shape of the graph or the
/// data order that the checkpoint's state belongs to. Each change is written to
/// `config.json` and to the log.
const RESUMABLE: &[&str] = &["max_steps", "epochs", "save_every", "base_lr", "weight_decay", "weight_decay_end"];
/// Options that do not touch the run at all.
const NEUTRAL: &[&str] = &["resume", "quiet", "adapter", "backend", "kernels", "tune", "share_adapter", "PretrainArgs", "ModelArgs"];

fn flag(id: &str) -> String {
    format!("--{}", id.replace('_', "-"))
}

/// Apply the resumable options given with `--resume` to the run's configuration; refuse
/// the others by name. Returns the changes as (option, old, new).
fn apply_resume_options(a: &PretrainArgs, cfg: &mut PretrainConfig) -> Result<Vec<(String, String, String)>> {
    let refused: Vec<String> =
        a.given.iter().filter(|g| !RESUMABLE.contains(&g.as_str()) && !NEUTRAL.contains(&g.as_str())).map(|g| flag(g)).collect();
    if !refused.is_empty() {
        bail!(
            "{} cannot change when a run is resumed (the checkpoint belongs to the run's own config.json); \
             only {} may be given with --resume",
            refused.join(", "),
            RESUMABLE.iter().map(|r| flag(r)).collect::<Vec<_>>().join(", ")
        );
    }
    let mut changes = vec![];
    let given = |id: &str| a.given.iter().any(|g| g == id);
    macro_rules! set {
        ($id:literal, $field:ident, $new:expr) => {
            if given($id) && cfg.$field != $new {
                changes.push((flag($id), format!("{:?}", cfg.$field), format!("{:?}", $new)));
                cfg.$field = $new;
            }
        };
    }
    set!("max_steps", max_steps, a.max_steps);
    set!("epochs", epochs, a.epochs);
    set!("save_every", save_every, a.save_every);
    set!("base_lr", base_lr, a.base_lr);
    set!("weight_decay", weight_decay, a.weight_decay);
    set!("weight_decay_end", weight_decay_end, a.weight_decay_end);
    Ok(changes)
}

pub fn run(gpu: &GpuArgs, a: &PretrainArgs, world: &dyn crate::dist::Collective) -> Result<()> {
    let ctx = gpu.open_for(world)?;
    let (cfg, dir, resume) = match &a.resume {
        Some(dir) => {
            let mut cfg = read_run_config(dir)?;
            let changes = apply_resume_options(a, &mut cfg)?;
            if !changes.is_empty() {
                cfg.validate()?;
                if world.is_root() {
                    crate::train::record_resume_changes(dir, &cfg, &changes)?;
                }
                for (o, old, new) in &changes {
                    eprintln!("resume: {o} {old} → {new}");
                }
            }
            (cfg, dir.clone(), true)
        }
        None => {
            let spark = a.spark.spark_config()?;
            let model = &a.spark.model;
            let cfg = PretrainConfig {
                model: model.clone(),
                beta2: a.beta2.unwrap_or(spark.encoder.default_beta2()),
                spark,
                data: a.data.clone(),
                procedural_images: a.procedural_images,
                batch: a.batch,
                epochs: a.epochs,
                max_steps: a.max_steps,
                base_lr: a.base_lr,
                warmup_epochs: a.warmup_epochs,
                weight_decay: a.weight_decay,
                weight_decay_end: a.weight_decay_end,
                seed: a.seed,
                workers: a.workers,
                init_weights: a.init_weights.clone(),
                save_every: a.save_every,
                viz_every: a.viz_every,
                tensorboard: !a.no_tensorboard,
                sync_bn: !a.no_sync_bn,
                drop_path: a.drop_path.unwrap_or_else(|| crate::model::EncoderConfig::official_drop_path_rate(model)),
            };
            let dir = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/{model}")));
            if dir.join(crate::train::CHECKPOINT_FILE).exists() {
                bail!("{} already holds a run: use --resume {} to continue it, or another --out", dir.display(), dir.display());
            }
            (cfg, dir, false)
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    // Ctrl-C: finish the step in flight, write a checkpoint, exit. A second Ctrl-C aborts.
    let _ = ctrlc::set_handler(move || {
        if s.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: finishing the step and writing a checkpoint (Ctrl-C again to abort)");
    });
    if world.size() == 1 {
        eprintln!("adapter: {}", ctx.describe());
    }
    let r = pretrain_dist(&ctx, &cfg, &dir, resume, stop, !a.quiet, world)?;
    if !world.is_root() {
        return Ok(());
    }
    println!(
        "{} after {} steps: loss {} → {}; run directory {}{}",
        cfg.model,
        r.steps_done,
        r.first_loss.map_or("-".into(), |l| format!("{l:.4}")),
        r.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        r.run_dir.display(),
        match (r.interrupted, &r.checkpoint) {
            (true, Some(_)) => format!("; resume with --resume {}", r.run_dir.display()),
            (true, None) => "; interrupted before the first step: no checkpoint was written, start again".to_string(),
            _ => String::new(),
        }
    );
    for (what, p) in &r.outputs {
        println!("  {what:<27} {}", p.display());
    }
    if let Some(tb) = &r.tensorboard_dir {
        println!("view the scalars with: tensorboard --logdir {}", tb.display());
    }
    Ok(())
}
