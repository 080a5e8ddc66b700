//! `spark-wgpu parity CASE.safetensors [--dump OUT.safetensors]`.

use anyhow::{Result, bail};
use std::path::PathBuf;

use super::GpuArgs;
use crate::parity::{dump, run_case};

#[derive(clap::Args, Debug)]
pub struct ParityArgs {
    /// A parity case produced by the official implementation (see tests/data/golden/README.md).
    pub case: PathBuf,
    /// Also write our outputs under the same keys.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Print only failing rows and the summary.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(gpu: &GpuArgs, a: &ParityArgs) -> Result<()> {
    let ctx = gpu.open()?;
    eprintln!("adapter: {}", ctx.describe());
    let report = run_case(&ctx, &a.case)?;
    println!("{:<72} {:>11} {:>11} {:>9}  result", "tensor", "max abs", "error", "tolerance");
    for r in &report.rows {
        if a.quiet && r.passed() {
            continue;
        }
        println!(
            "{:<72} {:>11.3e} {:>11.3e} {:>9.1e}  {}",
            r.key,
            r.max_abs,
            r.error,
            r.tolerance,
            if r.passed() { "ok" } else { "FAIL" }
        );
    }
    if let Some(p) = &a.dump {
        dump(&report, p)?;
        eprintln!("wrote {}", p.display());
    }
    let failed = report.failed();
    println!("parity {}: {} passed, {} failed", report.case, report.rows.len() - failed, failed);
    if failed > 0 {
        bail!("{failed} tensors out of tolerance");
    }
    Ok(())
}
