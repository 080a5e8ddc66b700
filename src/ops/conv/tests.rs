//! GPU against CPU on every convolution geometry of SparK, and the CPU backward against
//! central finite differences.

use super::*;
use super::kernels::*;
use super::reference::{data_grad64, forward64, to64, weight_grad64};
use crate::sparse::{ActiveSet, NeighbourMap, PatchMask, Window, conv_map, inverse_map, transposed_conv_map};
use crate::testing::{assert_close, assert_grad_matches, numeric_grad, random_patch_mask, random_vec};

/// One layer geometry: window, transposed or not, input side, and whether it is a dense
/// (decoder) layer whose active sets ignore the mask.
#[derive(Clone, Copy)]
struct Geo {
    name: &'static str,
    win: Window,
    transposed: bool,
    h_in: usize,
    dense: bool,
}

const GEOS: &[Geo] = &[
    Geo { name: "sparse 1x1/1", win: Window::new(1, 1, 0), transposed: false, h_in: 6, dense: false },
    Geo { name: "sparse 3x3/1", win: Window::new(3, 1, 1), transposed: false, h_in: 6, dense: false },
    Geo { name: "sparse 7x7/1", win: Window::new(7, 1, 3), transposed: false, h_in: 8, dense: false },
    Geo { name: "resnet stem 7x7/2", win: Window::new(7, 2, 3), transposed: false, h_in: 12, dense: false },
    Geo { name: "sparse 3x3/2", win: Window::new(3, 2, 1), transposed: false, h_in: 8, dense: false },
    Geo { name: "sparse 1x1/2", win: Window::new(1, 2, 0), transposed: false, h_in: 8, dense: false },
    Geo { name: "convnext stem 4x4/4", win: Window::new(4, 4, 0), transposed: false, h_in: 16, dense: false },
    Geo { name: "convnext down 2x2/2", win: Window::new(2, 2, 0), transposed: false, h_in: 8, dense: false },
    Geo { name: "sparse transposed 4x4/2", win: Window::new(4, 2, 1), transposed: true, h_in: 4, dense: false },
    Geo { name: "dense 3x3/1", win: Window::new(3, 1, 1), transposed: false, h_in: 5, dense: true },
    Geo { name: "dense 1x1/1", win: Window::new(1, 1, 0), transposed: false, h_in: 5, dense: true },
    Geo { name: "dense transposed 4x4/2", win: Window::new(4, 2, 1), transposed: true, h_in: 3, dense: true },
];

const BATCH: usize = 2;

/// (input set, output set, map) of `geo` under `mask` (2×2 patches per image).
fn sets(geo: &Geo, mask: &PatchMask) -> (ActiveSet, ActiveSet, NeighbourMap) {
    let h_out = if geo.transposed { geo.win.transposed_out_size(geo.h_in) } else { geo.win.out_size(geo.h_in) };
    let (i, o) = if geo.dense {
        (ActiveSet::dense(mask.batch, geo.h_in, geo.h_in), ActiveSet::dense(mask.batch, h_out, h_out))
    } else {
        (ActiveSet::from_patch_mask(mask, geo.h_in, geo.h_in), ActiveSet::from_patch_mask(mask, h_out, h_out))
    };
    let m = if geo.transposed { transposed_conv_map(&i, &o, geo.win) } else { conv_map(&i, &o, geo.win) };
    (i, o, m)
}

fn layout_of(geo: &Geo, cin: usize, cout: usize) -> WeightLayout {
    let taps = geo.win.taps();
    if geo.transposed { WeightLayout::iohw(cin, cout, taps) } else { WeightLayout::oihw(cin, cout, taps) }
}

fn masks() -> Vec<(&'static str, PatchMask)> {
    vec![
        ("all visible", PatchMask::all_visible(BATCH, 2, 2)),
        ("half visible", random_patch_mask(11, BATCH, 2, 2, 0.5)),
        ("one visible", random_patch_mask(12, BATCH, 2, 2, 0.0)),
    ]
}

/// Forward, data gradient and weight gradient of one case on the GPU against the CPU.
#[allow(clippy::too_many_arguments)]
fn check_case(ctx: &GpuContext, geo: &Geo, mask: &PatchMask, cin: usize, cout: usize, bias: bool, acc: bool, seed: u64, what: &str) {
    check_case_tol(ctx, geo, mask, cin, cout, bias, acc, seed, what, 1e-5);
}

