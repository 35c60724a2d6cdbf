//! What the engine knows about one server ([`ServerConn`]): its client, the current
//! `clientId`, whether its socket is confirmed up, the routes from prompt ids to their
//! waiters, its outage marks, retirement, failure counters and pace.
//!
//! Owns this state and the small steps on it (route, dispatch, retire, mark an outage,
//! delete our pending prompts once when the run is cancelled).
//! Must not run loops or decide retries: the socket's loop is `connection.rs`, the
//! attempts' decisions `retry.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};

use super::config::EngineConfig;
use super::pace;
use crate::comfy::{ComfyClient, ServerMessage};
use crate::plan::Job;

/// What the engine knows of a server's node catalogue, for routing jobs to it.
#[derive(Debug, Clone)]
pub enum Catalogue {
    /// It takes every job (the job service; `run --all-or-nothing`, whose preflight
    /// already made sure every server has everything).
    Any,
    /// Its `/object_info`: it takes the jobs whose every node, model and option it has.
    Known(Arc<serde_json::Value>),
    /// Not known yet (it was down at the start): asked for when it is first reachable.
    Unknown,
}

/// Can a server take a job?
pub(super) enum Verdict {
    Takes,
    /// No: what it lacks.
    Refuses(Arc<str>),
    /// Not known yet ([`Catalogue::Unknown`]).
    NotYetKnown,
}

/// What a prompt's waiter hears from the connection task.
pub(super) enum Signal {
    Message(ServerMessage),
    /// The socket dropped or came back: messages may have been lost; reconcile over HTTP.
    Reconcile,
}

/// One server: its client, its socket state, and the routes of its prompts.
pub(super) struct ServerConn {
    pub(super) index: usize,
    pub(super) client: ComfyClient,
    /// The `clientId` of the current socket; replaced after a zombie socket (see
    /// `connection_task`), so read it with [`ServerConn::client_id`].
    pub(super) client_id: Mutex<String>,
    routes: Mutex<HashMap<String, mpsc::UnboundedSender<Signal>>>,
    /// `true` while the socket is open and confirmed.
    pub(super) up: watch::Sender<bool>,
    retired: AtomicBool,
    pub(super) retired_notify: Notify,
    retired_reason: Mutex<Option<String>>,
    /// Since when the server has been unreachable; `None` while it is reachable. Set when
    /// the socket is lost or an attempt cannot reach the server; ended by a confirmed
    /// socket, or by an answered POST while the socket stayed up.
    outage_since: Mutex<Option<Instant>>,
    /// Transient failures since the last success on this server.
    pub(super) consecutive_failures: AtomicU32,
    /// Sockets lost so far: an attempt that sees it change lived through a drop or restart.
    pub(super) epoch: AtomicU64,
    /// The last epoch whose restart was counted in `consecutive_failures`.
    pub(super) counted_epoch: AtomicU64,
    /// Set once the run's cancellation deleted every pending prompt of ours here.
    pending_deleted: tokio::sync::OnceCell<()>,
    /// Render and round-trip times, for the number of prompts to keep posted.
    pace: Mutex<pace::Pace>,
    catalogue: Mutex<Catalogue>,
    /// Per job key, once looked at: why it cannot take the job (`None`: it can). Only jobs
    /// not yet finished: [`ServerConn::forget_verdict`] drops a job's at its end.
    verdicts: Mutex<HashMap<String, Option<Arc<str>>>>,
}

impl ServerConn {
    pub(super) fn new(
        index: usize,
        client: ComfyClient,
        catalogue: Catalogue,
        config: &EngineConfig,
    ) -> ServerConn {
        ServerConn {
            index,
            client,
            client_id: Mutex::new(uuid::Uuid::new_v4().to_string()),
            routes: Mutex::new(HashMap::new()),
            up: watch::channel(false).0,
            retired: AtomicBool::new(false),
            retired_notify: Notify::new(),
            retired_reason: Mutex::new(None),
            outage_since: Mutex::new(None),
            consecutive_failures: AtomicU32::new(0),
            epoch: AtomicU64::new(0),
            counted_epoch: AtomicU64::new(u64::MAX),
            pending_deleted: tokio::sync::OnceCell::new(),
            pace: Mutex::new(pace::Pace::new(config.in_flight, config.in_flight_max)),
            catalogue: Mutex::new(catalogue),
            verdicts: Mutex::new(HashMap::new()),
        }
    }

    /// Whether its catalogue is still to be asked for ([`Catalogue::Unknown`]).
    pub(super) fn catalogue_unknown(&self) -> bool {
        matches!(
            *self.catalogue.lock().expect("catalogue poisoned"),
            Catalogue::Unknown
        )
    }

    pub(super) fn set_catalogue(&self, catalogue: Catalogue) {
        *self.catalogue.lock().expect("catalogue poisoned") = catalogue;
    }

