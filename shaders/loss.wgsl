// SparK's reconstruction loss (official `SparK.forward`) and its gradient, fused.
//
// Per patch of the unmasked input: target = (x - mean) / sqrt(var_unbiased + 1e-6) over
// all 3*p*p values; per-patch loss = mean of (rec - target)^2; the loss averages it over
// the masked patches: sum(per_patch * masked) / (n_masked + 1e-8).
//
// Three entry points, replayed in order every step (the mask changes each step, so it is
// read here, never baked into the parameters):
//   count_masked: one workgroup, scratch[0] = n_masked + 1e-8;
//   patch_loss:   one workgroup per patch, per_patch and d_rec (needs the denominator);
//   total:        one workgroup, loss[0] = sum(per_patch) / scratch[0].
// Every sum is a strided per-thread sum then a fixed tree: no atomics, the same bits on
// every run. A batch over the adapter's binding limit runs patch_loss once per chunk of
// images (graph::chunks): image, rec and d_rec are then the chunk's images, `batch` and
// `n_patches` count the chunk's, and its patches are `patch_base ..` of visible and
// per_patch (count_masked and total run once over every patch). Mean and variance take two passes (the one-pass formula cancels badly when
// a patch's mean is large relative to its spread).
struct Params { batch: u32, h: u32, w: u32, psz: u32, fh: u32, fw: u32, n_patches: u32, patch_base: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> image: array<f32>;        // [B, H, W, 3] (of the chunk)
@group(0) @binding(2) var<storage, read> rec: array<f32>;          // [B, H, W, 3] (of the chunk)
@group(0) @binding(3) var<storage, read> visible: array<u32>;      // [B, fh, fw], 1 = visible
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;   // [1]
@group(0) @binding(5) var<storage, read_write> per_patch: array<f32>; // [B, fh, fw]
@group(0) @binding(6) var<storage, read_write> d_rec: array<f32>;  // [B, H, W, 3] (of the chunk)
@group(0) @binding(7) var<storage, read_write> scratch: array<f32>; // [0]: n_masked + 1e-8

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
    // Everyone has read red[0] before a following wg_sum overwrites it.
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn count_masked(@builtin(local_invocation_id) l: vec3<u32>) {
    let lid = l.x;
    var c = 0.0;
    for (var i = lid; i < p.n_patches; i += WG) {
        if (visible[i] == 0u) { c += 1.0; }
    }
    // Counts are exact in f32 up to 2^24 patches.
    let n = wg_sum(c, lid);
    if (lid == 0u) { scratch[0] = n + 1e-8; }
}

// Index into [B, H, W, 3] of element i (in (row, col, channel) order) of patch (b, py, px).
fn patch_addr(b: u32, py: u32, px: u32, i: u32) -> u32 {
    let row_len = 3u * p.psz;
    let r = i / row_len;
    let j = i - r * row_len;
    return ((b * p.h + py * p.psz + r) * p.w + px * p.psz) * 3u + j;
}

@compute @workgroup_size(64)
fn patch_loss(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) l: vec3<u32>,
) {
    let pid = wg.x + wg.y * nwg.x;
    if (pid >= p.n_patches) { return; }
    let lid = l.x;
    let per_img = p.fh * p.fw;
    let b = pid / per_img;
    let q = pid - b * per_img;
    let py = q / p.fw;
    let px = q - py * p.fw;
    let n = 3u * p.psz * p.psz;
    let nf = f32(n);

    var s = 0.0;
    for (var i = lid; i < n; i += WG) { s += image[patch_addr(b, py, px, i)]; }
    let mean = wg_sum(s, lid) / nf;

    var s2 = 0.0;
    for (var i = lid; i < n; i += WG) {
        let d = image[patch_addr(b, py, px, i)] - mean;
        s2 += d * d;
    }
    // Unbiased variance, as torch.var; the official code divides by sqrt(var + 1e-6).
    let sd = sqrt(wg_sum(s2, lid) / f32(n - 1u) + 1e-6);

    // The official loss multiplies the per-patch loss by the masked flag (no branch, so the
    // barriers below stay in uniform control flow).
    let masked = select(0.0, 1.0, visible[p.patch_base + pid] == 0u);
    // d loss / d rec = 2 (rec - target) / n / (n_masked + 1e-8) on masked patches.
    let g = masked / scratch[0] / nf;
    var se = 0.0;
    for (var i = lid; i < n; i += WG) {
        let a = patch_addr(b, py, px, i);
        let diff = rec[a] - (image[a] - mean) / sd;
        se += diff * diff;
        d_rec[a] = 2.0 * diff * g;
    }
    let pl = wg_sum(se, lid) / nf;
    if (lid == 0u) { per_patch[p.patch_base + pid] = pl * masked; }
}

@compute @workgroup_size(64)
fn total(@builtin(local_invocation_id) l: vec3<u32>) {
    let lid = l.x;
    var s = 0.0;
    for (var i = lid; i < p.n_patches; i += WG) { s += per_patch[i]; }
    let t = wg_sum(s, lid);
    if (lid == 0u) { loss[0] = t / scratch[0]; }
}
