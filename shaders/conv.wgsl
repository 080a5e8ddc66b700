// Gather convolution as an implicit GEMM (sparse or dense: a dense map has every site):
//   y[r, n] (+)= bias[n] + sum_t sum_k x[map[r, t], k] * wt[(t * K + k) * n_pad + n]
// with wt the re-laid weight from conv_relayout.wgsl. Negative map entries (padding or a
// masked site) contribute zero. The data gradient is this same kernel run over the
// inverse map with the cin/cout-swapped weight.
//
// Each thread owns a register tile of TR output rows x (4 * TV) output channels. On
// lavapipe every invocation is one SIMD lane and workgroup memory + barriers cost more
// than they save, so the reuse comes from registers only: per reduction step a thread
// loads TR inputs and TV vec4 weights for 4 * TR * TV FMAs. Consecutive threads take
// consecutive column tiles of the same rows, so their input loads hit the same address
// and their weight loads are contiguous (coalesced on real GPUs).
//
// Row interleave: a thread's rows are base + RI * i (i < TR), and G consecutive row tiles
// share the phase base % RI. Rows of one parity read the same taps in a transposed conv
// (1 of 4 ky x kx parity classes for 4x4/2) and in the data gradient of a stride-2 conv
// (inverse map), so with consecutive rows half or more of those taps would be read for
// nothing; with interleaved rows, whole threads (and SIMD groups) skip them.
struct Params {
    rows: u32,       // output rows
    kin: u32,        // reduction channels K (cin of this gather)
    n: u32,          // output channels N
    nv: u32,         // n_pad / 4: vec4 row length of wt
    taps: u32,
    ctiles: u32,     // ceil(n / (4 * TV))
    has_bias: u32,
    accumulate: u32,
    total: u32,      // threads launched (informational)
    _p0: u32, _p1: u32, _p2: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read> wt: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

// Tile shape (rows x vec4 columns). Fixed constants rather than `override`s: WGSL
// private arrays cannot be override-sized, and the tile is written out by hand so that
// the accumulators stay in registers on every compiler. Changing it means editing the
// unrolled body below and TILE_ROWS / TILE_COLS in src/ops/conv.rs.
const TR: u32 = 4u;
const TV: u32 = 2u;
const RI: u32 = 2u;
const G: u32 = 8u;

fn put(r: u32, c: u32, v: vec4<f32>) {
    if (r >= p.rows) { return; }
    for (var j = 0u; j < 4u; j++) {
        let cj = c + j;
        if (cj < p.n) {
            var o = v[j];
            if (p.has_bias != 0u) { o += bias[cj]; }
            let i = r * p.n + cj;
            if (p.accumulate != 0u) { o += y[i]; }
            y[i] = o;
        }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    let ct = id % p.ctiles;
    let q = id / p.ctiles;
    let q2 = q / G;
    let base = (q2 / RI) * (RI * G * TR) + q2 % RI + RI * (q % G) * TR;
    // Threads past the last row have nothing to do; rows past it in a partial tile read
    // the last row and are not stored.
    if (base >= p.rows) { return; }
    let last = p.rows - 1u;
    let ra = min(base, last) * p.taps;
    let rb = min(base + RI, last) * p.taps;
    let rc = min(base + 2u * RI, last) * p.taps;
    let rd = min(base + 3u * RI, last) * p.taps;
    var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0);
    var b0 = vec4<f32>(0.0); var b1 = vec4<f32>(0.0);
    var c0 = vec4<f32>(0.0); var c1 = vec4<f32>(0.0);
    var d0 = vec4<f32>(0.0); var d1 = vec4<f32>(0.0);
    let kin = p.kin;
    let nv = p.nv;
    for (var t = 0u; t < p.taps; t++) {
        let ma = map[ra + t];
        let mb = map[rb + t];
        let mc = map[rc + t];
        let md = map[rd + t];
        // Skip taps that none of the rows reads (padding, masked sites, the 3 of 4
        // parities of a transposed conv): a real branch on GPUs, and on lavapipe the
        // inner loop ends after one masked pass once every lane is idle.
        if (max(max(ma, mb), max(mc, md)) >= 0) {
            let va = ma >= 0; let vb = mb >= 0; let vc = mc >= 0; let vd = md >= 0;
            let xa = u32(max(ma, 0)) * kin;
            let xb = u32(max(mb, 0)) * kin;
            let xc = u32(max(mc, 0)) * kin;
            let xd = u32(max(md, 0)) * kin;
            var wi = t * kin * nv + ct * TV;
            for (var k = 0u; k < kin; k++) {
                let w0 = wt[wi];
                let w1 = wt[wi + 1u];
                let sa = vec4<f32>(select(0.0, x[xa + k], va));
                let sb = vec4<f32>(select(0.0, x[xb + k], vb));
                let sc = vec4<f32>(select(0.0, x[xc + k], vc));
                let sd = vec4<f32>(select(0.0, x[xd + k], vd));
                a0 = fma(sa, w0, a0); a1 = fma(sa, w1, a1);
                b0 = fma(sb, w0, b0); b1 = fma(sb, w1, b1);
                c0 = fma(sc, w0, c0); c1 = fma(sc, w1, c1);
                d0 = fma(sd, w0, d0); d1 = fma(sd, w1, d1);
                wi += nv;
            }
        }
    }
    let c = ct * TV * 4u;
    put(base, c, a0); put(base, c + 4u, a1);
    put(base + RI, c, b0); put(base + RI, c + 4u, b1);
    put(base + 2u * RI, c, c0); put(base + 2u * RI, c + 4u, c1);
    put(base + 3u * RI, c, d0); put(base + 3u * RI, c + 4u, d1);
}
