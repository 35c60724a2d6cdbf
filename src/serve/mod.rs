//! `plasma-batch serve`: the HTTP job service. Single panels are submitted as JSON, run on
//! the same long-lived [`crate::engine::Engine`] as batch runs (same naming, ledger and
//! guarantees), tracked from the engine's events and persisted in a JSON-lines journal.
//! This module never touches ComfyUI itself; the engine does.

mod app;
mod catalogue;
mod http;
pub mod inputs;
pub mod jobs;
pub mod journal;
pub mod record;
pub mod request;
mod service;
mod templates;

pub use http::OPENAPI;
pub use record::{JobRecord, Status};
pub use request::JobRequest;
pub use service::{ServeConfig, ServeError, Service, ShutdownMode};
