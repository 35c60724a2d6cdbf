//! Bindings: a workflow used exactly as ComfyUI exported it (Workflow > Export (API)) takes
//! the manifest's values through `name = "<node>.<input>"` bindings instead of edited-in
//! `{{name}}` placeholders. When the template is loaded, each binding turns the bound literal
//! into the `{{name}}` placeholder, so filling, hashing and preflight see an ordinary
//! template. A node is named by its id, by its title (`_meta.title`, which exports carry) or,
//! when only one node has it, by its class.
//!
//! Knows nothing of the manifest language: it is given the bindings, where they were written
//! (for diagnostics) and the type of every name that has a value.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;

use serde_json::{Map, Value};

use super::spans::SpanTree;
use crate::diagnostic::{Problem, SourceFile, did_you_mean};

/// The JSON type a bound value has, which the exported literal it replaces must share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Integer,
    /// Integers fit too: ComfyUI's frontend writes `8.0` as `8`.
    Number,
    String,
    Boolean,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Integer => "an integer",
            Kind::Number => "a number",
            Kind::String => "a string",
            Kind::Boolean => "a boolean",
        }
    }

    /// Whether an exported literal can stand for a value of this kind. A string that is
    /// already a whole placeholder fits any kind.
    fn fits(self, literal: &Value) -> bool {
        if literal
            .as_str()
            .is_some_and(|s| s.starts_with("{{") && s.ends_with("}}"))
        {
            return true;
        }
        match (self, literal) {
            (Kind::Integer, Value::Number(n)) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            (Kind::Number, Value::Number(_))
            | (Kind::String, Value::String(_))
            | (Kind::Boolean, Value::Bool(_)) => true,
            _ => false,
        }
    }
}

/// The built-in placeholders and their kinds (`placeholder::Placeholder::NAMES`, typed).
pub const BUILTIN: [(&str, Kind); 14] = [
    ("seed", Kind::Integer),
    ("prompt", Kind::String),
    ("negative", Kind::String),
    ("checkpoint", Kind::String),
    ("steps", Kind::Integer),
    ("cfg", Kind::Number),
    ("sampler", Kind::String),
    ("scheduler", Kind::String),
    ("width", Kind::Integer),
    ("height", Kind::Integer),
    ("lora_name", Kind::String),
    ("lora_strength_model", Kind::Number),
    ("lora_strength_clip", Kind::Number),
    ("filename_prefix", Kind::String),
];

/// One binding as written: the value `name` goes to `target`, `"<node>.<input>"`.
#[derive(Debug, Clone)]
pub struct Binding {
    pub name: String,
    pub name_span: Range<usize>,
    pub target: String,
    pub target_span: Range<usize>,
}

/// A workflow's bindings, the file they were written in, and every name with a value.
#[derive(Debug, Clone)]
pub struct Bindings {
    pub written_in: SourceFile,
    pub list: Vec<Binding>,
    names: BTreeMap<String, Kind>,
}

impl Bindings {
    /// Bindings that may use the built-in placeholders and `more` names (user variables).
    pub fn new(
        written_in: SourceFile,
        list: Vec<Binding>,
        more: impl IntoIterator<Item = (String, Kind)>,
    ) -> Bindings {
        let mut names: BTreeMap<String, Kind> = BUILTIN
            .iter()
            .map(|(name, kind)| ((*name).to_owned(), *kind))
            .collect();
        names.extend(more);
        Bindings {
            written_in,
            list,
            names,
        }
    }
}

/// Why a node reference names no single node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeRef {
    Missing,
    /// Several nodes have this title (or class); their ids.
    Ambiguous(Vec<String>),
}

