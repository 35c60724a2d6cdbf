//! The fault suite, in process: each test runs a small chapter against a simulator with one
//! fault and checks `check_run`'s invariants plus what the fault demands. The scenarios that
//! need real processes (signals, kill -9, two runners, disk full) are in `faults_process.rs`.
//! `docs/reliability.md` lists every scenario with its test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use plasma_batch::cmd::Outcome;
use plasma_batch::engine::EngineConfig;
use plasma_batch::events::{ErrorKind, JobStatus};
use plasma_batch::plan::Job;
use plasma_batch::runner::{RunError, RunSummary, run_jobs};
use plasma_batch::sim::{Fault, SimConfig};

use crate::support::*;

/// Run a chapter of `pages` x `variants` jobs on `servers` and check the invariants.
async fn run_on(
    servers: &[String],
    pages: u16,
    variants: u32,
    config: EngineConfig,
) -> (RunSummary, Vec<Arc<Job>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&small_manifest(dir.path(), pages, variants, ""));
    let jobs = jobs(&plan);
    let out = dir.path().join("out");
    let summary = run_jobs(
        options(&plan, &out, config),
        servers.iter().map(|s| client(s)).collect(),
        jobs.clone(),
        no_cancel(),
    )
    .await
    .unwrap();
    check_run(&summary, &jobs, &out);
    (summary, jobs, dir)
}

fn all_succeeded(summary: &RunSummary) {
    assert_eq!(
        summary.totals.succeeded,
        summary.outcomes.len(),
        "{:#?}",
        summary.outcomes
    );
    assert_eq!(Outcome::of_run(summary).exit_code(), 0);
}

async fn sim_with(step_ms: u64, faults: &[&str]) -> TestSim {
    TestSim::with_config(SimConfig {
        step_ms,
        faults: faults.iter().map(|f| f.parse::<Fault>().unwrap()).collect(),
        ..SimConfig::default()
    })
    .await
}

