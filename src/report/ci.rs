//! What a CI system reads of a run: a JUnit XML file (`run --junit PATH`: one test suite per
//! chapter, one test case per job, as GitLab, Jenkins and GitHub's test reporters read it)
//! and a Markdown summary (`run --summary PATH`, and appended to `$GITHUB_STEP_SUMMARY`):
//! totals, failed jobs with their errors, links to the contact sheets.
//!
//! Both take a list of chapter runs, so one file covers a run of several chapters. Pure
//! functions from reports to bytes; the command writes them.

use std::fmt::Write as _;
use std::path::PathBuf;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};

use super::json::{JobReport, ReportStatus, RunReport};

/// One chapter's finished run: its report and where its contact sheet is.
#[derive(Debug, Clone)]
pub struct ChapterRun {
    pub report: RunReport,
    pub contact_sheet: PathBuf,
}

/// The characters XML 1.0 allows (tab, newline, carriage return and everything from the
/// space up, but the surrogates and U+FFFE/U+FFFF); the rest is shown as `\u{..}`, so a
/// control character in a server's traceback cannot make the file unreadable. The
/// escaping of `<`, `&` and quotes is the XML writer's.
fn xml_text(text: &str) -> String {
    let mut clean = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && !matches!(c, '\u{FFFE}' | '\u{FFFF}')) {
            clean.push(c);
        } else {
            let _ = write!(clean, "\\u{{{:x}}}", c as u32);
        }
    }
    clean
}

/// Seconds a job took in this run, from its POST being answered to its last image written.
fn job_seconds(job: &JobReport) -> f64 {
    let t = &job.timings;
    match (t.queued, t.downloaded.or(t.executed)) {
        (Some(start), Some(end)) if end >= start => f64::from(end - start) / 1000.0,
        _ => 0.0,
    }
}

/// Seconds from the run's start to its last job's end (what the report's timings give).
fn run_seconds(report: &RunReport) -> f64 {
    report
        .jobs
        .iter()
        .filter_map(|j| j.timings.downloaded.or(j.timings.executed))
        .max()
        .map_or(0.0, |ms| f64::from(ms) / 1000.0)
}

/// The suite's name: `ch01` and the chapter's title.
fn suite_name(report: &RunReport) -> String {
    match &report.title {
        Some(title) => format!("ch{:02} {title}", report.chapter),
        None => format!("ch{:02}", report.chapter),
    }
}

/// The whole of what went wrong with a job, as the failure's body: its error, the server
/// and prompt, the node, and the server's own details.
fn failure_text(job: &JobReport) -> String {
    let mut text = String::new();
    if let Some(error) = &job.error {
        let _ = writeln!(text, "{}", error.message);
        if let Some(node) = &error.node_id {
            let class = error.node_class.as_deref().unwrap_or("?");
            let _ = writeln!(text, "node: {node} ({class})");
        }
    } else {
        let _ = writeln!(text, "the job ended {}", job.status.as_str());
    }
    let _ = writeln!(text, "server: {}", job.server.as_deref().unwrap_or("none"));
    if let Some(prompt_id) = &job.prompt_id {
        let _ = writeln!(text, "prompt_id: {prompt_id}");
    }
    let _ = writeln!(text, "attempts: {}", job.attempts);
    let _ = writeln!(text, "seed: {}", job.seed);
    if let Some(error) = &job.error
        && !error.details.is_null()
    {
        let details = serde_json::to_string_pretty(&error.details).unwrap_or_default();
        let _ = writeln!(text, "details: {details}");
    }
    text
}

/// The failure's `type`: the error kind (`node_error`, `timeout`, ...) or the status.
fn failure_type(job: &JobReport) -> String {
    match &job.error {
        Some(error) => serde_json::to_value(&error.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| job.status.as_str().to_owned()),
        None => job.status.as_str().to_owned(),
    }
}

/// The JUnit XML of `runs`: `<testsuites>` with one `<testsuite>` per chapter and one
/// `<testcase>` per job. Succeeded jobs pass; skipped ones (the ledger had their image) are
/// `<skipped>`; failed, timed-out and cancelled ones carry a `<failure>` with the error and
/// the server's details; a job still pending (a run cut short) is an `<error>`.
pub fn junit(runs: &[ChapterRun]) -> String {
    let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
    write_junit(&mut writer, runs).expect("writing to memory");
    String::from_utf8(writer.into_inner()).expect("the XML is UTF-8")
}

