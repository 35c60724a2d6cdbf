//! The fault suite with real processes: the built binary runs against an in-process
//! simulator and is stopped with real signals (`kill -INT`, `-TERM`, `-9`), run twice at
//! once, or given a file size limit (`ulimit -f`) that makes image writes fail with EFBIG
//! like a full disk. Each test waits on events (stderr lines, simulator statistics, process
//! exit), never on sleeps, and checks the same invariants as `check_run`, from the report.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use plasma_batch::ledger::{LedgerRecord, read_records};
use plasma_batch::report::{ReportStatus, RunReport};
use plasma_batch::sim::{Fault, SimConfig};

use crate::support::*;

/// Generous: a loaded 2-core CI box compiles other things meanwhile.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

async fn sim_with(step_ms: u64, latency_ms: u64, faults: &[&str]) -> TestSim {
    TestSim::with_config(SimConfig {
        step_ms,
        latency_ms,
        faults: faults.iter().map(|f| f.parse::<Fault>().unwrap()).collect(),
        ..SimConfig::default()
    })
    .await
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
                Err(e) => panic!(
                    "no line with {needle:?} ({e}); stderr so far:\n{}",
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

    /// Two runs of `manifest` into `out` on `server` at once; both must succeed.
    pub(crate) fn two_at_once(manifest: &Path, out: &Path, server: &str) {
        let a = Runner::start(manifest, out, server);
        let b = Runner::start(manifest, out, server);
        let ((code_a, err_a), (code_b, err_b)) = (a.wait(), b.wait());
        assert_eq!(code_a, Some(0), "{err_a}");
        assert_eq!(code_b, Some(0), "{err_b}");
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_on_the_same_chapter_at_once() {
    let sim = sim_with(2, 0, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 3, 2, "");
    let out = dir.path().join("out");
    Runner::two_at_once(&manifest, &out, &sim.url());
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
            let _ = write!(quoted, " '{arg}'");
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
}

/// A `plasma-batch serve --sim` child. A std child: one that is killed and not waited for
/// stays a zombie, as a supervisor that has not reaped it yet would leave it.
struct ServeChild {
    child: Child,
    url: String,
}

impl ServeChild {
    /// `wrap` may put the binary behind a shell; waits for the "listening on" line.
    fn start(out: &Path, wrap: impl FnOnce(Vec<String>) -> Vec<String>) -> ServeChild {
        ServeChild::spawned(spawn_serve(&wrap(serve_argv(out, None))))
    }

    /// On a ComfyUI server instead of the built-in simulator.
    fn start_on(out: &Path, server: &str) -> ServeChild {
        ServeChild::spawned(spawn_serve(&serve_argv(out, Some(server))))
    }

    fn spawned((child, url): (Child, Result<String, String>)) -> ServeChild {
        ServeChild {
            child,
            url: url.unwrap_or_else(|stderr| panic!("serve did not start:\n{stderr}")),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit code.
    fn stop(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_exit(&mut self.child)
    }
}

/// `serve` on `server`, or on the built-in simulator.
fn serve_argv(out: &Path, server: Option<&str>) -> Vec<String> {
    let bin = assert_cmd::cargo::cargo_bin("plasma-batch");
    let mut argv = vec![bin.display().to_string(), "serve".into()];
    match server {
        Some(url) => argv.extend(["--server".into(), url.into()]),
        None => argv.extend(["--sim".into(), "--sim-step-ms".into(), "1".into()]),
    }
    argv.extend([
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--out".into(),
        out.display().to_string(),
    ]);
    argv
}

/// Start `argv` (`serve`) and wait for its first stdout line: `Ok(url)`, or `Err(stderr)` if it
/// exited first (the child is then reaped).
fn spawn_serve(argv: &[String]) -> (Child, Result<String, String>) {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env_remove("PLASMA_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next().and_then(Result::ok));
        // Keep reading so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let first = rx.recv_timeout(DEADLINE).expect("serve printed nothing");
    if let Some(url) = first.and_then(|l| {
        l.strip_prefix("plasma-batch serve listening on ")
            .map(str::to_owned)
    }) {
        (child, Ok(url))
    } else {
        let code = wait_exit(&mut child);
        let mut stderr = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
        (child, Err(format!("exit {code:?}\n{stderr}")))
    }
}

fn wait_exit(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < deadline, "the process did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `Z` while `pid` is a zombie (Linux `/proc/PID/stat`).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[test]
fn a_pid_left_in_the_serve_lock_file_never_blocks_a_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let lock = out.join("serve/jobs.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();

    // The new process's own pid (a container restart reuses pids): written by the shell
    // that then becomes the service with `exec`.
    let service = ServeChild::start(&out, |argv| {
        let mut sh = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("printf %s $$ > '{}'; exec \"$@\"", lock.display()),
            "sh".to_owned(),
        ];
        sh.extend(argv);
        sh
    });
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        service.pid().to_string(),
        "the lock file shows the holder's pid"
    );
    assert_eq!(service.stop(), Some(0));

    // A zombie: killed, not reaped yet.
    let mut zombie = Command::new("sleep").arg("60").spawn().unwrap();
    zombie.kill().unwrap();
    wait_for("the killed process to be a zombie", || {
        process_state(zombie.id()) == Some('Z')
    });
    // A live process that is no service (pid 1), and a pid nobody has any more.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    for pid in [zombie.id(), 1, gone.id()] {
        std::fs::write(&lock, pid.to_string()).unwrap();
        let service = ServeChild::start(&out, |argv| argv);
        assert_eq!(service.stop(), Some(0), "lock file holding pid {pid}");
    }
    zombie.wait().unwrap();
}

#[test]
fn a_second_serve_on_one_output_is_refused_until_the_first_dies() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut first = ServeChild::start(&out, |argv| argv);
    let (_, refused) = spawn_serve(&serve_argv(&out, None));
    let stderr = refused.expect_err("a second service started on the same --out");
    assert!(stderr.starts_with("exit Some(5)"), "{stderr}");
    // miette wraps long lines behind a `│` margin.
    let stderr = stderr.replace('│', " ");
    let stderr = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        stderr.contains("in use by another job service")
            && stderr.contains(&format!("pid {}", first.pid())),
        "the refusal names the holder: {stderr}"
    );

    // kill -9 the holder and leave it unreaped: the kernel has dropped its lock anyway.
    first.child.kill().unwrap();
    wait_for("the killed service to be a zombie", || {
        process_state(first.pid()) == Some('Z')
    });
    let second = ServeChild::start(&out, |argv| argv);
    assert!(second.url.starts_with("http://127.0.0.1:"));
    first.child.wait().unwrap();
    assert_eq!(second.stop(), Some(0));
}

/// Every `image` record of a chapter ledger names a file that exists with the recorded size
/// and sha256, no two name the same file, and every image on disk has one, or (a process
/// killed between the link and that record) an `image_intent` with its sha256. Returns how
/// many images there are.
fn check_ledger_images(chapter_root: &Path) -> usize {
    let records = read_records(&chapter_root.join("ledger.jsonl")).unwrap();
    let mut named = HashSet::new();
    for record in &records {
        if let LedgerRecord::ImageIntent(entry) = record
            && let path = chapter_root.join(&entry.file)
            && path.exists()
            && sha256_file(&path) == entry.sha256
        {
            named.insert(entry.file.clone());
        }
    }
    let intended = named.clone();
    named.clear();
    for record in &records {
        let LedgerRecord::Image(entry) = record else {
            continue;
        };
        let path = chapter_root.join(&entry.file);
        assert!(path.exists(), "{} is recorded but missing", entry.file);
        assert_eq!(
            sha256_file(&path),
            entry.sha256,
            "the record of {} ({}) does not match the file",
            entry.file,
            entry.key
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), entry.bytes);
        assert!(
            named.insert(entry.file.clone()),
            "{} is named by two image records",
            entry.file
        );
    }
    for file in files_under(&chapter_root.join("raw/comfyui")) {
        let file = format!("raw/comfyui/{file}");
        assert!(
            named.contains(&file) || intended.contains(&file),
            "{file} has no image record"
        );
        named.insert(file);
    }
    named.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_on_one_chapter_record_only_what_their_links_created() {
    // Both render the same 12 jobs at once: every page's versions are raced for.
    let sim = sim_with(0, 0, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 3, 4, "");
    let out = dir.path().join("out");
    Runner::two_at_once(&manifest, &out, &sim.url());
    let reports = check_reports(&out, &keys(&manifest));
    let rendered: usize = reports
        .iter()
        .flat_map(|r| r.jobs.iter())
        .filter(|j| j.status == ReportStatus::Succeeded)
        .map(|j| j.images.len())
        .sum();
    assert_eq!(check_ledger_images(&out.join("ch-07")), rendered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_serve_mid_load_renders_no_job_twice() {
    let sim = sim_with(0, 0, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let images = out.join("ch-01/raw/comfyui");
    let count = |dir: &Path| std::fs::read_dir(dir).map_or(0, Iterator::count);
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for round in 1..=6u16 {
        let mut service = {
            let (out, url) = (out.clone(), sim.url());
            tokio::task::spawn_blocking(move || ServeChild::start_on(&out, &url))
                .await
                .unwrap()
        };
        for _ in 0..6 {
            let response = http
                .post(format!("{}/jobs", service.url))
                .json(&serde_json::json!({
                    "prompt_text": "panel: a quiet harbour at night",
                    "steps": 3, "page": round,
                    "resolution": {"width": 64, "height": 96},
                }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            let accepted: serde_json::Value = response.json().await.unwrap();
            ids.push(accepted["jobId"].as_str().unwrap().to_owned());
        }
        // The moment an image gets its final name is the moment to kill: its job is not
        // journaled as complete yet.
        let images = images.clone();
        let mut service = tokio::task::spawn_blocking(move || {
            let before = count(&images);
            let deadline = Instant::now() + DEADLINE;
            while count(&images) == before {
                assert!(Instant::now() < deadline, "no image was written");
            }
            service.child.kill().unwrap();
            service
        })
        .await
        .unwrap();
        service.child.wait().unwrap();
    }

    // A last start finishes what is left.
    let service = plasma_batch::serve::Service::start(crate::serve::config(&[&sim], &out))
        .await
        .unwrap();
    let mut paths = HashSet::new();
    for id in &ids {
        let (job, _) = crate::serve::wait_job(&service.url(), id, |j| {
            j["status"] != "queued" && j["status"] != "running"
        })
        .await;
        assert_eq!(job["status"], "complete", "{job:#}");
        let path = job["imagePath"].as_str().unwrap().to_owned();
        assert!(paths.insert(path.clone()), "two jobs point to {path}");
    }
    service.shutdown().await.unwrap();
    // One image per job, none without a job: nothing was rendered twice.
    let on_disk: HashSet<String> = files_under(&images)
        .into_iter()
        .map(|f| format!("ch-01/raw/comfyui/{f}"))
        .collect();
    let orphans: Vec<&String> = on_disk.difference(&paths).collect();
    let missing: Vec<&String> = paths.difference(&on_disk).collect();
    assert!(
        orphans.is_empty(),
        "images no job points to (rendered twice): {orphans:?}"
    );
    assert!(missing.is_empty(), "jobs without their image: {missing:?}");
    assert_eq!(check_ledger_images(&out.join("ch-01")), ids.len());
}
