//! `drop_path.wgsl`: stochastic depth (timm `drop_path`, used by timm ResNet blocks and the
//! official ConvNeXt blocks SparK pre-trains), plus the host side: the per-image scales of a
//! step. The rates (per model and per block) are model policy: `model::presets`,
//! `model::resnet`, `model::convnext`.
//!
//! timm's `drop_path(x, p)` draws one Bernoulli(1−p) per SAMPLE and multiplies the whole
//! residual branch of that sample by `mask / (1−p)`. Our rows are `[rows, C]` in canonical
//! (b, y, x) order with the same number of rows per image (SparK keeps the same number of
//! patches in every image), so the image of row `r` is `r / rows_per_image` and the op is a
//! row-broadcast multiply by a `[batch]` scale tensor that the host rewrites every step.

use anyhow::{Result, ensure};

use crate::rng::{stream, unit};
use crate::gpu::{Dispatch, GpuContext, GpuTensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    rows_per_image: u32,
    accumulate: u32,
}

/// Purpose tag of the drop-path streams ("drop"), so they never coincide with the data
/// pipeline's streams (`rng` tags) for the same seed.
const TAG_DROP: u64 = 0x6472_6f70;

#[allow(clippy::too_many_arguments)]
fn launch(
    ctx: &GpuContext,
    op: &str,
    a: &GpuTensor,
    scale: &GpuTensor,
    out: &GpuTensor,
    rows: usize,
    c: usize,
    rows_per_image: usize,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    let n = rows * c;
    ensure!(rows_per_image > 0, "{op}: rows_per_image is 0");
    ensure!(rows.is_multiple_of(rows_per_image), "{op}: {rows} rows are not a whole number of images of {rows_per_image} rows");
    let batch = rows / rows_per_image;
    ensure!(a.len >= n, "{op}: input holds {} elements, {n} needed", a.len);
    ensure!(out.len >= n, "{op}: output holds {} elements, {n} needed", out.len);
    ensure!(scale.len >= batch, "{op}: scale holds {} elements, {batch} images", scale.len);
    ensure!(u32::try_from(n).is_ok(), "{op}: {n} elements exceed the u32 index of the kernel");
    if n == 0 {
        // Nothing to scale; a zero-sized binding would not even be valid.
        return Ok(vec![]);
    }
    let k = ctx.kernel("drop_path")?;
    let p = Params { n: n as u32, c: c as u32, rows_per_image: rows_per_image as u32, accumulate: accumulate as u32 };
    let mut d = ctx.dispatch(&k, &p, &[a, scale, out], n as u64);
    d.flops = n as u64;
    Ok(vec![d])
}

/// `y[r, c] = x[r, c] · scale[r / rows_per_image]` over `[rows, c]`; `scale` is `[batch]`
/// (from [`drop_path_scales`], written by the host each step: it is read by the kernel, so
/// the recorded dispatch stays valid from step to step). `x` and `y` must be different buffers.
pub fn drop_path_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    scale: &GpuTensor,
    y: &GpuTensor,
    rows: usize,
    c: usize,
    rows_per_image: usize,
) -> Result<Vec<Dispatch>> {
    launch(ctx, "drop_path_forward", x, scale, y, rows, c, rows_per_image, false)
}

/// Backward of [`drop_path_forward`]: `dx[r, c] (+)= dy[r, c] · scale[r / rows_per_image]`
/// (overwrite, or add into `dx` when `accumulate`). `dy` and `dx` must be different buffers.
#[allow(clippy::too_many_arguments)]
pub fn drop_path_backward(
    ctx: &GpuContext,
    dy: &GpuTensor,
    scale: &GpuTensor,
    dx: &GpuTensor,
    rows: usize,
    c: usize,
    rows_per_image: usize,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    launch(ctx, "drop_path_backward", dy, scale, dx, rows, c, rows_per_image, accumulate)
}

