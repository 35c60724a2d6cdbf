//! A job as the API shows it and the journal stores it: [`JobRecord`] and its parts. Plain
//! data, shared by the job table (which keeps records current) and the journal (which keeps
//! them on disk).

use serde::{Deserialize, Serialize};

use super::request::JobRequest;
use crate::events::{JobError, JobStatus};
use crate::time::rfc3339_now;

/// Where a job is, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// In our queue, or posted and waiting in ComfyUI's (then `promptId` is set).
    Queued,
    /// ComfyUI started executing it.
    Running,
    Complete,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Complete | Status::Failed | Status::Cancelled)
    }

    pub(crate) fn from_outcome(status: JobStatus) -> Status {
        match status {
            JobStatus::Succeeded | JobStatus::Skipped => Status::Complete,
            JobStatus::Failed | JobStatus::TimedOut => Status::Failed,
            JobStatus::Cancelled => Status::Cancelled,
        }
    }
}

/// Wall-clock times (RFC 3339, UTC) of a job's steps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobTimings {
    pub created_at: String,
    /// Last posted to a ComfyUI server.
    pub submitted_at: Option<String>,
    /// `execution_start` on the server.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// Sampler progress of a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub value: u64,
    pub max: u64,
}

/// A job as `GET /jobs/{id}` shows it and the journal stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub job_id: String,
    pub status: Status,
    /// The engine's job key, `ch01_p003_j1a2b3c4d`, as in the chapter ledger.
    pub key: String,
    pub chapter: u16,
    pub page: u16,
    pub seed: u64,
    /// The request gave no seed: this one was drawn once, when the job was created.
    pub seed_drawn: bool,
    pub prompt_id: Option<String>,
    pub server: Option<String>,
    pub attempts: u32,
    pub progress: Option<Progress>,
    /// Relative to the output root: `ch-01/raw/comfyui/ch01_p003_v2.png`.
    pub image_path: Option<String>,
    /// `ch01_p003_v2.png`
    pub image_file: Option<String>,
    pub error: Option<JobError>,
    pub timings: JobTimings,
    /// The checked request with every default applied; `POST /jobs` accepts it back.
    pub request: JobRequest,
}

impl JobRecord {
    pub fn new(job_id: String, key: String, request: JobRequest, seed_drawn: bool) -> JobRecord {
        JobRecord {
            job_id,
            status: Status::Queued,
            key,
            chapter: request.chapter,
            page: request.page,
            seed: request.seed,
            seed_drawn,
            prompt_id: None,
            server: None,
            attempts: 0,
            progress: None,
            image_path: None,
            image_file: None,
            error: None,
            timings: JobTimings {
                created_at: rfc3339_now(),
                ..JobTimings::default()
            },
            request,
        }
    }
}
