//! Conditioning: `CLIPTextEncode`, `CLIPSetLastLayer` and `ConditioningCombine`
//! (`nodes.py`). The conditioning is its text (and the CLIP layer it was encoded at), which
//! the sampler renders from.

use serde_json::json;

use super::super::image::{FNV_OFFSET, fnv1a};
use super::class::{Hooks, Models, NodeClass};
use super::exec::{Exec, Execute, NodeResult, exception};
use super::value::Val;

/// `CLIPTextEncode`.
pub fn clip_text_encode(_models: &Models) -> NodeClass {
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
        execute: Execute::Now(encode),
        model_ops: true,
        hooks: Hooks::NONE,
    }
}

/// `CLIPTextEncode.encode`.
#[allow(
    clippy::unnecessary_wraps,
    reason = "a node function has the node table's signature; others of this class fail"
)]
fn encode(ex: &mut Exec<'_, '_>) -> NodeResult {
    // Encoded at another layer than the last, the same text guides the sampler elsewhere.
    let salt = match ex.link("clip") {
        Some(Val::Clip { last_layer, .. }) if *last_layer != -1 => {
            fnv1a(FNV_OFFSET, format!("clip layer {last_layer}").as_bytes())
        }
        _ => 0,
    };
    Ok((
        vec![Val::Cond {
            text: ex.string("text"),
            salt,
        }],
        None,
    ))
}

/// `CLIPSetLastLayer`.
pub fn clip_set_last_layer(_models: &Models) -> NodeClass {
    NodeClass {
        name: "CLIPSetLastLayer",
        display_name: "CLIP Set Last Layer",
        description: "",
        python_module: "nodes",
        category: "conditioning",
        output_node: false,
        required: vec![
            ("clip", json!(["CLIP"])),
            (
                "stop_at_clip_layer",
                json!(["INT", {"default": -1, "min": -24, "max": -1, "step": 1}]),
            ),
        ],
        optional: vec![],
        hidden: vec![],
        outputs: vec!["CLIP"],
        output_tooltips: None,
        custom_validated: &[],
        execute: Execute::Now(set_last_layer),
        model_ops: false,
        hooks: Hooks::NONE,
    }
}

/// `CLIPSetLastLayer.set_last_layer`: a clone of the CLIP model that stops at that layer.
fn set_last_layer(ex: &mut Exec<'_, '_>) -> NodeResult {
    let Some(Val::Clip { ckpt, loras, .. }) = ex.link("clip") else {
        return Err(exception(
            "AttributeError",
            "'NoneType' object has no attribute 'clone'",
        ));
    };
    Ok((
        vec![Val::Clip {
            ckpt: ckpt.clone(),
            loras: loras.clone(),
            last_layer: ex.int("stop_at_clip_layer"),
        }],
        None,
    ))
}

/// `ConditioningCombine`.
pub fn conditioning_combine(_models: &Models) -> NodeClass {
    NodeClass {
        name: "ConditioningCombine",
        display_name: "Conditioning (Combine)",
        description: "",
        python_module: "nodes",
        category: "conditioning",
        output_node: false,
        required: vec![
            ("conditioning_1", json!(["CONDITIONING"])),
            ("conditioning_2", json!(["CONDITIONING"])),
        ],
        optional: vec![],
        hidden: vec![],
        outputs: vec!["CONDITIONING"],
        output_tooltips: None,
        custom_validated: &[],
        execute: Execute::Now(combine),
        model_ops: false,
        hooks: Hooks::NONE,
    }
}

/// `ConditioningCombine.combine`: both conditionings guide the sampler (`c1 + c2`).
fn combine(ex: &mut Exec<'_, '_>) -> NodeResult {
    let (Some(Val::Cond { text: t1, salt: s1 }), Some(Val::Cond { text: t2, salt: s2 })) =
        (ex.link("conditioning_1"), ex.link("conditioning_2"))
    else {
        return Err(exception(
            "TypeError",
            "unsupported operand type(s) for +: 'NoneType' and 'NoneType'",
        ));
    };
    Ok((
        vec![Val::Cond {
            text: format!("{t1}\n{t2}"),
            salt: s1 ^ s2.rotate_left(1),
        }],
        None,
    ))
}
