//! Input images named in the manifest, end to end through the binary: the shipped chapter 3
//! (pages, img2img passes over `manifests/refs/`, and a second pass over its own page 1)
//! renders on the simulator in two waves, the filled workflow names each image by its content,
//! and a changed reference re-renders exactly the pages that use it. (Each rule's diagnostic is in the broken-manifest corpus,
//! `tests/fixtures/manifests/bad/images-*.toml`.)

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cli::{bin, json_of};
// Run on the simulator: the JSON summary (the last wave's) and every wave's report.
use crate::page_inputs::run;
use crate::support::*;

/// A copy of the shipped chapter 3 in `dir` (manifest, refs and the workflows it names), so
/// that a test may change a reference without touching the repository.
fn chapter3(dir: &Path) -> PathBuf {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(manifests.join("refs")).unwrap();
    std::fs::create_dir_all(dir.join("workflows")).unwrap();
    for file in [
        "manifests/ch03.toml",
        "manifests/refs/pose-03.png",
        "manifests/refs/mira-sheet.png",
        "manifests/refs/salt-flat.png",
        "workflows/txt2img.json",
        "workflows/img2img.json",
    ] {
        std::fs::copy(repo().join(file), dir.join(file)).unwrap();
    }
    manifests.join("ch03.toml")
}

/// A job's entry among the waves' reports.
fn job_in<'r>(reports: &'r [Value], key: &str) -> &'r Value {
    reports
        .iter()
        .flat_map(|r| r["jobs"].as_array().unwrap())
        .find(|j| j["key"] == key)
        .unwrap_or_else(|| panic!("no job {key} in {reports:#?}"))
}

