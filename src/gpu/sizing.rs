//! Sizing a graph before it is allocated: a *dry run* of the same build code.
//!
//! wgpu reports a binding over `max_storage_buffer_binding_size` only when the bind group
//! is created, after every buffer before it has been allocated; on lavapipe (128 MiB per
//! binding) SparK-ResNet-50 224² crosses it at batch 14 in the decoder's last stage, and
//! batch 512 would first allocate tens of GB of host memory. So every graph is first built
//! with the context in dry-run mode: `zeros`/`upload` hand out 16-byte placeholders that
//! keep their logical length, `write` does nothing, and `dispatch_groups` records every
//! storage view it would bind instead of binding it. The real build runs only when the dry
//! run fits; otherwise the caller gets the sizes and the adapter's limits before anything
//! large exists. Running the real builder (rather than a separate size formula) keeps one
//! source of truth for every tensor the graph makes.

use anyhow::{Result, anyhow};

use super::GpuContext;

/// What a dry run would have allocated and bound.
#[derive(Clone, Debug, Default)]
pub struct DryRunReport {
    /// Bytes of every buffer the build would create.
    pub requested_bytes: u64,
    /// The largest single buffer.
    pub largest_buffer: u64,
    /// The largest storage view a dispatch would bind, and the kernel that binds it.
    pub largest_binding: u64,
    /// The kernel that binds `largest_binding`.
    pub largest_binding_kernel: String,
    /// Every `zeros` allocation, in order (the memory plan's input).
    pub(crate) allocs: Vec<super::plan::AllocRecord>,
    /// Their placeholders, held until the dry run ends: a dispatch refers to a buffer
    /// by its address, which a dropped placeholder would hand to the next one.
    pub(crate) placeholders: Vec<std::sync::Arc<wgpu::Buffer>>,
    /// Depth of `GpuContext::pinned` scopes.
    pub(crate) pin_depth: usize,
    /// The memory plan of the build, when the builder made one.
    pub plan: Option<super::MemoryPlan>,
}

impl DryRunReport {
    pub(crate) fn buffer(&mut self, bytes: u64) {
        self.requested_bytes += bytes;
        self.largest_buffer = self.largest_buffer.max(bytes);
    }

    pub(crate) fn binding(&mut self, kernel: &str, bytes: u64) {
        if bytes > self.largest_binding {
            self.largest_binding = bytes;
            self.largest_binding_kernel = kernel.to_string();
        }
    }

    /// `None` when the graph fits the adapter's per-buffer and per-binding limits and
    /// (on a CPU adapter) the host memory available, else the limit it breaks, in words.
    /// Bytes the build needs: its planned buffers, or every buffer without a plan.
    pub fn needed_bytes(&self) -> u64 {
        self.plan.as_ref().map_or(self.requested_bytes, |p| p.stats.total())
    }

    /// Why the sized graph does not fit the device (None: it fits).
    pub fn misfit(&self, ctx: &GpuContext) -> Option<String> {
        let limits = &ctx.limits;
        let bind = limits.max_storage_buffer_binding_size;
        if self.largest_binding > bind {
            return Some(format!(
                "{} binds a tensor of {} but the adapter binds at most {} per storage buffer \
                 (max_storage_buffer_binding_size)",
                self.largest_binding_kernel,
                mib(self.largest_binding),
                mib(bind)
            ));
        }
        if self.largest_buffer > limits.max_buffer_size {
            return Some(format!(
                "a buffer of {} exceeds the adapter's max_buffer_size of {}",
                mib(self.largest_buffer),
                mib(limits.max_buffer_size)
            ));
        }
        if let Some(budget) = ctx.memory_budget.filter(|&b| self.needed_bytes() > b) {
            return Some(format!(
                "the graph needs {} but this CPU adapter allocates from host memory, of which {} is available",
                mib(self.needed_bytes()),
                mib(budget)
            ));
        }
        None
    }
}

