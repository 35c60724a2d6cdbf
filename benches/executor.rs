//! Executor benchmark (issue 6): plasma-batch's executor against the serial client pattern
//! on the same simulator settings, plus the planning cost of a 100,000-job manifest, and,
//! with `PLASMA_REAL_COMFY` set, against a client that queues every prompt at once on a real
//! ComfyUI (`real.rs`).
//!
//! `cargo bench --bench executor` runs every scenario; `cargo bench --bench executor -- b e10k`
//! (or `PLASMA_BENCH=b,e10k`) runs some. Scenarios: a b c d e1k e10k planning r1 r2 (r1 and r2 need
//! `PLASMA_REAL_COMFY`), and, only
//! when named (`-- shards`), the sharded book: 10,000 jobs in 10 chapters over 16
//! simulators, rendered by 4 `run --shard K/4` processes at once into one output root, then
//! `report merge`.
//!
//! Each (scenario, client) runs in a fresh child process (this binary re-executed with
//! `--child`), and the simulators of a scenario run in a grandchild (`--sim`), so a peak RSS
//! (`VmHWM` of the client process) is the client's alone and scenarios do not pollute each
//! other. Both processes share this machine's cores, as `plasma-batch sim` + `run` would.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use plasma_batch::comfy::{ComfyClient, http_client};
use plasma_batch::engine::EngineConfig;
use plasma_batch::events::JobStatus;
use plasma_batch::plan::{Job, Plan, load_plan};
use plasma_batch::report::progress::Mode;
use plasma_batch::runner::{RunOptions, run_jobs};
use plasma_batch::sim::{Sim, SimConfig};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[path = "executor/real.rs"]
mod real;

/// One benchmark scenario: jobs of `steps` `KSampler` steps at `step_ms` on `sims` simulators.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    what: &'static str,
    jobs: usize,
    sims: usize,
    steps: u32,
    step_ms: u64,
    latency_ms: u64,
    size: u32,
}

impl Scenario {
    /// Server-side render time of one job.
    fn render_ms(&self) -> u64 {
        u64::from(self.steps) * self.step_ms
    }

    /// Jobs x render time, spread over the simulators: the servers' own limit.
    fn ideal_secs(&self) -> f64 {
        self.jobs as f64 * self.render_ms() as f64 / 1000.0 / self.sims as f64
    }
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "a",
        what: "local GPU, 20 x 1 ms steps",
        jobs: 500,
        sims: 1,
        steps: 20,
        step_ms: 1,
        latency_ms: 0,
        size: 64,
    },
    Scenario {
        name: "b",
        what: "remote GPU, 100 ms render, 25 ms latency",
        jobs: 200,
        sims: 1,
        steps: 20,
        step_ms: 5,
        latency_ms: 25,
        size: 64,
    },
    Scenario {
        name: "c",
        what: "overhead, zero render, 64x64",
        jobs: 2000,
        sims: 1,
        steps: 1,
        step_ms: 0,
        latency_ms: 0,
        size: 64,
    },
    Scenario {
        name: "d",
        what: "scale-out, 4 simulators, 50 ms render",
        jobs: 400,
        sims: 4,
        steps: 10,
        step_ms: 5,
        latency_ms: 0,
        size: 64,
    },
    Scenario {
        name: "e1k",
        what: "memory, 1,000 jobs, zero render",
        jobs: 1000,
        sims: 1,
        steps: 1,
        step_ms: 0,
        latency_ms: 0,
        size: 64,
    },
    Scenario {
        name: "e10k",
        what: "memory, 10,000 jobs, zero render",
        jobs: 10_000,
        sims: 1,
        steps: 1,
        step_ms: 0,
        latency_ms: 0,
        size: 64,
    },
];

/// Jobs in the planning scenario: 500 pages x 200 variants (pages are 1..=999).
const PLANNING_PAGES: u32 = 500;
const PLANNING_VARIANTS: u32 = 200;

