//! Image nodes without a model: `EmptyImage`, `ImageScale`, `ImageScaleBy` (`nodes.py`) and
//! `ImageBlur`, `ImageBlend` (`comfy_extras.nodes_post_processing`). They see an interrupt only between
//! nodes.

use serde_json::json;

use super::super::image::Image;
use super::class::{Hooks, MAX_RESOLUTION, Models, NodeClass, image_input, int, scale_by};
use super::exec::{Exec, Execute, NodeFail, NodeResult, empty_interpolation, exception, py_round};
use super::value::Val;

/// `ImageScale`'s and `ImageScaleBy`'s methods.
const IMAGE_UPSCALE_METHODS: [&str; 5] =
    ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"];

/// `EmptyImage`.
pub fn empty_image(_models: &Models) -> NodeClass {
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
                json!(["INT", {"default": 0, "min": 0, "max": 0xFF_FFFF, "step": 1, "display": "color"}]),
            ),
        ],
        optional: vec![],
        hidden: vec![],
        outputs: vec!["IMAGE"],
        output_tooltips: None,
        custom_validated: &[],
        execute: Execute::Now(generate),
        model_ops: false,
        hooks: Hooks::NONE,
    }
}

/// `EmptyImage.generate`.
#[allow(
    clippy::unnecessary_wraps,
    reason = "a node function has the node table's signature; others of this class fail"
)]
fn generate(ex: &mut Exec<'_, '_>) -> NodeResult {
    Ok((
        vec![Val::Image(Image::solid(
            ex.int("width") as u32,
            ex.int("height") as u32,
            ex.int("batch_size") as u32,
            ex.int("color") as u32,
        ))],
        None,
    ))
}

/// `ImageBlur`.
pub fn image_blur(_models: &Models) -> NodeClass {
    NodeClass {
        name: "ImageBlur",
        display_name: "",
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
        execute: Execute::Now(blur),
        model_ops: false,
        hooks: Hooks::V3,
    }
}

/// `ImageBlur.execute`.
fn blur(ex: &mut Exec<'_, '_>) -> NodeResult {
    let img = ex.image("image")?;
    let blurred = img.blur(ex.int("blur_radius") as u32, ex.float("sigma"));
    Ok((vec![Val::Image(blurred)], None))
}

/// `ImageScale`.
pub fn image_scale(_models: &Models) -> NodeClass {
    NodeClass {
        name: "ImageScale",
        display_name: "Upscale Image",
        description: "",
        python_module: "nodes",
        category: "image/upscaling",
        output_node: false,
        required: vec![
            ("image", image_input(None)),
            ("upscale_method", json!([IMAGE_UPSCALE_METHODS])),
            ("width", int(512, 0, MAX_RESOLUTION, Some(1))),
            ("height", int(512, 0, MAX_RESOLUTION, Some(1))),
            ("crop", json!([["disabled", "center"]])),
        ],
        optional: vec![],
        hidden: vec![],
        outputs: vec!["IMAGE"],
        output_tooltips: None,
        custom_validated: &[],
        execute: Execute::Now(upscale),
        model_ops: false,
        hooks: Hooks::NONE,
    }
}

/// `ImageScale.upscale`.
fn upscale(ex: &mut Exec<'_, '_>) -> NodeResult {
    let img = ex.image("image")?;
    let scaled = img.scale(ex.int("width") as u32, ex.int("height") as u32);
    Ok((vec![Val::Image(scaled)], None))
}

/// `ImageScaleBy`.
pub fn image_scale_by(_models: &Models) -> NodeClass {
    NodeClass {
        name: "ImageScaleBy",
        display_name: "Upscale Image By",
        description: "",
        python_module: "nodes",
        category: "image/upscaling",
        output_node: false,
        required: vec![
            ("image", image_input(None)),
            ("upscale_method", json!([IMAGE_UPSCALE_METHODS])),
            ("scale_by", scale_by(1.0)),
        ],
        optional: vec![],
        hidden: vec![],
        outputs: vec!["IMAGE"],
        output_tooltips: None,
        custom_validated: &[],
        execute: Execute::Now(upscale_by),
        model_ops: false,
        hooks: Hooks::NONE,
    }
}

