//! The recorder: drives a ComfyUI server (the real one, or this simulator) through fixed
//! scenarios and writes every exchange as JSON lines, the format the conformance tests
//! replay against the simulator (`tests/fixtures/comfy/`, `docs/simulator.md`).
//!
//! One line per event, in the order the client saw them: `t_ms` (since the scenario
//! started), `kind`, and its payload:
//! - `ws_open` / `ws_reopen_same_client_id` (`client_id`, `socket`),
//! - `ws_text` (`msg`: the JSON frame) and `ws_binary` (`event`, `image_type`, `bytes`,
//!   `head_hex`: the first 12 bytes); `socket` names the connection (`a`, `b`),
//! - `http_request` (`method`, `path`, `body`: JSON or null; for `POST /upload/image`
//!   `multipart` instead: the image part's `filename`, `bytes`, `sha256` and `base64`, then
//!   the text fields `type`, `subfolder`, `overwrite` as sent) and `http_response`
//!   (`status`, `content_type`, then `body` when it is JSON, else `bytes` and `head_hex`,
//!   the first 16 bytes), or `http_error` when the connection was refused,
//! - `server_killed`, `ws_error_after_kill`, `server_restarted`, `server_ready` (07 only).
//!
//! Each scenario waits on the server's own messages before its next request (never on a
//! clock), except where it must let a node get under way before interrupting or killing
//! it; those short pauses are named where they are taken.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// The scenarios, by file name (without `.jsonl`), in recording order.
pub const SCENARIOS: &[&str] = &[
    "01-normal-then-cached",
    "02-validation-errors",
    "03-runtime-error",
    "04-queue-interrupt-delete",
    "05-other-clients",
    "06-reference",
    "07-server-crash-restart",
    "08-txt2img-sampler",
    "09-upload-img2img",
    "10-interrupt-in-node",
    "11-node-classes",
];

/// What a recording may need besides the server's URL.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// Makes the graphs of one recording session unlike any earlier one (colours, seeds),
    /// so a server that ran them before has nothing cached. Any value; the same within a
    /// session (03 relies on 01's cached node).
    pub tag: u32,
    /// The checkpoint the sampler scenarios load.
    pub checkpoint: String,
    /// Scenario 07: a shell command that kills the server at once (SIGKILL) and one that
    /// starts it again and returns once it answers. Without both, 07 cannot be recorded.
    pub kill_cmd: Option<String>,
    pub start_cmd: Option<String>,
    /// Upper bound for any one wait (a message, a response).
    pub wait: Duration,
    /// The server's input folder when it is not its install folder's `input/` (the server
    /// was started with `--input-directory`): written `ComfyUI/input` in the recording, as
    /// the install folder is written `ComfyUI`. `None`: 09 reads it from the command line
    /// `/system_stats` shows (`--input-directory`, `--base-directory`).
    pub input_dir: Option<String>,
}

impl Default for RecordOptions {
    fn default() -> Self {
        RecordOptions {
            tag: 0,
            checkpoint: "AnythingXL_inkBase.safetensors".into(),
            kill_cmd: None,
            start_cmd: None,
            wait: Duration::from_secs(300),
            input_dir: None,
        }
    }
}

/// Why a recording stopped.
#[derive(Debug, thiserror::Error)]
#[error("{scenario}: {message}")]
pub struct RecordError {
    pub scenario: String,
    pub message: String,
}

/// Record one scenario (a name from [`SCENARIOS`]) against the server at `base`.
pub async fn record(
    base: &str,
    scenario: &str,
    opts: &RecordOptions,
) -> Result<Vec<Value>, RecordError> {
    let mut s = Session::new(base, opts);
    let result = match scenario {
        "01-normal-then-cached" => normal_then_cached(&mut s).await,
        "02-validation-errors" => validation_errors(&mut s).await,
        "03-runtime-error" => runtime_error(&mut s).await,
        "04-queue-interrupt-delete" => queue_interrupt_delete(&mut s).await,
        "05-other-clients" => other_clients(&mut s).await,
        "06-reference" => reference(&mut s).await,
        "07-server-crash-restart" => crash_restart(&mut s).await,
        "08-txt2img-sampler" => sampler(&mut s).await,
        "09-upload-img2img" => upload_img2img(&mut s).await,
        "10-interrupt-in-node" => interrupt_in_node(&mut s).await,
        "11-node-classes" => node_classes(&mut s).await,
        _ => Err(format!(
            "no such scenario (known: {})",
            SCENARIOS.join(", ")
        )),
    };
    s.close_sockets().await;
    result.map_err(|message| RecordError {
        scenario: scenario.to_string(),
        message,
    })?;
    let lines = s.lines();
    Ok(match s.input_dir.as_deref() {
        Some(dir) if !dir.is_empty() => lines
            .into_iter()
            .map(|l| replace_in_strings(l, dir.trim_end_matches('/'), "ComfyUI/input"))
            .collect(),
        _ => lines,
    })
}

/// `from` replaced by `to` in every string of `v`.
fn replace_in_strings(v: Value, from: &str, to: &str) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace(from, to)),
        Value::Array(a) => Value::Array(
            a.into_iter()
                .map(|x| replace_in_strings(x, from, to))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, x)| (k, replace_in_strings(x, from, to)))
                .collect(),
        ),
        other => other,
    }
}

type Step = Result<(), String>;

/// An incoming frame as the scenario sees it.
enum Incoming {
    Json(Value),
    Binary,
    Closed(String),
}

