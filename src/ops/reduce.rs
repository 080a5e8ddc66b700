//! `reduce_partials.wgsl`: the fixed-order combine of split-K partial sums.
//!
//! Split-K reductions write `partials[s, n]` (one slice per split, each summed in a
//! fixed order by one thread) and this kernel adds the slices in ascending `s`. No
//! float atomics (WGSL has none portably), so results are bitwise reproducible.

use anyhow::Result;

use crate::gpu::{Dispatch, GpuContext, GpuTensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    splits: u32,
    accumulate: u32,
    scale: f32,
}

/// How many row splits a split-K reduction over `rows` should use: enough threads to
/// fill the device, each still summing a few hundred rows.
pub fn split_count(rows: usize, outputs: usize) -> usize {
    let want_threads: usize = 16 * 1024;
    let by_threads = want_threads.div_ceil(outputs.max(1));
    by_threads.clamp(1, rows.div_ceil(64).max(1))
}

/// Record `out[j] = scale * Σ_s partials[s * n + j]` (plus the old `out[j]` when
/// `accumulate`), where `n = out.len`.
pub fn reduce_partials(
    ctx: &GpuContext,
    partials: &GpuTensor,
    out: &GpuTensor,
    splits: usize,
    scale: f32,
    accumulate: bool,
) -> Result<Dispatch> {
    assert_eq!(partials.len, splits * out.len, "partials must be [splits, n]");
    let k = ctx.kernel("reduce_partials")?;
    let p = Params { n: out.len as u32, splits: splits as u32, accumulate: accumulate as u32, scale };
    Ok(ctx.dispatch(&k, &p, &[partials, out], out.len as u64))
}

/// CPU reference.
pub fn reduce_partials_ref(partials: &[f32], n: usize, scale: f32) -> Vec<f32> {
    let splits = partials.len() / n;
    (0..n).map(|j| (0..splits).map(|s| partials[s * n + j]).sum::<f32>() * scale).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, random_vec};

    #[test]
    fn matches_cpu_and_accumulates() {
        let ctx = GpuContext::new_default().unwrap();
        let (n, splits) = (67, 5);
        let parts = random_vec(1, n * splits);
        let init = random_vec(2, n);
        let (pt, out) = (ctx.upload(&parts), ctx.upload(&init));
        ctx.run(&[reduce_partials(&ctx, &pt, &out, splits, 0.5, true).unwrap()]).unwrap();
        let want: Vec<f32> = reduce_partials_ref(&parts, n, 0.5).iter().zip(&init).map(|(a, b)| a + b).collect();
        assert_close(&ctx.read_f32(&out).unwrap(), &want, 1e-6, "reduce_partials");
    }
}
