//! Asking a server about one of our prompts over HTTP, when the socket cannot say: is it
//! queued, running, finished (with its history entry) or lost; fetching the history of a
//! finished prompt; and removing a prompt of ours (delete if pending, targeted interrupt
//! if running).
//!
//! Owns these requests and what their answers mean. Must not wait on sockets, count
//! retries or write files.

use super::failure::unreachable;
use super::shared::Shared;
use super::task::Attempt;
use crate::comfy::{ComfyClient, ComfyError, HistoryEntry};

pub(super) enum Reconciled {
    Waiting { running: bool },
    Finished(HistoryEntry),
    Lost,
}

/// Where is the prompt? Ask `/queue` first, then `/history`: an entry leaves the queue only
/// after its history is written, so "not queued, then not in history" really means gone.
pub(super) async fn reconcile(
    client: &ComfyClient,
    prompt_id: &str,
) -> Result<Reconciled, ComfyError> {
    let queue = client.queue().await?;
    if queue.contains(prompt_id) {
        return Ok(Reconciled::Waiting {
            running: queue.running.iter().any(|id| id == prompt_id),
        });
    }
    match client.history(prompt_id).await? {
        Some(entry) => Ok(Reconciled::Finished(entry)),
        None => Ok(Reconciled::Lost),
    }
}

/// Remove a prompt of ours: delete it if pending, interrupt it (targeted) if running.
/// Best effort: the server may be gone, which also ends the prompt.
pub(super) async fn cancel_on_server(client: &ComfyClient, prompt_id: &str) {
    let ids = [prompt_id.to_owned()];
    let _ = client.delete_queued(&ids).await;
    let _ = client.interrupt(prompt_id).await;
}

/// `executing null` came, so history is written; retry briefly in case a proxy or cache lags.
pub(super) async fn fetch_history(
    shared: &Shared,
    client: &ComfyClient,
    prompt_id: &str,
) -> Result<HistoryEntry, Attempt> {
    let mut last = Attempt::Transient(String::new());
    for attempt in 1..=5u32 {
        match client.history(prompt_id).await {
            Ok(Some(entry)) => return Ok(entry),
            Ok(None) => {
                last = Attempt::Transient(format!(
                    "{} has no history for the finished prompt",
                    client.url()
                ));
            }
            Err(error) if unreachable(&error) => last = Attempt::Unreachable(error.to_string()),
            Err(error) => last = Attempt::Transient(error.to_string()),
        }
        tokio::time::sleep(shared.backoff(attempt)).await;
    }
    Err(last)
}
