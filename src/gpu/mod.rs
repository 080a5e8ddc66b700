//! Adapter/device selection, tensors on the GPU, kernels and recorded dispatches.

mod context;
mod kernel;
mod plan;
mod profiler;
mod shaders;
mod sizing;
mod tensor;
pub mod tune;

pub use context::{AdapterChoice, KernelSet, GpuContext, list_adapters, AdapterReport};
pub use kernel::{Dispatch, Kernel, BindingKind};
pub use shaders::{shader_source, GENERATED_SHADERS, SHADERS};
pub use tensor::GpuTensor;
pub use tune::{TuneMode, TuneReport, Tuner};
pub use sizing::{DryRunReport, mib};
pub use plan::{MemoryPlan, MemoryStats};
