//! Mask sampling, the augmentation and the procedural images (no files, no GPU).

use image::{Rgb, RgbImage};
use rand_chacha::ChaCha8Rng;
use spark_wgpu::data::rng::stream;
use spark_wgpu::data::*;

fn rng(i: u64) -> ChaCha8Rng {
    stream(1234, 99, i, 0)
}

#[test]
fn mask_counts_are_exact() {
    // (f, mask ratio, visible per image) with the official round() (ties to even).
    for &(f, ratio, keep) in &[(7, 0.6, 20), (7, 0.75, 12), (2, 0.6, 2), (2, 0.75, 1), (4, 0.0, 16), (1, 0.4, 1)] {
        assert_eq!(len_keep(f, ratio), keep, "f={f} ratio={ratio}");
        let m = sample_mask(&mut rng(f as u64), 5, f, ratio);
        assert_eq!(m.len(), 5 * f * f);
        for b in 0..5 {
            let row = &m[b * f * f..(b + 1) * f * f];
            assert!(row.iter().all(|&v| v <= 1));
            assert_eq!(row.iter().map(|&v| v as usize).sum::<usize>(), keep, "f={f} ratio={ratio} image {b}");
        }
    }
}

#[test]
fn mask_is_uniform_and_seeded() {
    let (f, trials) = (7, 4000);
    let m = sample_mask(&mut rng(0), trials, f, 0.6);
    assert_eq!(m, sample_mask(&mut rng(0), trials, f, 0.6));
    assert_ne!(m, sample_mask(&mut rng(1), trials, f, 0.6));
    // Each patch is visible with probability 20/49; 4000 trials: sd ≈ 31, allow 5 sd.
    let expect = trials as f64 * 20.0 / 49.0;
    for p in 0..f * f {
        let c = (0..trials).filter(|&b| m[b * f * f + p] == 1).count() as f64;
        assert!((c - expect).abs() < 160.0, "patch {p}: {c} vs {expect}");
    }
}

#[test]
fn crop_params_within_bounds() {
    let shapes = [(500, 375), (375, 500), (224, 224), (64, 300), (300, 40), (1000, 50), (7, 5), (1, 1), (2, 9)];
    for &(w, h) in &shapes {
        let mut fallbacks = 0;
        for i in 0..500 {
            let b = random_resized_crop_params(w, h, &mut rng(i));
            assert!(b.w >= 1 && b.h >= 1 && b.x + b.w <= w && b.y + b.h <= h, "{w}x{h}: {b:?}");
            let (bw, bh) = (b.w as f64, b.h as f64);
            // Rounded sides: allow half a pixel of slack on each.
            let area_lo = (bw - 0.5).max(0.0) * (bh - 0.5).max(0.0) / (w * h) as f64;
            let area_hi = (bw + 0.5) * (bh + 0.5) / (w * h) as f64;
            let ratio_lo = (bw - 0.5) / (bh + 0.5);
            let ratio_hi = (bw + 0.5) / (bh - 0.5).max(1e-9);
            let in_bounds = area_hi >= CROP_SCALE.0
                && area_lo <= CROP_SCALE.1
                && ratio_hi >= CROP_RATIO.0
                && ratio_lo <= CROP_RATIO.1;
            if !in_bounds {
                // Only torchvision's centre-crop fallback may leave the bounds.
                fallbacks += 1;
                assert_eq!((b.x, b.y), ((w - b.w) / 2, (h - b.h) / 2), "{w}x{h}: {b:?}");
            }
        }
        if (w, h) == (500, 375) || (w, h) == (224, 224) {
            assert_eq!(fallbacks, 0, "{w}x{h}");
        }
    }
    // A very wide image never fits: fallback to height × round(height * 4/3), centred.
    let b = random_resized_crop_params(1000, 50, &mut rng(0));
    assert_eq!(b, CropBox { x: 466, y: 0, w: 67, h: 50 });
    // Area fractions cover the range (the draw is not stuck at one end).
    let fr: Vec<f64> = (0..300)
        .map(|i| {
            let b = random_resized_crop_params(400, 400, &mut rng(i));
            (b.w * b.h) as f64 / 160000.0
        })
        .collect();
    assert!(fr.iter().any(|&a| a < 0.72) && fr.iter().any(|&a| a > 0.95));
}

