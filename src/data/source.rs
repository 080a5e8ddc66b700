//! Where images come from: a folder of image files, or built-in procedural images.

use super::rng::{below, stream, uniform, TAG_PROC};
use anyhow::{bail, Context};
use image::{ImageFormat, ImageReader, RgbImage};
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// A fixed, indexable set of images. `load` may fail (corrupt file): the loader skips
/// such an image and uses a substitute.
pub trait ImageSource: Send + Sync {
    /// Number of images.
    fn len(&self) -> usize;
    /// Whether the set holds no image.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Decode image `index` as RGB8 (grey, alpha, 16-bit and palette images converted).
    fn load(&self, index: usize) -> anyhow::Result<RgbImage>;
    /// A human-readable name for messages (the file path).
    fn describe(&self, index: usize) -> String;
}

/// Every decodable image file below a folder.
pub struct FolderSource {
    root: PathBuf,
    paths: Vec<PathBuf>,
}

/// The file extensions searched: those the image crate, as built, can decode. AVIF is
/// left out because decoding it needs the optional `avif-native` feature (the default
/// `avif` feature only encodes), and DDS has no decoder.
pub fn image_extensions() -> Vec<&'static str> {
    const ALL: &[&str] = &[
        "jpg", "jpeg", "jfif", "png", "apng", "gif", "webp", "tif", "tiff", "tga", "bmp", "ico",
        "hdr", "exr", "pbm", "pam", "ppm", "pgm", "pnm", "ff", "qoi",
    ];
    ALL.iter()
        .copied()
        .filter(|e| ImageFormat::from_extension(e).is_some_and(|f| f.reading_enabled()))
        .collect()
}

fn has_image_extension(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

impl FolderSource {
    /// Finds every image file below `dir`, recursively (ImageNet's class folders or a flat
    /// folder), in sorted path order so that indices, and so the data order of a seed, do
    /// not depend on the file system's listing order. If `dir` has a `train` subfolder,
    /// only that is searched, as the official `build_dataset_to_pretrain` reads
    /// `<dataset_path>/train` (so pointing at an ImageNet root does not mix in `val/`).
    /// Hidden files and folders (names starting with '.') are skipped: macOS `._x.jpg`
    /// resource forks carry image extensions but are not images.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        if !dir.exists() {
            bail!("image folder {} does not exist", dir.display());
        }
        if !dir.is_dir() {
            bail!("{} is not a folder (expected a folder of images)", dir.display());
        }
        let train = dir.join("train");
        let root = if train.is_dir() { train } else { dir.to_path_buf() };
        let exts = image_extensions();
        let mut paths = Vec::new();
        let mut seen = HashSet::new();
        walk(&root, &exts, &mut paths, &mut seen)?;
        if paths.is_empty() {
            bail!(
                "no images found in {} (searched all subfolders for files ending in .{})",
                root.display(),
                exts.join(", .")
            );
        }
        paths.sort();
        Ok(Self { root, paths })
    }

    /// The folder actually searched (`dir` or `dir/train`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image files, in index order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

/// Recursive listing that follows symbolic links (as torchvision's `os.walk(followlinks=True)`)
/// but visits each real folder once, so a link cycle cannot loop forever.
fn walk(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>, seen: &mut HashSet<PathBuf>) -> anyhow::Result<()> {
    let real = dir.canonicalize().with_context(|| format!("reading folder {}", dir.display()))?;
    if !seen.insert(real) {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading folder {}", dir.display()))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // fs::metadata follows links; a dangling link is simply not an image.
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            walk(&path, exts, out, seen)?;
        } else if meta.is_file() && has_image_extension(&path, exts) {
            out.push(path);
        }
    }
    Ok(())
}

impl ImageSource for FolderSource {
    fn len(&self) -> usize {
        self.paths.len()
    }

    /// Decodes by content (a PNG named `.jpg`, as found in ImageNet, still decodes),
    /// falling back to the extension. EXIF orientation is not applied, like the
    /// official PIL loader (`Image.open(f).convert('RGB')`).
    fn load(&self, index: usize) -> anyhow::Result<RgbImage> {
        decode_image_file(&self.paths[index])
    }

