//! What a run gives the engine besides config, servers and jobs: its id, where it writes,
//! where its events go, its cancel switch, and prompts of a killed run to re-attach to.
//!
//! Owns [`RunContext`] and [`Reattach`]; plain data with three small helpers. Must not
//! decide anything about jobs or servers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::outputs::Outputs;
use crate::events::Event;

/// Where a run writes, and how it reports.
pub struct RunContext {
    pub run_id: String,
    /// The output root (`--out`); image paths in records are relative to it.
    pub out_root: PathBuf,
    /// Image folders and ledgers, per chapter.
    pub outputs: Arc<Outputs>,
    pub events: mpsc::UnboundedSender<Event>,
    /// Becomes `true` when the run must stop (Ctrl-C, SIGTERM).
    pub cancel: watch::Receiver<bool>,
    pub started: Instant,
    /// Prompts a previous run of these jobs posted and never saw finish (it was killed):
    /// job key -> where. Such a job is first looked for on that server, not posted again.
    pub reattach: HashMap<String, Reattach>,
}

/// A prompt of a previous run that may still be queued, running or finished on its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reattach {
    pub server: String,
    pub prompt_id: String,
}

impl RunContext {
    pub(super) fn emit(&self, event: Event) {
        // A reporter that went away must not stop the run.
        let _ = self.events.send(event);
    }

    pub(super) fn elapsed_ms(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX)
    }

    pub(super) fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }
}
