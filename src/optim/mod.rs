//! The official SparK optimiser (LAMB, timm 0.5.4) and its warm-up/cosine learning-rate
//! and weight-decay schedules.

pub mod lamb;
pub mod schedule;

pub use lamb::{Lamb, LambConfig, ParamSegment, lamb_step_ref, no_weight_decay};
pub use schedule::{lr_wd_at, peak_lr};
