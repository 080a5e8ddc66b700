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
    /// 4×4 blocks along the reduction.
    pub kg: usize,
    /// 4×4 blocks along the output channels.
    pub ng: usize,
    /// Entry point of the 64-wide (GPU) form.
    pub gpu_entry: &'static str,
    /// Entry point of the 8-wide (CPU) form.
    pub cpu_entry: &'static str,
}

/// 4 reduction indices × 4 output channels.
pub const THIN_K1N1: ThinTile = ThinTile { kg: 1, ng: 1, gpu_entry: "k1n1", cpu_entry: "k1n1_cpu" };
/// 4 reduction indices × 8 output channels.
pub const THIN_K1N2: ThinTile = ThinTile { kg: 1, ng: 2, gpu_entry: "k1n2", cpu_entry: "k1n2_cpu" };
/// 16 reduction indices × 4 output channels.
pub const THIN_K4N1: ThinTile = ThinTile { kg: 4, ng: 1, gpu_entry: "k4n1", cpu_entry: "k4n1_cpu" };
/// 16 reduction indices × 8 output channels.
pub const THIN_K4N2: ThinTile = ThinTile { kg: 4, ng: 2, gpu_entry: "k4n2", cpu_entry: "k4n2_cpu" };
/// 16 reduction indices × 16 output channels.
pub const THIN_K4N4: ThinTile = ThinTile { kg: 4, ng: 4, gpu_entry: "k4n4", cpu_entry: "k4n4_cpu" };

/// Every tile `conv_wgrad_thin` is generated with (the launchers pick among these).
pub const THIN_TILES: [ThinTile; 5] = [THIN_K1N1, THIN_K1N2, THIN_K4N1, THIN_K4N2, THIN_K4N4];

/// Name of the generated shader (`ctx.kernel_entry(THIN_KERNEL, entry)`).
pub const THIN_KERNEL: &str = "conv_wgrad_thin";

/// A gather-GEMM kernel (forward and data gradient; generated, `build/conv_gather.rs`):
/// the output rows × output channels one thread (register tiles) or one workgroup
/// (staged tiles) owns, how it loads its operands, its workgroup width and how a step is
/// summed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatherTile {
    /// Name of the generated shader.
    pub kernel: &'static str,
    /// Output rows per thread (`TR`, a multiple of 4), or per workgroup when staged.
    pub rows: usize,
    /// Output channels per thread (`4 * TV`), or per workgroup when staged (the re-laid
    /// weight is padded to a multiple of it).
    pub cols: usize,
    /// How the operands are loaded.
    pub loads: GatherLoads,
    /// Invocations per workgroup.
    pub workgroup: usize,
    /// Each step one fused multiply-add (else a multiply, then an add).
    pub fma: bool,
    /// Where the operands are reused from.
    pub stage: GatherStage,
}

/// Where a gather kernel reuses its operands from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatherStage {
    /// Each thread's own registers (`rows x cols` per thread).
    Registers,
    /// A `rows x cols` block per workgroup: each step stages `bk` reduction indices of the
    /// gathered inputs and of the weights in workgroup memory, and each thread sums a
    /// `micro_rows x micro_cols` micro-tile of the block from there (GPU SGEMM form).
    Workgroup {
        /// Reduction indices staged per step.
        bk: usize,
        /// Output rows per thread (a multiple of 4).
        micro_rows: usize,
        /// Output channels per thread (a multiple of 4).
        micro_cols: usize,
    },
}

impl GatherTile {
    /// Whether this tile can run a layer of `k` input and `n` output channels over
    /// `rows_in` input rows (vec4 bindings need channels in 4s and at least one vec4).
    pub const fn fits(&self, k: usize, n: usize, rows_in: usize) -> bool {
        match self.loads {
            GatherLoads::Vec4 => k.is_multiple_of(4) && n.is_multiple_of(4) && rows_in > 0,
            _ => true,
        }
    }
}

