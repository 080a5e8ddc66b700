//! `sparse_maps.wgsl`: the active sets and neighbour maps of a step built on the GPU from
//! the patch mask, so that a step uploads its mask (a few KB) instead of every map. The
//! host functions of this module's parent (`ActiveSet`, `conv_map`, `transposed_conv_map`,
//! `inverse_map`) are the reference they are tested against, integer for integer.

use anyhow::{Result, ensure};
use std::ops::Range;

use super::Window;
use crate::gpu::{Dispatch, GpuContext, GpuTensor};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    h_in: u32,
    w_in: u32,
    h_out: u32,
    w_out: u32,
    fh: u32,
    fw: u32,
    k: u32,
    stride: u32,
    pad: u32,
    transposed: u32,
    n: u32,
    chunk_images: u32,
    target_per_image: u32,
    per_image: u32,
    visible_per_image: u32,
    image_base: u32,
    _pad: [u32; 3],
}

/// The index tensors of one set on the GPU: `row_of` `[B·h·w]` and `site_of_row` `[rows]`.
#[derive(Clone, Copy)]
pub struct SetIndices<'a> {
    /// Height in sites.
    pub h: usize,
    /// Width in sites.
    pub w: usize,
    /// i32 `[B·h·w]`: row of each site or -1.
    pub row_of: &'a GpuTensor,
    /// i32 `[rows]`: site index of each row.
    pub site_of_row: &'a GpuTensor,
}

/// The patch mask of a step on the GPU: u32 `[B, fh, fw]`, 1 = visible, every image
/// showing `visible_per_image` patches.
#[derive(Clone, Copy)]
pub struct MaskTensor<'a> {
    /// u32 `[B, fh, fw]`, 1 = visible.
    pub visible: &'a GpuTensor,
    /// Images.
    pub batch: usize,
    /// Patch rows per image.
    pub fh: usize,
    /// Patch columns per image.
    pub fw: usize,
    /// Visible patches in every image.
    pub visible_per_image: usize,
}

/// The elements of images `imgs` of a tensor holding `per_image` per image (the caller
/// keeps the view's offset bindable, see `graph::chunks`).
fn images_of(t: &GpuTensor, per_image: usize, imgs: &Range<usize>) -> GpuTensor {
    t.slice(imgs.start * per_image, imgs.len() * per_image)
}

fn u(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| anyhow::anyhow!("sparse maps: {what} {v} exceeds u32"))
}

/// `[src, rows, out, out2]` after the mask; unused slots take buffers that are never
/// written in the same dispatch (wgpu refuses a buffer bound read-only and writable).
fn launch(ctx: &GpuContext, entry: &str, p: &Params, mask: &GpuTensor, t: [&GpuTensor; 4]) -> Result<Dispatch> {
    let k = ctx.kernel_entry("sparse_maps", entry)?;
    Ok(ctx.dispatch(&k, p, &[mask, t[0], t[1], t[2], t[3]], p.n as u64))
}

/// `row_of` and `site_of_row` of the `h × w` set (sites of visible patches, canonical
/// `(b, y, x)` order), as `ActiveSet::from_patch_mask`, for images `imgs` (the whole
/// batch, or one chunk of it: see `graph::chunks`).
pub fn active_rows(ctx: &GpuContext, m: MaskTensor, set: SetIndices, imgs: Range<usize>) -> Result<Dispatch> {
    ensure!(set.h.is_multiple_of(m.fh) && set.w.is_multiple_of(m.fw), "set {}×{} is not a multiple of the {}×{} patch grid", set.h, set.w, m.fh, m.fw);
    let sites = m.batch * set.h * set.w;
    let rows = m.batch * m.visible_per_image * (set.h / m.fh) * (set.w / m.fw);
    ensure!(m.visible.len == m.batch * m.fh * m.fw, "mask holds {} entries, expected [{}, {}, {}]", m.visible.len, m.batch, m.fh, m.fw);
    ensure!(set.row_of.len == sites && set.site_of_row.len == rows, "row_of / site_of_row must hold {sites} / {rows} entries");
    let p = Params {
        batch: u(m.batch, "batch")?,
        h_in: u(set.h, "height")?,
        w_in: u(set.w, "width")?,
        fh: u(m.fh, "patch rows")?,
        fw: u(m.fw, "patch columns")?,
        n: u(imgs.len() * set.h * set.w, "sites")?,
        visible_per_image: u(m.visible_per_image, "visible patches")?,
        image_base: u(imgs.start, "image")?,
        ..Default::default()
    };
    let (row_of, site_of_row) = (images_of(set.row_of, sites / m.batch, &imgs), images_of(set.site_of_row, rows / m.batch, &imgs));
    launch(ctx, "active_rows", &p, m.visible, [m.visible, m.visible, &row_of, &site_of_row])
}

