//! Masks: `ImageToMask` and `MaskToImage` (`comfy_extras.nodes_mask`).

use serde_json::json;

use super::class::{Hooks, Models, NodeClass};
use super::exec::{EXECUTION_FRAMES, Exec, Execute, NodeFail, NodeResult, exception};
use super::value::Val;

/// `ImageToMask`.
pub fn image_to_mask(_models: &Models) -> NodeClass {
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
        execute: Execute::Now(image_to_mask_fn),
        model_ops: false,
        hooks: Hooks::V3,
    }
}

/// The frames below `execution.py`'s of an exception in `ImageToMask` (a V3 node), as
/// ComfyUI 0.8.0 gives them for `channel: alpha` on RGB (transcript 03).
const IMAGE_TO_MASK_FRAMES: [&str; 3] = [
    "  File \"ComfyUI/comfy_api/internal/__init__.py\", line 149, in wrapped_func\n    return method(locked_class, **inputs)\n           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
    "  File \"ComfyUI/comfy_api/latest/_io.py\", line 1570, in EXECUTE_NORMALIZED\n    to_return = cls.execute(*args, **kwargs)\n                ^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
    "  File \"ComfyUI/comfy_extras/nodes_mask.py\", line 141, in execute\n    mask = image[:, :, :, channels.index(channel)]\n           ~~~~~^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
];

/// `ImageToMask.execute`: an RGB image has no alpha channel, so `alpha` raises.
fn image_to_mask_fn(ex: &mut Exec<'_, '_>) -> NodeResult {
    let img = ex.image("image")?;
    let wanted = ex.string("channel");
    let channel = ["red", "green", "blue", "alpha"]
        .iter()
        .position(|c| *c == wanted)
        .unwrap_or(0);
    if channel >= 3 {
        return Err(NodeFail::Exception {
            type_name: "IndexError".into(),
            message: format!("index {channel} is out of bounds for dimension 3 with size 3"),
            traceback: EXECUTION_FRAMES
                .iter()
                .chain(&IMAGE_TO_MASK_FRAMES)
                .map(ToString::to_string)
                .collect(),
        });
    }
    Ok((vec![Val::Mask(img.channel_mask(channel))], None))
}

/// `MaskToImage`.
pub fn mask_to_image(_models: &Models) -> NodeClass {
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
        execute: Execute::Now(mask_to_image_fn),
        model_ops: false,
        hooks: Hooks::V3,
    }
}

/// `MaskToImage.execute`.
fn mask_to_image_fn(ex: &mut Exec<'_, '_>) -> NodeResult {
    match ex.link("mask") {
        Some(Val::Mask(m)) => Ok((vec![Val::Image(m.to_image())], None)),
        _ => Err(exception(
            "AttributeError",
            "'NoneType' object has no attribute 'reshape'",
        )),
    }
}
