//! `plasma-batch run`: validate, choose servers, preflight, render, report.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cli::RunArgs;
use crate::cmd::waves::Waves;
use crate::cmd::{CmdError, CmdResult, Failure, Outcome, UserError};
use crate::comfy::{ComfyClient, http_client};
use crate::engine::{Choices, EngineConfig, EngineSettings};
use crate::output::{ChapterDirs, new_temp_file, remove_own_temp_files};
use crate::params;
use crate::plan::{ComfySettings, Job, Plan, load_plan_waiting};
use crate::report::Totals;
use crate::report::progress::Mode;
use crate::runner::{self, BookOptions, BookSummary, ChapterRun, RunSummary};
use crate::shard::Shard;
use crate::sim::{Sim, SimConfig};

/// Environment variable naming the server(s), comma-separated; beaten by `--server`.
pub const SERVER_ENV: &str = "PLASMA_COMFY_URL";
/// Where ComfyUI listens by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8188";

#[allow(
    clippy::too_many_lines,
    reason = "a command's steps in order, top to bottom; split, they would pass the same state around"
)]
pub async fn run(args: RunArgs) -> CmdResult {
    // Every manifest is read and checked before anything else happens.
    let paths = manifest_paths(&args.manifests)?;
    let is_book = paths.len() > 1 || args.manifests.iter().any(|p| p.is_dir());
    let plans = load_plans(&paths, &args.out)?;
    let shard = args
        .shard
        .as_deref()
        .map(|text| {
            Shard::parse(text, |name| std::env::var(name).ok()).map_err(|message| {
                CmdError::plain(
                    Failure::Usage,
                    format!("--shard {message}"),
                    Some(
                        "e.g. --shard 0/4 in the first of four processes, --shard 3/4 in the last",
                    ),
                )
            })
        })
        .transpose()?;
    let comfy = book_settings(&plans, &args)?;
    let selected = select_jobs(
        plans.iter().flat_map(|p| p.jobs.iter().cloned()).collect(),
        &args.only,
    )?;
    // Flags are checked here; the manifest's values were checked where they were read.
    let timeout = args.timeout.map(check_timeout).transpose()?;
    let outage_window = outage_window(args.outage_window)?;
    // A depth set on the command line or in the manifest is fixed; otherwise it follows
    // the servers' pace (see `EngineConfig::in_flight_max`).
    let depth = args.in_flight.or(comfy.in_flight);
    if depth.is_some_and(|n| !params::IN_FLIGHT.contains(&(n as i128))) {
        return Err(CmdError::plain(
            Failure::Usage,
            format!("--in-flight must be 1 to {}", params::IN_FLIGHT.range.end()),
            None,
        ));
    }
    // Pages that take an earlier page this run renders wait for it (see `waves`).
    let mut waves = Waves::default();
    let mut wave = waves.next(&plans, &selected, &args.out, args.force);
    let chapters = chapter_runs(&plans, &wave.jobs, args.only.is_empty(), shard);
    // Every folder the run writes, checked before any server is asked.
    let mut temp_dirs = Vec::new();
    for chapter in &chapters {
        temp_dirs.extend(check_output(&args.out, chapter.chapter)?.temp_dirs());
    }
    crate::cmd::ci::check_paths(&args.route_ci)?;

    let (sim, clients) = connect(args.sim, &args.servers, &comfy.servers).await?;
    let (cancel_tx, cancel_rx) = watch::channel(false);
    tokio::spawn(watch_signals(cancel_tx, temp_dirs));

    let options = BookOptions {
        all_or_nothing: args.route_ci.all_or_nothing,
        out_root: args.out.clone(),
        force: args.force,
        only: args.only.clone(),
        simulator: args.sim,
        engine: EngineConfig::from_settings(&EngineSettings {
            flags: Choices {
                timeout,
                in_flight: args.in_flight,
                retry_failed: args.retry_failed.then_some(true),
                outage_window,
            },
            manifest: Choices {
                timeout: params::timeout(
                    comfy.timeout_secs.unwrap_or(params::DEFAULT_TIMEOUT_SECS),
                ),
                in_flight: comfy.in_flight,
                retry_failed: Some(comfy.retry_failed),
                outage_window: comfy.outage_window_secs.map(Duration::from_secs_f64),
            },
        }),
        mode: if args.quiet || args.json {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Live
        } else {
            Mode::Plain
        },
        shard,
        summary: is_book,
    };
    let mut books = Vec::new();
    let mut chapters = chapters;
    let result = loop {
        let book = match runner::run_book(
            options.clone(),
            chapters,
            clients.clone(),
            cancel_rx.clone(),
        )
        .await
        {
            Ok(book) => book,
            Err(err) => break Err(CmdError::from(err)),
        };
        waves.finished(&book.chapters);
        let stop = book.cancelled || !wave.more;
        books.push(book);
        if stop {
            break Ok(());
        }
        // The waiting pages' inputs now exist: plan again, so that they resolve to them.
        let replanned = load_plans(&paths, &args.out).and_then(|plans| {
            let jobs = plans.iter().flat_map(|p| p.jobs.iter().cloned()).collect();
            Ok((select_jobs(jobs, &args.only)?, plans))
        });
        let (selected, plans) = match replanned {
            Ok(found) => found,
            Err(err) => break Err(err),
        };
        wave = waves.next(&plans, &selected, &args.out, args.force);
        if wave.jobs.is_empty() {
            break Ok(());
        }
        chapters = chapter_runs(&plans, &wave.jobs, false, shard);
    };
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    result?;
    for line in &waves.not_run {
        eprintln!("error: {line}");
    }
    let mut outcome = Outcome::Done;
    for (n, book) in books.iter().enumerate() {
        let t = &book.totals;
        let ended = Outcome::ended(
            book.cancelled,
            t.failed + t.timed_out + t.cancelled > 0 || !waves.not_run.is_empty(),
        );
        if ended != Outcome::Done {
            outcome = ended;
        }
        // With --json, one document after the last wave, naming the earlier waves.
        let last = n + 1 == books.len();
        match (is_book, args.json) {
            (true, false) => print_book(book, shard, ended, false, &[]),
            (false, false) => print_summary(&book.chapters[0], shard, ended, false, &[]),
            (_, true) if !last => {}
            (true, true) => print_book(book, shard, outcome, true, &books[..n]),
            (false, true) => {
                let earlier: Vec<&RunSummary> = books[..n].iter().map(|b| &b.chapters[0]).collect();
                print_summary(&book.chapters[0], shard, outcome, true, &earlier);
            }
        }
    }
    let chapters: Vec<&RunSummary> = books.iter().flat_map(|b| &b.chapters).collect();
    crate::cmd::ci::write(&args.route_ci, &chapters)?;
    Ok(outcome)
}