const CLIENTS: [&str; 2] = ["plasma-batch", "serial"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--sim") => return serve_sims(&args[1..]),
        Some("--child") => return child(&args[1], &args[2]),
        Some("--shard-child") => return shard_child(&args[1..]),
        Some("--merge-child") => return merge_child(&args[1..]),
        _ => {}
    }
    // `cargo bench` passes `--bench`; anything else not starting with `-` names a scenario.
    let mut wanted: Vec<String> = args.into_iter().filter(|a| !a.starts_with('-')).collect();
    if let Ok(list) = std::env::var("PLASMA_BENCH") {
        wanted.extend(list.split(',').filter(|s| !s.is_empty()).map(str::to_owned));
    }
    let all = wanted.is_empty();
    if all {
        for s in SCENARIOS {
            println!("  {}: {}", s.name, s.what);
        }
        for s in real::REAL_SCENARIOS {
            println!("  {}: {}", s.name, s.what);
        }
    }
    let runs = |name: &str| all || wanted.iter().any(|w| w == name);

    println!(
        "plasma-batch executor benchmark ({} cores)",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    let simulated = SCENARIOS.iter().any(|s| runs(s.name)) || runs("planning");
    if simulated {
        println!(
            "{:<5} {:<13} {:>6} {:>8} {:>8} {:>6} {:>8} {:>8} {:>7} {:>7} {:>7}  target",
            "scen",
            "client",
            "jobs",
            "wall s",
            "ideal s",
            "eff",
            "jobs/s",
            "RSS MB",
            "idle s",
            "CPU s",
            "sim CPU"
        );
    }
    let mut failed = false;
    let mut rss = std::collections::HashMap::new();
    for scenario in SCENARIOS.iter().filter(|s| runs(s.name)) {
        for client in CLIENTS {
            let result = run_child(scenario.name, client);
            let eff = if scenario.render_ms() > 0 {
                format!("{:.3}", scenario.ideal_secs() / result.wall)
            } else {
                "-".to_owned()
            };
            let rate = scenario.jobs as f64 / result.wall;
            let rss_mb = result.rss_kb as f64 / 1024.0;
            let verdict = if client == "serial" {
                String::new()
            } else {
                rss.insert(scenario.name, rss_mb);
                let (ok, text) = target(scenario, &result, &rss);
                failed |= !ok;
                format!("{} {text}", if ok { "PASS" } else { "FAIL" })
            };
            println!(
                "{:<5} {:<13} {:>6} {:>8.2} {:>8.2} {:>6} {:>8.0} {:>8.1} {:>7.2} {:>7.2} {:>7.2}  {verdict}",
                scenario.name,
                client,
                scenario.jobs,
                result.wall,
                scenario.ideal_secs(),
                eff,
                rate,
                rss_mb,
                result.idle_ms as f64 / 1000.0,
                result.cpu_ms as f64 / 1000.0,
                result.sim_cpu_ms as f64 / 1000.0,
            );
            if result.failed > 0 {
                println!("      {} of the jobs did not succeed", result.failed);
                failed = true;
            }
        }
    }
    if runs("planning") {
        failed |= !planning();
    }
    // Not part of a plain run (it takes a minute or two): `-- shards` or PLASMA_BENCH=shards.
    if wanted.iter().any(|w| w == "shards") {
        failed |= !sharded();
    }
    failed |= !real::run(&runs);
    if failed {
        println!("some targets were missed");
    }
    // A static is never dropped: remove the children's images now.
    let _ = std::fs::remove_dir_all(output_root());
}

/// The planning scenario in its own process; prints its line, true when it met its target.
fn planning() -> bool {
    let result = run_child("planning", "plan");
    let ok = result.wall < 1.0;
    println!(
        "plan  {:<13} {:>6} {:>8.2} {:>8} {:>6} {:>8.0} {:>8.1} {:>7} {:>7.2} {:>7}  {} < 1 s",
        "expand+hash",
        PLANNING_PAGES * PLANNING_VARIANTS,
        result.wall,
        "-",
        "-",
        f64::from(PLANNING_PAGES * PLANNING_VARIANTS) / result.wall,
        result.rss_kb as f64 / 1024.0,
        "-",
        result.cpu_ms as f64 / 1000.0,
        "-",
        if ok { "PASS" } else { "FAIL" }
    );
    ok
}

