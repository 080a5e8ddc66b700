//! End-to-end pre-training on tiny configurations: image folders with bad files,
//! resume equality, official checkpoints in, export out, and the errors users meet.

mod common;

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use spark_wgpu::gpu::GpuContext;
use spark_wgpu::io::golden::golden_dir;
use spark_wgpu::io::pth::load_state_dict;
use spark_wgpu::io::tensors::read_safetensors;
use spark_wgpu::model::{SparkConfig, SparkModel};
use spark_wgpu::optim::lamb::LambConfig;
use spark_wgpu::train::checkpoint::{self, read_any, state_dict};
use spark_wgpu::train::{CHECKPOINT_FILE, CURVE_FILE, LOG_FILE, PretrainConfig, pretrain};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

fn tiny_cfg(data: Option<PathBuf>, max_steps: usize) -> PretrainConfig {
    PretrainConfig { data, ..common::tiny_pretrain_config(max_steps) }
}

fn run(cfg: &PretrainConfig, dir: &Path, resume: bool) -> spark_wgpu::train::RunSummary {
    let ctx = GpuContext::new_default().unwrap();
    pretrain(&ctx, cfg, dir, resume, Arc::new(AtomicBool::new(false)), false).unwrap()
}

fn image_folder(dir: &Path) {
    for i in 0..5u8 {
        let img: RgbImage = ImageBuffer::from_fn(70 + i as u32 * 9, 60, |x, y| Rgb([(x * 2) as u8, (y * 4) as u8, i * 40]));
        img.save(dir.join(format!("img{i}.png"))).unwrap();
    }
    let gray: GrayImage = ImageBuffer::from_fn(80, 80, |x, _| Luma([(x * 3) as u8]));
    gray.save(dir.join("gray.png")).unwrap();
    let rgba: RgbaImage = ImageBuffer::from_fn(64, 90, |x, y| Rgba([x as u8, y as u8, 9, 128]));
    rgba.save(dir.join("rgba.png")).unwrap();
    std::fs::write(dir.join("corrupt.jpg"), b"\xff\xd8\xff\xe0 this is not a jpeg at all").unwrap();
}

#[test]
fn pretrains_on_a_folder_with_a_corrupt_and_a_grayscale_image() {
    let data = tempfile::tempdir().unwrap();
    image_folder(data.path());
    let out = tempfile::tempdir().unwrap();
    let r = run(&tiny_cfg(Some(data.path().into()), 3), out.path(), false);
    assert_eq!(r.steps_done, 3);
    assert_eq!(r.skipped_images, 1);
    assert!(r.last_loss.unwrap().is_finite());
    let log = std::fs::read_to_string(out.path().join(LOG_FILE)).unwrap();
    assert_eq!(log.lines().count(), 3);
    assert!(out.path().join(CURVE_FILE).exists());
    assert!(out.path().join(CHECKPOINT_FILE).exists());
}

#[test]
fn a_resumed_run_equals_the_uninterrupted_run_bit_for_bit() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(&tiny_cfg(None, 6), a.path(), false);
    run(&tiny_cfg(None, 3), b.path(), false);
    run(&tiny_cfg(None, 6), b.path(), true);
    let (ta, _) = read_safetensors(&a.path().join(CHECKPOINT_FILE)).unwrap();
    let (tb, mb) = read_safetensors(&b.path().join(CHECKPOINT_FILE)).unwrap();
    assert_eq!(mb.get("next_step").map(String::as_str), Some("6"));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, x) in &ta {
        assert_eq!(x, &tb[k], "{k} differs between the resumed and the uninterrupted run");
    }
    // The optimizer state travelled too.
    assert!(ta.keys().any(|k| k.starts_with("optimizer.exp_avg_sq.")));
}

fn golden_resnet_cfg() -> SparkConfig {
    SparkConfig::from_preset("resnet_tiny", 64, 32, 0.6).unwrap()
}