/// The manifest files named: each file as given, and each folder's `*.toml` files (directly
/// inside, by name). A folder without one is an input error.
fn manifest_paths(given: &[PathBuf]) -> Result<Vec<PathBuf>, CmdError> {
    let mut paths = Vec::new();
    for path in given {
        if !path.is_dir() {
            paths.push(path.clone());
            continue;
        }
        let entries = std::fs::read_dir(path).map_err(|e| {
            CmdError::plain(
                Failure::InvalidInput,
                format!(
                    "failed to read the manifest folder `{}`: {e}",
                    path.display()
                ),
                None,
            )
        })?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
            .collect();
        if found.is_empty() {
            return Err(CmdError::plain(
                Failure::InvalidInput,
                format!("the folder `{}` holds no `*.toml` manifest", path.display()),
                Some("name manifest files, or a folder that holds chapter manifests"),
            ));
        }
        found.sort();
        paths.extend(found);
    }
    Ok(paths)
}

/// Every manifest planned; the problems of all of them at once, and two manifests of one
/// chapter (their images, ledger and reports would be the same files) named together.
fn load_plans(paths: &[PathBuf], out_root: &std::path::Path) -> Result<Vec<Plan>, CmdError> {
    let mut plans: Vec<Plan> = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        if plans.iter().any(|p| p.manifest_path == *path) {
            continue;
        }
        match load_plan_waiting(path, &crate::ledger::LedgerImages::new(out_root)) {
            Ok(plan) => plans.push(plan),
            Err(mut found) => problems.append(&mut found),
        }
    }
    if !problems.is_empty() {
        return Err(problems.into());
    }
    let mut clashes = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        if let Some(first) = plans[..i].iter().find(|p| p.chapter == plan.chapter) {
            clashes.push(UserError::new(
                format!(
                    "`{}` and `{}` are both chapter {}",
                    first.manifest_path.display(),
                    plan.manifest_path.display(),
                    plan.chapter
                ),
                Some("each chapter of a book has its own number ([chapter] number): renumber one, or run them separately".to_owned()),
            ));
        }
    }
    if clashes.is_empty() {
        Ok(plans)
    } else {
        Err(CmdError::all(Failure::InvalidInput, clashes))
    }
}

