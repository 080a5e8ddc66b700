// Bias gradient partials of a convolution (dense, transposed or depthwise alike):
//   partials[s, c] = sum over rows r of split s of dy[r, c]   (rows in ascending order)
// followed by reduce_partials over s: a fixed-order sum, no float atomics.
struct Params { rows: u32, c: u32, rows_per_split: u32, total: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    if (id >= p.total) { return; }
    let c = id % p.c;
    let s = id / p.c;
    let r_begin = s * p.rows_per_split;
    let r_end = min(r_begin + p.rows_per_split, p.rows);
    var acc = 0.0;
    for (var r = r_begin; r < r_end; r++) {
        acc += dy[r * p.c + c];
    }
    partials[id] = acc;
}
