//! A parsed, checked API-format workflow template, with its placeholder slots indexed once so
//! filling a job is a few appends. A filled workflow's text is written only when it is used
//! (see [`PageValues`]): a job keeps its template and values, not ~1 KiB of JSON.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::canonical::{JobHash, Segments, Step};
use super::fill::{Fill, Lookup, Slot, TextFill};
use super::fill::{PageValues, Variant};
use super::json::Workflow;
use super::placeholder::{Piece, Placeholder, Scanned, SlotName, SlotValues, scan};
use super::spans::{SpanTree, index};
use crate::diagnostic::{Problem, SourceFile, did_you_mean};
use crate::manifest::read::NotJson;

/// Templates larger than this are refused before they are read in full (8 MiB, like
/// manifests; the shipped txt2img graph is 1.5 KiB).
pub const MAX_TEMPLATE_BYTES: usize = 8 * 1024 * 1024;

/// The class whose nodes are a job's outputs unless the manifest names an `output_node`.
pub const SAVE_IMAGE: &str = "SaveImage";

const API_FORMAT_HELP: &str = "a template is ComfyUI's API-format JSON (in ComfyUI: Workflow > \
    Export (API)): {\"<node id>\": {\"class_type\": \"...\", \"inputs\": {...}}, ...}";

#[derive(Debug, Clone)]
pub struct Template {
    file: SourceFile,
    sha256: Arc<str>,
    graph: Value,
    save_nodes: Vec<String>,
    /// Where each placeholder or variable is first used: node id and the span of the string.
    uses: BTreeMap<SlotName, (String, Range<usize>)>,
    /// The canonical JSON with a hole per slot, for the job hash.
    canonical: Segments,
    /// The slots and the text that is sent, shared with every workflow filled from here.
    text: Arc<TextFill>,
}

/// A filled template: the workflow to send and its job hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Filled {
    pub workflow: Workflow,
    /// [`super::canonical::job_hash`] of `workflow`, computed from the template's holes.
    pub hash: JobHash,
}

impl Template {
    /// Parse and check a template file's bytes; `name` is how diagnostics show the file.
    ///
    /// A file that cannot be a JSON object at all (not text, not UTF-8, not starting with `{`)
    /// is refused with a diagnostic that shows none of its bytes: a manifest may name any
    /// file, and its contents (`/proc/self/environ`, `/etc/shadow`) must not be printed.
    pub fn parse(name: &str, bytes: Vec<u8>) -> Result<Template, Vec<Problem>> {
        if let Some(not_json) = NotJson::check(&bytes) {
            let code = match not_json {
                NotJson::NotUtf8(_) => "workflow::not_utf8",
                NotJson::NotAnObject => "workflow::not_api_format",
                NotJson::Nul(_) | NotJson::ByteOrderMark => "workflow::not_json",
            };
            return Err(vec![
                Problem::at(
                    code,
                    &SourceFile::new(name, ""),
                    0..0,
                    format!(
                        "workflow `{name}` is not an API-format workflow: {}",
                        not_json.describe()
                    ),
                    "its contents are not shown",
                )
                .with_help(API_FORMAT_HELP),
            ]);
        }
        let sha256: Arc<str> = hex::encode(Sha256::digest(&bytes)).into();
        let text = String::from_utf8(bytes).expect("checked to be UTF-8 above");
        let file = SourceFile::new(name, text);
        let graph: Value = match serde_json::from_str(file.text()) {
            Ok(graph) => graph,
            Err(err) => return Err(vec![not_json(&file, &err)]),
        };
        let tree = index(file.text());
        let mut checker = Checker {
            file: &file,
            problems: Vec::new(),
            slots: Vec::new(),
            uses: BTreeMap::new(),
        };
        let save_nodes = checker.graph(&graph, &tree);
        if !checker.problems.is_empty() {
            return Err(checker.problems);
        }
        let (slots, uses) = (checker.slots, checker.uses);
        let holes: HashMap<Vec<Step>, usize> = slots
            .iter()
            .enumerate()
            .map(|(n, slot)| (slot.path.clone(), n))
            .collect();
        let canonical = Segments::new(&graph, &holes);
        let compact = Segments::ordered(&graph, &holes);
        Ok(Template {
            file,
            sha256,
            graph,
            save_nodes,
            uses,
            canonical,
            text: Arc::new(TextFill { slots, compact }),
        })
    }

    pub fn file(&self) -> &SourceFile {
        &self.file
    }

    /// sha256 (hex) of the template file's bytes.
    pub fn sha256(&self) -> &Arc<str> {
        &self.sha256
    }

