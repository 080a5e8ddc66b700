//! spark-wgpu: SparK (sparse masked modeling) pre-training of convolutional networks
//! with WGSL compute shaders on any GPU that wgpu reaches.
//!
//! Layout (see README.md): `gpu` (device, buffers, kernels, dispatch replay),
//! `sparse` (active sets and neighbour maps), `ops` (one file per kernel family:
//! launcher + CPU reference + tests), `graph` (the static graph with its tape),
//! `model` (encoders, densify, decoder), `optim` (LAMB, schedules), `data`, `io`
//! (safetensors, golden cases, .pth import), `train` (the pre-training loop),
//! `parity`, `cli`.

#![warn(missing_docs)]

pub mod cli;
pub mod data;
pub mod dist;
pub mod gpu;
pub mod graph;
pub mod io;
pub mod model;
pub mod ops;
pub mod optim;
pub mod parity;
pub mod ranges;
pub mod rng;
pub mod sparse;
#[cfg(test)]
pub(crate) mod testing;
pub mod train;
