//! Bounded diagnostics: whatever a diagnostic's source and labels, what is rendered stays
//! small and renderable.
//!
//! miette's graphical handler echoes whole source lines and pads to the label's column, so a
//! label at column 65,536 or beyond panicked ("Formatting argument out of range") and a
//! 70,000-character line was printed whole. [`Bounded`] wraps any diagnostic and shows its
//! source through an [`Excerpt`]: only the lines around the labels, each long line cut to a
//! window around the label edges on it (`…` marks what is left out), with the labels moved
//! to match. The `[file:line:col]` heading still names the real line and column. Long
//! messages, labels and help are shortened too. Rendering goes through here in one place
//! (`cmd::error::finish`), so manifests, templates and reports all get it.

use std::fmt;
use std::ops::Range;

use miette::{
    Diagnostic, LabeledSpan, MietteError, MietteSpanContents, Severity, SourceCode, SourceSpan,
    SpanContents,
};

use super::Diagnostic as BoxedDiagnostic;

/// A source line of at most this many characters is shown whole.
pub const MAX_LINE_CHARS: usize = 120;
/// On a longer line, characters shown before and after each label edge.
const WINDOW_CHARS: usize = 40;
/// Lines kept around each label (miette shows one by default).
const CONTEXT_LINES: usize = 3;
/// A label over more lines than this is cut to its first line.
const MAX_LABEL_LINES: usize = 12;
/// Messages, labels and help longer than this many characters are shortened.
pub const MAX_TEXT_CHARS: usize = 1000;
/// Labels beyond this many are left out.
const MAX_LABELS: usize = 16;
/// Marks text left out of a line.
const ELLIPSIS: &str = "…";

/// A diagnostic whose rendering is bounded whatever its source (see the module docs).
pub struct Bounded {
    inner: BoxedDiagnostic,
    message: String,
    help: Option<String>,
    labels: Option<Vec<LabeledSpan>>,
    /// `None`: the source is small enough to show as it is.
    excerpt: Option<Excerpt>,
}

impl Bounded {
    pub fn new(inner: BoxedDiagnostic) -> Bounded {
        let message = shorten(&inner.to_string());
        let help = inner.help().map(|h| shorten(&h.to_string()));
        let labels: Option<Vec<LabeledSpan>> = inner.labels().map(|labels| {
            labels
                .take(MAX_LABELS)
                .map(|l| {
                    let text = l.label().map(shorten);
                    if l.primary() {
                        LabeledSpan::new_primary_with_span(text, *l.inner())
                    } else {
                        LabeledSpan::new_with_span(text, *l.inner())
                    }
                })
                .collect()
        });
        let (labels, excerpt) = match (inner.source_code(), labels) {
            (Some(source), Some(labels)) if !labels.is_empty() => {
                match Excerpt::new(source, &labels) {
                    Some((excerpt, moved)) => (Some(moved), Some(excerpt)),
                    None => (Some(labels), None),
                }
            }
            (_, labels) => (labels, None),
        };
        Bounded {
            inner,
            message,
            help,
            labels,
            excerpt,
        }
    }
}

/// `text` if it is short enough; otherwise its start and end around a note of what was cut.
fn shorten(text: &str) -> String {
    let count = text.chars().count();
    if count <= MAX_TEXT_CHARS {
        return text.to_owned();
    }
    let head: String = text.chars().take(MAX_TEXT_CHARS * 3 / 4).collect();
    let tail: String = text.chars().skip(count - MAX_TEXT_CHARS / 5).collect();
    let cut = count - MAX_TEXT_CHARS * 3 / 4 - MAX_TEXT_CHARS / 5;
    format!("{head}{ELLIPSIS} ({cut} characters left out) {ELLIPSIS}{tail}")
}

impl fmt::Debug for Bounded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bounded")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Bounded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Bounded {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

impl Diagnostic for Bounded {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.inner.code()
    }

    fn severity(&self) -> Option<Severity> {
        self.inner.severity()
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn url<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.inner.url()
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        match &self.excerpt {
            Some(excerpt) => Some(excerpt),
            None => self.inner.source_code(),
        }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.labels
            .as_ref()
            .map(|l| Box::new(l.iter().cloned()) as Box<dyn Iterator<Item = LabeledSpan>>)
    }

    /// Not wrapped: no diagnostic of this crate has related ones.
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        self.inner.related()
    }

    fn diagnostic_source(&self) -> Option<&dyn Diagnostic> {
        self.inner.diagnostic_source()
    }
}