/// How a gather kernel loads its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatherLoads {
    /// x, wt, bias and y as vec4s (K and N multiples of 4).
    Vec4,
    /// Scalar input loads, vec4 weights from the padded re-laid weight.
    Scalar,
    /// As `Scalar`, and per 4 rows the input loads of a tap none of them reads are
    /// skipped: with N <= 4 the loads are the whole cost (transposed 4x4/2 outputs).
    ScalarSkipEmpty,
}

/// GPUs: a 4 x 8 tile that stays in registers (larger ones spill to local memory),
/// 64-wide workgroups, one rounding per step.
pub const GPU_GATHER: GatherTile =
    GatherTile { kernel: "conv", rows: 4, cols: 8, loads: GatherLoads::Scalar, workgroup: 64, fma: true, stage: GatherStage::Registers };
/// CPU drivers: loads cost far more than multiply-adds and spills are cheap, so the tiles
/// are large (see build/conv_gather.rs); 8-wide workgroups (one llvmpipe SIMD vector);
/// multiply then add, the form they were measured and the CPU family recorded with.
/// K and N multiples of 4: vec4 loads and stores.
pub const CPU_GATHER_VEC4: GatherTile =
    GatherTile { kernel: "conv_cpu_vec4", rows: 32, cols: 32, loads: GatherLoads::Vec4, workgroup: 8, fma: false, stage: GatherStage::Registers };
/// CPU drivers, K and N multiples of 4, a quarter of the 32 x 32 tile: four times the
/// threads for layers of few rows (the 7x7 stage of a small batch), where 32 x 32 leaves
/// cores idle. A tuner candidate, never the fixed rule.
pub const CPU_GATHER_VEC4_16: GatherTile = GatherTile { kernel: "conv_cpu_vec4_16", rows: 16, cols: 16, ..CPU_GATHER_VEC4 };
/// CPU drivers, other K and N (3-channel stem input).
pub const CPU_GATHER: GatherTile =
    GatherTile { kernel: "conv_cpu", rows: 32, cols: 32, loads: GatherLoads::Scalar, workgroup: 8, fma: false, stage: GatherStage::Registers };
/// CPU drivers, N <= 4 (3-channel outputs): a 32-wide column tile would be mostly padding.
pub const CPU_GATHER_NARROW: GatherTile =
    GatherTile { kernel: "conv_cpu_narrow", rows: 64, cols: 4, loads: GatherLoads::ScalarSkipEmpty, workgroup: 8, fma: false, stage: GatherStage::Registers };

/// GPUs, large layers: 64 x 64 blocks of 256 threads with 4 x 4 micro-tiles, 8 reduction
/// indices per stage (4 KiB of workgroup memory), the shape of the published WGSL SGEMMs
/// that reach 60-70 % of peak. Scalar loads: any K and N. Each output is summed in the
/// order of `GPU_GATHER` (tap, then channel, one fused multiply-add each), so the two give
/// identical bits and the tuner's choice between them cannot change a result.
pub const GPU_GATHER_B64: GatherTile = GatherTile {
    kernel: "conv_b64",
    rows: 64,
    cols: 64,
    loads: GatherLoads::Scalar,
    workgroup: 256,
    fma: true,
    stage: GatherStage::Workgroup { bk: 8, micro_rows: 4, micro_cols: 4 },
};
/// `GPU_GATHER_B64` with vec4 input and output loads (K and N multiples of 4).
pub const GPU_GATHER_B64_VEC4: GatherTile = GatherTile { kernel: "conv_b64_vec4", loads: GatherLoads::Vec4, ..GPU_GATHER_B64 };
/// GPUs, the largest layers: 128 x 64 blocks, 8 x 4 micro-tiles, 16 reduction indices per
/// stage (12 KiB), vec4 loads: twice the reuse of a staged input per loaded weight.
pub const GPU_GATHER_B128_VEC4: GatherTile = GatherTile {
    kernel: "conv_b128_vec4",
    rows: 128,
    cols: 64,
    loads: GatherLoads::Vec4,
    workgroup: 256,
    fma: true,
    stage: GatherStage::Workgroup { bk: 16, micro_rows: 8, micro_cols: 4 },
};

