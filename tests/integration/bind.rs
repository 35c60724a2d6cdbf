//! Exported workflows with bindings, and LoRA stacks: the real binary on the simulator, and
//! the graph it sent as the run report records it.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

use crate::support::*;

fn bin() -> Command {
    let mut cmd = Command::cargo_bin("plasma-batch").unwrap();
    cmd.env_remove("PLASMA_COMFY_URL")
        .env_remove("PLASMA_COMFY_TOKEN");
    cmd
}

fn exported() -> PathBuf {
    repo().join("workflows/exported-sd15.json")
}

/// `run --sim --json`, which must succeed; the run report it wrote and its contact sheet.
fn run_sim(manifest: &Path, out: &Path) -> (Value, String) {
    let output = bin()
        .arg("run")
        .arg(manifest)
        .args(["--sim", "--json", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let report = std::fs::read(summary["report"].as_str().unwrap()).unwrap();
    let sheet = std::fs::read_to_string(summary["contact_sheet"].as_str().unwrap()).unwrap();
    (serde_json::from_slice(&report).unwrap(), sheet)
}

fn job<'r>(report: &'r Value, key: &str) -> &'r Value {
    report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["key"] == key)
        .unwrap_or_else(|| panic!("no job {key} in the report"))
}

/// The report's job hash is the hash of the graph it says was sent.
fn assert_hash_is_of_the_sent_graph(job: &Value) {
    let sent = &job["prompt"];
    assert_eq!(
        job["job_hash"].as_str().unwrap(),
        plasma_batch::plan::job_hash(sent).to_string()
    );
}

#[test]
fn an_unedited_export_with_bindings_and_placeholders_renders_on_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    // The export as ComfyUI wrote it, plus one hand-written placeholder: both ways mix.
    let text = std::fs::read_to_string(exported()).unwrap();
    let workflow = dir.path().join("mixed.json");
    std::fs::write(
        &workflow,
        text.replace(
            "\"v1-5-pruned-emaonly-fp16.safetensors\"",
            "\"{{checkpoint}}\"",
        ),
    )
    .unwrap();
    let manifest = dir.path().join("chapter.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"[chapter]
number = 5

[defaults]
workflow = "mixed.json"
checkpoint = "sd_xl_base_1.0.safetensors"
steps = 3
cfg = 6.5
width = 64
height = 96

[bind."mixed.json"]
prompt = "6.text"
negative = "7.text"
seed = "KSampler.seed"
steps = "3.steps"
cfg = "KSampler.cfg"
width = "Empty Latent Image.width"
height = "5.height"
filename_prefix = "Save Image.filename_prefix"

[[pages]]
page = 1
prompt = "a lighthouse, \"quoted\" {{{{seed}}}}"
seed = 4242

[[pages]]
page = 2
prompt = "a quay"
workflow = "{}"
width = 512                     # the size the export renders: images are checked against it
height = 512
"#,
            exported().display()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let (report, _) = run_sim(&manifest, &out);
    let first = job(&report, "ch05_p001_s1");
    assert_eq!(first["status"], "succeeded", "{first:#}");
    let sent = &first["prompt"];
    assert_eq!(
        sent["6"]["inputs"]["text"],
        "a lighthouse, \"quoted\" {{seed}}"
    );
    assert_eq!(
        sent["7"]["inputs"]["text"],
        plasma_batch::params::DEFAULT_NEGATIVE
    );
    assert_eq!(sent["3"]["inputs"]["seed"], 4242);
    assert_eq!(sent["3"]["inputs"]["steps"], 3);
    assert_eq!(sent["3"]["inputs"]["cfg"], 6.5);
    // Unbound literals stay as exported.
    assert_eq!(sent["3"]["inputs"]["denoise"], 1);
    assert_eq!(sent["3"]["inputs"]["sampler_name"], "euler");
    assert_eq!(sent["5"]["inputs"]["width"], 64);
    assert_eq!(sent["5"]["inputs"]["height"], 96);
    assert_eq!(
        sent["4"]["inputs"]["ckpt_name"],
        "sd_xl_base_1.0.safetensors"
    );
    assert_eq!(
        sent["9"]["inputs"]["filename_prefix"],
        "plasma/ch05/ch05_p001_s1"
    );
    assert_eq!(sent["6"]["_meta"]["title"], "CLIP Text Encode (Prompt)");
    assert_hash_is_of_the_sent_graph(first);
    let image = out.join(first["images"][0]["path"].as_str().unwrap());
    assert_eq!(png_size(&image), (64, 96));

    // The export itself without its own [bind] table: sent exactly as exported.
    let second = job(&report, "ch05_p002_s1");
    assert_eq!(second["status"], "succeeded", "{second:#}");
    let as_exported: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(second["prompt"], as_exported);
}

