//! spark-wgpu: SparK (sparse masked modeling) pre-training of convolutional networks
//! with WGSL compute shaders on any GPU that wgpu reaches.
//!
//! Layout (see README.md): `gpu` (device, buffers, kernels, dispatch replay),
//! `sparse` (active sets and neighbour maps), `ops` (one file per kernel family:
//! launcher + CPU reference + tests).

pub mod gpu;
pub mod ops;
pub mod optim;
pub mod sparse;
pub mod testing;