/// The id of the node `reference` names: its id or title, else the one node of that class.
pub fn find_node(nodes: &Map<String, Value>, reference: &str) -> Result<String, NodeRef> {
    let by = |pick: &dyn Fn(&str, &Value) -> bool| -> Vec<String> {
        nodes
            .iter()
            .filter(|(id, node)| pick(id, node))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let mut found = by(&|id, node| id == reference || title(node) == Some(reference));
    if found.is_empty() {
        found = by(&|_, node| node.get("class_type").and_then(Value::as_str) == Some(reference));
    }
    match found.len() {
        0 => Err(NodeRef::Missing),
        1 => Ok(found.remove(0)),
        _ => Err(NodeRef::Ambiguous(found)),
    }
}

fn title(node: &Value) -> Option<&str> {
    node.pointer("/_meta/title").and_then(Value::as_str)
}

/// `node `6` ("Positive")`, or `node `6` (CLIPTextEncode)` without a title.
pub fn describe_node(nodes: &Map<String, Value>, id: &str) -> String {
    let node = &nodes[id];
    match (title(node), node.get("class_type").and_then(Value::as_str)) {
        (Some(t), _) => format!("node `{id}` (\"{t}\")"),
        (None, Some(class)) => format!("node `{id}` ({class})"),
        (None, None) => format!("node `{id}`"),
    }
}

/// The problem for a reference that names no single node of `workflow`, underlined at
/// `span` of `file`, where it was written.
pub fn node_ref_problem(
    error: &NodeRef,
    nodes: &Map<String, Value>,
    reference: &str,
    workflow: &str,
    file: &SourceFile,
    span: Range<usize>,
) -> Problem {
    match error {
        NodeRef::Missing => {
            let mut names: Vec<&str> = nodes.keys().map(String::as_str).collect();
            names.extend(nodes.values().filter_map(title));
            let mut help = match did_you_mean(reference, &names) {
                Some(close) => format!("did you mean `{close}`? "),
                None => String::new(),
            };
            help.push_str("name a node by its id or its title; the workflow's nodes: ");
            let listed: Vec<String> = nodes
                .keys()
                .take(24)
                .map(|id| describe_node(nodes, id).replace("node ", ""))
                .collect();
            help.push_str(&listed.join(", "));
            if nodes.len() > listed.len() {
                let _ = write!(help, " and {} more", nodes.len() - listed.len());
            }
            Problem::at(
                "bind::no_node",
                file,
                span,
                format!("workflow `{workflow}` has no node `{reference}`"),
                "no node has this id or title",
            )
            .with_help(help)
        }
        NodeRef::Ambiguous(ids) => {
            let listed: Vec<String> = ids.iter().map(|id| describe_node(nodes, id)).collect();
            Problem::at(
                "bind::ambiguous_node",
                file,
                span,
                format!(
                    "`{reference}` names {} nodes of workflow `{workflow}`: {}",
                    ids.len(),
                    listed.join(", ")
                ),
                "more than one node",
            )
            .with_help(format!(
                "name one by its id, e.g. \"{}\", or give the nodes distinct titles in ComfyUI \
                 (right-click > Title) and export again",
                ids[0]
            ))
        }
    }
}

/// Rewrite every bound literal of `graph` into its `{{name}}` placeholder; the problems
/// found, each underlined where the binding was written. `tree` indexes `workflow`'s text,
/// so a problem can say where the literal is. A graph that is not an object of nodes is
/// left alone (the template check reports it).
pub(super) fn apply(
    graph: &mut Value,
    tree: &SpanTree,
    workflow: &SourceFile,
    bindings: &Bindings,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(nodes) = graph.as_object_mut() else {
        return problems;
    };
    let mut bound: BTreeMap<(String, String), Range<usize>> = BTreeMap::new();
    // In the order written, so "first bound" is the one above (a table's keys come sorted).
    let mut list: Vec<&Binding> = bindings.list.iter().collect();
    list.sort_by_key(|b| b.target_span.start);
    for b in list {
        let (id, input) = match target(nodes, b, bindings, tree, workflow) {
            Ok(Some(found)) => found,
            // No inputs object: the template check reports the node.
            Ok(None) => continue,
            Err(problem) => {
                problems.push(*problem);
                continue;
            }
        };
        if let Some(first) = bound.get(&(id.clone(), input.clone())) {
            problems.push(
                Problem::at(
                    "bind::bound_twice",
                    &bindings.written_in,
                    b.target_span.clone(),
                    format!(
                        "input `{input}` of {} in workflow `{}` is bound twice",
                        describe_node(nodes, &id),
                        workflow.name()
                    ),
                    "bound again here",
                )
                .with_label(first.clone(), "first bound here")
                .with_help("an input takes one value: remove one of the bindings"),
            );
            continue;
        }
        let slot = nodes
            .get_mut(&id)
            .and_then(|n| n.get_mut("inputs"))
            .and_then(|i| i.get_mut(&input))
            .expect("looked up by `target`");
        *slot = Value::String(format!("{{{{{}}}}}", b.name));
        bound.insert((id, input), b.target_span.clone());
    }
    problems
}

/// The node id and input `b` binds, checked: a known name, one node, an input of it that
/// holds a value of the name's kind. `None` for a node without an inputs object.
fn target(
    nodes: &Map<String, Value>,
    b: &Binding,
    bindings: &Bindings,
    tree: &SpanTree,
    workflow: &SourceFile,
) -> Result<Option<(String, String)>, Box<Problem>> {
    let file = &bindings.written_in;
    let wf = workflow.name();
    let Some(&kind) = bindings.names.get(&b.name) else {
        return Err(Box::new(unknown_name(b, bindings)));
    };
    let (reference, input) = b
        .target
        .rsplit_once('.')
        .expect("the manifest checked the `<node>.<input>` shape");
    let id = find_node(nodes, reference).map_err(|error| {
        Box::new(node_ref_problem(
            &error,
            nodes,
            reference,
            wf,
            file,
            b.target_span.clone(),
        ))
    })?;
    let node = describe_node(nodes, &id);
    let Some(inputs) = nodes[&id].get("inputs").and_then(Value::as_object) else {
        return Ok(None);
    };
    let literals: Vec<&str> = inputs
        .iter()
        .filter(|(_, v)| !is_link(v))
        .map(|(k, _)| k.as_str())
        .collect();
    let Some(literal) = inputs.get(input) else {
        let mut help = match did_you_mean(input, &literals) {
            Some(close) => format!("did you mean `{close}`? "),
            None => String::new(),
        };
        let all: Vec<&str> = inputs.keys().map(String::as_str).collect();
        let _ = write!(help, "its inputs: {}", all.join(", "));
        return Err(Box::new(
            Problem::at(
                "bind::no_input",
                file,
                b.target_span.clone(),
                format!("{node} of workflow `{wf}` has no input `{input}`"),
                "no such input",
            )
            .with_help(help),
        ));
    };
    let at = literal_position(tree, workflow, &id, input);
    if is_link(literal) {
        let from = literal[0].as_str().unwrap_or_default();
        return Err(Box::new(
            Problem::at(
                "bind::link_input",
                file,
                b.target_span.clone(),
                format!(
                    "input `{input}` of {node} in workflow `{wf}` is a link from node `{from}`, \
                     not a value ({at})"
                ),
                "a link, not a value",
            )
            .with_help(format!(
                "bind a value input of this node: {}",
                literals.join(", ")
            )),
        ));
    }
    if !kind.fits(literal) {
        return Err(Box::new(
            Problem::at(
                "bind::type_mismatch",
                file,
                b.target_span.clone(),
                format!(
                    "`{}` is {}, but input `{input}` of {node} in workflow `{wf}` holds {} ({at})",
                    b.name,
                    kind.name(),
                    json_type(literal)
                ),
                format!("expected an input holding {}", kind.name()),
            )
            .with_help(format!(
                "bind `{}` to an input that holds {} (the workflow has `{input}: {}`)",
                b.name,
                kind.name(),
                short(literal)
            )),
        ));
    }
    Ok(Some((id, input.to_owned())))
}

fn unknown_name(b: &Binding, bindings: &Bindings) -> Problem {
    let names: Vec<&str> = bindings.names.keys().map(String::as_str).collect();
    let help = match did_you_mean(&b.name, &names) {
        Some(close) => format!("did you mean `{close}`?"),
        None => format!("values that can be bound: {}", names.join(", ")),
    };
    Problem::at(
        "bind::unknown_name",
        &bindings.written_in,
        b.name_span.clone(),
        format!("`{}` is not a value the manifest gives", b.name),
        "unknown name",
    )
    .with_help(help)
}

fn is_link(value: &Value) -> bool {
    matches!(value.as_array(), Some(a) if a.len() == 2 && a[0].is_string() && a[1].is_u64())
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number with a fraction",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The literal as JSON, cut to 40 characters.
fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// `workflow.json line 12` for the literal of `input` of node `id`.
fn literal_position(tree: &SpanTree, workflow: &SourceFile, id: &str, input: &str) -> String {
    let span = tree
        .entry(id)
        .and_then(|n| n.value.entry("inputs"))
        .and_then(|i| i.value.entry(input))
        .map(|e| e.value.span());
    match span {
        Some(span) => {
            let line = workflow.text()[..span.start].matches('\n').count() + 1;
            format!("{} line {line}", workflow.name())
        }
        None => workflow.name().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::placeholder::Placeholder;
    use crate::workflow::spans::index;
    use serde_json::json;

    #[test]
    fn every_placeholder_has_a_kind() {
        let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, Placeholder::NAMES);
    }

    #[test]
    fn kinds_fit_the_literals_an_export_holds() {
        assert!(Kind::Number.fits(&json!(8)));
        assert!(Kind::Number.fits(&json!(7.5)));
        assert!(Kind::Integer.fits(&json!(20)));
        assert!(!Kind::Integer.fits(&json!(20.5)));
        assert!(!Kind::String.fits(&json!(20)));
        assert!(Kind::Integer.fits(&json!("{{steps}}")));
        assert!(!Kind::Boolean.fits(&json!("true")));
    }

    #[test]
    fn nodes_are_found_by_id_title_or_single_class() {
        let graph = json!({
            "3": {"class_type": "KSampler", "_meta": {"title": "KSampler"}, "inputs": {}},
            "6": {"class_type": "CLIPTextEncode", "_meta": {"title": "Positive"}, "inputs": {}},
            "7": {"class_type": "CLIPTextEncode", "_meta": {"title": "Negative"}, "inputs": {}}
        });
        let nodes = graph.as_object().unwrap();
        assert_eq!(find_node(nodes, "3"), Ok("3".into()));
        assert_eq!(find_node(nodes, "Positive"), Ok("6".into()));
        assert_eq!(find_node(nodes, "KSampler"), Ok("3".into()));
        assert_eq!(
            find_node(nodes, "CLIPTextEncode"),
            Err(NodeRef::Ambiguous(vec!["6".into(), "7".into()]))
        );
        assert_eq!(find_node(nodes, "Positve"), Err(NodeRef::Missing));
    }

    #[test]
    fn variables_bind_with_their_own_type() {
        let text = r#"{"3": {"class_type": "KSampler", "inputs": {"denoise": 1, "sampler_name": "euler"}}}"#;
        let manifest = SourceFile::new("m.toml", "strength = \"3.denoise\"");
        let binding = |name: &str, target: &str| Binding {
            name: name.into(),
            name_span: 0..8,
            target: target.into(),
            target_span: 11..22,
        };
        let bindings = Bindings::new(
            manifest,
            vec![
                binding("strength", "3.denoise"),
                binding("flag", "3.sampler_name"),
            ],
            [
                ("strength".to_owned(), Kind::Number),
                ("flag".to_owned(), Kind::Boolean),
            ],
        );
        let mut graph: Value = serde_json::from_str(text).unwrap();
        let problems = apply(
            &mut graph,
            &index(text),
            &SourceFile::new("w.json", text),
            &bindings,
        );
        let codes: Vec<&str> = problems.iter().map(Problem::code).collect();
        assert_eq!(codes, ["bind::type_mismatch"]);
        assert_eq!(graph["3"]["inputs"]["denoise"], "{{strength}}");
        assert_eq!(graph["3"]["inputs"]["sampler_name"], "euler");
    }

    #[test]
    fn a_binding_turns_the_literal_into_a_placeholder() {
        let text = r#"{"6": {"class_type": "CLIPTextEncode", "_meta": {"title": "Positive"}, "inputs": {"text": "a cat", "clip": ["4", 1]}}}"#;
        let mut graph: Value = serde_json::from_str(text).unwrap();
        let manifest = SourceFile::new("m.toml", "prompt = \"Positive.text\"");
        let binding = Binding {
            name: "prompt".into(),
            name_span: 0..6,
            target: "Positive.text".into(),
            target_span: 9..24,
        };
        let bindings = Bindings::new(manifest, vec![binding], []);
        let problems = apply(
            &mut graph,
            &index(text),
            &SourceFile::new("w.json", text),
            &bindings,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(graph["6"]["inputs"]["text"], "{{prompt}}");
        assert_eq!(graph["6"]["inputs"]["clip"], json!(["4", 1]));
    }
}
