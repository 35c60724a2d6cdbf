//! One server's loop: hold its `in_flight` slots (as many as its pace asks for), wait for
//! its socket, take the next job (re-attachments first) and start an attempt for it.
//!
//! Owns how many prompts one server has posted at once. Must not decide what happens after
//! an attempt (that is `retry.rs`) or touch the socket (that is `connection.rs`).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::queue::Next;
use super::retry::run_task;
use super::route;
use super::server::ServerConn;
use super::shared::Shared;
use super::task::Task;
use crate::events::{ErrorKind, JobError, JobStatus};

/// One server's loop: take jobs while slots are free and the socket is up.
/// `reattach` are prompts a previous (killed) run left on this server: they come first.
pub(super) async fn server_main(shared: Arc<Shared>, conn: Arc<ServerConn>, reattach: Vec<Task>) {
    let mut depth = conn.pace().depth();
    let slots = Arc::new(Semaphore::new(depth));
    let mut attempts = JoinSet::new();
    let mut reattach = reattach.into_iter();
    // The free slots of a batch not handed out yet (see `pace::Pace::batch`).
    let mut batch: Option<OwnedSemaphorePermit> = None;
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
        let permit = match batch.take() {
            Some(mut rest) if rest.num_permits() > 1 => {
                let one = rest.split(1).expect("more than one permit");
                batch = Some(rest);
                one
            }
            Some(last) => last,
            None => {
                // Short renders: wait until a batch of slots is free, then fill them at once.
                let size = conn.pace().batch().clamp(1, depth.max(1));
                let size = u32::try_from(size).unwrap_or(u32::MAX);
                let Ok(mut free) = slots.clone().acquire_many_owned(size).await else {
                    break;
                };
                if size > 1 {
                    let one = free.split(1).expect("more than one permit");
                    batch = Some(free);
                    one
                } else {
                    free
                }
            }
        };
        let Ok(unwritten) = shared.unwritten.clone().acquire_owned().await else {
            break;
        };
        // A server that is away keeps its loop waiting here; once every job is done (or
        // the queue closed) there is nothing left to wait for it for.
        let up = tokio::select! {
            up = conn.wait_up() => up,
            () = shared.queue.done() => false,
        };
        if !up {
            break;
        }
        if conn.catalogue_unknown() && !route::join(&shared, &conn).await {
            // Reachable over the socket but not over HTTP yet: the socket's loop sees to it.
            tokio::time::sleep(shared.backoff(1)).await;
            continue;
        }
        let retired = conn.retired_notify.notified();
        let task = if let Some(task) = reattach.next() {
            Some(task)
        } else {
            let next = tokio::select! {
                next = shared.queue.next(|job| route::pick(&shared, &conn, job)) => next,
                () = retired => None,
            };
            match next {
                Some(Next::Run(task)) => Some(task),
                Some(Next::Unroutable(task, why)) => {
                    shared.finish(
                        task.fail(JobStatus::Failed, JobError::new(ErrorKind::Unroutable, why)),
                    );
                    continue;
                }
                None => None,
            }
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
