//! Generates the depthwise kernels (included by build.rs) from the tiles of
//! `src/ops/conv/tiles.rs`: `depthwise` (forward and data gradient), `depthwise_wgrad`
//! (any kernel size) and `depthwise_wgrad7` (the 7x7 specialisation). Generated rather
//! than hand-unrolled: the per-row and per-tap accumulators must be named variables to
//! stay in registers (WGSL private arrays indexed in loops spill on some compilers), so
//! the unrolled lines are emitted from loops here.

use crate::tiles::DepthwiseTile;
use crate::wgsl::{CHANNELS4, Lines, XIN, join};

const FORWARD_HEAD: &str = r#"// Depthwise gather convolution (ConvNeXt's 7x7, weight [C, 1, kh, kw]):
//   y[r, c] (+)= bias[c] + sum_t x[map[r, t], c] * w[c * taps + t]
// Negative map entries read zero. The data gradient is this kernel over the inverse map
// (the weight of tap t is the same both ways), without bias, with dir = 1.
//
// A thread owns a strip of TR consecutive rows x 4 channels (consecutive threads:
// consecutive channel groups of the same strip). Generic path: per tap, TR map entries,
// 4 TR inputs and 4 weights for 4 TR multiply-adds.
//
// Fast path (K x K only): when the strip is TR horizontally adjacent sites of one image
// row (checked per strip: tap `centre` of row r is r itself and the right-hand neighbour
// tap of row r is r + 1), row i at tap (ky, kx) reads the input at strip position i + kx
// (inverse map: i + K - 1 - kx), so per kernel row the strip reads TR + K - 1 distinct
// inputs instead of TR * K (8 rows, 7x7: 14 instead of 56, about 3x fewer loads).
// Visible patches cover whole runs of sites per image row, so most strips of the early,
// large stages take it. The path depends on the map only, so results are reproducible
// (the inverse-map fast path sums each kernel row's taps in reverse order, the only
// difference from the generic path).
struct Params { rows: u32, c: u32, taps: u32, ctiles: u32, has_bias: u32, accumulate: u32, dir: u32, _p: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
"#;

const FORWARD_PUT: &str = r#"
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
"#;

const FORWARD_FNS: &str = r#"
// Weights of tap t at the 4 channels whose weight rows start at wc.
fn wv(wc: vec4<u32>, t: u32) -> vec4<f32> {
    return vec4<f32>(w[wc.x + t], w[wc.y + t], w[wc.z + t], w[wc.w + t]);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    let ct = id % p.ctiles;
    let r0 = (id / p.ctiles) * TR;
    if (r0 >= p.rows) { return; }
    let c0 = ct * 4u;
"#;

/// Strip position `d` of a fast-path strip (TR rows, K taps per kernel row): row 0's
/// window covers `0..K`, the last row's the rest; returns (map offset name, tap).
fn strip_source(d: usize, tr: usize, k: usize) -> (&'static str, usize) {
    if d < k { ("mf", d) } else { ("ml", d - (tr - 1)) }
}

/// `depthwise`: forward and data gradient with strips of `t.rows` rows, fast path for
/// `t.k x t.k`.
pub fn forward(t: &DepthwiseTile) -> String {
    let (tr, k) = (t.rows, t.k);
    // The fast path's strip positions come from the first and the last row's windows.
    assert!(tr >= 2 && tr - 1 <= k, "depthwise tile {t:?}: rows 2..=K+1");
    let mut s = Lines::generated("build/depthwise.rs");
    s.text(FORWARD_HEAD);
    s.line(&format!("\nconst TR: u32 = {tr}u;\nconst K: u32 = {k}u;"));
    s.text(FORWARD_PUT);
    s.text(XIN);
    s.text(FORWARD_FNS);
    s.text(CHANNELS4);
    s.line("    let wc = cc * p.taps;");
    s.line("    let last = p.rows - 1u;");
    for i in 0..tr {
        s.line(&format!("    var a{i} = vec4<f32>(0.0);"));
    }
    s.text(
        r#"    var fast = p.taps == K * K && r0 + TR <= p.rows;
    if (fast) {
        let centre = (K / 2u) * K + K / 2u;
        let nb = select(centre + 1u, centre - 1u, p.dir != 0u);
        fast = map[r0 * p.taps + centre] == i32(r0);
        for (var i = 0u; i + 1u < TR; i++) {
            fast = fast && map[(r0 + i) * p.taps + nb] == i32(r0 + i + 1u);
        }
    }
    if (fast) {
        let mf = r0 * p.taps;                 // row 0: positions 0..K-1
        let ml = (r0 + TR - 1u) * p.taps;     // last row: positions K..TR+K-2
        let inv = p.dir != 0u;
        for (var ky = 0u; ky < K; ky++) {
            let t0 = ky * K;
            // strip position d <-> tap kx = d (forward) or K - 1 - d (inverse) of row 0,
            // or of the last row for the positions past row 0's window
"#,
    );
    for d in 0..tr + k - 1 {
        let (m, kx) = strip_source(d, tr, k);
        s.line(&format!("            let x{d} = xin(map[{m} + t0 + select({kx}u, {}u, inv)], cc);", k - 1 - kx));
    }
    for kx in 0..k {
        s.line(&format!("            let w{kx} = wv(wc, t0 + select({kx}u, {}u, inv));", k - 1 - kx));
    }
    s.line("            // row i, strip offset s = kx (forward) or K - 1 - kx: position i + s");
    for i in 0..tr {
        s.line(&format!("            {}", join((0..k).map(|kx| format!("a{i} = fma(x{}, w{kx}, a{i});", i + kx)))));
    }
    s.line("        }");
    s.line("    } else {");
    for i in 0..tr {
        s.line(&format!("        let o{i} = min(r0 + {i}u, last) * p.taps;"));
    }
    s.line("        for (var t = 0u; t < p.taps; t++) {");
    s.line("            let wt = wv(wc, t);");
    for i in 0..tr {
        s.line(&format!("            a{i} = fma(xin(map[o{i} + t], cc), wt, a{i});"));
    }
    s.line("        }");
    s.line("    }");
    for i in 0..tr {
        s.line(&format!("    put(r0 + {i}u, c0, a{i});"));
    }
    s.line("}");
    s.into()
}

const WGRAD_HEAD: &str = r#"// Depthwise weight gradient, split-K over output rows:
//   partials[s, c * taps + t] = sum over rows r of split s of x[map[r, t], c] * dy[r, c]
// then reduce_partials over s (fixed order, no float atomics). A thread owns 4 channels of
// one tap and one split; consecutive threads take consecutive channel groups, so their
// x and dy loads are contiguous. K x K kernels of the tile table use depthwise_wgrad<K>.
struct Params { rows: u32, c: u32, taps: u32, ctiles: u32, rows_per_split: u32, total: u32, count: u32, _p: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    let tid = min(id, p.total - 1u);   // clamp, do not return early (uniform control flow)
    let ct = tid % p.ctiles;
    let q = tid / p.ctiles;
    let t = q % p.taps;
    let s = q / p.taps;
    let c0 = ct * 4u;
"#;

const WGRAD_BODY: &str = r#"    var acc = vec4<f32>(0.0);
    let r_begin = s * p.rows_per_split;
    let r_end = min(r_begin + p.rows_per_split, p.rows);
    for (var r = r_begin; r < r_end; r++) {
        let m = map[r * p.taps + t];
        let b = u32(max(m, 0)) * p.c;
        let xv = select(vec4<f32>(0.0), vec4<f32>(x[b + cc.x], x[b + cc.y], x[b + cc.z], x[b + cc.w]), m >= 0);
        let g = r * p.c;
        let gv = vec4<f32>(dy[g + cc.x], dy[g + cc.y], dy[g + cc.z], dy[g + cc.w]);
        acc = fma(xv, gv, acc);
    }
    if (id >= p.total) { return; }
    let base = s * p.count;
    for (var j = 0u; j < 4u; j++) {
        if (c0 + j < p.c) { partials[base + (c0 + j) * p.taps + t] = acc[j]; }
    }
}
"#;

/// `depthwise_wgrad`: any kernel size, one thread per 4 channels x tap x split.
pub fn wgrad() -> String {
    let mut s = Lines::generated("build/depthwise.rs");
    s.text(WGRAD_HEAD);
    s.text(CHANNELS4);
    s.text(WGRAD_BODY);
    s.into()
}

const WGRAD_K_HEAD: &str = r#"// Depthwise weight gradient for K x K kernels (ConvNeXt's 7x7), split-K over output rows:
//   partials[s, c * T + t] = sum over rows r of split s of x[map[r, t], c] * dy[r, c]
// then reduce_partials over s (fixed order, no float atomics). Other kernel sizes use
// depthwise_wgrad.
//
// A thread owns 4 channels x all T = K * K taps (T vec4 accumulators) and one split, and
// walks its rows in strips of TR. A strip of TR horizontally adjacent sites (same test
// as depthwise) reads TR + K - 1 distinct inputs per kernel row: for 8 rows, 7x7, per
// strip 8 output-gradient and 7 x 14 input loads serve 392 multiply-adds (about 7x fewer
// loads than one tap at a time). Other strips go row by row. Which path a strip takes
// depends on the map only, so results are reproducible.
struct Params { rows: u32, c: u32, ctiles: u32, rows_per_split: u32, count: u32, taps: u32, _p1: u32, _p2: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
"#;

const WGRAD_K_FNS: &str = r#"
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
"#;

/// `depthwise_wgrad<K>`: `t.k x t.k` taps per thread, strips of `t.rows` rows.
pub fn wgrad_k(t: &DepthwiseTile) -> String {
    let (tr, k) = (t.rows, t.k);
    assert!(tr >= 2 && tr - 1 <= k, "depthwise tile {t:?}: rows 2..=K+1");
    let taps = k * k;
    let mut s = Lines::generated("build/depthwise.rs");
    s.text(WGRAD_K_HEAD);
    s.line(&format!("\nconst TR: u32 = {tr}u;\nconst K: u32 = {k}u;\nconst T: u32 = {taps}u;"));
    s.text(XIN);
    s.text(WGRAD_K_FNS);
    s.text(CHANNELS4);
    for t in 0..taps {
        s.line(&format!("    var a{t} = vec4<f32>(0.0);"));
    }
    s.text(
        r#"    let centre = (K / 2u) * K + K / 2u;
    for (var r0 = r_begin; r0 < r_end; r0 += TR) {
        var fast = r0 + TR <= r_end && map[r0 * T + centre] == i32(r0);
        for (var i = 0u; i + 1u < TR; i++) {
            fast = fast && map[(r0 + i) * T + centre + 1u] == i32(r0 + i + 1u);
        }
        if (fast) {
"#,
    );
    for i in 0..tr {
        s.line(&format!("            let g{i} = gin(r0 + {i}u, cc);"));
    }
    s.line("            let mf = r0 * T;");
    s.line(&format!("            let ml = (r0 + {}u) * T;", tr - 1));
    s.line("            // row i at tap (ky, kx) reads strip position i + kx");
    for ky in 0..k {
        s.line(&format!("            {{ // ky = {ky}"));
        for d in 0..tr + k - 1 {
            let (m, kx) = strip_source(d, tr, k);
            s.line(&format!("                let x{d} = xin(map[{m} + {}u], cc);", ky * k + kx));
        }
        for kx in 0..k {
            let a = ky * k + kx;
            let sum = (0..tr).map(|i| format!("x{} * g{i}", kx + i)).collect::<Vec<_>>().join(" + ");
            s.line(&format!("                a{a} = {sum} + a{a};"));
        }
        s.line("            }");
    }
    s.line("        } else {");
    s.line("            for (var r = r0; r < min(r0 + TR, r_end); r++) {");
    s.line("                let g = gin(r, cc);");
    s.line("                let m = r * T;");
    for t in 0..taps {
        s.line(&format!("                a{t} = fma(xin(map[m + {t}u], cc), g, a{t});"));
    }
    s.text(
        r#"            }
        }
    }
    let base = s * p.count;
    // Epilogue as a loop (runtime bound p.taps = T, so it stays a loop): written out per
    // tap, the guarded stores would make the kernel much slower to compile.
    for (var t = 0u; t < p.taps; t++) {
        var v = vec4<f32>(0.0);
        switch t {
"#,
    );
    for t in 0..taps {
        s.line(&format!("            case {t}u: {{ v = a{t}; }}"));
    }
    s.text(
        r#"            default: {}
        }
        put(base, c0, t, v);
    }
}
"#,
    );
    s.into()
}
