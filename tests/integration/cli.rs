//! The real binary: exit codes, messages, `run --sim`, `rerun`.

use assert_cmd::Command;
use predicates::prelude::*;

use crate::support::*;

pub fn bin() -> Command {
    let mut cmd = Command::cargo_bin("plasma-batch").unwrap();
    cmd.env_remove("PLASMA_COMFY_URL")
        .env_remove("PLASMA_COMFY_TOKEN");
    cmd
}

/// Run `command`, which must succeed, and read the JSON it prints.
pub fn json_of(command: &mut Command) -> serde_json::Value {
    let output = command.output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn run_on_the_built_in_simulator_then_rerun_reproduces_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 2, 1, "");
    let out = dir.path().join("out");
    let summary = json_of(
        bin()
            .arg("run")
            .arg(&manifest)
            .args(["--sim", "--json", "--out"])
            .arg(&out),
    );
    assert_eq!(summary["totals"]["succeeded"], 2);
    assert_eq!(summary["exit_code"], 0);
    let report = summary["report"].as_str().unwrap().to_owned();
    assert!(std::path::Path::new(&report).exists());
    assert!(std::path::Path::new(summary["contact_sheet"].as_str().unwrap()).exists());
    assert!(out.join("ch-07/raw/comfyui/ch07_p002_v1.png").exists());

    let rerun = json_of(bin().args(["rerun", &report, "--sim", "--json"]));
    assert_eq!(rerun["identical"], 2, "{rerun:#}");
    assert_eq!(rerun["different"], 0);
    // New versions, never overwriting the old ones.
    assert!(out.join("ch-07/raw/comfyui/ch07_p001_v2.png").exists());
    assert_eq!(
        sha256_file(&out.join("ch-07/raw/comfyui/ch07_p001_v1.png")),
        sha256_file(&out.join("ch-07/raw/comfyui/ch07_p001_v2.png"))
    );
}

#[test]
fn plain_output_has_one_line_per_finished_job() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 3, 1, "");
    let out = dir.path().join("out");
    bin()
        .arg("run")
        .arg(&manifest)
        .args(["--sim", "--out"])
        .arg(&out)
        .assert()
        .code(0)
        .stderr(
            predicate::str::contains("  ok ch07_p001_s1 -> ch-07/raw/comfyui/ch07_p001_v1.png")
                .and(predicate::str::contains("  ok ch07_p003_s1"))
                .and(predicate::str::contains(
                    "3 jobs: 3 succeeded, 0 skipped, 0 failed",
                )),
        );
    // Second run: everything is skipped.
    bin()
        .arg("run")
        .arg(&manifest)
        .args(["--sim", "--out"])
        .arg(&out)
        .assert()
        .code(0)
        .stderr(
            predicate::str::contains("skip ch07_p002_s1")
                .and(predicate::str::contains("3 skipped")),
        );
}

#[test]
fn unreachable_server_is_one_clear_error_before_any_job() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 1, 1, "");
    let url = unused_url();
    bin()
        .arg("run")
        .arg(&manifest)
        .args(["--server", &url, "--out"])
        .arg(dir.path().join("out"))
        .assert()
        .code(plasma_batch::exit_codes::PREFLIGHT_FAILED)
        .stderr(predicate::str::contains(url.as_str()).and(predicate::str::contains("--sim")));
    assert!(
        !dir.path()
            .join("out/ch-07/raw/comfyui/ch07_p001_v1.png")
            .exists()
    );
}

#[test]
fn missing_model_is_reported_by_preflight_and_validate_server() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 2, 1, "");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "[defaults]\n",
        "[defaults]\ncheckpoint = \"nowhere_v9.safetensors\"\n",
    );
    std::fs::write(&manifest, text).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Preflight stops both commands: no prompt may reach the simulator.
    let sim = runtime.block_on(TestSim::start(&[])).idle_ok();
    let out = dir.path().join("out");
    let mut run = bin();
    run.arg("run")
        .arg(&manifest)
        .args(["--server", &sim.url(), "--out"])
        .arg(&out);
    let mut validate = bin();
    validate
        .arg("validate")
        .arg(&manifest)
        .args(["--server", &sim.url()]);
    for mut command in [run, validate] {
        command
            .assert()
            .code(plasma_batch::exit_codes::PREFLIGHT_FAILED)
            .stderr(
                predicate::str::contains("nowhere_v9.safetensors")
                    .and(predicate::str::contains("ch07_p001_s1")),
            );
    }
    assert_eq!(sim.prompts_posted(), 0, "nothing was submitted");
}

#[test]
fn usage_and_input_errors_have_their_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 1, 1, "");
    bin()
        .arg("run")
        .arg(&manifest)
        .args(["--sim", "--only", "ch07_p099"])
        .assert()
        .code(plasma_batch::exit_codes::USAGE)
        .stderr(
            predicate::str::contains("ch07_p099").and(predicate::str::contains("ch07_p001_s1")),
        );
    std::fs::write(dir.path().join("broken.toml"), "[chapter]\nnumber = 0\n").unwrap();
    bin()
        .arg("run")
        .arg(dir.path().join("broken.toml"))
        .arg("--sim")
        .assert()
        .code(plasma_batch::exit_codes::INVALID_INPUT);
    // The output root is a file: a local error naming the path, before any server is used.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"not a directory").unwrap();
    bin()
        .arg("run")
        .arg(&manifest)
        .args(["--sim", "--out"])
        .arg(&blocked)
        .assert()
        .code(plasma_batch::exit_codes::IO_ERROR)
        .stderr(predicate::str::contains(blocked.display().to_string()));
}

/// `rerun` builds its engine config as `run` does: the depth the report recorded stays fixed,
/// even for renders so short that a depth following the server's pace would grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_keeps_the_depth_its_report_recorded() {
    let sim = TestSim::with_config(plasma_batch::sim::SimConfig {
        step_ms: 0,
        latency_ms: 30,
        ..plasma_batch::sim::SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 12, 1, "");
    let out = dir.path().join("out");
    let url = sim.url();
    let run = |args: Vec<std::ffi::OsString>| {
        tokio::task::spawn_blocking(move || json_of(bin().args(args)))
    };
    let summary = run(vec![
        "run".into(),
        manifest.into(),
        "--server".into(),
        url.clone().into(),
        "--in-flight".into(),
        "1".into(),
        "--json".into(),
        "--out".into(),
        out.into(),
    ])
    .await
    .unwrap();
    assert_eq!(summary["totals"]["succeeded"], 12, "{summary:#}");
    assert_eq!(
        sim.stats().peak_queue,
        1,
        "the run itself kept one prompt posted"
    );
    let report = summary["report"].as_str().unwrap().to_owned();
    let rerun = run(vec![
        "rerun".into(),
        report.into(),
        "--server".into(),
        url.into(),
        "--json".into(),
    ])
    .await
    .unwrap();
    assert_eq!(rerun["identical"], 12, "{rerun:#}");
    let stats = sim.stats();
    assert_eq!(stats.prompts_accepted, 24);
    assert_eq!(
        stats.peak_queue, 1,
        "the rerun posted more than the one prompt at a time its report recorded"
    );
}
