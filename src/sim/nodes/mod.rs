//! The node classes the simulator knows, one place per class: each family's file holds its
//! classes' `/object_info` descriptions (as ComfyUI 0.8.0 gives them) and their execution,
//! and `catalog` registers them in one table. `validate` is `POST /prompt` validation
//! (`execution.validate_prompt`) over those descriptions, with ComfyUI's exact error shapes
//! and strings; `exec` is what an execution gets and gives. Nothing here touches a socket:
//! nodes report progress through the prompt's `Messages`.
//!
//! Families: `loaders` (`CheckpointLoaderSimple`, `LoraLoader`), `conditioning`
//! (`CLIPTextEncode`, `CLIPSetLastLayer`, `ConditioningCombine`), `latent`
//! (`EmptyLatentImage`, `VAEDecode`, `VAEEncode`, `LatentUpscale`, `LatentUpscaleBy`),
//! `sampling` (`KSampler`, `KSamplerAdvanced`), `save` (`SaveImage`, `PreviewImage`), `images`
//! (`EmptyImage`, `ImageBlur`, `ImageBlend`, `ImageScale`, `ImageScaleBy`), `mask` (`ImageToMask`,
//! `MaskToImage`), `load_image` (`LoadImage`).

mod catalog;
mod class;
mod conditioning;
mod exec;
mod images;
mod latent;
mod load_image;
mod loaders;
mod mask;
mod sampling;
mod save;
mod validate;
mod value;

pub use catalog::Catalog;
pub use class::NodeClass;
pub use exec::{Exec, Execute, NodeFail, NodeResult, exception, unless_interrupted};
pub use save::normpath;
pub use validate::{Verdict, validate_prompt};
pub use value::Val;
