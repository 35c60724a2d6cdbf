//! Content-addressed uploads of input images: each image goes to a server once, under a name
//! made from its content, so the same bytes are never sent twice to one server and two
//! different files never share a name.
//!
//! - **Name**: subfolder [`SUBFOLDER`] (`plasma`), file `<first 32 hex digits of the
//!   sha256>.<png|jpg|webp>` (the extension from the content, not the local name), so a
//!   workflow's `LoadImage` reads `plasma/<hash>.png`. 32 hex digits are 128 bits: two
//!   different files get the same name only by a SHA-256 collision on 128 bits, which no
//!   one has ever found (by chance it would take about 2^64 files on one server).
//! - **Once per server**: [`Uploads`] remembers, per server URL and sha256, what it uploaded
//!   in this run; a second job needing the image on that server gets the name at once, and
//!   jobs asking at the same time share one upload.
//! - **Idempotent on the server**: ComfyUI answers the same name without writing anything
//!   when that name already holds the same bytes (recording 09), so an image uploaded by an
//!   earlier run costs one request, not a second copy. When the name holds other bytes
//!   (a file cut short or changed under an earlier upload), the server answers
//!   `<hash> (1).png`; the upload is then sent again with `overwrite=true`, since under this
//!   subfolder a name can only rightly hold one content. (The server keeps the stray
//!   `(1)` copy.)
//! - **Streamed**: the file is read from disk in pieces as the request body goes out
//!   (never held whole in memory), and the pieces are hashed on the way: if the bytes sent
//!   are not the ones checked (the file changed since), the upload is an error.
//! - **Lost uploads**: when `POST /prompt` is refused because `LoadImage` names a file the
//!   server no longer has ([`missing_inputs`]: its input folder was emptied, or it is a
//!   server this run had not used), [`Uploads::reupload`] sends it again unless an upload
//!   finished after that refused POST was sent (then jobs refused together share one new
//!   upload); the caller then posts once more.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

use super::client::ComfyClient;
use super::error::ComfyError;
use super::protocol::PromptRejected;
use crate::digest::Sha256Digest;
use crate::inputs::InputImage;

/// The server subfolder of the input folder uploads go to.
pub const SUBFOLDER: &str = crate::inputs::UPLOAD_SUBFOLDER;
/// Hex digits of the sha256 in an uploaded file's name (128 bits).
pub const NAME_HEX_DIGITS: usize = crate::inputs::UPLOAD_NAME_HEX_DIGITS;
/// The size of the pieces a file is read and sent in.
const CHUNK: usize = 256 * 1024;

/// Where an input image is on a server: `subfolder/name` under its input folder.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UploadedName {
    pub subfolder: String,
    pub name: String,
}

impl UploadedName {
    /// The name an image is uploaded under: `plasma`, `<32 hex digits of its sha256>.<ext>`.
    pub fn for_image(image: &InputImage) -> UploadedName {
        UploadedName {
            subfolder: SUBFOLDER.to_owned(),
            name: image.upload_file_name(),
        }
    }

    /// What a `LoadImage` node's `image` input names it by: `plasma/<hash>.png`.
    pub fn load_image_value(&self) -> String {
        format!("{}/{}", self.subfolder, self.name)
    }
}

/// Why an input image could not be put on a server. Each names the file and the server.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("cannot read input image {path} to upload it to {url}: {reason}")]
    Read {
        path: PathBuf,
        url: String,
        reason: String,
    },
    #[error(
        "input image {path} changed after it was checked (its content is no longer sha256 {expected}); nothing that uses it was sent to {url}: run again"
    )]
    Changed {
        path: PathBuf,
        url: String,
        expected: Sha256Digest,
    },
    #[error("uploading input image {path}: {source}")]
    Server {
        path: PathBuf,
        #[source]
        source: ComfyError,
    },
    #[error(
        "{url} stored input image {path} as {got:?} in {subfolder:?}, not as {want:?}, even when asked to overwrite; check the server's input folder"
    )]
    Misnamed {
        path: PathBuf,
        url: String,
        want: String,
        got: String,
        subfolder: String,
    },
}