/// The `LoraLoader` nodes from the sampler's model back to the checkpoint, in chain order
/// (first after the checkpoint first), checking CLIP follows the same chain.
fn chain_of(sent: &Value) -> Vec<(String, f64, f64)> {
    let nodes = sent.as_object().unwrap();
    let sampler = nodes
        .values()
        .find(|n| n["class_type"] == "KSampler")
        .unwrap();
    let mut chain = Vec::new();
    let mut at = sampler["inputs"]["model"][0].as_str().unwrap().to_owned();
    for encoder in nodes
        .values()
        .filter(|n| n["class_type"] == "CLIPTextEncode")
    {
        assert_eq!(
            encoder["inputs"]["clip"][0], at,
            "text encoders take CLIP from the chain's end"
        );
    }
    while nodes[&at]["class_type"] == "LoraLoader" {
        let inputs = &nodes[&at]["inputs"];
        assert_eq!(inputs["model"][1], 0);
        assert_eq!(inputs["clip"][1], 1);
        assert_eq!(inputs["model"][0], inputs["clip"][0]);
        chain.push((
            inputs["lora_name"].as_str().unwrap().to_owned(),
            inputs["strength_model"].as_f64().unwrap(),
            inputs["strength_clip"].as_f64().unwrap(),
        ));
        at = inputs["model"][0].as_str().unwrap().to_owned();
    }
    assert_eq!(nodes[&at]["class_type"], "CheckpointLoaderSimple");
    let loaders = nodes
        .values()
        .filter(|n| n["class_type"] == "LoraLoader")
        .count();
    assert_eq!(loaders, chain.len(), "every LoraLoader is in the chain");
    chain.reverse();
    chain
}

/// Pages with no stack, the default stack of one, three on txt2img and three on the export.
fn stack_manifest(dir: &Path) -> PathBuf {
    let manifest = dir.join("chapter.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"[chapter]
number = 6

[defaults]
workflow = "{txt2img}"
steps = 2
width = 64
height = 64
loras = [{{ name = "lineart_clean.safetensors", strength_model = 0.3 }}]

[bind."{exported}"]
width = "Empty Latent Image.width"
height = "Empty Latent Image.height"

[[pages]]
page = 1
prompt = "no lora"
loras = []

[[pages]]
page = 2
prompt = "the default stack of one"

[[pages]]
page = 3
prompt = "three, in order"
loras = [
  {{ name = "screentone_v1.safetensors", strength_model = 0.8, strength_clip = 0.5 }},
  {{ name = "inkline_v2.safetensors" }},
  {{ name = "lineart_clean.safetensors", strength_model = -0.25, strength_clip = 2 }},
]

[[pages]]
page = 4
prompt = "three on an unedited export"
workflow = "{exported}"
loras = [{{ name = "inkline_v2.safetensors" }}, {{ name = "screentone_v1.safetensors" }}, {{ name = "lineart_clean.safetensors" }}]
"#,
            txt2img = repo().join("workflows/txt2img.json").display(),
            exported = exported().display(),
        ),
    )
    .unwrap();
    manifest
}

