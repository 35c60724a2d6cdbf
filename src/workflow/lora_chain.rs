//! LoRA stacks: a page's `loras` become one `LoraLoader` node per LoRA, chained in order
//! after the node whose MODEL (output 0) and CLIP (output 1) feed the rest of the graph (the
//! *anchor*), and every input that took MODEL or CLIP from the anchor takes it from the last
//! LoRA instead. No template per stack size: any template with a checkpoint loader works.
//!
//! The anchor is the node a binding names (`loras = "<node>"` in the workflow's `[bind]`
//! table), else the workflow's one `CheckpointLoaderSimple`.

use std::ops::Range;

use serde_json::{Map, Value, json};

use super::bind::{NodeRef, describe_node, find_node, node_ref_problem};
use crate::diagnostic::{Problem, SourceFile};
use crate::params::LoraParams;

/// The class whose single node is the anchor when no binding names one.
pub const CHECKPOINT_LOADER: &str = "CheckpointLoaderSimple";
/// The class of each node of the chain.
pub const LORA_LOADER: &str = "LoraLoader";
/// Chain nodes are `plasma_lora_1`, `plasma_lora_2`, ... (prefixed further with `plasma_` in
/// the unlikely case a template already has such an id).
const ID_PREFIX: &str = "plasma_lora_";

/// Why a template has no anchor for a LoRA chain.
#[derive(Debug, Clone, PartialEq)]
pub enum NoAnchor {
    /// The named node is missing or ambiguous.
    Named(NodeRef),
    /// No binding, and not exactly one `CheckpointLoaderSimple`: their ids.
    Loaders(Vec<String>),
    /// The anchor's MODEL and CLIP outputs feed nothing: a chain there would be ignored.
    Unused(String),
}

/// The id of the anchor of `graph`: the node `named`, else its one `CheckpointLoaderSimple`.
pub fn find_anchor(graph: &Value, named: Option<&str>) -> Result<String, NoAnchor> {
    let empty = Map::new();
    let nodes = graph.as_object().unwrap_or(&empty);
    let anchor = if let Some(reference) = named {
        find_node(nodes, reference).map_err(NoAnchor::Named)?
    } else {
        let mut loaders: Vec<String> = nodes
            .iter()
            .filter(|(_, n)| n.get("class_type").and_then(Value::as_str) == Some(CHECKPOINT_LOADER))
            .map(|(id, _)| id.clone())
            .collect();
        if loaders.len() != 1 {
            return Err(NoAnchor::Loaders(loaders));
        }
        loaders.remove(0)
    };
    let consumed = nodes
        .values()
        .flat_map(inputs)
        .any(|(_, v)| link_from(v, &anchor).is_some_and(|slot| slot <= 1));
    if consumed {
        Ok(anchor)
    } else {
        Err(NoAnchor::Unused(anchor))
    }
}

fn inputs(node: &Value) -> impl Iterator<Item = (&String, &Value)> {
    node.get("inputs")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
}

/// The output index of a link from `node`, if `value` is one.
fn link_from(value: &Value, node: &str) -> Option<u64> {
    match value.as_array()?.as_slice() {
        [Value::String(from), slot] if from == node => slot.as_u64(),
        _ => None,
    }
}

/// `graph` with `loras` chained after `anchor` (see the module docs). An empty stack leaves
/// the graph as it is. The chain's nodes follow the anchor in the graph's key order.
pub fn chain(graph: &Value, anchor: &str, loras: &[LoraParams]) -> Value {
    let Some(nodes) = graph.as_object() else {
        return graph.clone();
    };
    if loras.is_empty() {
        return graph.clone();
    }
    let mut prefix = ID_PREFIX.to_owned();
    while (1..=loras.len()).any(|n| nodes.contains_key(&format!("{prefix}{n}"))) {
        prefix.insert_str(0, "plasma_");
    }
    let ids: Vec<String> = (1..=loras.len()).map(|n| format!("{prefix}{n}")).collect();
    let last = ids.last().expect("a non-empty stack").clone();
    let mut out = Map::new();
    for (id, node) in nodes {
        let mut node = node.clone();
        if let Some(inputs) = node.get_mut("inputs").and_then(Value::as_object_mut) {
            for value in inputs.values_mut() {
                if let Some(slot @ (0 | 1)) = link_from(value, anchor) {
                    *value = json!([last, slot]);
                }
            }
        }
        out.insert(id.clone(), node);
        if id == anchor {
            let mut from = anchor.to_owned();
            for (lora, id) in loras.iter().zip(&ids) {
                out.insert(
                    id.clone(),
                    json!({
                        "class_type": LORA_LOADER,
                        "inputs": {
                            "lora_name": lora.name,
                            "strength_model": lora.strength_model,
                            "strength_clip": lora.strength_clip,
                            "model": [from, 0],
                            "clip": [from, 1],
                        }
                    }),
                );
                from.clone_from(id);
            }
        }
    }
    Value::Object(out)
}

