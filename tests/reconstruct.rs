//! `spark-wgpu reconstruct` on an official checkpoint and on one of our own: a PNG with
//! one row of four panels per image, the pasted panel equal to the input on visible
//! patches, the masked panel grey on masked ones, and per-image losses as JSON.

use image::{ImageBuffer, Rgb, RgbImage};
use spark_wgpu::gpu::GpuContext;
use spark_wgpu::io::golden::golden_dir;
use spark_wgpu::model::SparkConfig;
use spark_wgpu::train::{CHECKPOINT_FILE, PretrainConfig, pretrain};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

fn reconstruct(checkpoint: &Path, dir: &Path, mask: &str) -> (RgbImage, serde_json::Value) {
    let imgs: Vec<_> = (0..2u8)
        .map(|i| {
            let p = dir.join(format!("in{i}.png"));
            let img: RgbImage = ImageBuffer::from_fn(90, 70, |x, y| Rgb([(x * 2) as u8, (y * 3) as u8, i * 90]));
            img.save(&p).unwrap();
            p
        })
        .collect();
    let out = dir.join("grid.png");
    let json = dir.join("rec.json");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_spark-wgpu"))
        .arg("reconstruct")
        .arg("--checkpoint")
        .arg(checkpoint)
        .arg("--image")
        .args(&imgs)
        .args(["--mask", mask, "--out"])
        .arg(&out)
        .arg("--json")
        .arg(&json)
        .status()
        .unwrap();
    assert!(status.success());
    let j = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (image::open(out).unwrap().to_rgb8(), j)
}

fn check_panels(grid: &RgbImage, size: u32, mask: &str) {
    assert_eq!(grid.dimensions(), (4 * size, 2 * size));
    let f = size / 32;
    for row in 0..2 {
        for y in 0..size {
            for x in 0..size {
                let visible = mask.as_bytes()[((y / 32) * f + x / 32) as usize] == b'1';
                let gy = row * size + y;
                let input = grid.get_pixel(x, gy);
                let masked = grid.get_pixel(size + x, gy);
                let pasted = grid.get_pixel(3 * size + x, gy);
                let rec = grid.get_pixel(2 * size + x, gy);
                if visible {
                    assert_eq!(pasted, input, "pasted panel differs from the input at a visible pixel");
                    assert_eq!(masked, input);
                } else {
                    assert_eq!(masked, &Rgb([128, 128, 128]));
                    assert_eq!(pasted, rec);
                }
            }
        }
    }
}

#[test]
fn reconstructs_with_an_official_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let pth = golden_dir().join("resnet_basic_tiny_withdecoder_1kpretrained_spark_style.pth");
    let (grid, json) = reconstruct(&pth, dir.path(), "1001");
    check_panels(&grid, 64, "1001");
    let losses = json["images"].as_array().unwrap();
    assert_eq!(losses.len(), 2);
    assert!(losses.iter().all(|l| l["masked_patch_loss"].as_f64().unwrap().is_finite()));
}

#[test]
fn reconstructs_with_a_checkpoint_of_a_short_run() {
    let run = tempfile::tempdir().unwrap();
    let cfg = PretrainConfig {
        model: "convnext_pico".into(),
        spark: SparkConfig::from_preset("convnext_pico", 64, 32, 0.6).unwrap(),
        data: None,
        procedural_images: 8,
        batch: 2,
        epochs: 1,
        max_steps: Some(2),
        base_lr: 1e-3,
        warmup_epochs: 0.0,
        weight_decay: 0.04,
        weight_decay_end: 0.2,
        beta2: 0.999,
        seed: 1,
        workers: 1,
        init_weights: None,
        save_every: None,
        drop_path: 0.1,
        viz_every: None,
        tensorboard: false,
        sync_bn: true,
    };
    let ctx = GpuContext::new_default().unwrap();
    pretrain(&ctx, &cfg, run.path(), false, Arc::new(AtomicBool::new(false)), false).unwrap();
    let (grid, _) = reconstruct(&run.path().join(CHECKPOINT_FILE), run.path(), "0110");
    check_panels(&grid, 64, "0110");
}
