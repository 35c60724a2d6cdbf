//! The contact sheet `<run-id>.html`: one self-contained page (thumbnails embedded as data
//! URIs, no scripts, no external files) showing every job by page and version with its
//! prompt, seed, status and error. A pure function from a report to bytes, plus thumbnails.

use std::fmt::Write as _;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use base64::Engine as _;

use super::json::{JobReport, ReportStatus, RunReport};

/// Longest thumbnail side in pixels.
const THUMB_MAX: u32 = 192;

/// Render the contact sheet. `out_root` is where the report's image paths are relative to.
pub fn contact_sheet(report: &RunReport, out_root: &Path) -> String {
    let mut bytes = Vec::new();
    write_contact_sheet(report, out_root, &mut bytes).expect("writing to memory");
    String::from_utf8(bytes).expect("the sheet is UTF-8")
}

/// [`contact_sheet`] written page by page: at most one page's thumbnails are in memory.
pub fn write_contact_sheet(
    report: &RunReport,
    out_root: &Path,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let mut html = String::with_capacity(64 << 10);
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
    let mut pages: Vec<u16> = report.jobs.iter().map(|j| j.page).collect();
    pages.sort_unstable();
    pages.dedup();
    for page in pages {
        let _ = write!(html, "<h2>Page {page}</h2>\n<div class=\"grid\">\n");
        for job in report.jobs.iter().filter(|j| j.page == page) {
            card(&mut html, job, out_root);
        }
        html.push_str("</div>\n");
        out.write_all(html.as_bytes())?;
        html.clear();
    }
    html.push_str("</body></html>\n");
    out.write_all(html.as_bytes())
}

fn card(html: &mut String, job: &JobReport, out_root: &Path) {
    let status = status_name(job.status);
    let images: Vec<_> = if job.images.is_empty() {
        vec![None]
    } else {
        job.images.iter().map(Some).collect()
    };
    for image in images {
        html.push_str("<div class=\"card\">");
        match image.and_then(|i| thumbnail_data_uri(&out_root.join(&i.path)).map(|uri| (i, uri))) {
            Some((image, uri)) => {
                let name = image.path.rsplit('/').next().unwrap_or(&image.path);
                let _ = write!(
                    html,
                    "<img src=\"{uri}\" alt=\"{alt}\" title=\"{alt}\"><div class=\"meta\">{alt} · {w}x{h}</div>",
                    alt = escape(name),
                    w = image.width,
                    h = image.height
                );
            }
            None => html.push_str("<div class=\"noimg\">no image</div>"),
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

fn status_name(status: ReportStatus) -> &'static str {
    match status {
        ReportStatus::Pending => "pending",
        ReportStatus::Succeeded => "succeeded",
        ReportStatus::Skipped => "skipped",
        ReportStatus::Failed => "failed",
        ReportStatus::TimedOut => "timed_out",
        ReportStatus::Cancelled => "cancelled",
    }
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

/// A small PNG of the image as a `data:` URI; `None` if the file is gone or unreadable.
pub fn thumbnail_data_uri(path: &Path) -> Option<String> {
    let png = thumbnail_png(path)?;
    Some(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}

/// Decode, box-filter down to at most `THUMB_MAX` on the long side, encode as RGB PNG.
fn thumbnail_png(path: &Path) -> Option<Vec<u8>> {
    let mut decoder = png::Decoder::new(BufReader::new(File::open(path).ok()?));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().ok()?;
    let mut buffer = vec![0; reader.output_buffer_size()?];
    let frame = reader.next_frame(&mut buffer).ok()?;
    let (width, height) = (frame.width, frame.height);
    let channels = frame.color_type.samples();
    let rgb_at = |x: u32, y: u32| -> [u32; 3] {
        let i = ((y * width + x) as usize) * channels;
        match channels {
            1 | 2 => [buffer[i] as u32; 3],
            _ => [buffer[i] as u32, buffer[i + 1] as u32, buffer[i + 2] as u32],
        }
    };
    let scale = (width.max(height) as f64 / THUMB_MAX as f64).max(1.0);
    let tw = ((width as f64 / scale).round() as u32).max(1);
    let th = ((height as f64 / scale).round() as u32).max(1);
    let mut out = Vec::with_capacity((tw * th * 3) as usize);
    for ty in 0..th {
        let (y0, y1) = (
            ty * height / th,
            ((ty + 1) * height / th).max(ty * height / th + 1),
        );
        for tx in 0..tw {
            let (x0, x1) = (
                tx * width / tw,
                ((tx + 1) * width / tw).max(tx * width / tw + 1),
            );
            let mut sum = [0u32; 3];
            for y in y0..y1.min(height) {
                for x in x0..x1.min(width) {
                    let p = rgb_at(x, y);
                    sum = [sum[0] + p[0], sum[1] + p[1], sum[2] + p[2]];
                }
            }
            let n = ((y1.min(height) - y0) * (x1.min(width) - x0)).max(1);
            out.extend(sum.map(|s| (s / n) as u8));
        }
    }
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, tw, th);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().ok()?;
        writer.write_image_data(&out).ok()?;
    }
    Some(png_bytes)
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

    #[test]
    fn thumbnails_are_small_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        {
            let file = File::create(&path).unwrap();
            let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), 512, 768);
            encoder.set_color(png::ColorType::Rgb);
            let mut writer = encoder.write_header().unwrap();
            writer
                .write_image_data(&vec![200u8; 512 * 768 * 3])
                .unwrap();
        }
        let thumb = thumbnail_png(&path).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(thumb));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (128, 192));
        assert!(thumbnail_png(&dir.path().join("missing.png")).is_none());
    }
}