#[test]
fn a_page_with_a_stack_after_one_without_passes_preflight() {
    // The export has no LoraLoader: only page 2's graph (its own, though the same file) has
    // one, and the preflight must ask the server for it.
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("chapter.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"[chapter]
number = 6

[defaults]
workflow = "{exported}"
steps = 2
width = 64
height = 64

[bind."{exported}"]
width = "Empty Latent Image.width"
height = "Empty Latent Image.height"

[[pages]]
page = 1
prompt = "no lora"

[[pages]]
page = 2
prompt = "a stack of one"
loras = [{{ name = "inkline_v2.safetensors" }}]
"#,
            exported = exported().display(),
        ),
    )
    .unwrap();
    let (report, _) = run_sim(&manifest, &dir.path().join("out"));
    assert_eq!(report["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(job(&report, "ch06_p002_s1")["status"], "succeeded");
}

#[test]
fn a_stack_of_0_1_or_3_loras_sends_that_many_loaders_chained_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = stack_manifest(dir.path());

    // The plan's table names each page's stack in order.
    let table = bin().arg("plan").arg(&manifest).output().unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains(
            " screentone_v1.safetensors+inkline_v2.safetensors+lineart_clean.safetensors "
        ),
        "{table}"
    );

    // plan --json shows each page's stack.
    let plan = bin()
        .arg("plan")
        .arg(&manifest)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(plan.status.code(), Some(0));
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let stacks: Vec<usize> = plan["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["params"]["loras"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(stacks, [0, 1, 3, 3]);
    assert_eq!(
        plan["jobs"][2]["params"]["loras"][2],
        serde_json::json!({"name": "lineart_clean.safetensors", "strength_model": -0.25, "strength_clip": 2.0})
    );

    let (report, sheet) = run_sim(&manifest, &dir.path().join("out"));
    let errors: Vec<String> = crate::report_schema::validator()
        .iter_errors(&report)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "the report with stacks: {errors:#?}");
    assert!(
        sheet.contains(
            " · LoRA screentone_v1.safetensors, inkline_v2.safetensors, lineart_clean.safetensors<"
        ),
        "{sheet}"
    );
    let chains: Vec<Vec<(String, f64, f64)>> = [
        "ch06_p001_s1",
        "ch06_p002_s1",
        "ch06_p003_s1",
        "ch06_p004_s1",
    ]
    .iter()
    .map(|key| {
        let job = job(&report, key);
        assert_eq!(job["status"], "succeeded", "{job:#}");
        assert_hash_is_of_the_sent_graph(job);
        chain_of(&job["prompt"])
    })
    .collect();
    let lora = |name: &str, m: f64, c: f64| (name.to_owned(), m, c);
    assert_eq!(chains[0], []);
    assert_eq!(chains[1], [lora("lineart_clean.safetensors", 0.3, 1.0)]);
    assert_eq!(
        chains[2],
        [
            lora("screentone_v1.safetensors", 0.8, 0.5),
            lora("inkline_v2.safetensors", 1.0, 1.0),
            lora("lineart_clean.safetensors", -0.25, 2.0),
        ]
    );
    assert_eq!(
        chains[3]
            .iter()
            .map(|(n, _, _)| n.as_str())
            .collect::<Vec<_>>(),
        [
            "inkline_v2.safetensors",
            "screentone_v1.safetensors",
            "lineart_clean.safetensors"
        ]
    );
    // The VAE still comes from the checkpoint, not from a LoRA.
    let sent = &job(&report, "ch06_p003_s1")["prompt"];
    assert_eq!(sent["8"]["inputs"]["vae"], serde_json::json!(["4", 2]));
    // Without a stack the graph is the template's own.
    let plain = &job(&report, "ch06_p001_s1")["prompt"];
    assert_eq!(plain.as_object().unwrap().len(), 7);
}

#[test]
fn preflight_names_every_lora_of_a_stack_the_server_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("chapter.toml");
    std::fs::write(
        &manifest,
        format!(
            "[chapter]\nnumber = 8\n\n[defaults]\nworkflow = \"{}\"\nsteps = 2\nwidth = 64\nheight = 64\n\n\
             [[pages]]\npage = 1\nprompt = \"a\"\nloras = [{{ name = \"inkline_v2.safetensors\" }}, {{ name = \"not_installed_v9.safetensors\" }}]\n",
            repo().join("workflows/txt2img.json").display()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    bin()
        .arg("run")
        .arg(&manifest)
        .args(["--sim", "--out"])
        .arg(&out)
        .assert()
        .code(plasma_batch::exit_codes::PREFLIGHT_FAILED)
        .stderr(
            predicate::str::contains("lora_name \"not_installed_v9.safetensors\"")
                .and(predicate::str::contains("node plasma_lora_2 (LoraLoader)"))
                .and(predicate::str::contains("ch08_p001_s1"))
                .and(predicate::str::contains("lora_name \"inkline_v2").not()),
        );
    assert!(files_under(&out).iter().all(|f| !has_extension(f, "png")));
}

#[test]
fn a_binding_to_a_variable_takes_each_pages_value_and_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("chapter.toml");
    let text = |denoise_target: &str| {
        format!(
            "[chapter]\nnumber = 2\n\n[defaults]\nworkflow = \"{w}\"\nvars = {{ denoise = 0.6 }}\n\n\
             [bind.\"{w}\"]\ndenoise = \"{denoise_target}\"\n\n\
             [[pages]]\npage = 1\nprompt = \"a\"\n\n[[pages]]\npage = 2\nprompt = \"b\"\nvars = {{ denoise = 0.4 }}\n",
            w = exported().display()
        )
    };
    std::fs::write(&manifest, text("KSampler.denoise")).unwrap();
    let plan = plasma_batch::plan::load_plan(&manifest).unwrap_or_else(|p| panic!("{p:?}"));
    let denoise: Vec<Value> = plan
        .jobs
        .iter()
        .map(|j| j.workflow.to_value()["3"]["inputs"]["denoise"].clone())
        .collect();
    assert_eq!(denoise, [0.6, 0.4]);

    // A float variable cannot take a string input's place.
    std::fs::write(&manifest, text("KSampler.scheduler")).unwrap();
    let problems = plasma_batch::plan::load_plan(&manifest).unwrap_err();
    let codes: Vec<&str> = problems
        .iter()
        .map(plasma_batch::diagnostic::Problem::code)
        .collect();
    assert_eq!(codes, ["bind::type_mismatch"]);
    assert!(
        problems[0].message().contains("`denoise` is a number"),
        "{}",
        problems[0].message()
    );
}

