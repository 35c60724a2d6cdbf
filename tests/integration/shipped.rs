//! The shipped example chapters, rendered as a user would: `manifests/ch02.toml` (variables,
//! a sweep, a LoRA stack, a custom variable on a non-sampler node and an unedited ComfyUI
//! export with bindings) on the simulator, through the real binary.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cli::bin;
use crate::support::repo;

/// A copy of `manifests/ch02.toml` in `dir/manifests/`, rewritten by `edit`, beside a copy of
/// `workflows/`, so its `../workflows/...` paths hold as in the repository.
pub fn ch02_copy(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let manifests = dir.join("manifests");
    let workflows = dir.join("workflows");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::create_dir_all(&workflows).unwrap();
    for entry in std::fs::read_dir(repo().join("workflows")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, workflows.join(path.file_name().unwrap())).unwrap();
    }
    let text = std::fs::read_to_string(repo().join("manifests/ch02.toml")).unwrap();
    let manifest = manifests.join("ch02.toml");
    std::fs::write(&manifest, edit(text)).unwrap();
    manifest
}

/// The newest report of chapter 2 under `out`.
pub fn ch02_report(out: &Path) -> Value {
    let dir = out.join("ch-02/reports");
    let mut reports: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    reports.sort();
    serde_json::from_slice(&std::fs::read(reports.last().unwrap()).unwrap()).unwrap()
}

/// What every job of ch02 must have sent, whatever the server: the sweep's denoise values on
/// the second pass, the stack of two LoRAs chained in order, the clip-skip variable on
/// `CLIPSetLastLayer`, and the export's own nodes with the bound values.
pub fn check_ch02_graphs(report: &Value) {
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 7, "{report:#}");
    for job in jobs {
        assert_eq!(job["status"], "succeeded", "{job:#}");
    }
    let job = |key: &str| {
        jobs.iter()
            .find(|j| j["key"] == key)
            .unwrap_or_else(|| panic!("no job {key}"))
    };
    // Page 2's sweep: each point's denoise reaches the second KSampler, nothing else differs.
    let mut denoise = Vec::new();
    for point in ["0.4", "0.55", "0.7"] {
        let j = job(&format!("ch02_p002_denoise={point}_s1"));
        let graph = j["prompt"].as_object().unwrap();
        let second = graph
            .values()
            .filter(|n| n["class_type"] == "KSampler")
            .map(|n| n["inputs"]["denoise"].as_f64().unwrap())
            .find(|d| *d < 1.0)
            .expect("a second pass below denoise 1");
        denoise.push(second);
        assert_eq!(j["params"]["vars"]["denoise"].as_f64(), Some(second));
    }
    assert_eq!(denoise, [0.4, 0.55, 0.7]);
    // Page 3: two LoraLoaders chained in order, fed by the checkpoint loader; the page's
    // clip_skip on CLIPSetLastLayer.
    let graph = &job("ch02_p003_s1")["prompt"];
    let loras: Vec<(&str, &Value)> = graph
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, n)| n["class_type"] == "LoraLoader")
        .map(|(id, n)| (id.as_str(), n))
        .collect();
    assert_eq!(loras.len(), 2, "{graph:#}");
    let first = loras
        .iter()
        .find(|(_, n)| n["inputs"]["lora_name"] == "inkline_v2.safetensors")
        .unwrap();
    let second = loras
        .iter()
        .find(|(_, n)| n["inputs"]["lora_name"] == "screentone_v1.safetensors")
        .unwrap();
    assert_eq!(second.1["inputs"]["model"][0], first.0, "chained in order");
    let clip_skip = graph
        .as_object()
        .unwrap()
        .values()
        .find(|n| n["class_type"] == "CLIPSetLastLayer")
        .expect("the clip-skip template");
    assert_eq!(clip_skip["inputs"]["stop_at_clip_layer"], -1);
    // Page 4: the export as it is, the page's prompt and seed in the bound inputs.
    let j = job("ch02_p004_s1");
    let graph = &j["prompt"];
    assert_eq!(graph["6"]["_meta"]["title"], "CLIP Text Encode (Prompt)");
    assert_eq!(graph["6"]["inputs"]["text"], j["params"]["prompt"]);
    assert_eq!(graph["3"]["inputs"]["seed"], j["seed"]);
}

#[test]
fn ch02_renders_on_the_simulator_with_every_feature_it_shows() {
    let dir = tempfile::tempdir().unwrap();
    // Smaller images, the same graphs: the simulator's time goes with the pixels.
    let manifest = ch02_copy(dir.path(), |t| {
        t.replace("width = 512", "width = 128")
            .replace("height = 768", "height = 192")
    });
    let out = dir.path().join("out");
    bin()
        .arg("run")
        .arg(&manifest)
        .args(["--sim", "--quiet", "--out"])
        .arg(&out)
        .assert()
        .success();
    let report = ch02_report(&out);
    check_ch02_graphs(&report);
    let errors: Vec<String> = crate::report_schema::validator()
        .iter_errors(&report)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // The shipped file itself, unedited, plans the same seven jobs.
    bin()
        .args(["validate"])
        .arg(repo().join("manifests/ch02.toml"))
        .assert()
        .success()
        .stdout(predicates::str::contains("chapter 2, 4 pages, 7 jobs"));
}
