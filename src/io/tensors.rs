//! Host-side tensors and safetensors files (the parity cases, `--dump` outputs and our own
//! checkpoints). The format itself is handled by the `safetensors` crate; this module only
//! converts between its byte views and typed vectors.

use anyhow::{Context, Result, bail};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The element types we keep on the host. Narrow float types (F16/BF16) are widened to F32
/// on read; small integer types to I64; BOOL to U8.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    /// 32-bit floats (and widened F16/BF16).
    F32(Vec<f32>),
    /// 64-bit floats.
    F64(Vec<f64>),
    /// Integers.
    I64(Vec<i64>),
    /// Bytes and booleans.
    U8(Vec<u8>),
}

impl HostData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F64(v) => v.len(),
            HostData::I64(v) => v.len(),
            HostData::U8(v) => v.len(),
        }
    }

    /// Whether there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The safetensors name of the element type (for messages).
    pub fn dtype_name(&self) -> &'static str {
        match self {
            HostData::F32(_) => "F32",
            HostData::F64(_) => "F64",
            HostData::I64(_) => "I64",
            HostData::U8(_) => "U8",
        }
    }
}

/// A dense row-major tensor on the host, in PyTorch layout (NCHW, OIHW, …).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// The PyTorch shape.
    pub shape: Vec<usize>,
    /// The elements, row-major.
    pub data: HostData,
}

impl HostTensor {
    /// An f32 tensor; panics when `v.len()` does not match `shape`.
    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), v.len(), "HostTensor::f32: shape {shape:?} does not hold {} values", v.len());
        HostTensor { shape, data: HostData::F32(v) }
    }

    /// Builds a tensor of any dtype; errors when the element count does not match `shape`.
    pub fn new(shape: Vec<usize>, data: HostData) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!("shape {shape:?} holds {n} values, data has {}", data.len());
        }
        Ok(HostTensor { shape, data })
    }

    /// The values converted to f32 (f64 rounds, integers convert as `as f32`).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.clone(),
            HostData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            HostData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            HostData::U8(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values converted to f64 (exact for every stored type except large i64).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            HostData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::F64(v) => v.clone(),
            HostData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::U8(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// Number of elements (1 for a scalar of shape `[]`).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Tensors by name; sorted so that files and reports come out in a stable order.
pub type TensorMap = BTreeMap<String, HostTensor>;

fn chunks<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    // The views point into the file buffer at arbitrary alignment: copy bytes, never cast.
    b.chunks_exact(N).map(|c| c.try_into().unwrap())
}

fn view_to_host(name: &str, view: &TensorView<'_>) -> Result<HostTensor> {
    let b = view.data();
    let data = match view.dtype() {
        Dtype::F32 => HostData::F32(chunks::<4>(b).map(f32::from_le_bytes).collect()),
        Dtype::F64 => HostData::F64(chunks::<8>(b).map(f64::from_le_bytes).collect()),
        Dtype::F16 => HostData::F32(chunks::<2>(b).map(|c| half::f16::from_le_bytes(c).to_f32()).collect()),
        Dtype::BF16 => HostData::F32(chunks::<2>(b).map(|c| half::bf16::from_le_bytes(c).to_f32()).collect()),
        Dtype::I64 => HostData::I64(chunks::<8>(b).map(i64::from_le_bytes).collect()),
        Dtype::I32 => HostData::I64(chunks::<4>(b).map(|c| i32::from_le_bytes(c) as i64).collect()),
        Dtype::I16 => HostData::I64(chunks::<2>(b).map(|c| i16::from_le_bytes(c) as i64).collect()),
        Dtype::I8 => HostData::I64(b.iter().map(|&x| x as i8 as i64).collect()),
        Dtype::U32 => HostData::I64(chunks::<4>(b).map(|c| u32::from_le_bytes(c) as i64).collect()),
        Dtype::U16 => HostData::I64(chunks::<2>(b).map(|c| u16::from_le_bytes(c) as i64).collect()),
        Dtype::U8 | Dtype::BOOL => HostData::U8(b.to_vec()),
        other => bail!("tensor {name}: unsupported dtype {other:?}"),
    };
    HostTensor::new(view.shape().to_vec(), data).with_context(|| format!("tensor {name}"))
}

/// Largest safetensors JSON header read. Our largest checkpoint (ResNet-200 with its
/// optimizer state: ~2 400 tensors at ~140 header bytes each) has a ~340 KB header; the
/// crate's own bound is 100 MB, which would be parsed into several times that before any
/// other check. Checked before anything else is read.
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Opens `path` for reading as a safetensors file: a regular file (a device node or a pipe
/// could be read forever) whose header length is within [`MAX_HEADER_BYTES`] and the file.
/// Returns the file, its length and the header length.
fn open_checked(path: &Path) -> Result<(File, u64, u64)> {
    let file = path.display();
    let mut f = File::open(path).with_context(|| format!("cannot read {file}"))?;
    let len = f.metadata().with_context(|| format!("cannot read {file}"))?;
    if !len.is_file() {
        bail!("{file} is not a regular file (expected a safetensors file)");
    }
    let len = len.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).with_context(|| format!("{file}: not a valid safetensors file (truncated or corrupt)"))?;
    let header = u64::from_le_bytes(n);
    if header > MAX_HEADER_BYTES {
        bail!(
            "{file}: its safetensors header claims {header} bytes, more than the {} MiB accepted \
             (checkpoints have headers below 1 MiB): corrupt, or not a safetensors file",
            MAX_HEADER_BYTES >> 20
        );
    }
    if 8 + header > len {
        bail!("{file}: not a valid safetensors file (truncated or corrupt: a {header}-byte header in a {len}-byte file)");
    }
    Ok((f, len, header))
}

/// Reads every tensor of a safetensors file and its `__metadata__` (empty when absent).
/// Memory is the file's size plus the widening of f16/bf16 to f32: every tensor's extent is
/// checked against the file by the `safetensors` crate.
pub fn read_safetensors(path: &Path) -> Result<(TensorMap, HashMap<String, String>)> {
    let (mut f, len, _) = open_checked(path)?;
    let mut bytes = Vec::with_capacity(len as usize);
    // At most the length checked: a file that grows while read is cut, then reported.
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.take(len).read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let corrupt = || format!("{}: not a valid safetensors file (truncated or corrupt)", path.display());
    let (_, header) = SafeTensors::read_metadata(&bytes).with_context(corrupt)?;
    let st = SafeTensors::deserialize(&bytes).with_context(corrupt)?;
    let mut map = TensorMap::new();
    for (name, view) in st.iter() {
        let t = view_to_host(name, &view).with_context(|| path.display().to_string())?;
        map.insert(name.to_string(), t);
    }
    Ok((map, header.metadata().clone().unwrap_or_default()))
}

/// Only the `__metadata__` of a safetensors file (reads the header, not the tensors).
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let (mut f, _, header) = open_checked(path)?;
    let mut json = vec![0u8; header as usize];
    f.read_exact(&mut json).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&json).with_context(|| format!("{}: not a valid safetensors file (corrupt header)", path.display()))?;
    Ok(v.get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default())
}

