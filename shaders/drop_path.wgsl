// Stochastic depth (timm `drop_path`) over rows [rows, c] in canonical (b, y, x) order:
//   out[i] (+)= a[i] · scale[(i / c) / rows_per_image]
// Forward: a = x, out = y (accumulate 0). Backward: a = dy, out = dx.
// The per-image scales (0 or 1/(1-p)) change every step, so they are read from a tensor
// the host rewrites, never passed in params (the static graph replays the same dispatches).
struct Params { n: u32, c: u32, rows_per_image: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> scale: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.n) { return; }
    var v = a[i] * scale[(i / p.c) / p.rows_per_image];
    if (p.accumulate != 0u) { v += out[i]; }
    out[i] = v;
}
