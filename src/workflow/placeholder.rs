//! Template placeholders: `{{name}}` inside a JSON string of a node's inputs.

use serde_json::Value;

/// Every placeholder a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Placeholder {
    Seed,
    Prompt,
    Negative,
    Checkpoint,
    Steps,
    Cfg,
    Sampler,
    Scheduler,
    Width,
    Height,
    LoraName,
    LoraStrengthModel,
    LoraStrengthClip,
    FilenamePrefix,
}

impl Placeholder {
    pub const ALL: [Placeholder; 14] = [
        Placeholder::Seed,
        Placeholder::Prompt,
        Placeholder::Negative,
        Placeholder::Checkpoint,
        Placeholder::Steps,
        Placeholder::Cfg,
        Placeholder::Sampler,
        Placeholder::Scheduler,
        Placeholder::Width,
        Placeholder::Height,
        Placeholder::LoraName,
        Placeholder::LoraStrengthModel,
        Placeholder::LoraStrengthClip,
        Placeholder::FilenamePrefix,
    ];

    pub const NAMES: [&'static str; 14] = [
        "seed",
        "prompt",
        "negative",
        "checkpoint",
        "steps",
        "cfg",
        "sampler",
        "scheduler",
        "width",
        "height",
        "lora_name",
        "lora_strength_model",
        "lora_strength_clip",
        "filename_prefix",
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Self::ALL[i])
    }

    /// Whether this placeholder only has a value on pages with a LoRA.
    pub fn needs_lora(self) -> bool {
        matches!(
            self,
            Placeholder::LoraName | Placeholder::LoraStrengthModel | Placeholder::LoraStrengthClip
        )
    }
}

/// One job's placeholder values; a missing entry means the job has no value for it.
#[derive(Debug, Clone, Default)]
pub struct SlotValues {
    values: [Option<Value>; 14],
}

impl SlotValues {
    pub fn set(&mut self, placeholder: Placeholder, value: impl Into<Value>) {
        self.values[placeholder as usize] = Some(value.into());
    }

    pub fn get(&self, placeholder: Placeholder) -> Option<&Value> {
        self.values[placeholder as usize].as_ref()
    }
}

/// A part of a template string that mixes text and placeholders.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Slot(Placeholder),
}

/// What a template string is, as far as filling goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Scanned {
    /// No placeholder: left as it is.
    Literal,
    /// Exactly one placeholder and nothing else: replaced by the typed value.
    Whole(Placeholder),
    /// Placeholders inside text: substituted as text.
    Pieces(Vec<Piece>),
}

/// Split a template string into text and placeholders. `{{` not followed by a name
/// (`[A-Za-z0-9_]+`) and `}}` is ordinary text. Returns the unknown names on error.
pub fn scan(s: &str) -> Result<Scanned, Vec<String>> {
    let mut pieces = Vec::new();
    let mut unknown = Vec::new();
    let mut text_start = 0;
    let mut pos = 0;
    while let Some(found) = s[pos..].find("{{") {
        let open = pos + found;
        let name_start = open + 2;
        let name_len = s[name_start..]
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let name_end = name_start + name_len;
        if name_len == 0 || !s[name_end..].starts_with("}}") {
            pos = open + 1;
            continue;
        }
        let name = &s[name_start..name_end];
        match Placeholder::from_name(name) {
            Some(p) => {
                if open > text_start {
                    pieces.push(Piece::Text(s[text_start..open].to_owned()));
                }
                pieces.push(Piece::Slot(p));
            }
            None => unknown.push(name.to_owned()),
        }
        pos = name_end + 2;
        text_start = pos;
    }
    if !unknown.is_empty() {
        return Err(unknown);
    }
    if text_start < s.len() && !pieces.is_empty() {
        pieces.push(Piece::Text(s[text_start..].to_owned()));
    }
    Ok(match pieces.as_slice() {
        [] => Scanned::Literal,
        [Piece::Slot(p)] => Scanned::Whole(*p),
        _ => Scanned::Pieces(pieces),
    })
}

/// The text a value stands for inside a longer string: strings as they are, numbers as JSON.
pub fn as_text(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => out.push_str(s),
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Placeholder::ALL {
            assert_eq!(Placeholder::from_name(p.name()), Some(p));
        }
    }

    #[test]
    fn whole_string_is_typed() {
        assert_eq!(scan("{{seed}}"), Ok(Scanned::Whole(Placeholder::Seed)));
        assert_eq!(scan("plain"), Ok(Scanned::Literal));
    }

    #[test]
    fn placeholders_inside_text_are_pieces() {
        assert_eq!(
            scan("a {{prompt}}, {{steps}} steps"),
            Ok(Scanned::Pieces(vec![
                Piece::Text("a ".into()),
                Piece::Slot(Placeholder::Prompt),
                Piece::Text(", ".into()),
                Piece::Slot(Placeholder::Steps),
                Piece::Text(" steps".into()),
            ]))
        );
    }

    #[test]
    fn braces_that_are_not_placeholders_stay_text() {
        assert_eq!(scan("{{ not one }} {{}} {{{"), Ok(Scanned::Literal));
        assert_eq!(
            scan("{{{seed}}"),
            Ok(Scanned::Pieces(vec![
                Piece::Text("{".into()),
                Piece::Slot(Placeholder::Seed)
            ]))
        );
    }

    #[test]
    fn unknown_names_are_reported() {
        assert_eq!(
            scan("{{sead}} and {{prompt}} {{Steps}}"),
            Err(vec!["sead".to_owned(), "Steps".to_owned()])
        );
    }
}
