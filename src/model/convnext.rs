//! Official ConvNeXt as a sparse encoder (`sparse_encoder.sp_cnn.downsample_layers…`,
//! `…stages…`).
//!
//! Stem: 4×4/4 conv with bias + channels-first LayerNorm; between stages LayerNorm +
//! 2×2/2 conv. Block: 7×7 depthwise conv (bias) → LayerNorm (eps 1e-6) → Linear(4·dim)
//! → exact GELU → Linear(dim) → ×gamma → residual. Every LayerNorm is per site, so on
//! channels-last rows all of them are the same op.

use anyhow::Result;

use super::{declare_conv, declare_linear, trunc_normal};
use crate::graph::nodes::ConvIds;
use crate::graph::{Graph, Init, ParamId, ParamRegistry, Var};
use crate::ops::activation::Activation;
use crate::sparse::Window;

const PREFIX: &str = "sparse_encoder.sp_cnn";
pub const LN_EPS: f32 = 1e-6;
/// The official `layer_scale_init_value`: every block's gamma starts here.
const LAYER_SCALE_INIT: f32 = 1e-6;

struct Ln {
    weight: ParamId,
    bias: ParamId,
}

fn declare_ln(reg: &mut ParamRegistry, prefix: &str, c: usize) -> Ln {
    Ln {
        weight: reg.trainable(format!("{prefix}.weight"), &[c], Init::ONE),
        bias: reg.trainable(format!("{prefix}.bias"), &[c], Init::ZERO),
    }
}

struct Block {
    dwconv: ConvIds,
    norm: Ln,
    pwconv1: ConvIds,
    pwconv2: ConvIds,
    gamma: ParamId,
    drop_path: f64,
}

pub struct ConvNeXt {
    dims: Vec<usize>,
    stem: (ConvIds, Ln),
    downsample: Vec<(Ln, ConvIds)>,
    stages: Vec<Vec<Block>>,
}

/// The drop probability of every block in network order, given the network rate `rate`
/// (SparK `pretrain/models/convnext.py`):
/// `dp_rates = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]`.
/// torch.linspace runs in f32 (the default dtype): `step = (end - start) / (steps - 1)`,
/// `start + step * i` for the first half of the indices (`i < steps / 2`) and
/// `end - step * (steps - i - 1)` for the rest; `.item()` returns that f32 exactly, which is
/// reproduced here. A one-block net gets 0.
pub(super) fn block_rates(rate: f64, blocks_per_stage: &[usize]) -> Vec<f64> {
    let n: usize = blocks_per_stage.iter().sum();
    if n <= 1 {
        return vec![0.0; n];
    }
    let (start, end) = (0.0f32, rate as f32);
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n).map(|i| if i < halfway { start + step * i as f32 } else { end - step * (n - i - 1) as f32 } as f64).collect()
}

impl ConvNeXt {
    /// `drop_path_rate`: the network's rate, spread linearly over the blocks (official).
    pub fn declare(reg: &mut ParamRegistry, depths: &[usize], dims: &[usize], drop_path_rate: f64) -> Self {
        let rates = block_rates(drop_path_rate, depths);
        let mut block_index = 0;
        let stem = (
            declare_conv(reg, &format!("{PREFIX}.downsample_layers.0.0"), 3, dims[0], 4, false, trunc_normal, Some(Init::ZERO)),
            declare_ln(reg, &format!("{PREFIX}.downsample_layers.0.1"), dims[0]),
        );
        let mut downsample = vec![];
        for i in 1..dims.len() {
            let p = format!("{PREFIX}.downsample_layers.{i}");
            downsample.push((
                declare_ln(reg, &format!("{p}.0"), dims[i - 1]),
                declare_conv(reg, &format!("{p}.1"), dims[i - 1], dims[i], 2, false, trunc_normal, Some(Init::ZERO)),
            ));
        }
        let mut stages = vec![];
        for (i, (&n, &d)) in depths.iter().zip(dims).enumerate() {
            let blocks = (0..n)
                .map(|j| {
                    let p = format!("{PREFIX}.stages.{i}.{j}");
                    let dwconv = ConvIds {
                        weight: reg.trainable(format!("{p}.dwconv.weight"), &[d, 1, 7, 7], Init::TRUNC_NORMAL),
                        bias: Some(reg.trainable(format!("{p}.dwconv.bias"), &[d], Init::ZERO)),
                    };
                    Block {
                        dwconv,
                        norm: declare_ln(reg, &format!("{p}.norm"), d),
                        pwconv1: declare_linear(reg, &format!("{p}.pwconv1"), d, 4 * d),
                        pwconv2: declare_linear(reg, &format!("{p}.pwconv2"), 4 * d, d),
                        gamma: reg.trainable(format!("{p}.gamma"), &[d], Init::Constant(LAYER_SCALE_INIT)),
                        drop_path: {
                            block_index += 1;
                            rates[block_index - 1]
                        },
                    }
                })
                .collect();
            stages.push(blocks);
        }
        Self { dims: dims.to_vec(), stem, downsample, stages }
    }

    pub fn forward(&self, g: &mut Graph, x: Var, input_size: usize) -> Result<Vec<Var>> {
        let mut res = input_size / 4;
        let set = g.set(res, res, true);
        let mut x = g.conv(x, set, self.stem.0, self.dims[0], Window::new(4, 4, 0), false)?;
        x = g.layernorm(x, self.stem.1.weight, self.stem.1.bias, LN_EPS)?;
        let mut feats = vec![];
        for (i, blocks) in self.stages.iter().enumerate() {
            if i > 0 {
                let (ln, conv) = &self.downsample[i - 1];
                x = g.layernorm(x, ln.weight, ln.bias, LN_EPS)?;
                res /= 2;
                let set = g.set(res, res, true);
                x = g.conv(x, set, *conv, self.dims[i], Window::new(2, 2, 0), false)?;
            }
            for b in blocks {
                x = self.block(g, b, x, self.dims[i])?;
            }
            feats.push(x);
        }
        Ok(feats)
    }

    fn block(&self, g: &mut Graph, b: &Block, x: Var, d: usize) -> Result<Var> {
        let set = g.set_of(x);
        let pointwise = Window::new(1, 1, 0);
        let mut h = g.dwconv(x, b.dwconv, Window::new(7, 1, 3))?;
        h = g.layernorm(h, b.norm.weight, b.norm.bias, LN_EPS)?;
        h = g.conv(h, set, b.pwconv1, 4 * d, pointwise, false)?;
        h = g.activation(h, Activation::Gelu)?;
        h = g.conv(h, set, b.pwconv2, d, pointwise, false)?;
        h = g.channel_scale(h, b.gamma)?;
        let h = g.drop_path(h, b.drop_path)?;
        g.add(x, h)
    }
}
