//! HTTP routes and the `/ws` socket of the simulator, mirroring ComfyUI 0.8.0's
//! `server.py` (every route also under `/api`). Handlers only touch `Shared`; prompt
//! execution is the worker's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::fault::Fault;
use super::nodes::normpath;
use super::nodes::{self, Catalog, Verdict};
use super::pyjson;
use super::state::{Outgoing, QueueItem, Shared, SocketEntry};
use super::worker::now_ms;

type S = State<Arc<Shared>>;

pub fn router(shared: Arc<Shared>, catalog: Arc<Catalog>) -> Router {
    let api: Router<Arc<Shared>> = Router::new()
        .route("/ws", get(ws_handler))
        .route("/prompt", get(get_prompt).post(post_prompt))
        .route("/queue", get(get_queue).post(post_queue))
        .route("/history", get(get_history).post(post_history))
        .route("/history/{id}", get(get_history_id))
        .route("/interrupt", post(post_interrupt))
        .route("/free", post(post_free))
        .route("/view", get(view))
        .route("/upload/image", post(upload_image))
        .route("/object_info", get(object_info))
        .route("/object_info/{class}", get(object_info_class))
        .route("/system_stats", get(system_stats))
        .route("/features", get(features))
        .route("/models", get(models))
        .route("/models/{folder}", get(models_folder))
        .route("/embeddings", get(|| async { json_ok(&json!([])) }))
        .route("/sim/stats", get(sim_stats));
    Router::new()
        .merge(api.clone())
        .nest("/api", api)
        .layer(DefaultBodyLimit::max(100 * 1024 * 1024))
        .layer(Extension(catalog))
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

fn json_resp(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        pyjson::dumps(v),
    )
        .into_response()
}

fn json_ok(v: &Value) -> Response {
    json_resp(StatusCode::OK, v)
}

/// aiohttp's answer to an unhandled exception.
fn internal_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "500 Internal Server Error\n\nServer got itself in trouble",
    )
        .into_response()
}

/// `--latency-ms`, then ComfyUI's origin-only middleware (403 on a Host/Origin mismatch
/// for a loopback host) and `OPTIONS` → 200.
async fn guard(State(s): S, req: Request, next: Next) -> Response {
    if s.config.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(s.config.latency_ms)).await;
    }
    if let (Some(host), Some(origin)) = (
        header_str(req.headers(), "host"),
        header_str(req.headers(), "origin"),
    ) && origin_mismatch(&host, &origin)
    {
        return StatusCode::FORBIDDEN.into_response();
    }
    if req.method() == Method::OPTIONS {
        return StatusCode::OK.into_response();
    }
    next.run(req).await
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
}

fn split_host_port(s: &str) -> (String, Option<String>) {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']').unwrap_or((rest, ""));
        return (h.to_string(), p.strip_prefix(':').map(String::from));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), Some(p.to_string())),
        None => (s.to_string(), None),
    }
}

fn origin_mismatch(host: &str, origin: &str) -> bool {
    let netloc = origin.split_once("://").map_or("", |(_, r)| r);
    let netloc = netloc.split('/').next().unwrap_or("");
    let (o_host, o_port) = split_host_port(netloc);
    let (h_host, h_port) = split_host_port(host);
    let loopback = h_host == "localhost" || h_host.starts_with("127.") || h_host == "::1";
    if !loopback || netloc.is_empty() {
        return false;
    }
    let host_domain = if o_port.is_none() {
        h_host.clone()
    } else {
        host.to_string()
    };
    let origin_domain = if h_port.is_none() {
        o_host
    } else {
        netloc.to_string()
    };
    host_domain != origin_domain
}

// ---------------------------------------------------------------------------------------
// /prompt

async fn get_prompt(State(s): S) -> Response {
    let qr = s.core().queue_remaining();
    json_ok(&json!({"exec_info": {"queue_remaining": qr}}))
}

