//! Graph nodes: each forward op records its dispatches and its backward closure.

use anyhow::Result;

use super::{Graph, ParamId, SetId, Var};
use crate::ops::activation::{Activation, activation_backward, activation_forward};
use crate::ops::batchnorm::{BnTensors, batchnorm_backward_synced, batchnorm_eval_forward, batchnorm_train_forward_synced};
use crate::ops::conv::{ConvShape, WeightLayout, conv_data_grad, conv_forward, conv_weight_grad};
use crate::ops::densify::{scatter_rows, scatter_rows_backward};
use crate::ops::depthwise::{dw_data_grad, dw_forward, dw_weight_grad};
use crate::ops::drop_path::{drop_path_backward, drop_path_forward};
use crate::ops::elementwise::{add, channel_scale_backward, channel_scale_forward, copy_or_add};
use crate::ops::layernorm::{layernorm_backward, layernorm_forward};
use crate::ops::maxpool::{maxpool_backward, maxpool_forward};
use crate::sparse::Window;

/// The parameters of one BatchNorm (official names `<prefix>.weight`, `.bias`,
/// `.running_mean`, `.running_var`, `.num_batches_tracked`).
#[derive(Clone, Copy, Debug)]
pub struct BnIds {
    pub weight: ParamId,
    pub bias: ParamId,
    pub running_mean: ParamId,
    pub running_var: ParamId,
    pub num_batches_tracked: ParamId,
}

/// Convolution weights: Conv2d `[cout, cin, kh, kw]` or ConvTranspose2d `[cin, cout, kh, kw]`.
#[derive(Clone, Copy, Debug)]
pub struct ConvIds {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
}

pub const BN_EPS: f32 = 1e-5;

/// Attribute an op's floating-point work to its first (main) dispatch, for GFLOP/s
/// reports; the helper dispatches (re-layouts, reductions) count as overhead.
fn with_flops(mut d: Vec<crate::gpu::Dispatch>, flops: u64) -> Vec<crate::gpu::Dispatch> {
    // The main kernel is the first one that is neither a re-layout nor a reduction.
    let main = d.iter().position(|x| !x.kernel.name.contains("relayout") && !x.kernel.name.contains("reduce")).unwrap_or(0);
    if let Some(m) = d.get_mut(main) {
        m.flops = flops;
    }
    d
}

fn labelled(mut d: Vec<crate::gpu::Dispatch>, label: String) -> Vec<crate::gpu::Dispatch> {
    for x in &mut d {
        x.label = label.clone();
    }
    d
}
pub const BN_MOMENTUM: f32 = 0.1;

