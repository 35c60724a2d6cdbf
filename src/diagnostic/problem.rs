//! Spanned, user-facing problems in a file the user named (a manifest, a workflow template,
//! a run report).
//!
//! Each problem carries the file it is about and the exact bytes to underline, so miette can
//! print `file:line:col` with the source. Manifest, workflow and report checks build these;
//! nothing here reads files or decides what is wrong.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};

/// A file as shown under a diagnostic: its display name and its full text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    name: String,
    text: Arc<String>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            text: Arc::new(text.into()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The byte offset of a 1-based line and column as parsers count them (`serde_json`'s
    /// column counts bytes), kept inside the text.
    pub fn offset_of(&self, line: usize, column: usize) -> usize {
        let line_start: usize = self
            .text
            .split_inclusive('\n')
            .take(line.saturating_sub(1))
            .map(str::len)
            .sum();
        (line_start + column.saturating_sub(1)).min(self.text.len())
    }
}

/// One problem: what is wrong, where (labels in one file), and what to do about it.
#[derive(Debug)]
pub struct Problem {
    code: &'static str,
    message: String,
    source: Option<Box<NamedSource<Arc<String>>>>,
    labels: Vec<LabeledSpan>,
    help: Option<String>,
    /// Where the first label starts; problems are listed in file order.
    offset: usize,
}

impl Problem {
    /// A problem underlining `span` of `file`.
    pub fn at(
        code: &'static str,
        file: &SourceFile,
        span: Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Self {
        let span = clamp(span, file.text());
        Self {
            code,
            message: message.into(),
            source: Some(Box::new(NamedSource::new(
                &file.name,
                Arc::clone(&file.text),
            ))),
            offset: span.start,
            labels: vec![LabeledSpan::new_primary_with_span(Some(label.into()), span)],
            help: None,
        }
    }

    /// A problem that is about no particular bytes (an unreadable file, for instance).
    pub fn bare(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            source: None,
            labels: Vec::new(),
            help: None,
            offset: 0,
        }
    }

    /// A `serde_json` error in `file`, underlined at its line and column; the message is
    /// `what`, then `serde_json`'s (without its own "at line ... column ...").
    pub fn json_error(
        code: &'static str,
        file: &SourceFile,
        err: &serde_json::Error,
        what: &str,
    ) -> Self {
        let at = file.offset_of(err.line(), err.column());
        let message = err.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message);
        Self::at(
            code,
            file,
            at..(at + 1).min(file.text().len()),
            format!("{what}: {message}"),
            "here",
        )
    }

    /// Underline more bytes of the same file.
    #[must_use]
    pub fn with_label(mut self, span: Range<usize>, label: impl Into<String>) -> Self {
        let text = self.source.as_ref().map_or("", |s| s.inner().as_str());
        let span = clamp(span, text);
        self.labels
            .push(LabeledSpan::new_with_span(Some(label.into()), span));
        self
    }

    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The name of the file this problem is about, if any.
    pub fn file_name(&self) -> Option<&str> {
        self.source.as_ref().map(|s| s.name())
    }

    /// Byte offset of the primary label, for ordering problems within a file.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

/// Keep a span inside the text and on character boundaries, so a renderer never indexes
/// past the end or into the middle of a character.
fn clamp(span: Range<usize>, text: &str) -> Range<usize> {
    let mut start = span.start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = span.end.clamp(start, text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    start..end
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source.as_deref().map(|s| s as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_clamped_to_the_text_and_its_characters() {
        assert_eq!(clamp(5..9, "1234567"), 5..7);
        assert_eq!(clamp(9..12, "1234567"), 7..7);
        // "é" is bytes 1..3: a span starting or ending inside it grows to cover it.
        assert_eq!(clamp(2..3, "aéb"), 1..3);
        assert_eq!(clamp(0..2, "aéb"), 0..3);
    }
}
