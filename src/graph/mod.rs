//! The static graph: every tensor, map and dispatch of a training step, built once for
//! (model, batch size, input size) and replayed every step.
//!
//! Shapes are static because every image keeps the same number of visible patches, so
//! each stage's row count is fixed; only the *contents* of the active sets change per
//! step. The host writes the step's patch mask (`set_mask`, a few KB); the graph's first
//! dispatches (`prologue`, spliced in front of the forward by `finish_prologue`) build
//! every sparse set's row lists and every neighbour map touching one from it on the GPU
//! (`sparse::gpu`), into buffers of fixed size. Dense sets and maps never change and are
//! built once on the host. The dispatches themselves never change.
//!
//! Autodiff is a tape: every forward op records its dispatches and pushes a closure that
//! records its backward dispatches. `build_backward` runs the closures in reverse.
//! Input gradients use "first writer overwrites, later writers add" (`accumulate`), so no
//! gradient buffer needs clearing and fan-in sums in a fixed order.

pub mod chunks;
pub mod nodes;
pub mod init;
pub mod params;
mod loss;

use std::rc::Rc;

use anyhow::Result;

use crate::gpu::{Dispatch, GpuContext, GpuTensor};
use crate::sparse::gpu::{MaskTensor, SetIndices, active_rows, neighbour_maps, relative_copy};
use crate::sparse::{ActiveSet, PatchMask, Window, conv_map, inverse_map, transposed_conv_map};
pub use chunks::Chunks;
pub use loss::LossOutputs;
pub use init::{Init, init_params};
pub use params::{Kind, ParamId, ParamRegistry, ParamSpec, ParamStore};

/// A stage resolution: sparse (visible sites of the step's mask) or dense (every site).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SetId(pub usize);

/// One stage's set of rows on the GPU: its resolution, whether it is sparse, and its index tensors.
pub struct StageSet {
    /// Height in sites.
    pub h: usize,
    /// Width in sites.
    pub w: usize,
    /// Sparse (visible sites only) or dense (every site).
    pub sparse: bool,
    /// Rows of the set (every visible image shows the same number of patches, so fixed per step).
    pub rows: usize,
    /// i32 `[B*h*w]`: row of each site or -1.
    pub row_of: GpuTensor,
    /// i32 `[rows]`: site index `(b*h+y)*w+x` of each row.
    pub site_of_row: GpuTensor,
    /// Chunk-relative copies of `row_of` and `site_of_row` for chunked ops (see
    /// `chunks`), one per chunking in use.
    relative: Vec<(Chunks, GpuTensor, GpuTensor)>,
}

impl StageSet {
    fn indices(&self) -> SetIndices<'_> {
        SetIndices { h: self.h, w: self.w, row_of: &self.row_of, site_of_row: &self.site_of_row }
    }
}

/// The site index `(b*h+y)*w+x` of every row of `a`.
fn site_indices(a: &ActiveSet) -> Vec<i32> {
    a.sites.iter().map(|&[b, y, x]| ((b as usize * a.h + y as usize) * a.w + x as usize) as i32).collect()
}

struct MapEntry {
    from: SetId,
    to: SetId,
    win: Window,
    transposed: bool,
    /// Chunk-relative indices when not whole (see `chunks`).
    chunks: Chunks,
    map: GpuTensor,
    inv: GpuTensor,
}

/// The placeholder mask of a graph before its first step: the first `visible` patches of
/// every image.
fn placeholder_mask(batch: usize, fh: usize, fw: usize, visible: usize) -> PatchMask {
    let per = fh * fw;
    PatchMask::new(batch, fh, fw, (0..batch * per).map(|i| (i % per < visible) as u8).collect())
}

/// A tensor of the graph: `[rows of its set, c]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(pub usize);

struct VarInfo {
    t: GpuTensor,
    set: SetId,
    c: usize,
    needs_grad: bool,
    grad: Option<GpuTensor>,
    grad_written: bool,
    /// How the backward recomputes this tensor instead of keeping `t` (see `saved`).
    recompute: Option<Rc<Recompute>>,
    /// The backward's recomputed copy, once made.
    again: Option<GpuTensor>,
}

