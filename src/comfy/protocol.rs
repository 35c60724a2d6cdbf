//! Typed ComfyUI wire messages (`../shared/comfy-protocol.md` §1.3, §2, §3).
//!
//! Parsing is deliberately lenient: a frame is first read as `{type, data}` and only the
//! types the client acts on are decoded further. Unknown types, and known types whose
//! data does not have the expected shape, become [`ServerMessage::Other`] so a custom node
//! or a newer server can never break a run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A JSON frame from `/ws`.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// Queue size broadcast; the first frame after connecting also carries `sid`.
    Status {
        queue_remaining: Option<u64>,
        sid: Option<String>,
    },
    ExecutionStart {
        prompt_id: String,
    },
    ExecutionCached {
        prompt_id: String,
        nodes: Vec<String>,
    },
    /// A node started, or, with `node: None`, the prompt is finished and its history written.
    /// The reconnect hint has neither `prompt_id` nor `display_node`.
    Executing {
        node: Option<String>,
        display_node: Option<String>,
        prompt_id: Option<String>,
    },
    Executed {
        prompt_id: String,
        node: String,
        output: Option<Value>,
    },
    Progress {
        prompt_id: Option<String>,
        node: Option<String>,
        value: u64,
        max: u64,
    },
    ExecutionSuccess {
        prompt_id: String,
    },
    ExecutionError(Box<ExecutionError>),
    ExecutionInterrupted {
        prompt_id: String,
        node_id: Option<String>,
        node_type: Option<String>,
    },
    /// Anything else (`progress_state`, `feature_flags`, `logs`, custom node messages, or a
    /// known type with an unexpected shape).
    Other {
        kind: String,
    },
}

/// `execution_error` data: everything ComfyUI reports about a node that raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionError {
    pub prompt_id: String,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub node_type: Option<String>,
    #[serde(default)]
    pub exception_message: String,
    #[serde(default)]
    pub exception_type: String,
    #[serde(default)]
    pub traceback: Vec<String>,
    #[serde(default)]
    pub current_inputs: Value,
}

