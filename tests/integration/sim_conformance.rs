//! Conformance: replay every recorded ComfyUI 0.8.0 exchange in `tests/fixtures/comfy/`
//! against the simulator over real HTTP and WebSocket, in the recorded request order, and
//! compare message sequences, data, status codes, content types and JSON bodies.
//!
//! The fixtures come from the project's recorder (`examples/record_comfy.rs`, scenarios in
//! `src/sim/record.rs`) run against a real ComfyUI 0.8.0; docs/simulator.md says how to
//! re-record them. Normalised on both sides: `timestamp` and `create_time` values, the
//! 5-digit counter in `SaveImage` filenames, and prompt `number`s, compared relative to the
//! first one a replay sees (the recorded server had run other prompts before). Where the
//! simulator cannot reproduce the real server, each narrower check says why where it is made.
//!
//! Files 01-07 were recorded one after another against one server (its node cache and
//! history carry over: 03 finds node "1" cached from 01, 06 lists 05's history), so they
//! are replayed in order against one simulator; 08, 09 and 10 each against one of their own.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use plasma_batch::sim::{Fault, SimConfig};
use serde_json::{Value, json};

use super::sim_support::{Frame, WAIT, Ws, http};
use crate::support::TestSim;

pub fn fixture(name: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/comfy")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line"))
        .collect()
}

/// What the recording server offered (its tiny random-weight test models).
pub fn real_comfy_like() -> SimConfig {
    SimConfig {
        step_ms: 0,
        checkpoints: vec!["AnythingXL_inkBase.safetensors".into()],
        loras: vec!["plasma_test_lora.safetensors".into()],
        ..SimConfig::default()
    }
}

/// Normalises one side (the recording, or the simulator's answers) of a replay.
#[derive(Default)]
pub struct Norm {
    /// The first prompt `number` this side produced; later ones are compared relative to it.
    base: Cell<Option<i64>>,
    /// The simulator's input folder, written `ComfyUI/input` as the recorder writes the real
    /// server's (`LoadImage`'s errors name the file they could not read).
    input_dir: Option<String>,
}

impl Norm {
    fn number(&self, v: &Value) -> Value {
        match v.as_i64() {
            Some(n) => {
                let base = self.base.get().unwrap_or(n);
                self.base.set(Some(base));
                json!(n - base)
            }
            None => v.clone(),
        }
    }

