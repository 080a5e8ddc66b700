//! `layernorm.wgsl` / `layernorm_backward.wgsl`: LayerNorm over the C channels of each row
//! of `[rows, C]` (ConvNeXt's channels-first and channels-last LayerNorms are both this
//! in channels-last; ConvNeXt uses eps 1e-6). Biased variance, as PyTorch.
//!
//! wgpu rule for callers: within one dispatch a buffer may not be bound both read-only and
//! writable, so inputs must not share a buffer with the tensors written.

use anyhow::{Result, ensure};

use crate::gpu::{Dispatch, GpuContext, GpuTensor};
use crate::ops::check;
use crate::ops::reduce::split_count;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    c: u32,
    inv_c: f32,
    eps: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BackwardParams {
    rows: u32,
    c: u32,
    splits: u32,
    chunk: u32,
    inv_c: f32,
    accumulate: u32,
}


/// `y = (x − mean_row)·invstd_row·γ + β`; per-row mean and invstd saved for the backward.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    y: &GpuTensor,
    save_mean: &GpuTensor,
    save_invstd: &GpuTensor,
    rows: usize,
    c: usize,
    eps: f32,
) -> Result<Vec<Dispatch>> {
    let op = "layernorm_forward";
    ensure!(c >= 1, "{op}: no channels");
    for (w, t, n) in [("x", x, rows * c), ("y", y, rows * c), ("gamma", gamma, c), ("beta", beta, c), ("save_mean", save_mean, rows), ("save_invstd", save_invstd, rows)] {
        check(op, w, t, n)?;
    }
    let k = ctx.kernel("layernorm")?;
    let p = Params { rows: rows as u32, c: c as u32, inv_c: (1.0 / c as f64) as f32, eps };
    Ok(vec![ctx.dispatch(&k, &p, &[x, gamma, beta, y, save_mean, save_invstd], rows as u64)])
}

/// Backward with the statistics saved by [`layernorm_forward`]: `dx` (+)= the input
/// gradient; `dgamma`, `dbeta` overwritten.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    ctx: &GpuContext,
    x: &GpuTensor,
    dy: &GpuTensor,
    gamma: &GpuTensor,
    save_mean: &GpuTensor,
    save_invstd: &GpuTensor,
    dx: &GpuTensor,
    dgamma: &GpuTensor,
    dbeta: &GpuTensor,
    rows: usize,
    c: usize,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    let op = "layernorm_backward";
    ensure!(c >= 1, "{op}: no channels");
    for (w, t, n) in [
        ("x", x, rows * c),
        ("dy", dy, rows * c),
        ("dx", dx, rows * c),
        ("gamma", gamma, c),
        ("dgamma", dgamma, c),
        ("dbeta", dbeta, c),
        ("save_mean", save_mean, rows),
        ("save_invstd", save_invstd, rows),
    ] {
        check(op, w, t, n)?;
    }
    let splits = split_count(rows, c);
    let chunk = rows.div_ceil(splits).max(1);
    let splits = rows.div_ceil(chunk).max(1);
    let parts = ctx.zeros(2 * splits * c);
    let p = BackwardParams {
        rows: rows as u32,
        c: c as u32,
        splits: splits as u32,
        chunk: chunk as u32,
        inv_c: (1.0 / c as f64) as f32,
        accumulate: accumulate as u32,
    };
    let bind = [x, dy, gamma, save_mean, save_invstd, &parts, dgamma, dbeta, dx];
    let k = |e: &str| ctx.kernel_entry("layernorm_backward", e);
    Ok(vec![
        ctx.dispatch(&k("input_grad")?, &p, &bind, rows as u64),
        ctx.dispatch(&k("partials")?, &p, &bind, (splits * c) as u64),
        ctx.dispatch(&k("finalize")?, &p, &bind, c as u64),
    ])
}