/// The `[comfy]` settings of a book: its manifests' servers together, and a timeout, depth,
/// retry and outage window for all of them (one engine runs them all). A value one manifest
/// sets and the others leave out is the book's; where two manifests set different values the
/// flag decides, and without one it is an input error naming the manifests.
fn book_settings(plans: &[Plan], args: &RunArgs) -> Result<ComfySettings, CmdError> {
    let mut settings = plans[0].comfy.clone();
    let mut problems = Vec::new();
    let mut clash = |key: &str, flag: &str, set_by: &Plan, plan: &Plan| {
        problems.push(UserError::new(
            format!(
                "`{}` and `{}` set different [comfy] {key}; one run of a book uses one",
                set_by.manifest_path.display(),
                plan.manifest_path.display()
            ),
            Some(format!(
                "make them agree, or give {flag} on the command line"
            )),
        ));
    };
    // Which manifest gave each setting its value so far.
    let (mut timeout_by, mut in_flight_by, mut outage_by) = (&plans[0], &plans[0], &plans[0]);
    for plan in &plans[1..] {
        let c = &plan.comfy;
        for url in &c.servers {
            if !settings.servers.contains(url) {
                settings.servers.push(url.clone());
            }
        }
        match (settings.timeout_secs, c.timeout_secs) {
            (None, Some(_)) => (settings.timeout_secs, timeout_by) = (c.timeout_secs, plan),
            (Some(a), Some(b)) if a.to_bits() != b.to_bits() && args.timeout.is_none() => {
                clash("timeout", "--timeout", timeout_by, plan);
            }
            _ => {}
        }
        match (settings.in_flight, c.in_flight) {
            (None, Some(_)) => (settings.in_flight, in_flight_by) = (c.in_flight, plan),
            (Some(a), Some(b)) if a != b && args.in_flight.is_none() => {
                clash("in_flight", "--in-flight", in_flight_by, plan);
            }
            _ => {}
        }
        // Retrying deterministic failures once is asked for, never forbidden: one asks for all.
        settings.retry_failed |= c.retry_failed;
        match (settings.outage_window_secs, c.outage_window_secs) {
            (None, Some(_)) => {
                (settings.outage_window_secs, outage_by) = (c.outage_window_secs, plan);
            }
            (Some(a), Some(b)) if a.to_bits() != b.to_bits() && args.outage_window.is_none() => {
                clash("outage_window", "--outage-window", outage_by, plan);
            }
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(CmdError::all(Failure::InvalidInput, problems))
    }
}

/// Each chapter's part of the run: the selected jobs of it (of this shard, with one). Without
/// `--only` every chapter runs, even one whose jobs are all another shard's (its report
/// says which jobs the chapter planned, for `report merge`).
fn chapter_runs(
    plans: &[Plan],
    selected: &[Arc<Job>],
    all_chapters: bool,
    shard: Option<Shard>,
) -> Vec<ChapterRun> {
    plans
        .iter()
        .filter_map(|plan| {
            let planned: Vec<Arc<Job>> = selected
                .iter()
                .filter(|j| j.chapter == plan.chapter)
                .cloned()
                .collect();
            if planned.is_empty() && !all_chapters {
                return None;
            }
            let jobs = match shard {
                Some(shard) => planned
                    .iter()
                    .filter(|j| shard.selects(&j.key))
                    .cloned()
                    .collect(),
                None => planned.clone(),
            };
            Some(ChapterRun {
                chapter: plan.chapter,
                title: plan.title.clone(),
                manifest_path: plan.manifest_path.display().to_string(),
                manifest_sha256: plan.manifest_sha256.clone(),
                jobs,
                planned: if shard.is_some() {
                    planned.iter().map(|j| j.key.clone()).collect()
                } else {
                    Vec::new()
                },
            })
        })
        .collect()
}

/// `--outage-window`, if given and valid (the manifest's value is checked where it is read;
/// which one wins is `EngineConfig::from_settings`'s).
fn outage_window(flag: Option<f64>) -> Result<Option<Duration>, CmdError> {
    match flag {
        None => Ok(None),
        Some(secs) if secs > 0.0 && Duration::try_from_secs_f64(secs).is_ok() => {
            Ok(Some(Duration::from_secs_f64(secs)))
        }
        Some(secs) => Err(CmdError::plain(
            Failure::Usage,
            format!("--outage-window must be a positive number of seconds, not {secs}"),
            Some("e.g. --outage-window 600 waits up to ten minutes for a server that went away"),
        )),
    }
}

/// A per-job timeout of `secs` (`--timeout`), or a usage error.
pub fn check_timeout(secs: f64) -> Result<Duration, CmdError> {
    params::timeout(secs).ok_or_else(|| {
        CmdError::plain(
            Failure::Usage,
            format!(
                "--timeout must be a positive number of seconds up to {} (a day), not {secs}",
                params::MAX_TIMEOUT_SECS
            ),
            None,
        )
    })
}

/// The servers to run on: the built-in simulator (started here, shut down by the caller),
/// or the resolved server URLs.
pub async fn connect(
    sim: bool,
    flags: &[String],
    fallback: &[String],
) -> Result<(Option<Sim>, Vec<ComfyClient>), CmdError> {
    let sim = if sim {
        Some(Sim::start(SimConfig::default()).await.map_err(|e| {
            CmdError::plain(
                Failure::Io,
                format!("failed to start the built-in simulator: {e}"),
                None,
            )
        })?)
    } else {
        None
    };
    let urls = match &sim {
        Some(sim) => vec![sim.url()],
        None => resolve_servers(flags, fallback),
    };
    Ok((sim, build_clients(&urls)?))
}

/// `--server` flags, else `PLASMA_COMFY_URL`, else the manifest, else the local default.
pub fn resolve_servers(flags: &[String], manifest: &[String]) -> Vec<String> {
    if !flags.is_empty() {
        return flags.to_vec();
    }
    if let Ok(env) = std::env::var(SERVER_ENV) {
        let from_env: Vec<String> = env
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if !from_env.is_empty() {
            return from_env;
        }
    }
    if !manifest.is_empty() {
        return manifest.to_vec();
    }
    vec![DEFAULT_SERVER.to_owned()]
}

/// One client per URL; a malformed URL is a preflight failure naming it.
pub fn build_clients(urls: &[String]) -> Result<Vec<ComfyClient>, CmdError> {
    let http = http_client();
    let mut clients = Vec::new();
    let mut problems = Vec::new();
    for url in urls {
        match ComfyClient::new(url, http.clone()) {
            Ok(client) => {
                if clients.iter().any(|c: &ComfyClient| c.url() == client.url()) {
                    continue;
                }
                clients.push(client);
            }
            Err(e) => problems.push(UserError::new(
                e.to_string(),
                Some("a server URL looks like http://127.0.0.1:8188 or https://user:password@host/prefix".to_owned()),
            )),
        }
    }
    if problems.is_empty() {
        Ok(clients)
    } else {
        Err(CmdError::all(Failure::Preflight, problems))
    }
}

/// Keep the jobs `--only` selects (see [`select_by_key`]).
pub fn select_jobs(jobs: Vec<Arc<Job>>, only: &[String]) -> Result<Vec<Arc<Job>>, CmdError> {
    select_by_key(
        jobs,
        |job| &job.key,
        only,
        "--only",
        "plasma-batch plan MANIFEST",
    )
}

/// Keep the items whose key a selector names: a chapter (`ch01`), a page (`ch01_p003`), one
/// job (`ch01_p003_s2`), or some axis values of a sweep point (`ch01_p003_sampler=euler`), as
/// [`params::key_selects`] matches them.
/// No selector keeps everything. A selector that is empty, not of that form, or matches no
/// key is a usage error (exit 2) naming it and the keys closest to it: a run that silently
/// selects nothing (or everything) is never what was meant.
pub fn select_by_key<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    selectors: &[String],
    flag: &str,
    listing: &str,
) -> Result<Vec<T>, CmdError> {
    const FORM: &str = "a selector is a chapter (ch01), a page (ch01_p003), a sweep point \
                        (ch01_p003_cfg=7.0) or a job (ch01_p003_s2)";
    if selectors.is_empty() {
        return Ok(items);
    }
    let usage =
        |message: String, help: String| Err(CmdError::plain(Failure::Usage, message, Some(&help)));
    for selector in selectors {
        if selector.is_empty() {
            return usage(format!("{flag} \"\" is empty"), FORM.to_owned());
        }
        if !params::is_key_or_part(selector) {
            return usage(
                format!("{flag} `{selector}` is not a job key or a chapter or page part of one"),
                FORM.to_owned(),
            );
        }
    }
    let selects = params::key_selects;
    let unmatched: Vec<&str> = selectors
        .iter()
        .map(String::as_str)
        .filter(|selector| !items.iter().any(|item| selects(selector, key(item))))
        .collect();
    if let Some(first) = unmatched.first() {
        let keys: Vec<&str> = items.iter().map(&key).collect();
        let chapter = first.split('_').next().unwrap_or_default();
        let other_chapter = match keys.first() {
            Some(k) if !selects(chapter, k) => {
                format!(
                    "these jobs are chapter {}; ",
                    k.split('_').next().unwrap_or_default()
                )
            }
            _ => String::new(),
        };
        return usage(
            format!("{flag} {} matches no job", unmatched.join(", ")),
            format!(
                "{other_chapter}the closest keys are {} (`{listing}` lists them all)",
                closest_keys(first, &keys).join(", ")
            ),
        );
    }
    Ok(items
        .into_iter()
        .filter(|item| selectors.iter().any(|s| selects(s, key(item))))
        .collect())
}

