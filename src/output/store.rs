//! The versioned image store of one chapter folder: names, versions and crash-safe commits.
//!
//! An image is streamed into a temp file in its final directory, checked, made durable, and
//! then hard-linked to the next free version name; the folder is synced after the link.
//! `link` fails if the name exists, so two runners (or two processes) can never overwrite or
//! share a version, and a name never points at a half-written file. The two syncs are group
//! commits ([`GroupSync`]): one sync of the filesystem for all the temp files staged in a
//! short window (on Linux; elsewhere each temp file is fsynced as it is staged), one fsync
//! of the folder for all the names made in one. Temp files carry the writer's pid, so leftovers of a dead writer are
//! recognised and removed the next time the directory is opened.
//! This module never talks to the network.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::error::PathError;
use super::files::digest_file;
use super::group_sync::GroupSync;
use super::pixels::decode_png;
use super::temp::{is_stale_temp_file, new_temp_file};
use super::thumbs::Thumbs;
use crate::digest::Sha256Digest;

/// How long the first image of a group sync of staged bytes waits for others to join. Each
/// image waits up to this before it is committed; a server is not kept waiting by it (its
/// slot is free once the prompt finished). 25 ms groups the ~3 images a real ComfyUI renders
/// meanwhile at its fastest (trivial graphs, docs/performance.md r2) and adds ~0.15 % to a
/// run of 0.6 s renders at most.
pub const GROUP_WINDOW: Duration = Duration::from_millis(25);

/// The names of a group of staged images are made together (the group's sync releases them
/// at once): their folder sync waits this long for them to gather.
pub const NAMES_WINDOW: Duration = Duration::from_millis(2);

/// A group of this many images syncs at once: the sync costs each an eighth or less.
pub const GROUP_FULL: usize = 8;

/// `ch01_p003_v2.png`
pub fn image_file_name(chapter: u16, page: u16, version: u32) -> String {
    format!("ch{chapter:02}_p{page:03}_v{version}.png")
}

/// Parse `chXX_pNNN_vN.png` back into (page, version) for the given chapter.
fn parse_image_file_name(chapter: u16, name: &str) -> Option<(u16, u32)> {
    let rest = name.strip_prefix(&format!("ch{chapter:02}_p"))?;
    let rest = rest.strip_suffix(".png")?;
    let (page, version) = rest.split_once("_v")?;
    if page.len() < 3 || !page.bytes().all(|b| b.is_ascii_digit()) || version.starts_with('0') {
        return None;
    }
    Some((page.parse().ok()?, version.parse().ok()?))
}

/// The image folder of one chapter: allocates versions and commits images.
#[derive(Debug)]
pub struct ImageStore {
    dir: PathBuf,
    chapter: u16,
    /// Highest version known per page; raised on every commit and on every name collision.
    highest: Mutex<HashMap<u16, u32>>,
    /// Where [`ImageStore::stage`] keeps a thumbnail of each image it accepts.
    thumbs: Option<Thumbs>,
    /// Makes staged temp files durable ([`ImageStore::sync_staged`]).
    data_sync: GroupSync,
    /// Makes committed names durable ([`ImageStore::sync_names`]).
    names_sync: GroupSync,
}

/// A fully written, checked temp file waiting for its final name (durable once
/// [`ImageStore::sync_staged`] returned after it was staged).
#[derive(Debug)]
pub struct StagedImage {
    temp: tempfile::TempPath,
    pub bytes: u64,
    pub sha256: Sha256Digest,
    pub width: u32,
    pub height: u32,
}

/// Where a committed image went.
#[derive(Debug, Clone)]
pub struct CommittedImage {
    pub path: PathBuf,
    pub file_name: String,
    pub version: u32,
}