    fn describe(&self, index: usize) -> String {
        self.paths[index].display().to_string()
    }
}

/// Decodes an image file as RGB8, by content (a PNG named `.jpg`, as found in ImageNet,
/// still decodes), falling back to the extension. A truncated JPEG is an error, as in PIL
/// (the official loader): the image crate's JPEG decoder would fill the missing part with
/// grey and report success.
pub fn decode_image_file(path: &Path) -> anyhow::Result<RgbImage> {
    let f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        bail!("not a regular file");
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::BufReader::new(f), &mut bytes)?;
    let reader = ImageReader::new(std::io::Cursor::new(&bytes[..])).with_guessed_format()?;
    let reader = match reader.format() {
        Some(_) => reader,
        None => {
            let mut r = ImageReader::new(std::io::Cursor::new(&bytes[..]));
            r.set_format(ImageFormat::from_path(path)?);
            r
        }
    };
    if reader.format() == Some(ImageFormat::Jpeg) && !jpeg_is_complete(&bytes) {
        bail!("truncated JPEG (its data ends before the end-of-image marker)");
    }
    Ok(reader.decode()?.to_rgb8())
}

/// Whether a JPEG reaches its end-of-image marker: walks the marker segments from SOI by
/// their lengths and, after each start-of-scan, the entropy-coded data to the next marker
/// (inside it 0xFF is followed by 0x00 stuffing, a restart marker or fill). Trailing bytes
/// after EOI are accepted, as every decoder does. Hand-written because no decoder the
/// image crate offers reports truncation: zune-jpeg's lenient mode (the image crate's)
/// fills the rest with grey, and its strict mode also refuses harmless oddities (bytes
/// between segments) that PIL reads.
pub fn jpeg_is_complete(b: &[u8]) -> bool {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    loop {
        // Next marker: skip stray bytes, then fill bytes (0xFF repeated).
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&m) = b.get(i) else { return false };
        i += 1;
        match m {
            0xD9 => return true,
            // Standalone markers (restarts, TEM) and a stray stuffed zero carry no length.
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {
                let Some(len) = b.get(i..i + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else { return false };
                if len < 2 || i + len > b.len() {
                    return false;
                }
                i += len;
                if m == 0xDA {
                    // Entropy-coded data up to the next real marker.
                    loop {
                        let Some(&x) = b.get(i) else { return false };
                        if x == 0xFF {
                            match b.get(i + 1) {
                                None => return false,
                                Some(0x00 | 0xD0..=0xD7) => i += 2,
                                Some(0xFF) => i += 1,
                                Some(_) => break,
                            }
                        } else {
                            i += 1;
                        }
                    }
                }
            }
        }
    }
}

/// Deterministic synthetic images (no download): a gradient, stripe or checker background
/// with a few flat or shaded discs, rings, boxes and triangles. Edges, flat regions and
/// periodic texture give a reconstruction model something learnable at every scale.
/// Sizes vary between `size` and 1.5 × `size` per side so that the random crop acts.
pub struct ProceduralSource {
    len: usize,
    size: u32,
    seed: u64,
}

impl ProceduralSource {
    /// `len` deterministic synthetic images of `size`² pixels drawn from `seed`.
    pub fn new(len: usize, size: u32, seed: u64) -> Self {
        assert!(size > 0, "ProceduralSource: size must be positive");
        Self { len, size, seed }
    }
}

type Rgb = [f64; 3];

fn color(rng: &mut ChaCha8Rng) -> Rgb {
    [uniform(rng, 0.0, 255.0), uniform(rng, 0.0, 255.0), uniform(rng, 0.0, 255.0)]
}

/// A random unit vector without trigonometry (libm's sin/cos may differ between
/// platforms in the last bit; sqrt is exact everywhere), so images are identical on all.
fn direction(rng: &mut ChaCha8Rng) -> (f64, f64) {
    loop {
        let (x, y) = (uniform(rng, -1.0, 1.0), uniform(rng, -1.0, 1.0));
        let n = (x * x + y * y).sqrt();
        if n > 0.1 && n <= 1.0 {
            return (x / n, y / n);
        }
    }
}

