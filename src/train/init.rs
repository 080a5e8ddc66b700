//! Official initialisation of a fresh model, by parameter name.
//!
//! - timm ResNet: convs kaiming-normal (fan_out, ReLU gain); BN weight 1, bias 0, and
//!   the last BN of each residual branch zero (timm's `zero_init_last`).
//! - ConvNeXt: convs and linears truncated normal (std 0.02), biases 0, LayerNorms 1/0,
//!   layer-scale gamma 1e-6.
//! - LightDecoder: convs truncated normal (std 0.02), transposed convs kaiming-normal
//!   (fan_out), biases 0, BN 1/0.
//! - densify projections: PyTorch's default Conv2d init (kaiming-uniform, a = √5);
//!   mask tokens truncated normal (std 0.02, cut at ±0.02).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::graph::{Kind, ParamSpec};

fn trunc_normal(rng: &mut ChaCha8Rng, n: usize, std: f64, lo: f64, hi: f64) -> Vec<f32> {
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

fn normal(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f32> {
    let d = Normal::new(0.0, std).unwrap();
    (0..n).map(|_| d.sample(rng) as f32).collect()
}

/// Is `name` the last BN of a ResNet residual branch (`layerX.Y.bn2` for BasicBlock
/// stacks with no bn3, `layerX.Y.bn3` for Bottlenecks)?
fn is_last_bn(name: &str, specs: &[ParamSpec]) -> bool {
    let Some(prefix) = name.strip_suffix(".weight") else { return false };
    if !prefix.contains(".layer") {
        return false;
    }
    let block = prefix.rsplit_once('.').map(|(b, _)| b).unwrap_or("");
    let has_bn3 = specs.iter().any(|s| s.name == format!("{block}.bn3.weight"));
    prefix.ends_with(".bn3") || (prefix.ends_with(".bn2") && !has_bn3)
}

/// Initial values of every parameter and buffer (same order as `specs`).
pub fn init_params(specs: &[ParamSpec], seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    specs
        .iter()
        .map(|s| {
            let n = s.numel();
            let name = s.name.as_str();
            if s.kind == Kind::Counter {
                return vec![0.0];
            }
            if name.ends_with("running_var") {
                return vec![1.0; n];
            }
            if name.ends_with("running_mean") || name.ends_with(".bias") {
                if name.starts_with("densify_projs") {
                    let fan_in: usize = specs.iter().find(|o| o.name == name.replace(".bias", ".weight")).map_or(1, |w| w.shape[1..].iter().product());
                    let b = 1.0 / (fan_in as f32).sqrt();
                    return (0..n).map(|_| rng.random_range(-b..b)).collect();
                }
                return vec![0.0; n];
            }
            if name.starts_with("mask_tokens") {
                return trunc_normal(&mut rng, n, 0.02, -0.02, 0.02);
            }
            if name.ends_with(".gamma") {
                return vec![1e-6; n];
            }
            if s.shape.len() == 1 {
                // Norm weights (BN zero-init for the last BN of a ResNet branch).
                let v = if name.starts_with("sparse_encoder") && is_last_bn(name, specs) { 0.0 } else { 1.0 };
                return vec![v; n];
            }
            let convnext = specs.iter().any(|o| o.name.contains("downsample_layers"));
            if name.starts_with("densify_projs") {
                // kaiming_uniform(a=√5) = U(±1/√fan_in)
                let fan_in: usize = s.shape[1..].iter().product();
                let b = 1.0 / (fan_in as f32).sqrt();
                return (0..n).map(|_| rng.random_range(-b..b)).collect();
            }
            if name.contains("up_sample") || (name.starts_with("sparse_encoder") && !convnext) {
                // kaiming_normal(fan_out, relu): std = √2 / √fan_out. ConvTranspose2d
                // weights are [in, out, k, k] and PyTorch's fan_out there is in·k·k.
                let fan_out = if name.contains("up_sample") {
                    s.shape[0] * s.shape[2] * s.shape[3]
                } else {
                    s.shape[0] * s.shape[2..].iter().product::<usize>()
                };
                return normal(&mut rng, n, (2.0 / fan_out as f64).sqrt());
            }
            trunc_normal(&mut rng, n, 0.02, -2.0, 2.0)
        })
        .collect()
}