/// Poll `check` every 10 ms until it holds; panics after 20 s.
async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `(running, pending)` prompts in the server's `/queue`.
pub async fn queue_counts(url: &str) -> (usize, usize) {
    let queue: serde_json::Value = reqwest::get(format!("{url}/queue"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let len = |key: &str| queue[key].as_array().map_or(0, Vec::len);
    (len("queue_running"), len("queue_pending"))
}

/// Wait until one prompt runs and one waits behind it on the server.
pub async fn wait_running_and_pending(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while queue_counts(url).await != (1, 1) {
        assert!(
            Instant::now() < deadline,
            "never one running and one pending prompt"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn socket_dropped_mid_render_reconnects_and_collects_every_job() {
    // Every connection is cut after 25 frames: several times per job (a 3-step render sends
    // about 20 frames), always in the middle of something.
    let sim = sim_with(2, &["drop-ws:25"]).await;
    let (summary, _, _dir) = run_on(&[sim.url()], 3, 2, engine()).await;
    all_succeeded(&summary);
    // (No check of posts_without_socket here: a server cutting the socket can always race
    // with a POST already under way.)
    let stats = sim.stats();
    assert_eq!(
        stats.prompts_accepted, 6,
        "a prompt the server still had was posted again"
    );
}

#[tokio::test]
async fn silent_socket_with_http_alive_does_not_hang_a_job() {
    let sim = sim_with(2, &["silent-ws:15"]).await;
    let (summary, _, _dir) = run_on(&[sim.url()], 2, 1, engine()).await;
    all_succeeded(&summary);
    assert_eq!(sim.stats().prompts_accepted, 2, "a prompt was resubmitted");
}

#[tokio::test]
async fn server_crash_and_restart_mid_run_resubmits_lost_prompts() {
    // The 2nd prompt crashes the server: queue and history are gone, it is back in 300 ms.
    let sim = sim_with(2, &["crash-after:2:300"]).await;
    let (summary, _, _dir) = run_on(&[sim.url()], 2, 2, engine()).await;
    all_succeeded(&summary);
    assert_eq!(sim.stats().crashes, 1);
    assert!(
        summary.outcomes.iter().any(|o| o.attempts > 1),
        "the prompt lost in the crash was not resubmitted: {:#?}",
        summary.outcomes
    );
}

#[tokio::test]
async fn server_down_at_start_fails_preflight_naming_the_server() {
    let url = unused_url();
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&small_manifest(dir.path(), 1, 1, ""));
    let out = dir.path().join("out");
    let result = run_jobs(
        options(&plan, &out, engine()),
        vec![client(&url)],
        jobs(&plan),
        no_cancel(),
    )
    .await;
    match result {
        Err(RunError::Preflight(problems)) => {
            assert!(
                problems.iter().any(|p| p.message.contains(&url)),
                "{problems:?}"
            );
        }
        Err(other) => panic!("expected a preflight failure, got {other:?}"),
        Ok(summary) => panic!("the run went ahead: {:?}", summary.totals),
    }
    // Nothing was rendered or left behind besides the empty chapter folders.
    assert!(files_under(&out.join("ch-07/raw")).is_empty());
}

/// Eight jobs on two servers; once the first holds a prompt, it goes away and never comes
/// back. Every job must succeed on the second server, the ones the first took too.
async fn first_of_two_servers_goes_away(config: EngineConfig) {
    let gone = sim_with(20, &[]).await;
    let alive = sim_with(2, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&small_manifest(dir.path(), 4, 2, ""));
    let jobs = jobs(&plan);
    let out = dir.path().join("out");
    let run = tokio::spawn(run_jobs(
        options(&plan, &out, config),
        vec![client(&gone.url()), client(&alive.url())],
        jobs.clone(),
        no_cancel(),
    ));
    wait_until("a prompt on the first server", || {
        gone.stats().prompts_accepted > 0
    })
    .await;
    gone.stop().await;
    let summary = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the jobs of the server that went away never moved on")
        .unwrap()
        .unwrap();
    check_run(&summary, &jobs, &out);
    all_succeeded(&summary);
    assert!(
        summary
            .outcomes
            .iter()
            .all(|o| o.server.as_deref() == Some(alive.url().as_str())),
        "a job claims to have finished on the dead server: {:#?}",
        summary.outcomes
    );
}

#[tokio::test]
async fn server_gone_for_good_moves_its_jobs_to_the_other_server() {
    // Its outage window (3 s here) runs out: out of rotation, its jobs move on.
    first_of_two_servers_goes_away(engine()).await;
}

#[tokio::test]
async fn a_server_away_past_handover_hands_its_jobs_to_one_that_is_up() {
    // The outage window is far off, so the server stays in rotation (it may come back),
    // but the prompts it took are rendered on the other server once it has been away for
    // `handover_after`; without that the run would wait out the whole window.
    first_of_two_servers_goes_away(EngineConfig {
        outage_window: Duration::from_secs(3600),
        handover_after: Duration::from_millis(300),
        ..engine()
    })
    .await;
}

#[tokio::test]
async fn http_500_on_the_first_post_is_retried() {
    let sim = sim_with(1, &["prompt-500:1"]).await;
    let (summary, _, _dir) = run_on(&[sim.url()], 2, 1, engine()).await;
    all_succeeded(&summary);
    assert_eq!(
        summary.outcomes.iter().map(|o| o.attempts).sum::<u32>(),
        3,
        "{:#?}",
        summary.outcomes
    );
}

#[tokio::test]
async fn http_500_on_every_post_fails_the_jobs_and_retires_the_server() {
    let sim = sim_with(1, &["prompt-500-rate:1.0"]).await;
    let (summary, _, _dir) = run_on(&[sim.url()], 3, 1, engine()).await;
    assert_eq!(summary.totals.failed, 3, "{:#?}", summary.outcomes);
    assert_eq!(
        Outcome::of_run(&summary).exit_code(),
        plasma_batch::exit_codes::JOBS_FAILED
    );
    for outcome in &summary.outcomes {
        let error = outcome.error.as_ref().unwrap();
        assert_eq!(error.kind, ErrorKind::Server, "{error:?}");
    }
    // Retired after `server_failures_to_retire` failures in a row, not after every job's
    // full retry budget: fewer posts than 3 jobs x 3 attempts.
    let posts = sim.stats().prompts_rejected;
    assert!(
        posts <= u64::from(engine().server_failures_to_retire) + 2,
        "{posts} posts"
    );
}

#[tokio::test]
async fn images_are_found_from_executed_messages_without_asking_history() {
    let sim = sim_with(1, &[]).await;
    let (summary, _, _dir) = run_on(&[sim.url()], 3, 1, engine()).await;
    all_succeeded(&summary);
    assert_eq!(sim.stats().history_requests, 0);
}

/// Run 3 jobs with `faults` and no `executed` messages, so every job's images come from
/// `/history`; all succeed, asking history once per job.
async fn completes_through_history(faults: &[&str]) {
    let faults: Vec<&str> = faults.iter().copied().chain(["drop-executed"]).collect();
    let sim = sim_with(1, &faults).await;
    let (summary, _, _dir) = run_on(&[sim.url()], 3, 1, engine()).await;
    all_succeeded(&summary);
    assert_eq!(sim.stats().history_requests, 3);
}

#[tokio::test]
async fn missed_executed_messages_are_read_from_history() {
    completes_through_history(&[]).await;
}

#[tokio::test]
async fn slow_history_still_completes() {
    completes_through_history(&["slow-history:400"]).await;
}

#[tokio::test]
async fn execution_success_before_history_is_written_still_completes() {
    completes_through_history(&["late-history:300"]).await;
}

#[tokio::test]
async fn lost_prompt_after_a_200_is_resubmitted() {
    // The server answers 200 and forgets the prompt (a restart between POST and queueing).
    let sim = sim_with(1, &["lose:1"]).await;
    let (summary, _, _dir) = run_on(&[sim.url()], 2, 1, engine()).await;
    all_succeeded(&summary);
    assert_eq!(sim.stats().prompts_accepted, 3);
}

#[tokio::test]
async fn cancel_deletes_queued_and_interrupts_running_prompts() {
    let sim = sim_with(1, &["hang:KSampler"]).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&small_manifest(dir.path(), 4, 1, ""));
    let jobs = jobs(&plan);
    let out = dir.path().join("out");
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(run_jobs(
        options(&plan, &out, engine()),
        vec![client(&sim.url())],
        jobs.clone(),
        cancel_rx,
    ));
    // One prompt running (hung), one waiting behind it on the server.
    wait_running_and_pending(&sim.url()).await;
    cancel_tx.send(true).unwrap();
    let summary = run.await.unwrap().unwrap();
    let report = check_run(&summary, &jobs, &out);
    assert!(summary.cancelled);
    assert_eq!(
        Outcome::of_run(&summary).exit_code(),
        plasma_batch::exit_codes::INTERRUPTED
    );
    assert_eq!(summary.totals.cancelled, 4, "{:#?}", summary.outcomes);
    assert!(report.jobs.iter().all(|j| j.status == JobStatus::Cancelled));
    let posted: Vec<String> = summary
        .outcomes
        .iter()
        .filter_map(|o| o.prompt_id.clone())
        .collect();
    assert_eq!(posted.len(), 2);
    let stats = sim.stats();
    for id in &posted {
        assert!(
            stats.queue_deletes.contains(id)
                || stats
                    .interrupts
                    .iter()
                    .any(|i| i.prompt_id.as_ref() == Some(id)),
            "{id} was neither deleted nor interrupted: {stats:?}"
        );
    }
    // The pending prompt is deleted before the running one is interrupted, so the server
    // never starts it: exactly one interrupt hits.
    assert_eq!(
        stats.interrupts.iter().filter(|i| i.hit.is_some()).count(),
        1,
        "{:?}",
        stats.interrupts
    );
    assert!(
        stats.interrupts.iter().all(|i| i.prompt_id.is_some()),
        "a global interrupt was sent"
    );
}

/// A run whose `folder` (under the output root) is a file: it stops with an error naming
/// the folder before any prompt is posted. (Running as root, permissions do not stop
/// writes: a file where a folder must go does.)
async fn a_file_where_a_folder_must_go_is_a_clear_error(folder: &str) {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&small_manifest(dir.path(), 1, 1, ""));
    let out = dir.path().join("out");
    let blocked = out.join(folder);
    std::fs::create_dir_all(blocked.parent().unwrap()).unwrap();
    std::fs::write(&blocked, b"not a folder").unwrap();
    let sim = sim_with(1, &[]).await.idle_ok();
    let error = run_jobs(
        options(&plan, &out, engine()),
        vec![client(&sim.url())],
        jobs(&plan),
        no_cancel(),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains(folder), "{error}");
    assert_eq!(sim.prompts_posted(), 0, "a prompt was sent anyway");
}

#[tokio::test]
async fn output_folder_that_cannot_be_created_is_a_clear_error() {
    a_file_where_a_folder_must_go_is_a_clear_error("ch-07/raw/comfyui").await;
}

#[tokio::test]
async fn two_hundred_jobs_survive_crashes_and_socket_drops() {
    let sim = sim_with(0, &["crash-every:50:100", "drop-ws:30"]).await;
    let config = EngineConfig {
        in_flight: 4,
        ..engine()
    };
    let (summary, _, _dir) = run_on(&[sim.url()], 50, 4, config).await;
    all_succeeded(&summary);
    assert_eq!(summary.outcomes.len(), 200);
    assert!(sim.stats().crashes >= 3, "{:?}", sim.stats().crashes);
}

/// A TCP proxy to `target` that relays everything, except that it swallows the answer to
/// the first `POST /prompt` (the server got and queued the prompt; the client sees the
/// connection close): a reset between server and client, after the fact.
async fn proxy_losing_first_post_answer(target: std::net::SocketAddr) -> String {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let used = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let used = used.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let swallow = Arc::new(AtomicBool::new(false));
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = {
                    let swallow = swallow.clone();
                    async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = client_read.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            if buf[..n].starts_with(b"POST /prompt")
                                && !used.swap(true, Ordering::SeqCst)
                            {
                                swallow.store(true, Ordering::SeqCst);
                            }
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = server_read.read(&mut buf).await {
                        if n == 0 || swallow.load(Ordering::SeqCst) {
                            break;
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                // Whichever side ends first closes both.
                tokio::select! { () = up => {}, () = down => {} }
            });
        }
    });
    url
}

