//! One run of a list of jobs against a set of servers, from output folders to final report:
//! used by `run`, `rerun` and the tests (in-process). It never prints except through the
//! progress display it is given.
//!
//! Order: prepare the chapter folders and ledger (a local problem stops here, before any
//! server is bothered), skip jobs whose image the ledger vouches for, preflight the servers
//! for the rest, then execute and keep the report current.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::comfy::ComfyClient;
use crate::engine::{
    Catalogue, ChapterOutput, Engine, EngineConfig, Outputs, Reattach, RunContext,
    unroutable_message,
};
use crate::events::{
    ErrorKind, Event, ImageRecord, JobError, JobOutcome, JobStatus, RouteState, ServerRouting,
    Timings,
};
use crate::ledger;
use crate::output::{ChapterDirs, PathError, remove_stale_temp_files, write_atomic_with};
use crate::plan::Job;
use crate::preflight::{self, PreflightError, ServerInfo, Survey};
use crate::report::book::{BookChapter, BookReport};
use crate::report::json::{ManifestRef, ServerRecord, Settings, ShardRecord, Tool};
use crate::report::progress::{self, Mode};
use crate::report::{JobReport, ReportStatus, ReportWriter, RunReport, Totals, changes, html};
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
    /// Stop before anything runs unless every server is up and has everything every job
    /// needs (`run --all-or-nothing`; `rerun`). Otherwise each job goes to the servers that
    /// can take it (see [`route`]).
    pub all_or_nothing: bool,
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
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent yes/no options of a run, each set from its own flag"
)]
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
    /// Today's preflight: every server must take every job, or nothing runs.
    pub all_or_nothing: bool,
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
        all_or_nothing: options.all_or_nothing,
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
    /// Each job's change mark, in the chapter's job order (moved into the report's entries).
    changes: Vec<Arc<crate::report::JobChange>>,
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
        // Also what each job's previous image is, for its change mark (new, unchanged, changed).
        let mut skipped = Vec::new();
        let first_new = to_run.len();
        let verified = ledger::verified_images(&dirs.root, &records);
        let changes = changes::job_changes(
            &run.jobs,
            &ledger::latest_images(&verified, &records),
            &dirs.reports,
            &options.out_root,
        );
        if options.force {
            to_run.extend(run.jobs.iter().cloned());
        } else {
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
        opened.push(Opened {
            dirs,
            skipped,
            changes,
        });
    }

    let routes = if to_run.is_empty() {
        Routes::every_server(&servers, Vec::new())
    } else if options.all_or_nothing {
        let infos = preflight::check(&servers, &to_run)
            .await
            .map_err(RunError::Preflight)?;
        Routes::every_server(&servers, infos)
    } else {
        route(&servers, &to_run)
            .await
            .map_err(RunError::Preflight)?
    };
    let Routes {
        infos: server_infos,
        catalogues,
        routings,
        unroutable,
    } = routes;
    let mut unroutable_outcomes = Vec::new();
    if !unroutable.is_empty() {
        to_run.retain(|job| match unroutable.get(&job.key) {
            Some(why) => {
                unroutable_outcomes.push(unroutable_outcome(job, why));
                false
            }
            None => true,
        });
    }

    let mut writers = Vec::with_capacity(chapters.len());
    let mut total = 0;
    for (run, chapter) in chapters.iter().zip(&mut opened) {
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
            jobs: run
                .jobs
                .iter()
                .zip(std::mem::take(&mut chapter.changes))
                .map(|(job, change)| JobReport {
                    change: Some(change),
                    ..JobReport::pending(job)
                })
                .collect(),
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
    for (server, routing) in routings.into_iter().enumerate() {
        if let Some(routing) = routing {
            let _ = events_tx.send(Event::Routing {
                server,
                routing: Box::new(routing),
            });
        }
    }
    for outcome in unroutable_outcomes {
        let _ = events_tx.send(Event::Finished(Box::new(outcome)));
    }
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
        let servers = servers.into_iter().zip(catalogues).collect();
        let engine =
            Engine::start_routed(options.engine.clone(), servers, to_run, ctx.clone(), false);
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

/// The servers as the run starts with them: what the report says of each, what the engine
/// routes by, which jobs each can take, and the jobs no server that is up can take (key ->
/// the error).
struct Routes {
    infos: Vec<ServerInfo>,
    catalogues: Vec<Catalogue>,
    routings: Vec<Option<ServerRouting>>,
    unroutable: HashMap<String, String>,
}

impl Routes {
    /// Every server takes every job (nothing to run, or the all-or-nothing preflight passed).
    fn every_server(servers: &[ComfyClient], mut infos: Vec<ServerInfo>) -> Routes {
        if infos.len() != servers.len() {
            infos = servers
                .iter()
                .map(|s| ServerInfo {
                    url: s.url().to_owned(),
                    comfyui_version: None,
                })
                .collect();
        }
        Routes {
            infos,
            catalogues: servers.iter().map(|_| Catalogue::Any).collect(),
            routings: servers.iter().map(|_| None).collect(),
            unroutable: HashMap::new(),
        }
    }
}

/// Ask every server what it has; a job goes to the servers that have all it needs. A server
/// that cannot be reached is skipped while another is up (it is tried again during the run);
/// jobs no server that is up can take fail, the rest run. Stops before anything runs (a
/// preflight failure) when no server is up, or no job can run anywhere.
async fn route(servers: &[ComfyClient], jobs: &[Arc<Job>]) -> Result<Routes, Vec<PreflightError>> {
    let surveys = preflight::survey(servers, jobs).await;
    if !surveys.iter().any(|s| matches!(s, Survey::Up { .. })) {
        return Err(surveys
            .into_iter()
            .filter_map(|s| match s {
                Survey::Down { error, .. } => Some(error),
                Survey::Up { .. } => None,
            })
            .collect());
    }
    let mut routes = Routes {
        infos: Vec::new(),
        catalogues: Vec::new(),
        routings: Vec::new(),
        unroutable: HashMap::new(),
    };
    // Per job: why each server that is up cannot take it (none: some server can).
    let mut refusals: HashMap<&str, Vec<String>> = HashMap::new();
    let mut can_run = vec![false; jobs.len()];
    for survey in &surveys {
        routes.infos.push(survey.info().clone());
        match survey {
            Survey::Up { info, catalogue } => {
                let verdicts: Vec<Option<String>> = jobs
                    .iter()
                    .map(|job| preflight::refusal(&info.url, catalogue, job))
                    .collect();
                for ((n, job), why) in jobs.iter().enumerate().zip(&verdicts) {
                    match why {
                        None => can_run[n] = true,
                        Some(why) => refusals.entry(&job.key).or_default().push(why.clone()),
                    }
                }
                routes.routings.push(Some(preflight::grouped(
                    RouteState::Up,
                    jobs.iter().map(|job| job.key.as_str()).zip(verdicts),
                )));
                routes.catalogues.push(Catalogue::Known(catalogue.clone()));
            }
            Survey::Down { reason, .. } => {
                routes.routings.push(Some(ServerRouting {
                    state: RouteState::Down,
                    checked: 0,
                    cannot_take: Vec::new(),
                    reason: Some(reason.clone()),
                }));
                routes.catalogues.push(Catalogue::Unknown);
            }
        }
    }
    if !can_run.contains(&true) {
        // Nothing can run anywhere: the whole preflight, as the all-or-nothing one says it.
        return Err(surveys
            .iter()
            .flat_map(|survey| match survey {
                Survey::Up { info, catalogue } => preflight::check_jobs(&info.url, catalogue, jobs),
                Survey::Down { error, .. } => vec![error.clone()],
            })
            .collect());
    }
    for (n, job) in jobs.iter().enumerate() {
        if !can_run[n] {
            let why = refusals.remove(job.key.as_str()).unwrap_or_default();
            routes
                .unroutable
                .insert(job.key.clone(), unroutable_message(&why));
        }
    }
    Ok(routes)
}

fn unroutable_outcome(job: &Job, why: &str) -> JobOutcome {
    JobOutcome {
        key: job.key.clone(),
        status: JobStatus::Failed,
        server: None,
        prompt_id: None,
        attempts: 0,
        error: Some(JobError::new(ErrorKind::Unroutable, why)),
        images: Vec::new(),
        timings: Timings::default(),
    }
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
