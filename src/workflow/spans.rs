//! Byte spans of the keys and values of a JSON document, so template problems can point at
//! the node and input they are about. `serde_json`'s `Value` keeps no positions.

use std::ops::Range;

/// The shape of a JSON document with the byte span of every value and key.
#[derive(Debug, Clone, PartialEq)]
pub enum SpanTree {
    Object {
        span: Range<usize>,
        entries: Vec<Entry>,
    },
    Array {
        span: Range<usize>,
        items: Vec<SpanTree>,
    },
    Scalar {
        span: Range<usize>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_span: Range<usize>,
    pub value: SpanTree,
}

impl SpanTree {
    pub fn span(&self) -> Range<usize> {
        match self {
            SpanTree::Object { span, .. }
            | SpanTree::Array { span, .. }
            | SpanTree::Scalar { span } => span.clone(),
        }
    }

    /// The entry for `key`, if this is an object that has it (the last one wins, as in `serde_json`).
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        match self {
            SpanTree::Object { entries, .. } => entries.iter().rev().find(|e| e.key == key),
            _ => None,
        }
    }

    pub fn item(&self, index: usize) -> Option<&SpanTree> {
        match self {
            SpanTree::Array { items, .. } => items.get(index),
            _ => None,
        }
    }
}

/// Index `text`, which must already have parsed as JSON (`serde_json` checks syntax and depth).
pub fn index(text: &str) -> SpanTree {
    let mut scanner = Scanner {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    scanner.value()
}

struct Scanner<'t> {
    text: &'t str,
    bytes: &'t [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn skip_ws(&mut self) {
        while self
            .bytes
            .get(self.pos)
            .is_some_and(u8::is_ascii_whitespace)
        {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn value(&mut self) -> SpanTree {
        self.skip_ws();
        let start = self.pos;
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                let mut entries = Vec::new();
                loop {
                    self.skip_ws();
                    match self.peek() {
                        Some(b'}') | None => break,
                        Some(b',') => self.pos += 1,
                        _ => {
                            let key_span = self.string();
                            let key = serde_json::from_str(&self.text[key_span.clone()])
                                .unwrap_or_default();
                            self.skip_ws();
                            self.pos += 1; // the ':'
                            let value = self.value();
                            entries.push(Entry {
                                key,
                                key_span,
                                value,
                            });
                        }
                    }
                }
                self.pos += 1;
                SpanTree::Object {
                    span: start..self.pos.min(self.bytes.len()),
                    entries,
                }
            }
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    match self.peek() {
                        Some(b']') | None => break,
                        Some(b',') => self.pos += 1,
                        _ => items.push(self.value()),
                    }
                }
                self.pos += 1;
                SpanTree::Array {
                    span: start..self.pos.min(self.bytes.len()),
                    items,
                }
            }
            Some(b'"') => SpanTree::Scalar {
                span: self.string(),
            },
            _ => {
                while self
                    .peek()
                    .is_some_and(|b| !matches!(b, b',' | b']' | b'}') && !b.is_ascii_whitespace())
                {
                    self.pos += 1;
                }
                SpanTree::Scalar {
                    span: start..self.pos,
                }
            }
        }
    }

    /// A string literal starting at `pos`, quotes included.
    fn string(&mut self) -> Range<usize> {
        let start = self.pos;
        self.pos += 1;
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b'\\' => self.pos += 1,
                b'"' => break,
                _ => {}
            }
        }
        start..self.pos.min(self.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_values() {
        let text = r#"{ "3": {"inputs": {"seed": "{{seed}}", "model": ["4", 0]}}, "a\"b": 1.5e3 }"#;
        let tree = index(text);
        let node = tree.entry("3").unwrap();
        assert_eq!(&text[node.key_span.clone()], "\"3\"");
        let inputs = &node.value.entry("inputs").unwrap().value;
        assert_eq!(
            &text[inputs.entry("seed").unwrap().value.span()],
            "\"{{seed}}\""
        );
        let link = &inputs.entry("model").unwrap().value;
        assert_eq!(&text[link.span()], "[\"4\", 0]");
        assert_eq!(&text[link.item(1).unwrap().span()], "0");
        assert_eq!(&text[tree.entry("a\"b").unwrap().value.span()], "1.5e3");
        assert_eq!(tree.span(), 0..text.len());
    }
}
