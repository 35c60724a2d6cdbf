//! Hostile input through the real binary: diagnostics at huge columns, templates that are
//! devices, FIFOs or secrets, `--only` and output-folder edges, forged run reports, and
//! `plan --json` on large plans (docs/reliability.md, "Hostile input").

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::json;

use crate::support::{repo, small_manifest};

fn bin() -> Command {
    let mut cmd = Command::cargo_bin("plasma-batch").expect("the binary is built");
    cmd.env_remove("PLASMA_COMFY_URL")
        .env_remove("PLASMA_COMFY_TOKEN");
    cmd
}

/// `validate` (and `plan`) of `manifest` fail with exit 3; their stderr.
fn invalid(manifest: &Path) -> String {
    let mut stderr = String::new();
    for command in ["validate", "plan"] {
        let out = bin().arg(command).arg(manifest).assert().code(3).stdout("");
        stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    }
    stderr
}

/// `stderr` as one line: miette wraps messages at the terminal's width, behind a `│` gutter.
pub(crate) fn flat(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .split_whitespace()
        .filter(|w| *w != "│")
        .collect::<Vec<_>>()
        .join(" ")
}

/// `run MANIFEST --sim [args] --out OUT`.
fn run_sim(manifest: &Path, args: &[&str], out: &Path) -> std::process::Output {
    bin()
        .arg("run")
        .arg(manifest)
        .arg("--sim")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// Whether `stderr` says `text`, however miette wrapped it (at the terminal's width, behind a
/// `│` gutter, breaking lines at spaces or after a `/` or `-`).
fn says(stderr: &str, text: &str) -> bool {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| !c.is_whitespace() && *c != '│')
            .collect()
    };
    squash(stderr).contains(&squash(text))
}

/// A one-page chapter-1 manifest in `dir` whose `[defaults]` end with `defaults`.
fn one_page(dir: &Path, defaults: &str) -> std::path::PathBuf {
    let path = dir.join("m.toml");
    let text = format!(
        "[chapter]\nnumber = 1\n[defaults]\n{defaults}\n[[pages]]\npage = 1\nprompt = \"a\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_diagnostic_at_column_65536_or_beyond_is_a_short_excerpt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    // A template of 65,536 spaces, then `{}` (no nodes): the label is at column 65,537.
    std::fs::write(
        dir.path().join("wide.json"),
        format!("{}{{}}", " ".repeat(65_536)),
    )
    .unwrap();
    let stderr = invalid(&one_page(dir.path(), "workflow = \"wide.json\""));
    assert!(says(&stderr, "wide.json:1:65537]"), "{stderr}");
    assert!(
        says(&stderr, "has no nodes") && says(&stderr, "{}"),
        "{stderr}"
    );
    assert!(stderr.len() < 2000, "{} bytes of stderr", stderr.len());

    // An unknown key after a 70,000-character LoRA name, in the manifest itself.
    let workflow = repo().join("workflows/txt2img-lora.json");
    let lora = format!("lora = {{ name = \"{}\", bogus = 1 }}", "a".repeat(70_000));
    let manifest = one_page(dir.path(), &format!("workflow = {workflow:?}\n{lora}"));
    let stderr = invalid(&manifest);
    assert!(says(&stderr, "unknown key `bogus`"), "{stderr}");
    assert!(says(&stderr, "m.toml:5:70021]"), "{stderr}");
    assert!(says(&stderr, "aaa\", bogus = 1 }"), "{stderr}");
    assert!(stderr.len() < 2000, "{} bytes of stderr", stderr.len());
}

#[test]
fn plan_json_streams_jobs_instead_of_building_the_document() {
    // 9,600 jobs (60 pages: planned on one thread). Built as one JSON document, printing
    // them took ~120 MB; streamed, the whole process fits in a third of the limit below.
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 60, 160, "");
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -d 49152 && exec \"$0\" plan --json \"$1\"")
        .arg(assert_cmd::cargo::cargo_bin("plasma-batch"))
        .arg(&manifest)
        .env("TOKIO_WORKER_THREADS", "2")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "plan --json under a 48 MiB data limit: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let jobs = doc["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 9600);
    assert_eq!(jobs[0]["key"], "ch07_p001_s1");
    assert_eq!(jobs[9599]["key"], "ch07_p060_s160");
}