/// Every gather kernel build.rs generates.
pub const GATHERS: [GatherTile; 8] = [
    GPU_GATHER,
    GPU_GATHER_B64,
    GPU_GATHER_B64_VEC4,
    GPU_GATHER_B128_VEC4,
    CPU_GATHER_VEC4,
    CPU_GATHER_VEC4_16,
    CPU_GATHER,
    CPU_GATHER_NARROW,
];

/// Row interleave `RI` and phase group `G` of every gather-GEMM kernel (see
/// build/conv_gather.rs): a thread's rows are `base + RI * i`, and `G` consecutive
/// row tiles share a phase.
pub const ROW_INTERLEAVE: usize = 2;
/// See [`ROW_INTERLEAVE`].
pub const ROW_GROUP: usize = 8;

/// A split-K weight-gradient kernel (generated, `build/conv_wgrad.rs`): one thread sums
/// `k` reduction indices × `n` output channels over the rows of its split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitKTile {
    /// Name of the generated shader.
    pub kernel: &'static str,
    /// Reduction indices per thread (`TK`, a multiple of 4).
    pub k: usize,
    /// Output channels per thread (`TN`, a multiple of 4).
    pub n: usize,
    /// Invocations per workgroup.
    pub workgroup: usize,
    /// The reduction index `k' = t * cin + ci` spans taps (else a thread owns one tap).
    pub flat: bool,
    /// x and dy loaded as vec4s (cin and cout multiples of 4; one tap per thread).
    pub vec4: bool,
    /// Each step one fused multiply-add (else a multiply, then an add).
    pub fma: bool,
}

/// GPUs: 4 input channels × 8 output channels of one tap, 64-wide workgroups, one
/// rounding per step.
pub const GPU_WGRAD: SplitKTile = SplitKTile { kernel: "conv_wgrad", k: 4, n: 8, workgroup: 64, flat: false, vec4: false, fma: true };
/// CPU drivers (see build/conv_gather.rs for why 32 × 32), cin and cout multiples of
/// 4; 8-wide workgroups (one llvmpipe SIMD vector). Multiply then add: the form these
/// tiles were measured and the CPU family's results recorded with.
pub const CPU_WGRAD_VEC4: SplitKTile =
    SplitKTile { kernel: "conv_wgrad_cpu_vec4", k: 32, n: 32, workgroup: 8, flat: false, vec4: true, fma: false };
/// CPU drivers, any channel counts; `k'` spans taps so that the 3-channel stem fills the tile.
pub const CPU_WGRAD: SplitKTile = SplitKTile { kernel: "conv_wgrad_cpu", k: 32, n: 32, workgroup: 8, flat: true, vec4: false, fma: false };

/// Every split-K weight-gradient kernel build.rs generates.
pub const SPLIT_K_TILES: [SplitKTile; 3] = [GPU_WGRAD, CPU_WGRAD_VEC4, CPU_WGRAD];

/// A depthwise kernel (generated, `build/depthwise.rs`): strips of `rows` rows and the
/// `k x k` kernel size it has a fast path for (`rows - 1 <= k`: a strip's inputs come
/// from its first and last rows' windows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepthwiseTile {
    /// Name of the generated shader.
    pub kernel: &'static str,
    /// Rows per strip.
    pub rows: usize,
    /// Kernel side of the fast path.
    pub k: usize,
}

/// Forward and data gradient: 8 rows x 4 channels per thread, fast path for ConvNeXt's 7x7.
pub const DEPTHWISE: DepthwiseTile = DepthwiseTile { kernel: "depthwise", rows: 8, k: 7 };
/// Weight gradient of 7x7 kernels: all 49 taps x 4 channels per thread, strips of 8 rows
/// (splits start on strip boundaries).
pub const DEPTHWISE_WGRAD_K: DepthwiseTile = DepthwiseTile { kernel: "depthwise_wgrad7", rows: 8, k: 7 };
/// Weight gradient of any other kernel size (one tap per thread; no tile).
pub const DEPTHWISE_WGRAD: &str = "depthwise_wgrad";