    pub fn has_node(&self, id: &str) -> bool {
        self.graph.get(id).is_some()
    }

    /// Ids of the `SaveImage` nodes, in file order.
    pub fn save_nodes(&self) -> &[String] {
        &self.save_nodes
    }

    pub fn uses(&self, placeholder: Placeholder) -> bool {
        self.uses.contains_key(&SlotName::Builtin(placeholder))
    }

    /// The first LoRA placeholder the template uses, if any: a page without a LoRA cannot
    /// fill it.
    pub fn lora_placeholder(&self) -> Option<Placeholder> {
        self.uses.keys().find_map(|slot| match slot {
            SlotName::Builtin(p) if p.needs_lora() => Some(*p),
            _ => None,
        })
    }

    /// The names of the variables (`{{name}}` that is no built-in placeholder) the template
    /// uses, sorted.
    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.uses.keys().filter_map(|slot| match slot {
            SlotName::Var(name) => Some(&**name),
            SlotName::Builtin(_) => None,
        })
    }

    /// The id of the first node that uses `slot`, if the template uses it.
    pub fn node_using(&self, slot: &SlotName) -> Option<&str> {
        self.uses.get(slot).map(|(node, _)| node.as_str())
    }

    /// Whether the template uses variable `name`.
    pub fn uses_var(&self, name: &str) -> bool {
        self.uses.contains_key(&SlotName::Var(name.into()))
    }

    /// Bind the values a page's workflows share (any seed or filename prefix in `values` is
    /// ignored: each [`Variant`] brings its own).
    pub fn page_values(&self, values: SlotValues) -> Arc<PageValues> {
        Arc::new(PageValues {
            text: self.text.clone(),
            values,
        })
    }

    /// The template with every placeholder replaced by `page`'s and `variant`'s values, or
    /// the first placeholder with no value. `page` must come from this template.
    ///
    /// Substitution is one pass over the template's own strings: text that a value brings in
    /// (a prompt containing `{{seed}}`, say) is never scanned again.
    pub fn fill(&self, page: &Arc<PageValues>, variant: Variant) -> Result<Filled, SlotName> {
        debug_assert!(
            Arc::ptr_eq(&self.text, &page.text),
            "values of another template"
        );
        let lookup = Lookup {
            page: &page.values,
            variant: &variant,
        };
        let filled = self.text.values(&lookup)?;
        let hash = self.canonical.job_hash(&filled);
        // No text yet: it is written from the page's values when it is sent (or reported),
        // so a job holds a pointer and two values instead of ~1 KiB of JSON.
        let workflow = Workflow::filled(page.clone(), variant);
        Ok(Filled { workflow, hash })
    }

    /// A template with no output node, for jobs that name none.
    pub fn no_output_problem(&self) -> Problem {
        Problem::at(
            "workflow::no_output",
            &self.file,
            0..1,
            format!("workflow `{}` has no output node", self.file.name()),
            "no SaveImage node in this workflow",
        )
        .with_help(
            "add a SaveImage node, or name the node whose `images` are the output with \
             `output_node = \"<id>\"` in the manifest",
        )
    }

    /// A placeholder or variable the template uses but some pages have no value for.
    pub fn missing_value_problem(&self, placeholder: &SlotName, pages: &[u16]) -> Problem {
        let (node, span) = self.uses.get(placeholder).cloned().unwrap_or_default();
        let name = placeholder.name();
        let shown: Vec<String> = pages.iter().take(8).map(u16::to_string).collect();
        let more = if pages.len() > 8 { ", ..." } else { "" };
        let help = if placeholder.needs_lora() {
            format!(
                "page(s) {}{more} have no LoRA: give them `lora = {{ name = \"...\" }}`, or a \
                 workflow without LoRA slots (a page must never send an empty LoRA name)",
                shown.join(", ")
            )
        } else {
            format!("page(s) {}{more} have no value for it", shown.join(", "))
        };
        Problem::at(
            "workflow::no_value",
            &self.file,
            span,
            format!(
                "node `{node}` of workflow `{}` uses `{{{{{name}}}}}`, which some pages do not set",
                self.file.name()
            ),
            "no value for this placeholder",
        )
        .with_help(help)
    }
}

