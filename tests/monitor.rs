//! What a user watches during a run: TensorBoard scalars (read back through the record
//! framing and CRCs), `--viz-every` reconstruction grids (deterministic, titled), and
//! the three-panel loss.png.

mod common;

use image::{Rgb, RgbImage};
use spark_wgpu::gpu::GpuContext;
use spark_wgpu::sparse::PatchMask;
use spark_wgpu::train::tensorboard::{EventWriter, TB_DIR, read_events};
use spark_wgpu::train::viz::{Reconstruction, TITLE_BAND, VIZ_DIR, VIZ_IMAGES, render_grid, render_titled_grid};
use spark_wgpu::train::{CURVE_FILE, CURVE_SIZE, LOG_FILE, PretrainConfig, pretrain};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

fn cfg(max_steps: usize) -> PretrainConfig {
    PretrainConfig { procedural_images: 8, seed: 5, viz_every: Some(2), tensorboard: true, ..common::tiny_pretrain_config(max_steps) }
}

fn run(cfg: &PretrainConfig, dir: &Path) -> spark_wgpu::train::RunSummary {
    let ctx = GpuContext::new_default().unwrap();
    pretrain(&ctx, cfg, dir, false, Arc::new(AtomicBool::new(false)), false).unwrap()
}

fn event_file(dir: &Path) -> std::path::PathBuf {
    let files: Vec<_> = std::fs::read_dir(dir.join(TB_DIR)).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].file_name().unwrap().to_str().unwrap().contains("tfevents"));
    files[0].clone()
}

