// Element-wise y (+)= f(a, b) over n elements, one thread each:
//   mode 0: a + b            (residual add)
//   mode 1: a                (copy, or gradient fan-in when accumulating)
//   mode 2: a · b[i mod c]   (per-channel scale of [rows, c]: ConvNeXt layer scale and its dx)
// Unused slots are bound to `a` again (every storage binding of a file must be bound).
struct Params { n: u32, c: u32, mode: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.n) { return; }
    var v: f32;
    switch p.mode {
        case 0u: { v = a[i] + b[i]; }
        case 1u: { v = a[i]; }
        default: { v = a[i] * b[i % p.c]; }
    }
    if (p.accumulate != 0u) { v += out[i]; }
    out[i] = v;
}
