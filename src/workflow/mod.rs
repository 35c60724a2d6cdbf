//! API-format workflow templates: checking a template's bytes, typed, JSON-safe placeholder
//! filling, and the canonical JSON and hash of a filled workflow (the job hash). Reads no
//! files and knows nothing of the manifest language or of planning: it is given a template's
//! bytes and a set of values. From `manifest` it takes only `read::NotJson`, the check that
//! bytes can be a JSON object at all (shared with manifests and run reports).
//!
//! `bind` turns an exported workflow's bound literals into placeholders; `lora_chain` chains
//! a LoRA stack into a graph.

pub mod bind;
pub mod canonical;
pub mod fill;
pub mod json;
pub mod lora_chain;
pub mod output_size;
pub mod placeholder;
pub mod spans;
pub mod template;

pub use fill::{PageValues, Variant};
pub use json::Workflow;
pub use placeholder::{Placeholder, SlotName, SlotValues};
pub use template::{Filled, Template};