/// The statuses of the waves' jobs, by key.
fn statuses(reports: &[Value]) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = reports
        .iter()
        .flat_map(|r| r["jobs"].as_array().unwrap())
        .map(|j| {
            (
                j["key"].as_str().unwrap().to_owned(),
                j["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    all.sort();
    all
}

#[test]
fn chapter_3_renders_img2img_passes_and_a_changed_reference_rerenders_only_its_pages() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = chapter3(dir.path());
    let out = dir.path().join("out");
    let refs = dir.path().join("manifests/refs");

    let (summary, reports) = run(&manifest, &out);
    // Two waves: every page that waits for nothing, then page 5, the pass over page 1.
    assert_eq!(reports.len(), 2, "{summary:#}");
    let keys = |report: &Value| -> Vec<String> {
        report["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["key"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(!keys(&reports[0]).contains(&"ch03_p005_s1".to_owned()));
    assert_eq!(keys(&reports[1]), ["ch03_p005_s1"]);
    assert_eq!(summary["earlier_waves"][0]["totals"]["succeeded"], 5);
    assert!(
        statuses(&reports).iter().all(|(_, s)| s == "succeeded"),
        "{:?}",
        statuses(&reports)
    );
    assert_eq!(statuses(&reports).len(), 6);
    let job = |key: &str| job_in(&reports, key);
    // The LoadImage input names the uploaded file by its content.
    let pose_hash = sha256_file(&refs.join("pose-03.png"));
    let sent = job("ch03_p002_s1")["prompt"]["10"]["inputs"]["image"].clone();
    assert_eq!(sent, format!("plasma/{}.png", &pose_hash[..32]), "{sent}");
    assert_eq!(
        job("ch03_p002_s1")["prompt"]["3"]["inputs"]["denoise"],
        0.85
    );
    // An img2img pass keeps its input's size; a text page has the manifest's.
    let image_of = |key: &str| out.join(job(key)["images"][0]["path"].as_str().unwrap());
    assert_eq!(png_size(&image_of("ch03_p002_s1")), (64, 96));
    assert_eq!(png_size(&image_of("ch03_p004_s1")), (96, 64));
    assert_eq!(png_size(&image_of("ch03_p001_s1")), (512, 768));
    // Page 5's input is page 1's image file, just rendered: its bytes, under its content's name.
    let page1 = image_of("ch03_p001_s1");
    let page1_sha = sha256_file(&page1);
    let second = job("ch03_p005_s1");
    assert_eq!(
        second["inputs"][0]["sha256"],
        page1_sha.as_str(),
        "{second:#}"
    );
    assert_eq!(second["inputs"][0]["path"], page1.display().to_string());
    assert_eq!(
        second["prompt"]["10"]["inputs"]["image"],
        format!("plasma/{}.png", &page1_sha[..32])
    );
    assert_eq!(second["prompt"]["3"]["inputs"]["denoise"], 0.35);
    assert_eq!(png_size(&image_of("ch03_p005_s1")), (512, 768));

    // Nothing changed: nothing is rendered again, in one wave.
    let (_, again) = run(&manifest, &out);
    assert_eq!(again.len(), 1);
    assert_eq!(statuses(&again).len(), 6);
    assert!(
        statuses(&again).iter().all(|(_, s)| s == "skipped"),
        "{:?}",
        statuses(&again)
    );

    // The character sheet changes (same name, other bytes): only page 3's two jobs render.
    std::fs::copy(refs.join("pose-03.png"), refs.join("mira-sheet.png")).unwrap();
    let (_, changed) = run(&manifest, &out);
    let rendered: Vec<String> = statuses(&changed)
        .into_iter()
        .filter(|(_, s)| s != "skipped")
        .map(|(k, s)| format!("{k} {s}"))
        .collect();
    assert_eq!(
        rendered,
        ["ch03_p003_s1 succeeded", "ch03_p003_s2 succeeded"],
        "{rendered:?}"
    );
}

#[test]
fn plan_shows_each_input_image_with_its_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = chapter3(dir.path());
    let pose = manifest.parent().unwrap().join("refs/pose-03.png");
    let hash = sha256_file(&pose);
    let out = dir.path().join("out");
    let plan = json_of(
        bin()
            .arg("plan")
            .arg(&manifest)
            .args(["--json", "--out"])
            .arg(&out),
    );
    let jobs = plan["jobs"].as_array().unwrap();
    // Page 5 takes page 1, which has no image yet: it waits, its input is not known.
    assert_eq!(jobs[5]["key"], "ch03_p005_s1");
    assert_eq!(jobs[5]["waits_for_pages"], serde_json::json!([1]));
    let with_inputs: Vec<&str> = jobs
        .iter()
        .filter(|j| j.get("inputs").is_some())
        .map(|j| j["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        with_inputs,
        [
            "ch03_p002_s1",
            "ch03_p003_s1",
            "ch03_p003_s2",
            "ch03_p004_s1"
        ]
    );
    assert_eq!(jobs[1]["inputs"][0]["sha256"], hash.as_str());
    assert_eq!(jobs[1]["inputs"][0]["path"], pose.display().to_string());
    let output = bin()
        .arg("plan")
        .arg(&manifest)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(
        table.contains("page 5 input <- page 1 (rendered by this run"),
        "{table}"
    );
    let line = format!(
        "page 2 input {} sha256 {hash} (plasma/{}.png)",
        pose.display(),
        &hash[..32]
    );
    assert!(table.contains(&line), "no `{line}` in\n{table}");
}

#[test]
fn a_page_image_is_merged_over_the_defaults_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = chapter3(dir.path());
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace(
            "vars = { denoise = 0.6 }",
            "vars = { denoise = 0.6 }\nimages = { source = \"refs/salt-flat.png\" }",
        )
        .replace(
            "images = { source = \"refs/salt-flat.png\" }\nvars = { denoise = 0.45 }",
            "",
        );
    std::fs::write(&manifest, &text).unwrap();
    assert_eq!(text.matches("salt-flat.png").count(), 1, "{text}");
    let refs = manifest.parent().unwrap().join("refs");
    let plan = json_of(
        bin()
            .arg("plan")
            .arg(&manifest)
            .args(["--json", "--out"])
            .arg(dir.path().join("out")),
    );
    let input_of = |key: &str| {
        let job = plan["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["key"] == key)
            .unwrap();
        job["inputs"][0]["sha256"].as_str().unwrap().to_owned()
    };
    // Page 4 takes the default; page 2 its own; page 1's workflow loads no image.
    assert_eq!(
        input_of("ch03_p004_s1"),
        sha256_file(&refs.join("salt-flat.png"))
    );
    assert_eq!(
        input_of("ch03_p002_s1"),
        sha256_file(&refs.join("pose-03.png"))
    );
    assert!(plan["jobs"][0].get("inputs").is_none());
}

#[test]
fn an_earlier_page_s_image_file_is_an_input_of_a_second_pass() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = chapter3(dir.path());
    let out = dir.path().join("out");
    let (first, reports) = run(&manifest, &out);
    assert_eq!(statuses(&reports).len(), 6, "{first:#}");
    assert!(statuses(&reports).iter().all(|(_, s)| s == "succeeded"));
    // Page 6: an img2img pass over page 1's first version, named by its file.
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str(
        "\n[[pages]]\npage = 6\nprompt = \"page 1 again, cleaner\"\n\
         workflow = \"../workflows/img2img.json\"\n\
         images = { source = \"../out/ch-03/raw/comfyui/ch03_p001_v1.png\" }\n",
    );
    std::fs::write(&manifest, text).unwrap();
    let page1 = out.join("ch-03/raw/comfyui/ch03_p001_v1.png");
    let (_, reports) = run(&manifest, &out);
    let rendered: Vec<(String, String)> = statuses(&reports)
        .into_iter()
        .filter(|(_, s)| s != "skipped")
        .collect();
    assert_eq!(
        rendered,
        [("ch03_p006_s1".to_owned(), "succeeded".to_owned())],
        "{rendered:?}"
    );
    let job = job_in(&reports, "ch03_p006_s1");
    assert_eq!(job["inputs"][0]["sha256"], sha256_file(&page1).as_str());
    let image = out.join(job["images"][0]["path"].as_str().unwrap());
    assert_eq!(png_size(&image), png_size(&page1));
}

#[test]
fn a_file_that_is_no_image_is_refused_without_showing_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = chapter3(dir.path());
    let secret = dir.path().join("credentials.png");
    std::fs::write(&secret, "token=hunter2-0123456789abcdef\n").unwrap();
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("\"refs/salt-flat.png\"", "\"../credentials.png\"");
    std::fs::write(&manifest, text).unwrap();
    for command in ["validate", "plan"] {
        let output = bin().arg(command).arg(&manifest).output().unwrap();
        assert_eq!(output.status.code(), Some(3), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("(it looks like text)") && stderr.contains("not an image"),
            "{stderr}"
        );
        assert!(stderr.contains("ch03.toml:"), "{stderr}");
        assert!(
            !stderr.contains("hunter2") && !stderr.contains("0123456789abcdef"),
            "{stderr}"
        );
        assert!(output.stdout.is_empty() || command == "validate");
    }
}

#[test]
fn the_report_and_contact_sheet_list_inputs_and_rerun_uploads_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = chapter3(dir.path());
    let out = dir.path().join("out");
    let refs = dir.path().join("manifests/refs");
    let (summary, reports) = run(&manifest, &out);
    for report in &reports {
        let errors: Vec<String> = crate::report_schema::validator()
            .iter_errors(report)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
    }
    // The first wave: pages 1 to 4 (page 5 waits for page 1 and is the second wave's).
    let first = &summary["earlier_waves"][0];
    let report = &reports[0];
    let jobs = report["jobs"].as_array().unwrap();
    let job = |key: &str| jobs.iter().find(|j| j["key"] == key).unwrap();
    assert!(job("ch03_p001_s1").get("inputs").is_none());
    let input = &job("ch03_p004_s1")["inputs"][0];
    let salt = sha256_file(&refs.join("salt-flat.png"));
    assert_eq!(input["sha256"], salt.as_str());
    assert_eq!(input["name"], format!("plasma/{}.png", &salt[..32]));
    assert!(
        input["path"]
            .as_str()
            .unwrap()
            .ends_with("refs/salt-flat.png"),
        "{input}"
    );
    assert_eq!(
        (input["width"].as_u64(), input["height"].as_u64()),
        (Some(96), Some(64))
    );
    // The contact sheet shows each input beside its output, with a thumbnail.
    let sheet = std::fs::read_to_string(first["contact_sheet"].as_str().unwrap()).unwrap();
    let marker = format!("input salt-flat.png · {}", &salt[..12]);
    assert!(sheet.contains(&marker), "no `{marker}` in the sheet");
    assert_eq!(sheet.matches("<div class=\"input\"><img").count(), 4);

    // `rerun` uploads the same bytes to a fresh server and reproduces every image.
    let report_path = first["report"].as_str().unwrap().to_owned();
    let rerun = json_of(bin().args(["rerun", &report_path, "--sim", "--json"]));
    assert_eq!(rerun["identical"], 5, "{rerun:#}");
    // The second wave's pass over page 1 too: page 1's file is its input.
    let second_wave = summary["report"].as_str().unwrap();
    let rerun = json_of(bin().args(["rerun", second_wave, "--sim", "--json"]));
    assert_eq!(rerun["identical"], 1, "{rerun:#}");

    // A reference changed since: the rerun says which job and file, and sends nothing.
    std::fs::copy(refs.join("pose-03.png"), refs.join("salt-flat.png")).unwrap();
    let before = files_under(&out);
    let output = bin()
        .args(["rerun", &report_path, "--sim", "--json"])
        .output()
        .unwrap();
    assert_ne!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("rerun::input_changed"), "{stderr}");
    assert!(stderr.contains("ch03_p004_s1"), "{stderr}");
    assert!(stderr.contains("salt-flat.png"), "{stderr}");
    assert!(stderr.contains(&salt), "{stderr}");
    assert_eq!(files_under(&out), before);
}

