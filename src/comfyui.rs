//! What ComfyUI 0.8.0 itself is, as far as plasma-batch and its simulator both rely on it:
//! `KSampler`'s sampler and scheduler names and the input ranges of the nodes a job fills
//! (`KSampler`, `EmptyLatentImage`, `LoraLoader`), as ComfyUI's `comfy/samplers.py` and `nodes.py`
//! define them. Facts, not choices: plasma-batch's own defaults and limits are `params`.
//!
//! This module stands under both the product and the simulator (the `ground` row of
//! docs/architecture.md): anything may import it, and it imports nothing of the crate.

use std::ops::RangeInclusive;

/// `KSampler`'s samplers (`comfy.samplers.KSampler.SAMPLERS`, `SAMPLER_NAMES`), in ComfyUI's order.
pub const SAMPLERS: &[&str] = &[
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "exp_heun_2_x0",
    "exp_heun_2_x0_sde",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "res_multistep",
    "res_multistep_cfg_pp",
    "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp",
    "gradient_estimation",
    "gradient_estimation_cfg_pp",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "sa_solver_pece",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
];

/// `KSampler`'s schedulers (`comfy.samplers.SCHEDULER_NAMES`), in ComfyUI's order.
pub const SCHEDULERS: &[&str] = &[
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
];

/// `KSampler`'s `seed` input: `0..=0xffffffffffffffff`.
pub const SEED: RangeInclusive<u64> = 0..=u64::MAX;
/// `KSampler`'s `steps` input.
pub const STEPS: RangeInclusive<u32> = 1..=10_000;
/// `KSampler`'s `cfg` input.
pub const CFG: RangeInclusive<f64> = 0.0..=100.0;
/// `EmptyLatentImage`'s `width` and `height` (`MAX_RESOLUTION` is 16384), in steps of
/// [`LATENT_STEP`].
pub const LATENT_SIZE: RangeInclusive<u32> = 16..=16_384;
/// `EmptyLatentImage` sizes are multiples of this: a latent pixel is 8 image pixels.
pub const LATENT_STEP: u32 = 8;
/// `LoraLoader`'s `strength_model` and `strength_clip` inputs.
pub const LORA_STRENGTH: RangeInclusive<f64> = -100.0..=100.0;
