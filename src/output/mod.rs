//! The output store: everything plasma-batch writes under the output root, and how it writes
//! it so that a crash never leaves a half-written or overwritten file. This module never
//! talks to the network.
//!
//! Layout: `<out>/ch-XX/raw/comfyui/chXX_pNNN_vN.png` for images, `<out>/ch-XX/reports/` for
//! run reports and the thumbnail pack, `<out>/ch-XX/ledger.jsonl` for the ledger,
//! `<out>/serve/jobs.jsonl` for the job service's journal.
//!
//! - [`error`]: [`PathError`], an I/O error with its operation and path.
//! - [`temp`]: temp files named after their writer's pid; leftovers of dead writers.
//! - [`files`]: atomic whole-file writes, fsync, digests, appending, opening without links.
//! - [`chapter`]: [`ChapterDirs`], the folders of one chapter.
//! - [`pixels`]: the one PNG decoder (arrival checks and thumbnails).
//! - [`store`]: [`ImageStore`], versioned image names and crash-safe commits.
//! - [`thumbs`]: the thumbnail pack of a chapter.
//! - [`lock`]: [`OwnerLock`], an OS lock that says which process owns a file.
//! - [`jsonl`]: append-only JSON lines, the writer and reader of the ledger and the journal.

pub mod chapter;
pub mod error;
pub mod files;
pub mod group_sync;
pub mod jsonl;
pub mod lock;
pub mod pixels;
pub mod shrink;
pub mod store;
pub mod temp;
pub mod thumbs;

pub use chapter::ChapterDirs;
pub use error::PathError;
pub use files::{
    digest_file, open_append, open_no_follow, sync_dir, write_atomic, write_atomic_with,
};
pub use jsonl::{BadLine, JsonLines};
pub use lock::{LockError, OwnerLock};
pub use pixels::{Decoded, NotPng, decode_png};
pub use store::{CommittedImage, ImageStore, StageError, StagedImage, image_file_name};
pub(crate) use temp::new_temp_file;
pub use temp::{remove_own_temp_files, remove_stale_temp_files};
pub use thumbs::{ThumbReader, Thumbs};
