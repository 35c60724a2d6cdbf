//! An earlier page's image as an input (`images = { source = { page = 1 } }`), end to end
//! through the binary on the simulator: a page waits for the page it takes when the same run
//! renders it and gets exactly its bytes, a changed page re-renders the pages that take it,
//! an incremental run renders nothing, and `plan` shows what each reference resolved to.
//! (The diagnostics, cycles among them, are in the broken-manifest corpus,
//! `tests/fixtures/manifests/bad/images-pages.toml`.)

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cli::{bin, json_of};
use crate::faults_outage::SimProcess;
use crate::support::*;

/// A chapter whose page 2 is an img2img pass over page 1's latest image; `first` is page 1's
/// prompt.
fn chapter(dir: &Path, first: &str) -> PathBuf {
    let manifest = dir.join("ch07.toml");
    let workflows = repo().join("workflows");
    std::fs::write(
        &manifest,
        format!(
            "[chapter]\nnumber = 7\nseed = 7\n\n[defaults]\nworkflow = {:?}\nsteps = 4\n\
             width = 64\nheight = 64\nvars = {{ denoise = 0.5 }}\n\n\
             [[pages]]\npage = 1\nprompt = {first:?}\n\n\
             [[pages]]\npage = 2\nprompt = \"page 1 again, cleaner\"\nworkflow = {:?}\n\
             images = {{ source = {{ page = 1 }} }}\n",
            workflows.join("txt2img.json").display().to_string(),
            workflows.join("img2img.json").display().to_string(),
        ),
    )
    .unwrap();
    manifest
}

/// Run on the simulator: the JSON summary and every wave's report, earliest first.
pub(crate) fn run(manifest: &Path, out: &Path) -> (Value, Vec<Value>) {
    let summary = json_of(
        bin()
            .arg("run")
            .arg(manifest)
            .args(["--sim", "--json", "--out"])
            .arg(out),
    );
    let read = |path: &Value| -> Value {
        serde_json::from_slice(&std::fs::read(path.as_str().unwrap()).unwrap()).unwrap()
    };
    let mut reports: Vec<Value> = summary["earlier_waves"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| read(&w["report"]))
        .collect();
    reports.push(read(&summary["report"]));
    (summary, reports)
}

/// A job's entry among the reports (the last one that lists it as not skipped, else any).
fn job<'r>(reports: &'r [Value], key: &str) -> &'r Value {
    let all: Vec<&Value> = reports
        .iter()
        .flat_map(|r| r["jobs"].as_array().unwrap())
        .filter(|j| j["key"] == key)
        .collect();
    all.iter()
        .rev()
        .find(|j| j["status"] != "skipped")
        .or(all.last())
        .unwrap_or_else(|| panic!("no job {key} in {reports:#?}"))
}

fn plan(manifest: &Path, out: &Path) -> String {
    let output = bin()
        .arg("plan")
        .arg(manifest)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn a_page_waits_for_the_page_it_takes_and_follows_it_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let manifest = chapter(dir.path(), "the salt flat at noon");
    let before = plan(&manifest, &out);
    assert!(
        before.contains("page 2 input <- page 1 (rendered by this run"),
        "{before}"
    );
    let json = json_of(
        bin()
            .arg("plan")
            .arg(&manifest)
            .args(["--json", "--out"])
            .arg(&out),
    );
    assert!(json["jobs"][0].get("waits_for_pages").is_none(), "{json:#}");
    assert_eq!(json["jobs"][1]["waits_for_pages"], serde_json::json!([1]));

    // One run: page 1 first, then page 2 over the image page 1 just got.
    let (summary, reports) = run(&manifest, &out);
    assert_eq!(reports.len(), 2, "{summary:#}");
    assert_eq!(job(&reports, "ch07_p001_s1")["status"], "succeeded");
    let second = job(&reports, "ch07_p002_s1");
    assert_eq!(second["status"], "succeeded", "{second:#}");
    let page1 = out.join("ch-07/raw/comfyui/ch07_p001_v1.png");
    let page1_sha = sha256_file(&page1);
    assert_eq!(second["inputs"][0]["sha256"], page1_sha.as_str());
    assert_eq!(
        second["prompt"]["10"]["inputs"]["image"],
        format!("plasma/{}.png", &page1_sha[..32])
    );
    let resolved = plan(&manifest, &out);
    assert!(
        resolved.contains(&format!("sha256 {page1_sha}")) && resolved.contains("<- page 1 v1"),
        "{resolved}"
    );

    // Nothing changed: nothing renders, in one wave.
    let (summary, reports) = run(&manifest, &out);
    assert_eq!(reports.len(), 1, "{summary:#}");
    assert_eq!(summary["totals"]["skipped"], 2, "{summary:#}");
    assert_eq!(summary["totals"]["succeeded"], 0, "{summary:#}");

    // Page 1 changes: it renders again, and page 2 over its new image.
    let manifest = chapter(dir.path(), "the salt flat at dusk");
    let (summary, reports) = run(&manifest, &out);
    assert_eq!(reports.len(), 2, "{summary:#}");
    let new_page1 = out.join("ch-07/raw/comfyui/ch07_p001_v2.png");
    let new_sha = sha256_file(&new_page1);
    assert_ne!(new_sha, page1_sha, "the simulator draws another image");
    let second = job(&reports, "ch07_p002_s1");
    assert_eq!(second["status"], "succeeded", "{second:#}");
    assert_eq!(second["inputs"][0]["sha256"], new_sha.as_str());
    assert!(out.join("ch-07/raw/comfyui/ch07_p002_v2.png").is_file());
}

