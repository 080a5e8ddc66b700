//! Data-parallel plumbing (issue 10): the collective operations the training loop needs,
//! behind one trait so that a single process and an MPI world share one code path.
//!
//! Here: the `Collective` trait, the `Solo` implementation (one process, every collective
//! is the identity), the MPI implementation (`mpi`, rsmpi behind the `mpi` cargo feature),
//! the per-rank share of a global batch, the local-rank lookup used to pick an adapter,
//! the bucketed all-reduce over a flat gradient buffer and the hang watchdog's settings.
//! How a step uses them: `model::spark::SparkModel::train_step_dist`.

use anyhow::{Context as _, Result, bail};
use std::ops::Range;
use std::time::Duration;

#[cfg(feature = "mpi")]
pub mod mpi;

/// Floats per all-reduce bucket: 4 Mi floats = 16 MiB, so a ResNet-50 gradient (25.6 M
/// floats) needs no second full-size host copy while each message stays large enough to
/// reach the transport's bandwidth (MPI all-reduce latency dominates below ~1 MiB).
pub const ALLREDUCE_BUCKET_FLOATS: usize = 4 << 20;

/// Where one data-parallel step's time went (seconds) and how much was summed.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTimes {
    /// Forward, backward and the synchronised BatchNorm's GPU work (host points excluded).
    pub compute_s: f64,
    /// All-reduces: BatchNorm sums, gradients, loss (including any wait for slower ranks
    /// unless `wait_s` was measured separately).
    pub reduce_s: f64,
    /// Waiting for the slowest rank before the gradient all-reduce (`bench` only).
    pub wait_s: f64,
    /// Bytes this rank contributed to all-reduces.
    pub reduced_bytes: u64,
}

impl std::ops::AddAssign for StepTimes {
    fn add_assign(&mut self, o: Self) {
        self.compute_s += o.compute_s;
        self.reduce_s += o.reduce_s;
        self.wait_s += o.wait_s;
        self.reduced_bytes += o.reduced_bytes;
    }
}

/// Gradient buckets of the decoder held on the host at once to be all-reduced while the
/// encoder's backward runs (64 MiB: most of SparK-ResNet-50's 27 M decoder floats at width
/// 768 would need 108 MiB; the rest is reduced after the backward).
pub const OVERLAP_BUCKETS: usize = 4;

/// The collectives data-parallel training uses. Sums are taken in a fixed order by the
/// implementation (MPI's reduction order is fixed for a fixed rank count and
/// algorithm), so results are deterministic for a fixed world size.
pub trait Collective {
    /// This process's rank in `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Element-wise sum of `buf` over all ranks, result on every rank.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Logical OR of `flag` over all ranks (used for the stop flag so that every rank
    /// stops after the same step).
    fn any(&self, flag: bool) -> Result<bool>;
    /// Whether this rank writes checkpoints, logs and plots.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
    /// This process's rank among the ranks on its node (picks the adapter).
    fn local_rank(&self) -> usize {
        0
    }
    /// Wait until every rank got here.
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    /// End every rank now (a rank that failed: the others must not wait for it).
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// One process: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn any(&self, flag: bool) -> Result<bool> {
        Ok(flag)
    }
}

/// The samples of a global batch that `rank` of `size` processes: a contiguous,
/// disjoint share, as in the official code (`batch_size_per_gpu = bs // world_size`).
/// A global batch that does not split evenly is an error naming `--batch`, since
/// uneven shares would change BatchNorm statistics and the loss weighting.
pub fn shard(global_batch: usize, rank: usize, size: usize) -> Result<Range<usize>> {
    if size == 0 || rank >= size {
        bail!("rank {rank} out of range for world size {size}");
    }
    if !global_batch.is_multiple_of(size) || global_batch < size {
        bail!("--batch {global_batch} does not split into {size} equal per-rank shares (the global batch must be a multiple of the rank count)");
    }
    let per = global_batch / size;
    Ok(rank * per..(rank + 1) * per)
}

/// Environment variables MPI launchers set to a process's rank among the ranks on its
/// node, in the order they are checked: Open MPI, MPICH/Intel MPI (Hydra), Slurm `srun`.
pub const LOCAL_RANK_VARS: [&str; 3] = ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"];

/// The node-local rank from `lookup` (normally `std::env::var`), or `None` when no
/// launcher variable is set. A variable that is set but not a number is an error naming it.
pub fn local_rank_from(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<usize>> {
    for var in LOCAL_RANK_VARS {
        if let Some(v) = lookup(var) {
            return match v.trim().parse() {
                Ok(r) => Ok(Some(r)),
                Err(_) => bail!("environment variable {var}={v:?} is not a local rank number"),
            };
        }
    }
    Ok(None)
}

/// Environment variables by which MPI launchers announce the world size: Open MPI,
/// MPICH/Intel MPI (Hydra, and Slurm's PMI-2).
pub const WORLD_SIZE_VARS: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];

