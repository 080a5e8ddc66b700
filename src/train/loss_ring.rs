//! Asynchronous loss read-back: each step copies its loss into one slot of a small ring
//! of mappable buffers; values are collected when the GPU has finished, never through
//! a blocking wait inside the step.

use anyhow::{Result, anyhow};
use std::sync::{Arc, Mutex};

use crate::gpu::{GpuContext, GpuTensor};

struct Slot {
    buffer: wgpu::Buffer,
    /// (step, mapped result) once the callback fired.
    state: Arc<Mutex<Option<Result<(), wgpu::BufferAsyncError>>>>,
    step: Option<usize>,
    /// The submission holding this slot's copy: a busy slot waits for it alone, not for
    /// the whole queue (later steps already submitted keep the GPU busy meanwhile).
    submission: Option<wgpu::SubmissionIndex>,
    has_extra: bool,
}

pub struct LossRing {
    slots: Vec<Slot>,
    next: usize,
}

impl LossRing {
    pub fn new(ctx: &GpuContext, size: usize) -> Self {
        let slots = (0..size)
            .map(|_| Slot {
                buffer: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("loss-readback"),
                    size: 16,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                state: Arc::new(Mutex::new(None)),
                step: None,
                submission: None,
                has_extra: false,
            })
            .collect();
        Self { slots, next: 0 }
    }

    /// Queue a copy of `loss` (after the step's work) and an asynchronous map. If the
    /// slot is still in flight (the GPU is `size` steps behind), wait for it first.
    /// `extra` (the gradient norm) rides in the same slot, at byte 4: one map per step.
    /// Results are (step, loss, extra or NaN).
    pub fn push(
        &mut self,
        ctx: &GpuContext,
        step: usize,
        loss: &GpuTensor,
        extra: Option<&GpuTensor>,
        out: &mut Vec<(usize, f32, f32)>,
    ) -> Result<()> {
        let i = self.next;
        self.next = (self.next + 1) % self.slots.len();
        if self.slots[i].step.is_some() {
            while !self.collect_slot(i, out)? {
                let poll = match self.slots[i].submission.clone() {
                    Some(idx) => wgpu::PollType::Wait { submission_index: Some(idx), timeout: None },
                    None => wgpu::PollType::wait_indefinitely(),
                };
                ctx.device.poll(poll).map_err(|e| anyhow!("waiting for the loss of a step: {e}"))?;
            }
        }
        let slot = &mut self.slots[i];
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&loss.buffer, loss.offset, &slot.buffer, 0, 4);
        if let Some(x) = extra {
            enc.copy_buffer_to_buffer(&x.buffer, x.offset, &slot.buffer, 4, 4);
        }
        slot.has_extra = extra.is_some();
        slot.submission = Some(ctx.queue.submit([enc.finish()]));
        let state = slot.state.clone();
        slot.buffer.map_async(wgpu::MapMode::Read, .., move |r| {
            *state.lock().unwrap() = Some(r);
        });
        slot.step = Some(step);
        Ok(())
    }

    /// Collect slot `i` if its map completed. Returns whether the slot is free.
    fn collect_slot(&mut self, i: usize, out: &mut Vec<(usize, f32, f32)>) -> Result<bool> {
        let slot = &mut self.slots[i];
        let Some(step) = slot.step else { return Ok(true) };
        let Some(r) = slot.state.lock().unwrap().take() else { return Ok(false) };
        r.map_err(|e| anyhow!("loss read-back: {e}"))?;
        let v = {
            let view = slot.buffer.get_mapped_range(..).map_err(|e| anyhow!("loss read-back: {e:?}"))?;
            let v = bytemuck::cast_slice::<u8, f32>(&view);
            (v[0], if slot.has_extra { v[1] } else { f32::NAN })
        };
        slot.buffer.unmap();
        slot.step = None;
        slot.submission = None;
        out.push((step, v.0, v.1));
        Ok(true)
    }

    /// Losses that are ready now (non-blocking), in step order.
    pub fn ready(&mut self, ctx: &GpuContext) -> Result<Vec<(usize, f32, f32)>> {
        let _ = ctx.device.poll(wgpu::PollType::Poll);
        let mut out = vec![];
        for i in 0..self.slots.len() {
            self.collect_slot(i, &mut out)?;
        }
        out.sort_by_key(|x| x.0);
        Ok(out)
    }

    /// Wait for every pending loss.
    pub fn drain(&mut self, ctx: &GpuContext) -> Result<Vec<(usize, f32, f32)>> {
        ctx.wait()?;
        self.ready(ctx)
    }
}
