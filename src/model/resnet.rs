//! timm ResNet as a sparse encoder (parameter names `sparse_encoder.sp_cnn.…`).
//!
//! Stem: 7×7/2 conv (no bias, width 64: timm's default stem ignores `stem_width`), BN,
//! ReLU, 3×3/2 max-pool with padding 1. Stages of BasicBlocks or Bottlenecks (the stride
//! of a Bottleneck sits on its 3×3 conv); a 1×1 conv + BN shortcut wherever the stride
//! or the width changes. Feature maps: the outputs of the four stages.

use anyhow::Result;

use super::{declare_bn, declare_conv};
use crate::graph::nodes::{BnIds, ConvIds};
use crate::graph::{Graph, Init, ParamRegistry, SetId, Var};
use crate::ops::activation::Activation;
use crate::sparse::Window;

const STEM_WIDTH: usize = 64;
const PREFIX: &str = "sparse_encoder.sp_cnn";

struct Block {
    stride: usize,
    cout: usize,
    /// (conv, bn) pairs in order: 2 for BasicBlock, 3 for Bottleneck.
    convs: Vec<(ConvIds, BnIds, usize /*k*/, usize /*cout*/)>,
    downsample: Option<(ConvIds, BnIds)>,
    /// Stochastic depth rate of this block's residual branch.
    drop_path: f64,
}

pub struct ResNet {
    conv1: ConvIds,
    bn1: BnIds,
    stages: Vec<Vec<Block>>,
}

/// The drop probability of every residual block in network order, given the network rate
/// `rate` (timm `timm/models/resnet.py`, `make_blocks`), with `net_block_idx` counting
/// blocks over the whole network and `net_num_blocks = sum(block_repeats)`:
/// `block_dpr = drop_path_rate * net_block_idx / (net_num_blocks - 1)  # stochastic depth
/// linear decay rule`, evaluated left to right in f64 as Python does. The first block gets
/// 0 and so no DropPath at all (`DropPath(block_dpr) if block_dpr > 0. else None`). A
/// one-block net (a division by zero in timm) gets 0.
pub(super) fn block_rates(rate: f64, blocks_per_stage: &[usize]) -> Vec<f64> {
    let n: usize = blocks_per_stage.iter().sum();
    if n <= 1 {
        return vec![0.0; n];
    }
    (0..n).map(|i| rate * i as f64 / (n - 1) as f64).collect()
}

impl ResNet {
    /// `drop_path_rate`: the network's rate, spread over the blocks as timm does.
    pub fn declare(reg: &mut ParamRegistry, bottleneck: bool, layers: &[usize], channels: &[usize], drop_path_rate: f64) -> Self {
        let rates = block_rates(drop_path_rate, layers);
        let mut block_index = 0;
        let conv1 = declare_conv(reg, &format!("{PREFIX}.conv1"), 3, STEM_WIDTH, 7, false, Init::kaiming_conv, None);
        let bn1 = declare_bn(reg, &format!("{PREFIX}.bn1"), STEM_WIDTH, Init::ONE);
        let expansion = if bottleneck { 4 } else { 1 };
        let mut inplanes = STEM_WIDTH;
        let mut stages = vec![];
        for (i, (&n, &planes)) in layers.iter().zip(channels).enumerate() {
            let mut blocks = vec![];
            for j in 0..n {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let p = format!("{PREFIX}.layer{}.{j}", i + 1);
                let cout = planes * expansion;
                let mut convs = vec![];
                let plan: Vec<(usize, usize, usize)> = if bottleneck {
                    vec![(inplanes, planes, 1), (planes, planes, 3), (planes, cout, 1)]
                } else {
                    vec![(inplanes, planes, 3), (planes, cout, 3)]
                };
                for (k, &(ci, co, ks)) in plan.iter().enumerate() {
                    let conv = declare_conv(reg, &format!("{p}.conv{}", k + 1), ci, co, ks, false, Init::kaiming_conv, None);
                    // timm's `zero_init_last`: the last BN of every residual branch starts at 0.
                    let last = k + 1 == plan.len();
                    let bn = declare_bn(reg, &format!("{p}.bn{}", k + 1), co, if last { Init::ZERO } else { Init::ONE });
                    convs.push((conv, bn, ks, co));
                }
                let downsample = (stride != 1 || inplanes != cout).then(|| {
                    (
                        declare_conv(reg, &format!("{p}.downsample.0"), inplanes, cout, 1, false, Init::kaiming_conv, None),
                        declare_bn(reg, &format!("{p}.downsample.1"), cout, Init::ONE),
                    )
                });
                blocks.push(Block { stride, cout, convs, downsample, drop_path: rates[block_index] });
                block_index += 1;
                inplanes = cout;
            }
            stages.push(blocks);
        }
        Self { conv1, bn1, stages }
    }

    /// `x`: visible input pixels (sparse set at the input resolution, 3 channels).
    /// Returns the four stage outputs.
    pub fn forward(&self, g: &mut Graph, x: Var, input_size: usize) -> Result<Vec<Var>> {
        let s2 = g.set(input_size / 2, input_size / 2, true);
        let mut res = input_size / 4;
        let s4 = g.set(res, res, true);
        let mut x = g.conv(x, s2, self.conv1, STEM_WIDTH, Window::new(7, 2, 3), false)?;
        x = g.batchnorm(x, self.bn1)?;
        x = g.activation(x, Activation::Relu)?;
        x = g.maxpool(x, s4, Window::new(3, 2, 1))?;
        let mut feats = vec![];
        for blocks in &self.stages {
            for b in blocks {
                if b.stride == 2 {
                    res /= 2;
                }
                let out_set = g.set(res, res, true);
                x = self.block(g, b, x, out_set)?;
            }
            feats.push(x);
        }
        Ok(feats)
    }

    fn block(&self, g: &mut Graph, b: &Block, x: Var, out_set: SetId) -> Result<Var> {
        let in_set = g.set_of(x);
        let n = b.convs.len();
        let mut h = x;
        for (i, &(conv, bn, k, co)) in b.convs.iter().enumerate() {
            // The stride sits on the first conv of a BasicBlock and on the 3×3 (middle)
            // conv of a Bottleneck.
            let strided = b.stride == 2 && if n == 3 { i == 1 } else { i == 0 };
            let set = if strided || g.set_of(h) == out_set { out_set } else { in_set };
            let win = Window::new(k, if strided { 2 } else { 1 }, k / 2);
            h = g.conv(h, set, conv, co, win, false)?;
            h = g.batchnorm(h, bn)?;
            if i + 1 < n {
                h = g.activation(h, Activation::Relu)?;
            }
        }
        let shortcut = match b.downsample {
            Some((conv, bn)) => {
                let s = g.conv(x, out_set, conv, b.cout, Window::new(1, b.stride, 0), false)?;
                g.batchnorm(s, bn)?
            }
            None => x,
        };
        let h = g.drop_path(h, b.drop_path)?;
        let y = g.add(h, shortcut)?;
        g.activation(y, Activation::Relu)
    }
}
