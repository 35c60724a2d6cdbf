//! Append-only JSON-lines files: one writer and one reader for the chapter ledger
//! (`<out>/ch-XX/ledger.jsonl`) and the job service's journal (`<out>/serve/jobs.jsonl`).
//!
//! Writing: a record is one line, appended with one `write` on an `O_APPEND` file, so the
//! records of concurrent writers (runners sharing a chapter) never interleave and a `kill -9`
//! loses at most the line being written. Lines are not fsynced one by one: a process crash
//! loses nothing already appended, and [`JsonLines::sync`] (at the end of a run, at shutdown)
//! covers a power loss. A torn last line left by a crash is fenced off with a newline when the
//! file is opened, so the next record starts on a line of its own.
//!
//! Reading: every line that is a record, in order; blank lines are passed over; every other
//! line is handed back to the caller with its number and bytes ([`BadLine`]), because each
//! file has its own policy: the ledger skips them (a torn write, a future format), the journal
//! keeps them aside in `jobs.jsonl.corrupt` and refuses a newer format.
//!
//! Compaction: [`rewrite`] replaces the whole file atomically (temp file, fsync, rename); a
//! writer opened before then appends to the replaced file, so it is opened again after.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::PathError;
use super::files::{open_append, write_atomic_with};

/// An append-only JSON-lines file, open for appending; shared by every task that writes it.
#[derive(Debug)]
pub struct JsonLines {
    path: PathBuf,
    file: Mutex<File>,
    /// Refuse to append once the file at `path` is no longer the one held.
    guard_replaced: bool,
}

impl JsonLines {
    /// Open (or create) the file for appending, fencing off a torn last line.
    pub fn open(path: &Path) -> Result<JsonLines, PathError> {
        let mut file = open_append(path)?;
        let len = file
            .metadata()
            .map_err(|e| PathError::new("read", path, e))?
            .len();
        if len > 0 {
            let mut last = [0u8; 1];
            let mut reader = File::open(path).map_err(|e| PathError::new("open", path, e))?;
            reader
                .seek(SeekFrom::Start(len - 1))
                .and_then(|_| reader.read_exact(&mut last))
                .map_err(|e| PathError::new("read", path, e))?;
            if last[0] != b'\n' {
                file.write_all(b"\n")
                    .map_err(|e| PathError::new("append to", path, e))?;
            }
        }
        Ok(JsonLines {
            path: path.to_owned(),
            file: Mutex::new(file),
            guard_replaced: false,
        })
    }

    /// From now on, refuse every append once the file was deleted or replaced (see
    /// [`JsonLines::check`]): appending to a deleted file would lose the record while saying
    /// it was kept.
    #[must_use]
    pub fn refusing_replaced(mut self) -> JsonLines {
        self.guard_replaced = true;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record as one line, one `write` (not fsynced; see [`JsonLines::sync`]).
    pub fn append(&self, record: &impl Serialize) -> Result<(), PathError> {
        let mut line = serde_json::to_vec(record).expect("JSON-lines records serialize");
        line.push(b'\n');
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.guard_replaced {
            self.still_ours(&file)?;
        }
        file.write_all(&line)
            .map_err(|e| PathError::new("append to", &self.path, e))
    }

    /// `Err` when the file was deleted or replaced since it was opened.
    pub fn check(&self) -> Result<(), PathError> {
        self.still_ours(
            &self
                .file
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn still_ours(&self, file: &File) -> Result<(), PathError> {
        let gone = |what: &str| {
            PathError::new(
                "append to",
                &self.path,
                std::io::Error::new(std::io::ErrorKind::NotFound, what.to_owned()),
            )
        };
        let on_disk = std::fs::metadata(&self.path)
            .map_err(|_| gone("it was deleted (with the output folder?) while the service ran"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let held = file
                .metadata()
                .map_err(|e| PathError::new("read", &self.path, e))?;
            if (held.dev(), held.ino()) != (on_disk.dev(), on_disk.ino()) {
                return Err(gone(
                    "it was replaced by another file while the service ran",
                ));
            }
        }
        #[cfg(not(unix))]
        let _ = (file, on_disk);
        Ok(())
    }

    /// Flush what was appended to stable storage.
    pub fn sync(&self) -> Result<(), PathError> {
        let file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        file.sync_data()
            .map_err(|e| PathError::new("fsync", &self.path, e))
    }
}

/// A line that is not a record: a write torn by a crash, a damaged line, another format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based.
    pub number: usize,
    /// The line without its newline.
    pub bytes: Vec<u8>,
    /// The last line, with no newline after it: most likely a write cut short.
    pub torn: bool,
}

/// Read every record of the file at `path` in order, handing each to `record`; the lines that
/// are not records are returned. A missing file has no lines.
pub fn read_each<T: DeserializeOwned>(
    path: &Path,
    mut record: impl FnMut(T),
) -> Result<Vec<BadLine>, PathError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PathError::new("open", path, e)),
    };
    let mut bad = Vec::new();
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| PathError::new("read", path, e))?;
        if read == 0 {
            break;
        }
        let torn = line.last() != Some(&b'\n');
        if !torn {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<T>(&line) {
            Ok(r) => record(r),
            Err(_) => bad.push(BadLine {
                number,
                bytes: line.clone(),
                torn,
            }),
        }
    }
    Ok(bad)
}

