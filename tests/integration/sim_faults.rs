//! One test per `--fault` (docs/simulator.md), each showing the fault happening over real
//! loopback HTTP and WebSocket.

use std::time::{Duration, Instant};

use plasma_batch::sim::{Fault, Sim, SimConfig};
use serde_json::json;

use super::sim_support::*;
use crate::support::TestSim;

async fn sim_with(faults: &[&str]) -> TestSim {
    let faults = faults.iter().map(|f| f.parse::<Fault>().unwrap()).collect();
    TestSim::with_config(SimConfig { faults, ..quick() }).await
}

async fn wait_until_up(sim: &Sim) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(sim.addr()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "simulator never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn drop_ws_cuts_every_connection_after_n_frames() {
    let sim = sim_with(&["drop-ws:3"]).await;
    let base = sim.url();
    for round in 0..2 {
        let mut ws = Ws::connect(&base, "d").await;
        submit(&base, Some("d"), &empty_save("drop", round)).await;
        let mut frames = 0;
        let why = loop {
            match ws.next().await {
                Frame::Closed(why) => break why,
                _ => frames += 1,
            }
        };
        assert_eq!(frames, 3, "round {round}");
        assert!(
            why.contains("without closing handshake"),
            "not an abrupt drop: {why}"
        );
    }
}

#[tokio::test]
async fn drop_ws_once_cuts_only_the_first_connection() {
    let sim = sim_with(&["drop-ws-once:1"]).await;
    let mut first = Ws::connect(&sim.url(), "a").await;
    first.next().await;
    assert!(matches!(first.next().await, Frame::Closed(_)));
    let mut second = Ws::connect(&sim.url(), "a").await;
    second.next_json().await;
    let pid = submit(&sim.url(), Some("a"), &empty_save("once", 1)).await;
    second.until_done(&pid).await;
}

#[tokio::test]
async fn silent_ws_stops_frames_while_http_works() {
    let sim = sim_with(&["silent-ws:1"]).await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "z").await;
    ws.next_json().await;
    let pid = submit(&base, Some("z"), &empty_save("silent", 1)).await;
    let entry = wait_history(&base, &pid).await;
    assert_eq!(entry["status"]["status_str"], "success");
    assert!(
        ws.next_within(Duration::from_millis(150)).await.is_none(),
        "a silent socket sent a frame"
    );
}

#[tokio::test]
async fn crash_after_n_prompts_loses_everything_and_comes_back_on_the_same_port() {
    let sim = sim_with(&["crash-after:2:200"]).await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "c").await;
    let first = submit(&base, Some("c"), &empty_save("c", 1)).await;
    ws.until_done(&first).await;
    // The first prompt finished; the crash comes while the second runs (its `executing`
    // may or may not get out before the connection dies).
    submit(&base, Some("c"), &empty_save("c", 2)).await;
    ws.closed().await;
    assert!(
        http()
            .get(format!("{base}/queue"))
            .send()
            .await
            .unwrap_err()
            .is_connect(),
        "still listening while down"
    );
    wait_until_up(&sim).await;
    let mut ws = Ws::connect(&base, "c").await;
    assert_eq!(
        ws.next_json().await["data"]["status"]["exec_info"]["queue_remaining"],
        0
    );
    assert_eq!(
        get_json(&base, &format!("/history/{first}")).await.1,
        json!({})
    );
    assert_eq!(
        get_json(&base, "/queue").await.1,
        json!({"queue_running": [], "queue_pending": []})
    );
    assert_eq!(sim.stats().crashes, 1);
    // `number` restarts at 0 and the file counter continues from disk.
    let (_, resp) = post_json(
        &base,
        "/prompt",
        &json!({"prompt": empty_save("c", 3), "client_id": "c"}),
    )
    .await;
    assert_eq!(resp["number"], 0);
    let pid = resp["prompt_id"].as_str().unwrap().to_string();
    let frames = ws.until_done(&pid).await;
    let executed = frames.iter().find(|f| f["type"] == "executed").unwrap();
    assert_eq!(
        executed["data"]["output"]["images"][0]["filename"],
        "c_00002_.png"
    );
}

#[tokio::test]
async fn crash_every_n_prompts_and_crash_now() {
    let sim = sim_with(&["crash-every:1:0"]).await;
    let base = sim.url();
    for round in 1..=2 {
        let mut ws = Ws::connect(&base, "e").await;
        submit(&base, Some("e"), &empty_save("e", round)).await;
        ws.closed().await;
        wait_until_up(&sim).await;
        assert_eq!(sim.stats().crashes, u64::from(round));
    }
    // Crashed on demand, without a prompt.
    let plain = TestSim::with_config(quick()).await.idle_ok();
    let mut ws = Ws::connect(&plain.url(), "n").await;
    ws.next_json().await;
    plain.crash_now(Duration::from_millis(100));
    ws.closed().await;
    wait_until_up(&plain).await;
    assert_eq!(plain.stats().crashes, 1);
}