struct Socket {
    label: &'static str,
    client_id: String,
    frames: mpsc::UnboundedReceiver<Incoming>,
    reader: tokio::task::JoinHandle<()>,
    closer: mpsc::UnboundedSender<()>,
}

struct Session {
    base: String,
    opts: RecordOptions,
    http: reqwest::Client,
    t0: Instant,
    log: Arc<Mutex<Vec<Value>>>,
    sockets: Vec<Socket>,
    /// The server's input folder, as it appears in its messages (see `RecordOptions`).
    input_dir: Option<String>,
}

fn t_ms(t0: Instant) -> f64 {
    (t0.elapsed().as_secs_f64() * 10_000.0).round() / 10.0
}

impl Session {
    fn new(base: &str, opts: &RecordOptions) -> Session {
        Session {
            base: base.trim_end_matches('/').to_string(),
            opts: opts.clone(),
            http: reqwest::Client::builder()
                .timeout(opts.wait)
                .build()
                .expect("an HTTP client with default TLS settings"),
            t0: Instant::now(),
            log: Arc::new(Mutex::new(Vec::new())),
            sockets: Vec::new(),
            input_dir: opts.input_dir.clone(),
        }
    }

    fn push(&self, line: Value) {
        let mut line = scrub(line);
        let mut out = serde_json::Map::new();
        out.insert("t_ms".into(), json!(t_ms(self.t0)));
        if let Value::Object(m) = &mut line {
            out.append(m);
        }
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Value::Object(out));
    }

    fn lines(&self) -> Vec<Value> {
        std::mem::take(
            &mut *self
                .log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Open `/ws?clientId=` as socket `label`; its frames are logged as they arrive.
    async fn open(&mut self, label: &'static str, client_id: &str, kind: &str) -> Step {
        let url = format!(
            "{}/ws?clientId={client_id}",
            self.base.replacen("http", "ws", 1)
        );
        let (stream, _) = tokio::time::timeout(
            self.opts.wait,
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        .map_err(|_| format!("{url}: no WebSocket within {:?}", self.opts.wait))?
        .map_err(|e| format!("{url}: {e}"))?;
        self.push(json!({"kind": kind, "client_id": client_id, "socket": label}));
        let (mut sink, mut stream) = stream.split();
        let (tx, rx) = mpsc::unbounded_channel();
        let (closer, mut close_rx) = mpsc::unbounded_channel::<()>();
        let log = Arc::clone(&self.log);
        let t0 = self.t0;
        let reader = tokio::spawn(async move {
            let push = |line: Value| {
                let line = scrub(line);
                let mut out = serde_json::Map::new();
                out.insert("t_ms".into(), json!(t_ms(t0)));
                if let Value::Object(mut m) = line {
                    out.append(&mut m);
                }
                log.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Value::Object(out));
            };
            loop {
                let msg = tokio::select! {
                    m = stream.next() => m,
                    _ = close_rx.recv() => {
                        let _ = sink.send(Message::Close(None)).await;
                        return;
                    }
                };
                let incoming = match msg {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<Value>(&t) {
                        Ok(v) => {
                            push(json!({"kind": "ws_text", "socket": label, "msg": v}));
                            Incoming::Json(v)
                        }
                        Err(e) => Incoming::Closed(format!("a text frame that is not JSON: {e}")),
                    },
                    Some(Ok(Message::Binary(b))) => {
                        let word = |i: usize| {
                            b.get(i..i + 4)
                                .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
                        };
                        push(json!({
                            "kind": "ws_binary", "socket": label,
                            "event": word(0), "image_type": word(4), "bytes": b.len(),
                            "head_hex": hex::encode(&b[..b.len().min(12)]),
                        }));
                        Incoming::Binary
                    }
                    Some(Ok(Message::Close(c))) => Incoming::Closed(format!("close {c:?}")),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => Incoming::Closed(e.to_string()),
                    None => Incoming::Closed("end of stream".into()),
                };
                let closed = matches!(incoming, Incoming::Closed(_));
                if tx.send(incoming).is_err() || closed {
                    return;
                }
            }
        });
        self.sockets.push(Socket {
            label,
            client_id: client_id.to_string(),
            frames: rx,
            reader,
            closer,
        });
        Ok(())
    }

    fn socket(&mut self, label: &str) -> &mut Socket {
        self.sockets
            .iter_mut()
            .rev()
            .find(|s| s.label == label)
            .expect("the scenario opened this socket")
    }

    fn client_id(&mut self, label: &str) -> String {
        self.socket(label).client_id.clone()
    }

    /// Frames on socket `label` up to and including the first JSON one `pred` accepts.
    async fn until(&mut self, label: &str, pred: impl Fn(&Value) -> bool) -> Result<Value, String> {
        let wait = self.opts.wait;
        let sock = self.socket(label);
        loop {
            match tokio::time::timeout(wait, sock.frames.recv()).await {
                Err(_) => return Err(format!("socket {label}: nothing awaited within {wait:?}")),
                Ok(None) => return Err(format!("socket {label}: reader gone")),
                Ok(Some(Incoming::Closed(why))) => {
                    return Err(format!("socket {label} closed: {why}"));
                }
                Ok(Some(Incoming::Binary)) => {}
                Ok(Some(Incoming::Json(v))) => {
                    if pred(&v) {
                        return Ok(v);
                    }
                }
            }
        }
    }

    /// Wait for the final `executing` with `node: null` for `prompt_id` on socket `label`.
    async fn until_done(&mut self, label: &str, prompt_id: &str) -> Step {
        self.until(label, |v| {
            v["type"] == "executing"
                && v["data"]["node"].is_null()
                && v["data"]["prompt_id"] == prompt_id
        })
        .await
        .map(|_| ())
    }

    async fn until_executing(&mut self, label: &str, prompt_id: &str, node: &str) -> Step {
        self.until(label, |v| {
            v["type"] == "executing"
                && v["data"]["node"] == node
                && v["data"]["prompt_id"] == prompt_id
        })
        .await
        .map(|_| ())
    }

    /// Wait until socket `label` ends (after the server was killed).
    async fn until_closed(&mut self, label: &str) -> Result<String, String> {
        let wait = self.opts.wait;
        let sock = self.socket(label);
        loop {
            match tokio::time::timeout(wait, sock.frames.recv()).await {
                Err(_) => return Err(format!("socket {label} still open after {wait:?}")),
                Ok(None) => return Ok("reader gone".into()),
                Ok(Some(Incoming::Closed(why))) => return Ok(why),
                Ok(Some(_)) => {}
            }
        }
    }

    async fn close_sockets(&mut self) {
        for s in self.sockets.drain(..) {
            let _ = s.closer.send(());
            let _ = tokio::time::timeout(Duration::from_secs(2), s.reader).await;
        }
    }

    /// One HTTP request, logged with its answer. `Err` only when there is no answer.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Option<Value>), String> {
        self.push(json!({"kind": "http_request", "method": method, "path": path, "body": body}));
        let url = format!("{}{path}", self.base);
        let req = if method == "GET" {
            self.http.get(&url)
        } else {
            let mut r = self.http.post(&url);
            if let Some(b) = &body {
                r = r
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(b).unwrap_or_default());
            }
            r
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.push(json!({"kind": "http_error", "error": e.to_string()}));
                return Err(format!("{method} {url}: {e}"));
            }
        };
        self.response(resp, method, &url).await
    }

    /// Log an answer: its status, content type, and body (JSON, else its length and start).
    async fn response(
        &mut self,
        resp: reqwest::Response,
        method: &str,
        url: &str,
    ) -> Result<(u16, Option<Value>), String> {
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
        let is_json = content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json"));
        let parsed = is_json
            .then(|| serde_json::from_slice::<Value>(&bytes).ok())
            .flatten();
        match &parsed {
            Some(v) => self.push(json!({
                "kind": "http_response", "status": status,
                "content_type": content_type, "body": v,
            })),
            None => self.push(json!({
                "kind": "http_response", "status": status, "content_type": content_type,
                "bytes": bytes.len(), "head_hex": hex::encode(&bytes[..bytes.len().min(16)]),
            })),
        }
        Ok((status, parsed))
    }

    /// `POST /prompt`; returns the answer's body. `client` names a socket or `None`.
    async fn post_prompt(
        &mut self,
        prompt: &Value,
        client: Option<&str>,
        extra: Value,
    ) -> Result<(u16, Value), String> {
        let mut body = json!({"prompt": prompt});
        if let Some(label) = client {
            body["client_id"] = json!(self.client_id(label));
        }
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        let (status, v) = self.request("POST", "/prompt", Some(body)).await?;
        Ok((status, v.unwrap_or(Value::Null)))
    }

    /// Submit a prompt with a fresh `prompt_id` that must be accepted; returns the id.
    async fn submit(
        &mut self,
        prompt: &Value,
        client: Option<&str>,
        extra: Value,
    ) -> Result<String, String> {
        let pid = uuid::Uuid::new_v4().to_string();
        let mut extra = extra;
        if extra.is_null() {
            extra = json!({});
        }
        extra["prompt_id"] = json!(pid);
        let (status, body) = self.post_prompt(prompt, client, extra).await?;
        if status != 200 {
            return Err(format!("the server refused a prompt ({status}): {body}"));
        }
        Ok(pid)
    }

    async fn get(&mut self, path: &str) -> Result<(u16, Option<Value>), String> {
        self.request("GET", path, None).await
    }

    /// `POST /upload/image` (multipart: the `image` part, then the text `fields` in order),
    /// logged with the bytes sent (base64: the replay sends them again) and the answer.
    async fn upload(
        &mut self,
        filename: &str,
        bytes: &[u8],
        fields: &[(&str, &str)],
    ) -> Result<(u16, Option<Value>), String> {
        use base64::Engine as _;
        use sha2::Digest as _;
        let mut multipart = serde_json::Map::new();
        multipart.insert("filename".into(), json!(filename));
        multipart.insert("bytes".into(), json!(bytes.len()));
        multipart.insert(
            "sha256".into(),
            json!(hex::encode(sha2::Sha256::digest(bytes))),
        );
        for (k, v) in fields {
            multipart.insert((*k).into(), json!(v));
        }
        multipart.insert(
            "base64".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
        );
        self.push(json!({"kind": "http_request", "method": "POST", "path": "/upload/image", "multipart": multipart}));
        let mut form = reqwest::multipart::Form::new().part(
            "image",
            reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(filename.to_string()),
        );
        for (k, v) in fields {
            form = form.text((*k).to_string(), (*v).to_string());
        }
        let url = format!("{}/upload/image", self.base);
        let resp = match self.http.post(&url).multipart(form).send().await {
            Ok(r) => r,
            Err(e) => {
                self.push(json!({"kind": "http_error", "error": e.to_string()}));
                return Err(format!("POST {url}: {e}"));
            }
        };
        self.response(resp, "POST", &url).await
    }

    /// The server's input folder from its command line (`/system_stats` `argv`), when it
    /// was moved off the install folder; not part of the recording.
    async fn learn_input_dir(&mut self) {
        if self.input_dir.is_some() {
            return;
        }
        let url = format!("{}/system_stats", self.base);
        let Ok(resp) = self.http.get(&url).send().await else {
            return;
        };
        let stats: Value = resp.json().await.unwrap_or(Value::Null);
        let argv: Vec<&str> = stats["system"]["argv"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let after = |flag: &str| {
            argv.iter()
                .position(|a| *a == flag)
                .and_then(|i| argv.get(i + 1))
                .map(|v| (*v).to_string())
        };
        self.input_dir = after("--input-directory")
            .or_else(|| after("--base-directory").map(|b| format!("{b}/input")));
    }

    /// Open socket `a` with a fresh client id and take its connect-time `status`.
    async fn open_a(&mut self) -> Step {
        self.open("a", &client_id(), "ws_open").await?;
        self.until("a", |v| v["type"] == "status").await.map(|_| ())
    }

    /// `POST /free` that empties the server's node cache.
    async fn free(&mut self) -> Step {
        let body = json!({"unload_models": false, "free_memory": true});
        self.request("POST", "/free", Some(body)).await.map(|_| ())
    }

    /// Once `node` of `prompt_id` runs (and has had a moment to get under way), a targeted
    /// `POST /interrupt`.
    async fn interrupt_during(&mut self, label: &str, prompt_id: &str, node: &str) -> Step {
        self.until_executing(label, prompt_id, node).await?;
        let_node_start().await;
        let body = json!({"prompt_id": prompt_id});
        self.request("POST", "/interrupt", Some(body))
            .await
            .map(|_| ())
    }

    /// Run a shell command (07's kill and start).
    fn shell(what: &str, cmd: Option<&String>) -> Step {
        let cmd = cmd.ok_or_else(|| {
            format!("needs a command to {what} the server (--kill-cmd and --start-cmd)")
        })?;
        // Its output is not the recording's: a server it starts must not hold our pipes.
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("cannot run `{cmd}`: {e}"))?;
        if !status.success() {
            return Err(format!("`{cmd}` failed ({status})"));
        }
        Ok(())
    }

    /// The first image of `history[prompt_id].outputs[node]`, as a `/view` path.
    fn view_path(history: Option<&Value>, prompt_id: &str, node: &str) -> Result<String, String> {
        let img = history
            .and_then(|h| h[prompt_id]["outputs"][node]["images"].get(0))
            .ok_or_else(|| format!("history of {prompt_id} has no image from node {node}"))?;
        let s = |k: &str| img[k].as_str().unwrap_or("").to_string();
        Ok(format!(
            "/view?filename={}&subfolder={}&type={}",
            s("filename"),
            s("subfolder"),
            s("type")
        ))
    }
}

