//! `loss.wgsl`: SparK's reconstruction loss and its gradient in one pass.
//!
//! Official `SparK.forward`: every `patch`×`patch` patch of the UNMASKED input image is
//! normalised by its own mean and unbiased variance (`(x − mean) / sqrt(var + 1e-6)` over
//! all 3·p·p values); the per-patch loss is the mean squared error of the reconstruction
//! against that target; the loss averages the per-patch losses over the masked patches
//! (`Σ masked · l / (n_masked + 1e-8)`). Within a patch the values are taken in (row,
//! column, channel) order, which is the official `patchify` order.

use anyhow::{Result, ensure};

use crate::gpu::{Dispatch, GpuContext, GpuTensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    h: u32,
    w: u32,
    psz: u32,
    fh: u32,
    fw: u32,
    n_patches: u32,
    patch_base: u32,
}

/// Record the loss and its gradient. `image`, `rec`: `[B, H, W, 3]`; `visible`: u32
/// `[B * fh * fw]` (1 = visible, 0 = masked; the loss is over masked patches), read on the
/// GPU every replay; `loss`: `[1]`, `per_patch`: `[B * fh * fw]` (0 for visible patches)
/// and `d_rec = d loss / d rec`: `[B, H, W, 3]`, all overwritten.
#[allow(clippy::too_many_arguments)]
pub fn masked_patch_loss(
    ctx: &GpuContext,
    image: &GpuTensor,
    rec: &GpuTensor,
    visible: &GpuTensor,
    loss: &GpuTensor,
    per_patch: &GpuTensor,
    d_rec: &GpuTensor,
    batch: usize,
    h: usize,
    w: usize,
    patch: usize,
) -> Result<Vec<Dispatch>> {
    let t = LossTensors { visible, loss, per_patch };
    masked_patch_loss_chunked(ctx, &[(image.clone(), rec.clone(), d_rec.clone())], &t, batch, h, w, patch)
}

/// What [`masked_patch_loss`] reads and writes besides the images.
pub struct LossTensors<'a> {
    /// u32 `[B, fh, fw]` patch mask, 1 = visible (visible patches carry no loss).
    pub visible: &'a GpuTensor,
    /// The scalar loss.
    pub loss: &'a GpuTensor,
    /// Per-patch loss `[B * fh * fw]` (0 for visible patches).
    pub per_patch: &'a GpuTensor,
}

/// [`masked_patch_loss`] over a batch given as chunks of whole images `(image, rec,
/// d_rec)` in order (views, see `graph::chunks`); `batch` counts all of them.
pub fn masked_patch_loss_chunked(
    ctx: &GpuContext,
    chunks: &[(GpuTensor, GpuTensor, GpuTensor)],
    t: &LossTensors,
    batch: usize,
    h: usize,
    w: usize,
    patch: usize,
) -> Result<Vec<Dispatch>> {
    ensure!(patch >= 1 && h.is_multiple_of(patch) && w.is_multiple_of(patch), "image {h}x{w} is not a whole number of {patch}x{patch} patches");
    let per_image = h * w * 3;
    let mut images = 0;
    for (image, rec, d_rec) in chunks {
        let n = image.len;
        ensure!(n.is_multiple_of(per_image) && rec.len == n && d_rec.len == n, "image, rec and d_rec must be [B, H, W, 3] with H = {h}, W = {w}");
        images += n / per_image;
    }
    ensure!(images == batch, "the chunks hold {images} images, the batch is {batch}");
    let (fh, fw) = (h / patch, w / patch);
    let np = batch * fh * fw;
    ensure!(t.visible.len == np && t.per_patch.len == np, "visible and per_patch must have B * fh * fw = {np} entries");
    ensure!(t.loss.len >= 1, "loss needs one element");
    let params = |images: usize, first: usize| Params {
        batch: images as u32,
        h: h as u32,
        w: w as u32,
        psz: patch as u32,
        fh: fh as u32,
        fw: fw as u32,
        n_patches: (images * fh * fw) as u32,
        patch_base: (first * fh * fw) as u32,
    };
    // The masked-patch count is needed by every patch's gradient: one small pass first.
    let scratch = ctx.zeros(1);
    let bind = |(image, rec, d_rec): &(GpuTensor, GpuTensor, GpuTensor)| {
        [image, rec, t.visible, t.loss, t.per_patch, d_rec, &scratch].map(|v| v.clone())
    };
    let count = ctx.kernel_entry("loss", "count_masked")?;
    let per = ctx.kernel_entry("loss", "patch_loss")?;
    let total = ctx.kernel_entry("loss", "total")?;
    let all = params(batch, 0);
    let mut out = vec![ctx.dispatch_groups(&count, &all, &bind(&chunks[0]).each_ref(), [1, 1, 1])];
    let mut first = 0;
    for c in chunks {
        let images = c.0.len / per_image;
        out.push(ctx.dispatch_groups(&per, &params(images, first), &bind(c).each_ref(), ctx.grid_for((images * fh * fw) as u64)));
        first += images;
    }
    out.push(ctx.dispatch_groups(&total, &all, &bind(&chunks[0]).each_ref(), [1, 1, 1]));
    Ok(out)
}