#[tokio::test]
async fn lost_answer_to_a_post_does_not_render_the_prompt_twice() {
    let sim = sim_with(1, &[]).await;
    let proxy = proxy_losing_first_post_answer(sim.addr()).await;
    let (summary, _, _dir) = run_on(&[proxy], 2, 1, engine()).await;
    all_succeeded(&summary);
    assert_eq!(
        sim.stats().prompts_accepted,
        2,
        "the prompt whose answer was lost was posted again"
    );
    assert!(summary.outcomes.iter().all(|o| o.attempts == 1));
}

/// A TCP proxy to `target` whose first WebSocket becomes a zombie once it relayed a frame
/// containing `execution_start`: nothing more passes either way, but the connection stays
/// open, and after the client gives up on it the server side is closed only a second later
/// (a server noticing a dead peer late). Returns the URL and the `clientId` of every
/// WebSocket opened through it.
async fn proxy_with_zombie_socket(
    target: std::net::SocketAddr,
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let client_ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ids = client_ids.clone();
    let first_socket_taken = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (ids, first_socket_taken) = (ids.clone(), first_socket_taken.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let zombie_candidate = Arc::new(AtomicBool::new(false));
                let silent = Arc::new(AtomicBool::new(false));
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = {
                    let (zombie_candidate, silent) = (zombie_candidate.clone(), silent.clone());
                    async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut first = true;
                        while let Ok(n) = client_read.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            if std::mem::take(&mut first) {
                                let head = String::from_utf8_lossy(&buf[..n]);
                                if let Some(rest) = head.strip_prefix("GET /ws?clientId=") {
                                    let id: String =
                                        rest.chars().take_while(|c| !c.is_whitespace()).collect();
                                    ids.lock().unwrap().push(id);
                                    if !first_socket_taken.swap(true, Ordering::SeqCst) {
                                        zombie_candidate.store(true, Ordering::SeqCst);
                                    }
                                }
                            }
                            if silent.load(Ordering::SeqCst) {
                                continue;
                            }
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        if silent.load(Ordering::SeqCst) {
                            // The server notices the dead peer late (part of the fault).
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = server_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if silent.load(Ordering::SeqCst) {
                            continue;
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let marker = b"execution_start";
                        if zombie_candidate.load(Ordering::SeqCst)
                            && buf[..n].windows(marker.len()).any(|w| w == marker)
                        {
                            silent.store(true, Ordering::SeqCst);
                        }
                    }
                    std::future::pending::<()>().await;
                };
                tokio::select! { () = up => {}, () = down => {} }
            });
        }
    });
    (url, client_ids)
}

