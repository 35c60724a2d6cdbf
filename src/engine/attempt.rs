//! One attempt of a job on one server: record the submission, post with our own
//! `prompt_id` (routed before the POST), reconcile a POST whose answer was lost, wait for
//! the prompt's end (`executing` null for its id; `execution_error` / `_interrupted` before
//! it decide failure; the timeout with a targeted interrupt; reconcile over HTTP when the
//! socket is lost or silent), release the server slot, then have the images written.
//!
//! Owns one attempt from POST to its result. Must not decide retries (that is
//! `retry.rs`) nor write images itself (that is `download.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use super::download::write_images;
use super::failure::{
    describe_node_errors, error_from_history, node_error, seconds, set_first_node, unreachable,
};
use super::reconcile::{Reconciled, cancel_on_server, fetch_history, reconcile};
use super::server::{ServerConn, Signal};
use super::shared::Shared;
use super::task::{Attempt, Task};

use crate::comfy::protocol::PromptRequest;
use crate::comfy::{HistoryEntry, PostOutcome, ServerMessage, UploadError, UploadedName};
use crate::events::{ErrorKind, Event, JobError, JobStatus};
use crate::ledger::{LEDGER_VERSION, LedgerRecord};

/// What the waiter learned about a prompt.
enum Terminal {
    /// `executing null` arrived; the history entry is written. `outputs` holds what the
    /// `executed` messages of the job's output nodes said, as history would.
    Finished {
        error: Option<JobError>,
        outputs: HistoryEntry,
    },
    /// `/history` had the entry although the socket missed the end.
    FromHistory(HistoryEntry),
}

