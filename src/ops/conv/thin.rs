//! Weight gradient of thin layers (few output channels, many rows: the full-resolution
//! decoder stages) with the generated `conv_wgrad_thin` kernel (build.rs, from the
//! tile table in `tiles.rs`): small thread tiles, many splits, and the
//! bias partials from the same pass. Chosen by `kernels::wgrad_tile_for`.

use anyhow::{Result, ensure};

use super::kernels::WgradTile;
use super::{ConvShape, WeightLayout, splits_for, u};
use crate::gpu::{Dispatch, GpuContext, GpuTensor};
use crate::ops::reduce::reduce_partials;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ThinWgradParams {
    rows: u32,
    kin: u32,
    n: u32,
    taps: u32,
    kgroups: u32,
    ngroups: u32,
    rows_per_split: u32,
    total: u32,
    st: u32,
    sk: u32,
    sn: u32,
    count: u32,
    has_bias: u32,
    aligned: u32,
    splits: u32,
    split_fastest: u32,
}

/// `conv_weight_grad` of a thin layer with conv_wgrad_thin (checked arguments); the
/// bias partials come from the same pass.
#[allow(clippy::too_many_arguments)]
pub(super) fn thin_weight_grad(
    ctx: &GpuContext,
    x: &GpuTensor,
    map: &GpuTensor,
    dy: &GpuTensor,
    dw: &GpuTensor,
    layout: WeightLayout,
    dbias: Option<&GpuTensor>,
    s: ConvShape,
    tile: WgradTile,
) -> Result<Vec<Dispatch>> {
    let count = s.taps * s.cin * s.cout;
    if let Some(db) = dbias {
        ensure!(db.len == s.cout, "bias gradient has {} elements, expected {}", db.len, s.cout);
    }
    let kgroups = (s.taps * s.cin).div_ceil(tile.k);
    let ngroups = s.cout.div_ceil(tile.n);
    let per_split = kgroups * ngroups;
    let (splits, rps) = splits_for(ctx, s.rows_out, per_split, count);
    // The 8-wide (llvmpipe) entries take consecutive splits of one tile per SIMD vector;
    // with a multiple of 256 rows per split, the rows its lanes read at one step lie at
    // the same position of an even-width image row pair (widths up to 128), so a tap that
    // a transposed or strided map leaves empty is empty for all of them and is skipped.
    let split_fastest = tile.entry.ends_with("_cpu");
    let (splits, rps) = if split_fastest && rps >= 128 {
        let rps = rps.next_multiple_of(256);
        (s.rows_out.div_ceil(rps), rps)
    } else {
        (splits, rps)
    };
    // One split writes dw (and dbias) directly; more write partials for the fixed-order combine.
    let partials = if splits == 1 { dw.clone() } else { ctx.zeros(splits * count) };
    let bias_partials = match dbias {
        Some(db) if splits == 1 => db.clone(),
        Some(_) => ctx.zeros(splits * s.cout),
        None => ctx.zeros(1), // never written (has_bias = 0), but every binding must be filled
    };
    let total = splits * per_split;
    let p = ThinWgradParams {
        rows: u(s.rows_out, "rows")?,
        kin: u(s.cin, "channels")?,
        n: u(s.cout, "channels")?,
        taps: u(s.taps, "taps")?,
        kgroups: u(kgroups, "tiles")?,
        ngroups: u(ngroups, "tiles")?,
        rows_per_split: u(rps, "rows")?,
        total: u(total, "threads")?,
        st: u(layout.tap, "weight stride")?,
        sk: u(layout.cin, "weight stride")?,
        sn: u(layout.cout, "weight stride")?,
        count: u(count, "weight size")?,
        has_bias: dbias.is_some() as u32,
        aligned: s.cin.is_multiple_of(4) as u32,
        splits: u(splits, "splits")?,
        split_fastest: split_fastest as u32,
    };
    u(splits * count, "partials size")?;
    let kern = ctx.kernel_entry(tile.kernel, tile.entry)?;
    let mut out = vec![ctx.dispatch(&kern, &p, &[x, map, dy, &partials, &bias_partials], total as u64)];
    if splits > 1 {
        out.push(reduce_partials(ctx, &partials, dw, splits, 1.0, false)?);
        if let Some(db) = dbias {
            out.push(reduce_partials(ctx, &bias_partials, db, splits, 1.0, false)?);
        }
    }
    Ok(out)
}
