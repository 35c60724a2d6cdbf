//! The simulator's temp folders: one killed with SIGKILL leaves its `plasma-sim-<pid>-*`
//! folder behind, and the next simulator to start removes it (and any other whose owner is
//! gone), never the folder of one that is still running. Real `plasma-batch sim` processes.

use std::path::Path;
use std::process::Command;

use crate::faults_outage::SimProcess;
use crate::support::*;

/// A pid that no process has: one that just exited.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Render one small job on `url` with the real binary.
fn render_one(dir: &Path, url: &str) {
    let manifest = small_manifest(dir, 1, 1, "");
    let output = Command::new(assert_cmd::cargo::cargo_bin("plasma-batch"))
        .arg("run")
        .arg(&manifest)
        .args(["--server", url, "--out"])
        .arg(dir.join("out"))
        .env_remove("PLASMA_COMFY_URL")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_killed_simulators_folder_is_removed_at_the_next_start_and_live_ones_are_kept() {
    let mut killed = SimProcess::start(&["--step-ms", "1"]);
    let killed_folder = killed.folder();
    let base = killed_folder.parent().unwrap().to_owned();
    let name = killed_folder.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(&format!("plasma-sim-{}-", killed.pid())),
        "{name} does not carry the simulator's pid"
    );
    killed.kill_9();

    // Planted as a killed simulator would leave them: with its (unheld) lock file, and
    // without one (killed in the instant between making the folder and locking it).
    let pid = dead_pid();
    let planted = base.join(format!("plasma-sim-{pid}-planted{}", std::process::id()));
    std::fs::create_dir_all(planted.join("output")).unwrap();
    std::fs::write(planted.join("owner.lock"), b"").unwrap();
    std::fs::write(planted.join("output/ComfyUI_00001_.png"), b"not really").unwrap();
    let unlocked = base.join(format!("plasma-sim-{pid}-nolock{}", std::process::id()));
    std::fs::create_dir_all(&unlocked).unwrap();
    // Not of the simulator's form (an older version's, owner unknown): never touched.
    let foreign = base.join(format!("plasma-sim-output-keep{}", std::process::id()));
    std::fs::create_dir_all(&foreign).unwrap();

    let live = SimProcess::start(&["--step-ms", "1"]);
    let next = SimProcess::start(&["--step-ms", "1"]);
    for gone in [&killed_folder, &planted, &unlocked] {
        assert!(!gone.exists(), "{} was left behind", gone.display());
    }
    assert!(foreign.exists());
    std::fs::remove_dir(&foreign).unwrap();
    // Two simulators at once: both keep their folder and keep working.
    for sim in [&live, &next] {
        assert!(sim.folder().join("owner.lock").exists());
        let dir = tempfile::tempdir().unwrap();
        render_one(dir.path(), &sim.url);
        assert!(
            std::fs::read_dir(&sim.output_dir).unwrap().count() > 0,
            "{} wrote no image",
            sim.url
        );
    }
    // A simulator that is stopped (SIGTERM) removes its own folder.
    let (live_folder, next_folder) = (live.folder(), next.folder());
    live.stop();
    next.stop();
    assert!(!live_folder.exists() && !next_folder.exists());
}