    fn value(&self, v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| {
                        let v = match k.as_str() {
                            "timestamp" | "create_time" => json!(0),
                            "number" => self.number(v),
                            // Python sets: their order is hash-randomised per process.
                            "current_outputs" | "executed" if v.is_array() => {
                                let mut ids: Vec<Value> = v.as_array().cloned().unwrap_or_default();
                                ids.sort_by_key(ToString::to_string);
                                Value::Array(ids)
                            }
                            // A node's validation errors follow `valid_inputs`, a set of its
                            // input names.
                            "errors" if v.is_array() => {
                                let mut errors: Vec<Value> = v
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .map(|e| self.value(e))
                                    .collect();
                                errors.sort_by_key(ToString::to_string);
                                Value::Array(errors)
                            }
                            // Queue entries are `[number, prompt_id, prompt, extra, outputs]`.
                            "queue_running" | "queue_pending" => Value::Array(
                                v.as_array()
                                    .into_iter()
                                    .flatten()
                                    .map(|e| self.numbered(e))
                                    .collect(),
                            ),
                            _ => self.value(v),
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(a) => a.iter().map(|x| self.value(x)).collect(),
            Value::String(s) => match &self.input_dir {
                Some(dir) if s.contains(dir.as_str()) => Value::String(normalise_filename(
                    &s.replace(dir.as_str(), "ComfyUI/input"),
                )),
                _ => Value::String(normalise_filename(s)),
            },
            other => other.clone(),
        }
    }

    /// A queue item `[number, prompt_id, prompt, extra_data, outputs_to_execute]`.
    fn numbered(&self, v: &Value) -> Value {
        let mut v = self.value(v);
        if let Some(item) = v.as_array_mut() {
            if let Some(first) = item.first_mut() {
                *first = self.number(first);
            }
            // `list(good_outputs)`: a Python set again.
            if let Some(Value::Array(outputs)) = item.get_mut(4) {
                outputs.sort_by_key(ToString::to_string);
            }
        }
        v
    }

    /// History entries carry `number` as `prompt[0]`.
    fn history(&self, v: &Value) -> Value {
        let mut v = self.value(v);
        if let Some(map) = v.as_object_mut() {
            for entry in map.values_mut() {
                if let Some(p) = entry.get_mut("prompt") {
                    *p = self.numbered(p);
                }
            }
        }
        v
    }
}

fn normalise_filename(s: &str) -> String {
    // `<prefix>_00001_.png` -> `<prefix>_NNNNN_.png`
    if let Some(stem) = s.strip_suffix("_.png")
        && stem.len() > 6
        && stem.as_bytes()[stem.len() - 6] == b'_'
        && stem[stem.len() - 5..].bytes().all(|b| b.is_ascii_digit())
    {
        return format!("{}_NNNNN_.png", &stem[..stem.len() - 6]);
    }
    s.to_string()
}

/// A frame as compared: JSON messages whole (normalised), binary frames by event type.
fn frame_key(norm: &Norm, f: &Frame) -> Value {
    match f {
        Frame::Json(v) => norm.value(v),
        // Narrower: the JPEG bytes themselves differ (a random-weight model vs a drawing);
        // compare the event, the image type and the JPEG/JFIF start.
        Frame::Binary(b) => json!({
            "binary_event": u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            "image_type": u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            "head": hex::encode(&b[8..12]),
        }),
        Frame::Closed(_) => json!("closed"),
    }
}

fn recorded_key(norm: &Norm, line: &Value) -> Value {
    if line["kind"] == "ws_binary" {
        let head = line["head_hex"].as_str().unwrap_or("");
        json!({"binary_event": line["event"], "image_type": line["image_type"], "head": head.get(16..24).unwrap_or("")})
    } else {
        norm.value(&line["msg"])
    }
}

struct Socket {
    ws: Ws,
    expected: Vec<Value>,
    got: Vec<Value>,
    /// The JSON frames as received (not normalised), not yet looked at for filenames.
    raw: Vec<Value>,
}

impl Socket {
    /// Read until as many frames arrived as the recording had at this point.
    async fn catch_up(&mut self, norm: &Norm) {
        while self.got.len() < self.expected.len() {
            let f = self.ws.next().await;
            if let Frame::Closed(why) = &f {
                panic!("socket closed early ({why}); got {:#?}", self.got);
            }
            if let Frame::Json(v) = &f {
                self.raw.push(v.clone());
            }
            self.got.push(frame_key(norm, &f));
        }
    }
}

/// How strictly a fixture's frame sequences are compared.
#[derive(Clone, Copy, PartialEq)]
pub enum Order {
    Exact,
    /// `status` broadcasts from `POST /prompt` interleave with the worker's messages by
    /// timing (04 queues prompts while one runs). Compare the non-status sequence exactly
    /// and the sequence of `queue_remaining` values separately.
    StatusByValue,
}

fn compare_frames(file: &str, who: &str, order: Order, expected: &[Value], got: &[Value]) {
    match order {
        Order::Exact => assert_eq!(got, expected, "{file}: frames on socket {who} differ"),
        Order::StatusByValue => {
            let split = |v: &[Value]| -> (Vec<Value>, Vec<Value>) {
                let (s, o): (Vec<Value>, Vec<Value>) =
                    v.iter().cloned().partition(|f| f["type"] == "status");
                (s, o)
            };
            let (es, eo) = split(expected);
            let (gs, go) = split(got);
            assert_eq!(go, eo, "{file}: non-status frames on socket {who} differ");
            assert_eq!(gs, es, "{file}: status broadcasts on socket {who} differ");
        }
    }
}

/// Replays fixtures against one simulator, in order (state carries over between them).
pub struct Replay {
    sim: TestSim,
    base: String,
    sockets: HashMap<String, Socket>,
    expected_norm: Norm,
    got_norm: Norm,
    /// The simulator's name for each saved file, by normalised name: the recording server's
    /// counters started wherever its output folder was, so `/view` asks for the same image
    /// under the simulator's name.
    saved: HashMap<String, String>,
}

/// Every `filename` in `v`, by normalised name.
fn learn_filenames(v: &Value, saved: &mut HashMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("filename", Value::String(name)) => {
                        saved.insert(normalise_filename(name), name.clone());
                    }
                    _ => learn_filenames(v, saved),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| learn_filenames(x, saved)),
        _ => {}
    }
}

