//! Graph nodes: each forward op records its dispatches and its backward closure.

use anyhow::Result;
use std::ops::Range;

use super::{Chunks, Graph, ParamId, SetId, Var};
use crate::gpu::GpuTensor;
use crate::ops::activation::{Activation, activation_backward, activation_forward};
use crate::ops::batchnorm::{
    BnSavedTensors, BnTensors, batchnorm_apply, batchnorm_backward_synced, batchnorm_eval_forward, batchnorm_train_forward_synced,
};
use crate::ops::conv::{ConvShape, WeightLayout, conv_data_grad, conv_forward, conv_weight_grad, defer_tuning};
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
    /// `<prefix>.weight` (γ).
    pub weight: ParamId,
    /// `<prefix>.bias` (β).
    pub bias: ParamId,
    /// `<prefix>.running_mean`.
    pub running_mean: ParamId,
    /// `<prefix>.running_var`.
    pub running_var: ParamId,
    /// `<prefix>.num_batches_tracked` (a host counter).
    pub num_batches_tracked: ParamId,
}

/// Convolution weights: Conv2d `[cout, cin, kh, kw]` or ConvTranspose2d `[cin, cout, kh, kw]`.
#[derive(Clone, Copy, Debug)]
pub struct ConvIds {
    /// `<prefix>.weight`.
    pub weight: ParamId,
    /// `<prefix>.bias`, if the conv has one.
    pub bias: Option<ParamId>,
}

/// BatchNorm's epsilon (PyTorch's default).
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
/// The most multiply-adds per output element for which a conv output is recomputed in
/// the backward rather than kept (the up-samplings: `cin × taps`). Measured on
/// SparK-ResNet-50 224² batch 8, decoder width 768 (lavapipe): recomputing every block's
/// up-sampling saved 142 MiB of the step's peak for 2.4 s of a 33 s step; the two
/// finest blocks (48 × 16 and 96 × 16) hold 110 MiB of that peak for 0.9 s, the three
/// coarser ones 32 MiB for 1.4 s.
pub const RECOMPUTE_MACS_PER_ELEMENT: usize = 2048;

/// BatchNorm's running-statistics momentum (PyTorch's default).
pub const BN_MOMENTUM: f32 = 0.1;

/// What an op that keeps its input's set and width starts from: the width, the set, its
/// rows (all and per image), the op's chunking, the output and both tensors.
struct RowOp {
    c: usize,
    set: SetId,
    rows: usize,
    per: usize,
    ch: Chunks,
    y: Var,
    xt: GpuTensor,
    yt: GpuTensor,
}

impl Graph<'_> {
    /// Start an op from `x` to a new output of the same set and width, chunked for its
    /// `[rows, c]` tensors and side tensors `[rows, w]` for each `w` of `side_widths`.
    fn row_op(&mut self, x: Var, side_widths: &[usize]) -> RowOp {
        let (c, set) = (self.channels(x), self.set_of(x));
        let parts: Vec<_> = std::iter::once(c).chain(side_widths.iter().copied()).map(|w| (set, w)).collect();
        let ch = self.chunks_for(&parts);
        let y = self.push_var(set, c, true);
        let (xt, yt) = (self.tensor(x).clone(), self.tensor(y).clone());
        RowOp { c, set, rows: self.rows(x), per: self.rows_per_image(set), ch, y, xt, yt }
    }
}

