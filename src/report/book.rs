//! The book summary of a run of several chapters: `<out>/reports/<run-id>.json` (the
//! chapters, their totals and reports, the book's totals) and `<run-id>.html` beside it (a
//! table linking every chapter's contact sheet). Each chapter keeps its own report and
//! contact sheet in `<out>/ch-XX/reports/`, as a one-chapter run writes them. Schema:
//! `docs/book.schema.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::html::escape;
use super::json::{Tool, Totals};
use crate::output::{PathError, write_atomic_with};
use crate::shard::Shard;

/// Bumped when a field changes meaning or disappears.
pub const BOOK_SCHEMA_VERSION: u32 = 1;

/// `<out>/reports/<run-id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BookReport {
    pub schema_version: u32,
    /// Always `"book"`: tells a book summary from a chapter's run report.
    pub kind: String,
    pub tool: Tool,
    pub run_id: String,
    /// `false` if the run was interrupted.
    pub complete: bool,
    pub output_root: String,
    /// `K/N` when the run was one shard.
    pub shard: Option<String>,
    pub started_at: String,
    pub ended_at: String,
    pub totals: Totals,
    pub chapters: Vec<BookChapter>,
}

/// One chapter of the book: where its report and contact sheet are, and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookChapter {
    pub chapter: u16,
    pub title: Option<String>,
    pub manifest: String,
    /// Relative to the output root, `/`-separated: `ch-01/reports/<run-id>.json`.
    pub report: String,
    pub contact_sheet: String,
    pub totals: Totals,
}

impl BookReport {
    /// The summary of `chapters` (in run order); the book's totals are theirs added up.
    pub fn new(
        run_id: &str,
        out_root: &Path,
        shard: Option<Shard>,
        (started_at, ended_at): (String, String),
        cancelled: bool,
        chapters: Vec<BookChapter>,
    ) -> BookReport {
        let mut totals = Totals::default();
        for chapter in &chapters {
            totals.add(&chapter.totals);
        }
        BookReport {
            schema_version: BOOK_SCHEMA_VERSION,
            kind: "book".to_owned(),
            tool: Tool {
                name: env!("CARGO_PKG_NAME").to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
            run_id: run_id.to_owned(),
            complete: !cancelled,
            output_root: out_root.display().to_string(),
            shard: shard.map(|s| s.to_string()),
            started_at,
            ended_at,
            totals,
            chapters,
        }
    }

    /// Write `<out>/reports/<run-id>.json` and `.html`, atomically; returns both paths.
    pub fn write(&self, out_root: &Path) -> Result<(PathBuf, PathBuf), PathError> {
        let folder = out_root.join("reports");
        std::fs::create_dir_all(&folder)
            .map_err(|e| PathError::new("create directory", &folder, e))?;
        let json = folder.join(format!("{}.json", self.run_id));
        let html = folder.join(format!("{}.html", self.run_id));
        write_atomic_with(&json, |out| {
            serde_json::to_writer_pretty(out, self).map_err(std::io::Error::other)
        })?;
        write_atomic_with(&html, |out| out.write_all(self.html().as_bytes()))?;
        Ok((json, html))
    }

    /// A self-contained page: the book's totals and one row per chapter, linking its contact
    /// sheet and report (relative links, so the output root can be moved or uploaded).
    pub fn html(&self) -> String {
        let mut html = String::new();
        let title = format!(
            "Book run {}{}",
            self.run_id,
            self.shard
                .as_deref()
                .map(|s| format!(" (shard {s})"))
                .unwrap_or_default()
        );
        let t = &self.totals;
        let _ = write!(
            html,
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;background:#f6f4ef;color:#222}}
table{{border-collapse:collapse;background:#fff}} td,th{{border:1px solid #ddd;padding:4px 10px;text-align:right}}
td:nth-child(-n+2),th:nth-child(-n+2){{text-align:left}} .bad{{color:#c62828;font-weight:600}}
</style></head><body>
<h1>{title}</h1>
<p>started {started} · ended {ended}{incomplete} · {chapters} chapters · {jobs} jobs: {succeeded} succeeded, {skipped} skipped, {failed} failed, {timed_out} timed out, {cancelled} cancelled</p>
<table><tr><th>chapter</th><th>title</th><th>jobs</th><th>succeeded</th><th>skipped</th><th>failed</th><th>timed out</th><th>cancelled</th><th>report</th></tr>
"#,
            title = escape(&title),
            started = escape(&self.started_at),
            ended = escape(&self.ended_at),
            incomplete = if self.complete {
                ""
            } else {
                " · <b>interrupted</b>"
            },
            chapters = self.chapters.len(),
            jobs = t.jobs,
            succeeded = t.succeeded,
            skipped = t.skipped,
            failed = t.failed,
            timed_out = t.timed_out,
            cancelled = t.cancelled,
        );
        for chapter in &self.chapters {
            let c = &chapter.totals;
            let bad = |n: usize| {
                if n > 0 {
                    format!("<td class=\"bad\">{n}</td>")
                } else {
                    format!("<td>{n}</td>")
                }
            };
            let _ = writeln!(
                html,
                "<tr><td><a href=\"../{sheet}\">Chapter {number}</a></td><td>{title}</td><td>{jobs}</td><td>{succeeded}</td><td>{skipped}</td>{failed}{timed_out}{cancelled}<td><a href=\"../{report}\">json</a></td></tr>",
                sheet = escape(&chapter.contact_sheet),
                number = chapter.chapter,
                title = escape(chapter.title.as_deref().unwrap_or("")),
                jobs = c.jobs,
                succeeded = c.succeeded,
                skipped = c.skipped,
                failed = bad(c.failed),
                timed_out = bad(c.timed_out),
                cancelled = bad(c.cancelled),
                report = escape(&chapter.report),
            );
        }
        html.push_str("</table>\n</body></html>\n");
        html
    }
}
