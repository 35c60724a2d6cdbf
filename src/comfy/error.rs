//! Errors talking to a ComfyUI server, classified as transient or not.

/// A failed exchange with a server. Every variant names the server URL.
#[derive(Debug, thiserror::Error)]
pub enum ComfyError {
    #[error("invalid server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("failed to connect to {url} ({path}): {reason}; is ComfyUI running there?")]
    Connect {
        url: String,
        path: String,
        reason: String,
    },
    #[error("request to {url}/{path} timed out")]
    Timeout { url: String, path: String },
    #[error("{url}/{path} answered HTTP {status}: {body}")]
    Status {
        url: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("{url}/{path} sent an unexpected body: {reason}")]
    Decode {
        url: String,
        path: String,
        reason: String,
    },
    #[error("websocket to {url}: {reason}")]
    WebSocket { url: String, reason: String },
}

impl ComfyError {
    pub(crate) fn from_reqwest(url: &str, path: &str, source: &reqwest::Error) -> ComfyError {
        let (url, path) = (url.to_owned(), path.to_owned());
        if source.is_timeout() {
            ComfyError::Timeout { url, path }
        } else if source.is_decode() || source.is_body() {
            ComfyError::Decode {
                url,
                path,
                reason: error_chain(source),
            }
        } else {
            ComfyError::Connect {
                url,
                path,
                reason: error_chain(source),
            }
        }
    }

    /// Whether trying again later can help: connection trouble, timeouts, 5xx, dropped sockets.
    pub fn is_transient(&self) -> bool {
        match self {
            ComfyError::BadUrl { .. } => false,
            ComfyError::Connect { .. }
            | ComfyError::Timeout { .. }
            | ComfyError::WebSocket { .. }
            | ComfyError::Decode { .. } => true,
            ComfyError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
        }
    }
}

/// `reqwest` hides the useful part (e.g. "Connection refused") in the source chain.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