/// The (at most four) keys fewest edits away from `selector`, in key order.
fn closest_keys<'k>(selector: &str, keys: &[&'k str]) -> Vec<&'k str> {
    let mut scored: Vec<(usize, usize)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (strsim::levenshtein(selector, k), i))
        .collect();
    scored.sort_unstable();
    let mut best: Vec<usize> = scored.iter().take(4).map(|(_, i)| *i).collect();
    best.sort_unstable();
    best.into_iter().map(|i| keys[i]).collect()
}

/// Before any server is asked, make sure the run can write everything it will: the chapter's
/// folders exist (made now) and files can be created in each (a probe file, removed at once),
/// and the ledger and thumbnail files, if there, are files. Permissions alone do not say (as
/// root they are not enforced; a read-only mount or an immutable folder still refuses), so
/// this creates a file. A dangling symbolic link on the way is named with its target.
pub fn check_output(out: &Path, chapter: u16) -> Result<ChapterDirs, CmdError> {
    let dirs = ChapterDirs::new(out, chapter);
    for folder in [&dirs.images, &dirs.reports] {
        for path in folder.ancestors().filter(|p| !p.as_os_str().is_empty()) {
            let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink());
            if let (true, Err(err)) = (is_link, std::fs::metadata(path)) {
                let target = std::fs::read_link(path)
                    .map_or_else(|_| "?".to_owned(), |t| t.display().to_string());
                let what = if err.kind() == std::io::ErrorKind::NotFound {
                    "which does not exist".to_owned()
                } else {
                    format!("which cannot be followed ({err})")
                };
                return Err(CmdError::plain(
                    Failure::Io,
                    format!(
                        "the output folder `{}` is a symbolic link to `{target}`, {what}",
                        path.display()
                    ),
                    Some(&format!(
                        "create `{target}` (or fix the link), or choose another --out"
                    )),
                ));
            }
        }
    }
    dirs.create()?;
    for folder in [&dirs.root, &dirs.images, &dirs.reports] {
        // Dropped at once: the probe is removed (and named like our temp files, so a kill
        // right now leaves nothing the next run does not clean up).
        drop(new_temp_file(folder)?);
    }
    for file in [dirs.ledger(), dirs.thumbs()] {
        if std::fs::metadata(&file).is_ok_and(|m| !m.is_file()) {
            return Err(CmdError::plain(
                Failure::Io,
                format!("`{}` is not a regular file", file.display()),
                Some("the run writes this file: move what is there away"),
            ));
        }
    }
    Ok(dirs)
}

