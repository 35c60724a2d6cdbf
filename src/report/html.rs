//! The contact sheet `<run-id>.html`: one self-contained page (thumbnails embedded as data
//! URIs, no scripts, no external files) showing every job by page and version with its
//! prompt, seed, status and error. A pure function from a report to bytes, plus thumbnails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;

use super::json::{ChangeKind, JobReport, RunReport};
use crate::manifest::model::VarValue;
use crate::manifest::sweep;
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
    write_contact_sheet_from(report, &[(out_root, thumbs)], &|_| 0, out)
}

/// [`write_contact_sheet`] of a report whose images lie under several output roots (a
/// merge of shards that each wrote their own): `roots` are each root with its thumbnail
/// pack, `root_of` says which one a job's images are under.
pub fn write_contact_sheet_from(
    report: &RunReport,
    roots: &[(&Path, &Path)],
    root_of: &dyn Fn(&JobReport) -> usize,
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
.card .input{{display:flex;align-items:center;gap:6px;margin-bottom:4px}} .card .input img{{width:48px;margin:0}}
.noimg{{height:120px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}}
.key{{font-weight:600}} .meta{{color:#555;font-size:12px}} .prompt{{font-size:12px;margin-top:4px;white-space:pre-wrap;word-break:break-word}}
.status{{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;color:#fff}}
.succeeded{{background:#2e7d32}} .skipped{{background:#607d8b}} .failed,.timed_out{{background:#c62828}} .cancelled{{background:#ef6c00}} .pending{{background:#9e9e9e}}
.error{{color:#b71c1c;font-size:12px;white-space:pre-wrap;word-break:break-word}}
table.sweep{{border-collapse:collapse;margin:8px 0 16px}} table.sweep caption{{text-align:left;font-weight:600;padding:4px 0}}
table.sweep th{{font-size:12px;padding:4px 8px;background:#ece8df;white-space:nowrap}} table.sweep td{{vertical-align:top;padding:6px;border:1px solid #ddd}}
table.sweep td .card{{margin-bottom:6px}}
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
    let mut readers: Vec<ThumbReader> = roots
        .iter()
        .map(|(_, thumbs)| ThumbReader::open(thumbs))
        .collect();
    // By page, jobs in report order within a page.
    let mut order: Vec<&JobReport> = report.jobs.iter().collect();
    order.sort_by_key(|j| j.page);
    for page in order.chunk_by(|a, b| a.page == b.page) {
        let _ = writeln!(html, "<h2>Page {}</h2>", page[0].page);
        if page.iter().any(|j| !j.params.sweep.is_empty()) {
            sweep_grids(&mut html, page, roots, root_of, &mut readers, out)?;
            continue;
        }
        html.push_str("<div class=\"grid\">\n");
        for job in page {
            let at = root_of(job).min(roots.len() - 1);
            card(&mut html, job, roots[at].0, &mut readers[at]);
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

/// A swept page as XY grids: columns are the first axis's values, rows the second's, and
/// each combination of any further axes is a grid of its own, captioned with its values.
/// A cell holds its sweep point's cards (one per image of each variant).
fn sweep_grids(
    html: &mut String,
    page: &[&JobReport],
    roots: &[(&Path, &Path)],
    root_of: &dyn Fn(&JobReport) -> usize,
    readers: &mut [ThumbReader],
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let axes = sweep::axes_of(page.iter().map(|j| &j.params.sweep[..]));
    let label = |axis: usize, value: usize| {
        let (name, values) = &axes[axis];
        escape(&format!("{name}={}", sweep::value_label(values[value])))
    };
    // Each job's place: the further axes' value indices, then row, then column.
    let mut cells: BTreeMap<(Vec<usize>, usize, usize), Vec<&JobReport>> = BTreeMap::new();
    for job in page {
        let at: Vec<usize> = axes
            .iter()
            .enumerate()
            .map(|(i, (_, values))| {
                job.params
                    .sweep
                    .get(i)
                    .and_then(|a| values.iter().position(|v| **v == a.value))
                    .unwrap_or(0)
            })
            .collect();
        let (x, y) = (at[0], at.get(1).copied().unwrap_or(0));
        let rest = at.get(2..).unwrap_or_default().to_vec();
        cells.entry((rest, y, x)).or_default().push(job);
    }
    let mut groups: Vec<Vec<usize>> = cells.keys().map(|(rest, _, _)| rest.clone()).collect();
    groups.dedup();
    let (x_axis, y_axis) = (&axes[0], axes.get(1));
    for rest in groups {
        html.push_str("<table class=\"sweep\">");
        if !rest.is_empty() {
            let caption: Vec<String> = rest
                .iter()
                .enumerate()
                .map(|(i, v)| label(i + 2, *v))
                .collect();
            let _ = write!(html, "<caption>{}</caption>", caption.join(" · "));
        }
        html.push_str("<thead><tr>");
        if let Some((y_name, _)) = y_axis {
            let _ = write!(
                html,
                "<th class=\"corner\">{} \\ {}</th>",
                escape(y_name),
                escape(x_axis.0)
            );
        }
        for x in 0..x_axis.1.len() {
            let _ = write!(html, "<th scope=\"col\">{}</th>", label(0, x));
        }
        html.push_str("</tr></thead>\n<tbody>\n");
        for y in 0..y_axis.map_or(1, |(_, values)| values.len()) {
            html.push_str("<tr>");
            if y_axis.is_some() {
                let _ = write!(html, "<th scope=\"row\">{}</th>", label(1, y));
            }
            for x in 0..x_axis.1.len() {
                let _ = write!(html, "<td data-x=\"{}\"", label(0, x));
                if y_axis.is_some() {
                    let _ = write!(html, " data-y=\"{}\"", label(1, y));
                }
                html.push('>');
                for job in cells.get(&(rest.clone(), y, x)).into_iter().flatten() {
                    let at = root_of(job).min(roots.len() - 1);
                    card(html, job, roots[at].0, &mut readers[at]);
                    if html.len() >= FLUSH_AT {
                        out.write_all(html.as_bytes())?;
                        html.clear();
                    }
                }
                html.push_str("</td>");
            }
            html.push_str("</tr>\n");
        }
        html.push_str("</tbody></table>\n");
    }
    out.write_all(html.as_bytes())?;
    html.clear();
    Ok(())
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
        inputs(html, job, thumbs);
        let _ = write!(
            html,
            "<div><span class=\"key\">{key}</span> <span class=\"status {status}\">{status}</span></div>\
             <div class=\"meta\">variant {variant} · seed {seed} · {steps} steps · cfg {cfg:?} · {sampler}/{scheduler}{lora}{vars}</div>\
             <div class=\"prompt\">{prompt}</div>",
            key = escape(&job.key),
            variant = job.variant,
            seed = job.seed,
            steps = job.params.steps,
            cfg = job.params.cfg,
            sampler = escape(&job.params.sampler),
            scheduler = escape(&job.params.scheduler),
            lora = match job.params.lora_names().as_slice() {
                [] => String::new(),
                names => format!(" · LoRA {}", escape(&names.join(", "))),
            },
            vars = vars_text(&job.params.vars),
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

/// A job's input images beside its output: a small thumbnail (when the file is a PNG that
/// can still be read, or its thumbnail was kept), the file's name and its sha256's start.
fn inputs(html: &mut String, job: &JobReport, thumbs: &mut ThumbReader) {
    for input in &job.inputs {
        html.push_str("<div class=\"input\">");
        if let Some(png) = thumbs.get_or_make(&input.sha256, &input.path) {
            let _ = write!(
                html,
                "<img src=\"data:image/png;base64,{}\" alt=\"input\">",
                base64::engine::general_purpose::STANDARD.encode(png)
            );
        }
        let path = input.path.display().to_string();
        let sha = input.sha256.to_string();
        let _ = write!(
            html,
            "<span class=\"meta\" title=\"{path} sha256 {sha}\">input {name} · {short}</span></div>",
            path = escape(&path),
            name = escape(
                input
                    .path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or(&path)
            ),
            short = &sha[..12],
        );
    }
}

/// ` · style=ink · denoise=0.55`: a job's variables (strings as they are), escaped.
fn vars_text(vars: &std::collections::BTreeMap<String, VarValue>) -> String {
    let mut text = String::new();
    for (name, value) in vars {
        let shown = match value {
            VarValue::Str(s) => s.clone(),
            other => other.to_json().to_string(),
        };
        let _ = write!(text, " · {}={}", escape(name), escape(&shown));
    }
    text
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

pub(super) fn escape(text: &str) -> String {
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
