//! Template placeholders: `{{name}}` inside a JSON string of a node's inputs. A name is a
//! built-in [`Placeholder`] or, any other identifier, a manifest variable's slot
//! ([`SlotName::Var`]); whether the manifest defines it is planning's question.

use std::collections::BTreeMap;
use std::sync::Arc;

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

    /// Their names, as written between `{{` and `}}`.
    pub const NAMES: [&'static str; 14] = crate::params::PLACEHOLDER_NAMES;

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

/// What a `{{name}}` in a template stands for: a built-in placeholder or a variable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlotName {
    Builtin(Placeholder),
    /// A manifest variable (`vars = { name = ... }`), by name.
    Var(Arc<str>),
}

impl SlotName {
    /// The built-in placeholder of that name, else a variable if `name` is an identifier.
    pub fn from_name(name: &str) -> Option<SlotName> {
        match Placeholder::from_name(name) {
            Some(p) => Some(SlotName::Builtin(p)),
            None if crate::params::is_var_name(name) => Some(SlotName::Var(name.into())),
            None => None,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            SlotName::Builtin(p) => p.name(),
            SlotName::Var(name) => name,
        }
    }

    /// Whether this is a built-in placeholder that only pages with a LoRA have a value for.
    pub fn needs_lora(&self) -> bool {
        matches!(self, SlotName::Builtin(p) if p.needs_lora())
    }
}

/// One job's placeholder values; a missing entry means the job has no value for it.
#[derive(Debug, Clone, Default)]
pub struct SlotValues {
    values: [Option<Value>; 14],
    vars: BTreeMap<Arc<str>, Value>,
}

impl SlotValues {
    pub fn set(&mut self, placeholder: Placeholder, value: impl Into<Value>) {
        self.values[placeholder as usize] = Some(value.into());
    }

    pub fn get(&self, placeholder: Placeholder) -> Option<&Value> {
        self.values[placeholder as usize].as_ref()
    }

    /// Give variable `name` its value.
    pub fn set_var(&mut self, name: &str, value: Value) {
        self.vars.insert(name.into(), value);
    }

    /// The value of a built-in placeholder or a variable.
    pub fn get_slot(&self, slot: &SlotName) -> Option<&Value> {
        match slot {
            SlotName::Builtin(p) => self.get(*p),
            SlotName::Var(name) => self.vars.get(name),
        }
    }
}

/// A part of a template string that mixes text and placeholders.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Slot(SlotName),
}

/// What a template string is, as far as filling goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Scanned {
    /// No placeholder: left as it is.
    Literal,
    /// Exactly one placeholder and nothing else: replaced by the typed value.
    Whole(SlotName),
    /// Placeholders inside text: substituted as text.
    Pieces(Vec<Piece>),
}

/// Split a template string into text and placeholders. `{{` not followed by a name
/// (`[A-Za-z0-9_]+`) and `}}` is ordinary text. A name that is no built-in placeholder is a
/// variable; one that cannot be a variable either (it starts with a digit) is returned as an
/// error, with every other such name.
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
        match SlotName::from_name(name) {
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
        [Piece::Slot(p)] => Scanned::Whole(p.clone()),
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

    fn builtin(p: Placeholder) -> SlotName {
        SlotName::Builtin(p)
    }

    #[test]
    fn names_round_trip() {
        for p in Placeholder::ALL {
            assert_eq!(Placeholder::from_name(p.name()), Some(p));
        }
    }

    #[test]
    fn whole_string_is_typed() {
        assert_eq!(
            scan("{{seed}}"),
            Ok(Scanned::Whole(builtin(Placeholder::Seed)))
        );
        assert_eq!(scan("plain"), Ok(Scanned::Literal));
    }

    #[test]
    fn placeholders_inside_text_are_pieces() {
        assert_eq!(
            scan("a {{prompt}}, {{steps}} steps"),
            Ok(Scanned::Pieces(vec![
                Piece::Text("a ".into()),
                Piece::Slot(builtin(Placeholder::Prompt)),
                Piece::Text(", ".into()),
                Piece::Slot(builtin(Placeholder::Steps)),
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
                Piece::Slot(builtin(Placeholder::Seed))
            ]))
        );
    }

    #[test]
    fn other_identifiers_are_variables() {
        assert_eq!(
            scan("{{sead}} and {{prompt}} {{Steps}}"),
            Ok(Scanned::Pieces(vec![
                Piece::Slot(SlotName::Var("sead".into())),
                Piece::Text(" and ".into()),
                Piece::Slot(builtin(Placeholder::Prompt)),
                Piece::Text(" ".into()),
                Piece::Slot(SlotName::Var("Steps".into())),
            ]))
        );
        assert_eq!(
            scan("{{_x1}}"),
            Ok(Scanned::Whole(SlotName::Var("_x1".into())))
        );
    }

    #[test]
    fn names_that_cannot_be_variables_are_reported() {
        assert_eq!(
            scan("{{1st}} and {{prompt}} {{9}}"),
            Err(vec!["1st".to_owned(), "9".to_owned()])
        );
    }
}
