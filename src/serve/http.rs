//! The HTTP API (axum): routes, bearer-token check, JSON errors. Documented by
//! `docs/openapi.json`, which is served as it is at `GET /openapi.json`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::app::App;
use super::jobs::{CancelCheck, InsertError};
use super::record::{JobRecord, Status};
use super::request::{self, FieldProblem};
use crate::params::service_job_key;

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// How long `DELETE /jobs/{id}` waits for the job to end before answering 202.
const CANCEL_WAIT: Duration = Duration::from_secs(5);
/// How long `/readyz` waits for each server.
const READY_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;
/// A job request is a few KB; two 64 KB prompts fit with room to spare.
const BODY_LIMIT: usize = 1 << 20;
/// What a 429 (and a 503 while stopping) tells a client to wait, in seconds.
const RETRY_AFTER_SECS: u32 = 5;
/// Off loopback a token is the only lock on the door: at least this many characters.
pub(crate) const MIN_TOKEN_CHARS: usize = 16;

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/jobs", get(list).post(create))
        .route("/jobs/{id}", get(show).delete(cancel))
        .route("/jobs/{id}/image", get(image))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit(&app)))
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .with_state(app)
}

/// The largest body `POST /jobs` reads: a job request plus input images (base64 is 4/3 of
/// the bytes; room for two images at the cap).
fn body_limit(app: &App) -> usize {
    let images = usize::try_from(app.inputs.max_bytes().saturating_mul(3)).unwrap_or(usize::MAX);
    BODY_LIMIT.saturating_add(images)
}

/// The error body of every non-2xx answer.
#[derive(Debug, Serialize)]
struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<FieldProblem>,
    /// Answer with `Retry-After` (429; 503 while stopping).
    #[serde(skip)]
    retry_after: bool,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            field: None,
            reason: None,
            problems: Vec::new(),
            retry_after: false,
        }
    }

    fn retry_later(mut self) -> ApiError {
        self.retry_after = true;
        self
    }

    fn invalid(problems: Vec<FieldProblem>) -> ApiError {
        let first = problems.first().cloned().unwrap_or(FieldProblem {
            field: String::new(),
            reason: "invalid request".to_owned(),
        });
        let error = if first.field.is_empty() {
            format!("invalid job request: {}", first.reason)
        } else {
            format!("invalid job request: `{}` {}", first.field, first.reason)
        };
        let more = problems.len().saturating_sub(1);
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: if more > 0 {
                format!("{error} (and {more} more problem(s))")
            } else {
                error
            },
            field: Some(first.field),
            reason: Some(first.reason),
            problems,
            retry_after: false,
        }
    }

    fn no_job(id: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("no job with id {id}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, retry_after) = (self.status, self.retry_after);
        let mut response = (status, Json(self)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

/// Refuse what a web page could make a browser send (see [`foreign`]); then, when a token
/// is set, every request but `/healthz` carries `Authorization: Bearer <token>`.
async fn auth(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Some(refused) = foreign(&app, &request) {
        return refused.into_response();
    }
    let Some(token) = &app.token else {
        return next.run(request).await;
    };
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    match given {
        Some(given) if same(given.as_bytes(), token.as_bytes()) => next.run(request).await,
        Some(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "the bearer token is wrong").into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this service needs `Authorization: Bearer <token>`",
        )
        .into_response(),
    }
}

/// The token of `Bearer <token>`; the scheme name is case-insensitive (RFC 7235 §2.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A request a web page may have sent on the user's behalf: an `Origin` that is not this
/// service (any page can POST to 127.0.0.1 from the user's browser), and, without a token,
/// a `Host` that is not this service's address (DNS rebinding: `evil.example` resolving to
/// 127.0.0.1 makes the page same-origin with the service). With a token, a page cannot send
/// it, and the service may be reached under any name, so only the `Origin` is checked then.
fn foreign(app: &App, request: &Request) -> Option<ApiError> {
    let headers = request.headers();
    let host = match headers.get(header::HOST) {
        Some(value) => Some(value.to_str().unwrap_or("")),
        None => request
            .uri()
            .authority()
            .map(axum::http::uri::Authority::as_str),
    };
    if app.token.is_none()
        && let Some(host) = host
        && !app.answers_to(host)
    {
        return Some(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Host {host:?} is not this service's address; without --token it answers only to {}",
                app.own_hosts().join(", ")
            ),
        ));
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("");
    let ours = origin.strip_prefix("http://").is_some_and(|authority| {
        app.answers_to(authority)
            || (app.token.is_some() && host.is_some_and(|h| h.eq_ignore_ascii_case(authority)))
    });
    (!ours).then(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "requests from web pages of another origin ({origin:?}) are refused; call the API from a program, or from a page served at {}",
                app.own_hosts().join(", ")
            ),
        )
    })
}

