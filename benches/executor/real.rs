//! Real-server scenarios (r1, r2): plasma-batch against a client that queues every prompt at
//! once, on a real ComfyUI named by `PLASMA_REAL_COMFY`, round by round, interleaved.
//!
//! - r1, sampler path: 30 jobs of `workflows/txt2img.json` at 64x96, 4 steps. Target:
//!   plasma-batch's wall time within 1 % of the reference client's (median of the rounds).
//!   Also the server's busy fraction: the sum of each prompt's `execution_start` to
//!   `execution_success` (from `/history`) over the client's wall time.
//! - r2, trivial graph (`EmptyImage` 512x768 -> `SaveImage`), 400 jobs: the server's own
//!   work is a few ms a prompt, so the clients' costs show. Target: plasma-batch's throughput
//!   at least 0.97 of the reference client's (median of the rounds).
//!
//! Each (scenario, client, round) is a fresh child process, as for the simulator scenarios.
//! Before each run the child waits for the server to be idle, has it free its memory (which
//! runs its garbage collector now rather than by chance inside the run, see [`prepare`]),
//! renders one warm-up prompt (loading the checkpoint again in r1), clears the server's
//! history and, when `PLASMA_REAL_COMFY_OUTPUT` names the server's output folder, removes
//! the `plasma/` folder the runs write there (`SaveImage` lists its output folder for every
//! image, so it slows as files pile up). Every run uses a chapter number of its own, so no
//! prompt repeats one the server has cached.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use plasma_batch::comfy::http_client;
use plasma_batch::plan::{Job, load_plan};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// The server's URL (`http://127.0.0.1:8189`).
pub const URL_ENV: &str = "PLASMA_REAL_COMFY";
/// The server's output folder (its `--output-directory`, or `ComfyUI/output`).
pub const OUTPUT_ENV: &str = "PLASMA_REAL_COMFY_OUTPUT";
/// Rounds per scenario (default 5).
pub const ROUNDS_ENV: &str = "PLASMA_REAL_ROUNDS";

/// The reference client: one socket, every prompt posted at once, images fetched as their
/// prompts finish.
pub const REFERENCE: &str = "all-at-once";
const CLIENTS: [&str; 2] = ["plasma-batch", REFERENCE];

/// A real-server scenario.
#[derive(Debug, Clone, Copy)]
pub struct RealScenario {
    pub name: &'static str,
    pub what: &'static str,
    jobs: u32,
    width: u32,
    height: u32,
    steps: u32,
    /// `None`: the trivial graph; else this file under `workflows/`.
    workflow: Option<&'static str>,
    /// Rounds unless `PLASMA_REAL_ROUNDS` says otherwise.
    rounds: usize,
}

pub const REAL_SCENARIOS: &[RealScenario] = &[
    RealScenario {
        name: "r1",
        what: "real server, sampler path, 30 x 64x96, 4 steps",
        jobs: 30,
        width: 64,
        height: 96,
        steps: 4,
        workflow: Some("txt2img.json"),
        // A CPU sampler's run varies by ~6 % from one round to the next (the same client,
        // minutes apart): nine rounds for a median that resolves 1 %.
        rounds: 9,
    },
    RealScenario {
        name: "r2",
        what: "real server, EmptyImage 512x768 -> SaveImage, 400 jobs",
        jobs: 400,
        width: 512,
        height: 768,
        steps: 1,
        workflow: None,
        rounds: 5,
    },
];

/// The trivial graph of r2: no model, the server's work is `SaveImage`'s PNG encode and file.
const TRIVIAL_WORKFLOW: &str = r#"{
  "1": {"class_type": "EmptyImage",
        "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1, "color": 0}},
  "2": {"class_type": "SaveImage",
        "inputs": {"filename_prefix": "{{filename_prefix}}", "images": ["1", 0]}}
}"#;

