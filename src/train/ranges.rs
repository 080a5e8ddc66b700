//! The valid range of every numeric training option, in one place: the CLI's value
//! parsers refuse a value at parse time with the option's name and range, and
//! [`super::PretrainConfig::validate`] applies the same ranges to a `config.json` that was
//! edited by hand or written by an older version (a NaN written as `null`, a rate of 1.5).

use anyhow::{Result, bail};

/// A closed or open interval of finite floats.
#[derive(Clone, Copy, Debug)]
pub struct FloatRange {
    pub lo: f64,
    pub hi: f64,
    pub lo_open: bool,
    pub hi_open: bool,
    /// Why the range is what it is (appended to the refusal).
    pub why: &'static str,
}

impl FloatRange {
    pub fn contains(&self, v: f64) -> bool {
        v.is_finite()
            && (if self.lo_open { v > self.lo } else { v >= self.lo })
            && (if self.hi_open { v < self.hi } else { v <= self.hi })
    }

    /// "(0, 1)", "[0, 1)", "> 0", "≥ 0".
    pub fn describe(&self) -> String {
        if self.hi.is_infinite() {
            format!("{} {}", if self.lo_open { ">" } else { "≥" }, self.lo)
        } else {
            format!(
                "{}{}, {}{}",
                if self.lo_open { "(" } else { "[" },
                self.lo,
                self.hi,
                if self.hi_open { ")" } else { "]" }
            )
        }
    }

    /// The refusal text for a value outside the range (without the option's name).
    pub fn error(&self, v: &str) -> String {
        let why = if self.why.is_empty() { String::new() } else { format!(" ({})", self.why) };
        format!("{v} is not a finite number {}{why}", self.range_phrase())
    }

    fn range_phrase(&self) -> String {
        if self.hi.is_infinite() { self.describe() } else { format!("in {}", self.describe()) }
    }

    /// Parse a CLI value (clap `value_parser`).
    pub fn parse(&self, s: &str) -> std::result::Result<f64, String> {
        let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
        if self.contains(v) { Ok(v) } else { Err(self.error(s)) }
    }

    /// Check a value read from a run configuration.
    pub fn check(&self, option: &str, v: f64) -> Result<()> {
        if !self.contains(v) {
            bail!("{option} {}", self.error(&v.to_string()));
        }
        Ok(())
    }
}

/// An integer range `lo..=hi` with an optional required multiple.
#[derive(Clone, Copy, Debug)]
pub struct IntRange {
    pub lo: usize,
    pub hi: usize,
    pub multiple_of: usize,
    pub why: &'static str,
}

impl IntRange {
    pub fn contains(&self, v: usize) -> bool {
        v >= self.lo && v <= self.hi && v.is_multiple_of(self.multiple_of)
    }

    pub fn error(&self, v: &str) -> String {
        let mut s = format!("{v} must be ≥ {}", self.lo);
        if self.hi != usize::MAX {
            s.push_str(&format!(" and ≤ {}", self.hi));
        }
        if self.multiple_of > 1 {
            s.push_str(&format!(" and a multiple of {}", self.multiple_of));
        }
        if !self.why.is_empty() {
            s.push_str(&format!(" ({})", self.why));
        }
        s
    }

    pub fn parse(&self, s: &str) -> std::result::Result<usize, String> {
        let v: usize = s.trim().parse().map_err(|_| format!("{s:?} is not a whole number ≥ 0"))?;
        if self.contains(v) { Ok(v) } else { Err(self.error(s)) }
    }

    pub fn check(&self, option: &str, v: usize) -> Result<()> {
        if !self.contains(v) {
            bail!("{option} {}", self.error(&v.to_string()));
        }
        Ok(())
    }
}

const fn open(lo: f64, hi: f64, why: &'static str) -> FloatRange {
    FloatRange { lo, hi, lo_open: true, hi_open: true, why }
}

const fn at_least(lo: f64, why: &'static str) -> FloatRange {
    FloatRange { lo, hi: f64::INFINITY, lo_open: false, hi_open: true, why }
}

const fn above(lo: f64, why: &'static str) -> FloatRange {
    FloatRange { lo, hi: f64::INFINITY, lo_open: true, hi_open: true, why }
}

const fn int(lo: usize, why: &'static str) -> IntRange {
    IntRange { lo, hi: usize::MAX, multiple_of: 1, why }
}

/// 0 masks nothing (nothing to reconstruct, the loss is 0); 1 shows nothing to the encoder.
pub const MASK_RATIO: FloatRange = open(0.0, 1.0, "0 leaves nothing to reconstruct, 1 nothing to see");
/// A drop probability; 1 would drop every residual branch of every image.
pub const DROP_PATH: FloatRange = FloatRange { lo: 0.0, hi: 1.0, lo_open: false, hi_open: true, why: "a drop probability" };
/// LAMB's second-moment decay: 0 < β2 < 1 (β2 = 1 never updates the moment, and the bias
/// correction divides by 1 − β2^t = 0).
pub const BETA2: FloatRange = open(0.0, 1.0, "the second-moment decay of LAMB");
pub const BASE_LR: FloatRange = above(0.0, "");
pub const WEIGHT_DECAY: FloatRange = at_least(0.0, "");
pub const WARMUP_EPOCHS: FloatRange = at_least(0.0, "");

/// BatchNorm's batch statistics need at least two images.
pub const BATCH: IntRange = int(2, "BatchNorm needs at least 2 images");
/// Benchmarks of a ConvNeXt (LayerNorm only) may use one image.
pub const BENCH_BATCH: IntRange = int(1, "");
pub const EPOCHS: IntRange = int(1, "");
pub const MAX_STEPS: IntRange = int(1, "0 steps would do nothing");
pub const SAVE_EVERY: IntRange = int(1, "steps between checkpoints");
pub const WORKERS: IntRange = int(1, "image decoding threads");
pub const IMAGES: IntRange = int(1, "");
/// The encoder downsamples by 32 and the mask has one patch per 32×32 pixels.
pub const INPUT_SIZE: IntRange =
    IntRange { lo: crate::model::config::PATCH, hi: usize::MAX, multiple_of: crate::model::config::PATCH, why: "the patch size" };
/// The decoder halves its width five times.
pub const DEC_WIDTH: IntRange = IntRange { lo: 32, hi: usize::MAX, multiple_of: 32, why: "the decoder halves it five times" };

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
