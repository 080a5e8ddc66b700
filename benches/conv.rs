//! Convolution timings for the layers of SparK-ResNet-50 at 224×224, batch 8, 60% of the
//! patches masked: forward, data gradient and weight gradient, sparse (visible sites only)
//! against dense (every site) on the same adapter.
//!
//!     cargo bench --bench conv                 # every layer
//!     cargo bench --bench conv -- 3x3          # layers whose name contains "3x3"
//!     SPARK_BENCH_QUICK=1 cargo bench --bench conv   # a representative subset
//!
//! FLOPs = 2 · rows_out · taps · cin · cout, with the rows that are actually computed (the
//! visible ones for sparse), the same count for each of the three passes.
//!
//! Under each layer, every candidate kernel of each pass of the sparse layer (what
//! `--tune` chooses among on this adapter, timed the way the tuner times them), the
//! fixed rule's marked `fixed` and the fastest `*`. `--kernels`-style family choice:
//! `SPARK_WGPU_KERNELS=gpu cargo bench --bench conv` lists the GPU family's candidates.

use std::time::Instant;

use spark_wgpu::gpu::{Dispatch, GpuContext};
use spark_wgpu::ops::conv::{ConvShape, WeightLayout, candidates, conv_data_grad, conv_forward, conv_weight_grad};
use spark_wgpu::sparse::{ActiveSet, PatchMask, Window, conv_map, inverse_map};
use spark_wgpu::rng::{random_patch_mask, random_vec};

const BATCH: usize = 8;
const IMAGE: usize = 224;
const VISIBLE: f64 = 0.4;

struct Layer {
    name: &'static str,
    win: Window,
    h_in: usize,
    cin: usize,
    cout: usize,
    quick: bool,
}

const fn layer(name: &'static str, k: usize, stride: usize, h_in: usize, cin: usize, cout: usize, quick: bool) -> Layer {
    Layer { name, win: Window::new(k, stride, k / 2), h_in, cin, cout, quick }
}

const LAYERS: &[Layer] = &[
    layer("stem 7x7/2 3->64 224->112", 7, 2, 224, 3, 64, false),
    layer("s1 3x3 64->64 @56", 3, 1, 56, 64, 64, true),
    layer("s1 1x1 256->64 @56", 1, 1, 56, 256, 64, false),
    layer("s2 3x3/2 128 56->28", 3, 2, 56, 128, 128, false),
    layer("s2 3x3 128->128 @28", 3, 1, 28, 128, 128, false),
    layer("s2 1x1 512->128 @28", 1, 1, 28, 512, 128, false),
    layer("s3 3x3/2 256 28->14", 3, 2, 28, 256, 256, false),
    layer("s3 3x3 256->256 @14", 3, 1, 14, 256, 256, true),
    layer("s3 1x1 1024->256 @14", 1, 1, 14, 1024, 256, true),
    layer("s4 3x3/2 512 14->7", 3, 2, 14, 512, 512, false),
    layer("s4 3x3 512->512 @7", 3, 1, 7, 512, 512, false),
    layer("s4 1x1 2048->512 @7", 1, 1, 7, 2048, 512, false),
];

/// Seconds of one `ctx.run(ds)` after a warm-up: the fastest of at least 3 runs and 0.5 s
/// (the minimum, not the mean: on a shared machine other processes only ever add time).
fn time(ctx: &GpuContext, ds: &[Dispatch]) -> f64 {
    ctx.run(ds).unwrap();
    let start = Instant::now();
    let (mut n, mut best) = (0, f64::INFINITY);
    while n < 3 || start.elapsed().as_secs_f64() < 0.5 {
        let t = Instant::now();
        ctx.run(ds).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        n += 1;
    }
    best
}

