//! `POST /prompt` validation (`execution.validate_prompt` / `validate_inputs`) over the
//! classes' descriptions, with ComfyUI's exact error shapes and strings.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::super::pyjson;
use super::catalog::Catalog;
use super::class::NodeClass;

/// A Python exception raised outside a `try` in validation.
#[derive(Debug)]
pub struct PyExc {
    pub type_name: &'static str,
    pub message: String,
    pub traceback: Vec<String>,
}

/// What `POST /prompt` answers.
pub enum Verdict {
    /// 200: the coerced prompt, the outputs to execute, and (possibly non-empty) node errors.
    Accepted {
        prompt: Map<String, Value>,
        outputs: Vec<String>,
        node_errors: Value,
    },
    /// 400 with `{"error", "node_errors"}`.
    Rejected { error: Value, node_errors: Value },
    /// An unhandled exception in the real server: 500.
    Internal,
}

fn err(kind: &str, message: impl Into<String>, details: impl Into<String>, extra: Value) -> Value {
    let mut error = json!({"type": kind, "message": message.into(), "details": details.into()});
    error["extra_info"] = extra;
    error
}

const TB_VALIDATE_PROMPT: &str = "  File \"ComfyUI/execution.py\", line 1043, in validate_prompt\n    m = await validate_inputs(prompt_id, prompt, o, validated)\n        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n";
const TB_LOOKUP: &str = "  File \"ComfyUI/execution.py\", line 818, in validate_inputs\n    o_class_type = prompt[o_id]['class_type']\n                   ~~~~~~^^^^^^\n";
const TB_INNER: &str = "  File \"ComfyUI/execution.py\", line 838, in validate_inputs\n    r = await validate_inputs(prompt_id, prompt, o_id, validated)\n        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n";
const TB_SLOT: &str = "  File \"ComfyUI/execution.py\", line 820, in validate_inputs\n    received_type = r[val[1]]\n                    ~^^^^^^^^\n";

struct Validator<'a> {
    catalog: &'a Catalog,
    input_dir: &'a Path,
    prompt: Map<String, Value>,
    /// `validated` in insertion order: (node id, valid, reasons).
    validated: Vec<(String, bool, Vec<Value>)>,
    position: HashMap<String, usize>,
}

