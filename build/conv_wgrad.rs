//! Generates the split-K weight-gradient kernels (`conv_wgrad`, `conv_wgrad_cpu`,
//! `conv_wgrad_cpu_vec4`; included by build.rs) from the tiles of
//! `src/ops/conv/tiles.rs`. One algorithm: the variants differ only in tile size,
//! workgroup width, whether the reduction index spans taps, how x and dy are loaded and
//! whether a step is one fused multiply-add; they used to be three hand-unrolled files.
//! The `(TK / 4) x (TN / 4)` mat4x4 accumulators must be named variables (see
//! build/conv_gather.rs), so the unrolled lines are emitted here.

use crate::tiles::SplitKTile;
use crate::wgsl::{FMA_OUTER, Lines, OUTER, PUT_FLAT, join};

const HEAD: &str = r#"// Weight gradient of the gather convolution, split-K over output rows:
//   partials[s, t*st + k*sk + n*sn] = sum over rows r of split s of x[map[r, t], k] * dy[r, n]
// written straight into the stored weight layout, so that reduce_partials (fixed order
// over s) yields dw. No float atomics: each partial is summed by one thread in row order.
//
// A thread owns TK reduction indices x TN output channels and one split; per row it loads
// TK inputs and TN output gradients for TK * TN multiply-adds (register tile only: see
// build/conv_gather.rs for why not workgroup memory and why
// the CPU tiles are this large). Consecutive threads take consecutive output-channel
// tiles, so their dy loads are contiguous.
//
// Accumulator a<i>_<j> (mat4x4): column q = reduction index 4i+q, components = output
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
"#;

const PUT_TAP: &str = r#"
// Stores the 4x4 block at input channels k0.. (columns), output channels n0.. of tap t.
fn put16(base: u32, t: u32, k0: u32, n0: u32, m: mat4x4<f32>) {
    for (var q = 0u; q < 4u; q++) {
        if (k0 + q < p.kin) {
            let o = base + t * p.st + (k0 + q) * p.sk;
            for (var j = 0u; j < 4u; j++) {
                if (n0 + j < p.n) { partials[o + (n0 + j) * p.sn] = m[q][j]; }
            }
        }
    }
}
"#;

/// `vec4<T>(a[b.x], a[b.y], a[b.z], a[b.w])` for an index vector `b`.
fn gather4(ty: &str, a: &str, off: &str, b: &str) -> String {
    format!("vec4<{ty}>({a}[{off}{b}.x], {a}[{off}{b}.y], {a}[{off}{b}.z], {a}[{off}{b}.w])")
}

