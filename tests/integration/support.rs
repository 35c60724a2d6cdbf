//! Helpers shared by the integration tests: small manifests, an in-process simulator, run
//! options with short timings, and the invariants every run must keep.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use plasma_batch::comfy::{ComfyClient, http_client};
use plasma_batch::engine::EngineConfig;
use plasma_batch::events::JobStatus;
use plasma_batch::plan::{Job, Plan, load_plan};
use plasma_batch::report::RunReport;
use plasma_batch::report::progress::Mode;
use plasma_batch::runner::{RunOptions, RunSummary};
use plasma_batch::sim::{Fault, Sim, SimConfig};
use sha2::{Digest, Sha256};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A manifest with `pages` pages of `variants` small (64x96, 3-step) images each, written
/// into `dir`, using the shipped txt2img workflow.
pub fn small_manifest(dir: &Path, pages: u16, variants: u32, prompt_suffix: &str) -> PathBuf {
    let mut text = format!(
        "[chapter]\nnumber = 7\ntitle = \"test chapter\"\nseed = 99\n\n[defaults]\nworkflow = \"{}\"\nsteps = 3\nwidth = 64\nheight = 96\nvariants = {variants}\n",
        repo().join("workflows/txt2img.json").display()
    );
    for page in 1..=pages {
        let _ = write!(
            text,
            "\n[[pages]]\npage = {page}\nprompt = \"panel {page}: a quiet harbour at night{prompt_suffix}\"\n"
        );
    }
    let path = dir.join("chapter.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn plan(manifest: &Path) -> Plan {
    load_plan(manifest).unwrap_or_else(|d| panic!("{} problems in {}", d.len(), manifest.display()))
}

pub fn jobs(plan: &Plan) -> Vec<Arc<Job>> {
    plan.jobs.clone()
}

pub async fn sim(faults: &[&str]) -> Sim {
    let config = SimConfig {
        step_ms: 1,
        faults: faults.iter().map(|f| f.parse::<Fault>().unwrap()).collect(),
        ..SimConfig::default()
    };
    Sim::start(config).await.unwrap()
}

/// An in-process simulator for one test, after xh's test server: it stops when it goes out
/// of scope (on success, or when an assertion fails half-way: no `shutdown().await` to
/// forget), and then fails the test if no prompt ever reached it, since a test that never
/// talked to its server proves nothing. [`TestSim::idle_ok`] for a test that means not to post.
pub struct TestSim {
    sim: Option<Sim>,
    must_be_used: bool,
}

impl TestSim {
    /// A simulator with 1 ms sampler steps and the given `--fault` specs.
    pub async fn start(faults: &[&str]) -> TestSim {
        TestSim::hold(sim(faults).await)
    }

    /// A simulator with the given configuration.
    pub async fn with_config(config: SimConfig) -> TestSim {
        TestSim::hold(Sim::start(config).await.unwrap())
    }

    fn hold(sim: Sim) -> TestSim {
        TestSim {
            sim: Some(sim),
            must_be_used: true,
        }
    }

    /// Allow the test to end without a prompt having reached the simulator.
    pub fn idle_ok(mut self) -> TestSim {
        self.must_be_used = false;
        self
    }

    /// Stop gracefully now (every connection closed and the port free when this returns),
    /// with the same check as on drop.
    pub async fn stop(mut self) {
        if let Some(sim) = self.sim.take() {
            let unused = self.unused(&sim);
            sim.shutdown().await;
            if let Some(complaint) = unused {
                panic!("{complaint}");
            }
        }
    }

    /// `POST /prompt` requests that reached the simulator, accepted or rejected.
    pub fn prompts_posted(&self) -> u64 {
        self.sim.as_ref().map_or(0, posted)
    }

    fn unused(&self, sim: &Sim) -> Option<String> {
        (self.must_be_used && posted(sim) == 0).then(|| {
            format!(
                "no prompt reached the simulator at {}: the test did not exercise it (TestSim::idle_ok if that is meant)",
                sim.url()
            )
        })
    }
}

fn posted(sim: &Sim) -> u64 {
    let stats = sim.stats();
    stats.prompts_accepted + stats.prompts_rejected
}

impl std::ops::Deref for TestSim {
    type Target = Sim;

    fn deref(&self) -> &Sim {
        self.sim
            .as_ref()
            .expect("a TestSim holds its simulator until it stops")
    }
}

impl Drop for TestSim {
    fn drop(&mut self) {
        let Some(sim) = self.sim.take() else {
            return;
        };
        let unused = self.unused(&sim);
        // The simulator's own drop closes every connection and stops its listener and worker.
        drop(sim);
        // Not while a failed assertion already unwinds: that failure is the one to see.
        if let Some(complaint) = unused
            && !std::thread::panicking()
        {
            panic!("{complaint}");
        }
    }
}

#[tokio::test]
async fn a_test_sim_that_a_prompt_reached_stops_quietly() {
    let sim = TestSim::start(&[]).await;
    let (status, _) =
        crate::sim_support::post_json(&sim.url(), "/prompt", &serde_json::json!({"prompt": {}}))
            .await;
    assert_eq!(status, 400, "an empty prompt is rejected, and counted");
    drop(sim);
    TestSim::start(&[]).await.idle_ok().stop().await;
}

#[tokio::test]
#[should_panic(expected = "no prompt reached the simulator at http://127.0.0.1:")]
async fn a_test_sim_that_no_prompt_reached_fails_the_test() {
    let _sim = TestSim::start(&[]).await;
}

#[tokio::test]
#[should_panic(expected = "no prompt reached the simulator")]
async fn a_test_sim_stopped_unused_fails_the_test() {
    TestSim::start(&[]).await.stop().await;
}

/// A loopback URL nothing listens on: a port bound, then freed.
pub fn unused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

pub fn client(url: &str) -> ComfyClient {
    ComfyClient::with_token(url, http_client(), None).unwrap()
}

/// Short timings so fault paths finish quickly.
pub fn engine() -> EngineConfig {
    EngineConfig {
        timeout: Duration::from_secs(20),
        stall: Duration::from_millis(500),
        ping_interval: Duration::from_millis(500),
        outage_window: Duration::from_secs(3),
        handshake_timeout: Duration::from_secs(5),
        backoff: Duration::from_millis(20),
        ..EngineConfig::default()
    }
}

pub fn options(plan: &Plan, out: &Path, engine: EngineConfig) -> RunOptions {
    RunOptions {
        out_root: out.to_owned(),
        chapter: plan.chapter,
        title: plan.title.clone(),
        manifest_path: plan.manifest_path.display().to_string(),
        manifest_sha256: plan.manifest_sha256.clone(),
        force: false,
        only: Vec::new(),
        simulator: true,
        all_or_nothing: false,
        engine,
        mode: Mode::Quiet,
    }
}

/// One run of `plan` on the servers at `urls` with the short test timings.
pub async fn run_on(plan: &Plan, out: &Path, urls: &[String], force: bool) -> RunSummary {
    let mut options = options(plan, out, engine());
    options.force = force;
    let clients = urls.iter().map(|url| client(url)).collect();
    plasma_batch::runner::run_jobs(options, clients, jobs(plan), no_cancel())
        .await
        .unwrap()
}

pub fn no_cancel() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    // Keep the sender alive for the whole test process: a dropped sender is not a cancel.
    std::mem::forget(tx);
    rx
}

