//! The state every task of one engine shares ([`Shared`]): config, run context, queue,
//! servers, semaphores, per-job cancel switches, and recording a job's end (ledger
//! `finished` record, `Finished` event, stop after a local write failure).
//!
//! Owns the one place a job ends and the backoff. Must not post, download or read sockets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use super::config::EngineConfig;
use super::context::RunContext;
use super::queue::JobQueue;
use super::server::ServerConn;
use super::task::Done;
use crate::events::{ErrorKind, Event, JobError, JobOutcome, JobStatus, ServerState};
use crate::ledger::{LEDGER_VERSION, LedgerRecord};

pub(super) struct Shared {
    pub(super) config: EngineConfig,
    pub(super) ctx: Arc<RunContext>,
    pub(super) queue: JobQueue,
    pub(super) outcomes: Mutex<Vec<JobOutcome>>,
    pub(super) keep_outcomes: bool,
    /// Per-job cancel switches of attempts in flight.
    pub(super) job_cancels: Mutex<HashMap<String, watch::Sender<bool>>>,
    pub(super) downloads: Arc<Semaphore>,
    /// Attempts under way (posted, or finished and not yet written), over all servers.
    pub(super) unwritten: Arc<Semaphore>,
    pub(super) servers: Vec<Arc<ServerConn>>,
    /// Why the queue was closed to new work (a local write failure), if it was.
    pub(super) stopped: std::sync::OnceLock<String>,
    /// The input images this run put on each server (`comfy::upload`).
    pub(super) uploads: crate::comfy::Uploads,
}

impl Shared {
    pub(super) fn finish(&self, done: Done) {
        let local_failure = done
            .outcome
            .error
            .as_ref()
            .filter(|e| e.kind == ErrorKind::Io)
            .map(|e| e.message.clone());
        self.record(done);
        // A local write failure (disk full, permissions) will hit every job: stop posting
        // work the GPU would render for nothing, and say why.
        if let Some(message) = local_failure
            && self.config.stop_on_local_failure
        {
            let reason = format!("not started after a local write failure: {message}");
            for task in self.queue.close() {
                let error = JobError::new(ErrorKind::Io, reason.clone());
                self.record(task.fail(JobStatus::Failed, error));
            }
            let _ = self.stopped.set(reason);
        }
    }

    pub(super) fn record(&self, done: Done) {
        let Done { job, outcome } = done;
        for conn in &self.servers {
            conn.forget_verdict(&job.key);
        }
        if let Ok(output) = self.ctx.outputs.chapter(job.chapter) {
            let _ = output.ledger.append(&LedgerRecord::Finished {
                v: LEDGER_VERSION,
                run_id: self.ctx.run_id.clone(),
                key: outcome.key.clone(),
                job_hash: job.hash.to_string(),
                status: outcome.status.as_str().to_owned(),
            });
        }
        if self.keep_outcomes {
            self.ctx.emit(Event::Finished(Box::new(outcome.clone())));
            self.outcomes
                .lock()
                .expect("outcomes poisoned")
                .push(outcome);
        } else {
            self.ctx.emit(Event::Finished(Box::new(outcome)));
        }
        self.queue.finish_one();
    }

    /// Take `conn` out of rotation for good (once), saying why.
    pub(super) fn retire(&self, conn: &ServerConn, reason: String) {
        if conn.retire(reason.clone()) {
            self.emit_server(conn, ServerState::Retired(reason));
            // Jobs only it could take have no server now: the other loops look again.
            self.queue.poke();
        }
    }

    pub(super) fn emit_server(&self, conn: &ServerConn, state: ServerState) {
        self.ctx.emit(Event::Server {
            server: conn.index,
            state,
        });
    }

    /// Whether a server other than `index` is in rotation with its socket up, so a job
    /// stuck on `index` can go there.
    pub(super) fn other_server_up(&self, index: usize) -> bool {
        self.servers
            .iter()
            .any(|c| c.index != index && !c.is_retired() && *c.up.borrow())
    }

    /// The error of a job left when every server is out of rotation: each server and why,
    /// and what to do.
    pub(super) fn no_server_left(&self) -> String {
        let why: Vec<String> = self
            .servers
            .iter()
            .filter_map(|c| Some(format!("{} {}", c.client.url(), c.retired_reason()?)))
            .collect();
        format!(
            "no server is left to run this job: {}; bring a server back and run again \
             (jobs already rendered are skipped), or wait longer for one with --outage-window SECONDS \
             ([comfy] outage_window)",
            why.join("; ")
        )
    }

    /// Exponential backoff with jitter for the n-th retry (1-based).
    pub(super) fn backoff(&self, retry: u32) -> Duration {
        let base = self
            .config
            .backoff
            .saturating_mul(1 << retry.saturating_sub(1).min(6));
        base.min(Duration::from_secs(10)).mul_f64(0.5 + jitter())
    }
}

/// A number in [0, 1) for backoff jitter (no need for a cryptographic source).
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mixed = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    mixed as f64 / (1u64 << 53) as f64
}
