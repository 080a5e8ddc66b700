//! File formats: host tensors and safetensors files (`tensors`), the official parity cases
//! (`golden`), official PyTorch checkpoints read without Python (`pth`), and the mapping
//! between SparK and timm/official encoder names (`names`).

pub mod atomic;
pub mod golden;
pub mod names;
pub mod pth;
pub mod tensors;

pub use golden::{CaseMeta, GoldenCase};
pub use tensors::{HostData, HostTensor, TensorMap, read_safetensors, write_safetensors_atomic};
