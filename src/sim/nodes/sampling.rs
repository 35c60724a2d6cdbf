//! Sampling: `KSampler` and `KSamplerAdvanced` (`nodes.py`). Each step takes `step_ms` of
//! simulated GPU time, checks the interrupt flag, then reports progress (and, when the prompt
//! asked for them, latent previews); the sampled latent remembers the seed and text it
//! renders. A pass that keeps part of the picture it was given (`denoise` below 1, a
//! refiner starting at a later step) renders one derived from that picture and its own seed.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use super::super::image::{self, FNV_OFFSET, Rng, fnv1a};
use super::super::jpeg;
use super::super::messages::binary_frame;
use super::super::pyjson;
use super::super::state::Shared;
use super::class::{Hooks, Models, NodeClass};
use super::exec::{Exec, Execute, NodeFail, NodeResult, Waiting, exception, unless_interrupted};
use super::value::Val;
use crate::comfyui;

/// `KSampler`.
pub fn ksampler(_models: &Models) -> NodeClass {
    NodeClass {
        name: "KSampler",
        display_name: "KSampler",
        description: "Uses the provided model, positive and negative conditioning to denoise the latent image.",
        python_module: "nodes",
        category: "sampling",
        output_node: false,
        required: vec![
            (
                "model",
                json!(["MODEL", {"tooltip": "The model used for denoising the input latent."}]),
            ),
            (
                "seed",
                json!(["INT", {"default": 0, "min": *comfyui::SEED.start(), "max": *comfyui::SEED.end(), "control_after_generate": true, "tooltip": "The random seed used for creating the noise."}]),
            ),
            (
                "steps",
                json!(["INT", {"default": 20, "min": *comfyui::STEPS.start(), "max": *comfyui::STEPS.end(), "tooltip": "The number of steps used in the denoising process."}]),
            ),
            (
                "cfg",
                json!(["FLOAT", {"default": 8.0, "min": *comfyui::CFG.start(), "max": *comfyui::CFG.end(), "step": 0.1, "round": 0.01, "tooltip": "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher values result in images more closely matching the prompt however too high values will negatively impact quality."}]),
            ),
            (
                "sampler_name",
                json!([comfyui::SAMPLERS, {"tooltip": "The algorithm used when sampling, this can affect the quality, speed, and style of the generated output."}]),
            ),
            (
                "scheduler",
                json!([comfyui::SCHEDULERS, {"tooltip": "The scheduler controls how noise is gradually removed to form the image."}]),
            ),
            (
                "positive",
                json!(["CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to include in the image."}]),
            ),
            (
                "negative",
                json!(["CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to exclude from the image."}]),
            ),
            (
                "latent_image",
                json!(["LATENT", {"tooltip": "The latent image to denoise."}]),
            ),
            (
                "denoise",
                json!(["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "The amount of denoising applied, lower values will maintain the structure of the initial image allowing for image to image sampling."}]),
            ),
        ],
        optional: vec![],
        hidden: vec![],
        outputs: vec!["LATENT"],
        output_tooltips: Some(vec!["The denoised latent."]),
        custom_validated: &[],
        execute: Execute::Wait(sample),
        model_ops: true,
        hooks: Hooks::NONE,
    }
}

/// `KSampler.sample`: `steps` steps whatever the `denoise` (`KSampler.set_steps` takes the
/// last `steps` of `steps / denoise`).
fn sample<'e>(ex: &'e mut Exec<'_, '_>) -> Waiting<'e> {
    Box::pin(async move {
        let denoise = ex.float("denoise");
        let keep = (denoise <= 0.9999).then_some(denoise);
        let steps = ex.int("steps").max(1) as u64;
        let seed = ex.uint("seed");
        run_sampler(ex, seed, steps, keep).await
    })
}

