// Gather convolution for CPU adapters with N <= 4 output channels (the 3-channel output
// projection; the stem's data gradient): same contract as conv (build/conv_gather.rs); scalar input loads,
// vec4 weight loads from the padded re-laid weight. TR = 64 rows x 4 output channels per
// thread: a wide column tile would be mostly padding, so the tile grows along rows (see
// conv_cpu_vec4.wgsl for why CPU tiles are this large). Each loaded input serves only N
// multiply-adds here, so this kernel is load-bound whatever its shape.
//
// Accumulator a<i>_<j> (mat4x4) holds rows 4i..4i+3 (its columns) x channels 4j..4j+3,
// updated per input channel by the outer product of the 4 rows' inputs and 4 weights.
struct Params {
    rows: u32, kin: u32, n: u32, nv: u32, taps: u32, ctiles: u32, has_bias: u32, accumulate: u32,
    total: u32, row_groups: u32, _p1: u32, _p2: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read> wt: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

// Tile shape; TR and 4 * TV must match the CPU tiles in src/ops/conv.rs.
const TR: u32 = 64u;
const TV: u32 = 1u;
// Row interleave (see conv (build/conv_gather.rs)): a thread's rows are base + RI * i, and G consecutive
// row tiles share a phase.
const RI: u32 = 2u;
const G: u32 = 8u;

fn put(r: u32, cv: u32, v: vec4<f32>) {
    if (r >= p.rows) { return; }
    for (var j = 0u; j < 4u; j++) {
        let cj = cv * 4u + j;
        if (cj < p.n) {
            var o = v[j];
            if (p.has_bias != 0u) { o += bias[cj]; }
            let i = r * p.n + cj;
            if (p.accumulate != 0u) { o += y[i]; }
            y[i] = o;
        }
    }
}

// Stores tile rows j..j+3 (rows base + RI * (j + q)) of one vec4 of output channels.
fn put4(base: u32, j: u32, cv: u32, m: mat4x4<f32>) {
    let r = base + RI * j;
    put(r, cv, m[0]); put(r + RI, cv, m[1]); put(r + 2u * RI, cv, m[2]); put(r + 3u * RI, cv, m[3]);
}

// Map row starts of tile rows j..j+3, clamped to the last row.
fn rows4(base: u32, j: u32) -> vec4<u32> {
    let last = p.rows - 1u;
    let r = vec4<u32>(base) + RI * (vec4<u32>(j) + vec4<u32>(0u, 1u, 2u, 3u));
    return min(r, vec4<u32>(last)) * p.taps;
}

fn maps4(o: vec4<u32>, t: u32) -> vec4<i32> {
    return vec4<i32>(map[o.x + t], map[o.y + t], map[o.z + t], map[o.w + t]);
}

// Inputs of 4 rows (index bases b, validity v) at input channel k.
fn xs(b: vec4<u32>, v: vec4<bool>, k: u32) -> vec4<f32> {
    let s = vec4<f32>(x[b.x + k], x[b.y + k], x[b.z + k], x[b.w + k]);
    return select(vec4<f32>(0.0), s, v);
}

fn outer(xs: vec4<f32>, w: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(w * xs.x, w * xs.y, w * xs.z, w * xs.w);
}

// 8 invocations = one SIMD vector of llvmpipe: small layers still spread over every core.
@compute @workgroup_size(8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 8u;
    let ct = id % p.ctiles;
    let q = id / p.ctiles;
    let q2 = q / G;
    let base = (q2 / RI) * (RI * G * TR) + q2 % RI + RI * (q % G) * TR;
    if (base >= p.rows) { return; }
    let o0 = rows4(base, 0u);
    let o1 = rows4(base, 4u);
    let o2 = rows4(base, 8u);
    let o3 = rows4(base, 12u);
    let o4 = rows4(base, 16u);
    let o5 = rows4(base, 20u);
    let o6 = rows4(base, 24u);
    let o7 = rows4(base, 28u);
    let o8 = rows4(base, 32u);
    let o9 = rows4(base, 36u);
    let o10 = rows4(base, 40u);
    let o11 = rows4(base, 44u);
    let o12 = rows4(base, 48u);
    let o13 = rows4(base, 52u);
    let o14 = rows4(base, 56u);
    let o15 = rows4(base, 60u);
    var a0_0 = mat4x4<f32>();
    var a1_0 = mat4x4<f32>();
    var a2_0 = mat4x4<f32>();
    var a3_0 = mat4x4<f32>();
    var a4_0 = mat4x4<f32>();
    var a5_0 = mat4x4<f32>();
    var a6_0 = mat4x4<f32>();
    var a7_0 = mat4x4<f32>();
    var a8_0 = mat4x4<f32>();
    var a9_0 = mat4x4<f32>();
    var a10_0 = mat4x4<f32>();
    var a11_0 = mat4x4<f32>();
    var a12_0 = mat4x4<f32>();
    var a13_0 = mat4x4<f32>();
    var a14_0 = mat4x4<f32>();
    var a15_0 = mat4x4<f32>();
    let kstep = p.kin;
    let nv = p.nv;
    let zero = vec4<i32>(0);
    for (var t = 0u; t < p.taps; t++) {
        let m0 = maps4(o0, t);
        let m1 = maps4(o1, t);
        let m2 = maps4(o2, t);
        let m3 = maps4(o3, t);
        let m4 = maps4(o4, t);
        let m5 = maps4(o5, t);
        let m6 = maps4(o6, t);
        let m7 = maps4(o7, t);
        let m8 = maps4(o8, t);
        let m9 = maps4(o9, t);
        let m10 = maps4(o10, t);
        let m11 = maps4(o11, t);
        let m12 = maps4(o12, t);
        let m13 = maps4(o13, t);
        let m14 = maps4(o14, t);
        let m15 = maps4(o15, t);
        let mx = max(max(max(max(max(max(max(max(max(max(max(max(max(max(max(m0, m1), m2), m3), m4), m5), m6), m7), m8), m9), m10), m11), m12), m13), m14), m15);
        // Skip taps that none of the rows reads (see conv (build/conv_gather.rs)), and per 4 rows the input
        // loads of a tap that none of them reads: with a transposed 4x4/2 map, 3 of 4
        // taps are empty for a row, and the 4 rows of a group (8 consecutive rows) share
        // their image row, so they agree; so do the lanes of a SIMD vector (rows RI * TR
        // apart). Only the loads are conditional: an accumulator written in a branch costs
        // llvmpipe a blend per component.
        if (max(max(mx.x, mx.y), max(mx.z, mx.w)) >= 0) {
            let b0 = vec4<u32>(max(m0, zero)) * kstep; let v0 = m0 >= zero; let u0 = any(v0);
            let b1 = vec4<u32>(max(m1, zero)) * kstep; let v1 = m1 >= zero; let u1 = any(v1);
            let b2 = vec4<u32>(max(m2, zero)) * kstep; let v2 = m2 >= zero; let u2 = any(v2);
            let b3 = vec4<u32>(max(m3, zero)) * kstep; let v3 = m3 >= zero; let u3 = any(v3);
            let b4 = vec4<u32>(max(m4, zero)) * kstep; let v4 = m4 >= zero; let u4 = any(v4);
            let b5 = vec4<u32>(max(m5, zero)) * kstep; let v5 = m5 >= zero; let u5 = any(v5);
            let b6 = vec4<u32>(max(m6, zero)) * kstep; let v6 = m6 >= zero; let u6 = any(v6);
            let b7 = vec4<u32>(max(m7, zero)) * kstep; let v7 = m7 >= zero; let u7 = any(v7);
            let b8 = vec4<u32>(max(m8, zero)) * kstep; let v8 = m8 >= zero; let u8 = any(v8);
            let b9 = vec4<u32>(max(m9, zero)) * kstep; let v9 = m9 >= zero; let u9 = any(v9);
            let b10 = vec4<u32>(max(m10, zero)) * kstep; let v10 = m10 >= zero; let u10 = any(v10);
            let b11 = vec4<u32>(max(m11, zero)) * kstep; let v11 = m11 >= zero; let u11 = any(v11);
            let b12 = vec4<u32>(max(m12, zero)) * kstep; let v12 = m12 >= zero; let u12 = any(v12);
            let b13 = vec4<u32>(max(m13, zero)) * kstep; let v13 = m13 >= zero; let u13 = any(v13);
            let b14 = vec4<u32>(max(m14, zero)) * kstep; let v14 = m14 >= zero; let u14 = any(v14);
            let b15 = vec4<u32>(max(m15, zero)) * kstep; let v15 = m15 >= zero; let u15 = any(v15);
            var wi = t * p.kin * nv + ct * TV;
            for (var k = 0u; k < kstep; k++) {
                let w0 = wt[wi + 0u];
                var x0 = vec4<f32>(0.0);
                if (u0) { x0 = xs(b0, v0, k); }
                a0_0 += outer(x0, w0);
                var x1 = vec4<f32>(0.0);
                if (u1) { x1 = xs(b1, v1, k); }
                a1_0 += outer(x1, w0);
                var x2 = vec4<f32>(0.0);
                if (u2) { x2 = xs(b2, v2, k); }
                a2_0 += outer(x2, w0);
                var x3 = vec4<f32>(0.0);
                if (u3) { x3 = xs(b3, v3, k); }
                a3_0 += outer(x3, w0);
                var x4 = vec4<f32>(0.0);
                if (u4) { x4 = xs(b4, v4, k); }
                a4_0 += outer(x4, w0);
                var x5 = vec4<f32>(0.0);
                if (u5) { x5 = xs(b5, v5, k); }
                a5_0 += outer(x5, w0);
                var x6 = vec4<f32>(0.0);
                if (u6) { x6 = xs(b6, v6, k); }
                a6_0 += outer(x6, w0);
                var x7 = vec4<f32>(0.0);
                if (u7) { x7 = xs(b7, v7, k); }
                a7_0 += outer(x7, w0);
                var x8 = vec4<f32>(0.0);
                if (u8) { x8 = xs(b8, v8, k); }
                a8_0 += outer(x8, w0);
                var x9 = vec4<f32>(0.0);
                if (u9) { x9 = xs(b9, v9, k); }
                a9_0 += outer(x9, w0);
                var x10 = vec4<f32>(0.0);
                if (u10) { x10 = xs(b10, v10, k); }
                a10_0 += outer(x10, w0);
                var x11 = vec4<f32>(0.0);
                if (u11) { x11 = xs(b11, v11, k); }
                a11_0 += outer(x11, w0);
                var x12 = vec4<f32>(0.0);
                if (u12) { x12 = xs(b12, v12, k); }
                a12_0 += outer(x12, w0);
                var x13 = vec4<f32>(0.0);
                if (u13) { x13 = xs(b13, v13, k); }
                a13_0 += outer(x13, w0);
                var x14 = vec4<f32>(0.0);
                if (u14) { x14 = xs(b14, v14, k); }
                a14_0 += outer(x14, w0);
                var x15 = vec4<f32>(0.0);
                if (u15) { x15 = xs(b15, v15, k); }
                a15_0 += outer(x15, w0);
                wi += nv;
            }
        }
    }
    let c = ct * TV;
    // Epilogue as a loop over row groups (runtime bound, so it stays a loop): written out
    // per accumulator, the guarded stores make the kernel ~10x slower to compile.
    for (var i = 0u; i < p.row_groups; i++) {
        var s0 = mat4x4<f32>();
        switch i {
            case 0u: { s0 = a0_0; }
            case 1u: { s0 = a1_0; }
            case 2u: { s0 = a2_0; }
            case 3u: { s0 = a3_0; }
            case 4u: { s0 = a4_0; }
            case 5u: { s0 = a5_0; }
            case 6u: { s0 = a6_0; }
            case 7u: { s0 = a7_0; }
            case 8u: { s0 = a8_0; }
            case 9u: { s0 = a9_0; }
            case 10u: { s0 = a10_0; }
            case 11u: { s0 = a11_0; }
            case 12u: { s0 = a12_0; }
            case 13u: { s0 = a13_0; }
            case 14u: { s0 = a14_0; }
            case 15u: { s0 = a15_0; }
            default: {}
        }
        put4(base, 4u * i, c + 0u, s0);
    }
}
