//! Where a run's images and ledger records go: each chapter's folders, image store and
//! ledger ([`ChapterOutput`]), opened once and shared by every attempt ([`Outputs`]).
//!
//! Owns the opening and sharing of chapter outputs; naming, versions and atomic writes are
//! the image store's (`crate::output`), records the ledger's. Must not talk to servers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::ledger::{Ledger, LedgerRecord};
use crate::output::{ChapterDirs, ImageStore, PathError, Thumbs};

/// The image folder and ledger of one chapter.
#[derive(Debug)]
pub struct ChapterOutput {
    pub dirs: ChapterDirs,
    pub store: ImageStore,
    pub ledger: Ledger,
}

impl ChapterOutput {
    /// Create the folders of `chapter` (`dirs`, the caller's), open the ledger (returning
    /// its records) and scan the images.
    pub fn open(
        dirs: ChapterDirs,
        chapter: u16,
    ) -> Result<(ChapterOutput, Vec<LedgerRecord>), PathError> {
        dirs.create()?;
        let (ledger, records) = Ledger::open(&dirs.ledger())?;
        let store =
            ImageStore::open(&dirs.images, chapter)?.with_thumbs(Thumbs::new(dirs.thumbs()));
        Ok((
            ChapterOutput {
                dirs,
                store,
                ledger,
            },
            records,
        ))
    }
}

/// Every chapter's output under one root, opened on first use.
#[derive(Debug)]
pub struct Outputs {
    out_root: PathBuf,
    chapters: Mutex<HashMap<u16, Arc<ChapterOutput>>>,
    /// Attempts under way, each of which may bring images (see [`Outputs::image_coming`]).
    coming: Arc<AtomicUsize>,
}

impl Outputs {
    pub fn new(out_root: &Path) -> Outputs {
        Outputs {
            out_root: out_root.to_owned(),
            chapters: Mutex::new(HashMap::new()),
            coming: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// An attempt is under way and may bring images until the guard is dropped: the image
    /// stores' group syncs wait for it only while it is (`output::group_sync`).
    pub fn image_coming(&self) -> ImageComing {
        self.coming.fetch_add(1, Ordering::SeqCst);
        ImageComing(self.coming.clone())
    }

    /// Register a chapter opened by the caller (who wanted its ledger records).
    pub fn insert(&self, chapter: u16, output: ChapterOutput) -> Arc<ChapterOutput> {
        let output = Arc::new(self.expecting(output));
        self.chapters
            .lock()
            .expect("outputs poisoned")
            .insert(chapter, output.clone());
        output
    }

    pub fn chapter(&self, chapter: u16) -> Result<Arc<ChapterOutput>, PathError> {
        let mut chapters = self.chapters.lock().expect("outputs poisoned");
        if let Some(output) = chapters.get(&chapter) {
            return Ok(output.clone());
        }
        // A chapter no caller opened (the job service's jobs come in any chapter): the one
        // place the engine makes a chapter's folders from the output root.
        let (output, _) = ChapterOutput::open(ChapterDirs::new(&self.out_root, chapter), chapter)?;
        let output = Arc::new(self.expecting(output));
        chapters.insert(chapter, output.clone());
        Ok(output)
    }

    fn expecting(&self, output: ChapterOutput) -> ChapterOutput {
        ChapterOutput {
            store: output.store.expect_from(&self.coming),
            ..output
        }
    }

    /// fsync every open ledger.
    pub fn sync(&self) {
        for output in self.chapters.lock().expect("outputs poisoned").values() {
            let _ = output.ledger.sync();
        }
    }
}

/// One attempt counted in [`Outputs::image_coming`] until dropped.
#[derive(Debug)]
pub struct ImageComing(Arc<AtomicUsize>);

impl Drop for ImageComing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `path` relative to `root`, `/`-separated (for records that must read the same anywhere).
pub(crate) fn relative(root: &std::path::Path, path: &std::path::Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}
