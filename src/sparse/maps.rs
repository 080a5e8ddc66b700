//! Neighbour maps for gather-based (sparse or dense) convolution and pooling.
//!
//! `map[r_out * taps + t]` is the input row read by output row `r_out` at tap
//! `t = ky * kw + kx`, or a negative code. The codes keep apart padding
//! (`OUT_OF_BOUNDS`) and in-bounds masked sites (`INACTIVE`): a convolution treats both
//! as zero, but max-pooling, like PyTorch on SparK's zero-filled maps, lets a masked
//! in-bounds site take part with the value 0 while padding never takes part.

use super::ActiveSet;

/// Tap outside the input map (padding).
pub const OUT_OF_BOUNDS: i32 = -1;
/// Tap on an inactive (masked) site inside the input map.
pub const INACTIVE: i32 = -2;

/// Kernel geometry (square strides and padding, as in every SparK layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Padding (both axes).
    pub pad: usize,
}

impl Window {
    /// A square `k × k` window.
    pub const fn new(k: usize, stride: usize, pad: usize) -> Self {
        Self { kh: k, kw: k, stride, pad }
    }

    /// Number of taps (`kh * kw`).
    pub fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// Output size of a convolution/pool along one axis.
    pub fn out_size(&self, n: usize) -> usize {
        (n + 2 * self.pad - self.kh) / self.stride + 1
    }

    /// Output size of the transposed convolution along one axis.
    pub fn transposed_out_size(&self, n: usize) -> usize {
        (n - 1) * self.stride + self.kh - 2 * self.pad
    }
}

/// For each row and tap, an input row or a negative code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighbourMap {
    /// Output rows.
    pub rows_out: usize,
    /// Taps per row.
    pub taps: usize,
    /// `map[r * taps + t]`: the input row of tap `t` of output row `r`, or a negative code.
    pub map: Vec<i32>,
}

impl NeighbourMap {
    /// The entry of output row `r`, tap `t`.
    pub fn get(&self, r: usize, t: usize) -> i32 {
        self.map[r * self.taps + t]
    }
}

/// Convolution / pooling: output `(oy, ox)` at tap `(ky, kx)` reads input
/// `(oy * s - p + ky, ox * s - p + kx)`.
pub fn conv_map(input: &ActiveSet, output: &ActiveSet, win: Window) -> NeighbourMap {
    assert_eq!(input.batch, output.batch);
    let mut map = Vec::with_capacity(output.rows() * win.taps());
    for &[b, oy, ox] in &output.sites {
        for ky in 0..win.kh {
            for kx in 0..win.kw {
                let iy = oy as i64 * win.stride as i64 - win.pad as i64 + ky as i64;
                let ix = ox as i64 * win.stride as i64 - win.pad as i64 + kx as i64;
                map.push(input.lookup(b as usize, iy, ix));
            }
        }
    }
    NeighbourMap { rows_out: output.rows(), taps: win.taps(), map }
}

/// Transposed convolution (PyTorch `ConvTranspose2d`) in gather form: output `(oy, ox)`
/// at tap `(ky, kx)` reads input `((oy + p - ky) / s, (ox + p - kx) / s)` when both
/// divisions are exact, else nothing (`OUT_OF_BOUNDS`).
pub fn transposed_conv_map(input: &ActiveSet, output: &ActiveSet, win: Window) -> NeighbourMap {
    assert_eq!(input.batch, output.batch);
    let (s, p) = (win.stride as i64, win.pad as i64);
    let mut map = Vec::with_capacity(output.rows() * win.taps());
    for &[b, oy, ox] in &output.sites {
        for ky in 0..win.kh {
            for kx in 0..win.kw {
                let ny = oy as i64 + p - ky as i64;
                let nx = ox as i64 + p - kx as i64;
                map.push(if ny.rem_euclid(s) == 0 && nx.rem_euclid(s) == 0 {
                    input.lookup(b as usize, ny.div_euclid(s), nx.div_euclid(s))
                } else {
                    OUT_OF_BOUNDS
                });
            }
        }
    }
    NeighbourMap { rows_out: output.rows(), taps: win.taps(), map }
}

