//! The canonical JSON of a workflow and the job hash built on it (documented in
//! `docs/manifest.md`): `serde_json`'s compact form with every object's keys sorted by their
//! UTF-8 bytes, hashed with sha256 after a versioned prefix.

use std::collections::HashMap;
use std::io::Write;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// What the job hash starts with; a new canonical form would get a new version.
pub const JOB_HASH_PREFIX: &[u8] = b"plasma-batch/job/v1\n";

/// A job hash: sha256 of [`JOB_HASH_PREFIX`] and the canonical JSON of what would be sent,
/// kept as 32 bytes (hex wherever it leaves the program).
pub type JobHash = crate::digest::Sha256Digest;

/// sha256 of [`JOB_HASH_PREFIX`] and the canonical JSON of `workflow`.
pub fn job_hash(workflow: &Value) -> JobHash {
    let mut hasher = Sha256::new();
    hasher.update(JOB_HASH_PREFIX);
    let mut segments = Segments::default();
    write(workflow, &mut Vec::new(), &HashMap::new(), &mut segments);
    for segment in &segments.0 {
        if let Segment::Bytes(bytes) = segment {
            hasher.update(bytes);
        }
    }
    hasher.finalize().into()
}

/// One step from a value to a value inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// A template's canonical JSON with holes where its slots go, computed once so hashing a
/// job is a few `update` calls instead of a walk and a sort per object.
#[derive(Debug, Clone, Default)]
pub struct Segments(Vec<Segment>);

#[derive(Debug, Clone)]
enum Segment {
    Bytes(Vec<u8>),
    /// The value of slot `n`, serialized as `serde_json` does.
    Slot(usize),
}

impl Segment {
    fn len(&self) -> usize {
        match self {
            Segment::Bytes(bytes) => bytes.len(),
            Segment::Slot(_) => 16,
        }
    }
}

impl Segments {
    /// The canonical form of `graph`, where the value at `slots[path]` is left as a hole.
    pub fn new(graph: &Value, slots: &HashMap<Vec<Step>, usize>) -> Self {
        let mut segments = Segments::default();
        write(graph, &mut Vec::new(), slots, &mut segments);
        segments
    }

    /// The compact JSON of `graph` in its own key order (as `serde_json` writes it), with the
    /// value at `slots[path]` left as a hole: filling a job is then a few appends.
    pub fn ordered(graph: &Value, slots: &HashMap<Vec<Step>, usize>) -> Self {
        let mut segments = Segments::default();
        write_in(graph, &mut Vec::new(), slots, &mut segments, false);
        segments
    }

    /// The text with `filled[n]` in hole `n`, each written as `serde_json` writes it.
    pub fn fill_text(&self, filled: &[Value]) -> String {
        let mut text = Vec::with_capacity(self.0.iter().map(Segment::len).sum::<usize>() + 64);
        for segment in &self.0 {
            match segment {
                Segment::Bytes(bytes) => text.extend_from_slice(bytes),
                Segment::Slot(n) => {
                    // Writing into a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut text, &filled[*n]);
                }
            }
        }
        String::from_utf8(text).expect("serde_json writes UTF-8")
    }

    /// The job hash of the graph with `filled[n]` in hole `n`; equal to [`job_hash`] of the
    /// filled graph.
    pub fn job_hash(&self, filled: &[Value]) -> JobHash {
        let mut hasher = Sha256::new();
        hasher.update(JOB_HASH_PREFIX);
        for segment in &self.0 {
            match segment {
                Segment::Bytes(bytes) => hasher.update(bytes),
                Segment::Slot(n) => {
                    // Writing into a hasher cannot fail.
                    let _ = serde_json::to_writer(&mut hasher, &filled[*n]);
                }
            }
        }
        let _ = hasher.flush();
        hasher.finalize().into()
    }

    fn bytes(&mut self, bytes: &[u8]) {
        match self.0.last_mut() {
            Some(Segment::Bytes(last)) => last.extend_from_slice(bytes),
            _ => self.0.push(Segment::Bytes(bytes.to_vec())),
        }
    }

    fn json(&mut self, value: &Value) {
        let text = serde_json::to_vec(value).unwrap_or_default();
        self.bytes(&text);
    }
}

fn write(
    value: &Value,
    path: &mut Vec<Step>,
    slots: &HashMap<Vec<Step>, usize>,
    out: &mut Segments,
) {
    write_in(value, path, slots, out, true);
}

/// `sorted`: keys by their UTF-8 bytes (canonical); otherwise in the map's own order.
fn write_in(
    value: &Value,
    path: &mut Vec<Step>,
    slots: &HashMap<Vec<Step>, usize>,
    out: &mut Segments,
    sorted: bool,
) {
    if let Some(n) = slots.get(path.as_slice()) {
        out.0.push(Segment::Slot(*n));
        return;
    }
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            if sorted {
                entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            }
            out.bytes(b"{");
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.bytes(b",");
                }
                out.json(&Value::from(key.as_str()));
                out.bytes(b":");
                path.push(Step::Key(key.clone()));
                write_in(item, path, slots, out, sorted);
                path.pop();
            }
            out.bytes(b"}");
        }
        Value::Array(items) => {
            out.bytes(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.bytes(b",");
                }
                path.push(Step::Index(i));
                write_in(item, path, slots, out, sorted);
                path.pop();
            }
            out.bytes(b"]");
        }
        scalar => out.json(scalar),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_hash_is_hex_at_the_edges() {
        let hash = job_hash(&json!({"a": 1}));
        let hex = hash.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(JobHash::from_hex(&hex), Some(hash));
        assert_eq!(serde_json::to_value(hash).unwrap(), json!(hex));
        assert!(hash == hex);
        let back: JobHash = serde_json::from_value(json!(hex)).unwrap();
        assert_eq!(back, hash);
    }

    #[test]
    fn the_hash_ignores_key_order_but_not_values() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": "é", "x": [1, 2]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a": {"x": [1, 2], "y": "é"}, "b": 1}"#).unwrap();
        assert_eq!(job_hash(&a), job_hash(&b));
        assert_ne!(
            job_hash(&a),
            job_hash(&json!({"a": {"x": [2, 1], "y": "é"}, "b": 1}))
        );
    }

    #[test]
    fn the_canonical_form_is_compact_and_sorted() {
        let value: Value = serde_json::from_str(r#"{"b": [1, "\n"], "a": 2.5}"#).unwrap();
        let segments = Segments::new(&value, &HashMap::new());
        let Segment::Bytes(bytes) = &segments.0[0] else {
            panic!("no holes were asked for")
        };
        assert_eq!(String::from_utf8_lossy(bytes), r#"{"a":2.5,"b":[1,"\n"]}"#);
    }

    #[test]
    fn holes_hash_like_the_filled_value() {
        let template = json!({"n": {"inputs": {"seed": "{{seed}}", "x": ["a", "{{p}}"]}}});
        let seed_path = ["n", "inputs", "seed"]
            .map(|k| Step::Key(k.into()))
            .to_vec();
        let mut p_path = ["n", "inputs", "x"].map(|k| Step::Key(k.into())).to_vec();
        p_path.push(Step::Index(1));
        let slots = HashMap::from([(seed_path, 0), (p_path, 1)]);
        let segments = Segments::new(&template, &slots);
        let filled = [json!(u64::MAX), json!("q\"{{seed}}")];
        let expected = json!({"n": {"inputs": {"seed": u64::MAX, "x": ["a", "q\"{{seed}}"]}}});
        assert_eq!(segments.job_hash(&filled), job_hash(&expected));
    }
}
