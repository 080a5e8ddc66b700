//! The valid range of every numeric option of the training loop, beside
//! [`super::PretrainConfig::validate`] that applies them (the model's own options,
//! mask ratio, drop path, input size and decoder width, are bounded in
//! [`crate::model::config`] and re-exported here for the CLI).

pub use crate::model::config::{DEC_WIDTH, DROP_PATH, INPUT_SIZE, MASK_RATIO};
use crate::ranges::{FloatRange, IntRange, above, at_least, int, open};

/// LAMB's second-moment decay: 0 < β2 < 1 (β2 = 1 never updates the moment, and the bias
/// correction divides by 1 − β2^t = 0).
pub const BETA2: FloatRange = open(0.0, 1.0, "the second-moment decay of LAMB");
/// Base learning rate: positive.
pub const BASE_LR: FloatRange = above(0.0, "");
/// Weight decay (start and end): not negative.
pub const WEIGHT_DECAY: FloatRange = at_least(0.0, "");
/// Warm-up epochs: not negative.
pub const WARMUP_EPOCHS: FloatRange = at_least(0.0, "");

/// BatchNorm's batch statistics need at least two images.
pub const BATCH: IntRange = int(2, "BatchNorm needs at least 2 images");
/// Benchmarks of a ConvNeXt (LayerNorm only) may use one image.
pub const BENCH_BATCH: IntRange = int(1, "");
/// Epochs: at least one.
pub const EPOCHS: IntRange = int(1, "");
/// `--max-steps`: at least one.
pub const MAX_STEPS: IntRange = int(1, "0 steps would do nothing");
/// `--save-every`: at least one step.
pub const SAVE_EVERY: IntRange = int(1, "steps between checkpoints");
/// `--workers`: at least one thread.
pub const WORKERS: IntRange = int(1, "image decoding threads");
/// `--procedural-images`: at least one.
pub const IMAGES: IntRange = int(1, "");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_refuse_non_finite_and_out_of_range_values() {
        for bad in ["nan", "NaN", "inf", "-inf", "1", "0", "1.5", "-0.1", "x"] {
            assert!(MASK_RATIO.parse(bad).is_err(), "mask ratio {bad} accepted");
        }
        assert_eq!(MASK_RATIO.parse("0.75"), Ok(0.75));
        assert!(DROP_PATH.parse("0").is_ok());
        for bad in ["1", "1.5", "nan", "-0.01"] {
            assert!(DROP_PATH.parse(bad).is_err(), "drop path {bad} accepted");
        }
        assert!(BETA2.parse("1.5").is_err());
        assert!(BASE_LR.parse("0").is_err());
        assert!(BASE_LR.parse("nan").is_err());
        assert!(WEIGHT_DECAY.parse("0").is_ok());
        assert!(WEIGHT_DECAY.parse("nan").is_err());
        assert!(WARMUP_EPOCHS.parse("-1").is_err());
        assert!(SAVE_EVERY.parse("0").is_err());
        assert!(BATCH.parse("1").is_err());
        assert!(INPUT_SIZE.parse("100").is_err());
        assert_eq!(INPUT_SIZE.parse("96"), Ok(96));
        assert!(DEC_WIDTH.parse("48").is_err());
        assert!(BETA2.error("1.5").contains("(0, 1)"));
    }
}