/// The per-image scales of one step for a block with drop probability `p`: each image is
/// kept with probability `1 − p` (scale `1/(1−p)`) or dropped (scale 0), as timm's
/// `drop_path` (`x.new_empty((B,1,1,1)).bernoulli_(keep_prob).div_(keep_prob)`).
///
/// The draws come from a ChaCha8 stream keyed by (seed, step, layer) (`rng::stream`),
/// so a run and a resumed run drop the same images, independently of anything else drawn.
/// One uniform `u` per image, kept iff `u < 1 − p`: the same (seed, step, layer) with a
/// larger `p` drops a superset of images.
///
/// The kept value is `1f32 / (1 − p) as f32`, the value torch computes (`div_` of an f32
/// tensor by a Python scalar runs in f32), so `x · scale` matches torch bit for bit.
/// `p = 0` gives all ones (timm returns `x` unchanged); `p = 1` gives all zeros (timm skips
/// the division when keep_prob is 0). Panics unless `0 ≤ p ≤ 1`.
pub fn drop_path_scales(seed: u64, step: u64, layer: u64, batch: usize, p: f64) -> Vec<f32> {
    assert!((0.0..=1.0).contains(&p), "drop_path_scales: drop probability {p} outside [0, 1]");
    if p == 0.0 {
        return vec![1.0; batch];
    }
    let keep = 1.0 - p;
    let kept = if keep > 0.0 { 1.0f32 / keep as f32 } else { 0.0 };
    let mut rng = stream(seed, TAG_DROP, step, layer);
    (0..batch).map(|_| if unit(&mut rng) < keep { kept } else { 0.0 }).collect()
}

