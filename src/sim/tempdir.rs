//! The simulator's own temporary folder, and the removal of those that killed simulators left.
//!
//! Each simulator gets one folder, `plasma-sim-<pid>-XXXXXX`, in `/dev/shm` when it exists
//! (RAM-backed: creating a file on a slow CI disk can cost a millisecond) or else the
//! system's temp folder. It holds `output/` (unless `--output-dir` names another), `input/`,
//! `temp/` and `owner.lock`, which the simulator keeps locked (`flock`) while it runs and
//! removes with the folder when it stops. A simulator killed with SIGKILL cannot do that, so
//! each one that starts removes the `plasma-sim-*` folders whose lock nobody holds: the kernel
//! drops a lock with the last descriptor of its owner, however that process ended, and a
//! lock held by a live simulator (in this process or another) makes its folder untouchable.
//! Only names of that form with a lock file (or, briefly after creation, a dead pid) are
//! ever removed; nothing else in the temp folder is looked at twice.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// The start of every simulator folder's name.
const PREFIX: &str = "plasma-sim-";
/// The file inside a simulator folder its owner keeps locked.
const LOCK_FILE: &str = "owner.lock";

/// A simulator's folder, removed when dropped.
#[derive(Debug)]
pub struct SimTempDir {
    dir: tempfile::TempDir,
    /// Locked for as long as this value lives (the lock goes with the descriptor).
    _lock: File,
}

impl SimTempDir {
    /// Remove the folders dead simulators left, then make and lock this simulator's own.
    pub fn create() -> io::Result<SimTempDir> {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            remove_stale(shm);
            if let Ok(dir) = SimTempDir::create_in(shm) {
                return Ok(dir);
            }
        }
        let base = std::env::temp_dir();
        remove_stale(&base);
        SimTempDir::create_in(&base)
    }

    fn create_in(base: &Path) -> io::Result<SimTempDir> {
        let prefix = format!("{PREFIX}{}-", std::process::id());
        // Between creating the lock file and locking it, a simulator starting elsewhere may
        // take the lock, judge the folder stale and remove it: then make another.
        let mut last = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix(&prefix).tempdir_in(base)?;
            let lock = File::create(dir.path().join(LOCK_FILE))?;
            match try_lock(&lock) {
                Ok(true) => return Ok(SimTempDir { dir, _lock: lock }),
                Ok(false) => last = Some(io::Error::other("another process holds its lock")),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no folder could be locked")))
    }

    #[cfg(test)]
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `name` inside the folder, created.
    pub fn subdir(&self, name: &str) -> io::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path)?;
        Ok(path)
    }
}

/// Remove every simulator folder in `base` whose owner is gone; returns how many.
pub fn remove_stale(base: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        // Not followed if it is a link: only a real folder of ours is ever removed.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        // Held while removing, so no other starting simulator judges it at the same time.
        let _held = match File::open(path.join(LOCK_FILE)) {
            Ok(lock) => match try_lock(&lock) {
                Ok(true) => Some(lock),
                _ => continue,
            },
            // Made an instant ago and not locked yet, or left by a simulator killed in that
            // instant: only the owner's pid can tell.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if process_alive(pid) {
                    continue;
                }
                None
            }
            Err(_) => continue,
        };
        if std::fs::remove_dir_all(&path).is_ok() {
            tracing::debug!(folder = %path.display(), "removed a dead simulator's folder");
            removed += 1;
        }
    }
    removed
}

/// The pid in `plasma-sim-<pid>-XXXXXX`, if `name` has that form.
fn owner_pid(name: &str) -> Option<u32> {
    let (pid, rest) = name.strip_prefix(PREFIX)?.split_once('-')?;
    if rest.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Take the exclusive lock without waiting; `false` if someone holds it.
#[cfg(unix)]
fn try_lock(file: &File) -> io::Result<bool> {
    use rustix::fs::{FlockOperation, flock};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Elsewhere no lock is taken: a folder is stale only when its lock file is missing and
/// its pid is gone, which this platform cannot tell, so nothing is removed.
#[cfg(not(unix))]
fn try_lock(_file: &File) -> io::Result<bool> {
    Ok(false)
}

#[cfg(unix)]
fn process_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    // EPERM: it exists, it is just not ours to signal.
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

#[cfg(not(unix))]
fn process_alive(_pid: u32) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_the_simulator_form_carry_a_pid() {
        assert_eq!(owner_pid("plasma-sim-4242-AbC123"), Some(4242));
        assert_eq!(owner_pid("plasma-sim-output-AbC123"), None);
        assert_eq!(owner_pid("plasma-sim-4242-"), None);
        assert_eq!(owner_pid("plasma-sim--x"), None);
        assert_eq!(owner_pid("other-4242-x"), None);
    }

    #[test]
    fn a_folder_whose_lock_nobody_holds_is_removed_and_a_held_one_is_kept() {
        let base = tempfile::tempdir().unwrap();
        let live = SimTempDir::create_in(base.path()).unwrap();
        let stale = base.path().join("plasma-sim-1-dead01");
        std::fs::create_dir_all(stale.join("output")).unwrap();
        std::fs::write(stale.join(LOCK_FILE), b"").unwrap();
        std::fs::write(stale.join("output/x_00001_.png"), b"png").unwrap();
        // Not of the simulator's form: never touched.
        let other = base.path().join("plasma-sim-output-abc");
        std::fs::create_dir_all(&other).unwrap();
        // Of the form but a file, not a folder.
        std::fs::write(base.path().join("plasma-sim-2-file"), b"").unwrap();

        assert_eq!(remove_stale(base.path()), 1);
        assert!(!stale.exists());
        assert!(live.path().join(LOCK_FILE).exists());
        assert!(other.exists());
        assert!(base.path().join("plasma-sim-2-file").exists());
        let path = live.path().to_owned();
        drop(live);
        assert!(
            !path.exists(),
            "a simulator removes its own folder when it stops"
        );
    }
}
