//! Depthwise gather convolution (`depthwise.wgsl`, `depthwise_wgrad.wgsl`): ConvNeXt's
//! 7×7 depthwise conv with weight `[C, 1, kh, kw]` and bias `[C]`, over the same
//! neighbour maps as `ops::conv` (negative entries read zero). The data gradient is the
//! forward kernel over the inverse map; the weight gradient is split-K over rows +
//! `reduce_partials`, the bias gradient shares `conv_bias_grad.wgsl`.

use anyhow::{Result, ensure};

use crate::gpu::{Dispatch, GpuContext, GpuTensor};
use crate::ops::conv::{bias_grad, splits_for, u};
use crate::ops::reduce::reduce_partials;
use crate::sparse::NeighbourMap;

/// Rows owned by one thread of `depthwise.wgsl` (its `TR`; 4 channels per thread).
const TILE_ROWS: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    c: u32,
    taps: u32,
    ctiles: u32,
    has_bias: u32,
    accumulate: u32,
    /// 1: `map` is an inverse map (data gradient), for the fast path's tap order.
    dir: u32,
    _pad: u32,
}

/// Rows per strip of `depthwise_wgrad7.wgsl` (its `TR`): splits start on strip boundaries.
const WGRAD7_STRIP: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Wgrad7Params {
    rows: u32,
    c: u32,
    ctiles: u32,
    rows_per_split: u32,
    count: u32,
    taps: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct WgradParams {
    rows: u32,
    c: u32,
    taps: u32,
    ctiles: u32,
    rows_per_split: u32,
    total: u32,
    count: u32,
    _pad: u32,
}

#[allow(clippy::too_many_arguments)]
fn gather(
    ctx: &GpuContext,
    inp: &GpuTensor,
    map: &GpuTensor,
    w: &GpuTensor,
    bias: Option<&GpuTensor>,
    out: &GpuTensor,
    rows: usize,
    c: usize,
    taps: usize,
    accumulate: bool,
    inverse: bool,
) -> Result<Vec<Dispatch>> {
    ensure!(c > 0 && taps > 0, "depthwise conv with {c} channels, {taps} taps");
    ensure!(inp.len.is_multiple_of(c), "depthwise input of {} elements is not [rows, {c}]", inp.len);
    ensure!(map.len == rows * taps, "neighbour map has {} entries, expected [{rows}, {taps}]", map.len);
    ensure!(out.len == rows * c, "depthwise output has {} elements, expected [{rows}, {c}]", out.len);
    ensure!(w.len == c * taps, "depthwise weight has {} elements, expected [{c}, 1, {taps}]", w.len);
    if let Some(b) = bias {
        ensure!(b.len == c, "depthwise bias has {} elements, expected {c}", b.len);
    }
    if rows == 0 {
        return Ok(vec![]);
    }
    let ctiles = c.div_ceil(4);
    let total = rows.div_ceil(TILE_ROWS) * ctiles;
    let p = Params {
        rows: u(rows, "rows")?,
        c: u(c, "channels")?,
        taps: u(taps, "taps")?,
        ctiles: u(ctiles, "tiles")?,
        has_bias: bias.is_some() as u32,
        accumulate: accumulate as u32,
        dir: inverse as u32,
        _pad: 0,
    };
    // Without a bias the (read-only) weight fills the binding.
    let b = bias.unwrap_or(w);
    let k = ctx.kernel("depthwise")?;
    Ok(vec![ctx.dispatch(&k, &p, &[inp, map, w, b, out], total as u64)])
}

/// `y[r, c] = bias[c] + Σ_t x[map[r, t], c] · w[c * taps + t]` (overwrites `y [rows_out, c]`).
#[allow(clippy::too_many_arguments)]
pub fn dw_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    map: &GpuTensor,
    w: &GpuTensor,
    bias: Option<&GpuTensor>,
    y: &GpuTensor,
    rows_out: usize,
    c: usize,
    taps: usize,
) -> Result<Vec<Dispatch>> {
    gather(ctx, x, map, w, bias, y, rows_out, c, taps, false, false)
}

