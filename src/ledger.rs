//! The chapter ledger: an append-only JSON-lines file (`<out>/ch-XX/ledger.jsonl`) that maps
//! job hashes to the images they produced and records every submission.
//!
//! Crash safety: each record is one `write` of one line on an `O_APPEND` file, so records of
//! concurrent runners never interleave and a `kill -9` loses at most the line being written.
//! A torn last line is skipped on reading and fenced off with a newline before appending
//! (the writing and reading are [`crate::output::jsonl`]'s, shared with the serve journal).
//! An image is committed in two records: `image_intent` *before* the link that gives it its
//! final name (so a crash right after the link cannot leave an image the ledger does not
//! know), and `image` *after* the link succeeded, naming the file the link created and the
//! digest of the bytes linked. Two runners may both intend the same free name; only the one
//! whose link created it writes `image`, so an `image` record never names another job's file.
//! Any image counts only if a file with that name and that sha256 exists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::output::jsonl::{self, JsonLines};
use crate::output::{CommittedImage, ImageStore, PathError, StagedImage, digest_file};

/// Ledger format version, written in every record.
pub const LEDGER_VERSION: u32 = 1;

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LedgerRecord {
    /// A prompt is about to be posted (written before `POST /prompt`).
    Submitted {
        v: u32,
        run_id: String,
        key: String,
        job_hash: String,
        server: String,
        prompt_id: String,
        attempt: u32,
    },
    /// An image is about to get its final name `file` (written before the link). The name
    /// may have been taken by another runner meanwhile: trusted only when no `image` record
    /// names the file (a crash between the link and that record) and the digest matches.
    ImageIntent(ImageEntry),
    /// An image got its final name: written after the link created `file`.
    Image(ImageEntry),
    /// A job reached a final state in a run.
    Finished {
        v: u32,
        run_id: String,
        key: String,
        job_hash: String,
        status: String,
    },
}

/// What `image_intent` and `image` records say about an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageEntry {
    pub v: u32,
    pub run_id: String,
    pub key: String,
    pub job_hash: String,
    pub prompt_id: String,
    pub seed: u64,
    /// Relative to the chapter folder, `/`-separated: `raw/comfyui/ch01_p001_v1.png`.
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub width: u32,
    pub height: u32,
}

/// An image the ledger vouches for and the disk confirms.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedImage {
    pub key: String,
    pub path: PathBuf,
    pub file: String,
    pub bytes: u64,
    pub sha256: Sha256Digest,
    pub width: u32,
    pub height: u32,
    pub prompt_id: String,
    pub run_id: String,
}

/// An open ledger, shared by every task of a run.
#[derive(Debug)]
pub struct Ledger {
    lines: JsonLines,
}

impl Ledger {
    /// Open (or create) the ledger and read every intact record in it.
    pub fn open(path: &Path) -> Result<(Ledger, Vec<LedgerRecord>), PathError> {
        let lines = JsonLines::open(path)?;
        let records = read_records(path)?;
        Ok((Ledger { lines }, records))
    }

    pub fn path(&self) -> &Path {
        self.lines.path()
    }

    /// Append one record as one write (not fsynced; see [`Ledger::sync`]).
    pub fn append(&self, record: &LedgerRecord) -> Result<(), PathError> {
        self.lines.append(record)
    }

    /// Give `staged` its final name in `store` (the next free version of `page`): the intent
    /// is recorded before each link attempt and the image after the link that succeeded.
    /// `entry` describes the image under a given final name.
    pub fn commit_image(
        &self,
        store: &ImageStore,
        staged: StagedImage,
        page: u16,
        entry: impl Fn(&CommittedImage) -> ImageEntry,
    ) -> Result<CommittedImage, PathError> {
        let target = store.commit(staged, page, |target| {
            self.append(&LedgerRecord::ImageIntent(entry(target)))
        })?;
        self.append(&LedgerRecord::Image(entry(&target)))?;
        Ok(target)
    }

    /// Flush the ledger to stable storage (at the end of a run; a process crash loses nothing
    /// already appended, only a power loss needs this).
    pub fn sync(&self) -> Result<(), PathError> {
        self.lines.sync()
    }
}

/// Every parsable record; unparsable lines (a torn write, a future format) are skipped.
pub fn read_records(path: &Path) -> Result<Vec<LedgerRecord>, PathError> {
    let (records, _skipped) = jsonl::read_all(path)?;
    Ok(records)
}

