//! `POST /jobs` bodies: parsed from raw JSON so every problem is reported at once, each with
//! its field and reason, and normalised into a [`JobRequest`] with every default filled in.
//! Ranges, and the help that says them, are the manifest's, from `params`
//! (`docs/manifest.md`). Knows nothing of HTTP or the engine.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::comfyui::{LATENT_STEP, SCHEDULERS};
use crate::diagnostic::did_you_mean;
use crate::params::{
    self, DEFAULT_CFG, DEFAULT_CHECKPOINT, DEFAULT_HEIGHT, DEFAULT_LORA_STRENGTH, DEFAULT_NEGATIVE,
    DEFAULT_SAMPLER, DEFAULT_SCHEDULER, DEFAULT_STEPS, DEFAULT_WIDTH, Limit, LoraParams,
};
use crate::plan::DERIVED_SEED_MASK;

/// The fields `POST /jobs` takes.
pub const FIELDS: [&str; 13] = [
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
    "images",
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
    /// Input images by slot (`{{source}}` in a `LoadImage` node's `image` input), as the
    /// service stored them (`serve::inputs`). Not written when none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, StoredImage>,
}

/// An input image the service keeps: `<out>/serve/inputs/<sha256>.<ext>`, named by content.
/// `POST /jobs` takes it back as `{"sha256": "..."}` (`path` may be given; it is derived).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredImage {
    pub sha256: String,
    /// Relative to the output root: `serve/inputs/<sha256>.png`.
    pub path: String,
}

/// Where a request's input image comes from, before the service stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// The bytes, sent base64 in JSON or as a multipart file part.
    Bytes(Vec<u8>),
    /// The image of an earlier job of this service, by job id.
    Job(String),
    /// An image the service already keeps, by its sha256 (lower-case hex).
    Stored(String),
}

/// A checked request, whether its seed was drawn here (the body gave none), and its input
/// images by slot (stored and put into `request.images` by the service).
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub request: JobRequest,
    pub seed_drawn: bool,
    pub images: BTreeMap<String, ImageSource>,
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
    parse_with(body, BTreeMap::new())
}

/// [`parse`] with image bytes sent beside the JSON (multipart file parts, by slot).
pub fn parse_with(
    body: &[u8],
    files: BTreeMap<String, Vec<u8>>,
) -> Result<Checked, Vec<FieldProblem>> {
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
    // serde_json keeps the last of two equal keys without a word: which one the client
    // meant is unknowable, so neither is taken.
    for field in duplicate_keys(body) {
        c.problem(&field, "is given more than once; give each field once");
    }
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
        c.integer(v, "seed", &params::SEED).map(|n| n as u64)
    });
    let steps = c
        .optional(&map, "steps", |c, v| {
            c.integer(v, "steps", &params::STEPS).map(|n| n as u32)
        })
        .unwrap_or(Some(DEFAULT_STEPS));
    let cfg = c
        .optional(&map, "cfg", |c, v| c.number(v, "cfg", &params::CFG))
        .unwrap_or(Some(DEFAULT_CFG));
    let sampler = c
        .optional(&map, "sampler", |c, v| c.name(v, "sampler", false))
        .unwrap_or_else(|| Some(DEFAULT_SAMPLER.to_owned()));
    let scheduler = c
        .optional(&map, "scheduler", Checker::scheduler)
        .unwrap_or_else(|| Some(DEFAULT_SCHEDULER.to_owned()));
    let checkpoint_name = c
        .optional(&map, "checkpoint_name", |c, v| {
            c.name(v, "checkpoint_name", true)
        })
        .unwrap_or_else(|| Some(DEFAULT_CHECKPOINT.to_owned()));
    let lora = c.optional(&map, "lora", Checker::lora);
    let resolution = c
        .optional(&map, "resolution", Checker::resolution)
        .unwrap_or(Some(Resolution {
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
        }));
    let chapter = c
        .optional(&map, "chapter", |c, v| {
            c.integer(v, "chapter", &params::CHAPTER).map(|n| n as u16)
        })
        .unwrap_or(Some(1));
    let page = c
        .optional(&map, "page", |c, v| {
            c.integer(v, "page", &params::PAGE).map(|n| n as u16)
        })
        .unwrap_or(Some(1));
    let images = c.images_with_files(&map, files);
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
        images: BTreeMap::new(),
    };
    Ok(Checked {
        request,
        seed_drawn: given.is_none(),
        images,
    })
}

