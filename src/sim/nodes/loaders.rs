//! The loaders: `CheckpointLoaderSimple` and `LoraLoader` (`nodes.py`). A model here is its
//! checkpoint name and the LoRAs applied to it, which is all the rendering depends on.

use serde_json::json;

use super::class::{Hooks, Models, NodeClass};
use super::exec::{Exec, Execute, NodeResult, exception};
use super::value::Val;
use crate::comfyui;

/// `CheckpointLoaderSimple`.
pub fn checkpoint_loader_simple(models: &Models) -> NodeClass {
    NodeClass {
        name: "CheckpointLoaderSimple",
        display_name: "Load Checkpoint",
        description: "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
        python_module: "nodes",
        category: "loaders",
        output_node: false,
        required: vec![(
            "ckpt_name",
            json!([models.checkpoints, {"tooltip": "The name of the checkpoint (model) to load."}]),
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
        execute: Execute::Now(load_checkpoint),
        model_ops: false,
        hooks: Hooks::NONE,
    }
}

/// `CheckpointLoaderSimple.load_checkpoint`.
#[allow(
    clippy::unnecessary_wraps,
    reason = "a node function has the node table's signature; others of this class fail"
)]
fn load_checkpoint(ex: &mut Exec<'_, '_>) -> NodeResult {
    let ckpt = ex.string("ckpt_name");
    Ok((
        vec![
            Val::Model {
                ckpt: ckpt.clone(),
                loras: vec![],
            },
            Val::Clip {
                ckpt,
                loras: vec![],
                last_layer: -1,
            },
            Val::Vae,
        ],
        None,
    ))
}

/// `LoraLoader`.
pub fn lora_loader(models: &Models) -> NodeClass {
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
                json!([models.loras, {"tooltip": "The name of the LoRA."}]),
            ),
            (
                "strength_model",
                json!(["FLOAT", {"default": 1.0, "min": *comfyui::LORA_STRENGTH.start(), "max": *comfyui::LORA_STRENGTH.end(), "step": 0.01, "tooltip": "How strongly to modify the diffusion model. This value can be negative."}]),
            ),
            (
                "strength_clip",
                json!(["FLOAT", {"default": 1.0, "min": *comfyui::LORA_STRENGTH.start(), "max": *comfyui::LORA_STRENGTH.end(), "step": 0.01, "tooltip": "How strongly to modify the CLIP model. This value can be negative."}]),
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
        execute: Execute::Now(load_lora),
        model_ops: false,
        hooks: Hooks::NONE,
    }
}

/// `LoraLoader.load_lora`.
fn load_lora(ex: &mut Exec<'_, '_>) -> NodeResult {
    let lora = ex.string("lora_name");
    let (
        Some(Val::Model { ckpt: m, loras: ml }),
        Some(Val::Clip {
            ckpt: c,
            loras: cl,
            last_layer,
        }),
    ) = (ex.link("model"), ex.link("clip"))
    else {
        return Err(exception(
            "AttributeError",
            "'NoneType' object has no attribute 'clone'",
        ));
    };
    let mut ml = ml.clone();
    ml.push((lora.clone(), ex.float("strength_model")));
    let mut cl = cl.clone();
    cl.push((lora, ex.float("strength_clip")));
    Ok((
        vec![
            Val::Model {
                ckpt: m.clone(),
                loras: ml,
            },
            Val::Clip {
                ckpt: c.clone(),
                loras: cl,
                last_layer: *last_layer,
            },
        ],
        None,
    ))
}
