//! The values a filled workflow is written from: a page's values bound to its template's
//! slots ([`PageValues`]), and what each variant adds ([`Variant`]). Both the template (which
//! fills) and the filled [`super::Workflow`] (which writes its text on demand) use these; this
//! file uses neither.

use std::sync::Arc;

use serde_json::Value;

use super::canonical::{Segments, Step};
use super::placeholder::{Piece, Placeholder, SlotName, SlotValues, as_text};

/// What writing a filled workflow's text needs: the slots, and the compact JSON in the
/// template's key order with a hole per slot.
#[derive(Debug)]
pub(crate) struct TextFill {
    pub(super) slots: Vec<Slot>,
    pub(super) compact: Segments,
}

impl TextFill {
    /// Every slot's value, in slot order.
    pub(super) fn values(&self, values: &Lookup<'_>) -> Result<Vec<Value>, SlotName> {
        self.slots.iter().map(|slot| slot.value(values)).collect()
    }
}

/// The values a page's workflows share (all but seed and filename prefix), bound to the
/// template they fill. Shared by the page's jobs; each adds its [`Variant`].
#[derive(Debug)]
pub struct PageValues {
    pub(super) text: Arc<TextFill>,
    pub(super) values: SlotValues,
}

impl PageValues {
    /// The compact JSON text of the workflow with `variant`'s values: what is sent. Only
    /// called for a variant [`Template::fill`] accepted, so no value is missing.
    pub(crate) fn text(&self, variant: &Variant) -> String {
        let lookup = Lookup {
            page: &self.values,
            variant,
        };
        let filled = self
            .text
            .values(&lookup)
            .expect("the job was filled from these values once");
        self.text.compact.fill_text(&filled)
    }
}

/// What one workflow adds to its page's values.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub seed: u64,
    pub filename_prefix: Arc<str>,
}

/// A page's values with one variant's on top.
pub(super) struct Lookup<'a> {
    pub(super) page: &'a SlotValues,
    pub(super) variant: &'a Variant,
}

impl Lookup<'_> {
    fn get(&self, slot: &SlotName) -> Option<Value> {
        match slot {
            SlotName::Builtin(Placeholder::Seed) => Some(Value::from(self.variant.seed)),
            SlotName::Builtin(Placeholder::FilenamePrefix) => {
                Some(Value::from(&*self.variant.filename_prefix))
            }
            other => self.page.get_slot(other).cloned(),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Slot {
    /// From the graph root: node id, "inputs", input name, then any nesting.
    pub(super) path: Vec<Step>,
    pub(super) fill: Fill,
}

impl Slot {
    fn value(&self, values: &Lookup<'_>) -> Result<Value, SlotName> {
        Ok(match &self.fill {
            Fill::Whole(p) => values.get(p).ok_or_else(|| p.clone())?,
            Fill::Pieces(pieces) => {
                let mut text = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => text.push_str(t),
                        Piece::Slot(p) => {
                            as_text(&values.get(p).ok_or_else(|| p.clone())?, &mut text);
                        }
                    }
                }
                Value::String(text)
            }
        })
    }
}

#[derive(Debug, Clone)]
pub(super) enum Fill {
    Whole(SlotName),
    Pieces(Vec<Piece>),
}