/// Compare without an early exit, so timing does not reveal how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let probes = app.servers.iter().map(|server| async move {
        let result = tokio::time::timeout(READY_TIMEOUT, server.system_stats()).await;
        let error = match result {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {} s", READY_TIMEOUT.as_secs())),
        };
        json!({"url": server.url(), "reachable": error.is_none(), "error": error})
    });
    let servers = futures::future::join_all(probes).await;
    let output = app.table.journal_usable().err();
    let ready = output.is_none() && servers.iter().any(|s| s["reachable"] == true);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "servers": servers,
        "output": {
            "path": app.out_root.display().to_string(),
            "usable": output.is_none(),
            "error": output.map(|e| e.to_string()),
        },
    });
    (status, Json(body)).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route; see GET /openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take that method; see GET /openapi.json",
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    job_id: String,
    status: Status,
    seed: u64,
}

async fn create(State(app): State<Arc<App>>, request: Request) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    if app.draining.load(Ordering::SeqCst) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is shutting down; try again after it restarts",
        )
        .retry_later());
    }
    // A page may send `text/plain` cross-site without asking first; `application/json`
    // makes the browser ask (CORS preflight), which this service never grants.
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim());
    // `multipart/form-data` also needs a preflight when a page sets it from script, and a
    // plain HTML form cannot carry a bearer token.
    let multipart = media.is_some_and(|m| m.eq_ignore_ascii_case("multipart/form-data"));
    if !multipart && !media.is_some_and(|m| m.eq_ignore_ascii_case("application/json")) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "a job request is JSON: send `Content-Type: application/json`, or \
                 `multipart/form-data` with a `request` JSON part and image file parts (found {})",
                media.map_or_else(|| "none".to_owned(), |m| format!("{m:?}"))
            ),
        ));
    }
    let limit = body_limit(&app);
    let (body, files) = if multipart {
        read_multipart(request, limit).await?
    } else {
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|r| too_large(&r, limit))?;
        (body, std::collections::BTreeMap::new())
    };
    if let Err(error) = app.table.journal_usable() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("jobs cannot be recorded: {error}; restart the service"),
        ));
    }
    let checked = request::parse_with(&body, files).map_err(ApiError::invalid)?;
    let mut request = checked.request;
    let images = store_images(&app, &mut request, checked.images).await?;
    let template = app.templates.template_for(&request);
    let missing = app
        .catalogue
        .check(&request, |slot| template.uses(slot))
        .await;
    if !missing.is_empty() {
        return Err(ApiError::invalid(missing));
    }
    // A key collision (same chapter, page and first 8 hex digits) is rare: draw again.
    for _ in 0..8 {
        let id = uuid::Uuid::new_v4();
        let key = service_job_key(request.chapter, request.page, &id);
        let job = app
            .templates
            .build(&key, &request, &images)
            .map_err(|(field, reason)| ApiError::invalid(vec![FieldProblem { field, reason }]))?;
        let record = JobRecord::new(id.to_string(), key, request.clone(), checked.seed_drawn);
        let accepted = Accepted {
            job_id: record.job_id.clone(),
            status: Status::Queued,
            seed: record.seed,
        };
        match app.table.insert(record, app.max_queue) {
            Ok(()) => {}
            Err(InsertError::KeyTaken(_)) => continue,
            Err(e @ InsertError::Full { .. }) => {
                return Err(
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()).retry_later()
                );
            }
            Err(InsertError::Journal(e)) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the job was not accepted: {e}"),
                ));
            }
        }
        // Journaled: if the engine is already stopping, the next start runs it.
        app.submit(job);
        let location = format!("/jobs/{}", accepted.job_id);
        let mut response = (StatusCode::ACCEPTED, Json(accepted)).into_response();
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        return Ok(response);
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "could not find a free job key",
    ))
}

