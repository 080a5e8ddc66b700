//! Per-dispatch GPU timing with timestamp queries.
//!
//! Each dispatch is encoded in its own compute pass with begin/end timestamp writes,
//! which needs only `TIMESTAMP_QUERY` (timestamps *inside* a pass need an extra feature
//! many adapters lack). Separate passes add a little overhead per dispatch, so the
//! profile is for attribution; step times come from wall-clock timing.

use anyhow::{Result, anyhow};

use super::{Dispatch, GpuContext};

/// wgpu's cap on queries per set.
const MAX_QUERIES: usize = wgpu::QUERY_SET_MAX_QUERIES as usize;

impl GpuContext {
    /// Whether the device can time dispatches (`Features::TIMESTAMP_QUERY`).
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Run `dispatches` once, each in its own timed pass; milliseconds per dispatch.
    pub fn profile(&self, dispatches: &[&Dispatch]) -> Result<Vec<f64>> {
        if !self.has_timestamps() {
            return Err(anyhow!("adapter {} has no timestamp queries", self.info.name));
        }
        let period_ns = self.queue.get_timestamp_period() as f64;
        let mut out = Vec::with_capacity(dispatches.len());
        for chunk in dispatches.chunks(MAX_QUERIES / 2) {
            let n = (chunk.len() * 2) as u32;
            let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: n,
            });
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: n as u64 * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let read = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps-read"),
                size: n as u64 * 8,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = self.device.create_command_encoder(&Default::default());
            for (i, d) in chunk.iter().enumerate() {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &set,
                        beginning_of_pass_write_index: Some(2 * i as u32),
                        end_of_pass_write_index: Some(2 * i as u32 + 1),
                    }),
                });
                d.encode(&mut pass);
            }
            enc.resolve_query_set(&set, 0..n, &resolve, 0);
            enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, n as u64 * 8);
            self.queue.submit([enc.finish()]);
            let (tx, rx) = std::sync::mpsc::channel();
            read.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
            self.wait()?;
            rx.recv()?.map_err(|e| anyhow!("mapping timestamps: {e}"))?;
            let view = read.get_mapped_range(..).map_err(|e| anyhow!("timestamps: {e:?}"))?;
            let ts: &[u64] = bytemuck::cast_slice(&view);
            for i in 0..chunk.len() {
                out.push(ts[2 * i + 1].saturating_sub(ts[2 * i]) as f64 * period_ns / 1e6);
            }
        }
        Ok(out)
    }
}