/// The gather map `from → to` of `win` (`map [rows_to, taps]`) and its inverse
/// (`inv [rows_from, taps]`), as `conv_map`/`transposed_conv_map` and `inverse_map`.
/// With `chunk_images > 0` the entries count from the first image of their chunk
/// (`graph::chunks`). Builds images `imgs` (the whole batch, or one binding-sized chunk).
#[allow(clippy::too_many_arguments)]
pub fn neighbour_maps(
    ctx: &GpuContext,
    m: MaskTensor,
    from: SetIndices,
    to: SetIndices,
    win: Window,
    transposed: bool,
    chunk_images: usize,
    map: &GpuTensor,
    inv: &GpuTensor,
    imgs: Range<usize>,
) -> Result<Vec<Dispatch>> {
    ensure!(win.kh == win.kw, "square windows only (every SparK layer)");
    let taps = win.taps();
    let (rows_from, rows_to) = (from.site_of_row.len, to.site_of_row.len);
    ensure!(map.len == rows_to * taps && inv.len == rows_from * taps, "map / inverse must hold [{rows_to}, {taps}] / [{rows_from}, {taps}]");
    ensure!(rows_from.is_multiple_of(m.batch) && rows_to.is_multiple_of(m.batch), "rows are not a whole number of images");
    let base = Params {
        batch: u(m.batch, "batch")?,
        h_in: u(from.h, "height")?,
        w_in: u(from.w, "width")?,
        h_out: u(to.h, "height")?,
        w_out: u(to.w, "width")?,
        k: u(win.kh, "kernel")?,
        stride: u(win.stride, "stride")?,
        pad: u(win.pad, "padding")?,
        transposed: transposed as u32,
        chunk_images: u(chunk_images, "chunk")?,
        image_base: u(imgs.start, "image")?,
        ..Default::default()
    };
    let (per_from, per_to, n) = (rows_from / m.batch, rows_to / m.batch, imgs.len());
    let forward = Params { n: u(n * per_to * taps, "map size")?, target_per_image: u(per_from, "rows")?, ..base };
    let backward = Params { n: u(n * per_from * taps, "map size")?, target_per_image: u(per_to, "rows")?, ..base };
    let v = |t: &GpuTensor, per: usize| images_of(t, per, &imgs);
    let (from_row_of, to_row_of) = (v(from.row_of, from.h * from.w), v(to.row_of, to.h * to.w));
    let (from_sites, to_sites) = (v(from.site_of_row, per_from), v(to.site_of_row, per_to));
    Ok(vec![
        launch(ctx, "conv_map", &forward, m.visible, [&from_row_of, &to_sites, &v(map, per_to * taps), &ctx.zeros(1)])?,
        launch(ctx, "inverse_map", &backward, m.visible, [&to_row_of, &from_sites, &v(inv, per_from * taps), &ctx.zeros(1)])?,
    ])
}