/// `validate` of `manifest` under a 256 MiB data limit, killed after 60 s: an input that
/// never ends fails the test instead of eating the machine's memory.
fn validate_bounded(manifest: &Path) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -d 262144 && exec \"$0\" validate \"$1\"")
        .arg(assert_cmd::cargo::cargo_bin("plasma-batch"))
        .arg(manifest)
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap()
}

#[test]
fn a_template_that_is_a_device_a_fifo_or_too_large_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let large = dir.path().join("large.json");
    std::fs::File::create(&large)
        .unwrap()
        .set_len(8 * 1024 * 1024 + 1)
        .unwrap();
    for (workflow, why) in [
        (
            "/dev/zero",
            "it is not a regular file (it is a character device)",
        ),
        ("fifo.json", "it is not a regular file (it is a FIFO)"),
        (".", "it is not a regular file (it is a directory)"),
        ("large.json", "it is larger than the 8 MiB limit"),
    ] {
        let manifest = one_page(dir.path(), &format!("workflow = \"{workflow}\""));
        let out = validate_bounded(&manifest);
        let stderr = flat(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{workflow}: {stderr}");
        assert!(
            says(&stderr, "failed to read workflow `") && says(&stderr, why),
            "{workflow}: {stderr}"
        );
        assert!(says(&stderr, "m.toml:4:12]"), "{workflow}: {stderr}");
    }
}

#[test]
fn a_template_that_is_not_json_at_all_is_named_but_never_printed() {
    const TOKEN: &str = "tok-4f1d8e2a9b7c-never-print-me";
    let dir = tempfile::tempdir().unwrap();
    // Like /etc/shadow: text, but not JSON.
    std::fs::write(
        dir.path().join("shadow"),
        format!("root:{TOKEN}:20228:0:99999:7:::\n"),
    )
    .unwrap();
    // A JSON array of secrets, and a Latin-1 file: JSON-like, or text, but not a workflow.
    std::fs::write(
        dir.path().join("array.json"),
        format!("[{{\"token\": \"{TOKEN}\"}}]"),
    )
    .unwrap();
    let mut latin1 = format!("{{\"token\": \"{TOKEN}").into_bytes();
    let bad_at = latin1.len();
    latin1.extend(b"\xe9\"}");
    std::fs::write(dir.path().join("latin1.json"), latin1).unwrap();
    let not_utf8 = format!("it is not UTF-8 text (offset {bad_at})");
    // JSON, but no workflow: a credentials file.
    std::fs::write(
        dir.path().join("config.json"),
        format!("{{\n  \"auths\": {{\n    \"registry\": {{\"auth\": \"{TOKEN}\"}}\n  }}\n}}\n"),
    )
    .unwrap();
    for (workflow, why) in [
        ("/proc/self/environ", "it has a NUL byte"),
        (
            "config.json",
            "none of its 1 top-level entries is a node with a `class_type`",
        ),
        (
            "shadow",
            "it does not start with `{`, so it is not a JSON object",
        ),
        (
            "array.json",
            "it does not start with `{`, so it is not a JSON object",
        ),
        ("latin1.json", not_utf8.as_str()),
    ] {
        let manifest = one_page(dir.path(), &format!("workflow = \"{workflow}\""));
        for command in ["validate", "plan"] {
            let out = bin()
                .arg(command)
                .arg(&manifest)
                .env("PLASMA_COMFY_TOKEN", TOKEN)
                .output()
                .unwrap();
            let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), flat(&out.stderr));
            assert_eq!(out.status.code(), Some(3), "{workflow}: {stderr}");
            assert!(
                !stdout.contains(TOKEN) && !says(&stderr, TOKEN),
                "{workflow}: a secret was printed:\n{stdout}{stderr}"
            );
            assert!(says(&stderr, why), "{workflow}: {stderr}");
            assert!(says(&stderr, "is not an API-format workflow"), "{stderr}");
        }
    }
    // The token is in this process's environment too: naming environ as the manifest itself
    // is refused without showing it either.
    let out = bin()
        .args(["validate", "/proc/self/environ"])
        .env("PLASMA_COMFY_TOKEN", TOKEN)
        .output()
        .unwrap();
    let stderr = flat(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(!says(&stderr, TOKEN), "{stderr}");
    assert!(says(&stderr, "manifest has a NUL byte"), "{stderr}");
}

