//! What a running prompt tells its client, as `PromptExecutor` and `server.send_sync` do:
//! messages to the prompt's client (or every socket), the ones kept for `/history`
//! (`add_message`), `progress_state` with every node's state so far, and binary frames.

use axum::extract::ws::Message;
use serde_json::{Value, json};

use super::fault::Fault;
use super::pyjson;
use super::state::Shared;

/// One node's entry of `progress_state`, kept serialised (`"id": {...}`).
struct NodeProgress {
    node: String,
    max: Value,
    json: String,
}

/// The messages of one prompt's execution.
pub struct Messages<'a> {
    shared: &'a Shared,
    prompt_id: &'a str,
    /// The prompt's `client_id`, if it had one.
    pub client: Option<String>,
    /// `status.messages` of the history entry, in order.
    pub history: Vec<Value>,
    progress: Vec<NodeProgress>,
}

impl<'a> Messages<'a> {
    pub fn new(shared: &'a Shared, prompt_id: &'a str, client: Option<String>) -> Self {
        Messages {
            shared,
            prompt_id,
            client,
            history: Vec::new(),
            progress: Vec::new(),
        }
    }

    pub fn prompt_id(&self) -> &'a str {
        self.prompt_id
    }

    /// "→client; suppressed if none".
    pub fn to_client(&self, ty: &str, data: &Value) {
        if ty == "executed"
            && self
                .shared
                .faults()
                .any(|f| matches!(f, Fault::DropExecuted))
        {
            return;
        }
        if let Some(c) = &self.client {
            self.shared.send_json(ty, data, Some(c));
        }
    }

    /// "→client; broadcast if none".
    pub fn to_client_or_all(&self, msg: Message) {
        self.shared.send(msg, self.client.as_deref());
    }

    /// `PromptExecutor.add_message`: recorded for history, then sent.
    pub fn add_message(&mut self, ty: &str, data: Value, broadcast: bool) {
        if self.client.is_some() || broadcast {
            self.shared.send_json(ty, &data, self.client.as_deref());
        }
        self.history.push(Value::Array(vec![Value::from(ty), data]));
    }

    /// `progress_state`: every node's state so far, sent on each change (each sampler step
    /// too). Only the changed node's entry is serialised; the frame joins the others' text.
    pub fn progress_state(&mut self, node: &str, value: &Value, max: Value, state: &str) {
        #[derive(serde::Serialize)]
        struct Entry<'a> {
            value: &'a Value,
            max: &'a Value,
            state: &'a str,
            node_id: &'a str,
            prompt_id: &'a str,
            display_node_id: &'a str,
            parent_node_id: Option<()>,
            real_node_id: &'a str,
        }
        let entry = Entry {
            value,
            max: &max,
            state,
            node_id: node,
            prompt_id: self.prompt_id,
            display_node_id: node,
            parent_node_id: None,
            real_node_id: node,
        };
        let json = format!("{}: {}", pyjson::dumps(node), pyjson::dumps(&entry));
        match self.progress.iter_mut().find(|p| p.node == node) {
            Some(p) => {
                p.max = max;
                p.json = json;
            }
            None => self.progress.push(NodeProgress {
                node: node.to_owned(),
                max,
                json,
            }),
        }
        let mut text = String::with_capacity(
            64 + self
                .progress
                .iter()
                .map(|p| p.json.len() + 2)
                .sum::<usize>(),
        );
        text.push_str(r#"{"type": "progress_state", "data": {"prompt_id": "#);
        text.push_str(&pyjson::dumps(self.prompt_id));
        text.push_str(r#", "nodes": {"#);
        for (i, p) in self.progress.iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            text.push_str(&p.json);
        }
        text.push_str("}}}");
        self.to_client_or_all(Message::Text(text.into()));
    }

    /// The node's `progress_state` entry at its max, `finished`.
    pub fn finish_progress(&mut self, node: &str) {
        let max = match self.progress.iter().find(|p| p.node == node) {
            Some(p) => p.max.clone(),
            None => json!(1),
        };
        self.progress_state(node, &max.clone(), max, "finished");
    }
}

/// `[u32 BE event][u32 BE word][head][body]`, the shape of every binary frame.
pub fn binary_frame(event: u32, word: u32, head: &[u8], body: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(8 + head.len() + body.len());
    frame.extend_from_slice(&event.to_be_bytes());
    frame.extend_from_slice(&word.to_be_bytes());
    frame.extend_from_slice(head);
    frame.extend_from_slice(body);
    Message::Binary(frame.into())
}