/// `out` = `src` with every entry `>= 0` counted from the first image of its chunk:
/// `src` holds `per_image` entries per image that index `target_per_image` units per
/// image (as `graph::chunks::relativize`), for images `imgs`.
#[allow(clippy::too_many_arguments)]
pub fn relative_copy(
    ctx: &GpuContext,
    m: MaskTensor,
    src: &GpuTensor,
    out: &GpuTensor,
    per_image: usize,
    target_per_image: usize,
    chunk_images: usize,
    imgs: Range<usize>,
) -> Result<Dispatch> {
    ensure!(src.len == out.len && per_image > 0 && chunk_images > 0, "relative_copy of {} into {} entries", src.len, out.len);
    let p = Params {
        n: u(imgs.len() * per_image, "entries")?,
        per_image: u(per_image, "entries per image")?,
        target_per_image: u(target_per_image, "rows")?,
        chunk_images: u(chunk_images, "chunk")?,
        image_base: u(imgs.start, "image")?,
        ..Default::default()
    };
    let (src, out) = (images_of(src, per_image, &imgs), images_of(out, per_image, &imgs));
    launch(ctx, "relative_copy", &p, m.visible, [&src, m.visible, &out, &ctx.zeros(1)])
}

#[cfg(test)]
mod tests {
    use super::super::{ActiveSet, conv_map, inverse_map, relativize, transposed_conv_map};
    use super::*;
    use std::ops::Range;
    use crate::testing::random_patch_mask;

    /// One set's GPU indices and the host reference.
    struct Set {
        host: ActiveSet,
        row_of: GpuTensor,
        site_of_row: GpuTensor,
    }

    /// Two dispatches (images `0..k` and `k..batch`) at the first `k` whose views the
    /// adapter can bind (as a batch over the binding limit runs), else one.
    fn split(ctx: &GpuContext, batch: usize, per_image_bytes: &[usize]) -> Vec<Range<usize>> {
        let align = ctx.limits.min_storage_buffer_offset_alignment as usize;
        match (1..batch).find(|k| per_image_bytes.iter().all(|b| (b * k).is_multiple_of(align))) {
            Some(k) => vec![0..k, k..batch],
            None => std::iter::once(0..batch).collect(),
        }
    }

    fn gpu_set(ctx: &GpuContext, m: MaskTensor, mask: &super::super::PatchMask, h: usize, sparse: bool) -> Set {
        let host = if sparse { ActiveSet::from_patch_mask(mask, h, h) } else { ActiveSet::dense(mask.batch, h, h) };
        let (row_of, site_of_row) = (ctx.zeros(mask.batch * h * h), ctx.zeros(host.rows()));
        let set = SetIndices { h, w: h, row_of: &row_of, site_of_row: &site_of_row };
        if sparse {
            let parts = split(ctx, mask.batch, &[h * h * 4, host.rows() / mask.batch * 4]);
            let d: Vec<_> = parts.into_iter().map(|r| active_rows(ctx, m, set, r).unwrap()).collect();
            ctx.run(&d).unwrap();
        } else {
            let sites: Vec<i32> = (0..host.rows() as i32).collect();
            ctx.write(&row_of, &host.row_of);
            ctx.write(&site_of_row, &sites);
        }
        Set { host, row_of, site_of_row }
    }

