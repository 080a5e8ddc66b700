// First half of the split-K column dot product out[j] = Σ_r a[r, j]·b[r, j] over [rows, c]
// (the layer-scale gradient): thread (s, j) sums the rows of split s in ascending order
// into partials[s * c + j]; reduce_partials adds the splits in a fixed order. No float
// atomics, so two runs give identical bits.
struct Params { rows: u32, c: u32, splits: u32, chunk: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 64u;
    if (t >= p.splits * p.c) { return; }
    let s = t / p.c;
    let j = t % p.c;
    let end = min(p.rows, (s + 1u) * p.chunk);
    var acc = 0.0;
    for (var r = s * p.chunk; r < end; r++) {
        let i = r * p.c + j;
        acc += a[i] * b[i];
    }
    partials[t] = acc;
}
