//! A job on its way through the engine ([`Task`]: attempts, failures counted by kind, where
//! it was posted, timings), how one attempt ended ([`Attempt`]), and a job's end ([`Done`]).
//!
//! Plain data and the outcomes built from it: it must not talk to servers, write files or
//! emit events (recording an end is `shared.rs`'s).

use std::sync::Arc;

use super::context::Reattach;
use crate::events::{ErrorKind, ImageRecord, JobError, JobOutcome, JobStatus, Timings};
use crate::plan::Job;

/// A job's end, with the job it belongs to.
pub(super) struct Done {
    pub(super) job: Arc<Job>,
    pub(super) outcome: JobOutcome,
}

/// A job and what happened to it so far.
pub(super) struct Task {
    pub(super) job: Arc<Job>,
    pub(super) key: Arc<str>,
    /// Attempts made so far (posted or tried to post).
    pub(super) attempts: u32,
    pub(super) transient_failures: u32,
    /// Transient failures caused by a server restart or socket loss while the prompt ran.
    pub(super) restart_losses: u32,
    /// The same while the prompt only waited in the server's queue.
    pub(super) queued_losses: u32,
    /// Attempts that found the server unreachable: they cost the job nothing (the server's
    /// outage window bounds them) but set the backoff.
    pub(super) unreachable: u32,
    /// The current attempt's prompt started running on the server.
    pub(super) running: bool,
    pub(super) deterministic_failures: u32,
    pub(super) server: Option<String>,
    pub(super) prompt_id: Option<String>,
    pub(super) timings: Timings,
    pub(super) reattach: Option<Reattach>,
}

impl Task {
    pub(super) fn new(job: Arc<Job>) -> Task {
        Task {
            reattach: None,
            key: Arc::from(job.key.as_str()),
            job,
            attempts: 0,
            transient_failures: 0,
            restart_losses: 0,
            queued_losses: 0,
            unreachable: 0,
            running: false,
            deterministic_failures: 0,
            server: None,
            prompt_id: None,
            timings: Timings::default(),
        }
    }

    pub(super) fn outcome(
        self,
        status: JobStatus,
        error: Option<JobError>,
        images: Vec<ImageRecord>,
    ) -> Done {
        let outcome = JobOutcome {
            key: self.job.key.clone(),
            status,
            server: self.server,
            prompt_id: self.prompt_id,
            attempts: self.attempts,
            error,
            images,
            timings: self.timings,
        };
        Done {
            job: self.job,
            outcome,
        }
    }

    /// The end of a job the run was cancelled before posting.
    pub(super) fn cancelled_before_submission(self) -> Done {
        let error = JobError::new(
            ErrorKind::Cancelled,
            "the run was cancelled before this job was submitted",
        );
        self.fail(JobStatus::Cancelled, error)
    }

    pub(super) fn fail(self, status: JobStatus, error: JobError) -> Done {
        self.outcome(status, Some(error), Vec::new())
    }
}

/// How one attempt ended.
pub(super) enum Attempt {
    Succeeded(Vec<ImageRecord>),
    /// Worth another attempt (maybe elsewhere).
    Transient(String),
    /// The server could not be reached: the job waits for a server, at no cost to it.
    Unreachable(String),
    /// The job failed for a reason that retrying will not fix.
    Failed(JobStatus, JobError),
}