/// The world size a launcher announced through `lookup`, if any (a PMIx launch that
/// names no size counts as "launched, size unknown" = `Some(0)`).
pub fn launched_world_size(lookup: impl Fn(&str) -> Option<String>) -> Option<usize> {
    for var in WORLD_SIZE_VARS {
        if let Some(v) = lookup(var) {
            return Some(v.trim().parse().unwrap_or(0));
        }
    }
    lookup("PMIX_RANK").map(|_| 0)
}

/// Seconds a rank may wait in one collective before it decides that another rank died
/// or hung and aborts every rank (0: wait forever).
pub const WATCHDOG_VAR: &str = "SPARK_WGPU_MPI_TIMEOUT";
/// Default of [`WATCHDOG_VAR`]: longer than any single step or checkpoint write we
/// have seen (a ResNet-50 step on lavapipe takes minutes; rank 0 writing a 300 MB
/// checkpoint to a network disk, seconds), short enough that a dead job is noticed.
pub const WATCHDOG_DEFAULT_S: u64 = 1800;
/// Exit status of a rank the watchdog ended.
pub const EXIT_WATCHDOG: i32 = 3;
/// Exit status every rank gets when one rank fails (MPI_Abort's error code).
pub const EXIT_RANK_FAILED: i32 = 2;

/// The hang watchdog's limit (None: off).
#[derive(Clone, Copy, Debug)]
pub struct Watchdog {
    /// How long a collective may wait before the run is declared hung.
    pub limit: Option<Duration>,
}

impl Watchdog {
    /// From [`WATCHDOG_VAR`] via `lookup`; a value that is not a number of seconds is an
    /// error naming the variable.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let secs = match lookup(WATCHDOG_VAR) {
            Some(v) => v
                .trim()
                .parse::<u64>()
                .with_context(|| format!("environment variable {WATCHDOG_VAR}={v:?} is not a number of seconds"))?,
            None => WATCHDOG_DEFAULT_S,
        };
        Ok(Self { limit: (secs > 0).then(|| Duration::from_secs(secs)) })
    }
}

/// The world this process belongs to: MPI when a launcher started it (and the binary was
/// built with `--features mpi`), otherwise [`Solo`]. A multi-process launch of a binary
/// built without MPI is refused: every process would train alone on the whole batch.
pub fn init_world() -> Result<Box<dyn Collective>> {
    let env = |k: &str| std::env::var(k).ok();
    let launched = launched_world_size(env);
    #[cfg(feature = "mpi")]
    if launched.is_some() {
        let watchdog = Watchdog::from_env(env)?;
        if let Some(w) = mpi::MpiWorld::init(watchdog)? {
            return Ok(Box::new(w));
        }
    }
    #[cfg(not(feature = "mpi"))]
    if let Some(n) = launched.filter(|&n| n != 1) {
        bail!(
            "an MPI launcher started this process (world size {}), but this spark-wgpu was built without MPI: \
             every process would train alone. Build with `cargo build --release --features mpi` (README: Multi-GPU)",
            if n == 0 { "unknown".to_string() } else { n.to_string() }
        );
    }
    let _ = launched;
    Ok(Box::new(Solo))
}

/// Which of `matching` adapters a rank with node-local rank `local_rank` uses. With
/// `share` (e.g. lavapipe, which is one adapter), every rank takes the first; otherwise
/// a node with more ranks than adapters is an error rather than silent oversubscription.
pub fn pick_adapter(local_rank: usize, matching: usize, share: bool) -> Result<usize> {
    if matching == 0 {
        bail!("local rank {local_rank}: no adapter matches --adapter/--backend");
    }
    if share {
        return Ok(0);
    }
    if local_rank >= matching {
        bail!(
            "local rank {local_rank}: only {matching} matching adapter(s) on this node; start fewer ranks per node or pass --share-adapter to let ranks share one"
        );
    }
    Ok(local_rank)
}