    /// Can it take `job`? Worked out once per job from its catalogue (see
    /// `preflight::refusal`), then remembered.
    pub(super) fn verdict(&self, job: &Job) -> Verdict {
        let catalogue = match &*self.catalogue.lock().expect("catalogue poisoned") {
            Catalogue::Any => return Verdict::Takes,
            Catalogue::Unknown => return Verdict::NotYetKnown,
            Catalogue::Known(catalogue) => catalogue.clone(),
        };
        let mut verdicts = self.verdicts.lock().expect("verdicts poisoned");
        let why = verdicts
            .entry(job.key.clone())
            .or_insert_with(|| {
                crate::preflight::refusal(self.client.url(), &catalogue, job).map(Arc::from)
            })
            .clone();
        match why {
            None => Verdict::Takes,
            Some(why) => Verdict::Refuses(why),
        }
    }

    /// A job ended: its verdict is not asked for again (a run of 10,000 jobs kept 10,000 of
    /// them, ~100 bytes each, to its end; a job service, every job it ever ran).
    pub(super) fn forget_verdict(&self, key: &str) {
        self.verdicts.lock().expect("verdicts poisoned").remove(key);
    }

    pub(super) fn pace(&self) -> std::sync::MutexGuard<'_, pace::Pace> {
        self.pace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn client_id(&self) -> String {
        self.client_id.lock().expect("client id poisoned").clone()
    }

    pub(super) fn route(&self, prompt_id: &str) -> mpsc::UnboundedReceiver<Signal> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .expect("routes poisoned")
            .insert(prompt_id.to_owned(), tx);
        rx
    }

    pub(super) fn unroute(&self, prompt_id: &str) {
        self.routes
            .lock()
            .expect("routes poisoned")
            .remove(prompt_id);
    }

    pub(super) fn dispatch(&self, message: ServerMessage) {
        let Some(prompt_id) = message.prompt_id() else {
            return;
        };
        let routes = self.routes.lock().expect("routes poisoned");
        if let Some(route) = routes.get(prompt_id) {
            let _ = route.send(Signal::Message(message));
        }
    }

    pub(super) fn broadcast_reconcile(&self) {
        for route in self.routes.lock().expect("routes poisoned").values() {
            let _ = route.send(Signal::Reconcile);
        }
    }

    pub(super) fn has_routes(&self) -> bool {
        !self.routes.lock().expect("routes poisoned").is_empty()
    }

    /// On cancelling the run: delete all our prompts from the server's queue in one request,
    /// once, before any of them is interrupted. Interrupting the running prompt first would
    /// let the server start our next pending one before its own delete arrives.
    pub(super) async fn delete_all_pending(&self) {
        self.pending_deleted
            .get_or_init(|| async {
                let ids: Vec<String> = self
                    .routes
                    .lock()
                    .expect("routes poisoned")
                    .keys()
                    .cloned()
                    .collect();
                if !ids.is_empty() {
                    let _ = self.client.delete_queued(&ids).await;
                }
            })
            .await;
    }

    pub(super) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Out of rotation for good; `false` if it already was.
    pub(super) fn retire(&self, reason: String) -> bool {
        let mut why = self.retired_reason.lock().expect("retired reason poisoned");
        if self.retired.swap(true, Ordering::SeqCst) {
            return false;
        }
        *why = Some(reason);
        drop(why);
        self.retired_notify.notify_waiters();
        self.broadcast_reconcile();
        true
    }

    pub(super) fn retired_reason(&self) -> Option<String> {
        self.retired_reason
            .lock()
            .expect("retired reason poisoned")
            .clone()
    }

    pub(super) fn outage_since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.outage_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long the server has been unreachable, if it is.
    pub(super) fn outage(&self) -> Option<Duration> {
        self.outage_since().map(|since| since.elapsed())
    }

    /// The server could not be reached: start an outage (if none is under way); its length.
    pub(super) fn unreachable(&self) -> Duration {
        self.outage_since()
            .get_or_insert_with(Instant::now)
            .elapsed()
    }

    /// A POST was answered: an outage an attempt saw while the socket stayed up is over
    /// (one the socket saw ends only with a confirmed socket).
    pub(super) fn answered(&self) {
        if *self.up.borrow() {
            *self.outage_since() = None;
        }
    }

    /// Wait until the socket is confirmed open. `false` if the server was retired.
    pub(super) async fn wait_up(&self) -> bool {
        let mut up = self.up.subscribe();
        loop {
            if self.is_retired() {
                return false;
            }
            if *up.borrow_and_update() {
                return true;
            }
            let retired = self.retired_notify.notified();
            tokio::select! {
                changed = up.changed() => if changed.is_err() { return false },
                () = retired => {}
            }
        }
    }
}
