//! The memory plan of a graph: buffers shared by liveness (issue 11, item 1).
//!
//! A graph is static: its dry run (`gpu::sizing`) already records every buffer the build
//! makes and, for every dispatch, which buffers it binds and whether it writes them. From
//! that trace and the order in which a training step replays the dispatches, each
//! buffer gets a lifetime, from the first dispatch that touches it to the last. Buffers
//! whose lifetimes do not overlap share one physical buffer; the real build then follows
//! the plan, allocation by allocation, since it runs the same build code.
//!
//! Sharing is by whole buffers, not offsets in one arena, because WebGPU tracks
//! storage usage per buffer: a dispatch that reads one view of a buffer and writes
//! another view of the same buffer is a usage conflict. Every tensor a dispatch binds is
//! alive at that dispatch, so none of them can share a physical buffer.
//!
//! A buffer keeps its own memory (it is *dedicated*) when its contents must outlive a step
//! or come from elsewhere:
//! - it was made inside [`GpuContext::pinned`]: parameters, gradients, BatchNorm running
//!   statistics, optimizer state, the step's inputs and what the host reads after a step;
//! - the first dispatch that touches it only reads it (the host wrote it, as the
//!   drop-path scales, or the previous step did);
//! - no dispatch touches it, or a host point of synchronised BatchNorm reads or writes
//!   it between dispatches.
//!
//! Everything else is written before it is read in every step, so what another tensor
//! left in the memory before is never seen. `tests/memory_plan.rs` checks that claim:
//! with the shared buffers filled with NaN after the build, training is bit-identical to
//! a build without the plan.

use std::collections::{HashMap, HashSet};

use super::{Dispatch, GpuContext};

/// One `zeros` allocation of a build, as a dry run saw it.
#[derive(Clone, Debug)]
pub(crate) struct AllocRecord {
    pub bytes: u64,
    /// The placeholder buffer's address: what the dispatches' touches refer to.
    pub key: usize,
    pub pinned: bool,
}

/// Bytes of a graph's buffers, by what they hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Buffers that keep their own memory (parameters, gradients, optimizer state,
    /// inputs, host-read outputs, host-written tensors).
    pub dedicated: u64,
    /// The physical buffers that the other tensors share.
    pub shared: u64,
    /// What the shared tensors would take with a buffer each (the saving is
    /// `unshared - shared`).
    pub unshared: u64,
    /// Shared tensors written in the forward and still read in the backward: the
    /// activations a training step keeps.
    pub kept_for_backward: u64,
}

impl MemoryStats {
    /// Bytes of every buffer of the graph.
    pub fn total(&self) -> u64 {
        self.dedicated + self.shared
    }
}

/// Which physical buffer each allocation of the build uses.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// Per `zeros` call of the build, in order: its size and its physical buffer (`None`:
    /// dedicated).
    pub(crate) slots: Vec<(u64, Option<usize>)>,
    /// Size of each physical buffer.
    pub(crate) physical: Vec<u64>,
    /// What the plan allocates, by kind.
    pub stats: MemoryStats,
}

