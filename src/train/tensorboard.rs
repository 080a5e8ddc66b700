//! TensorBoard scalar logs: `<run>/tb/events.out.tfevents.<time>.spark-wgpu`, readable by
//! `tensorboard --logdir <run>/tb`.
//!
//! Hand-written rather than `tensorboard-rs`: that crate pulls protobuf 2.x (which has a
//! RustSec advisory) and a whole generated TensorFlow proto tree, while a scalar log
//! needs only three small messages. The format (TensorFlow's `record_writer.cc` and
//! `event.proto`): each record is `u64 len | u32 masked_crc32c(len) | data |
//! u32 masked_crc32c(data)` (little-endian), data an `Event` protobuf:
//! `wall_time` (1, double), `step` (2, int64), `file_version` (3, string, first event
//! only), `summary` (5) { repeated `value` (1) { `tag` (1, string), `simple_value`
//! (2, float) } }. CRC-32C comes from the `crc32c` crate (hardware-accelerated).

use anyhow::{Context as _, Result, bail};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The run directory's sub-folder for event files.
pub const TB_DIR: &str = "tb";

const MASK_DELTA: u32 = 0xa282_ead8;

/// TFRecord's masked CRC (a CRC of data that itself holds CRCs is weak, so TF rotates and offsets it).
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(MASK_DELTA)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    varint(out, ((field << 3) | 2) as u64);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// An `Event` message: wall time, step and either a file version or scalar values.
fn event(wall_time: f64, step: i64, file_version: Option<&str>, scalars: &[(&str, f32)]) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(0x09); // field 1, 64-bit
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(0x10); // field 2, varint (int64: two's complement for negatives)
    varint(&mut e, step as u64);
    if let Some(v) = file_version {
        bytes_field(&mut e, 3, v.as_bytes());
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, v) in scalars {
            let mut value = Vec::new();
            bytes_field(&mut value, 1, tag.as_bytes());
            value.push(0x15); // field 2, 32-bit
            value.extend_from_slice(&v.to_le_bytes());
            bytes_field(&mut summary, 1, &value);
        }
        bytes_field(&mut e, 5, &summary);
    }
    e
}

fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(data.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc(&len).to_le_bytes());
    r.extend_from_slice(data);
    r.extend_from_slice(&masked_crc(data).to_le_bytes());
    r
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Appends scalar events to one new event file.
pub struct EventWriter {
    file: std::fs::File,
    /// The event file being written.
    pub path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` (created if needed). A resumed run gets a second file in
    /// the same folder; TensorBoard merges the files of one folder by step.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let t = now();
        let mut n = 0;
        let path = loop {
            // TensorBoard only reads files whose name contains "tfevents".
            let p = dir.join(format!("events.out.tfevents.{}.spark-wgpu{}", t as u64, if n == 0 { String::new() } else { format!(".{n}") }));
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        let mut file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        file.write_all(&record(&event(t, 0, Some("brain.Event:2"), &[]))).with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { file, path })
    }

    /// One event holding `scalars` at `step`. Written straight to the file (one small
    /// write per logged step) so a live `tensorboard` sees it without waiting for the end.
    pub fn scalars(&mut self, step: usize, scalars: &[(&str, f32)]) -> Result<()> {
        self.file
            .write_all(&record(&event(now(), step as i64, None, scalars)))
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// One decoded event: (step, wall time, file version, scalars).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event's step.
    pub step: i64,
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    /// The `file_version` of the file's first event.
    pub file_version: Option<String>,
    /// (tag, value) pairs of the event's summary.
    pub scalars: Vec<(String, f32)>,
}

struct Pb<'a> {
    b: &'a [u8],
    i: usize,
}

impl Pb<'_> {
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.b.get(self.i) else { bail!("truncated varint") };
            self.i += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
        }
        bail!("varint too long")
    }
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.i.checked_add(n).filter(|&e| e <= self.b.len()).context("truncated field")?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }
    /// (field, wire type, payload for length-delimited / fixed fields, value for varints).
    fn field(&mut self) -> Result<(u64, u64, &[u8], u64)> {
        let key = self.varint()?;
        let (f, w) = (key >> 3, key & 7);
        Ok(match w {
            0 => (f, w, &[][..], self.varint()?),
            1 => (f, w, self.take(8)?, 0),
            2 => {
                let n = self.varint()? as usize;
                (f, w, self.take(n)?, 0)
            }
            5 => (f, w, self.take(4)?, 0),
            _ => bail!("unsupported wire type {w}"),
        })
    }
}

fn decode_event(b: &[u8]) -> Result<Event> {
    let mut e = Event { step: 0, wall_time: 0.0, file_version: None, scalars: vec![] };
    let mut p = Pb { b, i: 0 };
    while p.i < b.len() {
        match p.field()? {
            (1, 1, d, _) => e.wall_time = f64::from_le_bytes(d.try_into()?),
            (2, 0, _, v) => e.step = v as i64,
            (3, 2, d, _) => e.file_version = Some(String::from_utf8(d.to_vec())?),
            (5, 2, d, _) => {
                let mut s = Pb { b: d, i: 0 };
                while s.i < d.len() {
                    if let (1, 2, vb, _) = s.field()? {
                        let (mut tag, mut val) = (String::new(), f32::NAN);
                        let mut v = Pb { b: vb, i: 0 };
                        while v.i < vb.len() {
                            match v.field()? {
                                (1, 2, t, _) => tag = String::from_utf8(t.to_vec())?,
                                (2, 5, x, _) => val = f32::from_le_bytes(x.try_into()?),
                                _ => {}
                            }
                        }
                        e.scalars.push((tag, val));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(e)
}

/// Read an event file back, checking every record's framing and both CRCs (used by the
/// tests; also a quick check of a file without TensorFlow installed).
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        let at = |what: &str| format!("{}: record at byte {i}: {what}", path.display());
        if b.len() - i < 12 {
            bail!(at("truncated header"));
        }
        let len_bytes = &b[i..i + 8];
        let len = u64::from_le_bytes(len_bytes.try_into()?) as usize;
        if u32::from_le_bytes(b[i + 8..i + 12].try_into()?) != masked_crc(len_bytes) {
            bail!(at("length CRC mismatch"));
        }
        let end = (i + 12).checked_add(len).and_then(|e| e.checked_add(4)).filter(|&e| e <= b.len());
        let Some(end) = end else { bail!(at("truncated data")) };
        let data = &b[i + 12..end - 4];
        if u32::from_le_bytes(b[end - 4..end].try_into()?) != masked_crc(data) {
            bail!(at("data CRC mismatch"));
        }
        out.push(decode_event(data).with_context(|| at("bad Event"))?);
        i = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The CRC-32C check value (RFC 3720 B.4) and TF's masking of it.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xE306_9283u32.rotate_right(15).wrapping_add(MASK_DELTA));
    }
}