/// plasma-batch's target for a scenario, and how it reads.
fn target(
    s: &Scenario,
    r: &ChildResult,
    rss: &std::collections::HashMap<&str, f64>,
) -> (bool, String) {
    match s.name {
        "a" | "b" => (s.ideal_secs() / r.wall >= 0.97, "eff >= 0.97".into()),
        "c" => (s.jobs as f64 / r.wall >= 1000.0, ">= 1,000 jobs/s".into()),
        "d" => {
            // One simulator's limit is 1 job per render time.
            let one = 1000.0 / s.render_ms() as f64;
            let times = s.jobs as f64 / r.wall / one;
            (times >= 3.8, format!("{times:.2}x one sim's limit >= 3.8x"))
        }
        "e1k" => (true, "(reference for e10k)".into()),
        "e10k" => {
            let mb = r.rss_kb as f64 / 1024.0;
            let above = rss.get("e1k").map(|k| mb - k);
            let ok = mb <= 64.0 && above.is_none_or(|a| a <= 10.0);
            let above = above.map_or("e1k not run".into(), |a| format!("{a:+.1} MB vs e1k"));
            (ok, format!("<= 64 MB, <= +10 MB ({above})"))
        }
        _ => (true, String::new()),
    }
}

struct ChildResult {
    wall: f64,
    rss_kb: u64,
    failed: usize,
    /// Server worker idle while prompts were outstanding (all simulators together).
    idle_ms: u64,
    /// CPU time of the client process and of the simulators' process.
    cpu_ms: u64,
    sim_cpu_ms: u64,
}

/// Where the children write their images: one folder for the whole benchmark, removed at the
/// end. Removing each scenario's thousands of files right after it made the next scenario's
/// file creations slow on this machine's root filesystem (ext4 without a journal: each new
/// inode is checked against recently deleted ones, `find_inode_bit` -> `recently_deleted`,
/// up to ~0.7 ms a file), which measured the benchmark's clean-up, not the client.
const OUTPUT_ROOT: &str = "PLASMA_BENCH_OUTPUT";

fn output_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
}

/// Run one (scenario, client) in a fresh process; it prints
/// `RESULT wall rss_kb failed idle_ms cpu_ms sim_cpu_ms`.
fn run_child(scenario: &str, client: &str) -> ChildResult {
    let exe = std::env::current_exe().expect("own path");
    let output = Command::new(exe)
        .args(["--child", scenario, client])
        .env(OUTPUT_ROOT, output_root())
        .stderr(Stdio::inherit())
        .output()
        .expect("start a child");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("{scenario}/{client} printed no result: {text}"));
    let mut parts = line.split_whitespace();
    let mut next = || parts.next().expect("three fields");
    ChildResult {
        wall: next().parse().expect("wall"),
        rss_kb: next().parse().expect("rss"),
        failed: next().parse().expect("failed"),
        idle_ms: next().parse().expect("idle"),
        cpu_ms: next().parse().expect("cpu"),
        sim_cpu_ms: next().parse().expect("sim cpu"),
    }
}

/// CPU time (user + system, all threads) this process has used so far, in ms.
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14,
    // stime 15, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(14) + ticks(15)) * 10
}