/// CPU reference of [`layernorm_forward`] (f64, two-pass): `(y, mean[rows], invstd[rows])`.
pub fn layernorm_forward_ref(x: &[f64], gamma: &[f64], beta: &[f64], rows: usize, c: usize, eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut y, mut mean, mut invstd) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
    for r in 0..rows {
        let row = &x[r * c..(r + 1) * c];
        let m = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / c as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for j in 0..c {
            y[r * c + j] = (row[j] - m) * inv * gamma[j] + beta[j];
        }
        (mean[r], invstd[r]) = (m, inv);
    }
    (y, mean, invstd)
}

/// CPU reference of [`layernorm_backward`] (f64): `(dx, dgamma, dbeta)`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward_ref(x: &[f64], dy: &[f64], gamma: &[f64], mean: &[f64], invstd: &[f64], rows: usize, c: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut dx, mut dgamma, mut dbeta) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
    for r in 0..rows {
        let xhat: Vec<f64> = (0..c).map(|j| (x[r * c + j] - mean[r]) * invstd[r]).collect();
        let g: Vec<f64> = (0..c).map(|j| dy[r * c + j] * gamma[j]).collect();
        let a = g.iter().sum::<f64>() / c as f64;
        let b = g.iter().zip(&xhat).map(|(g, h)| g * h).sum::<f64>() / c as f64;
        for j in 0..c {
            dx[r * c + j] = invstd[r] * (g[j] - a - xhat[j] * b);
            dgamma[j] += dy[r * c + j] * xhat[j];
            dbeta[j] += dy[r * c + j];
        }
    }
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{f32s, f64s};
    use crate::testing::{assert_close, assert_grad_matches, max_rel_err, numeric_grad, random_vec};


    struct Run {
        y: Vec<f32>,
        mean: Vec<f32>,
        invstd: Vec<f32>,
        dx: Vec<f32>,
        dgamma: Vec<f32>,
        dbeta: Vec<f32>,
    }

    fn inputs(seed: u64, rows: usize, c: usize, offset: f32) -> [Vec<f32>; 4] {
        let x = random_vec(seed, rows * c).iter().map(|v| offset + 2.0 * v).collect();
        let gamma = random_vec(seed + 1, c).iter().map(|v| 1.0 + 0.5 * v).collect();
        [x, gamma, random_vec(seed + 2, c), random_vec(seed + 3, rows * c)]
    }

    fn gpu(ctx: &GpuContext, [x, g, b, dy]: &[Vec<f32>; 4], rows: usize, c: usize, dx_init: Option<&[f32]>) -> Run {
        let (xt, gt, bt, dyt) = (ctx.upload(x), ctx.upload(g), ctx.upload(b), ctx.upload(dy));
        let (y, mean, invstd) = (ctx.zeros(rows * c), ctx.zeros(rows), ctx.zeros(rows));
        let dx = dx_init.map(|v| ctx.upload(v)).unwrap_or_else(|| ctx.zeros(rows * c));
        let (dg, db) = (ctx.upload(&vec![5.0f32; c]), ctx.upload(&vec![5.0f32; c]));
        let mut d = layernorm_forward(ctx, &xt, &gt, &bt, &y, &mean, &invstd, rows, c, 1e-6).unwrap();
        d.extend(layernorm_backward(ctx, &xt, &dyt, &gt, &mean, &invstd, &dx, &dg, &db, rows, c, dx_init.is_some()).unwrap());
        ctx.run(&d).unwrap();
        let r = |t: &GpuTensor| ctx.read_f32(t).unwrap();
        Run { y: r(&y), mean: r(&mean), invstd: r(&invstd), dx: r(&dx), dgamma: r(&dg), dbeta: r(&db) }
    }

    fn cpu([x, g, b, dy]: &[Vec<f32>; 4], rows: usize, c: usize) -> Run {
        let (x, g) = (f64s(x), f64s(g));
        let (y, mean, invstd) = layernorm_forward_ref(&x, &g, &f64s(b), rows, c, 1e-6);
        let (dx, dgamma, dbeta) = layernorm_backward_ref(&x, &f64s(dy), &g, &mean, &invstd, rows, c);
        Run { y: f32s(&y), mean: f32s(&mean), invstd: f32s(&invstd), dx: f32s(&dx), dgamma: f32s(&dgamma), dbeta: f32s(&dbeta) }
    }

    fn compare(got: &Run, want: &Run, tol: f64, what: &str) {
        for (name, g, w) in [
            ("y", &got.y, &want.y),
            ("mean", &got.mean, &want.mean),
            ("dx", &got.dx, &want.dx),
            ("dgamma", &got.dgamma, &want.dgamma),
            ("dbeta", &got.dbeta, &want.dbeta),
        ] {
            assert_close(g, w, tol, &format!("{what}: {name}"));
        }
    }

    #[test]
    fn forward_backward_match_cpu_on_awkward_shapes() {
        let ctx = GpuContext::new_default().unwrap();
        for (i, (rows, c)) in [(2 * 37, 3), (3 * 29, 5), (2 * 45, 17), (2 * 70 + 3, 33), (2 * 260 + 1, 17)].into_iter().enumerate() {
            let data = inputs(10 * i as u64, rows, c, 0.5);
            let (got, want) = (gpu(&ctx, &data, rows, c, None), cpu(&data, rows, c));
            compare(&got, &want, 2e-5, &format!("rows {rows} c {c}"));
            assert_close(&got.invstd, &want.invstd, 2e-5, "invstd");
        }
    }

    #[test]
    fn one_channel_normalises_to_beta() {
        // var = 0: y = beta, dx = 0, dgamma = 0 (xhat = 0); invstd = 1/sqrt(eps)
        let ctx = GpuContext::new_default().unwrap();
        let (rows, c) = (2 * 37, 1);
        let data = inputs(3, rows, c, 0.5);
        let (got, want) = (gpu(&ctx, &data, rows, c, None), cpu(&data, rows, c));
        compare(&got, &want, 1e-6, "c = 1");
        assert!(got.dx.iter().all(|v| v.abs() < 1e-6));
    }

    #[test]
    fn accurate_with_a_mean_offset_and_accumulates() {
        let ctx = GpuContext::new_default().unwrap();
        let (rows, c) = (2 * 251, 33);
        let data = inputs(8, rows, c, 3.0);
        let init = random_vec(50, rows * c);
        let got = gpu(&ctx, &data, rows, c, Some(&init));
        let mut want = cpu(&data, rows, c);
        want.dx.iter_mut().zip(&init).for_each(|(a, b)| *a += b);
        for (name, g, w) in [("y", &got.y, &want.y), ("dx", &got.dx, &want.dx), ("dgamma", &got.dgamma, &want.dgamma)] {
            eprintln!("LN rows 502 c 33, mean ~3: {name} max rel err {:.2e}", max_rel_err(g, w));
        }
        compare(&got, &want, 1e-5, "offset 3, accumulate");
    }

    #[test]
    fn bitwise_deterministic() {
        let ctx = GpuContext::new_default().unwrap();
        let data = inputs(9, 2 * 200 + 3, 17, 1.0);
        let (a, b) = (gpu(&ctx, &data, 403, 17, None), gpu(&ctx, &data, 403, 17, None));
        assert!(a.y == b.y && a.dx == b.dx && a.dgamma == b.dgamma && a.dbeta == b.dbeta);
    }

    #[test]
    fn cpu_backward_matches_finite_differences() {
        let (rows, c) = (4, 5);
        let [x, g, b, w] = inputs(4, rows, c, 1.0).map(|v| f64s(&v));
        let loss = |x: &[f64], g: &[f64], b: &[f64]| layernorm_forward_ref(x, g, b, rows, c, 1e-6).0.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
        let (_, mean, invstd) = layernorm_forward_ref(&x, &g, &b, rows, c, 1e-6);
        let (dx, dgamma, dbeta) = layernorm_backward_ref(&x, &w, &g, &mean, &invstd, rows, c);
        assert_grad_matches(&dx, &numeric_grad(|x| loss(x, &g, &b), &x, 1e-6), 1e-6, "dx");
        assert_grad_matches(&dgamma, &numeric_grad(|g| loss(&x, g, &b), &g, 1e-6), 1e-6, "dgamma");
        assert_grad_matches(&dbeta, &numeric_grad(|bb| loss(&x, &g, bb), &b, 1e-6), 1e-6, "dbeta");
    }
}
