//! The manifest language, workflow templates, `validate` and `plan`: the broken-input corpus
//! (each fixture's rendered diagnostics snapshotted), the shipped manifests, and determinism.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use plasma_batch::diagnostic::{Bounded, Problem};
use plasma_batch::plan::{Plan, load_plan};

const BAD_MANIFESTS: &str = "tests/fixtures/manifests/bad";
/// One manifest per broken template in `tests/fixtures/workflows/bad`, named alike.
const BAD_WORKFLOW_MANIFESTS: &str = "tests/fixtures/manifests/workflow";
const BAD_WORKFLOWS: &str = "tests/fixtures/workflows/bad";

fn bin() -> Command {
    Command::cargo_bin("plasma-batch").expect("the binary is built")
}

/// Every diagnostic of a failed plan, rendered without colour at a fixed width, bounded as
/// the binary renders them.
fn render(problems: Vec<Problem>) -> String {
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100);
    let mut out = String::new();
    for problem in problems {
        handler
            .render_report(&mut out, &Bounded::new(Box::new(problem)))
            .expect("rendering into a String cannot fail");
        out.push('\n');
    }
    out
}

fn rendered_failure(manifest: &Path) -> String {
    match load_plan(manifest) {
        Ok(plan) => panic!(
            "{} should fail, planned {} jobs",
            manifest.display(),
            plan.jobs.len()
        ),
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty());
            render(diagnostics)
        }
    }
}

fn fixtures(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("failed to list {dir}: {e}"))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    paths.sort();
    paths
}

