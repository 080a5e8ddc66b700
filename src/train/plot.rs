//! The run's curves as `loss.png`: three panels drawn with `plotters` (bitmap backend, the
//! DejaVu Sans font embedded from `assets/fonts/`, so no system font is needed):
//! loss (raw and smoothed) against step on a zoomed y axis, the lr and weight-decay
//! schedule, and images/s. Also the PNG writer shared by every image a run writes.

use anyhow::{Context as _, Result, anyhow};
use image::RgbImage;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// DejaVu Sans (fonts-dejavu-core; Bitstream Vera derived licence, which allows
/// embedding and redistribution: see `assets/fonts/LICENSE`).
pub const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// The family name the embedded font is registered under in plotters.
pub const FONT_FAMILY: &str = "sans-serif";

/// plotters' ab_glyph backend looks fonts up in its own process-wide table; registering
/// the same bytes twice is harmless, `Once` just avoids re-parsing them per plot.
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and parsed in tests: failure here is a build defect.
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT).ok().expect("embedded DejaVu Sans parses");
    });
}

/// One logged step, as in `log.jsonl`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepRecord {
    /// Step number (1-based).
    pub step: usize,
    /// The step's loss.
    pub loss: f32,
    /// Its learning rate.
    pub lr: f64,
    /// Its weight decay.
    pub wd: f64,
    /// Throughput of the step.
    pub images_per_s: f64,
}

/// Write `img` as PNG to `path` atomically ([`crate::io::atomic`]), so a reader (or an
/// interrupted run) never sees half a file.
pub fn save_png_atomic(img: &RgbImage, path: &Path) -> Result<()> {
    save_image_atomic(img, path, image::ImageFormat::Png)
}

/// As [`save_png_atomic`] in the format `path`'s extension names (PNG, JPEG, ...): the
/// temporary's own name cannot tell the encoder which.
pub fn save_image_atomic_by_extension(img: &RgbImage, path: &Path) -> Result<()> {
    let format = image::ImageFormat::from_path(path)
        .map_err(|_| anyhow!("{}: cannot tell an image format from the extension (use .png or .jpg)", path.display()))?;
    save_image_atomic(img, path, format)
}

fn save_image_atomic(img: &RgbImage, path: &Path, format: image::ImageFormat) -> Result<()> {
    crate::io::atomic::write_atomic_with(path, |tmp| {
        img.save_with_format(tmp, format).with_context(|| format!("writing {}", tmp.display()))
    })
    .with_context(|| format!("writing {}", path.display()))
}

/// Running mean over the last `k` points (≈2% of the run, at least 1).
pub fn smooth(v: &[f64]) -> Vec<f64> {
    let k = (v.len() / 50).max(1);
    (0..v.len())
        .map(|i| {
            let lo = i.saturating_sub(k);
            v[lo..=i].iter().sum::<f64>() / (i - lo + 1) as f64
        })
        .collect()
}

/// The loss axis: from the lowest loss to the highest *smoothed* loss after the first 10%
/// of the run, padded by 5%. The first steps of a run sit far above the rest (1.0 vs
/// 0.3 on the quickstart); an axis spanning them squeezes a late 0.95 → 1.00 change
/// into a few pixels. Raw points above the axis are drawn at its top edge.
fn loss_axis(raw: &[f64], smoothed: &[f64]) -> (f64, f64) {
    let lo = raw.iter().copied().fold(f64::INFINITY, f64::min);
    let skip = smoothed.len() / 10;
    let hi = smoothed[skip..].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let hi = if hi > lo { hi } else { lo + 1e-3_f64.max(lo.abs() * 1e-3) };
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-12);
    (lo - pad, hi + pad)
}

/// A tick label in scientific notation; ticks within rounding error of zero (plotters
/// computes them as multiples of a step: 1.4e-20 instead of 0) print as "0".
fn sci(v: f64, scale: f64) -> String {
    if v.abs() < scale.abs() * 1e-9 { "0".into() } else { format!("{v:.1e}") }
}

/// Draw the three panels of `recs` (sorted by step) into a `width × height` PNG at `path`.
pub fn write_loss_curve(path: &Path, recs: &[StepRecord], width: u32, height: u32) -> Result<()> {
    let img = render_curves(recs, width, height)?;
    save_png_atomic(&img, path)
}