/// `check_case` with relative tolerance `tol`.
#[allow(clippy::too_many_arguments)]
fn check_case_tol(ctx: &GpuContext, geo: &Geo, mask: &PatchMask, cin: usize, cout: usize, bias: bool, acc: bool, seed: u64, what: &str, tol: f64) {
    let (inp, out, map) = sets(geo, mask);
    let inv = inverse_map(&map, inp.rows());
    let taps = geo.win.taps();
    let s = ConvShape { rows_in: inp.rows(), rows_out: out.rows(), cin, cout, taps };
    let l = layout_of(geo, cin, cout);
    let x = random_vec(seed, s.rows_in * cin);
    let w = random_vec(seed + 1, taps * cin * cout);
    let b = random_vec(seed + 2, cout);
    let g = random_vec(seed + 3, s.rows_out * cout);
    let y0 = if acc { random_vec(seed + 4, s.rows_out * cout) } else { vec![7.0; s.rows_out * cout] };
    let dx0 = if acc { random_vec(seed + 5, s.rows_in * cin) } else { vec![7.0; s.rows_in * cin] };

    let (xt, mt, it, wt, bt, gt) =
        (ctx.upload(&x), ctx.upload(&map.map), ctx.upload(&inv.map), ctx.upload(&w), ctx.upload(&b), ctx.upload(&g));
    let (yt, dxt) = (ctx.upload(&y0), ctx.upload(&dx0));
    let (dwt, dbt) = (ctx.upload(&vec![9.0f32; w.len()]), ctx.upload(&vec![9.0f32; cout]));
    let mut ds = conv_forward(ctx, &xt, &mt, &wt, l, bias.then_some(&bt), &yt, s, acc).unwrap();
    ds.extend(conv_data_grad(ctx, &gt, &it, &wt, l, &dxt, s, acc).unwrap());
    ds.extend(conv_weight_grad(ctx, &xt, &mt, &gt, &dwt, l, bias.then_some(&dbt), s).unwrap());
    ctx.run(&ds).unwrap();

    let base = |init: &[f32], v: Vec<f32>| -> Vec<f32> {
        if acc { v.iter().zip(init).map(|(a, b)| a + b).collect() } else { v }
    };
    let want_y = base(&y0, conv_forward_ref(&x, &map, &w, l, bias.then_some(&b[..]), s));
    let want_dx = base(&dx0, conv_data_grad_ref(&g, &map, &w, l, s));
    let (want_dw, want_db) = conv_weight_grad_ref(&x, &map, &g, l, s);
    assert_close(&ctx.read_f32(&yt).unwrap(), &want_y, tol, &format!("{what}: forward"));
    assert_close(&ctx.read_f32(&dxt).unwrap(), &want_dx, tol, &format!("{what}: data gradient"));
    assert_close(&ctx.read_f32(&dwt).unwrap(), &want_dw, tol, &format!("{what}: weight gradient"));
    let db = ctx.read_f32(&dbt).unwrap();
    if bias {
        assert_close(&db, &want_db, tol, &format!("{what}: bias gradient"));
    } else {
        assert_eq!(db, vec![9.0; cout], "{what}: bias gradient written without a bias");
    }
}

/// Every entry point of the generated conv_wgrad_thin kernel: each tile of the table in
/// `tiles.rs`, 8-wide and 64-wide (also those no launcher picks today, so that the tuner
/// of issue 8 can).
const THIN_TILES: [WgradTile; 2 * tiles::THIN_TILES.len()] = {
    let mut out = [GPU_WGRAD; 2 * tiles::THIN_TILES.len()];
    let mut i = 0;
    while i < tiles::THIN_TILES.len() {
        out[2 * i] = thin(tiles::THIN_TILES[i], true);
        out[2 * i + 1] = thin(tiles::THIN_TILES[i], false);
        i += 1;
    }
    out
};

/// Every gather-GEMM kernel (forward and data gradient) and weight-gradient kernel that
/// can run `cin -> cout`, paired up.
fn tiles_for(cin: usize, cout: usize) -> Vec<(GemmTile, WgradTile)> {
    // Every gather kernel of the table that fits the layer, each beside a weight-gradient
    // kernel (every one of those appears in turn).
    let wgrads = [GPU_WGRAD, CPU_WGRAD, THIN_GPU_K1N2, THIN_CPU_K4N1, THIN_CPU_K4N4, THIN_GPU_K1N1, CPU_WGRAD_VEC4];
    let vec4 = cin.is_multiple_of(4) && cout.is_multiple_of(4);
    let wgrads: Vec<_> = wgrads.into_iter().filter(|w| vec4 || *w != CPU_WGRAD_VEC4).collect();
    let mut t = vec![];
    for (i, g) in super::tiles::GATHERS.iter().filter(|g| g.fits(cin, cout, 1) && g.fits(cout, cin, 1)).enumerate() {
        t.push((*g, wgrads[i % wgrads.len()]));
    }
    for (i, w) in wgrads.iter().enumerate().skip(t.len()) {
        t.push((t[i % t.len()].0, *w));
    }
    t
}

