//! The static graph: every tensor, map and dispatch of a training step, built once for
//! (model, batch size, input size) and replayed every step.
//!
//! Shapes are static because every image keeps the same number of visible patches, so
//! each stage's row count is fixed; only the *contents* of the active sets change per
//! step. The host computes the row lists and neighbour maps of the step's mask
//! (`set_mask`) and writes them into buffers of fixed size; the dispatches themselves
//! never change.
//!
//! Autodiff is a tape: every forward op records its dispatches and pushes a closure that
//! records its backward dispatches. `build_backward` runs the closures in reverse.
//! Input gradients use "first writer overwrites, later writers add" (`accumulate`), so no
//! gradient buffer needs clearing and fan-in sums in a fixed order.

pub mod chunks;
pub mod nodes;
pub mod params;

use anyhow::Result;

use crate::gpu::{Dispatch, GpuContext, GpuTensor};
use crate::sparse::{ActiveSet, PatchMask, Window, conv_map, inverse_map, transposed_conv_map};
pub use chunks::Chunks;
pub use params::{Kind, ParamId, ParamRegistry, ParamSpec, ParamStore};

/// A stage resolution: sparse (visible sites of the step's mask) or dense (every site).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SetId(pub usize);

pub struct StageSet {
    pub h: usize,
    pub w: usize,
    pub sparse: bool,
    pub rows: usize,
    /// i32 `[B*h*w]`: row of each site or -1.
    pub row_of: GpuTensor,
    /// i32 `[rows]`: site index `(b*h+y)*w+x` of each row.
    pub site_of_row: GpuTensor,
    /// The host copy for the current mask.
    pub active: ActiveSet,
    /// Chunk-relative copies of `row_of` and `site_of_row` for chunked ops (see
    /// `chunks`), one per chunking in use.
    relative: Vec<(Chunks, GpuTensor, GpuTensor)>,
}

impl StageSet {
    /// `row_of` and `site_of_row` with every index counted from its chunk's first image.
    fn relative_indices(&self, ch: Chunks) -> (Vec<i32>, Vec<i32>) {
        let (mut row_of, mut site_of_row) = (self.active.row_of.clone(), site_indices(&self.active));
        let (sites, rows) = (self.h * self.w, self.rows / ch.batch);
        chunks::relativize(&mut row_of, sites, rows, ch.images);
        chunks::relativize(&mut site_of_row, rows, sites, ch.images);
        (row_of, site_of_row)
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
}

type BackwardFn = (Var, Box<dyn FnOnce(&mut Graph) -> Result<()>>);

pub struct Graph<'c> {
    pub ctx: &'c GpuContext,
    pub batch: usize,
    /// Patch grid of the input.
    pub fh: usize,
    pub fw: usize,
    pub visible_per_image: usize,
    pub params: ParamStore,
    pub train: bool,
    sets: Vec<StageSet>,
    maps: Vec<MapEntry>,
    vars: Vec<VarInfo>,
    pub forward: Vec<Dispatch>,
    tape: Vec<BackwardFn>,
    pub backward: Vec<Dispatch>,
    /// Dead gradient buffers available for reuse while the backward is recorded.
    grad_pool: Vec<GpuTensor>,
    /// Per-image scale tensors of the drop-path nodes and their rates, in layer order.
    /// (one scale tensor per chunk of the node's chunking, the chunking, the rate).
    drop_paths: Vec<(Vec<GpuTensor>, Chunks, f64)>,
    /// BatchNorm counters incremented by each training forward.
    bn_counters: Vec<ParamId>,
    /// Compute every "sparse" stage densely (every site), as the official code does
    /// before masking; for speed comparisons only.
    pub dense_encoder: bool,
    /// Split every op into chunks of at most this many images even where the batch fits
    /// the adapter's binding limit (see `chunks`): to test and measure the chunked path.
    pub chunk_images: Option<usize>,
}

impl<'c> Graph<'c> {
    pub fn new(
        ctx: &'c GpuContext,
        params: ParamStore,
        batch: usize,
        fh: usize,
        fw: usize,
        visible_per_image: usize,
        train: bool,
    ) -> Self {
        Self {
            ctx,
            batch,
            fh,
            fw,
            visible_per_image,
            params,
            train,
            sets: vec![],
            maps: vec![],
            vars: vec![],
            forward: vec![],
            tape: vec![],
            backward: vec![],
            grad_pool: vec![],
            drop_paths: vec![],
            bn_counters: vec![],
            dense_encoder: false,
            chunk_images: None,
        }
    }

    /// The set of an `h × w` stage (created on first use).
    pub fn set(&mut self, h: usize, w: usize, sparse: bool) -> SetId {
        let sparse = sparse && !self.dense_encoder;
        if let Some(i) = self.sets.iter().position(|s| s.h == h && s.w == w && s.sparse == sparse) {
            return SetId(i);
        }
        let sites = self.batch * h * w;
        let active = if sparse {
            // Placeholder until the first mask: the first `visible_per_image` patches.
            let per = self.fh * self.fw;
            let v = (0..self.batch * per).map(|i| (i % per < self.visible_per_image) as u8).collect();
            ActiveSet::from_patch_mask(&PatchMask::new(self.batch, self.fh, self.fw, v), h, w)
        } else {
            ActiveSet::dense(self.batch, h, w)
        };
        let rows = active.rows();
        let set = StageSet {
            h,
            w,
            sparse,
            rows,
            row_of: self.ctx.upload(&active.row_of),
            site_of_row: self.ctx.upload(&site_indices(&active)),
            active,
            relative: vec![],
        };
        assert_eq!(set.row_of.len, sites);
        self.sets.push(set);
        SetId(self.sets.len() - 1)
    }