/// First Ctrl-C or SIGTERM: stop cleanly. Second: exit at once (the ledger and the report
/// are written atomically, so they stay consistent); our temp files in `temp_dirs` (a
/// download or report write cut short) are removed first, since `exit` runs no destructors.
pub async fn watch_signals(cancel: watch::Sender<bool>, temp_dirs: Vec<PathBuf>) {
    #[cfg(unix)]
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut seen = 0;
    loop {
        #[cfg(unix)]
        let term = async {
            match terminate.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            result = tokio::signal::ctrl_c() => if result.is_err() { return },
            () = term => {}
        }
        seen += 1;
        if seen == 1 {
            eprintln!(
                "stopping: removing queued prompts and interrupting running ones; press Ctrl-C again to exit at once"
            );
            let _ = cancel.send(true);
        } else {
            let _no_new_temp_files = remove_own_temp_files(&temp_dirs);
            eprintln!("exiting at once; the ledger and the last written report are consistent");
            std::process::exit(Outcome::Interrupted.exit_code());
        }
    }
}

/// `earlier`: the summaries of the waves before this one (pages waiting for an input page),
/// listed under `earlier_waves` in the JSON summary.
fn print_summary(
    summary: &RunSummary,
    shard: Option<Shard>,
    outcome: Outcome,
    json: bool,
    earlier: &[&RunSummary],
) {
    let t = &summary.totals;
    if json {
        let mut value = serde_json::json!({
            "run_id": summary.run_id,
            "report": summary.report_path,
            "contact_sheet": summary.contact_sheet_path,
            "totals": t,
            "cancelled": summary.cancelled,
            "exit_code": outcome.exit_code(),
        });
        if let Some(shard) = shard {
            value["shard"] = shard.to_string().into();
        }
        if !earlier.is_empty() {
            value["earlier_waves"] = earlier
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "run_id": s.run_id,
                        "report": s.report_path,
                        "contact_sheet": s.contact_sheet_path,
                        "totals": s.totals,
                    })
                })
                .collect();
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("summary serializes")
        );
        return;
    }
    eprintln!("{}", totals_line(t, summary.cancelled, shard));
    eprintln!("report: {}", summary.report_path.display());
    eprintln!("contact sheet: {}", summary.contact_sheet_path.display());
}