/// `MemAvailable` of `/proc/meminfo` in bytes (Linux; `None` elsewhere or unreadable).
/// A CPU adapter's device memory is host memory, and allocating past it is not a wgpu
/// error but the kernel's out-of-memory killer, so the graph is sized against it first.
pub(crate) fn host_memory_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes as `N.N MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

impl GpuContext {
    /// Whether buffers and bindings are only being sized (see the module comment).
    pub fn is_dry_run(&self) -> bool {
        self.dry.lock().map(|d| d.is_some()).unwrap_or(false)
    }

    pub(crate) fn with_dry<R>(&self, f: impl FnOnce(&mut DryRunReport) -> R) -> Option<R> {
        self.dry.lock().ok()?.as_mut().map(f)
    }

    /// Run `build` with this context in dry-run mode and report what it would need. wgpu
    /// errors raised by the placeholders are discarded; errors the build itself returns
    /// are passed on.
    pub fn dry_run<T>(&self, build: impl FnOnce() -> Result<T>) -> Result<DryRunReport> {
        {
            let mut d = self.dry.lock().map_err(|_| anyhow!("GPU sizing state poisoned"))?;
            anyhow::ensure!(d.is_none(), "dry runs do not nest");
            *d = Some(DryRunReport::default());
        }
        let out = build().map(drop);
        let report = self.dry.lock().map_err(|_| anyhow!("GPU sizing state poisoned"))?.take().unwrap_or_default();
        self.discard_errors();
        out?;
        Ok(report)
    }

    /// The largest `n` in `1..=hi` for which `fits(n)` holds, assuming that a size that
    /// fits keeps fitting when it shrinks (every tensor grows with the batch). `None` when
    /// not even 1 fits.
    pub fn largest_fitting(hi: usize, mut fits: impl FnMut(usize) -> Result<bool>) -> Result<Option<usize>> {
        let (mut lo, mut hi) = (0usize, hi);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid)? {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok((lo > 0).then_some(lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_sizes_without_allocating_and_sees_every_binding() {
        let ctx = GpuContext::new_default().unwrap();
        let before = ctx.allocated_bytes();
        let huge = ctx.limits.max_storage_buffer_binding_size as usize; // elements: 4× the limit in bytes
        let r = ctx
            .dry_run(|| {
                let a = ctx.zeros(huge);
                let b = ctx.zeros(7);
                let k = ctx.kernel("fill")?;
                #[repr(C)]
                #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
                struct P {
                    n: u32,
                    v: f32,
                }
                let _ = ctx.dispatch(&k, &P { n: 7, v: 1.0 }, &[&b], 7);
                let _ = ctx.dispatch(&k, &P { n: 7, v: 1.0 }, &[&a.slice(0, huge / 2)], 7);
                Ok(())
            })
            .unwrap();
        assert_eq!(ctx.allocated_bytes(), before, "a dry run allocated real buffers");
        assert_eq!(r.requested_bytes, huge as u64 * 4 + 28);
        assert_eq!(r.largest_binding, huge as u64 * 2);
        assert!(r.largest_binding_kernel.contains("fill"), "{}", r.largest_binding_kernel);
        let why = r.misfit(&ctx).expect("a binding over the limit must not fit");
        assert!(why.contains("max_storage_buffer_binding_size"), "{why}");
        assert!(!ctx.is_dry_run());
        ctx.check("after a dry run").unwrap();
        // Placeholders are not left behind in the real mode.
        let t = ctx.zeros(5);
        assert_eq!(ctx.allocated_bytes(), before + 20);
        assert_eq!(ctx.read_f32(&t).unwrap(), vec![0.0; 5]);
    }

    #[test]
    fn largest_fitting_is_a_binary_search() {
        for limit in [0usize, 1, 2, 13, 99, 100] {
            let mut calls = 0;
            let got = GpuContext::largest_fitting(100, |n| {
                calls += 1;
                Ok(n <= limit)
            })
            .unwrap();
            assert_eq!(got, (limit > 0).then_some(limit.min(100)));
            assert!(calls <= 8, "{calls} probes");
        }
    }
}
