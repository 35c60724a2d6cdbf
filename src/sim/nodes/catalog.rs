//! The one table of node classes the simulator knows, in `/object_info`'s order, and the
//! per-simulator catalog built from it (the model lists fill the loaders' choices).

use std::collections::HashMap;

use super::class::{Models, NodeClass};
use super::{conditioning, images, latent, load_image, loaders, mask, sampling, save};

/// Every class the simulator serves: each builds its description and names its execution.
const CLASSES: &[fn(&Models) -> NodeClass] = &[
    loaders::checkpoint_loader_simple,
    loaders::lora_loader,
    conditioning::clip_text_encode,
    conditioning::clip_set_last_layer,
    conditioning::conditioning_combine,
    latent::empty_latent_image,
    latent::latent_upscale,
    latent::latent_upscale_by,
    sampling::ksampler,
    sampling::ksampler_advanced,
    latent::vae_decode,
    latent::vae_encode,
    save::save_image,
    save::preview_image,
    images::empty_image,
    images::image_blur,
    images::image_blend,
    mask::image_to_mask,
    mask::mask_to_image,
    load_image::load_image,
    images::image_scale,
    images::image_scale_by,
];

/// Every class the simulator serves, built once per simulator from its model lists.
pub struct Catalog {
    classes: Vec<NodeClass>,
    index: HashMap<&'static str, usize>,
}

impl Catalog {
    pub fn new(checkpoints: &[String], loras: &[String]) -> Catalog {
        let models = Models { checkpoints, loras };
        let classes: Vec<NodeClass> = CLASSES.iter().map(|class| class(&models)).collect();
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
}
