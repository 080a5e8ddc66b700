//! Active sets and neighbour maps: which sites of each stage exist, and for every output
//! site and kernel tap, which input row it reads.
//!
//! A patch mask `[B, fh, fw]` (1 = visible, one patch = 32×32 input pixels) decides every
//! stage: a stage of resolution `h × w` has `h / fh` sites per patch side, and a site
//! is active iff its patch is visible. A strided layer's output set is therefore the
//! downsampled patch mask, never a dilation of its input set (SparK's submanifold rule).
//! Rows are numbered in canonical `(b, y, x)` order.

pub mod gpu;
mod maps;

pub use maps::{NeighbourMap, Window, conv_map, inverse_map, relativize, transposed_conv_map, INACTIVE, OUT_OF_BOUNDS};

/// Which patches are visible: `visible[b * fh * fw + py * fw + px]`, 1 = visible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchMask {
    /// Images.
    pub batch: usize,
    /// Patch rows per image.
    pub fh: usize,
    /// Patch columns per image.
    pub fw: usize,
    /// 1 = visible, `[batch, fh, fw]` row-major.
    pub visible: Vec<u8>,
}

impl PatchMask {
    /// A mask from its values (panics if `visible` is not `batch * fh * fw` long).
    pub fn new(batch: usize, fh: usize, fw: usize, visible: Vec<u8>) -> Self {
        assert_eq!(visible.len(), batch * fh * fw, "patch mask of {} values for [{batch},{fh},{fw}]", visible.len());
        Self { batch, fh, fw, visible }
    }

    /// Every patch visible (dense computation).
    pub fn all_visible(batch: usize, fh: usize, fw: usize) -> Self {
        Self::new(batch, fh, fw, vec![1; batch * fh * fw])
    }

    /// Whether patch `(py, px)` of image `b` is visible.
    pub fn is_visible(&self, b: usize, py: usize, px: usize) -> bool {
        self.visible[(b * self.fh + py) * self.fw + px] != 0
    }

    /// Number of visible patches over the batch.
    pub fn visible_count(&self) -> usize {
        self.visible.iter().filter(|&&v| v != 0).count()
    }
}

/// The active sites of one stage, in canonical `(b, y, x)` order.
#[derive(Clone, Debug)]
pub struct ActiveSet {
    /// Images.
    pub batch: usize,
    /// Height in sites.
    pub h: usize,
    /// Width in sites.
    pub w: usize,
    /// `(b, y, x)` of every row.
    pub sites: Vec<[u32; 3]>,
    /// Row of site `(b * h + y) * w + x`, or -1 when the site is inactive.
    pub row_of: Vec<i32>,
}

impl ActiveSet {
    /// The sites of an `h × w` stage that lie in visible patches. `h` and `w` must be
    /// multiples of the patch grid (every stage of a SparK encoder is).
    pub fn from_patch_mask(mask: &PatchMask, h: usize, w: usize) -> Self {
        assert!(
            h.is_multiple_of(mask.fh) && w.is_multiple_of(mask.fw),
            "stage {h}×{w} is not a multiple of the {}×{} patch grid",
            mask.fh,
            mask.fw
        );
        let (sy, sx) = (h / mask.fh, w / mask.fw);
        Self::from_fn(mask.batch, h, w, |b, y, x| mask.is_visible(b, y / sy, x / sx))
    }

    /// Every site active.
    pub fn dense(batch: usize, h: usize, w: usize) -> Self {
        Self::from_fn(batch, h, w, |_, _, _| true)
    }

    /// The sites where `active(b, y, x)` holds, in canonical order.
    pub fn from_fn(batch: usize, h: usize, w: usize, active: impl Fn(usize, usize, usize) -> bool) -> Self {
        let mut sites = vec![];
        let mut row_of = vec![-1i32; batch * h * w];
        for b in 0..batch {
            for y in 0..h {
                for x in 0..w {
                    if active(b, y, x) {
                        row_of[(b * h + y) * w + x] = sites.len() as i32;
                        sites.push([b as u32, y as u32, x as u32]);
                    }
                }
            }
        }
        Self { batch, h, w, sites, row_of }
    }

    /// Number of rows (active sites).
    pub fn rows(&self) -> usize {
        self.sites.len()
    }

    /// Row at `(b, y, x)` with signed coordinates: `OUT_OF_BOUNDS` outside the map,
    /// `INACTIVE` at an inactive site inside it.
    pub fn lookup(&self, b: usize, y: i64, x: i64) -> i32 {
        if y < 0 || x < 0 || y >= self.h as i64 || x >= self.w as i64 {
            return OUT_OF_BOUNDS;
        }
        match self.row_of[(b * self.h + y as usize) * self.w + x as usize] {
            -1 => INACTIVE,
            r => r,
        }
    }

    /// Scatter rows `[rows, c]` into a dense `[B, h, w, c]` map, `fill` at inactive sites.
    pub fn scatter(&self, rows: &[f32], c: usize, fill: &[f32]) -> Vec<f32> {
        assert_eq!(rows.len(), self.rows() * c);
        let mut out = Vec::with_capacity(self.row_of.len() * c);
        for &r in &self.row_of {
            if r >= 0 {
                out.extend_from_slice(&rows[r as usize * c..(r as usize + 1) * c]);
            } else {
                out.extend_from_slice(&fill[..c]);
            }
        }
        out
    }

    /// Gather the active sites of a dense `[B, h, w, c]` map into rows `[rows, c]`.
    pub fn gather(&self, dense: &[f32], c: usize) -> Vec<f32> {
        assert_eq!(dense.len(), self.row_of.len() * c);
        let mut out = Vec::with_capacity(self.rows() * c);
        for &[b, y, x] in &self.sites {
            let s = (b as usize * self.h + y as usize) * self.w + x as usize;
            out.extend_from_slice(&dense[s * c..(s + 1) * c]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_sites_follow_their_patch() {
        // 2 images, 2×2 patches; image 0 shows patches (0,1) and (1,0), image 1 only (1,1).
        let mask = PatchMask::new(2, 2, 2, vec![0, 1, 1, 0, 0, 0, 0, 1]);
        let s = ActiveSet::from_patch_mask(&mask, 4, 4); // 2×2 sites per patch
        assert_eq!(s.rows(), 3 * 4);
        assert_eq!(s.sites[0], [0, 0, 2]);
        assert_eq!(s.lookup(0, 0, 0), INACTIVE);
        assert_eq!(s.lookup(0, -1, 0), OUT_OF_BOUNDS);
        assert_eq!(s.lookup(1, 3, 3), 11);
        // canonical order: strictly increasing (b, y, x)
        assert!(s.sites.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn scatter_then_gather_is_identity() {
        let mask = PatchMask::new(1, 2, 2, vec![1, 0, 0, 1]);
        let s = ActiveSet::from_patch_mask(&mask, 2, 2);
        let rows = vec![1.0, 2.0, 3.0, 4.0];
        let dense = s.scatter(&rows, 2, &[9.0, 9.0]);
        assert_eq!(dense, vec![1.0, 2.0, 9.0, 9.0, 9.0, 9.0, 3.0, 4.0]);
        assert_eq!(s.gather(&dense, 2), rows);
    }
}
