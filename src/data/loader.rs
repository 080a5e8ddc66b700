//! The prefetching batch loader.
//!
//! Work is cut into items, one per image of a batch, numbered globally:
//! item `i` is slot `i % B` of global step `g = i / B`, and global step `g` is step
//! `g % steps_per_epoch` of epoch `g / steps_per_epoch`. Workers claim items in order
//! (never more than `prefetch` batches ahead of the consumer), decode and augment them,
//! and file the result under its (step, slot); the consumer takes complete batches in
//! step order. Every random draw is keyed by (seed, epoch, position) — see `rng` — so a
//! batch does not depend on which worker made it, on timing, or on where the run began.

use super::mask::{len_keep, sample_mask};
use crate::sparse::PatchMask;
use super::rng::{permutation, stream, TAG_AUG, TAG_MASK, TAG_PERM};
use super::source::ImageSource;
use super::transform::augment;
use anyhow::{anyhow, bail};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

/// One training batch, ready to upload.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Normalised images, channels-last `[batch, size, size, 3]`.
    pub images: Vec<f32>,
    /// The step's patch mask `[batch, f, f]` with `f = size / 32`.
    pub mask: PatchMask,
    /// Images in the batch.
    pub batch: usize,
    /// Image side in pixels.
    pub size: usize,
    /// Dataset index of each image (after substitution of unreadable ones).
    pub indices: Vec<usize>,
    /// Epoch the batch belongs to (0-based).
    pub epoch: usize,
    /// Step within the epoch.
    pub step: usize,
}

/// How a [`Loader`] draws its batches.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Images per batch (the global batch, over all ranks).
    pub batch: usize,
    /// Input resolution, a multiple of 32 (the encoder's downsampling).
    pub size: u32,
    /// Fraction of patches masked.
    pub mask_ratio: f64,
    /// Seed of shuffling, augmentation and masks.
    pub seed: u64,
    /// Decoding threads (0 is treated as 1).
    pub workers: usize,
    /// Batches prepared ahead of the consumer (0 is treated as 1).
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(4, |n| n.get()).clamp(1, 16);
        use crate::model::config::{DEFAULT_INPUT_SIZE, DEFAULT_MASK_RATIO};
        Self { batch: 32, size: DEFAULT_INPUT_SIZE as u32, mask_ratio: DEFAULT_MASK_RATIO, seed: 0, workers, prefetch: 4 }
    }
}

type Reporter = Arc<dyn Fn(&str) + Send + Sync>;

/// What all runs of one loader share: the source, the configuration and what is known
/// about unreadable images.
struct Common {
    source: Arc<dyn ImageSource>,
    cfg: LoaderConfig,
    /// The slots of every global batch this loader produces (all of them in one process;
    /// one rank's share in data-parallel training, see `dist::shard`).
    shard: std::ops::Range<usize>,
    steps_per_epoch: usize,
    /// Indices that failed to decode: each is reported once, then skipped without retrying.
    bad: Mutex<HashSet<usize>>,
    skipped: AtomicUsize,
    reporter: RwLock<Reporter>,
    /// Permutations of recent epochs (two at most are in use around an epoch boundary).
    perms: Mutex<HashMap<usize, Arc<Vec<usize>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not make the loader unusable; the data stays consistent
    // because every critical section only moves finished values around.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Common {
    fn permutation(&self, epoch: usize) -> Arc<Vec<usize>> {
        if let Some(p) = lock(&self.perms).get(&epoch) {
            return p.clone();
        }
        let p = Arc::new(permutation(&mut stream(self.cfg.seed, TAG_PERM, epoch as u64, 0), self.source.len()));
        let mut perms = lock(&self.perms);
        // Keep this epoch and its neighbours; older ones are no longer needed.
        perms.retain(|&e, _| e + 2 >= epoch && e <= epoch + 2);
        perms.entry(epoch).or_insert(p).clone()
    }

