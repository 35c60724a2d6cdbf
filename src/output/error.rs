//! The one error type of the output store: an I/O error with the operation and the path it
//! concerns, and a hint for the common causes.

use std::io;
use std::path::{Path, PathBuf};

/// An I/O error with the operation and path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("failed to {op} {}: {source}", path.display())]
pub struct PathError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl PathError {
    pub fn new(op: &'static str, path: &Path, source: io::Error) -> PathError {
        PathError {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// A hint for the most common causes.
    pub fn hint(&self) -> Option<&'static str> {
        match self.source.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                Some("check the permissions of the output directory, or choose another with --out")
            }
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                Some("the disk is full: free some space or choose another --out")
            }
            _ => None,
        }
    }
}