impl MemoryPlan {
    /// Plan the allocations `allocs` of a build whose step replays `order` (every
    /// dispatch, in submission order; `backward_from` is the first backward dispatch).
    /// `host_touched` are buffers the host reads or writes between dispatches.
    pub(crate) fn new(allocs: &[AllocRecord], order: &[&Dispatch], backward_from: usize, host_touched: &HashSet<usize>) -> Self {
        let index: HashMap<usize, usize> = allocs.iter().enumerate().map(|(i, a)| (a.key, i)).collect();
        // (first touch, whether it writes, last touch) per allocation.
        let mut life: Vec<Option<(usize, bool, usize)>> = vec![None; allocs.len()];
        for (pos, d) in order.iter().enumerate() {
            for &(key, writes) in &d.touches {
                let Some(&i) = index.get(&key) else { continue };
                match &mut life[i] {
                    Some(l) => l.2 = pos,
                    l @ None => *l = Some((pos, writes, pos)),
                }
            }
        }
        let shared = |i: usize| match life[i] {
            Some((_, true, _)) => !allocs[i].pinned && !host_touched.contains(&allocs[i].key),
            _ => false,
        };
        // Greedy by size (the offline assignment of TFLite's and MNN's planners): the
        // largest tensor first, each into the first buffer made so far (all of them at
        // least as large) whose tensors' lifetimes it does not overlap, else a buffer of
        // its own. Sharing in step order instead (take any free buffer, grow it) let
        // small early tensors claim buffers that later large ones had to grow: 969 MiB
        // of buffers for a peak of 809 MiB live at ResNet-50 224² batch 8, where this
        // way needs 809.5 MiB (the peak itself, there).
        let mut order_by_size: Vec<usize> = (0..allocs.len()).filter(|&i| shared(i)).collect();
        order_by_size.sort_by_key(|&i| (std::cmp::Reverse(allocs[i].bytes), life[i].unwrap().0, i));
        let mut slots: Vec<(u64, Option<usize>)> = allocs.iter().map(|a| (a.bytes, None)).collect();
        let mut physical: Vec<u64> = vec![];
        // Per physical buffer: the lifetimes `(first, last)` it holds, sorted by `first`.
        let mut held: Vec<Vec<(usize, usize)>> = vec![];
        let mut stats = MemoryStats::default();
        for &i in &order_by_size {
            let need = allocs[i].bytes;
            let (first, _, last) = life[i].unwrap();
            let fits = |h: &Vec<(usize, usize)>| {
                let at = h.partition_point(|&(f, _)| f < first);
                (at == 0 || h[at - 1].1 < first) && (at == h.len() || h[at].0 > last)
            };
            let p = match held.iter().position(fits) {
                Some(p) => p,
                None => {
                    physical.push(need);
                    held.push(vec![]);
                    physical.len() - 1
                }
            };
            let at = held[p].partition_point(|&(f, _)| f < first);
            held[p].insert(at, (first, last));
            slots[i].1 = Some(p);
            stats.unshared += need;
            if first < backward_from && last >= backward_from {
                stats.kept_for_backward += need;
            }
        }
        stats.shared = physical.iter().sum();
        stats.dedicated = slots.iter().filter(|s| s.1.is_none()).map(|s| s.0).sum();
        Self { slots, physical, stats }
    }
}

/// A real build following a plan (see `GpuContext::follow_plan`).
pub(crate) struct Follow {
    pub plan: MemoryPlan,
    pub next: usize,
    pub buffers: Vec<Option<std::sync::Arc<wgpu::Buffer>>>,
    /// Set when the build asked for another size than its dry run did.
    pub diverged: Option<String>,
}

impl GpuContext {
    /// Run `f` with every buffer it makes dedicated (see the module comment).
    pub fn pinned<R>(&self, f: impl FnOnce() -> R) -> R {
        self.with_dry(|d| d.pin_depth += 1);
        let r = f();
        self.with_dry(|d| d.pin_depth -= 1);
        r
    }

    /// Make the next build's `zeros` calls follow `plan` (until `end_plan`).
    pub(crate) fn follow_plan(&self, plan: MemoryPlan) {
        let buffers = vec![None; plan.physical.len()];
        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = Some(Follow { plan, next: 0, buffers, diverged: None });
    }

    /// Stop following the plan and return its physical buffers; `Err` if the build did
    /// not match its dry run.
    pub(crate) fn end_plan(&self) -> anyhow::Result<Vec<std::sync::Arc<wgpu::Buffer>>> {
        let Some(f) = self.plan.lock().unwrap_or_else(|e| e.into_inner()).take() else { return Ok(vec![]) };
        if let Some(why) = f.diverged {
            anyhow::bail!("internal error: the graph build departed from its memory plan ({why})");
        }
        Ok(f.buffers.into_iter().flatten().collect())
    }

    /// The planned physical buffer for a `zeros` call of `size` bytes, if the build in
    /// progress shares it (`None`: allocate it as usual).
    pub(crate) fn planned_buffer(&self, size: u64, make: impl FnOnce(u64) -> wgpu::Buffer) -> Option<std::sync::Arc<wgpu::Buffer>> {
        let mut guard = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        let f = guard.as_mut()?;
        if f.diverged.is_some() {
            return None;
        }
        let n = f.next;
        f.next += 1;
        match f.plan.slots.get(n) {
            Some(&(bytes, slot)) if bytes == size => {
                let p = slot?;
                let phys = f.plan.physical[p];
                Some(f.buffers[p].get_or_insert_with(|| std::sync::Arc::new(make(phys))).clone())
            }
            other => {
                f.diverged = Some(format!("allocation {n} of {size} bytes, planned {other:?}"));
                None
            }
        }
    }
}

impl GpuContext {
    /// Keep `t` in its own memory (a dry run's record of it is marked pinned): for
    /// tensors the host reads after a step.
    pub fn pin_tensor(&self, t: &super::GpuTensor) {
        let key = std::sync::Arc::as_ptr(&t.buffer) as usize;
        self.with_dry(|d| {
            if let Some(a) = d.allocs.iter_mut().rev().find(|a| a.key == key) {
                a.pinned = true;
            }
        });
    }
}
