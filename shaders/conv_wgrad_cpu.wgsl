// Weight gradient of the gather convolution for CPU adapters, any cin and cout: same
// contract as conv_wgrad.wgsl. The reduction index k' = t * cin + ci runs over taps and
// input channels together, so that a thin input (the 3-channel stem: k' < 147) still fills
// the TK = 32 rows of the tile; each k' loads its own map entry. TN = 32 output channels.
//
// Accumulator a<i>_<j> (mat4x4): column q = k' = 4i+q, components = output channels
// 4j..4j+3; per row a<i>_<j> += outer(x_i, dy_j).
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
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;

// Tile shape; must match the CPU weight-gradient tiles in src/ops/conv.rs.
const TK: u32 = 32u;
const TN: u32 = 32u;

fn outer(xs: vec4<f32>, g: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(g * xs.x, g * xs.y, g * xs.z, g * xs.w);
}

// Stores the 4x4 block at k' = kk0.. (columns), output channels n0.., with k' = t*cin + ci.
fn put16(base: u32, kk0: u32, n0: u32, m: mat4x4<f32>) {
    let kmax = p.taps * p.kin;
    for (var q = 0u; q < 4u; q++) {
        let kk = kk0 + q;
        if (kk < kmax) {
            let t = kk / p.kin;
            let ci = kk % p.kin;
            let o = base + t * p.st + ci * p.sk;
            for (var j = 0u; j < 4u; j++) {
                if (n0 + j < p.n) { partials[o + (n0 + j) * p.sn] = m[q][j]; }
            }
        }
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
    let s = q / p.ktiles;
    let kmax = p.taps * p.kin - 1u;
    // k' and channels past the end read the last one; their sums are never stored
    let kk0 = min(vec4<u32>(0u, 1u, 2u, 3u) + (kt * TK + 0u), vec4<u32>(kmax));
    let tp0 = kk0 / p.kin; let ci0 = kk0 % p.kin;
    let kk1 = min(vec4<u32>(0u, 1u, 2u, 3u) + (kt * TK + 4u), vec4<u32>(kmax));
    let tp1 = kk1 / p.kin; let ci1 = kk1 % p.kin;
    let kk2 = min(vec4<u32>(0u, 1u, 2u, 3u) + (kt * TK + 8u), vec4<u32>(kmax));
    let tp2 = kk2 / p.kin; let ci2 = kk2 % p.kin;
    let kk3 = min(vec4<u32>(0u, 1u, 2u, 3u) + (kt * TK + 12u), vec4<u32>(kmax));
    let tp3 = kk3 / p.kin; let ci3 = kk3 % p.kin;
    let kk4 = min(vec4<u32>(0u, 1u, 2u, 3u) + (kt * TK + 16u), vec4<u32>(kmax));
    let tp4 = kk4 / p.kin; let ci4 = kk4 % p.kin;
    let kk5 = min(vec4<u32>(0u, 1u, 2u, 3u) + (kt * TK + 20u), vec4<u32>(kmax));
    let tp5 = kk5 / p.kin; let ci5 = kk5 % p.kin;
    let kk6 = min(vec4<u32>(0u, 1u, 2u, 3u) + (kt * TK + 24u), vec4<u32>(kmax));
    let tp6 = kk6 / p.kin; let ci6 = kk6 % p.kin;
    let kk7 = min(vec4<u32>(0u, 1u, 2u, 3u) + (kt * TK + 28u), vec4<u32>(kmax));
    let tp7 = kk7 / p.kin; let ci7 = kk7 % p.kin;
    let nl = p.n - 1u;
    let nc0 = min(vec4<u32>(0u, 1u, 2u, 3u) + (nt * TN + 0u), vec4<u32>(nl));
    let nc1 = min(vec4<u32>(0u, 1u, 2u, 3u) + (nt * TN + 4u), vec4<u32>(nl));
    let nc2 = min(vec4<u32>(0u, 1u, 2u, 3u) + (nt * TN + 8u), vec4<u32>(nl));
    let nc3 = min(vec4<u32>(0u, 1u, 2u, 3u) + (nt * TN + 12u), vec4<u32>(nl));
    let nc4 = min(vec4<u32>(0u, 1u, 2u, 3u) + (nt * TN + 16u), vec4<u32>(nl));
    let nc5 = min(vec4<u32>(0u, 1u, 2u, 3u) + (nt * TN + 20u), vec4<u32>(nl));
    let nc6 = min(vec4<u32>(0u, 1u, 2u, 3u) + (nt * TN + 24u), vec4<u32>(nl));
    let nc7 = min(vec4<u32>(0u, 1u, 2u, 3u) + (nt * TN + 28u), vec4<u32>(nl));
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
        let mr = r * p.taps;
        let g = r * p.n;
        let g0 = vec4<f32>(dy[g + nc0.x], dy[g + nc0.y], dy[g + nc0.z], dy[g + nc0.w]);
        let g1 = vec4<f32>(dy[g + nc1.x], dy[g + nc1.y], dy[g + nc1.z], dy[g + nc1.w]);
        let g2 = vec4<f32>(dy[g + nc2.x], dy[g + nc2.y], dy[g + nc2.z], dy[g + nc2.w]);
        let g3 = vec4<f32>(dy[g + nc3.x], dy[g + nc3.y], dy[g + nc3.z], dy[g + nc3.w]);
        let g4 = vec4<f32>(dy[g + nc4.x], dy[g + nc4.y], dy[g + nc4.z], dy[g + nc4.w]);
        let g5 = vec4<f32>(dy[g + nc5.x], dy[g + nc5.y], dy[g + nc5.z], dy[g + nc5.w]);
        let g6 = vec4<f32>(dy[g + nc6.x], dy[g + nc6.y], dy[g + nc6.z], dy[g + nc6.w]);
        let g7 = vec4<f32>(dy[g + nc7.x], dy[g + nc7.y], dy[g + nc7.z], dy[g + nc7.w]);
        let m0 = vec4<i32>(map[mr + tp0.x], map[mr + tp0.y], map[mr + tp0.z], map[mr + tp0.w]);
        let b0 = vec4<u32>(max(m0, vec4<i32>(0))) * p.kin + ci0;
        let x0 = select(vec4<f32>(0.0), vec4<f32>(x[b0.x], x[b0.y], x[b0.z], x[b0.w]), m0 >= vec4<i32>(0));
        a0_0 += outer(x0, g0); a0_1 += outer(x0, g1); a0_2 += outer(x0, g2); a0_3 += outer(x0, g3); a0_4 += outer(x0, g4); a0_5 += outer(x0, g5); a0_6 += outer(x0, g6); a0_7 += outer(x0, g7);
        let m1 = vec4<i32>(map[mr + tp1.x], map[mr + tp1.y], map[mr + tp1.z], map[mr + tp1.w]);
        let b1 = vec4<u32>(max(m1, vec4<i32>(0))) * p.kin + ci1;
        let x1 = select(vec4<f32>(0.0), vec4<f32>(x[b1.x], x[b1.y], x[b1.z], x[b1.w]), m1 >= vec4<i32>(0));
        a1_0 += outer(x1, g0); a1_1 += outer(x1, g1); a1_2 += outer(x1, g2); a1_3 += outer(x1, g3); a1_4 += outer(x1, g4); a1_5 += outer(x1, g5); a1_6 += outer(x1, g6); a1_7 += outer(x1, g7);
        let m2 = vec4<i32>(map[mr + tp2.x], map[mr + tp2.y], map[mr + tp2.z], map[mr + tp2.w]);
        let b2 = vec4<u32>(max(m2, vec4<i32>(0))) * p.kin + ci2;
        let x2 = select(vec4<f32>(0.0), vec4<f32>(x[b2.x], x[b2.y], x[b2.z], x[b2.w]), m2 >= vec4<i32>(0));
        a2_0 += outer(x2, g0); a2_1 += outer(x2, g1); a2_2 += outer(x2, g2); a2_3 += outer(x2, g3); a2_4 += outer(x2, g4); a2_5 += outer(x2, g5); a2_6 += outer(x2, g6); a2_7 += outer(x2, g7);
        let m3 = vec4<i32>(map[mr + tp3.x], map[mr + tp3.y], map[mr + tp3.z], map[mr + tp3.w]);
        let b3 = vec4<u32>(max(m3, vec4<i32>(0))) * p.kin + ci3;
        let x3 = select(vec4<f32>(0.0), vec4<f32>(x[b3.x], x[b3.y], x[b3.z], x[b3.w]), m3 >= vec4<i32>(0));
        a3_0 += outer(x3, g0); a3_1 += outer(x3, g1); a3_2 += outer(x3, g2); a3_3 += outer(x3, g3); a3_4 += outer(x3, g4); a3_5 += outer(x3, g5); a3_6 += outer(x3, g6); a3_7 += outer(x3, g7);
        let m4 = vec4<i32>(map[mr + tp4.x], map[mr + tp4.y], map[mr + tp4.z], map[mr + tp4.w]);
        let b4 = vec4<u32>(max(m4, vec4<i32>(0))) * p.kin + ci4;
        let x4 = select(vec4<f32>(0.0), vec4<f32>(x[b4.x], x[b4.y], x[b4.z], x[b4.w]), m4 >= vec4<i32>(0));
        a4_0 += outer(x4, g0); a4_1 += outer(x4, g1); a4_2 += outer(x4, g2); a4_3 += outer(x4, g3); a4_4 += outer(x4, g4); a4_5 += outer(x4, g5); a4_6 += outer(x4, g6); a4_7 += outer(x4, g7);
        let m5 = vec4<i32>(map[mr + tp5.x], map[mr + tp5.y], map[mr + tp5.z], map[mr + tp5.w]);
        let b5 = vec4<u32>(max(m5, vec4<i32>(0))) * p.kin + ci5;
        let x5 = select(vec4<f32>(0.0), vec4<f32>(x[b5.x], x[b5.y], x[b5.z], x[b5.w]), m5 >= vec4<i32>(0));
        a5_0 += outer(x5, g0); a5_1 += outer(x5, g1); a5_2 += outer(x5, g2); a5_3 += outer(x5, g3); a5_4 += outer(x5, g4); a5_5 += outer(x5, g5); a5_6 += outer(x5, g6); a5_7 += outer(x5, g7);
        let m6 = vec4<i32>(map[mr + tp6.x], map[mr + tp6.y], map[mr + tp6.z], map[mr + tp6.w]);
        let b6 = vec4<u32>(max(m6, vec4<i32>(0))) * p.kin + ci6;
        let x6 = select(vec4<f32>(0.0), vec4<f32>(x[b6.x], x[b6.y], x[b6.z], x[b6.w]), m6 >= vec4<i32>(0));
        a6_0 += outer(x6, g0); a6_1 += outer(x6, g1); a6_2 += outer(x6, g2); a6_3 += outer(x6, g3); a6_4 += outer(x6, g4); a6_5 += outer(x6, g5); a6_6 += outer(x6, g6); a6_7 += outer(x6, g7);
        let m7 = vec4<i32>(map[mr + tp7.x], map[mr + tp7.y], map[mr + tp7.z], map[mr + tp7.w]);
        let b7 = vec4<u32>(max(m7, vec4<i32>(0))) * p.kin + ci7;
        let x7 = select(vec4<f32>(0.0), vec4<f32>(x[b7.x], x[b7.y], x[b7.z], x[b7.w]), m7 >= vec4<i32>(0));
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
        put16(base, kt * TK + 4u * i, nt * TN + 0u, s0); put16(base, kt * TK + 4u * i, nt * TN + 4u, s1); put16(base, kt * TK + 4u * i, nt * TN + 8u, s2); put16(base, kt * TK + 4u * i, nt * TN + 12u, s3); put16(base, kt * TK + 4u * i, nt * TN + 16u, s4); put16(base, kt * TK + 4u * i, nt * TN + 20u, s5); put16(base, kt * TK + 4u * i, nt * TN + 24u, s6); put16(base, kt * TK + 4u * i, nt * TN + 28u, s7);
    }
}