#[tokio::test]
async fn prompt_500_on_the_nth_request() {
    let sim = sim_with(&["prompt-500:2"]).await;
    let base = sim.url();
    let body = json!({"prompt": empty_save("f", 1)});
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(post_json(&base, "/prompt", &body).await.0);
    }
    assert_eq!(got, [200, 500, 200]);
}

#[tokio::test]
async fn prompt_500_rate_is_seeded() {
    let mut patterns = Vec::new();
    for _ in 0..2 {
        let sim = sim_with(&["prompt-500-rate:0.5"]).await;
        let mut codes = Vec::new();
        for _ in 0..20 {
            codes.push(
                post_json(
                    &sim.url(),
                    "/prompt",
                    &json!({"prompt": empty_save("r", 1)}),
                )
                .await
                .0,
            );
        }
        patterns.push(codes);
    }
    assert_eq!(patterns[0], patterns[1], "same seed, same failures");
    let failures = patterns[0].iter().filter(|c| **c == 500).count();
    assert!((3..=17).contains(&failures), "{failures} of 20 failed");
}

#[tokio::test]
async fn lose_accepts_a_prompt_that_never_runs() {
    let sim = sim_with(&["lose:1"]).await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "l").await;
    ws.next_json().await;
    let lost = submit(&base, Some("l"), &empty_save("lost", 1)).await;
    let kept = submit(&base, Some("l"), &empty_save("kept", 1)).await;
    let frames = ws.until_done(&kept).await;
    assert!(
        frames
            .iter()
            .all(|f| f["data"]["prompt_id"] != lost.as_str())
    );
    assert_eq!(
        get_json(&base, &format!("/history/{lost}")).await.1,
        json!({})
    );
    assert_eq!(
        get_json(&base, "/queue").await.1["queue_pending"],
        json!([])
    );
}

#[tokio::test]
async fn raise_makes_a_node_class_fail_like_comfyui() {
    let sim = sim_with(&["raise:KSampler"]).await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "r").await;
    let pid = submit(&base, Some("r"), &txt2img(1, 2, "x", "r")).await;
    let frames = ws.until_done(&pid).await;
    let t = types(&frames);
    assert_eq!(
        &t[t.len() - 3..],
        ["execution_error", "status", "executing"]
    );
    let err = &frames[frames.len() - 3]["data"];
    let keys: Vec<&String> = err.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "prompt_id",
            "node_id",
            "node_type",
            "executed",
            "exception_message",
            "exception_type",
            "traceback",
            "current_inputs",
            "current_outputs",
            "timestamp"
        ]
    );
    assert_eq!(err["node_type"], "KSampler");
    assert_eq!(err["exception_type"], "RuntimeError");
    assert!(err["exception_message"].as_str().unwrap().ends_with('\n'));
    assert_eq!(err["current_inputs"]["seed"], json!([1]));
    assert!(
        err["current_inputs"]["latent_image"][0]
            .as_str()
            .unwrap()
            .starts_with("{'samples': tensor(")
    );
    let entry = wait_history(&base, &pid).await;
    assert_eq!(entry["status"]["status_str"], "error");
    assert_eq!(entry["status"]["completed"], false);
}

#[tokio::test]
async fn hang_blocks_until_interrupted() {
    let sim = sim_with(&["hang:SaveImage"]).await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "h").await;
    let pid = submit(&base, Some("h"), &empty_save("hang", 1)).await;
    ws.until(|f| f["type"] == "executing" && f["data"]["node"] == "9")
        .await;
    assert!(
        ws.next_within(Duration::from_millis(100)).await.is_none(),
        "a hung node progressed"
    );
    post_json(&base, "/interrupt", &json!({})).await;
    let frames = ws.until_done(&pid).await;
    assert_eq!(frames[0]["type"], "execution_interrupted");
    assert_eq!(frames[0]["data"]["node_id"], "9");
    assert_eq!(frames[0]["data"]["executed"], json!(["1"]));
}

