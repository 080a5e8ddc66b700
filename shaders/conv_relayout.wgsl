// Weight re-layout for the gather convolution: wt[(t * K + k) * n_pad + n] = w[t*st + k*sk + n*sn]
// (0 for the padding columns n >= N). The stored PyTorch layouts ([cout, cin, kh, kw],
// [cin, cout, kh, kw], and their cin/cout-swapped views used by the data gradient) put
// the output channel at a large stride; the GEMM kernel wants it contiguous and padded to
// a multiple of its column tile so that it can load vec4s with no bounds test. Weights
// change every step, so this runs every step (one pass over the weights: cheap next to
// the GEMM).
struct Params { total: u32, kn: u32, n: u32, n_pad: u32, st: u32, sk: u32, sn: u32, _pad: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> wt: array<f32>;

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