/// What one child measured.
struct RealResult {
    wall: f64,
    failed: usize,
    /// Sum over the run's prompts of `execution_start` -> `execution_success`, in ms.
    busy_ms: u64,
    /// From the client's start to the first `execution_start`, and from the last
    /// `execution_success` to the client's end, in ms (what the server did not overlap).
    lead_ms: i64,
    tail_ms: i64,
    /// Between the first `execution_start` and the last `execution_success`, the time
    /// outside every prompt: the worker's own bookkeeping between prompts, and any wait for
    /// the client's next prompt.
    gaps_ms: i64,
    cpu_ms: u64,
    rss_kb: u64,
}

impl RealResult {
    fn busy(&self) -> f64 {
        self.busy_ms as f64 / 1000.0 / self.wall
    }
}

/// Run every real-server scenario in `wanted`, or say why not. Returns `false` if a target
/// was missed or a job failed.
pub fn run(wanted: &dyn Fn(&str) -> bool) -> bool {
    let scenarios: Vec<&RealScenario> = REAL_SCENARIOS.iter().filter(|s| wanted(s.name)).collect();
    if scenarios.is_empty() {
        return true;
    }
    let Some(url) = std::env::var(URL_ENV).ok().filter(|u| !u.is_empty()) else {
        println!(
            "r1, r2: skipped: set {URL_ENV}=http://127.0.0.1:PORT to a real ComfyUI 0.8.0 with the \
             test checkpoint (see docs/performance.md), and {OUTPUT_ENV} to its output folder"
        );
        return true;
    };
    let rounds_set: Option<usize> = std::env::var(ROUNDS_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0);
    match std::env::var_os(OUTPUT_ENV) {
        Some(dir) => println!(
            "real server {url}: its output folder {}: {}/plasma is removed before each run",
            PathBuf::from(&dir).display(),
            PathBuf::from(&dir).display()
        ),
        None => println!(
            "real server {url}: {OUTPUT_ENV} is not set, so the server's output folder is not \
             emptied between runs (SaveImage slows as it fills: later runs are slower)"
        ),
    }
    println!(
        "{:<5} {:<13} {:>5} {:>6} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7}",
        "scen",
        "client",
        "round",
        "jobs",
        "wall s",
        "jobs/s",
        "busy",
        "lead s",
        "gaps s",
        "tail s",
        "CPU s",
        "RSS MB"
    );
    let mut ok = true;
    // Each run gets a chapter of its own (1..=999): distinct prompts and file names.
    let mut chapter = 0u32;
    for s in scenarios {
        // Chapters 1..=499 for the runs, 501..=999 for their warm-ups.
        let rounds = rounds_set.unwrap_or(s.rounds).min(100);
        let mut ratios = Vec::with_capacity(rounds);
        for round in 1..=rounds {
            // Interleaved, and each client first every other round, so drift in the machine's
            // load falls on both.
            let order = if round % 2 == 1 {
                CLIENTS
            } else {
                [CLIENTS[1], CLIENTS[0]]
            };
            let mut walls = [0.0; 2];
            for client in order {
                chapter += 1;
                let r = run_child(s.name, client, &url, chapter);
                println!(
                    "{:<5} {:<13} {:>5} {:>6} {:>8.2} {:>8.1} {:>6.3} {:>6.2} {:>6.2} {:>6.2} {:>7.2} {:>7.1}",
                    s.name,
                    client,
                    round,
                    s.jobs,
                    r.wall,
                    f64::from(s.jobs) / r.wall,
                    r.busy(),
                    r.lead_ms as f64 / 1000.0,
                    r.gaps_ms as f64 / 1000.0,
                    r.tail_ms as f64 / 1000.0,
                    r.cpu_ms as f64 / 1000.0,
                    r.rss_kb as f64 / 1024.0
                );
                if r.failed > 0 {
                    println!("      {} of the jobs did not succeed", r.failed);
                    ok = false;
                }
                walls[usize::from(client == REFERENCE)] = r.wall;
            }
            // plasma-batch's speed relative to the reference: its wall over ours.
            ratios.push(walls[1] / walls[0]);
        }
        let median = median(&mut ratios);
        let text: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        let (pass, target) = match s.name {
            // Wall within 1 %: ours <= 1.01 x theirs.
            "r1" => (median >= 1.0 / 1.01, "wall within 1 % (speed >= 0.990)"),
            _ => (median >= 0.97, "speed >= 0.97"),
        };
        ok &= pass;
        println!(
            "{:<5} plasma-batch speed vs {REFERENCE} (its wall / ours): median {median:.3} of [{}]  {} {target}",
            s.name,
            text.join(" "),
            if pass { "PASS" } else { "FAIL" }
        );
    }
    ok
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        f64::midpoint(values[n / 2 - 1], values[n / 2])
    }
}

