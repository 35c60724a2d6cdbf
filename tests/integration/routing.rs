//! Routing by what each server has, through the real binary against `plasma-batch sim`
//! children with different models: a job goes only to servers that have what it needs,
//! jobs no live server can take fail with why (the rest run), `--all-or-nothing` keeps the
//! old preflight, and a server down at the start is skipped and joins when it comes back.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::ci_formats::run;
use crate::faults_outage::SimProcess;
use crate::faults_process::Runner;
use crate::support::*;

const INK: &str = "AnythingXL_inkBase.safetensors";
const XL: &str = "sd_xl_base_1.0.safetensors";

/// A chapter (7) whose page N uses `checkpoints[N-1]`, one variant each.
fn manifest_with_checkpoints(dir: &Path, checkpoints: &[&str]) -> PathBuf {
    let mut text = format!(
        "[chapter]\nnumber = 7\nseed = 5\n\n[defaults]\nworkflow = \"{}\"\nsteps = 3\nwidth = 64\nheight = 96\n",
        repo().join("workflows/txt2img.json").display()
    );
    for (n, checkpoint) in checkpoints.iter().enumerate() {
        let page = n + 1;
        let _ = write!(
            text,
            "\n[[pages]]\npage = {page}\nprompt = \"panel {page}\"\ncheckpoint = \"{checkpoint}\"\n"
        );
    }
    let path = dir.join("routed.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn report_of(output: &std::process::Output) -> serde_json::Value {
    let printed: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {output:?}"));
    let path = printed["report"].as_str().unwrap();
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// job key -> (status, server, error message)
fn jobs_of(report: &serde_json::Value) -> BTreeMap<String, (String, String, String)> {
    report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["key"].as_str().unwrap().to_owned(),
                (
                    j["status"].as_str().unwrap().to_owned(),
                    j["server"].as_str().unwrap_or("").to_owned(),
                    j["error"]["message"].as_str().unwrap_or("").to_owned(),
                ),
            )
        })
        .collect()
}

#[test]
fn each_job_goes_to_a_server_with_its_model_and_one_no_server_has_fails_with_why() {
    let ink = SimProcess::start(&["--step-ms", "1", "--checkpoints", INK]);
    let xl = SimProcess::start(&["--step-ms", "1", "--checkpoints", XL]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest_with_checkpoints(dir.path(), &[INK, XL, "rare.safetensors", INK]);
    let out = dir.path().join("out");
    let servers = ["--server", xl.url.as_str(), "--json", "--junit"];
    let junit = dir.path().join("junit.xml");
    let mut extra: Vec<&str> = servers.to_vec();
    extra.push(junit.to_str().unwrap());
    let output = run(&manifest, &out, &ink.url, &extra);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report = report_of(&output);
    crate::report_schema::assert_valid(&crate::report_schema::validator(), &report);
    let jobs = jobs_of(&report);
    assert_eq!(jobs["ch07_p001_s1"].0, "succeeded");
    assert_eq!(
        jobs["ch07_p001_s1"].1, ink.url,
        "only the ink server has it"
    );
    assert_eq!(jobs["ch07_p004_s1"].1, ink.url);
    assert_eq!(jobs["ch07_p002_s1"].0, "succeeded");
    assert_eq!(jobs["ch07_p002_s1"].1, xl.url, "only the XL server has it");
    let (status, server, message) = &jobs["ch07_p003_s1"];
    assert_eq!((status.as_str(), server.as_str()), ("failed", ""));
    assert_eq!(
        report["jobs"][2]["error"]["kind"], "unroutable",
        "{report:#}"
    );
    for url in [&ink.url, &xl.url] {
        assert!(
            message.contains("\"rare.safetensors\" is not available"),
            "{message}"
        );
        assert!(
            message.contains(url.as_str()),
            "each server's reason: {message}"
        );
    }
    // The report says which server could take which jobs.
    let routing = |n: usize| &report["servers"][n]["routing"];
    assert_eq!(report["servers"][0]["url"], ink.url.as_str());
    assert_eq!(routing(0)["state"], "up");
    assert_eq!(routing(0)["checked"], 4);
    let refused = |n: usize| -> Vec<String> {
        routing(n)["cannot_take"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["jobs"].as_array().unwrap().iter())
            .map(|k| k.as_str().unwrap().to_owned())
            .collect()
    };
    let mut ink_refused = refused(0);
    ink_refused.sort();
    assert_eq!(ink_refused, ["ch07_p002_s1", "ch07_p003_s1"]);
    let mut xl_refused = refused(1);
    xl_refused.sort();
    assert_eq!(xl_refused, ["ch07_p001_s1", "ch07_p003_s1", "ch07_p004_s1"]);
    // Nothing the XL server lacks was posted to it.
    assert_eq!(xl.stats()["prompts_accepted"], 1);
    assert_eq!(xl.stats()["prompts_rejected"], 0);
    assert_eq!(ink.stats()["prompts_rejected"], 0);
    // The JUnit failure carries the reason too.
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("type=\"unroutable\""), "{xml}");
}

