// Depthwise weight gradient for 7x7 kernels (ConvNeXt), split-K over output rows:
//   partials[s, c * 49 + t] = sum over rows r of split s of x[map[r, t], c] * dy[r, c]
// then reduce_partials over s (fixed order, no float atomics). Other kernel sizes use
// depthwise_wgrad.wgsl.
//
// A thread owns 4 channels x all 49 taps (49 vec4 accumulators) and one split, and walks
// its rows in strips of 8. A strip of 8 horizontally adjacent sites (same test as
// depthwise.wgsl) reads 14 distinct inputs per kernel row: per strip 8 output-gradient
// and 7 x 14 input loads serve 392 multiply-adds (about 7x fewer loads than one
// tap at a time). Other strips go row by row. Which path a strip takes depends on the
// map only, so results are reproducible.
struct Params { rows: u32, c: u32, ctiles: u32, rows_per_split: u32, count: u32, taps: u32, _p1: u32, _p2: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;

const TR: u32 = 8u;
const K: u32 = 7u;
const T: u32 = 49u;

fn xin(m: i32, cc: vec4<u32>) -> vec4<f32> {
    let b = u32(max(m, 0)) * p.c;
    let v = vec4<f32>(x[b + cc.x], x[b + cc.y], x[b + cc.z], x[b + cc.w]);
    return select(vec4<f32>(0.0), v, m >= 0);
}

fn gin(r: u32, cc: vec4<u32>) -> vec4<f32> {
    let b = r * p.c;
    return vec4<f32>(dy[b + cc.x], dy[b + cc.y], dy[b + cc.z], dy[b + cc.w]);
}

fn put(base: u32, c0: u32, t: u32, v: vec4<f32>) {
    for (var j = 0u; j < 4u; j++) {
        if (c0 + j < p.c) { partials[base + (c0 + j) * T + t] = v[j]; }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    let ct = id % p.ctiles;
    let s = id / p.ctiles;
    let r_begin = s * p.rows_per_split;   // a multiple of TR
    if (r_begin >= p.rows && s > 0u) { return; }
    let r_end = min(r_begin + p.rows_per_split, p.rows);
    let c0 = ct * 4u;
    let cl = p.c - 1u;
    let cc = vec4<u32>(min(c0, cl), min(c0 + 1u, cl), min(c0 + 2u, cl), min(c0 + 3u, cl));
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    var a8 = vec4<f32>(0.0);
    var a9 = vec4<f32>(0.0);
    var a10 = vec4<f32>(0.0);
    var a11 = vec4<f32>(0.0);
    var a12 = vec4<f32>(0.0);
    var a13 = vec4<f32>(0.0);
    var a14 = vec4<f32>(0.0);
    var a15 = vec4<f32>(0.0);
    var a16 = vec4<f32>(0.0);
    var a17 = vec4<f32>(0.0);
    var a18 = vec4<f32>(0.0);
    var a19 = vec4<f32>(0.0);
    var a20 = vec4<f32>(0.0);
    var a21 = vec4<f32>(0.0);
    var a22 = vec4<f32>(0.0);
    var a23 = vec4<f32>(0.0);
    var a24 = vec4<f32>(0.0);
    var a25 = vec4<f32>(0.0);
    var a26 = vec4<f32>(0.0);
    var a27 = vec4<f32>(0.0);
    var a28 = vec4<f32>(0.0);
    var a29 = vec4<f32>(0.0);
    var a30 = vec4<f32>(0.0);
    var a31 = vec4<f32>(0.0);
    var a32 = vec4<f32>(0.0);
    var a33 = vec4<f32>(0.0);
    var a34 = vec4<f32>(0.0);
    var a35 = vec4<f32>(0.0);
    var a36 = vec4<f32>(0.0);
    var a37 = vec4<f32>(0.0);
    var a38 = vec4<f32>(0.0);
    var a39 = vec4<f32>(0.0);
    var a40 = vec4<f32>(0.0);
    var a41 = vec4<f32>(0.0);
    var a42 = vec4<f32>(0.0);
    var a43 = vec4<f32>(0.0);
    var a44 = vec4<f32>(0.0);
    var a45 = vec4<f32>(0.0);
    var a46 = vec4<f32>(0.0);
    var a47 = vec4<f32>(0.0);
    var a48 = vec4<f32>(0.0);
    let centre = (K / 2u) * K + K / 2u;
    for (var r0 = r_begin; r0 < r_end; r0 += TR) {
        var fast = r0 + TR <= r_end && map[r0 * T + centre] == i32(r0);
        for (var i = 0u; i + 1u < TR; i++) {
            fast = fast && map[(r0 + i) * T + centre + 1u] == i32(r0 + i + 1u);
        }
        if (fast) {
            let g0 = gin(r0 + 0u, cc);
            let g1 = gin(r0 + 1u, cc);
            let g2 = gin(r0 + 2u, cc);
            let g3 = gin(r0 + 3u, cc);
            let g4 = gin(r0 + 4u, cc);
            let g5 = gin(r0 + 5u, cc);
            let g6 = gin(r0 + 6u, cc);
            let g7 = gin(r0 + 7u, cc);
            let mf = r0 * T;
            let ml = (r0 + 7u) * T;
            // row i at tap (ky, kx) reads strip position i + kx
            { // ky = 0
                let x0 = xin(map[mf + 0u], cc);
                let x1 = xin(map[mf + 1u], cc);
                let x2 = xin(map[mf + 2u], cc);
                let x3 = xin(map[mf + 3u], cc);
                let x4 = xin(map[mf + 4u], cc);
                let x5 = xin(map[mf + 5u], cc);
                let x6 = xin(map[mf + 6u], cc);
                let x7 = xin(map[ml + 0u], cc);
                let x8 = xin(map[ml + 1u], cc);
                let x9 = xin(map[ml + 2u], cc);
                let x10 = xin(map[ml + 3u], cc);
                let x11 = xin(map[ml + 4u], cc);
                let x12 = xin(map[ml + 5u], cc);
                let x13 = xin(map[ml + 6u], cc);
                a0 = x0 * g0 + x1 * g1 + x2 * g2 + x3 * g3 + x4 * g4 + x5 * g5 + x6 * g6 + x7 * g7 + a0;
                a1 = x1 * g0 + x2 * g1 + x3 * g2 + x4 * g3 + x5 * g4 + x6 * g5 + x7 * g6 + x8 * g7 + a1;
                a2 = x2 * g0 + x3 * g1 + x4 * g2 + x5 * g3 + x6 * g4 + x7 * g5 + x8 * g6 + x9 * g7 + a2;
                a3 = x3 * g0 + x4 * g1 + x5 * g2 + x6 * g3 + x7 * g4 + x8 * g5 + x9 * g6 + x10 * g7 + a3;
                a4 = x4 * g0 + x5 * g1 + x6 * g2 + x7 * g3 + x8 * g4 + x9 * g5 + x10 * g6 + x11 * g7 + a4;
                a5 = x5 * g0 + x6 * g1 + x7 * g2 + x8 * g3 + x9 * g4 + x10 * g5 + x11 * g6 + x12 * g7 + a5;
                a6 = x6 * g0 + x7 * g1 + x8 * g2 + x9 * g3 + x10 * g4 + x11 * g5 + x12 * g6 + x13 * g7 + a6;
            }
            { // ky = 1
                let x0 = xin(map[mf + 7u], cc);
                let x1 = xin(map[mf + 8u], cc);
                let x2 = xin(map[mf + 9u], cc);
                let x3 = xin(map[mf + 10u], cc);
                let x4 = xin(map[mf + 11u], cc);
                let x5 = xin(map[mf + 12u], cc);
                let x6 = xin(map[mf + 13u], cc);
                let x7 = xin(map[ml + 7u], cc);
                let x8 = xin(map[ml + 8u], cc);
                let x9 = xin(map[ml + 9u], cc);
                let x10 = xin(map[ml + 10u], cc);
                let x11 = xin(map[ml + 11u], cc);
                let x12 = xin(map[ml + 12u], cc);
                let x13 = xin(map[ml + 13u], cc);
                a7 = x0 * g0 + x1 * g1 + x2 * g2 + x3 * g3 + x4 * g4 + x5 * g5 + x6 * g6 + x7 * g7 + a7;
                a8 = x1 * g0 + x2 * g1 + x3 * g2 + x4 * g3 + x5 * g4 + x6 * g5 + x7 * g6 + x8 * g7 + a8;
                a9 = x2 * g0 + x3 * g1 + x4 * g2 + x5 * g3 + x6 * g4 + x7 * g5 + x8 * g6 + x9 * g7 + a9;
                a10 = x3 * g0 + x4 * g1 + x5 * g2 + x6 * g3 + x7 * g4 + x8 * g5 + x9 * g6 + x10 * g7 + a10;
                a11 = x4 * g0 + x5 * g1 + x6 * g2 + x7 * g3 + x8 * g4 + x9 * g5 + x10 * g6 + x11 * g7 + a11;
                a12 = x5 * g0 + x6 * g1 + x7 * g2 + x8 * g3 + x9 * g4 + x10 * g5 + x11 * g6 + x12 * g7 + a12;
                a13 = x6 * g0 + x7 * g1 + x8 * g2 + x9 * g3 + x10 * g4 + x11 * g5 + x12 * g6 + x13 * g7 + a13;
            }
            { // ky = 2
                let x0 = xin(map[mf + 14u], cc);
                let x1 = xin(map[mf + 15u], cc);
                let x2 = xin(map[mf + 16u], cc);
                let x3 = xin(map[mf + 17u], cc);
                let x4 = xin(map[mf + 18u], cc);
                let x5 = xin(map[mf + 19u], cc);
                let x6 = xin(map[mf + 20u], cc);
                let x7 = xin(map[ml + 14u], cc);
                let x8 = xin(map[ml + 15u], cc);
                let x9 = xin(map[ml + 16u], cc);
                let x10 = xin(map[ml + 17u], cc);
                let x11 = xin(map[ml + 18u], cc);
                let x12 = xin(map[ml + 19u], cc);
                let x13 = xin(map[ml + 20u], cc);
                a14 = x0 * g0 + x1 * g1 + x2 * g2 + x3 * g3 + x4 * g4 + x5 * g5 + x6 * g6 + x7 * g7 + a14;
                a15 = x1 * g0 + x2 * g1 + x3 * g2 + x4 * g3 + x5 * g4 + x6 * g5 + x7 * g6 + x8 * g7 + a15;
                a16 = x2 * g0 + x3 * g1 + x4 * g2 + x5 * g3 + x6 * g4 + x7 * g5 + x8 * g6 + x9 * g7 + a16;
                a17 = x3 * g0 + x4 * g1 + x5 * g2 + x6 * g3 + x7 * g4 + x8 * g5 + x9 * g6 + x10 * g7 + a17;
                a18 = x4 * g0 + x5 * g1 + x6 * g2 + x7 * g3 + x8 * g4 + x9 * g5 + x10 * g6 + x11 * g7 + a18;
                a19 = x5 * g0 + x6 * g1 + x7 * g2 + x8 * g3 + x9 * g4 + x10 * g5 + x11 * g6 + x12 * g7 + a19;
                a20 = x6 * g0 + x7 * g1 + x8 * g2 + x9 * g3 + x10 * g4 + x11 * g5 + x12 * g6 + x13 * g7 + a20;
            }
            { // ky = 3
                let x0 = xin(map[mf + 21u], cc);
                let x1 = xin(map[mf + 22u], cc);
                let x2 = xin(map[mf + 23u], cc);
                let x3 = xin(map[mf + 24u], cc);
                let x4 = xin(map[mf + 25u], cc);
                let x5 = xin(map[mf + 26u], cc);
                let x6 = xin(map[mf + 27u], cc);
                let x7 = xin(map[ml + 21u], cc);
                let x8 = xin(map[ml + 22u], cc);
                let x9 = xin(map[ml + 23u], cc);
                let x10 = xin(map[ml + 24u], cc);
                let x11 = xin(map[ml + 25u], cc);
                let x12 = xin(map[ml + 26u], cc);
                let x13 = xin(map[ml + 27u], cc);
                a21 = x0 * g0 + x1 * g1 + x2 * g2 + x3 * g3 + x4 * g4 + x5 * g5 + x6 * g6 + x7 * g7 + a21;
                a22 = x1 * g0 + x2 * g1 + x3 * g2 + x4 * g3 + x5 * g4 + x6 * g5 + x7 * g6 + x8 * g7 + a22;
                a23 = x2 * g0 + x3 * g1 + x4 * g2 + x5 * g3 + x6 * g4 + x7 * g5 + x8 * g6 + x9 * g7 + a23;
                a24 = x3 * g0 + x4 * g1 + x5 * g2 + x6 * g3 + x7 * g4 + x8 * g5 + x9 * g6 + x10 * g7 + a24;
                a25 = x4 * g0 + x5 * g1 + x6 * g2 + x7 * g3 + x8 * g4 + x9 * g5 + x10 * g6 + x11 * g7 + a25;
                a26 = x5 * g0 + x6 * g1 + x7 * g2 + x8 * g3 + x9 * g4 + x10 * g5 + x11 * g6 + x12 * g7 + a26;
                a27 = x6 * g0 + x7 * g1 + x8 * g2 + x9 * g3 + x10 * g4 + x11 * g5 + x12 * g6 + x13 * g7 + a27;
            }
            { // ky = 4
                let x0 = xin(map[mf + 28u], cc);
                let x1 = xin(map[mf + 29u], cc);
                let x2 = xin(map[mf + 30u], cc);
                let x3 = xin(map[mf + 31u], cc);
                let x4 = xin(map[mf + 32u], cc);
                let x5 = xin(map[mf + 33u], cc);
                let x6 = xin(map[mf + 34u], cc);
                let x7 = xin(map[ml + 28u], cc);
                let x8 = xin(map[ml + 29u], cc);
                let x9 = xin(map[ml + 30u], cc);
                let x10 = xin(map[ml + 31u], cc);
                let x11 = xin(map[ml + 32u], cc);
                let x12 = xin(map[ml + 33u], cc);
                let x13 = xin(map[ml + 34u], cc);
                a28 = x0 * g0 + x1 * g1 + x2 * g2 + x3 * g3 + x4 * g4 + x5 * g5 + x6 * g6 + x7 * g7 + a28;
                a29 = x1 * g0 + x2 * g1 + x3 * g2 + x4 * g3 + x5 * g4 + x6 * g5 + x7 * g6 + x8 * g7 + a29;
                a30 = x2 * g0 + x3 * g1 + x4 * g2 + x5 * g3 + x6 * g4 + x7 * g5 + x8 * g6 + x9 * g7 + a30;
                a31 = x3 * g0 + x4 * g1 + x5 * g2 + x6 * g3 + x7 * g4 + x8 * g5 + x9 * g6 + x10 * g7 + a31;
                a32 = x4 * g0 + x5 * g1 + x6 * g2 + x7 * g3 + x8 * g4 + x9 * g5 + x10 * g6 + x11 * g7 + a32;
                a33 = x5 * g0 + x6 * g1 + x7 * g2 + x8 * g3 + x9 * g4 + x10 * g5 + x11 * g6 + x12 * g7 + a33;
                a34 = x6 * g0 + x7 * g1 + x8 * g2 + x9 * g3 + x10 * g4 + x11 * g5 + x12 * g6 + x13 * g7 + a34;
            }
            { // ky = 5
                let x0 = xin(map[mf + 35u], cc);
                let x1 = xin(map[mf + 36u], cc);
                let x2 = xin(map[mf + 37u], cc);
                let x3 = xin(map[mf + 38u], cc);
                let x4 = xin(map[mf + 39u], cc);
                let x5 = xin(map[mf + 40u], cc);
                let x6 = xin(map[mf + 41u], cc);
                let x7 = xin(map[ml + 35u], cc);
                let x8 = xin(map[ml + 36u], cc);
                let x9 = xin(map[ml + 37u], cc);
                let x10 = xin(map[ml + 38u], cc);
                let x11 = xin(map[ml + 39u], cc);
                let x12 = xin(map[ml + 40u], cc);
                let x13 = xin(map[ml + 41u], cc);
                a35 = x0 * g0 + x1 * g1 + x2 * g2 + x3 * g3 + x4 * g4 + x5 * g5 + x6 * g6 + x7 * g7 + a35;
                a36 = x1 * g0 + x2 * g1 + x3 * g2 + x4 * g3 + x5 * g4 + x6 * g5 + x7 * g6 + x8 * g7 + a36;
                a37 = x2 * g0 + x3 * g1 + x4 * g2 + x5 * g3 + x6 * g4 + x7 * g5 + x8 * g6 + x9 * g7 + a37;
                a38 = x3 * g0 + x4 * g1 + x5 * g2 + x6 * g3 + x7 * g4 + x8 * g5 + x9 * g6 + x10 * g7 + a38;
                a39 = x4 * g0 + x5 * g1 + x6 * g2 + x7 * g3 + x8 * g4 + x9 * g5 + x10 * g6 + x11 * g7 + a39;
                a40 = x5 * g0 + x6 * g1 + x7 * g2 + x8 * g3 + x9 * g4 + x10 * g5 + x11 * g6 + x12 * g7 + a40;
                a41 = x6 * g0 + x7 * g1 + x8 * g2 + x9 * g3 + x10 * g4 + x11 * g5 + x12 * g6 + x13 * g7 + a41;
            }
            { // ky = 6
                let x0 = xin(map[mf + 42u], cc);
                let x1 = xin(map[mf + 43u], cc);
                let x2 = xin(map[mf + 44u], cc);
                let x3 = xin(map[mf + 45u], cc);
                let x4 = xin(map[mf + 46u], cc);
                let x5 = xin(map[mf + 47u], cc);
                let x6 = xin(map[mf + 48u], cc);
                let x7 = xin(map[ml + 42u], cc);
                let x8 = xin(map[ml + 43u], cc);
                let x9 = xin(map[ml + 44u], cc);
                let x10 = xin(map[ml + 45u], cc);
                let x11 = xin(map[ml + 46u], cc);
                let x12 = xin(map[ml + 47u], cc);
                let x13 = xin(map[ml + 48u], cc);
                a42 = x0 * g0 + x1 * g1 + x2 * g2 + x3 * g3 + x4 * g4 + x5 * g5 + x6 * g6 + x7 * g7 + a42;
                a43 = x1 * g0 + x2 * g1 + x3 * g2 + x4 * g3 + x5 * g4 + x6 * g5 + x7 * g6 + x8 * g7 + a43;
                a44 = x2 * g0 + x3 * g1 + x4 * g2 + x5 * g3 + x6 * g4 + x7 * g5 + x8 * g6 + x9 * g7 + a44;
                a45 = x3 * g0 + x4 * g1 + x5 * g2 + x6 * g3 + x7 * g4 + x8 * g5 + x9 * g6 + x10 * g7 + a45;
                a46 = x4 * g0 + x5 * g1 + x6 * g2 + x7 * g3 + x8 * g4 + x9 * g5 + x10 * g6 + x11 * g7 + a46;
                a47 = x5 * g0 + x6 * g1 + x7 * g2 + x8 * g3 + x9 * g4 + x10 * g5 + x11 * g6 + x12 * g7 + a47;
                a48 = x6 * g0 + x7 * g1 + x8 * g2 + x9 * g3 + x10 * g4 + x11 * g5 + x12 * g6 + x13 * g7 + a48;
            }
        } else {
            for (var r = r0; r < min(r0 + TR, r_end); r++) {
                let g = gin(r, cc);
                let m = r * T;
                a0 = fma(xin(map[m + 0u], cc), g, a0);
                a1 = fma(xin(map[m + 1u], cc), g, a1);
                a2 = fma(xin(map[m + 2u], cc), g, a2);
                a3 = fma(xin(map[m + 3u], cc), g, a3);
                a4 = fma(xin(map[m + 4u], cc), g, a4);
                a5 = fma(xin(map[m + 5u], cc), g, a5);
                a6 = fma(xin(map[m + 6u], cc), g, a6);
                a7 = fma(xin(map[m + 7u], cc), g, a7);
                a8 = fma(xin(map[m + 8u], cc), g, a8);
                a9 = fma(xin(map[m + 9u], cc), g, a9);
                a10 = fma(xin(map[m + 10u], cc), g, a10);
                a11 = fma(xin(map[m + 11u], cc), g, a11);
                a12 = fma(xin(map[m + 12u], cc), g, a12);
                a13 = fma(xin(map[m + 13u], cc), g, a13);
                a14 = fma(xin(map[m + 14u], cc), g, a14);
                a15 = fma(xin(map[m + 15u], cc), g, a15);
                a16 = fma(xin(map[m + 16u], cc), g, a16);
                a17 = fma(xin(map[m + 17u], cc), g, a17);
                a18 = fma(xin(map[m + 18u], cc), g, a18);
                a19 = fma(xin(map[m + 19u], cc), g, a19);
                a20 = fma(xin(map[m + 20u], cc), g, a20);
                a21 = fma(xin(map[m + 21u], cc), g, a21);
                a22 = fma(xin(map[m + 22u], cc), g, a22);
                a23 = fma(xin(map[m + 23u], cc), g, a23);
                a24 = fma(xin(map[m + 24u], cc), g, a24);
                a25 = fma(xin(map[m + 25u], cc), g, a25);
                a26 = fma(xin(map[m + 26u], cc), g, a26);
                a27 = fma(xin(map[m + 27u], cc), g, a27);
                a28 = fma(xin(map[m + 28u], cc), g, a28);
                a29 = fma(xin(map[m + 29u], cc), g, a29);
                a30 = fma(xin(map[m + 30u], cc), g, a30);
                a31 = fma(xin(map[m + 31u], cc), g, a31);
                a32 = fma(xin(map[m + 32u], cc), g, a32);
                a33 = fma(xin(map[m + 33u], cc), g, a33);
                a34 = fma(xin(map[m + 34u], cc), g, a34);
                a35 = fma(xin(map[m + 35u], cc), g, a35);
                a36 = fma(xin(map[m + 36u], cc), g, a36);
                a37 = fma(xin(map[m + 37u], cc), g, a37);
                a38 = fma(xin(map[m + 38u], cc), g, a38);
                a39 = fma(xin(map[m + 39u], cc), g, a39);
                a40 = fma(xin(map[m + 40u], cc), g, a40);
                a41 = fma(xin(map[m + 41u], cc), g, a41);
                a42 = fma(xin(map[m + 42u], cc), g, a42);
                a43 = fma(xin(map[m + 43u], cc), g, a43);
                a44 = fma(xin(map[m + 44u], cc), g, a44);
                a45 = fma(xin(map[m + 45u], cc), g, a45);
                a46 = fma(xin(map[m + 46u], cc), g, a46);
                a47 = fma(xin(map[m + 47u], cc), g, a47);
                a48 = fma(xin(map[m + 48u], cc), g, a48);
            }
        }
    }
    let base = s * p.count;
    // Epilogue as a loop (runtime bound p.taps = T, so it stays a loop): written out per
    // tap, the guarded stores would make the kernel much slower to compile.
    for (var t = 0u; t < p.taps; t++) {
        var v = vec4<f32>(0.0);
        switch t {
            case 0u: { v = a0; }
            case 1u: { v = a1; }
            case 2u: { v = a2; }
            case 3u: { v = a3; }
            case 4u: { v = a4; }
            case 5u: { v = a5; }
            case 6u: { v = a6; }
            case 7u: { v = a7; }
            case 8u: { v = a8; }
            case 9u: { v = a9; }
            case 10u: { v = a10; }
            case 11u: { v = a11; }
            case 12u: { v = a12; }
            case 13u: { v = a13; }
            case 14u: { v = a14; }
            case 15u: { v = a15; }
            case 16u: { v = a16; }
            case 17u: { v = a17; }
            case 18u: { v = a18; }
            case 19u: { v = a19; }
            case 20u: { v = a20; }
            case 21u: { v = a21; }
            case 22u: { v = a22; }
            case 23u: { v = a23; }
            case 24u: { v = a24; }
            case 25u: { v = a25; }
            case 26u: { v = a26; }
            case 27u: { v = a27; }
            case 28u: { v = a28; }
            case 29u: { v = a29; }
            case 30u: { v = a30; }
            case 31u: { v = a31; }
            case 32u: { v = a32; }
            case 33u: { v = a33; }
            case 34u: { v = a34; }
            case 35u: { v = a35; }
            case 36u: { v = a36; }
            case 37u: { v = a37; }
            case 38u: { v = a38; }
            case 39u: { v = a39; }
            case 40u: { v = a40; }
            case 41u: { v = a41; }
            case 42u: { v = a42; }
            case 43u: { v = a43; }
            case 44u: { v = a44; }
            case 45u: { v = a45; }
            case 46u: { v = a46; }
            case 47u: { v = a47; }
            case 48u: { v = a48; }
            default: {}
        }
        put(base, c0, t, v);
    }
}