/// Peak resident set of this process, in KiB.
fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn runtime() -> tokio::runtime::Runtime {
    // What `plasma-batch run` builds: a worker per core.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `--child SCENARIO CLIENT`: one measurement, printed as a `RESULT` line (see [`run_child`]).
fn child(scenario: &str, client: &str) {
    if scenario == "planning" {
        let dir = tempfile::tempdir().expect("tempdir");
        let manifest = planning_manifest(dir.path());
        let started = Instant::now();
        let plan = load_plan(&manifest).unwrap_or_else(|d| panic!("{} problems", d.len()));
        let wall = started.elapsed().as_secs_f64();
        assert_eq!(
            plan.jobs.len(),
            (PLANNING_PAGES * PLANNING_VARIANTS) as usize
        );
        println!("RESULT {wall} {} 0 0 {} 0", peak_rss_kb(), cpu_ms());
        return;
    }
    if let Some(s) = real::REAL_SCENARIOS.iter().find(|s| s.name == scenario) {
        return real::child(s, client);
    }
    let s = *SCENARIOS
        .iter()
        .find(|s| s.name == scenario)
        .unwrap_or_else(|| panic!("no scenario {scenario}"));
    let (sims, urls) = start_sims(&s);
    let dir = child_dir(scenario, client);
    let manifest = scenario_manifest(&dir, &s);
    let plan = load_plan(&manifest).unwrap_or_else(|d| panic!("{} problems", d.len()));
    let out = dir.join("out");
    let rt = runtime();
    let (wall, failed) = match client {
        "plasma-batch" => run_plasma(&rt, plan, &manifest, out, &urls, true),
        "serial" => {
            std::fs::create_dir_all(&out).expect("out");
            let started = Instant::now();
            let failed = rt.block_on(serial(&urls, &plan.jobs, &out));
            (started.elapsed().as_secs_f64(), failed)
        }
        other => panic!("no client {other}"),
    };
    let rss = peak_rss_kb();
    let cpu = cpu_ms();
    rt.shutdown_background();
    let (idle_ms, sim_cpu) = sims.stop();
    println!("RESULT {wall} {rss} {failed} {idle_ms} {cpu} {sim_cpu}");
}

/// A folder for one child's files, kept until the whole benchmark ends (see `OUTPUT_ROOT`).
fn child_dir(scenario: &str, client: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(&format!("{scenario}-{client}-"))
        .tempdir_in(std::env::var_os(OUTPUT_ROOT).unwrap_or_else(|| std::env::temp_dir().into()))
        .expect("tempdir")
        .keep()
}

/// plasma-batch's whole run of `plan` on the servers at `urls` (`runner::run_jobs` with the
/// default `EngineConfig`, as `plasma-batch run` does): (wall s, jobs that did not succeed).
fn run_plasma(
    rt: &tokio::runtime::Runtime,
    plan: Plan,
    manifest: &Path,
    out: PathBuf,
    urls: &[String],
    simulator: bool,
) -> (f64, usize) {
    let options = RunOptions {
        out_root: out,
        chapter: plan.chapter,
        title: plan.title.clone(),
        manifest_path: manifest.display().to_string(),
        manifest_sha256: plan.manifest_sha256.clone(),
        force: false,
        only: Vec::new(),
        simulator,
        all_or_nothing: false,
        engine: EngineConfig::default(),
        mode: Mode::Quiet,
    };
    let http = http_client();
    let clients: Vec<ComfyClient> = urls
        .iter()
        .map(|u| ComfyClient::new(u, http.clone()).expect("url"))
        .collect();
    let (_cancel_tx, cancel) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let summary = rt
        .block_on(run_jobs(options, clients, plan.jobs, cancel))
        .expect("run");
    let wall = started.elapsed().as_secs_f64();
    let failed = summary
        .outcomes
        .iter()
        .filter(|o| o.status != JobStatus::Succeeded)
        .count();
    (wall, failed)
}

/// `GET /view` of one image as ComfyUI names it (`filename`, `subfolder`, `type`), for the
/// reference clients (the serial one here, the all-at-once one in `real.rs`).
fn view_request(http: &reqwest::Client, base: &str, image: &Value) -> reqwest::RequestBuilder {
    http.get(format!("{base}/view")).query(&[
        ("filename", image["filename"].as_str().unwrap_or("")),
        ("subfolder", image["subfolder"].as_str().unwrap_or("")),
        ("type", image["type"].as_str().unwrap_or("output")),
    ])
}

/// The usual client pattern (ComfyUI's websocket example): per job, open a socket, POST,
/// wait for `executing` null, fetch `/history`, download each image from `/view`, write it,
/// and only then submit the next job. Jobs go round-robin over the servers. Returns the
/// number of jobs that did not produce an image.
async fn serial(urls: &[String], jobs: &[Arc<Job>], out: &Path) -> usize {
    let http = reqwest::Client::new();
    let mut failed = 0;
    for (n, job) in jobs.iter().enumerate() {
        let base = &urls[n % urls.len()];
        let attempt = serial_job(&http, base, job, out);
        if !matches!(
            tokio::time::timeout(Duration::from_secs(30), attempt).await,
            Ok(Ok(()))
        ) {
            failed += 1;
        }
    }
    failed
}

async fn serial_job(
    http: &reqwest::Client,
    base: &str,
    job: &Job,
    out: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let client_id = uuid::Uuid::new_v4().to_string();
    let ws_url = format!(
        "{}/ws?clientId={client_id}",
        base.replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
    // The server's first frame (`status`) says it has registered the socket; a POST before
    // that could finish before the server knows where to send its messages.
    ws.next().await.ok_or("socket closed")??;
    let answer: Value = http
        .post(format!("{base}/prompt"))
        .json(&json!({"prompt": job.workflow, "client_id": client_id}))
        .send()
        .await?
        .json()
        .await?;
    let prompt_id = answer["prompt_id"]
        .as_str()
        .ok_or("no prompt_id")?
        .to_owned();
    loop {
        match ws.next().await.ok_or("socket closed")?? {
            Message::Text(text) => {
                let message: Value = serde_json::from_str(text.as_str())?;
                if message["type"] == "executing"
                    && message["data"]["node"].is_null()
                    && message["data"]["prompt_id"] == prompt_id.as_str()
                {
                    break;
                }
            }
            Message::Close(_) => return Err("socket closed".into()),
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    let history: Value = http
        .get(format!("{base}/history/{prompt_id}"))
        .send()
        .await?
        .json()
        .await?;
    let outputs = history[&prompt_id]["outputs"]
        .as_object()
        .ok_or("no outputs")?;
    let mut written = 0;
    for output in outputs.values() {
        for image in output["images"].as_array().into_iter().flatten() {
            let bytes = view_request(http, base, image)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            written += 1;
            std::fs::write(out.join(format!("{}_{written}.png", job.key)), &bytes)?;
        }
    }
    if written == 0 {
        return Err("no image".into());
    }
    Ok(())
}

/// Start the scenario's simulators in their own process; returns it and their URLs.
fn start_sims(s: &Scenario) -> (Sims, Vec<String>) {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .args([
            "--sim",
            &s.sims.to_string(),
            &s.step_ms.to_string(),
            &s.latency_ms.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the simulators");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut urls = Vec::new();
    for line in (&mut stdout).lines() {
        let line = line.expect("sim output");
        if line == "READY" {
            break;
        }
        urls.push(line);
    }
    assert_eq!(urls.len(), s.sims, "every simulator started");
    (Sims { child, stdout }, urls)
}

/// The simulators' process, and its output after `READY`.
struct Sims {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Sims {
    /// Stop the simulators; returns (worker idle ms while prompts were outstanding, the
    /// simulator process's CPU ms).
    fn stop(mut self) -> (u64, u64) {
        // Closing its stdin ends the simulator process.
        drop(self.child.stdin.take());
        let (mut idle, mut cpu) = (0, 0);
        for line in (&mut self.stdout).lines().map_while(Result::ok) {
            let value = |v: &str| v.parse().unwrap_or(0);
            if let Some(v) = line.strip_prefix("IDLE ") {
                idle = value(v);
            } else if let Some(v) = line.strip_prefix("CPU ") {
                cpu = value(v);
            }
        }
        let _ = self.child.wait();
        (idle, cpu)
    }
}

/// `--sim N STEP_MS LATENCY_MS`: serve N simulators until stdin closes.
fn serve_sims(args: &[String]) {
    let n: usize = args[0].parse().expect("count");
    let step_ms: u64 = args[1].parse().expect("step_ms");
    let latency_ms: u64 = args[2].parse().expect("latency_ms");
    let rt = runtime();
    rt.block_on(async {
        let mut sims = Vec::new();
        for _ in 0..n {
            let sim = Sim::start(SimConfig {
                step_ms,
                latency_ms,
                ..SimConfig::default()
            })
            .await
            .expect("start a simulator");
            println!("{}", sim.url());
            sims.push(sim);
        }
        println!("READY");
        let _ = std::io::stdout().flush();
        // The parent closes our stdin when it is done.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await;
        // The GPU time the client left unused: the worker's idle time while prompts were
        // outstanding, summed over the simulators.
        let idle: u64 = sims
            .iter()
            .map(|s| s.stats().worker_idle_ms_while_outstanding)
            .sum();
        println!("IDLE {idle}");
        println!("CPU {}", cpu_ms());
        let _ = std::io::stdout().flush();
        for sim in sims {
            sim.shutdown().await;
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}

fn workflow_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/txt2img.json")
}

/// A chapter of `s.jobs` jobs: pages of up to 100 variants.
fn scenario_manifest(dir: &Path, s: &Scenario) -> PathBuf {
    let per_page = 100.min(s.jobs);
    assert_eq!(s.jobs % per_page, 0, "whole pages");
    manifest(
        dir,
        (s.jobs / per_page) as u32,
        per_page as u32,
        s.steps,
        s.size,
    )
}

fn planning_manifest(dir: &Path) -> PathBuf {
    manifest(dir, PLANNING_PAGES, PLANNING_VARIANTS, 20, 512)
}

fn manifest(dir: &Path, pages: u32, variants: u32, steps: u32, size: u32) -> PathBuf {
    chapter_manifest(dir, 1, pages, variants, steps, size)
}

/// Chapter `chapter` of `pages` pages of `variants` variants, as `dir/chNN.toml`.
fn chapter_manifest(
    dir: &Path,
    chapter: u16,
    pages: u32,
    variants: u32,
    steps: u32,
    size: u32,
) -> PathBuf {
    let mut text = format!(
        "[chapter]\nnumber = {chapter}\nseed = 7\n\n[defaults]\nworkflow = '{}'\nvariants = {variants}\nsteps = {steps}\nwidth = {size}\nheight = {size}\n",
        workflow_path().display()
    );
    for page in 1..=pages {
        let _ = write!(
            text,
            "\n[[pages]]\npage = {page}\nprompt = \"page {page}: a lighthouse at dusk, ink\"\n"
        );
    }
    let path = dir.join(format!("ch{chapter:02}.toml"));
    std::fs::write(&path, text).expect("write the manifest");
    path
}

/// The sharded book: 10 chapters of 10 pages x 100 variants, 40 ms renders, 16 simulators,
/// 4 shards.
const SHARDED: Scenario = Scenario {
    name: "shards",
    what: "book, 10,000 jobs, 16 simulators, 4 shards at once, 40 ms render",
    jobs: 10_000,
    sims: 16,
    steps: 10,
    step_ms: 4,
    latency_ms: 0,
    size: 64,
};
const SHARDS: u32 = 4;
const BOOK_CHAPTERS: u16 = 10;

/// Run the sharded book: every shard in its own process (`--shard-child`, the binary's own
/// `run` command line), all at once, then `report merge` (`--merge-child`). Prints a line per
/// shard and one for the book; true when every job succeeded and the merge holds them all.
fn sharded() -> bool {
    let s = SHARDED;
    println!("{}: {}", s.name, s.what);
    let base = output_root().join("shards");
    let book = base.join("book");
    std::fs::create_dir_all(&book).expect("book folder");
    let per_chapter = s.jobs as u32 / u32::from(BOOK_CHAPTERS);
    for chapter in 1..=BOOK_CHAPTERS {
        chapter_manifest(&book, chapter, per_chapter / 100, 100, s.steps, s.size);
    }
    let root = base.join("out");
    let (sims, urls) = start_sims(&s);
    let exe = std::env::current_exe().expect("own path");
    let started = Instant::now();
    let children: Vec<Child> = (0..SHARDS)
        .map(|k| {
            Command::new(&exe)
                .args(["--shard-child", &format!("{k}/{SHARDS}")])
                .arg(&book)
                .arg(&root)
                .arg(urls.join(","))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a shard")
        })
        .collect();
    let mut ok = true;
    let mut shard_lines = Vec::new();
    for (k, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().expect("a shard ends");
        let text = String::from_utf8_lossy(&output.stdout);
        let fields: Vec<f64> = text
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .unwrap_or_else(|| panic!("shard {k} printed no result: {text}"))
            .split_whitespace()
            .map(|v| v.parse().expect("a number"))
            .collect();
        // wall, rss kB, exit code, jobs, cpu ms
        ok &= fields[2] == 0.0;
        shard_lines.push(fields);
    }
    let wall = started.elapsed().as_secs_f64();
    let (idle_ms, sim_cpu) = sims.stop();
    for (k, f) in shard_lines.iter().enumerate() {
        println!(
            "  shard {k}/{SHARDS}: {:>5} jobs  wall {:>6.2} s  peak RSS {:>5.1} MB  CPU {:>6.2} s  exit {}",
            f[3],
            f[0],
            f[1] / 1024.0,
            f[4] / 1000.0,
            f[2]
        );
    }
    let eff = s.ideal_secs() / wall;
    println!(
        "  book: {} jobs  wall {wall:.2} s  servers' limit {:.2} s  eff {eff:.3}  {:.0} jobs/s  sim idle {:.2} s  sim CPU {:.2} s",
        s.jobs,
        s.ideal_secs(),
        s.jobs as f64 / wall,
        idle_ms as f64 / 1000.0,
        sim_cpu as f64 / 1000.0
    );
    let merged = base.join("merged");
    let output = Command::new(&exe)
        .arg("--merge-child")
        .arg(root.join("reports"))
        .arg(&merged)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .expect("run the merge");
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("the merge printed no result: {text}"))
        .split_whitespace()
        .map(|v| v.parse().expect("a number"))
        .collect();
    let merged_ok = fields[2] == 0.0 && (fields[3] - s.jobs as f64).abs() < 0.5;
    ok &= merged_ok;
    println!(
        "  merge: {} reports -> {} chapters, {} jobs succeeded  wall {:.2} s  peak RSS {:.1} MB  exit {}",
        SHARDS * u32::from(BOOK_CHAPTERS),
        BOOK_CHAPTERS,
        fields[3],
        fields[0],
        fields[1] / 1024.0,
        fields[2]
    );
    println!(
        "  {}",
        if ok {
            "PASS every job rendered once and merged"
        } else {
            "FAIL a shard or the merge did not finish clean"
        }
    );
    ok
}

/// `--shard-child K/N BOOK ROOT URLS`: `plasma-batch run BOOK --shard K/N --out ROOT --server
/// ...` through the binary's own command code; prints `RESULT wall rss_kb exit jobs cpu_ms`.
fn shard_child(args: &[String]) {
    use clap::Parser as _;
    let mut line = vec![
        "plasma-batch".to_owned(),
        "run".to_owned(),
        args[1].clone(),
        "--shard".to_owned(),
        args[0].clone(),
        "--out".to_owned(),
        args[2].clone(),
        "--json".to_owned(),
    ];
    for url in args[3].split(',') {
        line.extend(["--server".to_owned(), url.to_owned()]);
    }
    let cli = plasma_batch::cli::Cli::parse_from(line);
    let shard = plasma_batch::shard::Shard::parse(&args[0], |_| None).expect("K/N");
    let rt = runtime();
    let started = Instant::now();
    let result = rt.block_on(plasma_batch::cmd::execute(cli));
    let wall = started.elapsed().as_secs_f64();
    let code = plasma_batch::cmd::finish(result, &mut std::io::stderr());
    // This shard's share of the book, by the rule `run` used.
    let book = Path::new(&args[1]);
    let jobs: usize = (1..=BOOK_CHAPTERS)
        .map(|c| {
            load_plan(&book.join(format!("ch{c:02}.toml")))
                .expect("the book plans")
                .jobs
                .iter()
                .filter(|j| shard.selects(&j.key))
                .count()
        })
        .sum();
    rt.shutdown_background();
    println!("RESULT {wall} {} {code} {jobs} {}", peak_rss_kb(), cpu_ms());
}

/// `--merge-child REPORTS OUT`: `plasma-batch report merge REPORTS --out OUT --json`; prints
/// `RESULT wall rss_kb exit succeeded`.
fn merge_child(args: &[String]) {
    use clap::Parser as _;
    let cli = plasma_batch::cli::Cli::parse_from([
        "plasma-batch",
        "report",
        "merge",
        &args[0],
        "--out",
        &args[1],
        "--json",
    ]);
    let rt = runtime();
    let started = Instant::now();
    let result = rt.block_on(plasma_batch::cmd::execute(cli));
    let wall = started.elapsed().as_secs_f64();
    let code = plasma_batch::cmd::finish(result, &mut std::io::stderr());
    let rss = peak_rss_kb();
    let succeeded: usize = (1..=BOOK_CHAPTERS)
        .map(|c| {
            plasma_batch::report::RunReport::read(
                &Path::new(&args[1]).join(format!("ch-{c:02}.json")),
            )
            .map_or(0, |r| r.totals.succeeded)
        })
        .sum();
    println!("RESULT {wall} {rss} {code} {succeeded}");
}
