//! Manifest variables end to end: typed values from `[defaults]` and pages reach the filled
//! workflow, `plan --json`, the job hash, the run report and the contact sheet, `rerun`
//! reproduces them, and preflight checks the values they fill in. (Each rule's diagnostic is
//! in the broken-manifest corpus, `tests/fixtures/manifests/bad/var-*.toml`.)

use std::path::{Path, PathBuf};

use predicates::prelude::*;
use serde_json::{Value, json};

use crate::cli::{bin, json_of};
use crate::support::*;

const VARS: &str = "tests/fixtures/manifests/good/vars.toml";

/// A copy of the variables fixture in `dir`, its workflow path made absolute, with `edit`
/// applied to its text.
fn vars_manifest(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let template = repo().join("tests/fixtures/workflows/good/txt2img-vars.json");
    let text = std::fs::read_to_string(repo().join(VARS)).unwrap().replace(
        "\"../../workflows/good/txt2img-vars.json\"",
        &format!("\"{}\"", template.display()),
    );
    let path = dir.join("vars.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

#[test]
fn variables_fill_typed_values_and_text() {
    let plan = plan(Path::new(VARS));
    let sent: Vec<Value> = plan.jobs.iter().map(|j| j.workflow.to_value()).collect();
    // Page 1: the defaults. A whole-string slot takes the typed value, a slot inside text
    // the value as text.
    assert_eq!(sent[0]["3"]["inputs"]["denoise"], json!(0.55));
    assert_eq!(sent[0]["5"]["inputs"]["batch_size"], json!(1));
    assert!(sent[0]["5"]["inputs"]["batch_size"].is_i64());
    assert_eq!(sent[0]["3"]["inputs"]["scheduler"], "karras");
    assert_eq!(
        sent[0]["6"]["inputs"]["text"],
        "a salt flat at dawn, in the style of ink wash"
    );
    // Page 2 overrides two of them; its integer `denoise = 1` is the float default's type.
    assert!(sent[1]["3"]["inputs"]["denoise"].is_f64());
    assert_eq!(sent[1]["3"]["inputs"]["denoise"], json!(1.0));
    assert_eq!(
        sent[1]["6"]["inputs"]["text"],
        "a caravan at dusk, in the style of charcoal"
    );
    assert_eq!(sent[1]["3"]["inputs"]["scheduler"], "karras");
    // Page 3: the `[pages.vars]` sub-table form.
    assert_eq!(sent[2]["3"]["inputs"]["scheduler"], "normal");
    assert_eq!(sent[2]["3"]["inputs"]["denoise"], json!(0.55));
    // The job's parameters carry the values it was filled with.
    let vars = &plan.jobs[1].params.vars;
    assert_eq!(
        serde_json::to_value(vars).unwrap(),
        json!({"batch": 1, "denoise": 1.0, "noise_schedule": "karras", "style": "charcoal"})
    );
    for job in &plan.jobs {
        assert_eq!(
            job.hash,
            plasma_batch::plan::job_hash(&job.workflow.to_value()),
            "{}",
            job.key
        );
    }

    let doc = json_of(bin().args(["plan", "--json", VARS]));
    assert_eq!(
        doc["jobs"][2]["params"]["vars"],
        json!({"batch": 1, "denoise": 0.55, "noise_schedule": "normal", "style": "ink wash"})
    );
    assert_eq!(doc["jobs"][0]["hash"], plan.jobs[0].hash.to_string());
}

#[test]
fn a_changed_variable_changes_only_its_jobs_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let before = plan(&vars_manifest(dir.path(), |t| t));
    let after = plan(&vars_manifest(dir.path(), |t| {
        t.replace("style = \"charcoal\"", "style = \"charcoal and ink\"")
    }));
    let hashes = |p: &plasma_batch::plan::Plan| -> Vec<String> {
        p.jobs.iter().map(|j| j.hash.to_string()).collect()
    };
    let (before, after) = (hashes(&before), hashes(&after));
    assert_eq!(before[0], after[0]);
    assert_ne!(before[1], after[1], "page 2's style changed");
    assert_eq!(before[2], after[2]);

    // A default changes every job that takes it, and a value of the same text but another
    // type is another job.
    let typed = plan(&vars_manifest(dir.path(), |t| {
        t.replace("batch = 1,", "batch = 2,")
    }));
    assert!(hashes(&typed).iter().zip(&before).all(|(a, b)| a != b));
}

#[test]
fn run_and_rerun_of_jobs_with_variables_reproduce_them() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = vars_manifest(dir.path(), |t| t);
    let out = dir.path().join("out");
    let summary = json_of(
        bin()
            .arg("run")
            .arg(&manifest)
            .args(["--sim", "--json", "--out"])
            .arg(&out),
    );
    assert_eq!(summary["totals"]["succeeded"], 3, "{summary:#}");
    let report_path = summary["report"].as_str().unwrap().to_owned();
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let errors: Vec<String> = crate::report_schema::validator()
        .iter_errors(&report)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let job = &report["jobs"][1];
    assert_eq!(job["params"]["vars"]["style"], "charcoal");
    assert_eq!(job["params"]["vars"]["denoise"], json!(1.0));
    // What was sent holds the typed values.
    assert_eq!(job["prompt"]["3"]["inputs"]["denoise"], json!(1.0));
    assert_eq!(job["prompt"]["5"]["inputs"]["batch_size"], json!(1));
    // The contact sheet shows them.
    let sheet = std::fs::read_to_string(summary["contact_sheet"].as_str().unwrap()).unwrap();
    assert!(sheet.contains("style=charcoal"), "{sheet}");
    assert!(sheet.contains("noise_schedule=normal"));

    let rerun = json_of(bin().args(["rerun", &report_path, "--sim", "--json"]));
    assert_eq!(rerun["identical"], 3, "{rerun:#}");
    assert_eq!(rerun["different"], 0);
    let again: Value =
        serde_json::from_slice(&std::fs::read(rerun["report"].as_str().unwrap()).unwrap()).unwrap();
    for (old, new) in report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(again["jobs"].as_array().unwrap())
    {
        assert_eq!(old["params"], new["params"]);
        assert_eq!(old["prompt"], new["prompt"]);
        assert_eq!(old["job_hash"], new["job_hash"]);
    }
}

