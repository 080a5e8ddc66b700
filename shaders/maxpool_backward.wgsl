// Max-pool backward as a gather over the inverse map (no atomics):
//   dx[r, c] (+)= sum_t [o = inv[r, t] >= 0 and argmax[o, c] == t] dy[o, c]
// A window won by a masked zero (INACTIVE tap) sends its gradient nowhere, as in PyTorch
// where that zero is a constant of the densified map.
struct Params { rows: u32, c: u32, taps: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> inv: array<i32>;
@group(0) @binding(3) var<storage, read> argmax: array<i32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.rows * p.c) { return; }
    let r = i / p.c;
    let ch = i % p.c;
    var acc = 0.0;
    for (var t = 0u; t < p.taps; t++) {
        let o = inv[r * p.taps + t];
        if (o >= 0) {
            let j = u32(o) * p.c + ch;
            if (argmax[j] == i32(t)) { acc += dy[j]; }
        }
    }
    if (p.accumulate != 0u) { acc += dx[i]; }
    dx[i] = acc;
}
