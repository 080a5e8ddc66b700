// LayerNorm backward over [rows, c] with the per-row mean and invstd saved by the forward:
//   input_grad (one thread per row), with g = dy·gamma and xhat = (x − mean)·invstd:
//     dx = invstd · (g − mean_j(g) − xhat · mean_j(g·xhat))
//   partials + finalize: dbeta[j] = Σ_r dy, dgamma[j] = Σ_r dy·xhat, as fixed-order split-K
//   column sums (no float atomics; two runs give identical bits).
struct Params { rows: u32, c: u32, splits: u32, chunk: u32, inv_c: f32, accumulate: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> mean: array<f32>;    // [rows]
@group(0) @binding(5) var<storage, read> invstd: array<f32>;  // [rows]
@group(0) @binding(6) var<storage, read_write> parts: array<f32>;  // [2, splits, c]: Σdy, Σdy·xhat
@group(0) @binding(7) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(8) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(9) var<storage, read_write> dx: array<f32>;

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

@compute @workgroup_size(64)
fn input_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat(gid, nwg);
    if (r >= p.rows) { return; }
    let base = r * p.c;
    let m = mean[r];
    let inv = invstd[r];
    var sg = 0.0;
    var sgx = 0.0;
    for (var j = 0u; j < p.c; j++) {
        let g = dy[base + j] * gamma[j];
        sg += g;
        sgx += g * (x[base + j] - m) * inv;
    }
    let a = sg * p.inv_c;
    let b = sgx * p.inv_c;
    for (var j = 0u; j < p.c; j++) {
        let i = base + j;
        let xhat = (x[i] - m) * inv;
        var d = inv * (dy[i] * gamma[j] - a - xhat * b);
        if (p.accumulate != 0u) { d += dx[i]; }
        dx[i] = d;
    }
}

@compute @workgroup_size(64)
fn partials(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat(gid, nwg);
    let n = p.splits * p.c;
    if (t >= n) { return; }
    let s = t / p.c;
    let j = t % p.c;
    let end = min(p.rows, (s + 1u) * p.chunk);
    var sdy = 0.0;
    var sdx = 0.0;
    for (var r = s * p.chunk; r < end; r++) {
        let i = r * p.c + j;
        sdy += dy[i];
        sdx += dy[i] * ((x[i] - mean[r]) * invstd[r]);
    }
    parts[t] = sdy;
    parts[n + t] = sdx;
}

// Parameter gradients overwrite (the graph's convention for parameters).
@compute @workgroup_size(64)
fn finalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = flat(gid, nwg);
    if (j >= p.c) { return; }
    let n = p.splits * p.c;
    var sdy = 0.0;
    var sdx = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        sdy += parts[s * p.c + j];
        sdx += parts[n + s * p.c + j];
    }
    dbeta[j] = sdy;
    dgamma[j] = sdx;
}