/// The verified images of each job hash, oldest first. `chapter_root` is `<out>/ch-XX`.
/// Each file is hashed once: a record only counts if the file still has that content.
pub fn verified_images(
    chapter_root: &Path,
    records: &[LedgerRecord],
) -> HashMap<String, Vec<VerifiedImage>> {
    let mut by_hash: HashMap<String, Vec<VerifiedImage>> = HashMap::new();
    let mut digests: HashMap<String, Option<(u64, Sha256Digest)>> = HashMap::new();
    // A file an `image` record names belongs to that record; an intent for the same name
    // was a runner that lost the race for it (or wrote the very same record first).
    let linked: std::collections::HashSet<&str> = records
        .iter()
        .filter_map(|r| match r {
            LedgerRecord::Image(entry) => Some(entry.file.as_str()),
            _ => None,
        })
        .collect();
    for record in records {
        let ImageEntry {
            key,
            job_hash,
            prompt_id,
            file,
            bytes,
            sha256,
            width,
            height,
            run_id,
            ..
        } = match record {
            LedgerRecord::Image(entry) => entry,
            LedgerRecord::ImageIntent(entry) if !linked.contains(entry.file.as_str()) => entry,
            _ => continue,
        };
        // Only plain relative names we wrote ourselves; never follow a path out of the folder.
        if file
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        {
            continue;
        }
        let path = chapter_root.join(file);
        let on_disk = *digests
            .entry(file.clone())
            .or_insert_with(|| digest_file(&path).ok());
        let Some((disk_bytes, disk_sha256)) = on_disk else {
            continue;
        };
        if disk_bytes != *bytes || disk_sha256 != *sha256 {
            continue;
        }
        let images = by_hash.entry(job_hash.clone()).or_default();
        if images.iter().any(|image| image.file == *file) {
            continue;
        }
        images.push(VerifiedImage {
            key: key.clone(),
            path,
            file: file.clone(),
            bytes: *bytes,
            sha256: disk_sha256,
            width: *width,
            height: *height,
            prompt_id: prompt_id.clone(),
            run_id: run_id.clone(),
        });
    }
    by_hash
}

/// Per job key, its latest image (in ledger order) among `verified` (see
/// [`verified_images`]), with the job hash it was made for: the chapter's previous image of
/// each job, as a run that has not written any yet sees it.
pub fn latest_images<S: std::hash::BuildHasher>(
    verified: &HashMap<String, Vec<VerifiedImage>, S>,
    records: &[LedgerRecord],
) -> HashMap<String, (String, VerifiedImage)> {
    let by_file: HashMap<&str, (&str, &VerifiedImage)> = verified
        .iter()
        .flat_map(|(hash, images)| {
            images
                .iter()
                .map(move |i| (i.file.as_str(), (hash.as_str(), i)))
        })
        .collect();
    let mut latest = HashMap::new();
    for record in records {
        if let LedgerRecord::Image(entry) | LedgerRecord::ImageIntent(entry) = record
            && let Some((hash, image)) = by_file.get(entry.file.as_str())
            && image.key == entry.key
        {
            latest.insert(entry.key.clone(), ((*hash).to_owned(), (*image).clone()));
        }
    }
    latest
}

/// The chapter ledgers under an output root, as the planner sees earlier images (an
/// earlier page as an input image).
#[derive(Debug, Clone)]
pub struct LedgerImages {
    out_root: PathBuf,
}

impl LedgerImages {
    /// `out_root` is made absolute, so that an image's path reads from anywhere.
    pub fn new(out_root: &Path) -> LedgerImages {
        LedgerImages {
            out_root: std::path::absolute(out_root).unwrap_or_else(|_| out_root.to_owned()),
        }
    }
}

impl crate::plan::EarlierImages for LedgerImages {
    fn place(&self, chapter: u16) -> String {
        crate::output::ChapterDirs::new(&self.out_root, chapter)
            .root
            .display()
            .to_string()
    }