#[test]
fn preflight_checks_the_values_variables_fill_in() {
    let dir = tempfile::tempdir().unwrap();
    // Page 3's variable fills KSampler's `scheduler`, a combo: `karas` is none of its options.
    // Page 2's fills `denoise`, a FLOAT of 0.0..=1.0.
    let manifest = vars_manifest(dir.path(), |t| {
        t.replace("noise_schedule = \"normal\"", "noise_schedule = \"karas\"")
            .replace("denoise = 1,", "denoise = 2.5,")
    });
    bin().args(["validate"]).arg(&manifest).assert().success();
    // All or nothing: preflight stops the run before anything is sent, naming each job.
    let out = dir.path().join("out");
    bin()
        .arg("run")
        .arg(&manifest)
        .args(["--sim", "--all-or-nothing", "--out"])
        .arg(&out)
        .assert()
        .code(plasma_batch::exit_codes::PREFLIGHT_FAILED)
        .stderr(
            predicate::str::contains("scheduler \"karas\" is not available")
                .and(predicate::str::contains("(jobs ch03_p003_s1)"))
                .and(predicate::str::contains(
                    "denoise 2.5 is above the maximum 1",
                ))
                .and(predicate::str::contains("(jobs ch03_p002_s1)"))
                .and(predicate::str::contains("to one within the"))
                .and(predicate::str::contains("ch03_p001_s1").not()),
        );
    assert!(
        !out.join("ch-03/raw/comfyui/ch03_p001_v1.png").exists(),
        "preflight stops the run before anything is sent"
    );
    // Routed (the default): the two jobs no server can take fail with why, the third renders.
    bin()
        .arg("run")
        .arg(&manifest)
        .args(["--sim", "--out"])
        .arg(&out)
        .assert()
        .code(plasma_batch::exit_codes::JOBS_FAILED)
        .stderr(
            predicate::str::contains(
                "FAIL ch03_p003_s1: no server in the run can take this job: node 3 (KSampler): scheduler \"karas\" is not available",
            )
            .and(predicate::str::contains(
                "FAIL ch03_p002_s1: no server in the run can take this job: node 3 (KSampler): denoise 2.5 is above the maximum 1",
            )),
        );
    assert!(out.join("ch-03/raw/comfyui/ch03_p001_v1.png").exists());
    assert!(!out.join("ch-03/raw/comfyui/ch03_p002_v1.png").exists());
}

#[test]
fn serve_refuses_a_workflow_with_variables_at_start_naming_each() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = bin()
        .arg("serve")
        .arg("--workflow")
        .arg(repo().join("tests/fixtures/workflows/good/txt2img-vars.json"))
        .args(["--sim", "--listen", "127.0.0.1:0", "--out"])
        .arg(&out)
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .code(plasma_batch::exit_codes::INVALID_INPUT)
        .get_output()
        .clone();
    let stderr = crate::hostile::flat(&output.stderr);
    for expected in [
        "txt2img-vars.json is not a valid template",
        "it uses {{batch}}, {{denoise}}, {{noise_schedule}}, {{style}}, which are no built-in",
        "write the value each should have into the template, or render these jobs with \
         `plasma-batch run MANIFEST`",
    ] {
        assert!(stderr.contains(expected), "{expected:?} in {stderr}");
    }
    assert!(
        !out.exists(),
        "nothing is written when the start is refused"
    );
}
