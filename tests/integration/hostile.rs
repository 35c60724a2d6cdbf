//! Hostile input through the real binary: diagnostics at huge columns, templates that are
//! devices, FIFOs or secrets, `--only` and output-folder edges, forged run reports, and
//! `plan --json` on large plans (docs/reliability.md, "Hostile input").

use std::path::Path;

use assert_cmd::Command;

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
    assert!(stderr.contains("wide.json:1:65537]"), "{stderr}");
    assert!(
        stderr.contains("has no nodes") && stderr.contains("{}"),
        "{stderr}"
    );
    assert!(stderr.len() < 2000, "{} bytes of stderr", stderr.len());

    // An unknown key after a 70,000-character LoRA name, in the manifest itself.
    let workflow = repo().join("workflows/txt2img-lora.json");
    let lora = format!("lora = {{ name = \"{}\", bogus = 1 }}", "a".repeat(70_000));
    let manifest = one_page(dir.path(), &format!("workflow = {workflow:?}\n{lora}"));
    let stderr = invalid(&manifest);
    assert!(stderr.contains("unknown key `bogus`"), "{stderr}");
    assert!(stderr.contains("m.toml:5:70021]"), "{stderr}");
    assert!(stderr.contains("aaa\", bogus = 1 }"), "{stderr}");
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