impl UploadError {
    /// Whether trying again later can help (the server's trouble, not the file's).
    pub fn is_transient(&self) -> bool {
        match self {
            UploadError::Server { source, .. } => source.is_transient(),
            UploadError::Read { .. }
            | UploadError::Changed { .. }
            | UploadError::Misnamed { .. } => false,
        }
    }
}

/// One image on one server: its upload, done once, and when it was done.
type Done = Arc<OnceCell<(UploadedName, Instant)>>;

/// What this run has uploaded where (see the module's description). Share one per run.
#[derive(Default)]
pub struct Uploads {
    entries: Mutex<HashMap<(String, Sha256Digest), Done>>,
    /// Upload requests sent, overwrites included.
    sent: AtomicU64,
}

impl Uploads {
    pub fn new() -> Uploads {
        Uploads::default()
    }

    /// Make sure `image` is on `client`'s server; its name there. Uploads it unless this
    /// run already did; callers asking at the same time share one upload, and a failed one
    /// is tried again by the next caller.
    pub async fn ensure(
        &self,
        client: &ComfyClient,
        image: &InputImage,
    ) -> Result<UploadedName, UploadError> {
        self.done_by(client, image, None).await
    }

    /// Upload `image` to `client`'s server again, after the server refused a prompt posted
    /// at `posted_at` because it does not have the image ([`missing_inputs`]). An upload
    /// finished after that moment is taken as it is: several jobs refused for the same
    /// image share one new upload.
    pub async fn reupload(
        &self,
        client: &ComfyClient,
        image: &InputImage,
        posted_at: Instant,
    ) -> Result<UploadedName, UploadError> {
        self.done_by(client, image, Some(posted_at)).await
    }

    /// Upload requests sent so far (overwrites included), for reports and tests.
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The image's upload to that server, done now unless one finished after `stale_before`
    /// (any finished one when `None`) or one is under way.
    async fn done_by(
        &self,
        client: &ComfyClient,
        image: &InputImage,
        stale_before: Option<Instant>,
    ) -> Result<UploadedName, UploadError> {
        let cell = {
            let mut entries = self
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let cell = entries.entry(key(client, image)).or_default();
            let stale = match (cell.get(), stale_before) {
                (Some((_, finished)), Some(posted)) => *finished <= posted,
                _ => false,
            };
            if stale {
                *cell = Done::default();
            }
            Arc::clone(cell)
        };
        cell.get_or_try_init(|| async {
            let name = self.upload(client, image).await?;
            Ok((name, Instant::now()))
        })
        .await
        .map(|(name, _)| name.clone())
    }

    /// One upload under the image's name; again with `overwrite` when other bytes hold it.
    async fn upload(
        &self,
        client: &ComfyClient,
        image: &InputImage,
    ) -> Result<UploadedName, UploadError> {
        let want = UploadedName::for_image(image);
        let mut answer = self.send(client, image, &want.name, false).await?;
        if answer.name != want.name {
            answer = self.send(client, image, &want.name, true).await?;
        }
        if answer.name != want.name || answer.subfolder != want.subfolder {
            return Err(UploadError::Misnamed {
                path: image.path.clone(),
                url: client.url().to_owned(),
                want: want.name,
                got: answer.name,
                subfolder: answer.subfolder,
            });
        }
        Ok(want)
    }