/// The lines around a diagnostic's labels, long ones cut to windows, in their own
/// coordinates (labels are moved into them), reporting the real line and column.
#[derive(Debug)]
pub struct Excerpt {
    name: Option<String>,
    text: String,
    /// The real (0-based) line the text starts at.
    first_line: usize,
    /// Pieces of the real source kept in `text`, in order: real range and where it starts in
    /// `text`. What lies between two pieces is left out (shown as `…` within a line).
    pieces: Vec<Piece>,
    /// Where each line starts: in `text`, and in the real source.
    lines: Vec<(usize, usize)>,
}

#[derive(Debug, Clone)]
struct Piece {
    real: Range<usize>,
    at: usize,
}

/// One line of the source read around the labels: content, and content plus line end.
struct Line {
    content: Range<usize>,
    end: usize,
}

impl Excerpt {
    /// `None` when the source can be shown as it is (or cannot be read: miette says so).
    fn new(source: &dyn SourceCode, labels: &[LabeledSpan]) -> Option<(Excerpt, Vec<LabeledSpan>)> {
        let low = labels.iter().map(miette::LabeledSpan::offset).min()?;
        let high = labels.iter().map(|l| l.offset() + l.len()).max()?;
        let around = source
            .read_span(&(low..high).into(), CONTEXT_LINES, CONTEXT_LINES)
            .ok()?;
        let text = std::str::from_utf8(around.data()).ok()?;
        let base = around.span().offset();
        let lines = split_lines(text, base);
        let line_of = |offset: usize| {
            lines
                .partition_point(|l| l.end <= offset)
                .min(lines.len().saturating_sub(1))
        };
        // Labels as real ranges, a long multi-line one cut to its first line.
        let mut spans: Vec<Range<usize>> = Vec::with_capacity(labels.len());
        let mut cut = false;
        for label in labels {
            let (start, end) = (label.offset(), label.offset() + label.len());
            if start < base || end > base + text.len() {
                return None;
            }
            let (first, last) = (line_of(start), line_of(end.saturating_sub(1).max(start)));
            if last - first >= MAX_LABEL_LINES {
                cut = true;
                spans.push(start..lines[first].content.end.max(start));
            } else {
                spans.push(start..end);
            }
        }
        let long = |l: &Line| {
            text[l.content.start - base..l.content.end - base]
                .chars()
                .count()
        };
        if !cut && lines.iter().all(|l| long(l) <= MAX_LINE_CHARS) {
            return None;
        }

        // The lines to show, and on each the label edges to keep in view.
        let mut shown = vec![false; lines.len()];
        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); lines.len()];
        for span in &spans {
            let (first, last) = (line_of(span.start), line_of(span.end));
            for line in first.saturating_sub(CONTEXT_LINES)..=(last + CONTEXT_LINES) {
                if let Some(s) = shown.get_mut(line) {
                    *s = true;
                }
            }
            edges[first].push(span.start);
            edges[last].push(span.end);
        }
        let mut out = String::new();
        let mut pieces = Vec::new();
        let mut starts = Vec::with_capacity(lines.len());
        for (n, line) in lines.iter().enumerate() {
            starts.push((out.len(), line.content.start));
            let content = &text[line.content.start - base..line.content.end - base];
            if shown[n] {
                for window in windows(content, line.content.start, &edges[n]) {
                    if window.start > line.content.start && !out.ends_with(ELLIPSIS) {
                        out.push_str(ELLIPSIS);
                    }
                    pieces.push(Piece {
                        real: window.clone(),
                        at: out.len(),
                    });
                    out.push_str(&text[window.start - base..window.end - base]);
                    if window.end < line.content.end {
                        out.push_str(ELLIPSIS);
                    }
                }
            }
            // The line end, kept as it was (miette counts `\r` alone as a line end too).
            pieces.push(Piece {
                real: line.content.end..line.end,
                at: out.len(),
            });
            out.push_str(&text[line.content.end - base..line.end - base]);
        }
        let excerpt = Excerpt {
            name: around.name().map(str::to_owned),
            text: out,
            first_line: around.line(),
            pieces,
            lines: starts,
        };
        let moved = labels
            .iter()
            .zip(&spans)
            .map(|(label, span)| {
                let start = excerpt.to_excerpt(span.start, false);
                let end = excerpt.to_excerpt(span.end, true).max(start);
                let text = label.label().map(str::to_owned);
                if label.primary() {
                    LabeledSpan::new_primary_with_span(text, start..end)
                } else {
                    LabeledSpan::new_with_span(text, start..end)
                }
            })
            .collect();
        Some((excerpt, moved))
    }

    /// Where a real offset is in the excerpt. An offset in left-out text is the `…` standing
    /// for it: its start, or (`end`) its end.
    fn to_excerpt(&self, real: usize, end: bool) -> usize {
        let next = self.pieces.partition_point(|p| p.real.start <= real);
        let Some(piece) = next.checked_sub(1).map(|n| &self.pieces[n]) else {
            return 0;
        };
        if real < piece.real.end || (real == piece.real.end && end) {
            return piece.at + (real - piece.real.start);
        }
        let gap = piece.at + piece.real.len();
        match self.pieces.get(next) {
            Some(following) if end => following.at,
            Some(following) => gap.min(following.at),
            None => gap,
        }
    }

    /// The real offset of an excerpt offset (in a `…`: where the left-out text starts).
    fn to_real(&self, at: usize) -> usize {
        let next = self.pieces.partition_point(|p| p.at <= at);
        match next.checked_sub(1).map(|n| &self.pieces[n]) {
            Some(piece) => piece.real.start + (at - piece.at).min(piece.real.len()),
            None => 0,
        }
    }
}

