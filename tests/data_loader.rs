//! Image folders and the loader: layouts, unreadable files, determinism and resume.

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use spark_wgpu::data::*;
use std::path::Path;
use std::sync::{Arc, Mutex};

fn rgb(seed: u32, w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 + seed * 40) as u8, (y * 5 + seed * 13) as u8, ((x ^ y) * 3) as u8]))
}

fn png_bytes(img: &RgbImage) -> Vec<u8> {
    let mut v = std::io::Cursor::new(Vec::new());
    img.write_to(&mut v, image::ImageFormat::Png).unwrap();
    v.into_inner()
}

/// 6 readable images of every pixel kind + 2 unreadable ones.
fn mixed_folder(dir: &Path) -> usize {
    rgb(0, 80, 60).save(dir.join("a_rgb.png")).unwrap();
    rgb(1, 50, 70).save(dir.join("b_rgb.jpg")).unwrap();
    GrayImage::from_fn(64, 48, |x, y| Luma([(x + y) as u8])).save(dir.join("c_gray.png")).unwrap();
    RgbaImage::from_fn(40, 40, |x, y| Rgba([x as u8 * 6, y as u8 * 6, 9, 128])).save(dir.join("d_rgba.png")).unwrap();
    ImageBuffer::<Rgb<u16>, Vec<u16>>::from_fn(48, 48, |x, y| Rgb([x as u16 * 1000, y as u16 * 1000, 30000]))
        .save(dir.join("e_16bit.png"))
        .unwrap();
    rgb(2, 100, 30).save(dir.join("f_rgb.bmp")).unwrap();
    // Random bytes named .jpg, and a PNG cut in half.
    let junk: Vec<u8> = (0..3000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(dir.join("x.jpg"), junk).unwrap();
    let full = png_bytes(&rgb(3, 90, 90));
    std::fs::write(dir.join("y_truncated.png"), &full[..full.len() / 2]).unwrap();
    2
}

fn cfg(batch: usize, workers: usize) -> LoaderConfig {
    LoaderConfig { batch, size: 64, mask_ratio: 0.6, seed: 42, workers, prefetch: 2 }
}

fn batches(src: Arc<dyn ImageSource>, c: LoaderConfig, epoch: usize, step: usize, n: usize) -> Vec<Batch> {
    let mut l = Loader::new(src, c).unwrap();
    l.on_skip(|_| {});
    l.start(epoch, step);
    (0..n).map(|_| l.next_batch().unwrap()).collect()
}

#[test]
fn flat_and_class_folder_layouts() {
    let t = tempfile::tempdir().unwrap();
    let flat = t.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    for i in 0..3 {
        rgb(i, 8, 8).save(flat.join(format!("{i}.png"))).unwrap();
    }
    std::fs::write(flat.join("notes.txt"), "not an image").unwrap();
    std::fs::write(flat.join("._0.png"), "macOS resource fork").unwrap();
    let s = FolderSource::open(&flat).unwrap();
    assert_eq!(s.len(), 3);
    assert!(s.describe(0).ends_with("0.png") && s.describe(2).ends_with("2.png"));

    // ImageNet style: root/train/<class>/*.JPEG and root/val/…: only train is read.
    let root = t.path().join("imagenet");
    for (split, class, n) in [("train", "n01", 2), ("train", "n02", 3), ("val", "n01", 4)] {
        let d = root.join(split).join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            rgb(i, 8, 8).save(d.join(format!("img{i}.JPEG"))).unwrap();
        }
    }
    let s = FolderSource::open(&root).unwrap();
    assert_eq!(s.len(), 5);
    assert_eq!(s.root(), root.join("train"));
    let s = FolderSource::open(&root.join("val")).unwrap();
    assert_eq!(s.len(), 4);
    // Sorted paths: class folders in order.
    let s = FolderSource::open(&root.join("train")).unwrap();
    assert!(s.describe(0).contains("n01") && s.describe(4).contains("n02"));
    assert_eq!(s.load(3).unwrap().dimensions(), (8, 8));
}