pub fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

pub fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    (info.width, info.height)
}

/// Every file under `root`, relative, sorted.
pub fn files_under(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The invariants of every run: each job in the report exactly once with the status of
/// its outcome; every succeeded image exists, is a valid PNG of the job's size and matches
/// its sha256; nothing else appeared under the output root.
pub fn check_run(summary: &RunSummary, plan_jobs: &[Arc<Job>], out: &Path) -> RunReport {
    let report = RunReport::read(&summary.report_path).unwrap();
    assert!(report.complete, "the final report is complete");
    let keys: Vec<&str> = report.jobs.iter().map(|j| j.key.as_str()).collect();
    let unique: HashSet<&str> = keys.iter().copied().collect();
    assert_eq!(
        keys.len(),
        unique.len(),
        "a job appears twice in the report"
    );
    for job in plan_jobs {
        assert!(
            unique.contains(job.key.as_str()),
            "{} missing from the report",
            job.key
        );
    }
    assert_eq!(
        summary.outcomes.len(),
        plan_jobs.len(),
        "one outcome per job"
    );
    let mut expected_files: HashSet<String> = HashSet::new();
    for outcome in &summary.outcomes {
        let entry = report.jobs.iter().find(|j| j.key == outcome.key).unwrap();
        assert_eq!(
            serde_json::to_value(entry.status).unwrap(),
            serde_json::to_value(outcome.status).unwrap(),
            "{}",
            outcome.key
        );
        if outcome.status == JobStatus::Succeeded || outcome.status == JobStatus::Skipped {
            assert!(!outcome.images.is_empty(), "{} has no image", outcome.key);
        } else {
            assert!(
                outcome.images.is_empty(),
                "{} failed but recorded images",
                outcome.key
            );
        }
        for image in &outcome.images {
            let path = out.join(&image.path);
            assert!(path.exists(), "{} is missing", path.display());
            assert_eq!(sha256_file(&path), image.sha256, "{}", image.path);
            assert_eq!(png_size(&path), (entry.params.width, entry.params.height));
            expected_files.insert(image.path.clone());
        }
    }
    // Images of earlier runs in the same output root are allowed; a stray file is not.
    for file in files_under(out) {
        let allowed = expected_files.contains(&file)
            || is_run_file(&file)
            || (file.contains("/raw/comfyui/")
                && has_extension(&file, "png")
                && !file.contains("/."));
        assert!(allowed, "unexpected file under the output root: {file}");
    }
    report
}

/// Whether `file`'s extension is exactly `ext` (the names plasma-batch writes are lower-case).
pub fn has_extension(file: &str, ext: &str) -> bool {
    Path::new(file).extension().is_some_and(|e| e == ext)
}

/// A file a run keeps besides its images: ledger, reports, contact sheets, thumbnails.
pub fn is_run_file(file: &str) -> bool {
    let name = file.rsplit('/').next().unwrap();
    name == "ledger.jsonl"
        || (file.contains("/reports/")
            && (has_extension(name, "json")
                || has_extension(name, "html")
                || name == "thumbs.pack"))
}