/// `text`'s lines (as miette counts them: `\r\n`, `\n` or `\r` ends one), in real offsets.
fn split_lines(text: &str, base: usize) -> Vec<Line> {
    let bytes = text.as_bytes();
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let end = match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => i + 2,
            b'\r' | b'\n' => i + 1,
            _ => {
                i += 1;
                continue;
            }
        };
        lines.push(Line {
            content: base + start..base + i,
            end: base + end,
        });
        start = end;
        i = end;
    }
    if start < bytes.len() || lines.is_empty() {
        lines.push(Line {
            content: base + start..base + bytes.len(),
            end: base + bytes.len(),
        });
    }
    lines
}

/// The parts of a line (real offsets, on character boundaries) to show: all of it if it is
/// short, else a window around each edge (the start of the line if it has none).
fn windows(content: &str, base: usize, edges: &[usize]) -> Vec<Range<usize>> {
    let whole = base..base + content.len();
    if content.chars().count() <= MAX_LINE_CHARS {
        return vec![whole];
    }
    let mut points: Vec<usize> = edges.iter().map(|e| e - base).collect();
    if points.is_empty() {
        points.push(0);
    }
    points.sort_unstable();
    let mut out: Vec<Range<usize>> = Vec::new();
    for point in points {
        let mut point = point.min(content.len());
        while !content.is_char_boundary(point) {
            point -= 1;
        }
        let start = content[..point]
            .char_indices()
            .rev()
            .nth(WINDOW_CHARS - 1)
            .map_or(0, |(i, _)| i);
        let end = content[point..]
            .char_indices()
            .nth(WINDOW_CHARS)
            .map_or(content.len(), |(i, _)| point + i);
        match out.last_mut() {
            // Overlapping or nearly touching windows become one.
            Some(last) if start <= last.end + ELLIPSIS.len() => last.end = last.end.max(end),
            _ => out.push(start..end),
        }
    }
    out.into_iter()
        .map(|w| base + w.start..base + w.end)
        .collect()
}