#[test]
fn missing_and_empty_folders_name_the_path() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("nope");
    let e = FolderSource::open(&missing).err().unwrap().to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");
    let empty = t.path().join("empty");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    std::fs::write(empty.join("sub/readme.txt"), "x").unwrap();
    let e = FolderSource::open(&empty).err().unwrap().to_string();
    assert!(e.contains(&empty.display().to_string()) && e.contains("jpg") && e.contains("png"), "{e}");
}

#[test]
fn pixel_kinds_convert_to_rgb8() {
    let t = tempfile::tempdir().unwrap();
    mixed_folder(t.path());
    let s = FolderSource::open(t.path()).unwrap();
    assert_eq!(s.len(), 8);
    let by_name = |n: &str| (0..s.len()).find(|&i| s.describe(i).ends_with(n)).unwrap();
    let g = s.load(by_name("c_gray.png")).unwrap();
    assert_eq!(g.get_pixel(3, 2).0, [5, 5, 5]);
    let a = s.load(by_name("d_rgba.png")).unwrap();
    assert_eq!(a.get_pixel(2, 3).0, [12, 18, 9]);
    let w = s.load(by_name("e_16bit.png")).unwrap();
    assert_eq!(w.get_pixel(0, 0).0[2], (30000.0f64 / 257.0).round() as u8);
    assert!(s.load(by_name("x.jpg")).is_err());
    assert!(s.load(by_name("y_truncated.png")).is_err());
}

#[test]
fn corrupt_files_are_skipped_not_fatal() {
    let t = tempfile::tempdir().unwrap();
    let bad = mixed_folder(t.path());
    let src: Arc<dyn ImageSource> = Arc::new(FolderSource::open(t.path()).unwrap());
    // batch 4 of 8 images: every position of the epoch is visited.
    let mut l = Loader::new(src.clone(), cfg(4, 3)).unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let log2 = log.clone();
    l.on_skip(move |m| log2.lock().unwrap().push(m.to_string()));
    assert_eq!(l.steps_per_epoch(), 2);
    let mut seen = Vec::new();
    for _ in 0..6 {
        let b = l.next_batch().unwrap();
        assert_eq!(b.images.len(), 4 * 64 * 64 * 3);
        assert_eq!(b.mask.visible.len(), 4 * 2 * 2);
        assert!(b.images.iter().all(|v| v.is_finite()));
        for &i in &b.indices {
            let name = src.describe(i);
            assert!(!name.ends_with("x.jpg") && !name.ends_with("y_truncated.png"));
        }
        seen.extend(b.indices);
    }
    assert_eq!(l.skipped_images(), bad);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), bad, "{log:?}");
    assert!(log.iter().any(|m| m.contains("x.jpg")) && log.iter().any(|m| m.contains("y_truncated.png")));
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 6, "all readable images used");
    // Substitution is deterministic, whatever the worker count.
    assert_eq!(batches(src.clone(), cfg(4, 1), 0, 0, 6), batches(src, cfg(4, 4), 0, 0, 6));
}

fn procedural() -> Arc<dyn ImageSource> {
    Arc::new(ProceduralSource::new(20, 64, 3))
}

#[test]
fn same_seed_same_batches_and_resume() {
    let src = procedural();
    let a = batches(src.clone(), cfg(3, 2), 0, 0, 10);
    assert_eq!(a, batches(src.clone(), cfg(3, 2), 0, 0, 10));
    // 20 images / 3 = 6 steps per epoch; batch 6 is epoch 1 step 0.
    assert_eq!((a[5].epoch, a[5].step, a[6].epoch, a[6].step), (0, 5, 1, 0));
    let r = batches(src.clone(), cfg(3, 2), 0, 3, 4);
    assert_eq!(r[0], a[3]);
    assert_eq!(r[..], a[3..7]);
    assert_eq!(batches(src.clone(), cfg(3, 2), 1, 2, 1)[0], a[8]);
    // Restarting the same loader mid-way.
    let mut l = Loader::new(src.clone(), cfg(3, 2)).unwrap();
    for want in &a[..4] {
        assert_eq!(&l.next_batch().unwrap(), want);
    }
    l.start(0, 1);
    assert_eq!(l.next_batch().unwrap(), a[1]);
    // Another seed gives other data.
    let mut c = cfg(3, 2);
    c.seed = 43;
    assert_ne!(batches(src, c, 0, 0, 1)[0], a[0]);
}