impl Validator<'_> {
    fn set(&mut self, id: &str, valid: bool, reasons: Vec<Value>) {
        if let Some(&i) = self.position.get(id) {
            self.validated[i] = (id.to_string(), valid, reasons);
        } else {
            self.position.insert(id.to_string(), self.validated.len());
            self.validated.push((id.to_string(), valid, reasons));
        }
    }

    fn class_of(&self, id: &str) -> Option<&NodeClass> {
        let ct = self.prompt.get(id)?.get("class_type")?.as_str()?;
        self.catalog.get(ct)
    }

    #[allow(
        clippy::too_many_lines,
        reason = "mirrors ComfyUI's validate_inputs (execution.py) check by check"
    )]
    fn validate_inputs(&mut self, id: &str) -> Result<bool, PyExc> {
        if let Some(&i) = self.position.get(id) {
            return Ok(self.validated[i].1);
        }
        let class = self.class_of(id).cloned().ok_or_else(|| PyExc {
            type_name: "KeyError",
            message: pyjson::str_repr(id),
            traceback: vec![TB_LOOKUP.into()],
        })?;
        let inputs = match self.prompt.get(id).and_then(|n| n.get("inputs")) {
            Some(Value::Object(m)) => m.clone(),
            Some(_) => Map::new(),
            None => {
                return Err(PyExc {
                    type_name: "KeyError",
                    message: "'inputs'".into(),
                    traceback: vec![],
                });
            }
        };
        let mut errors = Vec::new();
        let mut valid = true;
        let all: Vec<(&'static str, Value, bool)> = class
            .required
            .iter()
            .map(|(k, v)| (*k, v.clone(), true))
            .chain(class.optional.iter().map(|(k, v)| (*k, v.clone(), false)))
            .collect();
        for (name, info, required) in all {
            // `info = (input_type, extra_info)`: a spec without options gets `{}`.
            let info = match info {
                Value::Array(mut spec) if spec.len() == 1 => {
                    spec.push(json!({}));
                    Value::Array(spec)
                }
                other => other,
            };
            let Some(val) = inputs.get(name) else {
                if required {
                    errors.push(err(
                        "required_input_missing",
                        "Required input is missing",
                        name,
                        json!({"input_name": name}),
                    ));
                }
                continue;
            };
            let input_type = info[0].clone();
            if let Value::Array(link) = val {
                if link.len() != 2 {
                    errors.push(err(
                        "bad_linked_input",
                        "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        name,
                        json!({"input_name": name, "input_config": info, "received_value": val}),
                    ));
                    continue;
                }
                let o_id = match &link[0] {
                    Value::String(s) if self.prompt.contains_key(s) => s.clone(),
                    Value::String(s) => {
                        return Err(PyExc {
                            type_name: "KeyError",
                            message: pyjson::str_repr(s),
                            traceback: vec![TB_LOOKUP.into()],
                        });
                    }
                    other => {
                        return Err(PyExc {
                            type_name: "KeyError",
                            message: pyjson::repr(other),
                            traceback: vec![TB_LOOKUP.into()],
                        });
                    }
                };
                let o_class = self.class_of(&o_id).cloned().ok_or_else(|| PyExc {
                    type_name: "KeyError",
                    message: pyjson::str_repr(&o_id),
                    traceback: vec![TB_LOOKUP.into()],
                })?;
                let slot = match &link[1] {
                    Value::Number(n) if n.as_i64().is_some() => n.as_i64().unwrap_or(0),
                    other => {
                        return Err(PyExc {
                            type_name: "TypeError",
                            message: format!(
                                "tuple indices must be integers or slices, not {}",
                                pyjson::type_name(other)
                            ),
                            traceback: vec![TB_SLOT.into()],
                        });
                    }
                };
                let n = o_class.outputs.len() as i64;
                let slot = if slot < 0 { slot + n } else { slot };
                if slot < 0 || slot >= n {
                    return Err(PyExc {
                        type_name: "IndexError",
                        message: "tuple index out of range".into(),
                        traceback: vec![TB_SLOT.into()],
                    });
                }
                let received = o_class.outputs[slot as usize];
                if !type_matches(received, &input_type) {
                    let shown = match &input_type {
                        Value::String(s) => s.clone(),
                        other => pyjson::repr(other),
                    };
                    errors.push(err(
                        "return_type_mismatch",
                        "Return type mismatch between linked nodes",
                        format!("{name}, received_type({received}) mismatch input_type({shown})"),
                        json!({"input_name": name, "input_config": info, "received_type": received, "linked_node": val}),
                    ));
                    continue;
                }
                match self.validate_inputs(&o_id) {
                    Ok(true) => {}
                    Ok(false) => valid = false,
                    Err(ex) => {
                        valid = false;
                        let mut tb = vec![TB_INNER.to_string()];
                        tb.extend(ex.traceback.iter().cloned());
                        let reason = err(
                            "exception_during_inner_validation",
                            "Exception when validating inner node",
                            ex.message.clone(),
                            json!({
                                "input_name": name,
                                "input_config": info,
                                "exception_message": ex.message,
                                "exception_type": ex.type_name,
                                "traceback": tb,
                                "linked_node": val,
                            }),
                        );
                        self.set(&o_id, false, vec![reason]);
                    }
                }
                continue;
            }

            let mut val = val.clone();
            if let Some(inner) = val.as_object().and_then(|o| o.get("__value__")) {
                val = inner.clone();
            }
            let type_str = input_type.as_str().unwrap_or("");
            match coerce(type_str, &val) {
                Ok(v) => val = v,
                Err(msg) => {
                    errors.push(err(
                        "invalid_input_type",
                        format!("Failed to convert an input value to a {type_str} value"),
                        format!("{name}, {}, {msg}", pyjson::str_value(&val)),
                        json!({"input_name": name, "input_config": info, "received_value": val, "exception_message": msg}),
                    ));
                    continue;
                }
            }
            if let Some(node_inputs) = self
                .prompt
                .get_mut(id)
                .and_then(|n| n.get_mut("inputs"))
                .and_then(|i| i.as_object_mut())
            {
                node_inputs.insert(name.to_string(), val.clone());
            }
            if class.custom_validated.contains(&name) {
                continue;
            }
            let opts = &info[1];
            if let (Some(min), Some(v)) = (opts.get("min"), val.as_f64())
                && min.as_f64().is_some_and(|m| v < m)
            {
                errors.push(err(
                    "value_smaller_than_min",
                    format!(
                        "Value {} smaller than min of {}",
                        pyjson::str_value(&val),
                        pyjson::str_value(min)
                    ),
                    name,
                    json!({"input_name": name, "input_config": info, "received_value": val}),
                ));
                continue;
            }
            if let (Some(max), Some(v)) = (opts.get("max"), val.as_f64())
                && max
                    .as_f64()
                    .is_some_and(|m| v > m && !big_int_equal(&val, max))
            {
                errors.push(err(
                    "value_bigger_than_max",
                    format!(
                        "Value {} bigger than max of {}",
                        pyjson::str_value(&val),
                        pyjson::str_value(max)
                    ),
                    name,
                    json!({"input_name": name, "input_config": info, "received_value": val}),
                ));
                continue;
            }
            let options = match &input_type {
                Value::Array(list) => Some(list.clone()),
                Value::String(s) if s == "COMBO" => Some(
                    opts.get("options")
                        .and_then(|o| o.as_array())
                        .cloned()
                        .unwrap_or_default(),
                ),
                _ => None,
            };
            if let Some(options) = options
                && !options.contains(&val)
            {
                let (list_info, config) = if options.len() > 20 {
                    (format!("(list of length {})", options.len()), Value::Null)
                } else {
                    (pyjson::repr(&Value::Array(options.clone())), info.clone())
                };
                errors.push(err(
                    "value_not_in_list",
                    "Value not in list",
                    format!("{name}: '{}' not in {list_info}", pyjson::str_value(&val)),
                    json!({"input_name": name, "input_config": config, "received_value": val}),
                ));
            }
        }
        // The class's VALIDATE_INPUTS, over the inputs as the prompt wrote them.
        if let Some(validate) = class.hooks.validate_inputs {
            for (name, why) in validate(&inputs, self.input_dir) {
                errors.push(err(
                    "custom_validation_failed",
                    "Custom validation failed for node",
                    format!("{name} - {why}"),
                    json!({"input_name": name}),
                ));
            }
        }
        let ok = errors.is_empty() && valid;
        self.set(id, ok, errors);
        Ok(ok)
    }
}

