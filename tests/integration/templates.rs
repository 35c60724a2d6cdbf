//! The shipped templates beyond txt2img (`workflows/sdxl-two-pass.json`,
//! `workflows/txt2img-clip-skip.json`, `workflows/exported-sd15.json`) and the node classes
//! they use, rendered on the simulator over loopback. `real_comfy` renders the same templates
//! through a real ComfyUI with the helpers here.
//!
//! Most tests fill the templates here as a manifest fills them (a JSON string that is exactly
//! `{{name}}` becomes the typed value; the exported workflow, which has no placeholders, gets
//! its inputs set by node id or title, as bindings will) and post them directly;
//! `chapter_manifest` runs them through a manifest's variables and a sweep instead.

use std::path::{Path, PathBuf};

use plasma_batch::sim::SimConfig;
use plasma_batch::sim::record::{self, RecordOptions};
use serde_json::{Value, json};

use super::sim_support::*;
use crate::support::{TestSim, png_size, repo};

/// The templates, by file name under `workflows/`.
pub const TEMPLATES: [&str; 3] = [
    "sdxl-two-pass.json",
    "txt2img-clip-skip.json",
    "exported-sd15.json",
];

/// The size every template renders at before any upscale: small enough for a CPU.
pub const SIDE: u32 = 64;

