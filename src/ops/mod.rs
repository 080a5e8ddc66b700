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

/// A launcher's argument check: `t` holds at least `n` elements, else an error naming the
/// op and the tensor.
pub(crate) fn check(op: &str, what: &str, t: &crate::gpu::GpuTensor, n: usize) -> anyhow::Result<()> {
    anyhow::ensure!(t.len >= n, "{op}: {what} holds {} elements, {n} needed", t.len);
    Ok(())
}
