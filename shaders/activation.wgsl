// Element-wise activations and their gradients: ReLU, ReLU6 and exact (erf) GELU.
// One file for forward and backward so that erf lives in one place; the forward entry
// binds `x` again in the `dy` slot (every storage binding of a file must be bound).
struct Params { n: u32, act: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const RELU: u32 = 0u;
const RELU6: u32 = 1u;
const GELU: u32 = 2u;
const ERF: u32 = 3u; // raw erf, only for the accuracy test

// erf in f32 to about one ulp (max abs error ~6e-8), because WGSL has no erf and PyTorch's
// nn.GELU() is the exact erf form, not the tanh approximation. Coefficients: Chebyshev fits
// (mpmath.chebyfit) checked against mpmath's erf with f32 rounding at every step.
//   |x| < 0.9:      erf = x + x·P(x²)  (adding x last keeps the final rounding to half an ulp)
//   0.9 ≤ |x| < 4:  erf = 1 − exp(Q(|x| − 0.9)), Q a fit of log(erfc); expanding around the
//                   left end keeps |Q|'s rounding small where erfc is largest
//   |x| ≥ 4:        erfc < 1.6e-8, under half an ulp of 1
fn erf_f32(v: f32) -> f32 {
    let t = abs(v);
    if (t < 0.9) {
        let s = v * v;
        var r = 8.529401384e-05;
        r = r * s - 8.179632132e-04;
        r = r * s + 5.204226822e-03;
        r = r * s - 2.686066553e-02;
        r = r * s + 1.128371805e-01;
        r = r * s - 3.761263490e-01;
        r = r * s + 1.283791661e-01;
        return v + v * r;
    }
    if (t >= 4.0) {
        return sign(v);
    }
    let u = t - 0.9;
    var q = -5.129404812e-08;
    q = q * u + 7.630169989e-07;
    q = q * u - 3.180198291e-06;
    q = q * u - 1.741623055e-05;
    q = q * u + 3.079307207e-04;
    q = q * u - 2.205546713e-03;
    q = q * u + 1.111375727e-02;
    q = q * u - 4.579772800e-02;
    q = q * u - 8.300127983e-01;
    q = q * u - 2.471634388e+00;
    q = q * u - 1.594097257e+00;
    return sign(v) * (1.0 - exp(q));
}

const SQRT1_2: f32 = 0.70710678118654752;
const INV_SQRT_2PI: f32 = 0.39894228040143268;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    let v = x[i];
    var y: f32;
    switch p.act {
        case RELU: { y = max(v, 0.0); }
        case RELU6: { y = clamp(v, 0.0, 6.0); }
        case GELU: { y = v * 0.5 * (1.0 + erf_f32(v * SQRT1_2)); } // PyTorch's operation order
        default: { y = erf_f32(v); }
    }
    out[i] = y;
}

@compute @workgroup_size(64)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    let v = x[i];
    let g = dy[i];
    var d: f32;
    switch p.act {
        // PyTorch: threshold_backward passes the gradient only where x > 0 (relu'(0) = 0).
        case RELU: { d = select(0.0, g, v > 0.0); }
        // hardtanh_backward: only strictly inside (0, 6).
        case RELU6: { d = select(0.0, g, v > 0.0 && v < 6.0); }
        default: {
            // gelu' = Φ(x) + x·φ(x)
            let cdf = 0.5 * (1.0 + erf_f32(v * SQRT1_2));
            let pdf = exp(-0.5 * v * v) * INV_SQRT_2PI;
            d = g * (cdf + v * pdf);
        }
    }
    if (p.accumulate != 0u) { d += out[i]; }
    out[i] = d;
}
