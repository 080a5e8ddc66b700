// Training-mode BatchNorm statistics over the rows of [rows, c] (sparse BN: the visible
// sites of the whole batch; dense BN: every site), in two passes for accuracy: the mean
// first, then the centred sum of squares (a one-pass Σx² − N·mean² loses digits when
// |mean| ≫ std). Both passes are split-K: thread (s, j) sums rows [s·chunk, (s+1)·chunk)
// of column j in ascending order; the splits are combined in ascending s by every reader,
// so all readers see the same bits and two runs give identical results (no float atomics).
// A batch over the adapter's binding limit runs the passes once per chunk of images
// (graph::chunks): `x` is then the chunk's rows, and its splits are
// `split_base .. split_base + splits` of the `all_splits` in psum/psq.
struct Params {
    rows: u32, c: u32, splits: u32, chunk: u32,  // of this dispatch's rows
    inv_n: f32,    // 1 / rows of the whole batch
    inv_nm1: f32,  // 1 / (rows - 1): PyTorch's running_var takes the unbiased variance
    eps: f32,
    momentum: f32,
    split_base: u32,
    all_splits: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> psum: array<f32>;   // [all_splits, c]
@group(0) @binding(3) var<storage, read_write> psq: array<f32>;    // [all_splits, c]
@group(0) @binding(4) var<storage, read_write> save_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> save_invstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(7) var<storage, read_write> running_var: array<f32>;

fn column_mean(j: u32) -> f32 {
    var acc = 0.0;
    for (var s = 0u; s < p.all_splits; s++) {
        acc += psum[s * p.c + j];
    }
    return acc * p.inv_n;
}

fn split_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

// Pass 1: psum[s, j] = Σ x[r, j] over the rows of split s.
@compute @workgroup_size(64)
fn sums(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = split_index(gid, nwg);
    if (t >= p.splits * p.c) { return; }
    let s = t / p.c;
    let j = t % p.c;
    let end = min(p.rows, (s + 1u) * p.chunk);
    var acc = 0.0;
    for (var r = s * p.chunk; r < end; r++) {
        acc += x[r * p.c + j];
    }
    psum[p.split_base * p.c + t] = acc;
}

// Pass 2: psq[s, j] = Σ (x[r, j] − mean[j])² over the rows of split s.
@compute @workgroup_size(64)
fn centred(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = split_index(gid, nwg);
    if (t >= p.splits * p.c) { return; }
    let s = t / p.c;
    let j = t % p.c;
    let m = column_mean(j);
    let end = min(p.rows, (s + 1u) * p.chunk);
    var acc = 0.0;
    for (var r = s * p.chunk; r < end; r++) {
        let d = x[r * p.c + j] - m;
        acc += d * d;
    }
    psq[p.split_base * p.c + t] = acc;
}

// Per channel: save mean and 1/sqrt(biased var + eps) for the apply and backward passes,
// and update the running statistics (momentum form of PyTorch).
@compute @workgroup_size(64)
fn finalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = split_index(gid, nwg);
    if (j >= p.c) { return; }
    let m = column_mean(j);
    var sq = 0.0;
    for (var s = 0u; s < p.all_splits; s++) {
        sq += psq[s * p.c + j];
    }
    save_mean[j] = m;
    save_invstd[j] = 1.0 / sqrt(sq * p.inv_n + p.eps);
    running_mean[j] = (1.0 - p.momentum) * running_mean[j] + p.momentum * m;
    running_var[j] = (1.0 - p.momentum) * running_var[j] + p.momentum * (sq * p.inv_nm1);
}
