//! Which gather-GEMM and weight-gradient kernels a layer can run on which adapter (its
//! candidates, entries of the tile table in `tiles.rs`), the family's fixed rule among
//! them, and the key under which the tuner (`gpu::tune`, `super::tune`) remembers the
//! choice.

use anyhow::{Result, anyhow};

use crate::gpu::GpuContext;

use super::ConvShape;
use super::tiles::{self, GatherTile, THIN_K1N1, THIN_K1N2, THIN_K4N1, THIN_K4N2, THIN_K4N4, THIN_KERNEL, SplitKTile, ThinTile};

/// A gather-GEMM kernel and the output rows × output channels one thread owns: the tile
/// table's entries (`tiles.rs`, which build.rs generates or checks the WGSL from).
pub(crate) type GemmTile = GatherTile;

pub(crate) const GPU_TILE: GemmTile = tiles::GPU_GATHER;
pub(crate) const CPU_VEC4_TILE: GemmTile = tiles::CPU_GATHER_VEC4;
pub(crate) const CPU_TILE: GemmTile = tiles::CPU_GATHER;
pub(crate) const CPU_NARROW_TILE: GemmTile = tiles::CPU_GATHER_NARROW;

pub(crate) use tiles::{ROW_GROUP, ROW_INTERLEAVE};

#[cfg(test)]
thread_local! {
    /// Tests run every kernel of the family on one adapter by forcing the tile.
    pub(crate) static FORCE_TILE: std::cell::Cell<Option<GemmTile>> = const { std::cell::Cell::new(None) };
}

/// The dimensions of one gather-GEMM: rows of the gathered input, output rows, K, N, taps.
pub(crate) type GemmDims = (usize, usize, usize, usize, usize);

/// The tuner's key of a gather-GEMM of `pass` (`fwd` or `dgrad`).
pub(crate) fn gather_key(pass: &str, (rows_in, rows, k, n, taps): GemmDims) -> String {
    format!("{pass} rows {rows_in}->{rows} k {k} n {n} taps {taps}")
}

/// The gather kernels that can run `dims` on this context's family, the fixed rule's
/// choice first. CPU drivers: the large register tiles (16 x 16 beside 32 x 32 where few
/// rows leave cores idle); GPUs: the 4 x 8 register tile and, from one block of rows on,
/// the workgroup-staged block tiles.
pub(crate) fn gather_candidates(ctx: &GpuContext, (rows_in, rows, k, n, _): GemmDims) -> Vec<GemmTile> {
    let vec4 = CPU_VEC4_TILE.fits(k, n, rows_in);
    let mut c = vec![];
    if is_cpu(ctx) {
        if n <= 4 {
            c.extend([CPU_NARROW_TILE, CPU_TILE]);
        } else if vec4 {
            c.push(CPU_VEC4_TILE);
            if rows < 64 * 32 {
                c.push(tiles::CPU_GATHER_VEC4_16);
            }
        } else {
            c.push(CPU_TILE);
        }
    } else {
        c.push(GPU_TILE);
        if rows >= tiles::GPU_GATHER_B64.rows && n >= 16 {
            c.push(if vec4 { tiles::GPU_GATHER_B64_VEC4 } else { tiles::GPU_GATHER_B64 });
        }
        if vec4 && rows >= 4 * tiles::GPU_GATHER_B128_VEC4.rows && n >= tiles::GPU_GATHER_B128_VEC4.cols {
            c.push(tiles::GPU_GATHER_B128_VEC4);
        }
    }
    c
}

/// The gather kernel of `dims`: the tuner's choice where it made one (or replays one),
/// else the family's fixed rule.
pub(crate) fn tile_for(ctx: &GpuContext, pass: &str, dims: GemmDims) -> Result<GemmTile> {
    #[cfg(test)]
    if let Some(t) = FORCE_TILE.with(|f| f.get()) {
        return Ok(t);
    }
    let cands = gather_candidates(ctx, dims);
    let names: Vec<&str> = cands.iter().map(|t| t.kernel).collect();
    let name = ctx.tuner.lookup(&gather_key(pass, dims), &names, names[0], ctx.is_dry_run())?;
    cands.iter().find(|t| t.kernel == name).copied().ok_or_else(|| anyhow!("no gather kernel {name}"))
}

/// A weight-gradient kernel: input channels (or, `flat`, tap-and-channel pairs
/// `k' = t * cin + ci`) × output channels one thread owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WgradTile {
    pub kernel: &'static str,
    pub entry: &'static str,
    pub k: usize,
    pub n: usize,
    pub flat: bool,
    /// conv_wgrad_thin (generated): many splits, fused bias partials (see `super::thin`).
    pub thin: bool,
}

impl WgradTile {
    /// The name the tuner records (the thin tiles share one shader).
    pub(crate) fn name(&self) -> &'static str {
        if self.thin { self.entry } else { self.kernel }
    }
}

const fn wgrad(kernel: &'static str, entry: &'static str, k: usize, n: usize, flat: bool, thin: bool) -> WgradTile {
    WgradTile { kernel, entry, k, n, flat, thin }
}

