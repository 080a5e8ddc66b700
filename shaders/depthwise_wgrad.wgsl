// Depthwise weight gradient, split-K over output rows:
//   partials[s, c * taps + t] = sum over rows r of split s of x[map[r, t], c] * dy[r, c]
// then reduce_partials over s (fixed order, no float atomics). A thread owns 4 channels of
// one tap and one split; consecutive threads take consecutive channel groups, so their
// x and dy loads are contiguous.
struct Params { rows: u32, c: u32, taps: u32, ctiles: u32, rows_per_split: u32, total: u32, count: u32, _p: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    let tid = min(id, p.total - 1u);   // clamp, do not return early (uniform control flow)
    let ct = tid % p.ctiles;
    let q = tid / p.ctiles;
    let t = q % p.taps;
    let s = q / p.taps;
    let c0 = ct * 4u;
    let cl = p.c - 1u;
    let cc = vec4<u32>(min(c0, cl), min(c0 + 1u, cl), min(c0 + 2u, cl), min(c0 + 3u, cl));
    var acc = vec4<f32>(0.0);
    let r_begin = s * p.rows_per_split;
    let r_end = min(r_begin + p.rows_per_split, p.rows);
    for (var r = r_begin; r < r_end; r++) {
        let m = map[r * p.taps + t];
        let b = u32(max(m, 0)) * p.c;
        let xv = select(vec4<f32>(0.0), vec4<f32>(x[b + cc.x], x[b + cc.y], x[b + cc.z], x[b + cc.w]), m >= 0);
        let g = r * p.c;
        let gv = vec4<f32>(dy[g + cc.x], dy[g + cc.y], dy[g + cc.z], dy[g + cc.w]);
        acc = fma(xv, gv, acc);
    }
    if (id >= p.total) { return; }
    let base = s * p.count;
    for (var j = 0u; j < 4u; j++) {
        if (c0 + j < p.c) { partials[base + (c0 + j) * p.taps + t] = acc[j]; }
    }
}
