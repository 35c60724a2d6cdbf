//! Simulator throughput: trivial prompts (`EmptyImage` 64x64 -> `SaveImage`, zero step time)
//! driven by one WebSocket client that keeps several prompts in flight.
//! Run with `cargo bench --bench sim [-- PROMPTS IN_FLIGHT]`; prints prompts per second.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use plasma_batch::sim::{Sim, SimConfig};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let total = args.first().copied().unwrap_or(4000);
    let in_flight = args.get(1).copied().unwrap_or(16);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(total, in_flight));
}

async fn run(total: usize, in_flight: usize) {
    let sim = Sim::start(SimConfig {
        step_ms: 0,
        ..SimConfig::default()
    })
    .await
    .expect("start");
    let base = sim.url();
    let ws_url = format!("{}/ws?clientId=bench", base.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.expect("ws");
    let permits = Arc::new(Semaphore::new(in_flight));
    let reader_permits = permits.clone();
    let reader = tokio::spawn(async move {
        let mut done = 0;
        while done < total {
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                panic!("socket ended")
            };
            let v: Value = serde_json::from_str(t.as_str()).expect("json");
            if v["type"] == "executing" && v["data"]["node"].is_null() {
                done += 1;
                reader_permits.add_permits(1);
            }
        }
    });
    let client = reqwest::Client::new();
    let started = Instant::now();
    for i in 0..total {
        permits.acquire().await.expect("semaphore").forget();
        let prompt = json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": i}},
            "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bench", "images": ["1", 0]}}
        });
        let req = client
            .post(format!("{base}/prompt"))
            .json(&json!({"prompt": prompt, "client_id": "bench"}));
        tokio::spawn(async move {
            let resp = req.send().await.expect("post");
            assert_eq!(resp.status(), 200);
        });
    }
    reader.await.expect("reader");
    let secs = started.elapsed().as_secs_f64();
    let stats = sim.stats();
    println!(
        "sim: {total} prompts in {secs:.2} s = {:.0} prompts/s ({in_flight} in flight, peak queue {}, executed {})",
        total as f64 / secs,
        stats.peak_queue,
        stats.executed
    );
    sim.shutdown().await;
    render_timing().await;
}

/// Wall time of one full-size txt2img prompt (render, PNG encode, write), zero step time.
async fn render_timing() {
    let sim = Sim::start(SimConfig {
        step_ms: 0,
        ..SimConfig::default()
    })
    .await
    .expect("start");
    let base = sim.url();
    let client = reqwest::Client::new();
    let rounds = 20;
    let started = Instant::now();
    for seed in 0..rounds {
        let prompt = json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "AnythingXL_inkBase.safetensors"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": 1}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk, ink", "clip": ["4", 1]}},
            "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 1, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["5", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "big", "images": ["8", 0]}}
        });
        let resp: Value = client
            .post(format!("{base}/prompt"))
            .json(&json!({"prompt": prompt}))
            .send()
            .await
            .expect("post")
            .json()
            .await
            .expect("json");
        let pid = resp["prompt_id"].as_str().expect("id").to_string();
        loop {
            let h: Value = client
                .get(format!("{base}/history/{pid}"))
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("json");
            if h.get(&pid).is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    println!(
        "sim: 512x768 txt2img prompt end to end: {:.1} ms each",
        started.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds)
    );
    sim.shutdown().await;
}
