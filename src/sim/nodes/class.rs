//! What a node class is to the simulator: its `/object_info` description, what validation
//! needs beyond it, how it executes, and the class methods ComfyUI calls besides `FUNCTION`
//! (`INPUT_TYPES` per request, `VALIDATE_INPUTS`, `IS_CHANGED`). Each class builds its own
//! `NodeClass` in the file of its family; `catalog` registers them.

use std::path::Path;

use serde_json::{Map, Value, json};

use super::exec::Execute;
use crate::comfyui;

/// `nodes.MAX_RESOLUTION`: the largest side ComfyUI accepts (`EmptyLatentImage`'s own bound).
pub const MAX_RESOLUTION: i64 = *comfyui::LATENT_SIZE.end() as i64;

/// The model files a simulator offers (`ckpt_name` and `lora_name` choices).
pub struct Models<'m> {
    pub checkpoints: &'m [String],
    pub loras: &'m [String],
}

/// One node class: what `/object_info/{class}` reports, the bits validation needs, and its
/// execution.
#[derive(Clone, Debug)]
pub struct NodeClass {
    pub name: &'static str,
    pub display_name: &'static str,
    pub description: &'static str,
    pub python_module: &'static str,
    pub category: &'static str,
    pub output_node: bool,
    /// `(input name, [type, options])`, in declaration order.
    pub required: Vec<(&'static str, Value)>,
    pub optional: Vec<(&'static str, Value)>,
    pub hidden: Vec<(&'static str, &'static str)>,
    pub outputs: Vec<&'static str>,
    pub output_tooltips: Option<Vec<&'static str>>,
    /// Inputs checked by the class's `VALIDATE_INPUTS` instead of min/max/combo checks.
    pub custom_validated: &'static [&'static str],
    /// The class's `FUNCTION`.
    pub execute: Execute,
    /// Whether ComfyUI 0.8.0 checks the interrupt flag inside the node, not only before it:
    /// every layer of a model (`comfy.ops`, `run_every_op`) raises
    /// `InterruptProcessingException` once the flag is set, so a sampler, a CLIP encode or a
    /// VAE decode stops within moments (recorded: `10-interrupt-in-node.jsonl`, `VAEDecode`).
    /// Plain tensor nodes (`EmptyImage`, `ImageBlur`, `ImageScale`, `SaveImage`, ...) only see it at
    /// the next node boundary (`before_node_execution`).
    pub model_ops: bool,
    pub hooks: Hooks,
}

/// The class methods a few classes have besides `INPUT_TYPES` and `FUNCTION`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hooks {
    pub input_types: Option<InputTypes>,
    pub validate_inputs: Option<ValidateInputs>,
    pub is_changed: Option<IsChanged>,
}

/// `INPUT_TYPES` read per request: fills the node's description from the input folder.
pub type InputTypes = fn(&mut Value, &Path);

/// `VALIDATE_INPUTS`: `(input name, why)` for each input it rejects, given the node's inputs
/// as the prompt wrote them and the input folder.
pub type ValidateInputs = fn(&Map<String, Value>, &Path) -> Vec<(&'static str, String)>;

/// `IS_CHANGED`: what, besides its inputs, the node's cache signature depends on (given its
/// inputs and the input folder); `None`: nothing.
pub type IsChanged = fn(&Map<String, Value>, &Path) -> Option<Vec<u8>>;

impl Hooks {
    pub const NONE: Hooks = Hooks {
        input_types: None,
        validate_inputs: None,
        is_changed: None,
    };
}

impl NodeClass {
    /// The V1 `node_info` JSON, as `/object_info` serves it now (`input_dir` is where
    /// `LoadImage` lists its files).
    pub fn info(&self, input_dir: &Path) -> Value {
        let mut input = Map::new();
        let mut order = Map::new();
        let section = |items: &[(&'static str, Value)]| -> (Value, Value) {
            let spec: Map<String, Value> = items
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            let names: Vec<Value> = items.iter().map(|(k, _)| json!(k)).collect();
            (Value::Object(spec), Value::Array(names))
        };
        let (req, req_order) = section(&self.required);
        input.insert("required".into(), req);
        order.insert("required".into(), req_order);
        if !self.optional.is_empty() {
            let (opt, opt_order) = section(&self.optional);
            input.insert("optional".into(), opt);
            order.insert("optional".into(), opt_order);
        }
        if !self.hidden.is_empty() {
            let hidden: Map<String, Value> = self
                .hidden
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            input.insert("hidden".into(), Value::Object(hidden));
            order.insert(
                "hidden".into(),
                json!(self.hidden.iter().map(|(k, _)| *k).collect::<Vec<_>>()),
            );
        }
        let mut info = json!({
            "input": input,
            "input_order": order,
            "output": self.outputs,
            "output_is_list": self.outputs.iter().map(|_| false).collect::<Vec<_>>(),
            "output_name": self.outputs,
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        });
        if let (Some(tips), Some(obj)) = (&self.output_tooltips, info.as_object_mut()) {
            obj.insert("output_tooltips".into(), json!(tips));
        }
        if let Some(fill) = self.hooks.input_types {
            fill(&mut info, input_dir);
        }
        info
    }
}

/// An `INT` input: `["INT", {"default", "min", "max"[, "step"]}]`.
pub fn int(default: i64, min: i64, max: i64, step: Option<i64>) -> Value {
    let mut o = json!({"default": default, "min": min, "max": max});
    if let Some(step) = step {
        o["step"] = json!(step);
    }
    json!(["INT", o])
}

/// An `IMAGE` input, with its tooltip if it has one.
pub fn image_input(tooltip: Option<&str>) -> Value {
    match tooltip {
        Some(t) => json!(["IMAGE", {"tooltip": t}]),
        None => json!(["IMAGE"]),
    }
}

/// A `scale_by` input (`ImageScaleBy`, `LatentUpscaleBy`): a factor from 0.01 to 8.
pub fn scale_by(default: f64) -> Value {
    json!(["FLOAT", {"default": default, "min": 0.01, "max": 8.0, "step": 0.01}])
}

/// `INPUT_TYPES` of a node written on ComfyUI's V3 schema (`comfy_extras.nodes_mask`,
/// `nodes_post_processing`, ...): its `/object_info` entry has these fields too, and a
/// display name it does not set is `null` (an empty `display_name` here).
pub fn v3_schema(info: &mut Value, _input_dir: &Path) {
    let Some(o) = info.as_object_mut() else {
        return;
    };
    let outputs = o
        .get("output")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    o.insert("output_tooltips".into(), json!(vec![Value::Null; outputs]));
    o.insert("output_matchtypes".into(), Value::Null);
    if o.get("display_name") == Some(&json!("")) {
        o.insert("display_name".into(), Value::Null);
    }
    for flag in ["deprecated", "experimental", "api_node"] {
        o.insert(flag.into(), json!(false));
    }
}

impl Hooks {
    /// A V3-schema node's: [`v3_schema`].
    pub const V3: Hooks = Hooks {
        input_types: Some(v3_schema),
        validate_inputs: None,
        is_changed: None,
    };
}
