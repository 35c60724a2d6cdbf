//! API-format workflow templates and typed, JSON-safe placeholder filling. Knows nothing of
//! manifests or jobs: it checks a template file and fills it from a set of values.

pub mod canonical;
pub mod json;
pub mod placeholder;
pub mod spans;
pub mod template;

pub use json::Workflow;
pub use placeholder::{Placeholder, SlotValues};
pub use template::{Filled, PageValues, Template, Variant};
