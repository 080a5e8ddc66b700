//! `activation.wgsl`: ReLU, ReLU6 and exact GELU, forward and backward.
//!
//! GELU is PyTorch's default `nn.GELU()`: `x·½(1 + erf(x/√2))`, not the tanh form. WGSL has
//! no erf, so the kernel carries a fitted one (about one ulp); the CPU reference uses
//! `libm::erf` in f64.

use anyhow::{Result, ensure};

use crate::gpu::{Dispatch, GpuContext, GpuTensor};

/// An element-wise activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// Exact (erf) GELU, as PyTorch's default.
    Gelu,
}

impl Activation {
    /// Whether the gradient can be taken from the output instead of the input, with the
    /// same bits: ReLU passes the gradient where `x > 0`, which is where `max(x, 0) > 0`;
    /// ReLU6 where `0 < x < 6`, which is where `0 < clamp(x, 0, 6) < 6`. GELU cannot.
    /// The graph then keeps the output (which the next layer's weight gradient reads
    /// anyway) and not the input.
    pub fn grad_from_output(self) -> bool {
        matches!(self, Activation::Relu | Activation::Relu6)
    }

    fn code(self) -> u32 {
        match self {
            Activation::Relu => 0,
            Activation::Relu6 => 1,
            Activation::Gelu => 2,
        }
    }
}

/// Kernel code of the raw erf (tests only).
#[cfg(test)]
const ERF_CODE: u32 = 3;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    act: u32,
    accumulate: u32,
}

fn check(what: &str, t: &GpuTensor, n: usize) -> Result<()> {
    ensure!(t.len >= n, "activation: {what} holds {} elements, {n} needed", t.len);
    Ok(())
}

fn forward_code(ctx: &GpuContext, code: u32, x: &GpuTensor, y: &GpuTensor, n: usize) -> Result<Vec<Dispatch>> {
    check("x", x, n)?;
    check("y", y, n)?;
    let k = ctx.kernel_entry("activation", "forward")?;
    let p = Params { n: n as u32, act: code, accumulate: 0 };
    // `x` also fills the unused `dy` slot.
    Ok(vec![ctx.dispatch(&k, &p, &[x, x, y], n as u64)])
}

/// `y = act(x)` over `n` elements.
pub fn activation_forward(ctx: &GpuContext, act: Activation, x: &GpuTensor, y: &GpuTensor, n: usize) -> Result<Vec<Dispatch>> {
    forward_code(ctx, act.code(), x, y, n)
}

/// `dx (+)= dy · act'(x)`, `x` being the forward input, or its output where
/// [`Activation::grad_from_output`] (the kernel's tests are the same on both).
pub fn activation_backward(
    ctx: &GpuContext,
    act: Activation,
    x: &GpuTensor,
    dy: &GpuTensor,
    dx: &GpuTensor,
    n: usize,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    check("x", x, n)?;
    check("dy", dy, n)?;
    check("dx", dx, n)?;
    let k = ctx.kernel_entry("activation", "backward")?;
    let p = Params { n: n as u32, act: act.code(), accumulate: accumulate as u32 };
    Ok(vec![ctx.dispatch(&k, &p, &[x, dy, dx], n as u64)])
}

const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// CPU reference of the forward pass (f64).
pub fn activation_ref(act: Activation, x: &[f64]) -> Vec<f64> {
    x.iter()
        .map(|&v| match act {
            Activation::Relu => v.max(0.0),
            Activation::Relu6 => v.clamp(0.0, 6.0),
            Activation::Gelu => v * 0.5 * (1.0 + libm::erf(v * std::f64::consts::FRAC_1_SQRT_2)),
        })
        .collect()
}