#[test]
fn a_shared_template_outside_the_manifest_folder_and_a_symlinked_one_are_fine() {
    let dir = tempfile::tempdir().unwrap();
    let shared = repo().join("workflows/txt2img.json");
    std::os::unix::fs::symlink(&shared, dir.path().join("linked.json")).unwrap();
    for workflow in [shared.display().to_string(), "linked.json".to_owned()] {
        let manifest = one_page(dir.path(), &format!("workflow = {workflow:?}"));
        bin()
            .arg("validate")
            .arg(&manifest)
            .assert()
            .success()
            .stdout(predicates::str::ends_with("chapter 1, 1 page, 1 job\n"));
    }
}

#[test]
fn only_that_is_empty_malformed_or_cannot_match_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 2, 1, "");
    let out = dir.path().join("out");
    for (only, expected) in [
        ("", "--only \"\" is empty"),
        ("ch7", "--only `ch7` is not a job key"),
        ("../x", "--only `../x` is not a job key"),
        (
            "ch06_p001_s1",
            "--only ch06_p001_s1 matches no job help: these jobs are chapter ch07; the closest keys are ch07_p001_s1",
        ),
        ("ch07_p003", "--only ch07_p003 matches no job"),
    ] {
        let output = run_sim(&manifest, &["--only", only], &out);
        let stderr = flat(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "--only {only:?}: {stderr}");
        assert!(says(&stderr, expected), "--only {only:?}: {stderr}");
        assert!(!out.exists(), "--only {only:?} wrote {}", out.display());
    }
}

#[test]
fn only_a_job_key_selects_that_job_and_not_its_longer_namesakes() {
    // Variants 1 and 10..=12 share the text prefix `ch07_p001_s1`.
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 1, 12, "");
    let output = run_sim(
        &manifest,
        &["--json", "--only", "ch07_p001_s1"],
        &dir.path().join("out"),
    );
    assert_eq!(output.status.code(), Some(0), "{}", flat(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["totals"]["jobs"], 1, "{summary:#}");
}

/// Make `dir` a folder no file can be created in, even as root: read-only permissions where
/// they are enforced, else a symbolic link to sysfs (which refuses new files to root too).
fn make_unwritable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(dir.join("probe"), b"").is_ok() {
        std::fs::remove_file(dir.join("probe")).unwrap();
        std::fs::remove_dir(dir).unwrap();
        std::os::unix::fs::symlink("/sys/kernel", dir).unwrap();
    }
    assert!(
        std::fs::write(dir.join("probe"), b"").is_err(),
        "{} is still writable: this test needs a folder that refuses new files",
        dir.display()
    );
}

