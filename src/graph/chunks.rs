//! Image chunks: how an op stays within the adapter's per-binding limit at any batch.
//!
//! A storage binding may cover at most `max_storage_buffer_binding_size` bytes (128 MiB on
//! lavapipe and many integrated GPUs), far less than a buffer may hold
//! (`max_buffer_size`, 2 GiB on lavapipe). ResNet-50 at 224² with decoder width 768 binds
//! 9.2 MiB per image in the decoder's last block, so a single dispatch over the batch
//! stops fitting at batch 14 (issue 9 item 4). Tensors therefore stay whole buffers, and
//! an op whose views would exceed the limit records its dispatches once per chunk of
//! whole images, each on views of the chunk's rows.
//!
//! Whole images work because every set's rows are image-major with a fixed count per
//! image (every image shows exactly `visible_per_image` patches, see `Graph`), and every
//! gather stays within one image. Index tensors that name rows (neighbour maps, `row_of`,
//! `site_of_row`) are kept *chunk-relative* for chunked ops: the first row of the chunk
//! reads as row 0, so the kernels need no change. Reductions over rows (weight, bias,
//! BatchNorm and token gradients) are summed over the chunks in ascending order, so the
//! result stays deterministic; it differs from the unchunked sum only in rounding.

use anyhow::Result;
use std::ops::Range;

use super::{Graph, SetId};
use crate::gpu::{Dispatch, GpuTensor};
use crate::ops::elementwise::copy_or_add;
pub(crate) use crate::sparse::relativize;

/// How an op's dispatches are split over the batch: consecutive chunks of `images`
/// images (the last one may be shorter). `images >= batch` is one dispatch as before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Chunks {
    /// Images per chunk.
    pub images: usize,
    /// Images in the batch.
    pub batch: usize,
}

impl Chunks {
    /// The whole batch as one chunk.
    pub fn whole(batch: usize) -> Self {
        Self { images: batch.max(1), batch }
    }

    /// Whether the batch is one chunk.
    pub fn is_whole(&self) -> bool {
        self.images >= self.batch
    }

    /// The image range of every chunk, in order.
    pub fn ranges(&self) -> impl Iterator<Item = Range<usize>> + use<> {
        let (n, b) = (self.images.max(1), self.batch);
        (0..b.div_ceil(n)).map(move |k| k * n..((k + 1) * n).min(b))
    }
}

impl Graph<'_> {
    /// Rows of one image in set `s` (fixed: see the module comment).
    pub fn rows_per_image(&self, s: SetId) -> usize {
        self.stage(s).rows / self.batch
    }

    /// The chunking of an op that binds tensors laid out as `[rows of set, width]` for
    /// each `(set, width)` of `parts`: one dispatch when every view fits the adapter's
    /// binding limit, else the most images per chunk such that every chunk view fits and
    /// starts at an offset the adapter can bind. When not even that exists (one image is
    /// over the limit), the whole batch: the graph's sizing dry run then reports the
    /// binding that does not fit, before anything is allocated. `Graph::chunk_images`
    /// caps the chunk size even where the batch fits (tests, chunking benchmarks).
    pub fn chunks_for(&self, parts: &[(SetId, usize)]) -> Chunks {
        let per_image: Vec<u64> = parts.iter().map(|&(s, w)| (self.rows_per_image(s) * w) as u64 * 4).collect();
        self.chunks_for_bytes(&per_image)
    }

    /// [`Graph::chunks_for`] for views of `per_image[i]` bytes per image each.
    pub fn chunks_for_bytes(&self, per_image: &[u64]) -> Chunks {
        let limit = self.ctx.limits.max_storage_buffer_binding_size;
        let align = self.ctx.limits.min_storage_buffer_offset_alignment.max(4) as u64;
        let fits = |n: usize| per_image.iter().all(|&b| b * n as u64 <= limit);
        let aligned = |n: usize| per_image.iter().all(|&b| (b * n as u64).is_multiple_of(align));
        let whole = Chunks::whole(self.batch);
        let cap = self.chunk_images.unwrap_or(self.batch).clamp(1, self.batch);
        if cap == self.batch && fits(self.batch) {
            return whole;
        }
        (1..=cap.min(self.batch - 1))
            .rev()
            .find(|&n| fits(n) && aligned(n))
            .map_or(whole, |images| Chunks { images, batch: self.batch })
    }

    /// The rows of images `imgs` of a tensor laid out as `[rows of set, width]`.
    pub fn view(&self, t: &GpuTensor, set: SetId, width: usize, imgs: &Range<usize>) -> GpuTensor {
        let per = self.rows_per_image(set) * width;
        if imgs.start == 0 && imgs.end == self.batch {
            return t.clone();
        }
        t.slice(imgs.start * per, imgs.len() * per)
    }

    /// The dispatches of `f` for every chunk, in order.
    pub fn per_chunk(
        &self,
        ch: Chunks,
        mut f: impl FnMut(&Self, &Range<usize>) -> Result<Vec<Dispatch>>,
    ) -> Result<Vec<Dispatch>> {
        let mut out = vec![];
        for r in ch.ranges() {
            out.extend(f(self, &r)?);
        }
        Ok(out)
    }

    /// An op that overwrites `targets` with sums over its rows (parameter gradients), run
    /// per chunk: the first chunk writes the targets, every later one writes scratch of the
    /// same sizes that is then added in, chunk by chunk (a fixed order). `f` gets the
    /// chunk and the tensors to write, in the order of `targets`.
    pub fn per_chunk_summed(
        &self,
        ch: Chunks,
        targets: &[GpuTensor],
        mut f: impl FnMut(&Self, &Range<usize>, &[GpuTensor]) -> Result<Vec<Dispatch>>,
    ) -> Result<Vec<Dispatch>> {
        let scratch: Vec<GpuTensor> =
            if ch.is_whole() { vec![] } else { targets.iter().map(|t| self.ctx.zeros(t.len)).collect() };
        let mut out = vec![];
        for (k, r) in ch.ranges().enumerate() {
            if k == 0 {
                out.extend(f(self, &r, targets)?);
            } else {
                out.extend(f(self, &r, &scratch)?);
                for (s, t) in scratch.iter().zip(targets) {
                    out.extend(copy_or_add(self.ctx, s, t, t.len, true)?);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ranges_cover_the_batch_in_order() {
        let r: Vec<_> = Chunks { images: 3, batch: 8 }.ranges().collect();
        assert_eq!(r, vec![0..3, 3..6, 6..8]);
        assert_eq!(Chunks::whole(5).ranges().collect::<Vec<_>>(), vec![0..5]);
        assert!(Chunks::whole(5).is_whole() && !Chunks { images: 4, batch: 5 }.is_whole());
    }

    #[test]
    fn relative_indices_count_from_their_chunk_and_keep_codes() {
        // 4 images of 2 entries each, indexing 3 rows per image; chunks of 2 images.
        let mut v = vec![0, 2, 4, -1, 7, 6, 11, -2];
        relativize(&mut v, 2, 3, 2);
        assert_eq!(v, vec![0, 2, 4, -1, 1, 0, 5, -2]);
    }
}