#[test]
fn a_run_writes_tensorboard_scalars_viz_grids_and_a_summary() {
    let a = tempfile::tempdir().unwrap();
    let r = run(&cfg(5), a.path());
    // TensorBoard: every logged step's scalars, equal to log.jsonl's values.
    let events = read_events(&event_file(a.path())).unwrap();
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    let log: Vec<serde_json::Value> = std::fs::read_to_string(a.path().join(LOG_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(log.len(), 5);
    let steps: Vec<_> = events.iter().filter(|e| e.scalars.iter().any(|s| s.0 == "loss")).collect();
    assert_eq!(steps.len(), 5);
    for (e, l) in steps.iter().zip(&log) {
        assert_eq!(e.step, l["step"].as_i64().unwrap());
        let get = |t: &str| e.scalars.iter().find(|s| s.0 == t).unwrap_or_else(|| panic!("no {t}")).1;
        for t in ["loss", "lr", "wd", "images_per_s"] {
            let want = l[t].as_f64().unwrap() as f32;
            assert_eq!(get(t), want, "{t} at step {}", e.step);
        }
        let gn = get("grad_norm");
        assert!(gn.is_finite() && gn > 0.0, "grad_norm {gn}");
    }
    let viz_losses: Vec<_> = events.iter().filter_map(|e| e.scalars.iter().find(|s| s.0 == "viz_loss").map(|s| (e.step, s.1))).collect();
    assert_eq!(viz_losses.iter().map(|v| v.0).collect::<Vec<_>>(), [2, 4, 5]);
    assert!(viz_losses.iter().all(|v| v.1.is_finite()));

    // --viz-every 2 over 5 steps: steps 2, 4 and the last.
    let names = |d: &Path| {
        let mut v: Vec<String> =
            std::fs::read_dir(d.join(VIZ_DIR)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    assert_eq!(names(a.path()), ["step_0000002.png", "step_0000004.png", "step_0000005.png"]);
    let g = image::open(a.path().join(VIZ_DIR).join("step_0000004.png")).unwrap().to_rgb8();
    assert_eq!(g.dimensions(), (4 * 64, VIZ_IMAGES as u32 * 64 + 2 * TITLE_BAND));
    // The same held-out images improve, under the same mask: grey (masked) panel pixels
    // are identical across steps, the reconstruction panel differs.
    let g2 = image::open(a.path().join(VIZ_DIR).join("step_0000002.png")).unwrap().to_rgb8();
    let panel = |img: &RgbImage, c: u32| -> Vec<Rgb<u8>> {
        (TITLE_BAND..TITLE_BAND + 64 * VIZ_IMAGES as u32).flat_map(|y| (0..64).map(move |x| (x, y))).map(|(x, y)| *img.get_pixel(c * 64 + x, y)).collect()
    };
    // (assert! rather than assert_eq!: a failure must not print 16k pixels.)
    assert!(panel(&g, 0) == panel(&g2, 0), "input panel changed between steps");
    assert!(panel(&g, 1) == panel(&g2, 1), "mask changed between steps");
    // Two tiny-lr warm-up steps move the reconstruction by less than one 8-bit level,
    // so the change is checked on the held-out loss of the same images.
    assert!(viz_losses[0].1 != viz_losses[1].1, "held-out loss did not change: {viz_losses:?}");

    // Deterministic: a second identical run writes byte-identical grids.
    let b = tempfile::tempdir().unwrap();
    run(&cfg(5), b.path());
    for n in names(a.path()) {
        let x = std::fs::read(a.path().join(VIZ_DIR).join(&n)).unwrap();
        let y = std::fs::read(b.path().join(VIZ_DIR).join(&n)).unwrap();
        assert!(x == y, "{n} differs between two identical runs");
    }

    // loss.png: three panels with text, and the summary lists everything.
    let curve = image::open(a.path().join(CURVE_FILE)).unwrap().to_rgb8();
    assert_eq!(curve.dimensions(), CURVE_SIZE);
    let what: Vec<_> = r.outputs.iter().map(|o| o.0).collect();
    assert_eq!(what, ["config", "log", "checkpoint", "loss curve", "TensorBoard events", "latest reconstruction grid"]);
    assert!(r.outputs.iter().all(|o| o.1.exists()), "{:?}", r.outputs);
    assert_eq!(r.tensorboard_dir.as_deref(), Some(a.path().join(TB_DIR).as_path()));
}

#[test]
fn no_tensorboard_and_no_viz_write_neither() {
    let a = tempfile::tempdir().unwrap();
    let mut c = cfg(2);
    c.tensorboard = false;
    c.viz_every = None;
    let r = run(&c, a.path());
    assert!(!a.path().join(TB_DIR).exists());
    assert!(!a.path().join(VIZ_DIR).exists());
    assert!(r.tensorboard_dir.is_none());
}

#[test]
fn event_file_round_trips_and_detects_corruption() {
    let d = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(d.path()).unwrap();
    w.scalars(0, &[("loss", 1.25), ("lr", 3e-4)]).unwrap();
    w.scalars(300, &[("loss", -0.0), ("grad_norm", f32::INFINITY)]).unwrap();
    w.scalars(1 << 40, &[("x", 7.0)]).unwrap();
    let path = w.path.clone();
    drop(w);
    let e = read_events(&path).unwrap();
    assert_eq!(e.len(), 4);
    assert!(e[0].scalars.is_empty() && e[0].wall_time > 1.6e9);
    assert_eq!(e[1].step, 0);
    assert_eq!(e[1].scalars, [("loss".to_string(), 1.25), ("lr".to_string(), 3e-4)]);
    assert_eq!(e[2].step, 300);
    assert_eq!(e[2].scalars[0].1.to_bits(), (-0.0f32).to_bits());
    assert_eq!(e[2].scalars[1].1, f32::INFINITY);
    assert_eq!(e[3].step, 1 << 40);

    // Every byte of the file is covered by a CRC or the framing: any flip is an error.
    let bytes = std::fs::read(&path).unwrap();
    for i in [0, 9, 13, bytes.len() / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[i] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        let err = read_events(&path).unwrap_err().to_string();
        assert!(err.contains("CRC") || err.contains("truncated"), "byte {i}: {err}");
    }
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    assert!(read_events(&path).unwrap_err().to_string().contains("truncated"));
}

#[test]
fn titled_grid_keeps_the_panels_and_adds_titles_and_caption() {
    let (s, b) = (64usize, 2usize);
    let f = s / 32;
    let inputs: Vec<f32> = (0..b * s * s * 3).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect();
    let rec: Vec<f32> = (0..b * s * s * 3).map(|i| ((i % 13) as f32 / 6.0) - 1.0).collect();
    let mask = PatchMask::new(b, f, f, vec![1, 0, 0, 1, 0, 1, 1, 0]);
    let r = Reconstruction { size: s, inputs, rec, mask, losses: vec![0.5, 0.5] };
    let plain = render_grid(&r);
    let titled = render_titled_grid(&r, "step 7   held-out masked-patch loss 0.5000").unwrap();
    assert_eq!(titled.dimensions(), (plain.width(), plain.height() + 2 * TITLE_BAND));
    for y in 0..plain.height() {
        for x in 0..plain.width() {
            assert!(plain.get_pixel(x, y) == titled.get_pixel(x, y + TITLE_BAND), "panel pixel ({x}, {y}) changed");
        }
    }
    let dark_in = |y0: u32, x0: u32, x1: u32| {
        (y0..y0 + TITLE_BAND).flat_map(|y| (x0..x1).map(move |x| (x, y))).filter(|&(x, y)| titled.get_pixel(x, y).0.iter().all(|&c| c < 100)).count()
    };
    for c in 0..4 {
        assert!(dark_in(0, c * s as u32, (c + 1) * s as u32) > 10, "column {c} has no title");
    }
    assert!(dark_in(titled.height() - TITLE_BAND, 0, titled.width()) > 30, "no caption");
    // Deterministic rendering.
    assert!(titled == render_titled_grid(&r, "step 7   held-out masked-patch loss 0.5000").unwrap());
}