fn expected(c: [u8; 3]) -> [f32; 3] {
    std::array::from_fn(|i| (c[i] as f32 / 255.0 - IMAGENET_MEAN[i]) / IMAGENET_STD[i])
}

#[test]
fn augment_constant_image() {
    let c = [10u8, 128, 250];
    for &(w, h, size) in &[(300u32, 200u32, 64u32), (20, 20, 64), (64, 64, 64), (33, 70, 32)] {
        let img = RgbImage::from_pixel(w, h, Rgb(c));
        let out = augment(&img, size, &mut rng(w as u64));
        assert_eq!(out.len(), (size * size * 3) as usize);
        let e = expected(c);
        for (i, &v) in out.iter().enumerate() {
            assert_eq!(v, e[i % 3], "{w}x{h} element {i}");
        }
        let cc = center_crop_normalized(&img, size);
        assert_eq!(cc.len(), (size * size * 3) as usize);
        assert!(cc.iter().enumerate().all(|(i, &v)| v == e[i % 3]));
    }
}

#[test]
fn augment_is_seeded_and_flips() {
    // Left half black, right half white: the flip decides which side is bright.
    let img = RgbImage::from_fn(200, 160, |x, _| if x < 100 { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) });
    let size = 32usize;
    let (mut flipped, mut plain) = (0, 0);
    for i in 0..40 {
        let a = augment(&img, size as u32, &mut rng(i));
        assert_eq!(a, augment(&img, size as u32, &mut rng(i)));
        let left = a[0];
        let right = a[(size - 1) * 3];
        if left > right { flipped += 1 } else { plain += 1 }
    }
    assert!(flipped > 5 && plain > 5, "flipped {flipped}, plain {plain}");
}

#[test]
fn normalize_layout_and_flip() {
    let img = RgbImage::from_fn(3, 2, |x, y| Rgb([x as u8 * 50, y as u8 * 100, 7]));
    let n = normalize(&img, false);
    let f = normalize(&img, true);
    assert_eq!(n.len(), 18);
    // channels-last [h, w, 3]: pixel (x 2, y 1) is element (1 * 3 + 2) * 3
    assert_eq!(n[(3 + 2) * 3], expected([100, 100, 7])[0]);
    assert_eq!(n[(3 + 2) * 3 + 1], expected([100, 100, 7])[1]);
    for y in 0..2 {
        for x in 0..3 {
            for c in 0..3 {
                assert_eq!(f[(y * 3 + x) * 3 + c], n[(y * 3 + (2 - x)) * 3 + c]);
            }
        }
    }
}

#[test]
fn center_crop_takes_the_middle() {
    // 96×32 image, thirds red/green/blue: resize to 96×32 (already short side 32), the centre 32×32 is green.
    let img = RgbImage::from_fn(96, 32, |x, _| match x / 32 {
        0 => Rgb([255, 0, 0]),
        1 => Rgb([0, 255, 0]),
        _ => Rgb([0, 0, 255]),
    });
    let out = center_crop_normalized(&img, 32);
    let g = expected([0, 255, 0]);
    assert!(out.iter().enumerate().all(|(i, &v)| v == g[i % 3]));
}

#[test]
fn procedural_images_are_deterministic_and_structured() {
    let src = ProceduralSource::new(10, 64, 7);
    assert_eq!(src.len(), 10);
    for i in 0..10 {
        let a = src.load(i).unwrap();
        assert_eq!(a, src.load(i).unwrap());
        assert!((64..=96).contains(&a.width()) && (64..=96).contains(&a.height()));
        let mut colors: Vec<[u8; 3]> = a.pixels().map(|p| p.0).collect();
        colors.sort();
        colors.dedup();
        assert!(colors.len() >= 3, "image {i} has {} colours", colors.len());
    }
    assert_ne!(src.load(0).unwrap(), src.load(1).unwrap());
    assert_ne!(src.load(0).unwrap(), ProceduralSource::new(10, 64, 8).load(0).unwrap());
    assert!(src.load(10).is_err());
}
