// Weight re-layout for the gather convolution: wt[(t * K + k) * n_pad + n] = w[t*st + k*sk + n*sn]
// (0 for the padding columns n >= N). The stored PyTorch layouts ([cout, cin, kh, kw],
// [cin, cout, kh, kw], and their cin/cout-swapped views used by the data gradient) put
// the output channel at a large stride; the GEMM kernel wants it contiguous and padded to
// a multiple of its column tile so that it can load vec4s with no bounds test. Weights
// change every step, so this runs every step, for every conv's forward and data gradient.
struct Params { total: u32, kn: u32, n: u32, n_pad: u32, st: u32, sk: u32, sn: u32, taps: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> wt: array<f32>;

// One thread per output element, in output order: writes contiguous, reads at stride sn.
// For layouts where n is the small stride (the data-gradient views) that is coalesced.
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.total) { return; }
    let n = i % p.n_pad;
    let tk = i / p.n_pad;        // t * K + k
    let k = tk % p.kn;
    let t = tk / p.kn;
    var v = 0.0;
    if (n < p.n) { v = w[t * p.st + k * p.sk + n * p.sn]; }
    wt[i] = v;
}

// The forward views of Conv2d weights ([cout, cin, kh, kw]: st = 1, sk = taps) hold each
// output channel's taps x cin block contiguous, j = k * taps + t, and `main` reads them
// with every lane in another row of w: on SparK-ResNet-50 160² batch 2 (lavapipe) the
// re-layouts were 14 % of the step, as much as the sparse encoder's 3x3 convs. Here a
// workgroup moves a TILE x TILE block of (j, n) through workgroup memory: read along j
// (contiguous in w), written along n (contiguous in wt). A pure copy: bit-identical.
const TILE: u32 = 32u;
const ROWS: u32 = 8u;   // a workgroup is TILE x ROWS threads, each moving TILE / ROWS elements
var<workgroup> tile: array<f32, 1056>; // TILE * (TILE + 1): the +1 spreads a column over banks

@compute @workgroup_size(256)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let kt = p.kn * p.taps;                 // extent of j
    let jtiles = (kt + TILE - 1u) / TILE;
    let b = wid.x + wid.y * nwg.x;          // block index: (n block) * jtiles + (j block)
    let j0 = (b % jtiles) * TILE;
    let n0 = (b / jtiles) * TILE;
    let lx = l % TILE;
    let ly = l / TILE;
    // Read: lanes along j.
    let jr = j0 + lx;
    for (var r = ly; r < TILE; r += ROWS) {
        let nr = n0 + r;
        var v = 0.0;
        if (jr < kt && nr < p.n) { v = w[nr * p.sn + jr]; }
        tile[r * (TILE + 1u) + lx] = v;
    }
    workgroupBarrier();
    // Write: lanes along n; (j0 + r) = k * taps + t goes to row t * K + k.
    let nw = n0 + lx;
    for (var r = ly; r < TILE; r += ROWS) {
        let jw = j0 + r;
        if (jw < kt && nw < p.n_pad) {
            let k = jw / p.taps;
            let t = jw % p.taps;
            wt[(t * p.kn + k) * p.n_pad + nw] = tile[lx * (TILE + 1u) + r];
        }
    }
}
