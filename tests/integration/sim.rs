//! The simulator's behaviour over real loopback HTTP and WebSocket: completion, caching,
//! routing, the reconnect quirk, validation, queue/history/view/upload endpoints, previews,
//! statistics and lifecycle.

use std::time::Duration;

use plasma_batch::sim::{Sim, SimConfig};
use serde_json::{Value, json};

use super::sim_support::*;
use crate::support::TestSim;

fn png_text(bytes: &[u8], key: &str) -> Option<String> {
    let reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .ok()?;
    reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == key)
        .map(|c| c.text.clone())
}

fn png_pixels(bytes: &[u8]) -> Vec<u8> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

async fn view(base: &str, query: &str) -> reqwest::Response {
    http()
        .get(format!("{base}/view?{query}"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn txt2img_runs_end_to_end_with_real_pngs() {
    let sim = TestSim::with_config(quick()).await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "c1").await;
    assert_eq!(ws.next_json().await["data"]["sid"], "c1");
    let extra = json!({"extra_pnginfo": {"workflow": {"nodes": []}}});
    let pid = uuid::Uuid::new_v4().to_string();
    let body = json!({"prompt": txt2img(7, 3, "a lighthouse", "ch01/p001"), "client_id": "c1", "prompt_id": pid, "extra_data": extra});
    let (status, resp) = post_json(&base, "/prompt", &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        resp,
        json!({"prompt_id": pid, "number": 0, "node_errors": {}})
    );
    let frames = ws.until_done(&pid).await;
    let t = types(&frames);
    assert_eq!(
        &t[..4],
        ["status", "status", "execution_start", "execution_cached"]
    );
    assert_eq!(
        &t[t.len() - 3..],
        ["execution_success", "status", "executing"]
    );
    assert_eq!(t.iter().filter(|x| *x == "progress").count(), 3);
    let executing: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "executing")
        .map(|f| &f["data"]["node"])
        .collect();
    // ux_friendly_pick_node order, as in transcript 08.
    assert_eq!(
        executing,
        [
            &json!("4"),
            &json!("5"),
            &json!("10"),
            &json!("7"),
            &json!("6"),
            &json!("3"),
            &json!("8"),
            &json!("9"),
            &Value::Null
        ]
    );
    let entry = wait_history(&base, &pid).await;
    let image = &entry["outputs"]["9"]["images"][0];
    assert_eq!(
        image,
        &json!({"filename": "p001_00001_.png", "subfolder": "ch01", "type": "output"})
    );
    let resp = view(&base, "filename=p001_00001_.png&subfolder=ch01&type=output").await;
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(
        resp.headers()["content-disposition"],
        "filename=\"p001_00001_.png\""
    );
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(
        bytes.as_ref(),
        std::fs::read(sim.output_dir().join("ch01/p001_00001_.png")).unwrap()
    );
    let prompt: Value = serde_json::from_str(&png_text(&bytes, "prompt").unwrap()).unwrap();
    assert_eq!(prompt["3"]["inputs"]["seed"], 7);
    assert_eq!(png_text(&bytes, "workflow").unwrap(), r#"{"nodes": []}"#);

    // Same seed and text -> same pixels; another seed -> different pixels.
    let again = submit(
        &base,
        Some("c1"),
        &txt2img(7, 3, "a lighthouse", "ch01/again"),
    )
    .await;
    ws.until_done(&again).await;
    let other = submit(
        &base,
        Some("c1"),
        &txt2img(8, 3, "a lighthouse", "ch01/other"),
    )
    .await;
    ws.until_done(&other).await;
    let read = |n: &str| std::fs::read(sim.output_dir().join("ch01").join(n)).unwrap();
    assert_eq!(png_pixels(&read("again_00001_.png")), png_pixels(&bytes));
    assert_ne!(png_pixels(&read("other_00001_.png")), png_pixels(&bytes));
}

#[tokio::test]
async fn identical_prompt_is_served_from_cache() {
    let sim = TestSim::with_config(quick()).await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "c").await;
    let first = submit(&base, Some("c"), &empty_save("cache", 1)).await;
    ws.until_done(&first).await;
    let second = submit(&base, Some("c"), &empty_save("cache", 1)).await;
    let frames = ws.until_done(&second).await;
    assert_eq!(
        types(&frames),
        [
            "status",
            "status",
            "execution_start",
            "execution_cached",
            "executed",
            "progress_state",
            "execution_success",
            "status",
            "executing"
        ]
    );
    assert_eq!(frames[3]["data"]["nodes"], json!(["1", "9"]));
    assert_eq!(
        frames[4]["data"]["output"]["images"][0]["filename"],
        "cache_00001_.png"
    );
    assert_eq!(
        std::fs::read_dir(sim.output_dir()).unwrap().count(),
        1,
        "no new file"
    );
    // Counter = highest existing + 1 once something changes.
    let third = submit(&base, Some("c"), &empty_save("cache", 2)).await;
    let frames = ws.until_done(&third).await;
    let executed = frames.iter().find(|f| f["type"] == "executed").unwrap();
    assert_eq!(
        executed["data"]["output"]["images"][0]["filename"],
        "cache_00002_.png"
    );
}

#[tokio::test]
async fn reconnect_replaces_the_socket_and_a_stale_close_orphans_the_new_one() {
    let sim = TestSim::with_config(quick()).await;
    let base = sim.url();
    let mut old = Ws::connect(&base, "same").await;
    old.next_json().await;
    let mut new = Ws::connect(&base, "same").await;
    new.next_json().await;
    let pid = submit(&base, Some("same"), &empty_save("re", 1)).await;
    new.until_done(&pid).await;
    // The old socket is still open but receives nothing, not even broadcasts.
    assert!(old.next_within(Duration::from_millis(150)).await.is_none());
    // Closing the stale socket pops the id: the new socket silently stops receiving.
    old.stream.close(None).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let before = sim.stats().posts_without_socket;
        let pid = submit(&base, Some("same"), &empty_save("re", 2)).await;
        wait_history(&base, &pid).await;
        if sim.stats().posts_without_socket > before {
            break;
        }
        new.until_done(&pid).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stale close never unregistered the id"
        );
    }
    assert!(
        new.next_within(Duration::from_millis(150)).await.is_none(),
        "orphaned socket got a frame"
    );
}

