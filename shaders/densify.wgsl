// SparK's densify step: dense[s, j] = rows[row_of[s], j] at active sites, the mask token
// fill[j] elsewhere. One thread per element of the dense [sites, c] map.
struct Params { sites: u32, c: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> rows: array<f32>;
@group(0) @binding(2) var<storage, read> row_of: array<i32>;  // [sites], −1 = inactive
@group(0) @binding(3) var<storage, read> fill: array<f32>;    // [c]
@group(0) @binding(4) var<storage, read_write> dense: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.sites * p.c) { return; }
    let s = i / p.c;
    let j = i % p.c;
    let r = row_of[s];
    if (r >= 0) {
        dense[i] = rows[u32(r) * p.c + j];
    } else {
        dense[i] = fill[j];
    }
}
