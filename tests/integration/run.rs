//! The executor and `run` over real loopback HTTP/WebSocket against the simulator.

use std::sync::Arc;
use std::time::Duration;

use plasma_batch::cmd::Outcome;
use plasma_batch::events::{ErrorKind, JobStatus};
use plasma_batch::runner::run_jobs;

use crate::support::*;

#[tokio::test]
async fn renders_every_job_with_versions_report_and_contact_sheet() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&small_manifest(dir.path(), 3, 2, ""));
    let jobs = jobs(&plan);
    let sim = TestSim::start(&[]).await;
    let out = dir.path().join("out");
    let summary = run_on(&plan, &out, &[sim.url()], false).await;
    assert_eq!(summary.totals.succeeded, 6, "{:#?}", summary.outcomes);
    assert_eq!(Outcome::of_run(&summary).exit_code(), 0);
    let report = check_run(&summary, &jobs, &out);
    // Two variants of a page get two versions of the page's file.
    let mut names: Vec<String> = report
        .jobs
        .iter()
        .flat_map(|j| j.images.iter().map(|i| i.path.clone()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ch-07/raw/comfyui/ch07_p001_v1.png",
            "ch-07/raw/comfyui/ch07_p001_v2.png",
            "ch-07/raw/comfyui/ch07_p002_v1.png",
            "ch-07/raw/comfyui/ch07_p002_v2.png",
            "ch-07/raw/comfyui/ch07_p003_v1.png",
            "ch-07/raw/comfyui/ch07_p003_v2.png",
        ]
    );
    for job in &report.jobs {
        assert_eq!(job.attempts, 1);
        assert!(job.prompt_id.is_some() && job.server.as_deref() == Some(sim.url().as_str()));
        let t = &job.timings;
        assert!(
            t.queued.is_some()
                && t.started.is_some()
                && t.executed.is_some()
                && t.downloaded.is_some()
        );
    }
    let stats = sim.stats();
    assert_eq!(
        stats.posts_without_socket, 0,
        "a prompt was posted before its socket was open"
    );
    assert!(
        stats.peak_queue <= engine().in_flight_max,
        "more than in_flight_max prompts were queued on the server: {}",
        stats.peak_queue
    );
    let sheet = std::fs::read_to_string(&summary.contact_sheet_path).unwrap();
    assert_eq!(sheet.matches("data:image/png;base64,").count(), 6);
    assert!(sheet.contains("panel 2: a quiet harbour at night"));
}

#[tokio::test]
async fn incremental_runs_skip_unchanged_jobs_and_render_changed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sim = TestSim::start(&[]).await;
    let first = plan(&small_manifest(dir.path(), 2, 1, ""));
    let summary = run_on(&first, &out, &[sim.url()], false).await;
    assert_eq!(summary.totals.succeeded, 2);

    // Same manifest: nothing to do, and the server is not asked for anything.
    let accepted_before = sim.stats().prompts_accepted;
    let again = run_on(&first, &out, &[sim.url()], false).await;
    assert_eq!(again.totals.skipped, 2, "{:#?}", again.outcomes);
    assert_eq!(sim.stats().prompts_accepted, accepted_before);
    check_run(&again, &jobs(&first), &out);

    // Change page 2's prompt: only that job renders, as version 2 of page 2.
    let manifest = small_manifest(dir.path(), 2, 1, "");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "panel 2: a quiet harbour at night",
        "panel 2: a stormy harbour at dawn",
    );
    std::fs::write(&manifest, text).unwrap();
    let changed = plan(&manifest);
    let third = run_on(&changed, &out, &[sim.url()], false).await;
    assert_eq!((third.totals.skipped, third.totals.succeeded), (1, 1));
    let rendered = third
        .outcomes
        .iter()
        .find(|o| o.status == JobStatus::Succeeded)
        .unwrap();
    assert_eq!(rendered.key, "ch07_p002_s1");
    assert_eq!(
        rendered.images[0].path,
        "ch-07/raw/comfyui/ch07_p002_v2.png"
    );
    check_run(&third, &jobs(&changed), &out);

    // A deleted image is not "verified" any more: the job renders again.
    std::fs::remove_file(out.join("ch-07/raw/comfyui/ch07_p001_v1.png")).unwrap();
    let fourth = run_on(&changed, &out, &[sim.url()], false).await;
    assert_eq!((fourth.totals.skipped, fourth.totals.succeeded), (1, 1));
}