#[tokio::test]
async fn validation_errors_have_comfyui_shapes() {
    let sim = TestSim::with_config(quick()).await;
    let base = sim.url();
    let mut g = txt2img(1, 2, "x", "v");
    g["4"]["inputs"]["ckpt_name"] = json!("nope.safetensors");
    g["3"]["inputs"]["steps"] = json!(10001);
    g["10"]["inputs"]["strength_model"] = json!("strong");
    let (status, body) = post_json(&base, "/prompt", &json!({"prompt": g})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "prompt_outputs_failed_validation");
    assert_eq!(body["error"]["details"], "");
    let ne = &body["node_errors"];
    assert_eq!(
        ne["4"]["errors"][0]["details"],
        "ckpt_name: 'nope.safetensors' not in ['AnythingXL_inkBase.safetensors', 'sd_xl_base_1.0.safetensors', 'v1-5-pruned-emaonly.safetensors', 'v1-5-pruned-emaonly-fp16.safetensors']"
    );
    assert_eq!(
        ne["3"]["errors"][0]["message"],
        "Value 10001 bigger than max of 10000"
    );
    assert_eq!(ne["10"]["errors"][0]["type"], "invalid_input_type");
    assert_eq!(
        ne["10"]["errors"][0]["details"],
        "strength_model, strong, could not convert string to float: 'strong'"
    );
    assert_eq!(ne["3"]["dependent_outputs"], json!(["9"]));

    let (status, body) =
        post_json(&base, "/prompt", &json!({"prompt": {"1": {"inputs": {}}}})).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (
            400,
            Some("Cannot execute because a node is missing the class_type property.")
        )
    );
    let resp = http()
        .post(format!("{base}/prompt"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    // A JSON list passes the server's membership tests: no_prompt, and `number` advances.
    let (status, body) = post_json(&base, "/prompt", &json!(["x"])).await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (400, Some("no_prompt"))
    );
    // `number` counts every POST, invalid ones included.
    let (_, ok) = post_json(&base, "/api/prompt", &json!({"prompt": empty_save("n", 0)})).await;
    assert_eq!(ok["number"], 3);
    let s = sim.stats();
    assert_eq!(
        (
            s.prompts_accepted,
            s.prompts_rejected,
            s.posts_without_socket
        ),
        (1, 4, 5)
    );
}