/// A book run: a line per chapter, the book's totals and where its summary is.
/// `earlier`: the waves before this one (pages waiting for an input page), listed under
/// `earlier_waves` in the JSON summary.
fn print_book(
    book: &BookSummary,
    shard: Option<Shard>,
    outcome: Outcome,
    json: bool,
    earlier: &[BookSummary],
) {
    if json {
        let mut value = serde_json::json!({
            "run_id": book.run_id,
            "summary": book.summary_path,
            "summary_html": book.summary_html_path,
            "shard": shard.map(|s| s.to_string()),
            "chapters": book.chapters.iter().map(|c| serde_json::json!({
                "chapter": c.chapter,
                "report": c.report_path,
                "contact_sheet": c.contact_sheet_path,
                "totals": c.totals,
            })).collect::<Vec<_>>(),
            "totals": book.totals,
            "cancelled": book.cancelled,
            "exit_code": outcome.exit_code(),
        });
        if !earlier.is_empty() {
            value["earlier_waves"] = earlier
                .iter()
                .map(|b| {
                    serde_json::json!({
                        "run_id": b.run_id,
                        "summary": b.summary_path,
                        "reports": b.chapters.iter().map(|c| &c.report_path).collect::<Vec<_>>(),
                        "totals": b.totals,
                    })
                })
                .collect();
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("summary serializes")
        );
        return;
    }
    for chapter in &book.chapters {
        let t = &chapter.totals;
        eprintln!(
            "{}: {} jobs, {} succeeded, {} skipped, {} failed, {} timed out, {} cancelled",
            chapter.report_path.display(),
            t.jobs,
            t.succeeded,
            t.skipped,
            t.failed,
            t.timed_out,
            t.cancelled
        );
    }
    eprintln!("{}", totals_line(&book.totals, book.cancelled, shard));
    if let Some(path) = &book.summary_path {
        eprintln!("book summary: {}", path.display());
    }
    if let Some(path) = &book.summary_html_path {
        eprintln!("book page: {}", path.display());
    }
}

fn totals_line(t: &Totals, cancelled: bool, shard: Option<Shard>) -> String {
    format!(
        "{}{} jobs: {} succeeded, {} skipped, {} failed, {} timed out, {} cancelled{}",
        shard.map(|s| format!("shard {s}: ")).unwrap_or_default(),
        t.jobs,
        t.succeeded,
        t.skipped,
        t.failed,
        t.timed_out,
        t.cancelled,
        if cancelled { " (interrupted)" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outage_window_flag_is_seconds_above_zero() {
        let secs = |flag| outage_window(flag).ok().map(|d| d.map(|d| d.as_secs_f64()));
        assert_eq!(secs(Some(2.0)), Some(Some(2.0)));
        assert_eq!(secs(None), Some(None));
        assert_eq!(secs(Some(0.0)), None);
        assert_eq!(secs(Some(-1.0)), None);
        assert_eq!(secs(Some(f64::NAN)), None);
    }
}