/// CPU reference of the backward pass: `dy · act'(x)` with PyTorch's conventions at the
/// kinks (ReLU: 0 at x = 0; ReLU6: 1 only on the open interval (0, 6)).
pub fn activation_backward_ref(act: Activation, x: &[f64], dy: &[f64]) -> Vec<f64> {
    x.iter()
        .zip(dy)
        .map(|(&v, &g)| match act {
            Activation::Relu => if v > 0.0 { g } else { 0.0 },
            Activation::Relu6 => if v > 0.0 && v < 6.0 { g } else { 0.0 },
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + libm::erf(v * std::f64::consts::FRAC_1_SQRT_2));
                g * (cdf + v * (-0.5 * v * v).exp() * INV_SQRT_2PI)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{f32s, f64s};
    use crate::testing::{assert_close, assert_grad_matches, numeric_grad, random_vec};

    const ALL: [Activation; 3] = [Activation::Relu, Activation::Relu6, Activation::Gelu];


    /// Values over [-8, 8] plus the kinks (0 and 6) exactly.
    fn inputs(seed: u64, n: usize) -> Vec<f32> {
        let mut x: Vec<f32> = random_vec(seed, n).iter().map(|v| v * 8.0).collect();
        x[0] = 0.0;
        x[1] = 6.0;
        x[2] = -0.0;
        x
    }

    #[test]
    fn erf_kernel_is_accurate_to_about_an_ulp() {
        let ctx = GpuContext::new_default().unwrap();
        // dense grid over [-5, 5] crossing both branch points (±0.9, ±4)
        let x: Vec<f32> = (0..20001).map(|i| -5.0 + i as f32 * 5e-4).collect();
        let (xt, yt) = (ctx.upload(&x), ctx.zeros(x.len()));
        ctx.run(&forward_code(&ctx, ERF_CODE, &xt, &yt, x.len()).unwrap()).unwrap();
        let y = ctx.read_f32(&yt).unwrap();
        // NaN-propagating max (f64::max would drop a NaN and pass).
        let worst = x.iter().zip(&y).map(|(&a, &b)| (b as f64 - libm::erf(a as f64)).abs()).fold(0.0, |m: f64, d| if d > m || d.is_nan() { d } else { m });
        eprintln!("GPU erf max abs error on [-5, 5]: {worst:e}");
        // f32 spacing just below 1 is 6e-8; allow a few ulps for the device's exp
        assert!(worst < 2.5e-7, "erf max abs error {worst:e}");
        let tiny = ctx.upload(&[1e-30f32, -3e-8, 1e-4]);
        let out = ctx.zeros(3);
        ctx.run(&forward_code(&ctx, ERF_CODE, &tiny, &out, 3).unwrap()).unwrap();
        let got = ctx.read_f32(&out).unwrap();
        for (g, v) in got.iter().zip([1e-30f64, -3e-8, 1e-4]) {
            let want = libm::erf(v);
            assert!(((*g as f64) - want).abs() <= want.abs() * 1e-6, "erf({v}) = {g}, want {want}");
        }
    }

    #[test]
    fn forward_and_backward_match_cpu() {
        let ctx = GpuContext::new_default().unwrap();
        let n = 1237;
        let x = inputs(1, n);
        let dy = random_vec(2, n);
        let init = random_vec(3, n);
        let (xt, dyt) = (ctx.upload(&x), ctx.upload(&dy));
        for act in ALL {
            let y = ctx.zeros(n);
            ctx.run(&activation_forward(&ctx, act, &xt, &y, n).unwrap()).unwrap();
            let want = f32s(&activation_ref(act, &f64s(&x)));
            assert_close(&ctx.read_f32(&y).unwrap(), &want, 1e-6, &format!("{act:?} forward"));

            let dgrad = f32s(&activation_backward_ref(act, &f64s(&x), &f64s(&dy)));
            let dx = ctx.zeros(n);
            ctx.run(&activation_backward(&ctx, act, &xt, &dyt, &dx, n, false).unwrap()).unwrap();
            assert_close(&ctx.read_f32(&dx).unwrap(), &dgrad, 1e-6, &format!("{act:?} backward"));

            let dx = ctx.upload(&init);
            ctx.run(&activation_backward(&ctx, act, &xt, &dyt, &dx, n, true).unwrap()).unwrap();
            let want: Vec<f32> = dgrad.iter().zip(&init).map(|(a, b)| a + b).collect();
            assert_close(&ctx.read_f32(&dx).unwrap(), &want, 1e-6, &format!("{act:?} backward accumulate"));
        }
    }

    #[test]
    fn gradient_from_the_output_has_the_bits_of_the_gradient_from_the_input() {
        let ctx = GpuContext::new_default().unwrap();
        // random values plus the kinks and values next to them, and a NaN
        let mut x = inputs(4, 997);
        x.extend([f32::MIN_POSITIVE, -f32::MIN_POSITIVE, 6.0f32.next_up(), 6.0f32.next_down(), 1e-45, f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
        let n = x.len();
        let dy = random_vec(5, n);
        let (xt, dyt) = (ctx.upload(&x), ctx.upload(&dy));
        for act in ALL.into_iter().filter(|a| a.grad_from_output()) {
            let y = ctx.zeros(n);
            ctx.run(&activation_forward(&ctx, act, &xt, &y, n).unwrap()).unwrap();
            let (from_x, from_y) = (ctx.zeros(n), ctx.zeros(n));
            ctx.run(&activation_backward(&ctx, act, &xt, &dyt, &from_x, n, false).unwrap()).unwrap();
            ctx.run(&activation_backward(&ctx, act, &y, &dyt, &from_y, n, false).unwrap()).unwrap();
            let (a, b) = (ctx.read_f32(&from_x).unwrap(), ctx.read_f32(&from_y).unwrap());
            let passed = a.iter().filter(|v| **v != 0.0).count();
            assert!(passed > n / 4, "{act:?}: only {passed} of {n} gradients passed");
            for i in 0..n {
                assert_eq!(a[i].to_bits(), b[i].to_bits(), "{act:?} at x = {}: from x {}, from y {}", x[i], a[i], b[i]);
            }
        }
    }

    #[test]
    fn kinks_follow_pytorch() {
        let x = [0.0, 6.0, -1e-9, 1e-9, 6.0 - 1e-9, 6.0 + 1e-9];
        let g = activation_backward_ref(Activation::Relu, &x, &[1.0; 6]);
        assert_eq!(g, vec![0.0, 1.0, 0.0, 1.0, 1.0, 1.0]);
        let g = activation_backward_ref(Activation::Relu6, &x, &[1.0; 6]);
        assert_eq!(g, vec![0.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn cpu_backward_matches_finite_differences() {
        // Away from the kinks, where the derivative exists.
        let x: Vec<f64> = random_vec(7, 40)
            .iter()
            .map(|&v| v as f64 * 8.0)
            .filter(|v| v.abs() > 1e-3 && (v - 6.0).abs() > 1e-3)
            .collect();
        let w = f64s(&random_vec(8, x.len()));
        for act in ALL {
            let f = |x: &[f64]| activation_ref(act, x).iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
            let num = numeric_grad(f, &x, 1e-6);
            assert_grad_matches(&activation_backward_ref(act, &x, &w), &num, 1e-7, &format!("{act:?}"));
        }
    }
}