#[tokio::test]
async fn queue_interrupt_and_history_endpoints() {
    let sim = TestSim::with_config(SimConfig {
        step_ms: 20,
        ..quick()
    })
    .await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "q").await;
    let long = submit(&base, Some("q"), &txt2img(1, 200, "long", "q")).await;
    let waiting = submit(&base, Some("q"), &empty_save("w", 1)).await;
    let deleted = submit(&base, Some("q"), &empty_save("d", 1)).await;
    ws.until(|f| f["type"] == "progress").await;
    let (_, q) = get_json(&base, "/queue").await;
    assert_eq!(q["queue_running"][0][1], json!(long));
    assert_eq!(q["queue_running"][0].as_array().unwrap().len(), 5);
    assert_eq!(q["queue_pending"].as_array().unwrap().len(), 2);
    assert_eq!(
        post_json(&base, "/queue", &json!({"delete": [deleted]}))
            .await
            .0,
        200
    );
    // A targeted interrupt of a pending prompt does nothing.
    post_json(&base, "/interrupt", &json!({"prompt_id": waiting})).await;
    post_json(&base, "/interrupt", &json!({"prompt_id": long})).await;
    let frames = ws.until_done(&long).await;
    let interrupted = frames
        .iter()
        .find(|f| f["type"] == "execution_interrupted")
        .expect("interrupted");
    assert_eq!(interrupted["data"]["node_type"], "KSampler");
    ws.until_done(&waiting).await;
    assert_eq!(
        get_json(&base, &format!("/history/{deleted}")).await.1,
        json!({})
    );
    let s = sim.stats();
    assert_eq!(s.queue_deletes, vec![deleted.clone()]);
    assert_eq!(s.interrupts[0].hit, None);
    assert_eq!(s.interrupts[1].hit.as_deref(), Some(long.as_str()));
    assert_eq!(s.peak_queue, 3);
    assert_eq!(s.executed, 2);
    let (_, h) = get_json(&base, "/history?max_items=1").await;
    assert_eq!(
        h.as_object().unwrap().keys().collect::<Vec<_>>(),
        [&waiting]
    );
    let (_, h) = get_json(&base, "/history?max_items=1&offset=0").await;
    assert_eq!(h.as_object().unwrap().keys().collect::<Vec<_>>(), [&long]);
    post_json(&base, "/history", &json!({"delete": [long]})).await;
    assert_eq!(
        get_json(&base, "/history")
            .await
            .1
            .as_object()
            .unwrap()
            .len(),
        1
    );
    post_json(&base, "/history", &json!({"clear": true})).await;
    assert_eq!(get_json(&base, "/history").await.1, json!({}));
    // A global interrupt while idle is lost: the next prompt still succeeds.
    post_json(&base, "/interrupt", &json!({})).await;
    let pid = submit(&base, Some("q"), &empty_save("after", 1)).await;
    assert!(types(&ws.until_done(&pid).await).contains(&"execution_success".to_string()));
}

