//! The jobs journal: `<out>/serve/jobs.jsonl`, an append-only JSON-lines file written and
//! read like the chapter ledger (by [`crate::output::jsonl`]). A job's record is appended
//! when it is created and again when it ends; on start the last record of each job wins. A
//! line that cannot be read (a torn last line after a crash mid-write, a damaged one) is
//! copied to `jobs.jsonl.corrupt` and warned about before anything is rewritten; a line of a
//! newer format refuses the start. After replay the file is rewritten atomically with one
//! line per job, so it grows with the number of jobs, not with the number of restarts.
//! Compaction replaces the file, so only one service may use it: an OS lock on `jobs.lock`
//! (which shows the owner's pid) says who does.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::record::JobRecord;
use crate::output::jsonl::{self, BadLine, JsonLines};
use crate::output::lock::{LockError, OwnerLock};
use crate::output::{PathError, open_append};

/// Journal format version, written in every line. v2 added a request's `images` (input
/// images kept under `<out>/serve/inputs/`); v1 lines are read as they are (no images).
pub const JOURNAL_VERSION: u32 = 2;

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
struct Line<J> {
    v: u32,
    job: J,
}

impl<'a> Line<&'a JobRecord> {
    fn of(job: &'a JobRecord) -> Self {
        Line {
            v: JOURNAL_VERSION,
            job,
        }
    }
}

#[derive(Debug)]
pub struct Journal {
    lines: JsonLines,
    /// `jobs.lock`, held while we own the journal.
    lock: OwnerLock,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{} is in use by another job service ({}, see {})", journal.display(), holder(*pid), lock.display())]
    Locked {
        /// What the holder wrote into the lock file (for humans; the OS lock decides).
        pid: Option<u32>,
        journal: PathBuf,
        lock: PathBuf,
    },
    #[error("{} line {line} was written by a newer plasma-batch (journal format v{version}; this one reads v{JOURNAL_VERSION})", path.display())]
    Newer {
        path: PathBuf,
        line: usize,
        version: u64,
    },
    #[error(transparent)]
    Io(#[from] PathError),
}

/// An opened journal: the jobs in it, and what could not be read (kept aside).
#[derive(Debug)]
pub struct Opened {
    pub journal: Journal,
    pub jobs: Vec<JobRecord>,
    pub warnings: Vec<String>,
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_owned(),
    }
}

impl Journal {
    /// Read every job (in creation order), keep unreadable lines aside, compact the file,
    /// and open it for appending.
    pub fn open(path: &Path) -> Result<Opened, OpenError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| PathError::new("create directory", dir, e))?;
        }
        let lock_path = path.with_extension("lock");
        let lock = OwnerLock::take(&lock_path).map_err(|e| match e {
            LockError::Held { pid } => OpenError::Locked {
                pid,
                journal: path.to_owned(),
                lock: lock_path.clone(),
            },
            LockError::Io(e) => OpenError::Io(e),
        })?;
        let Replayed { jobs, unreadable } = read(path)?;
        let mut warnings = Vec::new();
        if !unreadable.is_empty() {
            // Compaction drops what it cannot read: keep it first, synced, or do not start.
            let mut aside = path.as_os_str().to_owned();
            aside.push(".corrupt");
            let aside = PathBuf::from(aside);
            let mut kept = Vec::new();
            for line in &unreadable {
                kept.extend_from_slice(&line.bytes);
                kept.push(b'\n');
            }
            let mut file = open_append(&aside)?;
            file.write_all(&kept)
                .and_then(|()| file.sync_data())
                .map_err(|e| PathError::new("append to", &aside, e))?;
            let lines: Vec<String> = unreadable.iter().map(|l| l.number.to_string()).collect();
            warnings.push(format!(
                "{}: {} line(s) could not be read (line {}; {}) and were left out; they are kept in {}",
                path.display(),
                unreadable.len(),
                lines.join(", "),
                unreadable_reason(&unreadable[0].bytes),
                aside.display()
            ));
        }
        jsonl::rewrite(path, jobs.iter().map(Line::of))?;
        // Opened after the compaction, which replaced the file.
        let journal = Journal {
            lines: JsonLines::open(path)?.refusing_replaced(),
            lock,
        };
        Ok(Opened {
            journal,
            jobs,
            warnings,
        })
    }

    /// Let another service use the journal (at shutdown; also when dropped).
    pub fn release(&self) {
        self.lock.release();
    }

    /// One line, one `write` on an `O_APPEND` file (not fsynced: see [`Journal::sync`]).
    /// Refused when the file we hold is no longer the one at our path: appending to a
    /// deleted file would lose the record while saying it was kept.
    pub fn append(&self, job: &JobRecord) -> Result<(), PathError> {
        self.lines.append(&Line::of(job))
    }

    /// `Err` when the journal file was deleted or replaced since it was opened.
    pub fn check(&self) -> Result<(), PathError> {
        self.lines.check()
    }

    /// To stable storage (at shutdown; a process crash loses nothing already appended).
    pub fn sync(&self) -> Result<(), PathError> {
        self.lines.sync()
    }
}

/// What a journal file holds.
struct Replayed {
    /// The latest record of every job, in the order the jobs were first recorded.
    jobs: Vec<JobRecord>,
    /// Lines that are not a record.
    unreadable: Vec<BadLine>,
}

