//! A filled workflow kept as its compact JSON text, shared: the form a job carries from the
//! planner to the POST body and the report. Knows nothing of jobs or templates.
//!
//! A `serde_json::Value` of the shipped txt2img workflow takes about 11 KiB of small
//! allocations; its text is under 1 KiB. Jobs, the report (`prompt`) and retries share one
//! `Arc`, so a 10,000-job run holds each workflow once.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// API-format workflow JSON (an object of nodes), compact, shared. Serializes as the JSON
/// itself, not as a string.
#[derive(Clone)]
pub struct Workflow(Arc<RawValue>);

impl Workflow {
    /// Compact JSON text that is known to be valid (the planner's own output).
    pub(crate) fn from_json_text(text: String) -> Workflow {
        let raw = RawValue::from_string(text).expect("the planner writes valid JSON");
        Workflow(Arc::from(raw))
    }

    pub fn from_value(value: &Value) -> Workflow {
        Workflow::from_json_text(serde_json::to_string(value).expect("a Value serializes"))
    }

    /// The compact JSON text, exactly what is sent.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    pub fn raw(&self) -> &RawValue {
        &self.0
    }

    /// Parsed (a fresh `Value` each call: for inspection, not the hot path).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.json()).expect("a Workflow holds valid JSON")
    }
}

impl From<Value> for Workflow {
    fn from(value: Value) -> Workflow {
        Workflow::from_value(&value)
    }
}

impl PartialEq for Workflow {
    fn eq(&self, other: &Workflow) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.json() == other.json()
    }
}

impl fmt::Debug for Workflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

impl Serialize for Workflow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
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
