//! HTTP side of one ComfyUI server: URL and credentials, and one method per endpoint.
//!
//! Never sends an `Origin` header (ComfyUI answers 403 on a loopback host/origin mismatch).
//! Credentials come from the URL's user-info (basic auth) or `PLASMA_COMFY_TOKEN` (bearer) and
//! are sent on HTTP and on the WebSocket upgrade alike; they never appear in messages.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::error::{ComfyError, error_chain};
use super::protocol::{
    HistoryEntry, ImageRef, PromptAccepted, PromptRejected, PromptRequest, QueueSnapshot,
    UploadAnswer,
};

/// Environment variable with a bearer token sent to every server.
pub const TOKEN_ENV: &str = "PLASMA_COMFY_TOKEN";

/// How long a JSON call may take before it counts as a transient failure.
const JSON_TIMEOUT: Duration = Duration::from_secs(30);
/// `/object_info` rescans model folders on a real server and can take long.
const OBJECT_INFO_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone)]
enum Auth {
    None,
    Basic {
        user: String,
        password: Option<String>,
    },
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.write_str(match self {
            Auth::None => "none",
            Auth::Basic { .. } => "basic",
            Auth::Bearer(_) => "bearer",
        })
    }
}

/// A client for one ComfyUI server.
#[derive(Debug, Clone)]
pub struct ComfyClient {
    /// Base URL without credentials, without a trailing slash in the path.
    base: Url,
    /// `base` as text, for messages.
    display: String,
    auth: Auth,
    http: reqwest::Client,
}

/// The shared HTTP connection pool; build once per process and clone.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(16)
        .tcp_nodelay(true)
        .user_agent(concat!("plasma-batch/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS backend is compiled in")
}

/// What `POST /prompt` answered.
#[derive(Debug)]
pub enum PostOutcome {
    Accepted(PromptAccepted),
    /// HTTP 400 with ComfyUI's validation body.
    Rejected(PromptRejected),
}

impl ComfyClient {
    /// Parse a server URL (`http://host:8188`, `https://user:pass@host/comfy`).
    pub fn new(url: &str, http: reqwest::Client) -> Result<Self, ComfyError> {
        Self::with_token(
            url,
            http,
            std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
        )
    }

