//! `elementwise.wgsl` (+ `elementwise_col_dot.wgsl`): residual add, copy / gradient fan-in,
//! and the per-channel scale of ConvNeXt's layer scale with its backward.

use anyhow::{Result, ensure};

use crate::gpu::{Dispatch, GpuContext, GpuTensor};
use crate::ops::check;
use crate::ops::reduce::{reduce_partials, split_count};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    mode: u32,
    accumulate: u32,
}

const ADD: u32 = 0;
const COPY: u32 = 1;
const SCALE: u32 = 2;


#[allow(clippy::too_many_arguments)]
fn launch(ctx: &GpuContext, mode: u32, a: &GpuTensor, b: &GpuTensor, out: &GpuTensor, n: usize, c: usize, accumulate: bool) -> Result<Dispatch> {
    let k = ctx.kernel("elementwise")?;
    let p = Params { n: n as u32, c: c.max(1) as u32, mode, accumulate: accumulate as u32 };
    Ok(ctx.dispatch(&k, &p, &[a, b, out], n as u64))
}

/// `y = a + b` over `n` elements.
pub fn add(ctx: &GpuContext, a: &GpuTensor, b: &GpuTensor, y: &GpuTensor, n: usize) -> Result<Vec<Dispatch>> {
    for (w, t) in [("a", a), ("b", b), ("y", y)] {
        check("add", w, t, n)?;
    }
    Ok(vec![launch(ctx, ADD, a, b, y, n, 1, false)?])
}

/// `dst = src` (or `dst += src` when `accumulate`: gradient fan-in). `src` and `dst` must
/// be different buffers.
pub fn copy_or_add(ctx: &GpuContext, src: &GpuTensor, dst: &GpuTensor, n: usize, accumulate: bool) -> Result<Vec<Dispatch>> {
    check("copy_or_add", "src", src, n)?;
    check("copy_or_add", "dst", dst, n)?;
    Ok(vec![launch(ctx, COPY, src, src, dst, n, 1, accumulate)?])
}

/// `y[r, j] = x[r, j] · gamma[j]` over `[rows, c]` (ConvNeXt layer scale).
pub fn channel_scale_forward(ctx: &GpuContext, x: &GpuTensor, gamma: &GpuTensor, y: &GpuTensor, rows: usize, c: usize) -> Result<Vec<Dispatch>> {
    check("channel_scale_forward", "x", x, rows * c)?;
    check("channel_scale_forward", "gamma", gamma, c)?;
    check("channel_scale_forward", "y", y, rows * c)?;
    Ok(vec![launch(ctx, SCALE, x, gamma, y, rows * c, c, false)?])
}

