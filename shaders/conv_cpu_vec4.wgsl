// Gather convolution for CPU adapters when K and N are multiples of 4 (every ResNet and
// ConvNeXt layer except the 3-channel stem and output): same contract as conv.wgsl, with
// x, wt and y read and written as vec4s. TR = 16 rows x 16 output channels per thread.
//
// Why: a CPU driver (llvmpipe) turns each storage load of a divergent address into a
// scalar loop over the SIMD lanes whose overhead is paid per load instruction, not per
// component, so a vec4 load costs about as much as a scalar one. Per step of 4 input
// channels a thread issues 16 x-loads and 16 w-loads for 1024 multiply-adds (conv_cpu.wgsl:
// 80 loads).
//
// Accumulator a_ij (mat4x4) holds rows 4i..4i+3 (columns) x channels 4j..4j+3; with X_i the
// 4 rows' inputs (columns) and W_j the 4 weight rows (columns = input channel), one step is
// a_ij += W_j * X_i.
struct Params {
    rows: u32, kin: u32, n: u32, nv: u32, taps: u32, ctiles: u32, has_bias: u32, accumulate: u32,
    total: u32, _p0: u32, _p1: u32, _p2: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> map: array<i32>;
@group(0) @binding(3) var<storage, read> wt: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<vec4<f32>>;

const TR: u32 = 16u;
const TV: u32 = 4u; // vec4 columns: 16 output channels

fn put(r: u32, cv: u32, v: vec4<f32>) {
    let nv = p.n / 4u;
    if (r >= p.rows || cv >= nv) { return; }
    var o = v;
    if (p.has_bias != 0u) { o += bias[cv]; }
    let i = r * nv + cv;
    if (p.accumulate != 0u) { o += y[i]; }
    y[i] = o;
}

fn put4(r: u32, cv: u32, m: mat4x4<f32>) {
    put(r, cv, m[0]); put(r + 1u, cv, m[1]); put(r + 2u, cv, m[2]); put(r + 3u, cv, m[3]);
}

fn rows4(r: u32) -> vec4<u32> {
    let last = p.rows - 1u;
    return vec4<u32>(min(r, last), min(r + 1u, last), min(r + 2u, last), min(r + 3u, last)) * p.taps;
}

fn maps4(o: vec4<u32>, t: u32) -> vec4<i32> {
    return vec4<i32>(map[o.x + t], map[o.y + t], map[o.z + t], map[o.w + t]);
}

// Inputs of 4 rows (vec4 index bases b, validity v) at vec4 column k4, as matrix columns.
fn xs4(b: vec4<u32>, v: vec4<bool>, k4: u32) -> mat4x4<f32> {
    let z = vec4<f32>(0.0);
    return mat4x4<f32>(select(z, x[b.x + k4], v.x), select(z, x[b.y + k4], v.y),
                       select(z, x[b.z + k4], v.z), select(z, x[b.w + k4], v.w));
}

fn ws4(i: u32, nv: u32) -> mat4x4<f32> {
    return mat4x4<f32>(wt[i], wt[i + nv], wt[i + 2u * nv], wt[i + 3u * nv]);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    let tid = min(id, p.total - 1u);   // clamp, do not return early (uniform control flow)
    let ct = tid % p.ctiles;
    let r0 = (tid / p.ctiles) * TR;
    let oa = rows4(r0); let ob = rows4(r0 + 4u); let oc = rows4(r0 + 8u); let od = rows4(r0 + 12u);
    var a0 = mat4x4<f32>(); var a1 = mat4x4<f32>(); var a2 = mat4x4<f32>(); var a3 = mat4x4<f32>();
    var b0 = mat4x4<f32>(); var b1 = mat4x4<f32>(); var b2 = mat4x4<f32>(); var b3 = mat4x4<f32>();
    var c0 = mat4x4<f32>(); var c1 = mat4x4<f32>(); var c2 = mat4x4<f32>(); var c3 = mat4x4<f32>();
    var d0 = mat4x4<f32>(); var d1 = mat4x4<f32>(); var d2 = mat4x4<f32>(); var d3 = mat4x4<f32>();
    let k4n = p.kin / 4u;
    let nv = p.nv;
    let zero = vec4<i32>(0);
    for (var t = 0u; t < p.taps; t++) {
        let ma = maps4(oa, t); let mb = maps4(ob, t); let mc = maps4(oc, t); let md = maps4(od, t);
        let mx = max(max(ma, mb), max(mc, md));
        // Skip taps that none of the rows reads (see conv.wgsl).
        if (max(max(mx.x, mx.y), max(mx.z, mx.w)) >= 0) {
            let ba = vec4<u32>(max(ma, zero)) * k4n; let va = ma >= zero;
            let bb = vec4<u32>(max(mb, zero)) * k4n; let vb = mb >= zero;
            let bc = vec4<u32>(max(mc, zero)) * k4n; let vc = mc >= zero;
            let bd = vec4<u32>(max(md, zero)) * k4n; let vd = md >= zero;
            var wi = t * p.kin * nv + ct * TV;
            for (var k4 = 0u; k4 < k4n; k4++) {
                let w0 = ws4(wi, nv); let w1 = ws4(wi + 1u, nv); let w2 = ws4(wi + 2u, nv); let w3 = ws4(wi + 3u, nv);
                let xa = xs4(ba, va, k4);
                a0 += w0 * xa; a1 += w1 * xa; a2 += w2 * xa; a3 += w3 * xa;
                let xb = xs4(bb, vb, k4);
                b0 += w0 * xb; b1 += w1 * xb; b2 += w2 * xb; b3 += w3 * xb;
                let xc = xs4(bc, vc, k4);
                c0 += w0 * xc; c1 += w1 * xc; c2 += w2 * xc; c3 += w3 * xc;
                let xd = xs4(bd, vd, k4);
                d0 += w0 * xd; d1 += w1 * xd; d2 += w2 * xd; d3 += w3 * xd;
                wi += 4u * nv;
            }
        }
    }
    if (id >= p.total) { return; }
    let c = ct * TV;
    put4(r0, c, a0); put4(r0, c + 1u, a1); put4(r0, c + 2u, a2); put4(r0, c + 3u, a3);
    put4(r0 + 4u, c, b0); put4(r0 + 4u, c + 1u, b1); put4(r0 + 4u, c + 2u, b2); put4(r0 + 4u, c + 3u, b3);
    put4(r0 + 8u, c, c0); put4(r0 + 8u, c + 1u, c1); put4(r0 + 8u, c + 2u, c2); put4(r0 + 8u, c + 3u, c3);
    put4(r0 + 12u, c, d0); put4(r0 + 12u, c + 1u, d1); put4(r0 + 12u, c + 2u, d2); put4(r0 + 12u, c + 3u, d3);
}
