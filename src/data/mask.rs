//! Patch masks: which of the f×f patches (32×32 pixels each) of every image stay visible.

use super::rng::below;
/// Owned by the model configuration: the graph is built for this count.
pub use crate::model::config::len_keep;
use rand_chacha::ChaCha8Rng;

/// A `[batch, f, f]` mask, 1 = visible, with exactly `len_keep(f, mask_ratio)` visible
/// patches per image, the set uniformly chosen. The official code keeps the first
/// `len_keep` of `torch.rand(B, f*f).argsort()`, i.e. a uniformly random subset; a
/// partial Fisher–Yates shuffle draws the same distribution with fewer random numbers.
pub fn sample_mask(rng: &mut ChaCha8Rng, batch: usize, f: usize, mask_ratio: f64) -> Vec<u8> {
    let n = f * f;
    let keep = len_keep(f, mask_ratio);
    let mut out = vec![0u8; batch * n];
    let mut idx: Vec<usize> = Vec::with_capacity(n);
    for b in 0..batch {
        idx.clear();
        idx.extend(0..n);
        for i in 0..keep {
            let j = i + below(rng, (n - i) as u64) as usize;
            idx.swap(i, j);
            out[b * n + idx[i]] = 1;
        }
    }
    out
}
