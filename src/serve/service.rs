//! The service's lifecycle: replay the journal, start one long-lived [`Engine`] shared by
//! every request, feed its events to the job table, serve HTTP, and shut down gracefully.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::app::App;
use super::catalogue::Catalogue;
use super::http;
use super::inputs::InputStore;
use super::jobs::Table;
use super::journal::{Journal, OpenError, Opened};
use super::record::Status;
use super::templates::{TemplateError, Templates};
use crate::comfy::ComfyClient;
use crate::engine::{Engine, EngineConfig, Outputs, Reattach, RunContext};
use crate::events::{ErrorKind, JobError};
use crate::ledger;
use crate::output::{ChapterDirs, PathError};
use crate::plan::Job;

/// How long shutdown waits for the engine's last events once its tasks were stopped.
const EVENTS_DRAIN: Duration = Duration::from_secs(5);

/// What to do with jobs on a ComfyUI server when the service stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShutdownMode {
    /// Wait for posted jobs to finish; jobs not yet posted stay queued for the next start.
    #[default]
    Finish,
    /// Interrupt posted jobs on their server (targeted); they run again after the restart.
    Cancel,
}

/// Everything a service needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub servers: Vec<ComfyClient>,
    /// Output root: images as for `run`, the jobs journal in `<out>/serve/jobs.jsonl`.
    pub out_root: PathBuf,
    /// A template used for every job instead of the shipped txt2img(-lora) pair.
    pub workflow: Option<PathBuf>,
    /// Jobs queued or running at once; more answer 429.
    pub max_queue: usize,
    /// Cap on one input image a request sends (larger: 413).
    pub max_input_bytes: u64,
    /// Bearer token every request but `/healthz` must carry. Required off loopback.
    pub token: Option<String>,
    pub engine: EngineConfig,
    pub on_shutdown: ShutdownMode,
}

impl ServeConfig {
    /// The engine settings a long-lived service wants: a server that is down for a while is
    /// waited for, never taken out of rotation for good (that would strand every later
    /// job), and one job's local write failure does not fail the others.
    pub fn service_engine(base: &EngineConfig) -> EngineConfig {
        EngineConfig {
            stop_on_local_failure: false,
            outage_window: Duration::from_secs(10 * 365 * 24 * 3600),
            server_failures_to_retire: u32::MAX,
            ..*base
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refusing to listen on {0} without a token: every request could start GPU work")]
    TokenRequired(SocketAddr),
    #[error("the token is empty")]
    EmptyToken,
    #[error(
        "refusing to listen on {0} with a token shorter than {min} characters: it could be guessed",
        min = super::http::MIN_TOKEN_CHARS
    )]
    TokenTooShort(SocketAddr),
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("failed to read workflow {}: {source}", path.display())]
    Workflow {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("workflow {0} is not a valid template: {1}")]
    Template(String, String),
    #[error("{0}")]
    InUse(String),
    #[error("{0}")]
    Newer(String),
    #[error(transparent)]
    Io(#[from] PathError),
}

impl From<TemplateError> for ServeError {
    fn from(error: TemplateError) -> ServeError {
        match error {
            TemplateError::Read { path, source } => ServeError::Workflow { path, source },
            TemplateError::Invalid(name, problems) => ServeError::Template(name, problems),
        }
    }
}

impl ServeError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ServeError::TokenRequired(_) | ServeError::EmptyToken => {
                Some("pass --token SECRET (or set PLASMA_TOKEN), or listen on 127.0.0.1".to_owned())
            }
            ServeError::TokenTooShort(_) => Some(format!(
                "use a random token of at least {} characters, e.g. `openssl rand -hex 24`",
                super::http::MIN_TOKEN_CHARS
            )),
            ServeError::Bind { .. } => Some(
                "pick another address with --listen, e.g. 127.0.0.1:0 for any free port".to_owned(),
            ),
            ServeError::Workflow { .. } | ServeError::Template(..) => Some(
                "--workflow takes an API-format template (`plasma-batch validate` checks one)"
                    .to_owned(),
            ),
            ServeError::InUse(_) => Some(
                "stop the other `plasma-batch serve`, or give this one another --out".to_owned(),
            ),
            ServeError::Newer(_) => Some(
                "run the plasma-batch that wrote it, or give this one another --out".to_owned(),
            ),
            ServeError::Io(e) => e.hint().map(str::to_owned),
        }
    }
}

