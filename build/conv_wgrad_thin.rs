//! Generates `conv_wgrad_thin.wgsl` (included by build.rs): one entry point pair per
//! tile of `src/ops/conv/tiles.rs`. A generator rather than hand-written copies: every
//! tile is the same algorithm fully unrolled over its KG x NG blocks (accumulators must be
//! named variables to stay in registers: WGSL private arrays indexed in a loop spill on
//! some compilers), so the only per-tile input is (KG, NG).

use crate::tiles::ThinTile;
use crate::wgsl::PUT_FLAT;
use std::fmt::Write as _;

/// The shared part: what every tile's entry points call.
const HEAD: &str = r#"//
// Weight gradient of the gather convolution for THIN layers (few output channels, many
// rows: the full-resolution decoder stages), any adapter: same contract as
// conv_wgrad (build/conv_wgrad.rs: split-K partials over output rows in the stored weight layout, then
// reduce_partials, fixed order, no atomics).
//
// Why a separate kernel: with taps * cin * cout of only tens to hundreds of outputs, a
// 32 x 32 (CPU) or per-tap 4 x 8 (GPU) channel tile is mostly padding, and the few tiles
// leave too few threads. Here a thread owns KG x NG blocks of 4 x 4: 4 * KG reduction
// indices k' = t * cin + ci (spanning taps, as in conv_wgrad_cpu, so that cin < 4
// wastes nothing) x 4 * NG output channels, over one contiguous chunk of rows, and the
// launcher uses many splits (thousands of threads).
//
// On llvmpipe every storage load costs one scalar load per lane (~50x a multiply-add),
// so the tiles are as large as the layer allows (each loaded x serves 4 * NG channels,
// each dy 4 * KG k'), and per row a block whose map entry is empty (the 3 of 4 taps of
// a transposed 4x4/2 that a row does not read) loads nothing. With `split_fastest`
// consecutive invocations take consecutive splits of the same tile: on a CPU the
// launcher makes the rows per split a multiple of 256, so the 8 lanes of a SIMD vector
// read rows at the same position of an image row pair and agree on which taps are empty
// (the branch is skipped, not masked). GPUs take tiles fastest (coalesced loads).
//
// The bias gradient rides along: the threads of k' tile 0 load every dy of their
// channels anyway, so they also write bias partials (no separate pass over dy).
struct Params {
    rows: u32,
    kin: u32,        // cin
    n: u32,          // cout
    taps: u32,
    kgroups: u32,    // ceil(taps * kin / (4 * KG))
    ngroups: u32,    // ceil(n / (4 * NG))
    rows_per_split: u32,
    total: u32,      // threads = splits * kgroups * ngroups
    st: u32, sk: u32, sn: u32,
    count: u32,      // taps * kin * n: one split's slice of partials
    has_bias: u32,   // write bias partials [splits, n]
    aligned: u32,    // kin % 4 == 0: a block's 4 k' are 4 channels of one tap (one map load)
    splits: u32,
    split_fastest: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<storage, read_write> bias_partials: array<f32>;

fn outer(xs: vec4<f32>, g: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(g * xs.x, g * xs.y, g * xs.z, g * xs.w);
}

// (split, k' tile, channel tile) of a thread.
fn coords(tid: u32) -> vec3<u32> {
    var s: u32; var q: u32;
    if (p.split_fastest != 0u) {
        s = tid % p.splits; q = tid / p.splits;
    } else {
        q = tid % (p.kgroups * p.ngroups); s = tid / (p.kgroups * p.ngroups);
    }
    return vec3<u32>(s, q / p.ngroups, q % p.ngroups);
}

"#;

const HEAD_AFTER_PUT: &str = r#"
// dy[r, n0..n0+3] (row offset g); channels past the end are not loaded (zero).
fn dy4(g: u32, n0: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (n0 < p.n) { v.x = dy[g + n0]; }
    if (n0 + 1u < p.n) { v.y = dy[g + n0 + 1u]; }
    if (n0 + 2u < p.n) { v.z = dy[g + n0 + 2u]; }
    if (n0 + 3u < p.n) { v.w = dy[g + n0 + 3u]; }
    return v;
}

// Map entries of k' = kk0..kk0+3 (taps tp) of the row at map offset mr: a tap shared
// with the previous k' is loaded once (cin < 4), k' past the end read as empty (-1).
fn maps4(mr: u32, kk0: u32, tp: vec4<u32>) -> vec4<i32> {
    let kmax = p.taps * p.kin;
    var m = vec4<i32>(-1);
    if (kk0 < kmax) { m.x = map[mr + tp.x]; }
    if (kk0 + 1u < kmax) { if (tp.y == tp.x) { m.y = m.x; } else { m.y = map[mr + tp.y]; } }
    if (kk0 + 2u < kmax) { if (tp.z == tp.y) { m.z = m.y; } else { m.z = map[mr + tp.z]; } }
    if (kk0 + 3u < kmax) { if (tp.w == tp.z) { m.w = m.z; } else { m.w = map[mr + tp.w]; } }
    return m;
}

// Inputs at map entries m, channels ci: empty entries are not loaded (zero).
fn xs4(m: vec4<i32>, ci: vec4<u32>) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (m.x >= 0) { v.x = x[u32(m.x) * p.kin + ci.x]; }
    if (m.y >= 0) { v.y = x[u32(m.y) * p.kin + ci.y]; }
    if (m.z >= 0) { v.z = x[u32(m.z) * p.kin + ci.z]; }
    if (m.w >= 0) { v.w = x[u32(m.w) * p.kin + ci.w]; }
    return v;
}

