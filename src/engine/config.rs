//! The executor's tunables: [`EngineConfig`], its defaults, and the one builder of it from
//! what flags and the manifest set ([`EngineConfig::from_settings`]), used by `run`,
//! `rerun` and `serve` alike.
//!
//! Owns the numbers a run is executed with and which source wins; nothing else. It must not
//! touch servers, files, events or the clock (a config is plain data, built before the
//! engine starts), nor check or word flag values: commands validate what users typed.

use std::time::Duration;

use crate::params;

/// How long a server may be unreachable before it is out of rotation for good (`run
/// --outage-window`); the number itself is [`params::DEFAULT_OUTAGE_WINDOW_SECS`].
pub const DEFAULT_OUTAGE_WINDOW: Duration = Duration::from_secs(params::DEFAULT_OUTAGE_WINDOW_SECS);

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

/// The engine values one source sets; `None` where it says nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Choices {
    /// Per-job timeout (`--timeout`, `[comfy] timeout`).
    pub timeout: Option<Duration>,
    /// A fixed depth (`--in-flight`, `[comfy] in_flight`); with none anywhere, the depth
    /// follows the servers' pace.
    pub in_flight: Option<usize>,
    /// Retry deterministic failures once (`--retry-failed`, `[comfy] retry_failed`).
    pub retry_failed: Option<bool>,
    /// How long a server may be away (`--outage-window`, `[comfy] outage_window`).
    pub outage_window: Option<Duration>,
}

/// Where a command's engine values come from, strongest first: its flags, then the
/// manifest (for `rerun`: what the report recorded of its run), then
/// [`EngineConfig::default`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineSettings {
    pub flags: Choices,
    pub manifest: Choices,
}

impl EngineConfig {
    /// The config a command runs with: each value from the flags if they set it, else from
    /// the manifest, else the default. A depth set anywhere is fixed (see
    /// [`EngineConfig::with_fixed_depth`]).
    pub fn from_settings(settings: &EngineSettings) -> EngineConfig {
        let EngineSettings { flags, manifest } = settings;
        let base = EngineConfig::default();
        EngineConfig {
            timeout: flags.timeout.or(manifest.timeout).unwrap_or(base.timeout),
            retry_failed: (flags.retry_failed.or(manifest.retry_failed))
                .unwrap_or(base.retry_failed),
            outage_window: (flags.outage_window.or(manifest.outage_window))
                .unwrap_or(base.outage_window),
            ..base
        }
        .with_fixed_depth(flags.in_flight.or(manifest.in_flight))
    }

    /// With `Some(n)`, exactly `n` prompts per server; with `None`, the depth stays as it
    /// is (by default: 2 to 8, following the server's pace).
    #[must_use]
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
            timeout: Duration::from_secs_f64(params::DEFAULT_TIMEOUT_SECS),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_beats_the_manifest_which_beats_the_default() {
        let secs = Duration::from_secs;
        let flags = Choices {
            timeout: Some(secs(5)),
            in_flight: Some(3),
            retry_failed: Some(true),
            outage_window: Some(secs(2)),
        };
        let manifest = Choices {
            timeout: Some(secs(50)),
            in_flight: Some(6),
            retry_failed: Some(false),
            outage_window: Some(secs(30)),
        };
        let default = EngineConfig::default();

        let both = EngineConfig::from_settings(&EngineSettings { flags, manifest });
        assert_eq!(both.timeout, secs(5));
        assert_eq!((both.in_flight, both.in_flight_max), (3, 3));
        assert!(both.retry_failed);
        assert_eq!(both.outage_window, secs(2));

        let manifest_only = EngineConfig::from_settings(&EngineSettings {
            flags: Choices::default(),
            manifest,
        });
        assert_eq!(manifest_only.timeout, secs(50));
        assert_eq!(
            (manifest_only.in_flight, manifest_only.in_flight_max),
            (6, 6)
        );
        assert!(!manifest_only.retry_failed);
        assert_eq!(manifest_only.outage_window, secs(30));

        let neither = EngineConfig::from_settings(&EngineSettings::default());
        assert_eq!(neither.timeout, default.timeout);
        assert_eq!(
            (neither.in_flight, neither.in_flight_max),
            (default.in_flight, default.in_flight_max),
            "without a depth anywhere it follows the pace"
        );
        assert_eq!(neither.retry_failed, default.retry_failed);
        assert_eq!(neither.outage_window, DEFAULT_OUTAGE_WINDOW);

        // Each value on its own: a flag that says nothing leaves the manifest's.
        let mixed = EngineConfig::from_settings(&EngineSettings {
            flags: Choices {
                in_flight: Some(4),
                ..Choices::default()
            },
            manifest: Choices {
                timeout: Some(secs(7)),
                ..Choices::default()
            },
        });
        assert_eq!(mixed.timeout, secs(7));
        assert_eq!((mixed.in_flight, mixed.in_flight_max), (4, 4));
        assert_eq!(mixed.outage_window, DEFAULT_OUTAGE_WINDOW);
    }
}
