//! Seeded randomness of the data pipeline and of the drop-path draws (`ops::drop_path`),
//! and the synthetic inputs of `bench` and the tests ([`random_vec`], [`random_patch_mask`]).
//!
//! Every random stream is a ChaCha8 generator keyed by a hash of (seed, purpose, a, b):
//! the permutation of an epoch by (seed, epoch), an image's augmentation by
//! (seed, epoch, position in epoch), a step's mask by (seed, epoch, step). So a value
//! never depends on which thread drew it or on what was drawn before, which is what
//! makes a resumed run see the same data as an uninterrupted one.
//!
//! Integers and floats are derived from raw `next_u64` words with our own (fixed)
//! formulas rather than `rand`'s distributions, whose algorithms may change between
//! `rand` releases: the ChaCha stream itself is value-stable, so the data stream of a
//! seed stays the same across dependency updates.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Purposes, so that streams for different uses never coincide.
pub(crate) const TAG_PERM: u64 = 0x7065_726d; // "perm"
pub(crate) const TAG_AUG: u64 = 0x6175_6720; // "aug "
pub(crate) const TAG_MASK: u64 = 0x6d61_736b; // "mask"
pub(crate) const TAG_PROC: u64 = 0x7072_6f63; // "proc"

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The generator for (seed, purpose, a, b).
pub fn stream(seed: u64, tag: u64, a: u64, b: u64) -> ChaCha8Rng {
    let mut h = splitmix(seed);
    for v in [tag, a, b] {
        h = splitmix(h ^ v);
    }
    let mut key = [0u8; 32];
    for chunk in key.chunks_mut(8) {
        h = splitmix(h);
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// Uniform in [0, 1) with 53 random bits.
pub fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform in [lo, hi).
pub fn uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * unit(rng)
}

/// Uniform integer in [0, n) without modulo bias (Lemire's multiply-and-reject).
pub fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    assert!(n > 0, "below(0)");
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = rng.next_u64() as u128 * n as u128;
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// A uniformly random permutation of 0..n (Fisher–Yates).
pub fn permutation(rng: &mut ChaCha8Rng, n: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

/// Python's `round()` (ties to even), which the official code uses for every size
/// computed from a float (`len_keep`, crop sizes), so that e.g. 2.5 gives 2 as there.
pub fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// Synthetic inputs for `bench`, the benches and the tests: values and masks that only
/// need to be reproducible within one build, not across `rand` releases (unlike the data
/// streams above), so they use `rand`'s own distributions.
mod synthetic {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Uniform values in [-1, 1), reproducible from `seed`.
    pub fn random_vec(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// A random patch mask with `visible` of the `f*f` patches of each image visible
    /// (at least one), `[B, fh, fw]`.
    pub fn random_patch_mask(seed: u64, batch: usize, fh: usize, fw: usize, visible_ratio: f64) -> crate::sparse::PatchMask {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let per = fh * fw;
        let keep = ((per as f64 * visible_ratio).round() as usize).clamp(1, per);
        let mut v = vec![0u8; batch * per];
        for b in 0..batch {
            let mut idx: Vec<usize> = (0..per).collect();
            for i in 0..keep {
                let j = rng.random_range(i..per);
                idx.swap(i, j);
                v[b * per + idx[i]] = 1;
            }
        }
        crate::sparse::PatchMask::new(batch, fh, fw, v)
    }
}
pub use synthetic::{random_patch_mask, random_vec};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|_| stream(1, TAG_AUG, 2, 3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(stream(1, TAG_AUG, 2, 3).next_u64(), stream(1, TAG_AUG, 3, 2).next_u64());
        assert_ne!(stream(1, TAG_AUG, 2, 3).next_u64(), stream(1, TAG_MASK, 2, 3).next_u64());
    }

    #[test]
    fn below_and_permutation() {
        let mut rng = stream(0, 0, 0, 0);
        let mut hist = [0usize; 3];
        for _ in 0..3000 {
            hist[below(&mut rng, 3) as usize] += 1;
        }
        assert!(hist.iter().all(|&c| c > 900), "{hist:?}");
        let mut p = permutation(&mut rng, 100);
        p.sort();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
        assert_eq!(py_round(2.5), 2);
        assert_eq!(py_round(3.5), 4);
        assert_eq!(py_round(19.6), 20);
    }
}
