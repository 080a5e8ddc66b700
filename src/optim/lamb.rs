//! `lamb.wgsl`: LAMB exactly as timm 0.5.4 `Lamb`, which the official SparK copies
//! (`utils/lamb.py`, `TheSameAsTimmLAMB`), with the official parameter groups
//! (`utils/lr_control.py`, `get_param_groups`).
//!
//! One step: global gradient norm over every parameter; gradients scaled by
//! `1 / (norm / max_grad_norm)` when the norm exceeds `max_grad_norm`; Adam moments
//! (`m = b1·m + (1−b1)·g`, `v = b2·v + (1−b2)·g²`); `u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)`;
//! for the decay group with a non-zero weight decay `u += wd·p` and `u *= ‖p‖ / ‖u‖`
//! (1 when either norm is 0); `p −= lr·u`. The no-decay group runs with weight decay 0,
//! so (timm's `always_adapt=False`) it gets no trust ratio: plain Adam. Likewise the decay
//! group gets no trust ratio in a step whose scheduled weight decay is exactly 0.
//!
//! Parameters, gradients and both moments are flat tensors with each parameter a
//! segment. The segment layout lives in a table on the GPU, and the per-step values (lr,
//! weight decay, bias corrections) in a small tensor the host writes before each step, so
//! the number of dispatches never grows with the number of tensors.
//!
//! Binding-size groups: a flat buffer can exceed the adapter's
//! `max_storage_buffer_binding_size` (SparK-ResNet-50 with its decoder holds ~52.9 M
//! values = 212 MB; lavapipe and many GPUs cap a binding at 128 MiB). The work is cut
//! into chunks that never straddle a segment, and the chunks, in table order, into
//! consecutive groups whose element span (from the group's first chunk, rounded down to
//! `min_storage_buffer_offset_alignment`, to its last chunk's end) fits the limit. The
//! three per-element passes (`grad_sumsq`, `moments`, `apply`) run once per group over
//! views of the four flat tensors; a segment larger than the limit simply has its chunks
//! in several groups. Partial sums are indexed by GLOBAL chunk number in one shared
//! buffer, so the single `clip` and `trust` dispatches combine every group in the same
//! fixed order as with one group: the results are bitwise identical whatever the
//! grouping. The step is `3 · groups + 2` dispatches (5 when everything fits one binding).

use anyhow::{Result, ensure};

use crate::gpu::{Dispatch, GpuContext, GpuTensor};

/// One parameter tensor inside the flat buffers: `len` elements from element `offset`.
/// By convention offsets are multiples of 64 elements (256 bytes) so that each
/// parameter can also be bound on its own.
#[derive(Clone, Debug)]
pub struct ParamSegment {
    /// Parameter name, as in the official state dict.
    pub name: String,
    /// First element in the flat buffers.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
    /// Whether weight decay applies (not to 1-D params, biases, mask tokens, gamma).
    pub weight_decay: bool,
}

/// The fixed LAMB hyper-parameters.
#[derive(Clone, Copy, Debug)]
pub struct LambConfig {
    /// First-moment decay β1.
    pub beta1: f32,
    /// Second-moment decay β2.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Global gradient-norm clip: gradients are scaled down to this norm when above it.
    pub max_grad_norm: f32,
}

impl LambConfig {
    /// The official pre-training settings: betas (0.9, `beta2`) with `beta2` = 0.95 for
    /// ResNets and 0.999 for ConvNeXts (`--ada`), timm's eps 1e-6, and `max_grad_norm` 5.
    pub fn spark(beta2: f32) -> Self {
        Self { beta1: 0.9, beta2, eps: 1e-6, max_grad_norm: 5.0 }
    }
}

/// The official no-weight-decay rule (`get_param_groups` with
/// `nowd_keys={'cls_token', 'pos_embed', 'mask_token', 'gamma'}`): 1-D parameters,
/// names ending in `.bias`, and names containing one of those keys.
pub fn no_weight_decay(name: &str, shape: &[usize]) -> bool {
    shape.len() == 1
        || name.ends_with(".bias")
        || ["cls_token", "pos_embed", "mask_token", "gamma"].iter().any(|k| name.contains(k))
}

