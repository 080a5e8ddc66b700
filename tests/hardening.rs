//! Issue 9 hardening (items 6, 10, 11, 13): options refused at parse time with their name
//! and range, resume honours the schedule options and refuses the rest by name, a resumed
//! run drops log lines its checkpoint does not cover and removes stale temporaries.

use std::path::Path;
use std::process::{Command, Output};

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spark-wgpu")).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const TINY: &[&str] = &[
    "pretrain", "--model", "resnet_tiny", "--input-size", "64", "--dec-width", "32", "--batch", "4",
    "--procedural-images", "16", "--epochs", "2", "--workers", "1", "--quiet",
];

fn tiny(out: &Path, extra: &[&str]) -> Output {
    let mut a: Vec<&str> = TINY.to_vec();
    a.extend(["--out", out.to_str().unwrap()]);
    a.extend(extra);
    bin(&a)
}

#[test]
fn bad_options_are_refused_at_parse_time_naming_option_and_range() {
    for (opt, v, range) in [
        ("--drop-path", "1.5", "[0, 1)"),
        ("--drop-path", "nan", "[0, 1)"),
        ("--drop-path", "-0.1", "[0, 1)"),
        ("--base-lr", "nan", "> 0"),
        ("--beta2", "1.5", "(0, 1)"),
        ("--weight-decay", "nan", "≥ 0"),
        ("--warmup-epochs", "-1", "≥ 0"),
        ("--save-every", "0", "≥ 1"),
        ("--mask-ratio", "0", "(0, 1)"),
        ("--batch", "1", "≥ 2"),
    ] {
        let o = bin(&["pretrain", opt, v]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{opt} {v}: {e}");
        assert!(e.contains(opt) && e.contains(range), "{opt} {v}: {e}");
        assert!(!e.contains("panicked"), "{e}");
    }
}

#[test]
fn resume_honours_schedule_options_refuses_others_and_truncates_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = tiny(&run, &["--max-steps", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = run.to_str().unwrap();

    // Options that fix the graph or the data order are refused by name.
    let o = bin(&["pretrain", "--resume", r, "--batch", "8"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--batch cannot change"), "{}", stderr(&o));

    // A kill -9 after logging step 2 but before its checkpoint, mid-write of a checkpoint.
    let log = run.join("log.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("{\"step\":2,\"loss\":1.0}\n{\"step\":3,\"lo");
    std::fs::write(&log, text).unwrap();
    let stale = run.join(".checkpoint.safetensors.XyZ123.tmp");
    std::fs::write(&stale, vec![0u8; 1000]).unwrap();

    let o = bin(&["pretrain", "--resume", r, "--max-steps", "3", "--base-lr", "1e-4", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stale.exists(), "stale temporary kept");
    let steps: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .collect();
    assert_eq!(steps, vec![0, 1, 2], "the log repeats or loses a step");
    let cfg = spark_wgpu::train::read_run_config(&run).unwrap();
    assert_eq!((cfg.base_lr, cfg.max_steps), (1e-4, Some(3)));

    // The kernel family is part of the run: resuming under another one is refused, naming
    // the flag that replays it (the first run took this adapter's own family).
    let other = if spark_wgpu::gpu::GpuContext::new_default().unwrap().kernel_set.name() == "cpu" { "gpu" } else { "cpu" };
    let o = bin(&["pretrain", "--resume", r, "--max-steps", "3", "--kernels", other, "--quiet"]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("kernel family") && e.contains("--kernels "), "{e}");

    // Nothing left to do says so plainly.
    let o = bin(&["pretrain", "--resume", r]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("nothing to do") && !e.contains("Some("), "{e}");
}

#[test]
fn a_complete_first_checkpoint_left_as_a_temporary_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert!(tiny(&run, &["--max-steps", "1"]).status.success());
    // As if killed between the fsync and the rename of the first checkpoint.
    let ck = run.join("checkpoint.safetensors");
    std::fs::rename(&ck, run.join(".checkpoint.safetensors.abc.tmp")).unwrap();
    let o = bin(&["pretrain", "--resume", run.to_str().unwrap(), "--max-steps", "2", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("recovered"), "{}", stderr(&o));

    // A torn temporary is not adopted, and the message says what was found.
    std::fs::remove_file(&ck).unwrap();
    std::fs::write(run.join(".checkpoint.safetensors.def.tmp"), b"\x10\0\0\0\0\0\0\0{\"a\":").unwrap();
    let o = bin(&["pretrain", "--resume", run.to_str().unwrap(), "--max-steps", "3"]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("cut short"), "{e}");
}

#[test]
fn no_driver_noise_on_a_headless_machine() {
    let o = Command::new(env!("CARGO_BIN_EXE_spark-wgpu"))
        .arg("devices")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DISPLAY")
        .env_remove("NODEVICE_SELECT")
        .output()
        .unwrap();
    assert!(!stderr(&o).contains("XDG_RUNTIME_DIR"), "{}", stderr(&o));
}

/// Item 4: a batch over what the adapter can hold is refused before anything large is
/// allocated, and the batch the message names does fit (and one more does not). Ops over
/// the per-binding limit run in chunks of images (tests/training.rs), so what refuses a
/// batch is a buffer over `max_buffer_size`; both limits are lowered on the context so the
/// case is small on every adapter.
#[test]
fn a_batch_over_the_buffer_limit_is_refused_before_allocating_naming_a_batch_that_fits() {
    use spark_wgpu::gpu::GpuContext;
    use spark_wgpu::model::{SparkConfig, SparkModel};
    use spark_wgpu::optim::lamb::LambConfig;
    let mut ctx = GpuContext::new_default().unwrap();
    ctx.limits.max_storage_buffer_binding_size = 4 << 20;
    ctx.limits.max_buffer_size = 8 << 20;
    fn builder<'c>(ctx: &'c GpuContext, b: usize) -> spark_wgpu::model::SparkBuilder<'c> {
        let cfg = SparkConfig::from_preset("resnet_tiny", 64, 32, 0.6).unwrap();
        SparkModel::builder(ctx, cfg, b).optimizer(LambConfig::spark(0.95))
    }
    fn build<'c>(ctx: &'c GpuContext, b: usize) -> anyhow::Result<SparkModel<'c>> {
        builder(ctx, b).build()
    }
    // The decoder's transposed-conv map at 64² ([B·4096, 16] i32) is over 8 MiB from batch 33 on.
    let batch = 120;
    let before = ctx.allocated_bytes();
    let err = build(&ctx, batch).err().expect("batch 120 must not fit 8 MiB buffers").to_string();
    assert_eq!(ctx.allocated_bytes(), before, "the refusal allocated buffers: {err}");
    assert!(err.contains("batch 120") && err.contains("max_buffer_size") && err.contains("8.0 MiB"), "{err}");
    let fits: usize = err
        .split("use --batch ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no batch suggested: {err}"));
    assert!((1..33).contains(&fits), "suggested batch {fits}: {err}");
    let misfit = |b: usize| {
        builder(&ctx, b).dry_run().unwrap().misfit(&ctx)
    };
    assert_eq!(misfit(fits), None, "the suggested batch {fits} does not fit");
    assert!(misfit(fits + 1).is_some(), "batch {} fits too: the suggestion is not the largest", fits + 1);
    // And the suggested batch really builds and binds without a wgpu error.
    let m = build(&ctx, fits).unwrap();
    ctx.check("building the suggested batch").unwrap();
    drop(m);
    // A CPU adapter allocates host memory: a graph over what is available is refused the
    // same way (the budget is lowered to what batch 8 needs).
    let need_8 = builder(&ctx, 8).dry_run().unwrap().needed_bytes();
    ctx.memory_budget = Some(need_8);
    let err = build(&ctx, 16).err().expect("batch 16 must not fit batch 8's memory").to_string();
    assert!(err.contains("batch 16") && err.contains("host memory") && err.contains("use --batch 8"), "{err}");
}
