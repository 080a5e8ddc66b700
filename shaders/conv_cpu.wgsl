// Gather convolution for CPU adapters, any K and N (the 3-channel stem input): same
// contract as conv (build/conv_gather.rs); scalar input loads, vec4 weight loads from the padded re-laid
// weight. TR = 32 rows x 32 output channels per thread (see
// conv_cpu_vec4.wgsl for why CPU tiles are this large).
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
const TR: u32 = 32u;
const TV: u32 = 8u;
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
    var a0_0 = mat4x4<f32>(); var a0_1 = mat4x4<f32>(); var a0_2 = mat4x4<f32>(); var a0_3 = mat4x4<f32>(); var a0_4 = mat4x4<f32>(); var a0_5 = mat4x4<f32>(); var a0_6 = mat4x4<f32>(); var a0_7 = mat4x4<f32>();
    var a1_0 = mat4x4<f32>(); var a1_1 = mat4x4<f32>(); var a1_2 = mat4x4<f32>(); var a1_3 = mat4x4<f32>(); var a1_4 = mat4x4<f32>(); var a1_5 = mat4x4<f32>(); var a1_6 = mat4x4<f32>(); var a1_7 = mat4x4<f32>();
    var a2_0 = mat4x4<f32>(); var a2_1 = mat4x4<f32>(); var a2_2 = mat4x4<f32>(); var a2_3 = mat4x4<f32>(); var a2_4 = mat4x4<f32>(); var a2_5 = mat4x4<f32>(); var a2_6 = mat4x4<f32>(); var a2_7 = mat4x4<f32>();
    var a3_0 = mat4x4<f32>(); var a3_1 = mat4x4<f32>(); var a3_2 = mat4x4<f32>(); var a3_3 = mat4x4<f32>(); var a3_4 = mat4x4<f32>(); var a3_5 = mat4x4<f32>(); var a3_6 = mat4x4<f32>(); var a3_7 = mat4x4<f32>();
    var a4_0 = mat4x4<f32>(); var a4_1 = mat4x4<f32>(); var a4_2 = mat4x4<f32>(); var a4_3 = mat4x4<f32>(); var a4_4 = mat4x4<f32>(); var a4_5 = mat4x4<f32>(); var a4_6 = mat4x4<f32>(); var a4_7 = mat4x4<f32>();
    var a5_0 = mat4x4<f32>(); var a5_1 = mat4x4<f32>(); var a5_2 = mat4x4<f32>(); var a5_3 = mat4x4<f32>(); var a5_4 = mat4x4<f32>(); var a5_5 = mat4x4<f32>(); var a5_6 = mat4x4<f32>(); var a5_7 = mat4x4<f32>();
    var a6_0 = mat4x4<f32>(); var a6_1 = mat4x4<f32>(); var a6_2 = mat4x4<f32>(); var a6_3 = mat4x4<f32>(); var a6_4 = mat4x4<f32>(); var a6_5 = mat4x4<f32>(); var a6_6 = mat4x4<f32>(); var a6_7 = mat4x4<f32>();
    var a7_0 = mat4x4<f32>(); var a7_1 = mat4x4<f32>(); var a7_2 = mat4x4<f32>(); var a7_3 = mat4x4<f32>(); var a7_4 = mat4x4<f32>(); var a7_5 = mat4x4<f32>(); var a7_6 = mat4x4<f32>(); var a7_7 = mat4x4<f32>();
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
        let mx = max(max(max(max(max(max(max(m0, m1), m2), m3), m4), m5), m6), m7);
        // Skip taps that none of the rows reads (see conv (build/conv_gather.rs)).
        if (max(max(mx.x, mx.y), max(mx.z, mx.w)) >= 0) {
            let b0 = vec4<u32>(max(m0, zero)) * kstep; let v0 = m0 >= zero;
            let b1 = vec4<u32>(max(m1, zero)) * kstep; let v1 = m1 >= zero;
            let b2 = vec4<u32>(max(m2, zero)) * kstep; let v2 = m2 >= zero;
            let b3 = vec4<u32>(max(m3, zero)) * kstep; let v3 = m3 >= zero;
            let b4 = vec4<u32>(max(m4, zero)) * kstep; let v4 = m4 >= zero;
            let b5 = vec4<u32>(max(m5, zero)) * kstep; let v5 = m5 >= zero;
            let b6 = vec4<u32>(max(m6, zero)) * kstep; let v6 = m6 >= zero;
            let b7 = vec4<u32>(max(m7, zero)) * kstep; let v7 = m7 >= zero;
            var wi = t * p.kin * nv + ct * TV;
            for (var k = 0u; k < kstep; k++) {
                let w0 = wt[wi + 0u];
                let w1 = wt[wi + 1u];
                let w2 = wt[wi + 2u];
                let w3 = wt[wi + 3u];
                let w4 = wt[wi + 4u];
                let w5 = wt[wi + 5u];
                let w6 = wt[wi + 6u];
                let w7 = wt[wi + 7u];
                let x0 = xs(b0, v0, k);
                a0_0 += outer(x0, w0); a0_1 += outer(x0, w1); a0_2 += outer(x0, w2); a0_3 += outer(x0, w3); a0_4 += outer(x0, w4); a0_5 += outer(x0, w5); a0_6 += outer(x0, w6); a0_7 += outer(x0, w7);
                let x1 = xs(b1, v1, k);
                a1_0 += outer(x1, w0); a1_1 += outer(x1, w1); a1_2 += outer(x1, w2); a1_3 += outer(x1, w3); a1_4 += outer(x1, w4); a1_5 += outer(x1, w5); a1_6 += outer(x1, w6); a1_7 += outer(x1, w7);
                let x2 = xs(b2, v2, k);
                a2_0 += outer(x2, w0); a2_1 += outer(x2, w1); a2_2 += outer(x2, w2); a2_3 += outer(x2, w3); a2_4 += outer(x2, w4); a2_5 += outer(x2, w5); a2_6 += outer(x2, w6); a2_7 += outer(x2, w7);
                let x3 = xs(b3, v3, k);
                a3_0 += outer(x3, w0); a3_1 += outer(x3, w1); a3_2 += outer(x3, w2); a3_3 += outer(x3, w3); a3_4 += outer(x3, w4); a3_5 += outer(x3, w5); a3_6 += outer(x3, w6); a3_7 += outer(x3, w7);
                let x4 = xs(b4, v4, k);
                a4_0 += outer(x4, w0); a4_1 += outer(x4, w1); a4_2 += outer(x4, w2); a4_3 += outer(x4, w3); a4_4 += outer(x4, w4); a4_5 += outer(x4, w5); a4_6 += outer(x4, w6); a4_7 += outer(x4, w7);
                let x5 = xs(b5, v5, k);
                a5_0 += outer(x5, w0); a5_1 += outer(x5, w1); a5_2 += outer(x5, w2); a5_3 += outer(x5, w3); a5_4 += outer(x5, w4); a5_5 += outer(x5, w5); a5_6 += outer(x5, w6); a5_7 += outer(x5, w7);
                let x6 = xs(b6, v6, k);
                a6_0 += outer(x6, w0); a6_1 += outer(x6, w1); a6_2 += outer(x6, w2); a6_3 += outer(x6, w3); a6_4 += outer(x6, w4); a6_5 += outer(x6, w5); a6_6 += outer(x6, w6); a6_7 += outer(x6, w7);
                let x7 = xs(b7, v7, k);
                a7_0 += outer(x7, w0); a7_1 += outer(x7, w1); a7_2 += outer(x7, w2); a7_3 += outer(x7, w3); a7_4 += outer(x7, w4); a7_5 += outer(x7, w5); a7_6 += outer(x7, w6); a7_7 += outer(x7, w7);
                wi += nv;
            }
        }
    }
    let c = ct * TV;
    // Epilogue as a loop over row groups (runtime bound, so it stays a loop): written out
    // per accumulator, the guarded stores make the kernel ~10x slower to compile.
    for (var i = 0u; i < p.row_groups; i++) {
        var s0 = mat4x4<f32>(); var s1 = mat4x4<f32>(); var s2 = mat4x4<f32>(); var s3 = mat4x4<f32>(); var s4 = mat4x4<f32>(); var s5 = mat4x4<f32>(); var s6 = mat4x4<f32>(); var s7 = mat4x4<f32>();
        switch i {
            case 0u: { s0 = a0_0; s1 = a0_1; s2 = a0_2; s3 = a0_3; s4 = a0_4; s5 = a0_5; s6 = a0_6; s7 = a0_7; }
            case 1u: { s0 = a1_0; s1 = a1_1; s2 = a1_2; s3 = a1_3; s4 = a1_4; s5 = a1_5; s6 = a1_6; s7 = a1_7; }
            case 2u: { s0 = a2_0; s1 = a2_1; s2 = a2_2; s3 = a2_3; s4 = a2_4; s5 = a2_5; s6 = a2_6; s7 = a2_7; }
            case 3u: { s0 = a3_0; s1 = a3_1; s2 = a3_2; s3 = a3_3; s4 = a3_4; s5 = a3_5; s6 = a3_6; s7 = a3_7; }
            case 4u: { s0 = a4_0; s1 = a4_1; s2 = a4_2; s3 = a4_3; s4 = a4_4; s5 = a4_5; s6 = a4_6; s7 = a4_7; }
            case 5u: { s0 = a5_0; s1 = a5_1; s2 = a5_2; s3 = a5_3; s4 = a5_4; s5 = a5_5; s6 = a5_6; s7 = a5_7; }
            case 6u: { s0 = a6_0; s1 = a6_1; s2 = a6_2; s3 = a6_3; s4 = a6_4; s5 = a6_5; s6 = a6_6; s7 = a6_7; }
            case 7u: { s0 = a7_0; s1 = a7_1; s2 = a7_2; s3 = a7_3; s4 = a7_4; s5 = a7_5; s6 = a7_6; s7 = a7_7; }
            default: {}
        }
        put4(base, 4u * i, c + 0u, s0); put4(base, 4u * i, c + 1u, s1); put4(base, 4u * i, c + 2u, s2); put4(base, 4u * i, c + 3u, s3); put4(base, 4u * i, c + 4u, s4); put4(base, 4u * i, c + 5u, s5); put4(base, 4u * i, c + 6u, s6); put4(base, 4u * i, c + 7u, s7);
    }
}
