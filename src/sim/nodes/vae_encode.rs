//! `VAEEncode` (`nodes.py`): pixels into a latent, the first step of an img2img pass
//! (`LoadImage` -> `VAEEncode` -> `KSampler` with `denoise` below 1). The latent keeps the
//! image's size (cropped to whole 8-pixel blocks, as the VAE's encoder crops it) and has not
//! been sampled yet.

use serde_json::json;

use super::class::{Hooks, Models, NodeClass};
use super::exec::{Exec, Execute, NodeResult};
use super::value::Val;

/// `VAEEncode`, with the real server's `/object_info` entry (no tooltips, no description).
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

/// `VAEEncode.encode`: a latent of the image's size in whole 8-pixel blocks.
fn encode(ex: &mut Exec<'_, '_>) -> NodeResult {
    let pixels = ex.image("pixels")?;
    Ok((
        vec![Val::Latent {
            width: (pixels.width / 8 * 8).max(8),
            height: (pixels.height / 8 * 8).max(8),
            batch: pixels.batch,
            sampled: None,
        }],
        None,
    ))
}