const IMAGE_FORMS: &str = "give {\"base64\": \"...\", \"filename\": \"sketch.png\"}, {\"job\": \"<job id>\"} or {\"sha256\": \"<64 hex digits>\"}";
const SLOT_NAME_RULE: &str =
    "is not a slot name: use letters, digits and `_` (the `{{name}}` of a LoadImage `image` input)";

fn is_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
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
    #[allow(
        clippy::option_option,
        reason = "absent, invalid (already reported) and valid are the three states a caller tells apart"
    )]
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

    /// A model or sampler name as the server lists it: never a path that climbs out of the
    /// server's model folder or starts at its root. A subfolder (`sdxl/model.safetensors`)
    /// may be a real model name, so `subfolders` leaves `/` to the servers' lists (see
    /// `serve::catalogue`); a sampler name never has one.
    fn name(&mut self, v: &Value, field: &str, subfolders: bool) -> Option<String> {
        let name = self.text(v, field, false)?;
        let parts = || name.split(['/', '\\']);
        let reason = if name.chars().any(char::is_control) {
            Some("must not contain control characters")
        } else if name.starts_with(['/', '\\'])
            || name
                .as_bytes()
                .get(..2)
                .is_some_and(|b| b[0].is_ascii_alphabetic() && b[1] == b':')
        {
            Some("must be a name the server lists, not an absolute path")
        } else if parts().any(|p| p == ".." || p == ".") {
            Some("must be a name the server lists, not a path with `..` or `.`")
        } else if !subfolders && name.contains(['/', '\\']) {
            Some("must be a name the server lists, such as `euler`, not a path")
        } else if parts().any(str::is_empty) {
            Some("must be a name the server lists, not a path with an empty part")
        } else {
            None
        };
        match reason {
            Some(reason) => {
                self.problem(field, format!("{reason}, found {name:?}"));
                None
            }
            None => Some(name),
        }
    }

    fn integer(&mut self, v: &Value, field: &str, limit: &Limit<i128>) -> Option<i128> {
        let (range, help) = (&limit.range, limit.help);
        let n = match v {
            Value::Number(n) => n
                .as_u64()
                .map(i128::from)
                .or_else(|| n.as_i64().map(i128::from)),
            _ => None,
        };
        let Some(n) = n else {
            // Past 64 bits serde_json keeps only a float: its digits are not what was sent.
            let huge = v
                .as_f64()
                .filter(|x| x.fract() == 0.0 && x.abs() >= 2f64.powi(63));
            let reason = match huge {
                Some(_) => format!(
                    "is out of range: must be in {}..={} ({help})",
                    range.start(),
                    range.end()
                ),
                None => format!("must be an integer, found {}", describe(v)),
            };
            self.problem(field, reason);
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

    fn number(&mut self, v: &Value, field: &str, limit: &Limit<f64>) -> Option<f64> {
        let (range, help) = (&limit.range, limit.help);
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
        let hint = params::unknown_scheduler_help(&name);
        self.problem("scheduler", format!("unknown scheduler `{name}`; {hint}"));
        None
    }

    fn dimension(&mut self, v: &Value, field: &str) -> Option<u32> {
        let n = self.integer(v, field, &params::SIZE)?;
        let step = i128::from(LATENT_STEP);
        if n % step != 0 {
            let (down, up) = (n / step * step, n / step * step + step);
            self.problem(
                field,
                format!("must be a multiple of {step}, found {n}; use {down} or {up}"),
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

    /// `images` with the file parts sent beside the JSON.
    fn images_with_files(
        &mut self,
        map: &Map<String, Value>,
        files: BTreeMap<String, Vec<u8>>,
    ) -> BTreeMap<String, ImageSource> {
        let mut images = self
            .optional(map, "images", Checker::images)
            .flatten()
            .unwrap_or_default();
        for (slot, bytes) in files {
            if !is_slot_name(&slot) {
                self.problem(&format!("images.{slot}"), SLOT_NAME_RULE);
                continue;
            }
            match images.entry(slot) {
                std::collections::btree_map::Entry::Occupied(e) => self.problem(
                    &format!("images.{}", e.key()),
                    "is given both in the JSON part and as a file part; give it once",
                ),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(ImageSource::Bytes(bytes));
                }
            }
        }
        images
    }

    /// `images`: slot -> one of [`IMAGE_FORMS`]. Never repeats the bytes it was sent.
    fn images(&mut self, v: &Value) -> Option<BTreeMap<String, ImageSource>> {
        let Value::Object(map) = v else {
            self.problem(
                "images",
                format!(
                    "must be an object naming each image slot, such as {{\"source\": {{\"job\": \"<job id>\"}}}}, found {}",
                    kind(v)
                ),
            );
            return None;
        };
        let mut images = BTreeMap::new();
        for (slot, spec) in map {
            let field = format!("images.{slot}");
            if !is_slot_name(slot) {
                self.problem(&field, SLOT_NAME_RULE);
                continue;
            }
            let Value::Object(spec) = spec else {
                self.problem(
                    &field,
                    format!("must be an object: {IMAGE_FORMS}; found {}", kind(spec)),
                );
                continue;
            };
            let forms: Vec<&str> = ["base64", "job", "sha256"]
                .into_iter()
                .filter(|k| spec.contains_key(*k))
                .collect();
            let known: &[&str] = match forms.as_slice() {
                ["base64"] => &["base64", "filename"],
                ["job"] => &["job"],
                ["sha256"] => &["sha256", "path"],
                [] => {
                    self.problem(&field, format!("names no image: {IMAGE_FORMS}"));
                    continue;
                }
                _ => {
                    self.problem(
                        &field,
                        format!("gives {}; give exactly one", forms.join(" and ")),
                    );
                    continue;
                }
            };
            self.unknown(spec, &format!("{field}."), known);
            let text = |c: &mut Self, key: &str| match spec.get(key) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    c.problem(
                        &format!("{field}.{key}"),
                        format!("must be a string, found {}", kind(other)),
                    );
                    None
                }
                None => None,
            };
            if spec.contains_key("filename") {
                text(self, "filename");
            }
            let source = match forms[0] {
                "base64" => text(self, "base64").and_then(|b64| {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(b64.trim().as_bytes())
                        .map_err(|e| {
                            self.problem(
                                &format!("{field}.base64"),
                                format!("is not valid base64 (standard alphabet, padded): {e}"),
                            );
                        })
                        .ok()?;
                    Some(ImageSource::Bytes(decoded))
                }),
                "job" => text(self, "job").map(ImageSource::Job),
                _ => text(self, "sha256").and_then(|hex| {
                    let ok = hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit());
                    if !ok {
                        self.problem(
                            &format!("{field}.sha256"),
                            "must be 64 hex digits, the sha256 the service showed for the image",
                        );
                        return None;
                    }
                    if spec.contains_key("path") {
                        text(self, "path");
                    }
                    Some(ImageSource::Stored(hex.to_ascii_lowercase()))
                }),
            };
            if let Some(source) = source {
                images.insert(slot.clone(), source);
            }
        }
        Some(images)
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
            Some(v) => self.name(v, "lora.name", true),
        };
        let strength = |c: &mut Self, key: &str| match map.get(key) {
            None | Some(Value::Null) => Some(DEFAULT_LORA_STRENGTH),
            Some(v) => c.number(v, &format!("lora.{key}"), &params::LORA_STRENGTH),
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

/// Dotted paths (`seed`, `lora.name`) of keys given twice in one object of `body`, which must
/// be valid JSON.
fn duplicate_keys(body: &[u8]) -> Vec<String> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

    struct Walk<'a> {
        path: String,
        found: &'a mut Vec<String>,
    }

    impl Walk<'_> {
        fn child(&mut self, name: &str) -> Walk<'_> {
            let path = if self.path.is_empty() {
                name.to_owned()
            } else {
                format!("{}.{name}", self.path)
            };
            Walk {
                path,
                found: self.found,
            }
        }
    }

    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0;
            while seq.next_element_seed(self.child(&i.to_string()))?.is_some() {
                i += 1;
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if seen.contains(&key) {
                    let path = self.child(&key).path;
                    if !self.found.contains(&path) {
                        self.found.push(path);
                    }
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                map.next_value_seed(self.child(&key))?;
                seen.insert(key);
            }
            Ok(())
        }
    }

    let mut found = Vec::new();
    let walk = Walk {
        path: String::new(),
        found: &mut found,
    };
    let _ = walk.deserialize(&mut serde_json::Deserializer::from_slice(body));
    found
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

    fn reason(body: &str, field: &str) -> String {
        let problems = parse(body.as_bytes()).unwrap_err();
        let problem = problems.iter().find(|p| p.field == field);
        problem
            .unwrap_or_else(|| panic!("no problem with {field} in {problems:?}"))
            .reason
            .clone()
    }

    #[test]
    fn images_take_base64_a_job_or_a_kept_sha256_and_name_each_problem() {
        let c = parse(
            br#"{"prompt_text": "a", "images": {"source": {"base64": "aGk=", "filename": "s.png"},
                 "pose": {"job": "j1"}, "ref": {"sha256": "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789", "path": "x"}}}"#,
        )
        .unwrap();
        assert_eq!(c.images["source"], ImageSource::Bytes(b"hi".to_vec()));
        assert_eq!(c.images["pose"], ImageSource::Job("j1".to_owned()));
        assert_eq!(
            c.images["ref"],
            ImageSource::Stored(
                "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789".to_owned()
            )
        );
        assert!(c.request.images.is_empty(), "filled by the service");
        assert_eq!(
            fields(
                r#"{"prompt_text": "a", "images": {"a": {"base64": "%%"}, "b": {"job": "x", "base64": ""},
                    "c": {}, "d": 1, "e-f": {"job": "x"}, "g": {"job": 5}, "h": {"sha256": "12"},
                    "i": {"job": "x", "colour": 1}}}"#
            ),
            [
                "images.a.base64",
                "images.b",
                "images.c",
                "images.d",
                "images.e-f",
                "images.g.job",
                "images.h.sha256",
                "images.i.colour"
            ]
        );
        assert_eq!(fields(r#"{"prompt_text": "a", "images": []}"#), ["images"]);
        // A file part for a slot the JSON also gives is refused; one of its own is taken.
        let files = BTreeMap::from([("source".to_owned(), vec![1, 2])]);
        let both = parse_with(
            br#"{"prompt_text": "a", "images": {"source": {"job": "j"}}}"#,
            files.clone(),
        );
        assert_eq!(both.unwrap_err()[0].field, "images.source");
        let c = parse_with(br#"{"prompt_text": "a"}"#, files).unwrap();
        assert_eq!(c.images["source"], ImageSource::Bytes(vec![1, 2]));
    }

    #[test]
    fn a_key_given_twice_is_refused_at_any_depth() {
        assert_eq!(
            fields(r#"{"prompt_text": "a", "seed": 1, "seed": 2, "seed": 3}"#),
            ["seed"]
        );
        assert_eq!(
            fields(r#"{"prompt_text": "a", "lora": {"name": "x", "name": "y"}}"#),
            ["lora.name"]
        );
        assert!(
            reason(r#"{"prompt_text": "a", "prompt_text": "b"}"#, "prompt_text")
                .contains("more than once")
        );
        // Equal keys in different objects are fine.
        parse(br#"{"prompt_text": "a", "resolution": {"width": 64, "height": 64}, "lora": {"name": "width"}}"#).unwrap();
    }

    #[test]
    fn a_number_past_64_bits_is_out_of_range_not_a_float() {
        let r = reason(
            r#"{"prompt_text": "a", "seed": 18446744073709551616}"#,
            "seed",
        );
        assert!(
            r.starts_with("is out of range: must be in 0..=18446744073709551615"),
            "{r}"
        );
        assert!(!r.contains("e+"), "{r}");
        let r = reason(
            r#"{"prompt_text": "a", "steps": -99999999999999999999}"#,
            "steps",
        );
        assert!(
            r.starts_with("is out of range: must be in 1..=10000"),
            "{r}"
        );
        let r = reason(r#"{"prompt_text": "a", "seed": 5.0}"#, "seed");
        assert_eq!(r, "must be an integer, found 5.0");
    }

    #[test]
    #[allow(
        clippy::float_cmp,
        reason = "the default is a constant, copied, not computed: exact equality is the point"
    )]
    fn a_value_out_of_range_says_the_range_and_help_the_manifest_says() {
        let int = |l: Limit<i128>| (format!("{}..={}", l.range.start(), l.range.end()), l.help);
        let float = |l: Limit<f64>| {
            (
                format!("{:?}..={:?}", l.range.start(), l.range.end()),
                l.help,
            )
        };
        for (body, field, (range, help)) in [
            (r#""seed": -1"#, "seed", int(params::SEED)),
            (r#""steps": 0"#, "steps", int(params::STEPS)),
            (r#""chapter": 1000"#, "chapter", int(params::CHAPTER)),
            (r#""page": 0"#, "page", int(params::PAGE)),
            (
                r#""resolution": {"width": 8, "height": 64}"#,
                "resolution.width",
                int(params::SIZE),
            ),
            (r#""cfg": 100.5"#, "cfg", float(params::CFG)),
            (
                r#""lora": {"name": "x", "strength_clip": -101}"#,
                "lora.strength_clip",
                float(params::LORA_STRENGTH),
            ),
        ] {
            let r = reason(&format!(r#"{{"prompt_text": "a", {body}}}"#), field);
            assert!(r.starts_with(&format!("must be in {range}, found ")), "{r}");
            assert!(r.ends_with(&format!("({help})")), "{r}");
        }
        assert_eq!(
            reason(
                r#"{"prompt_text": "a", "resolution": {"width": 64, "height": 100}}"#,
                "resolution.height"
            ),
            "must be a multiple of 8, found 100; use 96 or 104"
        );
        // An absent strength is full strength.
        let c = parse(br#"{"prompt_text": "a", "lora": {"name": "x"}}"#).unwrap();
        let lora = c.request.lora.unwrap();
        assert_eq!(lora.strength_model, DEFAULT_LORA_STRENGTH);
        assert_eq!(lora.strength_clip, DEFAULT_LORA_STRENGTH);
    }

    #[test]
    fn model_and_sampler_names_are_names_not_paths() {
        for (field, body) in [
            (
                "checkpoint_name",
                r#""checkpoint_name": "../../etc/passwd""#,
            ),
            ("checkpoint_name", r#""checkpoint_name": "/etc/passwd""#),
            (
                "checkpoint_name",
                r#""checkpoint_name": "C:\\models\\x.ckpt""#,
            ),
            ("checkpoint_name", r#""checkpoint_name": "sdxl\\..\\x""#),
            ("checkpoint_name", r#""checkpoint_name": "a\u0000b""#),
            ("checkpoint_name", r#""checkpoint_name": "sdxl//x""#),
            ("lora.name", r#""lora": {"name": "../x.safetensors"}"#),
            ("lora.name", r#""lora": {"name": "./x.safetensors"}"#),
            ("sampler", r#""sampler": "euler/a""#),
            ("sampler", r#""sampler": "..""#),
        ] {
            let body = format!(r#"{{"prompt_text": "a", {body}}}"#);
            assert_eq!(fields(&body), [field], "{body}");
        }
        // A subfolder may be a real model name: the servers' lists decide.
        let c = parse(br#"{"prompt_text": "a", "checkpoint_name": "sdxl/base.safetensors", "lora": {"name": "ink/v2.safetensors"}}"#).unwrap();
        assert_eq!(c.request.checkpoint_name, "sdxl/base.safetensors");
    }
}
