//! One module per kernel family, paired by name with `shaders/<name>*.wgsl`: the
//! launcher(s), a plain CPU reference, and tests comparing them.

pub mod activation;
pub mod batchnorm;
pub mod conv;
pub mod densify;
pub mod depthwise;
pub mod drop_path;
pub mod elementwise;
pub mod fill;
pub mod layernorm;
pub mod loss;
pub mod maxpool;
pub mod reduce;