#[tokio::test]
async fn zombie_socket_is_replaced_under_a_fresh_client_id() {
    let sim = sim_with(1, &[]).await;
    let (proxy, client_ids) = proxy_with_zombie_socket(sim.addr()).await;
    // Enough jobs that prompts are still outstanding when the silence is noticed (three
    // ping periods), and some are posted after the new socket is up: two at a time (a
    // deeper queue could finish all twelve by polling before the silence is noticed).
    let two = engine().with_fixed_depth(Some(2));
    let (summary, _, _dir) = run_on(&[proxy], 12, 1, two).await;
    all_succeeded(&summary);
    let ids = client_ids.lock().unwrap().clone();
    assert!(
        ids.len() >= 2,
        "the zombie socket was not replaced: {ids:?}"
    );
    assert_ne!(
        ids[0], ids[1],
        "the zombie's clientId was reused: its late close unregisters the new socket (protocol §1.1)"
    );
    let stats = sim.stats();
    assert_eq!(
        stats.posts_without_socket, 0,
        "a prompt was posted on an orphaned socket"
    );
    assert_eq!(stats.prompts_accepted, 12, "a prompt was posted twice");
}

#[tokio::test]
async fn report_folder_removed_mid_run_is_made_again_for_the_final_report() {
    let sim = sim_with(20, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&small_manifest(dir.path(), 3, 1, ""));
    let jobs = jobs(&plan);
    let out = dir.path().join("out");
    let run = tokio::spawn(run_jobs(
        options(&plan, &out, engine()),
        vec![client(&sim.url())],
        jobs.clone(),
        no_cancel(),
    ));
    wait_until("a prompt on the server", || {
        sim.stats().prompts_accepted > 0
    })
    .await;
    std::fs::remove_dir_all(out.join("ch-07/reports")).unwrap();
    let summary = run.await.unwrap().unwrap();
    check_run(&summary, &jobs, &out);
    all_succeeded(&summary);
}

