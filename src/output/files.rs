//! File-system helpers under the output root: atomic whole-file writes, fsync of a folder,
//! digests, appending, and opening a file without following a link planted in the folder.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::error::PathError;
use super::temp::new_temp_file;
use crate::digest::Sha256Digest;

/// Size and sha256 of a file.
pub fn digest_file(path: &Path) -> Result<(u64, Sha256Digest), PathError> {
    let mut file = File::open(path).map_err(|e| PathError::new("open", path, e))?;
    let mut hasher = Sha256::new();
    let bytes = io::copy(&mut file, &mut hasher).map_err(|e| PathError::new("read", path, e))?;
    Ok((bytes, hasher.finalize().into()))
}

/// fsync a directory so that a new name in it survives a power loss.
pub fn sync_dir(dir: &Path) -> Result<(), PathError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PathError::new("fsync directory", dir, e))
}

/// Write `contents` to `path` atomically: temp file in the same folder, fsync, rename.
/// Readers see the old file or the new one, never a mix; a crash leaves one of them.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), PathError> {
    write_atomic_with(path, |out| out.write_all(contents))
}

/// [`write_atomic`] for contents written piece by piece (a 10,000-job report or contact
/// sheet is tens of MB: streamed, it never sits in memory whole).
pub fn write_atomic_with(
    path: &Path,
    contents: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), PathError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = new_temp_file(dir)?;
    let written = {
        let mut out = std::io::BufWriter::with_capacity(64 << 10, temp.as_file_mut());
        contents(&mut out).and_then(|()| out.flush())
    };
    written.map_err(|e| PathError::new("write", temp.path(), e))?;
    temp.as_file()
        .sync_all()
        .map_err(|e| PathError::new("write", temp.path(), e))?;
    temp.persist(path)
        .map_err(|e| PathError::new("replace", path, e.error))?;
    Ok(())
}

/// Open a file for appending (created if missing).
pub fn open_append(path: &Path) -> Result<File, PathError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| PathError::new("open for appending", path, e))
}

/// Open `root/relative` (`/`-separated, no `..`) for reading without following a symbolic
/// link in `relative`: a link planted in the output folder must not serve another file. Only
/// a regular file is opened (a FIFO would block). The file's identity is compared before and
/// after opening, so a link swapped in between is caught too.
pub fn open_no_follow(root: &Path, relative: &str) -> io::Result<File> {
    let refuse = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut path = root.to_owned();
    let parts: Vec<&str> = relative.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() || *part == "." || *part == ".." {
            return Err(refuse(format!("{relative:?} is not a plain relative path")));
        }
        path.push(part);
        let meta = fs::symlink_metadata(&path)?;
        let last = i + 1 == parts.len();
        if meta.file_type().is_symlink() {
            return Err(refuse(format!("{} is a symbolic link", path.display())));
        }
        if last && !meta.is_file() || !last && !meta.is_dir() {
            return Err(refuse(format!("{} is not a regular file", path.display())));
        }
        if last {
            let file = File::open(&path)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                let opened = file.metadata()?;
                if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
                    return Err(refuse(format!("{} changed while opening", path.display())));
                }
            }
            return Ok(file);
        }
    }
    Err(refuse("an empty path".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        write_atomic(&path, b"{\"a\":1}").unwrap();
        write_atomic(&path, b"{\"a\":2}").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{\"a\":2}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