#[tokio::test]
async fn view_and_upload_follow_the_server_rules() {
    let sim = TestSim::with_config(quick()).await;
    let base = sim.url();
    assert_eq!(view(&base, "filename=../x.png").await.status(), 400);
    assert_eq!(view(&base, "filename=/etc/passwd").await.status(), 400);
    assert_eq!(
        view(&base, "filename=x.png&subfolder=../..").await.status(),
        403
    );
    assert_eq!(view(&base, "filename=missing.png").await.status(), 404);
    assert_eq!(view(&base, "filename=x.png&type=weird").await.status(), 400);

    let png = {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, 4, 4);
        enc.set_color(png::ColorType::Rgba);
        enc.write_header()
            .unwrap()
            .write_image_data(&[200u8; 64])
            .unwrap();
        out
    };
    let upload = |bytes: Vec<u8>| {
        let base = base.clone();
        async move {
            // reqwest's multipart feature is off in this crate: write the body by hand.
            let mut body = b"--XBOUNDARY\r\nContent-Disposition: form-data; name=\"image\"; filename=\"ref.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
            body.extend_from_slice(&bytes);
            body.extend_from_slice(b"\r\n--XBOUNDARY--\r\n");
            let resp = http()
                .post(format!("{base}/upload/image"))
                .header("content-type", "multipart/form-data; boundary=XBOUNDARY")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let text = resp.text().await.unwrap();
            serde_json::from_str::<Value>(&text)
                .unwrap_or_else(|_| panic!("upload answered {status}: {text}"))
        }
    };
    assert_eq!(
        upload(png.clone()).await,
        json!({"name": "ref.png", "subfolder": "", "type": "input"})
    );
    assert_eq!(
        upload(png.clone()).await["name"],
        "ref.png",
        "identical content is not duplicated"
    );
    assert_eq!(upload(b"other".to_vec()).await["name"], "ref (1).png");
    let (_, info) = get_json(&base, "/object_info/LoadImage").await;
    assert_eq!(
        info["LoadImage"]["input"]["required"]["image"][0],
        json!(["ref (1).png", "ref.png"])
    );

    let mut ws = Ws::connect(&base, "u").await;
    let g = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "ref.png"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "width": 8, "height": 0, "crop": "disabled"}},
        "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 2, "sigma": 1.0}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "scaled", "images": ["3", 0]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    });
    let pid = submit(&base, Some("u"), &g).await;
    ws.until_done(&pid).await;
    let entry = wait_history(&base, &pid).await;
    assert_eq!(entry["outputs"]["8"]["images"][0]["type"], "temp");
    let resp = view(&base, "filename=scaled_00001_.png").await;
    let pixels = png_pixels(&resp.bytes().await.unwrap());
    assert_eq!(pixels.len(), 8 * 8 * 3);
    let (status, body) = post_json(&base, "/prompt", &json!({"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}}, "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["1", 0]}}}})).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["node_errors"]["1"]["errors"][0]["details"],
        "image - Invalid image file: nope.png"
    );
}