/// `workflows/pose-reference.json` on the simulator: a pose sketch and a character sheet,
/// each brought to the page's size and blended by `pose_weight`, go through img2img; the
/// graph sent names each image by its content and the image saved has the page's size.
#[test]
fn pose_reference_template_blends_two_inputs_to_the_page_size() {
    let dir = tempfile::tempdir().unwrap();
    let refs = repo().join("manifests/refs");
    let manifest = dir.path().join("pose.toml");
    let text = format!(
        "[chapter]\nnumber = 9\n\n[defaults]\nworkflow = \"{}\"\nwidth = 72\nheight = 96\nsteps = 2\n\
         vars = {{ denoise = 0.7, pose_weight = 0.35 }}\n\n\
         [[pages]]\npage = 1\nprompt = \"Mira, after the pose sketch\"\n\
         images = {{ pose = \"{}\", reference = \"{}\" }}\n",
        repo().join("workflows/pose-reference.json").display(),
        refs.join("pose-03.png").display(),
        refs.join("mira-sheet.png").display(),
    );
    std::fs::write(&manifest, text).unwrap();
    let out = dir.path().join("out");
    let (summary, reports) = run(&manifest, &out);
    assert_eq!(summary["totals"]["succeeded"], 1, "{summary:#}");
    assert_eq!(reports.len(), 1, "no page waits for another: one wave");
    let job = &reports[0]["jobs"][0];
    let graph = &job["prompt"];
    let named = |file: &str| format!("plasma/{}.png", &sha256_file(&refs.join(file))[..32]);
    assert_eq!(graph["10"]["inputs"]["image"], named("pose-03.png"));
    assert_eq!(graph["12"]["inputs"]["image"], named("mira-sheet.png"));
    for scale in ["13", "14"] {
        assert_eq!(graph[scale]["class_type"], "ImageScale");
        assert_eq!(graph[scale]["inputs"]["width"], 72);
        assert_eq!(graph[scale]["inputs"]["height"], 96);
        assert_eq!(graph[scale]["inputs"]["crop"], "center");
    }
    assert_eq!(graph["15"]["class_type"], "ImageBlend");
    assert_eq!(graph["15"]["inputs"]["blend_factor"], 0.35);
    assert_eq!(graph["15"]["inputs"]["blend_mode"], "normal");
    assert_eq!(
        graph["11"]["inputs"]["pixels"],
        serde_json::json!(["15", 0])
    );
    assert_eq!(graph["3"]["inputs"]["denoise"], 0.7);
    let image = out.join(job["images"][0]["path"].as_str().unwrap());
    assert_eq!(png_size(&image), (72, 96));
}