/// Sum `buf` over all ranks in buckets of at most `bucket` floats, so the transport
/// never needs a second full-size copy of a large gradient.
pub fn all_reduce_bucketed(c: &dyn Collective, buf: &mut [f32], bucket: usize) -> Result<()> {
    if c.size() == 1 {
        return Ok(());
    }
    for chunk in buf.chunks_mut(bucket.max(1)) {
        c.all_reduce_sum(chunk)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A fake world of `size` ranks whose peers all hold `peer` in every element: the
    /// sum is `own + (size-1)*peer`. Records the bucket lengths it was handed.
    struct Fake {
        size: usize,
        peer: f32,
        calls: RefCell<Vec<usize>>,
    }
    impl Collective for Fake {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            self.size
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
            self.calls.borrow_mut().push(buf.len());
            for x in buf {
                *x += (self.size - 1) as f32 * self.peer;
            }
            Ok(())
        }
        fn any(&self, flag: bool) -> Result<bool> {
            Ok(flag)
        }
    }

    #[test]
    fn shards_are_disjoint_and_cover_the_batch() {
        let size = 4;
        let mut seen = vec![0; 12];
        for r in 0..size {
            for i in shard(12, r, size).unwrap() {
                seen[i] += 1;
            }
        }
        assert_eq!(seen, vec![1; 12]);
        assert_eq!(shard(4, 1, 2).unwrap(), 2..4);
        assert_eq!(shard(5, 0, 1).unwrap(), 0..5);
    }

    #[test]
    fn uneven_batch_is_an_error_naming_the_option() {
        let e = shard(5, 0, 2).unwrap_err().to_string();
        assert!(e.contains("--batch 5"), "{e}");
        assert!(shard(1, 0, 2).is_err());
        assert!(shard(4, 2, 2).is_err());
    }

    #[test]
    fn local_rank_follows_launcher_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(local_rank_from(env(&[])).unwrap(), None);
        assert_eq!(local_rank_from(env(&[("SLURM_LOCALID", "3")])).unwrap(), Some(3));
        // Open MPI's variable wins over Slurm's when both are set (mpirun inside an allocation).
        assert_eq!(local_rank_from(env(&[("SLURM_LOCALID", "3"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1")])).unwrap(), Some(1));
        let e = local_rank_from(env(&[("MPI_LOCALRANKID", "x")])).unwrap_err().to_string();
        assert!(e.contains("MPI_LOCALRANKID"), "{e}");
    }

    #[test]
    fn adapter_choice() {
        assert_eq!(pick_adapter(1, 2, false).unwrap(), 1);
        assert_eq!(pick_adapter(1, 1, true).unwrap(), 0);
        assert!(pick_adapter(1, 1, false).unwrap_err().to_string().contains("--share-adapter"));
        assert!(pick_adapter(0, 0, true).is_err());
    }

    #[test]
    fn bucketed_all_reduce_sums_every_element_in_bounded_buckets() {
        let c = Fake { size: 3, peer: 2.0, calls: RefCell::new(vec![]) };
        let mut buf: Vec<f32> = (0..10).map(|i| i as f32).collect();
        all_reduce_bucketed(&c, &mut buf, 4).unwrap();
        assert_eq!(*c.calls.borrow(), vec![4, 4, 2]);
        let want: Vec<f32> = (0..10).map(|i| i as f32 + 4.0).collect();
        assert_eq!(buf, want);
    }

    #[test]
    fn launcher_detection_and_watchdog_setting() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(launched_world_size(env(&[])), None);
        assert_eq!(launched_world_size(env(&[("OMPI_COMM_WORLD_SIZE", "4")])), Some(4));
        assert_eq!(launched_world_size(env(&[("PMI_SIZE", "2")])), Some(2));
        assert_eq!(launched_world_size(env(&[("PMIX_RANK", "0")])), Some(0));
        assert_eq!(Watchdog::from_env(env(&[])).unwrap().limit, Some(Duration::from_secs(WATCHDOG_DEFAULT_S)));
        assert_eq!(Watchdog::from_env(env(&[(WATCHDOG_VAR, "0")])).unwrap().limit, None);
        assert_eq!(Watchdog::from_env(env(&[(WATCHDOG_VAR, "7")])).unwrap().limit, Some(Duration::from_secs(7)));
        let e = Watchdog::from_env(env(&[(WATCHDOG_VAR, "soon")])).unwrap_err().to_string();
        assert!(e.contains(WATCHDOG_VAR), "{e}");
    }

    #[test]
    fn solo_is_the_identity() {
        let mut buf = vec![1.0, f32::NAN];
        all_reduce_bucketed(&Solo, &mut buf, 1).unwrap();
        assert_eq!(buf[0], 1.0);
        assert!(buf[1].is_nan());
        assert!(Solo.is_root());
        assert!(Solo.any(true).unwrap());
        assert!(!Solo.any(false).unwrap());
    }
}