/// A template's JSON.
pub fn template(name: &str) -> Value {
    let path = repo().join("workflows").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Plausible values for every placeholder the templates use (3 steps at 64x64), `vars`
/// (name, value) taking precedence.
pub fn values(
    checkpoint: &str,
    prefix: &str,
    text: &str,
    vars: &[(&str, Value)],
) -> Vec<(String, Value)> {
    let mut all: Vec<(String, Value)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect();
    let defaults = [
        ("checkpoint", json!(checkpoint)),
        ("seed", json!(4_242_u64)),
        ("steps", json!(3)),
        ("cfg", json!(7.0)),
        ("sampler", json!("euler")),
        ("scheduler", json!("normal")),
        ("width", json!(SIDE)),
        ("height", json!(SIDE)),
        ("prompt", json!(text)),
        ("negative", json!("lowres")),
        ("filename_prefix", json!(prefix)),
        ("upscale", json!(1.5)),
        ("denoise", json!(0.5)),
        ("clip_skip", json!(-2)),
    ];
    for (k, v) in defaults {
        if !all.iter().any(|(name, _)| name == k) {
            all.push((k.to_string(), v));
        }
    }
    all
}

/// The value of placeholder `name`; none fails the test.
pub fn value(values: &[(String, Value)], name: &str) -> Value {
    match values.iter().find(|(k, _)| k == name) {
        Some((_, v)) => v.clone(),
        None => panic!("no value for {{{{{name}}}}}"),
    }
}

/// Every string that is exactly `{{name}}` replaced by its typed value; a placeholder
/// without a value fails the test.
pub fn fill(template: &Value, values: &[(String, Value)]) -> Value {
    match template {
        Value::String(s) if s.starts_with("{{") && s.ends_with("}}") => {
            value(values, &s[2..s.len() - 2])
        }
        Value::String(s) => {
            assert!(!s.contains("{{"), "a placeholder inside a string: {s}");
            template.clone()
        }
        Value::Array(a) => a.iter().map(|v| fill(v, values)).collect(),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), fill(v, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Set input `input` of the one node whose id or `_meta.title` is `node`.
pub fn bind(graph: &mut Value, node: &str, input: &str, value: Value) {
    let ids: Vec<String> = graph
        .as_object()
        .unwrap()
        .iter()
        .filter(|(id, n)| *id == node || n["_meta"]["title"] == node)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(ids.len(), 1, "{node} names {ids:?}");
    let inputs = &mut graph[&ids[0]]["inputs"];
    assert!(inputs.get(input).is_some(), "{node} has no input {input}");
    inputs[input] = value;
}

/// A shipped template ready to post: filled, or for the exported workflow, bound by title to
/// the same values (its own prompts and 20 steps at 512x512 otherwise).
pub fn prepared(name: &str, values: &[(String, Value)]) -> Value {
    let t = template(name);
    if name != "exported-sd15.json" {
        return fill(&t, values);
    }
    let get = |k: &str| value(values, k);
    let mut g = t;
    bind(&mut g, "Load Checkpoint", "ckpt_name", get("checkpoint"));
    for (input, var) in [("seed", "seed"), ("steps", "steps"), ("cfg", "cfg")] {
        bind(&mut g, "KSampler", input, get(var));
    }
    bind(&mut g, "Empty Latent Image", "width", get("width"));
    bind(&mut g, "Empty Latent Image", "height", get("height"));
    // Two nodes share the title "CLIP Text Encode (Prompt)": the positive one by id.
    bind(&mut g, "6", "text", get("prompt"));
    bind(
        &mut g,
        "Save Image",
        "filename_prefix",
        get("filename_prefix"),
    );
    g
}

/// The size a template's image comes out at, from its values.
pub fn expected_size(name: &str, values: &[(String, Value)]) -> (u32, u32) {
    let get = |k: &str| value(values, k);
    let (w, h) = (
        get("width").as_u64().unwrap(),
        get("height").as_u64().unwrap(),
    );
    if name == "sdxl-two-pass.json" {
        // LatentUpscaleBy: each latent side (an eighth) times the factor, rounded.
        let by = get("upscale").as_f64().unwrap();
        let side = |px: u64| ((px / 8) as f64 * by).round_ties_even() as u32 * 8;
        (side(w), side(h))
    } else {
        (w as u32, h as u32)
    }
}

/// Run `prompt` on the simulator at `base` for client `c`; the saved image's path.
async fn render(ws: &mut Ws, base: &str, out: &Path, prompt: &Value) -> PathBuf {
    let pid = submit(base, Some("templates"), prompt).await;
    ws.until_done(&pid).await;
    let entry = wait_history(base, &pid).await;
    assert_eq!(entry["status"]["status_str"], "success", "{entry}");
    let image = &entry["outputs"]["9"]["images"][0];
    out.join(image["subfolder"].as_str().unwrap())
        .join(image["filename"].as_str().unwrap())
}

fn pixels(path: &Path) -> Vec<u8> {
    let mut reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

const CHECKPOINT: &str = "AnythingXL_inkBase.safetensors";

#[tokio::test]
async fn shipped_templates_render_on_the_simulator() {
    let sim = TestSim::with_config(quick()).await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "templates").await;
    for name in TEMPLATES {
        let values = values(
            CHECKPOINT,
            &format!("tpl/{name}"),
            "a harbour at night",
            &[],
        );
        let path = render(&mut ws, &base, sim.output_dir(), &prepared(name, &values)).await;
        assert_eq!(png_size(&path), expected_size(name, &values), "{name}");
    }
}

/// The variables reach the picture: the upscale its size, the denoise and the CLIP layer its
/// pixels; the same values give the same pixels.
#[tokio::test]
async fn template_variables_change_the_picture() {
    let sim = TestSim::with_config(quick()).await;
    let base = sim.url();
    let out = sim.output_dir().to_path_buf();
    let mut ws = Ws::connect(&base, "templates").await;
    let mut run = async |name: &str, prefix: &str, vars: &[(&str, Value)]| {
        let values = values(CHECKPOINT, prefix, "a paper boat", vars);
        let path = render(&mut ws, &base, &out, &prepared(name, &values)).await;
        assert_eq!(png_size(&path), expected_size(name, &values), "{prefix}");
        pixels(&path)
    };
    let two = "sdxl-two-pass.json";
    let d4 = run(two, "d4", &[("denoise", json!(0.4))]).await;
    let d6 = run(two, "d6", &[("denoise", json!(0.6))]).await;
    let d4_again = run(two, "d4again", &[("denoise", json!(0.4))]).await;
    assert_ne!(d4, d6, "denoise 0.4 and 0.6 gave the same picture");
    assert_eq!(d4, d4_again, "the same values gave another picture");
    let up2 = run(two, "up2", &[("upscale", json!(2.0))]).await;
    assert_eq!(up2.len(), 128 * 128 * 3);
    let skip = "txt2img-clip-skip.json";
    let last = run(skip, "last", &[("clip_skip", json!(-1))]).await;
    let second = run(skip, "second", &[("clip_skip", json!(-2))]).await;
    assert_ne!(last, second, "the CLIP layer did not reach the picture");
}

/// The graphs of recorder scenario 11 (`tests/fixtures/comfy/11-node-classes.jsonl`), run
/// against the simulator, save images of the sizes the real ComfyUI 0.8.0 saved for them
/// (read from its output folder when recording): a latent upscale by 1.5 of 64x64; a
/// latent upscale to height 80 then an image scale by 0.5; a 72x60 image encoded (cut to
/// 72x56), sampled and decoded, and decoded back unsampled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_class_graphs_save_the_real_servers_sizes() {
    let sim = TestSim::with_config(SimConfig {
        checkpoints: vec![CHECKPOINT.into()],
        loras: vec!["plasma_test_lora.safetensors".into()],
        ..quick()
    })
    .await;
    record::record(&sim.url(), "11-node-classes", &RecordOptions::default())
        .await
        .unwrap();
    for (prefix, size) in [
        ("plasma_rec_two_pass", (96, 96)),
        ("plasma_rec_refiner", (40, 40)),
        ("plasma_rec_img2img", (72, 56)),
        ("plasma_rec_roundtrip", (72, 56)),
    ] {
        let path = sim.output_dir().join(format!("{prefix}_00001_.png"));
        assert_eq!(png_size(&path), size, "{prefix}");
    }
    // Encoded and decoded back without sampling: the image itself (a solid colour here).
    let roundtrip = pixels(&sim.output_dir().join("plasma_rec_roundtrip_00001_.png"));
    assert!(roundtrip.chunks(3).all(|p| p == &roundtrip[..3]));
}

/// A LoRA stack: each `LoraLoader` takes the previous one's MODEL and CLIP. It runs, and a
/// chain wired wrong (a MODEL into `clip`) is refused as ComfyUI words it.
#[tokio::test]
async fn lora_chain_runs_and_a_miswired_one_is_refused() {
    let sim = TestSim::with_config(quick()).await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "templates").await;
    let mut g = txt2img(5, 2, "three loras", "chain");
    let loras = [
        "inkline_v2.safetensors",
        "screentone_v1.safetensors",
        "lineart_clean.safetensors",
    ];
    for (i, lora) in loras.iter().enumerate() {
        let from = if i == 0 {
            "4".to_string()
        } else {
            format!("2{}", i - 1)
        };
        g[format!("2{i}")] = json!({"class_type": "LoraLoader", "inputs": {"model": [from, 0], "clip": [from, 1], "lora_name": lora, "strength_model": 0.5, "strength_clip": -0.25}});
    }
    let last = format!("2{}", loras.len() - 1);
    g.as_object_mut().unwrap().remove("10");
    g["3"]["inputs"]["model"] = json!([last, 0]);
    g["6"]["inputs"]["clip"] = json!([last, 1]);
    g["7"]["inputs"]["clip"] = json!([last, 1]);
    let path = render(&mut ws, &base, sim.output_dir(), &g).await;
    assert_eq!(png_size(&path), (64, 96));

    g["21"]["inputs"]["clip"] = json!(["20", 0]);
    let (status, body) = post_json(&base, "/prompt", &json!({"prompt": g})).await;
    assert_eq!(status, 400, "{body}");
    let error = &body["node_errors"]["21"]["errors"][0];
    assert_eq!(error["type"], "return_type_mismatch", "{body}");
    assert_eq!(
        error["details"],
        "clip, received_type(MODEL) mismatch input_type(CLIP)"
    );
}

/// The new classes' input checks, worded as ComfyUI words them (the recording 11 holds the
/// real server's answers for more of them).
#[tokio::test]
async fn new_classes_check_their_inputs() {
    let sim = TestSim::with_config(quick()).await;
    let base = sim.url();
    let values = values(
        CHECKPOINT,
        "bad",
        "x",
        &[("upscale", json!(0.0)), ("clip_skip", json!(-25))],
    );
    let mut g = prepared("sdxl-two-pass.json", &values);
    g["12"] = json!({"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -25}});
    g["6"]["inputs"]["clip"] = json!(["12", 0]);
    g["3"]["inputs"]["denoise"] = json!(1.5);
    let (status, body) = post_json(&base, "/prompt", &json!({"prompt": g})).await;
    assert_eq!(status, 400, "{body}");
    let errors = &body["node_errors"];
    assert_eq!(
        errors["10"]["errors"][0]["message"], "Value 0.0 smaller than min of 0.01",
        "{body}"
    );
    assert_eq!(
        errors["12"]["errors"][0]["message"], "Value -25 smaller than min of -24",
        "{body}"
    );
    assert_eq!(
        errors["3"]["errors"][0]["message"], "Value 1.5 bigger than max of 1.0",
        "{body}"
    );
}

/// A scale that leaves no pixel raises in the node as PyTorch's `interpolate` does (the
/// message a real ComfyUI 0.8.0 gave for this graph).
#[tokio::test]
async fn an_empty_image_scale_raises_like_pytorch() {
    let sim = TestSim::with_config(quick()).await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "templates").await;
    let g = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 24, "batch_size": 1, "color": 1234}},
        "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact", "scale_by": 0.01}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "empty", "images": ["2", 0]}}
    });
    let pid = submit(&base, Some("templates"), &g).await;
    let frames = ws.until_done(&pid).await;
    let error = frames
        .iter()
        .find(|f| f["type"] == "execution_error")
        .expect("an execution_error");
    assert_eq!(error["data"]["node_id"], "2");
    assert_eq!(error["data"]["exception_type"], "RuntimeError");
    assert_eq!(
        error["data"]["exception_message"],
        "Input and output sizes should be greater than 0, but got input (H: 24, W: 16) output (H: 0, W: 0)\n"
    );
}

