//! Our queue of jobs not yet posted ([`JobQueue`]): jobs wait here, never in ComfyUI's
//! volatile queue; it counts jobs not yet finished so an idle server waits while another
//! server's attempt may still come back for a retry.
//!
//! Owns ordering, closing and the "every job is done" signal. Must not post, wait on
//! servers or record outcomes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::task::Task;
use crate::plan::Job;

/// Our queue of jobs not yet posted. `outstanding` counts jobs not yet finished anywhere, so
/// a server waits while another server's attempt might still come back for a retry.
pub(super) struct JobQueue {
    state: Mutex<QueueState>,
    changed: Notify,
}

struct QueueState {
    ready: VecDeque<Queued>,
    /// Re-attachments, handed to their own server's loop at start.
    reattach: Vec<Task>,
    outstanding: usize,
    /// New jobs may still come (a long-lived engine); the loops wait even when idle.
    accepting: bool,
    closed: bool,
}

/// A job in the queue. Most have not been tried yet and are only their job: a run of
/// 10,000 jobs queues 16 bytes each, not a [`Task`].
pub(super) enum Queued {
    Fresh(Arc<Job>),
    /// Tried before (a retry, or handed back by a server that went away).
    Again(Box<Task>),
}

/// What a server's loop makes of a job waiting in the queue.
pub(super) enum Pick {
    /// Take it: the server has all it needs.
    Take,
    /// Leave it for another server that can (or may) take it.
    Leave,
    /// No server left can take it: fail it, saying why.
    Fail(String),
}

/// What [`JobQueue::next`] hands out.
pub(super) enum Next {
    Run(Task),
    /// A job no server left can take, with why.
    Unroutable(Task, String),
}

impl Queued {
    fn key(&self) -> &str {
        &self.job().key
    }

    fn job(&self) -> &Job {
        match self {
            Queued::Fresh(job) => job,
            Queued::Again(task) => &task.job,
        }
    }

    fn into_task(self) -> Task {
        match self {
            Queued::Fresh(job) => Task::new(job),
            Queued::Again(task) => *task,
        }
    }
}

impl JobQueue {
    pub(super) fn new(ready: VecDeque<Queued>, reattach: Vec<Task>) -> JobQueue {
        JobQueue {
            state: Mutex::new(QueueState {
                outstanding: ready.len() + reattach.len(),
                ready,
                reattach,
                accepting: true,
                closed: false,
            }),
            changed: Notify::new(),
        }
    }

    /// The re-attachments that belong to the server at `url`.
    pub(super) fn take_reattach(&self, url: &str) -> Vec<Task> {
        let mut state = self.state.lock().expect("queue poisoned");
        let (mine, rest): (Vec<Task>, Vec<Task>) = std::mem::take(&mut state.reattach)
            .into_iter()
            .partition(|t| t.reattach.as_ref().is_some_and(|r| r.server == url));
        state.reattach = rest;
        mine
    }

    /// The first job `pick` takes (or says to fail), or `None` when every job is finished
    /// (and no more may come) or the queue is closed. Jobs it leaves stay, in order, for
    /// other servers.
    pub(super) async fn next(&self, pick: impl Fn(&Job) -> Pick) -> Option<Next> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock().expect("queue poisoned");
                if state.closed {
                    return None;
                }
                let found = state.ready.iter().enumerate().find_map(|(at, queued)| {
                    match pick(queued.job()) {
                        Pick::Take => Some((at, None)),
                        Pick::Leave => None,
                        Pick::Fail(why) => Some((at, Some(why))),
                    }
                });
                if let Some((at, why)) = found {
                    let task = state.ready.remove(at).expect("found").into_task();
                    return Some(match why {
                        None => Next::Run(task),
                        Some(why) => Next::Unroutable(task, why),
                    });
                }
                if state.outstanding == 0 && !state.accepting {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Returns once no job will be handed out any more: every job finished and no more may
    /// come, or the queue was closed.
    pub(super) async fn done(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.state.lock().expect("queue poisoned");
                if state.closed || (state.outstanding == 0 && !state.accepting) {
                    return;
                }
            }
            notified.await;
        }
    }

    /// A new job; `false` once the queue is closed or no longer accepting.
    pub(super) fn push(&self, job: Arc<Job>) -> bool {
        let mut state = self.state.lock().expect("queue poisoned");
        if state.closed || !state.accepting {
            return false;
        }
        state.outstanding += 1;
        state.ready.push_back(Queued::Fresh(job));
        drop(state);
        self.changed.notify_waiters();
        true
    }

    /// Take a job that is waiting (not posted) out of the queue.
    pub(super) fn remove(&self, key: &str) -> Option<Task> {
        let mut state = self.state.lock().expect("queue poisoned");
        let index = state.ready.iter().position(|q| q.key() == key)?;
        state.ready.remove(index).map(Queued::into_task)
    }

    /// The jobs waiting to be posted.
    pub(super) fn waiting(&self) -> Vec<Arc<Job>> {
        let state = self.state.lock().expect("queue poisoned");
        state
            .ready
            .iter()
            .map(|queued| match queued {
                Queued::Fresh(job) => job.clone(),
                Queued::Again(task) => task.job.clone(),
            })
            .collect()
    }

    /// Something the picks depend on changed (a server joined or left): look again.
    pub(super) fn poke(&self) {
        self.changed.notify_waiters();
    }

    pub(super) fn stop_accepting(&self) {
        self.state.lock().expect("queue poisoned").accepting = false;
        self.changed.notify_waiters();
    }

    pub(super) fn requeue(&self, task: Task) {
        // Also when closed: whoever closed it, or `Engine::finish`, drains `ready` after.
        self.state
            .lock()
            .expect("queue poisoned")
            .ready
            .push_back(Queued::Again(Box::new(task)));
        self.changed.notify_waiters();
    }

    pub(super) fn finish_one(&self) {
        let mut state = self.state.lock().expect("queue poisoned");
        state.outstanding = state.outstanding.saturating_sub(1);
        drop(state);
        self.changed.notify_waiters();
    }

    /// Close the queue and take every job not yet handed out.
    pub(super) fn close(&self) -> Vec<Task> {
        let mut state = self.state.lock().expect("queue poisoned");
        state.closed = true;
        let mut tasks: Vec<Task> = state.ready.drain(..).map(Queued::into_task).collect();
        tasks.append(&mut state.reattach);
        drop(state);
        self.changed.notify_waiters();
        tasks
    }
}
