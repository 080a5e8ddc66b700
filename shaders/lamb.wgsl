// LAMB as timm 0.5.4 `Lamb` (copied by the official SparK): global gradient-norm clip,
// Adam moments with bias correction, weight decay added to the update, per-tensor trust
// ratio ||p|| / ||update|| for the tensors that get weight decay (only while wd != 0:
// `always_adapt` is False), then p -= lr * trust * update.
//
// Parameters, gradients and both moments are flat buffers holding every tensor as a
// segment. Work is split into chunks that never straddle a segment, so each phase covers
// all tensors whatever their number:
//   grad_sumsq  (workgroup per chunk)   partials[c] = sum g^2
//   clip        (one workgroup)         scalars[4] = global norm, scalars[5] = clip factor
//   moments     (workgroup per chunk)   m, v updated; partials[n + c] = sum u^2, [2n + c] = sum p^2
//   trust       (thread per segment)    scalars[8 + s] = trust ratio (fixed-order chunk sum)
//   apply       (workgroup per chunk)   p -= lr * trust * u
// The per-chunk phases run once per group of consecutive chunks (chunks chunk_base ..
// chunk_base + group_chunks), each binding views of the four flat buffers small enough for
// max_storage_buffer_binding_size; chunk starts in the table are relative to the group's
// view. Partials use global chunk numbers, so clip and trust (one dispatch each) see every
// group.
// The update u is recomputed in `apply` from the stored moments instead of being kept in a
// parameter-sized scratch buffer. Every sum has a fixed order (strided per-thread sums, a
// fixed tree, then chunks in ascending order): no atomics, identical bits on every run.
struct Params {
    n_chunks: u32,
    n_segments: u32,
    chunk_base: u32,
    group_chunks: u32,
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
    max_grad_norm: f32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> params: array<f32>;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<f32>;
// chunks: (start, len, segment) x n_chunks, then segments: (first chunk, chunk count,
// weight decay flag) x n_segments.
@group(0) @binding(5) var<storage, read> table: array<u32>;
// [3, n_chunks]: per-chunk sums of g^2, update^2, p^2.
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;
// [0] lr, [1] wd, [2] 1 - beta1^step, [3] sqrt(1 - beta2^step) (written by the host each
// step), [4] global grad norm, [5] clip factor, [8 + s] trust ratio of segment s.
@group(0) @binding(7) var<storage, read_write> scalars: array<f32>;

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;

// Fixed-order workgroup sum (tree over the 64 per-thread partial sums).
fn wg_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Global chunk number of this workgroup, or n_chunks when it is past its group's end.
fn chunk_id(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    let lc = wg.x + wg.y * nwg.x;
    if (lc >= p.group_chunks) { return p.n_chunks; }
    return p.chunk_base + lc;
}

// Weight decay reaches the update (and the trust ratio applies) only for decay segments
// and only while the scheduled wd is non-zero, as `if weight_decay != 0` in timm.
fn decays(seg: u32) -> bool {
    return table[3u * p.n_chunks + 3u * seg + 2u] != 0u && scalars[1] != 0.0;
}

// Per-step values, loaded once per invocation (storage loads are not hoisted out of
// loops by every compiler; on llvmpipe each costs a bounds-checked gather).
struct Hyper { lr: f32, wd: f32, bc1: f32, sqrt_bc2: f32 }
fn hyper() -> Hyper {
    return Hyper(scalars[0], scalars[1], scalars[2], scalars[3]);
}

// The Adam update from the current moments, plus wd * w when decaying (timm:
// `(exp_avg / bc1) / (sqrt(exp_avg_sq) / sqrt(bc2) + eps)`, then `update.add_(p, alpha=wd)`).
fn update_of(m: f32, v: f32, w: f32, h: Hyper, decay: bool) -> f32 {
    let denom = sqrt(v) / h.sqrt_bc2 + p.eps;
    var u = (m / h.bc1) / denom;
    if (decay) { u += h.wd * w; }
    return u;
}

@compute @workgroup_size(64)
fn grad_sumsq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) l: vec3<u32>) {
    let c = chunk_id(wg, nwg);
    if (c >= p.n_chunks) { return; }
    let start = table[3u * c];
    let len = table[3u * c + 1u];
    var s = 0.0;
    for (var i = l.x; i < len; i += WG) {
        let g = grads[start + i];
        s += g * g;
    }
    let t = wg_sum(s, l.x);
    if (l.x == 0u) { partials[c] = t; }
}

@compute @workgroup_size(64)
fn clip(@builtin(local_invocation_id) l: vec3<u32>) {
    var s = 0.0;
    for (var c = l.x; c < p.n_chunks; c += WG) { s += partials[c]; }
    let norm = sqrt(wg_sum(s, l.x));
    if (l.x == 0u) {
        scalars[4] = norm;
        // timm: grad *= 1 / where(norm > max, norm / max, 1).
        scalars[5] = 1.0 / select(1.0, norm / p.max_grad_norm, norm > p.max_grad_norm);
    }
}

@compute @workgroup_size(64)
fn moments(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) l: vec3<u32>) {
    let c = chunk_id(wg, nwg);
    if (c >= p.n_chunks) { return; }
    let start = table[3u * c];
    let len = table[3u * c + 1u];
    let decay = decays(table[3u * c + 2u]);
    let clip_factor = scalars[5];
    let h = hyper();
    var su = 0.0;
    var sp = 0.0;
    for (var k = l.x; k < len; k += WG) {
        let i = start + k;
        let g = grads[i] * clip_factor;
        let m = exp_avg[i] * p.beta1 + p.one_minus_beta1 * g;
        let v = exp_avg_sq[i] * p.beta2 + p.one_minus_beta2 * g * g;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        let w = params[i];
        let u = update_of(m, v, w, h, decay);
        su += u * u;
        sp += w * w;
    }
    let tu = wg_sum(su, l.x);
    let tp = wg_sum(sp, l.x);
    if (l.x == 0u) {
        partials[p.n_chunks + c] = tu;
        partials[2u * p.n_chunks + c] = tp;
    }
}

@compute @workgroup_size(64)
fn trust(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let s = gid.x + gid.y * nwg.x * 64u;
    if (s >= p.n_segments) { return; }
    let base = 3u * p.n_chunks + 3u * s;
    let first = table[base];
    let count = table[base + 1u];
    var r = 1.0;
    if (decays(s)) {
        var su = 0.0;
        var sp = 0.0;
        for (var c = first; c < first + count; c++) {
            su += partials[p.n_chunks + c];
            sp += partials[2u * p.n_chunks + c];
        }
        let w_norm = sqrt(sp);
        let u_norm = sqrt(su);
        if (w_norm > 0.0 && u_norm > 0.0) { r = w_norm / u_norm; }
    }
    scalars[8u + s] = r;
}

@compute @workgroup_size(64)
fn apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) l: vec3<u32>) {
    let c = chunk_id(wg, nwg);
    if (c >= p.n_chunks) { return; }
    let start = table[3u * c];
    let len = table[3u * c + 1u];
    let seg = table[3u * c + 2u];
    let decay = decays(seg);
    let r = scalars[8u + seg];
    let h = hyper();
    for (var k = l.x; k < len; k += WG) {
        let i = start + k;
        let w = params[i];
        params[i] = w - h.lr * (update_of(exp_avg[i], exp_avg_sq[i], w, h, decay) * r);
    }
}
