//! Keeping one server's WebSocket open: connect (the socket is up on its first `status`
//! frame), read and route frames to prompts, ping, notice a silent zombie, and reconnect
//! with capped backoff while the server is away, taking it out of rotation once the outage
//! outlasts `outage_window`.
//!
//! Owns the socket's loop and the outage as the socket sees it. Must not post prompts or
//! decide anything about a job: waiters hear `Signal`s and reconcile themselves.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::failure::seconds;
use super::server::ServerConn;
use super::shared::Shared;
use crate::comfy::ws::{WsConnection, WsEvent};
use crate::events::ServerState;

/// Keep the socket open: connect, read and route frames, ping, reconnect with backoff.
/// While the server cannot be reached it is in an outage: retried with capped exponential
/// backoff, its jobs waiting, until the outage outlasts `outage_window`.
pub(super) async fn connection_task(
    shared: Arc<Shared>,
    conn: Arc<ServerConn>,
    mut stop: watch::Receiver<bool>,
) {
    let config = &shared.config;
    let mut failures: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let client_id = conn.client_id();
        let reason =
            match WsConnection::connect(&conn.client, &client_id, config.handshake_timeout).await {
                Ok(mut ws) => {
                    tracing::debug!(server = conn.client.url(), sid = %ws.sid, "socket confirmed");
                    failures = 0;
                    let outage = conn.outage_since().take();
                    let _ = conn.up.send_replace(true);
                    shared.emit_server(
                        &conn,
                        match outage {
                            Some(since) => ServerState::Back {
                                down_for: since.elapsed(),
                            },
                            None => ServerState::Connected,
                        },
                    );
                    if outage.is_some() {
                        // Waiters back off while the server is away: ask about their prompts now.
                        conn.broadcast_reconcile();
                    }
                    let end = pump(&shared, &conn, &mut ws, &mut stop).await;
                    let _ = conn.up.send_replace(false);
                    // The outage starts now: a mark an attempt left while the socket was up
                    // may be old (nothing since proved the server reachable over HTTP).
                    *conn.outage_since() = Some(Instant::now());
                    conn.epoch.fetch_add(1, Ordering::SeqCst);
                    // Close before the same clientId is used again (protocol §1.1): a late close
                    // of this socket would otherwise unregister the new one.
                    ws.close().await;
                    let reason = match end {
                        SocketEnd::Stopped => {
                            conn.broadcast_reconcile();
                            return;
                        }
                        SocketEnd::Closed(reason) => reason,
                        SocketEnd::Silent(reason) => {
                            // A zombie reads nothing, so our close never reaches the server, which
                            // still has it registered under our id and will unregister that id
                            // (§1.1: by id, not by socket) whenever it notices the socket is dead,
                            // silently orphaning a new socket that reuses it. Use a fresh id;
                            // prompts posted under the old one are followed over HTTP.
                            *conn.client_id.lock().expect("client id poisoned") =
                                uuid::Uuid::new_v4().to_string();
                            reason
                        }
                    };
                    conn.broadcast_reconcile();
                    reason
                }
                Err(error) => {
                    failures += 1;
                    let down_for = conn.unreachable();
                    if down_for >= config.outage_window {
                        shared.retire(
                            &conn,
                            format!(
                                "was unreachable for {} (outage window {}): {error}",
                                seconds(down_for),
                                seconds(config.outage_window)
                            ),
                        );
                        return;
                    }
                    error.to_string()
                }
            };
        let down_for = conn.outage().unwrap_or_default();
        // Never sleep past the end of the window: the last try comes as it closes.
        let delay = shared
            .backoff(failures.max(1))
            .min(config.outage_window.saturating_sub(down_for))
            .max(Duration::from_millis(1));
        shared.emit_server(
            &conn,
            ServerState::Unreachable {
                reason,
                retry_in: delay,
                down_for,
                window: config.outage_window,
            },
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Why [`pump`] stopped reading a socket.
enum SocketEnd {
    /// The run is over.
    Stopped,
    /// The socket closed or failed.
    Closed(String),
    /// Open but silent (not even pongs) while prompts were outstanding: a zombie.
    Silent(String),
}

/// Read frames until the socket closes or goes silent, or the run stops.
async fn pump(
    shared: &Shared,
    conn: &ServerConn,
    ws: &mut WsConnection,
    stop: &mut watch::Receiver<bool>,
) -> SocketEnd {
    let ping_interval = shared.config.ping_interval;
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    let mut last_frame = Instant::now();
    loop {
        tokio::select! {
            event = ws.next_event() => match event {
                WsEvent::Message(message) => {
                    last_frame = Instant::now();
                    conn.dispatch(message);
                }
                WsEvent::Ignored => last_frame = Instant::now(),
                WsEvent::Closed(reason) => {
                    return SocketEnd::Closed(format!("the socket closed{}", reason.map(|r| format!(": {r}")).unwrap_or_default()));
                }
            },
            _ = ping.tick() => {
                // Not even a pong for three ping periods while we wait on prompts: the link
                // is dead even if TCP has not noticed. Reconnect; waiters reconcile over HTTP.
                if conn.has_routes() && last_frame.elapsed() > ping_interval * 3 {
                    return SocketEnd::Silent(format!("no frame for {:.0} s", last_frame.elapsed().as_secs_f64()));
                }
                if let Err(error) = ws.ping().await {
                    return SocketEnd::Closed(error.to_string());
                }
            }
            _ = stop.changed() => return SocketEnd::Stopped,
        }
    }
}