/// `/view?filename=X&...` with X as the simulator named the same image.
fn view_path(path: &str, saved: &HashMap<String, String>) -> String {
    let Some(query) = path.strip_prefix("/view?") else {
        return path.to_string();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.strip_prefix("filename=") {
            Some(name) => match saved.get(&normalise_filename(name)) {
                Some(ours) => format!("filename={ours}"),
                None => p.to_string(),
            },
            None => p.to_string(),
        })
        .collect();
    format!("/view?{}", params.join("&"))
}

/// A recorded `POST /upload/image` as a form again: the image part from the recorded
/// bytes (checked against their recorded length and sha256), then the text fields as sent.
fn upload_form(recorded: &Value) -> reqwest::multipart::Form {
    use base64::Engine as _;
    use sha2::Digest as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(recorded["base64"].as_str().expect("the upload's bytes"))
        .expect("base64");
    assert_eq!(Some(bytes.len() as u64), recorded["bytes"].as_u64());
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&bytes)),
        recorded["sha256"].as_str().unwrap_or("")
    );
    let filename = recorded["filename"].as_str().unwrap().to_string();
    let mut form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(bytes).file_name(filename),
    );
    for (k, v) in recorded.as_object().unwrap() {
        if !matches!(k.as_str(), "filename" | "bytes" | "sha256" | "base64") {
            form = form.text(k.clone(), v.as_str().unwrap().to_string());
        }
    }
    form
}

/// Per-fixture adjustments, each explained where it is used.
#[derive(Clone, Copy)]
pub struct Hooks {
    pub order: Order,
    /// `/system_stats` differs in machine values: compare the shape only.
    pub shape_only_paths: &'static [&'static str],
}

pub const EXACT: Hooks = Hooks {
    order: Order::Exact,
    shape_only_paths: &[],
};

fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        // The kinds of items, not their number (`argv` is as long as the server's command line).
        Value::Array(a) => {
            let mut kinds: Vec<Value> = Vec::new();
            for item in a.iter().map(shape) {
                if !kinds.contains(&item) {
                    kinds.push(item);
                }
            }
            Value::Array(kinds)
        }
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => json!("null"),
    }
}

fn socket_of(line: &Value) -> String {
    line["socket"].as_str().unwrap_or("a").to_string()
}

impl Replay {
    pub async fn new(config: SimConfig) -> Replay {
        let sim = TestSim::with_config(config).await;
        let got_norm = Norm {
            input_dir: Some(sim.input_dir().display().to_string()),
            ..Norm::default()
        };
        Replay {
            base: sim.url(),
            sim,
            sockets: HashMap::new(),
            expected_norm: Norm::default(),
            got_norm,
            saved: HashMap::new(),
        }
    }

