//! Bounded execution of jobs over one or more ComfyUI servers. Emits events
//! ([`crate::events::Event`]); never prints.
//!
//! Per server there is one WebSocket with its own `clientId`, kept open by a connection task.
//! A job is posted only while that socket is confirmed open (first `status` frame received),
//! with a `prompt_id` we generate and route *before* the POST, so no message can arrive for
//! a prompt we do not know yet. A prompt is finished only on `executing {node: null}` for its
//! id (or, when the socket was lost, when `/history` has its entry); `execution_error` and
//! `execution_interrupted` seen before that decide failure. The images are where the
//! `executed` messages of the job's output nodes said; if one of them was missed (a socket
//! drop), `/history` is asked, which is complete once `executing {node: null}` came.
//!
//! Each server has `in_flight` slots (default 2: one prompt rendering, one waiting on the
//! server so the GPU never idles; up to `in_flight_max` when renders are shorter than the
//! round trip that refills the server's queue, see `engine/pace.rs`). A slot is held from
//! the POST until the server is done with the prompt; downloading and writing images happen
//! after the slot is released, overlapping the next render. Jobs not yet posted stay in our
//! queue, never in ComfyUI's volatile one.
//!
//! Posting is also bounded by the images not yet written: at most `in_flight_max` per server
//! plus twice `downloads` attempts are under way at once. When the servers render faster
//! than this machine downloads and fsyncs (zero-render jobs, a slow disk), finished prompts
//! wait on the server, not as a growing pile of attempts (with their history and routes)
//! in our memory.
//!
//! The files, each saying what it owns and what it must not touch; imports between them
//! point one way (`tests/integration/architecture.rs` fails on a circle), roughly bottom up:
//!
//! - `config`: [`EngineConfig`], its defaults, the builder from flags and manifest.
//! - `context`, `outputs`: what a run hands in ([`RunContext`], [`Outputs`]).
//! - `failure`: job errors from what servers say; is a server away.
//! - `task`, `queue`: a job's attempts so far; our queue of jobs not yet posted.
//! - `pace`, `server`: one server's pace and state (socket, routes, outage, retirement).
//! - `shared`: what every task shares; a job's end; backoff.
//! - `connection`: the socket's loop. `reconcile`: asking about a prompt over HTTP.
//! - `download`: a finished prompt's images to disk, with their ledger entries.
//! - `attempt`: one attempt, from POST to result. `retry`: what follows it.
//! - `route`: which server takes which job; a server down at the start joining.
//! - `slots`: one server's loop. `executor`: [`Engine`] and [`execute`].

mod attempt;
mod config;
mod connection;
mod context;
mod download;
mod executor;
mod failure;
mod outputs;
mod pace;
mod queue;
mod reconcile;
mod retry;
mod route;
mod server;
mod shared;
mod slots;
mod task;

pub use config::{Choices, DEFAULT_OUTAGE_WINDOW, EngineConfig, EngineSettings};
pub use context::{Reattach, RunContext};
pub use executor::{Engine, execute};
pub(crate) use outputs::relative;
pub use outputs::{ChapterOutput, Outputs};
pub use route::unroutable_message;
pub use server::Catalogue;