/// The workgroup-staged gather kernels give the bits of the 4 x 8 register kernel (same
/// order, one fused multiply-add per step), forward and data gradient, on sizes that fit
/// no block (rows past a block, channels past BN, K past BK).
#[test]
fn staged_gathers_match_the_register_kernel_bitwise() {
    let ctx = GpuContext::new_default().unwrap();
    let geo = Geo { name: "sparse 3x3/1", win: Window::new(3, 1, 1), transposed: false, h_in: 12, dense: false };
    let mask = random_patch_mask(21, 3, 2, 2, 0.5);
    let (inp, out, map) = sets(&geo, &mask);
    let inv = inverse_map(&map, inp.rows());
    for (cin, cout) in [(3, 70), (17, 9), (20, 132), (68, 36)] {
        let s = ConvShape { rows_in: inp.rows(), rows_out: out.rows(), cin, cout, taps: 9 };
        let l = layout_of(&geo, cin, cout);
        let (xt, mt, it) = (ctx.upload(&random_vec(1, s.rows_in * cin)), ctx.upload(&map.map), ctx.upload(&inv.map));
        let (wt, bt, gt) = (ctx.upload(&random_vec(2, 9 * cin * cout)), ctx.upload(&random_vec(3, cout)), ctx.upload(&random_vec(4, s.rows_out * cout)));
        let run = |tile: GemmTile| {
            FORCE_TILE.with(|f| f.set(Some(tile)));
            let (yt, dxt) = (ctx.upload(&random_vec(5, s.rows_out * cout)), ctx.upload(&random_vec(6, s.rows_in * cin)));
            let mut ds = conv_forward(&ctx, &xt, &mt, &wt, l, Some(&bt), &yt, s, true).unwrap();
            ds.extend(conv_data_grad(&ctx, &gt, &it, &wt, l, &dxt, s, false).unwrap());
            ctx.run(&ds).unwrap();
            let bits = |t: &GpuTensor| ctx.read_f32(t).unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            (bits(&yt), bits(&dxt))
        };
        let want = run(GPU_TILE);
        for tile in super::tiles::GATHERS.iter().filter(|g| matches!(g.stage, GatherStage::Workgroup { .. }) && g.fits(cin, cout, 1) && g.fits(cout, cin, 1)) {
            let got = run(*tile);
            assert!(got.0 == want.0, "{cin}->{cout} {}: y differs from conv's", tile.kernel);
            assert!(got.1 == want.1, "{cin}->{cout} {}: dx differs from conv's", tile.kernel);
        }
    }
    FORCE_TILE.with(|f| f.set(None));
}

#[test]
fn gpu_matches_cpu_on_every_geometry() {
    let ctx = GpuContext::new_default().unwrap();
    // the first four: sizes that fit no tile; the last two: multiples of 4 (vec4 kernels)
    let chans = [(3, 5), (5, 17), (17, 33), (33, 3), (8, 20), (36, 12)];
    let mut seed = 100;
    for geo in GEOS {
        for (mname, mask) in masks() {
            if geo.dense && mname != "all visible" {
                continue; // a dense layer's sets do not depend on the mask
            }
            for (i, &(cin, cout)) in chans.iter().enumerate() {
                // every (bias, accumulate) combination appears once per geometry and mask
                let (bias, acc) = (i.is_multiple_of(2), (i / 2) % 2 == 0);
                for (tile, wtile) in tiles_for(cin, cout) {
                    let what = format!("{} ({mname}, {cin}->{cout}, bias {bias}, accumulate {acc}, {tile:?}, {wtile:?})", geo.name);
                    FORCE_TILE.with(|f| f.set(Some(tile)));
                    FORCE_WGRAD.with(|f| f.set(Some(wtile)));
                    check_case(&ctx, geo, &mask, cin, cout, bias, acc, seed, &what);
                    seed += 10;
                }
            }
        }
    }
}

