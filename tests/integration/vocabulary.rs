//! The shared vocabulary against what serves it: the simulator's `/object_info` describes
//! ComfyUI's nodes with exactly the facts `comfyui` holds (its lists, its input ranges), so
//! what the product checks a manifest against is what the stand-in enforces.

use plasma_batch::comfyui;
use serde_json::{Value, json};

use crate::sim_support::{get_json, quick};
use crate::support::TestSim;

/// `[type_or_list, {"min": .., "max": .., ..}]` of one input of one node class.
fn input<'a>(info: &'a Value, class: &str, name: &str) -> &'a Value {
    let spec = &info[class]["input"]["required"][name];
    assert!(spec.is_array(), "{class}.{name} is not described: {spec}");
    spec
}

#[tokio::test]
async fn the_simulator_describes_comfyui_with_the_facts_comfyui_holds() {
    // Only GET /object_info: no prompt.
    let sim = TestSim::with_config(quick()).await.idle_ok();
    let (status, info) = get_json(&sim.url(), "/object_info").await;
    assert_eq!(status, 200);

    assert_eq!(
        input(&info, "KSampler", "sampler_name")[0],
        json!(comfyui::SAMPLERS)
    );
    assert_eq!(
        input(&info, "KSampler", "scheduler")[0],
        json!(comfyui::SCHEDULERS)
    );
    let range = |class: &str, name: &str| {
        let options = &input(&info, class, name)[1];
        (options["min"].clone(), options["max"].clone())
    };
    assert_eq!(
        range("KSampler", "seed"),
        (json!(comfyui::SEED.start()), json!(comfyui::SEED.end()))
    );
    assert_eq!(
        range("KSampler", "steps"),
        (json!(comfyui::STEPS.start()), json!(comfyui::STEPS.end()))
    );
    assert_eq!(
        range("KSampler", "cfg"),
        (json!(comfyui::CFG.start()), json!(comfyui::CFG.end()))
    );
    for side in ["width", "height"] {
        assert_eq!(
            range("EmptyLatentImage", side),
            (
                json!(comfyui::LATENT_SIZE.start()),
                json!(comfyui::LATENT_SIZE.end())
            )
        );
        assert_eq!(
            input(&info, "EmptyLatentImage", side)[1]["step"],
            json!(comfyui::LATENT_STEP)
        );
    }
    for strength in ["strength_model", "strength_clip"] {
        assert_eq!(
            range("LoraLoader", strength),
            (
                json!(comfyui::LORA_STRENGTH.start()),
                json!(comfyui::LORA_STRENGTH.end())
            )
        );
    }
}
