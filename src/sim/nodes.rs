//! The node classes the simulator knows, as ComfyUI 0.8.0 describes them in `/object_info`,
//! and `POST /prompt` validation (`execution.validate_prompt` / `validate_inputs`) over
//! those descriptions, with ComfyUI's exact error shapes and strings. Execution lives in
//! `worker.rs`; this module never touches sockets.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::pyjson;

pub const MAX_RESOLUTION: i64 = 16384;

pub const SAMPLERS: &[&str] = &[
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "exp_heun_2_x0",
    "exp_heun_2_x0_sde",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "res_multistep",
    "res_multistep_cfg_pp",
    "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp",
    "gradient_estimation",
    "gradient_estimation_cfg_pp",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "sa_solver_pece",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
];

/// The scheduler list is a fact of ComfyUI 0.8.0 shared with the manifest checks.
pub use crate::manifest::parse::SCHEDULERS;

/// One node class: what `/object_info/{class}` reports, plus the bits validation needs.
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
}

impl NodeClass {
    /// The V1 `node_info` JSON.
    pub fn info(&self) -> Value {
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
        info
    }
}

/// Every class the simulator serves, built once per simulator from its model lists.
pub struct Catalog {
    classes: Vec<NodeClass>,
    index: HashMap<&'static str, usize>,
}

fn int(default: i64, min: i64, max: i64, step: Option<i64>) -> Value {
    let mut o = json!({"default": default, "min": min, "max": max});
    if let Some(step) = step {
        o["step"] = json!(step);
    }
    json!(["INT", o])
}

