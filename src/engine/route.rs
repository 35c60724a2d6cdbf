//! Which server takes which job: a job goes only to a server whose node catalogue has every
//! node class, model and option it needs (see `preflight::refusal`); a job no server left
//! can take fails with each server's reason. A server that was down at the start has its
//! catalogue asked for when it is first reachable, and joins from there.
//!
//! Owns the pick a server's loop makes of a waiting job, and a server's joining. Must not
//! post, wait on sockets or decide retries.

use std::sync::Arc;

use super::queue::Pick;
use super::server::{Catalogue, ServerConn, Verdict};
use super::shared::Shared;
use crate::events::{Event, RouteState};
use crate::plan::Job;

/// What the loop of `conn` makes of `job`: take it if it can; leave it if another server
/// in rotation can or may (its catalogue is not known yet); fail it if none can.
pub(super) fn pick(shared: &Shared, conn: &ServerConn, job: &Job) -> Pick {
    let mut why = Vec::new();
    match conn.verdict(job) {
        Verdict::Takes => return Pick::Take,
        Verdict::NotYetKnown => return Pick::Leave,
        Verdict::Refuses(reason) => why.push(reason.to_string()),
    }
    for other in shared.servers.iter().filter(|c| c.index != conn.index) {
        if let Some(retired) = other.retired_reason() {
            why.push(format!("{} {retired}", other.client.url()));
            continue;
        }
        match other.verdict(job) {
            Verdict::Takes | Verdict::NotYetKnown => return Pick::Leave,
            Verdict::Refuses(reason) => why.push(reason.to_string()),
        }
    }
    Pick::Fail(unroutable_message(&why))
}

/// The error of a job no server can take: each server's reason, and what to do.
pub fn unroutable_message(reasons: &[String]) -> String {
    format!(
        "no server in the run can take this job: {}; install what it needs on a server (or add one that has it), or change the manifest",
        reasons.join("; ")
    )
}

/// A server whose catalogue is not known (down at the start) is reachable now: ask for its
/// catalogue, say which of the waiting jobs it can take, and let it take them. `false` if
/// it could not be asked (try again later).
pub(super) async fn join(shared: &Shared, conn: &ServerConn) -> bool {
    let Ok(catalogue) = conn.client.object_info().await else {
        return false;
    };
    let catalogue = Arc::new(catalogue);
    conn.set_catalogue(Catalogue::Known(catalogue.clone()));
    let waiting = shared.queue.waiting();
    let routing = crate::preflight::routing(
        conn.client.url(),
        &catalogue,
        waiting.iter().map(|job| &**job),
        RouteState::Joined,
    );
    shared.ctx.emit(Event::Routing {
        server: conn.index,
        routing: Box::new(routing),
    });
    // Jobs left for this server may now have no server at all: the loops look again.
    shared.queue.poke();
    true
}