#[test]
fn weight_gradient_with_many_splits() {
    // 1152 rows: split-K uses many splits for both dw and dbias.
    let ctx = GpuContext::new_default().unwrap();
    let geo = Geo { name: "dense 3x3/1 big", win: Window::new(3, 1, 1), transposed: false, h_in: 24, dense: true };
    let mask = PatchMask::all_visible(BATCH, 2, 2);
    check_case(&ctx, &geo, &mask, 5, 17, true, false, 7, geo.name);
    let geo = Geo { name: "stem big", win: Window::new(7, 2, 3), transposed: false, h_in: 32, dense: false };
    check_case(&ctx, &geo, &random_patch_mask(3, 3, 2, 2, 0.5), 3, 9, false, true, 8, geo.name);
    // rows and channels spanning several of the large CPU tiles
    let geo = Geo { name: "dense 3x3/1 wide", win: Window::new(3, 1, 1), transposed: false, h_in: 9, dense: true };
    for (tile, wtile) in tiles_for(36, 68) {
        FORCE_TILE.with(|f| f.set(Some(tile)));
        FORCE_WGRAD.with(|f| f.set(Some(wtile)));
        check_case(&ctx, &geo, &mask, 36, 68, true, true, 9, &format!("{} {tile:?} {wtile:?}", geo.name));
    }
}

/// Thin layers (the full-resolution decoder stages): 1..4 channels in and out, ~3000 rows
/// (a multiple of no tile or split), 3×3 and transposed 4×4/2, with the thin weight-gradient
/// kernel forced (both entry points) and as the automatic choice.
#[test]
fn thin_layers_match_cpu() {
    let ctx = GpuContext::new_default().unwrap();
    let geos = [
        Geo { name: "thin dense 3x3/1", win: Window::new(3, 1, 1), transposed: false, h_in: 31, dense: true },
        Geo { name: "thin dense transposed 4x4/2", win: Window::new(4, 2, 1), transposed: true, h_in: 15, dense: true },
    ];
    let mask = PatchMask::all_visible(3, 2, 2);
    let mut seed = 500;
    for geo in &geos {
        for cin in 1..=4 {
            for cout in 1..=4 {
                let (bias, acc) = ((cin + cout) % 2 == 0, cin % 2 == 0);
                for force in std::iter::once(None).chain(THIN_TILES.iter().map(|&t| Some(t))) {
                    FORCE_TILE.with(|f| f.set(None));
                    FORCE_WGRAD.with(|f| f.set(force));
                    let what = format!("{} ({cin}->{cout}, bias {bias}, accumulate {acc}, {force:?})", geo.name);
                    // Sums over ~3000 rows in f32 with cancellation, and with one or two
                    // output channels the error is relative to a single sum.
                    check_case_tol(&ctx, geo, &mask, cin, cout, bias, acc, seed, &what, 5e-5);
                    seed += 10;
                }
            }
        }
    }
    // Many k' tiles per split: few splits of more than 128 rows, so the CPU entries round
    // the rows per split up to a multiple of 256.
    let geo = &geos[0];
    for force in &THIN_TILES {
        FORCE_WGRAD.with(|f| f.set(Some(*force)));
        check_case_tol(&ctx, geo, &mask, 36, 13, true, false, seed, &format!("{} (36->13, {force:?})", geo.name), 5e-5);
        seed += 10;
    }
    FORCE_WGRAD.with(|f| f.set(None));
    let s = ConvShape { rows_in: 2883, rows_out: 2883, cin: 4, cout: 2, taps: 9 };
    assert!(is_thin(true, &s) && is_thin(false, &s), "the decoder's last stages must take the thin kernel");
    assert_eq!(thin_tile(true, &s), THIN_CPU_K4N1);
    let s = ConvShape { rows_in: 2883, rows_out: 2883, cin: 3, cout: 64, taps: 49 };
    assert!(!is_thin(true, &s), "the stem keeps the 32x32 CPU tile");
}