fn write_junit(writer: &mut Writer<Vec<u8>>, runs: &[ChapterRun]) -> std::io::Result<()> {
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let count = |report: &RunReport, status: &[ReportStatus]| {
        report
            .jobs
            .iter()
            .filter(|j| status.contains(&j.status))
            .count()
    };
    let total =
        |status: &[ReportStatus]| -> usize { runs.iter().map(|r| count(&r.report, status)).sum() };
    let tests: usize = runs.iter().map(|r| r.report.jobs.len()).sum();
    let time: f64 = runs.iter().map(|r| run_seconds(&r.report)).sum();
    writer
        .create_element("testsuites")
        .with_attribute(("name", "plasma-batch"))
        .with_attribute(("tests", tests.to_string().as_str()))
        .with_attribute(("failures", total(&FAILURES).to_string().as_str()))
        .with_attribute((
            "errors",
            total(&[ReportStatus::Pending]).to_string().as_str(),
        ))
        .with_attribute((
            "skipped",
            total(&[ReportStatus::Skipped]).to_string().as_str(),
        ))
        .with_attribute(("time", format!("{time:.3}").as_str()))
        .write_inner_content(|writer| {
            for run in runs {
                write_suite(writer, run, &FAILURES, &count)?;
            }
            Ok(())
        })?;
    Ok(())
}

fn write_suite(
    writer: &mut Writer<Vec<u8>>,
    run: &ChapterRun,
    failures: &[ReportStatus],
    count: &dyn Fn(&RunReport, &[ReportStatus]) -> usize,
) -> std::io::Result<()> {
    let report = &run.report;
    let classname = format!("ch{:02}", report.chapter);
    writer
        .create_element("testsuite")
        .with_attribute(("name", xml_text(&suite_name(report)).as_str()))
        .with_attribute(("tests", report.jobs.len().to_string().as_str()))
        .with_attribute(("failures", count(report, failures).to_string().as_str()))
        .with_attribute((
            "errors",
            count(report, &[ReportStatus::Pending]).to_string().as_str(),
        ))
        .with_attribute((
            "skipped",
            count(report, &[ReportStatus::Skipped]).to_string().as_str(),
        ))
        .with_attribute(("time", format!("{:.3}", run_seconds(report)).as_str()))
        .with_attribute(("timestamp", xml_text(&report.started_at).as_str()))
        .write_inner_content(|writer| {
            writer
                .create_element("properties")
                .write_inner_content(|writer| {
                    let contact_sheet = run.contact_sheet.display().to_string();
                    for (name, value) in [
                        ("run_id", report.run_id.as_str()),
                        ("manifest", report.manifest.path.as_str()),
                        ("contact_sheet", contact_sheet.as_str()),
                    ] {
                        writer
                            .create_element("property")
                            .with_attribute(("name", name))
                            .with_attribute(("value", xml_text(value).as_str()))
                            .write_empty()?;
                    }
                    Ok(())
                })?;
            for job in &report.jobs {
                let case = writer
                    .create_element("testcase")
                    .with_attribute(("name", xml_text(&job.key).as_str()))
                    .with_attribute(("classname", classname.as_str()))
                    .with_attribute(("time", format!("{:.3}", job_seconds(job)).as_str()));
                match job.status {
                    ReportStatus::Succeeded => {
                        case.write_empty()?;
                    }
                    ReportStatus::Skipped => {
                        case.write_inner_content(|writer| {
                            writer
                                .create_element("skipped")
                                .with_attribute((
                                    "message",
                                    "already rendered: the ledger has this job's image",
                                ))
                                .write_empty()?;
                            Ok(())
                        })?;
                    }
                    ReportStatus::Pending => {
                        case.write_inner_content(|writer| {
                            writer
                                .create_element("error")
                                .with_attribute(("message", "the run ended before this job did"))
                                .with_attribute(("type", "pending"))
                                .write_empty()?;
                            Ok(())
                        })?;
                    }
                    ReportStatus::Failed | ReportStatus::TimedOut | ReportStatus::Cancelled => {
                        let message = job.error.as_ref().map_or_else(
                            || format!("the job ended {}", job.status.as_str()),
                            |e| e.message.clone(),
                        );
                        case.write_inner_content(|writer| {
                            writer
                                .create_element("failure")
                                .with_attribute(("message", xml_text(&message).as_str()))
                                .with_attribute(("type", failure_type(job).as_str()))
                                .write_text_content(BytesText::new(&xml_text(&failure_text(
                                    job,
                                ))))?;
                            Ok(())
                        })?;
                    }
                }
            }
            Ok(())
        })?;
    Ok(())
}