/// A running job service. `shutdown` stops it gracefully.
pub struct Service {
    addr: SocketAddr,
    warnings: Vec<String>,
    app: Arc<App>,
    on_shutdown: ShutdownMode,
    cancel: Arc<watch::Sender<bool>>,
    http_stop: Option<oneshot::Sender<()>>,
    http: JoinHandle<()>,
    events: JoinHandle<()>,
}

impl Service {
    /// Check the settings, replay the journal, start the engine and listen.
    #[allow(
        clippy::too_many_lines,
        reason = "the service's start-up steps in order; each needs the ones before"
    )]
    pub async fn start(config: ServeConfig) -> Result<Service, ServeError> {
        if let Some(token) = &config.token
            && token.trim().is_empty()
        {
            return Err(ServeError::EmptyToken);
        }
        if !config.listen.ip().is_loopback() {
            match &config.token {
                None => return Err(ServeError::TokenRequired(config.listen)),
                Some(token) if token.trim().chars().count() < super::http::MIN_TOKEN_CHARS => {
                    return Err(ServeError::TokenTooShort(config.listen));
                }
                Some(_) => {}
            }
        }
        let templates = Templates::load(config.workflow.as_deref())?;
        let Opened {
            journal,
            jobs: records,
            warnings,
        } = Journal::open(&config.out_root.join("serve").join("jobs.jsonl")).map_err(
            |e| match e {
                OpenError::Io(e) => ServeError::Io(e),
                locked @ OpenError::Locked { .. } => ServeError::InUse(locked.to_string()),
                newer @ OpenError::Newer { .. } => ServeError::Newer(newer.to_string()),
            },
        )?;
        for warning in &warnings {
            tracing::warn!("{warning}");
        }

        // Jobs the last process did not finish run again: queued ones, and running ones
        // (re-attached to their prompt when the chapter ledger says it may still be there).
        let mut initial = Vec::new();
        let mut failed = Vec::new();
        let mut records = records;
        for record in records.iter_mut().filter(|r| !r.status.is_terminal()) {
            // Only accepted and finished states are journaled, so this is the accepted one.
            record.status = Status::Queued;
            record.progress = None;
            let store = InputStore::new(&config.out_root, config.max_input_bytes);
            let images = record
                .request
                .images
                .iter()
                .map(|(slot, stored)| {
                    store
                        .find(&stored.sha256)
                        .map(|(_, image)| (slot.clone(), image))
                        .map_err(|reason| (format!("images.{slot}"), reason))
                })
                .collect::<Result<_, _>>();
            match images.and_then(|images| templates.build(&record.key, &record.request, &images)) {
                Ok(job) => initial.push(Arc::new(job)),
                Err((_, reason)) => failed.push((record.job_id.clone(), reason)),
            }
        }
        let Recovered { reattach, rendered } = recover(&config.out_root, &initial, &config.servers);
        initial.retain(|job| !rendered.contains_key(&job.key));
        let urls: Vec<String> = config.servers.iter().map(|s| s.url().to_owned()).collect();
        let table = Arc::new(Table::new(journal, records, urls));
        for (key, image) in rendered {
            let path = crate::engine::relative(&config.out_root, &image.path);
            table.complete_from_ledger(&key, &path, &image.prompt_id);
        }
        for (job_id, reason) in failed {
            table.fail(
                &job_id,
                JobError::new(
                    ErrorKind::Validation,
                    format!("could not be rebuilt after a restart: {reason}"),
                ),
            );
        }

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;

        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let run_id = format!("serve-{}", crate::time::new_run_id(SystemTime::now()));
        let ctx = Arc::new(RunContext {
            run_id,
            out_root: config.out_root.clone(),
            outputs: Arc::new(Outputs::new(&config.out_root)),
            events: events_tx,
            cancel: cancel_rx,
            started: Instant::now(),
            reattach,
        });
        let engine = Engine::start(
            ServeConfig::service_engine(&config.engine),
            config.servers.clone(),
            initial,
            ctx,
            false,
        );
        let app = Arc::new(App {
            table: table.clone(),
            engine: Mutex::new(Some(engine)),
            templates,
            catalogue: Catalogue::new(&config.servers),
            servers: config.servers.clone(),
            out_root: config.out_root.clone(),
            token: config.token.clone(),
            addr,
            max_queue: config.max_queue,
            inputs: InputStore::new(&config.out_root, config.max_input_bytes),
            draining: AtomicBool::new(false),
        });
        let events = {
            let app = app.clone();
            tokio::spawn(async move {
                while let Some(event) = events_rx.recv().await {
                    if let Some(key) = app.table.apply(event) {
                        app.cancel_in_engine(&key);
                    }
                }
            })
        };
        let (http_stop, stopped) = oneshot::channel::<()>();
        let router = http::router(app.clone());
        let http = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "the HTTP server stopped");
            }
        });
        Ok(Service {
            addr,
            warnings,
            app,
            on_shutdown: config.on_shutdown,
            cancel: Arc::new(cancel_tx),
            http_stop: Some(http_stop),
            http,
            events,
        })
    }

    /// The bound address (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the start found wrong but worked around (journal lines kept aside).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// `http://127.0.0.1:PORT` (a wildcard bind is shown as loopback, where it answers too).
    pub fn url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }

    /// A switch that interrupts posted jobs during a [`ShutdownMode::Finish`] shutdown
    /// (a second SIGTERM).
    pub fn hurry(&self) -> Arc<watch::Sender<bool>> {
        self.cancel.clone()
    }

    /// Stop taking jobs (503), finish or interrupt the posted ones as configured, persist
    /// the journal, and stop serving. Jobs not yet posted stay queued for the next start.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.app
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.app.table.begin_shutdown();
        match self.on_shutdown {
            ShutdownMode::Cancel => {
                let _ = self.cancel.send(true);
            }
            ShutdownMode::Finish => {
                for key in self.app.table.unposted_keys() {
                    self.app.cancel_in_engine(&key);
                }
            }
        }
        let engine = self.app.engine.lock().expect("engine slot poisoned").take();
        if let Some(engine) = engine {
            // `finish` also waits for every server's socket, and a server that is down is
            // waited for, never retired, in a service. Once no job of ours is on a server
            // there is nothing left to wait for: stop the engine's tasks instead. A job
            // caught between our queue and its POST is still open in the journal (and, once
            // posted, in the chapter ledger), so the next start runs or re-attaches it.
            let mut finish = Box::pin(engine.finish());
            let finished = tokio::select! {
                _ = &mut finish => true,
                () = self.app.table.wait_none_posted() => false,
            };
            if !finished {
                // Dropping the engine aborts its tasks; the cancel switch ends its
                // canceller, the last holder of the event sender.
                drop(finish);
                let _ = self.cancel.send(true);
            }
        }
        // The engine (and with it the last event sender) is gone: drain the events.
        let _ = tokio::time::timeout(EVENTS_DRAIN, &mut self.events).await;
        self.app.table.close()?;
        if let Some(stop) = self.http_stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.http).await;
        Ok(())
    }
}