impl ImageStore {
    /// Scan the folder once (versions in use, stale temp files of dead writers).
    pub fn open(dir: &Path, chapter: u16) -> Result<ImageStore, PathError> {
        fs::create_dir_all(dir).map_err(|e| PathError::new("create directory", dir, e))?;
        let mut highest: HashMap<u16, u32> = HashMap::new();
        let entries = fs::read_dir(dir).map_err(|e| PathError::new("read directory", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| PathError::new("read directory", dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some((page, version)) = parse_image_file_name(chapter, name) {
                let slot = highest.entry(page).or_default();
                *slot = (*slot).max(version);
            } else if is_stale_temp_file(name) {
                // A writer that died (kill -9, power loss) left this behind; it never had a
                // final name, so removing it loses nothing.
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(ImageStore {
            dir: dir.to_owned(),
            chapter,
            highest: Mutex::new(highest),
            thumbs: None,
            data_sync: GroupSync::new(GROUP_WINDOW, GROUP_FULL),
            names_sync: GroupSync::new(NAMES_WINDOW, GROUP_FULL),
        })
    }

    /// Keep a thumbnail of every staged image in `thumbs`.
    #[must_use]
    pub fn with_thumbs(mut self, thumbs: Thumbs) -> ImageStore {
        self.thumbs = Some(thumbs);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new temp file in the image folder (same filesystem, so the final link is atomic).
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile, PathError> {
        new_temp_file(&self.dir)
    }

    /// Check the written temp file is a PNG (of `expected` size when given) and return it
    /// staged with its digest; [`ImageStore::sync_staged`] makes it durable before its commit
    /// (off Linux, it is fsynced here). The pixels decoded for the check also make the
    /// image's thumbnail (best effort: the contact sheet makes a missing one again).
    pub fn stage(
        &self,
        temp: tempfile::NamedTempFile,
        expected: Option<(u32, u32)>,
    ) -> Result<StagedImage, StageError> {
        let path = temp.path().to_owned();
        let (bytes, sha256) = digest_file(&path).map_err(StageError::Io)?;
        let file =
            File::open(&path).map_err(|e| StageError::Io(PathError::new("open", &path, e)))?;
        self.check_and_stage(temp, bytes, sha256, BufReader::new(file), expected)
    }

    /// [`ImageStore::stage`] for a download held whole in memory: one file written, nothing
    /// read back.
    pub fn stage_bytes(
        &self,
        data: &[u8],
        expected: Option<(u32, u32)>,
    ) -> Result<StagedImage, StageError> {
        let mut temp = self.temp_file().map_err(StageError::Io)?;
        temp.write_all(data)
            .map_err(|e| StageError::Io(PathError::new("write", temp.path(), e)))?;
        let sha256 = Sha256Digest::from(Sha256::digest(data));
        self.check_and_stage(
            temp,
            data.len() as u64,
            sha256,
            io::Cursor::new(data),
            expected,
        )
    }

    fn check_and_stage(
        &self,
        temp: tempfile::NamedTempFile,
        bytes: u64,
        sha256: Sha256Digest,
        png: impl io::BufRead + io::Seek,
        expected: Option<(u32, u32)>,
    ) -> Result<StagedImage, StageError> {
        #[cfg(not(target_os = "linux"))]
        temp.as_file()
            .sync_all()
            .map_err(|e| StageError::Io(PathError::new("fsync", temp.path(), e)))?;
        let temp = temp.into_temp_path();
        let thumbs = self.thumbs.as_ref();
        let decoded = decode_png(png, thumbs.is_some()).map_err(|e| StageError::NotPng(e.0))?;
        if let (Some(thumbs), Some(thumbnail)) = (thumbs, &decoded.thumbnail)
            && let Err(e) = thumbs.append(&sha256, thumbnail)
        {
            tracing::debug!("thumbnail in {} not kept: {e}", thumbs.path().display());
        }
        let (width, height) = (decoded.width, decoded.height);
        if let Some((w, h)) = expected
            && (w, h) != (width, height)
        {
            return Err(StageError::WrongSize(format!(
                "the image is {width}x{height}, expected {w}x{h}"
            )));
        }
        Ok(StagedImage {
            temp,
            bytes,
            sha256,
            width,
            height,
        })
    }

    /// `coming` counts the images on their way to this store (attempts under way): a group
    /// sync waits no longer once they are all in it ([`GroupSync::expect_from`]).
    #[must_use]
    pub fn expect_from(mut self, coming: &Arc<AtomicUsize>) -> ImageStore {
        self.data_sync = self.data_sync.expect_from(coming.clone());
        self.names_sync = self.names_sync.expect_from(coming.clone());
        self
    }

    /// Make every image staged before this call durable: one sync of the folder's filesystem
    /// (`syncfs`) shared by all the callers of a [`GROUP_WINDOW`] (or [`GROUP_FULL`] of them). Call it before
    /// [`ImageStore::commit`], so that no name ever points at bytes a power loss could take.
    pub fn sync_staged(&self) -> Result<(), PathError> {
        #[cfg(target_os = "linux")]
        {
            self.data_sync
                .sync(|| {
                    let dir = File::open(&self.dir)?;
                    rustix::fs::syncfs(&dir).map_err(io::Error::from)
                })
                .map_err(|e| PathError::new("sync the filesystem of", &self.dir, e))
        }
        #[cfg(not(target_os = "linux"))]
        {
            // Each temp file was fsynced as it was staged.
            let _ = &self.data_sync;
            Ok(())
        }
    }

    /// Make every name committed before this call durable: one fsync of the folder shared by
    /// the names made together ([`NAMES_WINDOW`]). An image is recorded as done only after it.
    pub fn sync_names(&self) -> Result<(), PathError> {
        self.names_sync
            .sync(|| File::open(&self.dir).and_then(|d| d.sync_all()))
            .map_err(|e| PathError::new("fsync directory", &self.dir, e))
    }

    /// Syncs run so far: (staged data, names).
    pub fn syncs(&self) -> (u64, u64) {
        (self.data_sync.runs(), self.names_sync.runs())
    }

    /// The version the next commit for `page` will try first.
    pub fn peek_next_version(&self, page: u16) -> u32 {
        let highest = self.highest.lock().expect("version table poisoned");
        highest.get(&page).copied().unwrap_or(0) + 1
    }

    /// Give a staged image its final name with the next free version. `before_link` runs
    /// before each attempt with the path about to be created (the ledger records intent there,
    /// so a crash between link and record can never orphan an image). Call
    /// [`ImageStore::sync_staged`] before and [`ImageStore::sync_names`] after.
    pub fn commit(
        &self,
        staged: StagedImage,
        page: u16,
        mut before_link: impl FnMut(&CommittedImage) -> Result<(), PathError>,
    ) -> Result<CommittedImage, PathError> {
        loop {
            let version = {
                let mut highest = self.highest.lock().expect("version table poisoned");
                let slot = highest.entry(page).or_default();
                *slot += 1;
                *slot
            };
            let file_name = image_file_name(self.chapter, page, version);
            let target = CommittedImage {
                path: self.dir.join(&file_name),
                file_name,
                version,
            };
            before_link(&target)?;
            match fs::hard_link(&staged.temp, &target.path) {
                Ok(()) => {
                    // The temp name goes away; the data stays under the final name.
                    staged
                        .temp
                        .close()
                        .map_err(|e| PathError::new("remove temp file", &self.dir, e))?;
                    return Ok(target);
                }
                // Another runner took this version: take the next one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(PathError::new("create", &target.path, e)),
            }
        }
    }
}

/// Why a downloaded file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Io(PathError),
    #[error("the server sent something that is not a complete PNG: {0}")]
    NotPng(String),
    /// A complete PNG of another size than the job's `width` x `height`.
    #[error(
        "{0}: the workflow does not render the job's size (a workflow used as exported makes \
         its own size unless `width` and `height` are bound in its `[bind]` table, or set to it)"
    )]
    WrongSize(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::temp::TEMP_PREFIX;

    fn write_png(path: &Path, width: u32, height: u32) {
        let file = File::create(path).unwrap();
        let mut encoder = png::Encoder::new(io::BufWriter::new(file), width, height);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().unwrap();
        writer
            .write_image_data(&vec![7u8; (width * height * 3) as usize])
            .unwrap();
    }

    fn staged(store: &ImageStore, width: u32, height: u32) -> StagedImage {
        let temp = store.temp_file().unwrap();
        write_png(temp.path(), width, height);
        store.stage(temp, Some((width, height))).unwrap()
    }

    #[test]
    fn images_committed_together_share_their_syncs() {
        let dir = tempfile::tempdir().unwrap();
        // Six attempts under way: the group's leader waits for all six, not the window.
        let coming = Arc::new(AtomicUsize::new(6));
        let store = Arc::new(
            ImageStore::open(dir.path(), 1)
                .unwrap()
                .expect_from(&coming),
        );
        let images: Vec<_> = (1..=6u16)
            .map(|page| (page, staged(&store, 8, 8)))
            .collect();
        let threads: Vec<_> = images
            .into_iter()
            .map(|(page, image)| {
                let store = store.clone();
                std::thread::spawn(move || {
                    store.sync_staged().unwrap();
                    let target = store.commit(image, page, |_| Ok(())).unwrap();
                    store.sync_names().unwrap();
                    target
                })
            })
            .collect();
        for thread in threads {
            let target = thread.join().unwrap();
            assert!(target.path.exists(), "{}", target.path.display());
        }
        let (data, names) = store.syncs();
        // One each unless a thread started later than the 25 ms window (a loaded machine).
        assert!(
            (1..6).contains(&data),
            "{data} syncs of the staged bytes for six images"
        );
        assert!(
            (1..6).contains(&names),
            "{names} folder syncs for six names"
        );
        // Nothing but the six images is left in the folder (no temp files).
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 6);
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(image_file_name(1, 3, 2), "ch01_p003_v2.png");
        assert_eq!(parse_image_file_name(1, "ch01_p003_v2.png"), Some((3, 2)));
        assert_eq!(parse_image_file_name(1, "ch02_p003_v2.png"), None);
        assert_eq!(parse_image_file_name(1, "ch01_p003_v02.png"), None);
        assert_eq!(
            parse_image_file_name(12, "ch12_p100_v10.png"),
            Some((100, 10))
        );
    }

    #[test]
    fn staging_keeps_a_thumbnail_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let pack = dir.path().join("thumbs.pack");
        let store = ImageStore::open(dir.path(), 1)
            .unwrap()
            .with_thumbs(Thumbs::new(&pack));
        let image = staged(&store, 400, 200);
        let thumb = crate::output::thumbs::ThumbReader::open(&pack)
            .get_or_make(&image.sha256, Path::new("/nonexistent"))
            .expect("a kept thumbnail");
        let reader = png::Decoder::new(io::Cursor::new(thumb))
            .read_info()
            .unwrap();
        assert_eq!((reader.info().width, reader.info().height), (192, 96));
        // A file that is not a complete PNG gets no thumbnail (and is refused).
        let temp = store.temp_file().unwrap();
        fs::write(temp.path(), b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let before = fs::metadata(&pack).unwrap().len();
        assert!(store.stage(temp, None).is_err());
        assert_eq!(fs::metadata(&pack).unwrap().len(), before);
    }

    #[test]
    fn versions_continue_after_existing_files_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("ch01_p001_v1.png"), b"old").unwrap();
        fs::write(dir.path().join("ch01_p001_v4.png"), b"old").unwrap();
        let store = ImageStore::open(dir.path(), 1).unwrap();
        let first = store.commit(staged(&store, 8, 8), 1, |_| Ok(())).unwrap();
        assert_eq!(first.file_name, "ch01_p001_v5.png");
        // A second store (another runner) that scanned before the first commit collides
        // with v5 and moves on instead of overwriting it.
        let other = ImageStore {
            dir: dir.path().to_owned(),
            chapter: 1,
            highest: Mutex::new(HashMap::from([(1, 4)])),
            thumbs: None,
            data_sync: GroupSync::new(Duration::ZERO, 1),
            names_sync: GroupSync::new(Duration::ZERO, 1),
        };
        let second = other.commit(staged(&other, 8, 8), 1, |_| Ok(())).unwrap();
        assert_eq!(second.file_name, "ch01_p001_v6.png");
        assert_eq!(
            fs::read(dir.path().join("ch01_p001_v1.png")).unwrap(),
            b"old"
        );
        let other_page = store.commit(staged(&store, 8, 8), 2, |_| Ok(())).unwrap();
        assert_eq!(other_page.file_name, "ch01_p002_v1.png");
        // No temp file is left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn rejects_truncated_and_wrong_size_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), 1).unwrap();
        let temp = store.temp_file().unwrap();
        write_png(temp.path(), 16, 16);
        let full = fs::read(temp.path()).unwrap();
        fs::write(temp.path(), &full[..full.len() - 20]).unwrap();
        assert!(matches!(
            store.stage(temp, None),
            Err(StageError::NotPng(_))
        ));

        let temp = store.temp_file().unwrap();
        fs::write(temp.path(), b"<html>not a png</html>").unwrap();
        assert!(matches!(
            store.stage(temp, None),
            Err(StageError::NotPng(_))
        ));

        let temp = store.temp_file().unwrap();
        write_png(temp.path(), 16, 8);
        let err = store.stage(temp, Some((16, 16))).unwrap_err();
        assert!(err.to_string().contains("16x8, expected 16x16"), "{err}");
        assert!(matches!(err, StageError::WrongSize(_)), "{err}");
    }

    #[test]
    fn stale_temp_files_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // pid 0 is never a user process.
        let dead = dir.path().join(format!("{TEMP_PREFIX}0-abc.part"));
        let mine = dir
            .path()
            .join(format!("{TEMP_PREFIX}{}-abc.part", std::process::id()));
        fs::write(&dead, b"x").unwrap();
        fs::write(&mine, b"x").unwrap();
        ImageStore::open(dir.path(), 1).unwrap();
        assert!(!dead.exists());
        assert!(mine.exists());
    }
}
