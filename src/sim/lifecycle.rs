//! A simulator's life: `Sim::start` binds the port and starts the prompt worker on its own
//! thread; the supervisor serves the routes, and on a crash stops listening, forgets queue,
//! history and cache, and comes back empty on the same port; `shutdown` (or drop) ends it.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::config::{SimConfig, SimStats};
use super::listener::KillListener;
use super::state::{Core, Ctrl, Shared, StatsInner};
use super::{nodes, server, tempdir, worker};

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
        // The node classes, fixed for the simulator's life: the routes describe and validate
        // with them, the worker executes them.
        let catalog = Arc::new(nodes::Catalog::new(&config.checkpoints, &config.loras));
        let shared = Arc::new(Shared {
            rng: Mutex::new(config.seed),
            config,
            output_dir,
            input_dir,
            temp_dir,
            core: Mutex::new(Core::default()),
            sockets: Mutex::new(std::collections::HashMap::new()),
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
            counters: Mutex::new(super::state::SaveCounters::default()),
        });
        let worker_thread = WorkerThread::start()?;
        let supervisor = tokio::spawn(supervise(
            shared.clone(),
            catalog,
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
    catalog: Arc<nodes::Catalog>,
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
        let router = server::router(shared.clone(), catalog.clone());
        let kill_listener = KillListener {
            inner: l,
            shared: shared.clone(),
        };
        let serve = tokio::spawn(async move {
            let _ = axum::serve(kill_listener, router).await;
        });
        let worker = worker_thread.spawn(worker::run(shared.clone(), catalog.clone()));
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
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
                {
                    let mut st = shared.stats_mut();
                    st.stats.crashes += 1;
                    st.idle_since = None;
                }
                // Down: refuse connections, but still obey a shutdown.
                tokio::select! {
                    () = tokio::time::sleep(down_for) => {}
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