#[test]
fn a_bound_anchor_places_the_chain_when_the_workflow_has_two_checkpoint_loaders() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("chapter.toml");
    let workflow = repo().join("tests/fixtures/workflows/two-checkpoints.json");
    std::fs::write(
        &manifest,
        format!(
            "[chapter]\nnumber = 2\n\n[defaults]\nworkflow = \"{w}\"\n\n[bind.\"{w}\"]\nloras = \"4\"\n\n\
             [[pages]]\npage = 1\nprompt = \"a\"\nloras = [{{ name = \"x\" }}, {{ name = \"y\" }}]\n",
            w = workflow.display()
        ),
    )
    .unwrap();
    let plan = plasma_batch::plan::load_plan(&manifest).unwrap_or_else(|p| panic!("{p:?}"));
    let sent = plan.jobs[0].workflow.to_value();
    let names: Vec<String> = chain_of(&sent).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names, ["x", "y"]);
    assert_eq!(
        sent["plasma_lora_1"]["inputs"]["model"],
        serde_json::json!(["4", 0])
    );
    // The other loader, which only gives the VAE, is left as it was.
    assert_eq!(sent["8"]["inputs"]["vae"], serde_json::json!(["12", 2]));
    assert_eq!(
        plan.jobs[0].workflow_sha256.as_ref(),
        sha256_file(&workflow),
        "workflow_sha256 is the template file's, chain or not"
    );
}

#[test]
fn the_shipped_exported_workflow_example_plans_with_its_stacks() {
    let plan = plasma_batch::plan::load_plan(&repo().join("manifests/exported.toml"))
        .unwrap_or_else(|p| panic!("{p:?}"));
    let stacks: Vec<usize> = plan
        .jobs
        .iter()
        .map(|j| chain_of(&j.workflow.to_value()).len())
        .collect();
    assert_eq!(stacks, [2, 1, 0]);
    let sent = plan.jobs[0].workflow.to_value();
    assert_eq!(sent["6"]["inputs"]["text"], &*plan.jobs[0].params.prompt);
    assert_eq!(sent["3"]["inputs"]["seed"], plan.jobs[0].seed);
}

#[test]
fn every_sweep_point_of_a_page_with_a_stack_sends_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("chapter.toml");
    std::fs::write(
        &manifest,
        format!(
            "[chapter]\nnumber = 2\n\n[defaults]\nworkflow = \"{}\"\n\n[[pages]]\npage = 1\nprompt = \"a\"\n\
             sweep = {{ cfg = [5.0, 7.0] }}\nloras = [{{ name = \"x\" }}, {{ name = \"y\" }}]\n",
            repo().join("workflows/txt2img.json").display()
        ),
    )
    .unwrap();
    let plan = plasma_batch::plan::load_plan(&manifest).unwrap_or_else(|p| panic!("{p:?}"));
    assert_eq!(plan.jobs.len(), 2);
    for job in &plan.jobs {
        let sent = job.workflow.to_value();
        let names: Vec<String> = chain_of(&sent).into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(names, ["x", "y"], "{}", job.key);
        assert_eq!(job.hash, plasma_batch::plan::job_hash(&sent));
    }
    assert_ne!(plan.jobs[0].hash, plan.jobs[1].hash);
}

#[test]
fn an_export_whose_size_is_not_bound_renders_at_the_size_its_graph_saves() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.toml");
    let workflow = exported().display().to_string();
    // The manifest's size (the default 512x768) is not bound: the export's own 512x512 is
    // what the graph renders, and the image is checked against that.
    std::fs::write(
        &manifest,
        format!(
            "[chapter]\nnumber = 1\n\n[defaults]\nworkflow = \"{workflow}\"\n\n\
             [bind.\"{workflow}\"]\nprompt = \"6.text\"\n\n\
             [[pages]]\npage = 1\nprompt = \"a lighthouse\"\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let output = bin()
        .arg("run")
        .arg(&manifest)
        .args(["--sim", "--json", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(plasma_batch::exit_codes::OK),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let report: Value =
        serde_json::from_slice(&std::fs::read(summary["report"].as_str().unwrap()).unwrap())
            .unwrap();
    let image = &job(&report, "ch01_p001_s1")["images"][0];
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(512), Some(512))
    );
    assert_eq!(
        png_size(&out.join(image["path"].as_str().unwrap())),
        (512, 512)
    );
}