/// One attempt: post, wait for the end, release the slot, fetch and write the images.
#[allow(
    clippy::too_many_lines,
    reason = "one protocol exchange in order; its select! arms share the exchange's state"
)]
pub(super) async fn attempt(
    shared: &Arc<Shared>,
    conn: &Arc<ServerConn>,
    task: &mut Task,
    permit: OwnedSemaphorePermit,
    job_cancel: watch::Receiver<bool>,
) -> Attempt {
    let ctx = &shared.ctx;
    let client = &conn.client;
    // A prompt a killed run left on this server is looked for, not posted again.
    let reattached = task.reattach.take();
    let prompt_id = match &reattached {
        Some(previous) => previous.prompt_id.clone(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let mut signals = conn.route(&prompt_id);
    // Frames about the prompt go to the socket of the clientId it was posted with.
    let posted_as = conn.client_id();
    let _unroute = Unroute {
        conn,
        prompt_id: &prompt_id,
    };
    task.prompt_id = Some(prompt_id.clone());
    // Images may come of this attempt until it ends: group syncs wait for them meanwhile.
    let _coming = ctx.outputs.image_coming();
    // Recorded before the POST, so a killed run leaves a prompt to look for; also for a
    // re-attached prompt: this run owns it now, and its `finished` record closes it.
    let appended = ctx.outputs.chapter(task.job.chapter).and_then(|output| {
        output.ledger.append(&LedgerRecord::Submitted {
            v: LEDGER_VERSION,
            run_id: ctx.run_id.clone(),
            key: task.job.key.clone(),
            job_hash: task.job.hash.to_string(),
            server: client.url().to_owned(),
            prompt_id: prompt_id.clone(),
            attempt: task.attempts,
        })
    });
    if let Err(error) = appended {
        return Attempt::Failed(
            JobStatus::Failed,
            JobError::new(ErrorKind::Io, error.to_string()),
        );
    }
    ctx.emit(Event::Submitted {
        key: task.key.clone(),
        server: conn.index,
        prompt_id: prompt_id.clone(),
        attempt: task.attempts,
    });
    if reattached.is_none() {
        let request = PromptRequest {
            prompt: &task.job.workflow,
            client_id: &posted_as,
            prompt_id: &prompt_id,
        };
        // The job's input images first: uploaded now unless this run already put them on
        // this server (other jobs render meanwhile: only this job's slot waits).
        for image in &task.job.inputs {
            if let Err(error) = shared.uploads.ensure(client, image).await {
                return upload_failed(&error);
            }
        }
        tracing::debug!(key = %task.key, %prompt_id, server = client.url(), "posting");
        let posting = Instant::now();
        let mut posted = client.post_prompt(&request).await;
        // The server lost an input it had (its input folder was emptied): upload the
        // images it names again, once, and post once more.
        if let Ok(PostOutcome::Rejected(rejected)) = &posted {
            let missing = crate::comfy::missing_inputs(rejected);
            let lost: Vec<_> = task
                .job
                .inputs
                .iter()
                .filter(|image| {
                    missing.contains(&UploadedName::for_image(image).load_image_value())
                })
                .collect();
            if !lost.is_empty() {
                tracing::debug!(key = %task.key, server = client.url(), lost = lost.len(), "uploading lost inputs again");
                for image in lost {
                    if let Err(error) = shared.uploads.reupload(client, image, posting).await {
                        return upload_failed(&error);
                    }
                }
                posted = client.post_prompt(&request).await;
            }
        }
        match &posted {
            Ok(PostOutcome::Accepted(_)) => {
                conn.pace().posted(posting.elapsed());
                conn.answered();
            }
            Ok(PostOutcome::Rejected(_)) => conn.answered(),
            Err(error) if !unreachable(error) => conn.answered(),
            Err(_) => {}
        }
        match posted {
            // The answer was lost, not necessarily the prompt: a connection reset or a
            // timeout after the server queued it would otherwise render it twice. The id is
            // ours, so ask; only a prompt the server does not know is posted again.
            Err(error) if error.is_transient() => match reconcile(client, &prompt_id).await {
                Ok(Reconciled::Waiting { .. } | Reconciled::Finished(_)) => {
                    tracing::debug!(%prompt_id, %error, "the post failed but the server has the prompt");
                    task.timings.queued = Some(ctx.elapsed_ms());
                }
                // The POST did not reach the server (it does not have the prompt, or cannot
                // be asked either): it is away, or was for a moment.
                Ok(Reconciled::Lost) if unreachable(&error) => {
                    return Attempt::Unreachable(error.to_string());
                }
                Err(asked) if unreachable(&error) && unreachable(&asked) => {
                    return Attempt::Unreachable(error.to_string());
                }
                _ => return Attempt::Transient(error.to_string()),
            },
            Err(error) => {
                return Attempt::Failed(
                    JobStatus::Failed,
                    JobError::new(ErrorKind::Server, error.to_string()),
                );
            }
            Ok(PostOutcome::Rejected(rejected)) => {
                let mut error = JobError::new(
                    ErrorKind::Validation,
                    format!(
                        "{} rejected the prompt: {}{}",
                        client.url(),
                        rejected.error.message,
                        describe_node_errors(&rejected.node_errors)
                    ),
                );
                set_first_node(&mut error, &rejected.node_errors);
                error.details = serde_json::to_value(&rejected).unwrap_or_default();
                return Attempt::Failed(JobStatus::Failed, error);
            }
            Ok(PostOutcome::Accepted(accepted)) if !accepted.node_errors.is_empty() => {
                // Some outputs were dropped; the rest would still run. Take it back.
                cancel_on_server(client, &prompt_id).await;
                let mut error = JobError::new(
                    ErrorKind::Validation,
                    format!(
                        "{} accepted the prompt but dropped outputs:{}",
                        client.url(),
                        describe_node_errors(&accepted.node_errors)
                    ),
                );
                set_first_node(&mut error, &accepted.node_errors);
                error.details = serde_json::to_value(&accepted.node_errors).unwrap_or_default();
                return Attempt::Failed(JobStatus::Failed, error);
            }
            Ok(PostOutcome::Accepted(_)) => task.timings.queued = Some(ctx.elapsed_ms()),
        }
    }

    // Our socket never hears about a re-attached prompt (another clientId posted it): poll.
    let posted_as = reattached.is_none().then_some(posted_as.as_str());
    let terminal = match wait_for_end(
        shared,
        conn,
        task,
        &prompt_id,
        &mut signals,
        posted_as,
        job_cancel,
    )
    .await
    {
        Ok(terminal) => terminal,
        Err(attempt) => return attempt,
    };
    task.timings.executed = Some(ctx.elapsed_ms());
    // The server is done with this prompt: let the next one in while we download.
    drop(permit);

    let entry = match terminal {
        Terminal::Finished {
            error: Some(error), ..
        } => {
            let status = JobStatus::Failed;
            return Attempt::Failed(status, error);
        }
        // Every output node said where its images are: no need to ask `/history` (one
        // request and a few KB of JSON per job on both sides).
        Terminal::Finished {
            error: None,
            outputs,
        } if task
            .job
            .output_nodes
            .iter()
            .all(|n| outputs.outputs.contains_key(n)) =>
        {
            outputs
        }
        // A message was missed (a socket drop): history has them all.
        Terminal::Finished { error: None, .. } => {
            match fetch_history(shared, client, &prompt_id).await {
                Ok(entry) => entry,
                Err(attempt) => return attempt,
            }
        }
        Terminal::FromHistory(entry) => {
            if let Some(error) = error_from_history(&entry) {
                return Attempt::Failed(JobStatus::Failed, error);
            }
            entry
        }
    };
    let images = entry.images_of(&task.job.output_nodes);
    if images.is_empty() {
        return Attempt::Failed(
            JobStatus::Failed,
            JobError::new(
                ErrorKind::NoImages,
                format!(
                    "the prompt finished on {} without images on output node(s) {}",
                    client.url(),
                    task.job.output_nodes.join(", ")
                ),
            ),
        );
    }
    let records = match write_images(shared, conn, task, &prompt_id, &images).await {
        Ok(records) => records,
        Err(attempt) => return attempt,
    };
    task.timings.downloaded = Some(ctx.elapsed_ms());
    Attempt::Succeeded(records)
}

/// Removes a prompt's route when the attempt ends, however it ends.
struct Unroute<'a> {
    conn: &'a ServerConn,
    prompt_id: &'a str,
}

impl Drop for Unroute<'_> {
    fn drop(&mut self) {
        self.conn.unroute(self.prompt_id);
    }
}

