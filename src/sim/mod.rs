//! A protocol-faithful ComfyUI 0.8.0 simulator (`plasma-batch sim`, `run --sim`, tests).
//!
//! `Sim::start` binds a loopback port and serves the HTTP + WebSocket API that
//! ComfyUI 0.8.0 speaks, with one worker executing prompts serially and
//! writing real PNG files. Faults (`Fault`) make it misbehave on purpose. This module owns
//! the public API and the listener lifecycle (crash = stop listening, come back empty on the
//! same port); `server` has the routes, `worker` the execution, `nodes` the node classes.

mod fault;
mod image;
mod jpeg;
mod nodes;
mod pyjson;
pub mod record;
mod server;
mod state;
mod tempdir;
mod worker;

pub use fault::{Fault, FaultParseError};

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use state::{Core, Shared, StatsInner};

/// How to run a simulator.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Address to bind (default `127.0.0.1`).
    pub host: String,
    /// Port to bind; 0 picks a free one.
    pub port: u16,
    /// Milliseconds per KSampler step.
    pub step_ms: u64,
    /// Added before every HTTP response and every WebSocket frame.
    pub latency_ms: u64,
    /// `ckpt_name` choices.
    pub checkpoints: Vec<String>,
    /// `lora_name` choices.
    pub loras: Vec<String>,
    /// Where SaveImage writes; None = a temporary directory removed when the Sim goes.
    pub output_dir: Option<PathBuf>,
    pub faults: Vec<Fault>,
    /// Seeds probabilistic faults.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            host: "127.0.0.1".into(),
            port: 0,
            step_ms: 5,
            latency_ms: 0,
            checkpoints: vec![
                "AnythingXL_inkBase.safetensors".into(),
                "sd_xl_base_1.0.safetensors".into(),
                "v1-5-pruned-emaonly.safetensors".into(),
            ],
            loras: vec![
                "inkline_v2.safetensors".into(),
                "screentone_v1.safetensors".into(),
                "lineart_clean.safetensors".into(),
            ],
            output_dir: None,
            faults: Vec::new(),
            seed: 0x5EED_0001,
        }
    }
}

/// One `POST /interrupt`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InterruptRecord {
    /// The `prompt_id` the request named, if any.
    pub prompt_id: Option<String>,
    /// The prompt actually interrupted (the one running), if any.
    pub hit: Option<String>,
}

/// Counters for strict-mode tests; also served at `GET /sim/stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SimStats {
    pub prompts_accepted: u64,
    pub prompts_rejected: u64,
    /// `POST /prompt` requests whose `client_id` was absent or had no open socket then.
    pub posts_without_socket: u64,
    /// Highest pending + running count seen.
    pub peak_queue: usize,
    /// `GET /history` and `GET /history/{id}` requests.
    pub history_requests: u64,
    /// Total time the worker sat idle between finishing one prompt and starting the next
    /// (so only idle time between the first accepted prompt and the last finished one).
    pub worker_idle_ms_while_outstanding: u64,
    /// Prompts that reached a terminal state (success, error or interrupted).
    pub executed: u64,
    pub interrupts: Vec<InterruptRecord>,
    /// Prompt ids deleted through `POST /queue {"delete": [...]}`.
    pub queue_deletes: Vec<String>,
    pub crashes: u64,
}

/// Commands to the listener supervisor.
pub(crate) enum Ctrl {
    Crash(Duration),
    Shutdown,
}

/// A running simulator. Drop or `shutdown` stops it.
pub struct Sim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    supervisor: Option<JoinHandle<()>>,
    _worker_thread: WorkerThread,
    _scratch: tempdir::SimTempDir,
}

/// The prompt worker's own OS thread and runtime, as ComfyUI runs `prompt_worker` in a
/// thread of its own: the simulated GPU's timing does not wait behind the HTTP and
/// WebSocket tasks of the caller's runtime (on two cores it did: ~0.3 ms per prompt). Only
/// the worker runs there, so it may block that thread for sub-millisecond waits.
struct WorkerThread {
    handle: tokio::runtime::Handle,
    /// Dropped to end the thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl WorkerThread {
    fn start() -> io::Result<WorkerThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("sim-prompt-worker".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Whatever the worker was doing is dropped, as a crash would.
                runtime.shutdown_background();
            })?;
        Ok(WorkerThread {
            handle,
            _stop: stop,
        })
    }
}

