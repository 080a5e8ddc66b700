//! SparK's densify step and the layout moves between rows and dense maps:
//! `densify.wgsl` (scatter rows into a dense map with the mask token at inactive sites),
//! `densify_gather.wgsl` (read active sites into rows) and `densify_fill_grad.wgsl`
//! (the mask token's gradient, fixed-order split-K).
//!
//! Index tensors are i32: `row_of` is `ActiveSet::row_of` (`[sites]`, −1 = inactive) and
//! `site_of_row` is `(b·h + y)·w + x` of each row (`[rows]`).

use anyhow::{Result, ensure};

use crate::gpu::{Dispatch, GpuContext, GpuTensor};
use crate::ops::check;
use crate::ops::reduce::{reduce_partials, split_count};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ScatterParams {
    sites: u32,
    c: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GatherParams {
    rows: u32,
    c: u32,
    accumulate: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FillGradParams {
    sites: u32,
    c: u32,
    splits: u32,
    chunk: u32,
}


/// `dense[s, :] = rows[row_of[s], :]` when `row_of[s] >= 0`, else `fill[:]` (the mask
/// token). `row_of` is `ActiveSet::row_of` uploaded as i32 `[sites]`.
#[allow(clippy::too_many_arguments)]
pub fn scatter_rows(
    ctx: &GpuContext,
    rows_t: &GpuTensor,
    row_of: &GpuTensor,
    fill: &GpuTensor,
    dense: &GpuTensor,
    sites: usize,
    c: usize,
) -> Result<Vec<Dispatch>> {
    let op = "scatter_rows";
    check(op, "row_of", row_of, sites)?;
    check(op, "fill", fill, c)?;
    check(op, "dense", dense, sites * c)?;
    let k = ctx.kernel("densify")?;
    let p = ScatterParams { sites: sites as u32, c: c as u32 };
    Ok(vec![ctx.dispatch(&k, &p, &[rows_t, row_of, fill, dense], (sites * c) as u64)])
}

fn gather(ctx: &GpuContext, dense: &GpuTensor, site_of_row: &GpuTensor, out: &GpuTensor, rows: usize, c: usize, accumulate: bool) -> Result<Dispatch> {
    let k = ctx.kernel("densify_gather")?;
    let p = GatherParams { rows: rows as u32, c: c as u32, accumulate: accumulate as u32 };
    Ok(ctx.dispatch(&k, &p, &[dense, site_of_row, out], (rows * c) as u64))
}

/// Backward of [`scatter_rows`]: `d_rows[r] (+)= d_dense[site_of_row[r]]`;
/// `d_fill[j]` (overwritten: a parameter gradient) `= Σ_{s: row_of[s] < 0} d_dense[s, j]`.
#[allow(clippy::too_many_arguments)]
pub fn scatter_rows_backward(
    ctx: &GpuContext,
    d_dense: &GpuTensor,
    row_of: &GpuTensor,
    site_of_row: &GpuTensor,
    d_rows: &GpuTensor,
    d_fill: &GpuTensor,
    sites: usize,
    rows: usize,
    c: usize,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    let op = "scatter_rows_backward";
    check(op, "d_dense", d_dense, sites * c)?;
    check(op, "row_of", row_of, sites)?;
    check(op, "site_of_row", site_of_row, rows)?;
    check(op, "d_rows", d_rows, rows * c)?;
    ensure!(d_fill.len == c, "{op}: d_fill holds {} elements, expected {c}", d_fill.len);
    let splits = split_count(sites, c);
    let chunk = sites.div_ceil(splits).max(1);
    let splits = sites.div_ceil(chunk).max(1);
    let partials = ctx.zeros(splits * c);
    let k = ctx.kernel("densify_fill_grad")?;
    let p = FillGradParams { sites: sites as u32, c: c as u32, splits: splits as u32, chunk: chunk as u32 };
    Ok(vec![
        gather(ctx, d_dense, site_of_row, d_rows, rows, c, accumulate)?,
        ctx.dispatch(&k, &p, &[d_dense, row_of, &partials], (splits * c) as u64),
        reduce_partials(ctx, &partials, d_fill, splits, 1.0, false)?,
    ])
}

/// `rows_out[r] = dense[site_of_row[r]]` (e.g. the visible pixels of an image).
pub fn gather_rows(ctx: &GpuContext, dense: &GpuTensor, site_of_row: &GpuTensor, rows_out: &GpuTensor, rows: usize, c: usize) -> Result<Vec<Dispatch>> {
    let op = "gather_rows";
    check(op, "site_of_row", site_of_row, rows)?;
    check(op, "rows_out", rows_out, rows * c)?;
    Ok(vec![gather(ctx, dense, site_of_row, rows_out, rows, c, false)?])
}

/// CPU reference of [`scatter_rows`] (f64).
pub fn scatter_rows_ref(rows: &[f64], row_of: &[i32], fill: &[f64], c: usize) -> Vec<f64> {
    row_of
        .iter()
        .flat_map(|&r| if r >= 0 { &rows[r as usize * c..(r as usize + 1) * c] } else { &fill[..c] })
        .copied()
        .collect()
}

/// CPU reference of [`gather_rows`] (f64).
pub fn gather_rows_ref(dense: &[f64], site_of_row: &[i32], c: usize) -> Vec<f64> {
    site_of_row.iter().flat_map(|&s| &dense[s as usize * c..(s as usize + 1) * c]).copied().collect()
}

/// CPU reference of [`scatter_rows_backward`]: `(d_rows, d_fill)`.
pub fn scatter_rows_backward_ref(d_dense: &[f64], row_of: &[i32], site_of_row: &[i32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let mut d_fill = vec![0.0; c];
    for (s, &r) in row_of.iter().enumerate() {
        if r < 0 {
            for j in 0..c {
                d_fill[j] += d_dense[s * c + j];
            }
        }
    }
    (gather_rows_ref(d_dense, site_of_row, c), d_fill)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{f32s, f64s};
    use crate::sparse::ActiveSet;
    use crate::testing::{assert_close, assert_grad_matches, numeric_grad, random_patch_mask, random_vec};


    fn site_of_row(s: &ActiveSet) -> Vec<i32> {
        s.sites.iter().map(|&[b, y, x]| ((b as usize * s.h + y as usize) * s.w + x as usize) as i32).collect()
    }

    /// 2 or 3 images, a 4×4 patch grid, a stage of 8×12 (sites per patch 2×3).
    fn active_set(seed: u64, batch: usize) -> ActiveSet {
        let mask = random_patch_mask(seed, batch, 4, 4, 0.4);
        ActiveSet::from_patch_mask(&mask, 8, 12)
    }

    #[test]
    fn scatter_gather_and_backward_match_cpu() {
        let ctx = GpuContext::new_default().unwrap();
        for (i, c) in [1usize, 3, 5, 17, 33].into_iter().enumerate() {
            let set = active_set(i as u64, 2 + i % 2);
            let (sites, rows) = (set.row_of.len(), set.rows());
            let sor = site_of_row(&set);
            let (x, fill, dd, init) = (random_vec(1, rows * c), random_vec(2, c), random_vec(3, sites * c), random_vec(4, rows * c));
            let (xt, ft, ddt) = (ctx.upload(&x), ctx.upload(&fill), ctx.upload(&dd));
            let (rot, sot) = (ctx.upload(&set.row_of), ctx.upload(&sor));

            let dense = ctx.zeros(sites * c);
            ctx.run(&scatter_rows(&ctx, &xt, &rot, &ft, &dense, sites, c).unwrap()).unwrap();
            let dense_v = ctx.read_f32(&dense).unwrap();
            assert_eq!(dense_v, set.scatter(&x, c, &fill), "scatter c {c}");
            assert_eq!(dense_v, f32s(&scatter_rows_ref(&f64s(&x), &set.row_of, &f64s(&fill), c)));

            let back = ctx.zeros(rows * c);
            ctx.run(&gather_rows(&ctx, &dense, &sot, &back, rows, c).unwrap()).unwrap();
            assert_eq!(ctx.read_f32(&back).unwrap(), x, "gather(scatter(x)) = x, c {c}");
            assert_eq!(set.gather(&dd, c), f32s(&gather_rows_ref(&f64s(&dd), &sor, c)));

            let (dr_want, df_want) = scatter_rows_backward_ref(&f64s(&dd), &set.row_of, &sor, c);
            for accumulate in [false, true] {
                let (dr, df) = (ctx.upload(&init), ctx.upload(&vec![9.0f32; c]));
                ctx.run(&scatter_rows_backward(&ctx, &ddt, &rot, &sot, &dr, &df, sites, rows, c, accumulate).unwrap()).unwrap();
                let want: Vec<f32> = dr_want.iter().zip(&init).map(|(a, &b)| (a + if accumulate { b as f64 } else { 0.0 }) as f32).collect();
                assert_close(&ctx.read_f32(&dr).unwrap(), &want, 1e-7, "d_rows");
                assert_close(&ctx.read_f32(&df).unwrap(), &f32s(&df_want), 1e-5, "d_fill");
            }
        }
    }

    #[test]
    fn mask_token_gradient_is_deterministic_over_many_sites() {
        let ctx = GpuContext::new_default().unwrap();
        let mask = random_patch_mask(5, 2, 4, 4, 0.25);
        let set = ActiveSet::from_patch_mask(&mask, 32, 32); // 2048 sites: several splits
        let (sites, rows, c) = (set.row_of.len(), set.rows(), 3);
        let (ddt, rot, sot) = (ctx.upload(&random_vec(6, sites * c)), ctx.upload(&set.row_of), ctx.upload(&site_of_row(&set)));
        let run = || {
            let (dr, df) = (ctx.zeros(rows * c), ctx.zeros(c));
            ctx.run(&scatter_rows_backward(&ctx, &ddt, &rot, &sot, &dr, &df, sites, rows, c, false).unwrap()).unwrap();
            ctx.read_f32(&df).unwrap()
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        let (_, want) = scatter_rows_backward_ref(&f64s(&ctx.read_f32(&ddt).unwrap()), &set.row_of, &site_of_row(&set), c);
        assert_close(&a, &f32s(&want), 1e-5, "d_fill, 2048 sites");
    }

    #[test]
    fn cpu_backward_matches_finite_differences() {
        let set = active_set(7, 2);
        let (sites, rows, c) = (set.row_of.len(), set.rows(), 3);
        let sor = site_of_row(&set);
        let (x, fill, w) = (f64s(&random_vec(1, rows * c)), f64s(&random_vec(2, c)), f64s(&random_vec(3, sites * c)));
        let loss = |x: &[f64], f: &[f64]| scatter_rows_ref(x, &set.row_of, f, c).iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
        let (dr, df) = scatter_rows_backward_ref(&w, &set.row_of, &sor, c);
        assert_grad_matches(&dr, &numeric_grad(|x| loss(x, &fill), &x, 1e-6), 1e-8, "d_rows");
        assert_grad_matches(&df, &numeric_grad(|f| loss(&x, f), &fill, 1e-6), 1e-8, "d_fill (mask token)");
    }
}
