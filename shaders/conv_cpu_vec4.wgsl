// Gather convolution for CPU adapters when K and N are multiples of 4 (every ResNet and
// ConvNeXt layer except the 3-channel stem and output): same contract as conv (build/conv_gather.rs), with
// x, wt and y read and written as vec4s. TR = 32 rows x 32 output channels per thread.
//
// Why so large a tile: a CPU driver (llvmpipe) turns each storage load of a divergent
// address into a scalar loop over the SIMD lanes (tens of cycles per loaded component),
// while a multiply-add is one SIMD instruction and a spilled accumulator a plain stack
// access. Speed is set by components loaded per multiply-add, (TR + TC) / (TR * TC):
// 0.375 for the 4x8 GPU tile, 0.0625 here. Measured on llvmpipe (3x3, 128 -> 128):
// 16x16 2.2, 32x32 4.0, 64x32 4.2 GFLOP/s per CPU-second; larger tiles compile slower.
// On a GPU these accumulators would spill to local memory, so GPUs keep conv (build/conv_gather.rs).
//
// Accumulator a<i>_<j> (mat4x4) holds rows 4i..4i+3 (its columns) x channels 4j..4j+3.
// With X_i the 4 rows' inputs at 4 consecutive input channels (columns) and W_j the
// weights of those 4 input channels (columns), one step is a<i>_<j> += W_j * X_i.
struct Params {
    rows: u32, kin: u32, n: u32, nv: u32, taps: u32, ctiles: u32, has_bias: u32, accumulate: u32,
    total: u32, row_groups: u32, _p1: u32, _p2: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read> wt: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<vec4<f32>>;

// Tile shape; TR and 4 * TV must match the CPU tiles in src/ops/conv.rs.
const TR: u32 = 32u;
const TV: u32 = 8u;
// Row interleave (see conv (build/conv_gather.rs)): a thread's rows are base + RI * i, and G consecutive
// row tiles share a phase.
const RI: u32 = 2u;
const G: u32 = 8u;

fn put(r: u32, cv: u32, v: vec4<f32>) {
    let nv = p.n / 4u;
    if (r >= p.rows || cv >= nv) { return; }
    var o = v;
    if (p.has_bias != 0u) { o += bias[cv]; }
    let i = r * nv + cv;
    if (p.accumulate != 0u) { o += y[i]; }
    y[i] = o;
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

// Inputs of 4 rows (vec4 index bases b, validity v) at vec4 column k4, as matrix columns.
fn xs4(b: vec4<u32>, v: vec4<bool>, k4: u32) -> mat4x4<f32> {
    let z = vec4<f32>(0.0);
    return mat4x4<f32>(select(z, x[b.x + k4], v.x), select(z, x[b.y + k4], v.y),
                       select(z, x[b.z + k4], v.z), select(z, x[b.w + k4], v.w));
}

// Weights of 4 consecutive input channels (columns) for one vec4 of output channels.
fn ws4(i: u32, nv: u32) -> mat4x4<f32> {
    return mat4x4<f32>(wt[i], wt[i + nv], wt[i + 2u * nv], wt[i + 3u * nv]);
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
    let kstep = p.kin / 4u;
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
        // Skip taps that none of the rows reads (see conv (build/conv_gather.rs)), and per 4 rows the input
        // loads of a tap that none of them reads (see conv_cpu_narrow.wgsl; only the loads
        // are conditional: an accumulator written in a branch costs llvmpipe a blend).
        if (max(max(mx.x, mx.y), max(mx.z, mx.w)) >= 0) {
            let b0 = vec4<u32>(max(m0, zero)) * kstep; let v0 = m0 >= zero; let u0 = any(v0);
            let b1 = vec4<u32>(max(m1, zero)) * kstep; let v1 = m1 >= zero; let u1 = any(v1);
            let b2 = vec4<u32>(max(m2, zero)) * kstep; let v2 = m2 >= zero; let u2 = any(v2);
            let b3 = vec4<u32>(max(m3, zero)) * kstep; let v3 = m3 >= zero; let u3 = any(v3);
            let b4 = vec4<u32>(max(m4, zero)) * kstep; let v4 = m4 >= zero; let u4 = any(v4);
            let b5 = vec4<u32>(max(m5, zero)) * kstep; let v5 = m5 >= zero; let u5 = any(v5);
            let b6 = vec4<u32>(max(m6, zero)) * kstep; let v6 = m6 >= zero; let u6 = any(v6);
            let b7 = vec4<u32>(max(m7, zero)) * kstep; let v7 = m7 >= zero; let u7 = any(v7);
            var wi = t * p.kin * nv + ct * TV;
            for (var k4 = 0u; k4 < kstep; k4++) {
                let w0 = ws4(wi + 0u, nv);
                let w1 = ws4(wi + 1u, nv);
                let w2 = ws4(wi + 2u, nv);
                let w3 = ws4(wi + 3u, nv);
                let w4 = ws4(wi + 4u, nv);
                let w5 = ws4(wi + 5u, nv);
                let w6 = ws4(wi + 6u, nv);
                let w7 = ws4(wi + 7u, nv);
                var x0 = mat4x4<f32>();
                if (u0) { x0 = xs4(b0, v0, k4); }
                a0_0 += w0 * x0; a0_1 += w1 * x0; a0_2 += w2 * x0; a0_3 += w3 * x0; a0_4 += w4 * x0; a0_5 += w5 * x0; a0_6 += w6 * x0; a0_7 += w7 * x0;
                var x1 = mat4x4<f32>();
                if (u1) { x1 = xs4(b1, v1, k4); }
                a1_0 += w0 * x1; a1_1 += w1 * x1; a1_2 += w2 * x1; a1_3 += w3 * x1; a1_4 += w4 * x1; a1_5 += w5 * x1; a1_6 += w6 * x1; a1_7 += w7 * x1;
                var x2 = mat4x4<f32>();
                if (u2) { x2 = xs4(b2, v2, k4); }
                a2_0 += w0 * x2; a2_1 += w1 * x2; a2_2 += w2 * x2; a2_3 += w3 * x2; a2_4 += w4 * x2; a2_5 += w5 * x2; a2_6 += w6 * x2; a2_7 += w7 * x2;
                var x3 = mat4x4<f32>();
                if (u3) { x3 = xs4(b3, v3, k4); }
                a3_0 += w0 * x3; a3_1 += w1 * x3; a3_2 += w2 * x3; a3_3 += w3 * x3; a3_4 += w4 * x3; a3_5 += w5 * x3; a3_6 += w6 * x3; a3_7 += w7 * x3;
                var x4 = mat4x4<f32>();
                if (u4) { x4 = xs4(b4, v4, k4); }
                a4_0 += w0 * x4; a4_1 += w1 * x4; a4_2 += w2 * x4; a4_3 += w3 * x4; a4_4 += w4 * x4; a4_5 += w5 * x4; a4_6 += w6 * x4; a4_7 += w7 * x4;
                var x5 = mat4x4<f32>();
                if (u5) { x5 = xs4(b5, v5, k4); }
                a5_0 += w0 * x5; a5_1 += w1 * x5; a5_2 += w2 * x5; a5_3 += w3 * x5; a5_4 += w4 * x5; a5_5 += w5 * x5; a5_6 += w6 * x5; a5_7 += w7 * x5;
                var x6 = mat4x4<f32>();
                if (u6) { x6 = xs4(b6, v6, k4); }
                a6_0 += w0 * x6; a6_1 += w1 * x6; a6_2 += w2 * x6; a6_3 += w3 * x6; a6_4 += w4 * x6; a6_5 += w5 * x6; a6_6 += w6 * x6; a6_7 += w7 * x6;
                var x7 = mat4x4<f32>();
                if (u7) { x7 = xs4(b7, v7, k4); }
                a7_0 += w0 * x7; a7_1 += w1 * x7; a7_2 += w2 * x7; a7_3 += w3 * x7; a7_4 += w4 * x7; a7_5 += w5 * x7; a7_6 += w6 * x7; a7_7 += w7 * x7;
                wi += 4u * nv;
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
