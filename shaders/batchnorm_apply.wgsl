// BatchNorm apply over [rows, c]: y = (x − mean[j]) · invstd[j] · gamma[j] + beta[j]
// (PyTorch's operation order). Training mode passes the batch mean and invstd; eval mode
// (from_var = 1) passes the running mean and running variance, turned into
// 1/sqrt(var + eps) here.
struct Params { n: u32, c: u32, from_var: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read> mean: array<f32>;
@group(0) @binding(5) var<storage, read> stat: array<f32>;  // invstd, or running var when from_var
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.n) { return; }
    let j = i % p.c;
    var inv = stat[j];
    if (p.from_var != 0u) { inv = 1.0 / sqrt(inv + p.eps); }
    y[i] = (x[i] - mean[j]) * inv * gamma[j] + beta[j];
}
