//! The MPI world (rsmpi, cargo feature `mpi`): one process per adapter, collectives by
//! the installed MPI library (Open MPI, MPICH, Intel MPI), never a transport of our own.

use anyhow::Result;
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Collective, Watchdog};

/// The processes started by an MPI launcher.
pub struct MpiWorld {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_rank: usize,
    /// Seconds since `epoch` at which the collective in progress began (0: none).
    in_collective_since: Arc<AtomicU64>,
    epoch: Instant,
    // Dropped last: MPI_Finalize.
    _universe: mpi::environment::Universe,
}

impl MpiWorld {
    /// Initialise MPI (MPI_THREAD_MULTIPLE, so that the watchdog thread may call
    /// MPI_Abort while the main thread is blocked in a collective) and start the
    /// watchdog. `None` when MPI was initialised already.
    pub fn init(watchdog: Watchdog) -> Result<Option<Self>> {
        let Some((universe, threading)) = mpi::initialize_with_threading(mpi::Threading::Multiple) else {
            return Ok(None);
        };
        let world = universe.world();
        let rank = world.rank() as usize;
        let size = world.size() as usize;
        // The launcher's variables name the node-local rank directly; otherwise ask MPI
        // which ranks share this node (a shared-memory communicator).
        let local_rank = match super::local_rank_from(|k| std::env::var(k).ok())? {
            Some(r) => r,
            None => world.split_shared(rank as i32).rank() as usize,
        };
        let me = Self {
            world,
            rank,
            size,
            local_rank,
            in_collective_since: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            _universe: universe,
        };
        if let Some(limit) = watchdog.limit {
            if threading < mpi::Threading::Multiple {
                eprintln!(
                    "rank {rank}: the MPI library offers no MPI_THREAD_MULTIPLE ({threading:?}): the watchdog ends a hung rank with exit instead of MPI_Abort"
                );
            }
            let since = me.in_collective_since.clone();
            let epoch = me.epoch;
            let multiple = threading >= mpi::Threading::Multiple;
            std::thread::Builder::new().name("spark-mpi-watchdog".into()).spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(200).min(limit));
                    let s = since.load(Ordering::SeqCst);
                    if s == 0 {
                        continue;
                    }
                    let waited = epoch.elapsed().saturating_sub(Duration::from_millis(s));
                    if waited > limit {
                        eprintln!(
                            "rank {rank} of {size}: waited {:.0} s in a collective for the other ranks (limit {}={}): \
                             another rank has died or hung; aborting every rank",
                            waited.as_secs_f64(),
                            super::WATCHDOG_VAR,
                            limit.as_secs()
                        );
                        if multiple {
                            // SAFETY: MPI is initialised with MPI_THREAD_MULTIPLE and MPI_Abort
                            // does not return.
                            unsafe { mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, super::EXIT_WATCHDOG) };
                        }
                        std::process::exit(super::EXIT_WATCHDOG);
                    }
                }
            })?;
        }
        Ok(Some(me))
    }

    /// Run `f` as one collective: the watchdog times it.
    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        // +1: 0 means "not in a collective".
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        self.in_collective_since.store(now, Ordering::SeqCst);
        let out = f();
        self.in_collective_since.store(0, Ordering::SeqCst);
        out
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        // rsmpi exposes no MPI_IN_PLACE: one bucket-sized copy (the caller bounds buckets).
        let send = buf.to_vec();
        self.timed(|| self.world.all_reduce_into(&send[..], buf, SystemOperation::sum()));
        Ok(())
    }
    fn any(&self, flag: bool) -> Result<bool> {
        let send = flag as i32;
        let mut out = 0i32;
        self.timed(|| self.world.all_reduce_into(&send, &mut out, SystemOperation::max()));
        Ok(out != 0)
    }
    fn barrier(&self) -> Result<()> {
        self.timed(|| self.world.barrier());
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