#[allow(
    clippy::too_many_lines,
    reason = "mirrors ComfyUI's post_prompt (server.py) step by step"
)]
async fn post_prompt(
    State(s): S,
    Extension(catalog): Extension<Arc<Catalog>>,
    body: Bytes,
) -> Response {
    let nth = s.prompt_posts.fetch_add(1, Ordering::SeqCst) + 1;
    let parsed = serde_json::from_slice::<Value>(&body);
    let connected = match parsed.as_ref().ok().and_then(|b| b.get("client_id")) {
        Some(Value::String(c)) => s.is_connected(c),
        _ => false,
    };
    if !connected {
        s.stats_mut().stats.posts_without_socket += 1;
    }
    if s.faults()
        .any(|fault| matches!(fault, Fault::LoseInputs { nth: n } if *n == nth))
    {
        let _ = std::fs::remove_dir_all(&s.input_dir);
        let _ = std::fs::create_dir_all(&s.input_dir);
    }
    let injected = s.faults().any(|fault| match fault {
        Fault::Prompt500 { nth: n } => *n == nth,
        Fault::Prompt500Rate { p } => s.random() < *p,
        _ => false,
    });
    let body = match parsed {
        Ok(Value::Object(body)) if !injected => body,
        // A JSON list or string passes the server's `"number" in json_data` and
        // `"prompt" in json_data` membership tests: `number` advances and the answer is
        // `no_prompt`, unless "prompt" is in it and indexing it raises.
        Ok(Value::Array(items)) if !injected && !items.contains(&json!("prompt")) => {
            return no_prompt(&s, true);
        }
        Ok(Value::String(text)) if !injected && !text.contains("prompt") => {
            return no_prompt(&s, true);
        }
        _ => {
            s.stats_mut().stats.prompts_rejected += 1;
            return internal_error();
        }
    };
    let client_id = body.get("client_id").cloned();
    let (number, sort_key) = if let Some(n) = body.get("number") {
        let f = match n {
            Value::Number(n) => n.as_f64(),
            Value::String(t) => t.trim().parse::<f64>().ok(),
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        };
        let Some(f) = f else { return internal_error() };
        (json!(f), f)
    } else {
        let mut core = s.core();
        let mut n = core.number;
        let front = body
            .get("front")
            .is_some_and(|f| !matches!(f, Value::Null | Value::Bool(false)) && f != &json!(0));
        if front {
            n = -n;
        }
        core.number += 1;
        (json!(n), n as f64)
    };
    let Some(prompt) = body.get("prompt") else {
        return no_prompt(&s, false);
    };
    let prompt_id = match body.get("prompt_id") {
        Some(v) => pyjson::str_value(v),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let verdict = nodes::validate_prompt(
        &catalog,
        &s.input_dir,
        prompt,
        body.get("partial_execution_targets"),
    );
    let mut extra_data = match body.get("extra_data") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return internal_error(),
    };
    if let Some(c) = client_id {
        extra_data.insert("client_id".into(), c);
    }
    match verdict {
        Verdict::Accepted {
            prompt,
            outputs,
            node_errors,
        } => {
            for key in ["auth_token_comfy_org", "api_key_comfy_org"] {
                extra_data.shift_remove(key);
            }
            extra_data.insert("create_time".into(), json!(now_ms()));
            let accepted = s.prompts_accepted_total.fetch_add(1, Ordering::SeqCst) + 1;
            let lost = s
                .faults()
                .any(|f| matches!(f, Fault::Lose { nth } if *nth == accepted));
            let item = QueueItem {
                number: number.clone(),
                sort_key,
                prompt_id: prompt_id.clone(),
                prompt,
                extra_data,
                outputs,
            };
            let peak = if lost {
                0
            } else {
                let mut core = s.core();
                core.insert_pending(item);
                let qr = core.queue_remaining();
                s.broadcast_status(qr);
                qr
            };
            {
                let mut st = s.stats_mut();
                st.stats.prompts_accepted += 1;
                st.stats.peak_queue = st.stats.peak_queue.max(peak);
            }
            s.wake.notify_one();
            json_ok(&json!({"prompt_id": prompt_id, "number": number, "node_errors": node_errors}))
        }
        Verdict::Rejected { error, node_errors } => {
            s.stats_mut().stats.prompts_rejected += 1;
            json_resp(
                StatusCode::BAD_REQUEST,
                &json!({"error": error, "node_errors": node_errors}),
            )
        }
        Verdict::Internal => {
            s.stats_mut().stats.prompts_rejected += 1;
            internal_error()
        }
    }
}

