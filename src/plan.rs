//! Manifest -> `Vec<Job>`: pure and deterministic (no clock, network or files).
//!
//! OWNED BY THE MANIFEST WORK (issue 2). The `Job` shape below is the contract the engine,
//! the report and `rerun` build on: extend it, but keep these fields and their meaning.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One image request: a page variant with its resolved parameters and filled workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Stable key, `ch01_p003_s2`: chapter, page, 1-based variant. Unique within a plan.
    pub key: String,
    pub chapter: u16,
    pub page: u16,
    /// 1-based variant index within the page.
    pub variant: u32,
    pub seed: u64,
    /// Every resolved parameter, as the report records it.
    pub params: JobParams,
    /// The filled API-format workflow, exactly what is sent as `prompt`.
    pub workflow: serde_json::Value,
    /// Ids of the nodes whose `images` outputs are this job's images.
    pub output_nodes: Vec<String>,
    /// sha256 (hex) of the canonical JSON of what would be sent; identifies the job's content.
    pub hash: String,
    /// sha256 (hex) of the workflow template file's bytes.
    pub workflow_sha256: String,
}

/// The resolved parameters of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobParams {
    pub prompt: String,
    pub negative: String,
    pub checkpoint: String,
    pub steps: u32,
    pub cfg: f64,
    pub sampler: String,
    pub scheduler: String,
    pub width: u32,
    pub height: u32,
    pub lora: Option<LoraParams>,
    /// The template path as resolved (relative to the manifest's directory when it was).
    pub workflow_path: PathBuf,
    pub filename_prefix: String,
    /// Whether the seed was given in the manifest or derived.
    pub seed_source: SeedSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraParams {
    pub name: String,
    pub strength_model: f64,
    pub strength_clip: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedSource {
    Explicit,
    Derived,
}