/// A split-K weight-gradient kernel of the table.
const fn split_k(t: SplitKTile) -> WgradTile {
    wgrad(t.kernel, "main", t.k, t.n, t.flat, false)
}
pub(crate) const GPU_WGRAD: WgradTile = split_k(tiles::GPU_WGRAD);
pub(crate) const CPU_WGRAD_VEC4: WgradTile = split_k(tiles::CPU_WGRAD_VEC4);
pub(crate) const CPU_WGRAD: WgradTile = split_k(tiles::CPU_WGRAD);
/// Thin layers (see `is_thin`), the generated conv_wgrad_thin kernel: a tile of the table
/// in `tiles.rs` as `4 * kg` k' x `4 * ng` output channels per thread, with its 8-wide
/// (`cpu`) or 64-wide entry point.
pub(crate) const fn thin(t: ThinTile, cpu: bool) -> WgradTile {
    wgrad(THIN_KERNEL, if cpu { t.cpu_entry } else { t.gpu_entry }, 4 * t.kg, 4 * t.ng, true, true)
}
pub(crate) const THIN_CPU_K1N1: WgradTile = thin(THIN_K1N1, true);
pub(crate) const THIN_CPU_K1N2: WgradTile = thin(THIN_K1N2, true);
pub(crate) const THIN_CPU_K4N1: WgradTile = thin(THIN_K4N1, true);
pub(crate) const THIN_CPU_K4N2: WgradTile = thin(THIN_K4N2, true);
pub(crate) const THIN_CPU_K4N4: WgradTile = thin(THIN_K4N4, true);
/// GPUs: register tiles the size of the conv_wgrad kernel's.
pub(crate) const THIN_GPU_K1N1: WgradTile = thin(THIN_K1N1, false);
pub(crate) const THIN_GPU_K1N2: WgradTile = thin(THIN_K1N2, false);

#[cfg(test)]
thread_local! {
    pub(crate) static FORCE_WGRAD: std::cell::Cell<Option<WgradTile>> = const { std::cell::Cell::new(None) };
}

/// Whether the CPU-driver family is in use (`--kernels`, by default the device type).
pub(crate) fn is_cpu(ctx: &GpuContext) -> bool {
    ctx.kernel_set == crate::gpu::KernelSet::Cpu
}

/// The tuner's key of a weight gradient of shape `s`.
pub(crate) fn wgrad_key(s: &ConvShape) -> String {
    format!("{} rows {}->{} k {} n {} taps {}", super::WGRAD, s.rows_in, s.rows_out, s.cin, s.cout, s.taps)
}

/// The weight-gradient kernels that can run `s`, the fixed rule's choice first: on GPUs
/// the thin tile and the split-K tile where the layer is thin (each sums in another
/// order: a choice is recorded with the run).
pub(crate) fn wgrad_candidates(ctx: &GpuContext, s: &ConvShape) -> Vec<WgradTile> {
    let cpu = is_cpu(ctx);
    // (vec4 bindings need at least one vec4)
    let vec4 = s.cin.is_multiple_of(4) && s.cout.is_multiple_of(4) && s.rows_in > 0 && s.rows_out > 0;
    let split_k = if !cpu { GPU_WGRAD } else if vec4 { CPU_WGRAD_VEC4 } else { CPU_WGRAD };
    // CPU drivers: the thin / split-K boundary and the vec4 tile were measured on llvmpipe
    // layer by layer (see `is_thin`), and timing the alternatives of ResNet-50's full-size
    // layers cost minutes at 224² batch 8 for no gain: one candidate. GPUs: untested
    // thresholds, so both forms are timed.
    if !cpu && is_thin(cpu, s) {
        vec![thin_tile(cpu, s), split_k]
    } else if is_thin(cpu, s) {
        vec![thin_tile(cpu, s)]
    } else {
        vec![split_k]
    }
}

/// The weight-gradient kernel of `s`: the tuner's choice, else the fixed rule.
pub(crate) fn wgrad_tile_for(ctx: &GpuContext, s: &ConvShape) -> Result<WgradTile> {
    #[cfg(test)]
    if let Some(t) = FORCE_WGRAD.with(|f| f.get()) {
        return Ok(t);
    }
    let cands = wgrad_candidates(ctx, s);
    let names: Vec<&str> = cands.iter().map(|t| t.name()).collect();
    let name = ctx.tuner.lookup(&wgrad_key(s), &names, names[0], ctx.is_dry_run())?;
    cands.iter().find(|t| t.name() == name).copied().ok_or_else(|| anyhow!("no weight-gradient kernel {name}"))
}

/// Whether the weight gradient of `s` takes conv_wgrad_thin. CPU: up to 16 output
/// channels, where a 32-wide column tile is at least half padding (measured on llvmpipe:
/// the thin tiles win from the 3x3 16->16 decoder conv down; the 3->64 stem keeps the
/// flat 32x32 tile). GPU: where conv_wgrad's per-tap 4 x 8 tile is padded.
pub(crate) fn is_thin(cpu: bool, s: &ConvShape) -> bool {
    if cpu { s.cout <= 16 } else { !s.cin.is_multiple_of(4) || s.cout < 8 }
}

/// The largest thin tile the layer fills: each loaded input serves every output channel
/// of the tile, each output gradient every k' (loads dominate on llvmpipe).
pub(crate) fn thin_tile(cpu: bool, s: &ConvShape) -> WgradTile {
    let wide_k = s.taps * s.cin >= 16;
    match (cpu, wide_k, s.cout) {
        (false, _, ..=4) => THIN_GPU_K1N1,
        (false, _, _) => THIN_GPU_K1N2,
        (true, false, ..=4) => THIN_CPU_K1N1,
        (true, false, _) => THIN_CPU_K1N2,
        (true, true, ..=4) => THIN_CPU_K4N1,
        (true, true, ..=8) => THIN_CPU_K4N2,
        (true, true, _) => THIN_CPU_K4N4,
    }
}
