//! The job table: every job the service knows, driven by the engine's events (keyed by
//! `Job.key`) and persisted through the [`Journal`]. It never talks to the engine or the
//! network; it says what the caller should do (cancel again, submit).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::journal::Journal;
use super::record::{JobRecord, Progress, Status};
use crate::events::{Event, JobError, JobOutcome, JobStatus};
use crate::output::PathError;
use crate::time::rfc3339_now as now;

/// Why a job could not be added.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("the queue is full: {active} jobs are queued or running (--max-queue {max})")]
    Full { active: usize, max: usize },
    #[error("the job key {0} is taken")]
    KeyTaken(String),
    #[error(transparent)]
    Journal(#[from] PathError),
}

/// What `DELETE /jobs/{id}` found.
pub enum CancelCheck {
    Unknown,
    /// Already over; nothing to cancel.
    Terminal(Box<JobRecord>),
    /// Marked as cancel-requested: cancel this key in the engine.
    Pending(String),
}

struct Entry {
    record: JobRecord,
    /// `DELETE` asked for it (a cancel during shutdown without this is not the client's).
    cancel_requested: bool,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Entry>,
    /// Job ids in creation order.
    order: Vec<String>,
    by_key: HashMap<String, String>,
    shutting_down: bool,
}

impl Inner {
    /// Index a job by id, creation order and key.
    fn add(&mut self, record: JobRecord) {
        self.by_key
            .insert(record.key.clone(), record.job_id.clone());
        self.order.push(record.job_id.clone());
        self.jobs.insert(
            record.job_id.clone(),
            Entry {
                record,
                cancel_requested: false,
            },
        );
    }
}

pub struct Table {
    inner: Mutex<Inner>,
    journal: Journal,
    /// Server URLs by the engine's index.
    servers: Vec<String>,
    changed: watch::Sender<u64>,
}

