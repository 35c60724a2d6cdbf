//! Latents: `EmptyLatentImage`, `VAEDecode`, `VAEEncode`, `LatentUpscale` and
//! `LatentUpscaleBy` (`nodes.py`). A latent carries its size and, once sampled, the seed and
//! text the decoder renders (or, encoded from an image and not sampled since, that image).

use serde_json::json;

use super::super::image::{self, Image};
use super::class::{Hooks, MAX_RESOLUTION, Models, NodeClass, int, scale_by};
use super::exec::{Exec, Execute, NodeFail, NodeResult, empty_interpolation, exception, py_round};
use super::value::Val;
use crate::comfyui;

/// `EmptyLatentImage`.
pub fn empty_latent_image(_models: &Models) -> NodeClass {
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
                json!(["INT", {"default": 512, "min": *comfyui::LATENT_SIZE.start(), "max": *comfyui::LATENT_SIZE.end(), "step": comfyui::LATENT_STEP, "tooltip": "The width of the latent images in pixels."}]),
            ),
            (
                "height",
                json!(["INT", {"default": 512, "min": *comfyui::LATENT_SIZE.start(), "max": *comfyui::LATENT_SIZE.end(), "step": comfyui::LATENT_STEP, "tooltip": "The height of the latent images in pixels."}]),
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
        execute: Execute::Now(generate),
        model_ops: false,
        hooks: Hooks::NONE,
    }
}

/// `EmptyLatentImage.generate`: `width // 8` x `height // 8` latent cells, so the decoded
/// picture's sides are the next multiple of 8 down.
#[allow(
    clippy::unnecessary_wraps,
    reason = "a node function has the node table's signature; others of this class fail"
)]
fn generate(ex: &mut Exec<'_, '_>) -> NodeResult {
    Ok((
        vec![Val::Latent {
            width: (ex.int("width") / 8 * 8) as u32,
            height: (ex.int("height") / 8 * 8) as u32,
            batch: ex.int("batch_size") as u32,
            sampled: None,
            encoded: None,
        }],
        None,
    ))
}

/// `VAEDecode`.
pub fn vae_decode(_models: &Models) -> NodeClass {
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
        execute: Execute::Now(decode),
        model_ops: true,
        hooks: Hooks::NONE,
    }
}

/// `VAEDecode.decode`: the sampled latent's picture; the encoded image (at the latent's
/// size) when it was encoded and never sampled; grey otherwise.
fn decode(ex: &mut Exec<'_, '_>) -> NodeResult {
    let Some(Val::Latent {
        width,
        height,
        batch,
        sampled,
        encoded,
    }) = ex.link("samples")
    else {
        return Err(exception(
            "TypeError",
            "'NoneType' object is not subscriptable",
        ));
    };
    let img = match (sampled, encoded) {
        (Some((seed, text)), _) => image::render(*seed, text, *width, *height, *batch),
        (None, Some(img)) => img.scale(*width, *height),
        (None, None) => Image::solid(*width, *height, *batch, 0x7f_7f7f),
    };
    Ok((vec![Val::Image(img)], None))
}

/// `VAEEncode`.
pub fn vae_encode(_models: &Models) -> NodeClass {
    NodeClass {
        name: "VAEEncode",
        display_name: "VAE Encode",
        description: "",
        python_module: "nodes",
        category: "latent",
        output_node: false,
        required: vec![("pixels", json!(["IMAGE"])), ("vae", json!(["VAE"]))],
        optional: vec![],
        hidden: vec![],
        outputs: vec!["LATENT"],
        output_tooltips: None,
        custom_validated: &[],
        execute: Execute::Now(encode),
        model_ops: true,
        hooks: Hooks::NONE,
    }
}

/// `VAEEncode.encode`: the latent of an image, its sides cut down to multiples of 8 as
/// `vae_encode_crop_pixels` does.
fn encode(ex: &mut Exec<'_, '_>) -> NodeResult {
    let img = ex.image("pixels")?;
    let (width, height) = ((img.width / 8 * 8).max(8), (img.height / 8 * 8).max(8));
    Ok((
        vec![Val::Latent {
            width,
            height,
            batch: img.batch,
            sampled: None,
            encoded: Some(img.scale(width, height)),
        }],
        None,
    ))
}

/// `LatentUpscale`'s and `LatentUpscaleBy`'s methods.
const LATENT_UPSCALE_METHODS: [&str; 5] =
    ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"];