impl SourceCode for Excerpt {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let read = self
            .text
            .as_str()
            .read_span(span, context_lines_before, context_lines_after)?;
        let column = if context_lines_before == 0 {
            // The real column of the span's start (miette counts bytes).
            let real = self.to_real(span.offset());
            let line = self
                .lines
                .partition_point(|(at, _)| *at <= span.offset())
                .saturating_sub(1);
            real - self.lines.get(line).map_or(0, |(_, start)| *start)
        } else {
            read.column()
        };
        let line = self.first_line + read.line();
        let line_count = self.first_line + read.line_count();
        let (data, span) = (read.data(), *read.span());
        Ok(Box::new(match &self.name {
            Some(name) => {
                MietteSpanContents::new_named(name.clone(), data, span, line, column, line_count)
            }
            None => MietteSpanContents::new(data, span, line, column, line_count),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::{Problem, SourceFile};
    use std::fmt::Write as _;

    fn render(problem: Problem) -> String {
        let handler =
            miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
                .with_width(100);
        let mut out = String::new();
        handler
            .render_report(&mut out, &Bounded::new(Box::new(problem)))
            .unwrap();
        out
    }

    #[test]
    fn a_label_far_along_a_long_line_is_shown_in_a_window_with_its_real_column() {
        let text = format!("a = 1\nb = \"{}\", bogus = 1\nc = 2\n", "x".repeat(70_000));
        let at = text.find("bogus").unwrap();
        let file = SourceFile::new("m.toml", text);
        let shown = render(Problem::at(
            "t::x",
            &file,
            at..at + 5,
            "unknown key",
            "here",
        ));
        assert!(shown.contains("[m.toml:2:70009]"), "{shown}");
        assert!(shown.contains(&format!("{ELLIPSIS}xxxx")), "{shown}");
        assert!(shown.contains("\", bogus = 1"), "{shown}");
        assert!(
            shown.contains("a = 1") && shown.contains("c = 2"),
            "{shown}"
        );
        assert!(shown.len() < 1500, "{} bytes:\n{shown}", shown.len());
    }

    #[test]
    fn a_label_spanning_a_long_line_keeps_both_ends_in_view() {
        let text = format!("[{}]", "7, ".repeat(30_000));
        let len = text.len();
        let file = SourceFile::new("w.json", text);
        let shown = render(Problem::at("t::x", &file, 0..len, "not an object", "this"));
        assert!(shown.contains("[w.json:1:1]"), "{shown}");
        assert!(
            shown.contains("[7, 7,") && shown.contains("7, ]"),
            "{shown}"
        );
        assert!(shown.len() < 1500, "{} bytes:\n{shown}", shown.len());
    }

    #[test]
    fn a_label_over_many_lines_is_cut_to_its_first_line_and_far_lines_are_left_out() {
        let text: String = (0..5000).fold(String::new(), |mut text, n| {
            let _ = writeln!(text, "line {n}");
            text
        });
        let far = text.find("line 4000").unwrap();
        let file = SourceFile::new("f", text.clone());
        let shown = render(
            Problem::at("t::x", &file, 0..text.len(), "whole file", "all of it")
                .with_label(far..far + 4, "this one"),
        );
        assert!(
            shown.contains("line 0") && shown.contains("line 4000"),
            "{shown}"
        );
        assert!(!shown.contains("line 2000"), "{shown}");
        assert!(shown.contains(" 4001 │ line 4000"), "{shown}");
        assert!(shown.len() < 1500, "{} bytes:\n{shown}", shown.len());
    }

    #[test]
    fn short_sources_are_shown_as_they_are() {
        let file = SourceFile::new("m.toml", "a = 1\nb = ?\n");
        let problem = Problem::at("t::x", &file, 10..11, "bad", "here");
        let plain = {
            let handler = miette::GraphicalReportHandler::new_themed(
                miette::GraphicalTheme::unicode_nocolor(),
            )
            .with_width(100);
            let mut out = String::new();
            handler.render_report(&mut out, &problem).unwrap();
            out
        };
        assert_eq!(render(problem), plain);
    }

    #[test]
    fn long_messages_are_shortened() {
        let long = "k".repeat(70_000);
        let shown = shorten(&format!("unknown key `{long}`"));
        assert!(shown.chars().count() < MAX_TEXT_CHARS + 60, "{shown}");
        assert!(shown.starts_with("unknown key `kkk") && shown.ends_with("kkk`"));
        assert!(shown.contains("characters left out"));
    }
}