/// One run in a fresh process; it prints `REAL wall failed busy_ms lead_ms tail_ms gaps_ms
/// cpu_ms rss_kb`.
fn run_child(scenario: &str, client: &str, url: &str, chapter: u32) -> RealResult {
    let exe = std::env::current_exe().expect("own path");
    let output = std::process::Command::new(exe)
        .args(["--child", scenario, client])
        .env(URL_ENV, url)
        .env("PLASMA_REAL_CHAPTER", chapter.to_string())
        .env(super::OUTPUT_ROOT, super::output_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("start a child");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("REAL "))
        .unwrap_or_else(|| panic!("{scenario}/{client} printed no result: {text}"));
    let fields: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse().expect("a number"))
        .collect();
    RealResult {
        wall: fields[0],
        failed: fields[1] as usize,
        busy_ms: fields[2] as u64,
        lead_ms: fields[3] as i64,
        tail_ms: fields[4] as i64,
        gaps_ms: fields[5] as i64,
        cpu_ms: fields[6] as u64,
        rss_kb: fields[7] as u64,
    }
}

/// `--child rN CLIENT` for a real-server scenario.
pub fn child(s: &RealScenario, client: &str) {
    let url = std::env::var(URL_ENV).expect("the server's URL");
    let chapter: u32 = std::env::var("PLASMA_REAL_CHAPTER")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    let dir = super::child_dir(s.name, client);
    let manifest = write_manifest(&dir, s, chapter);
    let plan = load_plan(&manifest).unwrap_or_else(|d| panic!("{} problems", d.len()));
    let out = dir.join("out");
    // The warm-up prompt is another chapter's: the run's first prompt must not be cached.
    let warm_dir = dir.join("warm-up");
    std::fs::create_dir_all(warm_dir.join("out")).expect("warm-up folder");
    let warm_manifest = write_manifest(&warm_dir, s, chapter + 500);
    let mut warm = load_plan(&warm_manifest).unwrap_or_else(|d| panic!("{} problems", d.len()));
    warm.jobs.truncate(1);
    let rt = super::runtime();
    let http = http_client();
    rt.block_on(prepare(&http, &url, &warm.jobs, &warm_dir.join("out")));
    let cpu_before = super::cpu_ms();
    let (wall, failed) = match client {
        "plasma-batch" => {
            super::run_plasma(&rt, plan, &manifest, out, std::slice::from_ref(&url), false)
        }
        REFERENCE => {
            std::fs::create_dir_all(&out).expect("out");
            let started = Instant::now();
            let failed = rt.block_on(all_at_once(&url, &plan.jobs, &out));
            (started.elapsed().as_secs_f64(), failed)
        }
        other => panic!("no client {other}"),
    };
    let cpu = super::cpu_ms() - cpu_before;
    let rss = super::peak_rss_kb();
    let ended = epoch_ms();
    let began = ended - (wall * 1000.0) as i64;
    let server = rt.block_on(server_times(&http, &url));
    rt.shutdown_background();
    println!(
        "REAL {wall} {failed} {} {} {} {} {cpu} {rss}",
        server.busy_ms,
        server.first_start.map_or(0, |t| t - began),
        server.last_end.map_or(0, |t| ended - t),
        match (server.first_start, server.last_end) {
            (Some(first), Some(last)) => last - first - server.busy_ms as i64,
            _ => 0,
        },
    );
}

