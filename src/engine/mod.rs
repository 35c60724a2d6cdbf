//! Bounded execution of jobs over one or more ComfyUI servers. Emits events; never prints.

mod attempt;
mod config;
mod connection;
mod context;
mod download;
mod failure;
mod outputs;
mod pace;
mod queue;
mod reconcile;
mod server;
mod shared;
mod task;

pub use attempt::{Engine, execute};
pub use config::{DEFAULT_OUTAGE_WINDOW, EngineConfig};
pub use context::{Reattach, RunContext};
pub(crate) use outputs::relative;
pub use outputs::{ChapterOutput, Outputs};
