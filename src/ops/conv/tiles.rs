//! The tile table of the generated conv kernels, read both by `build.rs` (which expands
//! the WGSL from it, see `build/conv_wgrad_thin.rs`) and by the launchers
//! (`kernels.rs`), so that each tile is defined once. Plain `std`-free consts: build.rs
//! includes this file by `#[path]`.

/// A thread tile of the generated `conv_wgrad_thin` kernel: `kg × ng` blocks of 4 × 4,
/// i.e. `4 * kg` reduction indices `k' = t * cin + ci` × `4 * ng` output channels. Each
/// tile has two entry points: `gpu_entry` (64-wide workgroups) and `cpu_entry` (8-wide:
/// one SIMD vector of llvmpipe, consecutive splits per vector).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThinTile {
    pub kg: usize,
    pub ng: usize,
    pub gpu_entry: &'static str,
    pub cpu_entry: &'static str,
}

pub const THIN_K1N1: ThinTile = ThinTile { kg: 1, ng: 1, gpu_entry: "k1n1", cpu_entry: "k1n1_cpu" };
pub const THIN_K1N2: ThinTile = ThinTile { kg: 1, ng: 2, gpu_entry: "k1n2", cpu_entry: "k1n2_cpu" };
pub const THIN_K4N1: ThinTile = ThinTile { kg: 4, ng: 1, gpu_entry: "k4n1", cpu_entry: "k4n1_cpu" };
pub const THIN_K4N2: ThinTile = ThinTile { kg: 4, ng: 2, gpu_entry: "k4n2", cpu_entry: "k4n2_cpu" };
pub const THIN_K4N4: ThinTile = ThinTile { kg: 4, ng: 4, gpu_entry: "k4n4", cpu_entry: "k4n4_cpu" };

/// Every tile `conv_wgrad_thin` is generated with (the launchers pick among these).
pub const THIN_TILES: [ThinTile; 5] = [THIN_K1N1, THIN_K1N2, THIN_K4N1, THIN_K4N2, THIN_K4N4];

/// Name of the generated shader (`ctx.kernel_entry(THIN_KERNEL, entry)`).
pub const THIN_KERNEL: &str = "conv_wgrad_thin";
