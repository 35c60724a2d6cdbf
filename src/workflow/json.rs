//! A filled workflow: the form a job carries from the planner to the POST body and the
//! report. Knows nothing of jobs.
//!
//! A `serde_json::Value` of the shipped txt2img workflow takes about 11 KiB of small
//! allocations; its compact text is about 1 KiB. A planned workflow holds neither: it keeps
//! its page's values (shared by the page's variants, bound to the template) and its own
//! seed and filename prefix, and writes its text when it is sent or reported. A workflow
//! read back from a report (or built from a `Value`) is kept as its compact text.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use super::fill::{PageValues, Variant};

/// API-format workflow JSON (an object of nodes), compact. Serializes as the JSON itself,
/// not as a string. Cheap to clone.
#[derive(Clone)]
pub struct Workflow(Repr);

#[derive(Clone)]
enum Repr {
    /// Compact JSON text.
    Text(Arc<RawValue>),
    /// A template's page values plus this workflow's own: the text is written on demand.
    Filled(Arc<PageValues>, Variant),
}

impl Workflow {
    /// A workflow filled from `page`'s and `variant`'s values (checked to be complete).
    pub(crate) fn filled(page: Arc<PageValues>, variant: Variant) -> Workflow {
        Workflow(Repr::Filled(page, variant))
    }

    pub fn from_value(value: &Value) -> Workflow {
        let text = serde_json::to_string(value).expect("a Value serializes");
        let raw = RawValue::from_string(text).expect("serde_json writes valid JSON");
        Workflow(Repr::Text(Arc::from(raw)))
    }

    /// The compact JSON text, exactly what is sent (written now for a planned workflow).
    pub fn text(&self) -> Cow<'_, str> {
        match &self.0 {
            Repr::Text(raw) => Cow::Borrowed(raw.get()),
            Repr::Filled(page, variant) => Cow::Owned(page.text(variant)),
        }
    }

    /// Whether both were filled from the same template graph (the same nodes and classes;
    /// only values differ). A page with a LoRA stack has a graph of its own even though its
    /// workflow file, and so its `workflow_sha256`, is its template's.
    pub fn same_graph(&self, other: &Workflow) -> bool {
        match (&self.0, &other.0) {
            (Repr::Text(a), Repr::Text(b)) => Arc::ptr_eq(a, b),
            (Repr::Filled(a, _), Repr::Filled(b, _)) => Arc::ptr_eq(&a.text, &b.text),
            _ => false,
        }
    }

    /// Parsed (a fresh `Value` each call: for inspection, not the hot path).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.text()).expect("a Workflow holds valid JSON")
    }
}

impl From<Value> for Workflow {
    fn from(value: Value) -> Workflow {
        Workflow::from_value(&value)
    }
}

impl PartialEq for Workflow {
    fn eq(&self, other: &Workflow) -> bool {
        match (&self.0, &other.0) {
            (Repr::Text(a), Repr::Text(b)) if Arc::ptr_eq(a, b) => true,
            (Repr::Filled(a, x), Repr::Filled(b, y)) if Arc::ptr_eq(a, b) && x == y => true,
            _ => self.text() == other.text(),
        }
    }
}

impl fmt::Debug for Workflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl Serialize for Workflow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Text(raw) => raw.serialize(serializer),
            Repr::Filled(page, variant) => {
                let raw = RawValue::from_string(page.text(variant))
                    .expect("a template fills to valid JSON");
                raw.serialize(serializer)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Workflow {
    /// Read as a value and written compact again, so however a report was formatted, the
    /// text (and equality) is what the planner would produce.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Workflow, D::Error> {
        Ok(Workflow::from_value(&Value::deserialize(deserializer)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serializes_as_json_and_reads_back_equal() {
        let value =
            json!({"3": {"class_type": "KSampler", "inputs": {"seed": u64::MAX, "text": "a\"b"}}});
        let workflow = Workflow::from_value(&value);
        assert_eq!(serde_json::to_value(&workflow).unwrap(), value);
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        let back: Workflow = serde_json::from_str(&pretty).unwrap();
        assert_eq!(back, workflow);
        assert_eq!(back.to_value(), value);
    }
}
