//! Hostile input through the real binary: diagnostics at huge columns, templates that are
//! devices, FIFOs or secrets, `--only` and output-folder edges, forged run reports, and
//! `plan --json` on large plans (docs/reliability.md, "Hostile input").

use crate::support::small_manifest;

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
