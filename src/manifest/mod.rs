//! The manifest language: the only code that reads manifest files. It turns TOML text into a
//! checked [`Manifest`] or a list of spanned problems; it knows nothing of workflow contents
//! or jobs (a workflow is a path here). Its bounded reader (`read`) also serves workflow
//! templates and run reports. Limits and defaults come from `params`. The language is
//! documented in `docs/manifest.md`.

pub mod model;
pub mod parse;
pub mod read;
pub mod sweep;

pub use model::Manifest;
pub use parse::parse_manifest;
pub use read::{MAX_MANIFEST_BYTES, read_manifest};
