//! The running executor ([`Engine`]): connect to every server, start their loops, take
//! jobs (`submit`), cancel one (`cancel_job`) or the run, and at the end fail the jobs no
//! server can run, sync the ledgers and hand back the outcomes. [`execute`] is the batch
//! form.
//!
//! Owns the engine's lifetime and the wiring of its tasks. Must not hold per-attempt
//! logic: that lives in the files it starts.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::config::EngineConfig;
use super::connection::connection_task;
use super::context::RunContext;
use super::queue::{JobQueue, Queued};
use super::server::{Catalogue, ServerConn};
use super::shared::Shared;
use super::slots::server_main;
use super::task::Task;
use crate::comfy::ComfyClient;
use crate::events::{ErrorKind, JobError, JobOutcome, JobStatus};
use crate::plan::Job;

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
        let servers = servers.into_iter().map(|s| (s, Catalogue::Any)).collect();
        Engine::start_routed(config, servers, initial, ctx, keep_outcomes)
    }

    /// [`Engine::start`] with each server's [`Catalogue`]: a job goes only to the servers
    /// that have what it needs (see `route.rs`).
    pub fn start_routed(
        config: EngineConfig,
        servers: Vec<(ComfyClient, Catalogue)>,
        initial: Vec<Arc<Job>>,
        ctx: Arc<RunContext>,
        keep_outcomes: bool,
    ) -> Engine {
        let urls: Vec<&str> = servers.iter().map(|(s, _)| s.url()).collect();
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
            .map(|(index, (client, catalogue))| {
                Arc::new(ServerConn::new(index, client, catalogue, &config))
            })
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
            uploads: crate::comfy::Uploads::new(),
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
