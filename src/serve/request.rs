//! `POST /jobs` bodies: parsed from raw JSON so every problem is reported at once, each with
//! its field and reason, and normalised into a [`JobRequest`] with every default filled in.
//! Ranges are the manifest's (`docs/manifest.md`). Knows nothing of HTTP or the engine.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::manifest::diagnostic::did_you_mean;
use crate::manifest::model::{
    DEFAULT_CFG, DEFAULT_CHECKPOINT, DEFAULT_HEIGHT, DEFAULT_NEGATIVE, DEFAULT_SAMPLER,
    DEFAULT_SCHEDULER, DEFAULT_STEPS, DEFAULT_WIDTH,
};
use crate::manifest::parse::SCHEDULERS;
use crate::plan::{DERIVED_SEED_MASK, LoraParams};

/// The fields `POST /jobs` takes.
pub const FIELDS: [&str; 12] = [
    "prompt_text",
    "negative_prompt",
    "seed",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "checkpoint_name",
    "lora",
    "resolution",
    "chapter",
    "page",
];
const LORA_FIELDS: [&str; 3] = ["name", "strength_model", "strength_clip"];
const RESOLUTION_FIELDS: [&str; 2] = ["width", "height"];
/// Prompts longer than this are refused (a CLIP encoder reads 77 tokens; this is generous).
const MAX_TEXT_BYTES: usize = 64 * 1024;

/// A checked job request with every default applied; stored with the job, and accepted
/// back by `POST /jobs` unchanged (so a client can reproduce a job from its record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    pub prompt_text: String,
    pub negative_prompt: String,
    pub seed: u64,
    pub steps: u32,
    pub cfg: f64,
    pub sampler: String,
    pub scheduler: String,
    pub checkpoint_name: String,
    pub lora: Option<LoraParams>,
    pub resolution: Resolution,
    pub chapter: u16,
    pub page: u16,
}

/// A checked request, and whether its seed was drawn here (the body gave none).
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub request: JobRequest,
    pub seed_drawn: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub width: u32,
    pub height: u32,
}

/// One problem with a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    /// The field, dotted for nested ones (`resolution.width`); empty for the body itself.
    pub field: String,
    pub reason: String,
}

impl FieldProblem {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldProblem {
        FieldProblem {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A seed for a job that gave none: random, within the 53 bits every JSON reader keeps.
pub fn draw_seed() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0 & DERIVED_SEED_MASK
}

/// Parse and check a request body. Every problem is returned, in field order.
pub fn parse(body: &[u8]) -> Result<Checked, Vec<FieldProblem>> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        vec![FieldProblem::new(
            "",
            format!("the body is not valid JSON: {e}"),
        )]
    })?;
    let Value::Object(map) = value else {
        return Err(vec![FieldProblem::new(
            "",
            "the body must be a JSON object such as {\"prompt_text\": \"...\"}",
        )]);
    };
    let mut c = Checker::default();
    c.unknown(&map, "", &FIELDS);
    let prompt_text = match map.get("prompt_text") {
        None | Some(Value::Null) => {
            c.problem("prompt_text", "is required");
            None
        }
        Some(v) => c.text(v, "prompt_text", false),
    };
    let negative_prompt = c
        .optional(&map, "negative_prompt", |c, v| {
            c.text(v, "negative_prompt", true)
        })
        .unwrap_or_else(|| Some(DEFAULT_NEGATIVE.to_owned()));
    let seed = c.optional(&map, "seed", |c, v| {
        c.integer(v, "seed", 0..=u64::MAX as i128, "KSampler's range")
            .map(|n| n as u64)
    });
    let steps = c
        .optional(&map, "steps", |c, v| {
            c.integer(v, "steps", 1..=10000, "KSampler takes 1..=10000 steps")
                .map(|n| n as u32)
        })
        .unwrap_or(Some(DEFAULT_STEPS));
    let cfg = c
        .optional(&map, "cfg", |c, v| {
            c.number(
                v,
                "cfg",
                0.0..=100.0,
                "KSampler takes cfg from 0.0 to 100.0",
            )
        })
        .unwrap_or(Some(DEFAULT_CFG));
    let sampler = c
        .optional(&map, "sampler", |c, v| c.text(v, "sampler", false))
        .unwrap_or_else(|| Some(DEFAULT_SAMPLER.to_owned()));
    let scheduler = c
        .optional(&map, "scheduler", |c, v| c.scheduler(v))
        .unwrap_or_else(|| Some(DEFAULT_SCHEDULER.to_owned()));
    let checkpoint_name = c
        .optional(&map, "checkpoint_name", |c, v| {
            c.text(v, "checkpoint_name", false)
        })
        .unwrap_or_else(|| Some(DEFAULT_CHECKPOINT.to_owned()));
    let lora = c.optional(&map, "lora", |c, v| c.lora(v));
    let resolution = c
        .optional(&map, "resolution", |c, v| c.resolution(v))
        .unwrap_or(Some(Resolution {
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
        }));
    let chapter = c
        .optional(&map, "chapter", |c, v| {
            c.integer(v, "chapter", 1..=999, "chapter numbers are 1..=999")
                .map(|n| n as u16)
        })
        .unwrap_or(Some(1));
    let page = c
        .optional(&map, "page", |c, v| {
            c.integer(v, "page", 1..=999, "page numbers are 1..=999")
                .map(|n| n as u16)
        })
        .unwrap_or(Some(1));
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    let given = seed.flatten();
    // Every value is `Some` when no problem was recorded.
    let request = JobRequest {
        prompt_text: prompt_text.expect("checked"),
        negative_prompt: negative_prompt.expect("checked"),
        seed: given.unwrap_or_else(draw_seed),
        steps: steps.expect("checked"),
        cfg: cfg.expect("checked"),
        sampler: sampler.expect("checked"),
        scheduler: scheduler.expect("checked"),
        checkpoint_name: checkpoint_name.expect("checked"),
        lora: lora.flatten(),
        resolution: resolution.expect("checked"),
        chapter: chapter.expect("checked"),
        page: page.expect("checked"),
    };
    Ok(Checked {
        request,
        seed_drawn: given.is_none(),
    })
}