/// (forward, data gradient, weight gradient) seconds and the FLOPs of one pass.
fn run_layer(ctx: &GpuContext, l: &Layer, mask: &PatchMask) -> ([f64; 3], f64, usize) {
    let h_out = l.win.out_size(l.h_in);
    let (inp, out) = (ActiveSet::from_patch_mask(mask, l.h_in, l.h_in), ActiveSet::from_patch_mask(mask, h_out, h_out));
    let map = conv_map(&inp, &out, l.win);
    let inv = inverse_map(&map, inp.rows());
    let taps = l.win.taps();
    let s = ConvShape { rows_in: inp.rows(), rows_out: out.rows(), cin: l.cin, cout: l.cout, taps };
    let lay = WeightLayout::oihw(l.cin, l.cout, taps);
    let x = ctx.upload(&random_vec(1, s.rows_in * l.cin));
    let w = ctx.upload(&random_vec(2, taps * l.cin * l.cout));
    let b = ctx.upload(&random_vec(3, l.cout));
    let dy = ctx.upload(&random_vec(4, s.rows_out * l.cout));
    let (mt, it) = (ctx.upload(&map.map), ctx.upload(&inv.map));
    let (y, dx, dw) = (ctx.zeros(s.rows_out * l.cout), ctx.zeros(s.rows_in * l.cin), ctx.zeros(taps * l.cin * l.cout));
    let fwd = conv_forward(ctx, &x, &mt, &w, lay, None, &y, s, false).unwrap();
    let dgrad = conv_data_grad(ctx, &dy, &it, &w, lay, &dx, s, false).unwrap();
    let wgrad = conv_weight_grad(ctx, &x, &mt, &dy, &dw, lay, Some(&b), s).unwrap();
    let t = [time(ctx, &fwd), time(ctx, &dgrad), time(ctx, &wgrad)];
    (t, s.flops(), s.rows_out)
}

fn main() {
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let quick = std::env::var("SPARK_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let ctx = GpuContext::new_default().expect("a GPU adapter");
    println!("adapter: {}", ctx.describe());
    let f = IMAGE / 32;
    let sparse_mask = random_patch_mask(0, BATCH, f, f, VISIBLE);
    let dense_mask = PatchMask::all_visible(BATCH, f, f);
    println!(
        "SparK-ResNet-50 convolutions, {IMAGE}x{IMAGE}, batch {BATCH}, {}/{} patches visible per image{}",
        sparse_mask.visible_count() / BATCH,
        f * f,
        if quick { " (SPARK_BENCH_QUICK: subset)" } else { "" }
    );
    println!(
        "{:<26} {:<6} {:>7} | {:>8} {:>6} | {:>8} {:>6} | {:>8} {:>6} | {:>8} {:>7}",
        "layer", "mode", "rows", "fwd ms", "GF/s", "dgrad ms", "GF/s", "wgrad ms", "GF/s", "sum ms", "speedup"
    );
    for l in LAYERS {
        if quick && !l.quick {
            continue;
        }
        if !filters.is_empty() && !filters.iter().any(|f| l.name.contains(f.as_str())) {
            continue;
        }
        let mut sums = [0.0; 2];
        for (i, (mode, mask)) in [("sparse", &sparse_mask), ("dense", &dense_mask)].into_iter().enumerate() {
            let (t, flops, rows) = run_layer(&ctx, l, mask);
            sums[i] = t.iter().sum::<f64>();
            let gf = |s: f64| flops / s / 1e9;
            let speed = if i == 1 { format!("{:.2}x", sums[1] / sums[0]) } else { String::new() };
            println!(
                "{:<26} {:<6} {:>7} | {:>8.2} {:>6.1} | {:>8.2} {:>6.1} | {:>8.2} {:>6.1} | {:>8.1} {:>7}",
                if i == 0 { l.name } else { "" },
                mode,
                rows,
                t[0] * 1e3,
                gf(t[0]),
                t[1] * 1e3,
                gf(t[1]),
                t[2] * 1e3,
                gf(t[2]),
                sums[i] * 1e3,
                speed
            );
        }
        print_candidates(&ctx, l, &sparse_mask);
    }
}

/// The candidates of every pass of the sparse layer, with their GFLOP/s.
fn print_candidates(ctx: &GpuContext, l: &Layer, mask: &PatchMask) {
    let h_out = l.win.out_size(l.h_in);
    let (inp, out) = (ActiveSet::from_patch_mask(mask, l.h_in, l.h_in), ActiveSet::from_patch_mask(mask, h_out, h_out));
    let flops = ConvShape { rows_in: inp.rows(), rows_out: out.rows(), cin: l.cin, cout: l.cout, taps: l.win.taps() }.flops();
    let cands = candidates(ctx, &inp, &out, l.win, false, l.cin, l.cout, false).unwrap();
    for pass in ["fwd", "dgrad", "wgrad"] {
        let of: Vec<_> = cands.iter().filter(|c| c.pass == pass).collect();
        let best = of.iter().map(|c| c.ms).fold(f64::INFINITY, f64::min);
        let line: Vec<String> = of
            .iter()
            .map(|c| {
                let mark = format!("{}{}", if c.fixed { " fixed" } else { "" }, if c.ms == best && of.len() > 1 { " *" } else { "" });
                format!("{} {:.2} ms {:.1} GF/s{mark}", c.name, c.ms, flops / c.ms / 1e6)
            })
            .collect();
        println!("{:<26}   {pass:<6} candidates: {}", "", line.join(" | "));
    }
}