fn put_bias(s: u32, n0: u32, b: vec4<f32>) {
    for (var j = 0u; j < 4u; j++) {
        if (n0 + j < p.n) { bias_partials[s * p.n + n0 + j] = b[j]; }
    }
}
"#;

/// The WGSL of every tile in `tiles`.
pub fn source(tiles: &[ThinTile]) -> String {
    let mut s = String::from(
        "// GENERATED by build.rs (build/conv_wgrad_thin.rs) from the tile table in\n\
         // src/ops/conv/tiles.rs: edit those, not this text.\n",
    );
    s += HEAD;
    s += PUT_FLAT.trim_start_matches('\n');
    s += HEAD_AFTER_PUT;
    for t in tiles {
        s += "\n";
        s += &tile(t);
    }
    s
}

fn tile(t: &ThinTile) -> String {
    let (kg, ng) = (t.kg, t.ng);
    let name = format!("k{kg}n{ng}");
    let mut l: Vec<String> = vec![format!("// A thread owns {} k' x {} output channels.", 4 * kg, 4 * ng), format!("fn run_{name}(id: u32) {{")];
    let mut a = |v: String| l.push(v);
    a("    let tid = min(id, p.total - 1u);   // clamp, do not return early (uniform control flow)".into());
    a("    let c = coords(tid);".into());
    a("    let s = c.x; let kt = c.y; let nt = c.z;".into());
    a("    let kmax = p.taps * p.kin - 1u;".into());
    a("    // k' past the end take the last tap; their sums are never stored".into());
    for i in 0..kg {
        a(format!("    let kk{i} = min(vec4<u32>(0u, 1u, 2u, 3u) + (kt * {}u + {}u), vec4<u32>(kmax));", 4 * kg, 4 * i));
        a(format!("    let tp{i} = kk{i} / p.kin; let ci{i} = kk{i} % p.kin;"));
    }
    for i in 0..kg {
        a(format!("    {}", (0..ng).map(|j| format!("var a{i}_{j} = mat4x4<f32>();")).collect::<Vec<_>>().join(" ")));
    }
    a(format!("    {}", (0..ng).map(|j| format!("var b{j} = vec4<f32>(0.0);")).collect::<Vec<_>>().join(" ")));
    a("    let bias_thread = p.has_bias != 0u && kt == 0u;".into());
    a("    let r_begin = s * p.rows_per_split;".into());
    a("    let r_end = min(r_begin + p.rows_per_split, p.rows);".into());
    a("    let zi = vec4<i32>(0);".into());
    for aligned in [true, false] {
        a(if aligned { "    if (p.aligned != 0u) {" } else { "    } else {" }.into());
        a("        for (var r = r_begin; r < r_end; r++) {".into());
        a("            let mr = r * p.taps;".into());
        a("            let g = r * p.n;".into());
        for i in 0..kg {
            if aligned {
                a(format!("            let m{i} = map[mr + tp{i}.x];"));
                a(format!("            let v{i} = m{i} >= 0;"));
            } else {
                a(format!("            let m{i} = maps4(mr, kt * {}u + {}u, tp{i});", 4 * kg, 4 * i));
                a(format!("            let v{i} = any(m{i} >= zi);"));
            }
        }
        let anyv = (0..kg).map(|i| format!("v{i}")).collect::<Vec<_>>().join(" || ");
        a(format!("            if (bias_thread || {anyv}) {{"));
        for j in 0..ng {
            a(format!("                let g{j} = dy4(g, nt * {}u + {}u);", 4 * ng, 4 * j));
            a(format!("                b{j} += g{j};"));
        }
        for i in 0..kg {
            // Only the loads are conditional: an accumulator written in a branch costs
            // llvmpipe a blend per component.
            a(format!("                var x{i} = vec4<f32>(0.0);"));
            a(format!("                if (v{i}) {{"));
            if aligned {
                a(format!("                    let xb = u32(m{i}) * p.kin;"));
                a(format!("                    x{i} = vec4<f32>(x[xb + ci{i}.x], x[xb + ci{i}.y], x[xb + ci{i}.z], x[xb + ci{i}.w]);"));
            } else {
                a(format!("                    x{i} = xs4(m{i}, ci{i});"));
            }
            a("                }".into());
            a(format!("                {}", (0..ng).map(|j| format!("a{i}_{j} += outer(x{i}, g{j});")).collect::<Vec<_>>().join(" ")));
        }
        a("            }".into());
        a("        }".into());
    }
    a("    }".into());
    a("    if (id >= p.total) { return; }".into());
    a("    let base = s * p.count;".into());
    for i in 0..kg {
        for j in 0..ng {
            a(format!("    put16(base, kt * {}u + {}u, nt * {}u + {}u, a{i}_{j});", 4 * kg, 4 * i, 4 * ng, 4 * j));
        }
    }
    a("    if (bias_thread) {".into());
    for j in 0..ng {
        a(format!("        put_bias(s, nt * {}u + {}u, b{j});", 4 * ng, 4 * j));
    }
    a("    }".into());
    a("}".into());
    a(String::new());
    a("@compute @workgroup_size(64)".into());
    a(format!("fn {}(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{", t.gpu_entry));
    a(format!("    run_{name}(gid.x + gid.y * nwg.x * 64u);"));
    a("}".into());
    a(String::new());
    a("// 8 invocations = one SIMD vector of llvmpipe: small layers still spread over every core.".into());
    a("@compute @workgroup_size(8)".into());
    a(format!("fn {}(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{", t.cpu_entry));
    a(format!("    run_{name}(gid.x + gid.y * nwg.x * 8u);"));
    a("}".into());
    let mut out = String::new();
    for line in &l {
        let _ = writeln!(out, "{line}");
    }
    out
}
