//! The only code that talks to ComfyUI over the network (reqwest and tungstenite):
//! protocol types, the HTTP client, and the WebSocket connection.

pub mod client;
pub mod error;
pub mod protocol;
pub mod upload;
pub mod ws;

pub use client::{BodyError, ComfyClient, ImageBody, PostOutcome, http_client};
pub use error::ComfyError;
pub use protocol::{HistoryEntry, ImageRef, QueueSnapshot, ServerMessage, UploadAnswer};
pub use upload::{UploadError, UploadedName, Uploads, missing_inputs};
