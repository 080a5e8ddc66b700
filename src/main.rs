//! The `spark-wgpu` command line.

use clap::Parser;

fn main() {
    let cli = spark_wgpu::cli::Cli::parse();
    if let Err(e) = spark_wgpu::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
