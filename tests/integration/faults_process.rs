//! The fault suite with real processes: the built binary runs against an in-process
//! simulator and is stopped with real signals (`kill -INT`, `-TERM`, `-9`), run twice at
//! once, or given a file size limit (`ulimit -f`) that makes image writes fail with EFBIG
//! like a full disk. Each test waits on events (stderr lines, simulator statistics, process
//! exit), never on sleeps, and checks the same invariants as `check_run`, from the report.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use plasma_batch::ledger::{LedgerRecord, read_records};
use plasma_batch::report::{ReportStatus, RunReport};
use plasma_batch::sim::{Fault, Sim, SimConfig};

use crate::support::*;

/// Generous: a loaded 2-core CI box compiles other things meanwhile.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

async fn sim_with(step_ms: u64, latency_ms: u64, faults: &[&str]) -> Sim {
    Sim::start(SimConfig {
        step_ms,
        latency_ms,
        faults: faults.iter().map(|f| f.parse::<Fault>().unwrap()).collect(),
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// A `plasma-batch run` child whose stderr lines arrive on a channel.
pub(crate) struct Runner {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Runner {
    pub(crate) fn start(manifest: &Path, out: &Path, server: &str) -> Runner {
        Runner::start_with(manifest, out, server, |cmd| cmd)
    }

    /// `wrap` may put the binary behind a shell (for `ulimit`).
    pub(crate) fn start_with(
        manifest: &Path,
        out: &Path,
        server: &str,
        wrap: impl FnOnce(Vec<String>) -> Vec<String>,
    ) -> Runner {
        let bin = assert_cmd::cargo::cargo_bin("plasma-batch");
        let argv = wrap(vec![
            bin.display().to_string(),
            "run".into(),
            manifest.display().to_string(),
            "--server".into(),
            server.into(),
            "--out".into(),
            out.display().to_string(),
        ]);
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .env_remove("PLASMA_COMFY_URL")
            .env_remove("PLASMA_COMFY_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stderr.take().unwrap());
        Runner {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Wait for a stderr line containing `needle`.
    pub(crate) fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} failed");
    }

    /// Wait for the exit; returns the exit code (None: killed by a signal) and all stderr.
    pub(crate) fn wait(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the runner did not exit; stderr:\n{}", self.seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.seen.push(line);
        }
        (status.code(), self.seen.join("\n"))
    }
}

/// The lines `output` (a child's pipe) writes, as they come, read on a thread of their own.
pub(crate) fn lines_of(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// Poll until `check` holds (bounded).
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn reports(out: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(out.join("ch-07/reports"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
    paths.sort();
    paths
}

/// `check_run`'s invariants from the report files alone: every planned job appears exactly
/// once per report; every succeeded or skipped image exists, is a PNG of the job's size and
/// matches its sha256; no file appeared under `out` besides those images (of any report),
/// ledgers and reports. Returns the reports, oldest first.
pub(crate) fn check_reports(out: &Path, keys: &[String]) -> Vec<RunReport> {
    let reports: Vec<RunReport> = reports(out)
        .iter()
        .map(|p| RunReport::read(p).unwrap())
        .collect();
    let mut images = HashSet::new();
    for report in &reports {
        let seen: Vec<&str> = report.jobs.iter().map(|j| j.key.as_str()).collect();
        let unique: HashSet<&str> = seen.iter().copied().collect();
        assert_eq!(
            seen.len(),
            unique.len(),
            "a job appears twice in {}",
            report.run_id
        );
        for key in keys {
            assert!(
                unique.contains(key.as_str()),
                "{key} missing from {}",
                report.run_id
            );
        }
        for job in &report.jobs {
            let rendered = matches!(job.status, ReportStatus::Succeeded | ReportStatus::Skipped);
            assert_eq!(
                !job.images.is_empty(),
                rendered,
                "{}: {:?}",
                job.key,
                job.status
            );
            for image in &job.images {
                let path = out.join(&image.path);
                assert!(path.exists(), "{} is missing", path.display());
                assert_eq!(sha256_file(&path), image.sha256, "{}", image.path);
                assert_eq!(png_size(&path), (job.params.width, job.params.height));
                images.insert(image.path.clone());
            }
        }
    }
    for file in files_under(out) {
        let allowed = images.contains(&file) || is_run_file(&file);
        assert!(allowed, "unexpected file under the output root: {file}");
    }
    reports
}

pub(crate) fn keys(manifest: &Path) -> Vec<String> {
    plan(manifest).jobs.iter().map(|j| j.key.clone()).collect()
}

/// Ctrl-C or SIGTERM while one prompt runs (hung) and one waits on the server.
async fn stop_with(signal: &str) {
    let sim = sim_with(1, 0, &["hang:KSampler"]).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 4, 1, "");
    let out = dir.path().join("out");
    let runner = Runner::start(&manifest, &out, &sim.url());
    crate::faults::wait_running_and_pending(&sim.url()).await;
    runner.signal(signal);
    let (code, stderr) = runner.wait();
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("(interrupted)"), "{stderr}");
    let reports = check_reports(&out, &keys(&manifest));
    let report = &reports[0];
    assert!(report.complete);
    assert!(
        report
            .jobs
            .iter()
            .all(|j| j.status == ReportStatus::Cancelled),
        "{:?}",
        report.jobs.iter().map(|j| j.status).collect::<Vec<_>>()
    );
    let posted: Vec<&String> = report
        .jobs
        .iter()
        .filter_map(|j| j.prompt_id.as_ref())
        .collect();
    assert_eq!(posted.len(), 2);
    let stats = sim.stats();
    for id in posted {
        assert!(
            stats.queue_deletes.contains(id)
                && stats
                    .interrupts
                    .iter()
                    .any(|i| i.prompt_id.as_ref() == Some(id)),
            "{id} was not both deleted and interrupted (targeted): {stats:?}"
        );
    }
    assert_eq!(
        stats.interrupts.iter().filter(|i| i.hit.is_some()).count(),
        1,
        "the running prompt was not hit: {:?}",
        stats.interrupts
    );
    assert!(
        stats.interrupts.iter().all(|i| i.prompt_id.is_some()),
        "a global interrupt"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_deletes_queued_and_interrupts_running_prompts() {
    stop_with("-INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_like_ctrl_c() {
    stop_with("-TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_ctrl_c_exits_at_once_with_ledger_and_report_consistent() {
    // Every HTTP answer takes 1.5 s, so the clean stop after the first Ctrl-C is slow.
    let slow = sim_with(1, 1500, &["hang:KSampler"]).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 4, 1, "");
    let out = dir.path().join("out");
    let mut runner = Runner::start(&manifest, &out, &slow.url());
    wait_for("a prompt on the server", || {
        slow.stats().prompts_accepted >= 1
    });
    runner.signal("-INT");
    runner.wait_line("press Ctrl-C again");
    runner.signal("-INT");
    let (code, stderr) = runner.wait();
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("exiting at once"), "{stderr}");
    // The ledger reads back whole, and the report written so far is valid.
    let records = read_records(&out.join("ch-07/ledger.jsonl")).unwrap();
    assert!(
        records
            .iter()
            .any(|r| matches!(r, LedgerRecord::Submitted { .. }))
    );
    let keys = keys(&manifest);
    let reports = check_reports(&out, &keys);
    assert!(!reports[0].complete, "the run never finished its report");

    // A rerun elsewhere completes the chapter.
    let fresh = sim_with(1, 0, &[]).await;
    let (code, stderr) = Runner::start(&manifest, &out, &fresh.url()).wait();
    assert_eq!(code, Some(0), "{stderr}");
    let reports = check_reports(&out, &keys);
    let last = reports.iter().find(|r| r.complete).unwrap();
    assert!(
        last.jobs
            .iter()
            .all(|j| j.status == ReportStatus::Succeeded)
    );
    slow.shutdown().await;
    fresh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_rerun_completes_without_duplicates() {
    // ~100 ms per job, so the kill lands with prompts queued, running and finished.
    let sim = sim_with(30, 0, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 8, 1, "");
    let out = dir.path().join("out");
    let mut runner = Runner::start(&manifest, &out, &sim.url());
    runner.wait_line("  ok ");
    runner.signal("-9");
    let (code, _) = runner.wait();
    assert_eq!(code, None, "the runner was killed by the signal");
    let killed = read_records(&out.join("ch-07/ledger.jsonl")).unwrap();
    let open = plasma_batch::ledger::open_submissions(&killed);
    let accepted_before = sim.stats().prompts_accepted;

    let (code, stderr) = Runner::start(&manifest, &out, &sim.url()).wait();
    assert_eq!(code, Some(0), "{stderr}");
    let keys = keys(&manifest);
    let reports = check_reports(&out, &keys);
    let rerun = reports
        .iter()
        .find(|r| r.complete)
        .expect("the rerun's report");
    assert!(
        rerun
            .jobs
            .iter()
            .all(|j| matches!(j.status, ReportStatus::Succeeded | ReportStatus::Skipped))
    );
    assert!(
        rerun.jobs.iter().any(|j| j.status == ReportStatus::Skipped),
        "the finished jobs were rendered again"
    );
    // Exactly one image per page, version 1: nothing rendered twice, nothing missing.
    let mut images: Vec<String> = files_under(&out.join("ch-07/raw/comfyui"));
    images.sort();
    let expected: Vec<String> = (1..=8).map(|p| format!("ch07_p{p:03}_v1.png")).collect();
    assert_eq!(images, expected);
    // The prompts the killed run left on the server were picked up, not posted again.
    let reattached = rerun
        .jobs
        .iter()
        .filter(|j| {
            open.get(&j.key)
                .is_some_and(|o| j.prompt_id.as_ref() == Some(&o.prompt_id))
        })
        .count();
    assert!(
        open.is_empty() || reattached > 0,
        "no prompt of the killed run was re-attached: open {open:?}"
    );
    assert!(sim.stats().prompts_accepted - accepted_before <= 8 - reattached as u64);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_on_the_same_chapter_at_once() {
    let sim = sim_with(2, 0, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 3, 2, "");
    let out = dir.path().join("out");
    let a = Runner::start(&manifest, &out, &sim.url());
    let b = Runner::start(&manifest, &out, &sim.url());
    let ((code_a, err_a), (code_b, err_b)) = (a.wait(), b.wait());
    assert_eq!(code_a, Some(0), "{err_a}");
    assert_eq!(code_b, Some(0), "{err_b}");
    let keys = keys(&manifest);
    let reports = check_reports(&out, &keys);
    assert_eq!(reports.len(), 2);
    // No version was shared: every rendered image is a distinct file.
    let rendered: Vec<&String> = reports
        .iter()
        .flat_map(|r| r.jobs.iter())
        .filter(|j| j.status == ReportStatus::Succeeded)
        .flat_map(|j| j.images.iter().map(|i| &i.path))
        .collect();
    let unique: HashSet<&&String> = rendered.iter().collect();
    assert_eq!(
        unique.len(),
        rendered.len(),
        "two runners wrote the same version"
    );
    // A third run finds everything done.
    let (code, stderr) = Runner::start(&manifest, &out, &sim.url()).wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("6 jobs: 0 succeeded, 6 skipped"),
        "{stderr}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_fails_jobs_cleanly_without_partial_images() {
    // RLIMIT_FSIZE (`ulimit -f`, KiB in bash) makes a write past the limit fail with EFBIG,
    // a real OS write error like ENOSPC, without mounting anything. SIGXFSZ is ignored so the
    // write fails instead of killing the process. Images of 512x768 are far bigger than the
    // limit; the ledger and reports of a 3-job run stay well under it.
    let sim = sim_with(0, 0, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 3, 1, "");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("width = 64\nheight = 96", "width = 512\nheight = 768");
    std::fs::write(&manifest, text).unwrap();
    let out = dir.path().join("out");
    let runner = Runner::start_with(&manifest, &out, &sim.url(), |argv| {
        let mut quoted = String::from("trap '' XFSZ; ulimit -f 96; exec");
        for arg in argv {
            quoted.push_str(&format!(" '{arg}'"));
        }
        vec!["bash".into(), "-c".into(), quoted]
    });
    let (code, stderr) = runner.wait();
    assert_eq!(
        code,
        Some(plasma_batch::exit_codes::JOBS_FAILED),
        "{stderr}"
    );
    let reports = check_reports(&out, &keys(&manifest));
    let report = &reports[0];
    assert!(report.complete);
    assert!(
        report.jobs.iter().all(|j| j.status == ReportStatus::Failed),
        "{stderr}"
    );
    let first = report
        .jobs
        .iter()
        .filter_map(|j| j.error.as_ref())
        .find(|e| e.message.contains("File too large"))
        .unwrap_or_else(|| panic!("no write error recorded: {stderr}"));
    assert!(
        first
            .message
            .contains(&out.join("ch-07/raw/comfyui").display().to_string()),
        "the error does not name the path: {}",
        first.message
    );
    // No partial image under a final name, and the temp file of the failed write is gone.
    assert!(files_under(&out.join("ch-07/raw")).is_empty());
    sim.shutdown().await;
}

#[test]
fn output_folder_not_usable_exits_with_io_error_naming_the_path() {
    // Root ignores permissions: a file stands where the image folder must be.
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 1, 1, "");
    let out = dir.path().join("out");
    std::fs::create_dir_all(out.join("ch-07/raw")).unwrap();
    std::fs::write(out.join("ch-07/raw/comfyui"), b"a file").unwrap();
    let output = Command::new(assert_cmd::cargo::cargo_bin("plasma-batch"))
        .arg("run")
        .arg(&manifest)
        .args(["--sim", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(plasma_batch::exit_codes::IO_ERROR),
        "{stderr}"
    );
    assert!(stderr.contains("ch-07/raw/comfyui"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_in_the_manifest_retries_a_node_exception_once() {
    let sim = sim_with(0, 0, &["raise:VAEDecode"]).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 1, 1, "");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("[comfy]\nretry_failed = true\n\n{text}")).unwrap();
    assert!(plan(&manifest).comfy.retry_failed);
    let out = dir.path().join("out");
    let (code, stderr) = Runner::start(&manifest, &out, &sim.url()).wait();
    assert_eq!(
        code,
        Some(plasma_batch::exit_codes::JOBS_FAILED),
        "{stderr}"
    );
    let reports = check_reports(&out, &keys(&manifest));
    let job = &reports[0].jobs[0];
    assert_eq!(job.status, ReportStatus::Failed);
    assert_eq!(
        job.attempts, 2,
        "a deterministic failure is retried once when asked"
    );
    assert_eq!(sim.stats().prompts_accepted, 2);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_twice_then_a_third_run_completes_without_duplicates() {
    // The second run is killed too, while it works on what the first one left.
    let sim = sim_with(30, 0, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 10, 1, "");
    let out = dir.path().join("out");
    for round in 1..=2 {
        let mut runner = Runner::start(&manifest, &out, &sim.url());
        runner.wait_line("  ok ");
        runner.signal("-9");
        let (code, stderr) = runner.wait();
        // The second run may, rarely, have finished before the signal landed.
        assert!(code.is_none() || round == 2 && code == Some(0), "{stderr}");
    }
    let (code, stderr) = Runner::start(&manifest, &out, &sim.url()).wait();
    assert_eq!(code, Some(0), "{stderr}");
    let keys = keys(&manifest);
    let reports = check_reports(&out, &keys);
    let last = reports
        .iter()
        .filter(|r| r.complete)
        .max_by(|a, b| a.started_at.cmp(&b.started_at))
        .unwrap();
    assert!(
        last.jobs
            .iter()
            .all(|j| matches!(j.status, ReportStatus::Succeeded | ReportStatus::Skipped))
    );
    let images = files_under(&out.join("ch-07/raw/comfyui"));
    let expected: Vec<String> = (1..=10).map(|p| format!("ch07_p{p:03}_v1.png")).collect();
    assert_eq!(images, expected, "a page is missing or was rendered twice");
    let records = read_records(&out.join("ch-07/ledger.jsonl")).unwrap();
    assert!(plasma_batch::ledger::open_submissions(&records).is_empty());
    sim.shutdown().await;
}
