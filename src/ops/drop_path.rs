//! `drop_path.wgsl`: stochastic depth (timm `drop_path`, used by timm ResNet blocks and the
//! official ConvNeXt blocks SparK pre-trains), plus the host side: the per-image scales of a
//! step and the official per-model / per-block drop-path rates.
//!
//! timm's `drop_path(x, p)` draws one Bernoulli(1−p) per SAMPLE and multiplies the whole
//! residual branch of that sample by `mask / (1−p)`. Our rows are `[rows, C]` in canonical
//! (b, y, x) order with the same number of rows per image (SparK keeps the same number of
//! patches in every image), so the image of row `r` is `r / rows_per_image` and the op is a
//! row-broadcast multiply by a `[batch]` scale tensor that the host rewrites every step.

use anyhow::{Result, ensure};

use crate::data::rng::{stream, unit};
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
/// pipeline's streams (`data::rng` tags) for the same seed.
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
/// The draws come from a ChaCha8 stream keyed by (seed, step, layer) (`data::rng::stream`),
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

/// The drop-path rate SparK pre-trains `model` with by default (keyu-tian/SparK
/// `pretrain/models/__init__.py`, `pretrain_default_model_kwargs`; `--dp` defaults to 0
/// in `pretrain/utils/arg_util.py`, and a non-zero `--dp` overrides this):
///
/// ```text
/// 'resnet50': dict(drop_path_rate=0.05),      'convnext_small': dict(sparse=True, drop_path_rate=0.2),
/// 'resnet101': dict(drop_path_rate=0.08),     'convnext_base': dict(sparse=True, drop_path_rate=0.3),
/// 'resnet152': dict(drop_path_rate=0.10),     'convnext_large': dict(sparse=True, drop_path_rate=0.4),
/// 'resnet200': dict(drop_path_rate=0.15),
/// ```
///
/// resnet18, resnet34 and convnext_tiny are not in that table (the official pre-training
/// code has no preset for them), so they, and any other name, get 0 (the timm / ConvNeXt
/// constructor default).
pub fn official_drop_path_rate(model: &str) -> f64 {
    match model {
        "resnet50" => 0.05,
        "resnet101" => 0.08,
        "resnet152" => 0.10,
        "resnet200" => 0.15,
        "convnext_small" => 0.2,
        "convnext_base" => 0.3,
        "convnext_large" => 0.4,
        // resnet18, resnet34, convnext_tiny and anything else: no official preset.
        _ => 0.0,
    }
}

/// The drop probability of every residual block, in network order (stage by stage),
/// given the network rate `rate` and the number of blocks per stage.
///
/// * timm ResNet (`timm/models/resnet.py`, `make_blocks`), with `net_block_idx` counting
///   blocks over the whole network and `net_num_blocks = sum(block_repeats)`:
///   `block_dpr = drop_path_rate * net_block_idx / (net_num_blocks - 1)  # stochastic depth
///   linear decay rule`, evaluated left to right in f64 as Python does. The first block gets
///   0 and so no DropPath at all (`DropPath(block_dpr) if block_dpr > 0. else None`). A
///   one-block net (a division by zero in timm) gets 0.
/// * official ConvNeXt (SparK `pretrain/models/convnext.py`):
///   `dp_rates = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]`.
///   torch.linspace runs in f32 (the default dtype): `step = (end - start) / (steps - 1)`,
///   `start + step * i` for the first half of the indices (`i < steps / 2`) and
///   `end - step * (steps - i - 1)` for the rest; `.item()` returns that f32 exactly, which is
///   reproduced here.
pub fn block_rates(rate: f64, blocks_per_stage: &[usize], arch_is_convnext: bool) -> Vec<f64> {
    let n: usize = blocks_per_stage.iter().sum();
    if n <= 1 {
        return vec![0.0; n];
    }
    if arch_is_convnext {
        let (start, end) = (0.0f32, rate as f32);
        let step = (end - start) / (n - 1) as f32;
        let halfway = n / 2;
        (0..n)
            .map(|i| if i < halfway { start + step * i as f32 } else { end - step * (n - i - 1) as f32 } as f64)
            .collect()
    } else {
        (0..n).map(|i| rate * i as f64 / (n - 1) as f64).collect()
    }
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

    #[test]
    fn drop_path_official_rates_and_block_spread() {
        assert_eq!(official_drop_path_rate("resnet50"), 0.05);
        assert_eq!(official_drop_path_rate("resnet200"), 0.15);
        assert_eq!(official_drop_path_rate("convnext_large"), 0.4);
        for m in ["resnet18", "resnet34", "convnext_tiny", "unknown"] {
            assert_eq!(official_drop_path_rate(m), 0.0, "{m}");
        }
        // timm ResNet-50: 16 blocks, rate * idx / 15.
        let r = block_rates(0.05, &[3, 4, 6, 3], false);
        assert_eq!(r.len(), 16);
        assert_eq!((r[0], r[15]), (0.0, 0.05));
        assert_eq!(r[8], 0.05 * 8.0 / 15.0);
        // ConvNeXt-S: 36 blocks, torch.linspace(0, 0.2, 36) in f32.
        let r = block_rates(0.2, &[3, 3, 27, 3], true);
        assert_eq!(r.len(), 36);
        assert_eq!((r[0], r[35]), (0.0, 0.2f32 as f64));
        assert_eq!(r[1], (0.2f32 / 35.0) as f64);
        assert_eq!(r[34], (0.2f32 - 0.2f32 / 35.0) as f64, "second half counts back from the end");
        assert!(r.windows(2).all(|w| w[0] < w[1]));
        for (i, v) in r.iter().enumerate() {
            assert!((v - 0.2 * i as f64 / 35.0).abs() < 1e-7, "block {i}: {v}");
        }
        assert_eq!(block_rates(0.0, &[2, 2, 2, 2], false), vec![0.0; 8]);
        assert_eq!(block_rates(0.3, &[1], true), vec![0.0]);
    }
}