    #[allow(
        clippy::too_many_lines,
        reason = "replays one transcript line by line; one arm per kind of line"
    )]
    pub async fn run(&mut self, file: &str, lines: &[Value], hooks: Hooks) {
        let (en, gn) = (&self.expected_norm, &self.got_norm);
        let mut pending_response: Option<(reqwest::StatusCode, Option<String>, Vec<u8>, String)> =
            None;
        for line in lines {
            let kind = line["kind"].as_str().unwrap_or("");
            match kind {
                "ws_open" | "ws_reopen_same_client_id" => {
                    let cid = line["client_id"].as_str().unwrap();
                    let ws = Ws::connect(&self.base, cid).await;
                    let socket = Socket {
                        ws,
                        expected: vec![],
                        got: vec![],
                        raw: vec![],
                    };
                    if let Some(old) = self.sockets.insert(socket_of(line), socket) {
                        // 07 reconnects after the crash: what the old socket got is compared.
                        compare_frames(
                            file,
                            "a (before the crash)",
                            hooks.order,
                            &old.expected,
                            &old.got,
                        );
                    }
                }
                "ws_text" | "ws_binary" => {
                    let s = self.sockets.get_mut(&socket_of(line)).expect("a socket");
                    s.expected.push(recorded_key(en, line));
                }
                "http_request" => {
                    for s in self.sockets.values_mut() {
                        s.catch_up(gn).await;
                        for f in s.raw.drain(..) {
                            learn_filenames(&f, &mut self.saved);
                        }
                    }
                    let method = line["method"].as_str().unwrap();
                    let path = line["path"].as_str().unwrap().to_string();
                    let url = format!("{}{}", self.base, view_path(&path, &self.saved));
                    let req = if let Some(multipart) = line.get("multipart") {
                        http().post(&url).multipart(upload_form(multipart))
                    } else if method == "GET" {
                        http().get(&url)
                    } else {
                        let body = &line["body"];
                        http()
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(serde_json::to_vec(body).unwrap())
                    };
                    match req.send().await {
                        Ok(resp) => {
                            let status = resp.status();
                            let ct = resp
                                .headers()
                                .get("content-type")
                                .map(|v| v.to_str().unwrap().to_string());
                            let bytes = resp.bytes().await.unwrap().to_vec();
                            pending_response = Some((status, ct, bytes, path));
                        }
                        Err(e) => {
                            pending_response = None;
                            assert!(
                                e.is_connect(),
                                "{file}: {path}: expected a refused connection, got {e}"
                            );
                        }
                    }
                }
                "http_response" => {
                    let (status, ct, bytes, path) = pending_response.take().expect("a response");
                    assert_eq!(
                        u64::from(status.as_u16()),
                        line["status"].as_u64().unwrap(),
                        "{file}: {path}: status"
                    );
                    if let Some(want) = line.get("content_type") {
                        assert_eq!(ct.as_deref(), want.as_str(), "{file}: {path}: content type");
                    }
                    if let Some(body) = line.get("body") {
                        let got: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                            panic!(
                                "{file}: {path}: body is not JSON: {}",
                                String::from_utf8_lossy(&bytes)
                            )
                        });
                        learn_filenames(&got, &mut self.saved);
                        if hooks.shape_only_paths.iter().any(|p| path.starts_with(p)) {
                            assert_eq!(shape(&got), shape(body), "{file}: {path}: JSON shape");
                        } else if path.starts_with("/history") {
                            assert_eq!(gn.history(&got), en.history(body), "{file}: {path}: body");
                        } else {
                            assert_eq!(gn.value(&got), en.value(body), "{file}: {path}: body");
                        }
                    } else {
                        let want_len = line["bytes"].as_u64().unwrap_or(0) as usize;
                        let head = line["head_hex"].as_str().unwrap_or("");
                        // An input file is served back as uploaded: compared exactly.
                        if head.starts_with("89504e47") && !path.contains("type=input") {
                            // Narrower: the real PNG is encoded by PIL at compress_level 4; the
                            // simulator's bytes differ in size. Compare the PNG signature.
                            assert!(
                                bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                                "{file}: {path}: not a PNG"
                            );
                        } else {
                            assert_eq!(bytes.len(), want_len, "{file}: {path}: body length");
                            assert!(
                                hex::encode(&bytes).starts_with(head),
                                "{file}: {path}: body start"
                            );
                        }
                    }
                }
                "server_killed" => {
                    let s = self.sockets.get_mut("a").expect("socket a");
                    s.catch_up(gn).await;
                    // Narrower: the recording SIGKILLed ComfyUI and waited for a restart
                    // (seconds); the simulator crashes on demand and is back after 300 ms.
                    self.sim.crash_now(Duration::from_millis(300));
                }
                "ws_error_after_kill" => {
                    let s = self.sockets.get_mut("a").expect("socket a");
                    s.ws.closed().await;
                }
                "http_error" => {
                    assert!(
                        pending_response.is_none(),
                        "{file}: the request should have been refused"
                    );
                }
                "server_restarted" => {}
                "server_ready" => {
                    let deadline = tokio::time::Instant::now() + WAIT;
                    while tokio::net::TcpStream::connect(self.sim.addr())
                        .await
                        .is_err()
                    {
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "simulator never came back"
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                other => panic!("{file}: unknown fixture line kind {other}"),
            }
        }
        for (name, s) in &mut self.sockets {
            s.catch_up(gn).await;
            compare_frames(file, name, hooks.order, &s.expected, &s.got);
        }
        for s in self.sockets.values_mut() {
            // Nothing beyond what the recording shows. A short quiet period bounds this.
            if let Some(Frame::Json(extra)) = s.ws.next_within(Duration::from_millis(150)).await {
                panic!("{file}: unexpected extra frame {extra}");
            }
        }
        self.sockets.clear();
    }
}

