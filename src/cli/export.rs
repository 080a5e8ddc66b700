//! `spark-wgpu export`: the encoder in timm (ResNet) / official ConvNeXt naming, for
//! fine-tuning elsewhere.

use anyhow::{Context as _, Result, bail};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::io::names::to_timm_name;
use crate::io::tensors::{TensorMap, read_safetensors_metadata, write_safetensors_atomic};
use crate::train::checkpoint::{CHECKPOINT_FORMAT, read_any};

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A spark-wgpu checkpoint or an official SparK .pth.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

/// Refuses an `--out` whose replacement would lose something: the input checkpoint itself
/// (under any name), a training checkpoint (a run could no longer resume), or anything
/// that is not a regular file (a symbolic link, folder or device would be replaced by a
/// regular file).
fn check_out(out: &Path, checkpoint: &Path) -> Result<()> {
    let shown = out.display();
    let Ok(meta) = std::fs::symlink_metadata(out) else { return Ok(()) }; // nothing there yet
    if meta.file_type().is_symlink() {
        bail!("--out {shown} is a symbolic link: refusing to replace it with a file (give the path it points to)");
    }
    if !meta.is_file() {
        bail!("--out {shown} exists and is not a regular file (a folder or device): refusing to replace it");
    }
    if same_file(out, checkpoint) {
        bail!("--out {shown} is the input checkpoint: refusing to overwrite it (choose another --out)");
    }
    let is_run_checkpoint = read_safetensors_metadata(out).is_ok_and(|m| m.get("format").map(String::as_str) == Some(CHECKPOINT_FORMAT));
    if is_run_checkpoint {
        bail!("--out {shown} is a training checkpoint: replacing it with an encoder-only file would stop its run from resuming (choose another --out)");
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return (x.dev(), x.ino()) == (y.dev(), y.ino());
        }
    }
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

pub fn run(a: &ExportArgs) -> Result<()> {
    check_out(&a.out, &a.checkpoint)?;
    let (t, _) = read_any(&a.checkpoint)?;
    let enc: TensorMap = t.into_iter().filter_map(|(k, v)| to_timm_name(&k).map(|n| (n, v))).collect();
    if enc.is_empty() {
        bail!("{} holds no encoder tensors (sparse_encoder.sp_cnn.*)", a.checkpoint.display());
    }
    let mut meta = HashMap::new();
    meta.insert("format".into(), "pt".into());
    write_safetensors_atomic(&a.out, &enc, &meta).with_context(|| format!("exporting to {}", a.out.display()))?;
    println!("wrote {} encoder tensors to {}", enc.len(), a.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::golden::golden_dir;
    use crate::io::tensors::read_safetensors;

    fn export(checkpoint: &Path, out: &Path) -> Result<()> {
        run(&ExportArgs { checkpoint: checkpoint.to_path_buf(), out: out.to_path_buf() })
    }

    #[test]
    fn out_is_never_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let pth = golden_dir().join("resnet_basic_tiny_1kpretrained_timm_style.pth");
        let enc = dir.path().join("enc.safetensors");
        export(&pth, &enc).unwrap();
        let before = std::fs::read(&enc).unwrap();

        // The input itself, by another name (a hard link) too.
        let err = format!("{:#}", export(&enc, &enc).unwrap_err());
        assert!(err.contains("is the input checkpoint"), "{err}");
        let link = dir.path().join("hard.safetensors");
        std::fs::hard_link(&enc, &link).unwrap();
        let err = format!("{:#}", export(&enc, &link).unwrap_err());
        assert!(err.contains("is the input checkpoint"), "{err}");
        assert_eq!(std::fs::read(&enc).unwrap(), before);

        // A folder: refused, nothing left behind.
        let folder = dir.path().join("folder");
        std::fs::create_dir(&folder).unwrap();
        let err = format!("{:#}", export(&pth, &folder).unwrap_err());
        assert!(err.contains("not a regular file"), "{err}");
        // No temporary of any name (io::atomic randomises it) beside the folder.
        assert!(folder.is_dir());
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")),
            "a temporary was left behind"
        );

        // A symbolic link and a device.
        #[cfg(unix)]
        {
            let sym = dir.path().join("sym.safetensors");
            std::os::unix::fs::symlink(&enc, &sym).unwrap();
            let err = format!("{:#}", export(&pth, &sym).unwrap_err());
            assert!(err.contains("symbolic link"), "{err}");
            assert!(std::fs::symlink_metadata(&sym).unwrap().file_type().is_symlink());
            if Path::new("/dev/null").exists() {
                let err = format!("{:#}", export(&pth, Path::new("/dev/null")).unwrap_err());
                assert!(err.contains("not a regular file"), "{err}");
            }
        }

        // A training checkpoint (recognised by its metadata).
        let ckpt = dir.path().join("checkpoint.safetensors");
        let (t, _) = read_safetensors(&enc).unwrap();
        let meta = HashMap::from([("format".to_string(), CHECKPOINT_FORMAT.to_string())]);
        write_safetensors_atomic(&ckpt, &t, &meta).unwrap();
        let err = format!("{:#}", export(&pth, &ckpt).unwrap_err());
        assert!(err.contains("training checkpoint") && err.contains("resuming"), "{err}");

        // An ordinary earlier export may be replaced.
        export(&pth, &enc).unwrap();
    }

    #[test]
    fn parity_case_exports_only_its_encoder() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("enc.safetensors");
        export(&golden_dir().join("resnet_basic_tiny.safetensors"), &out).unwrap();
        let (got, _) = read_safetensors(&out).unwrap();
        let (timm, _) = crate::io::pth::load_state_dict(&golden_dir().join("resnet_basic_tiny_1kpretrained_timm_style.pth")).unwrap();
        assert_eq!(got, timm);
    }
}
