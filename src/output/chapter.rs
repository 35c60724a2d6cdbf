//! The folders of one chapter under the output root:
//! `<out>/ch-XX/raw/comfyui/chXX_pNNN_vN.png` for images, `<out>/ch-XX/reports/` for run
//! reports and thumbnails, `<out>/ch-XX/ledger.jsonl` for the ledger.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::PathError;

/// The folders of one chapter under the output root.
#[derive(Debug, Clone)]
pub struct ChapterDirs {
    /// `<out>/ch-XX`
    pub root: PathBuf,
    /// `<out>/ch-XX/raw/comfyui`
    pub images: PathBuf,
    /// `<out>/ch-XX/reports`
    pub reports: PathBuf,
}

impl ChapterDirs {
    pub fn new(out: &Path, chapter: u16) -> ChapterDirs {
        let root = out.join(format!("ch-{chapter:02}"));
        ChapterDirs {
            images: root.join("raw").join("comfyui"),
            reports: root.join("reports"),
            root,
        }
    }

    /// Create every folder; the error names the folder that could not be made.
    pub fn create(&self) -> Result<(), PathError> {
        for dir in [&self.root, &self.images, &self.reports] {
            fs::create_dir_all(dir).map_err(|e| PathError::new("create directory", dir, e))?;
        }
        Ok(())
    }

    pub fn ledger(&self) -> PathBuf {
        self.root.join("ledger.jsonl")
    }

    /// `<out>/ch-XX/reports/thumbs.pack`: contact-sheet thumbnails by image digest.
    pub fn thumbs(&self) -> PathBuf {
        self.reports.join("thumbs.pack")
    }

    /// Every folder a run writes temp files in.
    pub fn temp_dirs(&self) -> Vec<PathBuf> {
        vec![self.images.clone(), self.reports.clone()]
    }
}
