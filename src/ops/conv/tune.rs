//! Tuning of the conv kernels (issue 8 item 3): each node's candidates (from the tile
//! table, `kernels::gather_candidates` / `wgrad_candidates`) timed on a problem of the
//! node's own shape and maps, the fastest kept by the context's tuner (`gpu::tune`).
//!
//! A graph's dry run queues one job per conv shape ([`defer_tuning`]); the builder runs
//! them once the batch is known to fit, before the real build. The problem has the
//! node's real sizes and neighbour maps (built on the host from the graph's placeholder
//! mask, which shows as many patches per image as every step does) and zero data: the
//! speed of these kernels does not depend on the values.

use anyhow::{Result, anyhow};
use std::collections::HashMap;
use std::time::Instant;

use super::kernels::{GemmDims, gather_candidates, gather_key, wgrad_candidates, wgrad_key};
use super::{ConvShape, DGRAD, FWD, WGRAD, WeightLayout, gather_gemm, weight_grad_with};
use crate::gpu::tune::time_rounds;
use crate::gpu::{Dispatch, GpuContext, GpuTensor};
use crate::sparse::{ActiveSet, NeighbourMap, Window, conv_map, inverse_map, transposed_conv_map};

/// One candidate kernel of one pass of a conv, as timed.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// `fwd`, `dgrad` or `wgrad`.
    pub pass: &'static str,
    /// The variant (its shader, or the thin entry point).
    pub name: &'static str,
    /// Whether the family's fixed rule picks it (`--tune off`).
    pub fixed: bool,
    /// Milliseconds of one run (re-layout and split-K reduction included).
    pub ms: f64,
}

/// Seconds of one run of `ds` (timestamp queries where the adapter has them, else the
/// wall clock of a submit-and-wait).
fn run_time(ctx: &GpuContext, ds: &[Dispatch]) -> Result<f64> {
    if ctx.has_timestamps() {
        let refs: Vec<&Dispatch> = ds.iter().collect();
        return Ok(ctx.profile(&refs)?.iter().sum::<f64>() / 1e3);
    }
    let t = Instant::now();
    ctx.run(ds)?;
    Ok(t.elapsed().as_secs_f64())
}

/// The tensors of one conv problem: zero data over the real maps.
struct Problem {
    x: GpuTensor,
    map: GpuTensor,
    inv: GpuTensor,
    w: GpuTensor,
    b: Option<GpuTensor>,
    y: GpuTensor,
    dy: GpuTensor,
    dx: GpuTensor,
    dw: GpuTensor,
    db: Option<GpuTensor>,
    layout: WeightLayout,
    s: ConvShape,
}

impl Problem {
    fn new(ctx: &GpuContext, map: &NeighbourMap, inv: &NeighbourMap, layout: WeightLayout, bias: bool, s: ConvShape) -> Self {
        let count = s.taps * s.cin * s.cout;
        Problem {
            x: ctx.zeros(s.rows_in * s.cin),
            map: ctx.upload(&map.map),
            inv: ctx.upload(&inv.map),
            w: ctx.zeros(count),
            b: bias.then(|| ctx.zeros(s.cout)),
            y: ctx.zeros(s.rows_out * s.cout),
            dy: ctx.zeros(s.rows_out * s.cout),
            dx: ctx.zeros(s.rows_in * s.cin),
            dw: ctx.zeros(count),
            db: bias.then(|| ctx.zeros(s.cout)),
            layout,
            s,
        }
    }

    fn fwd_dims(&self) -> GemmDims {
        (self.s.rows_in, self.s.rows_out, self.s.cin, self.s.cout, self.s.taps)
    }

    fn dgrad_dims(&self) -> GemmDims {
        (self.s.rows_out, self.s.rows_in, self.s.cout, self.s.cin, self.s.taps)
    }

    /// The dispatches of `pass` with candidate `name`.
    fn dispatches(&self, ctx: &GpuContext, pass: &str, name: &str) -> Result<Vec<Dispatch>> {
        let s = self.s;
        match pass {
            FWD => {
                let t = gather_candidates(ctx, self.fwd_dims()).into_iter().find(|t| t.kernel == name);
                let t = t.ok_or_else(|| anyhow!("no forward candidate {name}"))?;
                gather_gemm(ctx, FWD, Some(t), &self.x, &self.map, &self.w, self.layout, self.b.as_ref(), &self.y, self.fwd_dims(), false)
            }
            DGRAD => {
                let t = gather_candidates(ctx, self.dgrad_dims()).into_iter().find(|t| t.kernel == name);
                let t = t.ok_or_else(|| anyhow!("no data-gradient candidate {name}"))?;
                gather_gemm(ctx, DGRAD, Some(t), &self.dy, &self.inv, &self.w, self.layout.swapped(), None, &self.dx, self.dgrad_dims(), false)
            }
            _ => {
                let t = wgrad_candidates(ctx, &s).into_iter().find(|t| t.name() == name);
                let t = t.ok_or_else(|| anyhow!("no weight-gradient candidate {name}"))?;
                weight_grad_with(ctx, Some(t), &self.x, &self.map, &self.dy, &self.dw, self.layout, self.db.as_ref(), s)
            }
        }
    }