fn too_large(rejection: &BytesRejection, limit: usize) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            format!(
                "the body is larger than {limit} bytes; a job request is a few KB, plus its input images (each at most the service's --max-input-bytes)"
            ),
        )
    } else {
        ApiError::new(
            status,
            format!("the body could not be read: {}", rejection.body_text()),
        )
    }
}

/// A `multipart/form-data` job request: the JSON request in a part named `request`, each
/// input image in a file part named after its slot.
async fn read_multipart(
    request: Request,
    limit: usize,
) -> Result<(Bytes, std::collections::BTreeMap<String, Vec<u8>>), ApiError> {
    let bad = |e: String| ApiError::new(StatusCode::BAD_REQUEST, e);
    let mut form = axum::extract::Multipart::from_request(request, &())
        .await
        .map_err(|e| {
            bad(format!(
                "the multipart body could not be read: {}",
                e.body_text()
            ))
        })?;
    let mut json = None;
    let mut files = std::collections::BTreeMap::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is larger than {limit} bytes; send smaller input images"),
                ));
            }
            Err(e) => {
                return Err(bad(format!(
                    "the multipart body could not be read: {}",
                    e.body_text()
                )));
            }
        };
        let name = field.name().unwrap_or("").to_owned();
        let bytes = field.bytes().await.map_err(|e| {
            ApiError::new(
                e.status(),
                format!("part `{name}` could not be read: {}", e.body_text()),
            )
        })?;
        if name == "request" {
            if json.replace(bytes).is_some() {
                return Err(bad("the `request` part is given more than once".to_owned()));
            }
        } else if files.insert(name.clone(), bytes.to_vec()).is_some() {
            return Err(bad(format!(
                "the file part `{name}` is given more than once"
            )));
        }
    }
    let json = json.ok_or_else(|| {
        bad(
            "a multipart job request needs a part named `request` holding the JSON request"
                .to_owned(),
        )
    })?;
    Ok((json, files))
}

/// The image of an earlier job of this service, for `field`.
async fn earlier_image(app: &App, field: &str, id: &str) -> Result<Vec<u8>, ApiError> {
    let refuse = |status: StatusCode, reason: String| ApiError {
        status,
        ..ApiError::invalid(vec![FieldProblem {
            field: field.to_owned(),
            reason,
        }])
    };
    let Some(record) = app.table.get(id) else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no job with id {id}; name a job of this service"),
        ));
    };
    let path = match (&record.image_path, record.status) {
        (Some(path), Status::Complete) => path.clone(),
        (_, status) if !status.is_terminal() => {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!(
                    "job {id} is {}; it has no image yet: wait until it is complete, then send this again",
                    status_word(status)
                ),
            ));
        }
        (_, status) => {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!("job {id} is {}; it has no image", status_word(status)),
            ));
        }
    };
    let root = app.out_root.clone();
    tokio::task::spawn_blocking(move || read_png_no_follow(&root, &path))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            refuse(
                StatusCode::GONE,
                format!("the image of job {id} cannot be read any more: {e}"),
            )
        })
}

/// Keep each input image the request sends (checked, named by content) and record it in
/// `request.images`; the checked images by slot, for the job.
async fn store_images(
    app: &Arc<App>,
    request: &mut request::JobRequest,
    sources: std::collections::BTreeMap<String, request::ImageSource>,
) -> Result<std::collections::BTreeMap<String, crate::inputs::InputImage>, ApiError> {
    use super::inputs::StoreError;
    use request::ImageSource;
    let invalid = |field: &str, reason: String| {
        ApiError::invalid(vec![FieldProblem {
            field: field.to_owned(),
            reason,
        }])
    };
    let mut images = std::collections::BTreeMap::new();
    for (slot, source) in sources {
        let field = format!("images.{slot}");
        if let Some(reason) = app.templates.image_slot_problem(request, &slot) {
            return Err(invalid(&field, reason));
        }
        let bytes = match source {
            ImageSource::Bytes(bytes) => bytes,
            ImageSource::Stored(sha256) => {
                // Decoding the kept file is blocking work, as storing is.
                let store = app.clone();
                let (stored, image) =
                    tokio::task::spawn_blocking(move || store.inputs.find(&sha256))
                        .await
                        .map_err(|e| {
                            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                        })?
                        .map_err(|r| invalid(&field, r))?;
                request.images.insert(slot.clone(), stored);
                images.insert(slot, image);
                continue;
            }
            ImageSource::Job(id) => earlier_image(app, &field, &id).await?,
        };
        let store = app.clone();
        let stored = tokio::task::spawn_blocking(move || store.inputs.store(&bytes))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        match stored {
            Ok((stored, image)) => {
                request.images.insert(slot.clone(), stored);
                images.insert(slot, image);
            }
            Err(StoreError::TooLarge { len, limit }) => {
                return Err(ApiError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    ..invalid(
                        &field,
                        format!(
                            "is {len} bytes, over the limit of {limit} bytes (--max-input-bytes); scale it down or send JPEG or WebP"
                        ),
                    )
                });
            }
            Err(StoreError::NotAnImage(reason)) => return Err(invalid(&field, reason)),
            Err(StoreError::Io(e)) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the input image could not be kept: {e}"),
                ));
            }
        }
    }
    Ok(images)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    offset: Option<usize>,
    status: Option<Status>,
}