#[test]
fn all_or_nothing_stops_before_anything_runs_when_one_job_has_no_server() {
    let ink = SimProcess::start(&["--step-ms", "1", "--checkpoints", INK]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest_with_checkpoints(dir.path(), &[INK, XL]);
    let out = dir.path().join("out");
    let output = run(&manifest, &out, &ink.url, &["--all-or-nothing"]);
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(XL) && stderr.contains(&ink.url), "{stderr}");
    assert_eq!(ink.stats()["prompts_accepted"], 0, "nothing ran");

    // Without the flag the page that can run, runs; the other fails with why.
    let output = run(&manifest, &out, &ink.url, &["--json"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let jobs = jobs_of(&report_of(&output));
    assert_eq!(jobs["ch07_p001_s1"].0, "succeeded");
    assert_eq!(jobs["ch07_p002_s1"].0, "failed");
    assert!(jobs["ch07_p002_s1"].2.contains(XL), "{jobs:?}");
}

#[test]
fn a_server_down_at_the_start_is_skipped_with_a_warning_while_another_is_up() {
    let up = SimProcess::start(&["--step-ms", "1"]);
    let down = unused_url();
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 2, 1, "");
    let out = dir.path().join("out");
    let output = crate::ci_formats::bin()
        .arg("run")
        .arg(&manifest)
        .args(["--server", &up.url, "--server", &down, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "warn {down} is unreachable at the start: skipped for now, tried again during the run"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("route {} can take 2 of 2 jobs", up.url)),
        "{stderr}"
    );
}

#[test]
fn a_server_down_at_the_start_joins_the_run_when_it_comes_back() {
    // The first server is slow (about 0.3 s a job), so jobs are still waiting when the
    // second one, down at the start, comes up on its port.
    let slow = SimProcess::start(&["--step-ms", "100"]);
    let port = unused_url().rsplit(':').next().unwrap().to_owned();
    let late_url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_manifest(dir.path(), 12, 1, "");
    let out = dir.path().join("out");
    let late_for_args = late_url.clone();
    let mut runner = Runner::start_with(&manifest, &out, &slow.url, move |mut argv| {
        argv.extend([
            "--server".to_owned(),
            late_for_args,
            "--in-flight".to_owned(),
            "1".to_owned(),
        ]);
        argv
    });
    runner.wait_line(&format!("warn {late_url} is unreachable at the start"));
    let late = SimProcess::start(&["--step-ms", "1", "--port", &port]);
    runner.wait_line(&format!("route {late_url} joined the run: it can take"));
    let (code, stderr) = runner.wait();
    assert_eq!(code, Some(0), "{stderr}");
    let report_path = std::fs::read_dir(out.join("ch-07/reports"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_path).unwrap()).unwrap();
    crate::report_schema::assert_valid(&crate::report_schema::validator(), &report);
    assert_eq!(report["servers"][1]["routing"]["state"], "joined");
    let on_late = jobs_of(&report)
        .values()
        .filter(|(status, server, _)| status == "succeeded" && *server == late_url)
        .count();
    assert!(
        on_late >= 1,
        "the server that came back took jobs: {stderr}"
    );
    assert!(late.stats()["prompts_accepted"].as_u64().unwrap() >= 1);
}

#[test]
fn jobs_only_a_server_gone_for_good_could_take_fail_with_why_and_the_rest_run() {
    // The ink server crashes on its first prompt and stays away past the outage window; the
    // XL server cannot take its jobs, so they fail (they must not wait for ever), while the
    // XL page renders.
    let ink = SimProcess::start(&[
        "--step-ms",
        "1",
        "--checkpoints",
        INK,
        "--fault",
        "crash-after:1:60000",
    ]);
    let xl = SimProcess::start(&["--step-ms", "1", "--checkpoints", XL]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest_with_checkpoints(dir.path(), &[INK, INK, XL]);
    let out = dir.path().join("out");
    let output = run(
        &manifest,
        &out,
        &ink.url,
        &["--server", &xl.url, "--outage-window", "1", "--json"],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report = report_of(&output);
    let jobs = jobs_of(&report);
    assert_eq!(jobs["ch07_p003_s1"].0, "succeeded", "{jobs:?}");
    assert_eq!(jobs["ch07_p003_s1"].1, xl.url);
    for key in ["ch07_p001_s1", "ch07_p002_s1"] {
        let (status, _, message) = &jobs[key];
        assert_eq!(status, "failed", "{jobs:?}");
        assert!(
            message.contains(&format!("{} was unreachable", ink.url)),
            "{message}"
        );
        assert!(
            message.contains(&format!("\"{INK}\" is not available")) && message.contains(&xl.url),
            "{message}"
        );
    }
    assert_eq!(xl.stats()["prompts_rejected"], 0);
}