    /// A timer of the candidates of `pass` for the tuner: one run of the named candidate
    /// (its dispatches recorded on first use).
    fn timer<'p>(&'p self, ctx: &'p GpuContext, pass: &'p str) -> impl FnMut(&str) -> Result<f64> + 'p {
        let mut prepared: HashMap<String, Vec<Dispatch>> = HashMap::new();
        move |name: &str| {
            if !prepared.contains_key(name) {
                prepared.insert(name.to_string(), self.dispatches(ctx, pass, name)?);
            }
            run_time(ctx, &prepared[name])
        }
    }

    /// (pass, key, candidate names) of the passes to tune: the forward, the weight
    /// gradient with `train`, the data gradient with `dgrad`.
    fn passes(&self, ctx: &GpuContext, train: bool, dgrad: bool) -> Vec<(&'static str, String, Vec<&'static str>)> {
        let mut out = vec![(FWD, gather_key(FWD, self.fwd_dims()), gather_candidates(ctx, self.fwd_dims()).iter().map(|t| t.kernel).collect())];
        if dgrad {
            out.push((DGRAD, gather_key(DGRAD, self.dgrad_dims()), gather_candidates(ctx, self.dgrad_dims()).iter().map(|t| t.kernel).collect()));
        }
        if train {
            out.push((WGRAD, wgrad_key(&self.s), wgrad_candidates(ctx, &self.s).iter().map(|t| t.name()).collect()));
        }
        out
    }
}

fn maps(from: &ActiveSet, to: &ActiveSet, win: Window, transposed: bool) -> (NeighbourMap, NeighbourMap) {
    let map = if transposed { transposed_conv_map(from, to, win) } else { conv_map(from, to, win) };
    let inv = inverse_map(&map, from.rows());
    (map, inv)
}

/// Every candidate of every pass of the conv from `from` to `to`, timed (for
/// `cargo bench --bench conv`, which shows what the tuner chooses among).
#[allow(clippy::too_many_arguments)]
pub fn candidates(ctx: &GpuContext, from: &ActiveSet, to: &ActiveSet, win: Window, transposed: bool, cin: usize, cout: usize, bias: bool) -> Result<Vec<Candidate>> {
    let (map, inv) = maps(from, to, win, transposed);
    let s = ConvShape { rows_in: from.rows(), rows_out: to.rows(), cin, cout, taps: win.taps() };
    let layout = if transposed { WeightLayout::iohw(cin, cout, s.taps) } else { WeightLayout::oihw(cin, cout, s.taps) };
    let p = Problem::new(ctx, &map, &inv, layout, bias, s);
    let mut out = vec![];
    for (pass, _, names) in p.passes(ctx, true, true) {
        let times = time_rounds(&names, &mut p.timer(ctx, pass))?;
        for (i, (name, t)) in names.iter().zip(times).enumerate() {
            out.push(Candidate { pass, name, fixed: i == 0, ms: 1e3 * t });
        }
    }
    Ok(out)
}

/// Queue the tuning of a conv node (see the module documentation) when its tuner
/// times and one of its passes is undecided; `sets` gives the node's input and output
/// sets under the graph's placeholder mask (computed only then). `train`: the node's
/// weight gradient runs too; `dgrad`: its data gradient.
#[allow(clippy::too_many_arguments)]
pub(crate) fn defer_tuning(
    ctx: &GpuContext,
    s: ConvShape,
    sets: impl FnOnce() -> (ActiveSet, ActiveSet),
    win: Window,
    transposed: bool,
    bias: bool,
    train: bool,
    dgrad: bool,
) {
    if !ctx.tuner.may_time() {
        return;
    }
    let keys = [
        Some(gather_key(FWD, (s.rows_in, s.rows_out, s.cin, s.cout, s.taps))),
        dgrad.then(|| gather_key(DGRAD, (s.rows_out, s.rows_in, s.cout, s.cin, s.taps))),
        train.then(|| wgrad_key(&s)),
    ];
    if !keys.iter().flatten().any(|k| ctx.tuner.undecided(k)) {
        return;
    }
    let (from, to) = sets();
    ctx.tuner.defer(
        keys[0].as_deref().unwrap_or_default(),
        Box::new(move |ctx: &GpuContext| {
            let (map, inv) = maps(&from, &to, win, transposed);
            let layout = if transposed { WeightLayout::iohw(s.cin, s.cout, s.taps) } else { WeightLayout::oihw(s.cin, s.cout, s.taps) };
            let p = Problem::new(ctx, &map, &inv, layout, bias, s);
            for (pass, key, names) in p.passes(ctx, train, dgrad) {
                ctx.tuner.decide(&key, &names, names[0], &mut p.timer(ctx, pass))?;
            }
            Ok(())
        }),
    );
}