#[tokio::test]
async fn forced_rerun_completes_on_cached_prompts_with_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sim = TestSim::start(&[]).await;
    let plan = plan(&small_manifest(dir.path(), 1, 1, ""));
    let first = run_on(&plan, &out, &[sim.url()], false).await;
    // The identical prompt right after is fully cached on the server: no node runs, the
    // outputs are the previous files, and the job must still complete on `executing` null.
    let second = run_on(&plan, &out, &[sim.url()], true).await;
    assert_eq!(second.totals.succeeded, 1, "{:#?}", second.outcomes);
    assert_eq!(
        second.outcomes[0].images[0].path,
        "ch-07/raw/comfyui/ch07_p001_v2.png"
    );
    assert_eq!(
        second.outcomes[0].images[0].sha256,
        first.outcomes[0].images[0].sha256
    );
}

#[tokio::test]
async fn node_exception_fails_the_job_and_writes_no_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sim = TestSim::start(&["raise:VAEDecode"]).await;
    let plan = plan(&small_manifest(dir.path(), 2, 1, ""));
    let jobs = jobs(&plan);
    let summary = run_on(&plan, &out, &[sim.url()], false).await;
    assert_eq!(summary.totals.failed, 2);
    assert_eq!(
        Outcome::of_run(&summary).exit_code(),
        plasma_batch::exit_codes::JOBS_FAILED
    );
    for outcome in &summary.outcomes {
        let error = outcome.error.as_ref().unwrap();
        assert_eq!(error.kind, ErrorKind::NodeError);
        assert_eq!(error.node_class.as_deref(), Some("VAEDecode"));
        assert_eq!(error.node_id.as_deref(), Some("8"));
        assert_eq!(
            outcome.attempts, 1,
            "a node exception is not retried by default"
        );
    }
    check_run(&summary, &jobs, &out);
    assert!(files_under(&out.join("ch-07/raw")).is_empty());
}

#[tokio::test]
async fn timeout_interrupts_the_prompt_on_the_server_and_writes_no_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sim = TestSim::start(&["hang:KSampler"]).await;
    let plan = plan(&small_manifest(dir.path(), 1, 1, ""));
    let jobs = jobs(&plan);
    let config = plasma_batch::engine::EngineConfig {
        timeout: Duration::from_millis(400),
        ..engine()
    };
    let summary = run_jobs(
        options(&plan, &out, config),
        vec![client(&sim.url())],
        jobs.clone(),
        no_cancel(),
    )
    .await
    .unwrap();
    let outcome = &summary.outcomes[0];
    assert_eq!(outcome.status, JobStatus::TimedOut);
    assert_eq!(outcome.error.as_ref().unwrap().kind, ErrorKind::Timeout);
    let prompt_id = outcome.prompt_id.clone().unwrap();
    let stats = sim.stats();
    assert!(
        stats
            .interrupts
            .iter()
            .any(|i| i.prompt_id.as_deref() == Some(prompt_id.as_str())
                && i.hit.as_deref() == Some(prompt_id.as_str())),
        "the server was not told to interrupt {prompt_id}: {:?}",
        stats.interrupts
    );
    assert!(
        stats.interrupts.iter().all(|i| i.prompt_id.is_some()),
        "a global interrupt was sent"
    );
    check_run(&summary, &jobs, &out);
    assert!(files_under(&out.join("ch-07/raw")).is_empty());
}