/// Elements per chunk: chunks never straddle segments, one workgroup each.
const DEFAULT_CHUNK: usize = 2048;
/// Where the per-segment trust ratios start in the scalars tensor.
const TRUST_BASE: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_chunks: u32,
    n_segments: u32,
    /// The group's first global chunk and its chunk count (per-element passes only).
    chunk_base: u32,
    group_chunks: u32,
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
    max_grad_norm: f32,
}

/// The value a user who wrote this f32 meant: the shortest decimal that rounds to it,
/// as f64. The official code keeps betas as Python floats (f64), so `1 − beta` and
/// `beta^step` are taken from 0.9, not from 0.899999976.
fn decimal_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap()
}

/// LAMB state on the GPU and the recorded dispatches of one step.
pub struct Lamb {
    exp_avg: GpuTensor,
    exp_avg_sq: GpuTensor,
    /// [lr, wd, 1 − b1^t, sqrt(1 − b2^t), global grad norm, clip factor, _, _, trust…].
    scalars: GpuTensor,
    cfg: LambConfig,
    segments: Vec<ParamSegment>,
    groups: usize,
    dispatches: Vec<Dispatch>,
}

/// A run of consecutive chunks bound through one view of each flat tensor, starting at
/// element `base` (aligned) and `len` elements long.
struct Group {
    first_chunk: usize,
    n_chunks: usize,
    base: usize,
    len: usize,
}

/// Cut `chunks` (global element start, length, segment), in order, into consecutive
/// groups whose span from `base` (the first start rounded down to `align` elements) to
/// the last end is at most `max_elems`.
fn group_chunks(chunks: &[(usize, usize, usize)], align: usize, max_elems: usize, segments: &[ParamSegment]) -> Result<Vec<Group>> {
    let mut groups: Vec<Group> = vec![];
    // Open group: first chunk, lowest start, highest end.
    let mut open: Option<(usize, usize, usize)> = None;
    for (c, &(start, len, seg)) in chunks.iter().enumerate() {
        let end = start + len;
        let alone = end - start / align * align;
        ensure!(
            alone <= max_elems,
            "LAMB: a chunk of parameter {} needs a {} B binding, above the {} B storage-binding limit",
            segments[seg].name,
            alone * 4,
            max_elems * 4
        );
        if let Some((first, lo, hi)) = open {
            let (lo2, hi2) = (lo.min(start), hi.max(end));
            if hi2 - lo2 / align * align <= max_elems {
                open = Some((first, lo2, hi2));
                continue;
            }
            let base = lo / align * align;
            groups.push(Group { first_chunk: first, n_chunks: c - first, base, len: hi - base });
        }
        open = Some((c, start, end));
    }
    if let Some((first, lo, hi)) = open {
        let base = lo / align * align;
        groups.push(Group { first_chunk: first, n_chunks: chunks.len() - first, base, len: hi - base });
    }
    Ok(groups)
}

impl Lamb {
    /// Allocate zeroed moments shaped like `params` and record the step over `params`
    /// (updated in place) with `grads` (read only; the clip is applied on the fly).
    pub fn new(ctx: &GpuContext, params: &GpuTensor, grads: &GpuTensor, segments: Vec<ParamSegment>, cfg: LambConfig) -> Result<Self> {
        Self::with_chunk(ctx, params, grads, segments, cfg, DEFAULT_CHUNK)
    }

    /// As `new` with `chunk` elements per workgroup (tests use small chunks so that
    /// segments span several).
    pub fn with_chunk(
        ctx: &GpuContext,
        params: &GpuTensor,
        grads: &GpuTensor,
        segments: Vec<ParamSegment>,
        cfg: LambConfig,
        chunk: usize,
    ) -> Result<Self> {
        let max_binding = ctx.limits.max_storage_buffer_binding_size;
        Self::with_limits(ctx, params, grads, segments, cfg, chunk, max_binding)
    }