/// A tensor the backward recomputes from `inputs` (their backward copies, see
/// `Graph::saved`) into a fresh tensor, with the same kernels the forward ran, so the
/// copy has the forward's bits.
pub(crate) struct Recompute {
    inputs: Vec<Var>,
    #[allow(clippy::type_complexity)]
    make: Box<dyn Fn(&Graph, &[GpuTensor], &GpuTensor) -> Result<Vec<Dispatch>>>,
}

/// The dispatch list a host point belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The forward dispatch list.
    Forward,
    /// The backward dispatch list.
    Backward,
}

/// A point of the step where the host must sum a tensor over the ranks (synchronised
/// BatchNorm, issue 10): after `graph.forward[..at]` (or `backward[..at]`) has run.
#[derive(Clone, Debug)]
pub struct HostPoint {
    /// The list the point is in.
    pub pass: Pass,
    /// Number of dispatches of that list that run before the host sum.
    pub at: usize,
    /// What to sum and how.
    pub sum: crate::ops::batchnorm::HostSum,
}

type BackwardFn = (Var, Box<dyn FnOnce(&mut Graph) -> Result<()>>);

/// How a graph is built beyond its shapes; fixed for the graph's life.
#[derive(Clone, Copy, Debug)]
pub struct GraphOptions {
    /// Record the backward pass (the tape) and use batch statistics in BatchNorm; an
    /// evaluation graph uses running statistics and records no backward.
    pub train: bool,
    /// Give every request for a sparse set a dense one (every site), as the official code
    /// computes the encoder before masking; for speed comparisons only.
    pub dense_encoder: bool,
    /// Data-parallel training: BatchNorm statistics over this many ranks' rows (1: this
    /// process's rows only), through the graph's host points.
    pub sync_bn_world: usize,
    /// Data-parallel training: this graph's images are `first..first + batch` of a global
    /// batch of `global` images `(first, global)` (None: the batch is global). Per-image
    /// random draws are those of the global batch.
    pub shard: Option<(usize, usize)>,
    /// Split every op into chunks of at most this many images even where the batch fits
    /// the adapter's binding limit (see `chunks`): to test and measure the chunked path.
    pub chunk_images: Option<usize>,
    /// Recompute BatchNorm-apply and activation outputs, and the decoder's up-sampling
    /// outputs, in the backward from tensors it keeps anyway (a conv's output, which
    /// BatchNorm's backward reads; an up-sampling's input, which its weight gradient
    /// reads) instead of keeping them from the forward (see `Graph::saved`). The
    /// recomputation runs the forward's kernels on the forward's inputs, so results are
    /// bit-identical either way. ResNet-50 224² batch 8 (lavapipe): activations kept for
    /// the backward 874 → 515 MiB, the step's buffers 1910 → 1625 MiB, for 82 more
    /// dispatches (element-wise passes, and the two finest up-samplings, see
    /// `nodes::RECOMPUTE_MACS_PER_ELEMENT`).
    pub recompute: bool,
}

impl GraphOptions {
    /// A training graph (`train`) or an evaluation graph, with nothing else set.
    pub fn new(train: bool) -> Self {
        Self { train, dense_encoder: false, sync_bn_world: 1, shard: None, chunk_images: None, recompute: true }
    }
}