#[tokio::test]
async fn interrupt_by_someone_else_fails_the_job_without_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sim = TestSim::start(&["hang:KSampler"]).await;
    let plan = plan(&small_manifest(dir.path(), 1, 1, ""));
    let jobs = jobs(&plan);
    let url = sim.url();
    // Another user presses "cancel" in the ComfyUI front end: a global interrupt, sent once
    // our prompt is running. A prompt is listed as running a moment before its execution
    // starts, and the start clears a pending interrupt (as ComfyUI's does), so the user
    // presses again while it is still listed.
    let other = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut pressed = false;
        for _ in 0..400 {
            let queue: serde_json::Value = http
                .get(format!("{url}/queue"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let running = queue["queue_running"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
            if running {
                http.post(format!("{url}/interrupt")).send().await.unwrap();
                pressed = true;
            } else if pressed {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the prompt never started, or an interrupt never stopped it");
    });
    let summary = run_on(&plan, &out, &[sim.url()], false).await;
    other.await.unwrap();
    let error = summary.outcomes[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Interrupted, "{error:?}");
    assert_eq!(error.node_class.as_deref(), Some("KSampler"));
    check_run(&summary, &jobs, &out);
    assert!(files_under(&out.join("ch-07/raw")).is_empty());
}

#[tokio::test]
async fn server_rejections_are_failures_with_node_details() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sim = TestSim::start(&[]).await;
    let plan = plan(&small_manifest(dir.path(), 2, 1, ""));
    let mut jobs = jobs(&plan);
    // Page 1: a checkpoint the server does not have (400 value_not_in_list).
    let mut bad = (*jobs[0]).clone();
    let mut workflow = bad.workflow.to_value();
    workflow["4"]["inputs"]["ckpt_name"] = "missing.safetensors".into();
    bad.workflow = workflow.into();
    jobs[0] = Arc::new(bad);
    // Page 2: a second, broken output node: ComfyUI answers 200 with node_errors and runs
    // the valid output anyway. We count that as a failure and take the prompt back.
    let mut partial = (*jobs[1]).clone();
    let mut workflow = partial.workflow.to_value();
    workflow["20"] = serde_json::json!({"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["8", 0]}});
    workflow["21"] = serde_json::json!({"class_type": "ImageBlur", "inputs": {"image": ["8", 0], "blur_radius": 0, "sigma": 1.0}});
    workflow["22"] = serde_json::json!({"class_type": "SaveImage", "inputs": {"filename_prefix": "y", "images": ["21", 0]}});
    partial.workflow = workflow.into();
    jobs[1] = Arc::new(partial);
    // Preflight would stop page 1 before it is sent; drive the engine directly.
    let outputs = plasma_batch::engine::Outputs::new(&out);
    let images = outputs.chapter(7).unwrap().dirs.images.clone();
    let (events, _rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(plasma_batch::engine::RunContext {
        run_id: "test".into(),
        out_root: out.clone(),
        outputs: Arc::new(outputs),
        events,
        cancel: no_cancel(),
        started: std::time::Instant::now(),
        reattach: std::collections::HashMap::new(),
    });
    let outcomes =
        plasma_batch::engine::execute(engine(), vec![client(&sim.url())], jobs, ctx).await;
    let by_key = |key: &str| outcomes.iter().find(|o| o.key == key).unwrap();
    let rejected = by_key("ch07_p001_s1");
    let error = rejected.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Validation);
    assert!(
        error.message.contains("missing.safetensors"),
        "{}",
        error.message
    );
    assert_eq!(error.node_id.as_deref(), Some("4"));
    assert_eq!(error.node_class.as_deref(), Some("CheckpointLoaderSimple"));
    let partial = by_key("ch07_p002_s1");
    let error = partial.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Validation, "{error:?}");
    assert_eq!(error.node_id.as_deref(), Some("21"));
    assert!(files_under(&images).is_empty());
}

#[tokio::test]
async fn unsafe_and_broken_images_from_the_server_are_rejected() {
    for (fault, expect) in [
        ("traversal-filenames", "unsafe output file"),
        ("view-not-png", "not a complete PNG"),
        ("view-truncated", ""),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let sim = TestSim::start(&[fault]).await;
        let plan = plan(&small_manifest(dir.path(), 1, 1, ""));
        let jobs = jobs(&plan);
        let summary = run_on(&plan, &out, &[sim.url()], false).await;
        let error = summary.outcomes[0]
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{fault}: the job succeeded"));
        assert_eq!(error.kind, ErrorKind::Download, "{fault}: {error:?}");
        assert!(error.message.contains(expect), "{fault}: {}", error.message);
        check_run(&summary, &jobs, &out);
        assert!(files_under(&out.join("ch-07/raw")).is_empty(), "{fault}");
        // Nothing escaped the output root.
        assert!(!dir.path().join("x_00001_.png").exists());
    }
}

#[tokio::test]
async fn two_concurrent_runs_on_one_chapter_get_distinct_versions() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (a, b) = (TestSim::start(&[]).await, TestSim::start(&[]).await);
    let plan = plan(&small_manifest(dir.path(), 2, 2, ""));
    let mut forced = options(&plan, &out, engine());
    forced.force = true;
    let (first, second) = tokio::join!(
        run_jobs(
            forced.clone(),
            vec![client(&a.url())],
            jobs(&plan),
            no_cancel()
        ),
        run_jobs(forced, vec![client(&b.url())], jobs(&plan), no_cancel()),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.totals.succeeded + second.totals.succeeded, 8);
    let mut paths: Vec<String> = first
        .outcomes
        .iter()
        .chain(&second.outcomes)
        .flat_map(|o| o.images.iter().map(|i| i.path.clone()))
        .collect();
    paths.sort();
    let before = paths.len();
    paths.dedup();
    assert_eq!(paths.len(), before, "two runs shared a version");
    for page in 1..=2 {
        for version in 1..=4 {
            let name = format!("ch-07/raw/comfyui/ch07_p{page:03}_v{version}.png");
            assert!(paths.contains(&name), "{name} missing: {paths:?}");
        }
    }
}

#[tokio::test]
async fn jobs_spread_over_several_servers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (a, b) = (TestSim::start(&[]).await, TestSim::start(&[]).await);
    let plan = plan(&small_manifest(dir.path(), 4, 2, ""));
    let jobs = jobs(&plan);
    let summary = run_jobs(
        options(&plan, &out, engine()),
        vec![client(&a.url()), client(&b.url())],
        jobs.clone(),
        no_cancel(),
    )
    .await
    .unwrap();
    assert_eq!(summary.totals.succeeded, 8);
    check_run(&summary, &jobs, &out);
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.prompts_accepted + sb.prompts_accepted, 8);
    assert!(
        sa.prompts_accepted > 0 && sb.prompts_accepted > 0,
        "one server did all the work"
    );
    assert_eq!(sa.posts_without_socket + sb.posts_without_socket, 0);
}

#[tokio::test]
async fn every_image_of_a_batch_is_kept_as_its_own_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sim = TestSim::start(&[]).await;
    let plan = plan(&small_manifest(dir.path(), 1, 1, ""));
    let mut job = (*jobs(&plan)[0]).clone();
    let mut workflow = job.workflow.to_value();
    workflow["5"]["inputs"]["batch_size"] = 3.into();
    job.workflow = workflow.into();
    let jobs = vec![Arc::new(job)];
    let summary = run_jobs(
        options(&plan, &out, engine()),
        vec![client(&sim.url())],
        jobs.clone(),
        no_cancel(),
    )
    .await
    .unwrap();
    let images = &summary.outcomes[0].images;
    let paths: Vec<&str> = images.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "ch-07/raw/comfyui/ch07_p001_v1.png",
            "ch-07/raw/comfyui/ch07_p001_v2.png",
            "ch-07/raw/comfyui/ch07_p001_v3.png"
        ]
    );
    let distinct: std::collections::HashSet<_> = images.iter().map(|i| i.sha256).collect();
    assert_eq!(distinct.len(), 3, "the batch images should differ");
    check_run(&summary, &jobs, &out);
}
