// The active sets and neighbour maps of a step, built on the GPU from the patch mask
// alone (src/sparse/gpu.rs), so the host uploads a few KB of mask per step instead of
// every map (51 MiB and ~80 ms of one CPU core per step for ResNet-50 224² batch 8,
// issue 11). Every entry is a pure gather (one thread per output element, no atomics):
// the same integers as the CPU reference in src/sparse, in the same canonical order.
//
// Codes (src/sparse/maps.rs): -1 = OUT_OF_BOUNDS (padding, or nothing reads this input),
// -2 = INACTIVE (an in-bounds masked site). Indices read and written are batch-wide
// (site (b*h+y)*w+x, row) unless made chunk-relative (chunk_images).
struct Params {
    batch: u32,
    h_in: u32, w_in: u32,    // the input set (`rows`: the set itself)
    h_out: u32, w_out: u32,  // the output set
    fh: u32, fw: u32,        // the patch grid
    k: u32, stride: u32, pad: u32,
    transposed: u32,
    n: u32,                  // threads
    // Chunk-relative indices (graph::chunks): entries >= 0 of image b count from the
    // first image of b's chunk, `chunk_images` images of `target_per_image` units each
    // (0 = absolute).
    chunk_images: u32,
    target_per_image: u32,
    per_image: u32,          // `relative_copy`: entries per image of the array
    visible_per_image: u32,  // `active_rows`: patches every image shows
    // A batch over the adapter's binding limit runs every entry once per chunk of images:
    // `out`, `out2`, `rows` and `src` (of `relative_copy`) are then views that start at
    // image `image_base`, and `n` counts the chunk's threads. Values stay batch-wide.
    image_base: u32,
    _pad0: u32, _pad1: u32, _pad2: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> visible: array<u32>;    // [B, fh, fw], 1 = visible
@group(0) @binding(2) var<storage, read> src: array<i32>;        // row_of of a set (maps), or an index array (relative)
@group(0) @binding(3) var<storage, read> rows: array<i32>;       // site_of_row of a set
@group(0) @binding(4) var<storage, read_write> out: array<i32>;  // the index array written
@group(0) @binding(5) var<storage, read_write> out2: array<i32>; // `rows`: site_of_row

const OUT_OF_BOUNDS: i32 = -1;
const INACTIVE: i32 = -2;

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

fn relative(v: i32, b: u32) -> i32 {
    if (v < 0 || p.chunk_images == 0u) { return v; }
    return v - i32((b / p.chunk_images) * p.chunk_images * p.target_per_image);
}

// row_of[(b*h+y)*w+x] (into `out`) and site_of_row[row] (into `out2`) of the set
// `h_in × w_in`: a site's row counts the active sites before it in raster order, which
// the patch mask gives directly (every visible patch holds sy·sx sites, sy = h/fh).
@compute @workgroup_size(64)
fn active_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.n) { return; }
    let per = p.h_in * p.w_in;
    let b = p.image_base + i / per;
    let y = (i % per) / p.w_in;
    let x = i % p.w_in;
    let sy = p.h_in / p.fh;
    let sx = p.w_in / p.fw;
    let py = y / sy;
    let px = x / sx;
    let m = b * p.fh * p.fw;
    if (visible[m + py * p.fw + px] == 0u) {
        out[i] = -1;
        return;
    }
    var above = 0u;          // ... in patch rows above py
    var in_row = 0u;         // visible patches of patch row py
    var left = 0u;           // ... left of px
    for (var qy = 0u; qy < p.fh; qy++) {
        for (var qx = 0u; qx < p.fw; qx++) {
            let v = visible[m + qy * p.fw + qx];
            if (qy < py) { above += v; }
            if (qy == py) {
                in_row += v;
                if (qx < px) { left += v; }
            }
        }
    }
    // Every image shows the same number of patches (the graph checks it per step), so
    // image b's rows start after b images of that many.
    let before = b * p.visible_per_image;
    let row = (before + above) * sy * sx + (y % sy) * sx * in_row + left * sx + (x % sx);
    out[i] = i32(row);
    let rows_per_image = p.visible_per_image * sy * sx;
    out2[row - p.image_base * rows_per_image] = i32(b * per) + i32(i % per);
}