#[test]
fn worker_count_and_prefetch_do_not_change_batches() {
    let src = procedural();
    let one = batches(src.clone(), cfg(3, 1), 0, 0, 8);
    let mut c = cfg(3, 3);
    c.prefetch = 5;
    assert_eq!(one, batches(src.clone(), c, 0, 0, 8));
    let mut c = cfg(3, 3);
    c.prefetch = 1;
    assert_eq!(one, batches(src, c, 0, 0, 8));
}

#[test]
fn epochs_are_permutations_with_exact_masks() {
    let src = procedural();
    let b = batches(src.clone(), cfg(4, 2), 0, 0, 10); // 5 steps per epoch: 2 epochs
    for e in 0..2 {
        let mut idx: Vec<usize> = b[e * 5..e * 5 + 5].iter().flat_map(|x| x.indices.clone()).collect();
        idx.sort();
        assert_eq!(idx, (0..20).collect::<Vec<_>>());
    }
    assert_ne!(b[0].indices, b[5].indices);
    for x in &b {
        for i in 0..4 {
            assert_eq!(x.mask.visible[i * 4..i * 4 + 4].iter().filter(|&&v| v == 1).count(), 2);
        }
    }
    // Masks differ between steps.
    assert!(b.windows(2).any(|w| w[0].mask != w[1].mask));
}

#[test]
fn loader_rejects_bad_configs() {
    let src = procedural();
    let e = Loader::new(src.clone(), cfg(21, 1)).err().unwrap().to_string();
    assert!(e.contains("20") && e.contains("21"), "{e}");
    let mut c = cfg(2, 1);
    c.size = 50;
    assert!(Loader::new(src.clone(), c).is_err());
    let mut c = cfg(2, 1);
    c.mask_ratio = 1.0;
    assert!(Loader::new(src, c).is_err());
}

/// A source whose every image fails: the loader returns an error instead of hanging.
struct Broken;
impl ImageSource for Broken {
    fn len(&self) -> usize {
        4
    }
    fn load(&self, index: usize) -> anyhow::Result<RgbImage> {
        if index == 2 {
            panic!("decoder bug");
        }
        anyhow::bail!("broken")
    }
    fn describe(&self, index: usize) -> String {
        format!("broken #{index}")
    }
}

#[test]
fn all_unreadable_is_an_error_not_a_hang() {
    let mut l = Loader::new(Arc::new(Broken), cfg(2, 2)).unwrap();
    l.on_skip(|_| {});
    assert!(l.next_batch().is_err());
    assert_eq!(l.skipped_images(), 4);
}

/// Data-parallel shards (issue 10): the shards of ranks 0..n, side by side, are the
/// whole batch of one loader — images, augmentations, dataset indices and mask rows —
/// also when started mid-epoch (resume).
#[test]
fn shards_side_by_side_are_the_whole_batch() {
    let src: Arc<dyn ImageSource> = Arc::new(ProceduralSource::new(20, 64, 3));
    let whole = batches(src.clone(), cfg(4, 2), 1, 2, 3);
    let shard = |r: std::ops::Range<usize>| {
        let mut l = Loader::new_shard(src.clone(), cfg(4, 1), r).unwrap();
        l.start(1, 2);
        (0..3).map(|_| l.next_batch().unwrap()).collect::<Vec<_>>()
    };
    let (a, b) = (shard(0..1), shard(1..4));
    for ((w, a), b) in whole.iter().zip(&a).zip(&b) {
        assert_eq!((a.batch, b.batch), (1, 3));
        assert_eq!((a.epoch, a.step), (w.epoch, w.step));
        assert_eq!([a.images.clone(), b.images.clone()].concat(), w.images);
        assert_eq!([a.mask.visible.clone(), b.mask.visible.clone()].concat(), w.mask.visible);
        assert_eq!([a.indices.clone(), b.indices.clone()].concat(), w.indices);
    }
    assert!(Loader::new_shard(src.clone(), cfg(4, 1), 2..5).is_err());
    assert!(Loader::new_shard(src, cfg(4, 1), 2..2).is_err());
}