impl Table {
    /// A table over the replayed journal records (which must already be in their final
    /// in-memory state: jobs to run again as `queued`).
    pub fn new(journal: Journal, records: Vec<JobRecord>, servers: Vec<String>) -> Table {
        let mut inner = Inner::default();
        for record in records {
            inner.add(record);
        }
        Table {
            inner: Mutex::new(inner),
            journal,
            servers,
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("job table poisoned")
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Add a new job (journaled first, so a 202 is never lost), unless `max` jobs are
    /// active already.
    pub fn insert(&self, record: JobRecord, max: usize) -> Result<(), InsertError> {
        let mut inner = self.lock();
        let active = inner
            .jobs
            .values()
            .filter(|e| !e.record.status.is_terminal())
            .count();
        if active >= max {
            return Err(InsertError::Full { active, max });
        }
        if inner.by_key.contains_key(&record.key) {
            return Err(InsertError::KeyTaken(record.key));
        }
        self.journal.append(&record)?;
        inner.add(record);
        drop(inner);
        self.bump();
        Ok(())
    }

    /// Mark a job that could not be handed to the engine as failed.
    pub fn fail(&self, job_id: &str, error: JobError) {
        let mut inner = self.lock();
        if let Some(entry) = inner.jobs.get_mut(job_id) {
            entry.record.status = Status::Failed;
            entry.record.error = Some(error);
            entry.record.timings.finished_at = Some(now());
            let _ = self.journal.append(&entry.record);
        }
        drop(inner);
        self.bump();
    }

    /// Mark the job with this key complete with an image the ledger vouches for (written by
    /// a process killed before it journaled the end). `image_path` is relative to the
    /// output root, as the engine reports it.
    pub fn complete_from_ledger(&self, key: &str, image_path: &str, prompt_id: &str) {
        let mut inner = self.lock();
        let Some(id) = inner.by_key.get(key).cloned() else {
            return;
        };
        if let Some(entry) = inner.jobs.get_mut(&id) {
            let record = &mut entry.record;
            record.status = Status::Complete;
            record.prompt_id = Some(prompt_id.to_owned());
            record.error = None;
            record.image_path = Some(image_path.to_owned());
            record.image_file = image_path.rsplit('/').next().map(str::to_owned);
            record.timings.finished_at = Some(now());
            if let Err(error) = self.journal.append(record) {
                tracing::warn!(%error, "failed to journal a recovered job");
            }
        }
        drop(inner);
        self.bump();
    }

    pub fn get(&self, job_id: &str) -> Option<JobRecord> {
        self.lock().jobs.get(job_id).map(|e| e.record.clone())
    }

    /// Newest first: `(page, total)`.
    pub fn list(
        &self,
        offset: usize,
        limit: usize,
        status: Option<Status>,
    ) -> (Vec<JobRecord>, usize) {
        let inner = self.lock();
        let matching: Vec<&JobRecord> = inner
            .order
            .iter()
            .rev()
            .filter_map(|id| inner.jobs.get(id))
            .map(|e| &e.record)
            .filter(|r| status.is_none_or(|s| r.status == s))
            .collect();
        let total = matching.len();
        let page = matching
            .into_iter()
            .skip(offset)
            .take(limit)
            .cloned()
            .collect();
        (page, total)
    }

    pub fn request_cancel(&self, job_id: &str) -> CancelCheck {
        let mut inner = self.lock();
        match inner.jobs.get_mut(job_id) {
            None => CancelCheck::Unknown,
            Some(entry) if entry.record.status.is_terminal() => {
                CancelCheck::Terminal(Box::new(entry.record.clone()))
            }
            Some(entry) => {
                entry.cancel_requested = true;
                CancelCheck::Pending(entry.record.key.clone())
            }
        }
    }

    /// Wait until the job is over or `timeout` passed; its record then.
    pub async fn wait_terminal(&self, job_id: &str, timeout: Duration) -> Option<JobRecord> {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let record = self.get(job_id)?;
            if record.status.is_terminal() {
                return Some(record);
            }
            tokio::select! {
                result = changed.changed() => if result.is_err() { return Some(record) },
                () = tokio::time::sleep_until(deadline) => return Some(record),
            }
        }
    }

    /// From now on, an engine-side cancel nobody asked for (shutdown) leaves the job queued
    /// in the journal, so the next start runs it.
    pub fn begin_shutdown(&self) {
        self.lock().shutting_down = true;
    }

    /// Wait until no job is on a server (running, or posted and waiting there).
    pub async fn wait_none_posted(&self) {
        let mut changed = self.changed.subscribe();
        loop {
            let posted = self.lock().jobs.values().any(|e| {
                e.record.status == Status::Running
                    || (e.record.status == Status::Queued && e.record.prompt_id.is_some())
            });
            if !posted || changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// Keys of the jobs not yet posted to any server.
    pub fn unposted_keys(&self) -> Vec<String> {
        self.lock()
            .jobs
            .values()
            .filter(|e| e.record.status == Status::Queued && e.record.prompt_id.is_none())
            .map(|e| e.record.key.clone())
            .collect()
    }

    /// Apply one engine event. Returns a key to cancel (again) in the engine: a job whose
    /// `DELETE` came before it was registered as in flight.
    pub fn apply(&self, event: Event) -> Option<String> {
        let mut inner = self.lock();
        let shutting_down = inner.shutting_down;
        let key = match &event {
            Event::Submitted { key, .. }
            | Event::Started { key, .. }
            | Event::Progress { key, .. }
            | Event::Retrying { key, .. } => key.to_string(),
            Event::Finished(outcome) => outcome.key.clone(),
            Event::RunStarted { .. } | Event::Server { .. } | Event::Routing { .. } => return None,
        };
        let id = inner.by_key.get(&key)?.clone();
        let entry = inner.jobs.get_mut(&id)?;
        let record = &mut entry.record;
        let mut again = None;
        match event {
            Event::Submitted {
                server,
                prompt_id,
                attempt,
                ..
            } => {
                record.prompt_id = Some(prompt_id);
                record.server = self.servers.get(server).cloned();
                record.attempts = attempt;
                record.timings.submitted_at = Some(now());
                if entry.cancel_requested {
                    again = Some(key);
                }
            }
            Event::Started { .. } => {
                record.status = Status::Running;
                record.timings.started_at = Some(now());
            }
            Event::Progress { value, max, .. } => {
                record.progress = Some(Progress { value, max });
            }
            Event::Retrying { .. } => {
                // Back in our queue: not on any server until the next `Submitted`.
                record.status = Status::Queued;
                record.prompt_id = None;
                record.progress = None;
            }
            Event::Finished(outcome) => {
                if shutting_down
                    && outcome.status == JobStatus::Cancelled
                    && !entry.cancel_requested
                {
                    // Interrupted by the shutdown: run again after the restart.
                    record.status = Status::Queued;
                    record.prompt_id = None;
                    record.progress = None;
                } else {
                    finish(record, &outcome);
                    if let Err(error) = self.journal.append(record) {
                        tracing::warn!(%error, "failed to journal a finished job");
                    }
                }
            }
            Event::RunStarted { .. } | Event::Server { .. } | Event::Routing { .. } => {}
        }
        drop(inner);
        self.bump();
        again
    }

    /// `Err` when the journal cannot take records any more (its file or folder was deleted).
    pub fn journal_usable(&self) -> Result<(), PathError> {
        self.journal.check()
    }

    /// fsync the journal and let the next service have it.
    pub fn close(&self) -> Result<(), PathError> {
        let synced = self.journal.sync();
        self.journal.release();
        synced
    }
}

fn finish(record: &mut JobRecord, outcome: &JobOutcome) {
    record.status = Status::from_outcome(outcome.status);
    record.prompt_id = outcome.prompt_id.clone().or(record.prompt_id.take());
    record.server = outcome.server.clone().or(record.server.take());
    record.attempts = outcome.attempts.max(record.attempts);
    record.error.clone_from(&outcome.error);
    if let Some(image) = outcome.images.first() {
        record.image_path = Some(image.path.clone());
        record.image_file = image.path.rsplit('/').next().map(str::to_owned);
    }
    record.timings.finished_at = Some(now());
}
