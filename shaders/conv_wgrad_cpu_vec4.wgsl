// Weight gradient of the gather convolution for CPU adapters when cin and cout are
// multiples of 4: same contract as conv_wgrad.wgsl (split-K partials over output rows in
// the stored weight layout, then reduce_partials), vec4 loads. A thread owns TK = 32 input
// channels of one tap x TN = 32 output channels and one split: per row it loads 1 map
// entry, 32 inputs and 32 output gradients for 1024 multiply-adds (see build/conv_gather_cpu.rs
// for why CPU tiles are this large).
//
// Accumulator a<i>_<j> (mat4x4): column q = input channel 4i+q, components = output
// channels 4j..4j+3; per row a<i>_<j> += outer(x_i, dy_j).
struct Params {
    rows: u32,
    kin: u32,        // cin
    n: u32,          // cout
    taps: u32,
    ktiles: u32,
    ntiles: u32,
    rows_per_split: u32,
    total: u32,      // threads
    st: u32, sk: u32, sn: u32,
    count: u32,      // taps * kin * n: one split's slice of partials
    k_groups: u32,   // TK / 4 (epilogue loop bound)
    _p0: u32, _p1: u32, _p2: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read> dy: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;

// Tile shape; must match the CPU weight-gradient tiles in src/ops/conv.rs.
const TK: u32 = 32u;
const TN: u32 = 32u;

fn outer(xs: vec4<f32>, g: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(g * xs.x, g * xs.y, g * xs.z, g * xs.w);
}

// Stores the 4x4 block at input channels k0.. (columns), output channels n0.. of tap t.
fn put16(base: u32, t: u32, k0: u32, n0: u32, m: mat4x4<f32>) {
    if (k0 >= p.kin || n0 >= p.n) { return; }
    for (var q = 0u; q < 4u; q++) {
        let o = base + t * p.st + (k0 + q) * p.sk + n0 * p.sn;
        partials[o] = m[q].x; partials[o + p.sn] = m[q].y;
        partials[o + 2u * p.sn] = m[q].z; partials[o + 3u * p.sn] = m[q].w;
    }
}

// 8 invocations = one SIMD vector of llvmpipe: small layers still spread over every core.
@compute @workgroup_size(8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 8u;
    let tid = min(id, p.total - 1u);   // clamp, do not return early (uniform control flow)
    let nt = tid % p.ntiles;
    let q = tid / p.ntiles;
    let kt = q % p.ktiles;
    let q2 = q / p.ktiles;
    let t = q2 % p.taps;
    let s = q2 / p.taps;
    let k4n = p.kin / 4u;
    let n4n = p.n / 4u;
    // vec4 columns past the end read the last one; their sums are never stored
    let kc0 = min(kt * 8u + 0u, k4n - 1u);
    let kc1 = min(kt * 8u + 1u, k4n - 1u);
    let kc2 = min(kt * 8u + 2u, k4n - 1u);
    let kc3 = min(kt * 8u + 3u, k4n - 1u);
    let kc4 = min(kt * 8u + 4u, k4n - 1u);
    let kc5 = min(kt * 8u + 5u, k4n - 1u);
    let kc6 = min(kt * 8u + 6u, k4n - 1u);
    let kc7 = min(kt * 8u + 7u, k4n - 1u);
    let nc0 = min(nt * 8u + 0u, n4n - 1u);
    let nc1 = min(nt * 8u + 1u, n4n - 1u);
    let nc2 = min(nt * 8u + 2u, n4n - 1u);
    let nc3 = min(nt * 8u + 3u, n4n - 1u);
    let nc4 = min(nt * 8u + 4u, n4n - 1u);
    let nc5 = min(nt * 8u + 5u, n4n - 1u);
    let nc6 = min(nt * 8u + 6u, n4n - 1u);
    let nc7 = min(nt * 8u + 7u, n4n - 1u);
    var a0_0 = mat4x4<f32>(); var a0_1 = mat4x4<f32>(); var a0_2 = mat4x4<f32>(); var a0_3 = mat4x4<f32>(); var a0_4 = mat4x4<f32>(); var a0_5 = mat4x4<f32>(); var a0_6 = mat4x4<f32>(); var a0_7 = mat4x4<f32>();
    var a1_0 = mat4x4<f32>(); var a1_1 = mat4x4<f32>(); var a1_2 = mat4x4<f32>(); var a1_3 = mat4x4<f32>(); var a1_4 = mat4x4<f32>(); var a1_5 = mat4x4<f32>(); var a1_6 = mat4x4<f32>(); var a1_7 = mat4x4<f32>();
    var a2_0 = mat4x4<f32>(); var a2_1 = mat4x4<f32>(); var a2_2 = mat4x4<f32>(); var a2_3 = mat4x4<f32>(); var a2_4 = mat4x4<f32>(); var a2_5 = mat4x4<f32>(); var a2_6 = mat4x4<f32>(); var a2_7 = mat4x4<f32>();
    var a3_0 = mat4x4<f32>(); var a3_1 = mat4x4<f32>(); var a3_2 = mat4x4<f32>(); var a3_3 = mat4x4<f32>(); var a3_4 = mat4x4<f32>(); var a3_5 = mat4x4<f32>(); var a3_6 = mat4x4<f32>(); var a3_7 = mat4x4<f32>();
    var a4_0 = mat4x4<f32>(); var a4_1 = mat4x4<f32>(); var a4_2 = mat4x4<f32>(); var a4_3 = mat4x4<f32>(); var a4_4 = mat4x4<f32>(); var a4_5 = mat4x4<f32>(); var a4_6 = mat4x4<f32>(); var a4_7 = mat4x4<f32>();
    var a5_0 = mat4x4<f32>(); var a5_1 = mat4x4<f32>(); var a5_2 = mat4x4<f32>(); var a5_3 = mat4x4<f32>(); var a5_4 = mat4x4<f32>(); var a5_5 = mat4x4<f32>(); var a5_6 = mat4x4<f32>(); var a5_7 = mat4x4<f32>();
    var a6_0 = mat4x4<f32>(); var a6_1 = mat4x4<f32>(); var a6_2 = mat4x4<f32>(); var a6_3 = mat4x4<f32>(); var a6_4 = mat4x4<f32>(); var a6_5 = mat4x4<f32>(); var a6_6 = mat4x4<f32>(); var a6_7 = mat4x4<f32>();
    var a7_0 = mat4x4<f32>(); var a7_1 = mat4x4<f32>(); var a7_2 = mat4x4<f32>(); var a7_3 = mat4x4<f32>(); var a7_4 = mat4x4<f32>(); var a7_5 = mat4x4<f32>(); var a7_6 = mat4x4<f32>(); var a7_7 = mat4x4<f32>();
    let r_begin = s * p.rows_per_split;
    let r_end = min(r_begin + p.rows_per_split, p.rows);
    for (var r = r_begin; r < r_end; r++) {
        let m = map[r * p.taps + t];
        let xb = u32(max(m, 0)) * k4n;
        let valid = m >= 0;
        let z = vec4<f32>(0.0);
        let g = r * n4n;
        let g0 = dy[g + nc0];
        let g1 = dy[g + nc1];
        let g2 = dy[g + nc2];
        let g3 = dy[g + nc3];
        let g4 = dy[g + nc4];
        let g5 = dy[g + nc5];
        let g6 = dy[g + nc6];
        let g7 = dy[g + nc7];
        let x0 = select(z, x[xb + kc0], valid);
        a0_0 += outer(x0, g0); a0_1 += outer(x0, g1); a0_2 += outer(x0, g2); a0_3 += outer(x0, g3); a0_4 += outer(x0, g4); a0_5 += outer(x0, g5); a0_6 += outer(x0, g6); a0_7 += outer(x0, g7);
        let x1 = select(z, x[xb + kc1], valid);
        a1_0 += outer(x1, g0); a1_1 += outer(x1, g1); a1_2 += outer(x1, g2); a1_3 += outer(x1, g3); a1_4 += outer(x1, g4); a1_5 += outer(x1, g5); a1_6 += outer(x1, g6); a1_7 += outer(x1, g7);
        let x2 = select(z, x[xb + kc2], valid);
        a2_0 += outer(x2, g0); a2_1 += outer(x2, g1); a2_2 += outer(x2, g2); a2_3 += outer(x2, g3); a2_4 += outer(x2, g4); a2_5 += outer(x2, g5); a2_6 += outer(x2, g6); a2_7 += outer(x2, g7);
        let x3 = select(z, x[xb + kc3], valid);
        a3_0 += outer(x3, g0); a3_1 += outer(x3, g1); a3_2 += outer(x3, g2); a3_3 += outer(x3, g3); a3_4 += outer(x3, g4); a3_5 += outer(x3, g5); a3_6 += outer(x3, g6); a3_7 += outer(x3, g7);
        let x4 = select(z, x[xb + kc4], valid);
        a4_0 += outer(x4, g0); a4_1 += outer(x4, g1); a4_2 += outer(x4, g2); a4_3 += outer(x4, g3); a4_4 += outer(x4, g4); a4_5 += outer(x4, g5); a4_6 += outer(x4, g6); a4_7 += outer(x4, g7);
        let x5 = select(z, x[xb + kc5], valid);
        a5_0 += outer(x5, g0); a5_1 += outer(x5, g1); a5_2 += outer(x5, g2); a5_3 += outer(x5, g3); a5_4 += outer(x5, g4); a5_5 += outer(x5, g5); a5_6 += outer(x5, g6); a5_7 += outer(x5, g7);
        let x6 = select(z, x[xb + kc6], valid);
        a6_0 += outer(x6, g0); a6_1 += outer(x6, g1); a6_2 += outer(x6, g2); a6_3 += outer(x6, g3); a6_4 += outer(x6, g4); a6_5 += outer(x6, g5); a6_6 += outer(x6, g6); a6_7 += outer(x6, g7);
        let x7 = select(z, x[xb + kc7], valid);
        a7_0 += outer(x7, g0); a7_1 += outer(x7, g1); a7_2 += outer(x7, g2); a7_3 += outer(x7, g3); a7_4 += outer(x7, g4); a7_5 += outer(x7, g5); a7_6 += outer(x7, g6); a7_7 += outer(x7, g7);
    }
    if (id >= p.total) { return; }
    let base = s * p.count;
    // Epilogue as a loop (runtime bound, so it stays a loop): written out per accumulator,
    // the guarded stores make the kernel several times slower to compile.
    for (var i = 0u; i < p.k_groups; i++) {
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
        put16(base, t, (kt * 8u + i) * 4u, (nt * 8u + 0u) * 4u, s0); put16(base, t, (kt * 8u + i) * 4u, (nt * 8u + 1u) * 4u, s1); put16(base, t, (kt * 8u + i) * 4u, (nt * 8u + 2u) * 4u, s2); put16(base, t, (kt * 8u + i) * 4u, (nt * 8u + 3u) * 4u, s3); put16(base, t, (kt * 8u + i) * 4u, (nt * 8u + 4u) * 4u, s4); put16(base, t, (kt * 8u + i) * 4u, (nt * 8u + 5u) * 4u, s5); put16(base, t, (kt * 8u + i) * 4u, (nt * 8u + 6u) * 4u, s6); put16(base, t, (kt * 8u + i) * 4u, (nt * 8u + 7u) * 4u, s7);
    }
}