/// The server's install folder in paths (tracebacks) as `ComfyUI/`: the recording does
/// not depend on where the server was unpacked, nor tells where that was.
fn scrub(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(scrub_paths(&s)),
        Value::Array(a) => Value::Array(a.into_iter().map(scrub).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, scrub(v))).collect()),
        other => other,
    }
}

/// `/any/where/ComfyUI-0.8.0/execution.py` -> `ComfyUI/execution.py`.
fn scrub_paths(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("/ComfyUI") {
        // The path starts after the last delimiter before it and must be absolute.
        let start = rest[..i]
            .rfind(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '(' | '='))
            .map_or(0, |d| d + 1);
        let seg_end = rest[i + 1..].find('/').map(|j| i + 1 + j);
        match seg_end {
            Some(end) if rest[start..].starts_with('/') => {
                out.push_str(&rest[..start]);
                out.push_str("ComfyUI");
                rest = &rest[end..];
            }
            _ => {
                out.push_str(&rest[..=i]);
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn client_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A pause that lets a node the server just announced get under way, so that what comes
/// next (an interrupt, a kill) lands while it runs rather than before it starts. Only the
/// recording waits here; the replay sends the same request as soon as it has seen the
/// same messages.
async fn let_node_start() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn empty_save(prefix: &str, w: u32, h: u32, color: u32) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": w, "height": h, "batch_size": 1, "color": color}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["1", 0]}}
    })
}

