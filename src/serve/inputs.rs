//! Input images the job service receives (`POST /jobs` `images`): kept under
//! `<out>/serve/inputs/<sha256>.<png|jpg|webp>`, named by content, written (synced) before
//! the job is journaled, so a restarted service fills the job with the same bytes. A file
//! is never rewritten or removed by the service: equal bytes are stored once.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::request::StoredImage;
use crate::inputs::{InputImage, InputImageError, Limits, check_image_file_with};

/// Default cap on one received input image (`serve --max-input-bytes`).
pub const DEFAULT_MAX_INPUT_BYTES: u64 = 20 * 1024 * 1024;
/// The folder under the output root.
const DIR: &str = "serve/inputs";

/// Why received bytes were not stored. `reason` never shows the bytes.
#[derive(Debug)]
pub(crate) enum StoreError {
    /// Over the cap (413).
    TooLarge { len: u64, limit: u64 },
    /// Not an image the engine can send (400).
    NotAnImage(String),
    /// The state folder could not be written (503).
    Io(String),
}

/// The content-addressed store of received input images.
pub(crate) struct InputStore {
    out_root: PathBuf,
    max_bytes: u64,
}

impl InputStore {
    pub(crate) fn new(out_root: &Path, max_bytes: u64) -> InputStore {
        InputStore {
            out_root: out_root.to_owned(),
            max_bytes,
        }
    }

    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.max_bytes,
            ..Limits::DEFAULT
        }
    }

    /// Check `bytes` as an image and keep them (synced); what the job records and uses.
    pub(crate) fn store(&self, bytes: &[u8]) -> Result<(StoredImage, InputImage), StoreError> {
        let len = bytes.len() as u64;
        if len > self.max_bytes {
            return Err(StoreError::TooLarge {
                len,
                limit: self.max_bytes,
            });
        }
        let sha256 = hex::encode(Sha256::digest(bytes));
        let dir = self.out_root.join(DIR);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, &e))?;
        // Checked (as a file, as a manifest's images are) before it takes its name: a file
        // under that name is always an image. The check never shows the bytes.
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| io(&dir, &e))?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| io(tmp.path(), &e))?;
        let checked = check_image_file_with(tmp.path(), &self.limits()).map_err(|e| reason(&e))?;
        let relative = format!("{DIR}/{sha256}.{}", checked.format.extension());
        let path = self.out_root.join(&relative);
        if !path.exists() {
            tmp.persist(&path).map_err(|e| io(&path, &e.error))?;
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
        }
        let image = self.load_path(&path, &sha256).map_err(StoreError::Io)?;
        Ok((
            StoredImage {
                sha256,
                path: relative,
            },
            image,
        ))
    }

    /// The kept image `sha256` names (its file checked again, and its content).
    pub(crate) fn find(&self, sha256: &str) -> Result<(StoredImage, InputImage), String> {
        for ext in ["png", "jpg", "webp"] {
            let relative = format!("{DIR}/{sha256}.{ext}");
            let path = self.out_root.join(&relative);
            if path.is_file() {
                let image = self.load_path(&path, sha256)?;
                return Ok((
                    StoredImage {
                        sha256: sha256.to_owned(),
                        path: relative,
                    },
                    image,
                ));
            }
        }
        Err(format!(
            "names no image this service keeps (sha256 {sha256}); send the image itself"
        ))
    }

    fn load_path(&self, path: &Path, sha256: &str) -> Result<InputImage, String> {
        let image = check_image_file_with(path, &self.limits()).map_err(|e| e.to_string())?;
        if image.sha256.to_string() != sha256 {
            return Err(format!(
                "input image {} no longer has sha256 {sha256} (it was changed on disk); send the image again",
                path.display()
            ));
        }
        Ok(image)
    }
}

fn io(path: &Path, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Io(format!("cannot write {}: {e}", path.display()))
}

/// A checker error as a reason about the sent image (no path: the file is ours, not theirs).
fn reason(e: &InputImageError) -> StoreError {
    match e {
        InputImageError::TooLarge { len, limit, .. } => StoreError::TooLarge {
            len: *len,
            limit: *limit,
        },
        InputImageError::NotAnImage { head, .. } => StoreError::NotAnImage(format!(
            "is not a PNG, JPEG or WebP image ({head}); send one of those"
        )),
        InputImageError::TooManyPixels {
            width,
            height,
            limit,
            ..
        } => StoreError::NotAnImage(format!(
            "is {width}x{height} pixels, over the limit of {limit}; scale it down"
        )),
        InputImageError::Undecodable { format, reason, .. } => StoreError::NotAnImage(format!(
            "is a {format} file that does not decode ({reason}); export it again"
        )),
        InputImageError::Read { reason, .. } => StoreError::Io(reason.clone()),
    }
}