/// Through the real binary on `--sim`: the two-pass template (its own variables written in
/// as literals, the rest filled by the manifest) saves images larger than the job's size,
/// and the run takes them (checked against the size the graph saves), not fails them.
#[test]
fn run_takes_the_upscaled_images_of_a_two_pass_template() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("workflows/sdxl-two-pass.json")).unwrap();
    let literal = text
        .replace("\"{{upscale}}\"", "1.5")
        .replace("\"{{denoise}}\"", "0.5");
    assert!(!literal.contains("{{upscale}}") && !literal.contains("{{denoise}}"));
    std::fs::write(dir.path().join("two-pass.json"), literal).unwrap();
    let manifest = dir.path().join("ch.toml");
    std::fs::write(
        &manifest,
        "[chapter]\nnumber = 2\ntitle = \"two passes\"\nseed = 5\n\n[defaults]\nworkflow = \"two-pass.json\"\nsteps = 3\nwidth = 64\nheight = 96\n\n[[pages]]\npage = 1\nprompt = \"a harbour at night\"\nvariants = 2\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    crate::cli::bin()
        .arg("run")
        .arg(&manifest)
        .args(["--sim", "--quiet", "--out"])
        .arg(&out)
        .assert()
        .success();
    let raw = out.join("ch-02/raw/comfyui");
    for v in 1..=2 {
        // 64x96 is 8x12 latent cells; x1.5 is 12x18: 96x144 pixels.
        assert_eq!(
            png_size(&raw.join(format!("ch02_p001_v{v}.png"))),
            (96, 144)
        );
    }
}

