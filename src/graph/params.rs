//! Parameters and buffers under their official state-dict names.
//!
//! Trainable parameters live in ONE flat GPU buffer (and their gradients in a second
//! with the same offsets) so that LAMB runs a few dispatches over all of them; each
//! parameter starts at a multiple of 64 elements (256 bytes), the strictest
//! `min_storage_buffer_offset_alignment` wgpu allows, so any parameter binds as a view.
//! BatchNorm running statistics are separate tensors; `num_batches_tracked` is a host
//! counter (it never enters a kernel).

use anyhow::{Result, bail};

use super::Init;
use crate::gpu::{GpuContext, GpuTensor};

/// Parameters are aligned to this many elements in the flat buffers.
pub const PARAM_ALIGN: usize = 64;

/// What updates a declared tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Updated by the optimizer.
    Trainable,
    /// BatchNorm running mean/var: updated by forward passes.
    Buffer,
    /// BatchNorm `num_batches_tracked` (int64 in PyTorch).
    Counter,
}

/// One declared tensor: its state-dict name, shape, role and initialisation.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    /// The official state-dict name.
    pub name: String,
    /// The PyTorch shape.
    pub shape: Vec<usize>,
    /// Trainable, buffer or counter.
    pub kind: Kind,
    /// How a fresh model initialises it (see [`super::init_params`]).
    pub init: Init,
}

impl ParamSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A handle to a declared parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

/// The declaration phase: modules register what they own, in state-dict order.
#[derive(Default, Debug)]
pub struct ParamRegistry {
    /// Every declared tensor, in state-dict order.
    pub specs: Vec<ParamSpec>,
}

impl ParamRegistry {
    /// Declare a tensor (panics on a name declared twice: a bug of the model's code).
    pub fn declare(&mut self, name: impl Into<String>, shape: &[usize], kind: Kind, init: Init) -> ParamId {
        let name = name.into();
        assert!(!self.specs.iter().any(|s| s.name == name), "parameter {name} declared twice");
        self.specs.push(ParamSpec { name, shape: shape.to_vec(), kind, init });
        ParamId(self.specs.len() - 1)
    }

    /// Declare a trainable parameter.
    pub fn trainable(&mut self, name: impl Into<String>, shape: &[usize], init: Init) -> ParamId {
        self.declare(name, shape, Kind::Trainable, init)
    }

    /// The tensor declared as `name`.
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.specs.iter().position(|s| s.name == name).map(ParamId)
    }
}

/// Where each declared tensor lives on the GPU.
pub struct ParamStore {
    /// Every declared tensor, in state-dict order.
    pub specs: Vec<ParamSpec>,
    /// Offset in `flat`/`grads` for trainables.
    offsets: Vec<usize>,
    buffers: Vec<Option<GpuTensor>>,
    /// Value of each `Counter` (indexed like `specs`; 0 for the others).
    pub counters: Vec<i64>,
    /// Every trainable, concatenated (aligned to `PARAM_ALIGN`): what LAMB updates.
    pub flat: GpuTensor,
    /// Their gradients, in the same layout.
    pub grads: GpuTensor,
}

impl ParamStore {
    /// Allocate zeroed GPU storage for every declared tensor.
    pub fn allocate(ctx: &GpuContext, reg: ParamRegistry) -> Self {
        let mut offsets = vec![usize::MAX; reg.specs.len()];
        let mut total = 0;
        for (i, s) in reg.specs.iter().enumerate() {
            if s.kind == Kind::Trainable {
                offsets[i] = total;
                total += s.numel().next_multiple_of(PARAM_ALIGN);
            }
        }
        let buffers = reg
            .specs
            .iter()
            .map(|s| (s.kind == Kind::Buffer).then(|| ctx.zeros(s.numel())))
            .collect();
        Self {
            counters: vec![0; reg.specs.len()],
            specs: reg.specs,
            offsets,
            buffers,
            flat: ctx.zeros(total),
            grads: ctx.zeros(total),
        }
    }

    /// The declaration of `p`.
    pub fn spec(&self, p: ParamId) -> &ParamSpec {
        &self.specs[p.0]
    }

    /// The tensor declared as `name`.
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.specs.iter().position(|s| s.name == name).map(ParamId)
    }

    /// The GPU tensor of a trainable parameter or buffer.
    pub fn tensor(&self, p: ParamId) -> GpuTensor {
        match self.specs[p.0].kind {
            Kind::Trainable => self.flat.slice(self.offsets[p.0], self.specs[p.0].numel()),
            Kind::Buffer => self.buffers[p.0].clone().unwrap(),
            Kind::Counter => panic!("{} is a host counter", self.specs[p.0].name),
        }
    }

    /// The gradient view of a trainable parameter.
    pub fn grad(&self, p: ParamId) -> GpuTensor {
        assert_eq!(self.specs[p.0].kind, Kind::Trainable, "{} has no gradient", self.specs[p.0].name);
        self.grads.slice(self.offsets[p.0], self.specs[p.0].numel())
    }

    /// Offset of a trainable in the flat buffers.
    pub fn offset(&self, p: ParamId) -> usize {
        self.offsets[p.0]
    }

    /// Every declared tensor, in order.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> + '_ {
        (0..self.specs.len()).map(ParamId)
    }

    /// Upload one tensor by name; the shape must match exactly.
    pub fn set(&mut self, ctx: &GpuContext, name: &str, shape: &[usize], data: &[f32]) -> Result<()> {
        let Some(p) = self.find(name) else { bail!("the model has no parameter named {name}") };
        let spec = &self.specs[p.0];
        // PyTorch stores scalars (num_batches_tracked) with shape []; treat [] and [1] alike.
        if spec.shape != shape && !(spec.numel() == 1 && shape.iter().product::<usize>() == 1) {
            bail!("parameter {name}: the model expects shape {:?}, the file has {:?}", spec.shape, shape);
        }
        match spec.kind {
            Kind::Counter => self.counters[p.0] = data[0] as i64,
            _ => ctx.write(&self.tensor(p), data),
        }
        Ok(())
    }

    /// Read one tensor back (blocking).
    pub fn get(&self, ctx: &GpuContext, p: ParamId) -> Result<Vec<f32>> {
        match self.specs[p.0].kind {
            Kind::Counter => Ok(vec![self.counters[p.0] as f32]),
            _ => ctx.read_f32(&self.tensor(p)),
        }
    }

    /// Total bytes of parameters, gradients and buffers.
    pub fn bytes(&self) -> u64 {
        self.flat.bytes() + self.grads.bytes() + self.buffers.iter().flatten().map(|b| b.bytes()).sum::<u64>()
    }
}