impl ExecutionError {
    /// The blocker variant (`ExecutionBlocked`) is not terminal: execution continues.
    pub fn is_blocker(&self) -> bool {
        self.exception_type == "ExecutionBlocked"
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    /// Left as text until the type says it is read (`progress_state`, sent on every
    /// sampler step with every node's state, never is).
    #[serde(default, borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

/// The message types whose `data` is read.
const READ_TYPES: &[&str] = &[
    "status",
    "execution_start",
    "execution_cached",
    "executing",
    "executed",
    "progress",
    "execution_success",
    "execution_error",
    "execution_interrupted",
];

impl ServerMessage {
    /// Parse one text frame. `None` when the frame is not a `{type, data}` JSON object.
    pub fn parse(text: &str) -> Option<ServerMessage> {
        let envelope: Envelope = serde_json::from_str(text).ok()?;
        let data = match envelope.data {
            Some(raw) if READ_TYPES.contains(&envelope.kind.as_ref()) => {
                serde_json::from_str(raw.get()).ok()?
            }
            _ => Value::Null,
        };
        Some(Self::from_envelope(envelope.kind.into_owned(), &data))
    }

    fn from_envelope(kind: String, data: &Value) -> ServerMessage {
        let str_field = |key: &str| data.get(key).and_then(Value::as_str).map(str::to_owned);
        let parsed = match kind.as_str() {
            "status" => Some(ServerMessage::Status {
                queue_remaining: data
                    .pointer("/status/exec_info/queue_remaining")
                    .and_then(Value::as_u64),
                sid: str_field("sid"),
            }),
            "execution_start" => {
                str_field("prompt_id").map(|prompt_id| ServerMessage::ExecutionStart { prompt_id })
            }
            "execution_cached" => {
                str_field("prompt_id").map(|prompt_id| ServerMessage::ExecutionCached {
                    prompt_id,
                    nodes: data
                        .get("nodes")
                        .and_then(Value::as_array)
                        .map(|nodes| {
                            nodes
                                .iter()
                                .filter_map(|n| n.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }
            "executing" => Some(ServerMessage::Executing {
                node: str_field("node"),
                display_node: str_field("display_node"),
                prompt_id: str_field("prompt_id"),
            }),
            "executed" => match (str_field("prompt_id"), str_field("node")) {
                (Some(prompt_id), Some(node)) => Some(ServerMessage::Executed {
                    prompt_id,
                    node,
                    output: data.get("output").filter(|o| !o.is_null()).cloned(),
                }),
                _ => None,
            },
            "progress" => Some(ServerMessage::Progress {
                prompt_id: str_field("prompt_id"),
                node: str_field("node"),
                value: data.get("value").and_then(as_count).unwrap_or(0),
                max: data.get("max").and_then(as_count).unwrap_or(0),
            }),
            "execution_success" => str_field("prompt_id")
                .map(|prompt_id| ServerMessage::ExecutionSuccess { prompt_id }),
            "execution_error" => serde_json::from_value::<ExecutionError>(data.clone())
                .ok()
                .map(|e| ServerMessage::ExecutionError(Box::new(e))),
            "execution_interrupted" => {
                str_field("prompt_id").map(|prompt_id| ServerMessage::ExecutionInterrupted {
                    prompt_id,
                    node_id: str_field("node_id"),
                    node_type: str_field("node_type"),
                })
            }
            _ => None,
        };
        parsed.unwrap_or(ServerMessage::Other { kind })
    }

    /// The prompt this message is about, when it names one.
    pub fn prompt_id(&self) -> Option<&str> {
        match self {
            ServerMessage::ExecutionStart { prompt_id }
            | ServerMessage::ExecutionCached { prompt_id, .. }
            | ServerMessage::Executed { prompt_id, .. }
            | ServerMessage::ExecutionSuccess { prompt_id }
            | ServerMessage::ExecutionInterrupted { prompt_id, .. } => Some(prompt_id),
            ServerMessage::Executing { prompt_id, .. }
            | ServerMessage::Progress { prompt_id, .. } => prompt_id.as_deref(),
            ServerMessage::ExecutionError(e) => Some(&e.prompt_id),
            ServerMessage::Status { .. } | ServerMessage::Other { .. } => None,
        }
    }
}

/// Progress values are ints from samplers but floats from some custom nodes.
fn as_count(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_f64().map(|f| f.max(0.0) as u64))
}

/// Body of `POST /prompt`.
#[derive(Debug, Serialize)]
pub struct PromptRequest<'a> {
    /// The workflow, serialized as its compact JSON text.
    pub prompt: &'a crate::workflow::Workflow,
    pub client_id: &'a str,
    pub prompt_id: &'a str,
}

/// 200 answer of `POST /prompt`.
#[derive(Debug, Clone, Deserialize)]
pub struct PromptAccepted {
    pub prompt_id: String,
    #[serde(default)]
    pub number: Value,
    #[serde(default)]
    pub node_errors: BTreeMap<String, Value>,
}

/// 400 answer of `POST /prompt`: `{error: {type, message, details, extra_info}, node_errors}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct PromptRejected {
    pub error: ErrorBody,
    #[serde(default)]
    pub node_errors: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
pub struct ErrorBody {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub details: Value,
}

/// 200 answer of `POST /upload/image`: where the server stored the file. `name` differs
/// from the one sent when another file already held it (`name (1).ext`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct UploadAnswer {
    pub name: String,
    #[serde(default)]
    pub subfolder: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// One image reference in a history entry's outputs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ImageRef {
    pub filename: String,
    #[serde(default)]
    pub subfolder: String,
    #[serde(rename = "type", default = "default_image_type")]
    pub kind: String,
}

fn default_image_type() -> String {
    "output".to_owned()
}

/// `GET /history/{id}` entry, reduced to what the client reads.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct HistoryEntry {
    #[serde(default)]
    pub outputs: BTreeMap<String, Value>,
    #[serde(default)]
    pub status: Option<HistoryStatus>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HistoryStatus {
    #[serde(default)]
    pub status_str: String,
    #[serde(default)]
    pub completed: bool,
    #[serde(default)]
    pub messages: Vec<Value>,
}

impl HistoryEntry {
    /// The images of the given output nodes, in node order then image order.
    /// Entries that are not `{filename, subfolder, type}` objects are skipped.
    pub fn images_of(&self, nodes: &[String]) -> Vec<ImageRef> {
        nodes
            .iter()
            .filter_map(|node| self.outputs.get(node))
            .filter_map(|output| output.get("images").and_then(Value::as_array))
            .flatten()
            .filter_map(|image| serde_json::from_value::<ImageRef>(image.clone()).ok())
            .filter(|image| image.kind == "output")
            .collect()
    }
}

/// `GET /queue`: which prompt ids the server holds.
#[derive(Debug, Clone, Default)]
pub struct QueueSnapshot {
    pub running: Vec<String>,
    pub pending: Vec<String>,
}

impl QueueSnapshot {
    pub fn from_json(value: &Value) -> QueueSnapshot {
        // Items are `[number, prompt_id, prompt, extra_data, outputs]`.
        let ids = |key: &str| -> Vec<String> {
            value
                .get(key)
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|item| item.get(1).and_then(Value::as_str).map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        QueueSnapshot {
            running: ids("queue_running"),
            pending: ids("queue_pending"),
        }
    }

    pub fn contains(&self, prompt_id: &str) -> bool {
        self.running
            .iter()
            .chain(&self.pending)
            .any(|id| id == prompt_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_first_status_frame_with_sid() {
        let msg = ServerMessage::parse(
            r#"{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 3}}, "sid": "abc"}}"#,
        )
        .unwrap();
        assert_eq!(
            msg,
            ServerMessage::Status {
                queue_remaining: Some(3),
                sid: Some("abc".into())
            }
        );
    }

    #[test]
    fn executing_null_is_the_completion_signal() {
        let msg =
            ServerMessage::parse(r#"{"type":"executing","data":{"node":null,"prompt_id":"p1"}}"#)
                .unwrap();
        assert_eq!(
            msg,
            ServerMessage::Executing {
                node: None,
                display_node: None,
                prompt_id: Some("p1".into())
            }
        );
        assert_eq!(msg.prompt_id(), Some("p1"));
    }

    #[test]
    fn reconnect_hint_has_no_prompt_id() {
        let msg = ServerMessage::parse(r#"{"type":"executing","data":{"node":"10"}}"#).unwrap();
        assert_eq!(msg.prompt_id(), None);
    }

    #[test]
    fn unknown_and_malformed_messages_are_other() {
        assert_eq!(
            ServerMessage::parse(r#"{"type":"crystools.monitor","data":{"cpu":3}}"#),
            Some(ServerMessage::Other {
                kind: "crystools.monitor".into()
            })
        );
        // A known type with the wrong shape must not be mistaken for a real event.
        assert_eq!(
            ServerMessage::parse(r#"{"type":"execution_start","data":{"prompt_id":7}}"#),
            Some(ServerMessage::Other {
                kind: "execution_start".into()
            })
        );
        assert_eq!(ServerMessage::parse("not json"), None);
        assert_eq!(ServerMessage::parse("[1,2]"), None);
        // Types whose data is never read are not parsed further, but must still be JSON.
        assert_eq!(
            ServerMessage::parse(
                r#"{"type": "progress_state", "data": {"prompt_id": "p", "nodes": {"3": {"value": 2, "max": 20, "state": "running"}}}}"#
            ),
            Some(ServerMessage::Other {
                kind: "progress_state".into()
            })
        );
        assert_eq!(
            ServerMessage::parse(r#"{"type": "progress_state", "data": {"nodes": }"#),
            None
        );
        // An escaped type name is read like any other.
        assert!(matches!(
            ServerMessage::parse(r#"{"type": "execution\u005fstart", "data": {"prompt_id": "p"}}"#),
            Some(ServerMessage::ExecutionStart { .. })
        ));
    }

    #[test]
    fn parses_recorded_execution_error() {
        let text = r#"{"type":"execution_error","data":{"prompt_id":"p","node_id":"20","node_type":"ImageToMask","executed":[],"exception_message":"index 3 is out of bounds\n","exception_type":"IndexError","traceback":["a"],"current_inputs":{"channel":["alpha"]},"current_outputs":[],"timestamp":1}}"#;
        let ServerMessage::ExecutionError(err) = ServerMessage::parse(text).unwrap() else {
            panic!("not an execution_error");
        };
        assert_eq!(err.node_id.as_deref(), Some("20"));
        assert_eq!(err.node_type.as_deref(), Some("ImageToMask"));
        assert_eq!(err.exception_type, "IndexError");
        assert!(!err.is_blocker());
    }

    #[test]
    fn history_images_only_from_output_nodes() {
        let entry: HistoryEntry = serde_json::from_str(
            r#"{"outputs":{"9":{"images":[{"filename":"a_00001_.png","subfolder":"","type":"output"},{"filename":"t.png","subfolder":"","type":"temp"}]},"12":{"images":[{"filename":"x.png","subfolder":"","type":"output"}]}},"status":{"status_str":"success","completed":true,"messages":[]}}"#,
        )
        .unwrap();
        let images = entry.images_of(&["9".to_owned()]);
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].filename, "a_00001_.png");
    }

    #[test]
    fn queue_snapshot_reads_prompt_ids() {
        let q = QueueSnapshot::from_json(&serde_json::json!({
            "queue_running": [[0, "a", {}, {}, ["9"]]],
            "queue_pending": [[1, "b", {}, {}, ["9"]], [2, "c", {}, {}, ["9"]]]
        }));
        assert!(q.contains("a") && q.contains("c") && !q.contains("d"));
    }
}