/// Every record of the file at `path`, and the lines that are not records.
pub fn read_all<T: DeserializeOwned>(path: &Path) -> Result<(Vec<T>, Vec<BadLine>), PathError> {
    let mut records = Vec::new();
    let bad = read_each(path, |r| records.push(r))?;
    Ok((records, bad))
}

/// Replace the file at `path` with exactly `records`, one a line, atomically: a reader (or a
/// crash) sees the old file or the new one, never a mix.
pub fn rewrite<T: Serialize>(
    path: &Path,
    records: impl IntoIterator<Item = T>,
) -> Result<(), PathError> {
    write_atomic_with(path, |out| {
        for record in records {
            serde_json::to_writer(&mut *out, &record)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Rec {
        n: u32,
    }

    #[test]
    fn a_torn_last_line_is_reported_and_fenced_off_and_the_next_record_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let log = JsonLines::open(&path).unwrap();
        log.append(&Rec { n: 1 }).unwrap();
        drop(log);
        // A crash in the middle of a write.
        open_append(&path).unwrap().write_all(br#"{"n":"#).unwrap();
        let (records, bad) = read_all::<Rec>(&path).unwrap();
        assert_eq!(records, [Rec { n: 1 }]);
        assert_eq!(
            bad,
            [BadLine {
                number: 2,
                bytes: br#"{"n":"#.to_vec(),
                torn: true
            }]
        );
        let log = JsonLines::open(&path).unwrap();
        log.append(&Rec { n: 2 }).unwrap();
        let (records, bad) = read_all::<Rec>(&path).unwrap();
        assert_eq!(records, [Rec { n: 1 }, Rec { n: 2 }]);
        assert_eq!(
            (bad.len(), bad[0].torn),
            (1, false),
            "fenced: a whole line now"
        );
    }

    #[test]
    fn damaged_middle_lines_are_reported_with_their_number_and_blank_lines_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        std::fs::write(&path, b"{\"n\":1}\n\n{\"n\":\0}\n  \n{\"n\":3}\n").unwrap();
        let (records, bad) = read_all::<Rec>(&path).unwrap();
        assert_eq!(records, [Rec { n: 1 }, Rec { n: 3 }]);
        assert_eq!(
            bad,
            [BadLine {
                number: 3,
                bytes: b"{\"n\":\0}".to_vec(),
                torn: false
            }]
        );
        let (none, bad) = read_all::<Rec>(&dir.path().join("missing.jsonl")).unwrap();
        assert!(none.is_empty() && bad.is_empty());
    }

    #[test]
    fn rewrite_replaces_the_file_and_a_guarded_writer_refuses_the_replaced_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let log = JsonLines::open(&path).unwrap().refusing_replaced();
        for n in 1..=3 {
            log.append(&Rec { n }).unwrap();
        }
        log.check().unwrap();
        rewrite(&path, [Rec { n: 3 }]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":3}\n");
        assert!(log.check().is_err());
        let err = log.append(&Rec { n: 4 }).unwrap_err();
        assert!(err.to_string().contains("replaced"), "{err}");
        assert_eq!(read_all::<Rec>(&path).unwrap().0, [Rec { n: 3 }]);
        // A writer opened again appends after the compacted lines.
        let log = JsonLines::open(&path).unwrap().refusing_replaced();
        log.append(&Rec { n: 4 }).unwrap();
        assert_eq!(
            read_all::<Rec>(&path).unwrap().0,
            [Rec { n: 3 }, Rec { n: 4 }]
        );
        std::fs::remove_file(&path).unwrap();
        assert!(log.append(&Rec { n: 5 }).is_err(), "deleted: refused");
        // An unguarded writer does not look.
        let plain = JsonLines::open(&dir.path().join("other.jsonl")).unwrap();
        std::fs::remove_file(plain.path()).unwrap();
        plain.append(&Rec { n: 1 }).unwrap();
    }
}
