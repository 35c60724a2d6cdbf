//! Opt-in: the same checks against a real ComfyUI 0.8.0. Each test skips (passes with a
//! message) unless `PLASMA_REAL_COMFY` names the server, e.g.
//!
//! ```sh
//! # a ComfyUI 0.8.0 on port 8188, with the two model files below
//! PLASMA_REAL_COMFY=http://127.0.0.1:8188 cargo test --test integration real_comfy -- --test-threads 1
//! ```
//!
//! The server must offer the checkpoint `AnythingXL_inkBase.safetensors` and the LoRA
//! `plasma_test_lora.safetensors` (`start.sh` makes tiny random-weight ones) and should
//! have nothing else to do meanwhile: the tests watch its queue and history. They hold
//! one lock, so they never overlap with each other. CI does not run them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plasma_batch::report::{ReportStatus, RunReport};
use plasma_batch::sim::SimConfig;
use plasma_batch::sim::record::{self, RecordOptions};
use serde_json::Value;

use super::sim_conformance::{Replay, SESSION, hooks, sim_for};
use super::support::{files_under, png_size, repo, sha256_file};

const CHECKPOINT: &str = "AnythingXL_inkBase.safetensors";
const LORA: &str = "plasma_test_lora.safetensors";
/// A real CPU render is slower than the simulator; a loaded machine slower still.
const DEADLINE: Duration = Duration::from_secs(300);

/// The tests share one server: one at a time.
pub static SERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's server, its turn on it, and a folder and marker of its own.
struct Case {
    url: String,
    _one: tokio::sync::MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    out: PathBuf,
    marker: String,
}

impl Case {
    /// `None` (with the reason printed) when the real-server tests are not wanted.
    async fn start(test: &str) -> Option<Case> {
        let url = real_comfy(test)?;
        let one = SERVER.lock().await;
        let dir = tempfile::tempdir().unwrap();
        Some(Case {
            url,
            _one: one,
            out: dir.path().join("out"),
            dir,
            marker: marker(),
        })
    }
}

/// The server's URL, or `None` (with the reason printed) when the tests are not wanted.
pub fn real_comfy(test: &str) -> Option<String> {
    match std::env::var("PLASMA_REAL_COMFY") {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().trim_end_matches('/').to_string()),
        _ => {
            eprintln!(
                "skipped {test}: set PLASMA_REAL_COMFY=http://127.0.0.1:8188 to run it against a real ComfyUI (README, \"Real ComfyUI tests\")"
            );
            None
        }
    }
}

async fn get(url: &str) -> Value {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{url}: not JSON: {e}"))
}

fn micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// Text unique to this test run: in every prompt, so its prompts can be told apart in the
/// server's queue, and nothing of an earlier run is cached.
fn marker() -> String {
    format!("plasma-real-{}", micros())
}

