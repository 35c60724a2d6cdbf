//! Bounded execution of jobs over one or more ComfyUI servers. Emits [`Event`]s; never prints.
//!
//! Per server there is one WebSocket with its own `clientId`, kept open by a connection task.
//! A job is posted only while that socket is confirmed open (first `status` frame received),
//! with a `prompt_id` we generate and route *before* the POST, so no message can arrive for
//! a prompt we do not know yet. A prompt is finished only on `executing {node: null}` for its
//! id (or, when the socket was lost, when `/history` has its entry); `execution_error` and
//! `execution_interrupted` seen before that decide failure. The images are where the
//! `executed` messages of the job's output nodes said; if one of them was missed (a socket
//! drop), `/history` is asked, which is complete once `executing {node: null}` came.
//!
//! Each server has `in_flight` slots (default 2: one prompt rendering, one waiting on the
//! server so the GPU never idles; up to `in_flight_max` when renders are shorter than the
//! round trip that refills the server's queue, see `engine/pace.rs`). A slot is held from
//! the POST until the server is done with the prompt; downloading and writing images happen
//! after the slot is released, overlapping the next render. Jobs not yet posted stay in our
//! queue, never in ComfyUI's volatile one.
//!
//! Posting is also bounded by the images not yet written: at most `in_flight_max` per server
//! plus twice `downloads` attempts are under way at once. When the servers render faster
//! than this machine downloads and fsyncs (zero-render jobs, a slow disk), finished prompts
//! wait on the server, not as a growing pile of attempts (with their history and routes)
//! in our memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::config::EngineConfig;
use super::connection::connection_task;
use super::context::RunContext;
use super::download::write_images;
use super::failure::{
    describe_node_errors, error_from_history, node_error, seconds, set_first_node, unreachable,
};
use super::queue::{JobQueue, Queued};
use super::reconcile::{Reconciled, cancel_on_server, fetch_history, reconcile};
use super::server::{ServerConn, Signal};
use super::shared::Shared;
use super::task::{Attempt, Task};

use crate::comfy::protocol::PromptRequest;
use crate::comfy::{ComfyClient, HistoryEntry, PostOutcome, ServerMessage};
use crate::events::{ErrorKind, Event, JobError, JobOutcome, JobStatus};
use crate::ledger::{LEDGER_VERSION, LedgerRecord};
use crate::plan::Job;

/// Attempts of one job that a server restart may cost while the job was running there,
/// without using up its `transient_retries`: losing a prompt to a restart is not the job's
/// fault, but a prompt that brings its server down every time must not be posted forever.
const MAX_RESTART_LOSSES: u32 = 5;

/// Prompts that were only waiting on a server when it restarted (never started there), per
/// job, before such losses count as transient failures: they cannot be what brought it down.
const MAX_QUEUED_LOSSES: u32 = 20;

/// Run every job; returns one outcome per job (in completion order).
pub async fn execute(
    config: EngineConfig,
    servers: Vec<ComfyClient>,
    jobs: Vec<Arc<Job>>,
    ctx: Arc<RunContext>,
) -> Vec<JobOutcome> {
    Engine::start(config, servers, jobs, ctx, true)
        .finish()
        .await
}

/// A running executor. `execute` is the batch form; the job service keeps one open and
/// submits jobs as they come.
pub struct Engine {
    shared: Arc<Shared>,
    workers: JoinSet<()>,
    connections: JoinSet<()>,
    stop: watch::Sender<bool>,
    canceller: tokio::task::JoinHandle<()>,
}

