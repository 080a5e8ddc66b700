//! Valid ranges of numeric options, and their refusals: the CLI's value parsers refuse a
//! value at parse time with the option's name and range, and the configurations
//! (`SparkConfig::validate`, `PretrainConfig::validate`) apply the same ranges to a
//! `config.json` edited by hand or written by an older version (a NaN written as `null`,
//! a rate of 1.5). Each range is declared beside the option it bounds: the model's in
//! `model::config`, the training loop's in `train::ranges`.

use anyhow::{Result, bail};

/// A closed or open interval of finite floats.
#[derive(Clone, Copy, Debug)]
pub struct FloatRange {
    /// Lower bound.
    pub lo: f64,
    /// Upper bound (infinite: none).
    pub hi: f64,
    /// Whether `lo` itself is excluded.
    pub lo_open: bool,
    /// Whether `hi` itself is excluded.
    pub hi_open: bool,
    /// Why the range is what it is (appended to the refusal).
    pub why: &'static str,
}

impl FloatRange {
    /// Whether `v` is finite and in the range.
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
    /// Smallest valid value.
    pub lo: usize,
    /// Largest valid value (`usize::MAX`: none).
    pub hi: usize,
    /// Every valid value is a multiple of this (1: any).
    pub multiple_of: usize,
    /// Why the range is what it is (appended to the refusal).
    pub why: &'static str,
}

impl IntRange {
    /// Whether `v` is in the range.
    pub fn contains(&self, v: usize) -> bool {
        v >= self.lo && v <= self.hi && v.is_multiple_of(self.multiple_of)
    }

    /// The refusal text for a value outside the range (without the option's name).
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

    /// Parse a CLI value (clap `value_parser`).
    pub fn parse(&self, s: &str) -> std::result::Result<usize, String> {
        let v: usize = s.trim().parse().map_err(|_| format!("{s:?} is not a whole number ≥ 0"))?;
        if self.contains(v) { Ok(v) } else { Err(self.error(s)) }
    }

    /// Check a value read from a run configuration.
    pub fn check(&self, option: &str, v: usize) -> Result<()> {
        if !self.contains(v) {
            bail!("{option} {}", self.error(&v.to_string()));
        }
        Ok(())
    }
}

/// The open interval (lo, hi).
pub const fn open(lo: f64, hi: f64, why: &'static str) -> FloatRange {
    FloatRange { lo, hi, lo_open: true, hi_open: true, why }
}

/// [lo, ∞).
pub const fn at_least(lo: f64, why: &'static str) -> FloatRange {
    FloatRange { lo, hi: f64::INFINITY, lo_open: false, hi_open: true, why }
}

/// (lo, ∞).
pub const fn above(lo: f64, why: &'static str) -> FloatRange {
    FloatRange { lo, hi: f64::INFINITY, lo_open: true, hi_open: true, why }
}

/// lo, lo + 1, …
pub const fn int(lo: usize, why: &'static str) -> IntRange {
    IntRange { lo, hi: usize::MAX, multiple_of: 1, why }
}

