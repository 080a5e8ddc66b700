//! The loss-curve PNG of a run: a plain line chart (raw loss and a running mean) drawn
//! into an `image` buffer, with no font or plotting dependency.

use anyhow::{Context as _, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb<u8>) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// Draw `losses` (step, loss) into a `width × height` PNG at `path`.
pub fn write_loss_curve(path: &Path, losses: &[(usize, f32)], width: u32, height: u32) -> Result<()> {
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let (l, r, t, b) = (40.0, width as f64 - 10.0, 10.0, height as f64 - 30.0);
    let axis = Rgb([0, 0, 0]);
    line(&mut img, (l, t), (l, b), axis);
    line(&mut img, (l, b), (r, b), axis);
    let pts: Vec<(f64, f64)> = losses.iter().filter(|p| p.1.is_finite()).map(|&(s, v)| (s as f64, v as f64)).collect();
    if pts.len() >= 2 {
        let (xmin, xmax) = (pts[0].0, pts[pts.len() - 1].0.max(pts[0].0 + 1.0));
        let ymin = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let ymax = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max).max(ymin + 1e-9);
        let map = |(x, y): (f64, f64)| (l + (x - xmin) / (xmax - xmin) * (r - l), b - (y - ymin) / (ymax - ymin) * (b - t));
        // Light grid: quarters of the loss range.
        for q in 1..4 {
            let y = b - (b - t) * q as f64 / 4.0;
            line(&mut img, (l + 1.0, y), (r, y), Rgb([225, 225, 225]));
        }
        for w in pts.windows(2) {
            line(&mut img, map(w[0]), map(w[1]), Rgb([150, 180, 230]));
        }
        // Running mean over ~2% of the run.
        let k = (pts.len() / 50).max(1);
        let smooth: Vec<(f64, f64)> = (0..pts.len())
            .map(|i| {
                let lo = i.saturating_sub(k);
                let s: f64 = pts[lo..=i].iter().map(|p| p.1).sum();
                (pts[i].0, s / (i - lo + 1) as f64)
            })
            .collect();
        for w in smooth.windows(2) {
            line(&mut img, map(w[0]), map(w[1]), Rgb([200, 40, 40]));
        }
    }
    crate::io::atomic::write_atomic_with(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png).with_context(|| format!("writing {}", tmp.display()))
    })
    .with_context(|| format!("writing {}", path.display()))
}
