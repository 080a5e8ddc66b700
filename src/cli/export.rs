//! `spark-wgpu export`: the encoder in timm (ResNet) / official ConvNeXt naming, for
//! fine-tuning elsewhere.

use anyhow::{Result, bail};
use std::collections::HashMap;
use std::path::PathBuf;

use crate::io::names::to_timm_name;
use crate::io::tensors::{TensorMap, write_safetensors_atomic};
use crate::train::checkpoint::read_any;

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A spark-wgpu checkpoint or an official SparK .pth.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: &ExportArgs) -> Result<()> {
    let (t, _) = read_any(&a.checkpoint)?;
    let enc: TensorMap = t.into_iter().filter_map(|(k, v)| to_timm_name(&k).map(|n| (n, v))).collect();
    if enc.is_empty() {
        bail!("{} holds no encoder tensors (sparse_encoder.sp_cnn.*)", a.checkpoint.display());
    }
    let mut meta = HashMap::new();
    meta.insert("format".into(), "pt".into());
    write_safetensors_atomic(&a.out, &enc, &meta)?;
    println!("wrote {} encoder tensors to {}", enc.len(), a.out.display());
    Ok(())
}