#[tokio::test]
async fn describes_itself_like_comfyui() {
    // Only GETs: what the server says about itself, no prompt.
    let sim = TestSim::with_config(quick()).await.idle_ok();
    let base = sim.url();
    let (_, all) = get_json(&base, "/object_info").await;
    for class in [
        "CheckpointLoaderSimple",
        "LoraLoader",
        "CLIPTextEncode",
        "EmptyLatentImage",
        "KSampler",
        "VAEDecode",
        "SaveImage",
        "PreviewImage",
        "EmptyImage",
        "ImageBlur",
        "ImageToMask",
        "MaskToImage",
        "LoadImage",
        "ImageScale",
    ] {
        assert!(all.get(class).is_some(), "{class} missing");
    }
    assert_eq!(
        all["KSampler"]["input"]["required"]["sampler_name"][0]
            .as_array()
            .unwrap()
            .len(),
        44
    );
    assert_eq!(
        all["LoraLoader"]["input"]["required"]["strength_model"][1]["min"],
        -100.0
    );
    assert_eq!(
        get_json(&base, "/api/object_info/Nope").await,
        (200, json!({}))
    );
    assert_eq!(
        get_json(&base, "/models/checkpoints").await.1[0],
        "AnythingXL_inkBase.safetensors"
    );
    assert_eq!(get_json(&base, "/models/nope").await.0, 404);
    assert_eq!(
        get_json(&base, "/features").await.1["supports_preview_metadata"],
        true
    );
    assert_eq!(
        get_json(&base, "/system_stats").await.1["system"]["comfyui_version"],
        "0.8.0"
    );
    assert_eq!(
        get_json(&base, "/prompt").await.1,
        json!({"exec_info": {"queue_remaining": 0}})
    );
    let resp = http()
        .get(format!("{base}/queue"))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let host = sim.addr().to_string();
    let resp = http()
        .get(format!("{base}/queue"))
        .header("Origin", format!("http://{host}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn sampler_sends_previews_in_the_negotiated_format() {
    let sim = TestSim::with_config(quick()).await;
    let base = sim.url();
    let mut plain = Ws::connect(&base, "plain").await;
    plain.next_json().await;
    let mut meta = Ws::connect(&base, "meta").await;
    meta.next_json().await;
    meta.send_text(&json!({"type": "feature_flags", "data": {"supports_preview_metadata": true}}))
        .await;
    assert_eq!(meta.next_json().await["type"], "feature_flags");
    for (ws, cid, event) in [(&mut plain, "plain", 1u32), (&mut meta, "meta", 4u32)] {
        let pid = uuid::Uuid::new_v4().to_string();
        let body = json!({"prompt": txt2img(3, 2, &format!("p {cid}"), cid), "client_id": cid, "prompt_id": pid, "extra_data": {"preview_method": "auto"}});
        post_json(&base, "/prompt", &body).await;
        let mut order = Vec::new();
        loop {
            match ws.next().await {
                Frame::Binary(b) => {
                    assert_eq!(u32::from_be_bytes(b[..4].try_into().unwrap()), event);
                    order.push("binary".to_string());
                }
                Frame::Json(v) => {
                    let ty = v["type"].as_str().unwrap().to_string();
                    // Sampler steps only: a `progress_state` whose node 3 runs out of 2.
                    let step_state = ty == "progress_state"
                        && v["data"]["nodes"]["3"]["max"] == 2
                        && v["data"]["nodes"]["3"]["state"] == "running";
                    if ty == "progress" || step_state {
                        order.push(ty);
                    }
                    if v["type"] == "executing" && v["data"]["node"].is_null() {
                        break;
                    }
                }
                Frame::Closed(w) => panic!("closed: {w}"),
            }
        }
        let step = if event == 1 {
            ["progress_state", "progress", "binary"]
        } else {
            ["progress_state", "binary", "progress"]
        };
        assert_eq!(order, [step, step].concat(), "{cid}");
    }
}

#[tokio::test]
async fn several_simulators_run_side_by_side_and_free_their_ports() {
    let mut sims = Vec::new();
    for _ in 0..4 {
        sims.push(TestSim::with_config(quick()).await);
    }
    for sim in &sims {
        let pid = submit(&sim.url(), None, &empty_save("s", 1)).await;
        wait_history(&sim.url(), &pid).await;
    }
    let addr = sims[0].addr();
    for sim in sims {
        sim.stop().await;
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "port still open after shutdown"
    );
    let dropped = Sim::start(quick()).await.unwrap();
    let ws = Ws::connect(&dropped.url(), "d").await;
    drop(dropped);
    drop(ws);
}

/// The binary serves the shipped txt2img+LoRA workflow end to end for a plain client.
#[tokio::test]
async fn cli_serves_a_workflow_end_to_end() {
    use std::io::BufRead;
    /// Stops the server even when an assertion fails.
    struct Server(std::process::Child);
    impl Server {
        /// SIGTERM, and whether it exited cleanly (removing its temporary directories).
        fn terminate(&mut self) -> Option<i32> {
            let _ = std::process::Command::new("kill")
                .arg(self.0.id().to_string())
                .status();
            for _ in 0..500 {
                if let Ok(Some(status)) = self.0.try_wait() {
                    return status.code();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        }
    }
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Server(
        std::process::Command::new(env!("CARGO_BIN_EXE_plasma-batch"))
            .args(["sim", "--port", "0", "--step-ms", "1"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let base = line
        .trim()
        .strip_prefix("plasma-batch sim listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let mut ws = Ws::connect(&base, "cli").await;
    let pid = submit(
        &base,
        Some("cli"),
        &txt2img(42, 4, "a lighthouse at dusk", "ch01/p001"),
    )
    .await;
    let frames = ws.until_done(&pid).await;
    assert_eq!(
        types(&frames).iter().filter(|t| *t == "progress").count(),
        4
    );
    let entry = wait_history(&base, &pid).await;
    let name = entry["outputs"]["9"]["images"][0]["filename"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = view(
        &base,
        &format!("filename={name}&subfolder=ch01&type=output"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().starts_with(b"\x89PNG"));
    assert_eq!(
        child.terminate(),
        Some(0),
        "SIGTERM did not stop the server cleanly"
    );
}

#[test]
fn cli_rejects_a_bad_fault_spec() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plasma-batch"))
        .args(["sim", "--fault", "bogus:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown fault name"));
}

#[tokio::test]
async fn reconnect_gets_the_executing_hint_without_prompt_id() {
    let sim = TestSim::with_config(SimConfig {
        faults: vec!["hang:SaveImage".parse().unwrap()],
        ..quick()
    })
    .await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "hint").await;
    let pid = submit(&base, Some("hint"), &empty_save("hint", 1)).await;
    ws.until(|f| f["type"] == "executing" && f["data"]["node"] == "9")
        .await;
    let mut again = Ws::connect(&base, "hint").await;
    let status = again.next_json().await;
    assert_eq!(status["data"]["status"]["exec_info"]["queue_remaining"], 1);
    assert_eq!(
        again.next_json().await,
        json!({"type": "executing", "data": {"node": "9"}})
    );
    post_json(&base, "/interrupt", &json!({"prompt_id": pid})).await;
    again.until_done(&pid).await;
}

#[tokio::test]
async fn a_bad_output_is_dropped_and_reported_on_200() {
    let sim = TestSim::with_config(quick()).await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "p").await;
    let mut g = empty_save("good", 5);
    g["2"] = json!({"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}});
    g["8"] = json!({"class_type": "SaveImage", "inputs": {"filename_prefix": "bad", "images": ["2", 0]}});
    let pid = uuid::Uuid::new_v4().to_string();
    let (status, body) = post_json(
        &base,
        "/prompt",
        &json!({"prompt": g, "client_id": "p", "prompt_id": pid}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["node_errors"]["2"]["errors"][0]["type"],
        "value_smaller_than_min"
    );
    assert_eq!(body["node_errors"]["2"]["dependent_outputs"], json!(["8"]));
    ws.until_done(&pid).await;
    let entry = wait_history(&base, &pid).await;
    assert_eq!(entry["prompt"][4], json!(["9"]));
    assert_eq!(
        entry["outputs"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["9"]
    );
    // partial_execution_targets selects outputs.
    let pid = uuid::Uuid::new_v4().to_string();
    let mut g = empty_save("one", 6);
    g["8"] = json!({"class_type": "SaveImage", "inputs": {"filename_prefix": "two", "images": ["1", 0]}});
    let body = json!({"prompt": g, "client_id": "p", "prompt_id": pid, "partial_execution_targets": ["8"]});
    assert_eq!(post_json(&base, "/prompt", &body).await.0, 200);
    ws.until_done(&pid).await;
    let entry = wait_history(&base, &pid).await;
    assert_eq!(
        entry["outputs"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["8"]
    );
}

#[tokio::test]
async fn idle_time_counts_only_between_prompts() {
    let sim = TestSim::with_config(quick()).await;
    let base = sim.url();
    let mut ws = Ws::connect(&base, "i").await;
    // Idle before the first prompt does not count. (These sleeps are the idle time being
    // measured, not synchronisation.)
    tokio::time::sleep(Duration::from_millis(60)).await;
    let a = submit(&base, Some("i"), &empty_save("i", 1)).await;
    ws.until_done(&a).await;
    assert!(sim.stats().worker_idle_ms_while_outstanding < 40);
    tokio::time::sleep(Duration::from_millis(120)).await;
    let b = submit(&base, Some("i"), &empty_save("i", 2)).await;
    ws.until_done(&b).await;
    let (_, stats) = get_json(&base, "/sim/stats").await;
    let idle = stats["worker_idle_ms_while_outstanding"].as_u64().unwrap();
    assert!((120..2000).contains(&idle), "{idle}");
    assert_eq!(stats["executed"], 2);
}

/// `ImageBlend` as ComfyUI 0.8.0 has it: its `/object_info` entry word for word (as a real
/// server answers), `image2` of another size brought to `image1`'s, the mode's formula mixed
/// in by `blend_factor`, and batches that do not broadcast failing with PyTorch's error.
#[tokio::test]
async fn image_blend_describes_blends_and_fails_like_comfyui() {
    let sim = TestSim::with_config(quick()).await;
    let base = sim.url();
    let (_, info) = get_json(&base, "/object_info/ImageBlend").await;
    let real = json!({"ImageBlend": {"input": {"required": {"image1": ["IMAGE", {}], "image2": ["IMAGE", {}], "blend_factor": ["FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}], "blend_mode": ["COMBO", {"multiselect": false, "options": ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]}]}}, "input_order": {"required": ["image1", "image2", "blend_factor", "blend_mode"]}, "output": ["IMAGE"], "output_is_list": [false], "output_name": ["IMAGE"], "output_tooltips": [null], "output_matchtypes": null, "name": "ImageBlend", "display_name": null, "description": "", "python_module": "comfy_extras.nodes_post_processing", "category": "image/postprocessing", "output_node": false, "deprecated": false, "experimental": false, "api_node": false}});
    assert_eq!(info, real);

    let graph = |batch2: u32, mode: &str, factor: f64, prefix: &str| {
        json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0xFF_0000}},
            "2": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": batch2, "color": 0x00_00FF}},
            "3": {"class_type": "ImageBlend", "inputs": {"image1": ["1", 0], "image2": ["2", 0], "blend_factor": factor, "blend_mode": mode}},
            "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["3", 0]}}
        })
    };
    let mut ws = Ws::connect(&base, "b").await;
    // Red screened by blue is magenta; multiplied, black; half of blue over red, normal, is
    // half red and half blue. Each output has image1's size.
    for (mode, factor, prefix, rgb) in [
        ("screen", 1.0, "screen", [255, 0, 255]),
        ("multiply", 1.0, "multiply", [0, 0, 0]),
        ("normal", 0.0, "normal", [255, 0, 0]),
    ] {
        let pid = submit(&base, Some("b"), &graph(1, mode, factor, prefix)).await;
        ws.until_done(&pid).await;
        let resp = view(&base, &format!("filename={prefix}_00001_.png")).await;
        let pixels = png_pixels(&resp.bytes().await.unwrap());
        assert_eq!(pixels.len(), 64 * 48 * 3, "{mode}");
        assert_eq!(pixels[..3], rgb, "{mode}");
        assert!(pixels.chunks(3).all(|p| p == rgb), "{mode}");
    }

    // A batch of 1 meets a batch of 3; 2 against 3 raises.
    let (status, body) = post_json(
        &base,
        "/prompt",
        &json!({"prompt": graph(3, "normal", 0.5, "three"), "client_id": "b"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    ws.until_done(body["prompt_id"].as_str().unwrap()).await;
    let mut bad = graph(3, "multiply", 0.5, "bad");
    bad["1"]["inputs"]["batch_size"] = json!(2);
    let pid = submit(&base, Some("b"), &bad).await;
    let frames = ws.until_done(&pid).await;
    let err = frames
        .iter()
        .find(|f| f["type"] == "execution_error")
        .expect("an execution_error");
    assert_eq!(err["data"]["node_type"], "ImageBlend");
    assert_eq!(err["data"]["exception_type"], "RuntimeError");
    assert_eq!(
        err["data"]["exception_message"],
        "The size of tensor a (2) must match the size of tensor b (3) at non-singleton dimension 0\n"
    );
    let last = err["data"]["traceback"].as_array().unwrap().last().unwrap();
    assert!(
        last.as_str().unwrap().contains("nodes_post_processing.py"),
        "{last}"
    );
}
