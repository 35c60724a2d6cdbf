//! plasma-batch: turn a declarative TOML chapter manifest into images rendered by ComfyUI.
//!
//! Data flows one way:
//! `cli -> manifest -> plan -> engine (comfy client, output store) -> events -> reporters`.
//! `main.rs` only parses arguments, builds the runtime and exits with the code `cmd::error`
//! decides (after showing the failure's diagnostics); everything else lives here so tests
//! can drive it in-process.
//! The layers and which way imports may point: `docs/architecture.md` (kept by a test).

pub mod cli;
pub mod cmd;
pub mod comfy;
pub mod comfyui;
pub mod diagnostic;
pub mod digest;
pub mod engine;
pub mod events;
pub mod exit_codes;
pub mod inputs;
pub mod ledger;
pub mod manifest;
pub mod output;
pub mod params;
pub mod plan;
pub mod preflight;
pub mod report;
pub mod runner;
pub mod serve;
pub mod shard;
pub mod sim;
pub mod time;
pub mod workflow;
