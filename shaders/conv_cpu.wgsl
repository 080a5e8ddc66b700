// Gather convolution, large register tile for CPU adapters (lavapipe/llvmpipe, SwiftShader,
// WARP): same contract and bindings as conv.wgsl, TR = 16 rows x 16 output channels per
// thread.
//
// Why a second tile: on a CPU driver every storage-buffer element load of a divergent
// address is a per-lane scalar loop (tens of cycles per SIMD group), while an FMA is one
// vector instruction and a spilled accumulator is a plain stack access. Throughput is
// therefore set by elements loaded per multiply-add, (TR + TC) / (TR * TC): 0.375 for the
// 4x8 GPU tile, 0.125 here. On a GPU the 256 accumulators of this tile would spill to
// local memory, so GPUs keep conv.wgsl.
//
// Accumulators are mat4x4s: column q of a_ij holds rows 4i + q, output channels 4j..4j+3,
// updated as an outer product (x of 4 rows) x (4 weights).
struct Params {
    rows: u32, kin: u32, n: u32, nv: u32, taps: u32, ctiles: u32, has_bias: u32, accumulate: u32,
    total: u32, _p0: u32, _p1: u32, _p2: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read> wt: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const TR: u32 = 16u;
const TV: u32 = 4u; // vec4 columns: 16 output channels

fn put(r: u32, c: u32, v: vec4<f32>) {
    if (r >= p.rows) { return; }
    for (var j = 0u; j < 4u; j++) {
        let cj = c + j;
        if (cj < p.n) {
            var o = v[j];
            if (p.has_bias != 0u) { o += bias[cj]; }
            let i = r * p.n + cj;
            if (p.accumulate != 0u) { o += y[i]; }
            y[i] = o;
        }
    }
}

fn put4(r: u32, c: u32, m: mat4x4<f32>) {
    put(r, c, m[0]); put(r + 1u, c, m[1]); put(r + 2u, c, m[2]); put(r + 3u, c, m[3]);
}

fn outer(xs: vec4<f32>, w: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(w * xs.x, w * xs.y, w * xs.z, w * xs.w);
}

// Row offsets (map row starts) of 4 rows, clamped to the last row.
fn rows4(r: u32) -> vec4<u32> {
    let last = p.rows - 1u;
    return vec4<u32>(min(r, last), min(r + 1u, last), min(r + 2u, last), min(r + 3u, last)) * p.taps;
}

fn maps4(o: vec4<u32>, t: u32) -> vec4<i32> {
    return vec4<i32>(map[o.x + t], map[o.y + t], map[o.z + t], map[o.w + t]);
}

fn xs4(m: vec4<i32>, k: u32) -> vec4<f32> {
    let b = vec4<u32>(max(m, vec4<i32>(0))) * p.kin + k;
    let v = vec4<f32>(x[b.x], x[b.y], x[b.z], x[b.w]);
    return select(vec4<f32>(0.0), v, m >= vec4<i32>(0));
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    let tid = min(id, p.total - 1u);   // clamp, do not return early (uniform control flow)
    let ct = tid % p.ctiles;
    let r0 = (tid / p.ctiles) * TR;
    let oa = rows4(r0); let ob = rows4(r0 + 4u); let oc = rows4(r0 + 8u); let od = rows4(r0 + 12u);
    var a0 = mat4x4<f32>(); var a1 = mat4x4<f32>(); var a2 = mat4x4<f32>(); var a3 = mat4x4<f32>();
    var b0 = mat4x4<f32>(); var b1 = mat4x4<f32>(); var b2 = mat4x4<f32>(); var b3 = mat4x4<f32>();
    var c0 = mat4x4<f32>(); var c1 = mat4x4<f32>(); var c2 = mat4x4<f32>(); var c3 = mat4x4<f32>();
    var d0 = mat4x4<f32>(); var d1 = mat4x4<f32>(); var d2 = mat4x4<f32>(); var d3 = mat4x4<f32>();
    let kin = p.kin;
    let nv = p.nv;
    for (var t = 0u; t < p.taps; t++) {
        let ma = maps4(oa, t); let mb = maps4(ob, t); let mc = maps4(oc, t); let md = maps4(od, t);
        let mx = max(max(ma, mb), max(mc, md));
        // Skip taps that none of the rows reads (see conv.wgsl).
        if (max(max(mx.x, mx.y), max(mx.z, mx.w)) >= 0) {
            var wi = t * kin * nv + ct * TV;
            for (var k = 0u; k < kin; k++) {
                let w0 = wt[wi]; let w1 = wt[wi + 1u]; let w2 = wt[wi + 2u]; let w3 = wt[wi + 3u];
                let xa = xs4(ma, k); let xb = xs4(mb, k); let xc = xs4(mc, k); let xd = xs4(md, k);
                a0 += outer(xa, w0); a1 += outer(xa, w1); a2 += outer(xa, w2); a3 += outer(xa, w3);
                b0 += outer(xb, w0); b1 += outer(xb, w1); b2 += outer(xb, w2); b3 += outer(xb, w3);
                c0 += outer(xc, w0); c1 += outer(xc, w1); c2 += outer(xc, w2); c3 += outer(xc, w3);
                d0 += outer(xd, w0); d1 += outer(xd, w1); d2 += outer(xd, w2); d3 += outer(xd, w3);
                wi += nv;
            }
        }
    }
    if (id >= p.total) { return; }
    let c = ct * TV * 4u;
    put4(r0, c, a0); put4(r0, c + 4u, a1); put4(r0, c + 8u, a2); put4(r0, c + 12u, a3);
    put4(r0 + 4u, c, b0); put4(r0 + 4u, c + 4u, b1); put4(r0 + 4u, c + 8u, b2); put4(r0 + 4u, c + 12u, b3);
    put4(r0 + 8u, c, c0); put4(r0 + 8u, c + 4u, c1); put4(r0 + 8u, c + 8u, c2); put4(r0 + 8u, c + 12u, c3);
    put4(r0 + 12u, c, d0); put4(r0 + 12u, c + 4u, d1); put4(r0 + 12u, c + 8u, d2); put4(r0 + 12u, c + 12u, d3);
}
