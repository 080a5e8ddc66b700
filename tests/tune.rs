//! Kernel tuning end to end (issue 8 item 3): choices timed once and cached per adapter,
//! recorded in the run directory and replayed by `--resume` (bit-identical whatever the
//! cache or the mode says then), and `--tune cycle` running every variant of the table
//! through training steps.

mod common;

use spark_wgpu::gpu::{AdapterChoice, GpuContext};
use spark_wgpu::io::tensors::read_safetensors;
use spark_wgpu::model::SparkModel;
use spark_wgpu::optim::lamb::LambConfig;
use spark_wgpu::train::{CHECKPOINT_FILE, KERNEL_CHOICES_FILE, pretrain, read_kernel_choices};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

fn ctx(kernels: &str, tune: &str) -> GpuContext {
    GpuContext::new(&AdapterChoice { kernels: Some(kernels.into()), tune: Some(tune.into()), ..Default::default() }).unwrap()
}

fn run(ctx: &GpuContext, dir: &Path, steps: usize, resume: bool) {
    let cfg = common::tiny_pretrain_config(steps);
    pretrain(ctx, &cfg, dir, resume, Arc::new(AtomicBool::new(false)), false).unwrap();
}

/// One test (it sets the cache directory of the process): tune, cache, replay.
#[test]
fn tuned_choices_are_cached_recorded_and_replayed_on_resume() {
    let cache = tempfile::tempdir().unwrap();
    // SAFETY: the only test of this binary; no other thread reads the environment.
    unsafe { std::env::set_var("SPARK_WGPU_CACHE_DIR", cache.path()) };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    // Cold: every conv pass with more than one candidate is timed, the cache written.
    let full = ctx("auto", "full");
    run(&full, b.path(), 3, false);
    let r = full.tuner.report();
    assert!(r.timed > 0 && r.cached == 0, "{r:?}");
    assert!(cache.path().join("kernels.json").exists(), "no cache written");
    let (family, recorded) = read_kernel_choices(b.path()).unwrap();
    assert_eq!(family.as_deref(), Some(full.kernel_set.name()));
    assert!(b.path().join(KERNEL_CHOICES_FILE).exists() && !recorded.is_empty());
    assert_eq!(recorded, full.tuner.choices(), "the run records every choice its graph made");

    // Warm: the same choices from the cache, nothing timed.
    let cached = ctx("auto", "cached");
    run(&cached, a.path(), 6, false);
    let r = cached.tuner.report();
    assert_eq!(r.timed, 0, "{r:?}");
    assert!(r.cached > 0, "{r:?}");
    assert_eq!(cached.tuner.choices(), recorded);

    // Resumed under a mode that would choose otherwise: the record wins, and the run
    // ends where the uninterrupted one did, bit for bit.
    let cycle = ctx("auto", "cycle");
    run(&cycle, b.path(), 6, true);
    assert!(cycle.tuner.report().replayed > 0);
    assert_eq!(cycle.tuner.choices(), recorded);
    let (ta, _) = read_safetensors(&a.path().join(CHECKPOINT_FILE)).unwrap();
    let (tb, _) = read_safetensors(&b.path().join(CHECKPOINT_FILE)).unwrap();
    for (k, x) in &ta {
        assert_eq!(x, &tb[k], "{k} differs between the resumed and the uninterrupted run");
    }

    // A corrupt record is an error naming the file, not a silent re-tune.
    std::fs::write(b.path().join(KERNEL_CHOICES_FILE), b"{\"choices\": [1, 2]}").unwrap();
    let e = read_kernel_choices(b.path()).unwrap_err().to_string();
    assert!(e.contains(KERNEL_CHOICES_FILE), "{e}");

    // `cycle` on the GPU family: the staged block kernels run through training steps
    // (they give the register kernel's bits; the weight-gradient alternatives sum in
    // another order, so the losses agree closely, not exactly).
    let losses = |c: &GpuContext| {
        let cfg = common::tiny_pretrain_config(1).spark;
        let mut m = SparkModel::builder(c, cfg, 2).optimizer(LambConfig::spark(0.95)).init_seed(5).build().unwrap();
        common::three_random_steps(c, &mut m, |_| {})
    };
    let (fixed, cyc) = (ctx("gpu", "off"), ctx("gpu", "cycle"));
    let (l0, l1) = (losses(&fixed), losses(&cyc));
    let names: std::collections::BTreeSet<String> = cyc.tuner.choices().into_values().collect();
    assert!(names.iter().any(|n| n.starts_with("conv_b64")), "cycle never ran a staged kernel: {names:?}");
    for (x, y) in l0.iter().zip(&l1) {
        assert!(x.is_finite() && (x - y).abs() <= 1e-4 * x.abs().max(1.0), "losses {l0:?} (fixed rule) vs {l1:?} (cycle)");
    }
}