    pub fn with_token(
        url: &str,
        http: reqwest::Client,
        token: Option<String>,
    ) -> Result<Self, ComfyError> {
        let bad = |reason: &str| ComfyError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let mut base = Url::parse(url.trim()).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad("the scheme must be http or https"));
        }
        if base.host_str().is_none() {
            return Err(bad("the URL has no host"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(bad("the URL must not have a query or fragment"));
        }
        let auth = if !base.username().is_empty() {
            let user = percent_decode(base.username());
            let password = base.password().map(percent_decode);
            Auth::Basic { user, password }
        } else if let Some(token) = token {
            Auth::Bearer(token)
        } else {
            Auth::None
        };
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let path = base.path().trim_end_matches('/').to_owned();
        base.set_path(&path);
        let display = base.as_str().trim_end_matches('/').to_owned();
        Ok(ComfyClient {
            base,
            display,
            auth,
            http,
        })
    }

    /// The server URL without credentials, for messages and reports.
    pub fn url(&self) -> &str {
        &self.display
    }

    fn endpoint(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}/{}", self.base.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        url
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request_to(method, self.endpoint(path))
    }

    fn request_to(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.auth {
            Auth::None => builder,
            Auth::Basic { user, password } => builder.basic_auth(user, password.as_ref()),
            Auth::Bearer(token) => builder.bearer_auth(token),
        }
    }

    /// The `Authorization` header value for the WebSocket upgrade, if any.
    pub(crate) fn authorization(&self) -> Option<String> {
        use base64::Engine as _;
        match &self.auth {
            Auth::None => None,
            Auth::Basic { user, password } => {
                let raw = format!("{user}:{}", password.as_deref().unwrap_or(""));
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
            }
            Auth::Bearer(token) => Some(format!("Bearer {token}")),
        }
    }

    /// `ws[s]://host/prefix/ws?clientId=<id>`.
    pub fn ws_url(&self, client_id: &str) -> Url {
        let mut url = self.endpoint("ws");
        let scheme = if self.base.scheme() == "https" {
            "wss"
        } else {
            "ws"
        };
        url.set_scheme(scheme)
            .expect("ws and wss are valid schemes");
        url.query_pairs_mut().append_pair("clientId", client_id);
        url
    }

    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<reqwest::Response, ComfyError> {
        builder
            .send()
            .await
            .map_err(|source| ComfyError::from_reqwest(self.url(), path, &source))
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<T, ComfyError> {
        let response = self
            .send(
                self.request(reqwest::Method::GET, path).timeout(timeout),
                path,
            )
            .await?;
        self.json_body(response, path).await
    }

    async fn json_body<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
        path: &str,
    ) -> Result<T, ComfyError> {
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| ComfyError::from_reqwest(self.url(), path, &source))?;
        if !status.is_success() {
            return Err(ComfyError::Status {
                url: self.url().to_owned(),
                path: path.to_owned(),
                status: status.as_u16(),
                body: body_excerpt(&bytes),
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| ComfyError::Decode {
            url: self.url().to_owned(),
            path: path.to_owned(),
            reason: source.to_string(),
        })
    }

    async fn post_empty(&self, path: &str, body: Value) -> Result<(), ComfyError> {
        let response = self
            .send(
                self.request(reqwest::Method::POST, path)
                    .timeout(JSON_TIMEOUT)
                    .json(&body),
                path,
            )
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let bytes = response.bytes().await.unwrap_or_default();
        Err(ComfyError::Status {
            url: self.url().to_owned(),
            path: path.to_owned(),
            status: status.as_u16(),
            body: body_excerpt(&bytes),
        })
    }

    /// `GET /system_stats`.
    pub async fn system_stats(&self) -> Result<Value, ComfyError> {
        self.get_json("system_stats", JSON_TIMEOUT).await
    }

    /// `GET /object_info`: every node class with its input specs.
    pub async fn object_info(&self) -> Result<Value, ComfyError> {
        self.get_json("object_info", OBJECT_INFO_TIMEOUT).await
    }

    /// `GET /object_info/{class}`: one node class, `{}` if the server has none by that name.
    /// A few KB instead of the whole catalogue (~600 KB, and a model-folder scan that holds
    /// the server's interpreter lock for 0.2 s or more).
    pub async fn object_info_class(&self, class: &str) -> Result<Value, ComfyError> {
        let mut url = self.endpoint("object_info");
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .push(class);
        let path = format!("object_info/{class}");
        let request = self
            .request_to(reqwest::Method::GET, url)
            .timeout(JSON_TIMEOUT);
        let response = self.send(request, &path).await?;
        self.json_body(response, &path).await
    }

    /// `POST /prompt` with our own `prompt_id` and `client_id`.
    pub async fn post_prompt(
        &self,
        request: &PromptRequest<'_>,
    ) -> Result<PostOutcome, ComfyError> {
        let path = "prompt";
        let response = self
            .send(
                self.request(reqwest::Method::POST, path)
                    .timeout(JSON_TIMEOUT)
                    .json(request),
                path,
            )
            .await?;
        if response.status() == StatusCode::BAD_REQUEST {
            let bytes = response
                .bytes()
                .await
                .map_err(|source| ComfyError::from_reqwest(self.url(), path, &source))?;
            return match serde_json::from_slice::<PromptRejected>(&bytes) {
                Ok(rejected) => Ok(PostOutcome::Rejected(rejected)),
                Err(_) => Err(ComfyError::Status {
                    url: self.url().to_owned(),
                    path: path.to_owned(),
                    status: 400,
                    body: body_excerpt(&bytes),
                }),
            };
        }
        self.json_body(response, path)
            .await
            .map(PostOutcome::Accepted)
    }

    /// `GET /history/{id}`: `None` while the entry is not written (ComfyUI answers `{}`).
    pub async fn history(&self, prompt_id: &str) -> Result<Option<HistoryEntry>, ComfyError> {
        let path = format!("history/{prompt_id}");
        let mut body: serde_json::Map<String, Value> = self.get_json(&path, JSON_TIMEOUT).await?;
        match body.remove(prompt_id) {
            None => Ok(None),
            Some(entry) => {
                serde_json::from_value(entry)
                    .map(Some)
                    .map_err(|e| ComfyError::Decode {
                        url: self.url().to_owned(),
                        path,
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// `GET /queue`.
    pub async fn queue(&self) -> Result<QueueSnapshot, ComfyError> {
        let body: Value = self.get_json("queue", JSON_TIMEOUT).await?;
        Ok(QueueSnapshot::from_json(&body))
    }

    /// `POST /queue {"delete": [...]}`: removes pending prompts; never touches a running one.
    pub async fn delete_queued(&self, prompt_ids: &[String]) -> Result<(), ComfyError> {
        self.post_empty("queue", json!({ "delete": prompt_ids }))
            .await
    }

    /// Targeted `POST /interrupt {"prompt_id": P}`: a no-op unless P is running. We never send
    /// the global form, which would interrupt someone else's prompt.
    pub async fn interrupt(&self, prompt_id: &str) -> Result<(), ComfyError> {
        self.post_empty("interrupt", json!({ "prompt_id": prompt_id }))
            .await
    }

    /// `POST /upload/image` of one file part (multipart `image`, then `type=input`,
    /// `subfolder`, and `overwrite=true` when asked), into the server's input folder. The
    /// part may be a stream: it is sent as it is read. `len` (the part's length) sets how
    /// long the upload may take: 30 s and one more second per MiB.
    pub async fn upload_image(
        &self,
        image: reqwest::multipart::Part,
        len: u64,
        subfolder: &str,
        overwrite: bool,
    ) -> Result<UploadAnswer, ComfyError> {
        let path = "upload/image";
        let mut form = reqwest::multipart::Form::new()
            .part("image", image)
            .text("type", "input")
            .text("subfolder", subfolder.to_owned());
        if overwrite {
            form = form.text("overwrite", "true");
        }
        let timeout = JSON_TIMEOUT + Duration::from_secs(len / (1024 * 1024));
        let response = self
            .send(
                self.request(reqwest::Method::POST, path)
                    .timeout(timeout)
                    .multipart(form),
                path,
            )
            .await?;
        self.json_body(response, path).await
    }

    /// `GET /view` for one output image: its body, read as it arrives (status already
    /// checked).
    pub async fn view(&self, image: &ImageRef) -> Result<ImageBody, ComfyError> {
        let path = "view";
        let builder = self.request(reqwest::Method::GET, path).query(&[
            ("filename", image.filename.as_str()),
            ("subfolder", image.subfolder.as_str()),
            ("type", image.kind.as_str()),
        ]);
        let response = self.send(builder, path).await?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(ComfyError::Status {
                url: self.url().to_owned(),
                path: format!("view?filename={}", image.filename),
                status: status.as_u16(),
                body: body_excerpt(&bytes),
            });
        }
        Ok(ImageBody {
            response,
            url: self.url().to_owned(),
        })
    }
}

/// The body of an image `/view` answered with success, read piece by piece as it arrives,
/// so a large image is never held whole. The HTTP response stays inside this layer.
#[derive(Debug)]
pub struct ImageBody {
    response: reqwest::Response,
    /// The server, for messages.
    url: String,
}

impl ImageBody {
    /// The length the server declared (`Content-Length`), if it did.
    pub fn declared_len(&self) -> Option<u64> {
        self.response.content_length()
    }

    /// The next piece of the body; `None` at its end.
    pub async fn next_chunk(
        &mut self,
    ) -> Option<Result<impl std::ops::Deref<Target = [u8]>, BodyError>> {
        self.response
            .chunk()
            .await
            .map_err(|e| BodyError {
                url: self.url.clone(),
                reason: error_chain(&e),
            })
            .transpose()
    }
}

/// An image body that broke off before its end.
#[derive(Debug, thiserror::Error)]
#[error("the download from {url} broke off: {reason}")]
pub struct BodyError {
    url: String,
    reason: String,
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first few hundred bytes of a body, for an error message.
fn body_excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]);
    text.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> ComfyClient {
        ComfyClient::with_token(url, reqwest::Client::new(), None).unwrap()
    }

    #[test]
    fn endpoints_keep_a_path_prefix() {
        let c = client("https://example.test/comfy/");
        assert_eq!(c.url(), "https://example.test/comfy");
        assert_eq!(
            c.endpoint("prompt").as_str(),
            "https://example.test/comfy/prompt"
        );
        assert_eq!(
            c.ws_url("abc").as_str(),
            "wss://example.test/comfy/ws?clientId=abc"
        );
        let c = client("http://127.0.0.1:8188");
        assert_eq!(
            c.endpoint("history/x").as_str(),
            "http://127.0.0.1:8188/history/x"
        );
        assert_eq!(
            c.ws_url("a b").as_str(),
            "ws://127.0.0.1:8188/ws?clientId=a+b"
        );
    }

    #[test]
    fn credentials_move_from_url_to_header() {
        let c = client("http://ann:s%40cret@host:8188");
        assert_eq!(c.url(), "http://host:8188");
        assert_eq!(c.authorization().as_deref(), Some("Basic YW5uOnNAY3JldA=="));
        let c = ComfyClient::with_token("http://host", reqwest::Client::new(), Some("tok".into()))
            .unwrap();
        assert_eq!(c.authorization().as_deref(), Some("Bearer tok"));
        assert!(!format!("{c:?}").contains("tok"));
    }

    /// A one-shot loopback HTTP server: answers the first request with `head` and `body`,
    /// then closes the connection.
    async fn serve_once(head: String, body: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended before its head");
                request.extend_from_slice(&buf[..n]);
            }
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(&body).await.unwrap();
            socket.shutdown().await.unwrap();
        });
        url
    }

    fn image() -> ImageRef {
        serde_json::from_value(json!({"filename": "a.png", "subfolder": "", "type": "output"}))
            .unwrap()
    }

    #[tokio::test]
    async fn an_image_body_arrives_whole_with_its_declared_length() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let url = serve_once(head, body.clone()).await;
        let mut image = client(&url).view(&image()).await.unwrap();
        assert_eq!(image.declared_len(), Some(body.len() as u64));
        let mut read = Vec::new();
        while let Some(chunk) = image.next_chunk().await {
            read.extend_from_slice(&chunk.unwrap());
        }
        assert!(read == body, "the body read differs from the one sent");
    }

    #[tokio::test]
    async fn an_image_body_that_breaks_off_names_its_server() {
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 100000\r\nconnection: close\r\n\r\n";
        let url = serve_once(head.to_owned(), vec![7u8; 1000]).await;
        let mut image = client(&url).view(&image()).await.unwrap();
        let mut error = None;
        while let Some(chunk) = image.next_chunk().await {
            if let Err(e) = chunk {
                error = Some(e.to_string());
                break;
            }
        }
        let error = error.expect("a body cut short is an error, not an end");
        assert!(
            error.starts_with(&format!("the download from {url} broke off: ")),
            "{error}"
        );
    }

    #[test]
    fn rejects_bad_urls() {
        for url in ["ftp://host", "not a url", "http://host/?q=1", "host:8188"] {
            assert!(
                ComfyClient::with_token(url, reqwest::Client::new(), None).is_err(),
                "{url} should be rejected"
            );
        }
    }
}