/// `EmptyImage` -> `ImageBlur` x `blurs` -> `SaveImage`: on a CPU each blur of 1024x1024
/// takes a second or more, long enough to interrupt or kill the server mid-chain.
fn blur_chain(prefix: &str, color: u32, blurs: usize) -> Value {
    let mut g = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1, "color": color}},
    });
    let mut last = "1".to_string();
    for i in 0..blurs {
        let id = (10 + i).to_string();
        g[&id] = json!({"class_type": "ImageBlur", "inputs": {"image": [last, 0], "blur_radius": 31, "sigma": 5.0}});
        last = id;
    }
    g["9"] = json!({"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": [last, 0]}});
    g
}

fn txt2img(ckpt: &str, seed: u64, steps: u32, prefix: &str) -> Value {
    json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 96, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk, ink", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres, bad hands", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}}
    })
}

/// A colour no earlier session used (24 bits), from the session tag and a per-graph salt.
fn color(s: &Session, salt: u32) -> u32 {
    (s.opts
        .tag
        .wrapping_mul(2_654_435_761)
        .wrapping_add(salt * 7919))
        & 0xFF_FFFF
}

/// 01: a prompt with a client-chosen id, then the identical prompt again (fully cached).
async fn normal_then_cached(s: &mut Session) -> Step {
    s.open_a().await?;
    let graph = empty_save("plasma_rec_normal", 64, 48, color(s, 1));
    for _ in 0..2 {
        let pid = s.submit(&graph, Some("a"), Value::Null).await?;
        s.until_done("a", &pid).await?;
        let (_, history) = s.get(&format!("/history/{pid}")).await?;
        let view = Session::view_path(history.as_ref(), &pid, "9")?;
        s.get(&view).await?;
    }
    Ok(())
}