    /// The image at `pos` of the epoch's order, or, if it cannot be read, the next
    /// readable one after it in that order (wrapping), so the substitute is the same in
    /// every run. Its augmentation is drawn from the stream of `pos` in all cases.
    fn produce(&self, epoch: usize, pos: usize) -> Result<(usize, Vec<f32>), String> {
        let perm = self.permutation(epoch);
        let n = perm.len();
        let mut rng = stream(self.cfg.seed, TAG_AUG, epoch as u64, pos as u64);
        for t in 0..n {
            let index = perm[(pos + t) % n];
            if lock(&self.bad).contains(&index) {
                continue;
            }
            // Decoders are third-party code fed untrusted bytes: a panic there is one more
            // unreadable image, never a dead worker.
            let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.source.load(index)))
                .unwrap_or_else(|p| {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "decoder panicked".into());
                    Err(anyhow!("decoder panicked: {msg}"))
                });
            match loaded {
                Ok(img) if img.width() > 0 && img.height() > 0 => {
                    let size = self.cfg.size;
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| augment(&img, size, &mut rng)))
                        .map_err(|_| format!("augmentation panicked on {}", self.source.describe(index)))?;
                    return Ok((index, out));
                }
                Ok(_) => self.mark_bad(index, "image has zero width or height"),
                Err(e) => self.mark_bad(index, &format!("{e:#}")),
            }
        }
        Err(format!("none of the {n} images of the dataset could be read"))
    }

    fn mark_bad(&self, index: usize, err: &str) {
        if lock(&self.bad).insert(index) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            let msg = format!(
                "warning: skipping unreadable image {}: {err} (another image is used in its place)",
                self.source.describe(index)
            );
            let reporter = self.reporter.read().unwrap_or_else(|e| e.into_inner()).clone();
            reporter(&msg);
        }
    }
}

type SlotResult = Result<(usize, Vec<f32>), String>;

struct Pending {
    slots: Vec<Option<SlotResult>>,
    done: usize,
}

struct RunState {
    next_item: u64,
    consumer_step: u64,
    pending: HashMap<u64, Pending>,
    stop: bool,
}

/// One started stream of batches (from `start` to the next `start` or drop).
struct Run {
    state: Mutex<RunState>,
    work_cv: Condvar,
    ready_cv: Condvar,
}