#[derive(Default)]
struct Checker {
    problems: Vec<FieldProblem>,
}

impl Checker {
    fn problem(&mut self, field: &str, reason: impl Into<String>) {
        self.problems.push(FieldProblem::new(field, reason));
    }

    fn unknown(&mut self, map: &Map<String, Value>, prefix: &str, known: &[&str]) {
        for key in map.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let hint = match did_you_mean(key, known) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!("known fields: {}", known.join(", ")),
            };
            self.problem(&format!("{prefix}{key}"), format!("unknown field; {hint}"));
        }
    }

    /// `None` (outer) when absent or null; `Some(None)` when present but invalid.
    fn optional<T>(
        &mut self,
        map: &Map<String, Value>,
        field: &str,
        check: impl FnOnce(&mut Self, &Value) -> Option<T>,
    ) -> Option<Option<T>> {
        match map.get(field) {
            None | Some(Value::Null) => None,
            Some(v) => Some(check(self, v)),
        }
    }

    fn text(&mut self, v: &Value, field: &str, allow_empty: bool) -> Option<String> {
        let Value::String(s) = v else {
            self.problem(field, format!("must be a string, found {}", kind(v)));
            return None;
        };
        if !allow_empty && s.trim().is_empty() {
            self.problem(field, "must not be empty");
            return None;
        }
        if s.len() > MAX_TEXT_BYTES {
            self.problem(field, format!("is longer than {MAX_TEXT_BYTES} bytes"));
            return None;
        }
        Some(s.clone())
    }

    fn integer(
        &mut self,
        v: &Value,
        field: &str,
        range: std::ops::RangeInclusive<i128>,
        help: &str,
    ) -> Option<i128> {
        let n = match v {
            Value::Number(n) => n
                .as_u64()
                .map(i128::from)
                .or_else(|| n.as_i64().map(i128::from)),
            _ => None,
        };
        let Some(n) = n else {
            self.problem(field, format!("must be an integer, found {}", describe(v)));
            return None;
        };
        if !range.contains(&n) {
            self.problem(
                field,
                format!(
                    "must be in {}..={}, found {n} ({help})",
                    range.start(),
                    range.end()
                ),
            );
            return None;
        }
        Some(n)
    }

    fn number(
        &mut self,
        v: &Value,
        field: &str,
        range: std::ops::RangeInclusive<f64>,
        help: &str,
    ) -> Option<f64> {
        let Some(x) = v.as_f64().filter(|_| v.is_number()) else {
            self.problem(field, format!("must be a number, found {}", describe(v)));
            return None;
        };
        if !range.contains(&x) {
            self.problem(
                field,
                format!(
                    "must be in {:?}..={:?}, found {x} ({help})",
                    range.start(),
                    range.end()
                ),
            );
            return None;
        }
        Some(x)
    }

    fn scheduler(&mut self, v: &Value) -> Option<String> {
        let name = self.text(v, "scheduler", false)?;
        if SCHEDULERS.contains(&name.as_str()) {
            return Some(name);
        }
        let hint = match did_you_mean(&name, SCHEDULERS) {
            Some(close) => format!("did you mean `{close}`?"),
            None => format!("KSampler's schedulers are: {}", SCHEDULERS.join(", ")),
        };
        self.problem("scheduler", format!("unknown scheduler `{name}`; {hint}"));
        None
    }

    fn dimension(&mut self, v: &Value, field: &str) -> Option<u32> {
        let n = self.integer(
            v,
            field,
            16..=16384,
            "EmptyLatentImage takes 16..=16384 pixels",
        )?;
        if n % 8 != 0 {
            let (down, up) = (n / 8 * 8, n / 8 * 8 + 8);
            self.problem(
                field,
                format!("must be a multiple of 8, found {n}; use {down} or {up}"),
            );
            return None;
        }
        Some(n as u32)
    }

    fn resolution(&mut self, v: &Value) -> Option<Resolution> {
        let Value::Object(map) = v else {
            self.problem(
                "resolution",
                format!(
                    "must be an object {{\"width\": W, \"height\": H}}, found {}",
                    kind(v)
                ),
            );
            return None;
        };
        self.unknown(map, "resolution.", &RESOLUTION_FIELDS);
        let side = |c: &mut Self, name: &str| match map.get(name) {
            None | Some(Value::Null) => {
                c.problem(&format!("resolution.{name}"), "is required");
                None
            }
            Some(v) => c.dimension(v, &format!("resolution.{name}")),
        };
        let width = side(self, "width");
        let height = side(self, "height");
        Some(Resolution {
            width: width?,
            height: height?,
        })
    }

    fn lora(&mut self, v: &Value) -> Option<LoraParams> {
        let Value::Object(map) = v else {
            self.problem(
                "lora",
                format!(
                    "must be an object {{\"name\": \"...\", \"strength_model\": 1.0, \"strength_clip\": 1.0}}, found {}",
                    kind(v)
                ),
            );
            return None;
        };
        self.unknown(map, "lora.", &LORA_FIELDS);
        let name = match map.get("name") {
            None | Some(Value::Null) => {
                self.problem("lora.name", "is required");
                None
            }
            Some(v) => self.text(v, "lora.name", false),
        };
        let help = "LoraLoader takes strengths from -100.0 to 100.0 (1.0 is full strength)";
        let strength = |c: &mut Self, key: &str| match map.get(key) {
            None | Some(Value::Null) => Some(1.0),
            Some(v) => c.number(v, &format!("lora.{key}"), -100.0..=100.0, help),
        };
        let strength_model = strength(self, "strength_model");
        let strength_clip = strength(self, "strength_clip");
        Some(LoraParams {
            name: name?,
            strength_model: strength_model?,
            strength_clip: strength_clip?,
        })
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        other => kind(other).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(body: &str) -> Vec<String> {
        parse(body.as_bytes())
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect()
    }

    #[test]
    fn defaults_and_a_drawn_seed() {
        let c = parse(br#"{"prompt_text": "a harbour"}"#).unwrap();
        let r = &c.request;
        assert_eq!((r.chapter, r.page, r.steps), (1, 1, DEFAULT_STEPS));
        assert!(c.seed_drawn && r.seed <= DERIVED_SEED_MASK);
        assert_eq!(r.resolution.width, DEFAULT_WIDTH);
        // A stored request is accepted back as it is.
        let again = parse(&serde_json::to_vec(r).unwrap()).unwrap();
        assert_eq!((&again.request, again.seed_drawn), (r, false));
        let c = parse(br#"{"prompt_text": "a", "seed": 18446744073709551615}"#).unwrap();
        assert!(!c.seed_drawn && c.request.seed == u64::MAX);
    }

    #[test]
    fn every_problem_is_named() {
        assert_eq!(
            fields(
                r#"{"prompt_text": " ", "steps": 0, "cfg": "7", "seed": -1, "scheduler": "karas",
                   "resolution": {"width": 65, "hieght": 64}, "chapter": 1000, "page": 1.5,
                   "lora": {"strength_model": 200}, "colour": 1}"#
            ),
            [
                "colour",
                "prompt_text",
                "seed",
                "steps",
                "cfg",
                "scheduler",
                "lora.name",
                "lora.strength_model",
                "resolution.hieght",
                "resolution.width",
                "resolution.height",
                "chapter",
                "page"
            ]
        );
        assert_eq!(fields("[1]"), [""]);
        assert_eq!(fields("{"), [""]);
        assert_eq!(fields("{}"), ["prompt_text"]);
    }
}