impl Engine {
    /// Connect to every server and start on `initial` (which may re-attach to prompts of a
    /// killed run, see [`RunContext::reattach`]). With `keep_outcomes`, [`Engine::finish`]
    /// returns every outcome; a long-lived engine reads them from the events instead.
    pub fn start(
        config: EngineConfig,
        servers: Vec<ComfyClient>,
        initial: Vec<Arc<Job>>,
        ctx: Arc<RunContext>,
        keep_outcomes: bool,
    ) -> Engine {
        let urls: Vec<&str> = servers.iter().map(ComfyClient::url).collect();
        let mut ready = VecDeque::with_capacity(initial.len());
        let mut reattach = Vec::new();
        for job in initial {
            match ctx.reattach.get(&job.key) {
                Some(previous) if urls.contains(&previous.server.as_str()) => {
                    let mut task = Task::new(job);
                    task.reattach = Some(previous.clone());
                    reattach.push(task);
                }
                _ => ready.push_back(Queued::Fresh(job)),
            }
        }
        let depth = config.in_flight_max.max(config.in_flight).max(1);
        let unwritten = depth * servers.len() + 2 * config.downloads.max(1);
        let conns: Vec<Arc<ServerConn>> = servers
            .into_iter()
            .enumerate()
            .map(|(index, client)| Arc::new(ServerConn::new(index, client, &config)))
            .collect();
        let shared = Arc::new(Shared {
            unwritten: Arc::new(Semaphore::new(unwritten)),
            queue: JobQueue::new(ready, reattach),
            outcomes: Mutex::new(Vec::new()),
            keep_outcomes,
            job_cancels: Mutex::new(HashMap::new()),
            downloads: Arc::new(Semaphore::new(config.downloads.max(1))),
            servers: conns.clone(),
            stopped: std::sync::OnceLock::new(),
            config,
            ctx,
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut workers = JoinSet::new();
        let mut connections = JoinSet::new();
        for conn in conns {
            connections.spawn(connection_task(
                shared.clone(),
                conn.clone(),
                stop_rx.clone(),
            ));
            let reattach = shared.queue.take_reattach(conn.client.url());
            workers.spawn(server_main(shared.clone(), conn, reattach));
        }
        // Cancellation: stop handing out work; running attempts see the flag themselves.
        let canceller = {
            let shared = shared.clone();
            let mut cancel = shared.ctx.cancel.clone();
            tokio::spawn(async move {
                if cancel.wait_for(|c| *c).await.is_ok() {
                    for task in shared.queue.close() {
                        shared.finish(task.cancelled_before_submission());
                    }
                }
            })
        };
        Engine {
            shared,
            workers,
            connections,
            stop,
            canceller,
        }
    }

    /// Queue one more job. Returns `false` if the engine no longer takes jobs.
    pub fn submit(&self, job: Arc<Job>) -> bool {
        self.shared.queue.push(job)
    }

    /// Cancel one job: a queued job is removed, a posted one deleted or interrupted on its
    /// server (only ever with its own `prompt_id`). `false` if the job is not known here.
    pub fn cancel_job(&self, key: &str) -> bool {
        if let Some(task) = self.shared.queue.remove(key) {
            self.shared.finish(task.fail(
                JobStatus::Cancelled,
                JobError::new(ErrorKind::Cancelled, "cancelled before it was submitted"),
            ));
            return true;
        }
        match self
            .shared
            .job_cancels
            .lock()
            .expect("cancels poisoned")
            .get(key)
        {
            Some(cancel) => {
                cancel.send_replace(true);
                true
            }
            None => false,
        }
    }

    /// Take no more jobs, wait for every job to end, disconnect; the outcomes if kept.
    pub async fn finish(mut self) -> Vec<JobOutcome> {
        self.shared.queue.stop_accepting();
        while self.workers.join_next().await.is_some() {}
        let _ = self.stop.send(true);
        while self.connections.join_next().await.is_some() {}
        self.canceller.abort();
        let shared = &self.shared;
        // Jobs remain (handed back after the queue was closed, or every server is out of
        // rotation): they cannot run anywhere.
        let mut no_server: Option<String> = None;
        for task in shared.queue.close() {
            let done = if shared.ctx.cancelled() {
                task.cancelled_before_submission()
            } else if let Some(reason) = shared.stopped.get() {
                task.fail(
                    JobStatus::Failed,
                    JobError::new(ErrorKind::Io, reason.clone()),
                )
            } else {
                let message = no_server.get_or_insert_with(|| shared.no_server_left());
                task.fail(
                    JobStatus::Failed,
                    JobError::new(ErrorKind::Server, message.clone()),
                )
            };
            shared.finish(done);
        }
        shared.ctx.outputs.sync();
        std::mem::take(&mut *shared.outcomes.lock().expect("outcomes poisoned"))
    }
}

/// One server's loop: take jobs while slots are free and the socket is up.
/// `reattach` are prompts a previous (killed) run left on this server: they come first.
async fn server_main(shared: Arc<Shared>, conn: Arc<ServerConn>, reattach: Vec<Task>) {
    let mut depth = conn.pace().depth();
    let slots = Arc::new(Semaphore::new(depth));
    let mut attempts = JoinSet::new();
    let mut reattach = reattach.into_iter();
    loop {
        // Follow the pace: more slots for short renders, back down for long ones (a slot
        // in use is taken away once it is released).
        let wanted = conn.pace().depth();
        if wanted > depth {
            slots.add_permits(wanted - depth);
            depth = wanted;
        } else if wanted < depth {
            depth -= slots.forget_permits(depth - wanted);
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let Ok(unwritten) = shared.unwritten.clone().acquire_owned().await else {
            break;
        };
        // A server that is away keeps its loop waiting here; once every job is done (or
        // the queue closed) there is nothing left to wait for it for.
        let up = tokio::select! {
            up = conn.wait_up() => up,
            _ = shared.queue.done() => false,
        };
        if !up {
            break;
        }
        let retired = conn.retired_notify.notified();
        let task = match reattach.next() {
            Some(task) => Some(task),
            None => tokio::select! {
                task = shared.queue.next() => task,
                _ = retired => None,
            },
        };
        let Some(task) = task else { break };
        if conn.is_retired() {
            shared.queue.requeue(task);
            break;
        }
        attempts.spawn(run_task(
            shared.clone(),
            conn.clone(),
            task,
            permit,
            unwritten,
        ));
        // Reap finished attempts so the set does not grow with the run.
        while attempts.try_join_next().is_some() {}
    }
    // A retired server hands its unstarted re-attachments to the others.
    for task in reattach {
        shared.queue.requeue(task);
    }
    while attempts.join_next().await.is_some() {}
}

/// Run attempts of one job on this server until it succeeds, fails, or must move on.
/// `permit` is the server slot (released when the server is done with the prompt),
/// `_unwritten` the place among attempts under way (released when this one ends).
async fn run_task(
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
            shared.finish(task.outcome(JobStatus::Succeeded, None, images))
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
        _ = tokio::time::sleep(delay) => {}
        _ = cancel.wait_for(|c| *c) => {}
    }
}

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
async fn attempt(
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
        tracing::debug!(key = %task.key, %prompt_id, server = client.url(), "posting");
        let posting = Instant::now();
        let posted = client.post_prompt(&request).await;
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
            _ = async { if job_cancel.wait_for(|c| *c).await.is_err() { std::future::pending::<()>().await } } => {
                cancel_on_server(&conn.client, prompt_id).await;
                return Err(Attempt::Failed(JobStatus::Cancelled, JobError::new(ErrorKind::Cancelled, "cancelled while it was on the server; it was removed or interrupted there")));
            }
            // A dropped sender means nobody can cancel any more, not that we were cancelled.
            _ = async { if cancel.wait_for(|c| *c).await.is_err() { std::future::pending::<()>().await } } => {
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
            _ = timeout => {
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
            _ = tokio::time::sleep_until(check_at) => {
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