/// A sampler's run over its `latent_image`: `steps` steps (none: the latent comes back as
/// it was), then the latent that renders the positive text from `seed`, derived from the
/// picture it was given when `keep` says part of it stays.
async fn run_sampler(
    ex: &mut Exec<'_, '_>,
    seed: u64,
    steps: u64,
    keep: Option<f64>,
) -> NodeResult {
    let Some(latent @ Val::Latent { .. }) = ex.link("latent_image").cloned() else {
        return Err(exception(
            "TypeError",
            "'NoneType' object is not subscriptable",
        ));
    };
    if steps == 0 {
        return Ok((vec![latent], None));
    }
    let Val::Latent {
        width,
        height,
        batch,
        sampled,
        encoded,
    } = latent
    else {
        unreachable!("matched above")
    };
    let (text, salt) = match ex.link("positive") {
        Some(Val::Cond { text, salt }) => (text.clone(), *salt),
        _ => (String::new(), 0),
    };
    // The picture the latent already holds, if any: sampled, or encoded from an image.
    let before = match (&sampled, &encoded) {
        (Some((s, t)), _) => Some(image::render_key(*s, t)),
        (None, Some(img)) => Some(fnv1a(FNV_OFFSET, &img.frame(0))),
        (None, None) => None,
    };
    let seed = match (before, keep) {
        (Some(before), Some(keep)) => {
            Rng(before ^ (seed ^ salt).rotate_left(29) ^ keep.to_bits()).next()
        }
        _ => seed ^ salt,
    };
    steps_with_progress(ex, seed, &text, width, height, steps).await?;
    Ok((
        vec![Val::Latent {
            width,
            height,
            batch,
            sampled: Some((seed, text)),
            encoded,
        }],
        None,
    ))
}

/// `KSamplerAdvanced`.
pub fn ksampler_advanced(_models: &Models) -> NodeClass {
    NodeClass {
        name: "KSamplerAdvanced",
        display_name: "KSampler (Advanced)",
        description: "",
        python_module: "nodes",
        category: "sampling",
        output_node: false,
        required: vec![
            ("model", json!(["MODEL"])),
            ("add_noise", json!([["enable", "disable"]])),
            (
                "noise_seed",
                json!(["INT", {"default": 0, "min": *comfyui::SEED.start(), "max": *comfyui::SEED.end(), "control_after_generate": true}]),
            ),
            (
                "steps",
                json!(["INT", {"default": 20, "min": *comfyui::STEPS.start(), "max": *comfyui::STEPS.end()}]),
            ),
            (
                "cfg",
                json!(["FLOAT", {"default": 8.0, "min": *comfyui::CFG.start(), "max": *comfyui::CFG.end(), "step": 0.1, "round": 0.01}]),
            ),
            ("sampler_name", json!([comfyui::SAMPLERS])),
            ("scheduler", json!([comfyui::SCHEDULERS])),
            ("positive", json!(["CONDITIONING"])),
            ("negative", json!(["CONDITIONING"])),
            ("latent_image", json!(["LATENT"])),
            (
                "start_at_step",
                json!(["INT", {"default": 0, "min": 0, "max": 10000}]),
            ),
            (
                "end_at_step",
                json!(["INT", {"default": 10000, "min": 0, "max": 10000}]),
            ),
            ("return_with_leftover_noise", json!([["disable", "enable"]])),
        ],
        optional: vec![],
        hidden: vec![],
        outputs: vec!["LATENT"],
        output_tooltips: None,
        custom_validated: &[],
        execute: Execute::Wait(sample_advanced),
        model_ops: true,
        hooks: Hooks::NONE,
    }
}

/// `KSamplerAdvanced.sample`: the steps from `start_at_step` to `end_at_step` of `steps`
/// (`KSampler.sample` cuts the sigmas so); none when it starts at or after the last one.
fn sample_advanced<'e>(ex: &'e mut Exec<'_, '_>) -> Waiting<'e> {
    Box::pin(async move {
        let steps = ex.int("steps").max(1) as u64;
        let start = ex.int("start_at_step").max(0) as u64;
        let end = (ex.int("end_at_step").max(0) as u64).min(steps);
        let run = end.saturating_sub(start);
        // From pure noise only when it adds noise from the first step; otherwise the pass
        // refines the picture it was given.
        let fresh = start == 0 && ex.string("add_noise") == "enable";
        let keep = (!fresh).then(|| start as f64 / steps as f64);
        let seed = ex.uint("noise_seed");
        run_sampler(ex, seed, run, keep).await
    })
}