/// The recording session 01-07, in order, as one simulator replays it.
pub const SESSION: &[&str] = plasma_batch::sim::record::SCENARIOS.split_at(7).0;

/// How each fixture is compared.
pub fn hooks(name: &str) -> Hooks {
    match name {
        "04-queue-interrupt-delete" => Hooks {
            order: Order::StatusByValue,
            ..EXACT
        },
        "06-reference" => Hooks {
            shape_only_paths: &["/system_stats"],
            ..EXACT
        },
        _ => EXACT,
    }
}

/// The simulator a fixture (or a run of fixtures) is replayed against, from the lists of
/// models the recording server offered.
pub fn sim_for(name: &str, models: SimConfig) -> SimConfig {
    // A 1024x1024 blur took the recording CPU a second or more: long enough for 04's
    // interrupt, 07's kill and 10's interrupt to land mid-chain. Here it takes 500 ms.
    let slow_blur = Fault::SlowNode {
        class: "ImageBlur".into(),
        ms: 500,
    };
    match name {
        // Long enough that the recorded interrupt (sent after `progress` 2) lands in step 3.
        "08-txt2img-sampler" => SimConfig {
            step_ms: 150,
            ..models
        },
        "10-interrupt-in-node" => SimConfig {
            faults: vec![
                // Far longer than the replay takes to send its interrupt: a decode that
                // cannot be interrupted inside fails the comparison (it would end at
                // SaveImage) instead of passing late.
                Fault::SlowNode {
                    class: "VAEDecode".into(),
                    ms: 3_000,
                },
                slow_blur,
            ],
            ..models
        },
        _ => SimConfig {
            faults: vec![slow_blur],
            ..models
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_01_to_07_replay_against_one_simulator() {
    let mut r = Replay::new(sim_for(SESSION[0], real_comfy_like())).await;
    for name in SESSION {
        let file = format!("{name}.jsonl");
        r.run(&file, &fixture(&file), hooks(name)).await;
    }
}

/// Replay one fixture against a simulator of its own.
async fn replay_alone(name: &str) {
    let mut r = Replay::new(sim_for(name, real_comfy_like())).await;
    let file = format!("{name}.jsonl");
    r.run(&file, &fixture(&file), hooks(name)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_08_sampler_replays() {
    replay_alone("08-txt2img-sampler").await;
}

/// Input images: uploads (new, same bytes, other bytes, overwrite, a non-image, an escaping
/// subfolder), `/view?type=input`, img2img from the upload, `LoadImage` of a missing file
/// (400 at POST) and of the stored non-image (fails when it runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_09_upload_and_img2img_replays() {
    replay_alone("09-upload-img2img").await;
}

/// An interrupt inside a model node (`VAEDecode` raises itself) and one during a plain tensor
/// node (`ImageBlur` runs to its end, the next node raises, the output saved before it stays
/// in the history, the one after it never exists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_10_interrupt_inside_and_between_nodes() {
    replay_alone("10-interrupt-in-node").await;
}

/// The node classes of the shipped templates beyond txt2img: their `/object_info` equal to
/// the real server's, their validation errors, and three graphs through the real sampler (a
/// LoRA chain, two passes, base and refiner, img2img).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_11_template_node_classes_replay() {
    replay_alone("11-node-classes").await;
}
