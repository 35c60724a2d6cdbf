//! Temp files: `.plasma-tmp-<pid>-<random>.part`, made in the folder of the file they become
//! (same filesystem, so the final rename or link is atomic). The writer's pid in the name
//! tells leftovers of a dead writer (kill -9, power loss) from those of a live one; they never
//! had a final name, so removing them loses nothing. An in-process lock lets an exit that
//! skips destructors remove this process's own temp files with none appearing after it looked.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockWriteGuard};

use super::error::PathError;

/// Prefix of in-progress files: `.plasma-tmp-<pid>-<random>.part`.
pub(crate) const TEMP_PREFIX: &str = ".plasma-tmp-";

/// Held (shared) while a temp file is being created; [`remove_own_temp_files`] holds it
/// exclusively, so no temp file of ours can appear after it looked.
static TEMP_FILES: RwLock<()> = RwLock::new(());

/// `.plasma-tmp-<pid>-<random>.part` in `dir`, removed when dropped.
pub(crate) fn new_temp_file(dir: &Path) -> Result<tempfile::NamedTempFile, PathError> {
    let _creating = TEMP_FILES
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|e| PathError::new("create a temp file in", dir, e))
}

/// Whether `name` is a temp file left by a writer that is gone.
pub(crate) fn is_stale_temp_file(name: &str) -> bool {
    temp_file_pid(name).is_some_and(|pid| !process_alive(pid))
}

/// Remove leftovers of dead writers (`write_atomic` temps) in a folder.
pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(is_stale_temp_file) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Remove this process's own temp files in `dirs`, for an exit that skips destructors (the
/// second Ctrl-C), so it leaves nothing behind even before the next run cleans up. Returns a
/// guard that blocks the creation of new temp files: exit while holding it. A writer racing
/// with this only loses its temp file (its rename or link fails); final names are never
/// touched.
pub fn remove_own_temp_files(dirs: &[PathBuf]) -> RwLockWriteGuard<'static, ()> {
    let guard = TEMP_FILES
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let me = std::process::id();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_str().and_then(temp_file_pid) == Some(me) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    guard
}

fn temp_file_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    rest.split('-').next()?.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    // Linux and most Unixes expose live processes here; elsewhere, keep the file.
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}