/// The statuses a JUnit `<failure>` stands for.
const FAILURES: [ReportStatus; 3] = [
    ReportStatus::Failed,
    ReportStatus::TimedOut,
    ReportStatus::Cancelled,
];

/// Failed jobs listed in a summary; the rest are counted (GitHub caps a step summary at
/// 1 MiB, and a page of 500 errors is read by nobody).
pub const SUMMARY_FAILED_ROWS: usize = 50;

/// A table cell: one line, `|` escaped, at most 300 characters.
fn cell(text: &str) -> String {
    let one_line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|");
    if one_line.chars().count() > 300 {
        let cut: String = one_line.chars().take(299).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

/// The Markdown summary of `runs`: a line of totals, a table of chapters with links to their
/// contact sheets, and the failed jobs with their errors (at most [`SUMMARY_FAILED_ROWS`]).
pub fn markdown_summary(runs: &[ChapterRun]) -> String {
    let mut md = String::new();
    let mut sum = super::Totals::default();
    for run in runs {
        let t = &run.report.totals;
        sum.jobs += t.jobs;
        sum.succeeded += t.succeeded;
        sum.skipped += t.skipped;
        sum.failed += t.failed;
        sum.timed_out += t.timed_out;
        sum.cancelled += t.cancelled;
        sum.pending += t.pending;
    }
    let bad = sum.failed + sum.timed_out + sum.cancelled + sum.pending;
    let _ = writeln!(
        md,
        "## plasma-batch: {} {}\n",
        if bad == 0 { "✅" } else { "❌" },
        if bad == 0 {
            format!("{} jobs, all rendered", sum.jobs)
        } else {
            format!("{bad} of {} jobs did not render", sum.jobs)
        }
    );
    let _ = writeln!(
        md,
        "{} jobs: {} succeeded, {} skipped, {} failed, {} timed out, {} cancelled\n",
        sum.jobs, sum.succeeded, sum.skipped, sum.failed, sum.timed_out, sum.cancelled
    );
    let changed = |kind: super::ChangeKind| -> usize {
        runs.iter()
            .flat_map(|r| r.report.jobs.iter())
            .filter(|j| j.change.as_ref().is_some_and(|c| c.kind == kind))
            .count()
    };
    let _ = writeln!(
        md,
        "Since the previous images: {} changed, {} new, {} unchanged\n",
        changed(super::ChangeKind::Changed),
        changed(super::ChangeKind::New),
        changed(super::ChangeKind::Unchanged)
    );
    md.push_str("| chapter | jobs | succeeded | skipped | failed | timed out | cancelled | contact sheet |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---|\n");
    for run in runs {
        let r = &run.report;
        let t = &r.totals;
        let sheet = run.contact_sheet.display().to_string();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | [{}](<{}>) |",
            cell(&suite_name(r)),
            t.jobs,
            t.succeeded,
            t.skipped,
            t.failed,
            t.timed_out,
            t.cancelled,
            cell(&format!("{}.html", r.run_id)),
            sheet.replace('>', "%3E"),
        );
    }
    let failed: Vec<&JobReport> = runs
        .iter()
        .flat_map(|r| r.report.jobs.iter())
        .filter(|j| !matches!(j.status, ReportStatus::Succeeded | ReportStatus::Skipped))
        .collect();
    if !failed.is_empty() {
        md.push_str("\n### Failed jobs\n\n| job | status | server | error |\n|---|---|---|---|\n");
        for job in failed.iter().take(SUMMARY_FAILED_ROWS) {
            let error = job.error.as_ref().map_or_else(
                || format!("the job ended {}", job.status.as_str()),
                |e| format!("{}: {}", failure_type(job), e.message),
            );
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} |",
                job.key,
                job.status.as_str(),
                cell(job.server.as_deref().unwrap_or("none")),
                cell(&error)
            );
        }
        if failed.len() > SUMMARY_FAILED_ROWS {
            let _ = writeln!(
                md,
                "\nand {} more failed jobs: see the run reports.",
                failed.len() - SUMMARY_FAILED_ROWS
            );
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_xml_cannot_hold_are_spelled_out_and_the_rest_kept() {
        assert_eq!(
            xml_text("ok\t\n<&\"é\u{1b}[31m\u{0}\u{FFFE}"),
            "ok\t\n<&\"é\\u{1b}[31m\\u{0}\\u{fffe}"
        );
    }
}
