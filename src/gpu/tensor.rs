//! Tensors on the GPU: a view (offset, length) into a storage buffer.
//!
//! Every element is 4 bytes (f32, i32 or u32): the kernels bind views as
//! `array<f32>`/`array<i32>`/`array<u32>`. Views into one flat buffer (parameters,
//! gradients, optimizer state) start at multiples of the adapter's
//! `min_storage_buffer_offset_alignment`.

use anyhow::{Result, anyhow};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use wgpu::util::DeviceExt;

use super::GpuContext;

/// A range of 4-byte elements in a GPU buffer.
#[derive(Clone, Debug)]
pub struct GpuTensor {
    /// The buffer the tensor lives in (shared by the tensors the memory plan overlaps).
    pub buffer: Arc<wgpu::Buffer>,
    /// Byte offset of element 0.
    pub offset: u64,
    /// Number of 4-byte elements.
    pub len: usize,
}

const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl GpuTensor {
    /// Bytes covered by this view.
    pub fn bytes(&self) -> u64 {
        self.len as u64 * 4
    }

    /// A sub-view of `len` elements starting at element `start`. The caller keeps the
    /// byte offset aligned to `min_storage_buffer_offset_alignment` when it is bound.
    pub fn slice(&self, start: usize, len: usize) -> GpuTensor {
        assert!(start + len <= self.len, "slice {start}+{len} out of a tensor of {}", self.len);
        GpuTensor { buffer: self.buffer.clone(), offset: self.offset + start as u64 * 4, len }
    }

    /// The binding resource for this view (at least 4 bytes, so empty views still bind).
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.bytes().max(4)),
        })
    }
}

impl GpuContext {
    /// A dry run's stand-in for a tensor of `len` elements (16 bytes, never bound).
    fn placeholder(&self, len: usize) -> GpuTensor {
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dry-run placeholder"),
            size: 16,
            usage: USAGE,
            mapped_at_creation: false,
        });
        GpuTensor { buffer: Arc::new(buffer), offset: 0, len }
    }

    fn count(&self, bytes: u64) {
        self.allocated_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A zero-filled tensor of `len` elements.
    pub fn zeros(&self, len: usize) -> GpuTensor {
        // At least 16 bytes: bindings must be non-empty.
        let size = (len as u64 * 4).max(16).next_multiple_of(4);
        if self.is_dry_run() {
            let t = self.placeholder(len);
            let key = Arc::as_ptr(&t.buffer) as usize;
            self.with_dry(|d| {
                d.buffer(size);
                d.allocs.push(super::plan::AllocRecord { bytes: size, key, pinned: d.pin_depth > 0 });
                d.placeholders.push(t.buffer.clone());
            });
            return t;
        }
        let make = |size| {
            self.count(size);
            self.device.create_buffer(&wgpu::BufferDescriptor { label: None, size, usage: USAGE, mapped_at_creation: false })
        };
        let buffer = match self.planned_buffer(size, make) {
            Some(shared) => shared,
            None => Arc::new(make(size)),
        };
        GpuTensor { buffer, offset: 0, len }
    }

    /// A dry run's stand-in for `upload` of `len` elements, for data it need not compute
    /// (sized like an upload, and like one never shared by the memory plan).
    pub(crate) fn dry_upload(&self, len: usize) -> GpuTensor {
        debug_assert!(self.is_dry_run());
        self.with_dry(|d| d.buffer((len as u64 * 4).max(16)));
        self.placeholder(len)
    }

    /// Upload any 4-byte plain data (f32, i32, u32).
    pub fn upload<T: bytemuck::Pod>(&self, data: &[T]) -> GpuTensor {
        assert_eq!(size_of::<T>(), 4, "GpuTensor elements are 4 bytes");
        if self.with_dry(|d| d.buffer((data.len() as u64 * 4).max(16))).is_some() {
            return self.placeholder(data.len());
        }
        let mut bytes = bytemuck::cast_slice::<T, u8>(data).to_vec();
        bytes.resize(bytes.len().max(16), 0);
        let buffer = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: &bytes,
            usage: USAGE,
        });
        self.count(bytes.len() as u64);
        GpuTensor { buffer: Arc::new(buffer), offset: 0, len: data.len() }
    }

    /// Overwrite a tensor's contents (queued; takes effect before the next submit).
    pub fn write<T: bytemuck::Pod>(&self, t: &GpuTensor, data: &[T]) {
        assert_eq!(data.len(), t.len, "write of {} elements into a tensor of {}", data.len(), t.len);
        if !data.is_empty() && !self.is_dry_run() {
            self.queue.write_buffer(&t.buffer, t.offset, bytemuck::cast_slice(data));
        }
    }

    /// Copy a tensor back to the host (blocking: for tests, checkpoints and parity, never
    /// inside a training step).
    pub fn read<T: bytemuck::Pod>(&self, t: &GpuTensor) -> Result<Vec<T>> {
        assert_eq!(size_of::<T>(), 4);
        if t.len == 0 {
            return Ok(vec![]);
        }
        if self.is_dry_run() {
            return Ok(vec![T::zeroed(); t.len]);
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: t.bytes(),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&t.buffer, t.offset, &staging, 0, t.bytes());
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| anyhow!("readback callback dropped"))?
            .map_err(|e| anyhow!("mapping a readback buffer: {e}"))?;
        let view = staging.get_mapped_range(..).map_err(|e| anyhow!("readback view: {e:?}"))?;
        let out = bytemuck::cast_slice::<u8, T>(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Read f32 data.
    pub fn read_f32(&self, t: &GpuTensor) -> Result<Vec<f32>> {
        self.read::<f32>(t)
    }
}
