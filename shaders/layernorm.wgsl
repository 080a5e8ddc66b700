// LayerNorm over the c channels of each row of [rows, c] (ConvNeXt's channels-first LN on
// [B, C, H, W] is exactly this per-site LN in channels-last), biased variance, two-pass
// (mean, then centred squares) for accuracy. One thread per row: rows are many, and a
// cooperative workgroup reduction would need shared-memory barriers (slow on lavapipe).
struct Params { rows: u32, c: u32, inv_c: f32, eps: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> save_mean: array<f32>;    // [rows]
@group(0) @binding(6) var<storage, read_write> save_invstd: array<f32>;  // [rows]

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * 64u;
    if (r >= p.rows) { return; }
    let base = r * p.c;
    var s = 0.0;
    for (var j = 0u; j < p.c; j++) {
        s += x[base + j];
    }
    let m = s * p.inv_c;
    var sq = 0.0;
    for (var j = 0u; j < p.c; j++) {
        let d = x[base + j] - m;
        sq += d * d;
    }
    let inv = 1.0 / sqrt(sq * p.inv_c + p.eps);
    save_mean[r] = m;
    save_invstd[r] = inv;
    for (var j = 0u; j < p.c; j++) {
        y[base + j] = (x[base + j] - m) * inv * gamma[j] + beta[j];
    }
}