fn mix(a: Rgb, b: Rgb, t: f64) -> Rgb {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

enum Background {
    Gradient { a: Rgb, b: Rgb, dir: (f64, f64) },
    Stripes { a: Rgb, b: Rgb, dir: (f64, f64), period: f64 },
    Checker { a: Rgb, b: Rgb, cell: f64 },
}

enum Shape {
    Disc { cx: f64, cy: f64, r: f64 },
    Ring { cx: f64, cy: f64, r: f64, inner: f64 },
    Box { x0: f64, y0: f64, x1: f64, y1: f64 },
    /// Inside when all three edge functions are non-negative (vertices in either winding).
    Triangle { p: [(f64, f64); 3] },
}

impl Shape {
    fn contains(&self, x: f64, y: f64) -> bool {
        match *self {
            Shape::Disc { cx, cy, r } => (x - cx).powi(2) + (y - cy).powi(2) <= r * r,
            Shape::Ring { cx, cy, r, inner } => {
                let d = (x - cx).powi(2) + (y - cy).powi(2);
                d <= r * r && d >= inner * inner
            }
            Shape::Box { x0, y0, x1, y1 } => x >= x0 && x <= x1 && y >= y0 && y <= y1,
            Shape::Triangle { p } => {
                let e = |a: (f64, f64), b: (f64, f64)| (b.0 - a.0) * (y - a.1) - (b.1 - a.1) * (x - a.0);
                let (e0, e1, e2) = (e(p[0], p[1]), e(p[1], p[2]), e(p[2], p[0]));
                (e0 >= 0.0 && e1 >= 0.0 && e2 >= 0.0) || (e0 <= 0.0 && e1 <= 0.0 && e2 <= 0.0)
            }
        }
    }
}

impl ImageSource for ProceduralSource {
    fn len(&self) -> usize {
        self.len
    }

    fn load(&self, index: usize) -> anyhow::Result<RgbImage> {
        if index >= self.len {
            bail!("procedural image {index} out of range (dataset has {})", self.len);
        }
        let rng = &mut stream(self.seed, TAG_PROC, index as u64, 0);
        let s = self.size as u64;
        let w = (s + below(rng, s / 2 + 1)) as u32;
        let h = (s + below(rng, s / 2 + 1)) as u32;
        let (wf, hf) = (w as f64, h as f64);
        let scale = wf.min(hf);
        let bg = match below(rng, 3) {
            0 => Background::Gradient { a: color(rng), b: color(rng), dir: direction(rng) },
            1 => Background::Stripes {
                a: color(rng),
                b: color(rng),
                dir: direction(rng),
                period: scale * uniform(rng, 0.04, 0.25),
            },
            _ => Background::Checker { a: color(rng), b: color(rng), cell: scale * uniform(rng, 0.04, 0.2) },
        };
        let n_shapes = 2 + below(rng, 6);
        let mut shapes = Vec::new();
        for _ in 0..n_shapes {
            let (cx, cy) = (uniform(rng, 0.0, wf), uniform(rng, 0.0, hf));
            let r = scale * uniform(rng, 0.06, 0.3);
            let shape = match below(rng, 4) {
                0 => Shape::Disc { cx, cy, r },
                1 => Shape::Ring { cx, cy, r, inner: r * uniform(rng, 0.4, 0.8) },
                2 => {
                    let (rx, ry) = (r * uniform(rng, 0.5, 1.5), r * uniform(rng, 0.5, 1.5));
                    Shape::Box { x0: cx - rx, y0: cy - ry, x1: cx + rx, y1: cy + ry }
                }
                _ => {
                    let mut p = [(0.0, 0.0); 3];
                    for v in &mut p {
                        let (dx, dy) = direction(rng);
                        *v = (cx + dx * r * 1.5, cy + dy * r * 1.5);
                    }
                    Shape::Triangle { p }
                }
            };
            // Half the shapes are shaded from one colour to another across their extent.
            let (c0, c1) = (color(rng), color(rng));
            let shaded = below(rng, 2) == 0;
            let dir = direction(rng);
            shapes.push((shape, c0, if shaded { c1 } else { c0 }, dir, cx, cy, r));
        }
        let mut img = RgbImage::new(w, h);
        for (x, y, px) in img.enumerate_pixels_mut() {
            let (fx, fy) = (x as f64 + 0.5, y as f64 + 0.5);
            let mut c = match bg {
                Background::Gradient { a, b, dir } => {
                    let t = ((fx / wf - 0.5) * dir.0 + (fy / hf - 0.5) * dir.1 + 0.71) / 1.42;
                    mix(a, b, t.clamp(0.0, 1.0))
                }
                Background::Stripes { a, b, dir, period } => {
                    let t = (fx * dir.0 + fy * dir.1) / period;
                    if (t.floor() as i64).rem_euclid(2) == 0 { a } else { b }
                }
                Background::Checker { a, b, cell } => {
                    let k = (fx / cell).floor() as i64 + (fy / cell).floor() as i64;
                    if k.rem_euclid(2) == 0 { a } else { b }
                }
            };
            for (shape, c0, c1, dir, cx, cy, r) in &shapes {
                if shape.contains(fx, fy) {
                    let t = (((fx - cx) * dir.0 + (fy - cy) * dir.1) / (2.0 * r) + 0.5).clamp(0.0, 1.0);
                    c = mix(*c0, *c1, t);
                }
            }
            *px = image::Rgb([c[0].round() as u8, c[1].round() as u8, c[2].round() as u8]);
        }
        Ok(img)
    }

    fn describe(&self, index: usize) -> String {
        format!("procedural image #{index} (seed {})", self.seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RgbImage {
        RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, ((x + y) * 3) as u8]))
    }

    fn encoded(fmt: ImageFormat) -> Vec<u8> {
        let mut v = std::io::Cursor::new(Vec::new());
        let img = image::DynamicImage::ImageRgb8(sample());
        // Farbfeld stores only 16-bit RGBA.
        let img = if fmt == ImageFormat::Farbfeld { image::DynamicImage::ImageRgba16(img.to_rgba16()) } else { img };
        img.write_to(&mut v, fmt).unwrap();
        v.into_inner()
    }

    #[test]
    fn truncated_images_are_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let formats = [
            (ImageFormat::Jpeg, "jpg"),
            (ImageFormat::Png, "png"),
            (ImageFormat::Gif, "gif"),
            (ImageFormat::Bmp, "bmp"),
            (ImageFormat::Tiff, "tif"),
            (ImageFormat::WebP, "webp"),
            (ImageFormat::Tga, "tga"),
            (ImageFormat::Qoi, "qoi"),
            (ImageFormat::Pnm, "ppm"),
            (ImageFormat::Farbfeld, "ff"),
        ];
        for (fmt, ext) in formats {
            let full = encoded(fmt);
            let whole = dir.path().join(format!("whole.{ext}"));
            std::fs::write(&whole, &full).unwrap();
            assert_eq!(decode_image_file(&whole).unwrap().dimensions(), (40, 30), "{fmt:?}");
            // Cut inside the pixel data. (A cut in a trailer after complete pixel data, as
            // PNG's last chunk, loses nothing and may decode.)
            let keep = full.len() * 6 / 10;
            let cut = dir.path().join(format!("cut.{ext}"));
            std::fs::write(&cut, &full[..keep]).unwrap();
            assert!(decode_image_file(&cut).is_err(), "{fmt:?} cut to {keep} of {} bytes decoded", full.len());
        }
        // The JPEG check alone: complete with trailing bytes; cut anywhere, incomplete.
        let jpg = encoded(ImageFormat::Jpeg);
        assert!(jpeg_is_complete(&jpg));
        let mut trailing = jpg.clone();
        trailing.extend_from_slice(b"trailing bytes");
        assert!(jpeg_is_complete(&trailing));
        for keep in (0..jpg.len()).step_by(7) {
            assert!(!jpeg_is_complete(&jpg[..keep]), "cut at {keep}");
        }
        // The folder source reports it (the loader then skips and counts it).
        std::fs::write(dir.path().join("a.jpg"), &jpg[..jpg.len() / 2]).unwrap();
        let src = FolderSource::open(dir.path()).unwrap();
        let i = src.paths().iter().position(|p| p.ends_with("a.jpg")).unwrap();
        let err = format!("{:#}", src.load(i).unwrap_err());
        assert!(err.contains("truncated JPEG"), "{err}");
    }
}