#[tokio::test]
async fn slow_node_history_and_view() {
    let sim = sim_with(&[
        "slow-node:EmptyImage:150",
        "slow-history:150",
        "slow-view:150",
    ])
    .await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "s").await;
    let pid = submit(&base, Some("s"), &empty_save("slow", 1)).await;
    ws.until(|f| f["type"] == "executing" && f["data"]["node"] == "1")
        .await;
    let started = Instant::now();
    ws.until(|f| f["type"] == "executing" && f["data"]["node"] == "9")
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(140),
        "EmptyImage was not slow"
    );
    ws.until_done(&pid).await;
    let entry = wait_history(&base, &pid).await;
    let t = Instant::now();
    get_json(&base, "/history").await;
    assert!(t.elapsed() >= Duration::from_millis(150));
    let name = entry["outputs"]["9"]["images"][0]["filename"]
        .as_str()
        .unwrap()
        .to_string();
    let t = Instant::now();
    let resp = http()
        .get(format!("{base}/view?filename={name}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn traversal_filenames_in_history() {
    let sim = sim_with(&["traversal-filenames"]).await;
    let base = sim.url();
    let pid = submit(&base, None, &empty_save("trav", 1)).await;
    let entry = wait_history(&base, &pid).await;
    let image = &entry["outputs"]["9"]["images"][0];
    assert_eq!(image["filename"], "../../trav_00001_.png");
    assert_eq!(image["subfolder"], "../..");
    assert!(
        sim.output_dir().join("trav_00001_.png").is_file(),
        "the real file is where it belongs"
    );
    let resp = http()
        .get(format!(
            "{base}/view?filename=../../trav_00001_.png&subfolder=../.."
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn view_truncated_and_not_png() {
    for (fault, check) in [("view-truncated", 0), ("view-not-png", 1)] {
        let sim = sim_with(&[fault]).await;
        let base = sim.url();
        let pid = submit(&base, None, &empty_save("v", 1)).await;
        wait_history(&base, &pid).await;
        let full = std::fs::read(sim.output_dir().join("v_00001_.png")).unwrap();
        let resp = http()
            .get(format!("{base}/view?filename=v_00001_.png"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-type"], "image/png");
        let body = resp.bytes().await.unwrap();
        if check == 0 {
            assert_eq!(body.len(), full.len() / 2);
        } else {
            assert!(!body.starts_with(b"\x89PNG"), "{fault}");
        }
    }
}

#[tokio::test]
async fn late_history_reproduces_issue_11540() {
    let sim = sim_with(&["late-history:300"]).await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "late").await;
    let pid = submit(&base, Some("late"), &empty_save("late", 1)).await;
    let frames = ws.until(|f| f["type"] == "execution_success").await;
    assert_eq!(frames.last().unwrap()["data"]["prompt_id"], pid.as_str());
    assert_eq!(ws.next_json().await["type"], "status");
    assert_eq!(
        get_json(&base, &format!("/history/{pid}")).await.1,
        json!({}),
        "history written too early"
    );
    ws.until_done(&pid).await;
    assert!(
        get_json(&base, &format!("/history/{pid}"))
            .await
            .1
            .get(&pid)
            .is_some()
    );
}

#[tokio::test]
async fn latency_delays_responses_and_frames() {
    let sim = TestSim::with_config(SimConfig {
        latency_ms: 120,
        ..quick()
    })
    .await;
    let t = Instant::now();
    get_json(&sim.url(), "/queue").await;
    assert!(t.elapsed() >= Duration::from_millis(120));
    let mut ws = Ws::connect(&sim.url(), "lat").await;
    ws.next_json().await;
    let pid = submit(&sim.url(), Some("lat"), &empty_save("lat", 1)).await;
    let t = Instant::now();
    ws.until_done(&pid).await;
    // The frames were produced at once; each is held 120 ms from its creation.
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn latency_holds_each_frame_from_its_own_creation_not_the_burst() {
    // Steps 60 ms apart, frames held 100 ms: the progress frames must arrive spread out
    // like the steps, not all at once at the end of the prompt.
    let sim = TestSim::with_config(SimConfig {
        step_ms: 60,
        latency_ms: 100,
        ..SimConfig::default()
    })
    .await;
    let mut ws = Ws::connect(&sim.url(), "spread").await;
    ws.next_json().await;
    let pid = submit(&sim.url(), Some("spread"), &txt2img(1, 4, "x", "spread")).await;
    let mut arrivals = Vec::new();
    loop {
        let frame = ws.next_json().await;
        if frame["type"] == "progress" {
            arrivals.push(Instant::now());
        }
        if frame["type"] == "executing"
            && frame["data"]["node"].is_null()
            && frame["data"]["prompt_id"] == pid.as_str()
        {
            break;
        }
    }
    assert_eq!(arrivals.len(), 4);
    let spread = arrivals[3] - arrivals[0];
    assert!(
        spread >= Duration::from_millis(120),
        "4 steps 60 ms apart arrived within {spread:?}"
    );
}