impl Catalog {
    pub fn new(checkpoints: &[String], loras: &[String]) -> Catalog {
        let image_in = |tip: Option<&str>| match tip {
            Some(t) => json!(["IMAGE", {"tooltip": t}]),
            None => json!(["IMAGE"]),
        };
        let classes = vec![
            NodeClass {
                name: "CheckpointLoaderSimple",
                display_name: "Load Checkpoint",
                description: "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
                python_module: "nodes",
                category: "loaders",
                output_node: false,
                required: vec![(
                    "ckpt_name",
                    json!([checkpoints, {"tooltip": "The name of the checkpoint (model) to load."}]),
                )],
                optional: vec![],
                hidden: vec![],
                outputs: vec!["MODEL", "CLIP", "VAE"],
                output_tooltips: Some(vec![
                    "The model used for denoising latents.",
                    "The CLIP model used for encoding text prompts.",
                    "The VAE model used for encoding and decoding images to and from latent space.",
                ]),
                custom_validated: &[],
            },
            NodeClass {
                name: "LoraLoader",
                display_name: "Load LoRA",
                description: "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised such as applying styles. Multiple LoRA nodes can be linked together.",
                python_module: "nodes",
                category: "loaders",
                output_node: false,
                required: vec![
                    (
                        "model",
                        json!(["MODEL", {"tooltip": "The diffusion model the LoRA will be applied to."}]),
                    ),
                    (
                        "clip",
                        json!(["CLIP", {"tooltip": "The CLIP model the LoRA will be applied to."}]),
                    ),
                    (
                        "lora_name",
                        json!([loras, {"tooltip": "The name of the LoRA."}]),
                    ),
                    (
                        "strength_model",
                        json!(["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01, "tooltip": "How strongly to modify the diffusion model. This value can be negative."}]),
                    ),
                    (
                        "strength_clip",
                        json!(["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01, "tooltip": "How strongly to modify the CLIP model. This value can be negative."}]),
                    ),
                ],
                optional: vec![],
                hidden: vec![],
                outputs: vec!["MODEL", "CLIP"],
                output_tooltips: Some(vec![
                    "The modified diffusion model.",
                    "The modified CLIP model.",
                ]),
                custom_validated: &[],
            },
            NodeClass {
                name: "CLIPTextEncode",
                display_name: "CLIP Text Encode (Prompt)",
                description: "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion model towards generating specific images.",
                python_module: "nodes",
                category: "conditioning",
                output_node: false,
                required: vec![
                    (
                        "text",
                        json!(["STRING", {"multiline": true, "dynamicPrompts": true, "tooltip": "The text to be encoded."}]),
                    ),
                    (
                        "clip",
                        json!(["CLIP", {"tooltip": "The CLIP model used for encoding the text."}]),
                    ),
                ],
                optional: vec![],
                hidden: vec![],
                outputs: vec!["CONDITIONING"],
                output_tooltips: Some(vec![
                    "A conditioning containing the embedded text used to guide the diffusion model.",
                ]),
                custom_validated: &[],
            },
            NodeClass {
                name: "EmptyLatentImage",
                display_name: "Empty Latent Image",
                description: "Create a new batch of empty latent images to be denoised via sampling.",
                python_module: "nodes",
                category: "latent",
                output_node: false,
                required: vec![
                    (
                        "width",
                        json!(["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8, "tooltip": "The width of the latent images in pixels."}]),
                    ),
                    (
                        "height",
                        json!(["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8, "tooltip": "The height of the latent images in pixels."}]),
                    ),
                    (
                        "batch_size",
                        json!(["INT", {"default": 1, "min": 1, "max": 4096, "tooltip": "The number of latent images in the batch."}]),
                    ),
                ],
                optional: vec![],
                hidden: vec![],
                outputs: vec!["LATENT"],
                output_tooltips: Some(vec!["The empty latent image batch."]),
                custom_validated: &[],
            },
            NodeClass {
                name: "KSampler",
                display_name: "KSampler",
                description: "Uses the provided model, positive and negative conditioning to denoise the latent image.",
                python_module: "nodes",
                category: "sampling",
                output_node: false,
                required: vec![
                    (
                        "model",
                        json!(["MODEL", {"tooltip": "The model used for denoising the input latent."}]),
                    ),
                    (
                        "seed",
                        json!(["INT", {"default": 0, "min": 0, "max": u64::MAX, "control_after_generate": true, "tooltip": "The random seed used for creating the noise."}]),
                    ),
                    (
                        "steps",
                        json!(["INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "The number of steps used in the denoising process."}]),
                    ),
                    (
                        "cfg",
                        json!(["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher values result in images more closely matching the prompt however too high values will negatively impact quality."}]),
                    ),
                    (
                        "sampler_name",
                        json!([SAMPLERS, {"tooltip": "The algorithm used when sampling, this can affect the quality, speed, and style of the generated output."}]),
                    ),
                    (
                        "scheduler",
                        json!([SCHEDULERS, {"tooltip": "The scheduler controls how noise is gradually removed to form the image."}]),
                    ),
                    (
                        "positive",
                        json!(["CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to include in the image."}]),
                    ),
                    (
                        "negative",
                        json!(["CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to exclude from the image."}]),
                    ),
                    (
                        "latent_image",
                        json!(["LATENT", {"tooltip": "The latent image to denoise."}]),
                    ),
                    (
                        "denoise",
                        json!(["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "The amount of denoising applied, lower values will maintain the structure of the initial image allowing for image to image sampling."}]),
                    ),
                ],
                optional: vec![],
                hidden: vec![],
                outputs: vec!["LATENT"],
                output_tooltips: Some(vec!["The denoised latent."]),
                custom_validated: &[],
            },
            NodeClass {
                name: "VAEDecode",
                display_name: "VAE Decode",
                description: "Decodes latent images back into pixel space images.",
                python_module: "nodes",
                category: "latent",
                output_node: false,
                required: vec![
                    (
                        "samples",
                        json!(["LATENT", {"tooltip": "The latent to be decoded."}]),
                    ),
                    (
                        "vae",
                        json!(["VAE", {"tooltip": "The VAE model used for decoding the latent."}]),
                    ),
                ],
                optional: vec![],
                hidden: vec![],
                outputs: vec!["IMAGE"],
                output_tooltips: Some(vec!["The decoded image."]),
                custom_validated: &[],
            },
            NodeClass {
                name: "SaveImage",
                display_name: "Save Image",
                description: "Saves the input images to your ComfyUI output directory.",
                python_module: "nodes",
                category: "image",
                output_node: true,
                required: vec![
                    ("images", image_in(Some("The images to save."))),
                    (
                        "filename_prefix",
                        json!(["STRING", {"default": "ComfyUI", "tooltip": "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."}]),
                    ),
                ],
                optional: vec![],
                hidden: vec![("prompt", "PROMPT"), ("extra_pnginfo", "EXTRA_PNGINFO")],
                outputs: vec![],
                output_tooltips: None,
                custom_validated: &[],
            },
            NodeClass {
                name: "PreviewImage",
                display_name: "Preview Image",
                description: "Saves the input images to your ComfyUI output directory.",
                python_module: "nodes",
                category: "image",
                output_node: true,
                required: vec![("images", image_in(None))],
                optional: vec![],
                hidden: vec![("prompt", "PROMPT"), ("extra_pnginfo", "EXTRA_PNGINFO")],
                outputs: vec![],
                output_tooltips: None,
                custom_validated: &[],
            },
            NodeClass {
                name: "EmptyImage",
                display_name: "EmptyImage",
                description: "",
                python_module: "nodes",
                category: "image",
                output_node: false,
                required: vec![
                    ("width", int(512, 1, MAX_RESOLUTION, Some(1))),
                    ("height", int(512, 1, MAX_RESOLUTION, Some(1))),
                    ("batch_size", int(1, 1, 4096, None)),
                    (
                        "color",
                        json!(["INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}]),
                    ),
                ],
                optional: vec![],
                hidden: vec![],
                outputs: vec!["IMAGE"],
                output_tooltips: None,
                custom_validated: &[],
            },
            NodeClass {
                name: "ImageBlur",
                display_name: "Image Blur",
                description: "",
                python_module: "comfy_extras.nodes_post_processing",
                category: "image/postprocessing",
                output_node: false,
                required: vec![
                    ("image", json!(["IMAGE", {}])),
                    ("blur_radius", int(1, 1, 31, Some(1))),
                    (
                        "sigma",
                        json!(["FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}]),
                    ),
                ],
                optional: vec![],
                hidden: vec![],
                outputs: vec!["IMAGE"],
                output_tooltips: None,
                custom_validated: &[],
            },
            NodeClass {
                name: "ImageToMask",
                display_name: "Convert Image to Mask",
                description: "",
                python_module: "comfy_extras.nodes_mask",
                category: "mask",
                output_node: false,
                required: vec![
                    ("image", json!(["IMAGE", {}])),
                    (
                        "channel",
                        json!(["COMBO", {"multiselect": false, "options": ["red", "green", "blue", "alpha"]}]),
                    ),
                ],
                optional: vec![],
                hidden: vec![],
                outputs: vec!["MASK"],
                output_tooltips: None,
                custom_validated: &[],
            },
            NodeClass {
                name: "MaskToImage",
                display_name: "Convert Mask to Image",
                description: "",
                python_module: "comfy_extras.nodes_mask",
                category: "mask",
                output_node: false,
                required: vec![("mask", json!(["MASK", {}]))],
                optional: vec![],
                hidden: vec![],
                outputs: vec!["IMAGE"],
                output_tooltips: None,
                custom_validated: &[],
            },
            NodeClass {
                name: "LoadImage",
                display_name: "Load Image",
                description: "",
                python_module: "nodes",
                category: "image",
                output_node: false,
                // The file list is filled in per request from the input directory.
                required: vec![("image", json!([[], {"image_upload": true}]))],
                optional: vec![],
                hidden: vec![],
                outputs: vec!["IMAGE", "MASK"],
                output_tooltips: None,
                custom_validated: &["image"],
            },
            NodeClass {
                name: "ImageScale",
                display_name: "Upscale Image",
                description: "",
                python_module: "nodes",
                category: "image/upscaling",
                output_node: false,
                required: vec![
                    ("image", image_in(None)),
                    (
                        "upscale_method",
                        json!([["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]]),
                    ),
                    ("width", int(512, 0, MAX_RESOLUTION, Some(1))),
                    ("height", int(512, 0, MAX_RESOLUTION, Some(1))),
                    ("crop", json!([["disabled", "center"]])),
                ],
                optional: vec![],
                hidden: vec![],
                outputs: vec!["IMAGE"],
                output_tooltips: None,
                custom_validated: &[],
            },
        ];
        let index = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name, i))
            .collect();
        Catalog { classes, index }
    }

    pub fn get(&self, name: &str) -> Option<&NodeClass> {
        self.index.get(name).map(|i| &self.classes[*i])
    }

    pub fn all(&self) -> &[NodeClass] {
        &self.classes
    }

    /// `/object_info` for one class, with `LoadImage`'s list read from `input_dir`.
    pub fn info(&self, class: &NodeClass, input_dir: &Path) -> Value {
        let mut info = class.info();
        if class.name == "LoadImage" {
            info["input"]["required"]["image"][0] = json!(list_input_files(input_dir));
        }
        info
    }
}

/// Image files directly under the input directory, sorted (as `LoadImage.INPUT_TYPES`).
pub fn list_input_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    let l = n.to_ascii_lowercase();
                    [".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"]
                        .iter()
                        .any(|x| l.ends_with(x))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

// ---------------------------------------------------------------------------------------
// Validation

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
    json!({"type": kind, "message": message.into(), "details": details.into(), "extra_info": extra})
}

const TB_VALIDATE_PROMPT: &str = "  File \"ComfyUI/execution.py\", line 1043, in validate_prompt\n    m = await validate_inputs(prompt_id, prompt, o, validated)\n        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n";
const TB_LOOKUP: &str = "  File \"ComfyUI/execution.py\", line 818, in validate_inputs\n    o_class_type = prompt[o_id]['class_type']\n                   ~~~~~~^^^^^^\n";
const TB_INNER: &str = "  File \"ComfyUI/execution.py\", line 836, in validate_inputs\n    r = await validate_inputs(prompt_id, prompt, o_id, validated)\n        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n";
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
        match self.position.get(id) {
            Some(&i) => self.validated[i] = (id.to_string(), valid, reasons),
            None => {
                self.position.insert(id.to_string(), self.validated.len());
                self.validated.push((id.to_string(), valid, reasons));
            }
        }
    }

    fn class_of(&self, id: &str) -> Option<&NodeClass> {
        let ct = self.prompt.get(id)?.get("class_type")?.as_str()?;
        self.catalog.get(ct)
    }

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
                continue;
            }
        }
        // LoadImage.VALIDATE_INPUTS: the file must exist under the input directory.
        if class.name == "LoadImage"
            && let Some(Value::String(image)) = inputs.get("image")
            && !input_file_exists(self.input_dir, image)
        {
            errors.push(err(
                "custom_validation_failed",
                "Custom validation failed for node",
                format!("image - Invalid image file: {image}"),
                json!({"input_name": "image"}),
            ));
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
            Value::Bool(b) => Ok(json!(*b as i64)),
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

/// `folder_paths.exists_annotated_filepath` under the input directory.
pub fn input_file_exists(input_dir: &Path, name: &str) -> bool {
    let name = name.strip_suffix(" [input]").unwrap_or(name);
    if name.starts_with('/') || name.split('/').any(|p| p == "..") {
        return false;
    }
    input_dir.join(name).is_file()
}

/// `execution.validate_prompt` plus the `post_prompt` wrapping around it.
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

    fn check(prompt: Value) -> (Value, Value) {
        let cat = Catalog::new(&["a.safetensors".into()], &["l.safetensors".into()]);
        match validate_prompt(&cat, Path::new("/nonexistent"), &prompt, None) {
            Verdict::Rejected { error, node_errors } => (error, node_errors),
            Verdict::Accepted { .. } => panic!("accepted"),
            Verdict::Internal => panic!("internal"),
        }
    }

    #[test]
    fn integer_link_id_is_a_key_error() {
        let (e, ne) = check(
            json!({"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": [4, 0]}}}),
        );
        assert_eq!(e["details"], "Exception when validating node: 4");
        assert_eq!(ne["9"]["errors"][0]["details"], "4");
    }

    #[test]
    fn inner_dangling_link_blames_the_linked_node() {
        let (_, ne) = check(json!({
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
        let (_, ne) = check(json!({
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
                SAMPLERS.len()
            )
        );
        assert_eq!(e["extra_info"]["input_config"], Value::Null);
    }
}