/// Backward of [`channel_scale_forward`]: `dx (+)= dy · gamma[j]`,
/// `dgamma[j] = Σ_r dy[r, j] · x[r, j]` (overwritten; fixed-order split-K).
#[allow(clippy::too_many_arguments)]
pub fn channel_scale_backward(
    ctx: &GpuContext,
    x: &GpuTensor,
    gamma: &GpuTensor,
    dy: &GpuTensor,
    dx: &GpuTensor,
    dgamma: &GpuTensor,
    rows: usize,
    c: usize,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    let op = "channel_scale_backward";
    check(op, "x", x, rows * c)?;
    check(op, "dy", dy, rows * c)?;
    check(op, "dx", dx, rows * c)?;
    check(op, "gamma", gamma, c)?;
    ensure!(dgamma.len == c, "{op}: dgamma holds {} elements, expected {c}", dgamma.len);
    let mut out = vec![launch(ctx, SCALE, dy, gamma, dx, rows * c, c, accumulate)?];
    out.extend(column_dot(ctx, dy, x, dgamma, rows, c)?);
    Ok(out)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DotParams {
    rows: u32,
    c: u32,
    splits: u32,
    chunk: u32,
}

/// `out[j] = Σ_r a[r, j] · b[r, j]` over `[rows, c]` (overwrite), as fixed-order split-K
/// partials + `reduce_partials`, so the result is bitwise reproducible.
pub fn column_dot(ctx: &GpuContext, a: &GpuTensor, b: &GpuTensor, out: &GpuTensor, rows: usize, c: usize) -> Result<Vec<Dispatch>> {
    check("column_dot", "a", a, rows * c)?;
    check("column_dot", "b", b, rows * c)?;
    ensure!(out.len == c, "column_dot: out holds {} elements, expected {c}", out.len);
    let splits = split_count(rows, c);
    let chunk = rows.div_ceil(splits).max(1);
    let partials = ctx.zeros(splits * c);
    let k = ctx.kernel("elementwise_col_dot")?;
    let p = DotParams { rows: rows as u32, c: c as u32, splits: splits as u32, chunk: chunk as u32 };
    Ok(vec![
        ctx.dispatch(&k, &p, &[a, b, &partials], (splits * c) as u64),
        reduce_partials(ctx, &partials, out, splits, 1.0, false)?,
    ])
}

/// CPU reference of [`channel_scale_forward`] (f64).
pub fn channel_scale_ref(x: &[f64], gamma: &[f64], c: usize) -> Vec<f64> {
    x.iter().enumerate().map(|(i, v)| v * gamma[i % c]).collect()
}

/// CPU reference of [`channel_scale_backward`]: `(dx, dgamma)`.
pub fn channel_scale_backward_ref(x: &[f64], gamma: &[f64], dy: &[f64], c: usize) -> (Vec<f64>, Vec<f64>) {
    let dx = channel_scale_ref(dy, gamma, c);
    let mut dgamma = vec![0.0; c];
    for (i, (g, v)) in dy.iter().zip(x).enumerate() {
        dgamma[i % c] += g * v;
    }
    (dx, dgamma)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{f32s, f64s};
    use crate::testing::{assert_close, assert_grad_matches, numeric_grad, random_vec};


    #[test]
    fn add_and_copy_or_add() {
        let ctx = GpuContext::new_default().unwrap();
        let n = 131;
        let (a, b, init) = (random_vec(1, n), random_vec(2, n), random_vec(3, n));
        let (at, bt, y) = (ctx.upload(&a), ctx.upload(&b), ctx.zeros(n));
        ctx.run(&add(&ctx, &at, &bt, &y, n).unwrap()).unwrap();
        let sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert_eq!(ctx.read_f32(&y).unwrap(), sum);
        let d = ctx.upload(&init);
        ctx.run(&copy_or_add(&ctx, &at, &d, n, false).unwrap()).unwrap();
        assert_eq!(ctx.read_f32(&d).unwrap(), a);
        ctx.run(&copy_or_add(&ctx, &bt, &d, n, true).unwrap()).unwrap();
        assert_eq!(ctx.read_f32(&d).unwrap(), sum);
    }

    #[test]
    fn channel_scale_matches_cpu() {
        let ctx = GpuContext::new_default().unwrap();
        for (rows, c) in [(2 * 37, 1), (2 * 61, 3), (3 * 29, 5), (2 * 45, 17), (2 * 70 + 3, 33)] {
            let (x, g, dy, init) = (random_vec(1, rows * c), random_vec(2, c), random_vec(3, rows * c), random_vec(4, rows * c));
            let (xt, gt, dyt) = (ctx.upload(&x), ctx.upload(&g), ctx.upload(&dy));
            let y = ctx.zeros(rows * c);
            ctx.run(&channel_scale_forward(&ctx, &xt, &gt, &y, rows, c).unwrap()).unwrap();
            let want = f32s(&channel_scale_ref(&f64s(&x), &f64s(&g), c));
            assert_close(&ctx.read_f32(&y).unwrap(), &want, 1e-7, "channel scale forward");
            let (dx_want, dg_want) = channel_scale_backward_ref(&f64s(&x), &f64s(&g), &f64s(&dy), c);
            for accumulate in [false, true] {
                let (dx, dg) = (ctx.upload(&init), ctx.upload(&random_vec(9, c)));
                ctx.run(&channel_scale_backward(&ctx, &xt, &gt, &dyt, &dx, &dg, rows, c, accumulate).unwrap()).unwrap();
                let want: Vec<f32> = dx_want.iter().zip(&init).map(|(a, &b)| (a + if accumulate { b as f64 } else { 0.0 }) as f32).collect();
                assert_close(&ctx.read_f32(&dx).unwrap(), &want, 1e-6, "channel scale dx");
                assert_close(&ctx.read_f32(&dg).unwrap(), &f32s(&dg_want), 1e-5, "channel scale dgamma");
            }
        }
    }

    #[test]
    fn channel_scale_cpu_backward_matches_finite_differences() {
        let (rows, c) = (7, 3);
        let (x, g, w) = (f64s(&random_vec(1, rows * c)), f64s(&random_vec(2, c)), f64s(&random_vec(3, rows * c)));
        let loss = |x: &[f64], g: &[f64]| channel_scale_ref(x, g, c).iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
        let (dx, dg) = channel_scale_backward_ref(&x, &g, &w, c);
        assert_grad_matches(&dx, &numeric_grad(|x| loss(x, &g), &x, 1e-6), 1e-8, "dx");
        assert_grad_matches(&dg, &numeric_grad(|g| loss(&x, g), &g, 1e-6), 1e-8, "dgamma");
    }
}
