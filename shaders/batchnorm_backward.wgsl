// Training-mode BatchNorm backward over [rows, c] with the saved batch mean and invstd:
//   dbeta[j]  = Σ_r dy
//   dgamma[j] = invstd[j] · Σ_r dy · (x − mean[j])
//   dx        = (dy − dbeta/N − (x − mean)·dgamma·invstd/N) · invstd · gamma
// (PyTorch's batch_norm_backward_elemt). The column sums are fixed-order split-K; chunked
// over images as in batchnorm_stats.wgsl (this dispatch's splits are
// `split_base .. split_base + splits` of `all_splits`; inv_n is of the whole batch).
struct Params { rows: u32, c: u32, splits: u32, chunk: u32, inv_n: f32, accumulate: u32, split_base: u32, all_splits: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> mean: array<f32>;
@group(0) @binding(5) var<storage, read> invstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> parts: array<f32>;  // [2, all_splits, c]: Σdy, Σdy·(x−mean)
@group(0) @binding(7) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(8) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(9) var<storage, read_write> dx: array<f32>;

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

@compute @workgroup_size(64)
fn partials(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat(gid, nwg);
    if (t >= p.splits * p.c) { return; }
    let n = p.all_splits * p.c;
    let s = t / p.c;
    let j = t % p.c;
    let m = mean[j];
    let end = min(p.rows, (s + 1u) * p.chunk);
    var sdy = 0.0;
    var sdot = 0.0;
    for (var r = s * p.chunk; r < end; r++) {
        let i = r * p.c + j;
        sdy += dy[i];
        sdot += dy[i] * (x[i] - m);
    }
    let o = p.split_base * p.c + t;
    parts[o] = sdy;
    parts[n + o] = sdot;
}

// Parameter gradients overwrite (the graph's convention for parameters).
@compute @workgroup_size(64)
fn finalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = flat(gid, nwg);
    if (j >= p.c) { return; }
    let n = p.all_splits * p.c;
    var sdy = 0.0;
    var sdot = 0.0;
    for (var s = 0u; s < p.all_splits; s++) {
        sdy += parts[s * p.c + j];
        sdot += parts[n + s * p.c + j];
    }
    dbeta[j] = sdy;
    dgamma[j] = sdot * invstd[j];
}

@compute @workgroup_size(64)
fn input_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.rows * p.c) { return; }
    let j = i % p.c;
    let inv = invstd[j];
    let grad_mean = dbeta[j] * p.inv_n;
    let proj = dgamma[j] * inv * p.inv_n;
    var d = (dy[i] - grad_mean - (x[i] - mean[j]) * proj) * inv * gamma[j];
    if (p.accumulate != 0u) { d += dx[i]; }
    dx[i] = d;
}