    /// One `POST /upload/image` with the file streamed from disk and hashed on the way.
    async fn send(
        &self,
        client: &ComfyClient,
        image: &InputImage,
        name: &str,
        overwrite: bool,
    ) -> Result<super::protocol::UploadAnswer, UploadError> {
        let url = client.url().to_owned();
        let read_error = |e: std::io::Error| UploadError::Read {
            path: image.path.clone(),
            url: url.clone(),
            reason: e.to_string(),
        };
        let changed = || UploadError::Changed {
            path: image.path.clone(),
            url: url.clone(),
            expected: image.sha256,
        };
        let file = tokio::fs::File::open(&image.path)
            .await
            .map_err(read_error)?;
        let len = file.metadata().await.map_err(read_error)?.len();
        if len != image.len {
            return Err(changed());
        }
        let hasher = Arc::new(Mutex::new(Sha256::new()));
        let body = futures::stream::try_unfold(
            (file, Arc::clone(&hasher)),
            |(mut file, hasher)| async move {
                let mut piece = vec![0u8; CHUNK];
                let n = file.read(&mut piece).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(None);
                }
                piece.truncate(n);
                hasher
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .update(&piece);
                Ok(Some((piece, (file, hasher))))
            },
        );
        let part =
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(body), len)
                .file_name(name.to_owned())
                .mime_str(image.format.mime())
                .expect("the image formats' MIME types parse");
        self.sent.fetch_add(1, Ordering::Relaxed);
        let result = client.upload_image(part, len, SUBFOLDER, overwrite).await;
        let sent: Sha256Digest = hasher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .finalize()
            .into();
        // Checked first: a file that changed while it was read can also break the request.
        if sent != image.sha256 {
            return Err(changed());
        }
        result.map_err(|source| UploadError::Server {
            path: image.path.clone(),
            source,
        })
    }
}

fn key(client: &ComfyClient, image: &InputImage) -> (String, Sha256Digest) {
    (client.url().to_owned(), image.sha256)
}

/// The `LoadImage` file names a refused `POST /prompt` says the server does not have
/// (`custom_validation_failed`, "image - Invalid image file: NAME"), as the graph wrote them.
pub fn missing_inputs(rejected: &PromptRejected) -> Vec<String> {
    const PREFIX: &str = "image - Invalid image file: ";
    let mut names: Vec<String> = rejected
        .node_errors
        .values()
        .filter_map(|node| node.get("errors")?.as_array())
        .flatten()
        .filter(|e| e.get("type").and_then(|t| t.as_str()) == Some("custom_validation_failed"))
        .filter_map(|e| e.get("details")?.as_str()?.strip_prefix(PREFIX))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::ImageFormat;

    #[test]
    fn the_name_is_32_hex_digits_of_the_sha256_and_the_content_s_extension() {
        let digest = Sha256Digest::from(<[u8; 32]>::from(Sha256::digest(b"x")));
        let image = InputImage {
            path: "refs/face.PNG.jpeg".into(),
            format: ImageFormat::Webp,
            width: 1,
            height: 1,
            len: 1,
            sha256: digest,
        };
        let name = UploadedName::for_image(&image);
        assert_eq!(name.subfolder, "plasma");
        assert_eq!(name.name, format!("{}.webp", &digest.to_string()[..32]));
        assert_eq!(name.load_image_value(), format!("plasma/{}", name.name));
    }

    #[test]
    fn missing_inputs_reads_loadimage_s_refusal() {
        // Recording 09's answer to a LoadImage naming a file the server does not have.
        let rejected: PromptRejected = serde_json::from_value(serde_json::json!({
            "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
            "node_errors": {
                "10": {"errors": [{"type": "custom_validation_failed", "message": "Custom validation failed for node", "details": "image - Invalid image file: plasma/ab.png", "extra_info": {"input_name": "image"}}], "dependent_outputs": ["9"], "class_type": "LoadImage"},
                "12": {"errors": [{"type": "value_not_in_list", "message": "Value not in list", "details": "ckpt_name: 'x' not in []", "extra_info": {}}], "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}
            }
        }))
        .unwrap();
        assert_eq!(missing_inputs(&rejected), vec!["plasma/ab.png".to_string()]);
    }
}