fn read(path: &Path) -> Result<Replayed, OpenError> {
    let mut jobs: Vec<JobRecord> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let unreadable = jsonl::read_each(path, |Line::<JobRecord> { job, .. }| {
        if let Some(&at) = index.get(&job.job_id) {
            jobs[at] = job;
        } else {
            index.insert(job.job_id.clone(), jobs.len());
            jobs.push(job);
        }
    })?;
    if let Some((line, version)) = unreadable
        .iter()
        .find_map(|l| Some((l.number, newer_version(&l.bytes)?)))
    {
        return Err(OpenError::Newer {
            path: path.to_owned(),
            line,
            version,
        });
    }
    Ok(Replayed { jobs, unreadable })
}

/// The format version of a line a newer program wrote (whole JSON, `v` above ours).
fn newer_version(line: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Version {
        v: u64,
    }
    let Version { v } = serde_json::from_slice(line).ok()?;
    (v > u64::from(JOURNAL_VERSION)).then_some(v)
}

/// Why a line is not a record, for the warning.
fn unreadable_reason(line: &[u8]) -> String {
    match serde_json::from_slice::<Line<JobRecord>>(line) {
        Err(e) if e.is_eof() => "it ends early, as a write cut short by a crash does".to_owned(),
        Err(e) => format!("the first: {e}"),
        Ok(_) => "it is a record".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::record::Status;
    use crate::serve::request::parse;

    fn record(id: &str) -> JobRecord {
        let checked = parse(br#"{"prompt_text": "a", "seed": 1}"#).unwrap();
        JobRecord::new(
            id.to_owned(),
            format!("ch01_p001_j{id}"),
            checked.request,
            false,
        )
    }

    #[test]
    fn a_v1_line_is_read_as_a_job_without_images_and_compaction_writes_v2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve/jobs.jsonl");
        let mut line = serde_json::to_value(Line::of(&record("aaaaaaaa"))).unwrap();
        line["v"] = 1.into();
        assert!(line["job"]["request"].get("images").is_none());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{line}\n")).unwrap();
        let Opened { jobs, warnings, .. } = Journal::open(&path).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            jobs,
            [record("aaaaaaaa")].map(|r| JobRecord {
                timings: jobs[0].timings.clone(),
                ..r
            })
        );
        assert!(jobs[0].request.images.is_empty());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(r#"{"v":2,"#), "{text}");
    }

    #[test]
    fn the_last_line_of_a_job_wins_and_a_torn_line_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve/jobs.jsonl");
        let Opened { journal, jobs, .. } = Journal::open(&path).unwrap();
        assert!(jobs.is_empty());
        let (a, b) = (record("aaaaaaaa"), record("bbbbbbbb"));
        journal.append(&a).unwrap();
        journal.append(&b).unwrap();
        let mut done = a.clone();
        done.status = Status::Complete;
        journal.append(&done).unwrap();
        drop(journal);
        let mut file = open_append(&path).unwrap();
        file.write_all(br#"{"v":1,"job":{"jobId":"cc"#).unwrap();
        drop(file);
        let Opened {
            journal,
            jobs,
            warnings,
        } = Journal::open(&path).unwrap();
        assert!(warnings[0].contains("ends early"), "{warnings:?}");
        assert!(matches!(
            Journal::open(&path),
            Err(OpenError::Locked { .. })
        ));
        assert_eq!(jobs, [done, b]);
        // Compacted: one line per job, and appending goes on after it.
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        journal.append(&record("cccccccc")).unwrap();
        journal.release();
        assert_eq!(Journal::open(&path).unwrap().jobs.len(), 3);
    }

    #[test]
    fn a_damaged_line_is_kept_aside_and_a_newer_one_refuses_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve/jobs.jsonl");
        let opened = Journal::open(&path).unwrap();
        for id in ["aaaaaaaa", "bbbbbbbb", "cccccccc"] {
            opened.journal.append(&record(id)).unwrap();
        }
        drop(opened);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let damaged = lines[1].replacen("\"jobId\"", "\"jobId\u{0}", 1);
        std::fs::write(&path, format!("{}\n{damaged}\n{}\n", lines[0], lines[2])).unwrap();
        let opened = Journal::open(&path).unwrap();
        assert_eq!(opened.jobs.len(), 2);
        assert!(
            opened.warnings[0].contains("(line 2;"),
            "{:?}",
            opened.warnings
        );
        let aside = dir.path().join("serve/jobs.jsonl.corrupt");
        assert_eq!(
            std::fs::read_to_string(&aside).unwrap(),
            format!("{damaged}\n")
        );
        drop(opened);
        // Kept, not read again: the next start has nothing to warn about.
        assert!(Journal::open(&path).unwrap().warnings.is_empty());
        assert_eq!(
            std::fs::read_to_string(&aside).unwrap(),
            format!("{damaged}\n")
        );

        let newer = r#"{"v":3,"job":{"jobId":"dddddddd","whatever":true}}"#;
        let mut file = open_append(&path).unwrap();
        file.write_all(format!("{newer}\n").as_bytes()).unwrap();
        let before = std::fs::read(&path).unwrap();
        match Journal::open(&path) {
            Err(
                e @ OpenError::Newer {
                    line: 3,
                    version: 3,
                    ..
                },
            ) => {
                assert!(e.to_string().contains("newer plasma-batch"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), before, "nothing rewritten");
    }
}
