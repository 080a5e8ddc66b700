//! Helpers shared by the op unit tests (compiled only for them): tolerance checks and
//! central finite differences in f64 (for checking CPU backward references). The seeded
//! synthetic inputs they use live in [`crate::rng`], because `bench` draws them too.

pub use crate::rng::{random_patch_mask, random_vec};

/// Largest |a - b| divided by the largest |b| (or 1 when b is all zero); infinite when
/// any value of either is NaN or infinite (a plain `f64::max` fold would drop a NaN and
/// pass), so `err <= tol` is a safe test.
pub fn max_rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    if a.iter().chain(b).any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
    let diff = a.iter().zip(b).fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    if scale == 0.0 { diff } else { diff / scale }
}

/// Panic with the worst element (the first non-finite one, if any) when
/// `max_rel_err(got, want) > tol`.
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], tol: f64, what: &str) {
    let err = max_rel_err(got, want);
    if err.is_nan() || err > tol {
        let i = got.iter().zip(want).position(|(a, b)| !a.is_finite() || !b.is_finite()).unwrap_or_else(|| {
            got.iter()
                .zip(want)
                .enumerate()
                .map(|(i, (a, b))| (i, (a - b).abs()))
                .fold((0, -1.0f32), |m, x| if x.1 > m.1 { x } else { m })
                .0
        });
        panic!("{what}: relative error {err:.3e} > {tol:.1e}; worst at {i}: got {} want {}", got[i], want[i]);
    }
}

/// Central finite differences of a scalar function in f64: `d f / d x_i`.
pub fn numeric_grad(f: impl Fn(&[f64]) -> f64, x: &[f64], eps: f64) -> Vec<f64> {
    let mut xs = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xs[i];
            xs[i] = orig + eps;
            let up = f(&xs);
            xs[i] = orig - eps;
            let down = f(&xs);
            xs[i] = orig;
            (up - down) / (2.0 * eps)
        })
        .collect()
}

/// Compare an analytic gradient with `numeric_grad` (relative to the largest magnitude).
#[track_caller]
pub fn assert_grad_matches(analytic: &[f64], numeric: &[f64], tol: f64, what: &str) {
    let scale = numeric.iter().fold(1e-12f64, |m, x| m.max(x.abs()));
    for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
        assert!((a - n).abs() / scale <= tol, "{what}: gradient {i}: analytic {a} vs finite difference {n}");
    }
}

/// Widen to f64 (CPU references and finite differences work in f64).
pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Narrow to f32.
pub fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails(got: &[f32], want: &[f32]) -> bool {
        std::panic::catch_unwind(|| assert_close(got, want, 1e-3, "t")).is_err()
    }

    #[test]
    fn assert_close_fails_on_nan_and_inf() {
        let want = [1.0, -2.0, 0.5];
        assert!(!fails(&[1.0, -2.0, 0.5], &want));
        assert!(fails(&[1.0, -2.5, 0.5], &want));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(fails(&[1.0, bad, 0.5], &want), "{bad} in got");
            assert!(fails(&[bad; 3], &want), "{bad} everywhere");
            assert!(fails(&want, &[1.0, bad, 0.5]), "{bad} in want");
            assert!(fails(&[bad; 3], &[bad; 3]), "{bad} in both");
            assert_eq!(max_rel_err(&[bad], &[1.0]), f64::INFINITY);
        }
        let msg = std::panic::catch_unwind(|| assert_close(&[1.0, f32::NAN], &[1.0, 1.0], 1e-3, "t"))
            .unwrap_err()
            .downcast::<String>()
            .unwrap();
        assert!(msg.contains("worst at 1") && msg.contains("NaN"), "{msg}");
    }
}