/// `LatentUpscale`.
pub fn latent_upscale(_models: &Models) -> NodeClass {
    NodeClass {
        name: "LatentUpscale",
        display_name: "Upscale Latent",
        description: "",
        python_module: "nodes",
        category: "latent",
        output_node: false,
        required: vec![
            ("samples", json!(["LATENT"])),
            ("upscale_method", json!([LATENT_UPSCALE_METHODS])),
            ("width", int(512, 0, MAX_RESOLUTION, Some(8))),
            ("height", int(512, 0, MAX_RESOLUTION, Some(8))),
            ("crop", json!([["disabled", "center"]])),
        ],
        optional: vec![],
        hidden: vec![],
        outputs: vec!["LATENT"],
        output_tooltips: None,
        custom_validated: &[],
        execute: Execute::Now(upscale_to),
        model_ops: false,
        hooks: Hooks::NONE,
    }
}

/// `LatentUpscale.upscale`: to `width` x `height` pixels (at least 64 each, in whole latent
/// cells); a side of 0 keeps the aspect ratio, both 0 leave the latent as it is.
fn upscale_to(ex: &mut Exec<'_, '_>) -> NodeResult {
    let latent = latent_input(ex)?;
    let (lw, lh) = latent_cells(&latent);
    let (width, height) = (ex.int("width"), ex.int("height"));
    let (width, height) = match (width, height) {
        (0, 0) => return Ok((vec![latent], None)),
        (0, h) => {
            let h = h.max(64);
            (py_round(lw as f64 * h as f64 / lh as f64).max(64), h)
        }
        (w, 0) => {
            let w = w.max(64);
            (w, py_round(lh as f64 * w as f64 / lw as f64).max(64))
        }
        (w, h) => (w.max(64), h.max(64)),
    };
    resized(latent, (lw, lh), (width / 8, height / 8))
}

/// `LatentUpscaleBy`.
pub fn latent_upscale_by(_models: &Models) -> NodeClass {
    NodeClass {
        name: "LatentUpscaleBy",
        display_name: "Upscale Latent By",
        description: "",
        python_module: "nodes",
        category: "latent",
        output_node: false,
        required: vec![
            ("samples", json!(["LATENT"])),
            ("upscale_method", json!([LATENT_UPSCALE_METHODS])),
            ("scale_by", scale_by(1.5)),
        ],
        optional: vec![],
        hidden: vec![],
        outputs: vec!["LATENT"],
        output_tooltips: None,
        custom_validated: &[],
        execute: Execute::Now(upscale_by),
        model_ops: false,
        hooks: Hooks::NONE,
    }
}

/// `LatentUpscaleBy.upscale`: each latent side times `scale_by`, rounded as Python rounds.
fn upscale_by(ex: &mut Exec<'_, '_>) -> NodeResult {
    let latent = latent_input(ex)?;
    let (lw, lh) = latent_cells(&latent);
    let scale = ex.float("scale_by");
    let to = (py_round(lw as f64 * scale), py_round(lh as f64 * scale));
    resized(latent, (lw, lh), to)
}

/// The `samples` input, or Python's error on `None`.
fn latent_input(ex: &Exec<'_, '_>) -> Result<Val, NodeFail> {
    match ex.link("samples") {
        Some(latent @ Val::Latent { .. }) => Ok(latent.clone()),
        _ => Err(exception(
            "TypeError",
            "'NoneType' object is not subscriptable",
        )),
    }
}

/// A latent's tensor sides (`shape[-1]`, `shape[-2]`): an eighth of its pixels.
fn latent_cells(latent: &Val) -> (i64, i64) {
    match latent {
        Val::Latent { width, height, .. } => {
            (i64::from(*width / 8).max(1), i64::from(*height / 8).max(1))
        }
        _ => (1, 1),
    }
}

/// `comfy.utils.common_upscale` of a latent to `to` cells (its picture follows at decode);
/// PyTorch refuses an empty side as `interpolate` does.
fn resized(latent: Val, from: (i64, i64), to: (i64, i64)) -> NodeResult {
    if to.0 <= 0 || to.1 <= 0 {
        return Err(empty_interpolation(from, to));
    }
    let Val::Latent {
        batch,
        sampled,
        encoded,
        ..
    } = latent
    else {
        return Ok((vec![latent], None));
    };
    Ok((
        vec![Val::Latent {
            width: (to.0 * 8) as u32,
            height: (to.1 * 8) as u32,
            batch,
            sampled,
            encoded,
        }],
        None,
    ))
}