/// Weight and bias gradients (split-K partials + reduce_partials) give identical bits on
/// two runs, for every weight-gradient kernel, with many splits.
#[test]
fn weight_gradient_is_bitwise_deterministic() {
    let ctx = GpuContext::new_default().unwrap();
    let geo = Geo { name: "dense 3x3/1", win: Window::new(3, 1, 1), transposed: false, h_in: 29, dense: true };
    let (inp, out, map) = sets(&geo, &PatchMask::all_visible(2, 2, 2));
    for (cin, cout) in [(3, 2), (4, 4), (8, 12)] {
        let s = ConvShape { rows_in: inp.rows(), rows_out: out.rows(), cin, cout, taps: 9 };
        let l = layout_of(&geo, cin, cout);
        let (xt, mt, gt) =
            (ctx.upload(&random_vec(1, s.rows_in * cin)), ctx.upload(&map.map), ctx.upload(&random_vec(2, s.rows_out * cout)));
        let mut wtiles = vec![GPU_WGRAD, CPU_WGRAD];
        wtiles.extend_from_slice(&THIN_TILES);
        if cin.is_multiple_of(4) && cout.is_multiple_of(4) {
            wtiles.push(CPU_WGRAD_VEC4);
        }
        for wtile in wtiles {
            FORCE_WGRAD.with(|f| f.set(Some(wtile)));
            let run = || {
                let (dw, db) = (ctx.zeros(9 * cin * cout), ctx.zeros(cout));
                ctx.run(&conv_weight_grad(&ctx, &xt, &mt, &gt, &dw, l, Some(&db), s).unwrap()).unwrap();
                (ctx.read_f32(&dw).unwrap(), ctx.read_f32(&db).unwrap())
            };
            let (a, b) = (run(), run());
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.0), bits(&b.0), "{cin}->{cout} {wtile:?}: dw differs between runs");
            assert_eq!(bits(&a.1), bits(&b.1), "{cin}->{cout} {wtile:?}: dbias differs between runs");
        }
    }
    FORCE_WGRAD.with(|f| f.set(None));
}

/// Timings of the thin decoder layers of `spark-wgpu bench --model resnet_tiny --input-size 64
/// --batch 16 --dec-width 64` with each candidate kernel (not a check):
///     cargo test --release --lib conv::tests::thin_timing -- --ignored --nocapture
#[test]
#[ignore]
fn thin_timing() {
    let ctx = GpuContext::new_default().unwrap();
    let b = 16;
    let filter = std::env::var("THIN_FILTER").unwrap_or_default();
    // (name, window, transposed, input side, cin, cout)
    let layers = [
        ("dec4 up 4x4t 4->4", Window::new(4, 2, 1), true, 32, 4, 4),
        ("dec4 conv0 3x3 4->4", Window::new(3, 1, 1), false, 64, 4, 4),
        ("dec4 conv3 3x3 4->2", Window::new(3, 1, 1), false, 64, 4, 2),
        ("proj 1x1 2->3", Window::new(1, 1, 0), false, 64, 2, 3),
        ("dec3 up 4x4t 8->8", Window::new(4, 2, 1), true, 16, 8, 8),
        ("dec3 conv0 3x3 8->8", Window::new(3, 1, 1), false, 32, 8, 8),
        ("dec3 conv3 3x3 8->4", Window::new(3, 1, 1), false, 32, 8, 4),
        ("dec2 up 4x4t 16->16", Window::new(4, 2, 1), true, 8, 16, 16),
        ("dec2 conv0 3x3 16->16", Window::new(3, 1, 1), false, 16, 16, 16),
        ("dec2 conv3 3x3 16->8", Window::new(3, 1, 1), false, 16, 16, 8),
        ("proj3 3x3 8->8 @16", Window::new(3, 1, 1), false, 16, 8, 8),
        ("l1 3x3 64->8 @16", Window::new(3, 1, 1), false, 16, 64, 8),
        ("stem 7x7/2 3->64", Window::new(7, 2, 3), false, 64, 3, 64),
    ];
    let best = |ds: &[crate::gpu::Dispatch]| -> f64 {
        let refs: Vec<&crate::gpu::Dispatch> = ds.iter().collect();
        (0..3).map(|_| ctx.profile(&refs).unwrap().iter().sum::<f64>()).fold(f64::INFINITY, f64::min)
    };
    for (name, win, transposed, h_in, cin, cout) in layers {
        if !name.contains(filter.as_str()) {
            continue;
        }
        let geo = Geo { name, win, transposed, h_in, dense: true };
        let (inp, out, map) = sets(&geo, &PatchMask::all_visible(b, 2, 2));
        let inv = inverse_map(&map, inp.rows());
        let taps = win.taps();
        let s = ConvShape { rows_in: inp.rows(), rows_out: out.rows(), cin, cout, taps };
        let l = layout_of(&geo, cin, cout);
        let (xt, mt, it) = (ctx.upload(&random_vec(1, s.rows_in * cin)), ctx.upload(&map.map), ctx.upload(&inv.map));
        let (wt, bt, gt) = (ctx.upload(&random_vec(2, taps * cin * cout)), ctx.upload(&random_vec(3, cout)), ctx.upload(&random_vec(4, s.rows_out * cout)));
        let (yt, dxt, dwt, dbt) = (ctx.zeros(s.rows_out * cout), ctx.zeros(s.rows_in * cin), ctx.zeros(taps * cin * cout), ctx.zeros(cout));
        let mut line = format!("{name:<24} rows {:>6}", s.rows_out);
        let mut tiles = vec![None, Some(CPU_TILE), Some(CPU_NARROW_TILE)];
        if cin.is_multiple_of(4) && cout.is_multiple_of(4) {
            tiles.push(Some(CPU_VEC4_TILE));
        }
        for t in tiles {
            FORCE_TILE.with(|f| f.set(t));
            let f = best(&conv_forward(&ctx, &xt, &mt, &wt, l, Some(&bt), &yt, s, false).unwrap());
            let d = best(&conv_data_grad(&ctx, &gt, &it, &wt, l, &dxt, s, false).unwrap());
            let tn = t.map(|t| t.kernel).unwrap_or("auto");
            line += &format!(" | {tn} f {f:.1} d {d:.1}");
        }
        FORCE_TILE.with(|f| f.set(None));
        let mut wtiles = vec![None, Some(CPU_WGRAD)];
        wtiles.extend(THIN_TILES.iter().filter(|t| t.entry.ends_with("_cpu")).map(|&t| Some(t)));
        if cin.is_multiple_of(4) && cout.is_multiple_of(4) {
            wtiles.push(Some(CPU_WGRAD_VEC4));
        }
        for t in wtiles {
            FORCE_WGRAD.with(|f| f.set(t));
            let w = best(&conv_weight_grad(&ctx, &xt, &mt, &gt, &dwt, l, Some(&dbt), s).unwrap());
            let tn = t.map(|t| if t.thin { t.entry } else { t.kernel }).unwrap_or("auto");
            line += &format!(" | {tn} w+b {w:.1}");
        }
        FORCE_WGRAD.with(|f| f.set(None));
        println!("{line}");
    }
}

