//! An owner lock on a file: an OS file lock (`flock`, through `fs4`) that says which process
//! owns something in the output folder (the job service's journal), with the owner's pid
//! written in the file for humans. The kernel releases the lock when the holder exits or dies,
//! so a pid left in the file (our own after a container restart, a dead or zombie process)
//! never blocks a restart.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use super::error::PathError;

/// A lock held by this process until [`OwnerLock::release`] or drop.
#[derive(Debug)]
pub struct OwnerLock {
    file: Mutex<Option<File>>,
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it; `pid` is what it wrote in the file (for humans).
    #[error("it is locked by another process")]
    Held { pid: Option<u32> },
    #[error(transparent)]
    Io(#[from] PathError),
}

impl OwnerLock {
    /// Take the lock on `path` (created if missing) and write our pid into it.
    pub fn take(path: &Path) -> Result<OwnerLock, LockError> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| PathError::new("open", path, e))?;
        // Through the crate's trait: std's own `File::try_lock` is newer than `rust-version`.
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|text| text.trim().parse::<u32>().ok());
                return Err(LockError::Held { pid });
            }
            Err(fs4::TryLockError::Error(e)) => return Err(PathError::new("lock", path, e).into()),
        }
        file.set_len(0)
            .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()))
            .map_err(|e| PathError::new("write", path, e))?;
        Ok(OwnerLock {
            file: Mutex::new(Some(file)),
        })
    }

    /// Let another process take it (also when dropped).
    pub fn release(&self) {
        // Emptied, not removed: removing would let a third process lock a new file of the
        // same name while a second one still waits on the old one. Closing it unlocks.
        if let Some(file) = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            let _ = file.set_len(0);
        }
    }
}

impl Drop for OwnerLock {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_at_a_time_and_the_pid_is_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = OwnerLock::take(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            std::process::id().to_string()
        );
        match OwnerLock::take(&path) {
            Err(LockError::Held { pid }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        held.release();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        let again = OwnerLock::take(&path).unwrap();
        drop(again);
        drop(OwnerLock::take(&path).unwrap());
    }
}