impl Template {
    /// A `{{name}}` that is neither a built-in placeholder nor a variable the chapter
    /// defines anywhere; `vars` are the names the chapter does define, for "did you mean".
    pub fn unknown_var_problem(&self, name: &str, vars: &[&str]) -> Problem {
        let (node, span) = self
            .uses
            .get(&SlotName::Var(name.into()))
            .cloned()
            .unwrap_or_default();
        let known: Vec<&str> = Placeholder::NAMES
            .iter()
            .copied()
            .chain(vars.iter().copied())
            .collect();
        let help = match did_you_mean(name, &known) {
            Some(close) if vars.contains(&close) => {
                format!("did you mean variable `{{{{{close}}}}}`?")
            }
            Some(close) => format!("did you mean `{{{{{close}}}}}`?"),
            None => format!(
                "define it as a variable, `vars = {{ {name} = ... }}` in [defaults] or on the \
                 pages that use this workflow; built-in placeholders are: {}",
                Placeholder::NAMES.join(", ")
            ),
        };
        Problem::at(
            "workflow::unknown_placeholder",
            &self.file,
            span,
            format!(
                "unknown placeholder `{{{{{name}}}}}` in node `{node}` of workflow `{}`",
                self.file.name()
            ),
            "unknown placeholder",
        )
        .with_help(help)
    }
}

fn not_json(file: &SourceFile, err: &serde_json::Error) -> Problem {
    let what = format!("workflow `{}` is not valid JSON", file.name());
    Problem::json_error("workflow::not_json", file, err, &what).with_help(API_FORMAT_HELP)
}

struct Checker<'f> {
    file: &'f SourceFile,
    problems: Vec<Problem>,
    slots: Vec<Slot>,
    uses: BTreeMap<SlotName, (String, Range<usize>)>,
}