#[test]
fn an_image_folder_that_refuses_files_stops_the_run_before_any_prompt() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 3, 1, "");
    let out = dir.path().join("out");
    let images = out.join("ch-07/raw/comfyui");
    make_unwritable(&images);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sim = runtime
        .block_on(crate::support::TestSim::start(&[]))
        .idle_ok();
    let output = bin()
        .arg("run")
        .arg(&manifest)
        .args(["--server", &sim.url(), "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = flat(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(says(&stderr, "ch-07/raw/comfyui"), "{stderr}");
    assert_eq!(
        sim.prompts_posted(),
        0,
        "a prompt was posted before the image folder was found unusable"
    );
    assert!(
        !out.join("ch-07/reports").read_dir().unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "json"))
    );
    if !images.is_symlink() {
        std::fs::set_permissions(&images, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn a_dangling_out_symlink_is_named_with_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 1, 1, "");
    let out = dir.path().join("out");
    let target = dir.path().join("gone/away");
    std::os::unix::fs::symlink(&target, &out).unwrap();
    let output = run_sim(&manifest, &[], &out);
    let stderr = flat(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(
        says(
            &stderr,
            &format!(
                "`{}` is a symbolic link to `{}`, which does not exist",
                out.display(),
                target.display()
            )
        ),
        "{stderr}"
    );
    assert!(!says(&stderr, "File exists"), "{stderr}");
    assert!(!dir.path().join("gone").exists());
}

#[test]
fn rerun_refuses_forged_reports_and_writes_only_under_its_own_chapter_or_out() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 1, 1, "");
    let out = dir.path().join("out");
    let run = run_sim(&manifest, &["--json"], &out);
    assert_eq!(run.status.code(), Some(0), "{}", flat(&run.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let report_path = PathBuf::from(summary["report"].as_str().unwrap());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let schema = crate::report_schema::validator();
    assert!(schema.is_valid(&report));
    let rerun = |report: &Path, args: &[&str]| {
        let output = bin()
            .arg("rerun")
            .arg(report)
            .arg("--sim")
            .args(args)
            .output()
            .unwrap();
        (output.status.code(), flat(&output.stderr))
    };
    let images = || crate::support::files_under(&out.join("ch-07/raw"));
    let before = images();

    // Forged: refused (exit 3) naming the field, and invalid by the schema too.
    for (pointer, value, expected) in [
        (
            "/schema_version",
            json!(99),
            "has schema_version 99; this plasma-batch",
        ),
        (
            "/jobs/0/key",
            json!("../../../x"),
            "jobs[0].key `../../../x` is not `ch07_p001_s1`",
        ),
        (
            "/jobs/0/page",
            json!(0),
            "jobs[0]: page 0 or variant 1 out of range",
        ),
        (
            "/settings/in_flight",
            json!(0),
            "settings.in_flight 0 is not 1..=64",
        ),
    ] {
        let mut forged = report.clone();
        *forged.pointer_mut(pointer).unwrap() = value;
        assert!(!schema.is_valid(&forged), "the schema accepts {pointer}");
        let path = report_path.with_file_name("forged.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&forged).unwrap()).unwrap();
        let (code, stderr) = rerun(&path, &[]);
        assert_eq!(code, Some(3), "{stderr}");
        assert!(says(&stderr, expected), "{stderr}");
    }
    let (code, stderr) = rerun(Path::new("/proc/self/environ"), &[]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        says(&stderr, "is not a run report: it has a NUL byte"),
        "{stderr}"
    );
    assert_eq!(images(), before, "a refused rerun wrote an image");

    // The report's own `output_root` is not where anything goes: its chapter root is.
    let elsewhere = dir.path().join("elsewhere");
    let mut moved = report.clone();
    moved["output_root"] = elsewhere.display().to_string().into();
    std::fs::write(&report_path, serde_json::to_vec_pretty(&moved).unwrap()).unwrap();
    let (code, stderr) = rerun(&report_path, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(out.join("ch-07/raw/comfyui/ch07_p001_v2.png").exists());
    assert!(
        !elsewhere.exists(),
        "rerun wrote under the report's output_root"
    );

    // A report outside a chapter's reports folder needs --out, and then writes only there.
    let copy = dir.path().join("copy.json");
    std::fs::copy(&report_path, &copy).unwrap();
    let (code, stderr) = rerun(&copy, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(says(&stderr, "pass --out DIR"), "{stderr}");
    let other = dir.path().join("other");
    let (code, stderr) = rerun(&copy, &["--out", other.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(other.join("ch-07/raw/comfyui/ch07_p001_v1.png").exists());
    assert!(!elsewhere.exists());
}