fn worker(common: Arc<Common>, run: Arc<Run>) {
    // Items are numbered over this loader's shard: `b` per step.
    let b = common.shard.len() as u64;
    let (first, global) = (common.shard.start, common.cfg.batch);
    let prefetch = common.cfg.prefetch.max(1) as u64;
    let spe = common.steps_per_epoch as u64;
    loop {
        let item = {
            let mut st = lock(&run.state);
            loop {
                if st.stop {
                    return;
                }
                if st.next_item / b < st.consumer_step + prefetch {
                    break;
                }
                st = run.work_cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.next_item += 1;
            st.next_item - 1
        };
        let (g, slot) = (item / b, (item % b) as usize);
        let (epoch, step) = ((g / spe) as usize, (g % spe) as usize);
        let result = common.produce(epoch, step * global + first + slot);
        let mut st = lock(&run.state);
        if st.stop {
            return;
        }
        let p = st.pending.entry(g).or_insert_with(|| Pending { slots: vec![None; b as usize], done: 0 });
        p.slots[slot] = Some(result);
        p.done += 1;
        if p.done == b as usize {
            run.ready_cv.notify_all();
        }
    }
}

/// Seeded, resumable, prefetching loader of augmented, masked batches.
pub struct Loader {
    common: Arc<Common>,
    run: Option<(Arc<Run>, Vec<JoinHandle<()>>)>,
    stall: f64,
}

impl Loader {
    /// A loader of whole batches (a single process's view of the global batch).
    pub fn new(source: Arc<dyn ImageSource>, cfg: LoaderConfig) -> anyhow::Result<Self> {
        let all = 0..cfg.batch;
        Self::new_shard(source, cfg, all)
    }

    /// A loader of slots `shard` of every global batch of `cfg.batch`: the images, the
    /// augmentations and the mask rows that a loader of the whole batch would give those
    /// slots (every draw is keyed by its global position), so that ranks that each take
    /// their share together see exactly one process's batch.
    pub fn new_shard(source: Arc<dyn ImageSource>, cfg: LoaderConfig, shard: std::ops::Range<usize>) -> anyhow::Result<Self> {
        if shard.is_empty() || shard.end > cfg.batch {
            bail!("loader shard {shard:?} is not a non-empty part of the batch of {}", cfg.batch);
        }
        if cfg.batch == 0 {
            bail!("batch size must be at least 1");
        }
        if cfg.size == 0 || !cfg.size.is_multiple_of(32) {
            bail!("input size {} must be a positive multiple of 32 (one mask patch = 32×32 pixels)", cfg.size);
        }
        if !(0.0..1.0).contains(&cfg.mask_ratio) {
            bail!("mask ratio {} must be in [0, 1)", cfg.mask_ratio);
        }
        let f = cfg.size as usize / 32;
        if len_keep(f, cfg.mask_ratio) == 0 {
            bail!("mask ratio {} leaves no visible patch of the {f}×{f} at size {}", cfg.mask_ratio, cfg.size);
        }
        if source.len() < cfg.batch {
            bail!("the dataset has {} images, fewer than one batch of {}", source.len(), cfg.batch);
        }
        let steps_per_epoch = source.len() / cfg.batch;
        let default: Reporter = Arc::new(|m: &str| eprintln!("{m}"));
        Ok(Self {
            common: Arc::new(Common {
                source,
                cfg,
                shard,
                steps_per_epoch,
                bad: Mutex::new(HashSet::new()),
                skipped: AtomicUsize::new(0),
                reporter: RwLock::new(default),
                perms: Mutex::new(HashMap::new()),
            }),
            run: None,
            stall: 0.0,
        })
    }

    /// Where warnings about unreadable images go (one line per image; default: stderr).
    pub fn on_skip(&mut self, f: impl Fn(&str) + Send + Sync + 'static) {
        *self.common.reporter.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(f);
    }

    /// Full batches per epoch (the incomplete last batch is dropped, as `drop_last=True`).
    pub fn steps_per_epoch(&self) -> usize {
        self.common.steps_per_epoch
    }

    /// The configuration this loader was built with.
    pub fn config(&self) -> &LoaderConfig {
        &self.common.cfg
    }

    fn stop(&mut self) {
        if let Some((run, handles)) = self.run.take() {
            lock(&run.state).stop = true;
            run.work_cv.notify_all();
            for h in handles {
                let _ = h.join();
            }
        }
    }

    /// Start producing batches from `step` of `epoch` (at the beginning and on resume).
    /// A `step` past the end of the epoch continues into the following epochs.
    pub fn start(&mut self, epoch: usize, step: usize) {
        self.stop();
        let g = (epoch * self.common.steps_per_epoch + step) as u64;
        let run = Arc::new(Run {
            state: Mutex::new(RunState {
                next_item: g * self.common.shard.len() as u64,
                consumer_step: g,
                pending: HashMap::new(),
                stop: false,
            }),
            work_cv: Condvar::new(),
            ready_cv: Condvar::new(),
        });
        let handles = (0..self.common.cfg.workers.max(1))
            .map(|i| {
                let (c, r) = (self.common.clone(), run.clone());
                std::thread::Builder::new()
                    .name(format!("spark-data-{i}"))
                    .spawn(move || worker(c, r))
                    .expect("spawning a data worker thread")
            })
            .collect();
        self.run = Some((run, handles));
    }

    /// The next batch (starting at epoch 0, step 0 if `start` was not called).
    pub fn next_batch(&mut self) -> anyhow::Result<Batch> {
        if self.run.is_none() {
            self.start(0, 0);
        }
        let run = self.run.as_ref().unwrap().0.clone();
        let b = self.common.shard.len();
        let (g, pending) = {
            let mut st = lock(&run.state);
            let g = st.consumer_step;
            let mut waited: Option<Instant> = None;
            while st.pending.get(&g).is_none_or(|p| p.done < b) {
                waited.get_or_insert_with(Instant::now);
                st = run.ready_cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if let Some(t) = waited {
                self.stall += t.elapsed().as_secs_f64();
            }
            let p = st.pending.remove(&g).unwrap();
            st.consumer_step += 1;
            run.work_cv.notify_all();
            (g, p)
        };
        let spe = self.common.steps_per_epoch;
        let (epoch, step) = (g as usize / spe, g as usize % spe);
        let size = self.common.cfg.size as usize;
        let mut images = Vec::with_capacity(b * size * size * 3);
        let mut indices = Vec::with_capacity(b);
        for slot in pending.slots {
            let (index, img) = slot.unwrap().map_err(|e| anyhow!("data loader: {e}"))?;
            indices.push(index);
            images.extend_from_slice(&img);
        }
        let f = size / crate::model::PATCH;
        let mut rng = stream(self.common.cfg.seed, TAG_MASK, epoch as u64, step as u64);
        // The whole batch's mask is drawn (its images are drawn in sequence), then this
        // shard's rows are kept.
        let mut visible = sample_mask(&mut rng, self.common.cfg.batch, f, self.common.cfg.mask_ratio);
        visible.truncate(self.common.shard.end * f * f);
        visible.drain(..self.common.shard.start * f * f);
        Ok(Batch { images, mask: PatchMask::new(b, f, f, visible), batch: b, size, indices, epoch, step })
    }

    /// How many distinct images could not be read so far (each reported once).
    pub fn skipped_images(&self) -> usize {
        self.common.skipped.load(Ordering::Relaxed)
    }

    /// Total seconds `next_batch` has waited for the workers: if this grows with the
    /// step count, the CPU cannot decode and augment as fast as the GPU trains.
    pub fn stall_seconds(&self) -> f64 {
        self.stall
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop();
    }
}