    /// As `with_chunk` with bindings of at most `max_binding_bytes` (clamped to the
    /// adapter's limit); tests pass small values to exercise several groups.
    pub fn with_limits(
        ctx: &GpuContext,
        params: &GpuTensor,
        grads: &GpuTensor,
        segments: Vec<ParamSegment>,
        cfg: LambConfig,
        chunk: usize,
        max_binding_bytes: u64,
    ) -> Result<Self> {
        ensure!(chunk > 0, "chunk must be positive");
        ensure!(grads.len == params.len, "grads ({}) and params ({}) differ in length", grads.len, params.len);
        let mut sorted: Vec<&ParamSegment> = segments.iter().collect();
        sorted.sort_by_key(|s| s.offset);
        let mut end = 0;
        for s in &sorted {
            ensure!(s.offset >= end, "segment {} overlaps the previous one", s.name);
            end = s.offset + s.len;
            ensure!(end <= params.len, "segment {} ends at {end}, past the {} parameters", s.name, params.len);
        }
        // Group views start at a common element offset of all four flat tensors (the
        // moments start at byte 0), so params and grads must be aligned themselves.
        let align_bytes = (ctx.limits.min_storage_buffer_offset_alignment as u64).max(4);
        ensure!(
            params.offset.is_multiple_of(align_bytes) && grads.offset.is_multiple_of(align_bytes),
            "LAMB: params (byte {}) and grads (byte {}) must start at multiples of {align_bytes} B",
            params.offset,
            grads.offset
        );
        let max_bytes = max_binding_bytes.min(ctx.limits.max_storage_buffer_binding_size);
        let max_elems = (max_bytes / 4) as usize;

        // chunks: (start, len, segment); then segments: (first chunk, count, decay).
        let mut chunks = vec![];
        let mut segs = vec![];
        for (si, s) in segments.iter().enumerate() {
            let first = chunks.len();
            for start in (0..s.len).step_by(chunk) {
                chunks.push((s.offset + start, chunk.min(s.len - start), si));
            }
            segs.extend([first as u32, (chunks.len() - first) as u32, s.weight_decay as u32]);
        }
        let n_chunks = chunks.len();
        let mut groups = group_chunks(&chunks, (align_bytes / 4) as usize, max_elems, &segments)?;
        if groups.is_empty() {
            // No chunk at all: one empty group keeps the pass structure (and bindings) valid.
            groups.push(Group { first_chunk: 0, n_chunks: 0, base: 0, len: 0 });
        }
        // The table stores chunk starts relative to their group's view.
        let mut table = Vec::with_capacity(3 * n_chunks + segs.len());
        for g in &groups {
            for &(start, len, si) in &chunks[g.first_chunk..g.first_chunk + g.n_chunks] {
                table.extend([(start - g.base) as u32, len as u32, si as u32]);
            }
        }
        table.extend(segs);
        let table = ctx.upload(&table);
        let partials = ctx.zeros(3 * n_chunks);
        let scalars = ctx.zeros(TRUST_BASE + segments.len());
        let exp_avg = ctx.zeros(params.len);
        let exp_avg_sq = ctx.zeros(params.len);

        let (b1, b2) = (decimal_f64(cfg.beta1), decimal_f64(cfg.beta2));
        let p = Params {
            n_chunks: n_chunks as u32,
            n_segments: segments.len() as u32,
            chunk_base: 0,
            group_chunks: n_chunks as u32,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            one_minus_beta1: (1.0 - b1) as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            eps: cfg.eps,
            max_grad_norm: cfg.max_grad_norm,
        };
        let views: Vec<[GpuTensor; 4]> = groups
            .iter()
            .map(|g| [params, grads, &exp_avg, &exp_avg_sq].map(|t| t.slice(g.base, g.len)))
            .collect();
        let bind = |v: &[GpuTensor; 4]| -> [GpuTensor; 7] {
            [v[0].clone(), v[1].clone(), v[2].clone(), v[3].clone(), table.clone(), partials.clone(), scalars.clone()]
        };
        let k = |e: &str| ctx.kernel_entry("lamb", e);
        let per_group = |entry: &str| -> Result<Vec<Dispatch>> {
            let kernel = k(entry)?;
            Ok(groups
                .iter()
                .zip(&views)
                .map(|(g, v)| {
                    let pg = Params { chunk_base: g.first_chunk as u32, group_chunks: g.n_chunks as u32, ..p };
                    let t = bind(v);
                    ctx.dispatch_groups(&kernel, &pg, &t.each_ref(), ctx.grid_for(g.n_chunks as u64))
                })
                .collect())
        };
        // `clip` and `trust` touch only the small tensors, but every binding must be
        // passed: they get the first group's (fitting) views.
        let t0 = bind(&views[0]);
        let t0 = t0.each_ref();
        let mut dispatches = per_group("grad_sumsq")?;
        dispatches.push(ctx.dispatch_groups(&k("clip")?, &p, &t0, [1, 1, 1]));
        dispatches.extend(per_group("moments")?);
        dispatches.push(ctx.dispatch(&k("trust")?, &p, &t0, segments.len() as u64));
        dispatches.extend(per_group("apply")?);
        let groups = groups.len();
        Ok(Self { exp_avg, exp_avg_sq, scalars, cfg, segments, groups, dispatches })
    }

