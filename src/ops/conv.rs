//! Gather convolution (the generated `conv` and `conv_wgrad` kernels, `conv_relayout.wgsl`,
//! `conv_bias_grad.wgsl`): one implicit-GEMM family for every convolution of SparK.
//!
//! A convolution is `y[r, co] = bias[co] + Σ_t Σ_ci x[map[r, t], ci] · W_t[ci, co]` over a
//! neighbour map from `crate::sparse` (negative entries read zero). Sparse and dense
//! convolutions differ only in their maps; strided, transposed (maps from
//! `sparse::transposed_conv_map`) and 1×1 convolutions (and Linear layers: `taps = 1`,
//! identity map) are the same kernel. The data gradient is the same gather over the
//! inverse map (`sparse::inverse_map`) with the cin/cout roles of the weight swapped, so
//! it needs no atomics; the weight gradient is a split-K GEMM over output rows followed
//! by the fixed-order `reduce_partials` (`conv_wgrad_thin`, generated from `tiles`, see `thin`, for layers
//! with few output channels).

use anyhow::{Result, ensure};

use crate::gpu::{Dispatch, GpuContext, GpuTensor};
use crate::ops::reduce::{reduce_partials, split_count};

/// Element strides of the stored weight: `w[t * tap + ci * cin + co * cout]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightLayout {
    /// Stride between taps.
    pub tap: usize,
    /// Stride between input channels.
    pub cin: usize,
    /// Stride between output channels.
    pub cout: usize,
}

impl WeightLayout {
    /// PyTorch `Conv2d` weight `[cout, cin, kh, kw]` (and `Linear` `[out, in]` with `taps = 1`).
    pub fn oihw(cin: usize, cout: usize, taps: usize) -> Self {
        let _ = cout;
        Self { tap: 1, cin: taps, cout: cin * taps }
    }

    /// PyTorch `ConvTranspose2d` weight `[cin, cout, kh, kw]`.
    pub fn iohw(cin: usize, cout: usize, taps: usize) -> Self {
        let _ = cin;
        Self { tap: 1, cin: cout * taps, cout: taps }
    }

    /// The cin and cout roles exchanged (the data gradient reads `W_tᵀ`).
    pub fn swapped(self) -> Self {
        Self { tap: self.tap, cin: self.cout, cout: self.cin }
    }

    /// Index of `W_t[ci, co]`.
    pub fn index(&self, t: usize, ci: usize, co: usize) -> usize {
        t * self.tap + ci * self.cin + co * self.cout
    }

    /// One past the largest index of a `taps × cin × cout` weight.
    pub fn extent(&self, taps: usize, cin: usize, cout: usize) -> usize {
        if taps == 0 || cin == 0 || cout == 0 {
            return 0;
        }
        self.index(taps - 1, cin - 1, cout - 1) + 1
    }
}

/// Sizes of the forward convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Rows of the input.
    pub rows_in: usize,
    /// Rows of the output.
    pub rows_out: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel taps (`kh * kw`).
    pub taps: usize,
}