/// 400 `no_prompt`; `count_number` when `number` has not been advanced yet.
fn no_prompt(s: &Shared, count_number: bool) -> Response {
    if count_number {
        s.core().number += 1;
    }
    s.stats_mut().stats.prompts_rejected += 1;
    let error = json!({"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}});
    json_resp(
        StatusCode::BAD_REQUEST,
        &json!({"error": error, "node_errors": {}}),
    )
}

// ---------------------------------------------------------------------------------------
// queue, history, interrupt, free

async fn get_queue(State(s): S) -> Response {
    let core = s.core();
    let running: Vec<Value> = core.running.iter().map(QueueItem::to_json).collect();
    let pending: Vec<Value> = core.pending.iter().map(QueueItem::to_json).collect();
    json_ok(&json!({"queue_running": running, "queue_pending": pending}))
}

fn ids(v: Option<&Value>) -> Vec<String> {
    v.and_then(|d| d.as_array())
        .map(|a| a.iter().map(pyjson::str_value).collect())
        .unwrap_or_default()
}

fn truthy(v: Option<&Value>) -> bool {
    !matches!(v, None | Some(Value::Null | Value::Bool(false))) && v != Some(&json!(0))
}

async fn post_queue(State(s): S, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return internal_error();
    };
    let delete = ids(body.get("delete"));
    let mut core = s.core();
    if truthy(body.get("clear")) {
        core.pending.clear();
        s.broadcast_status(core.queue_remaining());
    }
    for id in &delete {
        let before = core.pending.len();
        core.pending.retain(|item| &item.prompt_id != id);
        if core.pending.len() != before {
            s.broadcast_status(core.queue_remaining());
        }
    }
    drop(core);
    s.stats_mut().stats.queue_deletes.extend(delete);
    StatusCode::OK.into_response()
}

async fn slow_history(s: &Shared) {
    for f in s.faults() {
        if let Fault::SlowHistory { ms } = f {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
        }
    }
}

async fn get_history(State(s): S, Query(q): Query<HashMap<String, String>>) -> Response {
    slow_history(&s).await;
    s.stats_mut().stats.history_requests += 1;
    let max_items = match q.get("max_items").map(|v| v.trim().parse::<i64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return internal_error(),
    };
    let mut offset = match q.get("offset").map(|v| v.trim().parse::<i64>()) {
        None => -1,
        Some(Ok(n)) => n,
        Some(Err(_)) => return internal_error(),
    };
    let core = s.core();
    if offset < 0
        && let Some(m) = max_items
    {
        offset = core.history.len() as i64 - m;
    }
    let mut out = Map::new();
    for (i, (k, v)) in core.history.iter().enumerate() {
        if i as i64 >= offset {
            out.insert(k.clone(), v.clone());
            if max_items.is_some_and(|m| out.len() as i64 >= m) {
                break;
            }
        }
    }
    json_ok(&Value::Object(out))
}

async fn get_history_id(State(s): S, Path(id): Path<String>) -> Response {
    slow_history(&s).await;
    s.stats_mut().stats.history_requests += 1;
    // Written straight from the stored entry: no copy of it, and the lock the worker needs
    // is held only for the serialising.
    let body = match s.core().history.get(&id) {
        Some(entry) => format!("{{{}: {}}}", pyjson::dumps(&id), pyjson::dumps(entry)),
        None => "{}".to_owned(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn post_history(State(s): S, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return internal_error();
    };
    let mut core = s.core();
    if truthy(body.get("clear")) {
        core.history.clear();
    }
    for id in ids(body.get("delete")) {
        core.history.remove(&id);
    }
    StatusCode::OK.into_response()
}

async fn post_interrupt(State(s): S, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let target = body
        .get("prompt_id")
        .filter(|v| !v.is_null())
        .map(pyjson::str_value);
    let running = s.core().running.as_ref().map(|r| r.prompt_id.clone());
    let hit = if let Some(p) = &target {
        if running.as_ref() == Some(p) {
            s.interrupt.store(true, Ordering::SeqCst);
            running
        } else {
            None
        }
    } else {
        s.interrupt.store(true, Ordering::SeqCst);
        running
    };
    s.interrupt_wake.notify_waiters();
    s.record_interrupt(target, hit);
    StatusCode::OK.into_response()
}

async fn post_free(State(s): S, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    if truthy(body.get("free_memory")) {
        s.core().free_memory = true;
        s.wake.notify_one();
    }
    StatusCode::OK.into_response()
}

// ---------------------------------------------------------------------------------------
// files

fn dir_for(s: &Shared, kind: &str) -> Option<std::path::PathBuf> {
    match kind {
        "output" => Some(s.output_dir.clone()),
        "input" => Some(s.input_dir.clone()),
        "temp" => Some(s.temp_dir.clone()),
        _ => None,
    }
}

fn content_type(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    let ext = lower.rsplit_once('.').map_or("", |(_, e)| e);
    match ext {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "json" => "application/json",
        "txt" => "text/plain",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

async fn view(State(s): S, Query(q): Query<HashMap<String, String>>) -> Response {
    for f in s.faults() {
        if let Fault::SlowView { ms } = f {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
        }
    }
    let Some(filename) = q.get("filename") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut kind = q.get("type").cloned().unwrap_or_else(|| "output".into());
    let mut filename = filename.clone();
    for t in ["output", "input", "temp"] {
        if let Some(stripped) = filename.strip_suffix(&format!(" [{t}]")) {
            filename = stripped.to_string();
            kind = t.to_string();
            break;
        }
    }
    if filename.is_empty() || filename.starts_with('/') || filename.contains("..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let Some(base) = dir_for(&s, &kind) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut dir = base.clone();
    if let Some(sub) = q.get("subfolder") {
        match normpath(sub) {
            Some(rel) if !rel.is_empty() => dir = base.join(rel),
            Some(_) => {}
            None => return StatusCode::FORBIDDEN.into_response(),
        }
    }
    let name = filename.rsplit('/').next().unwrap_or(&filename).to_string();
    let Ok(mut bytes) = tokio::fs::read(dir.join(&name)).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut ctype = content_type(&name);
    for f in s.faults() {
        match f {
            Fault::ViewTruncated => bytes.truncate(bytes.len() / 2),
            Fault::ViewNotPng => {
                bytes = b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec();
                ctype = "image/png";
            }
            _ => {}
        }
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (header::CONTENT_DISPOSITION, format!("filename=\"{name}\"")),
        ],
        bytes,
    )
        .into_response()
}

/// `POST /upload/image` (`server.py` `image_upload`), transcript 09 and the real server's
/// answers: an unknown `type` is a 500 (`get_dir_by_type`), no `image` part a bare 400 and
/// an `image` part without a filename a 500 (aiohttp makes it a text field); a path that
/// leaves the folder is a bare 400. Without `overwrite`, a name taken by the same bytes is
/// answered as is (nothing written) and one taken by other bytes becomes `name (1).ext`,
/// `name (2).ext`, ... The bytes are not checked: a non-image is stored as is.
async fn upload_image(State(s): S, mut form: Multipart) -> Response {
    let mut image: Option<(Option<String>, Bytes)> = None;
    let mut fields: HashMap<String, String> = HashMap::new();
    while let Ok(Some(field)) = form.next_field().await {
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" {
            let filename = field.file_name().map(str::to_string);
            let Ok(data) = field.bytes().await else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            image = Some((filename, data));
        } else if let Ok(text) = field.text().await {
            fields.insert(name, text);
        }
    }
    let kind = fields
        .get("type")
        .cloned()
        .unwrap_or_else(|| "input".into());
    let Some(base) = dir_for(&s, &kind) else {
        // get_dir_by_type raises UnboundLocalError for other types.
        return internal_error();
    };
    let Some((filename, data)) = image else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    // `image.file` of a text field: AttributeError.
    let Some(mut filename) = filename.filter(|f| !f.is_empty()) else {
        return internal_error();
    };
    let subfolder = fields.get("subfolder").cloned().unwrap_or_default();
    let Some(rel_dir) = normpath(&subfolder) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let folder = if rel_dir.is_empty() {
        base.clone()
    } else {
        base.join(&rel_dir)
    };
    let target = |filename: &str| {
        let joined = if rel_dir.is_empty() {
            filename.to_string()
        } else {
            format!("{rel_dir}/{filename}")
        };
        normpath(&joined).map(|r| base.join(r))
    };
    let Some(mut path) = target(&filename) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if std::fs::create_dir_all(&folder).is_err() {
        return internal_error();
    }
    let overwrite = matches!(
        fields.get("overwrite").map(String::as_str),
        Some("true" | "1")
    );
    let (stem, ext) = {
        let (stem, ext) = splitext(&filename);
        (stem.to_string(), ext.to_string())
    };
    let mut duplicate = false;
    if !overwrite {
        let digest = Sha256::digest(&data);
        let mut i = 1;
        while path.exists() {
            match std::fs::read(&path) {
                Ok(existing) if Sha256::digest(&existing) == digest => {
                    duplicate = true;
                    break;
                }
                Ok(_) => {}
                // A folder of that name: open() raises.
                Err(_) => return internal_error(),
            }
            filename = format!("{stem} ({i}){ext}");
            let Some(next) = target(&filename) else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            path = next;
            i += 1;
        }
    }
    // A name with a `/` whose folder does not exist: open() raises.
    if !duplicate && std::fs::write(&path, &data).is_err() {
        return internal_error();
    }
    {
        let mut stats = s.stats_mut();
        stats.stats.uploads += 1;
        stats.stats.uploads_written += u64::from(!duplicate);
    }
    json_ok(&json!({"name": filename, "subfolder": subfolder, "type": kind}))
}

/// Python's `os.path.splitext`: the extension starts at the last `.` of the last path
/// segment, unless that segment is only dots before it (`.hidden` has none).
fn splitext(name: &str) -> (&str, &str) {
    let seg_start = name.rfind('/').map_or(0, |i| i + 1);
    let seg = &name[seg_start..];
    let leading = seg.len() - seg.trim_start_matches('.').len();
    match seg.rfind('.') {
        Some(i) if i >= leading && i > 0 => name.split_at(seg_start + i),
        _ => (name, ""),
    }
}

// ---------------------------------------------------------------------------------------
// descriptive endpoints

async fn object_info(State(s): S, Extension(catalog): Extension<Arc<Catalog>>) -> Response {
    let all: Map<String, Value> = catalog
        .all()
        .iter()
        .map(|c| (c.name.to_string(), c.info(&s.input_dir)))
        .collect();
    json_ok(&Value::Object(all))
}

async fn object_info_class(
    State(s): S,
    Extension(catalog): Extension<Arc<Catalog>>,
    Path(class): Path<String>,
) -> Response {
    match catalog.get(&class) {
        Some(c) => json_ok(&json!({ class: c.info(&s.input_dir) })),
        None => json_ok(&json!({})),
    }
}

async fn system_stats(State(s): S) -> Response {
    let argv = json!([
        "main.py",
        "--cpu",
        "--listen",
        s.config.host,
        "--port",
        s.config.port.to_string(),
        "--disable-auto-launch"
    ]);
    json_ok(&json!({
        "system": {
            "os": "linux",
            "ram_total": 17_179_869_184u64,
            "ram_free": 12_884_901_888u64,
            "comfyui_version": "0.8.0",
            "required_frontend_version": "1.35.9",
            "installed_templates_version": "0.7.67",
            "required_templates_version": "0.7.67",
            "python_version": "3.11.7 (plasma-batch sim)",
            "pytorch_version": "2.15.0+sim",
            "embedded_python": false,
            "argv": argv,
        },
        "devices": [{
            "name": "cpu", "type": "cpu", "index": null,
            "vram_total": 17_179_869_184u64, "vram_free": 12_884_901_888u64,
            "torch_vram_total": 17_179_869_184u64, "torch_vram_free": 12_884_901_888u64,
        }],
    }))
}

fn server_flags() -> Value {
    json!({"supports_preview_metadata": true, "max_upload_size": 104_857_600, "extension": {"manager": {"supports_v4": true}}})
}

async fn features() -> Response {
    json_ok(&server_flags())
}

const MODEL_FOLDERS: &[&str] = &[
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "latent_upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
];

async fn models() -> Response {
    json_ok(&json!(MODEL_FOLDERS))
}

async fn models_folder(State(s): S, Path(folder): Path<String>) -> Response {
    match folder.as_str() {
        "checkpoints" => json_ok(&json!(s.config.checkpoints)),
        "loras" => json_ok(&json!(s.config.loras)),
        f if MODEL_FOLDERS.contains(&f) => json_ok(&json!([])),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn sim_stats(State(s): S) -> Response {
    json_ok(&serde_json::to_value(s.snapshot_stats()).unwrap_or(Value::Null))
}

// ---------------------------------------------------------------------------------------
// /ws

async fn ws_handler(
    State(s): S,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let sid = q
        .get("clientId")
        .filter(|c| !c.is_empty())
        .cloned()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    ws.max_message_size(4 * 1024 * 1024)
        .on_upgrade(move |socket| client(s, socket, sid))
}

enum WsFate {
    Drop,
    Silent,
}

/// One WebSocket connection, as `websocket_handler` runs it.
#[allow(
    clippy::too_many_lines,
    reason = "one protocol exchange in order; its select! arms share the exchange's state"
)]
async fn client(s: Arc<Shared>, mut socket: WebSocket, sid: String) {
    let mut epoch = s.epoch.subscribe();
    let start = *epoch.borrow_and_update();
    let mut killed = Box::pin(async move {
        let _ = epoch.wait_for(|e| *e != start).await;
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outgoing>();
    {
        let core = s.core();
        let qr = core.queue_remaining();
        let hint = match (&core.last_client, &core.last_node) {
            (Some(c), Some(node)) if *c == sid && core.running.is_some() => Some(node.clone()),
            _ => None,
        };
        let at = std::time::Instant::now();
        let _ = tx.send(Outgoing {
            msg: Shared::frame(
                "status",
                &json!({"status": {"exec_info": {"queue_remaining": qr}}, "sid": sid}),
            ),
            at,
        });
        if let Some(node) = hint {
            let _ = tx.send(Outgoing {
                msg: Shared::frame("executing", &json!({"node": node})),
                at,
            });
        }
        // sockets.pop(sid) then store: the old connection stays open but stops receiving.
        s.sockets().insert(
            sid.clone(),
            SocketEntry {
                tx,
                preview_metadata: false,
            },
        );
    }
    let latency = Duration::from_millis(s.config.latency_ms);
    let mut frames: u64 = 0;
    let mut first_message = true;
    let mut rx_open = true;
    let fate = loop {
        tokio::select! {
            () = &mut killed => return,
            out = rx.recv(), if rx_open => {
                let Some(mut out) = out else { rx_open = false; continue };
                // Frames already waiting (a node's end and the next one's start come in
                // bursts) share one write; each is still sent at its own time.
                let mut fate = None;
                let mut unflushed = false;
                loop {
                    let due = out.at + latency;
                    if due > std::time::Instant::now() {
                        // What is fed so far is due now: send it before waiting.
                        if unflushed && futures::SinkExt::flush(&mut socket).await.is_err() {
                            fate = Some(None);
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                    }
                    unflushed = true;
                    if futures::SinkExt::feed(&mut socket, out.msg).await.is_err() {
                        fate = Some(None);
                        break;
                    }
                    frames += 1;
                    if let Some(f) = ws_fault(&s, frames) {
                        fate = Some(Some(f));
                        break;
                    }
                    match rx.try_recv() {
                        Ok(next) => out = next,
                        Err(_) => break,
                    }
                }
                if futures::SinkExt::flush(&mut socket).await.is_err() {
                    break None;
                }
                if let Some(fate) = fate {
                    break fate;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) if first_message => {
                    if let Ok(v) = serde_json::from_str::<Value>(text.as_str()) {
                        first_message = false;
                        if v.get("type").and_then(|t| t.as_str()) == Some("feature_flags") {
                            let flag = v.get("data").and_then(|d| d.get("supports_preview_metadata")) == Some(&json!(true));
                            if let Some(entry) = s.sockets().get_mut(&sid) {
                                entry.preview_metadata = flag;
                            }
                            s.send_json("feature_flags", &server_flags(), Some(&sid));
                        }
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break None,
                _ => {}
            },
        }
    };
    match fate {
        Some(WsFate::Silent) => {
            // A zombie: the socket stays open but nothing is read or written again.
            loop {
                tokio::select! {
                    () = &mut killed => return,
                    out = rx.recv(), if rx_open => if out.is_none() { rx_open = false },
                }
            }
        }
        Some(WsFate::Drop) | None => {
            // `finally: sockets.pop(sid)`: by id, so a stale connection closing late
            // unregisters whichever socket now holds this id.
            s.sockets().remove(&sid);
            drop(socket);
        }
    }
}

fn ws_fault(s: &Shared, frames: u64) -> Option<WsFate> {
    for f in s.faults() {
        match f {
            Fault::DropWs { after_frames } if frames == *after_frames => return Some(WsFate::Drop),
            Fault::DropWsOnce { after_frames }
                if frames == *after_frames
                    && s.drop_once_used
                        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok() =>
            {
                return Some(WsFate::Drop);
            }
            Fault::SilentWs { after_frames } if frames == *after_frames => {
                return Some(WsFate::Silent);
            }
            _ => {}
        }
    }
    None
}
