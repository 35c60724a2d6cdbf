//! One run of a list of jobs against a set of servers, from output folders to final report:
//! used by `run`, `rerun` and the tests (in-process). It never prints except through the
//! progress display it is given.
//!
//! Order: prepare the chapter folders and ledger (a local problem stops here, before any
//! server is bothered), skip jobs whose image the ledger vouches for, preflight the servers
//! for the rest, then execute and keep the report current.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::comfy::ComfyClient;
use crate::engine::{ChapterOutput, Engine, EngineConfig, Outputs, Reattach, RunContext};
use crate::events::{Event, ImageRecord, JobOutcome, JobStatus, Timings};
use crate::ledger;
use crate::output::{ChapterDirs, PathError, remove_stale_temp_files, write_atomic_with};
use crate::plan::Job;
use crate::preflight::{self, PreflightError, ServerInfo};
use crate::report::book::{BookChapter, BookReport};
use crate::report::json::{ManifestRef, ServerRecord, Settings, ShardRecord, Tool};
use crate::report::progress::{self, Mode};
use crate::report::{JobReport, ReportStatus, ReportWriter, RunReport, Totals, html};
use crate::shard::Shard;
use crate::time::{new_run_id, rfc3339};

/// Everything a run needs besides the jobs and the servers.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out_root: PathBuf,
    pub chapter: u16,
    pub title: Option<String>,
    pub manifest_path: String,
    pub manifest_sha256: String,
    /// Render again even when the ledger has a verified image.
    pub force: bool,
    /// The `--only` selectors, for the report.
    pub only: Vec<String>,
    pub simulator: bool,
    pub engine: EngineConfig,
    pub mode: Mode,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run_id: String,
    pub chapter: u16,
    pub report_path: PathBuf,
    pub contact_sheet_path: PathBuf,
    pub totals: Totals,
    pub cancelled: bool,
    /// How each job ended, in plan order (skipped jobs too): the final report's entries,
    /// handed over rather than copied (a 10,000-job run would hold them twice).
    pub outcomes: Vec<JobReport>,
}

/// Why a run could not start (or could not write its report).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("preflight failed")]
    Preflight(Vec<PreflightError>),
    #[error(transparent)]
    Io(#[from] PathError),
}

/// What a run of several chapters (a book) shares: everything in [`RunOptions`] but the
/// chapter's own fields, which are each [`ChapterRun`]'s.
#[derive(Debug, Clone)]
pub struct BookOptions {
    pub out_root: PathBuf,
    pub force: bool,
    pub only: Vec<String>,
    pub simulator: bool,
    pub engine: EngineConfig,
    pub mode: Mode,
    /// `--shard K/N`: the jobs given are this shard's; each report names it.
    pub shard: Option<Shard>,
    /// Also write the book summary `<out>/reports/<run-id>.json` and `.html`.
    pub summary: bool,
}

/// One chapter of a book run: its manifest and the jobs to run of it.
#[derive(Debug, Clone)]
pub struct ChapterRun {
    pub chapter: u16,
    pub title: Option<String>,
    pub manifest_path: String,
    pub manifest_sha256: String,
    pub jobs: Vec<Arc<Job>>,
    /// With a shard: the key of every job the chapter planned (all shards), for the report.
    pub planned: Vec<String>,
}

/// How a book run ended: each chapter's summary, in the order given, and the book's.
#[derive(Debug, Clone)]
pub struct BookSummary {
    pub run_id: String,
    pub chapters: Vec<RunSummary>,
    pub totals: Totals,
    pub cancelled: bool,
    /// The book summary (`<out>/reports/<run-id>.json`) and its page, when asked for.
    pub summary_path: Option<PathBuf>,
    pub summary_html_path: Option<PathBuf>,
}

/// Run `jobs` on `servers` and write images, ledger, report and contact sheet.
pub async fn run_jobs(
    options: RunOptions,
    servers: Vec<ComfyClient>,
    jobs: Vec<Arc<Job>>,
    cancel: watch::Receiver<bool>,
) -> Result<RunSummary, RunError> {
    let book = BookOptions {
        out_root: options.out_root,
        force: options.force,
        only: options.only,
        simulator: options.simulator,
        engine: options.engine,
        mode: options.mode,
        shard: None,
        summary: false,
    };
    let chapter = ChapterRun {
        chapter: options.chapter,
        title: options.title,
        manifest_path: options.manifest_path,
        manifest_sha256: options.manifest_sha256,
        jobs,
        planned: Vec::new(),
    };
    let mut summary = run_book(book, vec![chapter], servers, cancel).await?;
    Ok(summary.chapters.remove(0))
}

