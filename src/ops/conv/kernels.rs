//! Which gather-GEMM and weight-gradient kernel runs on which adapter, and the tile each
//! thread of it owns (mirrors the WGSL constants of each kernel).

use crate::gpu::GpuContext;

use super::ConvShape;

/// A gather-GEMM kernel and the output rows × output channels one thread owns (its
/// WGSL `TR`, `4 * TV`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GemmTile {
    pub kernel: &'static str,
    pub rows: usize,
    pub cols: usize,
}

/// GPUs: a tile that stays in registers.
pub(crate) const GPU_TILE: GemmTile = GemmTile { kernel: "conv", rows: 4, cols: 8 };
/// CPU drivers: loads cost far more than multiply-adds and spills are cheap, so the tiles
/// are large (see conv_cpu_vec4.wgsl). K and N multiples of 4: vec4 loads and stores.
pub(crate) const CPU_VEC4_TILE: GemmTile = GemmTile { kernel: "conv_cpu_vec4", rows: 32, cols: 32 };
/// CPU drivers, other K and N (3-channel stem input).
pub(crate) const CPU_TILE: GemmTile = GemmTile { kernel: "conv_cpu", rows: 32, cols: 32 };
/// CPU drivers, N <= 4 (3-channel outputs): a 32-wide column tile would be mostly padding.
pub(crate) const CPU_NARROW_TILE: GemmTile = GemmTile { kernel: "conv_cpu_narrow", rows: 64, cols: 4 };

/// Row interleave `RI` and phase group `G` of every gather-GEMM kernel (see conv.wgsl).
pub(crate) const ROW_INTERLEAVE: usize = 2;
pub(crate) const ROW_GROUP: usize = 8;

#[cfg(test)]
thread_local! {
    /// Tests run every kernel of the family on one adapter by forcing the tile.
    pub(crate) static FORCE_TILE: std::cell::Cell<Option<GemmTile>> = const { std::cell::Cell::new(None) };
}

/// `rows_in`: rows of the gathered input (a vec4 binding needs at least one vec4).
pub(crate) fn tile_for(ctx: &GpuContext, k: usize, n: usize, rows_in: usize) -> GemmTile {
    #[cfg(test)]
    if let Some(t) = FORCE_TILE.with(|f| f.get()) {
        return t;
    }
    if !is_cpu(ctx) {
        GPU_TILE
    } else if n <= 4 {
        CPU_NARROW_TILE
    } else if k.is_multiple_of(4) && n.is_multiple_of(4) && rows_in > 0 {
        CPU_VEC4_TILE
    } else {
        CPU_TILE
    }
}

/// A weight-gradient kernel: input channels (or, `flat`, tap-and-channel pairs
/// `k' = t * cin + ci`) × output channels one thread owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WgradTile {
    pub kernel: &'static str,
    pub k: usize,
    pub n: usize,
    pub flat: bool,
}

pub(crate) const GPU_WGRAD: WgradTile = WgradTile { kernel: "conv_wgrad", k: 4, n: 8, flat: false };
/// CPU drivers (see conv_cpu_vec4.wgsl), cin and cout multiples of 4.
pub(crate) const CPU_WGRAD_VEC4: WgradTile = WgradTile { kernel: "conv_wgrad_cpu_vec4", k: 32, n: 32, flat: false };
/// CPU drivers, any channel counts; `k'` spans taps so that the 3-channel stem fills the tile.
pub(crate) const CPU_WGRAD: WgradTile = WgradTile { kernel: "conv_wgrad_cpu", k: 32, n: 32, flat: true };

#[cfg(test)]
thread_local! {
    pub(crate) static FORCE_WGRAD: std::cell::Cell<Option<WgradTile>> = const { std::cell::Cell::new(None) };
}

pub(crate) fn is_cpu(ctx: &GpuContext) -> bool {
    ctx.info.device_type == wgpu::DeviceType::Cpu
}

pub(crate) fn wgrad_tile_for(ctx: &GpuContext, s: &ConvShape) -> WgradTile {
    #[cfg(test)]
    if let Some(t) = FORCE_WGRAD.with(|f| f.get()) {
        return t;
    }
    if !is_cpu(ctx) {
        GPU_WGRAD
    } else if s.cin.is_multiple_of(4) && s.cout.is_multiple_of(4) && s.rows_in > 0 && s.rows_out > 0 {
        // (vec4 bindings need at least one vec4)
        CPU_WGRAD_VEC4
    } else {
        CPU_WGRAD
    }
}