#[test]
fn official_pth_loads_exactly_and_exports_in_timm_naming() {
    let ctx = GpuContext::new_default().unwrap();
    let pth = golden_dir().join("resnet_basic_tiny_withdecoder_1kpretrained_spark_style.pth");
    let mut m = SparkModel::builder(&ctx, golden_resnet_cfg(), 2).optimizer(LambConfig::spark(0.95)).build().unwrap();
    let (t, _) = read_any(&pth).unwrap();
    let report = checkpoint::load(&mut m, &t, &pth, true).unwrap();
    assert!(report.missing.is_empty());
    let golden = spark_wgpu::io::golden::GoldenCase::load(&golden_dir().join("resnet_basic_tiny.safetensors")).unwrap();
    let inputs = golden.inputs();
    let sd = state_dict(&m).unwrap();
    for (name, t) in &sd {
        assert_eq!(t.to_f32(), inputs[name].to_f32(), "{name}");
    }
    // Save, export, and compare with the official timm-style encoder.
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck.safetensors");
    checkpoint::save(&m, &ck, &Default::default()).unwrap();
    let enc = dir.path().join("encoder.safetensors");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_spark-wgpu"))
        .args(["export", "--checkpoint", ck.to_str().unwrap(), "--out", enc.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let (exported, _) = read_safetensors(&enc).unwrap();
    let (timm, _) = load_state_dict(&golden_dir().join("resnet_basic_tiny_1kpretrained_timm_style.pth")).unwrap();
    assert_eq!(exported.keys().collect::<Vec<_>>(), timm.keys().collect::<Vec<_>>());
    for (k, v) in &timm {
        assert_eq!(exported[k].to_f32(), v.to_f32(), "{k}");
    }
}

#[test]
fn a_checkpoint_of_another_model_names_the_parameter_and_both_shapes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spark-wgpu"))
        .args(["pretrain", "--model", "resnet_tiny", "--input-size", "64", "--batch", "2", "--dec-width", "64", "--max-steps", "1"])
        .arg("--init-weights")
        .arg(golden_dir().join("resnet_basic_tiny_withdecoder_1kpretrained_spark_style.pth"))
        .arg("--out")
        .arg(tempfile::tempdir().unwrap().path().join("run"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dense_decoder.dec.0") && err.contains("[32, 32, 4, 4]") && err.contains("[64, 64, 4, 4]"), "{err}");
}

#[test]
fn a_truncated_checkpoint_is_reported_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let src = golden_dir().join("resnet_basic_tiny.safetensors");
    let bytes = std::fs::read(&src).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = format!("{:#}", read_any(&cut).unwrap_err());
    assert!(err.contains("cut.safetensors") && (err.contains("truncated") || err.contains("corrupt")), "{err}");
}

#[test]
fn an_empty_data_folder_says_what_was_searched() {
    let data = tempfile::tempdir().unwrap();
    let ctx = GpuContext::new_default().unwrap();
    let out = tempfile::tempdir().unwrap();
    let e = pretrain(&ctx, &tiny_cfg(Some(data.path().into()), 1), out.path(), false, Arc::new(AtomicBool::new(false)), false)
        .err()
        .unwrap();
    let msg = format!("{e:#}");
    assert!(msg.contains(&data.path().display().to_string()), "{msg}");
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let mut cfg = tiny_cfg(None, 6);
    cfg.base_lr = 1e35; // the first update destroys the parameters
    cfg.warmup_epochs = 0.0;
    cfg.save_every = Some(1);
    let ctx = GpuContext::new_default().unwrap();
    let e = pretrain(&ctx, &cfg, out.path(), false, Arc::new(AtomicBool::new(false)), false).err().expect("the run must stop");
    let msg = format!("{e:#}");
    assert!(msg.contains("loss became") && msg.contains("checkpoint"), "{msg}");
    // The checkpoint on disk is the one written after the last finite loss, and it loads.
    let (t, meta) = read_safetensors(&out.path().join(CHECKPOINT_FILE)).unwrap();
    let next: usize = meta["next_step"].parse().unwrap();
    assert!(next >= 1, "no good checkpoint was kept");
    let log = std::fs::read_to_string(out.path().join(LOG_FILE)).unwrap();
    let finite = log.lines().filter(|l| !l.contains("NaN") && !l.contains("inf") && !l.contains("null")).count();
    assert_eq!(next, finite, "checkpoint at step {next}, finite losses logged {finite}\n{log}");
    assert!(t.values().all(|x| x.to_f32().iter().all(|v| v.is_finite())));
}

#[test]
fn init_weights_matching_no_encoder_tensor_is_refused() {
    // A ConvNeXt checkpoint into a ResNet: nothing of the encoder fits.
    let out = tempfile::tempdir().unwrap();
    let mut cfg = tiny_cfg(None, 1);
    cfg.init_weights = Some(golden_dir().join("convnext_tiny_1kpretrained_timm_style.pth"));
    let ctx = GpuContext::new_default().unwrap();
    let err = format!("{:#}", pretrain(&ctx, &cfg, out.path(), false, Arc::new(AtomicBool::new(false)), false).err().unwrap());
    assert!(err.contains("convnext_tiny_1kpretrained_timm_style.pth") && err.contains("none of its"), "{err}");
}

#[test]
fn mask_ratio_ties_round_the_same_in_graph_and_loader() {
    // 3×3 patches at 96², ratio 0.5: 4.5 visible rounds to 4 in both (it used to stop at step 0).
    let out = tempfile::tempdir().unwrap();
    let mut cfg = tiny_cfg(None, 1);
    cfg.spark.input_size = 96;
    cfg.spark.mask_ratio = 0.5;
    let s = run(&cfg, out.path(), false);
    assert_eq!(s.steps_done, 1);
    assert!(s.last_loss.is_some_and(f32::is_finite));
}