async fn list(
    State(app): State<Arc<App>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Ok(Query(query)) = query else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "query parameters are limit (1..=500), offset (0..) and status (queued, running, complete, failed, cancelled)",
        ));
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be in 1..={MAX_LIMIT}, found {limit}"),
        ));
    }
    let offset = query.offset.unwrap_or(0);
    let (jobs, total) = app.table.list(offset, limit, query.status);
    let next_offset = (offset + jobs.len() < total).then_some(offset + jobs.len());
    Ok(Json(json!({
        "jobs": jobs,
        "total": total,
        "offset": offset,
        "limit": limit,
        "nextOffset": next_offset,
    }))
    .into_response())
}

async fn show(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    app.table
        .get(&id)
        .map(Json)
        .ok_or_else(|| ApiError::no_job(&id))
}

async fn cancel(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    match app.table.request_cancel(&id) {
        CancelCheck::Unknown => Err(ApiError::no_job(&id)),
        CancelCheck::Terminal(record) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job {id} is already {}; there is nothing to cancel",
                status_word(record.status)
            ),
        )),
        CancelCheck::Pending(key) => {
            // `false` means it is between our queue and its server: the `Submitted` event
            // will carry the cancel to it (see `Table::apply`).
            app.cancel_in_engine(&key);
            let record = app
                .table
                .wait_terminal(&id, CANCEL_WAIT)
                .await
                .ok_or_else(|| ApiError::no_job(&id))?;
            let status = if record.status.is_terminal() {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            Ok((status, Json(record)).into_response())
        }
    }
}

async fn image(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let record = app.table.get(&id).ok_or_else(|| ApiError::no_job(&id))?;
    let Some(path) = record
        .image_path
        .as_ref()
        .filter(|_| record.status == Status::Complete)
    else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job {id} is {}; it has no image",
                status_word(record.status)
            ),
        ));
    };
    // Recorded by the engine, relative and `/`-separated; never anything that climbs out.
    if path.split('/').any(|p| p.is_empty() || p == "..") {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bad image path",
        ));
    }
    // Never through a link: a symlink planted in the image folder would serve any file.
    let root = app.out_root.clone();
    let relative = path.clone();
    let read = tokio::task::spawn_blocking(move || read_png_no_follow(&root, &relative)).await;
    match read {
        Ok(Ok(bytes)) => Ok((
            [
                (header::CONTENT_TYPE, "image/png".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!(
                        "inline; filename=\"{}\"",
                        record.image_file.as_deref().unwrap_or("image.png")
                    ),
                ),
            ],
            Body::from(bytes),
        )
            .into_response()),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::GONE,
            format!("the image of job {id} ({path}) cannot be read any more: {e}"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the image of job {id} failed: {e}"),
        )),
    }
}

/// The file at `root/relative`, opened without following any link on the way, and only if
/// it is a PNG.
fn read_png_no_follow(root: &std::path::Path, relative: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = crate::output::open_no_follow(root, relative)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "it is not a PNG any more",
        ));
    }
    Ok(bytes)
}

fn status_word(status: Status) -> &'static str {
    match status {
        Status::Queued => "queued",
        Status::Running => "running",
        Status::Complete => "complete",
        Status::Failed => "failed",
        Status::Cancelled => "cancelled",
    }
}
