//! Generates every gather-GEMM kernel (forward and data gradient; included by build.rs)
//! from the tiles of `src/ops/conv/tiles.rs`: `conv` (GPUs), `conv_cpu_vec4`, `conv_cpu`
//! and `conv_cpu_narrow` (CPU drivers). One algorithm: the variants differ only in tile
//! size, workgroup width, how a step's inputs and weights are loaded and whether a step is
//! one fused multiply-add. A generator rather than hand-unrolled files: the
//! `(TR / 4) x TV` mat4x4 accumulators must be named variables (WGSL private arrays
//! indexed in loops spill to memory on some compilers, and `override`s cannot size them),
//! so every tile shape is the same text with other names.

use crate::tiles::{GatherLoads, GatherStage, GatherTile};
use crate::wgsl::{FMA_OUTER, Lines, OUTER, join};

const HEAD: &str = r#"// Gather convolution as an implicit GEMM (sparse or dense: a dense map has every site):
//   y[r, n] (+)= bias[n] + sum_t sum_k x[map[r, t], k] * wt[(t * K + k) * n_pad + n]
// with wt the re-laid weight from conv_relayout.wgsl. Negative map entries (padding or a
// masked site) contribute zero. The data gradient is this same kernel run over the
// inverse map with the cin/cout-swapped weight.
//
// Each thread owns a register tile of TR output rows x (4 * TV) output channels: per
// reduction step it loads TR inputs and TV vec4 weights for 4 * TR * TV multiply-adds.
// The reuse comes from registers only: on lavapipe every invocation is one SIMD lane and
// workgroup memory + barriers cost more than they save. Consecutive threads take
// consecutive column tiles of the same rows, so their input loads hit the same address
// and their weight loads are contiguous (coalesced on real GPUs).
//
// Row interleave: a thread's rows are base + RI * i (i < TR), and G consecutive row tiles
// share the phase base % RI. Rows of one parity read the same taps in a transposed conv
// (1 of 4 ky x kx parity classes for 4x4/2) and in the data gradient of a stride-2 conv
// (inverse map), so with consecutive rows half or more of those taps would be read for
// nothing; with interleaved rows, whole threads (and SIMD groups) skip them.
//
// Accumulator a<i>_<j> (mat4x4) holds rows 4i..4i+3 (its columns) x channels 4j..4j+3.
"#;

const WHY_LARGE: &str = r#"//
// Why so large a tile: a CPU driver (llvmpipe) turns each storage load of a divergent
// address into a scalar loop over the SIMD lanes (tens of cycles per loaded component),
// while a multiply-add is one SIMD instruction and a spilled accumulator a plain stack
// access. Speed is set by components loaded per multiply-add, (TR + TC) / (TR * TC):
// 0.375 for the 4x8 GPU tile, 0.0625 for 32x32. Measured on llvmpipe (3x3, 128 -> 128):
// 16x16 2.2, 32x32 4.0, 64x32 4.2 GFLOP/s per CPU-second; larger tiles compile slower.
// On a GPU these accumulators would spill to local memory, so GPUs keep the 4 x 8 conv.
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

// ws4 from a weight stored [N, K] (main_oihw): output channels 4c..4c+3 (clamped to the
// last; their sums are never stored) at input channels 4k4..4k4+3.
fn ws4t(c: u32, k4: u32) -> mat4x4<f32> {
    let kv = p.kin / 4u;
    let last = p.n - 1u;
    return transpose(mat4x4<f32>(wt[min(4u * c, last) * kv + k4], wt[min(4u * c + 1u, last) * kv + k4],
                                 wt[min(4u * c + 2u, last) * kv + k4], wt[min(4u * c + 3u, last) * kv + k4]));
}
"#;

const LOADS_SCALAR: &str = r#"
// Inputs of 4 rows (index bases b, validity v) at input channel k.
fn xs(b: vec4<u32>, v: vec4<bool>, k: u32) -> vec4<f32> {
    let s = vec4<f32>(x[b.x + k], x[b.y + k], x[b.z + k], x[b.w + k]);
    return select(vec4<f32>(0.0), s, v);
}
"#;

