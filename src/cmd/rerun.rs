//! `plasma-batch rerun REPORT`: submit exactly what a run report recorded (the same filled
//! workflow, so the same seed) again, as new image versions, and say whether each new image
//! is byte-identical to the recorded one. Exits 1 if any job failed or any image differs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use crate::cli::RerunArgs;
use crate::cmd::run::{check_output, connect, select_by_key, watch_signals};
use crate::cmd::{CmdError, CmdResult, Failure, Outcome};
use crate::diagnostic::Problem;
use crate::engine::{Choices, EngineConfig, EngineSettings};
use crate::report::RunReport;
use crate::report::json::JobReport;
use crate::report::progress::Mode;
use crate::runner::{self, RunOptions};

/// Every input image of the selected jobs must still be the file the report recorded (same
/// sha256), or the rerun could not reproduce its images: each that is not is a problem,
/// naming the job, the file and both digests, and nothing is sent.
fn check_inputs(selected: &[&JobReport]) -> Result<(), CmdError> {
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for job in selected {
        for input in &job.inputs {
            if !seen.insert((&input.path, input.sha256)) {
                continue;
            }
            let path = input.path.display();
            let found = match crate::inputs::check_image_file(&input.path) {
                Ok(now) if now.sha256 == input.sha256 => continue,
                Ok(now) => format!("its sha256 is now {}", now.sha256),
                Err(err) => err.to_string(),
            };
            problems.push(
                Problem::bare(
                    "rerun::input_changed",
                    format!(
                        "job {}: input image {path} is not the one the report recorded \
                         (sha256 {}): {found}",
                        job.key, input.sha256
                    ),
                )
                .with_help(
                    "put the recorded file back to reproduce the job, or render the new \
                     content with `plasma-batch run` on the manifest",
                ),
            );
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.into())
    }
}

/// One job's comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    pub key: String,
    pub status: String,
    pub old_sha256: Vec<String>,
    pub new_sha256: Vec<String>,
    pub new_images: Vec<String>,
    pub identical: bool,
}