fn big_int_equal(val: &Value, max: &Value) -> bool {
    matches!((val.as_u64(), max.as_u64()), (Some(a), Some(b)) if a <= b)
}

/// `execution.validate_node_input` for the types the simulator has.
fn type_matches(received: &str, input_type: &Value) -> bool {
    match input_type {
        Value::String(t) => {
            if t == received || t == "*" || received == "*" {
                return true;
            }
            let r: Vec<&str> = received.split(',').map(str::trim).collect();
            t.split(',').map(str::trim).any(|x| r.contains(&x))
        }
        _ => false,
    }
}

/// `int(x)`, `float(x)`, `str(x)` and `bool(x)` as validation applies them.
fn coerce(input_type: &str, val: &Value) -> Result<Value, String> {
    match input_type {
        "INT" => match val {
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(val.clone()),
            Value::Number(n) => {
                let f = n.as_f64().unwrap_or(0.0);
                if f.is_nan() {
                    Err("cannot convert float NaN to integer".into())
                } else if f.is_infinite() {
                    Err("cannot convert float infinity to integer".into())
                } else {
                    Ok(json!(f.trunc() as i64))
                }
            }
            Value::Bool(b) => Ok(json!(i64::from(*b))),
            Value::String(s) => {
                let t = s.trim().replace('_', "");
                t.parse::<i64>()
                    .map(|i| json!(i))
                    .or_else(|_| t.parse::<u64>().map(|u| json!(u)))
                    .map_err(|_| {
                        format!(
                            "invalid literal for int() with base 10: {}",
                            pyjson::str_repr(s)
                        )
                    })
            }
            other => Err(format!(
                "int() argument must be a string, a bytes-like object or a real number, not '{}'",
                pyjson::type_name(other)
            )),
        },
        "FLOAT" => match val {
            Value::Number(n) => Ok(json!(n.as_f64().unwrap_or(0.0))),
            Value::Bool(b) => Ok(json!(if *b { 1.0 } else { 0.0 })),
            Value::String(s) => s
                .trim()
                .replace('_', "")
                .parse::<f64>()
                .ok()
                .map(|f| json!(f))
                .ok_or_else(|| {
                    format!("could not convert string to float: {}", pyjson::str_repr(s))
                }),
            other => Err(format!(
                "float() argument must be a string or a real number, not '{}'",
                pyjson::type_name(other)
            )),
        },
        "STRING" => Ok(Value::String(pyjson::str_value(val))),
        "BOOLEAN" => Ok(Value::Bool(match val {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64().unwrap_or(0.0) != 0.0,
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        })),
        _ => Ok(val.clone()),
    }
}