#[tokio::test]
async fn report_folder_that_cannot_be_created_is_a_clear_error() {
    a_file_where_a_folder_must_go_is_a_clear_error("ch-07/reports").await;
}

#[tokio::test]
async fn a_reattached_prompt_that_failed_is_rendered_again_by_the_next_run() {
    use plasma_batch::engine::ChapterOutput;
    use plasma_batch::ledger::{LEDGER_VERSION, LedgerRecord, open_submissions, read_records};
    use plasma_batch::output::ChapterDirs;
    // A killed run left prompt p1 on the server, where it failed (a node exception).
    let sim = sim_with(0, &["raise:VAEDecode"]).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&small_manifest(dir.path(), 1, 1, ""));
    let jobs = jobs(&plan);
    let job = &jobs[0];
    let out = dir.path().join("out");
    let p1 = uuid::Uuid::new_v4().to_string();
    let posted = reqwest::Client::new()
        .post(format!("{}/prompt", sim.url()))
        .json(&serde_json::json!({"prompt": job.workflow, "client_id": "killed-run", "prompt_id": p1}))
        .send()
        .await
        .unwrap();
    assert!(posted.status().is_success());
    wait_until("the prompt to fail on the server", || {
        sim.stats().executed == 1
    })
    .await;
    let (output, _) = ChapterOutput::open(ChapterDirs::new(&out, 7), 7).unwrap();
    output
        .ledger
        .append(&LedgerRecord::Submitted {
            v: LEDGER_VERSION,
            run_id: "killed".into(),
            key: job.key.clone(),
            job_hash: job.hash.to_string(),
            server: sim.url(),
            prompt_id: p1.clone(),
            attempt: 1,
        })
        .unwrap();
    drop(output);

    // The next run re-attaches to p1 instead of posting, and reports its failure.
    let rerun = || {
        run_jobs(
            options(&plan, &out, engine()),
            vec![client(&sim.url())],
            jobs.clone(),
            no_cancel(),
        )
    };
    let second = rerun().await.unwrap();
    check_run(&second, &jobs, &out);
    assert_eq!(second.outcomes[0].status, JobStatus::Failed);
    assert_eq!(second.outcomes[0].prompt_id.as_deref(), Some(p1.as_str()));
    assert_eq!(sim.stats().prompts_accepted, 1, "p1 was posted again");
    // That run ended the job: nothing is left open to re-attach to ...
    let records = read_records(&out.join("ch-07/ledger.jsonl")).unwrap();
    assert!(open_submissions(&records).is_empty(), "{records:?}");
    // ... so a third run renders the job again instead of re-reading p1's old failure.
    let third = rerun().await.unwrap();
    check_run(&third, &jobs, &out);
    assert_ne!(third.outcomes[0].prompt_id.as_deref(), Some(p1.as_str()));
    assert_eq!(sim.stats().prompts_accepted, 2);
}

