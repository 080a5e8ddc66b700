//! CPU references of the gather convolution (f64 inside; the f64 cores also serve the
//! finite-difference tests).

use crate::sparse::NeighbourMap;

use super::{ConvShape, WeightLayout};


pub(crate) fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

pub(crate) fn to32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&a| a as f32).collect()
}

pub(crate) fn forward64(x: &[f64], map: &NeighbourMap, w: &[f64], l: WeightLayout, bias: Option<&[f64]>, s: ConvShape) -> Vec<f64> {
    assert_eq!(map.rows_out, s.rows_out);
    assert_eq!(map.taps, s.taps);
    let mut y = vec![0f64; s.rows_out * s.cout];
    for r in 0..s.rows_out {
        let yr = &mut y[r * s.cout..(r + 1) * s.cout];
        if let Some(b) = bias {
            yr.copy_from_slice(b);
        }
        for t in 0..s.taps {
            let m = map.get(r, t);
            if m < 0 {
                continue;
            }
            let xr = &x[m as usize * s.cin..(m as usize + 1) * s.cin];
            for (ci, &xv) in xr.iter().enumerate() {
                for (co, yv) in yr.iter_mut().enumerate() {
                    *yv += xv * w[l.index(t, ci, co)];
                }
            }
        }
    }
    y
}

/// Scatter form of the data gradient (independent of the GPU's inverse-map gather).
pub(crate) fn data_grad64(dy: &[f64], map: &NeighbourMap, w: &[f64], l: WeightLayout, s: ConvShape) -> Vec<f64> {
    let mut dx = vec![0f64; s.rows_in * s.cin];
    for r in 0..s.rows_out {
        for t in 0..s.taps {
            let m = map.get(r, t);
            if m < 0 {
                continue;
            }
            for ci in 0..s.cin {
                let mut acc = 0f64;
                for co in 0..s.cout {
                    acc += dy[r * s.cout + co] * w[l.index(t, ci, co)];
                }
                dx[m as usize * s.cin + ci] += acc;
            }
        }
    }
    dx
}

pub(crate) fn weight_grad64(x: &[f64], map: &NeighbourMap, dy: &[f64], l: WeightLayout, s: ConvShape) -> (Vec<f64>, Vec<f64>) {
    let mut dw = vec![0f64; l.extent(s.taps, s.cin, s.cout)];
    let mut db = vec![0f64; s.cout];
    for r in 0..s.rows_out {
        for co in 0..s.cout {
            db[co] += dy[r * s.cout + co];
        }
        for t in 0..s.taps {
            let m = map.get(r, t);
            if m < 0 {
                continue;
            }
            for ci in 0..s.cin {
                let xv = x[m as usize * s.cin + ci];
                for co in 0..s.cout {
                    dw[l.index(t, ci, co)] += xv * dy[r * s.cout + co];
                }
            }
        }
    }
    (dw, db)
}

/// CPU reference of `conv_forward` (without accumulation).
pub fn conv_forward_ref(x: &[f32], map: &NeighbourMap, w: &[f32], layout: WeightLayout, bias: Option<&[f32]>, s: ConvShape) -> Vec<f32> {
    let b = bias.map(to64);
    to32(&forward64(&to64(x), map, &to64(w), layout, b.as_deref(), s))
}

/// CPU reference of `conv_data_grad`: `dx [rows_in, cin]` from `dy [rows_out, cout]` and
/// the FORWARD map (computed as a scatter).
pub fn conv_data_grad_ref(dy: &[f32], map: &NeighbourMap, w: &[f32], layout: WeightLayout, s: ConvShape) -> Vec<f32> {
    to32(&data_grad64(&to64(dy), map, &to64(w), layout, s))
}

/// CPU reference of `conv_weight_grad`: `(dw in the stored layout, dbias)`.
pub fn conv_weight_grad_ref(x: &[f32], map: &NeighbourMap, dy: &[f32], layout: WeightLayout, s: ConvShape) -> (Vec<f32>, Vec<f32>) {
    let (dw, db) = weight_grad64(&to64(x), map, &to64(dy), layout, s);
    (to32(&dw), to32(&db))
}