/// What one chapter of a book run holds while it goes.
struct Opened {
    dirs: ChapterDirs,
    skipped: Vec<JobOutcome>,
}

/// Run the chapters' jobs on `servers` (one engine, one socket per server for all of them)
/// and write each chapter's images, ledger, report and contact sheet, and, if asked, the
/// book summary. Two chapters with the same number are the caller's to refuse.
#[allow(
    clippy::too_many_lines,
    reason = "a command's steps in order, top to bottom; split, they would only pass the same state around"
)]
pub async fn run_book(
    options: BookOptions,
    chapters: Vec<ChapterRun>,
    servers: Vec<ComfyClient>,
    cancel: watch::Receiver<bool>,
) -> Result<BookSummary, RunError> {
    let started_at = SystemTime::now();
    let started = Instant::now();
    let run_id = new_run_id(started_at);
    let outputs = Arc::new(Outputs::new(&options.out_root));
    let mut opened = Vec::with_capacity(chapters.len());
    let mut to_run: Vec<Arc<Job>> = Vec::new();
    let mut reattach = std::collections::HashMap::new();
    for run in &chapters {
        let dirs = ChapterDirs::new(&options.out_root, run.chapter);
        let (chapter, records) = ChapterOutput::open(dirs.clone(), run.chapter)?;
        remove_stale_temp_files(&dirs.reports);
        outputs.insert(run.chapter, chapter);

        // Incremental: a job whose hash has a verified image on disk is done already.
        let mut skipped = Vec::new();
        let first_new = to_run.len();
        if options.force {
            to_run.extend(run.jobs.iter().cloned());
        } else {
            let verified = ledger::verified_images(&dirs.root, &records);
            for job in &run.jobs {
                match verified.get(&job.hash.to_string()) {
                    Some(images) if !images.is_empty() => {
                        skipped.push(skipped_outcome(job, images, &options.out_root));
                    }
                    _ => to_run.push(job.clone()),
                }
            }
        }

        // Prompts a killed run left on a server are looked for there before anything is posted.
        let open = ledger::open_submissions(&records);
        reattach.extend(to_run[first_new..].iter().filter_map(|job| {
            let open = open.get(&job.key).filter(|o| job.hash == o.job_hash)?;
            Some((
                job.key.clone(),
                Reattach {
                    server: open.server.clone(),
                    prompt_id: open.prompt_id.clone(),
                },
            ))
        }));
        opened.push(Opened { dirs, skipped });
    }

    let server_infos = if to_run.is_empty() {
        servers
            .iter()
            .map(|s| ServerInfo {
                url: s.url().to_owned(),
                comfyui_version: None,
            })
            .collect()
    } else {
        preflight::check(&servers, &to_run)
            .await
            .map_err(RunError::Preflight)?
    };

    let mut writers = Vec::with_capacity(chapters.len());
    let mut total = 0;
    for (run, chapter) in chapters.iter().zip(&opened) {
        total += run.jobs.len();
        let report = RunReport {
            schema_version: crate::report::json::REPORT_SCHEMA_VERSION,
            tool: Tool {
                name: env!("CARGO_PKG_NAME").to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
            run_id: run_id.clone(),
            complete: false,
            manifest: ManifestRef {
                path: run.manifest_path.clone(),
                sha256: run.manifest_sha256.clone(),
            },
            chapter: run.chapter,
            title: run.title.clone(),
            output_root: options.out_root.display().to_string(),
            servers: server_infos.iter().map(ServerRecord::from).collect(),
            settings: Settings {
                timeout_secs: options.engine.timeout.as_secs_f64(),
                in_flight: options.engine.in_flight,
                force: options.force,
                only: options.only.clone(),
                simulator: options.simulator,
            },
            started_at: rfc3339(started_at),
            ended_at: None,
            totals: Totals::default(),
            shard: options.shard.map(|shard| ShardRecord {
                index: shard.index,
                count: shard.count,
                planned: run.planned.clone(),
            }),
            merged_from: Vec::new(),
            jobs: run.jobs.iter().map(JobReport::pending).collect(),
        };
        let report_path = chapter.dirs.reports.join(format!("{run_id}.json"));
        let mut writer = ReportWriter::new(report, report_path);
        for outcome in &chapter.skipped {
            // Not yet on disk: the first write below covers these.
            let _ = writer.record(outcome);
        }
        writer.write()?;
        writers.push(writer);
    }

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let collector = progress::spawn_collector(events_rx, writers, options.mode, total, 0);
    for outcome in opened.iter().flat_map(|o| &o.skipped) {
        let _ = events_tx.send(Event::Finished(Box::new(outcome.clone())));
    }
    let _ = events_tx.send(Event::RunStarted {
        total,
        servers: servers.iter().map(|s| s.url().to_owned()).collect(),
    });
    let ctx = Arc::new(RunContext {
        run_id: run_id.clone(),
        out_root: options.out_root.clone(),
        outputs,
        events: events_tx,
        cancel: cancel.clone(),
        started,
        reattach,
    });
    // The outcomes are read back from the reports, which record every one of them anyway.
    if !to_run.is_empty() {
        let engine = Engine::start(options.engine.clone(), servers, to_run, ctx.clone(), false);
        engine.finish().await;
    }
    drop(ctx);
    let collected = tokio::task::spawn_blocking(move || collector.join())
        .await
        .expect("the collector thread is joined")
        .expect("the collector thread does not panic");
    let cancelled = *cancel.borrow();
    let mut summaries = Vec::with_capacity(opened.len());
    let mut totals = Totals::default();
    for (writer, chapter) in collected.writers.into_iter().zip(&opened) {
        let dirs = &chapter.dirs;
        // The report is the record of what happened: if its folder went away during the run
        // (cleaned up by hand, a script), make it again rather than lose the report; a folder
        // that cannot be made fails the write below with its path.
        let _ = std::fs::create_dir_all(&dirs.reports);
        let report_path = writer.path().to_owned();
        let contact_sheet_path = dirs.reports.join(format!("{run_id}.html"));
        let report = writer.finish(SystemTime::now())?;
        write_atomic_with(&contact_sheet_path, |out| {
            html::write_contact_sheet(&report, &options.out_root, &dirs.thumbs(), out)
        })?;
        debug_assert!(
            report
                .jobs
                .iter()
                .all(|j| j.status != ReportStatus::Pending),
            "each job ends"
        );
        totals.add(&report.totals);
        summaries.push(RunSummary {
            run_id: run_id.clone(),
            chapter: report.chapter,
            report_path,
            contact_sheet_path,
            totals: report.totals,
            cancelled,
            outcomes: report.jobs,
        });
    }
    let (summary_path, summary_html_path) = if options.summary {
        let book = BookReport::new(
            &run_id,
            &options.out_root,
            options.shard,
            (rfc3339(started_at), rfc3339(SystemTime::now())),
            cancelled,
            chapters
                .iter()
                .zip(&summaries)
                .map(|(run, summary)| BookChapter {
                    chapter: run.chapter,
                    title: run.title.clone(),
                    manifest: run.manifest_path.clone(),
                    report: crate::engine::relative(&options.out_root, &summary.report_path),
                    contact_sheet: crate::engine::relative(
                        &options.out_root,
                        &summary.contact_sheet_path,
                    ),
                    totals: summary.totals.clone(),
                })
                .collect(),
        );
        let (json, html) = book.write(&options.out_root)?;
        (Some(json), Some(html))
    } else {
        (None, None)
    };
    Ok(BookSummary {
        run_id,
        chapters: summaries,
        totals,
        cancelled,
        summary_path,
        summary_html_path,
    })
}

fn skipped_outcome(job: &Job, images: &[ledger::VerifiedImage], out_root: &Path) -> JobOutcome {
    let latest_run = images.last().map(|i| i.run_id.clone());
    JobOutcome {
        key: job.key.clone(),
        status: JobStatus::Skipped,
        server: None,
        prompt_id: images.last().map(|i| i.prompt_id.clone()),
        attempts: 0,
        error: None,
        // The images of the most recent run that rendered this job.
        images: images
            .iter()
            .filter(|i| Some(&i.run_id) == latest_run.as_ref())
            .map(|i| ImageRecord {
                path: crate::engine::relative(out_root, &i.path),
                bytes: i.bytes,
                sha256: i.sha256,
                width: i.width,
                height: i.height,
            })
            .collect(),
        timings: Timings::default(),
    }
}