#[test]
fn linear_layer_is_a_one_tap_conv() {
    // Linear [out, in] over rows: identity map, taps = 1, oihw layout.
    let ctx = GpuContext::new_default().unwrap();
    let (rows, cin, cout) = (37, 17, 33);
    let map = NeighbourMap { rows_out: rows, taps: 1, map: (0..rows as i32).collect() };
    let s = ConvShape { rows_in: rows, rows_out: rows, cin, cout, taps: 1 };
    let (x, w, b) = (random_vec(1, rows * cin), random_vec(2, cout * cin), random_vec(3, cout));
    let (xt, mt, wt, bt, yt) = (ctx.upload(&x), ctx.upload(&map.map), ctx.upload(&w), ctx.upload(&b), ctx.zeros(rows * cout));
    ctx.run(&conv_forward(&ctx, &xt, &mt, &wt, WeightLayout::oihw(cin, cout, 1), Some(&bt), &yt, s, false).unwrap()).unwrap();
    let want: Vec<f32> = (0..rows * cout)
        .map(|i| {
            let (r, o) = (i / cout, i % cout);
            b[o] + (0..cin).map(|c| x[r * cin + c] * w[o * cin + c]).sum::<f32>()
        })
        .collect();
    assert_close(&ctx.read_f32(&yt).unwrap(), &want, 1e-5, "linear");
}

#[test]
fn layouts_match_pytorch() {
    let l = WeightLayout::oihw(3, 5, 9);
    assert_eq!(l.index(4, 2, 1), 3 * 9 + 2 * 9 + 4);
    let l = WeightLayout::iohw(3, 5, 16);
    assert_eq!(l.index(7, 2, 4), 2 * 5 * 16 + 4 * 16 + 7);
    assert_eq!(l.swapped().index(7, 4, 2), l.index(7, 2, 4));
    assert_eq!(l.extent(16, 3, 5), 3 * 5 * 16);
}