/// One job against a server whose images are bad in the way `fault` makes them: the job
/// fails with a download error containing `expect`, and no image is written anywhere.
async fn bad_image_fails_the_job(fault: &str, expect: &str) {
    let sim = sim_with(0, &[fault]).await;
    let (summary, _, dir) = run_on(&[sim.url()], 1, 1, engine()).await;
    let outcome = &summary.outcomes[0];
    assert_eq!(outcome.status, JobStatus::Failed, "{fault}");
    let error = outcome.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Download, "{fault}: {error:?}");
    assert!(error.message.contains(expect), "{fault}: {}", error.message);
    assert!(files_under(&dir.path().join("out/ch-07/raw")).is_empty());
    // Nothing was written next to the output root either (`../../` names).
    let mut outside = files_under(dir.path());
    outside.retain(|f| !f.starts_with("out/") && f != "chapter.toml");
    assert!(outside.is_empty(), "{outside:?}");
}

#[tokio::test]
async fn view_truncated_fails_the_job_without_an_image() {
    bad_image_fails_the_job("view-truncated", "not a complete PNG").await;
}

#[tokio::test]
async fn view_not_png_fails_the_job_without_an_image() {
    bad_image_fails_the_job("view-not-png", "not a complete PNG").await;
}

#[tokio::test]
async fn history_naming_parent_paths_fails_the_job_and_fetches_nothing() {
    bad_image_fails_the_job("traversal-filenames", "unsafe output file").await;
}

/// Run 24 jobs on a simulator with `step_ms` and `latency_ms` under `config`; returns the
/// most prompts the server held at once.
async fn peak_queue_of(step_ms: u64, latency_ms: u64, config: EngineConfig) -> usize {
    let sim = TestSim::with_config(SimConfig {
        step_ms,
        latency_ms,
        ..SimConfig::default()
    })
    .await;
    let (summary, _, _dir) = run_on(&[sim.url()], 24, 1, config).await;
    all_succeeded(&summary);
    sim.stats().peak_queue
}

#[tokio::test]
async fn renders_shorter_than_the_round_trip_get_a_deeper_queue() {
    // Instant renders 30 ms away: two prompts would leave the server idle for most of each
    // refill; the depth grows (to at most in_flight_max).
    let peak = peak_queue_of(0, 30, engine()).await;
    assert!((3..=8).contains(&peak), "peak queue {peak}");
    // A fixed depth stays fixed however short the renders.
    let fixed = engine().with_fixed_depth(Some(2));
    assert!(peak_queue_of(0, 30, fixed).await <= 2);
}

#[tokio::test]
async fn renders_longer_than_the_round_trip_keep_two_on_the_server() {
    // 3 steps x 40 ms on loopback: one rendering, one waiting is enough.
    assert!(peak_queue_of(40, 0, engine()).await <= 2);
}

#[tokio::test]
async fn renders_under_50_ms_are_refilled_in_batches() {
    // 3 steps x 4 ms on loopback: two prompts would cover the refill, but they are posted
    // in batches that bring the server back up to in_flight_max (a real ComfyUI renders
    // more slowly while it handles each POST; several together interrupt it once).
    let peak = peak_queue_of(4, 0, engine()).await;
    assert!((6..=8).contains(&peak), "peak queue {peak}");
}
