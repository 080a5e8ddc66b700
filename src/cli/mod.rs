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
use crate::model::SparkConfig;
use crate::train::ranges as R;

/// The `spark-wgpu` command line.
#[derive(Parser, Debug)]
#[command(name = "spark-wgpu", version, about = "SparK masked pre-training of CNNs on any GPU wgpu reaches")]
pub struct Cli {
    /// Adapter, backend and kernel-family options shared by every command.
    #[command(flatten)]
    pub gpu: GpuArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The model options `pretrain` and `bench` share (flattened into both). `--batch` is
/// not among them: the two take different defaults and ranges (a benchmark batch may
/// exceed what a run's schedule allows).
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Encoder preset: resnet18/34/50/101/152/200, convnext_tiny/small/base/large, or the tiny
    /// test models resnet_tiny, convnext_pico.
    #[arg(long, default_value = "resnet50")]
    pub model: String,
    /// Input resolution (a multiple of 32).
    #[arg(long, default_value_t = crate::model::config::DEFAULT_INPUT_SIZE, value_parser = |s: &str| R::INPUT_SIZE.parse(s))]
    pub input_size: usize,
    /// Width of the LightDecoder's first block (a multiple of 32).
    #[arg(long, default_value_t = crate::model::config::DEFAULT_DEC_WIDTH, value_parser = |s: &str| R::DEC_WIDTH.parse(s))]
    pub dec_width: usize,
    /// Fraction of the patches masked in every image.
    #[arg(long, default_value_t = crate::model::config::DEFAULT_MASK_RATIO, allow_negative_numbers = true, value_parser = |s: &str| R::MASK_RATIO.parse(s))]
    pub mask_ratio: f64,
}

impl ModelArgs {
    /// The SparK configuration these options describe (see [`SparkConfig::from_preset`]).
    pub fn spark_config(&self) -> Result<SparkConfig> {
        SparkConfig::from_preset(&self.model, self.input_size, self.dec_width, self.mask_ratio)
    }
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
    /// Conv kernel choice: cached (default: time each layer's candidate kernels once when
    /// the graph is built, remember them per adapter in the user's cache directory), full
    /// (time again), off (the family's fixed rule) or cycle (testing: every variant in
    /// turn); env SPARK_WGPU_TUNE. A resumed run replays the choices it started with.
    #[arg(long, global = true, value_parser = ["off", "cached", "full", "cycle"])]
    pub tune: Option<String>,
    /// Under MPI: let every rank of a node use the first matching adapter instead of one
    /// adapter per node-local rank (one GPU, or lavapipe, shared by several ranks).
    #[arg(long, global = true)]
    pub share_adapter: bool,
}

impl GpuArgs {
    /// The adapter these options ask for.
    pub fn choice(&self) -> AdapterChoice {
        let tune = self.tune.clone().or_else(|| std::env::var(crate::gpu::tune::TUNE_ENV).ok().filter(|v| !v.is_empty()));
        AdapterChoice {
            name: self.adapter.clone(),
            backend: self.backend.clone(),
            kernels: self.kernels.clone(),
            tune: Some(tune.unwrap_or_else(|| "cached".to_string())),
        }
    }

    /// Open the adapter these options ask for.
    pub fn open(&self) -> Result<GpuContext> {
        GpuContext::new(&self.choice())
    }

    /// The adapter of this rank (one process: as [`GpuArgs::open`]), announced on the
    /// rank's first line.
    pub fn open_for(&self, world: &dyn crate::dist::Collective) -> Result<GpuContext> {
        if world.size() == 1 {
            return self.open();
        }
        let ctx = GpuContext::new_for_rank(&self.choice(), world.local_rank(), self.share_adapter)
            .map_err(|e| e.context(format!("rank {} (node-local rank {}) cannot get its adapter", world.rank(), world.local_rank())))?;
        // One write, so that the ranks' first lines do not interleave in the launcher's output.
        let line = format!(
            "rank {} of {} (node-local {}, pid {}): adapter {}\n",
            world.rank(),
            world.size(),
            world.local_rank(),
            std::process::id(),
            ctx.describe()
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        Ok(ctx)
    }
}

/// Run `f` as one rank of the launcher's world (one process: just run it). A rank whose
/// `f` fails prints the cause with its rank and aborts every rank (MPI_Abort), so no
/// rank waits forever for it.
fn in_world(f: impl FnOnce(&dyn crate::dist::Collective) -> Result<()>) -> Result<()> {
    let world = crate::dist::init_world()?;
    let r = f(world.as_ref());
    if let Err(e) = &r
        && world.size() > 1
    {
        eprintln!("error: rank {} of {} failed: {e:#}\naborting every rank", world.rank(), world.size());
        world.abort(crate::dist::EXIT_RANK_FAILED);
    }
    r
}

/// The commands of `spark-wgpu`.
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

/// As [`parse`], from the given arguments (for tests and embedding).
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

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Devices => devices::run(&cli.gpu),
        Command::Parity(a) => parity::run(&cli.gpu, &a),
        Command::Bench(a) => in_world(|w| bench::run(&cli.gpu, &a, w)),
        Command::Pretrain(a) => in_world(|w| pretrain::run(&cli.gpu, &a, w)),
        Command::Export(a) => export::run(&a),
        Command::Reconstruct(a) => reconstruct::run(&cli.gpu, &a),
    }
}