/// CPU backward against finite differences of `L = Σ g · conv(x, w, b)`.
fn check_numeric(geo: &Geo, mask: &PatchMask) {
    let (inp, out, map) = sets(geo, mask);
    let (cin, cout, taps) = (2, 3, geo.win.taps());
    let s = ConvShape { rows_in: inp.rows(), rows_out: out.rows(), cin, cout, taps };
    let l = layout_of(geo, cin, cout);
    let x = to64(&random_vec(1, s.rows_in * cin));
    let w = to64(&random_vec(2, taps * cin * cout));
    let b = to64(&random_vec(3, cout));
    let g = to64(&random_vec(4, s.rows_out * cout));
    let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
        forward64(x, &map, w, l, Some(b), s).iter().zip(&g).map(|(y, g)| y * g).sum()
    };
    let dx = data_grad64(&g, &map, &w, l, s);
    let (dw, db) = weight_grad64(&x, &map, &g, l, s);
    assert_grad_matches(&dx, &numeric_grad(|v| loss(v, &w, &b), &x, 1e-4), 1e-6, &format!("{}: dx", geo.name));
    assert_grad_matches(&dw, &numeric_grad(|v| loss(&x, v, &b), &w, 1e-4), 1e-6, &format!("{}: dw", geo.name));
    assert_grad_matches(&db, &numeric_grad(|v| loss(&x, &w, v), &b, 1e-4), 1e-6, &format!("{}: db", geo.name));
}

#[test]
fn cpu_backward_matches_finite_differences() {
    let mask = random_patch_mask(5, BATCH, 2, 2, 0.5);
    for geo in [
        Geo { name: "3x3/1", win: Window::new(3, 1, 1), transposed: false, h_in: 4, dense: false },
        Geo { name: "3x3/2", win: Window::new(3, 2, 1), transposed: false, h_in: 8, dense: false },
        Geo { name: "7x7/2", win: Window::new(7, 2, 3), transposed: false, h_in: 8, dense: false },
        Geo { name: "transposed 4x4/2", win: Window::new(4, 2, 1), transposed: true, h_in: 2, dense: false },
        Geo { name: "dense transposed 4x4/2", win: Window::new(4, 2, 1), transposed: true, h_in: 3, dense: true },
    ] {
        check_numeric(&geo, &mask);
    }
}

/// The layers of convnext_pico and the decoder at the sizes of a 64² run of 2 images
/// (the per-rank shapes of a 2-rank run at global batch 4), where the kernel choice
/// follows the real row counts rather than the tiny ones above.
#[test]
fn real_sized_layers_match_cpu() {
    let ctx = GpuContext::new_default().unwrap();
    let mask = random_patch_mask(21, BATCH, 2, 2, 0.5);
    let cases = [
        (Geo { name: "convnext stem 64² 4x4/4", win: Window::new(4, 4, 0), transposed: false, h_in: 64, dense: false }, 3, 16),
        (Geo { name: "convnext down 16² 2x2/2", win: Window::new(2, 2, 0), transposed: false, h_in: 16, dense: false }, 16, 32),
        (Geo { name: "pointwise 16²", win: Window::new(1, 1, 0), transposed: false, h_in: 16, dense: false }, 16, 64),
        (Geo { name: "pointwise back 16²", win: Window::new(1, 1, 0), transposed: false, h_in: 16, dense: false }, 64, 16),
        (Geo { name: "dense 3x3 32²", win: Window::new(3, 1, 1), transposed: false, h_in: 32, dense: true }, 4, 4),
        (Geo { name: "dense 3x3 64²", win: Window::new(3, 1, 1), transposed: false, h_in: 64, dense: true }, 2, 2),
        (Geo { name: "dense transposed 32²→64²", win: Window::new(4, 2, 1), transposed: true, h_in: 32, dense: true }, 2, 2),
        (Geo { name: "dense 1x1 64² proj", win: Window::new(1, 1, 0), transposed: false, h_in: 64, dense: true }, 1, 3),
        (Geo { name: "pointwise 8²", win: Window::new(1, 1, 0), transposed: false, h_in: 8, dense: false }, 32, 128),
        (Geo { name: "pointwise back 8²", win: Window::new(1, 1, 0), transposed: false, h_in: 8, dense: false }, 128, 32),
        (Geo { name: "pointwise 4²", win: Window::new(1, 1, 0), transposed: false, h_in: 4, dense: false }, 64, 256),
        (Geo { name: "pointwise back 4²", win: Window::new(1, 1, 0), transposed: false, h_in: 4, dense: false }, 256, 64),
        (Geo { name: "pointwise 2²", win: Window::new(1, 1, 0), transposed: false, h_in: 2, dense: false }, 128, 512),
        (Geo { name: "pointwise back 2²", win: Window::new(1, 1, 0), transposed: false, h_in: 2, dense: false }, 512, 128),
        (Geo { name: "convnext down 8² 2x2/2", win: Window::new(2, 2, 0), transposed: false, h_in: 8, dense: false }, 32, 64),
        (Geo { name: "convnext down 4² 2x2/2", win: Window::new(2, 2, 0), transposed: false, h_in: 4, dense: false }, 64, 128),
        (Geo { name: "dense 3x3 2²", win: Window::new(3, 1, 1), transposed: false, h_in: 2, dense: true }, 32, 32),
        (Geo { name: "dense transposed 2²→4²", win: Window::new(4, 2, 1), transposed: true, h_in: 2, dense: true }, 32, 32),
        (Geo { name: "dense 3x3 8²", win: Window::new(3, 1, 1), transposed: false, h_in: 8, dense: true }, 8, 8),
        (Geo { name: "dense 3x3 16²", win: Window::new(3, 1, 1), transposed: false, h_in: 16, dense: true }, 4, 4),
        (Geo { name: "densify proj 2²", win: Window::new(1, 1, 0), transposed: false, h_in: 2, dense: true }, 128, 32),
        (Geo { name: "densify proj 16²", win: Window::new(3, 1, 1), transposed: false, h_in: 16, dense: true }, 16, 4),
    ];
    for (i, (geo, cin, cout)) in cases.iter().enumerate() {
        for acc in [false, true] {
            check_case(&ctx, geo, &mask, *cin, *cout, true, acc, 50 + i as u64, &format!("{} accumulate {acc}", geo.name));
        }
    }
}

