//! What went wrong, in words: a [`JobError`] from ComfyUI's `execution_error` /
//! `execution_interrupted` messages, its `/prompt` validation body or a failed history entry,
//! and whether a [`ComfyError`] means the server is away rather than that it answered;
//! durations for such messages (`seconds`).
//!
//! Pure functions of what the server said: no network, no files, no engine state.

use std::fmt::Write as _;
use std::time::Duration;

use crate::comfy::protocol::ExecutionError;
use crate::comfy::{ComfyError, HistoryEntry};
use crate::events::{ErrorKind, JobError};

/// `12 s`, `0.2 s`: a duration for messages.
pub(super) fn seconds(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.1} s")
    } else {
        format!("{secs:.0} s")
    }
}

/// Whether `error` says the server could not be reached, rather than that it answered
/// and failed: connection refused or reset, no answer in time, a lost socket, or a gateway
/// in front of it that could not reach it (502, 503, 504). HTTP 500 is ComfyUI answering.
pub(super) fn unreachable(error: &ComfyError) -> bool {
    match error {
        ComfyError::Connect { .. } | ComfyError::Timeout { .. } | ComfyError::WebSocket { .. } => {
            true
        }
        ComfyError::Status { status, .. } => matches!(status, 502..=504),
        ComfyError::BadUrl { .. } | ComfyError::Decode { .. } => false,
    }
}

pub(super) fn error_from_history(entry: &HistoryEntry) -> Option<JobError> {
    let status = entry.status.as_ref()?;
    if status.status_str != "error" {
        return None;
    }
    for message in status.messages.iter().rev() {
        let (Some(kind), Some(data)) = (message.get(0).and_then(|k| k.as_str()), message.get(1))
        else {
            continue;
        };
        match kind {
            "execution_error" => {
                if let Ok(e) = serde_json::from_value::<ExecutionError>(data.clone()) {
                    return Some(node_error("the server", &e));
                }
            }
            "execution_interrupted" => {
                let mut e = JobError::new(
                    ErrorKind::Interrupted,
                    "the prompt was interrupted on the server",
                );
                e.node_id = data
                    .get("node_id")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
                e.node_class = data
                    .get("node_type")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
                return Some(e);
            }
            _ => {}
        }
    }
    Some(JobError::new(
        ErrorKind::NodeError,
        "the server recorded the prompt as failed",
    ))
}

pub(super) fn node_error(server: &str, e: &ExecutionError) -> JobError {
    let mut error = JobError::new(
        ErrorKind::NodeError,
        format!(
            "node {} ({}) raised {} on {server}: {}",
            e.node_id.as_deref().unwrap_or("?"),
            e.node_type.as_deref().unwrap_or("?"),
            e.exception_type,
            e.exception_message.trim_end()
        ),
    );
    error.node_id.clone_from(&e.node_id);
    error.node_class.clone_from(&e.node_type);
    error.details = serde_json::json!({
        "exception_type": e.exception_type,
        "exception_message": e.exception_message,
        "traceback": e.traceback,
        "current_inputs": e.current_inputs,
    });
    error
}

/// "; node 4 (CheckpointLoaderSimple): Value not in list: `ckpt_name`: 'x' not in [...]"
pub(super) fn describe_node_errors(
    node_errors: &std::collections::BTreeMap<String, serde_json::Value>,
) -> String {
    let mut text = String::new();
    for (node, entry) in node_errors {
        let class = entry
            .get("class_type")
            .and_then(|c| c.as_str())
            .unwrap_or("?");
        let errors = entry
            .get("errors")
            .and_then(|e| e.as_array())
            .cloned()
            .unwrap_or_default();
        for error in errors {
            let message = error.get("message").and_then(|m| m.as_str()).unwrap_or("");
            let details = error.get("details").and_then(|d| d.as_str()).unwrap_or("");
            let _ = write!(text, "; node {node} ({class}): {message}");
            if !details.is_empty() {
                let _ = write!(text, ": {details}");
            }
        }
    }
    text
}

pub(super) fn set_first_node(
    error: &mut JobError,
    node_errors: &std::collections::BTreeMap<String, serde_json::Value>,
) {
    if let Some((node, entry)) = node_errors.iter().next() {
        error.node_id = Some(node.clone());
        error.node_class = entry
            .get("class_type")
            .and_then(|c| c.as_str())
            .map(str::to_owned);
    }
}
