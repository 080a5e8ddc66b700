//! Generates the register-tiled gather-GEMM kernels for CPU drivers (included by
//! build.rs): `conv_cpu_vec4` (K and N multiples of 4: vec4 loads and stores) and
//! `conv_cpu` (any K and N), both from a tile of `src/ops/conv/tiles.rs`. One generator
//! for both: they are the same algorithm and differ only in how a step's inputs and
//! weights are loaded; the `(TR / 4) x TV` mat4x4 accumulators must be named variables
//! (see build/conv_gather.rs), so the unrolled lines are emitted here.

use crate::tiles::{CpuLoads, GatherTile};
use crate::wgsl::{Lines, join};

const WHY_LARGE: &str = r#"//
// Why so large a tile: a CPU driver (llvmpipe) turns each storage load of a divergent
// address into a scalar loop over the SIMD lanes (tens of cycles per loaded component),
// while a multiply-add is one SIMD instruction and a spilled accumulator a plain stack
// access. Speed is set by components loaded per multiply-add, (TR + TC) / (TR * TC):
// 0.375 for the 4x8 GPU tile, 0.0625 for 32x32. Measured on llvmpipe (3x3, 128 -> 128):
// 16x16 2.2, 32x32 4.0, 64x32 4.2 GFLOP/s per CPU-second; larger tiles compile slower.
// On a GPU these accumulators would spill to local memory, so GPUs keep conv
// (build/conv_gather.rs).
//
// Accumulator a<i>_<j> (mat4x4) holds rows 4i..4i+3 (its columns) x channels 4j..4j+3.
"#;

const PARAMS: &str = r#"struct Params {
    rows: u32, kin: u32, n: u32, nv: u32, taps: u32, ctiles: u32, has_bias: u32, accumulate: u32,
    total: u32, row_groups: u32, _p1: u32, _p2: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
"#;

const PUT_VEC4: &str = r#"fn put(r: u32, cv: u32, v: vec4<f32>) {
    let nv = p.n / 4u;
    if (r >= p.rows || cv >= nv) { return; }
    var o = v;
    if (p.has_bias != 0u) { o += bias[cv]; }
    let i = r * nv + cv;
    if (p.accumulate != 0u) { o += y[i]; }
    y[i] = o;
}
"#;

const PUT_SCALAR: &str = r#"fn put(r: u32, cv: u32, v: vec4<f32>) {
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
"#;

const ROWS: &str = r#"
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
"#;

const LOADS_VEC4: &str = r#"
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
"#;

const LOADS_SCALAR: &str = r#"
// Inputs of 4 rows (index bases b, validity v) at input channel k.
fn xs(b: vec4<u32>, v: vec4<bool>, k: u32) -> vec4<f32> {
    let s = vec4<f32>(x[b.x + k], x[b.y + k], x[b.z + k], x[b.w + k]);
    return select(vec4<f32>(0.0), s, v);
}

fn outer(xs: vec4<f32>, w: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(w * xs.x, w * xs.y, w * xs.z, w * xs.w);
}
"#;

