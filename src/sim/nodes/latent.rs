//! Latents: `EmptyLatentImage` and `VAEDecode` (`nodes.py`). A latent carries its size and,
//! once sampled, the seed and text the decoder renders.

use serde_json::json;

use super::super::image::{self, Image};
use super::class::{Hooks, Models, NodeClass};
use super::exec::{Exec, Execute, NodeResult, exception};
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

/// `EmptyLatentImage.generate`.
#[allow(
    clippy::unnecessary_wraps,
    reason = "a node function has the node table's signature; others of this class fail"
)]
fn generate(ex: &mut Exec<'_, '_>) -> NodeResult {
    Ok((
        vec![Val::Latent {
            width: ex.int("width") as u32,
            height: ex.int("height") as u32,
            batch: ex.int("batch_size") as u32,
            sampled: None,
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

/// `VAEDecode.decode`: the sampled latent's picture, grey when it was never sampled.
fn decode(ex: &mut Exec<'_, '_>) -> NodeResult {
    let Some(Val::Latent {
        width,
        height,
        batch,
        sampled,
    }) = ex.link("samples")
    else {
        return Err(exception(
            "TypeError",
            "'NoneType' object is not subscriptable",
        ));
    };
    let img = match sampled {
        Some((seed, text)) => image::render(*seed, text, *width, *height, *batch),
        None => Image::solid(*width, *height, *batch, 0x7f_7f7f),
    };
    Ok((vec![Val::Image(img)], None))
}