/// 02: `POST /prompt` rejected in each of the ways validation has.
async fn validation_errors(s: &mut Session) -> Step {
    let cid = client_id();
    let c = color(s, 1);
    let with = |prompt: Value| json!({"prompt": prompt, "client_id": cid});
    let image = |inputs: Value| json!({"class_type": "EmptyImage", "inputs": inputs});
    let save = |from: &str| json!({"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": [from, 0]}});
    let bodies = [
        with(json!({"1": {"class_type": "NoSuchNode", "inputs": {}}, "9": save("1")})),
        with(
            json!({"1": image(json!({"height": 48, "batch_size": 1, "color": c})), "9": save("1")}),
        ),
        with(
            json!({"1": image(json!({"width": 0, "height": 48, "batch_size": 1, "color": c})), "9": save("1")}),
        ),
        with(json!({
            "1": image(json!({"width": 64, "height": 48, "batch_size": 1, "color": c})),
            "20": {"class_type": "ImageToMask", "inputs": {"image": ["1", 0], "channel": "purple"}},
            "21": {"class_type": "MaskToImage", "inputs": {"mask": ["20", 0]}},
            "9": save("21"),
        })),
        with(json!({"1": image(json!({"width": 64, "height": 48, "batch_size": 1, "color": c}))})),
        with(
            json!({"1": image(json!({"width": 64, "height": 48, "batch_size": 1, "color": c})), "9": save("77")}),
        ),
        with(
            json!({"1": image(json!({"width": "wide", "height": 48, "batch_size": 1, "color": c})), "9": save("1")}),
        ),
        json!({"client_id": cid}),
        json!({"prompt": "not a graph", "client_id": cid}),
    ];
    for body in bodies {
        s.request("POST", "/prompt", Some(body)).await?;
    }
    Ok(())
}

/// 03: a node raises at run time (`ImageToMask` channel `alpha` of an RGB image); node 1 is
/// cached from 01.
async fn runtime_error(s: &mut Session) -> Step {
    s.open_a().await?;
    let graph = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": color(s, 1)}},
        "20": {"class_type": "ImageToMask", "inputs": {"image": ["1", 0], "channel": "alpha"}},
        "21": {"class_type": "MaskToImage", "inputs": {"mask": ["20", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "plasma_rec_err", "images": ["21", 0]}}
    });
    let pid = s.submit(&graph, Some("a"), Value::Null).await?;
    s.until_done("a", &pid).await?;
    s.get(&format!("/history/{pid}")).await?;
    Ok(())
}

/// 04: three prompts queued; the third deleted from the queue before it runs; the first
/// interrupted while its first blur runs (a plain tensor node: the interrupt hits at the
/// next node), then the second runs.
async fn queue_interrupt_delete(s: &mut Session) -> Step {
    s.open_a().await?;
    let first = s
        .submit(
            &blur_chain("plasma_rec_q1", color(s, 4), 2),
            Some("a"),
            Value::Null,
        )
        .await?;
    // Queued behind a prompt that is already running, so /queue shows one running, two pending.
    s.until_executing("a", &first, "1").await?;
    let second = s
        .submit(
            &empty_save("plasma_rec_q2", 64, 48, color(s, 5)),
            Some("a"),
            Value::Null,
        )
        .await?;
    let third = s
        .submit(
            &empty_save("plasma_rec_q3", 64, 48, color(s, 6)),
            Some("a"),
            Value::Null,
        )
        .await?;
    s.get("/queue").await?;
    s.request("POST", "/queue", Some(json!({"delete": [third]})))
        .await?;
    s.interrupt_during("a", &first, "10").await?;
    s.until_done("a", &first).await?;
    s.until_done("a", &second).await?;
    for pid in [&first, &second, &third] {
        s.get(&format!("/history/{pid}")).await?;
    }
    Ok(())
}

/// 05: a second socket sees only the `status` broadcasts of another client's prompt; a
/// prompt without `client_id` gets no `executing`/`executed` at all.
async fn other_clients(s: &mut Session) -> Step {
    s.open_a().await?;
    s.open("b", &client_id(), "ws_open").await?;
    s.until("b", |v| v["type"] == "status").await?;
    let pid = s
        .submit(
            &empty_save("plasma_rec_other", 64, 48, color(s, 7)),
            Some("a"),
            Value::Null,
        )
        .await?;
    s.until_done("a", &pid).await?;
    // b's last broadcast of that prompt: the queue is empty again.
    s.until("b", |v| {
        v["type"] == "status" && v["data"]["status"]["exec_info"]["queue_remaining"] == 0
    })
    .await?;
    let anon = s
        .submit(
            &empty_save("plasma_rec_noclient", 64, 48, color(s, 8)),
            None,
            Value::Null,
        )
        .await?;
    // The history entry is written before the `status` broadcast that follows the prompt.
    let started =
        |v: &Value| v["type"] == "progress_state" && v["data"]["prompt_id"] == anon.as_str();
    for label in ["a", "b"] {
        s.until(label, started).await?;
        s.until(label, |v| {
            v["type"] == "status" && v["data"]["status"]["exec_info"]["queue_remaining"] == 0
        })
        .await?;
    }
    s.get(&format!("/history/{anon}")).await?;
    Ok(())
}

