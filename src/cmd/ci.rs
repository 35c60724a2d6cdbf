//! `run --junit PATH` and `run --summary PATH` (and `$GITHUB_STEP_SUMMARY`): the CI files
//! written once the run's reports are final. What they hold is `report::ci`'s.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::cli::RouteCiArgs;
use crate::cmd::{CmdError, Failure};
use crate::output::{open_append, write_atomic};
use crate::report::RunReport;
use crate::report::ci::{ChapterRun, junit, markdown_summary};
use crate::runner::RunSummary;

/// GitHub Actions names the file a step's Markdown summary is appended to here.
pub const GITHUB_STEP_SUMMARY: &str = "GITHUB_STEP_SUMMARY";

/// Before the run: the folders `--junit` and `--summary` write into exist, so a typo is
/// said at once, not after a night of rendering.
pub fn check_paths(args: &RouteCiArgs) -> Result<(), CmdError> {
    for (flag, path) in [("--junit", &args.junit), ("--summary", &args.summary)] {
        let Some(path) = path else { continue };
        if path.is_dir() {
            return Err(CmdError::plain(
                Failure::Usage,
                format!("{flag} `{}` is a folder", path.display()),
                Some("name the file to write, e.g. --junit output/junit.xml"),
            ));
        }
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent
            && !parent.is_dir()
        {
            return Err(CmdError::plain(
                Failure::Io,
                format!(
                    "{flag} `{}`: the folder `{}` does not exist",
                    path.display(),
                    parent.display()
                ),
                Some("create the folder first, or write the file somewhere that exists"),
            ));
        }
    }
    Ok(())
}

/// After the run: write what `args` asks for, from the final reports of `summaries`.
pub fn write(args: &RouteCiArgs, summaries: &[&RunSummary]) -> Result<(), CmdError> {
    let step_summary = std::env::var_os(GITHUB_STEP_SUMMARY)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    if args.junit.is_none() && args.summary.is_none() && step_summary.is_none() {
        return Ok(());
    }
    let mut runs = Vec::with_capacity(summaries.len());
    for summary in summaries {
        let report = RunReport::read(&summary.report_path).map_err(|problem| {
            CmdError::plain(
                Failure::Io,
                format!(
                    "the run report `{}` could not be read back for the CI files: {}",
                    summary.report_path.display(),
                    problem.message()
                ),
                None,
            )
        })?;
        runs.push(ChapterRun {
            report,
            contact_sheet: summary.contact_sheet_path.clone(),
        });
    }
    if let Some(path) = &args.junit {
        write_atomic(path, junit(&runs).as_bytes())?;
    }
    let markdown = markdown_summary(&runs);
    if let Some(path) = &args.summary {
        write_atomic(path, markdown.as_bytes())?;
    }
    if let Some(path) = step_summary {
        append(&path, &markdown)?;
    }
    Ok(())
}

fn append(path: &Path, text: &str) -> Result<(), CmdError> {
    let mut file = open_append(path)?;
    file.write_all(format!("{text}\n").as_bytes())
        .and_then(|()| file.flush())
        .map_err(|err| {
            CmdError::plain(
                Failure::Io,
                format!(
                    "failed to append the summary to `{}` (${GITHUB_STEP_SUMMARY}): {err}",
                    path.display()
                ),
                None,
            )
        })
}
