//! File formats: host tensors and safetensors files (`tensors`), the official parity cases
//! (`golden`), official PyTorch checkpoints read without Python (`pth`), and the mapping
//! between SparK and timm/official encoder names (`names`).

pub mod atomic;
pub mod golden;
pub mod names;
pub mod pth;
pub mod tensors;

pub use golden::{CaseMeta, GoldenCase};
pub use tensors::{HostData, HostTensor, TensorMap, read_safetensors, write_safetensors_atomic};

use anyhow::{Context as _, Result, bail};
use std::io::Read as _;
use std::path::Path;

/// Reads a small text file a user may hand us (a run's `config.json`): refused when it is
/// not a regular file (a device or pipe could be read forever) or is larger than `max`
/// bytes, before it is read.
pub fn read_small_text(path: &Path, max: u64) -> Result<String> {
    let file = path.display();
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {file}"))?;
    let meta = f.metadata().with_context(|| format!("cannot read {file}"))?;
    if !meta.is_file() {
        bail!("{file} is not a regular file");
    }
    if meta.len() > max {
        bail!("{file} holds {} bytes, more than the {max} accepted for it: not the file expected", meta.len());
    }
    let mut s = String::new();
    // At most max + 1 bytes even if the file grows meanwhile.
    f.take(max + 1).read_to_string(&mut s).with_context(|| format!("cannot read {file} (not UTF-8 text?)"))?;
    if s.len() as u64 > max {
        bail!("{file} grew past the {max} bytes accepted for it while being read");
    }
    Ok(s)
}