/// 06: reference answers: node specs, an idle queue, system stats, the latest history, and
/// `/view` refusing a path traversal and a missing file.
async fn reference(s: &mut Session) -> Step {
    for class in [
        "EmptyImage",
        "SaveImage",
        "KSampler",
        "CheckpointLoaderSimple",
        "LoraLoader",
    ] {
        s.get(&format!("/object_info/{class}")).await?;
    }
    s.get("/queue").await?;
    s.get("/system_stats").await?;
    s.get("/history?max_items=2").await?;
    s.get("/view?filename=../../etc/passwd&type=output").await?;
    s.get("/view?filename=nope.png&type=output").await?;
    Ok(())
}

/// 07: the server is killed (SIGKILL) mid-prompt and started again; the same `clientId`
/// reconnects to an empty queue and history.
async fn crash_restart(s: &mut Session) -> Step {
    if s.opts.kill_cmd.is_none() || s.opts.start_cmd.is_none() {
        return Err(
            "needs a command to kill the server and one to start it (--kill-cmd, --start-cmd)"
                .into(),
        );
    }
    let cid = client_id();
    s.open("a", &cid, "ws_open").await?;
    s.until("a", |v| v["type"] == "status").await?;
    let pid = s
        .submit(
            &blur_chain("plasma_rec_crash", color(s, 9), 1),
            Some("a"),
            Value::Null,
        )
        .await?;
    s.until_executing("a", &pid, "10").await?;
    Session::shell("kill", s.opts.kill_cmd.as_ref())?;
    s.push(json!({"kind": "server_killed", "signal": "SIGKILL"}));
    let why = s.until_closed("a").await?;
    s.push(json!({"kind": "ws_error_after_kill", "error": why}));
    if s.get(&format!("/history/{pid}")).await.is_ok() {
        return Err("the server still answered after the kill command".into());
    }
    s.push(json!({"kind": "server_restarted"}));
    Session::shell("start", s.opts.start_cmd.as_ref())?;
    s.push(json!({"kind": "server_ready"}));
    s.close_sockets().await;
    s.open("a", &cid, "ws_reopen_same_client_id").await?;
    s.until("a", |v| v["type"] == "status").await?;
    s.get(&format!("/history/{pid}")).await?;
    s.get("/queue").await?;
    Ok(())
}

/// 08: the real sampler path after `POST /free` and a tiny prompt: progress per step with latent previews,
/// then an interrupt during sampling, then an unknown checkpoint (400).
async fn sampler(s: &mut Session) -> Step {
    s.open_a().await?;
    s.free().await?;
    // The server applies the `/free` when its worker next looks, which can be after it took
    // the next prompt: a tiny prompt of other nodes first, so the sampler's prompts find
    // the cache the same either way (as in 10).
    let clear = s
        .submit(
            &empty_save("plasma_rec_clear", 8, 8, color(s, 14)),
            Some("a"),
            Value::Null,
        )
        .await?;
    s.until_done("a", &clear).await?;
    let seed = 34_296 + u64::from(s.opts.tag % 100_000) * 2;
    let ckpt = s.opts.checkpoint.clone();
    let preview = json!({"extra_data": {"preview_method": "latent2rgb"}});
    let pid = s
        .submit(
            &txt2img(&ckpt, seed, 6, "rec_sampler"),
            Some("a"),
            preview.clone(),
        )
        .await?;
    s.until_done("a", &pid).await?;
    s.get(&format!("/history/{pid}")).await?;
    let pid = s
        .submit(
            &txt2img(&ckpt, seed + 1, 12, "rec_sampler"),
            Some("a"),
            preview,
        )
        .await?;
    s.until("a", |v| {
        v["type"] == "progress" && v["data"]["value"] == 2 && v["data"]["prompt_id"] == pid.as_str()
    })
    .await?;
    s.request("POST", "/interrupt", Some(json!({"prompt_id": pid})))
        .await?;
    s.until_done("a", &pid).await?;
    s.get(&format!("/history/{pid}")).await?;
    s.post_prompt(
        &txt2img("nope.safetensors", 1, 4, "rec_sampler"),
        Some("a"),
        json!({}),
    )
    .await?;
    Ok(())
}

/// A small solid-colour PNG (64x96: the VAE encodes it in moments on a CPU).
fn solid_png(color: u32) -> Vec<u8> {
    super::image::encode_png(&super::image::Image::solid(64, 96, 1, color), 0, &[])
}

fn img2img(ckpt: &str, image: &str, seed: u64) -> Value {
    json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "10": {"class_type": "LoadImage", "inputs": {"image": image}},
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "the same panel, more ink", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 3, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.6, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["11", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "rec_img2img", "images": ["8", 0]}}
    })
}