impl Graph<'_> {
    /// Gather convolution from `x`'s set to `out_set` (sparse or dense; `transposed` for
    /// ConvTranspose2d). Weight layout follows PyTorch.
    pub fn conv(&mut self, x: Var, out_set: SetId, p: ConvIds, cout: usize, win: Window, transposed: bool) -> Result<Var> {
        let cin = self.channels(x);
        let taps = win.taps();
        let from = self.set_of(x);
        let ch = self.chunks_for(&[(from, cin), (out_set, cout), (out_set, taps), (from, taps)]);
        let (map, inv) = self.maps(from, out_set, win, transposed, ch);
        let layout = if transposed { WeightLayout::iohw(cin, cout, taps) } else { WeightLayout::oihw(cin, cout, taps) };
        let y = self.push_var(out_set, cout, true);
        let s = ConvShape { rows_in: self.rows(x), rows_out: self.rows(y), cin, cout, taps };
        let (per_in, per_out) = (self.rows_per_image(from), self.rows_per_image(out_set));
        let shape = move |r: &Range<usize>| ConvShape { rows_in: per_in * r.len(), rows_out: per_out * r.len(), ..s };
        if ch.is_whole() {
            // (chunked nodes keep the fixed rule: their per-chunk problems are not queued)
            let dgrad = self.train && self.vars[x.0].needs_grad;
            defer_tuning(self.ctx, s, || (self.active_set(from), self.active_set(out_set)), win, transposed, p.bias.is_some(), self.train, dgrad);
        }
        let (w, b) = (self.params.tensor(p.weight), p.bias.map(|b| self.params.tensor(b)));
        let flops = 2 * (s.rows_out * taps * cin * cout) as u64;
        // The forward's dispatches from an input to an output tensor: run here, and again
        // in the backward when the output is recomputed.
        let run = {
            let (w, b, map) = (w.clone(), b.clone(), map.clone());
            move |g: &Graph, xt: &GpuTensor, yt: &GpuTensor| {
                let d = g.per_chunk(ch, |g, r| {
                    let (xv, mv, yv) = (g.view(xt, from, cin, r), g.view(&map, out_set, taps, r), g.view(yt, out_set, cout, r));
                    conv_forward(g.ctx, &xv, &mv, &w, layout, b.as_ref(), &yv, shape(r), false)
                })?;
                Ok(with_flops(d, flops))
            }
        };
        let d = run(self, self.tensor(x), self.tensor(y))?;
        let name = format!("{} {}x{} {}->{} rows {}", self.params.spec(p.weight).name, win.kh, win.kw, cin, cout, s.rows_out);
        self.forward.extend(labelled(d, format!("fwd {name}")));
        if transposed && cin * taps <= RECOMPUTE_MACS_PER_ELEMENT {
            // A decoder's up-sampling keeps its input for its own weight gradient, and its
            // output is four times larger: recompute the output for the next conv's
            // weight gradient rather than hold it through the backward of the block
            // above, where the blocks are cheap per element kept (see
            // RECOMPUTE_MACS_PER_ELEMENT). The tuner's choice for the shape is fixed once
            // made, so the recomputation runs the same kernel.
            self.recomputable(y, &[x], move |g, inp, out| run(g, &inp[0], out));
        }
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            let xt = g.saved(x)?;
            let targets: Vec<_> = std::iter::once(g.params.grad(p.weight)).chain(p.bias.map(|b| g.params.grad(b))).collect();
            let d = g.per_chunk_summed(ch, &targets, |g, r, t| {
                let (xv, mv, dyv) = (g.view(&xt, from, cin, r), g.view(&map, out_set, taps, r), g.view(&dy, out_set, cout, r));
                conv_weight_grad(g.ctx, &xv, &mv, &dyv, &t[0], layout, t.get(1), shape(r))
            })?;
            g.backward.extend(labelled(with_flops(d, flops), format!("wgrad {name}")));
            if let Some((dx, acc)) = g.grad_in(x) {
                let d = g.per_chunk(ch, |g, r| {
                    let (dyv, iv, dxv) = (g.view(&dy, out_set, cout, r), g.view(&inv, from, taps, r), g.view(&dx, from, cin, r));
                    conv_data_grad(g.ctx, &dyv, &iv, &w, layout, &dxv, shape(r), acc)
                })?;
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
        let taps = win.taps();
        let ch = self.chunks_for(&[(set, c), (set, taps)]);
        let (map, inv) = self.maps(set, set, win, false, ch);
        let y = self.push_var(set, c, true);
        let (rows, per) = (self.rows(x), self.rows_per_image(set));
        let (w, b) = (self.params.tensor(p.weight), p.bias.map(|b| self.params.tensor(b)));
        let (xt, yt) = (self.tensor(x).clone(), self.tensor(y).clone());
        let flops = 2 * (rows * taps * c) as u64;
        let d = self.per_chunk(ch, |g, r| {
            let (xv, mv, yv) = (g.view(&xt, set, c, r), g.view(&map, set, taps, r), g.view(&yt, set, c, r));
            dw_forward(g.ctx, &xv, &mv, &w, b.as_ref(), &yv, per * r.len(), c, taps)
        })?;
        self.forward.extend(with_flops(d, flops));
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            let xt = g.saved(x)?;
            let targets: Vec<_> = std::iter::once(g.params.grad(p.weight)).chain(p.bias.map(|b| g.params.grad(b))).collect();
            let d = g.per_chunk_summed(ch, &targets, |g, r, t| {
                let (xv, mv, dyv) = (g.view(&xt, set, c, r), g.view(&map, set, taps, r), g.view(&dy, set, c, r));
                dw_weight_grad(g.ctx, &xv, &mv, &dyv, &t[0], t.get(1), per * r.len(), c, taps)
            })?;
            g.backward.extend(d);
            if let Some((dx, acc)) = g.grad_in(x) {
                let d = g.per_chunk(ch, |g, r| {
                    let (dyv, iv, dxv) = (g.view(&dy, set, c, r), g.view(&inv, set, taps, r), g.view(&dx, set, c, r));
                    dw_data_grad(g.ctx, &dyv, &iv, &w, &dxv, per * r.len(), c, taps, acc)
                })?;
                g.backward.extend(d);
            }
            Ok(())
        });
        Ok(y)
    }

    /// BatchNorm over the rows of `x` (sparse: visible sites of the batch; dense: all).
    pub fn batchnorm(&mut self, x: Var, p: BnIds) -> Result<Var> {
        let RowOp { c, set, rows, per, ch, y, xt, yt } = self.row_op(x, &[]);
        let gamma = self.params.tensor(p.weight);
        let beta = self.params.tensor(p.bias);
        let rm = self.params.tensor(p.running_mean);
        let rv = self.params.tensor(p.running_var);
        if !self.train {
            let d = self.per_chunk(ch, |g, r| {
                let (xv, yv) = (g.view(&xt, set, c, r), g.view(&yt, set, c, r));
                batchnorm_eval_forward(g.ctx, &xv, &yv, &gamma, &beta, &rm, &rv, per * r.len(), c, BN_EPS)
            })?;
            self.forward.extend(d);
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
        let views: Vec<_> = ch.ranges().map(|r| (self.view(&xt, set, c, &r), self.view(&yt, set, c, &r))).collect();
        let world = self.sync_bn_world;
        let (d, sums) = batchnorm_train_forward_synced(self.ctx, &views, &t, c, world, BN_EPS, BN_MOMENTUM)?;
        let base = self.forward.len();
        self.forward.extend(d);
        self.note_host_points(super::Pass::Forward, base, sums);
        // The backward keeps `x` for its own use, so `y` is one pass from it: recompute
        // it where a later op's backward needs it (a conv's weight gradient).
        let (rg, rb, rm, ri) = (gamma.clone(), beta.clone(), save_mean.clone(), save_invstd.clone());
        self.recomputable(y, &[x], move |g, inp, out| {
            g.per_chunk(ch, |g, r| batchnorm_apply(g.ctx, &g.view(&inp[0], set, c, r), &g.view(out, set, c, r), &rg, &rb, &rm, &ri, per * r.len(), c))
        });
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            let xt = g.saved(x)?;
            let (dgamma, dbeta) = (g.params.grad(p.weight), g.params.grad(p.bias));
            // The data gradient always exists here (BN never sees the input image), but the
            // kernel needs a target either way.
            let (dx, acc) = g.grad_in(x).unwrap_or_else(|| (g.ctx.zeros(rows * c), false));
            let views: Vec<_> = ch
                .ranges()
                .map(|r| (g.view(&xt, set, c, &r), g.view(&dy, set, c, &r), g.view(&dx, set, c, &r)))
                .collect();
            let saved = BnSavedTensors { gamma: &gamma, save_mean: &save_mean, save_invstd: &save_invstd };
            let (d, sums) = batchnorm_backward_synced(g.ctx, &views, &saved, &dgamma, &dbeta, c, world, acc)?;
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
        let RowOp { c, set, rows, per, ch, y, xt, yt } = self.row_op(x, &[1]);
        let (gamma, beta) = (self.params.tensor(weight), self.params.tensor(bias));
        let (mean, invstd) = (self.ctx.zeros(rows), self.ctx.zeros(rows));
        let d = self.per_chunk(ch, |g, r| {
            let (xv, yv) = (g.view(&xt, set, c, r), g.view(&yt, set, c, r));
            let (mv, iv) = (g.view(&mean, set, 1, r), g.view(&invstd, set, 1, r));
            layernorm_forward(g.ctx, &xv, &gamma, &beta, &yv, &mv, &iv, per * r.len(), c, eps)
        })?;
        self.forward.extend(d);
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            let xt = g.saved(x)?;
            let targets = [g.params.grad(weight), g.params.grad(bias)];
            let (dx, acc) = g.grad_in(x).unwrap_or_else(|| (g.ctx.zeros(rows * c), false));
            let d = g.per_chunk_summed(ch, &targets, |g, r, t| {
                let (xv, dyv, dxv) = (g.view(&xt, set, c, r), g.view(&dy, set, c, r), g.view(&dx, set, c, r));
                let (mv, iv) = (g.view(&mean, set, 1, r), g.view(&invstd, set, 1, r));
                layernorm_backward(g.ctx, &xv, &dyv, &gamma, &mv, &iv, &dxv, &t[0], &t[1], per * r.len(), c, acc)
            })?;
            g.backward.extend(d);
            Ok(())
        });
        Ok(y)
    }

    /// `act(x)` element-wise, and its gradient.
    pub fn activation(&mut self, x: Var, act: Activation) -> Result<Var> {
        let RowOp { c, set, per, ch, y, xt, yt, .. } = self.row_op(x, &[]);
        let n = per * c;
        // The forward's dispatches, also the recomputation's.
        let run = move |g: &Graph, xt: &GpuTensor, yt: &GpuTensor| {
            g.per_chunk(ch, |g, r| activation_forward(g.ctx, act, &g.view(xt, set, c, r), &g.view(yt, set, c, r), n * r.len()))
        };
        let d = run(self, &xt, &yt)?;
        self.forward.extend(d);
        // The gradient reads the output where it can, so that the input (a BatchNorm's
        // output, a residual sum) need not be kept. The output is recomputed in the
        // backward when the input is kept or recomputed anyway; from a residual sum (kept
        // only for this) it is cheaper to keep the output.
        let from = if act.grad_from_output() { y } else { x };
        if !act.grad_from_output() || self.is_recomputed(x) {
            self.recomputable(y, &[x], move |g, inp, out| run(g, &inp[0], out));
        }
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            if let Some((dx, acc)) = g.grad_in(x) {
                let vt = g.saved(from)?;
                let d = g.per_chunk(ch, |g, r| {
                    let (vv, dyv, dxv) = (g.view(&vt, set, c, r), g.view(&dy, set, c, r), g.view(&dx, set, c, r));
                    activation_backward(g.ctx, act, &vv, &dyv, &dxv, n * r.len(), acc)
                })?;
                g.backward.extend(d);
            }
            Ok(())
        });
        Ok(y)
    }

    /// `a + b` (same set and width), and its gradient to both.
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        assert_eq!(self.set_of(a), self.set_of(b), "add of tensors on different sets");
        assert_eq!(self.channels(a), self.channels(b), "add of tensors with different widths");
        let c = self.channels(a);
        let set = self.set_of(a);
        let n = self.rows_per_image(set) * c;
        let ch = self.chunks_for(&[(set, c)]);
        let y = self.push_var(set, c, true);
        let (at, bt, yt) = (self.tensor(a).clone(), self.tensor(b).clone(), self.tensor(y).clone());
        let d = self.per_chunk(ch, |g, r| {
            let (av, bv, yv) = (g.view(&at, set, c, r), g.view(&bt, set, c, r), g.view(&yt, set, c, r));
            add(g.ctx, &av, &bv, &yv, n * r.len())
        })?;
        self.forward.extend(d);
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            for v in [a, b] {
                if let Some((dx, acc)) = g.grad_in(v) {
                    let d = g.per_chunk(ch, |g, r| copy_or_add(g.ctx, &g.view(&dy, set, c, r), &g.view(&dx, set, c, r), n * r.len(), acc))?;
                    g.backward.extend(d);
                }
            }
            Ok(())
        });
        Ok(y)
    }

    /// `y = x · gamma[c]` (ConvNeXt layer scale).
    pub fn channel_scale(&mut self, x: Var, gamma: ParamId) -> Result<Var> {
        let RowOp { c, set, rows, per, ch, y, xt, yt } = self.row_op(x, &[]);
        let gt = self.params.tensor(gamma);
        let d = self.per_chunk(ch, |g, r| channel_scale_forward(g.ctx, &g.view(&xt, set, c, r), &gt, &g.view(&yt, set, c, r), per * r.len(), c))?;
        self.forward.extend(d);
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            let xt = g.saved(x)?;
            let (dx, acc) = g.grad_in(x).unwrap_or_else(|| (g.ctx.zeros(rows * c), false));
            let d = g.per_chunk_summed(ch, &[g.params.grad(gamma)], |g, r, t| {
                let (xv, dyv, dxv) = (g.view(&xt, set, c, r), g.view(&dy, set, c, r), g.view(&dx, set, c, r));
                channel_scale_backward(g.ctx, &xv, &gt, &dyv, &dxv, &t[0], per * r.len(), c, acc)
            })?;
            g.backward.extend(d);
            Ok(())
        });
        Ok(y)
    }

    /// Max-pooling from `x`'s set to `out_set`.
    pub fn maxpool(&mut self, x: Var, out_set: SetId, win: Window) -> Result<Var> {
        let c = self.channels(x);
        let (from, taps) = (self.set_of(x), win.taps());
        let ch = self.chunks_for(&[(from, c), (out_set, c), (out_set, taps), (from, taps)]);
        let (map, inv) = self.maps(from, out_set, win, false, ch);
        let y = self.push_var(out_set, c, true);
        let (per_in, per_out) = (self.rows_per_image(from), self.rows_per_image(out_set));
        let (xt, yt) = (self.tensor(x).clone(), self.tensor(y).clone());
        let argmax = self.ctx.zeros(self.rows(y) * c);
        let d = self.per_chunk(ch, |g, r| {
            let (xv, mv) = (g.view(&xt, from, c, r), g.view(&map, out_set, taps, r));
            let (yv, av) = (g.view(&yt, out_set, c, r), g.view(&argmax, out_set, c, r));
            maxpool_forward(g.ctx, &xv, &mv, &yv, &av, per_out * r.len(), c, taps)
        })?;
        self.forward.extend(d);
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            if let Some((dx, acc)) = g.grad_in(x) {
                let d = g.per_chunk(ch, |g, r| {
                    let (dyv, iv) = (g.view(&dy, out_set, c, r), g.view(&inv, from, taps, r));
                    let (av, dxv) = (g.view(&argmax, out_set, c, r), g.view(&dx, from, c, r));
                    maxpool_backward(g.ctx, &dyv, &iv, &av, &dxv, per_in * r.len(), c, taps, acc)
                })?;
                g.backward.extend(d);
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
        let ch = self.chunks_for(&[(sparse, c), (dense, c), (sparse, 1), (dense, 1)]);
        let y = self.push_var(dense, c, true);
        let rows = self.rows(x);
        let (per_row, per_site) = (self.rows_per_image(sparse), self.rows_per_image(dense));
        // `row_of` is laid out by dense sites, `site_of_row` by sparse rows.
        let (row_of, site_of_row) = self.row_indices(sparse, ch);
        let (xt, yt) = (self.tensor(x).clone(), self.tensor(y).clone());
        let tok = self.params.tensor(token);
        let d = self.per_chunk(ch, |g, r| {
            let (xv, rv, yv) = (g.view(&xt, sparse, c, r), g.view(&row_of, dense, 1, r), g.view(&yt, dense, c, r));
            scatter_rows(g.ctx, &xv, &rv, &tok, &yv, per_site * r.len(), c)
        })?;
        self.forward.extend(d);
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            let (dx, acc) = g.grad_in(x).unwrap_or_else(|| (g.ctx.zeros(rows * c), false));
            let d = g.per_chunk_summed(ch, &[g.params.grad(token)], |g, r, t| {
                let (dyv, rv, sv) = (g.view(&dy, dense, c, r), g.view(&row_of, dense, 1, r), g.view(&site_of_row, sparse, 1, r));
                let n = r.len();
                scatter_rows_backward(g.ctx, &dyv, &rv, &sv, &g.view(&dx, sparse, c, r), &t[0], per_site * n, per_row * n, c, acc)
            })?;
            g.backward.extend(d);
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
        let RowOp { c, set, per, ch, y, xt, yt, .. } = self.row_op(x, &[]);
        // One scale tensor per chunk: a view of a `[batch]` tensor at a chunk's first
        // image would not start at a bindable offset.
        let scales: Vec<_> = ch.ranges().map(|r| self.ctx.upload(&vec![1f32; r.len()])).collect();
        self.drop_paths.push((scales.clone(), ch, p));
        let scale_of = move |r: &Range<usize>| scales[r.start / ch.images].clone();
        let d = self.per_chunk(ch, |g, r| {
            drop_path_forward(g.ctx, &g.view(&xt, set, c, r), &scale_of(r), &g.view(&yt, set, c, r), per * r.len(), c, per)
        })?;
        self.forward.extend(d);
        self.on_backward(y, move |g| {
            let Some(dy) = g.grad_out(y) else { return Ok(()) };
            if let Some((dx, acc)) = g.grad_in(x) {
                let d = g.per_chunk(ch, |g, r| {
                    let (dyv, dxv) = (g.view(&dy, set, c, r), g.view(&dx, set, c, r));
                    drop_path_backward(g.ctx, &dyv, &scale_of(r), &dxv, per * r.len(), c, per, acc)
                })?;
                g.backward.extend(d);
            }
            Ok(())
        });
        Ok(y)
    }
}