/// What the chapter ledgers say about the jobs the last process did not finish.
struct Recovered {
    /// Prompts it posted and never saw end: looked for on their server, not posted again.
    reattach: HashMap<String, Reattach>,
    /// Jobs whose image it wrote (the ledger vouches for it, the disk confirms it) before it
    /// could journal the end: complete, not rendered again.
    rendered: HashMap<String, ledger::VerifiedImage>,
}

fn recover(out_root: &Path, jobs: &[Arc<Job>], servers: &[ComfyClient]) -> Recovered {
    let mut chapters: Vec<u16> = jobs.iter().map(|j| j.chapter).collect();
    chapters.sort_unstable();
    chapters.dedup();
    let mut found = Recovered {
        reattach: HashMap::new(),
        rendered: HashMap::new(),
    };
    for chapter in chapters {
        let dirs = ChapterDirs::new(out_root, chapter);
        let Ok(records) = ledger::read_records(&dirs.ledger()) else {
            continue;
        };
        let open = ledger::open_submissions(&records);
        let verified = ledger::verified_images(&dirs.root, &records);
        for job in jobs.iter().filter(|j| j.chapter == chapter) {
            let image = verified
                .get(&job.hash.to_string())
                .and_then(|images| images.iter().find(|i| i.key == job.key));
            if let Some(image) = image {
                found.rendered.insert(job.key.clone(), image.clone());
            } else if let Some(open) = open.get(&job.key).filter(|o| job.hash == o.job_hash)
                && servers.iter().any(|s| s.url() == open.server)
            {
                found.reattach.insert(
                    job.key.clone(),
                    Reattach {
                        server: open.server.clone(),
                        prompt_id: open.prompt_id.clone(),
                    },
                );
            }
        }
    }
    found
}