/// 09: input images. Uploads under a subfolder of this session: a new name, the same name
/// with the same bytes (the same name back, nothing written), the same name with other
/// bytes (`ref (1).png`), `overwrite=true` (the name kept), a file that is not an image
/// (stored as is), a `../` subfolder (400), and `/view?type=input`. Then img2img from the
/// upload after `POST /free`, a `LoadImage` of a missing file (400 at POST) and one of the
/// stored non-image (accepted, fails when `LoadImage` runs).
async fn upload_img2img(s: &mut Session) -> Step {
    s.learn_input_dir().await;
    s.open_a().await?;
    let sub = format!("plasma_rec_{:08x}", color(s, 12) ^ s.opts.tag);
    let (first, second) = (solid_png(color(s, 13)), solid_png(color(s, 14)));
    let input = [("type", "input"), ("subfolder", sub.as_str())];
    s.upload("ref.png", &first, &input).await?;
    s.upload("ref.png", &first, &input).await?;
    s.upload("ref.png", &second, &input).await?;
    let overwrite = [
        ("type", "input"),
        ("subfolder", sub.as_str()),
        ("overwrite", "true"),
    ];
    s.upload("ref.png", &second, &overwrite).await?;
    s.upload("notes.png", b"not an image at all\n", &input)
        .await?;
    s.upload(
        "evil.png",
        &first,
        &[("type", "input"), ("subfolder", "../../escape")],
    )
    .await?;
    s.get(&format!(
        "/view?filename=ref.png&subfolder={sub}&type=input"
    ))
    .await?;
    s.free().await?;
    let ckpt = s.opts.checkpoint.clone();
    let seed = 7 + u64::from(s.opts.tag % 100_000) * 2;
    let pid = s
        .submit(
            &img2img(&ckpt, &format!("{sub}/ref (1).png"), seed),
            Some("a"),
            Value::Null,
        )
        .await?;
    s.until_done("a", &pid).await?;
    s.get(&format!("/history/{pid}")).await?;
    s.post_prompt(
        &img2img(&ckpt, &format!("{sub}/missing.png"), seed),
        Some("a"),
        json!({}),
    )
    .await?;
    let pid = s
        .submit(
            &img2img(&ckpt, &format!("{sub}/notes.png"), seed + 1),
            Some("a"),
            Value::Null,
        )
        .await?;
    s.until_done("a", &pid).await?;
    s.get(&format!("/history/{pid}")).await?;
    Ok(())
}

/// 10: interrupts inside a node and at a node boundary. A VAE decode is interrupted while
/// it runs (a model node: ComfyUI checks the flag in every layer, so it raises in the
/// decode itself); then a graph with two outputs is interrupted during its first blur (a
/// plain tensor node: it runs to its end and the next node raises), after the early output
/// was saved: its image stays in the history, the late one never exists.
async fn interrupt_in_node(s: &mut Session) -> Step {
    s.open_a().await?;
    // Nothing cached from before (08 leaves the checkpoint node cached): the node cache
    // keeps only the last prompt's nodes, so one tiny prompt of other nodes empties it of
    // them. (`POST /free` would too, but the server applies it when its worker next
    // looks, which can be after it took the next prompt.)
    let clear = s
        .submit(
            &empty_save("plasma_rec_clear", 8, 8, color(s, 11)),
            Some("a"),
            Value::Null,
        )
        .await?;
    s.until_done("a", &clear).await?;
    let ckpt = s.opts.checkpoint.clone();
    // 192x192 keeps the decode at a few seconds on a CPU.
    let size = 192 + 8 * (s.opts.tag % 8);
    let decode = json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "plasma_rec_vae", "images": ["8", 0]}}
    });
    let pid = s.submit(&decode, Some("a"), Value::Null).await?;
    s.interrupt_during("a", &pid, "8").await?;
    s.until_done("a", &pid).await?;
    s.get(&format!("/history/{pid}")).await?;

    let mut two = blur_chain("plasma_rec_late", color(s, 10), 2);
    two["12"] = json!({"class_type": "SaveImage", "inputs": {"filename_prefix": "plasma_rec_early", "images": ["1", 0]}});
    let pid = s.submit(&two, Some("a"), Value::Null).await?;
    s.interrupt_during("a", &pid, "10").await?;
    s.until_done("a", &pid).await?;
    s.get(&format!("/history/{pid}")).await?;
    Ok(())
}

