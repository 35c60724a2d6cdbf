//! The simulator's public types: how to run it (`SimConfig`) and what it counted
//! (`SimStats`, `InterruptRecord`, also served at `GET /sim/stats`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::fault::Fault;

/// How to run a simulator.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Address to bind (default `127.0.0.1`).
    pub host: String,
    /// Port to bind; 0 picks a free one.
    pub port: u16,
    /// Milliseconds per `KSampler` step.
    pub step_ms: u64,
    /// Added before every HTTP response and every WebSocket frame.
    pub latency_ms: u64,
    /// `ckpt_name` choices.
    pub checkpoints: Vec<String>,
    /// `lora_name` choices.
    pub loras: Vec<String>,
    /// Where `SaveImage` writes; None = a temporary directory removed when the Sim goes.
    pub output_dir: Option<PathBuf>,
    pub faults: Vec<Fault>,
    /// Seeds probabilistic faults.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            host: "127.0.0.1".into(),
            port: 0,
            step_ms: 5,
            latency_ms: 0,
            checkpoints: vec![
                "AnythingXL_inkBase.safetensors".into(),
                "sd_xl_base_1.0.safetensors".into(),
                "v1-5-pruned-emaonly.safetensors".into(),
                // What ComfyUI's default graph (`workflows/exported-sd15.json`) loads.
                "v1-5-pruned-emaonly-fp16.safetensors".into(),
            ],
            loras: vec![
                "inkline_v2.safetensors".into(),
                "screentone_v1.safetensors".into(),
                "lineart_clean.safetensors".into(),
            ],
            output_dir: None,
            faults: Vec::new(),
            seed: 0x5EED_0001,
        }
    }
}

/// One `POST /interrupt`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InterruptRecord {
    /// The `prompt_id` the request named, if any.
    pub prompt_id: Option<String>,
    /// The prompt actually interrupted (the one running), if any.
    pub hit: Option<String>,
}

/// Counters for strict-mode tests; also served at `GET /sim/stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SimStats {
    pub prompts_accepted: u64,
    pub prompts_rejected: u64,
    /// `POST /prompt` requests whose `client_id` was absent or had no open socket then.
    pub posts_without_socket: u64,
    /// Highest pending + running count seen.
    pub peak_queue: usize,
    /// `GET /history` and `GET /history/{id}` requests.
    pub history_requests: u64,
    /// Total time the worker sat idle between finishing one prompt and starting the next
    /// (so only idle time between the first accepted prompt and the last finished one).
    pub worker_idle_ms_while_outstanding: u64,
    /// Prompts that reached a terminal state (success, error or interrupted).
    pub executed: u64,
    pub interrupts: Vec<InterruptRecord>,
    /// Prompt ids deleted through `POST /queue {"delete": [...]}`.
    pub queue_deletes: Vec<String>,
    pub crashes: u64,
    /// `POST /upload/image` requests answered 200, and how many of them wrote a file (the
    /// others named a file that already held the same bytes).
    pub uploads: u64,
    pub uploads_written: u64,
}
