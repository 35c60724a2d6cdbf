//! A protocol-faithful ComfyUI 0.8.0 simulator (`plasma-batch sim`, `run --sim`, tests).
//!
//! `Sim::start` binds a loopback port and serves the HTTP + WebSocket API that
//! ComfyUI 0.8.0 speaks, with one worker executing prompts serially and
//! writing real PNG files. Faults (`Fault`) make it misbehave on purpose.
//!
//! Where things are: `config` the public types, `lifecycle` the `Sim` handle and its
//! supervisor (crash = stop listening, come back empty on the same port), `listener` the
//! connections a crash kills, `server` the routes, `state` what routes and worker share,
//! `worker` the execution of a prompt, `nodes` the node classes (each class's description
//! and execution in one file, registered in one table), `image` and `jpeg` the pixels.

mod config;
mod fault;
mod image;
mod jpeg;
mod lifecycle;
mod listener;
mod messages;
mod nodes;
mod pyjson;
pub mod record;
mod server;
mod state;
mod tempdir;
mod worker;

pub use config::{InterruptRecord, SimConfig, SimStats};
pub use fault::{Fault, FaultParseError};
pub use lifecycle::Sim;