/// `dx[r, c] (+)= Σ_t dy[inv[r, t], c] · w[c * taps + t]` with `inv_map =
/// sparse::inverse_map(map, rows_in)`.
#[allow(clippy::too_many_arguments)]
pub fn dw_data_grad(
    ctx: &GpuContext,
    dy: &GpuTensor,
    inv_map: &GpuTensor,
    w: &GpuTensor,
    dx: &GpuTensor,
    rows_in: usize,
    c: usize,
    taps: usize,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    gather(ctx, dy, inv_map, w, None, dx, rows_in, c, taps, accumulate, true)
}

/// `dw[c * taps + t] = Σ_r x[map[r, t], c] · dy[r, c]`, `dbias[c] = Σ_r dy[r, c]`
/// (both overwritten): split-K partials + `reduce_partials`.
#[allow(clippy::too_many_arguments)]
pub fn dw_weight_grad(
    ctx: &GpuContext,
    x: &GpuTensor,
    map: &GpuTensor,
    dy: &GpuTensor,
    dw: &GpuTensor,
    dbias: Option<&GpuTensor>,
    rows_out: usize,
    c: usize,
    taps: usize,
) -> Result<Vec<Dispatch>> {
    let count = c * taps;
    ensure!(count > 0, "depthwise conv with {c} channels, {taps} taps");
    ensure!(dw.len == count, "depthwise weight gradient has {} elements, expected {count}", dw.len);
    ensure!(x.len.is_multiple_of(c), "depthwise input of {} elements is not [rows, {c}]", x.len);
    ensure!(map.len == rows_out * taps, "neighbour map has {} entries, expected [{rows_out}, {taps}]", map.len);
    ensure!(dy.len == rows_out * c, "output gradient has {} elements, expected [{rows_out}, {c}]", dy.len);
    let ctiles = c.div_ceil(4);
    // 7×7: one thread per 4 channels and split covers every tap, walking strips of
    // WGRAD7_STRIP rows (depthwise_wgrad7.wgsl); other sizes: one thread per tap too.
    let seven = taps == 49;
    let per_split = if seven { ctiles } else { ctiles * taps };
    let (mut splits, mut rps) = splits_for(ctx, rows_out, per_split, count);
    if seven {
        rps = rps.next_multiple_of(WGRAD7_STRIP);
        splits = rows_out.div_ceil(rps).max(1);
    }
    let partials = if splits == 1 { dw.clone() } else { ctx.zeros(splits * count) };
    let total = splits * per_split;
    u(splits * count, "partials size")?;
    let p = WgradParams {
        rows: u(rows_out, "rows")?,
        c: u(c, "channels")?,
        taps: u(taps, "taps")?,
        ctiles: u(ctiles, "tiles")?,
        rows_per_split: u(rps, "rows")?,
        total: u(total, "threads")?,
        count: u(count, "weight size")?,
        _pad: 0,
    };
    let k = ctx.kernel(if seven { "depthwise_wgrad7" } else { "depthwise_wgrad" })?;
    let d = if seven {
        let p7 = Wgrad7Params { rows: p.rows, c: p.c, ctiles: p.ctiles, rows_per_split: p.rows_per_split, count: p.count, taps: 49, _pad: [0; 2] };
        ctx.dispatch(&k, &p7, &[x, map, dy, &partials], total as u64)
    } else {
        ctx.dispatch(&k, &p, &[x, map, dy, &partials], total as u64)
    };
    let mut out = vec![d];
    if splits > 1 {
        out.push(reduce_partials(ctx, &partials, dw, splits, 1.0, false)?);
    }
    if let Some(db) = dbias {
        out.extend(bias_grad(ctx, dy, db, rows_out, c)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// CPU references (f64 inside).

fn forward64(x: &[f64], map: &NeighbourMap, w: &[f64], bias: Option<&[f64]>, c: usize) -> Vec<f64> {
    let taps = map.taps;
    let mut y = vec![0f64; map.rows_out * c];
    for r in 0..map.rows_out {
        for ch in 0..c {
            let mut acc = bias.map_or(0.0, |b| b[ch]);
            for t in 0..taps {
                let m = map.get(r, t);
                if m >= 0 {
                    acc += x[m as usize * c + ch] * w[ch * taps + t];
                }
            }
            y[r * c + ch] = acc;
        }
    }
    y
}

/// Scatter form over the forward map.
fn data_grad64(dy: &[f64], map: &NeighbourMap, w: &[f64], rows_in: usize, c: usize) -> Vec<f64> {
    let taps = map.taps;
    let mut dx = vec![0f64; rows_in * c];
    for r in 0..map.rows_out {
        for t in 0..taps {
            let m = map.get(r, t);
            if m >= 0 {
                for ch in 0..c {
                    dx[m as usize * c + ch] += dy[r * c + ch] * w[ch * taps + t];
                }
            }
        }
    }
    dx
}

fn weight_grad64(x: &[f64], map: &NeighbourMap, dy: &[f64], c: usize) -> (Vec<f64>, Vec<f64>) {
    let taps = map.taps;
    let (mut dw, mut db) = (vec![0f64; c * taps], vec![0f64; c]);
    for r in 0..map.rows_out {
        for ch in 0..c {
            db[ch] += dy[r * c + ch];
            for t in 0..taps {
                let m = map.get(r, t);
                if m >= 0 {
                    dw[ch * taps + t] += x[m as usize * c + ch] * dy[r * c + ch];
                }
            }
        }
    }
    (dw, db)
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

fn to32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&a| a as f32).collect()
}

/// CPU reference of `dw_forward`.
pub fn dw_forward_ref(x: &[f32], map: &NeighbourMap, w: &[f32], bias: Option<&[f32]>, c: usize) -> Vec<f32> {
    let b = bias.map(to64);
    to32(&forward64(&to64(x), map, &to64(w), b.as_deref(), c))
}

/// CPU reference of `dw_data_grad` from the FORWARD map (as a scatter): `dx [rows_in, c]`.
pub fn dw_data_grad_ref(dy: &[f32], map: &NeighbourMap, w: &[f32], rows_in: usize, c: usize) -> Vec<f32> {
    to32(&data_grad64(&to64(dy), map, &to64(w), rows_in, c))
}

/// CPU reference of `dw_weight_grad`: `(dw [c, taps], dbias [c])`.
pub fn dw_weight_grad_ref(x: &[f32], map: &NeighbourMap, dy: &[f32], c: usize) -> (Vec<f32>, Vec<f32>) {
    let (dw, db) = weight_grad64(&to64(x), map, &to64(dy), c);
    (to32(&dw), to32(&db))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::{ActiveSet, PatchMask, Window, conv_map, inverse_map};
    use crate::testing::{assert_close, assert_grad_matches, numeric_grad, random_patch_mask, random_vec};

    fn setup(mask: &PatchMask, h: usize, k: usize) -> (ActiveSet, NeighbourMap) {
        let s = ActiveSet::from_patch_mask(mask, h, h);
        let m = conv_map(&s, &s, Window::new(k, 1, k / 2));
        (s, m)
    }

    #[test]
    fn gpu_matches_cpu() {
        let ctx = GpuContext::new_default().unwrap();
        let masks = [
            ("all visible", PatchMask::all_visible(2, 2, 2)),
            ("half visible", random_patch_mask(3, 2, 2, 2, 0.5)),
            ("one visible", random_patch_mask(4, 3, 2, 2, 0.0)),
        ];
        let mut seed = 10;
        for (mname, mask) in &masks {
            for (i, &c) in [3usize, 5, 17, 33].iter().enumerate() {
                for (h, k) in [(8, 7), (6, 3), (24, 7)] {
                    if h == 24 && c > 5 {
                        continue; // the many-split case needs only a narrow shape
                    }
                    let (bias, acc) = (i.is_multiple_of(2), (i / 2) % 2 == 0);
                    let what = format!("depthwise {k}x{k} h {h} ({mname}, C {c}, bias {bias}, accumulate {acc})");
                    let (set, map) = setup(mask, h, k);
                    let (rows, taps) = (set.rows(), k * k);
                    let inv = inverse_map(&map, rows);
                    let (x, w, b, g) =
                        (random_vec(seed, rows * c), random_vec(seed + 1, c * taps), random_vec(seed + 2, c), random_vec(seed + 3, rows * c));
                    let dx0 = if acc { random_vec(seed + 4, rows * c) } else { vec![7.0; rows * c] };
                    seed += 10;
                    let (xt, mt, it, wt, bt, gt) =
                        (ctx.upload(&x), ctx.upload(&map.map), ctx.upload(&inv.map), ctx.upload(&w), ctx.upload(&b), ctx.upload(&g));
                    let (yt, dxt, dwt, dbt) =
                        (ctx.upload(&vec![7.0f32; rows * c]), ctx.upload(&dx0), ctx.upload(&vec![9.0f32; c * taps]), ctx.upload(&vec![9.0f32; c]));
                    let mut ds = dw_forward(&ctx, &xt, &mt, &wt, bias.then_some(&bt), &yt, rows, c, taps).unwrap();
                    ds.extend(dw_data_grad(&ctx, &gt, &it, &wt, &dxt, rows, c, taps, acc).unwrap());
                    ds.extend(dw_weight_grad(&ctx, &xt, &mt, &gt, &dwt, bias.then_some(&dbt), rows, c, taps).unwrap());
                    ctx.run(&ds).unwrap();
                    let want_y = dw_forward_ref(&x, &map, &w, bias.then_some(&b[..]), c);
                    let mut want_dx = dw_data_grad_ref(&g, &map, &w, rows, c);
                    if acc {
                        want_dx.iter_mut().zip(&dx0).for_each(|(a, b)| *a += b);
                    }
                    let (want_dw, want_db) = dw_weight_grad_ref(&x, &map, &g, c);
                    assert_close(&ctx.read_f32(&yt).unwrap(), &want_y, 1e-5, &format!("{what}: forward"));
                    assert_close(&ctx.read_f32(&dxt).unwrap(), &want_dx, 1e-5, &format!("{what}: data gradient"));
                    assert_close(&ctx.read_f32(&dwt).unwrap(), &want_dw, 1e-5, &format!("{what}: weight gradient"));
                    let db = ctx.read_f32(&dbt).unwrap();
                    if bias {
                        assert_close(&db, &want_db, 1e-5, &format!("{what}: bias gradient"));
                    } else {
                        assert_eq!(db, vec![9.0; c], "{what}: bias gradient written without a bias");
                    }
                }
            }
        }
    }

    #[test]
    fn cpu_backward_matches_finite_differences() {
        let mask = random_patch_mask(5, 2, 2, 2, 0.5);
        let (set, map) = setup(&mask, 4, 3);
        let (rows, c) = (set.rows(), 3);
        let x = to64(&random_vec(1, rows * c));
        let w = to64(&random_vec(2, c * 9));
        let b = to64(&random_vec(3, c));
        let g = to64(&random_vec(4, rows * c));
        let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
            forward64(x, &map, w, Some(b), c).iter().zip(&g).map(|(y, g)| y * g).sum()
        };
        let dx = data_grad64(&g, &map, &w, rows, c);
        let (dw, db) = weight_grad64(&x, &map, &g, c);
        assert_grad_matches(&dx, &numeric_grad(|v| loss(v, &w, &b), &x, 1e-4), 1e-6, "depthwise dx");
        assert_grad_matches(&dw, &numeric_grad(|v| loss(&x, v, &b), &w, 1e-4), 1e-6, "depthwise dw");
        assert_grad_matches(&db, &numeric_grad(|v| loss(&x, &w, v), &b, 1e-4), 1e-6, "depthwise db");
    }
}
