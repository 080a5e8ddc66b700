//! Two runs of the same convolution work give identical bits: no float atomics, and every
//! reduction (split-K weight and bias gradients) sums in a fixed order.

use spark_wgpu::gpu::{GpuContext, GpuTensor};
use spark_wgpu::ops::conv::{ConvShape, WeightLayout, conv_data_grad, conv_forward, conv_weight_grad};
use spark_wgpu::ops::depthwise::{dw_data_grad, dw_forward, dw_weight_grad};
use spark_wgpu::sparse::{ActiveSet, Window, conv_map, inverse_map};
use spark_wgpu::rng::{random_patch_mask, random_vec};

fn bits(ctx: &GpuContext, t: &GpuTensor) -> Vec<u32> {
    ctx.read::<u32>(t).unwrap()
}

#[test]
fn convolution_and_its_gradients_are_bitwise_reproducible() {
    let ctx = GpuContext::new_default().unwrap();
    // Sparse 3×3/2 on 2 images of 64×64 (4×4 patches, half visible): enough rows for several
    // weight-gradient splits.
    let mask = random_patch_mask(1, 2, 4, 4, 0.5);
    let (inp, out) = (ActiveSet::from_patch_mask(&mask, 64, 64), ActiveSet::from_patch_mask(&mask, 32, 32));
    let map = conv_map(&inp, &out, Window::new(3, 2, 1));
    let inv = inverse_map(&map, inp.rows());
    let (cin, cout, taps) = (20, 36, 9);
    let s = ConvShape { rows_in: inp.rows(), rows_out: out.rows(), cin, cout, taps };
    let l = WeightLayout::oihw(cin, cout, taps);
    let x = ctx.upload(&random_vec(1, s.rows_in * cin));
    let w = ctx.upload(&random_vec(2, taps * cin * cout));
    let b = ctx.upload(&random_vec(3, cout));
    let dy = ctx.upload(&random_vec(4, s.rows_out * cout));
    let (mt, it) = (ctx.upload(&map.map), ctx.upload(&inv.map));

    // depthwise 7×7 on the input stage
    let dmap = conv_map(&inp, &inp, Window::new(7, 1, 3));
    let dinv = inverse_map(&dmap, inp.rows());
    let c = 20;
    let (dmt, dit) = (ctx.upload(&dmap.map), ctx.upload(&dinv.map));
    let dww = ctx.upload(&random_vec(5, c * 49));
    let dg = ctx.upload(&random_vec(6, inp.rows() * c));

    let run = || {
        let (y, dx, dw, db) = (ctx.zeros(s.rows_out * cout), ctx.zeros(s.rows_in * cin), ctx.zeros(taps * cin * cout), ctx.zeros(cout));
        let (yd, dxd, dwd, dbd) = (ctx.zeros(inp.rows() * c), ctx.zeros(inp.rows() * c), ctx.zeros(c * 49), ctx.zeros(c));
        let mut ds = conv_forward(&ctx, &x, &mt, &w, l, Some(&b), &y, s, false).unwrap();
        ds.extend(conv_data_grad(&ctx, &dy, &it, &w, l, &dx, s, false).unwrap());
        ds.extend(conv_weight_grad(&ctx, &x, &mt, &dy, &dw, l, Some(&db), s).unwrap());
        ds.extend(dw_forward(&ctx, &x, &dmt, &dww, Some(&b.slice(0, c)), &yd, inp.rows(), c, 49).unwrap());
        ds.extend(dw_data_grad(&ctx, &dg, &dit, &dww, &dxd, inp.rows(), c, 49, false).unwrap());
        ds.extend(dw_weight_grad(&ctx, &x, &dmt, &dg, &dwd, Some(&dbd), inp.rows(), c, 49).unwrap());
        ctx.run(&ds).unwrap();
        [&y, &dx, &dw, &db, &yd, &dxd, &dwd, &dbd].map(|t| bits(&ctx, t))
    };
    let (a, b2) = (run(), run());
    let names = ["conv forward", "conv data gradient", "conv weight gradient", "conv bias gradient",
        "depthwise forward", "depthwise data gradient", "depthwise weight gradient", "depthwise bias gradient"];
    for ((u, v), name) in a.iter().zip(&b2).zip(names) {
        assert!(u.iter().any(|&z| z != 0), "{name}: all zero");
        assert_eq!(u, v, "{name} differs between two runs");
    }
}
