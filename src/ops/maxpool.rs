//! Max-pool over neighbour maps (`maxpool.wgsl`, `maxpool_backward.wgsl`): ResNet's 3×3/2
//! pad 1 max-pool on sparse rows. Semantics are PyTorch's `max_pool2d` on SparK's
//! zero-filled dense map: taps with a row offer their value, `INACTIVE` taps (in bounds
//! but masked) offer 0, `OUT_OF_BOUNDS` taps (padding) never take part, and ties keep the
//! first tap in scan order. The winning tap is stored per output element so that the
//! backward pass is a gather over the inverse map.

use anyhow::{Result, ensure};

use crate::gpu::{Dispatch, GpuContext, GpuTensor};
use crate::ops::conv::u;
use crate::sparse::{NeighbourMap, OUT_OF_BOUNDS};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    c: u32,
    taps: u32,
    accumulate: u32,
}

/// `y[r, c] = max over taps` and `argmax[r, c]` (i32) = the winning tap, -1 when every
/// tap is padding (then `y = 0`).
#[allow(clippy::too_many_arguments)]
pub fn maxpool_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    map: &GpuTensor,
    y: &GpuTensor,
    argmax: &GpuTensor,
    rows_out: usize,
    c: usize,
    taps: usize,
) -> Result<Vec<Dispatch>> {
    ensure!(c > 0 && x.len.is_multiple_of(c), "max-pool input of {} elements is not [rows, {c}]", x.len);
    ensure!(map.len == rows_out * taps, "neighbour map has {} entries, expected [{rows_out}, {taps}]", map.len);
    ensure!(y.len == rows_out * c && argmax.len == rows_out * c, "max-pool outputs must be [{rows_out}, {c}]");
    let n = u(rows_out * c, "elements")?;
    let p = Params { rows: u(rows_out, "rows")?, c: u(c, "channels")?, taps: u(taps, "taps")?, accumulate: 0 };
    let k = ctx.kernel("maxpool")?;
    Ok(vec![ctx.dispatch(&k, &p, &[x, map, y, argmax], n as u64)])
}

/// `dx[r, c] (+)= Σ_t [o = inv[r, t] ≥ 0 ∧ argmax[o, c] = t] dy[o, c]` with `inv_map =
/// sparse::inverse_map(map, rows_in)`.
#[allow(clippy::too_many_arguments)]
pub fn maxpool_backward(
    ctx: &GpuContext,
    dy: &GpuTensor,
    inv_map: &GpuTensor,
    argmax: &GpuTensor,
    dx: &GpuTensor,
    rows_in: usize,
    c: usize,
    taps: usize,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    ensure!(c > 0 && dy.len.is_multiple_of(c) && argmax.len == dy.len, "max-pool gradients must be [rows_out, {c}]");
    ensure!(inv_map.len == rows_in * taps, "inverse map has {} entries, expected [{rows_in}, {taps}]", inv_map.len);
    ensure!(dx.len == rows_in * c, "max-pool input gradient has {} elements, expected [{rows_in}, {c}]", dx.len);
    let n = u(rows_in * c, "elements")?;
    let p = Params { rows: u(rows_in, "rows")?, c: u(c, "channels")?, taps: u(taps, "taps")?, accumulate: accumulate as u32 };
    let k = ctx.kernel("maxpool_backward")?;
    Ok(vec![ctx.dispatch(&k, &p, &[dy, inv_map, argmax, dx], n as u64)])
}

/// CPU reference of `maxpool_forward`: `(y, argmax)`.
pub fn maxpool_forward_ref(x: &[f32], map: &NeighbourMap, c: usize) -> (Vec<f32>, Vec<i32>) {
    let (y, a) = forward64(&x.iter().map(|&v| v as f64).collect::<Vec<_>>(), map, c);
    (y.iter().map(|&v| v as f32).collect(), a)
}

fn forward64(x: &[f64], map: &NeighbourMap, c: usize) -> (Vec<f64>, Vec<i32>) {
    let mut y = vec![0f64; map.rows_out * c];
    let mut arg = vec![-1i32; map.rows_out * c];
    for r in 0..map.rows_out {
        for ch in 0..c {
            let (mut best, mut a) = (0f64, -1i32);
            for t in 0..map.taps {
                let m = map.get(r, t);
                if m == OUT_OF_BOUNDS {
                    continue;
                }
                let v = if m >= 0 { x[m as usize * c + ch] } else { 0.0 };
                if a < 0 || v > best {
                    (best, a) = (v, t as i32);
                }
            }
            y[r * c + ch] = best;
            arg[r * c + ch] = a;
        }
    }
    (y, arg)
}

