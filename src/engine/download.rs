//! A finished prompt's images: download each from `/view` (bounded in size, in memory or
//! spilled to a temp file), check it (PNG, size), wait for a server that went away after
//! rendering, then commit all of the job's images at once with their ledger entries.
//! Nothing gets a final name unless every image of the job is good.
//!
//! Owns the downloads semaphore's use and the temp-file-to-final-name step. Must not post,
//! wait on prompts or decide retries beyond the download's own tries.

use std::sync::Arc;
use std::time::Instant;

use super::failure::unreachable;
use super::outputs::{ChapterOutput, relative};
use super::server::ServerConn;
use super::shared::Shared;
use super::task::{Attempt, Task};
use crate::comfy::{ComfyClient, ImageRef};
use crate::events::{ErrorKind, ImageRecord, JobError, JobStatus};
use crate::ledger::{ImageEntry, LEDGER_VERSION};
use crate::output::{PathError, StageError, StagedImage};
use crate::workflow::output_size::saved_size;

/// Largest image body accepted from `/view`.
const MAX_IMAGE_BYTES: u64 = 512 << 20;

/// A server-chosen name is only ever a query parameter for `/view`; refuse names that try
/// to leave the output folder even there.
fn unsafe_image_name(image: &ImageRef) -> bool {
    let bad = |s: &str| s.starts_with('/') || s.contains('\\') || s.split('/').any(|p| p == "..");
    image.filename.is_empty()
        || image.filename.contains('/')
        || bad(&image.filename)
        || bad(&image.subfolder)
}

/// Download every image to temp files, check them, then give each its final name.
/// Nothing gets a final name unless every image of the job is good.
#[allow(
    clippy::too_many_lines,
    reason = "one job's images, fetched and written in order with their checks"
)]
pub(super) async fn write_images(
    shared: &Arc<Shared>,
    conn: &ServerConn,
    task: &Task,
    prompt_id: &str,
    images: &[ImageRef],
) -> Result<Vec<ImageRecord>, Attempt> {
    let ctx = &shared.ctx;
    let client = &conn.client;
    if let Some(image) = images.iter().find(|i| unsafe_image_name(i)) {
        return Err(Attempt::Failed(
            JobStatus::Failed,
            JobError::new(
                ErrorKind::Download,
                format!(
                    "{} named an unsafe output file (filename {:?}, subfolder {:?}); nothing was fetched",
                    client.url(),
                    image.filename,
                    image.subfolder
                ),
            ),
        ));
    }
    let _download = shared.downloads.clone().acquire_owned().await.ok();
    // The size the graph gives its saved images (larger after an upscale pass), else the
    // job's; a job with input images (an img2img pass) whose graph does not say takes its
    // size from them: only the PNG itself is checked then.
    let expected =
        saved_size(&task.job.workflow.to_value(), &task.job.output_nodes).or_else(|| {
            task.job
                .inputs
                .is_empty()
                .then_some((task.job.params.width, task.job.params.height))
        });
    let mut staged = Vec::with_capacity(images.len());
    for image in images {
        let mut last_error = None;
        let mut try_no = 1u32;
        // Consecutive "cannot reach the server" answers: those do not use up the tries.
        let mut unreachable: Option<(Instant, u32)> = None;
        while try_no <= 3 {
            match download(shared, client, image, task.job.chapter, expected).await {
                Ok(image) => {
                    staged.push(image);
                    last_error = None;
                    break;
                }
                Err(DownloadError::Io(error)) => {
                    return Err(Attempt::Failed(
                        JobStatus::Failed,
                        JobError::new(ErrorKind::Io, error),
                    ));
                }
                // The server restarted (or blipped) after rendering: its files are still
                // on its disk, so wait for it like the socket does instead of failing the
                // job. Once it is out of rotation, or away past `handover_after` while
                // another server is up, the job is rendered again elsewhere.
                Err(DownloadError::Unreachable(error)) => {
                    let (since, waits) = unreachable.get_or_insert((Instant::now(), 0));
                    *waits += 1;
                    let away = since.elapsed();
                    if conn.is_retired()
                        || away >= shared.config.outage_window
                        || (away >= shared.config.handover_after
                            && shared.other_server_up(conn.index))
                    {
                        return Err(Attempt::Unreachable(format!(
                            "the rendered image could not be fetched: {error}"
                        )));
                    }
                    tokio::time::sleep(shared.backoff(*waits)).await;
                }
                // Answering but not serving it now (5xx, 429): as before an outage, for
                // up to `handover_after`.
                Err(DownloadError::Busy(error)) => {
                    let (since, waits) = unreachable.get_or_insert((Instant::now(), 0));
                    *waits += 1;
                    if since.elapsed() >= shared.config.handover_after {
                        return Err(Attempt::Transient(format!(
                            "the rendered image could not be fetched: {error}"
                        )));
                    }
                    tokio::time::sleep(shared.backoff(*waits)).await;
                }
                Err(DownloadError::Bad(error)) => {
                    unreachable = None;
                    last_error = Some(error);
                    tokio::time::sleep(shared.backoff(try_no)).await;
                    try_no += 1;
                }
            }
        }
        if let Some(error) = last_error {
            return Err(Attempt::Failed(
                JobStatus::Failed,
                JobError::new(
                    ErrorKind::Download,
                    format!("{} (image {:?})", error, image.filename),
                ),
            ));
        }
    }

    let output = ctx.outputs.chapter(task.job.chapter).map_err(|e| {
        Attempt::Failed(
            JobStatus::Failed,
            JobError::new(ErrorKind::Io, e.to_string()),
        )
    })?;
    let job = task.job.clone();
    let run_id = ctx.run_id.clone();
    let prompt_id = prompt_id.to_owned();
    let out_root = ctx.out_root.clone();
    let committed = tokio::task::spawn_blocking(move || -> Result<Vec<ImageRecord>, String> {
        // Group commits: the bytes of every image staged by now are made durable at once,
        // then the names (see `output::group_sync`).
        output.store.sync_staged().map_err(|e| e.to_string())?;
        let mut records = Vec::with_capacity(staged.len());
        for image in staged {
            let (bytes, sha256, width, height) =
                (image.bytes, image.sha256, image.width, image.height);
            let target = output
                .ledger
                .commit_image(&output.store, image, job.page, |target| ImageEntry {
                    v: LEDGER_VERSION,
                    run_id: run_id.clone(),
                    key: job.key.clone(),
                    job_hash: job.hash.to_string(),
                    prompt_id: prompt_id.clone(),
                    seed: job.seed,
                    file: relative(&output.dirs.root, &target.path),
                    bytes,
                    sha256: sha256.to_string(),
                    width,
                    height,
                })
                .map_err(|e| e.to_string())?;
            records.push(ImageRecord {
                path: relative(&out_root, &target.path),
                bytes,
                sha256,
                width,
                height,
            });
        }
        output.store.sync_names().map_err(|e| e.to_string())?;
        Ok(records)
    })
    .await;
    match committed {
        Ok(Ok(records)) => Ok(records),
        Ok(Err(error)) => Err(Attempt::Failed(
            JobStatus::Failed,
            JobError::new(ErrorKind::Io, error),
        )),
        Err(join) => Err(Attempt::Failed(
            JobStatus::Failed,
            JobError::new(ErrorKind::Io, format!("writing images panicked: {join}")),
        )),
    }
}