/// CPU reference of [`drop_path_forward`] (and of the backward, which is the same map
/// applied to `dy`): `y[r, c] = x[r, c] · scale[r / rows_per_image]` in f32, the same single
/// rounding as the kernel.
pub fn drop_path_ref(x: &[f32], scale: &[f32], rows_per_image: usize, c: usize) -> Vec<f32> {
    let per_image = rows_per_image * c;
    x.iter().enumerate().map(|(i, v)| v * scale[i / per_image]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_grad_matches, numeric_grad, random_vec};

    const BATCH: usize = 3;
    // Not a multiple of 64 (the workgroup size) nor of any tile: image boundaries fall
    // inside workgroups.
    const ROWS_PER_IMAGE: usize = 37;
    // One dropped image, a kept one with a non-trivial scale, and a plain one.
    const SCALES: [f32; BATCH] = [1.25, 0.0, 2.0];

    #[test]
    fn drop_path_gpu_forward_matches_cpu() {
        let ctx = GpuContext::new_default().unwrap();
        for c in [3, 17, 33] {
            let rows = BATCH * ROWS_PER_IMAGE;
            let x = random_vec(10 + c as u64, rows * c);
            let (xt, st, yt) = (ctx.upload(&x), ctx.upload(&SCALES), ctx.upload(&random_vec(1, rows * c)));
            ctx.run(&drop_path_forward(&ctx, &xt, &st, &yt, rows, c, ROWS_PER_IMAGE).unwrap()).unwrap();
            let got = ctx.read_f32(&yt).unwrap();
            // One f32 multiply on both sides: identical bits.
            assert_eq!(got, drop_path_ref(&x, &SCALES, ROWS_PER_IMAGE, c), "c = {c}");
            assert!(got[ROWS_PER_IMAGE * c..2 * ROWS_PER_IMAGE * c].iter().all(|&v| v == 0.0), "dropped image");
        }
    }

    #[test]
    fn drop_path_gpu_backward_matches_cpu_overwrite_and_accumulate() {
        let ctx = GpuContext::new_default().unwrap();
        for c in [3, 17, 33] {
            let rows = BATCH * ROWS_PER_IMAGE;
            let dy = random_vec(20 + c as u64, rows * c);
            let dx0 = random_vec(30 + c as u64, rows * c);
            let want = drop_path_ref(&dy, &SCALES, ROWS_PER_IMAGE, c);
            for accumulate in [false, true] {
                let (dyt, st, dxt) = (ctx.upload(&dy), ctx.upload(&SCALES), ctx.upload(&dx0));
                ctx.run(&drop_path_backward(&ctx, &dyt, &st, &dxt, rows, c, ROWS_PER_IMAGE, accumulate).unwrap()).unwrap();
                let got = ctx.read_f32(&dxt).unwrap();
                let want: Vec<f32> =
                    if accumulate { want.iter().zip(&dx0).map(|(w, d)| w + d).collect() } else { want.clone() };
                assert_close(&got, &want, 1e-6, &format!("dx c={c} accumulate={accumulate}"));
            }
        }
    }

    #[test]
    fn drop_path_scales_are_read_each_replay_not_baked() {
        // The graph records the dispatch once and rewrites the scale tensor every step.
        let ctx = GpuContext::new_default().unwrap();
        let (c, rows) = (5, BATCH * ROWS_PER_IMAGE);
        let x = random_vec(3, rows * c);
        let (xt, st, yt) = (ctx.upload(&x), ctx.upload(&SCALES), ctx.zeros(rows * c));
        let d = drop_path_forward(&ctx, &xt, &st, &yt, rows, c, ROWS_PER_IMAGE).unwrap();
        ctx.run(&d).unwrap();
        assert_eq!(ctx.read_f32(&yt).unwrap(), drop_path_ref(&x, &SCALES, ROWS_PER_IMAGE, c));
        let next = drop_path_scales(7, 1, 2, BATCH, 0.5);
        ctx.write(&st, &next);
        ctx.run(&d).unwrap();
        assert_eq!(ctx.read_f32(&yt).unwrap(), drop_path_ref(&x, &next, ROWS_PER_IMAGE, c));
    }

    #[test]
    fn drop_path_rejects_bad_shapes() {
        let ctx = GpuContext::new_default().unwrap();
        let (x, s, y) = (ctx.zeros(100), ctx.zeros(2), ctx.zeros(100));
        assert!(drop_path_forward(&ctx, &x, &s, &y, 10, 10, 3).is_err(), "rows not a multiple of rows_per_image");
        assert!(drop_path_forward(&ctx, &x, &s, &y, 10, 10, 0).is_err(), "rows_per_image 0");
        assert!(drop_path_forward(&ctx, &x, &s, &y, 10, 10, 2).is_err(), "5 images, 2 scales");
        assert!(drop_path_forward(&ctx, &x, &s, &y, 11, 10, 11).is_err(), "x too short");
        assert!(drop_path_forward(&ctx, &x, &s, &y, 0, 10, 1).unwrap().is_empty());
    }

    #[test]
    fn drop_path_cpu_backward_matches_numeric_grad() {
        // L(x) = Σ w · drop_path(x); dL/dx is the backward map applied to w. The op is
        // linear, so central differences are exact up to f32 rounding.
        let c = 3;
        let rows_per_image = 5;
        let x: Vec<f64> = random_vec(4, BATCH * rows_per_image * c).iter().map(|&v| v as f64).collect();
        let w = random_vec(5, x.len());
        let loss = |x: &[f64]| {
            let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let y = drop_path_ref(&xf, &SCALES, rows_per_image, c);
            y.iter().zip(&w).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
        };
        let analytic: Vec<f64> = drop_path_ref(&w, &SCALES, rows_per_image, c).iter().map(|&v| v as f64).collect();
        assert_grad_matches(&analytic, &numeric_grad(loss, &x, 0.05), 1e-4, "drop_path dx");
    }

    #[test]
    fn drop_path_scales_statistics() {
        let batch = 64;
        // p = 0.5: about half of 200 × 64 images dropped; kept ones scaled by exactly 2.
        let mut dropped = 0;
        for step in 0..200 {
            for s in drop_path_scales(42, step, 3, batch, 0.5) {
                assert!(s == 0.0 || s == 2.0, "scale {s}");
                dropped += (s == 0.0) as usize;
            }
        }
        let frac = dropped as f64 / (200 * batch) as f64;
        assert!((frac - 0.5).abs() < 0.02, "dropped fraction {frac}"); // σ ≈ 0.0044
        // p = 0.1: about 10% dropped, kept scale = torch's 1f32 / 0.9f32.
        let s: Vec<f32> = (0..100).flat_map(|step| drop_path_scales(1, step, 0, batch, 0.1)).collect();
        let frac = s.iter().filter(|&&v| v == 0.0).count() as f64 / s.len() as f64;
        assert!((frac - 0.1).abs() < 0.02, "dropped fraction {frac}");
        assert!(s.iter().all(|&v| v == 0.0 || v == 1.0f32 / 0.9f32));
        assert_eq!(drop_path_scales(42, 0, 0, batch, 0.0), vec![1.0; batch]);
        assert_eq!(drop_path_scales(42, 0, 0, batch, 1.0), vec![0.0; batch]);
        assert!(drop_path_scales(42, 0, 0, 0, 0.3).is_empty());
    }

    #[test]
    fn drop_path_scales_are_deterministic_and_keyed() {
        let a = drop_path_scales(9, 100, 4, 64, 0.5);
        assert_eq!(a, drop_path_scales(9, 100, 4, 64, 0.5));
        assert_ne!(a, drop_path_scales(9, 101, 4, 64, 0.5), "step");
        assert_ne!(a, drop_path_scales(9, 100, 5, 64, 0.5), "layer");
        assert_ne!(a, drop_path_scales(10, 100, 4, 64, 0.5), "seed");
        // One draw per image in order: a smaller batch is a prefix; a larger p drops a superset.
        assert_eq!(a[..10], drop_path_scales(9, 100, 4, 10, 0.5)[..]);
        let b = drop_path_scales(9, 100, 4, 64, 0.8);
        assert!(a.iter().zip(&b).all(|(x, y)| *x != 0.0 || *y == 0.0));
    }
}
