//! The executor's tunables: [`EngineConfig`] and its defaults.
//!
//! Owns the numbers a run is executed with and nothing else: it must not touch servers,
//! files, events or the clock (a config is plain data, built before the engine starts).

use std::time::Duration;

/// How long a server may be unreachable before it is out of rotation for good (`run
/// --outage-window`): a restart, a reboot or a network blip is waited for, not failed.
pub const DEFAULT_OUTAGE_WINDOW: Duration = Duration::from_secs(600);

/// Tunables of the executor. `Default` is what `plasma-batch run` uses.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Prompts kept posted to one server and not yet finished there: at least this many...
    pub in_flight: usize,
    /// ...and up to this many while renders are shorter than a round trip to the server
    /// (see `engine/pace.rs`). Equal to `in_flight` for a fixed depth.
    pub in_flight_max: usize,
    /// Per-job limit, counted from `execution_start`.
    pub timeout: Duration,
    /// Extra attempts after a transient failure (socket drop, 5xx, lost prompt).
    pub transient_retries: u32,
    /// Also retry deterministic failures (validation, node error, timeout) once.
    pub retry_failed: bool,
    /// With no message about a prompt for this long, ask `/queue` and `/history` about it.
    pub stall: Duration,
    /// WebSocket pings, so a dead link is noticed even while nothing happens.
    pub ping_interval: Duration,
    /// A server unreachable (socket lost, connections refused, no answer) is retried with
    /// capped backoff and jobs wait for it; only an outage this long takes it out of
    /// rotation for good. With every server out, the remaining jobs fail.
    pub outage_window: Duration,
    /// Prompts on a server unreachable this long are rendered again on another server
    /// that is up (if none is, they keep waiting for theirs).
    pub handover_after: Duration,
    /// Waiting for the first `status` frame after connecting.
    pub handshake_timeout: Duration,
    /// Image downloads at once, over all servers.
    pub downloads: usize,
    /// First delay between retries; doubles each time, with jitter.
    pub backoff: Duration,
    /// Transient failures in a row after which a server is taken out of rotation.
    pub server_failures_to_retire: u32,
    /// After a local write failure (disk full), fail the jobs not yet posted instead of
    /// rendering images that cannot be saved. A long-lived service turns this off.
    pub stop_on_local_failure: bool,
}

impl EngineConfig {
    /// With `Some(n)`, exactly `n` prompts per server; with `None`, the depth stays as it
    /// is (by default: 2 to 8, following the server's pace).
    pub fn with_fixed_depth(self, depth: Option<usize>) -> EngineConfig {
        match depth {
            Some(n) => EngineConfig {
                in_flight: n,
                in_flight_max: n,
                ..self
            },
            None => self,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            in_flight: 2,
            in_flight_max: 8,
            timeout: Duration::from_secs(90),
            transient_retries: 2,
            retry_failed: false,
            stall: Duration::from_secs(20),
            ping_interval: Duration::from_secs(10),
            outage_window: DEFAULT_OUTAGE_WINDOW,
            handover_after: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            downloads: 8,
            backoff: Duration::from_millis(200),
            server_failures_to_retire: 4,
            stop_on_local_failure: true,
        }
    }
}