/// `execution.validate_prompt` plus the `post_prompt` wrapping around it.
#[allow(
    clippy::too_many_lines,
    reason = "mirrors ComfyUI's validate_prompt (execution.py) step by step"
)]
pub fn validate_prompt(
    catalog: &Catalog,
    input_dir: &Path,
    prompt: &Value,
    partial: Option<&Value>,
) -> Verdict {
    let Value::Object(map) = prompt else {
        // Iterating a string or list and indexing it raises TypeError in the real server.
        return match prompt {
            Value::Object(_) => unreachable!(),
            Value::Array(a) if a.is_empty() => no_outputs(),
            Value::String(s) if s.is_empty() => no_outputs(),
            _ => Verdict::Internal,
        };
    };
    let mut outputs = Vec::new();
    for (id, node) in map {
        let class_type = match node {
            Value::Object(o) => match o.get("class_type") {
                Some(ct) => ct,
                None => return missing_class(id),
            },
            Value::String(s) if !s.contains("class_type") => return missing_class(id),
            Value::Array(a) if !a.contains(&json!("class_type")) => return missing_class(id),
            _ => return Verdict::Internal,
        };
        let class = match class_type {
            Value::String(s) => catalog.get(s),
            Value::Array(_) | Value::Object(_) => return Verdict::Internal,
            _ => None,
        };
        let Some(class) = class else {
            return Verdict::Rejected {
                error: err(
                    "invalid_prompt",
                    format!(
                        "Cannot execute because node {} does not exist.",
                        pyjson::str_value(class_type)
                    ),
                    format!("Node ID '#{id}'"),
                    json!({}),
                ),
                node_errors: json!({}),
            };
        };
        let selected = match partial {
            None | Some(Value::Null) => true,
            Some(Value::Array(ids)) => ids.iter().any(|x| x.as_str() == Some(id)),
            Some(_) => false,
        };
        if class.output_node && selected {
            outputs.push(id.clone());
        }
    }
    if outputs.is_empty() {
        return no_outputs();
    }
    let mut v = Validator {
        catalog,
        input_dir,
        prompt: map.clone(),
        validated: Vec::new(),
        position: HashMap::new(),
    };
    let mut good = Vec::new();
    let mut failed: Vec<Vec<Value>> = Vec::new();
    let mut node_errors = Map::new();
    for o in &outputs {
        let (valid, reasons) = match v.validate_inputs(o) {
            Ok(valid) => (
                valid,
                v.position
                    .get(o.as_str())
                    .map(|&i| v.validated[i].2.clone())
                    .unwrap_or_default(),
            ),
            Err(ex) => {
                let mut tb = vec![TB_VALIDATE_PROMPT.to_string()];
                tb.extend(ex.traceback);
                let reasons = vec![err(
                    "exception_during_validation",
                    "Exception when validating node",
                    ex.message,
                    json!({"exception_type": ex.type_name, "traceback": tb}),
                )];
                v.set(o, false, reasons.clone());
                (false, reasons)
            }
        };
        if valid {
            good.push(o.clone());
            continue;
        }
        failed.push(reasons);
        for (node_id, ok, reasons) in &v.validated {
            if !ok && !reasons.is_empty() {
                let entry = node_errors.entry(node_id.clone()).or_insert_with(|| {
                    let ct = v
                        .prompt
                        .get(node_id)
                        .and_then(|n| n.get("class_type"))
                        .cloned()
                        .unwrap_or(Value::Null);
                    json!({"errors": reasons, "dependent_outputs": [], "class_type": ct})
                });
                if let Some(deps) = entry
                    .get_mut("dependent_outputs")
                    .and_then(|d| d.as_array_mut())
                {
                    deps.push(json!(o));
                }
            }
        }
    }
    if good.is_empty() {
        let details: Vec<String> = failed
            .iter()
            .flatten()
            .map(|e| {
                format!(
                    "{}: {}",
                    e["message"].as_str().unwrap_or(""),
                    e["details"].as_str().unwrap_or("")
                )
            })
            .collect();
        return Verdict::Rejected {
            error: err(
                "prompt_outputs_failed_validation",
                "Prompt outputs failed validation",
                details.join("\n"),
                json!({}),
            ),
            node_errors: Value::Object(node_errors),
        };
    }
    Verdict::Accepted {
        prompt: v.prompt,
        outputs: good,
        node_errors: Value::Object(node_errors),
    }
}