/// A chapter on the shipped workflows at 64x96: `pages` pages of `steps` steps, page 2 with
/// the test LoRA (when there is a page 2).
fn manifest(dir: &Path, marker: &str, pages: u16, steps: u32, checkpoint: &str) -> PathBuf {
    let mut text = format!(
        "[chapter]\nnumber = 7\ntitle = \"real ComfyUI\"\nseed = {}\n\n[defaults]\nworkflow = \"{}\"\nlora_workflow = \"{}\"\ncheckpoint = \"{checkpoint}\"\nsteps = {steps}\nwidth = 64\nheight = 96\n",
        micros() % 1_000_000_007,
        repo().join("workflows/txt2img.json").display(),
        repo().join("workflows/txt2img-lora.json").display(),
    );
    for page in 1..=pages {
        let _ = write!(
            text,
            "\n[[pages]]\npage = {page}\nprompt = \"panel {page}, a harbour at night, {marker}\"\n"
        );
        if page == 2 {
            let _ = writeln!(
                text,
                "lora = {{ name = \"{LORA}\", strength_model = 0.8, strength_clip = 0.7 }}"
            );
        }
    }
    let path = dir.join("chapter.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_cmd(manifest: &Path, out: &Path, url: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("plasma-batch"));
    cmd.arg("run")
        .arg(manifest)
        .args(["--server", url, "--out"])
        .arg(out)
        .args(extra)
        .env_remove("PLASMA_COMFY_URL")
        .env_remove("PLASMA_COMFY_TOKEN")
        .stdin(Stdio::null());
    cmd
}

/// `run --quiet` of `manifest` on the real server, which must exit 0 (stderr shown if not).
fn run_ok(manifest: &Path, out: &Path, url: &str) {
    let output = run_cmd(manifest, out, url, &["--quiet"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

fn report(out: &Path) -> RunReport {
    let dir = out.join("ch-07/reports");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    RunReport::read(paths.last().expect("a report")).unwrap()
}

/// Prompts in the server's queue (running, pending) whose graph contains `marker`.
async fn queued_with(url: &str, marker: &str) -> (usize, usize) {
    let q = get(&format!("{url}/queue")).await;
    let count = |k: &str| {
        q[k].as_array()
            .into_iter()
            .flatten()
            .filter(|e| e.to_string().contains(marker))
            .count()
    };
    (count("queue_running"), count("queue_pending"))
}

/// Poll until `check` holds (bounded): the real server offers no event for these.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The types of the messages the server recorded for a prompt (`/history`), once it has
/// its entry.
async fn history_messages(url: &str, prompt_id: &str) -> (String, Vec<String>) {
    let deadline = Instant::now() + DEADLINE;
    let entry = loop {
        let entry = get(&format!("{url}/history/{prompt_id}")).await[prompt_id].clone();
        if !entry.is_null() {
            break entry;
        }
        assert!(
            Instant::now() < deadline,
            "no history entry for {prompt_id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let status = entry["status"]["status_str"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let types = entry["status"]["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m[0].as_str().map(str::to_string))
        .collect();
    (status, types)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chapter_through_the_shipped_workflows_on_the_real_sampler() {
    let Some(case) = Case::start("chapter_through_the_shipped_workflows_on_the_real_sampler").await
    else {
        return;
    };
    let (url, out, marker) = (case.url.as_str(), case.out.as_path(), case.marker.as_str());
    let manifest = manifest(case.dir.path(), marker, 2, 3, CHECKPOINT);
    run_ok(&manifest, out, url);
    let report = report(out);
    assert_eq!(report.jobs.len(), 2);
    for job in &report.jobs {
        assert_eq!(
            job.status,
            ReportStatus::Succeeded,
            "{}: {:?}",
            job.key,
            job.error
        );
        assert_eq!(job.images.len(), 1, "{}", job.key);
        let path = out.join(&job.images[0].path);
        assert_eq!(
            sha256_file(&path),
            job.images[0].sha256,
            "{}",
            path.display()
        );
        assert_eq!(png_size(&path), (64, 96), "{}", path.display());
        // Rendered by the server's sampler, not taken from its cache.
        let prompt_id = job.prompt_id.as_deref().unwrap();
        let (status, types) = history_messages(url, prompt_id).await;
        assert_eq!(status, "success", "{}: {types:?}", job.key);
        let entry = get(&format!("{url}/history/{prompt_id}")).await;
        let graph = &entry[prompt_id]["prompt"][2];
        let classes: Vec<&str> = graph
            .as_object()
            .unwrap()
            .values()
            .filter_map(|n| n["class_type"].as_str())
            .collect();
        assert!(classes.contains(&"KSampler"), "{classes:?}");
        let lora: Vec<&Value> = graph
            .as_object()
            .unwrap()
            .values()
            .filter(|n| n["class_type"] == "LoraLoader")
            .collect();
        if job.page == 2 {
            assert_eq!(lora.len(), 1, "page 2 has a LoRA: {graph}");
            assert_eq!(lora[0]["inputs"]["lora_name"], LORA);
        } else {
            assert!(lora.is_empty(), "page {} has no LoRA: {graph}", job.page);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_interrupts_the_prompt_on_the_real_server() {
    let Some(case) = Case::start("timeout_interrupts_the_prompt_on_the_real_server").await else {
        return;
    };
    let (url, out, marker) = (case.url.as_str(), case.out.as_path(), case.marker.as_str());
    // 300 steps: half a minute or more on a CPU; the 2 s timeout (from `execution_start`)
    // ends it. (Not longer: a client that failed to interrupt leaves it running.)
    let manifest = manifest(case.dir.path(), marker, 1, 300, CHECKPOINT);
    let output = run_cmd(&manifest, out, url, &["--quiet", "--timeout", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let report = report(out);
    let job = &report.jobs[0];
    assert_eq!(job.status, ReportStatus::TimedOut, "{:?}", job.error);
    assert!(job.images.is_empty());
    let prompt_id = job.prompt_id.clone().expect("the prompt was posted");
    // Interrupted on the server, not left running: out of the queue, and its history says so.
    let (status, types) = history_messages(url, &prompt_id).await;
    assert_eq!(status, "error", "{types:?}");
    assert!(
        types.iter().any(|t| t == "execution_interrupted"),
        "{types:?}"
    );
    assert_eq!(queued_with(url, marker).await, (0, 0));
    let written = files_under(&out.join("ch-07/raw"));
    assert!(
        written.is_empty(),
        "written for a timed-out job: {written:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_of_a_real_run_leaves_the_server_queue_empty() {
    let Some(case) = Case::start("ctrl_c_of_a_real_run_leaves_the_server_queue_empty").await else {
        return;
    };
    let (url, out, marker) = (case.url.as_str(), case.out.as_path(), case.marker.as_str());
    // Long renders, two in flight: one running and one waiting on the server at the signal.
    let manifest = manifest(case.dir.path(), marker, 4, 300, CHECKPOINT);
    let mut child = run_cmd(&manifest, out, url, &["--quiet", "--in-flight", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(
        "one of the run's prompts running and one pending",
        || async move { queued_with(url, marker).await == (1, 1) },
    )
    .await;
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + DEADLINE;
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the run did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(exit.code(), Some(130), "{stderr}");
    // Deleted from the queue before the run exits; the running one stops at its next layer.
    assert_eq!(
        queued_with(url, marker).await.1,
        0,
        "a prompt was left pending"
    );
    eventually("the interrupted prompt off the queue", || async move {
        queued_with(url, marker).await == (0, 0)
    })
    .await;
    let report = report(out);
    let posted: Vec<&str> = report
        .jobs
        .iter()
        .filter_map(|j| j.prompt_id.as_deref())
        .collect();
    assert_eq!(posted.len(), 2, "{stderr}");
    let mut interrupted = 0;
    for prompt_id in posted {
        let entry = get(&format!("{url}/history/{prompt_id}")).await;
        if let Some(entry) = entry.get(prompt_id) {
            let text = entry["status"]["messages"].to_string();
            assert!(
                text.contains("execution_interrupted"),
                "{prompt_id}: {text}"
            );
            interrupted += 1;
        }
    }
    // The running one was interrupted; the pending one was deleted and never ran.
    assert_eq!(interrupted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_checkpoint_is_stopped_by_preflight() {
    let Some(case) = Case::start("missing_checkpoint_is_stopped_by_preflight").await else {
        return;
    };
    let (url, out, marker) = (case.url.as_str(), case.out.as_path(), case.marker.as_str());
    let manifest = manifest(
        case.dir.path(),
        marker,
        1,
        3,
        "plasma_no_such_checkpoint.safetensors",
    );
    let output = run_cmd(&manifest, out, url, &["--quiet"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(plasma_batch::exit_codes::PREFLIGHT_FAILED),
        "{stderr}"
    );
    assert!(
        stderr.contains("plasma_no_such_checkpoint.safetensors"),
        "{stderr}"
    );
    assert!(stderr.contains(url), "the server is not named: {stderr}");
    assert!(
        stderr.contains(CHECKPOINT),
        "the server's checkpoints are not listed: {stderr}"
    );
    // Nothing was posted.
    assert_eq!(queued_with(url, marker).await, (0, 0));
    let history = get(&format!("{url}/history")).await;
    assert!(
        !history.to_string().contains(marker),
        "a prompt reached the server"
    );
}

/// The names the server offers for a list input (its models).
async fn choices(url: &str, class: &str, input: &str) -> Vec<String> {
    let info = get(&format!("{url}/object_info/{class}")).await;
    info[class]["input"]["required"][input][0]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// The recorder's scenarios, recorded live from the real server and replayed against the
/// simulator at once: the conformance check on today's server, not on the fixtures. 07 is
/// left out (it kills the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_scenarios_match_the_simulator() {
    let Some(url) = real_comfy("recorder_scenarios_match_the_simulator") else {
        return;
    };
    let _one = SERVER.lock().await;
    let models = SimConfig {
        step_ms: 0,
        checkpoints: choices(&url, "CheckpointLoaderSimple", "ckpt_name").await,
        loras: choices(&url, "LoraLoader", "lora_name").await,
        ..SimConfig::default()
    };
    let opts = RecordOptions {
        tag: (micros() / 1_000_000 % 1_000_000) as u32,
        ..RecordOptions::default()
    };
    let session: Vec<&str> = SESSION
        .iter()
        .copied()
        .filter(|s| *s != "07-server-crash-restart")
        .collect();
    let mut recorded = Vec::new();
    for name in session.iter().chain(&[
        "08-txt2img-sampler",
        "09-upload-img2img",
        "10-interrupt-in-node",
        "11-node-classes",
    ]) {
        let lines = record::record(&url, name, &opts)
            .await
            .unwrap_or_else(|e| panic!("recording from {url}: {e}"));
        recorded.push((*name, lines));
    }
    let mut r = Replay::new(sim_for(session[0], models.clone())).await;
    for (name, lines) in &recorded[..session.len()] {
        r.run(&format!("{name} (live)"), lines, hooks(name)).await;
    }
    drop(r);
    for (name, lines) in &recorded[session.len()..] {
        let mut r = Replay::new(sim_for(name, models.clone())).await;
        r.run(&format!("{name} (live)"), lines, hooks(name)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unedited_export_with_bindings_and_a_lora_stack_on_the_real_server() {
    let test = "an_unedited_export_with_bindings_and_a_lora_stack_on_the_real_server";
    let Some(case) = Case::start(test).await else {
        return;
    };
    let (url, out, marker) = (case.url.as_str(), case.out.as_path(), case.marker.as_str());
    let workflow = repo().join("workflows/exported-sd15.json");
    let manifest = case.dir.path().join("chapter.toml");
    std::fs::write(
        &manifest,
        format!(
            "[chapter]\nnumber = 7\n\n[defaults]\nworkflow = \"{w}\"\ncheckpoint = \"{CHECKPOINT}\"\nsteps = 3\nwidth = 64\nheight = 96\n\n\
             [bind.\"{w}\"]\nprompt = \"6.text\"\nseed = \"KSampler.seed\"\nsteps = \"KSampler.steps\"\n\
             checkpoint = \"Load Checkpoint.ckpt_name\"\nwidth = \"Empty Latent Image.width\"\nheight = \"Empty Latent Image.height\"\n\n\
             [[pages]]\npage = 1\nprompt = \"a harbour, {marker}\"\n\
             loras = [{{ name = \"{LORA}\", strength_model = 0.5 }}, {{ name = \"{LORA}\", strength_clip = 0.25 }}, {{ name = \"{LORA}\", strength_model = -1 }}]\n",
            w = workflow.display()
        ),
    )
    .unwrap();
    run_ok(&manifest, out, url);
    let job = &report(out).jobs[0];
    assert_eq!(job.status, ReportStatus::Succeeded, "{:?}", job.error);
    assert_eq!(png_size(&out.join(&job.images[0].path)), (64, 96));
    // The server ran the graph sent: three LoraLoaders, titles and all.
    let prompt_id = job.prompt_id.as_deref().unwrap();
    let entry = get(&format!("{url}/history/{prompt_id}")).await;
    let graph = &entry[prompt_id]["prompt"][2];
    let strengths: Vec<(f64, f64)> = (1..=3)
        .map(|n| {
            let inputs = &graph[format!("plasma_lora_{n}")]["inputs"];
            (
                inputs["strength_model"].as_f64().unwrap(),
                inputs["strength_clip"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(strengths, [(0.5, 1.0), (1.0, 0.25), (-1.0, 1.0)]);
    assert_eq!(graph["3"]["inputs"]["model"][0], "plasma_lora_3");
    assert_eq!(graph["6"]["_meta"]["title"], "CLIP Text Encode (Prompt)");
}

/// The size of a PNG given as bytes.
fn png_bytes_size(bytes: &[u8]) -> (u32, u32) {
    let reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("a PNG");
    (reader.info().width, reader.info().height)
}

/// The shipped templates beyond txt2img, filled with small values (64x64, 3 steps, the
/// server's tiny checkpoint for every checkpoint name), accepted by the real server and
/// rendered through its sampler: every sampler of each graph reports its steps, and the
/// saved PNG has the size the template's values give. A sweep of two `denoise` values and
/// two CLIP layers, as a manifest would send them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_templates_render_on_the_real_sampler() {
    use super::sim_support::{Ws, submit};
    use super::templates::{TEMPLATES, expected_size, prepared, values};
    use serde_json::json;

    let Some(case) = Case::start("shipped_templates_render_on_the_real_sampler").await else {
        return;
    };
    let (url, marker) = (case.url.as_str(), case.marker.as_str());
    let client = format!("plasma-templates-{}", micros());
    let mut ws = Ws::connect(url, &client).await;
    let mut runs: Vec<(&str, Vec<(&str, Value)>)> =
        TEMPLATES.iter().map(|name| (*name, vec![])).collect();
    for denoise in [0.4, 0.6] {
        runs.push(("sdxl-two-pass.json", vec![("denoise", json!(denoise))]));
    }
    runs.push(("txt2img-clip-skip.json", vec![("clip_skip", json!(-1))]));
    for (i, (name, vars)) in runs.iter().enumerate() {
        let values = values(
            CHECKPOINT,
            &format!("plasma_templates/{i}"),
            &format!("a harbour at night, {marker} {i}"),
            vars,
        );
        let prompt = prepared(name, &values);
        let pid = submit(url, Some(&client), &prompt).await;
        let frames = ws.until_done(&pid).await;
        let (status, types) = history_messages(url, &pid).await;
        assert_eq!(status, "success", "{name} {vars:?}: {types:?}");
        for (id, node) in prompt.as_object().unwrap() {
            if node["class_type"] == "KSampler" {
                let steps = frames
                    .iter()
                    .filter(|f| f["type"] == "progress" && f["data"]["node"] == id.as_str())
                    .count();
                assert_eq!(steps, 3, "{name}: sampler {id} ran {steps} steps");
            }
        }
        let entry = get(&format!("{url}/history/{pid}")).await;
        let image = &entry[&pid]["outputs"]["9"]["images"][0];
        let view = format!(
            "{url}/view?filename={}&subfolder={}&type=output",
            image["filename"].as_str().unwrap(),
            image["subfolder"].as_str().unwrap()
        );
        let bytes = reqwest::get(&view).await.unwrap().bytes().await.unwrap();
        assert_eq!(
            png_bytes_size(&bytes),
            expected_size(name, &values),
            "{name} {vars:?}"
        );
    }
}

/// The same templates through a manifest (its variables and a sweep of `denoise`) and the
/// real binary, rendered by the real server's sampler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chapter_of_the_templates_with_variables_on_the_real_sampler() {
    use super::templates::{chapter_manifest, check_chapter};

    let Some(case) =
        Case::start("chapter_of_the_templates_with_variables_on_the_real_sampler").await
    else {
        return;
    };
    let (url, out, marker) = (case.url.as_str(), case.out.as_path(), case.marker.as_str());
    let manifest = chapter_manifest(case.dir.path(), CHECKPOINT, marker);
    run_ok(&manifest, out, url);
    for job in &check_chapter(out).jobs {
        let prompt_id = job.prompt_id.as_deref().unwrap();
        let (status, types) = history_messages(url, prompt_id).await;
        assert_eq!(status, "success", "{}: {types:?}", job.key);
    }
}

/// `manifests/ch02.toml` as shipped (small sizes and few steps, the server's tiny checkpoint
/// and test LoRA standing in for every model name), through the real sampler: every job
/// succeeds, and the graphs the server ran are the ones the features make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ch02_renders_on_the_real_sampler() {
    use super::shipped::{ch02_copy, ch02_report, check_ch02_graphs};

    let Some(case) = Case::start("ch02_renders_on_the_real_sampler").await else {
        return;
    };
    let (url, out, marker) = (case.url.as_str(), case.out.as_path(), case.marker.as_str());
    let manifest = ch02_copy(case.dir.path(), |t| {
        t.replace("steps = 8", "steps = 3")
            .replace("width = 512", "width = 64")
            .replace("height = 768", "height = 96")
            .replace(
                "negative = \"lowres, blurry, text\"",
                &format!("negative = \"lowres, {marker}\"\ncheckpoint = \"{CHECKPOINT}\""),
            )
            .replace("inkline_v2.safetensors", LORA)
            .replace("screentone_v1.safetensors", LORA)
    });
    run_ok(&manifest, out, url);
    let report = ch02_report(out);
    for job in report["jobs"].as_array().unwrap() {
        let prompt_id = job["prompt_id"].as_str().unwrap();
        let (status, types) = history_messages(url, prompt_id).await;
        assert_eq!(status, "success", "{}: {types:?}", job["key"]);
    }
    // Both LoRAs are the same file on this server: the chain check goes by order of names.
    let mut report = report;
    for job in report["jobs"].as_array_mut().unwrap() {
        let mut n = 0;
        for node in job["prompt"].as_object_mut().unwrap().values_mut() {
            if node["class_type"] == "LoraLoader" {
                n += 1;
                node["inputs"]["lora_name"] = if n == 1 {
                    "inkline_v2.safetensors".into()
                } else {
                    "screentone_v1.safetensors".into()
                };
            }
        }
    }
    check_ch02_graphs(&report);
}

/// `workflows/img2img.json` through the real sampler: each input image is uploaded under its
/// content's name, `LoadImage` reads it, `VAEEncode` keeps its size, and the server's copy
/// is the file's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn img2img_template_with_uploaded_inputs_on_the_real_sampler() {
    let Some(case) = Case::start("img2img_template_with_uploaded_inputs_on_the_real_sampler").await
    else {
        return;
    };
    let (url, out, marker) = (case.url.as_str(), case.out.as_path(), case.marker.as_str());
    let refs = repo().join("manifests/refs");
    let text = format!(
        "[chapter]\nnumber = 7\n\n[defaults]\nworkflow = \"{}\"\ncheckpoint = \"{CHECKPOINT}\"\nsteps = 2\nvars = {{ denoise = 0.6 }}\n\n\
         [[pages]]\npage = 1\nprompt = \"after the pose sketch, {marker}\"\nimages = {{ source = \"{}\" }}\nvars = {{ denoise = 0.85 }}\n\n\
         [[pages]]\npage = 2\nprompt = \"second pass, {marker}\"\nimages = {{ source = \"{}\" }}\n",
        repo().join("workflows/img2img.json").display(),
        refs.join("pose-03.png").display(),
        refs.join("salt-flat.png").display(),
    );
    let manifest = case.dir.path().join("chapter.toml");
    std::fs::write(&manifest, text).unwrap();
    run_ok(&manifest, out, url);
    let report = report(out);
    assert_eq!(report.jobs.len(), 2);
    for (job, (file, size)) in report
        .jobs
        .iter()
        .zip([("pose-03.png", (64, 96)), ("salt-flat.png", (96, 64))])
    {
        assert_eq!(
            job.status,
            ReportStatus::Succeeded,
            "{}: {:?}",
            job.key,
            job.error
        );
        let path = out.join(&job.images[0].path);
        assert_eq!(png_size(&path), size, "{}", path.display());
        let hash = sha256_file(&refs.join(file));
        let name = format!("{}.png", &hash[..32]);
        let prompt_id = job.prompt_id.as_deref().unwrap();
        let (status, types) = history_messages(url, prompt_id).await;
        assert_eq!(status, "success", "{}: {types:?}", job.key);
        let entry = get(&format!("{url}/history/{prompt_id}")).await;
        let graph = &entry[prompt_id]["prompt"][2];
        assert_eq!(graph["10"]["inputs"]["image"], format!("plasma/{name}"));
        assert_eq!(graph["11"]["class_type"], "VAEEncode");
        // The server's copy is the file's bytes.
        let copy = reqwest::get(format!(
            "{url}/view?filename={name}&subfolder=plasma&type=input"
        ))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
        let copy_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&copy));
        assert_eq!(copy_hash, hash, "{name}");
    }
}

/// `workflows/pose-reference.json` through the real sampler: the pose sketch and the character
/// sheet are uploaded, brought to the page's size by `ImageScale`, blended by the real
/// `ImageBlend`, and the image saved has the page's size.
#[tokio::test]
async fn pose_reference_template_blends_uploaded_inputs_on_the_real_sampler() {
    let Some(case) =
        Case::start("pose_reference_template_blends_uploaded_inputs_on_the_real_sampler").await
    else {
        return;
    };
    let (url, out, marker) = (case.url.as_str(), case.out.as_path(), case.marker.as_str());
    let refs = repo().join("manifests/refs");
    let text = format!(
        "[chapter]\nnumber = 7\n\n[defaults]\nworkflow = \"{}\"\ncheckpoint = \"{CHECKPOINT}\"\nwidth = 72\nheight = 96\nsteps = 2\n\
         vars = {{ denoise = 0.7, pose_weight = 0.35 }}\n\n\
         [[pages]]\npage = 1\nprompt = \"Mira, after the pose sketch, {marker}\"\n\
         images = {{ pose = \"{}\", reference = \"{}\" }}\n",
        repo().join("workflows/pose-reference.json").display(),
        refs.join("pose-03.png").display(),
        refs.join("mira-sheet.png").display(),
    );
    let manifest = case.dir.path().join("chapter.toml");
    std::fs::write(&manifest, text).unwrap();
    run_ok(&manifest, out, url);
    let report = report(out);
    assert_eq!(report.jobs.len(), 1);
    let job = &report.jobs[0];
    assert_eq!(
        job.status,
        ReportStatus::Succeeded,
        "{}: {:?}",
        job.key,
        job.error
    );
    assert_eq!(png_size(&out.join(&job.images[0].path)), (72, 96));
    let prompt_id = job.prompt_id.as_deref().unwrap();
    let (status, types) = history_messages(url, prompt_id).await;
    assert_eq!(status, "success", "{types:?}");
    let entry = get(&format!("{url}/history/{prompt_id}")).await;
    let graph = &entry[prompt_id]["prompt"][2];
    for (node, file) in [("10", "pose-03.png"), ("12", "mira-sheet.png")] {
        let hash = sha256_file(&refs.join(file));
        assert_eq!(
            graph[node]["inputs"]["image"],
            format!("plasma/{}.png", &hash[..32])
        );
    }
    assert_eq!(graph["15"]["class_type"], "ImageBlend");
    assert_eq!(graph["15"]["inputs"]["blend_factor"], 0.35);
}