/// The problem for a page whose stack has no anchor in `workflow`, underlined at `span` of
/// `file` (the page's `loras`, or the binding that names the anchor).
pub fn no_anchor_problem(
    error: &NoAnchor,
    graph: &Value,
    named: Option<&str>,
    workflow: &str,
    file: &SourceFile,
    span: Range<usize>,
) -> Problem {
    let empty = Map::new();
    let nodes = graph.as_object().unwrap_or(&empty);
    let bind_help = "name the node whose MODEL and CLIP outputs the LoRAs follow with `loras = \
                     \"<node id or title>\"` in `[bind.\"<this workflow's path>\"]`";
    match error {
        NoAnchor::Named(error) => node_ref_problem(
            error,
            nodes,
            named.unwrap_or_default(),
            workflow,
            file,
            span,
        ),
        NoAnchor::Loaders(ids) => {
            let found = if ids.is_empty() {
                format!("has no {CHECKPOINT_LOADER} node")
            } else {
                let listed: Vec<String> = ids.iter().map(|id| describe_node(nodes, id)).collect();
                format!(
                    "has {} {CHECKPOINT_LOADER} nodes ({})",
                    ids.len(),
                    listed.join(", ")
                )
            };
            Problem::at(
                "manifest::lora_chain_anchor",
                file,
                span,
                format!("workflow `{workflow}` {found}: where does the LoRA chain go?"),
                "these LoRAs have no place in the workflow",
            )
            .with_help(bind_help)
        }
        NoAnchor::Unused(id) => Problem::at(
            "manifest::lora_chain_anchor",
            file,
            span,
            format!(
                "no node of workflow `{workflow}` takes MODEL or CLIP (outputs 0 and 1) from {}: \
                 the LoRAs would be ignored",
                describe_node(nodes, id)
            ),
            "these LoRAs would be ignored",
        )
        .with_help(bind_help),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> Value {
        serde_json::from_str(include_str!("../../workflows/txt2img.json")).unwrap()
    }

    fn lora(name: &str) -> LoraParams {
        LoraParams {
            name: name.into(),
            strength_model: 0.5,
            strength_clip: 0.25,
        }
    }

    #[test]
    fn the_chain_follows_the_checkpoint_loader_in_order() {
        let g = graph();
        let anchor = find_anchor(&g, None).unwrap();
        assert_eq!(anchor, "4");
        let chained = chain(&g, &anchor, &[lora("a"), lora("b"), lora("c")]);
        let ids: Vec<&String> = chained.as_object().unwrap().keys().collect();
        assert_eq!(
            ids,
            [
                "4",
                "plasma_lora_1",
                "plasma_lora_2",
                "plasma_lora_3",
                "5",
                "6",
                "7",
                "3",
                "8",
                "9"
            ]
        );
        let l1 = &chained["plasma_lora_1"]["inputs"];
        assert_eq!(l1["model"], json!(["4", 0]));
        assert_eq!(l1["clip"], json!(["4", 1]));
        assert_eq!(l1["lora_name"], "a");
        assert_eq!(
            chained["plasma_lora_3"]["inputs"]["model"],
            json!(["plasma_lora_2", 0])
        );
        assert_eq!(chained["3"]["inputs"]["model"], json!(["plasma_lora_3", 0]));
        assert_eq!(chained["6"]["inputs"]["clip"], json!(["plasma_lora_3", 1]));
        // The VAE (output 2) still comes from the checkpoint.
        assert_eq!(chained["8"]["inputs"]["vae"], json!(["4", 2]));
        assert_eq!(chain(&g, &anchor, &[]), g);
    }

    #[test]
    fn chain_ids_never_clash() {
        let mut g = graph();
        g["plasma_lora_1"] = json!({"class_type": "X", "inputs": {}});
        let chained = chain(&g, "4", &[lora("a")]);
        assert_eq!(
            chained["3"]["inputs"]["model"],
            json!(["plasma_plasma_lora_1", 0])
        );
    }

    #[test]
    fn an_anchor_must_be_one_loader_that_feeds_something() {
        let mut g = graph();
        g["10"] = g["4"].clone();
        assert_eq!(
            find_anchor(&g, None),
            Err(NoAnchor::Loaders(vec!["4".into(), "10".into()]))
        );
        assert_eq!(find_anchor(&g, Some("4")), Ok("4".into()));
        assert_eq!(
            find_anchor(&g, Some("10")),
            Err(NoAnchor::Unused("10".into()))
        );
        assert_eq!(
            find_anchor(&g, Some("Loader")),
            Err(NoAnchor::Named(NodeRef::Missing))
        );
    }
}