#[allow(
    clippy::too_many_lines,
    reason = "a command's steps in order, top to bottom; split, they would only pass the same state around"
)]
pub async fn rerun(args: RerunArgs) -> CmdResult {
    let report = RunReport::read(&args.report)?;
    let problems = report.check();
    if !problems.is_empty() {
        let name = args.report.display();
        let problems: Vec<Problem> = problems
            .into_iter()
            .map(|p| {
                Problem::bare(
                    "report::invalid",
                    format!("`{name}` is not a valid run report: {p}"),
                )
                .with_help("rerun only reports written by `plasma-batch run`, unedited")
            })
            .collect();
        return Err(problems.into());
    }
    let selected = select_by_key(
        report.jobs.iter().collect(),
        |job| job.key.as_str(),
        &args.jobs,
        "--job",
        "the report's jobs[].key",
    )?;
    if selected.is_empty() {
        return Err(CmdError::plain(
            Failure::Usage,
            format!("{} has no jobs to rerun", args.report.display()),
            None,
        ));
    }
    // Where the new images go: --out, or the report's own chapter folder; never the
    // `output_root` string inside the report (it may be anything, relative to anywhere).
    let out_root = match &args.out {
        Some(out) => out.clone(),
        None => output_root_of(&args.report, report.chapter)?,
    };
    check_inputs(&selected)?;
    let dirs = check_output(&out_root, report.chapter)?;
    let old: BTreeMap<String, Vec<String>> = selected
        .iter()
        .map(|job| {
            (
                job.key.clone(),
                job.images.iter().map(|i| i.sha256.to_string()).collect(),
            )
        })
        .collect();
    let jobs = selected
        .iter()
        .map(|job| Arc::new(job.to_job(report.chapter)))
        .collect();

    let recorded: Vec<String> = report.servers.iter().map(|s| s.url.clone()).collect();
    let (sim, clients) = connect(args.sim, &args.servers, &recorded).await?;
    let (cancel_tx, cancel_rx) = watch::channel(false);
    tokio::spawn(watch_signals(cancel_tx, dirs.temp_dirs()));
    let options = RunOptions {
        // A rerun reproduces every image it names, each where it can: all or nothing.
        all_or_nothing: true,
        out_root,
        chapter: report.chapter,
        title: report.title.clone(),
        manifest_path: report.manifest.path.clone(),
        manifest_sha256: report.manifest.sha256.clone(),
        force: true,
        only: selected.iter().map(|j| j.key.clone()).collect(),
        simulator: args.sim,
        // What the report recorded of its run stands where a manifest would.
        engine: EngineConfig::from_settings(&EngineSettings {
            flags: Choices::default(),
            manifest: Choices {
                timeout: Some(std::time::Duration::from_secs_f64(
                    report.settings.timeout_secs.max(1.0),
                )),
                in_flight: Some(report.settings.in_flight.max(1)),
                ..Choices::default()
            },
        }),
        mode: if args.json { Mode::Quiet } else { Mode::Plain },
    };
    let result = runner::run_jobs(options, clients, jobs, cancel_rx).await;
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    let summary = result?;
    let comparisons: Vec<Comparison> = summary
        .outcomes
        .iter()
        .map(|outcome| {
            let old_sha256 = old.get(&outcome.key).cloned().unwrap_or_default();
            let new_sha256: Vec<String> = outcome
                .images
                .iter()
                .map(|i| i.sha256.to_string())
                .collect();
            Comparison {
                key: outcome.key.clone(),
                status: outcome.status.as_str().to_owned(),
                identical: !new_sha256.is_empty() && old_sha256 == new_sha256,
                old_sha256,
                new_sha256,
                new_images: outcome.images.iter().map(|i| i.path.clone()).collect(),
            }
        })
        .collect();
    let differing = comparisons.iter().filter(|c| !c.identical).count();
    if args.json {
        let value = serde_json::json!({
            "report": summary.report_path,
            "jobs": comparisons,
            "identical": comparisons.len() - differing,
            "different": differing,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serializes")
        );
    } else {
        for c in &comparisons {
            let verdict = if c.identical {
                "identical"
            } else if c.status == "succeeded" {
                "DIFFERENT"
            } else {
                "FAILED"
            };
            println!("{verdict:>9} {} -> {}", c.key, c.new_images.join(", "));
        }
        println!(
            "{} of {} jobs reproduced byte-identical images; report: {}",
            comparisons.len() - differing,
            comparisons.len(),
            summary.report_path.display()
        );
    }
    Ok(Outcome::ended(summary.cancelled, differing > 0))
}

/// The output root a report lies under: `<out>` of `<out>/ch-XX/reports/<run-id>.json`, where
/// `ch-XX` is the report's chapter. A report anywhere else needs `--out`.
fn output_root_of(report: &Path, chapter: u16) -> Result<PathBuf, CmdError> {
    let absolute = std::path::absolute(report).unwrap_or_else(|_| report.to_owned());
    let reports = absolute.parent();
    let chapter_dir = reports
        .filter(|dir| dir.file_name().is_some_and(|n| n == "reports"))
        .and_then(Path::parent);
    let expected = format!("ch-{chapter:02}");
    match chapter_dir {
        Some(dir) if dir.file_name().is_some_and(|n| n == expected.as_str()) => {
            Ok(dir.parent().unwrap_or(Path::new("/")).to_owned())
        }
        _ => Err(CmdError::plain(
            Failure::Usage,
            format!(
                "`{}` is not in its chapter's reports folder (<out>/{expected}/reports/), so \
                 where the new images go is not known",
                report.display()
            ),
            Some("pass --out DIR: the new images go to DIR/ch-XX/raw/comfyui/"),
        )),
    }
}