    /// Number of binding-size groups: the step is `3 * groups + 2` dispatches.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The step, replayed every iteration after `set_hyper`.
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }

    /// Queue this step's values: `step` is 1-based (bias corrections), `lr` and
    /// `weight_decay` come from the schedule (`weight_decay` reaches the decay group only).
    pub fn set_hyper(&self, ctx: &GpuContext, step: u32, lr: f32, weight_decay: f32) {
        assert!(step >= 1, "LAMB steps are 1-based");
        let bc1 = 1.0 - decimal_f64(self.cfg.beta1).powi(step as i32);
        let bc2 = 1.0 - decimal_f64(self.cfg.beta2).powi(step as i32);
        ctx.write(&self.scalars.slice(0, 4), &[lr, weight_decay, bc1 as f32, bc2.sqrt() as f32]);
    }

    /// First-moment state, one element per parameter element (checkpointed).
    pub fn exp_avg(&self) -> &GpuTensor {
        &self.exp_avg
    }

    /// Second-moment state, one element per parameter element (checkpointed).
    pub fn exp_avg_sq(&self) -> &GpuTensor {
        &self.exp_avg_sq
    }

    /// `[1]`: the global gradient norm before clipping of the last step (the official
    /// `optimizer.global_grad_norm`, logged as `orig_norm`).
    pub fn grad_norm(&self) -> GpuTensor {
        self.scalars.slice(4, 1)
    }

    /// `[segments]`: the trust ratio each segment got in the last step (1 where none applies).
    pub fn trust_ratios(&self) -> GpuTensor {
        self.scalars.slice(TRUST_BASE, self.segments.len())
    }

    /// The parameter segments, in flat-buffer order.
    pub fn segments(&self) -> &[ParamSegment] {
        &self.segments
    }

    /// The hyper-parameters this optimizer was built with.
    pub fn config(&self) -> LambConfig {
        self.cfg
    }
}