/// Before a run: the server idle and in the same state for every run (see the module's
/// notes), its history cleared, the benchmark's old images removed.
async fn prepare(http: &reqwest::Client, url: &str, warm_up: &[Arc<Job>], warm_out: &Path) {
    for _ in 0..600 {
        let queue: Value = http
            .get(format!("{url}/queue"))
            .send()
            .await
            .expect("the server answers /queue")
            .json()
            .await
            .expect("/queue is JSON");
        let busy = ["queue_running", "queue_pending"]
            .iter()
            .any(|k| queue[k].as_array().is_some_and(|a| !a.is_empty()));
        if !busy {
            break;
        }
        // Someone else's prompts (or a previous child's) are still on the server.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ComfyUI's prompt worker runs Python's garbage collector after a prompt once 10 s have
    // passed since the last collection: 0.4-1 s in which nothing renders, falling into a
    // run or not by chance. `free_memory` has it collect now (and drop its caches and
    // models); the warm-up prompt, rendered after that, reloads what the run needs. A run
    // that lasts under 10 s then has no collection inside it.
    http.post(format!("{url}/free"))
        .json(&json!({"free_memory": true}))
        .send()
        .await
        .expect("POST /free");
    assert_eq!(
        all_at_once(url, warm_up, warm_out).await,
        0,
        "the warm-up prompt rendered"
    );
    http.post(format!("{url}/history"))
        .json(&json!({"clear": true}))
        .send()
        .await
        .expect("clear the history");
    if let Some(dir) = std::env::var_os(OUTPUT_ENV) {
        let ours = Path::new(&dir).join("plasma");
        if let Err(e) = std::fs::remove_dir_all(&ours)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("could not remove {}: {e}", ours.display());
        }
    }
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the server's history says about a run, in its own timestamps (ms since the epoch).
#[derive(Default)]
struct ServerTimes {
    /// Sum over the prompts of `execution_start` to `execution_success`.
    busy_ms: u64,
    first_start: Option<i64>,
    last_end: Option<i64>,
}

/// The history's prompts are this run's: it was cleared before.
async fn server_times(http: &reqwest::Client, url: &str) -> ServerTimes {
    let history: Value = match http.get(format!("{url}/history")).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Value::Null,
    };
    let mut times = ServerTimes::default();
    for entry in history.as_object().into_iter().flat_map(|h| h.values()) {
        let mut start = None;
        let mut end = None;
        for m in entry["status"]["messages"].as_array().into_iter().flatten() {
            let at = m[1]["timestamp"].as_u64();
            match m[0].as_str() {
                Some("execution_start") => start = at,
                Some("execution_success") => end = at,
                _ => {}
            }
        }
        if let (Some(start), Some(end)) = (start, end) {
            times.busy_ms += end.saturating_sub(start);
            let (start, end) = (start as i64, end as i64);
            times.first_start = Some(times.first_start.map_or(start, |t| t.min(start)));
            times.last_end = Some(times.last_end.map_or(end, |t| t.max(end)));
        }
    }
    times
}

/// A chapter of `s.jobs` jobs (pages of up to 100 variants); the trivial workflow is written
/// next to it.
fn write_manifest(dir: &Path, s: &RealScenario, chapter: u32) -> PathBuf {
    let workflow = if let Some(name) = s.workflow {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("workflows")
            .join(name)
    } else {
        let path = dir.join("trivial.json");
        std::fs::write(&path, TRIVIAL_WORKFLOW).expect("write the workflow");
        path
    };
    let per_page = 100.min(s.jobs);
    assert_eq!(s.jobs % per_page, 0, "whole pages");
    let mut text = format!(
        "[chapter]\nnumber = {chapter}\nseed = {chapter}\n\n[defaults]\nworkflow = '{}'\n\
         variants = {per_page}\nsteps = {}\nwidth = {}\nheight = {}\nsampler = \"euler\"\n",
        workflow.display(),
        s.steps,
        s.width,
        s.height
    );
    for page in 1..=s.jobs / per_page {
        let _ = write!(
            text,
            "\n[[pages]]\npage = {page}\nprompt = \"page {page}: a lighthouse at dusk, ink\"\n"
        );
    }
    let path = dir.join("chapter.toml");
    std::fs::write(&path, text).expect("write the manifest");
    path
}

/// What the socket reader tells the main loop: a prompt ended, with its images (from its
/// `executed` messages) or an error.
struct Ended {
    index: usize,
    images: Vec<Value>,
    ok: bool,
}

