// First half of the mask-token gradient d_fill[j] = Σ over inactive sites s of
// d_dense[s, j]: thread (k, j) sums the sites of split k in ascending order into
// partials[k * c + j]; reduce_partials adds the splits in a fixed order (no float atomics,
// so two runs give identical bits).
struct Params { sites: u32, c: u32, splits: u32, chunk: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> d_dense: array<f32>;
@group(0) @binding(2) var<storage, read> row_of: array<i32>;
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 64u;
    if (t >= p.splits * p.c) { return; }
    let k = t / p.c;
    let j = t % p.c;
    let end = min(p.sites, (k + 1u) * p.chunk);
    var acc = 0.0;
    for (var s = k * p.chunk; s < end; s++) {
        if (row_of[s] < 0) {
            acc += d_dense[s * p.c + j];
        }
    }
    partials[t] = acc;
}