impl Checker<'_> {
    fn error(
        &mut self,
        code: &'static str,
        span: Range<usize>,
        message: String,
        label: &str,
        help: String,
    ) {
        self.problems
            .push(Problem::at(code, self.file, span, message, label).with_help(help));
    }

    /// Check every node; returns the `SaveImage` node ids.
    #[allow(
        clippy::too_many_lines,
        reason = "one check after another over a workflow graph, each reporting where it failed"
    )]
    fn graph(&mut self, graph: &Value, tree: &SpanTree) -> Vec<String> {
        let name = self.file.name().to_owned();
        let Some(nodes) = graph.as_object() else {
            self.error(
                "workflow::not_api_format",
                tree.span(),
                format!("workflow `{name}` is not an object of nodes"),
                "expected an object",
                API_FORMAT_HELP.to_owned(),
            );
            return Vec::new();
        };
        if nodes.is_empty() {
            self.error(
                "workflow::no_nodes",
                tree.span(),
                format!("workflow `{name}` has no nodes"),
                "empty",
                API_FORMAT_HELP.to_owned(),
            );
        }
        if let (Some(Value::Array(_)), Some(entry)) = (nodes.get("nodes"), tree.entry("nodes")) {
            self.error(
                "workflow::not_api_format",
                entry.key_span.clone(),
                format!("workflow `{name}` is in ComfyUI's UI format, not the API format"),
                "UI-format workflows have `nodes` and `links` lists",
                API_FORMAT_HELP.to_owned(),
            );
            return Vec::new();
        }
        // A JSON object none of whose entries is a node is some other file (a credentials
        // file, say): named, never shown.
        let is_node = |v: &Value| v.get("class_type").is_some_and(Value::is_string);
        if !nodes.is_empty() && !nodes.values().any(is_node) {
            self.problems.push(
                Problem::at(
                    "workflow::not_api_format",
                    &SourceFile::new(&name, ""),
                    0..0,
                    format!(
                        "workflow `{name}` is not an API-format workflow: none of its {} \
                         top-level entries is a node with a `class_type`",
                        nodes.len()
                    ),
                    "its contents are not shown",
                )
                .with_help(API_FORMAT_HELP),
            );
            return Vec::new();
        }
        let mut save_nodes = Vec::new();
        for (id, node) in nodes {
            let Some(entry) = tree.entry(id) else {
                continue;
            };
            let node_span = entry.key_span.clone();
            let Some(fields) = node.as_object() else {
                self.error(
                    "workflow::bad_node",
                    entry.value.span(),
                    format!("node `{id}` of workflow `{name}` is not an object"),
                    "expected {\"class_type\": ..., \"inputs\": {...}}",
                    API_FORMAT_HELP.to_owned(),
                );
                continue;
            };
            match fields.get("class_type") {
                Some(Value::String(class)) if !class.is_empty() => {
                    if class == SAVE_IMAGE {
                        save_nodes.push(id.clone());
                    }
                }
                Some(_) => {
                    let span = entry.value.entry("class_type").map(|e| e.value.span());
                    self.error(
                        "workflow::no_class_type",
                        span.unwrap_or(node_span.clone()),
                        format!("node `{id}` of workflow `{name}` has a `class_type` that is not a node class name"),
                        "expected a class name string",
                        "set `class_type` to the node's class, e.g. \"KSampler\"".to_owned(),
                    );
                }
                None => self.error(
                    "workflow::no_class_type",
                    node_span.clone(),
                    format!("node `{id}` of workflow `{name}` has no `class_type`"),
                    "this node has no class_type",
                    "every node needs `class_type`, e.g. \"KSampler\"; ComfyUI refuses the whole \
                     prompt otherwise"
                        .to_owned(),
                ),
            }
            let inputs_tree = entry.value.entry("inputs").map(|e| &e.value);
            match (fields.get("inputs"), inputs_tree) {
                (Some(Value::Object(inputs)), Some(inputs_tree)) => {
                    for (input, value) in inputs {
                        let Some(input_entry) = inputs_tree.entry(input) else {
                            continue;
                        };
                        let path = vec![
                            Step::Key(id.clone()),
                            Step::Key("inputs".to_owned()),
                            Step::Key(input.clone()),
                        ];
                        if let Value::Array(items) = value {
                            self.link(nodes, id, input, items, &input_entry.value);
                        } else {
                            self.literal(id, value, &input_entry.value, path);
                        }
                    }
                }
                (None, _) => self.error(
                    "workflow::bad_node",
                    node_span,
                    format!("node `{id}` of workflow `{name}` has no `inputs`"),
                    "no inputs",
                    "add `\"inputs\": {}` (an object, even when empty)".to_owned(),
                ),
                (Some(_), tree) => self.error(
                    "workflow::bad_node",
                    tree.map_or(node_span, SpanTree::span),
                    format!("the `inputs` of node `{id}` in workflow `{name}` are not an object"),
                    "expected an object",
                    API_FORMAT_HELP.to_owned(),
                ),
            }
        }
        save_nodes
    }

    /// An input that is a list is a link: `["<node id>", <output index>]` to an existing node.
    fn link(
        &mut self,
        nodes: &serde_json::Map<String, Value>,
        id: &str,
        input: &str,
        items: &[Value],
        tree: &SpanTree,
    ) {
        let name = self.file.name().to_owned();
        let target = match items {
            [Value::String(target), Value::Number(slot)] if slot.is_u64() => target,
            _ => {
                let help = match items {
                    [Value::Number(n), _] => format!(
                        "node ids in links are strings: write [\"{n}\", ...]; a literal list \
                         must be wrapped as {{\"__value__\": [...]}}"
                    ),
                    _ => "a link is [\"<node id>\", <output index>], e.g. [\"4\", 0]; a literal \
                          list must be wrapped as {\"__value__\": [...]}"
                        .to_owned(),
                };
                self.error(
                    "workflow::bad_link",
                    tree.span(),
                    format!("bad link in node `{id}` input `{input}` of workflow `{name}`"),
                    "not [\"<node id>\", <output index>]",
                    help,
                );
                return;
            }
        };
        if !nodes.contains_key(target) {
            let ids: Vec<&str> = nodes.keys().map(String::as_str).collect();
            let help = match did_you_mean(target, &ids) {
                Some(close) if ids.len() < 30 => {
                    format!("did you mean node `{close}`? nodes: {}", ids.join(", "))
                }
                _ => format!("link to one of the workflow's nodes: {}", ids.join(", ")),
            };
            let span = tree.item(0).map_or(tree.span(), SpanTree::span);
            self.error(
                "workflow::dangling_link",
                span,
                format!(
                    "node `{id}` input `{input}` of workflow `{name}` links to node `{target}`, \
                     which does not exist"
                ),
                "no such node",
                help,
            );
        }
    }

    /// Strings anywhere in a literal input may hold placeholders.
    fn literal(&mut self, node: &str, value: &Value, tree: &SpanTree, path: Vec<Step>) {
        match value {
            Value::String(s) => match scan(s) {
                Ok(Scanned::Literal) => {}
                Ok(Scanned::Whole(p)) => {
                    let used = [p.clone()];
                    self.slot(node, tree, path, Fill::Whole(p), &used);
                }
                Ok(Scanned::Pieces(pieces)) => {
                    let used: Vec<SlotName> = pieces
                        .iter()
                        .filter_map(|piece| match piece {
                            Piece::Slot(p) => Some(p.clone()),
                            Piece::Text(_) => None,
                        })
                        .collect();
                    self.slot(node, tree, path, Fill::Pieces(pieces), &used);
                }
                Err(unknown) => {
                    for name in unknown {
                        let help = match did_you_mean(&name, &Placeholder::NAMES) {
                            Some(close) => format!("did you mean `{{{{{close}}}}}`?"),
                            None => format!(
                                "a variable's name starts with a letter or `_`; placeholders \
                                 are: {}",
                                Placeholder::NAMES.join(", ")
                            ),
                        };
                        self.error(
                            "workflow::unknown_placeholder",
                            tree.span(),
                            format!(
                                "unknown placeholder `{{{{{name}}}}}` in node `{node}` of workflow `{}`",
                                self.file.name()
                            ),
                            "unknown placeholder",
                            help,
                        );
                    }
                }
            },
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(t) = tree.item(i) {
                        let mut path = path.clone();
                        path.push(Step::Index(i));
                        self.literal(node, item, t, path);
                    }
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    if let Some(e) = tree.entry(key) {
                        let mut path = path.clone();
                        path.push(Step::Key(key.clone()));
                        self.literal(node, item, &e.value, path);
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    fn slot(
        &mut self,
        node: &str,
        tree: &SpanTree,
        path: Vec<Step>,
        fill: Fill,
        used: &[SlotName],
    ) {
        for p in used {
            self.uses
                .entry(p.clone())
                .or_insert_with(|| (node.to_owned(), tree.span()));
        }
        self.slots.push(Slot { path, fill });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GRAPH: &str = r#"{
      "1": {"class_type": "EmptyImage", "inputs": {"width": "{{width}}", "height": 64}},
      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "run/{{filename_prefix}}_{{seed}}"}}
    }"#;

    fn variant() -> Variant {
        Variant {
            seed: 7,
            filename_prefix: "p".into(),
        }
    }

    fn fill(t: &Template, values: SlotValues) -> Result<Filled, SlotName> {
        t.fill(&t.page_values(values), variant())
    }

    #[test]
    fn fills_typed_and_text_slots() {
        let t = Template::parse("t.json", GRAPH.into()).unwrap();
        assert_eq!(t.save_nodes(), ["2"]);
        let mut v = SlotValues::default();
        v.set(Placeholder::Width, 512);
        let workflow = fill(&t, v).unwrap().workflow;
        let filled = workflow.to_value();
        // Compact, in the template's own order: what serde_json writes for the filled graph.
        assert_eq!(workflow.text(), serde_json::to_string(&filled).unwrap());
        assert_eq!(filled["1"]["inputs"]["width"], json!(512));
        assert_eq!(filled["2"]["inputs"]["filename_prefix"], json!("run/p_7"));
    }

    #[test]
    fn a_missing_value_is_named() {
        let t = Template::parse("t.json", GRAPH.into()).unwrap();
        assert_eq!(
            fill(&t, SlotValues::default()).map(|f| f.hash),
            Err(SlotName::Builtin(Placeholder::Width))
        );
    }

    #[test]
    fn filled_values_are_not_scanned_again() {
        let t = Template::parse(
            "t.json",
            r#"{"9": {"class_type": "SaveImage", "inputs": {"a": "{{prompt}}", "b": "x {{prompt}}"}}}"#.into(),
        )
        .unwrap();
        let mut v = SlotValues::default();
        v.set(Placeholder::Prompt, "{{seed}} \"q\" \\ \n 🦀 שלום");
        let filled = fill(&t, v).unwrap();
        assert_eq!(
            filled.hash,
            super::super::canonical::job_hash(&filled.workflow.to_value())
        );
        let filled = filled.workflow.to_value();
        assert_eq!(
            filled["9"]["inputs"]["a"],
            json!("{{seed}} \"q\" \\ \n 🦀 שלום")
        );
        assert_eq!(
            filled["9"]["inputs"]["b"],
            json!("x {{seed}} \"q\" \\ \n 🦀 שלום")
        );
    }

    #[test]
    fn reports_every_broken_node() {
        let problems = Template::parse(
            "t.json",
            r#"{"1": {"inputs": {}}, "2": {"class_type": "X", "inputs": {"a": [1, 0], "b": ["7", 0], "c": "{{1sead}}"}}}"#.into(),
        )
        .unwrap_err();
        let codes: Vec<&str> = problems.iter().map(Problem::code).collect();
        assert_eq!(
            codes,
            [
                "workflow::no_class_type",
                "workflow::bad_link",
                "workflow::dangling_link",
                "workflow::unknown_placeholder"
            ]
        );
    }
}