fn stem(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

/// `[<file>:<line>:<col>]`, as miette's graphical handler heads a source snippet.
fn names_file_and_position(rendered: &str, file: &str) -> bool {
    rendered.match_indices(&format!("[{file}:")).any(|(at, m)| {
        let rest = &rendered[at + m.len()..];
        let end = rest.find(']').unwrap_or(0);
        let mut parts = rest[..end].split(':');
        let numeric = |p: Option<&str>| {
            p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        numeric(parts.next()) && numeric(parts.next()) && parts.next().is_none()
    })
}

#[test]
fn every_broken_manifest_is_reported_with_file_line_and_column() {
    let paths = fixtures(BAD_MANIFESTS, "toml");
    assert!(
        paths.len() >= 25,
        "the corpus has {} broken manifests",
        paths.len()
    );
    for path in paths {
        let rendered = rendered_failure(&path);
        let file = path.display().to_string();
        assert!(
            names_file_and_position(&rendered, &file),
            "{file}: no [file:line:col] in\n{rendered}"
        );
        insta::assert_snapshot!(format!("bad_manifest__{}", stem(&path)), rendered);
    }
}

#[test]
fn every_broken_workflow_is_reported_with_file_line_and_column() {
    let paths = fixtures(BAD_WORKFLOW_MANIFESTS, "toml");
    let templates = fixtures(BAD_WORKFLOWS, "json");
    assert!(
        templates.len() >= 10,
        "the corpus has {} broken workflows",
        templates.len()
    );
    assert_eq!(
        paths.iter().map(|p| stem(p)).collect::<Vec<_>>(),
        templates.iter().map(|p| stem(p)).collect::<Vec<_>>(),
        "each broken workflow has its manifest"
    );
    for (path, template) in paths.iter().zip(&templates) {
        let rendered = rendered_failure(path);
        let file = template.display().to_string();
        assert!(
            names_file_and_position(&rendered, &file),
            "{file}: no [file:line:col] in\n{rendered}"
        );
        insta::assert_snapshot!(format!("bad_workflow__{}", stem(path)), rendered);
    }
}

#[test]
fn every_broken_fixture_fails_validate_and_plan_with_exit_code_3() {
    let manifests = fixtures(BAD_MANIFESTS, "toml")
        .into_iter()
        .map(|p| (p.clone(), p));
    let workflows = fixtures(BAD_WORKFLOW_MANIFESTS, "toml")
        .into_iter()
        .map(|p| {
            (
                p.clone(),
                Path::new(BAD_WORKFLOWS).join(format!("{}.json", stem(&p))),
            )
        });
    for (manifest, named) in manifests.chain(workflows) {
        for command in ["validate", "plan"] {
            let out = bin()
                .arg(command)
                .arg(&manifest)
                .assert()
                .code(3)
                .stdout("");
            let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
            assert!(
                names_file_and_position(&stderr, &named.display().to_string()),
                "{command} {}: stderr does not name {} with line:col:\n{stderr}",
                manifest.display(),
                named.display()
            );
        }
    }
}

/// A generated manifest in a temporary directory, rendered with the directory hidden.
fn failure_in_tempdir(name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write the generated manifest");
    let rendered = rendered_failure(&path);
    let shown = path.display().to_string();
    assert!(names_file_and_position(&rendered, &shown), "{rendered}");
    bin().arg("validate").arg(&path).assert().code(3);
    rendered.replace(&shown, &format!("[TMP]/{name}"))
}

#[test]
fn an_oversized_manifest_is_refused_before_parsing() {
    let limit = plasma_batch::manifest::MAX_MANIFEST_BYTES;
    let mut text = b"[chapter]\nnumber = 1\n".to_vec();
    text.resize(limit + 1, b'#');
    let rendered = failure_in_tempdir("huge.toml", &text);
    insta::assert_snapshot!("generated__oversized_manifest", rendered);
}

#[test]
fn a_manifest_that_is_not_utf8_names_the_byte_offset() {
    let text = b"[chapter]\nnumber = 1\ntitle = \"caf\xe9\"\n";
    let rendered = failure_in_tempdir("latin1.toml", text);
    assert!(rendered.contains("offset 33"), "{rendered}");
    insta::assert_snapshot!("generated__not_utf8_manifest", rendered);
}

const HOSTILE: &str = "tests/fixtures/manifests/good/hostile-prompt.toml";
const HOSTILE_PROMPT: &str = "She said \"run\" \\ back\\slash\nsecond line\ttab {{seed}} {{ {{prompt}} }} }} {{{ 🦊👩‍🚀 שלום עולם مرحبا \u{202e}\u{0} end";

fn plan_of(path: &str) -> Plan {
    load_plan(Path::new(path)).unwrap_or_else(|d| panic!("{path} should be valid:\n{}", render(d)))
}

#[test]
fn a_json_hostile_prompt_round_trips_exactly() {
    let plan = plan_of(HOSTILE);
    let job = &plan.jobs[0];
    assert_eq!(&*job.params.prompt, HOSTILE_PROMPT);
    assert_eq!(
        job.seed,
        u64::MAX,
        "explicit seeds use KSampler's full range"
    );
    let text = &job.workflow.to_value()["6"]["inputs"]["text"];
    assert_eq!(
        text, HOSTILE_PROMPT,
        "the prompt reaches the workflow unchanged"
    );
    assert_eq!(
        job.workflow.to_value()["7"]["inputs"]["text"],
        "C:\\temp\\{{negative}} \"raw\" \\n not a newline"
    );
    assert_eq!(job.workflow.to_value()["3"]["inputs"]["seed"], u64::MAX);
    // What is sent is JSON text: it must parse back to the very same workflow.
    let sent = serde_json::to_string(&job.workflow).unwrap();
    let back: serde_json::Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(back, job.workflow.to_value());

    let out = bin().args(["plan", "--json", HOSTILE]).assert().success();
    let doc: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(doc["jobs"][0]["params"]["prompt"], HOSTILE_PROMPT);
}

#[test]
fn the_shipped_manifests_validate() {
    bin()
        .args(["validate", "manifests/ch01.toml"])
        .assert()
        .success()
        .stdout("ok: manifests/ch01.toml: chapter 1, 9 pages, 14 jobs\n");
    bin()
        .args(["validate", "manifests/demo.toml"])
        .assert()
        .success()
        .stdout("ok: manifests/demo.toml: chapter 99, 2 pages, 4 jobs\n");
}

#[test]
#[allow(
    clippy::float_cmp,
    reason = "the manifest's number, parsed, not computed: exact equality is the point"
)]
fn ch01_exercises_the_language() {
    use plasma_batch::plan::SeedSource;
    let plan = plan_of("manifests/ch01.toml");
    assert!(plan.jobs.len() >= 8);
    assert!(
        plan.jobs
            .iter()
            .any(|j| j.params.seed_source == SeedSource::Explicit)
    );
    assert!(
        plan.jobs
            .iter()
            .any(|j| j.params.seed_source == SeedSource::Derived)
    );
    assert!(plan.jobs.iter().any(|j| j.variant >= 3));
    let with_lora: Vec<_> = plan
        .jobs
        .iter()
        .filter(|j| j.params.lora.is_some())
        .collect();
    assert!(!with_lora.is_empty() && with_lora.len() < plan.jobs.len());
    for job in &plan.jobs {
        let has_loader = job
            .workflow
            .to_value()
            .as_object()
            .unwrap()
            .values()
            .any(|n| n["class_type"] == "LoraLoader");
        assert_eq!(has_loader, job.params.lora.is_some(), "{}", job.key);
        if let Some(lora) = &job.params.lora {
            assert_eq!(
                job.workflow.to_value()["10"]["inputs"]["lora_name"],
                lora.name.as_str()
            );
        }
        assert_eq!(job.workflow.to_value()["3"]["inputs"]["seed"], job.seed);
        assert_eq!(
            job.hash,
            plasma_batch::plan::job_hash(&job.workflow.to_value()),
            "{}",
            job.key
        );
        assert_eq!(*job.output_nodes, ["9"]);
        assert_eq!(
            *job.params.filename_prefix,
            format!("plasma/ch01/{}", job.key)
        );
    }
    let keys: Vec<&str> = plan.jobs.iter().map(|j| j.key.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "jobs come in page, then variant order");
    assert_eq!(plan.comfy.servers, ["http://127.0.0.1:8188"]);
    assert_eq!(plan.comfy.timeout_secs, Some(120.0));
}

