//! Writing files without ever leaving a half-written one where the user's file was.

use crate::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: into a temporary file in the same folder, flushed to
/// disk (fsync), then renamed over `path`. A crash or Ctrl-C leaves either the old file or the
/// new one, never a mix. An existing file keeps its permission bits. The folder is created
/// when missing. Cost: one write, one fsync, one rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let name = path.file_name().ok_or_else(|| {
        Error::invalid("output path", format!("{} names no file", path.display()))
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Checks, before any long computation, that `path` can be written later: not a folder, its
/// folder exists (or can be created) and accepts a new file. Writes and removes a probe file.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::other("is a folder, not a file"),
        ));
    }
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let probe = dir.join(format!(".hessian-lab-probe-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| Error::io(path, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reads a whole regular file. A folder, a device (`/dev/zero`), a FIFO or a socket is an
/// error at once rather than an endless read.
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other(if meta.is_dir() {
            "is a folder, not a file"
        } else {
            "not a regular file (a device, FIFO or socket)"
        }));
    }
    std::fs::read(path)
}
