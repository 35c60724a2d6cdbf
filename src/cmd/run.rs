//! `plasma-batch run`: validate, choose servers, preflight, render, report.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cli::RunArgs;
use crate::cmd::{CmdError, CmdResult, UserError};
use crate::comfy::{ComfyClient, http_client};
use crate::engine::EngineConfig;
use crate::exit_codes;
use crate::output::{ChapterDirs, remove_own_temp_files};
use crate::plan::{Job, load_plan};
use crate::report::progress::Mode;
use crate::runner::{self, RunOptions, RunSummary};
use crate::sim::{Sim, SimConfig};

/// Environment variable naming the server(s), comma-separated; beaten by `--server`.
pub const SERVER_ENV: &str = "PLASMA_COMFY_URL";
/// Where ComfyUI listens by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8188";

pub async fn run(args: RunArgs) -> CmdResult {
    let plan = load_plan(&args.manifest).map_err(|diagnostics| CmdError {
        exit_code: exit_codes::INVALID_MANIFEST,
        diagnostics,
    })?;
    let jobs = select_jobs(plan.jobs, &args.only)?;
    let timeout = args.timeout.unwrap_or(plan.comfy.timeout_secs);
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(CmdError::new(
            exit_codes::USAGE,
            UserError::new(
                format!("--timeout must be a positive number of seconds, not {timeout}"),
                None,
            ),
        ));
    }
    let outage_window = outage_window(args.outage_window, plan.comfy.outage_window_secs)?;
    // A depth set on the command line or in the manifest is fixed; otherwise it follows
    // the servers' pace (see `EngineConfig::in_flight_max`).
    let depth = args.in_flight.or(plan.comfy.in_flight);
    if depth == Some(0) {
        return Err(CmdError::new(
            exit_codes::USAGE,
            UserError::new("--in-flight must be at least 1", None),
        ));
    }

    let (sim, clients) = connect(args.sim, &args.servers, &plan.comfy.servers).await?;
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let dirs = ChapterDirs::new(&args.out, plan.chapter);
    tokio::spawn(watch_signals(cancel_tx, dirs.temp_dirs()));

    let options = RunOptions {
        out_root: args.out.clone(),
        chapter: plan.chapter,
        title: plan.title.clone(),
        manifest_path: plan.manifest_path.display().to_string(),
        manifest_sha256: plan.manifest_sha256.clone(),
        force: args.force,
        only: args.only.clone(),
        simulator: args.sim,
        engine: EngineConfig {
            timeout: Duration::from_secs_f64(timeout),
            retry_failed: args.retry_failed || plan.comfy.retry_failed,
            outage_window,
            ..EngineConfig::default()
        }
        .with_fixed_depth(depth),
        mode: if args.quiet || args.json {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Live
        } else {
            Mode::Plain
        },
    };
    let result = runner::run_jobs(options, clients, jobs, cancel_rx).await;
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    let summary = result?;
    print_summary(&summary, args.json);
    Ok(summary.exit_code())
}

/// `--outage-window`, else `[comfy] outage_window`, else the default.
fn outage_window(flag: Option<f64>, manifest: Option<f64>) -> Result<Duration, CmdError> {
    match flag.or(manifest) {
        None => Ok(crate::engine::DEFAULT_OUTAGE_WINDOW),
        Some(secs) if secs > 0.0 && Duration::try_from_secs_f64(secs).is_ok() => {
            Ok(Duration::from_secs_f64(secs))
        }
        Some(secs) => Err(CmdError::new(
            exit_codes::USAGE,
            UserError::new(
                format!("--outage-window must be a positive number of seconds, not {secs}"),
                Some(
                    "e.g. --outage-window 600 waits up to ten minutes for a server that went away"
                        .to_owned(),
                ),
            ),
        )),
    }
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
            CmdError::new(
                exit_codes::IO_ERROR,
                UserError::new(format!("failed to start the built-in simulator: {e}"), None),
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
                clients.push(client)
            }
            Err(e) => problems.push(Box::new(UserError::new(
                e.to_string(),
                Some("a server URL looks like http://127.0.0.1:8188 or https://user:password@host/prefix".to_owned()),
            )) as crate::cmd::Diagnostic),
        }
    }
    if problems.is_empty() {
        Ok(clients)
    } else {
        Err(CmdError {
            exit_code: exit_codes::PREFLIGHT_FAILED,
            diagnostics: problems,
        })
    }
}

/// Keep the jobs whose key starts with one of the selectors; every selector must match.
pub fn select_jobs(jobs: Vec<Arc<Job>>, only: &[String]) -> Result<Vec<Arc<Job>>, CmdError> {
    if only.is_empty() {
        return Ok(jobs);
    }
    let unmatched: Vec<&String> = only
        .iter()
        .filter(|selector| {
            !jobs
                .iter()
                .any(|job| job.key.starts_with(selector.as_str()))
        })
        .collect();
    if !unmatched.is_empty() {
        let examples: Vec<&str> = jobs.iter().take(4).map(|j| j.key.as_str()).collect();
        return Err(CmdError::new(
            exit_codes::USAGE,
            UserError::new(
                format!(
                    "--only {} matches no job of this manifest",
                    unmatched
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some(format!(
                    "job keys look like {} (`plasma-batch plan MANIFEST` lists them all)",
                    examples.join(", ")
                )),
            ),
        ));
    }
    Ok(jobs
        .into_iter()
        .filter(|job| {
            only.iter()
                .any(|selector| job.key.starts_with(selector.as_str()))
        })
        .collect())
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
            _ = term => {}
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
            std::process::exit(exit_codes::INTERRUPTED);
        }
    }
}

fn print_summary(summary: &RunSummary, json: bool) {
    let t = &summary.totals;
    if json {
        let value = serde_json::json!({
            "run_id": summary.run_id,
            "report": summary.report_path,
            "contact_sheet": summary.contact_sheet_path,
            "totals": t,
            "cancelled": summary.cancelled,
            "exit_code": summary.exit_code(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("summary serializes")
        );
        return;
    }
    eprintln!(
        "{} jobs: {} succeeded, {} skipped, {} failed, {} timed out, {} cancelled{}",
        t.jobs,
        t.succeeded,
        t.skipped,
        t.failed,
        t.timed_out,
        t.cancelled,
        if summary.cancelled {
            " (interrupted)"
        } else {
            ""
        }
    );
    eprintln!("report: {}", summary.report_path.display());
    eprintln!("contact sheet: {}", summary.contact_sheet_path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outage_window_flag_beats_the_manifest_which_beats_the_default() {
        let secs = |flag, manifest| outage_window(flag, manifest).ok().map(|d| d.as_secs_f64());
        assert_eq!(secs(Some(2.0), Some(600.0)), Some(2.0));
        assert_eq!(secs(None, Some(30.0)), Some(30.0));
        assert_eq!(
            secs(None, None),
            Some(crate::engine::DEFAULT_OUTAGE_WINDOW.as_secs_f64())
        );
        assert_eq!(secs(Some(0.0), Some(30.0)), None);
        assert_eq!(secs(Some(f64::NAN), None), None);
    }
}
