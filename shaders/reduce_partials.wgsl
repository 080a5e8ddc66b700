// out[j] (+)= sum over s of partials[s * n + j], s ascending: the fixed-order second half
// of every split-K reduction (weight gradients, BatchNorm statistics, norms). WGSL has no
// portable float atomics, and a fixed order makes two runs bitwise identical.
struct Params { n: u32, splits: u32, accumulate: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = gid.x + gid.y * nwg.x * 64u;
    if (j >= p.n) { return; }
    var acc = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        acc += partials[s * p.n + j];
    }
    acc *= p.scale;
    if (p.accumulate != 0u) { acc += out[j]; }
    out[j] = acc;
}