fn host_view(t: &HostTensor) -> Result<TensorView<'_>> {
    // Little-endian hosts only (every wgpu target we run on): the in-memory bytes are the
    // file bytes.
    let (dtype, bytes): (Dtype, &[u8]) = match &t.data {
        HostData::F32(v) => (Dtype::F32, bytemuck::cast_slice(v)),
        HostData::F64(v) => (Dtype::F64, bytemuck::cast_slice(v)),
        HostData::I64(v) => (Dtype::I64, bytemuck::cast_slice(v)),
        HostData::U8(v) => (Dtype::U8, v.as_slice()),
    };
    Ok(TensorView::new(dtype, t.shape.clone(), bytes)?)
}

#[cfg(target_endian = "big")]
compile_error!("io::tensors writes host bytes as little-endian safetensors data");

/// Written through [`crate::io::atomic`] (temporary file in the same folder, fsynced,
/// renamed over `path`): an interrupted write never destroys the previous file.
pub fn write_safetensors_atomic(path: &Path, tensors: &TensorMap, metadata: &HashMap<String, String>) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(k, t)| Ok((k.as_str(), host_view(t).with_context(|| format!("tensor {k}"))?)))
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("writing {}", path.display()))?;
    let info = if metadata.is_empty() { None } else { Some(metadata.clone()) };
    // serialize_to_file streams tensor by tensor (no second copy of a large checkpoint in
    // memory); the helper fsyncs before the rename.
    crate::io::atomic::write_atomic_with(path, |tmp| {
        safetensors::serialize_to_file(views, info, tmp).with_context(|| format!("writing {}", tmp.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TensorMap {
        let mut m = TensorMap::new();
        m.insert("a.weight".into(), HostTensor::f32(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-7, -0.0]));
        m.insert("b.f64".into(), HostTensor::new(vec![1], HostData::F64(vec![1.0 / 3.0])).unwrap());
        m.insert("c.count".into(), HostTensor::new(vec![], HostData::I64(vec![7])).unwrap());
        m.insert("d.mask".into(), HostTensor::new(vec![2, 1, 2], HostData::U8(vec![1, 0, 0, 1])).unwrap());
        m
    }

    #[test]
    fn roundtrip_all_dtypes_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        let meta = HashMap::from([("k".to_string(), "{\"v\": 1}".to_string())]);
        write_safetensors_atomic(&p, &sample(), &meta).unwrap();
        assert!(crate::io::atomic::stale_temps(&dir.path().join("x.safetensors")).is_empty());
        let (m, md) = read_safetensors(&p).unwrap();
        assert_eq!(m, sample());
        assert_eq!(md, meta);
        assert_eq!(m["c.count"].numel(), 1);
        assert_eq!(m["d.mask"].to_f32(), vec![1.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn overwrite_replaces_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        write_safetensors_atomic(&p, &sample(), &HashMap::new()).unwrap();
        let mut one = TensorMap::new();
        one.insert("z".into(), HostTensor::f32(vec![1], vec![4.0]));
        write_safetensors_atomic(&p, &one, &HashMap::new()).unwrap();
        let (m, md) = read_safetensors(&p).unwrap();
        assert_eq!(m, one);
        assert!(md.is_empty());
    }

    #[test]
    fn half_types_widen_to_f32() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.safetensors");
        let h: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        let b: Vec<u8> = [0.25f32, 3.0].iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
        let views = vec![
            ("h", TensorView::new(Dtype::F16, vec![2], &h).unwrap()),
            ("b", TensorView::new(Dtype::BF16, vec![2], &b).unwrap()),
        ];
        safetensors::serialize_to_file(views, None, &p).unwrap();
        let (m, _) = read_safetensors(&p).unwrap();
        assert_eq!(m["h"], HostTensor::f32(vec![2], vec![1.5, -2.0]));
        assert_eq!(m["b"], HostTensor::f32(vec![2], vec![0.25, 3.0]));
    }

    #[test]
    fn hostile_headers_and_non_files_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.safetensors");
        // A header claiming 2^40 bytes: refused from its first 8 bytes.
        let mut b = (1u64 << 40).to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        std::fs::write(&p, &b).unwrap();
        for err in [read_safetensors(&p).map(|_| ()).unwrap_err(), read_safetensors_metadata(&p).map(|_| ()).unwrap_err()] {
            let err = format!("{err:#}");
            assert!(err.contains("big.safetensors") && err.contains("MiB accepted"), "{err}");
        }
        // Within the bound, past the end of the file.
        let mut b = (MAX_HEADER_BYTES).to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        std::fs::write(&p, &b).unwrap();
        let err = format!("{:#}", read_safetensors(&p).unwrap_err());
        assert!(err.contains("big.safetensors") && err.contains("truncated or corrupt"), "{err}");
        // A folder, and a device that would never end.
        let err = format!("{:#}", read_safetensors(dir.path()).unwrap_err());
        assert!(err.contains("not a regular file"), "{err}");
        if Path::new("/dev/zero").exists() {
            let err = format!("{:#}", read_safetensors(Path::new("/dev/zero")).unwrap_err());
            assert!(err.contains("/dev/zero") && err.contains("not a regular file"), "{err}");
        }
        // The header alone.
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        write_safetensors_atomic(&p, &sample(), &meta).unwrap();
        assert_eq!(read_safetensors_metadata(&p).unwrap(), meta);
    }

    #[test]
    fn failed_write_leaves_no_temporary() {
        // Renaming a file over a non-empty folder fails: the previous folder stays, no `.tmp`.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.safetensors");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("keep"), b"x").unwrap();
        assert!(write_safetensors_atomic(&p, &sample(), &HashMap::new()).is_err());
        // Whatever the temporary's name (io::atomic randomises it), only the folder remains.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("out.safetensors")], "left behind: {left:?}");
        assert!(p.join("keep").exists());
    }

    #[test]
    fn truncated_file_is_reported_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cut.safetensors");
        write_safetensors_atomic(&p, &sample(), &HashMap::new()).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        for keep in [4, 20, bytes.len() - 3] {
            std::fs::write(&p, &bytes[..keep]).unwrap();
            let err = format!("{:#}", read_safetensors(&p).unwrap_err());
            assert!(err.contains("cut.safetensors") && err.contains("truncated or corrupt"), "{err}");
        }
        let missing = format!("{:#}", read_safetensors(&dir.path().join("nope.safetensors")).unwrap_err());
        assert!(missing.contains("nope.safetensors"), "{missing}");
    }
}
