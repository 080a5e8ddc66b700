//! SparK's LightDecoder (`dense_decoder.…`): five UNet blocks of widths
//! `width / 2^i`, each ConvTranspose 4×4/2 (padding 1, bias) → 3×3 conv → BN → ReLU6 →
//! 3×3 conv → BN, then a 1×1 projection to RGB. Ordinary (dense) training-mode BN.

use anyhow::Result;

use super::{declare_bn, declare_conv, trunc_normal};
use crate::graph::nodes::{BnIds, ConvIds};
use crate::graph::{Graph, Init, ParamRegistry, Var};
use crate::ops::activation::Activation;
use crate::sparse::Window;

pub const BLOCKS: usize = 5;

struct UNetBlock {
    cin: usize,
    cout: usize,
    up_sample: ConvIds,
    conv0: ConvIds,
    bn1: BnIds,
    conv3: ConvIds,
    bn4: BnIds,
}

pub struct LightDecoder {
    blocks: Vec<UNetBlock>,
    proj: ConvIds,
}

impl LightDecoder {
    pub fn declare(reg: &mut ParamRegistry, width: usize) -> Self {
        let widths: Vec<usize> = (0..=BLOCKS).map(|i| width >> i).collect();
        let blocks = (0..BLOCKS)
            .map(|i| {
                let (cin, cout) = (widths[i], widths[i + 1]);
                let p = format!("dense_decoder.dec.{i}");
                UNetBlock {
                    cin,
                    cout,
                    up_sample: declare_conv(
                        reg,
                        &format!("{p}.up_sample"),
                        cin,
                        cin,
                        4,
                        true,
                        Init::kaiming_conv_transposed,
                        Some(Init::ZERO),
                    ),
                    conv0: declare_conv(reg, &format!("{p}.conv.0"), cin, cin, 3, false, trunc_normal, None),
                    bn1: declare_bn(reg, &format!("{p}.conv.1"), cin, Init::ONE),
                    conv3: declare_conv(reg, &format!("{p}.conv.3"), cin, cout, 3, false, trunc_normal, None),
                    bn4: declare_bn(reg, &format!("{p}.conv.4"), cout, Init::ONE),
                }
            })
            .collect();
        let proj = declare_conv(reg, "dense_decoder.proj", widths[BLOCKS], 3, 1, false, trunc_normal, Some(Init::ZERO));
        Self { blocks, proj }
    }

    /// `to_dec[i]`: dense maps, smallest first (added before blocks 0..to_dec.len()).
    pub fn forward(&self, g: &mut Graph, to_dec: &[Var]) -> Result<Var> {
        let mut x = to_dec[0];
        for (i, b) in self.blocks.iter().enumerate() {
            if i > 0 && i < to_dec.len() {
                x = g.add(x, to_dec[i])?;
            }
            let set = g.set_of(x);
            let (h, w) = (g.stage(set).h, g.stage(set).w);
            let up = g.set(2 * h, 2 * w, false);
            let three = Window::new(3, 1, 1);
            x = g.conv(x, up, b.up_sample, b.cin, Window::new(4, 2, 1), true)?;
            x = g.conv(x, up, b.conv0, b.cin, three, false)?;
            x = g.batchnorm(x, b.bn1)?;
            x = g.activation(x, Activation::Relu6)?;
            x = g.conv(x, up, b.conv3, b.cout, three, false)?;
            x = g.batchnorm(x, b.bn4)?;
        }
        let set = g.set_of(x);
        g.conv(x, set, self.proj, 3, Window::new(1, 1, 0), false)
    }
}
