//! How a declared tensor is initialised. Which layer gets which [`Init`] is model policy:
//! each layer of `model/` names it where it declares the parameter (as the official code
//! initialises beside its declarations; the summary is in `model`'s documentation).
//! [`init_params`] draws them from one ChaCha8 stream in declaration order, so a seed
//! gives the same model on every machine.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::ParamSpec;

/// How one declared tensor is initialised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Every element `v` (0 for biases and running means, 1 for norm weights and running
    /// variances, 1e-6 for ConvNeXt's layer scale).
    Constant(f32),
    /// Normal(0, `std`) redrawn until inside `[lo, hi]` (timm's `trunc_normal_`).
    TruncNormal {
        /// Standard deviation before truncation.
        std: f64,
        /// Lower bound (inclusive).
        lo: f64,
        /// Upper bound (inclusive).
        hi: f64,
    },
    /// Kaiming normal with ReLU gain: Normal(0, √(2 / `fan_out`)).
    KaimingNormal {
        /// PyTorch's fan_out: `weight.size(0) * kh * kw`.
        fan_out: usize,
    },
    /// Uniform on ±1/√`fan_in` (PyTorch's default Conv2d init, kaiming-uniform with
    /// a = √5, and its bias).
    KaimingUniform {
        /// PyTorch's fan_in: `weight.size(1) * kh * kw`.
        fan_in: usize,
    },
}

impl Init {
    /// Zeros.
    pub const ZERO: Init = Init::Constant(0.0);
    /// Ones.
    pub const ONE: Init = Init::Constant(1.0);
    /// timm's default `trunc_normal_(std=.02)` (cut at ±2, i.e. ±100 σ).
    pub const TRUNC_NORMAL: Init = Init::TruncNormal { std: 0.02, lo: -2.0, hi: 2.0 };

    /// Kaiming normal (fan_out) of a Conv2d weight `[cout, cin, k, k]`.
    pub fn kaiming_conv(shape: &[usize]) -> Init {
        Init::KaimingNormal { fan_out: shape[0] * shape[2..].iter().product::<usize>() }
    }

    /// Kaiming normal (fan_out) of a ConvTranspose2d weight `[cin, cout, k, k]`: PyTorch's
    /// fan_out there is `cin·k·k`.
    pub fn kaiming_conv_transposed(shape: &[usize]) -> Init {
        Init::KaimingNormal { fan_out: shape[0] * shape[2] * shape[3] }
    }

    /// PyTorch's default init of a Conv2d weight `[cout, cin, k, k]` (and, with the same
    /// fan-in, of its bias).
    pub fn torch_default_conv(shape: &[usize]) -> Init {
        Init::KaimingUniform { fan_in: shape[1..].iter().product() }
    }

    /// `n` values drawn from `rng`.
    fn sample(self, rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        match self {
            Init::Constant(v) => vec![v; n],
            Init::TruncNormal { std, lo, hi } => {
                let d = Normal::new(0.0, std).unwrap();
                (0..n)
                    .map(|_| loop {
                        let v: f64 = d.sample(rng);
                        if (lo..=hi).contains(&v) {
                            break v as f32;
                        }
                    })
                    .collect()
            }
            Init::KaimingNormal { fan_out } => {
                let d = Normal::new(0.0, (2.0 / fan_out as f64).sqrt()).unwrap();
                (0..n).map(|_| d.sample(rng) as f32).collect()
            }
            Init::KaimingUniform { fan_in } => {
                let b = 1.0 / (fan_in as f32).sqrt();
                (0..n).map(|_| rng.random_range(-b..b)).collect()
            }
        }
    }
}

/// Initial values of every parameter and buffer (same order as `specs`), from `seed`.
pub fn init_params(specs: &[ParamSpec], seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    specs.iter().map(|s| s.init.sample(&mut rng, s.numel())).collect()
}
