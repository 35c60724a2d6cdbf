//! Naming, versioning and crash-safe writes under the output root.
//!
//! Layout: `<out>/ch-XX/raw/comfyui/chXX_pNNN_vN.png` for images, `<out>/ch-XX/reports/` for
//! run reports, `<out>/ch-XX/ledger.jsonl` for the ledger.
//!
//! An image is streamed into a temp file in its final directory, fsynced, checked, and then
//! hard-linked to the next free version name. `link` fails if the name exists, so two runners
//! (or two processes) can never overwrite or share a version, and a name never points at a
//! half-written file. Temp files carry the writer's pid, so leftovers of a dead writer are
//! recognised and removed the next time the directory is opened.
//! This module never talks to the network.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockWriteGuard};

use sha2::{Digest, Sha256};

use crate::digest::Sha256Digest;
use crate::thumbs::{Pixels, Thumbs};

/// Prefix of in-progress image files: `.plasma-tmp-<pid>-<random>.part`.
const TEMP_PREFIX: &str = ".plasma-tmp-";

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
}

/// A fully written, fsynced temp file waiting for its final name.
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
            } else if let Some(pid) = temp_file_pid(name)
                && !process_alive(pid)
            {
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
        })
    }

    /// Keep a thumbnail of every staged image in `thumbs`.
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

    /// fsync the written temp file, check it is a PNG (of `expected` size when given), and
    /// return it staged with its digest. The pixels decoded for the check also make the
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
        temp.as_file()
            .sync_all()
            .map_err(|e| StageError::Io(PathError::new("fsync", temp.path(), e)))?;
        let temp = temp.into_temp_path();
        let thumbs = self.thumbs.as_ref();
        let (width, height) = decode_png(png, |pixels| {
            if let Some(thumbs) = thumbs
                && let Err(e) = thumbs.append(&sha256, &crate::thumbs::thumbnail(pixels))
            {
                tracing::debug!("thumbnail in {} not kept: {e}", thumbs.path().display());
            }
        })?;
        if let Some((w, h)) = expected
            && (w, h) != (width, height)
        {
            return Err(StageError::NotPng(format!(
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

    /// The version the next commit for `page` will try first.
    pub fn peek_next_version(&self, page: u16) -> u32 {
        let highest = self.highest.lock().expect("version table poisoned");
        highest.get(&page).copied().unwrap_or(0) + 1
    }

    /// Give a staged image its final name with the next free version. `before_link` runs
    /// before each attempt with the path about to be created (the ledger records intent there,
    /// so a crash between link and record can never orphan an image).
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
                    sync_dir(&self.dir)?;
                    return Ok(target);
                }
                // Another runner took this version: take the next one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
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
}

/// Decode a whole PNG: a truncated or corrupt one fails here, never later. `use_pixels`
/// sees the decoded image (as 8-bit samples) once it is known to be complete.
pub fn decode_png(
    png: impl io::BufRead + io::Seek,
    use_pixels: impl FnOnce(&Pixels<'_>),
) -> Result<(u32, u32), StageError> {
    let mut decoder = png::Decoder::new(png);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| StageError::NotPng(e.to_string()))?;
    let (width, height) = {
        let info = reader.info();
        (info.width, info.height)
    };
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| StageError::NotPng("the image is too large to decode".to_owned()))?;
    let mut buffer = vec![0; size];
    let frame = reader
        .next_frame(&mut buffer)
        .map_err(|e| StageError::NotPng(e.to_string()))?;
    reader
        .finish()
        .map_err(|e| StageError::NotPng(e.to_string()))?;
    use_pixels(&Pixels {
        data: &buffer[..frame.buffer_size()],
        width,
        height,
        channels: frame.color_type.samples(),
    });
    Ok((width, height))
}

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

/// Remove leftovers of dead writers (`write_atomic` temps) in a folder.
pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if let Some(pid) = entry.file_name().to_str().and_then(temp_file_pid)
            && !process_alive(pid)
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Held (shared) while a temp file is being created; [`remove_own_temp_files`] holds it
/// exclusively, so no temp file of ours can appear after it looked.
static TEMP_FILES: RwLock<()> = RwLock::new(());

/// `.plasma-tmp-<pid>-<random>.part` in `dir`, removed when dropped.
pub(crate) fn new_temp_file(dir: &Path) -> Result<tempfile::NamedTempFile, PathError> {
    let _creating = TEMP_FILES.read().unwrap_or_else(|e| e.into_inner());
    tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|e| PathError::new("create a temp file in", dir, e))
}

/// Remove this process's own temp files in `dirs`, for an exit that skips destructors (the
/// second Ctrl-C), so it leaves nothing behind even before the next run cleans up. Returns a
/// guard that blocks the creation of new temp files: exit while holding it. A writer racing
/// with this only loses its temp file (its rename or link fails); final names are never
/// touched.
pub fn remove_own_temp_files(dirs: &[PathBuf]) -> RwLockWriteGuard<'static, ()> {
    let guard = TEMP_FILES.write().unwrap_or_else(|e| e.into_inner());
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

pub(crate) fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    // Linux and most Unixes expose live processes here; elsewhere, keep the file.
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
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

/// Open a file for appending (created if missing).
pub fn open_append(path: &Path) -> Result<File, PathError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| PathError::new("open for appending", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let thumb = crate::thumbs::ThumbReader::open(&pack)
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