/// 11: the `/object_info` of every class the simulator knows (but those whose choices are
/// the server's files: the loaders, in 06, and `LoadImage`), then for the node classes of
/// the shipped templates beyond txt2img: the validation errors they give, and three graphs
/// through the real sampler: a chain of two
/// LoRAs under a CLIP layer with combined prompts and a two-pass render (latent upscale,
/// second `KSampler` at denoise 0.5); base and refiner with `KSamplerAdvanced` (and one that
/// starts after the last step), a latent upscale to a height and an image scale; img2img
/// from an encoded image, and that image decoded back.
async fn node_classes(s: &mut Session) -> Step {
    // Every class this simulator knows, as the server describes it.
    let catalog = super::nodes::Catalog::new(&[], &[]);
    let files = ["CheckpointLoaderSimple", "LoraLoader", "LoadImage"];
    let classes: Vec<&str> = catalog.all().iter().map(|c| c.name).collect();
    for class in classes.into_iter().filter(|c| !files.contains(c)) {
        s.get(&format!("/object_info/{class}")).await?;
    }
    s.open_a().await?;
    // Nothing cached from before (as in 10): one tiny prompt of other nodes first.
    let clear = s
        .submit(
            &empty_save("plasma_rec_clear", 8, 8, color(s, 13)),
            Some("a"),
            Value::Null,
        )
        .await?;
    s.until_done("a", &clear).await?;
    let ckpt = s.opts.checkpoint.clone();
    let c = color(s, 12);
    let loader = json!({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}});
    let latent = json!({"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}});
    let image = json!({"class_type": "EmptyImage", "inputs": {"width": 72, "height": 60, "batch_size": 1, "color": c}});
    let save = |from: &str, prefix: &str| json!({"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": [from, 0]}});
    let decode = |from: &str| json!({"class_type": "VAEDecode", "inputs": {"samples": [from, 0], "vae": ["4", 2]}});
    let text = |t: &str, clip: Value| json!({"class_type": "CLIPTextEncode", "inputs": {"text": t, "clip": clip}});
    let ksampler = |seed: u64, steps: u32, denoise: f64, latent: &str| json!({"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": denoise, "model": ["11", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": [latent, 0]}});
    let advanced = |seed: u64, noise: &str, start: u32, end: u32, leftover: &str, latent: &str| json!({"class_type": "KSamplerAdvanced", "inputs": {"add_noise": noise, "noise_seed": seed, "steps": 4, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "start_at_step": start, "end_at_step": end, "return_with_leftover_noise": leftover, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": [latent, 0]}});
    let seed = 51_207 + u64::from(s.opts.tag % 100_000) * 4;

    // Refused: out of range, not in the list, a missing input, a link of the wrong type, a
    // slot the linked node does not have.
    let refused = [
        json!({"4": loader, "5": latent,
               "20": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["5", 0], "upscale_method": "lanczos", "scale_by": 9.0}},
               "8": decode("20"), "9": save("8", "x")}),
        json!({"4": loader, "12": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": 0}},
               "6": text("a", json!(["12", 0])), "7": text("b", json!(["12", 0])), "5": latent,
               "3": advanced(seed, "sometimes", 0, 10_000, "disable", "5"),
               "8": decode("3"), "9": save("8", "x")}),
        json!({"1": image, "30": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "bislerp", "scale_by": 0.0}},
               "31": {"class_type": "VAEEncode", "inputs": {"pixels": ["30", 0]}},
               "32": {"class_type": "LatentUpscale", "inputs": {"samples": ["30", 0], "upscale_method": "area", "width": 12, "height": 64, "crop": "top"}},
               "8": {"class_type": "VAEDecode", "inputs": {"samples": ["32", 0], "vae": ["31", 0]}},
               "9": save("8", "x")}),
        // CLIPSetLastLayer has one output: slot 1 raises inside the linked node's check.
        json!({"4": loader, "12": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -2}},
               "6": text("a", json!(["12", 1])), "7": text("b", json!(["4", 1])), "5": latent,
               "3": advanced(seed, "enable", 0, 10_000, "disable", "5"),
               "8": decode("3"), "9": save("8", "x")}),
    ];
    for prompt in &refused {
        s.post_prompt(prompt, Some("a"), json!({})).await?;
    }

    let mut two_pass = json!({
        "4": loader, "5": latent,
        "10": {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "plasma_test_lora.safetensors", "strength_model": 0.8, "strength_clip": 0.7}},
        "11": {"class_type": "LoraLoader", "inputs": {"model": ["10", 0], "clip": ["10", 1], "lora_name": "plasma_test_lora.safetensors", "strength_model": -0.5, "strength_clip": 1.25}},
        "12": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["11", 1], "stop_at_clip_layer": -2}},
        "13": text("a lighthouse at dusk", json!(["12", 0])), "14": text("ink wash", json!(["12", 0])),
        "6": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["13", 0], "conditioning_2": ["14", 0]}},
        "7": text("lowres", json!(["12", 0])),
        "3": ksampler(seed, 3, 1.0, "5"),
        "20": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact", "scale_by": 1.5}},
        "21": ksampler(seed + 1, 2, 0.5, "20"),
        "8": decode("21"), "9": save("8", "plasma_rec_two_pass"),
    });
    let mut refiner = json!({
        "4": loader, "5": latent,
        "6": text("a harbour at night", json!(["4", 1])), "7": text("lowres", json!(["4", 1])),
        "3": advanced(seed + 2, "enable", 0, 3, "enable", "5"),
        "21": advanced(seed + 2, "disable", 3, 10_000, "disable", "3"),
        "22": advanced(seed + 3, "enable", 9, 10_000, "disable", "21"),
        "23": {"class_type": "LatentUpscale", "inputs": {"samples": ["22", 0], "upscale_method": "bilinear", "width": 0, "height": 80, "crop": "disabled"}},
        "8": decode("23"),
        "30": {"class_type": "ImageScaleBy", "inputs": {"image": ["8", 0], "upscale_method": "area", "scale_by": 0.5}},
        "9": save("30", "plasma_rec_refiner"),
    });
    let mut img2img = json!({
        "4": loader, "1": image,
        "6": text("a paper boat", json!(["4", 1])), "7": text("lowres", json!(["4", 1])),
        "31": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["4", 2]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed + 4, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.6, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["31", 0]}},
        "8": decode("3"), "9": save("8", "plasma_rec_img2img"),
        "18": decode("31"), "19": save("18", "plasma_rec_roundtrip"),
    });
    // Nothing of the earlier graphs cached: each has its own seed, colour and texts.
    for graph in [&mut two_pass, &mut refiner, &mut img2img] {
        graph["7"]["inputs"]["text"] = json!(format!("lowres {}", s.opts.tag));
        let pid = s.submit(graph, Some("a"), Value::Null).await?;
        s.until_done("a", &pid).await?;
        s.get(&format!("/history/{pid}")).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::scrub_paths;

    #[test]
    fn install_paths_become_comfyui() {
        assert_eq!(
            scrub_paths(r#"  File "/root/.cache/x/ComfyUI-0.8.0/execution.py", line 1"#),
            r#"  File "ComfyUI/execution.py", line 1"#
        );
        assert_eq!(
            scrub_paths("a /srv/ComfyUI/.venv/lib/PIL/Image.py and /srv/ComfyUI/nodes.py"),
            "a ComfyUI/.venv/lib/PIL/Image.py and ComfyUI/nodes.py"
        );
        // Not a path: left alone.
        assert_eq!(
            scrub_paths("see ComfyUI/x and a/ComfyUI"),
            "see ComfyUI/x and a/ComfyUI"
        );
    }
}