#[test]
fn plan_output_is_byte_identical_across_runs() {
    for args in [
        &["plan", "--json", "manifests/ch01.toml"][..],
        &["plan", "manifests/ch01.toml"][..],
    ] {
        let first = bin()
            .args(args)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let second = bin()
            .args(args)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        assert_eq!(first, second, "{args:?}");
    }
    let out = bin()
        .args(["plan", "--json", "manifests/ch01.toml"])
        .assert()
        .success();
    let doc: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let jobs = doc["jobs"].as_array().unwrap();
    assert!(jobs.len() >= 8);
    assert!(
        jobs.iter()
            .all(|j| j["seed"].is_u64() && j["hash"].is_string())
    );
}

#[test]
fn demo_plan_snapshots() {
    let table = bin()
        .args(["plan", "manifests/demo.toml"])
        .assert()
        .success();
    insta::assert_snapshot!(
        "plan_table__demo",
        String::from_utf8_lossy(&table.get_output().stdout)
    );
    let json = bin()
        .args(["plan", "--json", "manifests/demo.toml"])
        .assert()
        .success();
    insta::assert_snapshot!(
        "plan_json__demo",
        String::from_utf8_lossy(&json.get_output().stdout)
    );
}

#[test]
fn the_same_content_gives_the_same_hash_and_a_change_changes_it() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    std::fs::copy("workflows/txt2img.json", workflows.join("t.json")).unwrap();
    let write = |name: &str, steps: u32| {
        let path = dir.path().join(name);
        let text = format!(
            "# {name}\n[chapter]\nnumber = 3\n[defaults]\nworkflow = \"workflows/t.json\"\nsteps = {steps}\n[[pages]]\npage = 1\nprompt = \"x\"\n"
        );
        std::fs::write(&path, text).unwrap();
        load_plan(&path).unwrap_or_else(|d| panic!("{}", render(d)))
    };
    let a = write("a.toml", 20);
    let b = write("b.toml", 20);
    let c = write("c.toml", 21);
    assert_ne!(
        a.manifest_sha256, b.manifest_sha256,
        "the manifests differ in a comment"
    );
    assert_eq!(a.jobs[0].hash, b.jobs[0].hash, "what is sent is the same");
    assert_ne!(a.jobs[0].hash, c.jobs[0].hash);
    assert_eq!(a.jobs[0].key, "ch03_p001_s1");
}

#[test]
fn nothing_is_written_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["validate"][..], &["plan"][..], &["plan", "--json"][..]] {
        bin()
            .current_dir(dir.path())
            .args(args)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/ch01.toml"))
            .assert()
            .success();
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
