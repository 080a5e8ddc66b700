// Max-pool over a neighbour map, as PyTorch's max_pool2d on SparK's zero-filled dense
// map: a tap with a row offers its value, an INACTIVE tap (in bounds, masked) offers 0,
// an OUT_OF_BOUNDS tap (padding) never takes part. Ties keep the first tap in scan order
// (strict >). argmax[r, c] = the winning tap (-1 if no tap is in bounds, y = 0 then).
struct Params { rows: u32, c: u32, taps: u32, _p: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> argmax: array<i32>;

const OUT_OF_BOUNDS: i32 = -1;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.rows * p.c) { return; }
    let r = i / p.c;
    let ch = i % p.c;
    var best = 0.0;
    var arg = -1;
    for (var t = 0u; t < p.taps; t++) {
        let m = map[r * p.taps + t];
        if (m == OUT_OF_BOUNDS) { continue; }
        var v = 0.0;
        if (m >= 0) { v = x[u32(m) * p.c + ch]; }
        if (arg < 0 || v > best) {
            best = v;
            arg = i32(t);
        }
    }
    y[i] = best;
    argmax[i] = arg;
}