    fn images(&self, chapter: u16) -> Vec<crate::plan::EarlierImage> {
        let dirs = crate::output::ChapterDirs::new(&self.out_root, chapter);
        // Only read: a chapter never run has no ledger, and planning creates nothing.
        let records = if dirs.ledger().is_file() {
            read_records(&dirs.ledger()).unwrap_or_default()
        } else {
            Vec::new()
        };
        let verified = verified_images(&dirs.root, &records);
        let mut seen = std::collections::HashSet::new();
        let mut images = Vec::new();
        for record in &records {
            let (LedgerRecord::Image(entry) | LedgerRecord::ImageIntent(entry)) = record else {
                continue;
            };
            let Some(image) = verified.get(&entry.job_hash).and_then(|all| {
                all.iter()
                    .find(|i| i.file == entry.file && i.key == entry.key)
            }) else {
                continue;
            };
            // `raw/comfyui/ch03_p003_v2.png` -> page 3, version 2.
            let name = entry.file.rsplit('/').next().unwrap_or_default();
            let Some((page, version)) = name
                .strip_suffix(".png")
                .and_then(|stem| stem.rsplit_once("_v"))
                .and_then(|(head, version)| {
                    let page = head.rsplit_once("_p")?.1.parse().ok()?;
                    Some((page, version.parse().ok()?))
                })
            else {
                continue;
            };
            if seen.insert(entry.file.clone()) {
                images.push(crate::plan::EarlierImage {
                    key: entry.key.clone(),
                    page,
                    version,
                    path: image.path.clone(),
                });
            } else if let Some(at) = images.iter().position(|i| i.path == image.path) {
                // A later record of the same file: it is the latest again.
                let again = images.remove(at);
                images.push(again);
            }
        }
        images
    }
}

/// A submission whose run never recorded an end for it (the runner was killed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSubmission {
    pub job_hash: String,
    pub server: String,
    pub prompt_id: String,
}

