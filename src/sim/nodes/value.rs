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
    },
    Vae,
    Cond {
        text: String,
    },
    Latent {
        width: u32,
        height: u32,
        batch: u32,
        sampled: Option<(u64, String)>,
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
