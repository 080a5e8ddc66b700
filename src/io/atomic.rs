//! Crash-consistent file writes, in one place: every checkpoint, run configuration, log
//! rewrite and plot is written to a temporary file in the target's folder, fsynced and
//! renamed over the target, so a crash or `kill -9` leaves either the old file or the
//! new one, never a torn one.
//!
//! Temporaries are named `.<file name>.<random>.tmp` (the `tempfile` crate makes the
//! name unique and removes the file on every error path); a kill between create and
//! rename leaves one behind, which [`remove_stale_temps`] deletes on the next run.

use anyhow::{Context as _, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

fn parts(path: &Path) -> Result<(PathBuf, String)> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy()
        .into_owned();
    Ok((dir, name))
}

/// The temporary-file prefix of `path` (`.<name>.`).
fn temp_prefix(name: &str) -> String {
    format!(".{name}.")
}

const TEMP_SUFFIX: &str = ".tmp";

/// Write `path` atomically: `write` fills the temporary file at the path it is given
/// (by path, for writers such as `safetensors::serialize_to_file` that open it themselves).
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let (dir, name) = parts(path)?;
    let tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(&name))
        .suffix(TEMP_SUFFIX)
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {} for {name}", dir.display()))?;
    // On any error below, dropping `tmp` removes the temporary file.
    write(tmp.path())?;
    // tempfile creates 0600; a run's files are as readable as any file the user writes.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644));
    }
    File::open(tmp.path())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", tmp.path().display()))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("renaming a temporary file to {}", path.display()))?;
    // Make the rename itself durable (best effort: not every platform can open a directory).
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| std::fs::write(tmp, bytes).with_context(|| format!("writing {}", tmp.display())))
        .with_context(|| format!("writing {}", path.display()))
}

/// Temporaries of `path` left by an interrupted write (this module's `.<name>.*.tmp` and
/// the `<name>.tmp` of earlier versions), newest first.
pub fn stale_temps(path: &Path) -> Vec<PathBuf> {
    let Ok((dir, name)) = parts(path) else { return vec![] };
    let prefix = temp_prefix(&name);
    let legacy = format!("{name}{TEMP_SUFFIX}");
    let Ok(entries) = std::fs::read_dir(&dir) else { return vec![] };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (n.starts_with(&prefix) && n.ends_with(TEMP_SUFFIX)) || n == legacy
        })
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|f| f.1).collect()
}

/// Delete the temporaries of `path` left by interrupted writes; returns how many bytes
/// were freed. Only call this when no other process is writing `path`.
pub fn remove_stale_temps(path: &Path) -> u64 {
    let mut freed = 0;
    for p in stale_temps(path) {
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        if std::fs::remove_file(&p).is_ok() {
            freed += len;
        }
    }
    freed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"old").unwrap();
        let r = write_atomic_with(&p, |tmp| {
            std::fs::write(tmp, b"half")?;
            anyhow::bail!("disk full")
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "a temporary was left behind");
    }

    #[test]
    fn stale_temporaries_are_found_and_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ck.safetensors");
        std::fs::write(&p, b"keep").unwrap();
        std::fs::write(dir.path().join(".ck.safetensors.abc123.tmp"), b"12345").unwrap();
        std::fs::write(dir.path().join("ck.safetensors.tmp"), b"123").unwrap();
        std::fs::write(dir.path().join("other.tmp"), b"x").unwrap();
        assert_eq!(stale_temps(&p).len(), 2);
        assert_eq!(remove_stale_temps(&p), 8);
        assert!(stale_temps(&p).is_empty());
        assert!(p.exists() && dir.path().join("other.tmp").exists());
    }
}
