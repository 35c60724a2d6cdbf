//! The engine -> reporter contract. The engine never prints: it sends these events, and the
//! progress display, the run report and the job service consume them.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Final state of a job in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Succeeded,
    Skipped,
    Failed,
    TimedOut,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Succeeded,
        JobStatus::Skipped,
        JobStatus::Failed,
        JobStatus::TimedOut,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Succeeded => "succeeded",
            JobStatus::Skipped => "skipped",
            JobStatus::Failed => "failed",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_ok(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Skipped)
    }
}

/// What went wrong with a job, as data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// `POST /prompt` answered 400, or 200 with `node_errors`.
    Validation,
    /// A node raised (`execution_error`).
    NodeError,
    /// The server reported `execution_interrupted` (someone else interrupted it).
    Interrupted,
    /// The job ran past its timeout; it was interrupted or removed on the server.
    Timeout,
    /// The server was unreachable, answered 5xx, or lost the prompt, more often than allowed.
    Server,
    /// The server finished but its images could not be fetched or were not valid PNGs.
    Download,
    /// The prompt finished without any image on the output nodes.
    NoImages,
    /// Writing the image or the ledger failed locally (permissions, disk full).
    Io,
    /// The run was cancelled (Ctrl-C, SIGTERM) before the job finished.
    Cancelled,
    /// No server that is up (or may still come back) has every model, node class and option
    /// the job needs.
    Unroutable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_class: Option<String>,
    /// The server's own details (validation `node_errors`, traceback, ...).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl JobError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> JobError {
        JobError {
            kind,
            message: message.into(),
            node_id: None,
            node_class: None,
            details: serde_json::Value::Null,
        }
    }
}

/// One image a job produced (or, for a skipped job, already had).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Relative to the output root, `/`-separated: `ch-01/raw/comfyui/ch01_p001_v1.png`.
    pub path: String,
    pub bytes: u64,
    pub sha256: crate::digest::Sha256Digest,
    pub width: u32,
    pub height: u32,
}

/// Milliseconds since the run started (u32: 49 days; a report keeps one per job).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// The prompt was accepted by the server (`POST /prompt` answered).
    pub queued: Option<u32>,
    /// `execution_start`.
    pub started: Option<u32>,
    /// `executing` with `node: null`.
    pub executed: Option<u32>,
    /// Every image written under its final name.
    pub downloaded: Option<u32>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOutcome {
    pub key: String,
    pub status: JobStatus,
    pub server: Option<String>,
    pub prompt_id: Option<String>,
    pub attempts: u32,
    pub error: Option<JobError>,
    pub images: Vec<ImageRecord>,
    pub timings: Timings,
}

/// Connection state of a server, as the progress display shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerState {
    /// The socket is open and confirmed (the first time).
    Connected,
    /// The server cannot be reached (connection refused or reset, socket lost, no answer):
    /// it is tried again in `retry_in`, and jobs wait for it until `down_for` reaches
    /// `window` (the outage window), when it is taken out of rotation.
    Unreachable {
        reason: String,
        retry_in: Duration,
        down_for: Duration,
        window: Duration,
    },
    /// Reachable again (socket confirmed) after `down_for` unreachable.
    Back { down_for: Duration },
    /// Out of rotation for good: its outage outlasted the window, or it kept failing while
    /// answering (HTTP 500 on every prompt).
    Retired(String),
}

/// Which jobs one server can take: what its preflight found at the start of a run, or when
/// it joined the run later (it was down at the start). The report's `servers[].routing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRouting {
    pub state: RouteState,
    /// Jobs it was checked against (at the start: those to run; on joining: those waiting).
    pub checked: usize,
    /// The jobs it cannot take, grouped by why.
    pub cannot_take: Vec<Refusal>,
    /// Why it was skipped at the start (`state` `down`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where a server stood when its jobs were worked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteState {
    /// Up at the start and checked.
    Up,
    /// Unreachable at the start: skipped, tried again during the run (within the outage window).
    Down,
    /// Down at the start, reachable later: checked then and took jobs from there on.
    Joined,
}

/// Jobs a server cannot take, and why (a model, node class or option it lacks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub reason: String,
    pub jobs: Vec<String>,
}

impl ServerRouting {
    /// How many of the jobs checked it can take.
    pub fn can_take(&self) -> usize {
        self.checked - self.cannot_take.iter().map(|r| r.jobs.len()).sum::<usize>()
    }
}

/// Everything the engine tells its observers. `server` is an index into the run's servers.
#[derive(Debug, Clone)]
pub enum Event {
    RunStarted {
        total: usize,
        servers: Vec<String>,
    },
    Submitted {
        key: Arc<str>,
        server: usize,
        prompt_id: String,
        attempt: u32,
    },
    Started {
        key: Arc<str>,
        server: usize,
    },
    Progress {
        key: Arc<str>,
        server: usize,
        value: u64,
        max: u64,
    },
    /// A transient failure; the job goes back to the queue.
    Retrying {
        key: Arc<str>,
        server: usize,
        reason: String,
    },
    Server {
        server: usize,
        state: ServerState,
    },
    /// Which jobs a server can take (see [`ServerRouting`]).
    Routing {
        server: usize,
        routing: Box<ServerRouting>,
    },
    Finished(Box<JobOutcome>),
}
