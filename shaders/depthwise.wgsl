// Depthwise gather convolution (ConvNeXt's 7x7, weight [C, 1, kh, kw]):
//   y[r, c] (+)= bias[c] + sum_t x[map[r, t], c] * w[c * taps + t]
// Negative map entries read zero. The data gradient is this kernel over the inverse map
// (the weight of tap t is the same both ways), without bias.
//
// A thread owns TR = 4 rows x 4 channels (register tile; see conv.wgsl for why no
// workgroup memory). Consecutive threads take consecutive channel groups of the same
// rows: their map loads coincide and their x loads are contiguous.
struct Params { rows: u32, c: u32, taps: u32, ctiles: u32, has_bias: u32, accumulate: u32, total: u32, _p: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const TR: u32 = 4u;

fn put(r: u32, c: u32, v: vec4<f32>) {
    if (r >= p.rows) { return; }
    for (var j = 0u; j < 4u; j++) {
        let cj = c + j;
        if (cj < p.c) {
            var o = v[j];
            if (p.has_bias != 0u) { o += bias[cj]; }
            let i = r * p.c + cj;
            if (p.accumulate != 0u) { o += y[i]; }
            y[i] = o;
        }
    }
}

fn row(m: i32, c: vec4<u32>) -> vec4<f32> {
    let b = u32(max(m, 0)) * p.c;
    let v = vec4<f32>(x[b + c.x], x[b + c.y], x[b + c.z], x[b + c.w]);
    return select(vec4<f32>(0.0), v, m >= 0);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    let tid = min(id, p.total - 1u);   // clamp, do not return early (uniform control flow)
    let ct = tid % p.ctiles;
    let r0 = (tid / p.ctiles) * TR;
    let last = p.rows - 1u;
    let ra = min(r0, last) * p.taps;
    let rb = min(r0 + 1u, last) * p.taps;
    let rc = min(r0 + 2u, last) * p.taps;
    let rd = min(r0 + 3u, last) * p.taps;
    let c0 = ct * 4u;
    // Channels past the end read the last one; their sums are never stored.
    let cl = p.c - 1u;
    let cc = vec4<u32>(min(c0, cl), min(c0 + 1u, cl), min(c0 + 2u, cl), min(c0 + 3u, cl));
    let wc = cc * p.taps;
    var a = vec4<f32>(0.0); var b = vec4<f32>(0.0); var c = vec4<f32>(0.0); var d = vec4<f32>(0.0);
    for (var t = 0u; t < p.taps; t++) {
        let wv = vec4<f32>(w[wc.x + t], w[wc.y + t], w[wc.z + t], w[wc.w + t]);
        a = fma(row(map[ra + t], cc), wv, a);
        b = fma(row(map[rb + t], cc), wv, b);
        c = fma(row(map[rc + t], cc), wv, c);
        d = fma(row(map[rd + t], cc), wv, d);
    }
    if (id >= p.total) { return; }
    put(r0, c0, a); put(r0 + 1u, c0, b); put(r0 + 2u, c0, c); put(r0 + 3u, c0, d);
}