/// The scatter side of `map` as a gather: `inv[r_in * taps + t]` is the output row that
/// reads `r_in` at tap `t`, or `OUT_OF_BOUNDS`. Each (input, tap) pair feeds at most one
/// output in any strided convolution, so the data gradient becomes a gather with no
/// atomics: `dx[r_in] = Σ_t dy[inv[r_in, t]] · W[t]`.
pub fn inverse_map(map: &NeighbourMap, rows_in: usize) -> NeighbourMap {
    let mut inv = vec![OUT_OF_BOUNDS; rows_in * map.taps];
    for r in 0..map.rows_out {
        for t in 0..map.taps {
            let i = map.get(r, t);
            if i >= 0 {
                let slot = &mut inv[i as usize * map.taps + t];
                assert_eq!(*slot, OUT_OF_BOUNDS, "input row {i} feeds two outputs at tap {t}");
                *slot = r as i32;
            }
        }
    }
    NeighbourMap { rows_out: rows_in, taps: map.taps, map: inv }
}

/// Rewrite the non-negative entries of an index tensor laid out by images
/// (`per_image` entries each) so that they count from the first entry of their chunk
/// (`target_per_image` indexed units per image, `images` images per chunk). Negative
/// entries are codes (padding, masked) and stay.
pub fn relativize(v: &mut [i32], per_image: usize, target_per_image: usize, images: usize) {
    if per_image == 0 {
        return;
    }
    for (p, e) in v.iter_mut().enumerate() {
        if *e >= 0 {
            let first_image = p / per_image / images * images;
            *e -= (first_image * target_per_image) as i32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::PatchMask;
    use super::*;

    #[test]
    fn stride_one_3x3_pads_and_masks() {
        let mask = PatchMask::new(1, 2, 2, vec![1, 1, 0, 1]);
        let s = ActiveSet::from_patch_mask(&mask, 2, 2);
        let m = conv_map(&s, &s, Window::new(3, 1, 1));
        // row 0 is (0,0): taps above/left are padding, centre is itself, (1,0) is masked
        assert_eq!(&m.map[0..9], &[-1, -1, -1, -1, 0, 1, -1, INACTIVE, 2]);
    }

    #[test]
    fn strided_output_is_the_downsampled_mask_not_a_dilation() {
        let mask = PatchMask::new(1, 2, 2, vec![1, 0, 0, 0]);
        let inp = ActiveSet::from_patch_mask(&mask, 8, 8);
        let out = ActiveSet::from_patch_mask(&mask, 4, 4);
        assert_eq!(out.rows(), 4);
        let m = conv_map(&inp, &out, Window::new(3, 2, 1));
        // output (1,1) reads input (3,3) at its last tap; output (0,0) starts in padding
        let r = out.row_of[5] as usize;
        assert_eq!(m.get(r, 8), inp.row_of[3 * 8 + 3]);
        assert_eq!(m.get(0, 0), OUT_OF_BOUNDS);
        // in a mask with the lower patch visible, output row 2 reads the masked row 3 above it
        let mask = PatchMask::new(1, 2, 1, vec![0, 1]);
        let (inp, out) = (ActiveSet::from_patch_mask(&mask, 8, 4), ActiveSet::from_patch_mask(&mask, 4, 2));
        let m = conv_map(&inp, &out, Window::new(3, 2, 1));
        assert_eq!(m.get(0, 1), INACTIVE);
    }

    #[test]
    fn transposed_map_inverts_the_strided_geometry() {
        let inp = ActiveSet::dense(1, 2, 2);
        let win = Window::new(4, 2, 1);
        let out = ActiveSet::dense(1, win.transposed_out_size(2), win.transposed_out_size(2));
        let m = transposed_conv_map(&inp, &out, win);
        // along one axis each of the 2 inputs feeds 3 of the 4 outputs (the 4th tap lands in padding)
        let hits: usize = (0..m.rows_out).map(|r| (0..16).filter(|&t| m.get(r, t) >= 0).count()).sum();
        assert_eq!(hits, 4 * 9);
        let inv = inverse_map(&m, 4);
        for r in 0..4 {
            for t in 0..16 {
                let o = inv.get(r, t);
                if o >= 0 {
                    assert_eq!(m.get(o as usize, t), r as i32);
                }
            }
        }
    }
}
