//! The contact sheet `<run-id>.html`: one self-contained page (thumbnails embedded as data
//! URIs, no scripts, no external files) showing every job by page and version with its
//! prompt, seed, status and error. A pure function from a report to bytes, plus thumbnails.

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;

use super::json::{ChangeKind, JobReport, RunReport};
use crate::output::ThumbReader;

/// Render the contact sheet. `out_root` is where the report's image paths are relative to;
/// `thumbs` is the chapter's thumbnail pack (`ChapterDirs::thumbs`), where thumbnails made as
/// the images arrived are found (see `crate::output::thumbs`).
pub fn contact_sheet(report: &RunReport, out_root: &Path, thumbs: &Path) -> String {
    let mut bytes = Vec::new();
    write_contact_sheet(report, out_root, thumbs, &mut bytes).expect("writing to memory");
    String::from_utf8(bytes).expect("the sheet is UTF-8")
}

/// Bytes of HTML gathered before they are written out.
const FLUSH_AT: usize = 32 << 10;

/// [`contact_sheet`] written as it is made: at most [`FLUSH_AT`] bytes and one thumbnail
/// are in memory, however many jobs a page has.
pub fn write_contact_sheet(
    report: &RunReport,
    out_root: &Path,
    thumbs: &Path,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let mut html = String::with_capacity(2 * FLUSH_AT);
    let title = format!(
        "Chapter {}{} — run {}",
        report.chapter,
        report
            .title
            .as_deref()
            .map(|t| format!(": {t}"))
            .unwrap_or_default(),
        report.run_id
    );
    let totals = &report.totals;
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;background:#f6f4ef;color:#222}}
h1{{font-size:20px}} h2{{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #ccc}}
.totals span{{margin-right:14px}} .grid{{display:flex;flex-wrap:wrap;gap:12px}}
.card{{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;width:220px}}
.card img{{display:block;max-width:100%;margin:0 auto 6px;border-radius:3px}}
.noimg{{height:120px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}}
.key{{font-weight:600}} .meta{{color:#555;font-size:12px}} .prompt{{font-size:12px;margin-top:4px;white-space:pre-wrap;word-break:break-word}}
.status{{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;color:#fff}}
.succeeded{{background:#2e7d32}} .skipped{{background:#607d8b}} .failed,.timed_out{{background:#c62828}} .cancelled{{background:#ef6c00}} .pending{{background:#9e9e9e}}
.error{{color:#b71c1c;font-size:12px;white-space:pre-wrap;word-break:break-word}}
.card.changed{{width:452px;border-color:#f9a825}} .pair{{display:flex;gap:8px}} .pair>div{{flex:1}}
.change{{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;background:#fff3c4;color:#5d4300}} .change.new{{background:#e3f2fd;color:#0d47a1}}
</style></head><body>
<h1>{title}</h1>
<p class="meta">manifest {manifest} · started {started} · ended {ended}{incomplete}</p>
<p class="totals"><span>{jobs} jobs</span><span>{succeeded} succeeded</span><span>{skipped} skipped</span><span>{failed} failed</span><span>{timed_out} timed out</span><span>{cancelled} cancelled</span></p>
"#,
        title = escape(&title),
        manifest = escape(&report.manifest.path),
        started = escape(&report.started_at),
        ended = escape(report.ended_at.as_deref().unwrap_or("—")),
        incomplete = if report.complete {
            ""
        } else {
            " · <b>incomplete</b>"
        },
        jobs = totals.jobs,
        succeeded = totals.succeeded,
        skipped = totals.skipped,
        failed = totals.failed,
        timed_out = totals.timed_out,
        cancelled = totals.cancelled,
    );
    let count = |kind: ChangeKind| {
        report
            .jobs
            .iter()
            .filter(|j| j.change.as_ref().is_some_and(|c| c.kind == kind))
            .count()
    };
    let _ = writeln!(
        html,
        "<p class=\"totals changes\"><span>since the previous images:</span><span>{} changed</span><span>{} new</span><span>{} unchanged</span></p>",
        count(ChangeKind::Changed),
        count(ChangeKind::New),
        count(ChangeKind::Unchanged)
    );
    let mut thumbs = ThumbReader::open(thumbs);
    // By page, jobs in report order within a page.
    let mut order: Vec<&JobReport> = report.jobs.iter().collect();
    order.sort_by_key(|j| j.page);
    for page in order.chunk_by(|a, b| a.page == b.page) {
        let _ = write!(
            html,
            "<h2>Page {}</h2>\n<div class=\"grid\">\n",
            page[0].page
        );
        for job in page {
            card(&mut html, job, out_root, &mut thumbs);
            // A page can hold thousands of cards: write in steps of ~32 KiB, so the sheet
            // never holds more than that (and one thumbnail) in memory.
            if html.len() >= FLUSH_AT {
                out.write_all(html.as_bytes())?;
                html.clear();
            }
        }
        html.push_str("</div>\n");
        out.write_all(html.as_bytes())?;
        html.clear();
    }
    html.push_str("</body></html>\n");
    out.write_all(html.as_bytes())
}

fn card(html: &mut String, job: &JobReport, out_root: &Path, thumbs: &mut ThumbReader) {
    let status = job.status.as_str();
    let images: Vec<_> = if job.images.is_empty() {
        vec![None]
    } else {
        job.images.iter().map(Some).collect()
    };
    let change = job.change.as_ref();
    // A changed job shows its previous image beside the new one.
    let before = change
        .filter(|c| c.kind == ChangeKind::Changed)
        .and_then(|c| c.previous.as_ref());
    for image in images {
        let mut thumb = |i: &crate::events::ImageRecord| {
            let png = thumbs.get_or_make(&i.sha256, &out_root.join(&i.path))?;
            Some(format!(
                "data:image/png;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(png)
            ))
        };
        let before_uri = before.and_then(|b| thumb(&b.image).map(|uri| (b, uri)));
        if let Some((previous, uri)) = &before_uri {
            html.push_str("<div class=\"card changed\"><div class=\"pair\"><div class=\"before\">");
            thumbnail(html, &previous.image, uri, "before: ");
            html.push_str("</div><div class=\"now\">");
        } else {
            html.push_str("<div class=\"card\">");
        }
        match image.and_then(|i| thumb(i).map(|uri| (i, uri))) {
            Some((image, uri)) => thumbnail(html, image, &uri, ""),
            None => html.push_str("<div class=\"noimg\">no image</div>"),
        }
        if before_uri.is_some() {
            html.push_str("</div></div>");
        }
        match change {
            Some(c) if c.kind == ChangeKind::Changed => {
                let what = if c.params.is_empty() {
                    String::new()
                } else {
                    format!(": {}", escape(&c.params.join(", ")))
                };
                let _ = write!(
                    html,
                    "<div><span class=\"change\">changed{what}</span></div>"
                );
            }
            Some(c) if c.kind == ChangeKind::New => {
                html.push_str("<div><span class=\"change new\">new</span></div>");
            }
            _ => {}
        }
        let _ = write!(
            html,
            "<div><span class=\"key\">{key}</span> <span class=\"status {status}\">{status}</span></div>\
             <div class=\"meta\">variant {variant} · seed {seed} · {steps} steps · cfg {cfg} · {sampler}/{scheduler}{lora}</div>\
             <div class=\"prompt\">{prompt}</div>",
            key = escape(&job.key),
            variant = job.variant,
            seed = job.seed,
            steps = job.params.steps,
            cfg = job.params.cfg,
            sampler = escape(&job.params.sampler),
            scheduler = escape(&job.params.scheduler),
            lora = job
                .params
                .lora
                .as_ref()
                .map(|l| format!(" · LoRA {}", escape(&l.name)))
                .unwrap_or_default(),
            prompt = escape(&job.params.prompt),
        );
        if let Some(error) = &job.error {
            let _ = write!(
                html,
                "<div class=\"error\">{}</div>",
                escape(&error.message)
            );
        }
        html.push_str("</div>\n");
    }
}

/// One thumbnail and its caption: `prefix`, the file name and its size.
fn thumbnail(html: &mut String, image: &crate::events::ImageRecord, uri: &str, prefix: &str) {
    let name = image.path.rsplit('/').next().unwrap_or(&image.path);
    let _ = write!(
        html,
        "<img src=\"{uri}\" alt=\"{alt}\" title=\"{alt}\"><div class=\"meta\">{prefix}{alt} · {w}x{h}</div>",
        alt = escape(name),
        w = image.width,
        h = image.height
    );
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }
}