/// A chapter (number 7) on the templates, through the manifest's own variables: two passes
/// with the `[defaults]` values, a sweep of `denoise` over two values, and the CLIP-layer
/// template with a page's own `clip_skip`; 64x64, 3 steps, `checkpoint` everywhere.
pub fn chapter_manifest(dir: &Path, checkpoint: &str, marker: &str) -> PathBuf {
    let workflow = |name: &str| repo().join("workflows").join(name).display().to_string();
    let text = format!(
        "[chapter]\nnumber = 7\ntitle = \"templates\"\nseed = 77\n\n[defaults]\nworkflow = \"{}\"\ncheckpoint = \"{checkpoint}\"\nsteps = 3\nwidth = 64\nheight = 64\nvars = {{ upscale = 1.5, denoise = 0.55, clip_skip = -2 }}\n\n[[pages]]\npage = 1\nprompt = \"a harbour at night, {marker}\"\n\n[[pages]]\npage = 2\nprompt = \"a lantern in the wind, {marker}\"\nsweep = {{ denoise = [0.4, 0.7] }}\n\n[[pages]]\npage = 3\nworkflow = \"{}\"\nprompt = \"a gull on a post, {marker}\"\nvars = {{ clip_skip = -1 }}\n",
        workflow("sdxl-two-pass.json"),
        workflow("txt2img-clip-skip.json"),
    );
    let path = dir.join("chapter.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The report of a run of [`chapter_manifest`] into `out`: every job succeeded, with an
/// image of the size its template gives (96x96 after the 1.5 upscale, 64x64 otherwise), and
/// the two points of the sweep differ.
pub fn check_chapter(out: &Path) -> plasma_batch::report::RunReport {
    let dir = out.join("ch-07/reports");
    let mut reports: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    reports.sort();
    let report = plasma_batch::report::RunReport::read(reports.last().expect("a report")).unwrap();
    assert_eq!(report.jobs.len(), 4);
    let mut swept = Vec::new();
    for job in &report.jobs {
        assert_eq!(
            job.status,
            plasma_batch::report::ReportStatus::Succeeded,
            "{}: {:?}",
            job.key,
            job.error
        );
        let path = out.join(&job.images[0].path);
        let size = if job.page == 3 { (64, 64) } else { (96, 96) };
        assert_eq!(png_size(&path), size, "{}", job.key);
        if job.page == 2 {
            swept.push(job.images[0].sha256);
        }
    }
    assert_eq!(swept.len(), 2);
    assert_ne!(
        swept[0], swept[1],
        "the two denoise values gave one picture"
    );
    report
}

#[test]
fn a_chapter_of_the_templates_with_variables_and_a_sweep_renders_on_sim() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = chapter_manifest(dir.path(), CHECKPOINT, "sim");
    let out = dir.path().join("out");
    crate::cli::bin()
        .arg("run")
        .arg(&manifest)
        .args(["--sim", "--quiet", "--out"])
        .arg(&out)
        .assert()
        .success();
    check_chapter(&out);
}