impl Sim {
    /// Bind and start serving on the current tokio runtime.
    pub async fn start(config: SimConfig) -> io::Result<Sim> {
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        let addr = listener.local_addr()?;
        // RAM-backed when possible, owned by this process's pid and lock; folders of killed
        // simulators are removed first (see `tempdir`).
        let scratch = tempdir::SimTempDir::create()?;
        let output_dir = match &config.output_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                std::path::absolute(dir)?
            }
            None => scratch.subdir("output")?,
        };
        let input_dir = scratch.subdir("input")?;
        let temp_dir = scratch.subdir("temp")?;
        let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
        let (epoch, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            catalog: nodes::Catalog::new(&config.checkpoints, &config.loras),
            rng: Mutex::new(config.seed),
            config,
            output_dir,
            input_dir,
            temp_dir,
            core: Mutex::new(Core::default()),
            sockets: Mutex::new(Default::default()),
            stats: Mutex::new(StatsInner::default()),
            wake: Notify::new(),
            interrupt: AtomicBool::new(false),
            interrupt_wake: Notify::new(),
            epoch,
            ctrl: ctrl_tx,
            prompt_posts: AtomicU64::new(0),
            prompts_accepted_total: AtomicU64::new(0),
            prompts_started_total: AtomicU64::new(0),
            drop_once_used: AtomicBool::new(false),
            counters: Mutex::new(Default::default()),
        });
        let worker_thread = WorkerThread::start()?;
        let supervisor = tokio::spawn(supervise(
            shared.clone(),
            listener,
            addr,
            ctrl_rx,
            worker_thread.handle.clone(),
        ));
        Ok(Sim {
            shared,
            addr,
            supervisor: Some(supervisor),
            _worker_thread: worker_thread,
            _scratch: scratch,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn output_dir(&self) -> &Path {
        &self.shared.output_dir
    }

    /// Where `/upload/image` writes and `LoadImage` reads.
    pub fn input_dir(&self) -> &Path {
        &self.shared.input_dir
    }

    pub fn stats(&self) -> SimStats {
        self.shared.snapshot_stats()
    }

    /// Crash now: close every connection, lose queue, history and cache, refuse connections
    /// for `down_for`, then listen again on the same port.
    pub fn crash_now(&self, down_for: Duration) {
        let _ = self.shared.ctrl.send(Ctrl::Crash(down_for));
    }

    /// Stop serving, close every connection and free the port.
    pub async fn shutdown(mut self) {
        kill_connections(&self.shared);
        if let Some(handle) = self.supervisor.take() {
            let _ = self.shared.ctrl.send(Ctrl::Shutdown);
            let _ = handle.await;
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(handle) = self.supervisor.take() {
            handle.abort();
        }
        kill_connections(&self.shared);
    }
}

fn kill_connections(shared: &Shared) {
    shared.epoch.send_modify(|e| *e += 1);
    shared.sockets().clear();
}

/// Owns the listener and the worker; restarts both after a crash. Aborting it stops all.
async fn supervise(
    shared: Arc<Shared>,
    first: TcpListener,
    addr: SocketAddr,
    mut ctrl: mpsc::UnboundedReceiver<Ctrl>,
    worker_thread: tokio::runtime::Handle,
) {
    struct Tasks(Vec<JoinHandle<()>>);
    impl Tasks {
        /// Abort and wait, so the listener is really closed when this returns.
        async fn stop(mut self) {
            let tasks = std::mem::take(&mut self.0);
            for t in &tasks {
                t.abort();
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    }
    impl Drop for Tasks {
        fn drop(&mut self) {
            for t in &self.0 {
                t.abort();
            }
        }
    }
    let mut listener = Some(first);
    loop {
        let l = match listener.take() {
            Some(l) => l,
            None => loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            },
        };
        let router = server::router(shared.clone());
        let kill_listener = KillListener {
            inner: l,
            shared: shared.clone(),
        };
        let serve = tokio::spawn(async move {
            let _ = axum::serve(kill_listener, router).await;
        });
        let worker = worker_thread.spawn(worker::run(shared.clone()));
        let tasks = Tasks(vec![serve, worker]);
        match ctrl.recv().await {
            Some(Ctrl::Crash(down_for)) => {
                tasks.stop().await;
                kill_connections(&shared);
                {
                    let mut core = shared.core();
                    *core = Core::default();
                }
                shared
                    .counters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                {
                    let mut st = shared.stats_mut();
                    st.stats.crashes += 1;
                    st.idle_since = None;
                }
                // Down: refuse connections, but still obey a shutdown.
                tokio::select! {
                    _ = tokio::time::sleep(down_for) => {}
                    cmd = ctrl.recv() => if matches!(cmd, Some(Ctrl::Shutdown) | None) {
                        return;
                    },
                }
            }
            Some(Ctrl::Shutdown) | None => {
                tasks.stop().await;
                kill_connections(&shared);
                return;
            }
        }
    }
}

/// A TCP listener whose connections all die when the simulator's epoch changes.
struct KillListener {
    inner: TcpListener,
    shared: Arc<Shared>,
}

impl axum::serve::Listener for KillListener {
    type Io = KillIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let mut rx = self.shared.epoch.subscribe();
                    let start = *rx.borrow_and_update();
                    let kill = Box::pin(async move {
                        let _ = rx.wait_for(|e| *e != start).await;
                    });
                    return (
                        KillIo {
                            inner: stream,
                            kill,
                            dead: false,
                        },
                        addr,
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

pub(crate) struct KillIo {
    inner: TcpStream,
    kill: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    dead: bool,
}

impl KillIo {
    fn check(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.dead && self.kill.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        self.dead
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "simulator connection closed",
    )
}

impl AsyncRead for KillIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.check(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.check(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.check(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