    pub fn stage(&self, s: SetId) -> &StageSet {
        &self.sets[s.0]
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
        let (row_of, site_of_row) = set.relative_indices(ch);
        let (r, q) = (self.ctx.upload(&row_of), self.ctx.upload(&site_of_row));
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
        let (map, inv) = Self::compute_maps(&self.sets[from.0].active, &self.sets[to.0].active, win, transposed, ch);
        let entry = MapEntry {
            from,
            to,
            win,
            transposed,
            chunks: ch,
            map: self.ctx.upload(&map.map),
            inv: self.ctx.upload(&inv.map),
        };
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
        for s in self.sets.iter_mut().filter(|s| s.sparse) {
            s.active = ActiveSet::from_patch_mask(mask, s.h, s.w);
            self.ctx.write(&s.row_of, &s.active.row_of);
            self.ctx.write(&s.site_of_row, &site_indices(&s.active));
            for (ch, r, q) in &s.relative {
                let (row_of, site_of_row) = s.relative_indices(*ch);
                self.ctx.write(r, &row_of);
                self.ctx.write(q, &site_of_row);
            }
        }
        for m in &self.maps {
            if self.sets[m.from.0].sparse || self.sets[m.to.0].sparse {
                let (map, inv) = Self::compute_maps(
                    &self.sets[m.from.0].active,
                    &self.sets[m.to.0].active,
                    m.win,
                    m.transposed,
                    m.chunks,
                );
                self.ctx.write(&m.map, &map.map);
                self.ctx.write(&m.inv, &inv.map);
            }
        }
        Ok(())
    }

    // ---- variables -------------------------------------------------------------------

    fn push_var(&mut self, set: SetId, c: usize, needs_grad: bool) -> Var {
        let rows = self.sets[set.0].rows;
        let t = self.ctx.zeros(rows * c);
        self.vars.push(VarInfo { t, set, c, needs_grad, grad: None, grad_written: false });
        Var(self.vars.len() - 1)
    }

    /// A leaf written by the host each step (no gradient).
    pub fn input(&mut self, set: SetId, c: usize) -> Var {
        self.push_var(set, c, false)
    }

    pub fn tensor(&self, v: Var) -> &GpuTensor {
        &self.vars[v.0].t
    }

    pub fn channels(&self, v: Var) -> usize {
        self.vars[v.0].c
    }

    pub fn set_of(&self, v: Var) -> SetId {
        self.vars[v.0].set
    }

    pub fn rows(&self, v: Var) -> usize {
        self.sets[self.vars[v.0].set.0].rows
    }

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
            let len = rows * info.c;
            // Best fit from the gradients that are already dead (see `build_backward`).
            let best = (0..self.grad_pool.len())
                .filter(|&i| self.grad_pool[i].len >= len)
                .min_by_key(|&i| self.grad_pool[i].len);
            info.grad = Some(match best {
                Some(i) => self.grad_pool.swap_remove(i).slice(0, len),
                None => self.ctx.zeros(len),
            });
        }
        let acc = info.grad_written;
        info.grad_written = true;
        Some((info.grad.clone().unwrap(), acc))
    }

    /// Seed the gradient of `v` with an existing tensor (the loss kernel's output).
    pub fn seed_grad(&mut self, v: Var, g: GpuTensor) {
        let info = &mut self.vars[v.0];
        info.grad = Some(g);
        info.grad_written = true;
    }

    /// Length of the tape so far (a mark for `build_backward`).
    pub fn tape_len(&self) -> usize {
        self.tape.len()
    }

    /// Record the backward pass (once, after the forward graph and the loss). Returns the
    /// index in `backward` where the ops recorded before `mark` (tape length at some
    /// point of the forward) start: everything from there on is their backward.
    pub fn build_backward(&mut self, mark: usize) -> Result<usize> {
        let tape = std::mem::take(&mut self.tape);
        let mut start = 0;
        for (i, (out, f)) in tape.into_iter().enumerate().rev() {
            if i + 1 == mark {
                start = self.backward.len();
            }
            f(self)?;
            // Every consumer of `out` comes later in the forward, so its backward ran
            // earlier: once the producer's backward has read the gradient of `out`, that
            // buffer is dead and later gradients reuse it (dispatches run in order, and
            // wgpu orders the accesses), which roughly halves the memory of the backward.
            if let Some(g) = self.vars[out.0].grad.take() {
                let capacity = (g.buffer.size() / 4) as usize;
                self.grad_pool.push(GpuTensor { buffer: g.buffer, offset: 0, len: capacity });
            }
        }
        Ok(start)
    }

    /// Draw the drop-path masks of training step `step` (reproducible from the seed, so a
    /// resumed run draws the same ones).
    pub fn set_drop_path_step(&self, seed: u64, step: u64) {
        for (layer, (scales, ch, p)) in self.drop_paths.iter().enumerate() {
            let s = crate::ops::drop_path::drop_path_scales(seed, step, layer as u64, self.batch, *p);
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

    /// Bytes of every buffer created through the context (parameters, activations,
    /// gradients, maps, scratch).
    pub fn gpu_memory_bytes(&self) -> u64 {
        self.ctx.allocated_bytes()
    }
}
