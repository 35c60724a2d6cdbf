//! Conditioning: `CLIPTextEncode` (`nodes.py`). The conditioning is its text, which the
//! sampler renders from.

use serde_json::json;

use super::class::{Hooks, Models, NodeClass};
use super::exec::{Exec, Execute, NodeResult};
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
    Ok((
        vec![Val::Cond {
            text: ex.string("text"),
        }],
        None,
    ))
}