#[test]
fn a_page_whose_input_page_is_not_rendered_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let manifest = chapter(dir.path(), "the salt flat at noon");
    // `validate` waits for it like `run`; a `--only` run without page 1 cannot.
    bin()
        .arg("validate")
        .arg(&manifest)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let output = bin()
        .arg("run")
        .arg(&manifest)
        .args(["--sim", "--only", "ch07_p002", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("page 2 was not rendered: its input page 1 has no image"),
        "{stderr}"
    );
    assert!(!out.join("ch-07/raw/comfyui/ch07_p002_v1.png").exists());
}

#[test]
fn a_page_whose_input_page_failed_is_not_rendered() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let manifest = chapter(dir.path(), "the salt flat at noon");
    // Page 1's txt2img has the only EmptyLatentImage: it fails there, page 2 would not.
    let failing = SimProcess::start(&["--step-ms", "1", "--fault", "raise:EmptyLatentImage"]);
    let output = bin()
        .arg("run")
        .arg(&manifest)
        .args(["--server", &failing.url, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("page 2 was not rendered: its input page 1 failed"),
        "{stderr}"
    );
    let images: Vec<_> = std::fs::read_dir(out.join("ch-07/raw/comfyui"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(images.is_empty(), "{images:?}");
}

#[test]
fn a_version_names_one_file_and_a_missing_version_is_a_spanned_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let manifest = chapter(dir.path(), "the salt flat at noon");
    run(&manifest, &out);
    let page1 = out.join("ch-07/raw/comfyui/ch07_p001_v1.png");
    let add = |reference: &str| {
        let text = format!(
            "{}\n[[pages]]\npage = 3\nprompt = \"a third pass\"\n\
             workflow = {:?}\nimages = {{ source = {reference} }}\n",
            std::fs::read_to_string(&manifest).unwrap(),
            repo().join("workflows/img2img.json").display().to_string()
        );
        let edited = dir.path().join("edited.toml");
        std::fs::write(&edited, text).unwrap();
        edited
    };
    let shown = plan(&add("{ page = 1, version = 1 }"), &out);
    assert!(
        shown.contains(&format!(
            "page 3 input {} sha256 {}",
            page1.display(),
            sha256_file(&page1)
        )) && shown.contains("<- page 1 v1"),
        "{shown}"
    );
    let missing = add("{ page = 1, version = 9 }");
    let text = std::fs::read_to_string(&missing).unwrap();
    let line = 1 + text
        .lines()
        .position(|l| l.contains("version = 9"))
        .unwrap();
    let output = bin()
        .arg("validate")
        .arg(&missing)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("page 1 has no version 9 in the ledger of")
            && stderr.contains(&format!("edited.toml:{line}:21]")),
        "{stderr}"
    );
}

#[test]
fn a_chain_of_pages_renders_in_as_many_waves_each_over_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let manifest = chapter(dir.path(), "the salt flat at noon");
    // Page 3 takes page 2, which takes page 1.
    let text = format!(
        "{}\n[[pages]]\npage = 3\nprompt = \"a third pass\"\nworkflow = {:?}\n\
         images = {{ source = {{ page = 2 }} }}\n",
        std::fs::read_to_string(&manifest).unwrap(),
        repo().join("workflows/img2img.json").display().to_string()
    );
    std::fs::write(&manifest, text).unwrap();
    let (summary, reports) = run(&manifest, &out);
    assert_eq!(reports.len(), 3, "{summary:#}");
    let images = out.join("ch-07/raw/comfyui");
    for (page, input) in [(2, "ch07_p001_v1.png"), (3, "ch07_p002_v1.png")] {
        let entry = job(&reports, &format!("ch07_p00{page}_s1"));
        assert_eq!(entry["status"], "succeeded", "{entry:#}");
        assert_eq!(
            entry["inputs"][0]["sha256"],
            sha256_file(&images.join(input)).as_str()
        );
    }
}
