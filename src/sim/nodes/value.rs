//! What flows along a link between nodes.

use super::super::image::{self, Image, Mask};

/// A value flowing along a link.
#[derive(Clone, Debug)]
pub enum Val {
    Model {
        ckpt: String,
        loras: Vec<(String, f64)>,
    },
    Clip {
        ckpt: String,
        loras: Vec<(String, f64)>,
        /// `CLIPSetLastLayer`'s `stop_at_clip_layer` (-1: the last layer, the default).
        last_layer: i64,
    },
    Vae,
    Cond {
        text: String,
        /// What besides the text changes the picture (0: nothing; a CLIP layer other than
        /// the last one): mixed into the sampler's seed.
        salt: u64,
    },
    Latent {
        width: u32,
        height: u32,
        batch: u32,
        /// The seed and text the decoder renders, once sampled.
        sampled: Option<(u64, String)>,
        /// The picture `VAEEncode` made this latent from (decoded back when never sampled).
        encoded: Option<Image>,
    },
    Image(Image),
    Mask(Mask),
}

impl Val {
    /// `str(x)` of the Python object this stands for (for `current_inputs`).
    pub fn py_str(&self) -> String {
        match self {
            Val::Model { .. } => {
                "<comfy.model_patcher.ModelPatcher object at 0x7f5e4c1d2e90>".into()
            }
            Val::Clip { .. } => "<comfy.sd.CLIP object at 0x7f5e4c1d3a10>".into(),
            Val::Vae => "<comfy.sd.VAE object at 0x7f5e4c1d3b50>".into(),
            Val::Cond { .. } => {
                let t = image::torch_repr(&[1, 77, 768], &|_| 0.0);
                format!("[[{t}, {{'pooled_output': None}}]]")
            }
            Val::Latent {
                width,
                height,
                batch,
                ..
            } => {
                let shape = [
                    *batch as usize,
                    4,
                    (*height / 8).max(1) as usize,
                    (*width / 8).max(1) as usize,
                ];
                format!("{{'samples': {}}}", image::torch_repr(&shape, &|_| 0.0))
            }
            Val::Image(i) => i.torch_repr(),
            Val::Mask(m) => m.torch_repr(),
        }
    }
}