/// CPU reference of `maxpool_backward` from the FORWARD map (as a scatter): `dx [rows_in, c]`.
pub fn maxpool_backward_ref(dy: &[f32], map: &NeighbourMap, argmax: &[i32], rows_in: usize, c: usize) -> Vec<f32> {
    let mut dx = vec![0f32; rows_in * c];
    for r in 0..map.rows_out {
        for ch in 0..c {
            let t = argmax[r * c + ch];
            if t >= 0 {
                let m = map.get(r, t as usize);
                if m >= 0 {
                    dx[m as usize * c + ch] += dy[r * c + ch];
                }
            }
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::{ActiveSet, PatchMask, Window, conv_map, inverse_map};
    use crate::testing::{assert_close, assert_grad_matches, numeric_grad, random_patch_mask, random_vec};

    const WIN: Window = Window::new(3, 2, 1);

    fn setup(mask: &PatchMask, h: usize) -> (ActiveSet, ActiveSet, NeighbourMap) {
        let (i, o) = (ActiveSet::from_patch_mask(mask, h, h), ActiveSet::from_patch_mask(mask, h / 2, h / 2));
        let m = conv_map(&i, &o, WIN);
        (i, o, m)
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
                // odd cases: values on a coarse grid, so that ties (with each other and with
                // the zeros of masked sites) decide the winner
                let ties = i % 2 == 1;
                let acc = i / 2 == 0;
                let what = format!("maxpool ({mname}, C {c}, ties {ties}, accumulate {acc})");
                let (inp, out, map) = setup(mask, 8);
                let inv = inverse_map(&map, inp.rows());
                let mut x = random_vec(seed, inp.rows() * c);
                if ties {
                    x.iter_mut().for_each(|v| *v = (*v * 2.0).round());
                }
                let g = random_vec(seed + 1, out.rows() * c);
                let dx0 = if acc { random_vec(seed + 2, inp.rows() * c) } else { vec![7.0; inp.rows() * c] };
                seed += 10;
                let (xt, mt, it, gt, dxt) = (ctx.upload(&x), ctx.upload(&map.map), ctx.upload(&inv.map), ctx.upload(&g), ctx.upload(&dx0));
                let (yt, at) = (ctx.zeros(out.rows() * c), ctx.zeros(out.rows() * c));
                let mut ds = maxpool_forward(&ctx, &xt, &mt, &yt, &at, out.rows(), c, 9).unwrap();
                ds.extend(maxpool_backward(&ctx, &gt, &it, &at, &dxt, inp.rows(), c, 9, acc).unwrap());
                ctx.run(&ds).unwrap();
                let (want_y, want_a) = maxpool_forward_ref(&x, &map, c);
                let mut want_dx = maxpool_backward_ref(&g, &map, &want_a, inp.rows(), c);
                if acc {
                    want_dx.iter_mut().zip(&dx0).for_each(|(a, b)| *a += b);
                }
                assert_eq!(ctx.read_f32(&yt).unwrap(), want_y, "{what}: forward");
                assert_eq!(ctx.read::<i32>(&at).unwrap(), want_a, "{what}: argmax");
                assert_close(&ctx.read_f32(&dxt).unwrap(), &want_dx, 1e-6, &format!("{what}: backward"));
            }
        }
    }

    #[test]
    fn masked_zero_wins_over_negatives_and_padding_never_does() {
        // One image, 2×2 patches, only the top-left visible: at 4×4 the visible sites are
        // (0..2, 0..2); output (0,0) reads input (-1..2, -1..2).
        let mask = PatchMask::new(1, 2, 2, vec![1, 0, 0, 0]);
        let (inp, out, map) = setup(&mask, 4);
        assert_eq!((inp.rows(), out.rows()), (4, 1));
        // all visible values negative: the window holds no masked site, so the max is the
        // largest negative; padding (zero in a naive dense pad) must not win
        let (y, a) = maxpool_forward_ref(&[-3.0, -1.0, -2.0, -4.0], &map, 1);
        assert_eq!((y[0], a[0]), (-1.0, 5));
        // 3×3/2 on 8×8 with the bottom-right patch: output (2,2) reads (3..6, 3..6), whose
        // row and column 3 lie in masked patches: a masked zero beats every negative value
        let mask = PatchMask::new(1, 2, 2, vec![0, 0, 0, 1]);
        let (inp, out, map) = setup(&mask, 8);
        let x = vec![-1.0f32; inp.rows()];
        let (y, a) = maxpool_forward_ref(&x, &map, 1);
        let r = out.row_of[2 * out.w + 2] as usize;
        assert_eq!(y[r], 0.0);
        assert_eq!(map.get(r, a[r] as usize), crate::sparse::INACTIVE);
        // and its gradient goes nowhere
        let dx = maxpool_backward_ref(&vec![1.0; out.rows()], &map, &a, inp.rows(), 1);
        assert_eq!(dx.iter().sum::<f32>(), (0..out.rows()).filter(|&o| map.get(o, a[o] as usize) >= 0).count() as f32);
    }

    #[test]
    fn cpu_backward_matches_finite_differences() {
        let mask = random_patch_mask(5, 2, 2, 2, 0.5);
        let (inp, _, map) = setup(&mask, 8);
        let c = 2;
        let n = inp.rows() * c;
        // distinct values, far apart compared with the step, some negative so that masked
        // zeros win some windows
        let mut x: Vec<f64> = (0..n).map(|i| (i as f64 + 1.0) * 0.01 * if i.is_multiple_of(3) { -1.0 } else { 1.0 }).collect();
        let perm = random_vec(9, n);
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by(|&a, &b| perm[a].total_cmp(&perm[b]));
        x = idx.iter().map(|&i| x[i]).collect();
        let g: Vec<f64> = random_vec(4, map.rows_out * c).iter().map(|&v| v as f64).collect();
        let loss = |x: &[f64]| -> f64 { forward64(x, &map, c).0.iter().zip(&g).map(|(y, g)| y * g).sum() };
        let (_, a) = forward64(&x, &map, c);
        let g32: Vec<f32> = g.iter().map(|&v| v as f32).collect();
        let dx: Vec<f64> = maxpool_backward_ref(&g32, &map, &a, inp.rows(), c).iter().map(|&v| v as f64).collect();
        assert_grad_matches(&dx, &numeric_grad(loss, &x, 1e-4), 1e-5, "maxpool dx");
    }
}