impl Graph<'_> {
    /// Gather convolution from `x`'s set to `out_set` (sparse or dense; `transposed` for
    /// ConvTranspose2d). Weight layout follows PyTorch.
    pub fn conv(&mut self, x: Var, out_set: SetId, p: ConvIds, cout: usize, win: Window, transposed: bool) -> Result<Var> {
        let cin = self.channels(x);
        let taps = win.taps();
        let (map, inv) = self.maps(self.set_of(x), out_set, win, transposed);
        let layout = if transposed { WeightLayout::iohw(cin, cout, taps) } else { WeightLayout::oihw(cin, cout, taps) };
        let y = self.push_var(out_set, cout, true);
        let s = ConvShape { rows_in: self.rows(x), rows_out: self.rows(y), cin, cout, taps };
        let (w, b) = (self.params.tensor(p.weight), p.bias.map(|b| self.params.tensor(b)));
        let (xt, yt) = (self.tensor(x).clone(), self.tensor(y).clone());
        let flops = 2 * (s.rows_out * taps * cin * cout) as u64;
        let d = conv_forward(self.ctx, &xt, &map, &w, layout, b.as_ref(), &yt, s, false)?;
        let name = format!("{} {}x{} {}->{} rows {}", self.params.spec(p.weight).name, win.kh, win.kw, cin, cout, s.rows_out);
        self.forward.extend(labelled(with_flops(d, flops), format!("fwd {name}")));
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            let dw = g.params.grad(p.weight);
            let db = p.bias.map(|b| g.params.grad(b));
            let d = conv_weight_grad(g.ctx, &xt, &map, &dy, &dw, layout, db.as_ref(), s)?;
            g.backward.extend(labelled(with_flops(d, flops), format!("wgrad {name}")));
            if let Some((dx, acc)) = g.grad_in(x) {
                let d = conv_data_grad(g.ctx, &dy, &inv, &w, layout, &dx, s, acc)?;
                g.backward.extend(labelled(with_flops(d, flops), format!("dgrad {name}")));
            }
            Ok(())
        });
        Ok(y)
    }

    /// Depthwise convolution (weight `[C, 1, kh, kw]`, stride 1) within `x`'s set.
    pub fn dwconv(&mut self, x: Var, p: ConvIds, win: Window) -> Result<Var> {
        let c = self.channels(x);
        let set = self.set_of(x);
        let (map, inv) = self.maps(set, set, win, false);
        let taps = win.taps();
        let y = self.push_var(set, c, true);
        let rows = self.rows(x);
        let (w, b) = (self.params.tensor(p.weight), p.bias.map(|b| self.params.tensor(b)));
        let (xt, yt) = (self.tensor(x).clone(), self.tensor(y).clone());
        let flops = 2 * (rows * taps * c) as u64;
        self.forward.extend(with_flops(dw_forward(self.ctx, &xt, &map, &w, b.as_ref(), &yt, rows, c, taps)?, flops));
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            let dw = g.params.grad(p.weight);
            let db = p.bias.map(|b| g.params.grad(b));
            let d = dw_weight_grad(g.ctx, &xt, &map, &dy, &dw, db.as_ref(), rows, c, taps)?;
            g.backward.extend(d);
            if let Some((dx, acc)) = g.grad_in(x) {
                g.backward.extend(dw_data_grad(g.ctx, &dy, &inv, &w, &dx, rows, c, taps, acc)?);
            }
            Ok(())
        });
        Ok(y)
    }

    /// BatchNorm over the rows of `x` (sparse: visible sites of the batch; dense: all).
    pub fn batchnorm(&mut self, x: Var, p: BnIds) -> Result<Var> {
        let c = self.channels(x);
        let rows = self.rows(x);
        let y = self.push_var(self.set_of(x), c, true);
        let (xt, yt) = (self.tensor(x).clone(), self.tensor(y).clone());
        let gamma = self.params.tensor(p.weight);
        let beta = self.params.tensor(p.bias);
        let rm = self.params.tensor(p.running_mean);
        let rv = self.params.tensor(p.running_var);
        if !self.train {
            self.forward.extend(batchnorm_eval_forward(self.ctx, &xt, &yt, &gamma, &beta, &rm, &rv, rows, c, BN_EPS)?);
            return Ok(y);
        }
        self.bn_counters.push(p.num_batches_tracked);
        let save_mean = self.ctx.zeros(c);
        let save_invstd = self.ctx.zeros(c);
        let t = BnTensors {
            gamma: &gamma,
            beta: &beta,
            running_mean: &rm,
            running_var: &rv,
            save_mean: &save_mean,
            save_invstd: &save_invstd,
        };
        let world = self.sync_bn_world;
        let (d, sums) = batchnorm_train_forward_synced(self.ctx, &xt, &yt, &t, rows, c, world, BN_EPS, BN_MOMENTUM)?;
        let base = self.forward.len();
        self.forward.extend(d);
        self.note_host_points(super::Pass::Forward, base, sums);
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            let (dgamma, dbeta) = (g.params.grad(p.weight), g.params.grad(p.bias));
            // The data gradient always exists here (BN never sees the input image), but the
            // kernel needs a target either way.
            let (dx, acc) = g.grad_in(x).unwrap_or_else(|| (g.ctx.zeros(rows * c), false));
            let (d, sums) = batchnorm_backward_synced(
                g.ctx, &xt, &dy, &gamma, &save_mean, &save_invstd, &dx, &dgamma, &dbeta, rows, c, world, acc,
            )?;
            let base = g.backward.len();
            g.backward.extend(d);
            g.note_host_points(super::Pass::Backward, base, sums);
            Ok(())
        });
        Ok(y)
    }

    /// LayerNorm over the channels of every row (ConvNeXt; channels-first LN on NCHW is
    /// the same computation in channels-last).
    pub fn layernorm(&mut self, x: Var, weight: ParamId, bias: ParamId, eps: f32) -> Result<Var> {
        let c = self.channels(x);
        let rows = self.rows(x);
        let y = self.push_var(self.set_of(x), c, true);
        let (xt, yt) = (self.tensor(x).clone(), self.tensor(y).clone());
        let (gamma, beta) = (self.params.tensor(weight), self.params.tensor(bias));
        let (mean, invstd) = (self.ctx.zeros(rows), self.ctx.zeros(rows));
        self.forward.extend(layernorm_forward(self.ctx, &xt, &gamma, &beta, &yt, &mean, &invstd, rows, c, eps)?);
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            let (dgamma, dbeta) = (g.params.grad(weight), g.params.grad(bias));
            let (dx, acc) = g.grad_in(x).unwrap_or_else(|| (g.ctx.zeros(rows * c), false));
            let d = layernorm_backward(g.ctx, &xt, &dy, &gamma, &mean, &invstd, &dx, &dgamma, &dbeta, rows, c, acc)?;
            g.backward.extend(d);
            Ok(())
        });
        Ok(y)
    }

    pub fn activation(&mut self, x: Var, act: Activation) -> Result<Var> {
        let c = self.channels(x);
        let n = self.rows(x) * c;
        let y = self.push_var(self.set_of(x), c, true);
        let (xt, yt) = (self.tensor(x).clone(), self.tensor(y).clone());
        self.forward.extend(activation_forward(self.ctx, act, &xt, &yt, n)?);
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            if let Some((dx, acc)) = g.grad_in(x) {
                g.backward.extend(activation_backward(g.ctx, act, &xt, &dy, &dx, n, acc)?);
            }
            Ok(())
        });
        Ok(y)
    }

    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        assert_eq!(self.set_of(a), self.set_of(b), "add of tensors on different sets");
        assert_eq!(self.channels(a), self.channels(b), "add of tensors with different widths");
        let c = self.channels(a);
        let n = self.rows(a) * c;
        let y = self.push_var(self.set_of(a), c, true);
        let (at, bt, yt) = (self.tensor(a).clone(), self.tensor(b).clone(), self.tensor(y).clone());
        self.forward.extend(add(self.ctx, &at, &bt, &yt, n)?);
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            for v in [a, b] {
                if let Some((dx, acc)) = g.grad_in(v) {
                    g.backward.extend(copy_or_add(g.ctx, &dy, &dx, n, acc)?);
                }
            }
            Ok(())
        });
        Ok(y)
    }

    /// `y = x · gamma[c]` (ConvNeXt layer scale).
    pub fn channel_scale(&mut self, x: Var, gamma: ParamId) -> Result<Var> {
        let c = self.channels(x);
        let rows = self.rows(x);
        let y = self.push_var(self.set_of(x), c, true);
        let (xt, yt) = (self.tensor(x).clone(), self.tensor(y).clone());
        let gt = self.params.tensor(gamma);
        self.forward.extend(channel_scale_forward(self.ctx, &xt, &gt, &yt, rows, c)?);
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            let dgamma = g.params.grad(gamma);
            let (dx, acc) = g.grad_in(x).unwrap_or_else(|| (g.ctx.zeros(rows * c), false));
            g.backward.extend(channel_scale_backward(g.ctx, &xt, &gt, &dy, &dx, &dgamma, rows, c, acc)?);
            Ok(())
        });
        Ok(y)
    }

    /// Max-pooling from `x`'s set to `out_set`.
    pub fn maxpool(&mut self, x: Var, out_set: SetId, win: Window) -> Result<Var> {
        let c = self.channels(x);
        let (map, inv) = self.maps(self.set_of(x), out_set, win, false);
        let y = self.push_var(out_set, c, true);
        let (rows_in, rows_out, taps) = (self.rows(x), self.rows(y), win.taps());
        let (xt, yt) = (self.tensor(x).clone(), self.tensor(y).clone());
        let argmax = self.ctx.zeros(rows_out * c);
        self.forward.extend(maxpool_forward(self.ctx, &xt, &map, &yt, &argmax, rows_out, c, taps)?);
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            if let Some((dx, acc)) = g.grad_in(x) {
                g.backward.extend(maxpool_backward(g.ctx, &dy, &inv, &argmax, &dx, rows_in, c, taps, acc)?);
            }
            Ok(())
        });
        Ok(y)
    }

    /// SparK's densify fill: scatter the rows of sparse `x` into the dense map of the same
    /// resolution, the mask token at every masked site.
    pub fn fill_masked(&mut self, x: Var, token: ParamId) -> Result<Var> {
        let c = self.channels(x);
        let sparse = self.set_of(x);
        let (h, w) = (self.stage(sparse).h, self.stage(sparse).w);
        let dense = self.set(h, w, false);
        let y = self.push_var(dense, c, true);
        let sites = self.rows(y);
        let rows = self.rows(x);
        let (row_of, site_of_row) = (self.stage(sparse).row_of.clone(), self.stage(sparse).site_of_row.clone());
        let (xt, yt) = (self.tensor(x).clone(), self.tensor(y).clone());
        let tok = self.params.tensor(token);
        self.forward.extend(scatter_rows(self.ctx, &xt, &row_of, &tok, &yt, sites, c)?);
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            let dtok = g.params.grad(token);
            let (dx, acc) = g.grad_in(x).unwrap_or_else(|| (g.ctx.zeros(rows * c), false));
            g.backward.extend(scatter_rows_backward(g.ctx, &dy, &row_of, &site_of_row, &dx, &dtok, sites, rows, c, acc)?);
            Ok(())
        });
        Ok(y)
    }

    /// Stochastic depth on a residual branch: each image's rows scaled by 0 or 1/(1−p).
    /// Identity (no node) in evaluation graphs and at p = 0. The per-image scales are
    /// written each step by `set_drop_path_step`.
    pub fn drop_path(&mut self, x: Var, p: f64) -> Result<Var> {
        if !self.train || p <= 0.0 {
            return Ok(x);
        }
        let c = self.channels(x);
        let rows = self.rows(x);
        let rows_per_image = rows / self.batch;
        let y = self.push_var(self.set_of(x), c, true);
        let scale = self.ctx.upload(&vec![1f32; self.batch]);
        self.drop_paths.push((scale.clone(), p));
        let (xt, yt) = (self.tensor(x).clone(), self.tensor(y).clone());
        self.forward.extend(drop_path_forward(self.ctx, &xt, &scale, &yt, rows, c, rows_per_image)?);
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            if let Some((dx, acc)) = g.grad_in(x) {
                g.backward.extend(drop_path_backward(g.ctx, &dy, &scale, &dx, rows, c, rows_per_image, acc)?);
            }
            Ok(())
        });
        Ok(y)
    }
}