/// The curves as an image (see [`write_loss_curve`]).
pub fn render_curves(recs: &[StepRecord], width: u32, height: u32) -> Result<RgbImage> {
    register_font();
    let recs: Vec<StepRecord> = recs.iter().copied().filter(|r| r.loss.is_finite()).collect();
    let mut buf = vec![255u8; (width * height * 3) as usize];
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing the loss curve: {e}");
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let panels = root.split_evenly((3, 1));
        let (x0, x1) = match (recs.first(), recs.last()) {
            (Some(a), Some(b)) => (a.step as f64, (b.step as f64).max(a.step as f64 + 1.0)),
            _ => (0.0, 1.0),
        };
        let font = |px: u32| (FONT_FAMILY, px).into_font();
        let raw: Vec<f64> = recs.iter().map(|r| r.loss as f64).collect();
        let sm = smooth(&raw);
        let steps: Vec<f64> = recs.iter().map(|r| r.step as f64).collect();

        // Panel 1: loss.
        let (y0, y1) = if raw.is_empty() { (0.0, 1.0) } else { loss_axis(&raw, &sm) };
        let mut c = ChartBuilder::on(&panels[0])
            .caption("masked-patch loss (zoomed: axis from the min to the smoothed max after 10% of the run)", font(15))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(&e))?;
        c.configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .label_style(font(12))
            .axis_desc_style(font(13))
            .y_label_formatter(&|v| format!("{v:.3}"))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| err(&e))?;
        let clamp = |v: f64| v.clamp(y0, y1);
        c.draw_series(LineSeries::new(steps.iter().zip(&raw).map(|(&s, &v)| (s, clamp(v))), RGBColor(150, 180, 230)))
            .map_err(|e| err(&e))?
            .label("raw")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RGBColor(150, 180, 230)));
        c.draw_series(LineSeries::new(steps.iter().zip(&sm).map(|(&s, &v)| (s, clamp(v))), RGBColor(200, 40, 40).stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("smoothed (running mean)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RGBColor(200, 40, 40).stroke_width(2)));
        c.configure_series_labels().label_font(font(12)).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| err(&e))?;

        // Panel 2: lr (left axis) and weight decay (right axis).
        // lr and wd are never negative: an axis below 0 would only show padding.
        let (l0, l1) = range(recs.iter().map(|r| r.lr));
        let (w0, w1) = range(recs.iter().map(|r| r.wd));
        let (l0, w0) = (l0.max(0.0), w0.max(0.0));
        let mut c = ChartBuilder::on(&panels[1])
            .caption("schedule: learning rate (blue, left) and weight decay (green, right)", font(15))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(60)
            .right_y_label_area_size(60)
            .build_cartesian_2d(x0..x1, l0..l1)
            .map_err(|e| err(&e))?
            .set_secondary_coord(x0..x1, w0..w1);
        c.configure_mesh()
            .x_desc("step")
            .y_desc("lr")
            .label_style(font(12))
            .axis_desc_style(font(13))
            .y_label_formatter(&|v| sci(*v, l1))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| err(&e))?;
        c.configure_secondary_axes()
            .y_desc("weight decay")
            .label_style(font(12))
            .axis_desc_style(font(13))
            .y_label_formatter(&|v| format!("{v:.3}"))
            .draw()
            .map_err(|e| err(&e))?;
        c.draw_series(LineSeries::new(recs.iter().map(|r| (r.step as f64, r.lr)), BLUE.stroke_width(2))).map_err(|e| err(&e))?;
        c.draw_secondary_series(LineSeries::new(recs.iter().map(|r| (r.step as f64, r.wd)), RGBColor(0, 140, 0).stroke_width(2)))
            .map_err(|e| err(&e))?;

        // Panel 3: throughput (mean since the run started, as logged).
        let (i0, i1) = range(recs.iter().map(|r| r.images_per_s));
        let mut c = ChartBuilder::on(&panels[2])
            .caption("throughput (mean since the start of this process)", font(15))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, i0.max(0.0)..i1)
            .map_err(|e| err(&e))?;
        c.configure_mesh()
            .x_desc("step")
            .y_desc("images/s")
            .label_style(font(12))
            .axis_desc_style(font(13))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| err(&e))?;
        c.draw_series(LineSeries::new(recs.iter().map(|r| (r.step as f64, r.images_per_s)), RGBColor(120, 60, 160).stroke_width(2)))
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    RgbImage::from_raw(width, height, buf).ok_or_else(|| anyhow!("loss curve buffer size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoomed_axis_ignores_the_first_steps_and_shows_a_small_late_change() {
        let mut raw = vec![5.0; 5];
        raw.extend((0..95).map(|i| if i < 50 { 1.0 } else { 0.95 }));
        let (lo, hi) = loss_axis(&raw, &smooth(&raw));
        assert!(lo < 0.95 && (1.0..1.1).contains(&hi), "axis {lo}..{hi}");
    }

    #[test]
    fn curves_render_with_text_and_lines() {
        let recs: Vec<StepRecord> = (0..40)
            .map(|s| StepRecord { step: s, loss: 1.0 / (1.0 + s as f32 * 0.1), lr: 1e-3 * s as f64 / 40.0, wd: 0.04 + 0.001 * s as f64, images_per_s: 10.0 + s as f64 })
            .collect();
        let img = render_curves(&recs, 600, 600).unwrap();
        let red = img.pixels().filter(|p| p.0 == [200, 40, 40]).count();
        let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 80)).count();
        assert!(red > 100, "smoothed loss line missing ({red} px)");
        assert!(dark > 2000, "axes and labels missing ({dark} dark px)");
    }
}