/// Wait for the prompt's end, enforcing the timeout and reconciling when the socket is lost
/// or silent. `posted_as` is the clientId the prompt was posted with (`None`: not by us);
/// while our socket has another id, nothing will be heard about the prompt, so it is polled.
/// `Err` carries the attempt's result when it ended without a normal finish.
#[allow(
    clippy::too_many_lines,
    reason = "one protocol exchange in order; its select! arms share the exchange's state"
)]
async fn wait_for_end(
    shared: &Arc<Shared>,
    conn: &Arc<ServerConn>,
    task: &mut Task,
    prompt_id: &str,
    signals: &mut mpsc::UnboundedReceiver<Signal>,
    posted_as: Option<&str>,
    mut job_cancel: watch::Receiver<bool>,
) -> Result<Terminal, Attempt> {
    let ctx = &shared.ctx;
    let config = &shared.config;
    let deaf = || posted_as.is_none_or(|id| conn.client_id() != id);
    let poll = deaf();
    let stall = config.stall;
    let poll_every = config.stall.min(Duration::from_secs(1));
    let mut cancel = ctx.cancel.clone();
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut error: Option<JobError> = None;
    let mut outputs = HistoryEntry::default();
    let mut started_at: Option<Instant> = None;
    let mut check_at = tokio::time::Instant::now() + if poll { Duration::ZERO } else { stall };
    let mut http_failures: u32 = 0;
    loop {
        let timeout = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = async { if job_cancel.wait_for(|c| *c).await.is_err() { std::future::pending::<()>().await } } => {
                cancel_on_server(&conn.client, prompt_id).await;
                return Err(Attempt::Failed(JobStatus::Cancelled, JobError::new(ErrorKind::Cancelled, "cancelled while it was on the server; it was removed or interrupted there")));
            }
            // A dropped sender means nobody can cancel any more, not that we were cancelled.
            () = async { if cancel.wait_for(|c| *c).await.is_err() { std::future::pending::<()>().await } } => {
                conn.delete_all_pending().await;
                cancel_on_server(&conn.client, prompt_id).await;
                return Err(Attempt::Failed(JobStatus::Cancelled, JobError::new(ErrorKind::Cancelled, "the run was cancelled while this job was running; it was removed or interrupted on the server")));
            }
            signal = signals.recv() => {
                let Some(signal) = signal else {
                    return Err(Attempt::Transient("the prompt's route closed".to_owned()));
                };
                tracing::trace!(%prompt_id, "signal");
                match signal {
                    Signal::Message(message) => {
                        tracing::debug!(%prompt_id, ?message, "message");
                        check_at = tokio::time::Instant::now() + stall;
                        match message {
                            ServerMessage::ExecutionStart { .. } => {
                                task.running = true;
                                started_at.get_or_insert_with(Instant::now);
                                if task.timings.started.is_none() {
                                    task.timings.started = Some(ctx.elapsed_ms());
                                }
                                deadline.get_or_insert_with(|| tokio::time::Instant::now() + config.timeout);
                                ctx.emit(Event::Started { key: task.key.clone(), server: conn.index });
                            }
                            ServerMessage::Progress { value, max, .. } => {
                                ctx.emit(Event::Progress { key: task.key.clone(), server: conn.index, value, max });
                            }
                            ServerMessage::ExecutionError(e) if !e.is_blocker() => {
                                error = Some(node_error(conn.client.url(), &e));
                            }
                            ServerMessage::ExecutionInterrupted { node_id, node_type, .. } => {
                                let mut e = JobError::new(ErrorKind::Interrupted, format!("the prompt was interrupted on {} (not by this run)", conn.client.url()));
                                e.node_id = node_id;
                                e.node_class = node_type;
                                error = Some(e);
                            }
                            ServerMessage::Executed { node, output: Some(output), .. } if task.job.output_nodes.contains(&node) => {
                                outputs.outputs.insert(node, output);
                            }
                            ServerMessage::Executing { node: None, .. } => {
                                if let Some(started) = started_at {
                                    conn.pace().rendered(started.elapsed());
                                }
                                return Ok(Terminal::Finished { error, outputs });
                            }
                            _ => {}
                        }
                    }
                    // Messages may have been lost: ask over HTTP right away.
                    Signal::Reconcile => check_at = tokio::time::Instant::now(),
                }
            }
            () = timeout => {
                // The socket is down (the server is away): the prompt may be gone with it or
                // still running there, and an interrupt may not reach it. The outage is not
                // the job's time; once reconciled, the timeout starts again if it still runs.
                if !*conn.up.borrow() && !conn.is_retired() {
                    deadline = None;
                    check_at = tokio::time::Instant::now();
                    continue;
                }
                cancel_on_server(&conn.client, prompt_id).await;
                return Err(Attempt::Failed(JobStatus::TimedOut, JobError::new(
                    ErrorKind::Timeout,
                    format!("the job ran longer than {:.0} s on {}; it was interrupted there and no image was written", config.timeout.as_secs_f64(), conn.client.url()),
                )));
            }
            () = tokio::time::sleep_until(check_at) => {
                let reconciled = reconcile(&conn.client, prompt_id).await;
                tracing::debug!(%prompt_id, ok = reconciled.is_ok(), "reconciled");
                match reconciled {
                    Ok(Reconciled::Waiting { running }) => {
                        http_failures = 0;
                        task.running |= running;
                        if running && deadline.is_none() {
                            // Started while we could not hear it: the timeout still applies.
                            task.timings.started.get_or_insert(ctx.elapsed_ms());
                            deadline = Some(tokio::time::Instant::now() + config.timeout);
                        }
                        let up = *conn.up.borrow();
                        check_at = tokio::time::Instant::now() + if !up {
                            shared.backoff(1)
                        } else if deaf() {
                            poll_every
                        } else {
                            stall
                        };
                    }
                    Ok(Reconciled::Finished(entry)) => return Ok(Terminal::FromHistory(entry)),
                    Ok(Reconciled::Lost) => {
                        return Err(Attempt::Transient(format!("{} no longer knows the prompt (it restarted?)", conn.client.url())));
                    }
                    Err(err) => {
                        http_failures += 1;
                        // A prompt that was running when its server went away may be what
                        // brought it down: that costs the job a restart loss (bounded),
                        // while one that only waited there costs nothing.
                        let away = |reason: String| if task.running { Attempt::Transient(reason) } else { Attempt::Unreachable(reason) };
                        if conn.is_retired() {
                            return Err(away(format!("{} was taken out of rotation: {err}", conn.client.url())));
                        }
                        // Long enough away, with another server up: render it there (the
                        // prompt may still finish here too, if this server comes back
                        // with its queue; a restarted one has lost it anyway).
                        if let Some(down_for) = conn.outage()
                            && down_for >= config.handover_after
                            && shared.other_server_up(conn.index)
                        {
                            return Err(away(format!(
                                "{} unreachable for {}: {err}; the job moves to another server",
                                conn.client.url(),
                                seconds(down_for)
                            )));
                        }
                        check_at = tokio::time::Instant::now() + shared.backoff(http_failures);
                    }
                }
            }
        }
    }
}

/// An input image that could not be put on the server: retried later when the server's
/// trouble may pass, else the job fails with the file named.
fn upload_failed(error: &UploadError) -> Attempt {
    if error.is_transient() {
        Attempt::Transient(error.to_string())
    } else {
        Attempt::Failed(
            JobStatus::Failed,
            JobError::new(ErrorKind::Validation, error.to_string()),
        )
    }
}