/// The reference client: one socket (confirmed by its first `status` frame), every prompt
/// posted at once with an id chosen here, and each prompt's images, named by its `executed`
/// messages, fetched from `/view` and written (no fsync) as soon as its `executing` null
/// arrives. Returns the number of jobs without an image.
#[allow(
    clippy::too_many_lines,
    reason = "one client's whole protocol exchange, kept in one piece to read as a reference"
)]
async fn all_at_once(url: &str, jobs: &[Arc<Job>], out: &Path) -> usize {
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let client_id = uuid::Uuid::new_v4().to_string();
    let ws_url = format!(
        "{}/ws?clientId={client_id}",
        url.replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url)
        .await
        .expect("the socket opens");
    // The first frame (`status`) says the server has registered the socket.
    ws.next().await.expect("a first frame").expect("a frame");
    let ids: Vec<String> = jobs
        .iter()
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let index: std::collections::HashMap<String, usize> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| (id.clone(), n))
        .collect();
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut images: Vec<Vec<Value>> = vec![Vec::new(); index.len()];
        let mut errors = vec![false; index.len()];
        while let Some(Ok(frame)) = ws.next().await {
            let Message::Text(text) = frame else { continue };
            let Ok(message) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            let data = &message["data"];
            let Some(&n) = data["prompt_id"].as_str().and_then(|id| index.get(id)) else {
                continue;
            };
            match message["type"].as_str() {
                Some("executed") => {
                    if let Some(list) = data["output"]["images"].as_array() {
                        images[n].extend(list.iter().cloned());
                    }
                }
                Some("execution_error" | "execution_interrupted") => errors[n] = true,
                Some("executing") if data["node"].is_null() => {
                    let ended = Ended {
                        index: n,
                        images: std::mem::take(&mut images[n]),
                        ok: !errors[n],
                    };
                    if ended_tx.send(ended).is_err() {
                        break;
                    }
                }
                _ => {}
            }
        }
    });
    let poster = {
        let http = http.clone();
        let url = url.to_owned();
        let bodies: Vec<String> = jobs
            .iter()
            .zip(&ids)
            .map(|(job, id)| {
                let prompt = serde_json::to_string(&job.workflow).expect("JSON");
                format!(r#"{{"prompt":{prompt},"client_id":"{client_id}","prompt_id":"{id}"}}"#)
            })
            .collect();
        tokio::spawn(async move {
            let mut rejected = 0usize;
            for body in bodies {
                let answer = http
                    .post(format!("{url}/prompt"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                if !answer.is_ok_and(|a| a.status().is_success()) {
                    rejected += 1;
                }
            }
            rejected
        })
    };
    let mut downloads = tokio::task::JoinSet::new();
    let mut poster = Some(poster);
    // Prompts posted (or being posted) whose end has not come yet.
    let mut pending = jobs.len();
    let mut failed = 0;
    while pending > 0 || poster.is_some() {
        let end = tokio::select! {
            rejected = async { poster.as_mut().expect("running").await }, if poster.is_some() => {
                let rejected = rejected.expect("the poster does not panic");
                pending -= rejected;
                failed += rejected;
                poster = None;
                continue;
            }
            end = ended.recv() => end,
        };
        let Some(end) = end else { break };
        pending -= 1;
        if !end.ok || end.images.is_empty() {
            failed += 1;
            continue;
        }
        let http = http.clone();
        let url = url.to_owned();
        let path = out.join(format!("{}.png", jobs[end.index].key));
        downloads.spawn(async move {
            for image in end.images {
                let bytes = super::view_request(&http, &url, &image)
                    .send()
                    .await
                    .ok()?
                    .error_for_status()
                    .ok()?
                    .bytes()
                    .await
                    .ok()?;
                let path = path.clone();
                tokio::task::spawn_blocking(move || std::fs::write(path, bytes))
                    .await
                    .ok()?
                    .ok()?;
            }
            Some(())
        });
    }
    failed += pending;
    while let Some(done) = downloads.join_next().await {
        if !matches!(done, Ok(Some(()))) {
            failed += 1;
        }
    }
    reader.abort();
    failed
}
