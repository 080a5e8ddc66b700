pub mod fill;
pub mod reduce;
pub mod activation;
pub mod elementwise;
pub mod batchnorm;
pub mod layernorm;
pub mod densify;