/// The sampler's steps: wait, check the interrupt flag, then progress (and previews).
async fn steps_with_progress(
    ex: &mut Exec<'_, '_>,
    seed: u64,
    text: &str,
    w: u32,
    h: u32,
    steps: u64,
) -> Result<(), NodeFail> {
    let shared: &Shared = ex.shared;
    let node = ex.node;
    let step = Duration::from_millis(shared.config.step_ms);
    let pid = ex.messages.prompt_id();
    // Latent previews are sent when the prompt asks for them (`extra_data.preview_method`).
    let preview = matches!(
        ex.item
            .extra_data
            .get("preview_method")
            .and_then(|v| v.as_str()),
        Some("auto" | "latent2rgb" | "taesd")
    );
    let metadata = preview
        && ex
            .messages
            .client
            .as_deref()
            .is_some_and(|c| shared.preview_metadata(c));
    // Step k ends at start + k * step, so a render takes steps x step_ms (sleeping 1 ms
    // per step took about 2 ms each), and no step ends more than microseconds late (see
    // `sleep_until_precise`; tokio's timer could end step 19 of 20 after step 20's end).
    let start = tokio::time::Instant::now();
    for value in 1..=steps {
        if !step.is_zero() {
            shared.release_frames();
            // Every model op checks the flag: an interrupt ends the step at once.
            let step_end = sleep_until_precise(start + step * value as u32, value == steps);
            unless_interrupted(shared, step_end).await?;
        }
        // hijack_progress.hook: the interrupt check comes first.
        if shared.interrupt.load(Ordering::SeqCst) {
            return Err(NodeFail::Interrupted);
        }
        ex.messages
            .progress_state(node, &json!(value), json!(steps), "running");
        // Latent previews are JPEG, as `latent_preview` sends them (quality 95).
        let jpeg = preview.then(|| {
            let preview = image::render_preview(
                seed,
                text,
                (w / 8).max(1),
                (h / 8).max(1),
                value as f32 / steps as f32,
            );
            jpeg::encode(&preview.frame(0), preview.width, preview.height, 95)
        });
        if let (Some(jpeg), true) = (&jpeg, metadata) {
            let meta = pyjson::dumps(&json!({
                "node_id": node, "prompt_id": pid, "display_node_id": node,
                "parent_node_id": null, "real_node_id": node, "image_type": "image/jpeg",
            }));
            // PREVIEW_IMAGE_WITH_METADATA: [u32 4][u32 json_len][json][image].
            ex.messages
                .to_client_or_all(binary_frame(4, meta.len() as u32, meta.as_bytes(), jpeg));
        }
        let progress = json!({"value": value, "max": steps, "prompt_id": pid, "node": node});
        ex.messages
            .to_client_or_all(Shared::frame("progress", &progress));
        if let (Some(jpeg), false) = (jpeg, metadata) {
            // PREVIEW_IMAGE: [u32 1][u32 image type, 1 = JPEG][image].
            ex.messages.to_client_or_all(binary_frame(1, 1, &[], &jpeg));
        }
    }
    Ok(())
}

/// Sleep until `deadline`, late by microseconds rather than tokio's up to 1-2 ms: its timer
/// fires on whole milliseconds, which at a 20 ms render is 5-10 % of the simulated GPU time
/// that the client gets blamed for. The coarse timer takes all but the last 2 ms; the rest
/// is the OS's own sleep and (for a render's last step) a spin of at most 150 us, blocking
/// the thread: the worker has a thread and runtime of its own (`WorkerThread` in
/// `sim/lifecycle.rs`), so that holds up nothing else.
async fn sleep_until_precise(deadline: tokio::time::Instant, spin: bool) {
    const COARSE_SLACK: Duration = Duration::from_millis(2);
    if let Some(early) = deadline.checked_sub(COARSE_SLACK)
        && early > tokio::time::Instant::now()
    {
        tokio::time::sleep_until(early).await;
    }
    // The OS sleep wakes up to ~50 us late (timer slack) plus the scheduler's delay: with
    // `spin`, sleep to just short of the deadline and spin the rest.
    let spin_for = Duration::from_micros(if spin { 150 } else { 0 });
    let deadline = deadline.into_std();
    if let Some(rest) = deadline
        .checked_sub(spin_for)
        .map(|d| d.saturating_duration_since(Instant::now()))
        && !rest.is_zero()
    {
        std::thread::sleep(rest);
    }
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}
