//! Data-parallel plumbing (issue 10): the collective operations the training loop needs,
//! behind one trait so that a single process and an MPI world share one code path.
//!
//! Only the process-local pieces live here so far: the `Collective` trait, the `Solo`
//! implementation (one process, every collective is the identity), the per-rank share of
//! a global batch, the local-rank lookup used to pick an adapter, and the bucketed
//! all-reduce over a flat gradient buffer. The MPI implementation (rsmpi behind the
//! `mpi` cargo feature) is not written yet; see the issue.

use anyhow::{Result, bail};
use std::ops::Range;

/// Floats per all-reduce bucket: 4 Mi floats = 16 MiB, so a ResNet-50 gradient (25.6 M
/// floats) needs no second full-size host copy while each message stays large enough to
/// reach the transport's bandwidth (MPI all-reduce latency dominates below ~1 MiB).
pub const ALLREDUCE_BUCKET_FLOATS: usize = 4 << 20;

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
            "local rank {local_rank}: only {matching} matching adapter(s) on this node; start fewer ranks per node or pass --adapter-per-rank to share one"
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
        assert!(pick_adapter(1, 1, false).unwrap_err().to_string().contains("--adapter-per-rank"));
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