/// Per job key, the latest submission that no `finished` or `image` record closed.
pub fn open_submissions(records: &[LedgerRecord]) -> HashMap<String, OpenSubmission> {
    let mut latest: HashMap<String, (String, OpenSubmission)> = HashMap::new();
    for record in records {
        match record {
            LedgerRecord::Submitted {
                run_id,
                key,
                job_hash,
                server,
                prompt_id,
                ..
            } => {
                let open = OpenSubmission {
                    job_hash: job_hash.clone(),
                    server: server.clone(),
                    prompt_id: prompt_id.clone(),
                };
                latest.insert(key.clone(), (run_id.clone(), open));
            }
            LedgerRecord::Finished { run_id, key, .. } => {
                if latest.get(key).is_some_and(|(run, _)| run == run_id) {
                    latest.remove(key);
                }
            }
            // The prompt's output reached the disk, or was about to: it is not re-attached.
            LedgerRecord::Image(ImageEntry { key, prompt_id, .. })
            | LedgerRecord::ImageIntent(ImageEntry { key, prompt_id, .. }) => {
                if latest
                    .get(key)
                    .is_some_and(|(_, open)| open.prompt_id == *prompt_id)
                {
                    latest.remove(key);
                }
            }
        }
    }
    latest
        .into_iter()
        .map(|(key, (_, open))| (key, open))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::open_append;
    use std::io::Write;

    fn entry(file: &str, sha256: &str, bytes: u64) -> ImageEntry {
        ImageEntry {
            v: LEDGER_VERSION,
            run_id: "r".into(),
            key: "ch01_p001_s1".into(),
            job_hash: "h1".into(),
            prompt_id: "p".into(),
            seed: 1,
            file: file.into(),
            bytes,
            sha256: sha256.into(),
            width: 8,
            height: 8,
        }
    }

    fn image(file: &str, sha256: &str, bytes: u64) -> LedgerRecord {
        LedgerRecord::Image(entry(file, sha256, bytes))
    }

    fn submitted(run: &str, key: &str, prompt: &str) -> LedgerRecord {
        LedgerRecord::Submitted {
            v: LEDGER_VERSION,
            run_id: run.into(),
            key: key.into(),
            job_hash: "h".into(),
            server: "http://s".into(),
            prompt_id: prompt.into(),
            attempt: 1,
        }
    }

    #[test]
    fn open_submissions_are_those_a_killed_run_left() {
        let finished = |run: &str, key: &str| LedgerRecord::Finished {
            v: LEDGER_VERSION,
            run_id: run.into(),
            key: key.into(),
            job_hash: "h".into(),
            status: "failed".into(),
        };
        let records = vec![
            submitted("r1", "a", "p1"),
            finished("r1", "a"),
            submitted("r1", "b", "p2"),
            submitted("r1", "c", "p3"),
            // Run r2 was killed after posting a and c again.
            submitted("r2", "a", "p4"),
            submitted("r2", "c", "p5"),
        ];
        let open = open_submissions(&records);
        let mut keys: Vec<(&str, &str)> = open
            .iter()
            .map(|(k, o)| (k.as_str(), o.prompt_id.as_str()))
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, [("a", "p4"), ("b", "p2"), ("c", "p5")]);
    }

    #[test]
    fn torn_last_line_is_skipped_and_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let (ledger, records) = Ledger::open(&path).unwrap();
        assert!(records.is_empty());
        ledger.append(&image("raw/a.png", "x", 1)).unwrap();
        drop(ledger);
        // A crash in the middle of a write.
        let mut file = open_append(&path).unwrap();
        file.write_all(br#"{"event":"image","v":1,"run_"#).unwrap();
        drop(file);
        let (ledger, records) = Ledger::open(&path).unwrap();
        assert_eq!(records.len(), 1);
        ledger.append(&image("raw/b.png", "y", 2)).unwrap();
        let records = read_records(&path).unwrap();
        assert_eq!(
            records.len(),
            2,
            "the record after the torn line must survive"
        );
    }

    #[test]
    fn only_images_that_exist_with_their_digest_are_verified() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("raw")).unwrap();
        std::fs::write(dir.path().join("raw/good.png"), b"good").unwrap();
        std::fs::write(dir.path().join("raw/changed.png"), b"changed!").unwrap();
        let (good_bytes, good_sha) = digest_file(&dir.path().join("raw/good.png")).unwrap();
        let good_sha = good_sha.to_string();
        let records = vec![
            image("raw/good.png", &good_sha, good_bytes),
            image("raw/changed.png", &good_sha, good_bytes),
            image("raw/missing.png", &good_sha, good_bytes),
            image("../raw/good.png", &good_sha, good_bytes),
            image("raw/good.png", &good_sha, good_bytes),
        ];
        let verified = verified_images(dir.path(), &records);
        let images = &verified["h1"];
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].file, "raw/good.png");
    }

    #[test]
    fn an_intent_counts_only_for_a_file_no_image_record_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("raw")).unwrap();
        for (name, body) in [("v1", "one"), ("v2", "two")] {
            std::fs::write(dir.path().join(format!("raw/{name}.png")), body).unwrap();
        }
        let (bytes, sha) = digest_file(&dir.path().join("raw/v1.png")).unwrap();
        let (bytes2, sha2) = digest_file(&dir.path().join("raw/v2.png")).unwrap();
        let lost = |run: &str, file: &str, sha: &str, bytes| {
            let mut e = entry(file, sha, bytes);
            e.run_id = run.into();
            LedgerRecord::ImageIntent(e)
        };
        let records = vec![
            // Runner b meant v1 for the same (identical) image; a's link made it.
            lost("b", "raw/v1.png", &sha.to_string(), bytes),
            lost("a", "raw/v1.png", &sha.to_string(), bytes),
            image("raw/v1.png", &sha.to_string(), bytes),
            // A crash between the link of v2 and its `image` record.
            lost("c", "raw/v2.png", &sha2.to_string(), bytes2),
        ];
        let verified = &verified_images(dir.path(), &records)["h1"];
        let found: Vec<(&str, &str)> = verified
            .iter()
            .map(|i| (i.file.as_str(), i.run_id.as_str()))
            .collect();
        assert_eq!(found, [("raw/v1.png", "r"), ("raw/v2.png", "c")]);
    }

    #[test]
    fn earlier_images_are_the_verified_ones_in_ledger_order_with_page_and_version() {
        use crate::plan::EarlierImages;
        let out = tempfile::tempdir().unwrap();
        let root = out.path().join("ch-01");
        let images = root.join("raw/comfyui");
        std::fs::create_dir_all(&images).unwrap();
        let mut records = Vec::new();
        for (version, body) in [(1, &b"first"[..]), (2, b"second"), (3, b"gone")] {
            let name = format!("ch01_p001_v{version}.png");
            std::fs::write(images.join(&name), body).unwrap();
            let (bytes, sha) = digest_file(&images.join(&name)).unwrap();
            records.push(image(
                &format!("raw/comfyui/{name}"),
                &sha.to_string(),
                bytes,
            ));
        }
        // Version 3 changed on disk since: not verified, so not an earlier image.
        std::fs::write(images.join("ch01_p001_v3.png"), b"changed").unwrap();
        let (ledger, _) = Ledger::open(&root.join("ledger.jsonl")).unwrap();
        for record in &records {
            ledger.append(record).unwrap();
        }
        let found = LedgerImages::new(out.path()).images(1);
        let seen: Vec<(u16, u32, &str)> = found
            .iter()
            .map(|i| (i.page, i.version, i.key.as_str()))
            .collect();
        assert_eq!(seen, [(1, 1, "ch01_p001_s1"), (1, 2, "ch01_p001_s1")]);
        assert_eq!(found[1].path, images.join("ch01_p001_v2.png"));
        assert!(found[1].path.is_absolute());
        // A chapter never run: nothing, and nothing created.
        assert!(LedgerImages::new(out.path()).images(2).is_empty());
        assert!(!out.path().join("ch-02").exists());
    }
}