// map[r_out * taps + t]: the input row read by output row r_out at tap t = ky*k + kx.
// `src` = row_of of the input set, `rows` = site_of_row of the output set.
@compute @workgroup_size(64)
fn conv_map(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.n) { return; }
    let taps = p.k * p.k;
    let r = i / taps;
    let t = i % taps;
    let site = u32(rows[r]);
    let per = p.h_out * p.w_out;
    let b = site / per;
    let oy = i32((site % per) / p.w_out);
    let ox = i32(site % p.w_out);
    let ky = i32(t / p.k);
    let kx = i32(t % p.k);
    let s = i32(p.stride);
    let pd = i32(p.pad);
    var iy: i32;
    var ix: i32;
    if (p.transposed != 0u) {
        // ConvTranspose2d in gather form: input ((oy + p - ky) / s) when exact.
        let ny = oy + pd - ky;
        let nx = ox + pd - kx;
        // A negative numerator is out of bounds whether exact or not.
        if (ny < 0 || nx < 0 || ny % s != 0 || nx % s != 0) {
            out[i] = OUT_OF_BOUNDS;
            return;
        }
        iy = ny / s;
        ix = nx / s;
    } else {
        iy = oy * s - pd + ky;
        ix = ox * s - pd + kx;
    }
    if (iy < 0 || ix < 0 || iy >= i32(p.h_in) || ix >= i32(p.w_in)) {
        out[i] = OUT_OF_BOUNDS;
        return;
    }
    let v = src[((b - p.image_base) * p.h_in + u32(iy)) * p.w_in + u32(ix)];
    if (v < 0) {
        out[i] = INACTIVE;
        return;
    }
    out[i] = relative(v, b);
}

// inv[r_in * taps + t]: the output row that reads input row r_in at tap t, or -1 (each
// (input, tap) pair feeds at most one output in a strided convolution). `src` = row_of of
// the output set, `rows` = site_of_row of the input set.
@compute @workgroup_size(64)
fn inverse_map(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.n) { return; }
    let taps = p.k * p.k;
    let r = i / taps;
    let t = i % taps;
    let site = u32(rows[r]);
    let per = p.h_in * p.w_in;
    let b = site / per;
    let iy = i32((site % per) / p.w_in);
    let ix = i32(site % p.w_in);
    let ky = i32(t / p.k);
    let kx = i32(t % p.k);
    let s = i32(p.stride);
    let pd = i32(p.pad);
    var oy: i32;
    var ox: i32;
    if (p.transposed != 0u) {
        // Output oy reads input (oy + p - ky) / s = iy.
        oy = iy * s - pd + ky;
        ox = ix * s - pd + kx;
    } else {
        // Output oy reads input oy·s − p + ky = iy.
        let ny = iy + pd - ky;
        let nx = ix + pd - kx;
        if (ny < 0 || nx < 0 || ny % s != 0 || nx % s != 0) {
            out[i] = OUT_OF_BOUNDS;
            return;
        }
        oy = ny / s;
        ox = nx / s;
    }
    if (oy < 0 || ox < 0 || oy >= i32(p.h_out) || ox >= i32(p.w_out)) {
        out[i] = OUT_OF_BOUNDS;
        return;
    }
    out[i] = relative(src[((b - p.image_base) * p.h_out + u32(oy)) * p.w_out + u32(ox)], b);
}

// out = src made chunk-relative (row_of and site_of_row copies for chunked ops):
// element i belongs to image i / per_image.
@compute @workgroup_size(64)
fn relative_copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.n) { return; }
    out[i] = relative(src[i], p.image_base + i / p.per_image);
}