/// The static graph of one model, batch and input size: its tensors, sets, maps and the
/// dispatches of forward and backward (see the module documentation).
pub struct Graph<'c> {
    ctx: &'c GpuContext,
    batch: usize,
    /// Patch grid of the input.
    fh: usize,
    fw: usize,
    visible_per_image: usize,
    params: ParamStore,
    train: bool,
    sets: Vec<StageSet>,
    maps: Vec<MapEntry>,
    vars: Vec<VarInfo>,
    forward: Vec<Dispatch>,
    /// The step's patch mask on the GPU (u32 `[B, fh, fw]`, 1 = visible) and on the host.
    mask: GpuTensor,
    host_mask: PatchMask,
    /// Dispatches that build the step's sparse sets and maps from `mask`, run before the
    /// forward (see `finish_prologue`).
    prologue: Vec<Dispatch>,
    tape: Vec<BackwardFn>,
    backward: Vec<Dispatch>,
    /// Per-image scale tensors of the drop-path nodes and their rates, in layer order.
    /// (one scale tensor per chunk of the node's chunking, the chunking, the rate).
    drop_paths: Vec<(Vec<GpuTensor>, Chunks, f64)>,
    /// BatchNorm counters incremented by each training forward.
    bn_counters: Vec<ParamId>,
    /// See [`GraphOptions::dense_encoder`].
    dense_encoder: bool,
    /// See [`GraphOptions::sync_bn_world`].
    sync_bn_world: usize,
    host_points: Vec<HostPoint>,
    /// This graph's images are `image_offset..image_offset + batch` of a global batch of
    /// `global_batch` (per-image random draws are those of the global batch).
    image_offset: usize,
    global_batch: usize,
    /// See [`GraphOptions::chunk_images`].
    chunk_images: Option<usize>,
    /// The loss node's outputs (see `loss`), once recorded.
    loss: Option<loss::LossOutputs>,
    /// See [`GraphOptions::recompute`].
    recompute: bool,
}

impl<'c> Graph<'c> {
    /// An empty graph for `batch` images with an `fh × fw` patch grid, of which every
    /// image shows `visible_per_image` patches, over the parameters `params`.
    pub fn new(
        ctx: &'c GpuContext,
        params: ParamStore,
        batch: usize,
        (fh, fw): (usize, usize),
        visible_per_image: usize,
        options: GraphOptions,
    ) -> Result<Self> {
        let (image_offset, global_batch) = options.shard.unwrap_or((0, batch));
        anyhow::ensure!(
            image_offset + batch <= global_batch,
            "shard {image_offset}..{} outside the global batch of {global_batch}",
            image_offset + batch
        );
        let host_mask = placeholder_mask(batch, fh, fw, visible_per_image);
        let visible: Vec<u32> = host_mask.visible.iter().map(|&v| v as u32).collect();
        Ok(Self {
            ctx,
            batch,
            fh,
            fw,
            visible_per_image,
            params,
            train: options.train,
            sets: vec![],
            maps: vec![],
            vars: vec![],
            forward: vec![],
            mask: ctx.upload(&visible),
            host_mask,
            prologue: vec![],
            tape: vec![],
            backward: vec![],
            drop_paths: vec![],
            bn_counters: vec![],
            dense_encoder: options.dense_encoder,
            chunk_images: options.chunk_images,
            sync_bn_world: options.sync_bn_world.max(1),
            host_points: vec![],
            image_offset,
            global_batch,
            loss: None,
            recompute: options.recompute && options.train,
        })
    }

