// Weight gradient of the gather convolution, split-K over output rows:
//   partials[s, t*st + k*sk + n*sn] = sum over rows r of split s of x[map[r, t], k] * dy[r, n]
// written straight into the stored weight layout, so that reduce_partials (fixed order
// over s) yields dw. No float atomics: each partial is summed by one thread in row order.
//
// A thread owns TK = 4 input channels x TN = 8 output channels of one tap and one split:
// per row it loads 1 map entry, 4 inputs and 8 output gradients for 32 FMAs (register
// tile only; see conv (build/conv_gather.rs) for why not workgroup memory). Consecutive threads take
// consecutive output-channel tiles, so their dy loads are contiguous.
struct Params {
    rows: u32,
    kin: u32,        // cin
    n: u32,          // cout
    taps: u32,
    ktiles: u32,     // ceil(kin / 4)
    ntiles: u32,     // ceil(n / 8)
    rows_per_split: u32,
    total: u32,      // threads = splits * taps * ktiles * ntiles
    st: u32, sk: u32, sn: u32,
    count: u32,      // taps * kin * n: one split's slice of partials
    k_groups: u32,   // used by the CPU variants only
    _p0: u32, _p1: u32, _p2: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;

fn put(base: u32, t: u32, k: u32, n0: u32, v: vec4<f32>) {
    if (k >= p.kin) { return; }
    for (var j = 0u; j < 4u; j++) {
        let nj = n0 + j;
        if (nj < p.n) { partials[base + t * p.st + k * p.sk + nj * p.sn] = v[j]; }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    let tid = min(id, p.total - 1u);   // clamp, do not return early (uniform control flow)
    let nt = tid % p.ntiles;
    let q = tid / p.ntiles;
    let kt = q % p.ktiles;
    let q2 = q / p.ktiles;
    let t = q2 % p.taps;
    let s = q2 / p.taps;
    let k0 = kt * 4u;
    let n0 = nt * 8u;
    // Channels past the end read the last one; their sums are never stored.
    let kl = p.kin - 1u;
    let ka = min(k0, kl); let kb = min(k0 + 1u, kl); let kc = min(k0 + 2u, kl); let kd = min(k0 + 3u, kl);
    let nl = p.n - 1u;
    let n_0 = min(n0, nl); let n_1 = min(n0 + 1u, nl); let n_2 = min(n0 + 2u, nl); let n_3 = min(n0 + 3u, nl);
    let n_4 = min(n0 + 4u, nl); let n_5 = min(n0 + 5u, nl); let n_6 = min(n0 + 6u, nl); let n_7 = min(n0 + 7u, nl);
    var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0);
    var b0 = vec4<f32>(0.0); var b1 = vec4<f32>(0.0);
    var c0 = vec4<f32>(0.0); var c1 = vec4<f32>(0.0);
    var d0 = vec4<f32>(0.0); var d1 = vec4<f32>(0.0);
    let r_begin = s * p.rows_per_split;
    let r_end = min(r_begin + p.rows_per_split, p.rows);
    for (var r = r_begin; r < r_end; r++) {
        let m = map[r * p.taps + t];
        let v = m >= 0;
        let xb = u32(max(m, 0)) * p.kin;
        let sa = vec4<f32>(select(0.0, x[xb + ka], v));
        let sb = vec4<f32>(select(0.0, x[xb + kb], v));
        let sc = vec4<f32>(select(0.0, x[xb + kc], v));
        let sd = vec4<f32>(select(0.0, x[xb + kd], v));
        let g = r * p.n;
        let g0 = vec4<f32>(dy[g + n_0], dy[g + n_1], dy[g + n_2], dy[g + n_3]);
        let g1 = vec4<f32>(dy[g + n_4], dy[g + n_5], dy[g + n_6], dy[g + n_7]);
        a0 = fma(sa, g0, a0); a1 = fma(sa, g1, a1);
        b0 = fma(sb, g0, b0); b1 = fma(sb, g1, b1);
        c0 = fma(sc, g0, c0); c1 = fma(sc, g1, c1);
        d0 = fma(sd, g0, d0); d1 = fma(sd, g1, d1);
    }
    if (id >= p.total) { return; }
    let base = s * p.count;
    put(base, t, k0, n0, a0); put(base, t, k0, n0 + 4u, a1);
    put(base, t, k0 + 1u, n0, b0); put(base, t, k0 + 1u, n0 + 4u, b1);
    put(base, t, k0 + 2u, n0, c0); put(base, t, k0 + 2u, n0 + 4u, c1);
    put(base, t, k0 + 3u, n0, d0); put(base, t, k0 + 3u, n0 + 4u, d1);
}
