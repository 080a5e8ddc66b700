// out[r, j] (+)= dense[site_of_row[r], j]: reading the active sites of a dense map into
// rows (visible input pixels; the row gradient of densify's scatter, which accumulates
// into the encoder's fan-in). One thread per output element.
struct Params { rows: u32, c: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dense: array<f32>;
@group(0) @binding(2) var<storage, read> site_of_row: array<i32>;  // [rows]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.rows * p.c) { return; }
    let r = i / p.c;
    let j = i % p.c;
    var v = dense[u32(site_of_row[r]) * p.c + j];
    if (p.accumulate != 0u) { v += out[i]; }
    out[i] = v;
}