/// The data gradient of a 1x1 conv whose input channels fill whole column tiles reads
/// the stored weight without a re-layout (one dispatch), and still matches the CPU, with
/// every gather kernel of the table.
#[test]
fn one_by_one_data_gradient_reads_the_weight_as_stored() {
    let ctx = GpuContext::new_default().unwrap();
    let geo = Geo { name: "sparse 1x1/1", win: Window::new(1, 1, 0), transposed: false, h_in: 6, dense: false };
    let mask = random_patch_mask(31, BATCH, 2, 2, 0.5);
    let (cin, cout) = (128, 36);
    for (i, tile) in super::tiles::GATHERS.iter().filter(|g| g.fits(cin, cout, 1)).enumerate() {
        FORCE_TILE.with(|f| f.set(Some(*tile)));
        FORCE_WGRAD.with(|f| f.set(Some(GPU_WGRAD)));
        check_case(&ctx, &geo, &mask, cin, cout, i % 2 == 0, i % 2 == 1, 900 + i as u64, &format!("1x1 {cin}->{cout} {}", tile.kernel));
        let (inp, out, map) = sets(&geo, &mask);
        let inv = inverse_map(&map, inp.rows());
        let s = ConvShape { rows_in: inp.rows(), rows_out: out.rows(), cin, cout, taps: 1 };
        let (g, it, w, dx) = (ctx.zeros(s.rows_out * cout), ctx.upload(&inv.map), ctx.zeros(cin * cout), ctx.zeros(s.rows_in * cin));
        let ds = conv_data_grad(&ctx, &g, &it, &w, layout_of(&geo, cin, cout), &dx, s, false).unwrap();
        assert_eq!(ds.len(), 1, "{}: the 1x1 data gradient re-laid its weight", tile.kernel);
        // The vec4 register kernels read the forward's [cout, cin] weight as stored, with
        // the bits of the re-laid path: the same weight as a [cin, cout] tensor (a layout
        // the re-layout handles) gives the same output.
        let (x, wv) = (random_vec(7, s.rows_in * cin), random_vec(8, cin * cout));
        let wio: Vec<f32> = (0..cin * cout).map(|i| wv[(i % cout) * cin + i / cout]).collect();
        let (xt, mt) = (ctx.upload(&x), ctx.upload(&map.map));
        let run = |w: &[f32], l: WeightLayout| {
            let (wt, y) = (ctx.upload(w), ctx.zeros(s.rows_out * cout));
            let ds = conv_forward(&ctx, &xt, &mt, &wt, l, None, &y, s, false).unwrap();
            ctx.run(&ds).unwrap();
            (ds.len(), ctx.read_f32(&y).unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        };
        let (n_direct, direct) = run(&wv, layout_of(&geo, cin, cout));
        let (n_relaid, relaid) = run(&wio, WeightLayout { tap: 1, cin: cout, cout: 1 });
        if tile.loads == super::tiles::GatherLoads::Vec4 && tile.stage == GatherStage::Registers {
            assert_eq!((n_direct, n_relaid), (1, 2), "{}: the 1x1 forward re-laid its weight", tile.kernel);
        }
        assert!(direct == relaid, "{}: the 1x1 forward read as stored differs from the re-laid one", tile.kernel);
    }
    FORCE_TILE.with(|f| f.set(None));
    FORCE_WGRAD.with(|f| f.set(None));
}
