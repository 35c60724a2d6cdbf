//! `plasma-batch report merge`: read shard reports (or book summaries of shard runs, or
//! folders of either), merge each chapter's (`report::merge`), and write
//! `DIR/ch-XX.json` and its contact sheet `DIR/ch-XX.html`.
//!
//! All or nothing: when any chapter does not merge, nothing is written. A planned job that
//! no report has, or one two reports have, ends with exit 1 naming the keys; reports that are
//! unreadable, invalid or not shards of one split end with exit 3.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::cli::MergeArgs;
use crate::cmd::{CmdError, CmdResult, Failure, Outcome, UserError};
use crate::diagnostic::{Bounded, Problem};
use crate::manifest::read::read_bounded;
use crate::output::{ChapterDirs, write_atomic_with};
use crate::report::book::BookReport;
use crate::report::json::MAX_REPORT_BYTES;
use crate::report::merge::{MergeError, Merged, ShardSource, merge as merge_chapter};
use crate::report::{RunReport, Totals, html};

pub fn merge(args: &MergeArgs) -> CmdResult {
    let chapters = read_sources(&report_files(&args.reports)?)?;
    let mut merged = Vec::new();
    let mut inconsistent = Vec::new();
    let mut missing = Vec::new();
    for (_, sources) in chapters {
        match merge_chapter(sources, args.newest) {
            Ok(chapter) => merged.push(chapter),
            Err(MergeError::Inconsistent(lines)) => inconsistent.extend(lines),
            Err(MergeError::Keys(lines)) => missing.extend(lines),
        }
    }
    if !inconsistent.is_empty() {
        return Err(CmdError::all(
            Failure::InvalidInput,
            inconsistent.into_iter().map(|line| {
                UserError::new(
                    line,
                    Some(
                        "merge the reports of one `run --shard K/N` of each K, all of one split"
                            .to_owned(),
                    ),
                )
            }),
        ));
    }
    if !missing.is_empty() {
        let mut err = std::io::stderr().lock();
        for line in missing {
            let problem: crate::diagnostic::Diagnostic =
                Box::new(UserError::new(line, Some("nothing was written".to_owned())));
            let _ = writeln!(err, "{:?}", miette::Report::new(Bounded::new(problem)));
        }
        return Ok(Outcome::JobsFailed);
    }

    std::fs::create_dir_all(&args.out).map_err(|e| {
        CmdError::plain(
            Failure::Io,
            format!("failed to create `{}`: {e}", args.out.display()),
            Some("choose another --out"),
        )
    })?;
    let mut written = Vec::new();
    let mut totals = Totals::default();
    for chapter in &merged {
        let report = &chapter.report;
        let name = format!("ch-{:02}", report.chapter);
        let json = args.out.join(format!("{name}.json"));
        let sheet = args.out.join(format!("{name}.html"));
        write_merged(chapter, &json, &sheet)?;
        totals.add(&report.totals);
        written.push((
            report.chapter,
            json,
            sheet,
            report.totals.clone(),
            report.merged_from.len(),
        ));
    }
    let outcome = if totals.failed + totals.timed_out + totals.cancelled + totals.pending > 0 {
        Outcome::JobsFailed
    } else {
        Outcome::Done
    };
    if args.json {
        let value = serde_json::json!({
            "chapters": written.iter().map(|(chapter, json, sheet, totals, shards)| serde_json::json!({
                "chapter": chapter,
                "report": json,
                "contact_sheet": sheet,
                "shards": shards,
                "totals": totals,
            })).collect::<Vec<_>>(),
            "totals": totals,
            "exit_code": outcome.exit_code(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("the summary serializes")
        );
    } else {
        for (chapter, json, sheet, t, shards) in &written {
            eprintln!(
                "chapter {chapter}: {} jobs from {shards} shard report(s): {} succeeded, {} skipped, {} failed, {} timed out, {} cancelled, {} pending",
                t.jobs, t.succeeded, t.skipped, t.failed, t.timed_out, t.cancelled, t.pending
            );
            eprintln!("report: {}", json.display());
            eprintln!("contact sheet: {}", sheet.display());
        }
    }
    Ok(outcome)
}

/// A merged report and its contact sheet, each written atomically.
fn write_merged(chapter: &Merged, json: &Path, sheet: &Path) -> Result<(), CmdError> {
    let report = &chapter.report;
    write_atomic_with(json, |out| {
        serde_json::to_writer_pretty(out, report).map_err(std::io::Error::other)
    })?;
    let roots: Vec<(PathBuf, PathBuf)> = chapter
        .roots
        .iter()
        .map(|root| {
            (
                root.clone(),
                ChapterDirs::new(root, report.chapter).thumbs(),
            )
        })
        .collect();
    let roots: Vec<(&Path, &Path)> = roots
        .iter()
        .map(|(r, t)| (r.as_path(), t.as_path()))
        .collect();
    let index: std::collections::HashMap<&str, usize> = report
        .jobs
        .iter()
        .zip(&chapter.root_of)
        .map(|(job, &root)| (job.key.as_str(), root))
        .collect();
    write_atomic_with(sheet, |out| {
        html::write_contact_sheet_from(
            report,
            &roots,
            &|job| index.get(job.key.as_str()).copied().unwrap_or(0),
            out,
        )
    })?;
    Ok(())
}

/// Every chapter report, read and checked, by chapter; the problems of all of them at once.
fn read_sources(files: &[PathBuf]) -> Result<BTreeMap<u16, Vec<ShardSource>>, CmdError> {
    let mut problems: Vec<Problem> = Vec::new();
    let mut invalid = Vec::new();
    let mut chapters: BTreeMap<u16, Vec<ShardSource>> = BTreeMap::new();
    for file in chapter_reports(files)? {
        let report = match RunReport::read(&file) {
            Ok(report) => report,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let name = file.display().to_string();
        for problem in report.check() {
            invalid.push(UserError::new(
                format!("`{name}` is not a valid run report: {problem}"),
                None,
            ));
        }
        chapters
            .entry(report.chapter)
            .or_default()
            .push(ShardSource {
                path: name,
                root: output_root(&file, &report),
                report,
            });
    }
    if !problems.is_empty() {
        return Err(problems.into());
    }
    if !invalid.is_empty() {
        return Err(CmdError::all(Failure::InvalidInput, invalid));
    }

    Ok(chapters)
}

/// The files named, and every `*.json` directly inside each folder named (by name).
fn report_files(given: &[PathBuf]) -> Result<Vec<PathBuf>, CmdError> {
    let mut files = Vec::new();
    for path in given {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let entries = std::fs::read_dir(path).map_err(|e| {
            CmdError::plain(
                Failure::InvalidInput,
                format!("failed to read the folder `{}`: {e}", path.display()),
                None,
            )
        })?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json") && p.is_file())
            .collect();
        if found.is_empty() {
            return Err(CmdError::plain(
                Failure::InvalidInput,
                format!("the folder `{}` holds no `*.json` report", path.display()),
                Some(
                    "name shard reports (<out>/ch-XX/reports/<run-id>.json), book summaries (<out>/reports/<run-id>.json) or folders of them",
                ),
            ));
        }
        found.sort();
        files.extend(found);
    }
    // A file named twice (a folder and a file in it) is one report, not two shards.
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
    Ok(files)
}

/// Chapter reports: each file itself, or, for a book summary, the reports of its chapters
/// (beside it in its output root: `<out>/reports/x.json` names `ch-01/reports/x.json`).
fn chapter_reports(files: &[PathBuf]) -> Result<Vec<PathBuf>, CmdError> {
    #[derive(serde::Deserialize)]
    struct Kind {
        kind: Option<String>,
    }
    let mut reports = Vec::new();
    for file in files {
        let bytes = read_bounded(file, MAX_REPORT_BYTES).unwrap_or_default();
        let is_book = serde_json::from_slice::<Kind>(&bytes)
            .ok()
            .and_then(|k| k.kind)
            .is_some_and(|k| k == "book");
        if !is_book {
            // Read (and its problems said) as a chapter report.
            reports.push(file.clone());
            continue;
        }
        let book: BookReport = serde_json::from_slice(&bytes).map_err(|e| {
            CmdError::plain(
                Failure::InvalidInput,
                format!("`{}` is not a valid book summary: {e}", file.display()),
                None,
            )
        })?;
        let root = file
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new(""));
        for chapter in &book.chapters {
            let relative = Path::new(&chapter.report);
            // Only `ch-XX/reports/<name>.json` under the book's own root.
            let expected = format!("ch-{:02}/reports/", chapter.chapter);
            if !chapter.report.starts_with(&expected)
                || relative.components().count() != 3
                || relative.extension().is_none_or(|e| e != "json")
            {
                return Err(CmdError::plain(
                    Failure::InvalidInput,
                    format!(
                        "`{}` names the report `{}` for chapter {}, not one in {expected}",
                        file.display(),
                        chapter.report,
                        chapter.chapter
                    ),
                    None,
                ));
            }
            reports.push(root.join(relative));
        }
    }
    Ok(reports)
}

/// The output root a report's image paths are relative to: the folder its `ch-XX/reports/`
/// lies in (so a root that was moved or downloaded elsewhere still works), else the root it
/// recorded.
fn output_root(file: &Path, report: &RunReport) -> PathBuf {
    let reports = file.parent();
    let chapter = reports.and_then(Path::parent);
    let in_place = reports
        .and_then(Path::file_name)
        .is_some_and(|n| n == "reports")
        && chapter
            .and_then(Path::file_name)
            .is_some_and(|n| *n == *format!("ch-{:02}", report.chapter));
    match chapter.and_then(Path::parent) {
        Some(root) if in_place => root.to_owned(),
        _ => PathBuf::from(&report.output_root),
    }
}
