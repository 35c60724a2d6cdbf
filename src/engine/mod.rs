//! Bounded execution of jobs over one or more ComfyUI servers. Emits events; never prints.

mod attempt;
mod pace;

pub(crate) use attempt::relative;
pub use attempt::{
    ChapterOutput, DEFAULT_OUTAGE_WINDOW, Engine, EngineConfig, Outputs, Reattach, RunContext,
    execute,
};
