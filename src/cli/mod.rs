//! Subcommands: `devices`, `parity`, `pretrain`, `reconstruct`, `bench`, `export`.

mod bench;
mod devices;
mod export;
mod pretrain;
pub mod reconstruct;
mod parity;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::gpu::{AdapterChoice, GpuContext};

#[derive(Parser, Debug)]
#[command(name = "spark-wgpu", version, about = "SparK masked pre-training of CNNs on any GPU wgpu reaches")]
pub struct Cli {
    #[command(flatten)]
    pub gpu: GpuArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Adapter selection, shared by every subcommand.
#[derive(Args, Debug, Clone)]
pub struct GpuArgs {
    /// Use the first adapter whose name contains this (case-insensitive); env SPARK_WGPU_ADAPTER.
    #[arg(long, global = true)]
    pub adapter: Option<String>,
    /// vulkan, metal, dx12 or gl; env SPARK_WGPU_BACKEND.
    #[arg(long, global = true)]
    pub backend: Option<String>,
    /// Conv kernel family: auto (by device type), cpu or gpu (forces the GPU family on any
    /// adapter, e.g. to test it on lavapipe); env SPARK_WGPU_KERNELS.
    #[arg(long, global = true, value_parser = ["auto", "cpu", "gpu"])]
    pub kernels: Option<String>,
}

impl GpuArgs {
    pub fn choice(&self) -> AdapterChoice {
        AdapterChoice { name: self.adapter.clone(), backend: self.backend.clone(), kernels: self.kernels.clone() }
    }

    pub fn open(&self) -> Result<GpuContext> {
        GpuContext::new(&self.choice())
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List every adapter wgpu can see, with the limits and features that matter here.
    Devices,
    /// Run a parity case of the official implementation and compare every tensor.
    Parity(parity::ParityArgs),
    /// Time the whole training step on synthetic data (headless).
    Bench(bench::BenchArgs),
    /// Pre-train on an image folder (or the built-in procedural set) with SparK.
    Pretrain(pretrain::PretrainArgs),
    /// Write the encoder of a checkpoint in timm / official ConvNeXt naming.
    Export(export::ExportArgs),
    /// Reconstruct masked images with a checkpoint: a PNG grid of input, masked, reconstruction, pasted.
    Reconstruct(reconstruct::ReconstructArgs),
}

/// Parse the process arguments (exits with clap's message on a bad option) and note
/// which `pretrain` options were given explicitly (`--resume` honours or refuses them).
pub fn parse() -> Cli {
    parse_from(std::env::args_os())
}

pub fn parse_from<I, T>(args: I) -> Cli
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let m = Cli::command().get_matches_from(args);
    let mut cli = Cli::from_arg_matches(&m).unwrap_or_else(|e| e.exit());
    if let (Command::Pretrain(a), Some(("pretrain", sub))) = (&mut cli.command, m.subcommand()) {
        a.given = sub
            .ids()
            .filter(|id| sub.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine))
            .map(|id| id.to_string())
            .collect();
    }
    cli
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Devices => devices::run(&cli.gpu),
        Command::Parity(a) => parity::run(&cli.gpu, &a),
        Command::Bench(a) => bench::run(&cli.gpu, &a),
        Command::Pretrain(a) => pretrain::run(&cli.gpu, &a),
        Command::Export(a) => export::run(&a),
        Command::Reconstruct(a) => reconstruct::run(&cli.gpu, &a),
    }
}
