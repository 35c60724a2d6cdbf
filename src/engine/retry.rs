//! After an attempt: a success or a final failure ends the job; a deterministic failure is
//! retried once if asked; a server that could not be reached costs the job nothing (it
//! waits in our queue, within the outage window); a transient failure uses up a retry,
//! except a prompt lost to a server restart, which is bounded separately. Servers that keep
//! failing are taken out of rotation.
//!
//! Owns these decisions and the wait before a retry. Must not post or wait on prompts
//! itself (that is `attempt.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, watch};

use super::attempt::attempt;
use super::failure::seconds;
use super::server::ServerConn;
use super::shared::Shared;
use super::task::{Attempt, Task};
use crate::events::{ErrorKind, Event, JobError, JobStatus};

/// Attempts of one job that a server restart may cost while the job was running there,
/// without using up its `transient_retries`: losing a prompt to a restart is not the job's
/// fault, but a prompt that brings its server down every time must not be posted forever.
const MAX_RESTART_LOSSES: u32 = 5;

/// Prompts that were only waiting on a server when it restarted (never started there), per
/// job, before such losses count as transient failures: they cannot be what brought it down.
const MAX_QUEUED_LOSSES: u32 = 20;

/// Run attempts of one job on this server until it succeeds, fails, or must move on.
/// `permit` is the server slot (released when the server is done with the prompt),
/// `_unwritten` the place among attempts under way (released when this one ends).
#[allow(
    clippy::too_many_lines,
    reason = "one protocol exchange in order; its select! arms share the exchange's state"
)]
pub(super) async fn run_task(
    shared: Arc<Shared>,
    conn: Arc<ServerConn>,
    mut task: Task,
    permit: OwnedSemaphorePermit,
    _unwritten: OwnedSemaphorePermit,
) {
    // A slot freed by a cancelled attempt can hand out a job before the canceller has
    // closed the queue: never post after the run was cancelled.
    if shared.ctx.cancelled() {
        drop(permit);
        return shared.finish(task.cancelled_before_submission());
    }
    task.attempts += 1;
    task.running = false;
    task.server = Some(conn.client.url().to_owned());
    let (cancel_tx, job_cancel) = watch::channel(false);
    shared
        .job_cancels
        .lock()
        .expect("cancels poisoned")
        .insert(task.job.key.clone(), cancel_tx);
    let epoch = conn.epoch.load(Ordering::SeqCst);
    let attempt = attempt(&shared, &conn, &mut task, permit, job_cancel).await;
    shared
        .job_cancels
        .lock()
        .expect("cancels poisoned")
        .remove(&task.job.key);
    if shared.ctx.cancelled() && !matches!(attempt, Attempt::Succeeded(_)) {
        let error = JobError::new(
            ErrorKind::Cancelled,
            "the run was cancelled while this job was running",
        );
        return shared.finish(task.fail(JobStatus::Cancelled, error));
    }
    match attempt {
        Attempt::Succeeded(images) => {
            conn.consecutive_failures.store(0, Ordering::SeqCst);
            shared.finish(task.outcome(JobStatus::Succeeded, None, images));
        }
        Attempt::Failed(status, error) => {
            let retry = shared.config.retry_failed
                && task.deterministic_failures == 0
                && !matches!(error.kind, ErrorKind::Io | ErrorKind::Cancelled);
            if retry {
                task.deterministic_failures += 1;
                shared.ctx.emit(Event::Retrying {
                    key: task.key.clone(),
                    server: conn.index,
                    reason: error.message.clone(),
                });
                shared.queue.requeue(task);
            } else {
                shared.finish(task.fail(status, error));
            }
        }
        Attempt::Unreachable(reason) => {
            // The server is away (restarting, rebooting, cut off): not the job's fault, and
            // not a failure of a server that answers. The job waits in our queue for a
            // server that is up; the outage window bounds the wait.
            task.unreachable += 1;
            let down_for = conn.unreachable();
            if down_for >= shared.config.outage_window {
                shared.retire(
                    &conn,
                    format!(
                        "was unreachable for {} (outage window {}): {reason}",
                        seconds(down_for),
                        seconds(shared.config.outage_window)
                    ),
                );
            }
            shared.ctx.emit(Event::Retrying {
                key: task.key.clone(),
                server: conn.index,
                reason: format!("{reason}; the job waits for a server"),
            });
            // With the socket down, nothing is posted there until it is back; while it still
            // looks up (it has not noticed yet, or only HTTP fails), back off.
            if *conn.up.borrow() {
                pause(&shared, shared.backoff(task.unreachable)).await;
            }
            shared.queue.requeue(task);
        }
        Attempt::Transient(reason) => {
            // The socket was lost while this attempt ran (a drop or a restart): every prompt
            // in flight fails at once, through no fault of its job. Such a loss does not use
            // up the job's retries (up to MAX_RESTART_LOSSES if its prompt was running, which
            // might be what brought the server down; MAX_QUEUED_LOSSES if it only waited
            // there), and counts once per socket loss towards retiring the server, not once
            // per prompt: in_flight prompts lost to one restart would otherwise retire a
            // server that is back and healthy.
            let now = conn.epoch.load(Ordering::SeqCst);
            let restart = now != epoch
                && if task.running {
                    task.restart_losses < MAX_RESTART_LOSSES
                } else {
                    task.queued_losses < MAX_QUEUED_LOSSES
                };
            let counts_for_server = if restart {
                if task.running {
                    task.restart_losses += 1;
                } else {
                    task.queued_losses += 1;
                }
                conn.counted_epoch.swap(now, Ordering::SeqCst) != now
            } else {
                task.transient_failures += 1;
                true
            };
            if task.transient_failures > shared.config.transient_retries {
                let error = JobError::new(
                    ErrorKind::Server,
                    format!("gave up after {} attempts; last: {reason}", task.attempts),
                );
                return shared.finish(task.fail(JobStatus::Failed, error));
            }
            // A server that keeps failing is taken out of rotation; its jobs move on.
            let in_a_row = if counts_for_server {
                conn.consecutive_failures.fetch_add(1, Ordering::SeqCst) + 1
            } else {
                conn.consecutive_failures.load(Ordering::SeqCst)
            };
            if in_a_row >= shared.config.server_failures_to_retire {
                shared.retire(
                    &conn,
                    format!("failed {in_a_row} times in a row; last: {reason}"),
                );
            }
            shared.ctx.emit(Event::Retrying {
                key: task.key.clone(),
                server: conn.index,
                reason,
            });
            // Wait here (not in a detached task) so the run cannot end while a retry is due.
            // A prompt lost to a restart goes back at once: the server is back (it said it
            // does not know the prompt), and nothing is posted while its socket is down.
            if !restart {
                pause(&shared, shared.backoff(task.transient_failures)).await;
            }
            shared.queue.requeue(task);
        }
    }
}

/// Sleep for `delay`, or less if the run is cancelled meanwhile.
async fn pause(shared: &Shared, delay: Duration) {
    let mut cancel = shared.ctx.cancel.clone();
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = cancel.wait_for(|c| *c) => {}
    }
}
