//! The state every request handler shares ([`App`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::catalogue::Catalogue;
use super::inputs::InputStore;
use super::jobs::Table;
use super::templates::Templates;
use crate::comfy::ComfyClient;
use crate::engine::Engine;
use crate::plan::Job;

/// State every request handler shares.
pub(crate) struct App {
    pub table: Arc<Table>,
    pub engine: Mutex<Option<Engine>>,
    pub templates: Templates,
    /// The servers' model and sampler lists, for checking names at `POST /jobs`.
    pub catalogue: Catalogue,
    pub servers: Vec<ComfyClient>,
    pub out_root: PathBuf,
    pub token: Option<String>,
    /// The bound address (the real port when asked for port 0).
    pub addr: SocketAddr,
    pub max_queue: usize,
    /// Where received input images are kept.
    pub inputs: InputStore,
    /// Set at shutdown: new jobs get 503.
    pub draining: AtomicBool,
}

impl App {
    /// Whether `authority` (`host[:port]`, from `Host` or `Origin`) names this service: a
    /// loopback name with our port, or the address we listen on.
    pub fn answers_to(&self, authority: &str) -> bool {
        let authority = authority.trim().to_ascii_lowercase();
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, port.parse::<u16>().ok()),
            _ => (authority.as_str(), Some(80)),
        };
        if port != Some(self.addr.port()) {
            return false;
        }
        let host = host.trim_end_matches('.');
        let listening = match self.addr.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        matches!(host, "localhost" | "127.0.0.1" | "[::1]") || host == listening
    }

    /// The `host:port` values [`App::answers_to`] accepts, for error messages.
    pub fn own_hosts(&self) -> Vec<String> {
        let port = self.addr.port();
        let mut hosts: Vec<String> = ["127.0.0.1", "localhost", "[::1]"]
            .iter()
            .map(|h| format!("{h}:{port}"))
            .collect();
        let listening = self.addr.to_string();
        if !self.addr.ip().is_unspecified() && !hosts.contains(&listening) {
            hosts.push(listening);
        }
        hosts
    }

    /// Cancel a key in the engine, if it still runs.
    pub fn cancel_in_engine(&self, key: &str) -> bool {
        match self.engine.lock().expect("engine slot poisoned").as_ref() {
            Some(engine) => engine.cancel_job(key),
            None => false,
        }
    }

    pub fn submit(&self, job: Job) -> bool {
        match self.engine.lock().expect("engine slot poisoned").as_ref() {
            Some(engine) => engine.submit(Arc::new(job)),
            None => false,
        }
    }
}