/// The WGSL of the split-K weight-gradient kernel of tile `t`.
pub fn source(t: &SplitKTile) -> String {
    assert!(t.k.is_multiple_of(4) && t.n.is_multiple_of(4), "weight-gradient tile {t:?}: TK and TN come in 4s");
    assert!(!(t.flat && t.vec4), "weight-gradient tile {t:?}: vec4 loads need one tap per thread");
    let (kg, ng, wg) = (t.k / 4, t.n / 4, t.workgroup);
    let mut s = Lines::generated("build/conv_wgrad.rs");
    s.line(&format!(
        "// Variant {}: TK = {} {} x TN = {} output channels, {}-wide workgroups, {} loads{}.",
        t.kernel,
        t.k,
        if t.flat { "k' = t * cin + ci (spanning taps, so a 3-channel stem fills the tile)" } else { "input channels of one tap" },
        t.n,
        wg,
        if t.vec4 { "vec4" } else { "scalar" },
        if t.fma { ", fused multiply-adds" } else { "" }
    ));
    s.text(HEAD);
    let elem = if t.vec4 { "vec4<f32>" } else { "f32" };
    s.line(&format!("@group(0) @binding(1) var<storage, read> x: array<{elem}>;"));
    s.line("@group(0) @binding(2) var<storage, read> map: array<i32>;");
    s.line(&format!("@group(0) @binding(3) var<storage, read> dy: array<{elem}>;"));
    s.line("@group(0) @binding(4) var<storage, read_write> partials: array<f32>;");
    s.text(if t.fma { FMA_OUTER } else { OUTER });
    s.text(if t.flat { PUT_FLAT } else { PUT_TAP });
    s.entry(wg);
    s.line("    let tid = min(id, p.total - 1u);   // clamp, do not return early (uniform control flow)");
    s.line("    let nt = tid % p.ntiles;");
    s.line("    let q = tid / p.ntiles;");
    s.line("    let kt = q % p.ktiles;");
    if t.flat {
        s.line("    let s = q / p.ktiles;");
    } else {
        s.line("    let q2 = q / p.ktiles;");
        s.line("    let t = q2 % p.taps;");
        s.line("    let s = q2 / p.taps;");
    }
    s.line("    // Reduction indices and channels past the end read the last one; their sums are never stored.");
    let iota = "vec4<u32>(0u, 1u, 2u, 3u)";
    if t.vec4 {
        // Indices of vec4 columns.
        s.line("    let k4n = p.kin / 4u;");
        s.line("    let n4n = p.n / 4u;");
        for i in 0..kg {
            s.line(&format!("    let kc{i} = min(kt * {kg}u + {i}u, k4n - 1u);"));
        }
        for j in 0..ng {
            s.line(&format!("    let nc{j} = min(nt * {ng}u + {j}u, n4n - 1u);"));
        }
    } else {
        if t.flat {
            s.line("    let kmax = p.taps * p.kin - 1u;");
            for i in 0..kg {
                s.line(&format!("    let kk{i} = min({iota} + (kt * {}u + {}u), vec4<u32>(kmax));", t.k, 4 * i));
                s.line(&format!("    let tp{i} = kk{i} / p.kin; let ci{i} = kk{i} % p.kin;"));
            }
        } else {
            s.line("    let kl = p.kin - 1u;");
            for i in 0..kg {
                s.line(&format!("    let kc{i} = min({iota} + (kt * {}u + {}u), vec4<u32>(kl));", t.k, 4 * i));
            }
        }
        s.line("    let nl = p.n - 1u;");
        for j in 0..ng {
            s.line(&format!("    let nc{j} = min({iota} + (nt * {}u + {}u), vec4<u32>(nl));", t.n, 4 * j));
        }
    }
    for i in 0..kg {
        s.line(&format!("    {}", join((0..ng).map(|j| format!("var a{i}_{j} = mat4x4<f32>();")))));
    }
    s.line("    let z = vec4<f32>(0.0);");
    s.line("    let r_begin = s * p.rows_per_split;");
    s.line("    let r_end = min(r_begin + p.rows_per_split, p.rows);");
    s.line("    for (var r = r_begin; r < r_end; r++) {");
    if t.flat {
        s.line("        let mr = r * p.taps;");
    } else {
        s.line("        let m = map[r * p.taps + t];");
        s.line("        let valid = m >= 0;");
        s.line(&format!("        let xb = u32(max(m, 0)) * {};", if t.vec4 { "k4n" } else { "p.kin" }));
    }
    s.line(&format!("        let g = r * {};", if t.vec4 { "n4n" } else { "p.n" }));
    for j in 0..ng {
        let load = if t.vec4 { format!("dy[g + nc{j}]") } else { gather4("f32", "dy", "g + ", &format!("nc{j}")) };
        s.line(&format!("        let g{j} = {load};"));
    }
    for i in 0..kg {
        if t.flat {
            s.line(&format!("        let m{i} = {};", gather4("i32", "map", "mr + ", &format!("tp{i}"))));
            s.line(&format!("        let b{i} = vec4<u32>(max(m{i}, vec4<i32>(0))) * p.kin + ci{i};"));
            s.line(&format!("        let x{i} = select(z, {}, m{i} >= vec4<i32>(0));", gather4("f32", "x", "", &format!("b{i}"))));
        } else if t.vec4 {
            s.line(&format!("        let x{i} = select(z, x[xb + kc{i}], valid);"));
        } else {
            s.line(&format!("        let x{i} = select(z, {}, valid);", gather4("f32", "x", "xb + ", &format!("kc{i}"))));
        }
        let acc = |j: usize| {
            if t.fma { format!("a{i}_{j} = fma_outer(x{i}, g{j}, a{i}_{j});") } else { format!("a{i}_{j} += outer(x{i}, g{j});") }
        };
        s.line(&format!("        {}", join((0..ng).map(acc))));
    }
    s.line("    }");
    s.line("    if (id >= p.total) { return; }");
    s.line("    let base = s * p.count;");
    s.line("    // Epilogue as a loop (runtime bound, so it stays a loop): written out per accumulator,");
    s.line("    // the guarded stores make the kernel several times slower to compile.");
    s.line("    for (var i = 0u; i < p.k_groups; i++) {");
    s.line(&format!("        {}", join((0..ng).map(|j| format!("var s{j} = mat4x4<f32>();")))));
    s.line("        switch i {");
    for i in 0..kg {
        s.line(&format!("            case {i}u: {{ {} }}", join((0..ng).map(|j| format!("s{j} = a{i}_{j};")))));
    }
    s.line("            default: {}");
    s.line("        }");
    let tap = if t.flat { "" } else { "t, " };
    s.line(&format!(
        "        {}",
        join((0..ng).map(|j| format!("put16(base, {tap}kt * {}u + 4u * i, nt * {}u + {}u, s{j});", t.k, t.n, 4 * j)))
    ));
    s.line("    }");
    s.line("}");
    s.into()
}