    /// The GPU context the graph records on.
    pub fn ctx(&self) -> &'c GpuContext {
        self.ctx
    }

    /// Images of the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Is this a training graph (backward recorded, BatchNorm on batch statistics)?
    pub fn is_train(&self) -> bool {
        self.train
    }

    /// The model's parameters and buffers.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// The model's parameters and buffers, to write (initialisation, checkpoints).
    pub fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    /// The forward dispatches in order (the prologue first, once finished; the loss last).
    pub fn forward(&self) -> &[Dispatch] {
        &self.forward
    }

    /// The backward dispatches in order (empty for an evaluation graph).
    pub fn backward(&self) -> &[Dispatch] {
        &self.backward
    }

    /// The points of the step where the host sums a tensor over the ranks.
    pub fn host_points(&self) -> &[HostPoint] {
        &self.host_points
    }

    /// The step's patch mask on the GPU (u32 `[B, fh, fw]`, 1 = visible).
    pub fn mask_buffer(&self) -> &GpuTensor {
        &self.mask
    }

    /// Record the host points an op returned, its dispatches starting at `base` of `pass`.
    pub(crate) fn note_host_points(&mut self, pass: Pass, base: usize, sums: Vec<crate::ops::batchnorm::HostSum>) {
        for sum in sums {
            self.host_points.push(HostPoint { pass, at: base + sum.after, sum });
        }
    }

    /// The set of an `h × w` stage (created on first use): the visible sites of the step's
    /// mask when `sparse`, else every site. A graph built with
    /// [`GraphOptions::dense_encoder`] answers every request with the dense set.
    pub fn set(&mut self, h: usize, w: usize, sparse: bool) -> SetId {
        let sparse = sparse && !self.dense_encoder;
        if let Some(i) = self.sets.iter().position(|s| s.h == h && s.w == w && s.sparse == sparse) {
            return SetId(i);
        }
        let sites = self.batch * h * w;
        let set = if sparse {
            let rows = self.batch * self.visible_per_image * (h / self.fh) * (w / self.fw);
            let set = StageSet {
                h,
                w,
                sparse,
                rows,
                row_of: self.ctx.zeros(sites),
                site_of_row: self.ctx.zeros(rows),
                relative: vec![],
            };
            let ch = self.chunks_for_bytes(&[(h * w * 4) as u64, (rows / self.batch * 4) as u64]);
            for r in ch.ranges() {
                let d = active_rows(self.ctx, self.mask_tensor(), set.indices(), r).expect("a stage of the patch grid");
                self.prologue.push(d);
            }
            set
        } else {
            let active = ActiveSet::dense(self.batch, h, w);
            StageSet {
                h,
                w,
                sparse,
                rows: active.rows(),
                row_of: self.ctx.upload(&active.row_of),
                site_of_row: self.ctx.upload(&site_indices(&active)),
                relative: vec![],
            }
        };
        assert_eq!(set.row_of.len, sites);
        self.sets.push(set);
        SetId(self.sets.len() - 1)
    }

    /// The set behind `s`.
    pub fn stage(&self, s: SetId) -> &StageSet {
        &self.sets[s.0]
    }

    fn mask_tensor(&self) -> MaskTensor<'_> {
        MaskTensor {
            visible: &self.mask,
            batch: self.batch,
            fh: self.fh,
            fw: self.fw,
            visible_per_image: self.visible_per_image,
        }
    }

    /// The active sites of set `s` under the current mask, on the host (for reading
    /// results back; the graph itself builds them on the GPU).
    pub fn active_set(&self, s: SetId) -> ActiveSet {
        let set = &self.sets[s.0];
        if set.sparse {
            ActiveSet::from_patch_mask(&self.host_mask, set.h, set.w)
        } else {
            ActiveSet::dense(self.batch, set.h, set.w)
        }
    }

    /// Put the prologue (the GPU build of the step's sets and maps) in front of the
    /// forward; returns how many dispatches it holds. Called once, when the graph is
    /// complete.
    pub fn finish_prologue(&mut self) -> usize {
        let p = std::mem::take(&mut self.prologue);
        let n = p.len();
        self.forward.splice(0..0, p);
        // The forward's host points move with the dispatches they follow.
        for h in self.host_points.iter_mut().filter(|h| h.pass == Pass::Forward) {
            h.at += n;
        }
        n
    }

    /// Record a dispatch that runs in the prologue, after every set and map built so far
    /// (e.g. gathering the visible input pixels).
    pub fn push_prologue(&mut self, d: impl IntoIterator<Item = Dispatch>) {
        self.prologue.extend(d);
    }

    /// `row_of` and `site_of_row` of set `s` for an op chunked as `ch` (chunk-relative
    /// copies, kept up to date by `set_mask`, when `ch` is not whole).
    pub fn row_indices(&mut self, s: SetId, ch: Chunks) -> (GpuTensor, GpuTensor) {
        let set = &self.sets[s.0];
        if ch.is_whole() {
            return (set.row_of.clone(), set.site_of_row.clone());
        }
        if let Some((_, r, q)) = set.relative.iter().find(|e| e.0 == ch) {
            return (r.clone(), q.clone());
        }
        let (r, q) = (self.ctx.zeros(set.row_of.len), self.ctx.zeros(set.site_of_row.len));
        let (sites, rows) = (set.h * set.w, set.rows / self.batch);
        let m = self.mask_tensor();
        let mut d = vec![];
        for imgs in self.chunks_for_bytes(&[sites as u64 * 4, rows as u64 * 4]).ranges() {
            d.push(relative_copy(self.ctx, m, &set.row_of, &r, sites, rows, ch.images, imgs.clone()));
            d.push(relative_copy(self.ctx, m, &set.site_of_row, &q, rows, sites, ch.images, imgs));
        }
        let d: Vec<Dispatch> = d.into_iter().collect::<Result<_>>().expect("relative copies of a set's indices");
        self.prologue.extend(d);
        self.sets[s.0].relative.push((ch, r.clone(), q.clone()));
        (r, q)
    }

    /// Gather maps `(map, inverse)` from `from` to `to` for an op chunked as `ch`
    /// (created on first use; chunk-relative when `ch` is not whole).
    pub fn maps(&mut self, from: SetId, to: SetId, win: Window, transposed: bool, ch: Chunks) -> (GpuTensor, GpuTensor) {
        if let Some(m) = self
            .maps
            .iter()
            .find(|m| m.from == from && m.to == to && m.win == win && m.transposed == transposed && m.chunks == ch)
        {
            return (m.map.clone(), m.inv.clone());
        }
        let (a, b) = (&self.sets[from.0], &self.sets[to.0]);
        let (map, inv) = if a.sparse || b.sparse {
            let taps = win.taps();
            let (map, inv) = (self.ctx.zeros(b.rows * taps), self.ctx.zeros(a.rows * taps));
            let chunk = if ch.is_whole() { 0 } else { ch.images };
            let (pa, pb) = ((a.rows / self.batch) as u64 * 4, (b.rows / self.batch) as u64 * 4);
            let bytes = [(a.h * a.w * 4) as u64, (b.h * b.w * 4) as u64, pa, pb, pa * taps as u64, pb * taps as u64];
            let mut d = vec![];
            for imgs in self.chunks_for_bytes(&bytes).ranges() {
                let (a, b) = (&self.sets[from.0], &self.sets[to.0]);
                d.extend(
                    neighbour_maps(self.ctx, self.mask_tensor(), a.indices(), b.indices(), win, transposed, chunk, &map, &inv, imgs)
                        .expect("maps between stages of the patch grid"),
                );
            }
            self.prologue.extend(d);
            (map, inv)
        } else if self.ctx.is_dry_run() {
            // Sizing only: the maps' lengths, not their contents (computing them on the host
            // took most of a large batch's dry run).
            let taps = win.taps();
            (self.ctx.dry_upload(b.rows * taps), self.ctx.dry_upload(a.rows * taps))
        } else {
            let (from_set, to_set) = (self.active_set(from), self.active_set(to));
            let (map, inv) = Self::compute_maps(&from_set, &to_set, win, transposed, ch);
            (self.ctx.upload(&map.map), self.ctx.upload(&inv.map))
        };
        let entry = MapEntry { from, to, win, transposed, chunks: ch, map, inv };
        let out = (entry.map.clone(), entry.inv.clone());
        self.maps.push(entry);
        out
    }

    fn compute_maps(
        from: &ActiveSet,
        to: &ActiveSet,
        win: Window,
        transposed: bool,
        ch: Chunks,
    ) -> (crate::sparse::NeighbourMap, crate::sparse::NeighbourMap) {
        let map = if transposed { transposed_conv_map(from, to, win) } else { conv_map(from, to, win) };
        let mut inv = inverse_map(&map, from.rows());
        let mut map = map;
        if !ch.is_whole() {
            let (rin, rout, taps) = (from.rows() / ch.batch, to.rows() / ch.batch, win.taps());
            chunks::relativize(&mut map.map, rout * taps, rin, ch.images);
            chunks::relativize(&mut inv.map, rin * taps, rout, ch.images);
        }
        (map, inv)
    }

    /// Point every sparse set and map at a new patch mask (host work + buffer writes,
    /// no new dispatches). Every image must show `visible_per_image` patches.
    pub fn set_mask(&mut self, mask: &PatchMask) -> Result<()> {
        anyhow::ensure!(
            mask.batch == self.batch && mask.fh == self.fh && mask.fw == self.fw,
            "mask is [{}, {}, {}], the graph was built for [{}, {}, {}]",
            mask.batch,
            mask.fh,
            mask.fw,
            self.batch,
            self.fh,
            self.fw
        );
        for b in 0..mask.batch {
            let n = mask.visible[b * mask.fh * mask.fw..(b + 1) * mask.fh * mask.fw].iter().filter(|&&v| v != 0).count();
            anyhow::ensure!(
                n == self.visible_per_image,
                "image {b} of the mask shows {n} patches; the graph was built for exactly {} per image",
                self.visible_per_image
            );
        }
        let visible: Vec<u32> = mask.visible.iter().map(|&v| (v != 0) as u32).collect();
        self.ctx.write(&self.mask, &visible);
        self.host_mask = mask.clone();
        Ok(())
    }

    // ---- variables -------------------------------------------------------------------

    fn push_var(&mut self, set: SetId, c: usize, needs_grad: bool) -> Var {
        let rows = self.sets[set.0].rows;
        let t = self.ctx.zeros(rows * c);
        self.vars.push(VarInfo { t, set, c, needs_grad, grad: None, grad_written: false, recompute: None, again: None });
        Var(self.vars.len() - 1)
    }

    /// Let the backward recompute `v` from `inputs` with `make` (the dispatches that
    /// write `out` from the inputs' backward copies) rather than keep its forward
    /// tensor, when the graph recomputes at all (see [`GraphOptions::recompute`]).
    /// Worth it only where the inputs are kept for the backward anyway.
    #[allow(clippy::type_complexity)]
    fn recomputable(&mut self, v: Var, inputs: &[Var], make: impl Fn(&Graph, &[GpuTensor], &GpuTensor) -> Result<Vec<Dispatch>> + 'static) {
        if self.recompute {
            self.vars[v.0].recompute = Some(Rc::new(Recompute { inputs: inputs.to_vec(), make: Box::new(make) }));
        }
    }

    /// Whether the backward recomputes `v` (see [`Self::recomputable`]).
    fn is_recomputed(&self, v: Var) -> bool {
        self.vars[v.0].recompute.is_some()
    }

    /// Backward only: the value of `v` as the forward computed it. A tensor the graph
    /// recomputes is made again here, at its first use in the backward (its inputs
    /// first, recursively), so its memory is live only from there to its last backward
    /// use; every other tensor is the forward's.
    fn saved(&mut self, v: Var) -> Result<GpuTensor> {
        let info = &self.vars[v.0];
        let Some(rule) = info.recompute.clone() else { return Ok(info.t.clone()) };
        if let Some(t) = &info.again {
            return Ok(t.clone());
        }
        let len = info.t.len;
        let inputs = rule.inputs.iter().map(|&i| self.saved(i)).collect::<Result<Vec<_>>>()?;
        let t = self.ctx.zeros(len);
        let mut d = (rule.make)(self, &inputs, &t)?;
        for x in &mut d {
            x.label = format!("recompute {}", x.label).trim_end().to_string();
        }
        self.backward.extend(d);
        self.vars[v.0].again = Some(t.clone());
        Ok(t)
    }

    /// A leaf written by the host each step (no gradient).
    pub fn input(&mut self, set: SetId, c: usize) -> Var {
        self.push_var(set, c, false)
    }

    /// The tensor behind `v`.
    pub fn tensor(&self, v: Var) -> &GpuTensor {
        &self.vars[v.0].t
    }

    /// Channels of `v`.
    pub fn channels(&self, v: Var) -> usize {
        self.vars[v.0].c
    }

    /// The set `v`'s rows belong to.
    pub fn set_of(&self, v: Var) -> SetId {
        self.vars[v.0].set
    }

    /// Rows of `v` (those of its set).
    pub fn rows(&self, v: Var) -> usize {
        self.sets[self.vars[v.0].set.0].rows
    }

    /// The gradient of `v`, once the backward has allocated one.
    pub fn grad_tensor(&self, v: Var) -> Option<&GpuTensor> {
        self.vars[v.0].grad.as_ref()
    }

    // ---- tape ------------------------------------------------------------------------

    /// Record the backward closure of the op that produced `out`.
    fn on_backward(&mut self, out: Var, f: impl FnOnce(&mut Graph) -> Result<()> + 'static) {
        if self.train {
            self.tape.push((out, Box::new(f)));
        }
    }

    /// The gradient of an op's output (None when nothing downstream needed it).
    fn grad_out(&self, v: Var) -> Option<GpuTensor> {
        let info = &self.vars[v.0];
        info.grad_written.then(|| info.grad.clone().unwrap())
    }

    /// The gradient buffer an op writes for its input `v`, and whether to add into it.
    /// None when `v` needs no gradient.
    fn grad_in(&mut self, v: Var) -> Option<(GpuTensor, bool)> {
        let rows = self.rows(v);
        let info = &mut self.vars[v.0];
        if !info.needs_grad {
            return None;
        }
        if info.grad.is_none() {
            // A buffer of its own here; the memory plan (`gpu::plan`) lets gradients
            // that are dead share memory with later ones and with dead activations.
            info.grad = Some(self.ctx.zeros(rows * info.c));
        }
        let acc = info.grad_written;
        info.grad_written = true;
        Some((info.grad.clone().unwrap(), acc))
    }

    /// Length of the tape so far (a mark for `build_backward`).
    pub fn tape_len(&self) -> usize {
        self.tape.len()
    }

    /// Record the backward pass (once, after the forward graph and the loss). Returns the
    /// index in `backward` where the ops recorded before `mark` (tape length at some
    /// point of the forward) start: everything from there on is their backward.
    pub fn build_backward(&mut self, mark: usize) -> Result<usize> {
        anyhow::ensure!(self.loss.is_some(), "the backward starts from the loss: record `masked_patch_loss` first");
        let tape = std::mem::take(&mut self.tape);
        let mut start = 0;
        for (i, (out, f)) in tape.into_iter().enumerate().rev() {
            if i + 1 == mark {
                start = self.backward.len();
            }
            f(self)?;
            // Every consumer of `out` comes later in the forward, so its backward ran
            // earlier: once the producer's backward has read the gradient of `out`, the
            // graph holds it no longer (its dispatches do, and the memory plan shares
            // its buffer from then on).
            self.vars[out.0].grad = None;
        }
        Ok(start)
    }

    /// Draw the drop-path masks of training step `step` (reproducible from the seed, so a
    /// resumed run draws the same ones).
    pub fn set_drop_path_step(&self, seed: u64, step: u64) {
        for (layer, (scales, ch, p)) in self.drop_paths.iter().enumerate() {
            let s = crate::ops::drop_path::drop_path_scales(seed, step, layer as u64, self.global_batch, *p);
            let s = &s[self.image_offset..self.image_offset + self.batch];
            for (t, r) in scales.iter().zip(ch.ranges()) {
                self.ctx.write(t, &s[r]);
            }
        }
    }

    /// Count one training forward on every BatchNorm's `num_batches_tracked`.
    pub fn count_bn_forward(&mut self) {
        for &p in &self.bn_counters {
            self.params.counters[p.0] += 1;
        }
    }
}