/// The WGSL of the CPU gather kernel with tile `t` loading its operands as `loads` says,
/// row interleave `ri` and phase group `g`.
pub fn source(t: &GatherTile, loads: CpuLoads, ri: usize, g: usize) -> String {
    let vec4 = loads == CpuLoads::Vec4;
    // Per 4 rows, whether the input loads of a tap none of them reads are skipped.
    let skip = loads != CpuLoads::Scalar;
    assert!(t.rows.is_multiple_of(4) && t.cols.is_multiple_of(4), "CPU gather tile {t:?}: rows and columns come in 4s");
    let (tr, tv, rg) = (t.rows, t.cols / 4, t.rows / 4);
    let mut s = Lines::generated("build/conv_gather_cpu.rs");
    if loads == CpuLoads::ScalarSkipEmpty {
        s.text(&format!(
            "// Gather convolution for CPU adapters with N <= 4 output channels (the 3-channel output\n\
             // projection; the stem's data gradient): same contract as conv (build/conv_gather.rs);\n\
             // scalar input loads, vec4 weight loads from the padded re-laid weight. TR = {tr} rows x\n\
             // {} output channels per thread: a wide column tile would be mostly padding, so the tile\n\
             // grows along rows. Each loaded input serves only N multiply-adds here, so this kernel\n\
             // is load-bound whatever its shape.\n",
            t.cols
        ));
        s.text(WHY_LARGE);
        s.text("// Updated per input channel by the outer product of the 4 rows' inputs and 4 weights.\n");
    } else if vec4 {
        s.text(&format!(
            "// Gather convolution for CPU adapters when K and N are multiples of 4 (every ResNet and\n\
             // ConvNeXt layer except the 3-channel stem and output): same contract as conv\n\
             // (build/conv_gather.rs), with x, wt and y read and written as vec4s. TR = {tr} rows x\n\
             // {} output channels per thread.\n",
            t.cols
        ));
        s.text(WHY_LARGE);
        s.text("// With X_i the 4 rows' inputs at 4 consecutive input channels (columns) and W_j the\n// weights of those 4 input channels (columns), one step is a<i>_<j> += W_j * X_i.\n");
    } else {
        s.text(&format!(
            "// Gather convolution for CPU adapters, any K and N (the 3-channel stem input): same\n\
             // contract as conv (build/conv_gather.rs); scalar input loads, vec4 weight loads from\n\
             // the padded re-laid weight. TR = {tr} rows x {} output channels per thread.\n",
            t.cols
        ));
        s.text(WHY_LARGE);
        s.text("// Updated per input channel by the outer product of the 4 rows' inputs and 4 weights.\n");
    }
    s.text(PARAMS);
    let io = if vec4 { "vec4<f32>" } else { "f32" };
    s.line(&format!("@group(0) @binding(1) var<storage, read> x: array<{io}>;"));
    s.line("@group(0) @binding(2) var<storage, read> map: array<i32>;");
    s.line("@group(0) @binding(3) var<storage, read> wt: array<vec4<f32>>;");
    s.line(&format!("@group(0) @binding(4) var<storage, read> bias: array<{io}>;"));
    s.line(&format!("@group(0) @binding(5) var<storage, read_write> y: array<{io}>;"));
    s.line("");
    s.line("// Tile shape (rows x vec4 columns), row interleave and phase group: from the table.");
    s.line(&format!("const TR: u32 = {tr}u;\nconst TV: u32 = {tv}u;\nconst RI: u32 = {ri}u;\nconst G: u32 = {g}u;\n"));
    s.text(if vec4 { PUT_VEC4 } else { PUT_SCALAR });
    s.text(ROWS);
    s.text(if vec4 { LOADS_VEC4 } else { LOADS_SCALAR });
    s.text(
        r#"
// 8 invocations = one SIMD vector of llvmpipe: small layers still spread over every core.
@compute @workgroup_size(8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 8u;
    let ct = id % p.ctiles;
    let q = id / p.ctiles;
    let q2 = q / G;
    let base = (q2 / RI) * (RI * G * TR) + q2 % RI + RI * (q % G) * TR;
    if (base >= p.rows) { return; }
"#,
    );
    for i in 0..rg {
        s.line(&format!("    let o{i} = rows4(base, {}u);", 4 * i));
    }
    for i in 0..rg {
        s.line(&format!("    {}", join((0..tv).map(|j| format!("var a{i}_{j} = mat4x4<f32>();")))));
    }
    s.line(if vec4 { "    let kstep = p.kin / 4u;" } else { "    let kstep = p.kin;" });
    s.line("    let nv = p.nv;");
    s.line("    let zero = vec4<i32>(0);");
    s.line("    for (var t = 0u; t < p.taps; t++) {");
    for i in 0..rg {
        s.line(&format!("        let m{i} = maps4(o{i}, t);"));
    }
    // Left fold, the order the hand-written kernels used.
    let mx = (1..rg).fold("m0".to_string(), |acc, i| format!("max({acc}, m{i})"));
    s.line(&format!("        let mx = {mx};"));
    if skip {
        s.line("        // Skip taps that none of the rows reads (see conv (build/conv_gather.rs)), and per 4");
        s.line("        // rows the input loads of a tap that none of them reads: with a transposed 4x4/2");
        s.line("        // map, 3 of 4 taps are empty for a row, and the 4 rows of a group (8 consecutive");
        s.line("        // rows) share their image row, so they agree; so do the lanes of a SIMD vector");
        s.line("        // (rows RI * TR apart). Only the loads are conditional: an accumulator written in a");
        s.line("        // branch costs llvmpipe a blend per component.");
    } else {
        s.line("        // Skip taps that none of the rows reads (see conv (build/conv_gather.rs)).");
    }
    s.line("        if (max(max(mx.x, mx.y), max(mx.z, mx.w)) >= 0) {");
    for i in 0..rg {
        let u = if skip { format!(" let u{i} = any(v{i});") } else { String::new() };
        s.line(&format!("            let b{i} = vec4<u32>(max(m{i}, zero)) * kstep; let v{i} = m{i} >= zero;{u}"));
    }
    s.line("            var wi = t * p.kin * nv + ct * TV;");
    let k = if vec4 { "k4" } else { "k" };
    s.line(&format!("            for (var {k} = 0u; {k} < kstep; {k}++) {{"));
    for j in 0..tv {
        s.line(&if vec4 { format!("                let w{j} = ws4(wi + {j}u, nv);") } else { format!("                let w{j} = wt[wi + {j}u];") });
    }
    for i in 0..rg {
        if vec4 {
            s.line(&format!("                var x{i} = mat4x4<f32>();"));
            s.line(&format!("                if (u{i}) {{ x{i} = xs4(b{i}, v{i}, k4); }}"));
            s.line(&format!("                {}", join((0..tv).map(|j| format!("a{i}_{j} += w{j} * x{i};")))));
        } else if skip {
            s.line(&format!("                var x{i} = vec4<f32>(0.0);"));
            s.line(&format!("                if (u{i}) {{ x{i} = xs(b{i}, v{i}, k); }}"));
            s.line(&format!("                {}", join((0..tv).map(|j| format!("a{i}_{j} += outer(x{i}, w{j});")))));
        } else {
            s.line(&format!("                let x{i} = xs(b{i}, v{i}, k);"));
            s.line(&format!("                {}", join((0..tv).map(|j| format!("a{i}_{j} += outer(x{i}, w{j});")))));
        }
    }
    s.line(if vec4 { "                wi += 4u * nv;" } else { "                wi += nv;" });
    s.text(
        r#"            }
        }
    }
    let c = ct * TV;
    // Epilogue as a loop over row groups (runtime bound, so it stays a loop): written out
    // per accumulator, the guarded stores make the kernel ~10x slower to compile.
    for (var i = 0u; i < p.row_groups; i++) {
"#,
    );
    s.line(&format!("        {}", join((0..tv).map(|j| format!("var s{j} = mat4x4<f32>();")))));
    s.line("        switch i {");
    for i in 0..rg {
        s.line(&format!("            case {i}u: {{ {} }}", join((0..tv).map(|j| format!("s{j} = a{i}_{j};")))));
    }
    s.line("            default: {}");
    s.line("        }");
    s.line(&format!("        {}", join((0..tv).map(|j| format!("put4(base, 4u * i, c + {j}u, s{j});")))));
    s.line("    }");
    s.line("}");
    s.into()
}