fn missing_class(id: &str) -> Verdict {
    Verdict::Rejected {
        error: err(
            "invalid_prompt",
            "Cannot execute because a node is missing the class_type property.",
            format!("Node ID '#{id}'"),
            json!({}),
        ),
        node_errors: json!({}),
    }
}

fn no_outputs() -> Verdict {
    Verdict::Rejected {
        error: err("prompt_no_outputs", "Prompt has no outputs", "", json!({})),
        node_errors: json!({}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comfyui;

    fn check(prompt: &Value) -> (Value, Value) {
        let cat = Catalog::new(&["a.safetensors".into()], &["l.safetensors".into()]);
        match validate_prompt(&cat, Path::new("/nonexistent"), prompt, None) {
            Verdict::Rejected { error, node_errors } => (error, node_errors),
            Verdict::Accepted { .. } => panic!("accepted"),
            Verdict::Internal => panic!("internal"),
        }
    }

    #[test]
    fn integer_link_id_is_a_key_error() {
        let (e, ne) = check(
            &json!({"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": [4, 0]}}}),
        );
        assert_eq!(e["details"], "Exception when validating node: 4");
        assert_eq!(ne["9"]["errors"][0]["details"], "4");
    }

    #[test]
    fn inner_dangling_link_blames_the_linked_node() {
        let (_, ne) = check(&json!({
            "1": {"class_type": "ImageBlur", "inputs": {"image": ["77", 0], "blur_radius": 1, "sigma": 1.0}},
            "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["1", 0]}}
        }));
        // The inner KeyError is raised while validating "1"'s input and stored under "1".
        assert_eq!(
            ne["1"]["errors"][0]["type"],
            "exception_during_inner_validation"
        );
        assert_eq!(ne["1"]["errors"][0]["details"], "'77'");
    }

    #[test]
    fn long_combo_lists_are_summarised() {
        let (_, ne) = check(&json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["4", 1]}},
            "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2, "cfg": 7, "sampler_name": "nope", "scheduler": "normal", "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["5", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["8", 0]}}
        }));
        let e = &ne["3"]["errors"][0];
        assert_eq!(
            e["details"],
            format!(
                "sampler_name: 'nope' not in (list of length {})",
                comfyui::SAMPLERS.len()
            )
        );
        assert_eq!(e["extra_info"]["input_config"], Value::Null);
    }
}
