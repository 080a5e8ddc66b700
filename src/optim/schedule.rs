//! The official per-iteration schedules (`pretrain/utils/lr_control.py`,
//! `lr_wd_annealing`, and the lr scaling of `pretrain/utils/arg_util.py`).
//!
//! The official loop calls the schedule with `cur_it = it + epoch * iters_per_epoch`
//! before the forward pass of that iteration, `warmup_it = wp_ep * iters_per_epoch` and
//! `max_it = ep * iters_per_epoch`; both parameter groups get the same lr, and the
//! weight decay only reaches the decay group (the no-decay group scales it by 0).

use std::f64::consts::PI;

/// Official defaults (`pretrain/utils/arg_util.py`): base lr per 256 images, weight decay
/// at the start and at the end of the cosine (`--wde`; 0 there means "same as `--wd`"),
/// epochs and warm-up epochs.
pub const BASE_LR: f64 = 2e-4;
/// Official weight decay at the start of the cosine (`--wd`).
pub const WEIGHT_DECAY: f64 = 0.04;
/// Official weight decay at the end of the cosine (`--wde`).
pub const WEIGHT_DECAY_END: f64 = 0.2;
/// Official pre-training epochs (`--ep`).
pub const EPOCHS: usize = 1600;
/// Official warm-up epochs (`--wp_ep`).
pub const WARMUP_EPOCHS: usize = 40;

/// Learning rate and weight decay of iteration `cur_it` (0-based) of `max_it`:
/// a linear warm-up from 0.5 % of `peak_lr` over `warmup_it` iterations, then a cosine
/// from `peak_lr` down to 0.1 % of it at `max_it - 1`; the weight decay follows a cosine
/// from `wd` (iteration 0) to `wd_end` (iteration `max_it - 1`) over the whole run.
///
/// Where the official code would divide by zero (`max_it - 1 - warmup_it == 0`, or
/// `max_it == 1`), the denominator is taken as 1 instead.
pub fn lr_wd_at(peak_lr: f64, wd: f64, wd_end: f64, cur_it: usize, warmup_it: usize, max_it: usize) -> (f64, f64) {
    let (cur, wp) = (cur_it as f64, warmup_it as f64);
    let lr = if cur_it < warmup_it {
        0.005 * peak_lr + 0.995 * peak_lr * cur / wp
    } else {
        let span = (max_it as f64 - 1.0 - wp).max(1.0);
        let ratio = (cur - wp) / span;
        0.001 * peak_lr + 0.999 * peak_lr * (0.5 + 0.5 * (PI * ratio).cos())
    };
    let ratio = cur / (max_it as f64 - 1.0).max(1.0);
    let wd_now = wd_end + (wd - wd_end) * (0.5 + 0.5 * (PI * ratio).cos());
    (lr, wd_now)
}

/// The official linear scaling: `base_lr * global_batch / 256`.
pub fn peak_lr(base_lr: f64, batch: usize) -> f64 {
    base_lr * batch as f64 / 256.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-300)
    }

    #[test]
    fn endpoints_and_midpoints() {
        let (p, wd, wde, wp, max) = (1e-3, 0.04, 0.2, 10, 101);
        let (lr0, wd0) = lr_wd_at(p, wd, wde, 0, wp, max);
        assert!(close(lr0, 0.005 * p) && close(wd0, wd));
        // Half-way through the warm-up: linear.
        assert!(close(lr_wd_at(p, wd, wde, 5, wp, max).0, 0.005 * p + 0.995 * p * 0.5));
        // End of warm-up: the peak.
        assert!(close(lr_wd_at(p, wd, wde, wp, wp, max).0, p));
        // Half-way through the cosine.
        assert!(close(lr_wd_at(p, wd, wde, 55, wp, max).0, 0.001 * p + 0.999 * p * 0.5));
        // Half-way through the run for the weight decay.
        assert!(close(lr_wd_at(p, wd, wde, 50, wp, max).1, (wd + wde) / 2.0));
        // Last iteration.
        let (lr_end, wd_end) = lr_wd_at(p, wd, wde, max - 1, wp, max);
        assert!(close(lr_end, 0.001 * p) && close(wd_end, wde));
    }

    #[test]
    fn no_warmup_starts_at_the_peak_and_lr_is_monotone_after() {
        let (p, max) = (2e-3, 50);
        assert!(close(lr_wd_at(p, 0.04, 0.04, 0, 0, max).0, p));
        assert!(close(lr_wd_at(p, 0.04, 0.04, 17, 0, max).1, 0.04));
        let lrs: Vec<f64> = (0..max).map(|i| lr_wd_at(p, 0.04, 0.2, i, 0, max).0).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn degenerate_lengths_stay_finite() {
        let (lr, wd) = lr_wd_at(1e-3, 0.04, 0.2, 0, 0, 1);
        assert!(close(lr, 1e-3) && close(wd, 0.04));
        assert!(lr_wd_at(1e-3, 0.04, 0.2, 4, 4, 5).0.is_finite());
    }

    #[test]
    fn lr_scales_with_batch() {
        assert!(close(peak_lr(2e-4, 4096), 3.2e-3));
        assert!(close(peak_lr(BASE_LR, 256), BASE_LR));
    }
}