/// The storage bindings of every gather kernel (x, bias and y as vec4s with `vec4`).
fn bindings(s: &mut Lines, vec4: bool) {
    let io = if vec4 { "vec4<f32>" } else { "f32" };
    s.line(&format!("@group(0) @binding(1) var<storage, read> x: array<{io}>;"));
    s.line("@group(0) @binding(2) var<storage, read> map: array<i32>;");
    s.line("@group(0) @binding(3) var<storage, read> wt: array<vec4<f32>>;");
    s.line(&format!("@group(0) @binding(4) var<storage, read> bias: array<{io}>;"));
    s.line(&format!("@group(0) @binding(5) var<storage, read_write> y: array<{io}>;"));
    s.line("");
}

/// The WGSL of the gather kernel of tile `t` with row interleave `ri` and phase group `g`
/// (register tiles only).
pub fn source(t: &GatherTile, ri: usize, g: usize) -> String {
    if let GatherStage::Workgroup { bk, micro_rows, micro_cols } = t.stage {
        return staged(t, bk, micro_rows, micro_cols);
    }
    let vec4 = t.loads == GatherLoads::Vec4;
    // Per 4 rows, whether the input loads of a tap none of them reads are skipped.
    let skip = t.loads != GatherLoads::Scalar;
    assert!(t.rows.is_multiple_of(4) && t.cols.is_multiple_of(4), "gather tile {t:?}: rows and columns come in 4s");
    assert!(!(t.fma && vec4), "gather tile {t:?}: fused steps take scalar inputs");
    let (tr, tv, rg, wg) = (t.rows, t.cols / 4, t.rows / 4, t.workgroup);
    let mut s = Lines::generated("build/conv_gather.rs");
    s.text(HEAD);
    let what = match t.loads {
        GatherLoads::ScalarSkipEmpty => "N <= 4 output channels (the 3-channel output projection; the stem's data\n\
             // gradient): a wide column tile would be mostly padding, so the tile grows along rows;\n\
             // each loaded input serves only N multiply-adds, so it is load-bound whatever its shape",
        GatherLoads::Vec4 => "K and N multiples of 4 (every ResNet and ConvNeXt layer except the 3-channel\n\
             // stem and output): x, wt, bias and y as vec4s; one step is a<i>_<j> += W_j * X_i with\n\
             // X_i the 4 rows' inputs and W_j the weights at 4 consecutive input channels (columns)",
        GatherLoads::Scalar => "any K and N: scalar input loads, vec4 weight loads from the padded re-laid\n\
             // weight; one step adds the outer product of the 4 rows' inputs and 4 weights",
    };
    s.line(&format!("//\n// Variant {}: TR = {tr} rows x {} output channels, {wg}-wide workgroups{}; {what}.", t.kernel, t.cols, if t.fma { ", fused multiply-adds" } else { "" }));
    if wg == 8 {
        s.text(WHY_LARGE);
    }
    s.text(PARAMS);
    bindings(&mut s, vec4);
    s.line("// Tile shape (rows x vec4 columns), row interleave and phase group: from the table.");
    s.line(&format!("const TR: u32 = {tr}u;\nconst TV: u32 = {tv}u;\nconst RI: u32 = {ri}u;\nconst G: u32 = {g}u;\n"));
    s.text(if vec4 { PUT_VEC4 } else { PUT_SCALAR });
    s.text(ROWS);
    s.text(if vec4 { LOADS_VEC4 } else { LOADS_SCALAR });
    if !vec4 {
        s.text(if t.fma { FMA_OUTER } else { OUTER });
    }
    // Entry points: `main` reads the re-laid weight; `main_oihw` (vec4 tiles, 1x1 convs)
    // reads a PyTorch [N, K] weight as it is stored: its 4 x 4 blocks come as vec4s along K
    // and are transposed in registers (`ws4t`), the same values in the same products, so
    // the two give identical bits and the forward of a 1x1 conv needs no re-layout.
    let entries: &[(&str, bool)] = if vec4 { &[("main", false), ("main_oihw", true)] } else { &[("main", false)] };
    for &(entry, oihw) in entries {
        s.entry_named(wg, entry);
        s.text(
            r#"    let ct = id % p.ctiles;
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
            s.line("        // Skip taps that none of the rows reads (see the head of this kernel), and per 4");
            s.line("        // rows the input loads of a tap that none of them reads: with a transposed 4x4/2");
            s.line("        // map, 3 of 4 taps are empty for a row, and the 4 rows of a group (8 consecutive");
            s.line("        // rows) share their image row, so they agree; so do the lanes of a SIMD vector");
            s.line("        // (rows RI * TR apart). Only the loads are conditional: an accumulator written in a");
            s.line("        // branch costs llvmpipe a blend per component.");
        } else {
            s.line("        // Skip taps that none of the rows reads (see the head of this kernel).");
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
            s.line(&match (vec4, oihw) {
                (true, false) => format!("                let w{j} = ws4(wi + {j}u, nv);"),
                (true, true) => format!("                let w{j} = ws4t(ct * TV + {j}u, k4);"),
                _ => format!("                let w{j} = wt[wi + {j}u];"),
            });
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
            } else if t.fma {
                s.line(&format!("                let x{i} = xs(b{i}, v{i}, k);"));
                s.line(&format!("                {}", join((0..tv).map(|j| format!("a{i}_{j} = fma_outer(x{i}, w{j}, a{i}_{j});")))));
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
    }
    s.into()
}

const STAGED_HEAD: &str = r#"//
// Staged through workgroup memory (the GPU SGEMM form): a workgroup owns a BM x BN block
// of the output; per tap it stages the block's map entries, then per step BK reduction
// indices of the gathered inputs (As, BK x BM) and of the re-laid weight (Bs, BK x BN);
// each thread sums its TM x TN micro-tile from there. Every input and weight loaded from
// memory serves BN resp. BM multiply-adds instead of a thread's own 4 x 8.
//
// Each output is summed in the order of the register kernels (tap, then input channel,
// one fused multiply-add per step), and padding adds fma(0, 0, a) = a, so this kernel
// gives the bits of `conv` (the 4 x 8 register tile): which of the two runs a layer
// changes its speed only. Barriers sit in uniform control flow (workgroup_id, uniforms).
"#;

/// The workgroup-staged gather kernel of `t` (`t.rows x t.cols` per workgroup).
fn staged(t: &GatherTile, bk: usize, tm: usize, tn: usize) -> String {
    let vec4 = t.loads == GatherLoads::Vec4;
    let (bm, bn, wg) = (t.rows, t.cols, t.workgroup);
    assert!(t.fma, "staged gather tile {t:?}: sums with fused multiply-adds (the bits of `conv`)");
    assert!(tm % 4 == 0 && tn % 4 == 0 && bk % 4 == 0, "staged gather tile {t:?}: micro-tile and stage come in 4s");
    assert_eq!((bm / tm) * (bn / tn), wg, "staged gather tile {t:?}: one micro-tile per thread");
    assert!(bm <= wg && bk * bn / 4 <= wg * 4, "staged gather tile {t:?}: map and weight stage loads per thread");
    let (rg, cg) = (tm / 4, tn / 4);
    let mut s = Lines::generated("build/conv_gather.rs");
    s.text(HEAD);
    s.line(&format!(
        "//\n// Variant {}: {bm} x {bn} blocks, {tm} x {tn} per thread, {wg}-wide workgroups, {bk} reduction indices per stage{}.",
        t.kernel,
        if vec4 { ", vec4 input and output (K and N multiples of 4)" } else { ", scalar inputs (any K and N)" }
    ));
    s.text(STAGED_HEAD);
    s.text(PARAMS);
    bindings(&mut s, vec4);
    s.line("// Block, micro-tile and stage depth: from the table.");
    s.line(&format!("const BM: u32 = {bm}u;\nconst BN: u32 = {bn}u;\nconst BK: u32 = {bk}u;\nconst TM: u32 = {tm}u;\nconst TN: u32 = {tn}u;\nconst WG: u32 = {wg}u;"));
    s.line("");
    s.line("// Row entries of the block at the current tap, inputs (k-major) and weights of a stage.");
    s.line("var<workgroup> rowm: array<i32, BM>;");
    s.line("var<workgroup> As: array<vec4<f32>, BK * BM / 4u>;");
    s.line("var<workgroup> Bs: array<vec4<f32>, BK * BN / 4u>;");
    s.line("");
    s.text(if vec4 { PUT_VEC4 } else { PUT_SCALAR });
    s.text(FMA_OUTER);
    s.line("");
    s.line(&format!("@compute @workgroup_size({wg})"));
    s.line("fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {");
    s.text(
        r#"    let block = wid.x + wid.y * nwg.x;
    let cb = block % p.ctiles;
    let row0 = (block / p.ctiles) * BM;
    // Thread (ty, tx): rows row0 + ty * TM .., vec4 columns cb * BN / 4 + tx * TN / 4 ..
    let tx = lid % (BN / TN);
    let ty = lid / (BN / TN);
    let nv = p.nv;
"#,
    );
    for i in 0..rg {
        s.line(&format!("    {}", join((0..cg).map(|j| format!("var a{i}_{j} = mat4x4<f32>();")))));
    }
    s.text(
        r#"    for (var t = 0u; t < p.taps; t++) {
        // (the previous stage's last barrier keeps rowm until every load of it is done)
        if (lid < BM) {
            let r = row0 + lid;
            rowm[lid] = select(-1, map[min(r, p.rows - 1u) * p.taps + t], r < p.rows);
        }
        workgroupBarrier();
        for (var k0 = 0u; k0 < p.kin; k0 += BK) {
"#,
    );
    if vec4 {
        s.line("            // Inputs: one vec4 of 4 consecutive channels of one row per load.");
        s.line("            for (var e = lid; e < BM * BK / 4u; e += WG) {");
        s.line("                let i = e / (BK / 4u);");
        s.line("                let kq = e % (BK / 4u);");
        s.line("                let k = k0 + 4u * kq;");
        s.line("                let m = rowm[i];");
        s.line("                var v = vec4<f32>(0.0);");
        s.line("                if (m >= 0 && k < p.kin) { v = x[u32(m) * (p.kin / 4u) + k / 4u]; }");
        s.line("                for (var c = 0u; c < 4u; c++) { As[(4u * kq + c) * (BM / 4u) + i / 4u][i % 4u] = v[c]; }");
        s.line("            }");
    } else {
        s.line("            // Inputs: consecutive threads read consecutive channels of one row.");
        s.line("            for (var e = lid; e < BM * BK; e += WG) {");
        s.line("                let i = e / BK;");
        s.line("                let kk = e % BK;");
        s.line("                let k = k0 + kk;");
        s.line("                let m = rowm[i];");
        s.line("                var v = 0.0;");
        s.line("                if (m >= 0 && k < p.kin) { v = x[u32(m) * p.kin + k]; }");
        s.line("                As[kk * (BM / 4u) + i / 4u][i % 4u] = v;");
        s.line("            }");
    }
    s.text(
        r#"            // Weights: BK rows of the re-laid weight (padded to BN columns), vec4s.
            for (var e = lid; e < BK * BN / 4u; e += WG) {
                let kk = e / (BN / 4u);
                let j = e % (BN / 4u);
                let k = k0 + kk;
                var w = vec4<f32>(0.0);
                if (k < p.kin) { w = wt[(t * p.kin + k) * nv + cb * (BN / 4u) + j]; }
                Bs[e] = w;
            }
            workgroupBarrier();
            for (var kk = 0u; kk < BK; kk++) {
"#,
    );
    for i in 0..rg {
        s.line(&format!("                let x{i} = As[kk * (BM / 4u) + ty * (TM / 4u) + {i}u];"));
    }
    for j in 0..cg {
        s.line(&format!("                let w{j} = Bs[kk * (BN / 4u) + tx * (TN / 4u) + {j}u];"));
    }
    for i in 0..rg {
        s.line(&format!("                {}", join((0..cg).map(|j| format!("a{i}_{j} = fma_outer(x{i}, w{j}, a{i}_{j});")))));
    }
    s.text(
        r#"            }
            workgroupBarrier();
        }
    }
    let r = row0 + ty * TM;
    let c = cb * (BN / 4u) + tx * (TN / 4u);
"#,
    );
    for i in 0..rg {
        for j in 0..cg {
            s.line(&format!(
                "    put(r + {}u, c + {j}u, a{i}_{j}[0]); put(r + {}u, c + {j}u, a{i}_{j}[1]); put(r + {}u, c + {j}u, a{i}_{j}[2]); put(r + {}u, c + {j}u, a{i}_{j}[3]);",
                4 * i,
                4 * i + 1,
                4 * i + 2,
                4 * i + 3
            ));
        }
    }
    s.line("}");
    s.into()
}