/// CPU reference of one step (f64 inside), updating `params`, `m` (exp_avg) and
/// `v` (exp_avg_sq) in place.
#[allow(clippy::too_many_arguments)]
pub fn lamb_step_ref(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    segments: &[ParamSegment],
    cfg: LambConfig,
    step: u32,
    lr: f32,
    wd: f32,
) {
    let (b1, b2) = (decimal_f64(cfg.beta1), decimal_f64(cfg.beta2));
    let (eps, lr, wd) = (cfg.eps as f64, lr as f64, wd as f64);
    let norm = segments
        .iter()
        .flat_map(|s| &grads[s.offset..s.offset + s.len])
        .map(|&g| (g as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let max = cfg.max_grad_norm as f64;
    let clip = if norm > max { 1.0 / (norm / max) } else { 1.0 };
    let bc1 = 1.0 - b1.powi(step as i32);
    let sbc2 = (1.0 - b2.powi(step as i32)).sqrt();
    for s in segments {
        let r = s.offset..s.offset + s.len;
        let decay = s.weight_decay && wd != 0.0;
        let mut upd = Vec::with_capacity(s.len);
        for i in r.clone() {
            let g = grads[i] as f64 * clip;
            let mi = b1 * m[i] as f64 + (1.0 - b1) * g;
            let vi = b2 * v[i] as f64 + (1.0 - b2) * g * g;
            m[i] = mi as f32;
            v[i] = vi as f32;
            let mut u = (mi / bc1) / (vi.sqrt() / sbc2 + eps);
            if decay {
                u += wd * params[i] as f64;
            }
            upd.push(u);
        }
        let mut trust = 1.0;
        if decay {
            let w_norm = params[r.clone()].iter().map(|&p| (p as f64).powi(2)).sum::<f64>().sqrt();
            let u_norm = upd.iter().map(|u| u * u).sum::<f64>().sqrt();
            if w_norm > 0.0 && u_norm > 0.0 {
                trust = w_norm / u_norm;
            }
        }
        for (i, u) in r.zip(upd) {
            params[i] = (params[i] as f64 - lr * trust * u) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, random_vec};

    /// Segments of odd sizes at 64-element offsets, both groups, plus an all-zero decay
    /// parameter (trust ratio 1 at the first step).
    fn layout() -> (Vec<ParamSegment>, usize, usize) {
        let spec = [(3, false), (17, true), (64, true), (65, false), (1000, true), (40, true), (0, true)];
        let mut segs = vec![];
        let mut off = 0;
        for (i, &(len, wd)) in spec.iter().enumerate() {
            segs.push(ParamSegment { name: format!("p{i}"), offset: off, len, weight_decay: wd });
            off += len.next_multiple_of(64);
        }
        (segs, off, 5) // index of the all-zero parameter
    }

    fn init(segs: &[ParamSegment], total: usize, zero_seg: usize) -> Vec<f32> {
        let mut p: Vec<f32> = random_vec(1, total).iter().map(|x| 0.5 * x).collect();
        let z = &segs[zero_seg];
        p[z.offset..z.offset + z.len].fill(0.0);
        p
    }

    fn grads_at(step: u32, total: usize) -> Vec<f32> {
        random_vec(100 + step as u64, total)
    }

    /// Relative L2 distance of the parameter updates, the golden metric for `after.*`.
    fn update_err(before: &[f32], got: &[f32], want: &[f32], seg: &ParamSegment) -> f64 {
        let r = seg.offset..seg.offset + seg.len;
        let (mut num, mut den) = (0f64, 0f64);
        for i in r {
            let (dg, dw) = (got[i] as f64 - before[i] as f64, want[i] as f64 - before[i] as f64);
            num += (dg - dw).powi(2);
            den += dw * dw;
        }
        if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
    }

    /// A binding limit that forces several groups over `layout()` (1408 values) with
    /// `chunk`-element chunks: about two chunks plus the alignment slack per group.
    fn small_binding(ctx: &GpuContext, chunk: usize) -> u64 {
        2 * chunk as u64 * 4 + ctx.limits.min_storage_buffer_offset_alignment as u64
    }

    /// Run `hypers` steps on the GPU and on the CPU, comparing after each; with
    /// `max_binding` (bytes) the flat buffers are bound in several groups.
    fn check(max_grad_norm: f32, chunk: usize, hypers: &[(f32, f32)], clipped: bool, max_binding: Option<fn(&GpuContext) -> u64>) {
        let ctx = GpuContext::new_default().unwrap();
        let (segs, total, zero_seg) = layout();
        let cfg = LambConfig { beta1: 0.9, beta2: 0.95, eps: 1e-6, max_grad_norm };
        let mut p = init(&segs, total, zero_seg);
        let (mut m, mut v) = (vec![0f32; total], vec![0f32; total]);
        let tp = ctx.upload(&p);
        let tg = ctx.zeros(total);
        let lamb = match max_binding {
            None => Lamb::with_chunk(&ctx, &tp, &tg, segs.clone(), cfg, chunk).unwrap(),
            Some(b) => Lamb::with_limits(&ctx, &tp, &tg, segs.clone(), cfg, chunk, b(&ctx)).unwrap(),
        };
        if max_binding.is_some() {
            assert!(lamb.groups() >= 3, "only {} groups", lamb.groups());
        } else {
            assert_eq!(lamb.groups(), 1);
        }
        assert_eq!(lamb.dispatches().len(), 3 * lamb.groups() + 2);
        for (k, &(lr, wd)) in hypers.iter().enumerate() {
            let step = k as u32 + 1;
            let g = grads_at(step, total);
            ctx.write(&tg, &g);
            lamb.set_hyper(&ctx, step, lr, wd);
            ctx.run(lamb.dispatches()).unwrap();
            let before = p.clone();
            lamb_step_ref(&mut p, &g, &mut m, &mut v, &segs, cfg, step, lr, wd);
            let what = format!("max_norm {max_grad_norm} chunk {chunk} groups {} step {step}", lamb.groups());
            let norm = segs.iter().flat_map(|s| &g[s.offset..s.offset + s.len]).map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let got_norm = ctx.read_f32(&lamb.grad_norm()).unwrap()[0] as f64;
            assert!((got_norm - norm).abs() <= 1e-5 * norm, "{what}: grad norm {got_norm} vs {norm}");
            assert_eq!(norm > max_grad_norm as f64, clipped, "{what}: clipping active as intended");
            assert_close(&ctx.read_f32(&lamb.exp_avg).unwrap(), &m, 1e-5, &format!("{what} exp_avg"));
            assert_close(&ctx.read_f32(&lamb.exp_avg_sq).unwrap(), &v, 1e-5, &format!("{what} exp_avg_sq"));
            let got = ctx.read_f32(&tp).unwrap();
            assert_close(&got, &p, 1e-5, &format!("{what} params"));
            for s in &segs {
                let e = update_err(&before, &got, &p, s);
                assert!(e <= 1e-4, "{what}: update of {} off by {e:.2e}", s.name);
            }
            let trust = ctx.read_f32(&lamb.trust_ratios()).unwrap();
            if step == 1 {
                assert_eq!(trust[zero_seg], 1.0, "zero parameter: trust ratio 1");
            }
            for (s, t) in segs.iter().zip(&trust) {
                if !s.weight_decay || wd == 0.0 {
                    assert_eq!(*t, 1.0, "{what}: {} gets no trust ratio", s.name);
                }
            }
            // Padding between segments is never touched.
            let padding_kept = (0..total).filter(|i| !segs.iter().any(|s| (s.offset..s.offset + s.len).contains(i)));
            for i in padding_kept {
                assert_eq!(got[i], before[i]);
            }
            p = got; // continue both from the GPU state so errors do not compound
            m = ctx.read_f32(&lamb.exp_avg).unwrap();
            v = ctx.read_f32(&lamb.exp_avg_sq).unwrap();
        }
    }

    const HYPERS: [(f32, f32); 4] = [(2e-3, 0.04), (1e-3, 0.05), (3e-3, 0.0), (5e-4, 0.2)];

    #[test]
    fn gpu_matches_cpu_with_clipping() {
        // Gradients of ~1200 uniform values have a norm near 20.
        check(1.0, 128, &HYPERS, true, None);
        check(5.0, DEFAULT_CHUNK, &HYPERS[..2], true, None);
    }

    #[test]
    fn gpu_matches_cpu_without_clipping() {
        check(1e4, 128, &HYPERS, false, None);
        check(1e4, DEFAULT_CHUNK, &HYPERS[..2], false, None);
    }

    /// Small binding limits: several groups, the 1000-value segment split across groups.
    #[test]
    fn gpu_matches_cpu_in_binding_groups() {
        check(1.0, 128, &HYPERS, true, Some(|ctx| small_binding(ctx, 128)));
        check(1e4, 64, &HYPERS[..2], false, Some(|ctx| small_binding(ctx, 64)));
    }

    /// Three steps; returns the bits of params, exp_avg, exp_avg_sq and the scalars.
    fn run_bits(ctx: &GpuContext, chunk: usize, max_binding: u64) -> (usize, [Vec<u32>; 4]) {
        let (segs, total, zero_seg) = layout();
        let cfg = LambConfig::spark(0.999);
        let tp = ctx.upload(&init(&segs, total, zero_seg));
        let tg = ctx.zeros(total);
        let lamb = Lamb::with_limits(ctx, &tp, &tg, segs.clone(), cfg, chunk, max_binding).unwrap();
        for step in 1..=3 {
            ctx.write(&tg, &grads_at(step, total));
            lamb.set_hyper(ctx, step, 1e-3, 0.04);
            ctx.run(lamb.dispatches()).unwrap();
        }
        let bits = |t: &GpuTensor| ctx.read::<u32>(t).unwrap();
        (lamb.groups(), [bits(&tp), bits(&lamb.exp_avg), bits(&lamb.exp_avg_sq), bits(&lamb.scalars)])
    }

    #[test]
    fn bitwise_deterministic() {
        let ctx = GpuContext::new_default().unwrap();
        let one = run_bits(&ctx, 64, u64::MAX);
        assert_eq!(one.0, 1);
        assert_eq!(one, run_bits(&ctx, 64, u64::MAX));
        // Grouping changes only which dispatch covers a chunk: same bits as one group.
        let grouped = run_bits(&ctx, 64, small_binding(&ctx, 64));
        assert!(grouped.0 >= 3, "only {} groups", grouped.0);
        assert_eq!(grouped.1, one.1);
        assert_eq!(grouped, run_bits(&ctx, 64, small_binding(&ctx, 64)));
    }

    #[test]
    fn rejects_bindings_smaller_than_a_chunk_and_unaligned_tensors() {
        let ctx = GpuContext::new_default().unwrap();
        let (segs, total, _) = layout();
        let (tp, tg) = (ctx.zeros(total), ctx.zeros(total));
        let cfg = LambConfig::spark(0.95);
        let err = Lamb::with_limits(&ctx, &tp, &tg, segs.clone(), cfg, 128, 256).err().unwrap().to_string();
        assert!(err.contains("parameter p") && err.contains("256 B"), "{err}");
        let big = ctx.zeros(total + 1);
        assert!(Lamb::new(&ctx, &big.slice(1, total), &tg, segs, cfg).is_err());
    }

    #[test]
    fn official_no_weight_decay_rule() {
        assert!(no_weight_decay("sparse_encoder.sp_cnn.bn1.weight", &[8]));
        assert!(no_weight_decay("densify_projs.0.bias", &[32]));
        assert!(no_weight_decay("mask_tokens.0", &[1, 64, 1, 1]));
        assert!(no_weight_decay("sparse_encoder.sp_cnn.stages.0.0.gamma", &[16]));
        assert!(!no_weight_decay("sparse_encoder.sp_cnn.conv1.weight", &[8, 3, 7, 7]));
        assert!(!no_weight_decay("sparse_encoder.sp_cnn.stages.0.0.pwconv1.weight", &[64, 16]));
    }

    #[test]
    fn rejects_overlapping_segments() {
        let ctx = GpuContext::new_default().unwrap();
        let (tp, tg) = (ctx.zeros(128), ctx.zeros(128));
        let seg = |offset, len| ParamSegment { name: "x".into(), offset, len, weight_decay: true };
        assert!(Lamb::new(&ctx, &tp, &tg, vec![seg(0, 70), seg(64, 10)], LambConfig::spark(0.95)).is_err());
        assert!(Lamb::new(&ctx, &tp, &tg, vec![seg(64, 70)], LambConfig::spark(0.95)).is_err());
    }

    /// `cargo test --lib lamb_step_timing -- --ignored --nocapture`: one step
    /// over a ResNet-18-sized parameter set (62 tensors, 11.7 M values).
    #[test]
    #[ignore]
    fn lamb_step_timing() {
        let ctx = GpuContext::new_default().unwrap();
        let sizes: Vec<usize> = (0..62).map(|i| if i % 3 == 2 { 256 } else { 11_700_000 / 41 }).collect();
        let mut segs = vec![];
        let mut off = 0;
        for (i, &len) in sizes.iter().enumerate() {
            segs.push(ParamSegment { name: format!("p{i}"), offset: off, len, weight_decay: i % 3 != 2 });
            off += len.next_multiple_of(64);
        }
        let tp = ctx.upload(&random_vec(1, off));
        let tg = ctx.upload(&random_vec(2, off));
        let lamb = Lamb::new(&ctx, &tp, &tg, segs, LambConfig::spark(0.95)).unwrap();
        lamb.set_hyper(&ctx, 1, 1e-3, 0.04);
        ctx.run(lamb.dispatches()).unwrap();
        let t = std::time::Instant::now();
        let n = 5;
        for step in 2..2 + n {
            lamb.set_hyper(&ctx, step, 1e-3, 0.04);
            ctx.run(lamb.dispatches()).unwrap();
        }
        let dt = t.elapsed().as_secs_f64() / n as f64;
        let fill = crate::ops::fill::fill(&ctx, &tg, 0.5).unwrap();
        for _ in 0..2 {
            let t = std::time::Instant::now();
            ctx.run(std::slice::from_ref(&fill)).unwrap();
            eprintln!("  fill (calibration, one write pass): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        }
        for (name, d) in ["grad_sumsq", "clip", "moments", "trust", "apply"].iter().zip(lamb.dispatches()) {
            let t = std::time::Instant::now();
            ctx.run(std::slice::from_ref(d)).unwrap();
            eprintln!("  {name}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        }
        eprintln!("{}: LAMB step over {off} values: {:.1} ms ({:.2} GB/s of ~9 passes x 4 B)", ctx.describe(), dt * 1e3, off as f64 * 36.0 / dt / 1e9);
    }
}