    /// Every window geometry of the SparK encoders and decoder, on a 3×3 patch grid (96²
    /// input) with batch 3, sparse and dense, absolute and in chunks of 2 images.
    #[test]
    fn gpu_sets_and_maps_equal_the_host_reference() {
        let ctx = GpuContext::new_default().unwrap();
        let (batch, f) = (3, 3);
        for seed in [1, 2] {
            let mask = random_patch_mask(seed, batch, f, f, 0.45);
            let visible: Vec<u32> = mask.visible.iter().map(|&v| v as u32).collect();
            let vt = ctx.upload(&visible);
            let per = mask.visible_count() / batch;
            let m = MaskTensor { visible: &vt, batch, fh: f, fw: f, visible_per_image: per };
            for h in [96, 48, 12, 3] {
                let s = gpu_set(&ctx, m, &mask, h, true);
                assert_eq!(ctx.read::<i32>(&s.row_of).unwrap(), s.host.row_of, "row_of {h}² seed {seed}");
                let sites: Vec<i32> = s.host.sites.iter().map(|&[b, y, x]| ((b as usize * h + y as usize) * h + x as usize) as i32).collect();
                assert_eq!(ctx.read::<i32>(&s.site_of_row).unwrap(), sites, "site_of_row {h}² seed {seed}");
            }
            let cases = [
                (96, 48, Window::new(7, 2, 3), false, true),
                (96, 48, Window::new(3, 2, 1), false, true),
                (96, 24, Window::new(4, 4, 0), false, true),
                (48, 24, Window::new(2, 2, 0), false, true),
                (48, 24, Window::new(1, 2, 0), false, true),
                (24, 24, Window::new(3, 1, 1), false, true),
                (12, 12, Window::new(7, 1, 3), false, true),
                (6, 6, Window::new(1, 1, 0), false, true),
                (6, 12, Window::new(4, 2, 1), true, true),
                (3, 6, Window::new(4, 2, 1), true, false),
                (12, 12, Window::new(3, 1, 1), false, false),
            ];
            for (hi, ho, win, transposed, sparse) in cases {
                let (a, b) = (gpu_set(&ctx, m, &mask, hi, sparse), gpu_set(&ctx, m, &mask, ho, sparse));
                let want = if transposed { transposed_conv_map(&a.host, &b.host, win) } else { conv_map(&a.host, &b.host, win) };
                let want_inv = inverse_map(&want, a.host.rows());
                for chunk in [0, 2] {
                    let (map, inv) = (ctx.zeros(want.map.len()), ctx.zeros(want_inv.map.len()));
                    let from = SetIndices { h: hi, w: hi, row_of: &a.row_of, site_of_row: &a.site_of_row };
                    let to = SetIndices { h: ho, w: ho, row_of: &b.row_of, site_of_row: &b.site_of_row };
                    let (ra, rb, taps) = (a.host.rows() / batch * 4, b.host.rows() / batch * 4, win.taps());
                    let parts = split(&ctx, batch, &[hi * hi * 4, ho * ho * 4, ra, rb, ra * taps, rb * taps]);
                    let d: Vec<_> = parts.into_iter().flat_map(|r| neighbour_maps(&ctx, m, from, to, win, transposed, chunk, &map, &inv, r).unwrap()).collect();
                    ctx.run(&d).unwrap();
                    let (mut wm, mut wi) = (want.map.clone(), want_inv.map.clone());
                    if chunk > 0 {
                        let (ri, ro, taps) = (a.host.rows() / batch, b.host.rows() / batch, win.taps());
                        relativize(&mut wm, ro * taps, ri, chunk);
                        relativize(&mut wi, ri * taps, ro, chunk);
                    }
                    let what = format!("{hi}²→{ho}² {win:?} transposed {transposed} sparse {sparse} chunk {chunk} seed {seed}");
                    assert_eq!(ctx.read::<i32>(&map).unwrap(), wm, "map {what}");
                    assert_eq!(ctx.read::<i32>(&inv).unwrap(), wi, "inverse {what}");
                }
            }
            // Chunk-relative copies of a set's indices.
            let s = gpu_set(&ctx, m, &mask, 12, true);
            let rows = s.host.rows() / batch;
            let out = ctx.zeros(s.row_of.len);
            let d: Vec<_> = split(&ctx, batch, &[144 * 4]).into_iter().map(|r| relative_copy(&ctx, m, &s.row_of, &out, 144, rows, 2, r).unwrap()).collect();
            ctx.run(&d).unwrap();
            let mut want = s.host.row_of.clone();
            relativize(&mut want, 144, rows, 2);
            assert_eq!(ctx.read::<i32>(&out).unwrap(), want, "relative row_of seed {seed}");
        }
    }
}