/// f64 reference: (loss, per-patch losses, d loss / d rec).
fn loss_f64(
    image: &[f64],
    rec: &[f64],
    visible: &[u32],
    batch: usize,
    h: usize,
    w: usize,
    patch: usize,
) -> (f64, Vec<f64>, Vec<f64>) {
    let (fh, fw) = (h / patch, w / patch);
    let n = 3 * patch * patch;
    let n_masked = visible.iter().filter(|&&v| v == 0).count() as f64;
    let denom = n_masked + 1e-8;
    let mut per = vec![0.0; batch * fh * fw];
    let mut d = vec![0.0; rec.len()];
    let mut total = 0.0;
    for b in 0..batch {
        for py in 0..fh {
            for px in 0..fw {
                let pid = (b * fh + py) * fw + px;
                let addrs: Vec<usize> = (0..patch)
                    .flat_map(|r| {
                        let row = ((b * h + py * patch + r) * w + px * patch) * 3;
                        row..row + 3 * patch
                    })
                    .collect();
                let mean = addrs.iter().map(|&a| image[a]).sum::<f64>() / n as f64;
                let var = addrs.iter().map(|&a| (image[a] - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
                let sd = (var + 1e-6).sqrt();
                let masked = if visible[pid] == 0 { 1.0 } else { 0.0 };
                let mut se = 0.0;
                for &a in &addrs {
                    let diff = rec[a] - (image[a] - mean) / sd;
                    se += diff * diff;
                    d[a] = 2.0 * diff * masked / n as f64 / denom;
                }
                per[pid] = se / n as f64 * masked;
                total += per[pid];
            }
        }
    }
    (total / denom, per, d)
}

/// CPU reference (f64 inside): (loss, d loss / d rec).
pub fn masked_patch_loss_ref(
    image: &[f32],
    rec: &[f32],
    visible: &[u32],
    batch: usize,
    h: usize,
    w: usize,
    patch: usize,
) -> (f64, Vec<f32>) {
    let (l, _, d) = masked_patch_loss_per_patch_ref(image, rec, visible, batch, h, w, patch);
    (l, d)
}

/// CPU reference that also returns the per-patch losses (0 for visible patches).
pub fn masked_patch_loss_per_patch_ref(
    image: &[f32],
    rec: &[f32],
    visible: &[u32],
    batch: usize,
    h: usize,
    w: usize,
    patch: usize,
) -> (f64, Vec<f32>, Vec<f32>) {
    let f = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let (l, per, d) = loss_f64(&f(image), &f(rec), visible, batch, h, w, patch);
    let g = |x: Vec<f64>| x.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
    (l, g(per), g(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_grad_matches, numeric_grad, random_patch_mask, random_vec};

    fn visible_u32(seed: u64, batch: usize, fh: usize, fw: usize, ratio: f64) -> Vec<u32> {
        let m = random_patch_mask(seed, batch, fh, fw, ratio);
        let per = fh * fw;
        (0..batch * per).map(|i| m.is_visible(i / per, (i % per) / fw, i % fw) as u32).collect()
    }

    /// Image values with a per-patch offset and scale, so normalisation matters.
    fn image(seed: u64, n: usize) -> Vec<f32> {
        random_vec(seed, n).iter().enumerate().map(|(i, v)| 3.0 + 2.0 * v + (i % 7) as f32 * 0.1).collect()
    }

    fn check_gpu(ctx: &GpuContext, batch: usize, h: usize, w: usize, patch: usize, ratio: f64, seed: u64) {
        let n = batch * h * w * 3;
        let (fh, fw) = (h / patch, w / patch);
        let img = image(seed, n);
        let rec = random_vec(seed + 1, n);
        let vis = visible_u32(seed + 2, batch, fh, fw, ratio);
        let (want_l, want_per, want_d) = masked_patch_loss_per_patch_ref(&img, &rec, &vis, batch, h, w, patch);
        let (ti, tr, tv) = (ctx.upload(&img), ctx.upload(&rec), ctx.upload(&vis));
        let (tl, tp, td) = (ctx.zeros(1), ctx.upload(&vec![7f32; vis.len()]), ctx.upload(&vec![7f32; n]));
        let d = masked_patch_loss(ctx, &ti, &tr, &tv, &tl, &tp, &td, batch, h, w, patch).unwrap();
        ctx.run(&d).unwrap();
        let got_l = ctx.read_f32(&tl).unwrap()[0] as f64;
        let what = format!("B{batch} {h}x{w} p{patch}");
        assert!((got_l - want_l).abs() <= 1e-5 * want_l.abs().max(1.0), "{what}: loss {got_l} vs {want_l}");
        assert_close(&ctx.read_f32(&tp).unwrap(), &want_per, 1e-5, &format!("{what} per_patch"));
        assert_close(&ctx.read_f32(&td).unwrap(), &want_d, 1e-5, &format!("{what} d_rec"));
        // A second replay gives the same bits (fixed-order reductions).
        let first = ctx.read_f32(&td).unwrap();
        ctx.run(&d).unwrap();
        assert_eq!(ctx.read_f32(&tl).unwrap()[0].to_bits(), (got_l as f32).to_bits());
        assert!(ctx.read_f32(&td).unwrap().iter().zip(&first).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn gpu_matches_cpu_small_patches() {
        let ctx = GpuContext::new_default().unwrap();
        check_gpu(&ctx, 2, 8, 12, 4, 0.4, 10); // 48 values per patch: fewer than a workgroup
        check_gpu(&ctx, 3, 10, 5, 5, 0.5, 20); // 75 values: not a multiple of the workgroup
    }

    #[test]
    fn gpu_matches_cpu_patch_32() {
        let ctx = GpuContext::new_default().unwrap();
        check_gpu(&ctx, 2, 64, 32, 32, 0.5, 30);
    }

    /// The chunked launcher (graph::chunks) over uneven chunks of whole images, each its
    /// own buffer, equals the CPU reference of the whole batch.
    #[test]
    fn chunked_over_images_matches_cpu() {
        let ctx = GpuContext::new_default().unwrap();
        let (batch, h, w, patch) = (5, 10, 5, 5);
        let (n, per) = (batch * h * w * 3, h * w * 3);
        let (img, rec) = (image(40, n), random_vec(41, n));
        let vis = visible_u32(42, batch, 2, 1, 0.5);
        let (want_l, want_per, want_d) = masked_patch_loss_per_patch_ref(&img, &rec, &vis, batch, h, w, patch);
        let (tv, tl, tp) = (ctx.upload(&vis), ctx.zeros(1), ctx.upload(&vec![7f32; vis.len()]));
        let chunks: Vec<_> = [0..2, 2..4, 4..5]
            .into_iter()
            .map(|r| {
                let s = r.start * per..r.end * per;
                (ctx.upload(&img[s.clone()]), ctx.upload(&rec[s.clone()]), ctx.upload(&vec![7f32; s.len()]))
            })
            .collect();
        let t = LossTensors { visible: &tv, loss: &tl, per_patch: &tp };
        ctx.run(&masked_patch_loss_chunked(&ctx, &chunks, &t, batch, h, w, patch).unwrap()).unwrap();
        let got_l = ctx.read_f32(&tl).unwrap()[0] as f64;
        assert!((got_l - want_l).abs() <= 1e-5 * want_l.abs().max(1.0), "loss {got_l} vs {want_l}");
        assert_close(&ctx.read_f32(&tp).unwrap(), &want_per, 1e-5, "chunked per_patch");
        let d: Vec<f32> = chunks.iter().flat_map(|c| ctx.read_f32(&c.2).unwrap()).collect();
        assert_close(&d, &want_d, 1e-5, "chunked d_rec");
        // Chunks that do not add up to the batch are refused.
        assert!(masked_patch_loss_chunked(&ctx, &chunks[..2], &t, batch, h, w, patch).is_err());
    }

    #[test]
    fn mask_is_read_each_replay() {
        let ctx = GpuContext::new_default().unwrap();
        let (batch, h, w, patch) = (2, 8, 8, 4);
        let n = batch * h * w * 3;
        let img = image(5, n);
        let rec = random_vec(6, n);
        let vis_a = visible_u32(7, batch, 2, 2, 0.5);
        let vis_b: Vec<u32> = vis_a.iter().map(|v| 1 - v).collect();
        let (ti, tr, tv) = (ctx.upload(&img), ctx.upload(&rec), ctx.upload(&vis_a));
        let (tl, tp, td) = (ctx.zeros(1), ctx.zeros(vis_a.len()), ctx.zeros(n));
        let d = masked_patch_loss(&ctx, &ti, &tr, &tv, &tl, &tp, &td, batch, h, w, patch).unwrap();
        for vis in [&vis_a, &vis_b] {
            ctx.write(&tv, vis);
            ctx.run(&d).unwrap();
            let (want, want_d) = masked_patch_loss_ref(&img, &rec, vis, batch, h, w, patch);
            let got = ctx.read_f32(&tl).unwrap()[0] as f64;
            assert!((got - want).abs() <= 1e-5 * want.abs(), "loss {got} vs {want}");
            assert_close(&ctx.read_f32(&td).unwrap(), &want_d, 1e-5, "d_rec");
        }
    }

    #[test]
    fn no_masked_patch_gives_zero() {
        let (img, rec) = (image(1, 2 * 4 * 4 * 3), random_vec(2, 2 * 4 * 4 * 3));
        let (l, d) = masked_patch_loss_ref(&img, &rec, &[1; 8], 2, 4, 4, 2);
        assert_eq!(l, 0.0);
        assert!(d.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn cpu_backward_matches_finite_differences() {
        let (batch, h, w, patch) = (2, 4, 6, 2);
        let n = batch * h * w * 3;
        let img: Vec<f64> = image(3, n).iter().map(|&v| v as f64).collect();
        let rec: Vec<f64> = random_vec(4, n).iter().map(|&v| v as f64).collect();
        let vis = visible_u32(5, batch, 2, 3, 0.5);
        let (_, _, analytic) = loss_f64(&img, &rec, &vis, batch, h, w, patch);
        let numeric = numeric_grad(|r| loss_f64(&img, r, &vis, batch, h, w, patch).0, &rec, 1e-6);
        assert_grad_matches(&analytic, &numeric, 1e-6, "d loss / d rec");
    }

    /// The official loss of step 0 from the official input, reconstruction and mask.
    #[test]
    fn matches_official_golden_loss() {
        let dirs = [concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/golden"), "/work/shared/golden"];
        let cases = ["resnet_basic_tiny", "resnet_bottleneck_tiny", "convnext_tiny"];
        let ctx = GpuContext::new_default().unwrap();
        let mut checked = 0;
        for case in cases {
            let Some(bytes) = dirs.iter().find_map(|d| std::fs::read(format!("{d}/{case}.safetensors")).ok()) else {
                continue;
            };
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let f32s = |k: &str| -> (Vec<f32>, Vec<usize>) {
                let t = st.tensor(k).unwrap();
                (t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(), t.shape().to_vec())
            };
            let (inp, shape) = f32s("in.input");
            let (rec, _) = f32s("out.rec");
            let vis: Vec<u32> = st.tensor("in.active").unwrap().data().iter().map(|&v| v as u32).collect();
            let want = f64::from_le_bytes(st.tensor("out.loss.0").unwrap().data().try_into().unwrap());
            let (b, h, w) = (shape[0], shape[2], shape[3]);
            let nhwc = |x: &[f32]| -> Vec<f32> {
                let mut o = vec![0.0; x.len()];
                for bi in 0..b {
                    for c in 0..3 {
                        for y in 0..h {
                            for xx in 0..w {
                                o[((bi * h + y) * w + xx) * 3 + c] = x[((bi * 3 + c) * h + y) * w + xx];
                            }
                        }
                    }
                }
                o
            };
            let (inp, rec) = (nhwc(&inp), nhwc(&rec));
            let (cpu, _) = masked_patch_loss_ref(&inp, &rec, &vis, b, h, w, 32);
            let (ti, tr, tv) = (ctx.upload(&inp), ctx.upload(&rec), ctx.upload(&vis));
            let (tl, tp, td) = (ctx.zeros(1), ctx.zeros(vis.len()), ctx.zeros(inp.len()));
            ctx.run(&masked_patch_loss(&ctx, &ti, &tr, &tv, &tl, &tp, &td, b, h, w, 32).unwrap()).unwrap();
            let gpu = ctx.read_f32(&tl).unwrap()[0] as f64;
            assert!((cpu - want).abs() <= 1e-5, "{case}: CPU loss {cpu} vs official {want}");
            assert!((gpu - want).abs() <= 1e-5, "{case}: GPU loss {gpu} vs official {want}");
            eprintln!("{case}: official {want:.9}, CPU {cpu:.9} ({:.1e}), GPU {gpu:.9} ({:.1e})", (cpu - want).abs(), (gpu - want).abs());
            checked += 1;
        }
        if checked == 0 {
            eprintln!("no golden case found; skipped");
        }
    }

    /// `cargo test --lib loss_timing -- --ignored --nocapture`: batch 16 at 224x224.
    #[test]
    #[ignore]
    fn loss_timing() {
        let ctx = GpuContext::new_default().unwrap();
        let (batch, h, w, patch) = (16, 224, 224, 32);
        let n = batch * h * w * 3;
        let vis = visible_u32(1, batch, 7, 7, 0.4);
        let (ti, tr, tv) = (ctx.upload(&image(2, n)), ctx.upload(&random_vec(3, n)), ctx.upload(&vis));
        let (tl, tp, td) = (ctx.zeros(1), ctx.zeros(vis.len()), ctx.zeros(n));
        let d = masked_patch_loss(&ctx, &ti, &tr, &tv, &tl, &tp, &td, batch, h, w, patch).unwrap();
        ctx.run(&d).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..5 {
            ctx.run(&d).unwrap();
        }
        eprintln!("{}: loss + d_rec, B{batch} {h}x{w}: {:.1} ms", ctx.describe(), t.elapsed().as_secs_f64() * 200.0);
    }
}