impl ConvShape {
    /// Multiply-adds × 2 of the forward pass (each gradient costs the same).
    pub fn flops(&self) -> f64 {
        2.0 * self.rows_out as f64 * self.taps as f64 * self.cin as f64 * self.cout as f64
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RelayoutParams {
    total: u32,
    kn: u32,
    n: u32,
    n_pad: u32,
    st: u32,
    sk: u32,
    sn: u32,
    taps: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GatherParams {
    rows: u32,
    kin: u32,
    n: u32,
    nv: u32,
    taps: u32,
    ctiles: u32,
    has_bias: u32,
    accumulate: u32,
    total: u32,
    row_groups: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct WgradParams {
    rows: u32,
    kin: u32,
    n: u32,
    taps: u32,
    ktiles: u32,
    ntiles: u32,
    rows_per_split: u32,
    total: u32,
    st: u32,
    sk: u32,
    sn: u32,
    count: u32,
    k_groups: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BiasGradParams {
    rows: u32,
    c: u32,
    rows_per_split: u32,
    total: u32,
}

/// `u32` for a kernel parameter, with a clear error when a size outgrows 32-bit indexing.
pub(crate) fn u(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| anyhow::anyhow!("{what} = {v} exceeds 32-bit kernel indexing"))
}

/// Re-lay `w` (strides `l`) as `wt[(t * k + kk) * n_pad + nn]`, `n_pad` a multiple of the
/// column tile, zero-padded. Returns the scratch (kept alive by the bind groups).
fn relayout(ctx: &GpuContext, w: &GpuTensor, l: WeightLayout, taps: usize, k: usize, n: usize, n_pad: usize) -> Result<(GpuTensor, Dispatch)> {
    ensure!(
        w.len >= l.extent(taps, k, n),
        "conv weight of {} elements is too small for layout {l:?} with {taps} taps, {k}×{n} channels",
        w.len
    );
    let total = taps * k * n_pad;
    let wt = ctx.zeros(total);
    let p = RelayoutParams {
        total: u(total, "weight size")?,
        kn: u(k, "channels")?,
        n: u(n, "channels")?,
        n_pad: u(n_pad, "channels")?,
        st: u(l.tap, "weight stride")?,
        sk: u(l.cin, "weight stride")?,
        sn: u(l.cout, "weight stride")?,
        taps: u(taps, "taps")?,
    };
    // The tiled entry wants each output channel's (cin, tap) block contiguous in `w` and
    // the output channel at a larger stride (see conv_relayout.wgsl).
    let d = if relayout_tiled(l, taps, k) {
        const TILE: usize = 32; // conv_relayout.wgsl's TILE
        let kern = ctx.kernel_entry("conv_relayout", "tiled")?;
        let blocks = (k * taps).div_ceil(TILE) * n_pad.div_ceil(TILE);
        ctx.dispatch(&kern, &p, &[w, &wt], (blocks * kern.workgroup_size[0] as usize) as u64)
    } else {
        ctx.dispatch(&ctx.kernel("conv_relayout")?, &p, &[w, &wt], total as u64)
    };
    Ok((wt, d))
}

/// Whether `relayout` takes the tiled entry: (cin, tap) contiguous (`j = k * taps + t`
/// at unit stride) and the output channel beyond that block.
fn relayout_tiled(l: WeightLayout, taps: usize, k: usize) -> bool {
    (l.tap == 1 || taps == 1) && l.cin == taps && l.cout >= k * taps
}

/// `out[r, n] (+)= bias[n] + Σ_t Σ_k inp[map[r, t], k] · W_t[k, n]` for `W` with strides `l`,
/// with the kernel `tile` (`None`: the tuner's choice for `pass`, else the fixed rule).
#[allow(clippy::too_many_arguments)]
fn gather_gemm(
    ctx: &GpuContext,
    pass: &str,
    tile: Option<GemmTile>,
    inp: &GpuTensor,
    map: &GpuTensor,
    w: &GpuTensor,
    l: WeightLayout,
    bias: Option<&GpuTensor>,
    out: &GpuTensor,
    (rows_in, rows, k, n, taps): (usize, usize, usize, usize, usize),
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    ensure!(k > 0 && n > 0 && taps > 0, "convolution with an empty dimension: {k} in, {n} out, {taps} taps");
    ensure!(inp.len == rows_in * k, "conv input has {} elements, expected [{rows_in}, {k}]", inp.len);
    ensure!(map.len == rows * taps, "neighbour map has {} entries, expected [{rows}, {taps}]", map.len);
    ensure!(out.len == rows * n, "conv output has {} elements, expected [{rows}, {n}]", out.len);
    if let Some(b) = bias {
        ensure!(b.len == n, "conv bias has {} elements, expected {n}", b.len);
    }
    if rows == 0 {
        return Ok(vec![]);
    }
    let tile = match tile {
        Some(t) => t,
        None => tile_for(ctx, pass, (rows_in, rows, k, n, taps))?,
    };
    let n_pad = n.next_multiple_of(tile.cols);
    // A weight already in the re-laid order is read as it is: the data gradient of a 1x1
    // conv whose input channels fill whole column tiles (every 1x1 layer of a ResNet),
    // where the re-layout was a plain copy, a pass over the weight that did not shrink
    // with the mask (ResNet-50 160² batch 2: ~45 % of the re-laid weight bytes).
    // And a 1x1 conv's [N, K] weight (the forward of every 1x1 layer) by the vec4 register
    // kernels' `main_oihw` entry, which transposes its 4 x 4 blocks in registers.
    let oihw = tile.loads == GatherLoads::Vec4 && tile.stage == GatherStage::Registers && taps == 1 && l.cin == 1 && l.cout == k;
    let (wt, relayout) = if (oihw || is_relaid(l, taps, k, n, n_pad)) && w.len >= taps * k * n {
        (w.clone(), None)
    } else {
        let (wt, d) = relayout(ctx, w, l, taps, k, n, n_pad)?;
        (wt, Some(d))
    };
    let ctiles = n_pad / tile.cols;
    let total = match tile.stage {
        // Threads come in blocks of ROW_INTERLEAVE * ROW_GROUP row tiles (see build/conv_gather.rs).
        GatherStage::Registers => {
            let block = ROW_INTERLEAVE * ROW_GROUP;
            rows.div_ceil(block * tile.rows) * block * ctiles
        }
        // One workgroup per rows x cols block.
        GatherStage::Workgroup { .. } => rows.div_ceil(tile.rows) * ctiles * tile.workgroup,
    };
    let p = GatherParams {
        rows: u(rows, "rows")?,
        kin: u(k, "channels")?,
        n: u(n, "channels")?,
        nv: u(n_pad / 4, "channels")?,
        taps: u(taps, "taps")?,
        ctiles: u(ctiles, "tiles")?,
        has_bias: bias.is_some() as u32,
        accumulate: accumulate as u32,
        total: u(total, "threads")?,
        row_groups: (tile.rows / 4) as u32,
        _pad: [0; 2],
    };
    // Without a bias, bind the (read-only) scratch in its place: every binding must be filled.
    let b = bias.unwrap_or(&wt);
    let direct = oihw && relayout.is_none();
    let kern = ctx.kernel_entry(tile.kernel, if direct { "main_oihw" } else { "main" })?;
    let d = ctx.dispatch(&kern, &p, &[inp, map, &wt, b, out], total as u64);
    Ok(relayout.into_iter().chain([d]).collect())
}

/// Whether `W` with strides `l` is already `wt[(t * k + kk) * n_pad + nn]` (no padding).
fn is_relaid(l: WeightLayout, taps: usize, k: usize, n: usize, n_pad: usize) -> bool {
    n == n_pad && l.cout == 1 && l.cin == n && (taps == 1 || l.tap == k * n)
}

/// `y[r, co] (+)= bias[co] + Σ_t Σ_ci x[map[r, t], ci] · w[t*L.tap + ci*L.cin + co*L.cout]`.
/// `x: [rows_in, cin]`, `map: i32 [rows_out, taps]`, `y: [rows_out, cout]`.
#[allow(clippy::too_many_arguments)]
pub fn conv_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    map: &GpuTensor,
    w: &GpuTensor,
    layout: WeightLayout,
    bias: Option<&GpuTensor>,
    y: &GpuTensor,
    s: ConvShape,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    gather_gemm(ctx, FWD, None, x, map, w, layout, bias, y, (s.rows_in, s.rows_out, s.cin, s.cout, s.taps), accumulate)
}

/// `dx[r_in, ci] (+)= Σ_t Σ_co dy[inv[r_in, t], co] · w[...]` with `inv_map =
/// sparse::inverse_map(map, rows_in)` (`i32 [rows_in, taps]`): the forward gather run
/// backwards, no atomics. `s` is the forward shape.
#[allow(clippy::too_many_arguments)]
pub fn conv_data_grad(
    ctx: &GpuContext,
    dy: &GpuTensor,
    inv_map: &GpuTensor,
    w: &GpuTensor,
    layout: WeightLayout,
    dx: &GpuTensor,
    s: ConvShape,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    gather_gemm(ctx, DGRAD, None, dy, inv_map, w, layout.swapped(), None, dx, (s.rows_out, s.rows_in, s.cout, s.cin, s.taps), accumulate)
}

/// Split count and rows per split of a split-K reduction over `rows` whose partial slice
/// has `count` elements, `threads_per_split` threads each, within the adapter's storage
/// binding size.
pub(crate) fn splits_for(ctx: &GpuContext, rows: usize, threads_per_split: usize, count: usize) -> (usize, usize) {
    let max_bytes = ctx.limits.max_storage_buffer_binding_size.min(ctx.limits.max_buffer_size);
    let slice_bytes = count as u64 * 4;
    assert!(
        slice_bytes <= max_bytes,
        "a weight gradient of {count} elements ({slice_bytes} bytes) exceeds the adapter's storage binding limit of {max_bytes} bytes"
    );
    let fit = (max_bytes / slice_bytes.max(1)).max(1) as usize;
    let wanted = if is_cpu(ctx) {
        // A CPU adapter runs a few dozen workgroups at a time, and every extra split costs
        // a full pass of reduce_partials: keep 2048 threads and >= 256 rows per split
        // (measured flat from 512 to 2048 threads for the thin decoder layers too).
        (2048 / threads_per_split.max(1)).clamp(1, rows.div_ceil(256).max(1))
    } else {
        split_count(rows, threads_per_split)
    };
    let splits = wanted.min(fit).max(1);
    let rows_per_split = rows.div_ceil(splits).max(1);
    (rows.div_ceil(rows_per_split).max(1), rows_per_split)
}

/// `partials[s, c] = Σ_{r in split s} dy[r, c]` then `reduce_partials` into `dbias`
/// (shared with the depthwise convolution).
pub(crate) fn bias_grad(ctx: &GpuContext, dy: &GpuTensor, dbias: &GpuTensor, rows: usize, c: usize) -> Result<Vec<Dispatch>> {
    ensure!(dbias.len == c, "bias gradient has {} elements, expected {c}", dbias.len);
    ensure!(dy.len == rows * c, "output gradient has {} elements, expected [{rows}, {c}]", dy.len);
    let (splits, rps) = splits_for(ctx, rows, c, c);
    let partials = if splits == 1 { dbias.clone() } else { ctx.zeros(splits * c) };
    let total = splits * c;
    let p = BiasGradParams { rows: u(rows, "rows")?, c: u(c, "channels")?, rows_per_split: u(rps, "rows")?, total: u(total, "threads")? };
    let kern = ctx.kernel("conv_bias_grad")?;
    let mut out = vec![ctx.dispatch(&kern, &p, &[dy, &partials], total as u64)];
    if splits > 1 {
        out.push(reduce_partials(ctx, &partials, dbias, splits, 1.0, false)?);
    }
    Ok(out)
}

/// `dw[t, ci, co] = Σ_r x[map[r, t], ci] · dy[r, co]` in the stored layout (overwritten;
/// `dw` must be exactly `taps × cin × cout` elements, as every PyTorch layout is) and
/// `dbias[co] = Σ_r dy[r, co]`: split-K partials over output rows + `reduce_partials`.
#[allow(clippy::too_many_arguments)]
pub fn conv_weight_grad(
    ctx: &GpuContext,
    x: &GpuTensor,
    map: &GpuTensor,
    dy: &GpuTensor,
    dw: &GpuTensor,
    layout: WeightLayout,
    dbias: Option<&GpuTensor>,
    s: ConvShape,
) -> Result<Vec<Dispatch>> {
    weight_grad_with(ctx, None, x, map, dy, dw, layout, dbias, s)
}

/// `conv_weight_grad` with the kernel `tile` (`None`: the tuner's choice, else the fixed rule).
#[allow(clippy::too_many_arguments)]
fn weight_grad_with(
    ctx: &GpuContext,
    tile: Option<WgradTile>,
    x: &GpuTensor,
    map: &GpuTensor,
    dy: &GpuTensor,
    dw: &GpuTensor,
    layout: WeightLayout,
    dbias: Option<&GpuTensor>,
    s: ConvShape,
) -> Result<Vec<Dispatch>> {
    let count = s.taps * s.cin * s.cout;
    ensure!(count > 0, "convolution with an empty dimension: {s:?}");
    ensure!(dw.len == count, "weight gradient has {} elements, expected {count} ({s:?})", dw.len);
    ensure!(layout.extent(s.taps, s.cin, s.cout) == count, "layout {layout:?} is not a dense {count}-element weight");
    ensure!(x.len == s.rows_in * s.cin, "conv input has {} elements, expected [{}, {}]", x.len, s.rows_in, s.cin);
    ensure!(map.len == s.rows_out * s.taps, "neighbour map has {} entries, expected [{}, {}]", map.len, s.rows_out, s.taps);
    ensure!(dy.len == s.rows_out * s.cout, "output gradient has {} elements, expected [{}, {}]", dy.len, s.rows_out, s.cout);
    let tile = match tile {
        Some(t) => t,
        None => wgrad_tile_for(ctx, &s)?,
    };
    if tile.thin {
        return thin_weight_grad(ctx, x, map, dy, dw, layout, dbias, s, tile);
    }
    let ntiles = s.cout.div_ceil(tile.n);
    let (ktiles, per_split) = if tile.flat {
        let kt = (s.taps * s.cin).div_ceil(tile.k);
        (kt, kt * ntiles)
    } else {
        let kt = s.cin.div_ceil(tile.k);
        (kt, s.taps * kt * ntiles)
    };
    let (splits, rps) = splits_for(ctx, s.rows_out, per_split, count);
    // One split writes dw directly; more write partials for the fixed-order combine.
    let partials = if splits == 1 { dw.clone() } else { ctx.zeros(splits * count) };
    let total = splits * per_split;
    let p = WgradParams {
        rows: u(s.rows_out, "rows")?,
        kin: u(s.cin, "channels")?,
        n: u(s.cout, "channels")?,
        taps: u(s.taps, "taps")?,
        ktiles: u(ktiles, "tiles")?,
        ntiles: u(ntiles, "tiles")?,
        rows_per_split: u(rps, "rows")?,
        total: u(total, "threads")?,
        st: u(layout.tap, "weight stride")?,
        sk: u(layout.cin, "weight stride")?,
        sn: u(layout.cout, "weight stride")?,
        count: u(count, "weight size")?,
        k_groups: (tile.k / 4) as u32,
        _pad: [0; 3],
    };
    u(splits * count, "partials size")?;
    let kern = ctx.kernel_entry(tile.kernel, tile.entry)?;
    let mut out = vec![ctx.dispatch(&kern, &p, &[x, map, dy, &partials], total as u64)];
    if splits > 1 {
        out.push(reduce_partials(ctx, &partials, dw, splits, 1.0, false)?);
    }
    if let Some(db) = dbias {
        out.extend(bias_grad(ctx, dy, db, s.rows_out, s.cout)?);
    }
    Ok(out)
}

mod kernels;
mod reference;
mod thin;
pub mod tiles;
mod tune;
#[cfg(test)]
mod tests;

pub(crate) use kernels::is_cpu;
use kernels::{GemmTile, ROW_GROUP, ROW_INTERLEAVE, WgradTile, tile_for, wgrad_tile_for};
pub(crate) use tune::defer_tuning;
pub use tune::{Candidate, candidates};

use tiles::{GatherLoads, GatherStage};

/// Pass names of a conv (the tuner's keys and reports).
const FWD: &str = "fwd";
const DGRAD: &str = "dgrad";
const WGRAD: &str = "wgrad";
use thin::thin_weight_grad;
pub use reference::{conv_data_grad_ref, conv_forward_ref, conv_weight_grad_ref};

#[cfg(test)]
mod relayout_tests {
    use super::*;
    use crate::testing::random_vec;

    /// Both entries of conv_relayout against the formula, on the layouts the convs use
    /// (Conv2d forward and data gradient, ConvTranspose2d both ways) and sizes that are
    /// not multiples of the 32 x 32 tile; the result must be exactly the copy.
    #[test]
    fn relayout_both_entries_match_the_copy() {
        let ctx = GpuContext::new_default().unwrap();
        for &(cout, cin, taps, n_pad_to) in &[(5, 3, 49, 8), (37, 19, 9, 32), (70, 33, 1, 4), (4, 4, 16, 4), (129, 17, 9, 32)] {
            let w = random_vec(cout as u64 * 7 + cin as u64, cout * cin * taps);
            let wg = ctx.upload(&w);
            // (layout, k, n, which entry it should take): [cout, cin, t] forward (n = cout),
            // data gradient (n = cin), and a [cin, cout, t] transposed weight both ways.
            let conv = |ci: usize, co: usize| WeightLayout { tap: 1, cin: ci, cout: co };
            let cases = [
                (conv(taps, cin * taps), cin, cout, true),
                (conv(cin * taps, taps), cout, cin, false),
                (conv(cout * taps, taps), cin, cout, false),
                (conv(taps, cout * taps), cout, cin, true),
            ];
            for (l, k, n, tiled) in cases {
                assert_eq!(relayout_tiled(l, taps, k), tiled, "{l:?} taps {taps}");
                let n_pad = n.next_multiple_of(n_pad_to);
                let mut want = vec![0f32; taps * k * n_pad];
                for t in 0..taps {
                    for kk in 0..k {
                        for nn in 0..n {
                            want[(t * k + kk) * n_pad + nn] = w[l.index(t, kk, nn)];
                        }
                    }
                }
                let (wt, d) = relayout(&ctx, &wg, l, taps, k, n, n_pad).unwrap();
                ctx.run([&d]).unwrap();
                let got = ctx.read_f32(&wt).unwrap();
                assert!(got == want, "relayout {l:?} taps {taps} k {k} n {n} n_pad {n_pad} (tiled {tiled})");
            }
        }
    }
}
