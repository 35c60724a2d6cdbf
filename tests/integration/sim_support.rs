//! Helpers shared by the simulator tests: a WebSocket client that keeps every frame, HTTP
//! shortcuts and small graphs. Every wait is bounded and driven by an event, not a sleep.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use plasma_batch::sim::SimConfig;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Upper bound for any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// A fast simulator: no sampler delay.
pub fn quick() -> SimConfig {
    SimConfig {
        step_ms: 0,
        ..SimConfig::default()
    }
}

#[derive(Debug, Clone)]
pub enum Frame {
    Json(Value),
    Binary(Vec<u8>),
    /// The connection ended (close frame, EOF or error).
    Closed(String),
}

pub struct Ws {
    pub stream: WsStream,
}

pub fn ws_url(base: &str, client_id: &str) -> String {
    format!(
        "{}/ws?clientId={client_id}",
        base.replacen("http://", "ws://", 1)
    )
}

impl Ws {
    pub async fn connect(base: &str, client_id: &str) -> Ws {
        let (stream, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(ws_url(base, client_id)),
        )
        .await
        .expect("ws connect timed out")
        .expect("ws connect failed");
        Ws { stream }
    }

    /// The next frame, or None if nothing arrives within `d`.
    pub async fn next_within(&mut self, d: Duration) -> Option<Frame> {
        loop {
            let msg = match tokio::time::timeout(d, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Frame::Closed("eof".into())),
                Ok(Some(Err(e))) => return Some(Frame::Closed(e.to_string())),
                Ok(Some(Ok(m))) => m,
            };
            return Some(match msg {
                Message::Text(t) => {
                    Frame::Json(serde_json::from_str(t.as_str()).expect("server sent invalid JSON"))
                }
                Message::Binary(b) => Frame::Binary(b.to_vec()),
                Message::Close(c) => Frame::Closed(format!("close {c:?}")),
                _ => continue,
            });
        }
    }

    pub async fn next(&mut self) -> Frame {
        self.next_within(WAIT)
            .await
            .expect("no WebSocket frame within the time limit")
    }

    pub async fn next_json(&mut self) -> Value {
        loop {
            match self.next().await {
                Frame::Json(v) => return v,
                Frame::Binary(_) => {}
                Frame::Closed(why) => panic!("socket closed while waiting for a message: {why}"),
            }
        }
    }

    /// JSON frames up to and including the first one `pred` accepts.
    pub async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let v = self.next_json().await;
            let done = pred(&v);
            out.push(v);
            if done {
                return out;
            }
        }
    }

    /// Frames up to the final `executing` with `node: null` for `prompt_id`.
    pub async fn until_done(&mut self, prompt_id: &str) -> Vec<Value> {
        self.until(|v| {
            v["type"] == "executing"
                && v["data"]["node"].is_null()
                && v["data"]["prompt_id"] == prompt_id
        })
        .await
    }

    /// Wait until the connection ends; returns why.
    pub async fn closed(&mut self) -> String {
        loop {
            if let Frame::Closed(why) = self.next().await {
                return why;
            }
        }
    }

    pub async fn send_text(&mut self, v: &Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send failed");
    }
}

pub fn types(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("http client")
}

pub async fn post_json(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let resp = http()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("request failed");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub async fn get_json(base: &str, path: &str) -> (u16, Value) {
    let resp = http()
        .get(format!("{base}{path}"))
        .send()
        .await
        .expect("request failed");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `EmptyImage -> SaveImage`.
pub fn empty_save(prefix: &str, color: u32) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": color}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["1", 0]}}
    })
}

/// The shipped txt2img shape: checkpoint, LoRA, two prompts, sampler, decode, save.
pub fn txt2img(seed: u64, steps: u32, text: &str, prefix: &str) -> Value {
    json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "AnythingXL_inkBase.safetensors"}},
        "10": {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "inkline_v2.safetensors", "strength_model": 0.8, "strength_clip": 0.8}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 96, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["10", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres", "clip": ["10", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0, "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}}
    })
}

/// Submit `prompt` for `client_id` with a fresh prompt id; returns the id.
pub async fn submit(base: &str, client_id: Option<&str>, prompt: &Value) -> String {
    let pid = uuid::Uuid::new_v4().to_string();
    let mut body = json!({"prompt": prompt, "prompt_id": pid});
    if let Some(c) = client_id {
        body["client_id"] = json!(c);
    }
    let (status, resp) = post_json(base, "/prompt", &body).await;
    assert_eq!(status, 200, "prompt rejected: {resp}");
    pid
}

/// Poll `/history/{id}` until it is non-empty (bounded).
pub async fn wait_history(base: &str, prompt_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, v) = get_json(base, &format!("/history/{prompt_id}")).await;
        if v.get(prompt_id).is_some() {
            return v[prompt_id].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history for {prompt_id} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