enum DownloadError {
    /// Local trouble: no point in fetching again.
    Io(String),
    /// The server's answer was bad or broke off.
    Bad(String),
    /// The server could not be reached: wait for it (it has the file).
    Unreachable(String),
    /// The server answered 5xx or 429: worth waiting for a while.
    Busy(String),
}

/// Downloads up to this size are held in memory and written with one call; a larger one
/// goes on to a temp file in steps of this size (memory stays bounded at 8 downloads).
const DOWNLOAD_BUFFER: usize = 1 << 20;

/// Download one image, write it to a temp file in its folder, fsync and check it. All file
/// work happens on blocking threads; a small image costs one of them, one file and no reads.
async fn download(
    shared: &Shared,
    client: &ComfyClient,
    image: &ImageRef,
    chapter: u16,
    expected: Option<(u32, u32)>,
) -> Result<StagedImage, DownloadError> {
    let output = shared
        .ctx
        .outputs
        .chapter(chapter)
        .map_err(|e| DownloadError::Io(e.to_string()))?;
    let mut body = client.view(image).await.map_err(|e| {
        if unreachable(&e) {
            DownloadError::Unreachable(e.to_string())
        } else if e.is_transient() {
            DownloadError::Busy(e.to_string())
        } else {
            DownloadError::Bad(e.to_string())
        }
    })?;
    let declared = body.declared_len();
    let mut written: u64 = 0;
    let mut buffer: Vec<u8> =
        Vec::with_capacity(declared.map_or(64 << 10, |d| d.min(DOWNLOAD_BUFFER as u64) as usize));
    // Once the image outgrows the buffer: the temp file it is spilled to.
    let mut spilled: Option<tempfile::NamedTempFile> = None;
    while let Some(chunk) = body.next_chunk().await {
        let chunk = chunk.map_err(|e| DownloadError::Bad(e.to_string()))?;
        written += chunk.len() as u64;
        if written > MAX_IMAGE_BYTES {
            return Err(DownloadError::Bad(format!(
                "{} sent more than {MAX_IMAGE_BYTES} bytes",
                client.url()
            )));
        }
        buffer.extend_from_slice(&chunk);
        if buffer.len() >= DOWNLOAD_BUFFER {
            let (file, emptied) = blocking(spill(output.clone(), spilled.take(), buffer))
                .await?
                .map_err(|e| stage_error(client, e))?;
            spilled = Some(file);
            buffer = emptied;
        }
    }
    if let Some(declared) = declared
        && declared != written
    {
        return Err(DownloadError::Bad(format!(
            "{} declared {declared} bytes but sent {written}",
            client.url()
        )));
    }
    let staged = blocking(move || match spilled {
        None => output.store.stage_bytes(&buffer, expected),
        Some(file) => {
            let (file, _) = spill(output.clone(), Some(file), buffer)()?;
            output.store.stage(file, expected)
        }
    })
    .await?;
    staged.map_err(|e| stage_error(client, e))
}

fn stage_error(client: &ComfyClient, e: StageError) -> DownloadError {
    match e {
        StageError::Io(e) => DownloadError::Io(e.to_string()),
        e @ (StageError::NotPng(_) | StageError::WrongSize(_)) => {
            DownloadError::Bad(format!("{}: {e}", client.url()))
        }
    }
}

/// Append `buffer` to the download's temp file (made on first use); returns the file and
/// the emptied buffer.
fn spill(
    output: Arc<ChapterOutput>,
    file: Option<tempfile::NamedTempFile>,
    mut buffer: Vec<u8>,
) -> impl FnOnce() -> Result<(tempfile::NamedTempFile, Vec<u8>), StageError> {
    move || {
        let mut file = match file {
            Some(file) => file,
            None => output.store.temp_file().map_err(StageError::Io)?,
        };
        std::io::Write::write_all(&mut file, &buffer)
            .map_err(|e| StageError::Io(PathError::new("write", file.path(), e)))?;
        buffer.clear();
        Ok((file, buffer))
    }
}

/// Run file work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DownloadError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| DownloadError::Io(format!("writing the image panicked: {e}")))
}
