//! What a run records of each finished step: one `log.jsonl` line, TensorBoard scalars,
//! the progress bar and the points of `loss.png`. Losses arrive late (the loss ring
//! reads them back asynchronously), so the step's learning rate and weight decay are
//! kept until its loss comes.

use anyhow::{Context as _, Result, bail};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{CHECKPOINT_FILE, LOG_FILE, PretrainConfig, plot, tensorboard, write_json_line};

/// One collected step: (step, loss, gradient norm or NaN).
pub(super) type Collected = (usize, f32, f32);

/// The sinks of a run's per-step records. Only the root rank has a log and TensorBoard.
pub(super) struct Recorder {
    log: Option<std::fs::File>,
    pub(super) tb: Option<tensorboard::EventWriter>,
    pub(super) tb_dir: PathBuf,
    pub(super) bar: indicatif::ProgressBar,
    /// Every step's record, earlier runs' (of a resumed run) included, for the curves.
    pub(super) losses: Vec<plot::StepRecord>,
    /// (lr, wd) of the steps whose loss has not been read back yet.
    sched: HashMap<usize, (f64, f64)>,
    pub(super) run_dir: PathBuf,
    t0: Instant,
    start: usize,
    spe: usize,
    batch: usize,
    world: usize,
}

impl Recorder {
    /// Open the sinks of a run that starts (or resumes) at step `start` of `total`.
    pub(super) fn open(
        cfg: &PretrainConfig,
        run_dir: &Path,
        (start, total, spe): (usize, usize, usize),
        world: usize,
        root: bool,
        progress: bool,
    ) -> Result<Self> {
        let log = match root {
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
                .expect("a valid progress template"),
        );
        bar.set_position(start as u64);
        let tb_dir = run_dir.join(tensorboard::TB_DIR);
        let tb = if cfg.tensorboard && root { Some(tensorboard::EventWriter::create(&tb_dir)?) } else { None };
        Ok(Self {
            log,
            tb,
            tb_dir,
            bar,
            losses: super::read_log_records(&run_dir.join(LOG_FILE), start),
            sched: HashMap::new(),
            run_dir: run_dir.to_path_buf(),
            t0: Instant::now(),
            start,
            spe,
            batch: cfg.batch,
            world,
        })
    }

    /// Seconds since the first step started.
    pub(super) fn elapsed_s(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// The schedule of `step`, logged when its loss arrives.
    pub(super) fn schedule(&mut self, step: usize, lr: f64, wd: f64) {
        self.sched.insert(step, (lr, wd));
    }

    /// Record collected steps in step order; a non-finite loss stops the run with what
    /// the user can do about it.
    pub(super) fn record(&mut self, mut done: Vec<Collected>) -> Result<()> {
        done.sort_by_key(|p| p.0);
        for (s, l, gn) in done {
            let (lr, wd) = self.sched.remove(&s).unwrap_or((0.0, 0.0));
            let elapsed = self.elapsed_s();
            let ips = ((s + 1 - self.start) * self.batch) as f64 / elapsed;
            if let Some(log) = &mut self.log {
                write_json_line(
                    log,
                    serde_json::json!({"step": s, "epoch": s / self.spe, "loss": l, "lr": lr, "wd": wd, "images_per_s": ips,
                        "world_size": self.world, "images_per_s_per_rank": ips / self.world as f64, "elapsed_s": elapsed}),
                )?;
            }
            if let Some(tb) = &mut self.tb {
                tb.scalars(
                    s,
                    &[("loss", l), ("lr", lr as f32), ("wd", wd as f32), ("images_per_s", ips as f32), ("grad_norm", gn)],
                )?;
            }
            self.bar.set_message(format!("loss {l:.4}  {ips:.1} img/s"));
            self.losses.push(plot::StepRecord { step: s, loss: l, lr, wd, images_per_s: ips });
            if !l.is_finite() {
                let ckpt = self.run_dir.join(CHECKPOINT_FILE);
                if ckpt.exists() {
                    bail!(
                        "the loss became {l} at step {s}; stopping. The last good checkpoint ({}) is intact: \
                         lower --base-lr or check the data, then --resume {} --base-lr …",
                        ckpt.display(),
                        self.run_dir.display()
                    );
                }
                bail!(
                    "the loss became {l} at step {s}, before any checkpoint was written; stopping. \
                     Lower --base-lr or check the data and start again (a new --out, or delete {})",
                    self.run_dir.display()
                );
            }
        }
        Ok(())
    }
}