/// `ImageScaleBy.upscale`: each side times `scale_by`, rounded as Python rounds; PyTorch
/// refuses an empty side as `interpolate` does.
fn upscale_by(ex: &mut Exec<'_, '_>) -> NodeResult {
    let img = ex.image("image")?;
    let scale = ex.float("scale_by");
    let (w, h) = (
        py_round(f64::from(img.width) * scale),
        py_round(f64::from(img.height) * scale),
    );
    if w <= 0 || h <= 0 {
        let from = (i64::from(img.width), i64::from(img.height));
        return Err(empty_interpolation(from, (w, h)));
    }
    Ok((vec![Val::Image(img.scale(w as u32, h as u32))], None))
}

/// `ImageBlend`'s modes.
const BLEND_MODES: [&str; 6] = [
    "normal",
    "multiply",
    "screen",
    "overlay",
    "soft_light",
    "difference",
];

/// `ImageBlend`.
pub fn image_blend(_models: &Models) -> NodeClass {
    NodeClass {
        name: "ImageBlend",
        display_name: "",
        description: "",
        python_module: "comfy_extras.nodes_post_processing",
        category: "image/postprocessing",
        output_node: false,
        required: vec![
            ("image1", json!(["IMAGE", {}])),
            ("image2", json!(["IMAGE", {}])),
            (
                "blend_factor",
                json!(["FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}]),
            ),
            (
                "blend_mode",
                json!(["COMBO", {"multiselect": false, "options": BLEND_MODES}]),
            ),
        ],
        optional: vec![],
        hidden: vec![],
        outputs: vec!["IMAGE"],
        output_tooltips: None,
        custom_validated: &[],
        execute: Execute::Now(blend),
        model_ops: false,
        hooks: Hooks::V3,
    }
}

/// The frames below `execution.py`'s of an exception in `ImageBlend` (a V3 node), as ComfyUI
/// 0.8.0 gives them for batches of 2 and 3 (`multiply`; other modes fail on another line).
const BLEND_FRAMES: [&str; 4] = [
    "  File \"ComfyUI/comfy_api/internal/__init__.py\", line 149, in wrapped_func\n    return method(locked_class, **inputs)\n           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
    "  File \"ComfyUI/comfy_api/latest/_io.py\", line 1570, in EXECUTE_NORMALIZED\n    to_return = cls.execute(*args, **kwargs)\n                ^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
    "  File \"ComfyUI/comfy_extras/nodes_post_processing.py\", line 43, in execute\n    blended_image = cls.blend_mode(image1, image2, blend_mode)\n                    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
    "  File \"ComfyUI/comfy_extras/nodes_post_processing.py\", line 53, in blend_mode\n    return img1 * img2\n           ~~~~~^~~~~~\n",
];

/// `ImageBlend.execute`: `image2` of another size is first brought to `image1`'s (ComfyUI
/// scales it bicubic with a centre crop; the simulator as `ImageScale` does), then blended.
/// Batches of different sizes, neither of them 1, do not broadcast: PyTorch's error.
fn blend(ex: &mut Exec<'_, '_>) -> NodeResult {
    let one = ex.image("image1")?;
    let mut two = ex.image("image2")?;
    if one.batch != two.batch && one.batch != 1 && two.batch != 1 {
        let mut fail = exception(
            "RuntimeError",
            format!(
                "The size of tensor a ({}) must match the size of tensor b ({}) at non-singleton dimension 0",
                one.batch, two.batch
            ),
        );
        if let NodeFail::Exception { traceback, .. } = &mut fail {
            traceback.extend(BLEND_FRAMES.iter().map(|f| (*f).to_string()));
        }
        return Err(fail);
    }
    if (one.width, one.height) != (two.width, two.height) {
        two = two.scale(one.width, one.height);
    }
    let blended = one.blend(
        &two,
        ex.float("blend_factor") as f32,
        &ex.string("blend_mode"),
    );
    Ok((vec![Val::Image(blended)], None))
}
