//! The job service (`plasma-batch serve`) over real loopback HTTP against the simulator, in
//! process through the library and as the real binary. Every JSON answer is checked against
//! the schema `docs/openapi.json` documents for that operation and status.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use plasma_batch::serve::{ServeConfig, ServeError, Service, ShutdownMode};
use plasma_batch::sim::Sim;
use serde_json::{Value, json};

use crate::support::*;

/// Long enough for a slow, shared CI machine; polls end as soon as the state is reached.
const DEADLINE: Duration = Duration::from_secs(30);

pub(crate) fn config(sims: &[&Sim], out: &Path) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        servers: sims.iter().map(|s| client(&s.url())).collect(),
        out_root: out.to_owned(),
        workflow: None,
        max_queue: 1000,
        max_input_bytes: plasma_batch::serve::inputs::DEFAULT_MAX_INPUT_BYTES,
        token: None,
        engine: engine(),
        on_shutdown: ShutdownMode::Cancel,
    }
}

async fn start(config: ServeConfig) -> Service {
    Service::start(config).await.unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// A small, quick job: 64x96, 3 steps.
fn small(extra: Value) -> Value {
    let mut body = json!({
        "prompt_text": "panel: a quiet harbour at night",
        "steps": 3,
        "resolution": {"width": 64, "height": 96},
    });
    let Value::Object(extra) = extra else {
        panic!("small() takes an object, not {extra}")
    };
    for (k, v) in extra {
        body[k] = v;
    }
    body
}

fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_json::from_slice(&std::fs::read(repo().join("docs/openapi.json")).unwrap()).unwrap()
    })
}

/// Check a JSON body against the schema the document gives for `method path -> status`.
fn check_schema(method: &str, path: &str, status: u16, body: &Value) {
    let doc = openapi();
    let response = &doc["paths"][path][method]["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} answered {status}, which docs/openapi.json does not document"
    );
    let schema_ref = response["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .unwrap_or_else(|| panic!("{method} {path} {status} has no JSON schema ref"));
    let mut schema = doc.clone();
    schema["$ref"] = json!(schema_ref);
    let validator = jsonschema::validator_for(&schema).expect("the OpenAPI schemas are valid");
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status} does not match {schema_ref}: {errors:#?}\n{body:#}"
    );
}

/// One API call: status and JSON body, checked against the document.
async fn call(
    method: &str,
    url: &str,
    path: &str,
    template: &str,
    body: Option<&Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = match method {
        "get" => http().get(format!("{url}{path}")),
        "post" => http().post(format!("{url}{path}")),
        "delete" => http().delete(format!("{url}{path}")),
        _ => unreachable!(),
    };
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let value: Value = response.json().await.unwrap();
    check_schema(method, template, status, &value);
    (status, value, headers)
}

async fn post_job(url: &str, body: &Value) -> (u16, Value) {
    let (status, value, headers) = call("post", url, "/jobs", "/jobs", Some(body)).await;
    if status == 202 {
        let id = value["jobId"].as_str().unwrap();
        assert_eq!(headers["location"], format!("/jobs/{id}").as_str());
    }
    (status, value)
}

async fn get_job(url: &str, id: &str) -> Value {
    let (status, value, _) = call("get", url, &format!("/jobs/{id}"), "/jobs/{id}", None).await;
    assert_eq!(status, 200, "{value}");
    value
}

/// Poll the job until `done` holds for it; every status seen on the way, in order.
pub(crate) async fn wait_job(
    url: &str,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> (Value, Vec<String>) {
    let start = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    loop {
        let job = get_job(url, id).await;
        let status = job["status"].as_str().unwrap().to_owned();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if done(&job) {
            return (job, seen);
        }
        assert!(
            start.elapsed() < DEADLINE,
            "job {id} never got there; last: {job:#}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn status_is(status: &'static str) -> impl Fn(&Value) -> bool {
    move |job| job["status"] == status
}

fn id_of(accepted: &Value) -> String {
    accepted["jobId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_job_goes_from_queued_to_running_to_complete_and_its_image_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sim = TestSim::with_config(plasma_batch::sim::SimConfig {
        step_ms: 20,
        ..Default::default()
    })
    .await;
    let mut cfg = config(&[&sim], &out);
    cfg.engine = cfg.engine.with_fixed_depth(Some(1));
    let service = start(cfg).await;
    let url = service.url();

    // With one slot, the second job waits in our queue while the first renders.
    let body = small(json!({"chapter": 3, "page": 4, "steps": 25}));
    let (status, first) = post_job(&url, &body).await;
    assert_eq!(status, 202);
    assert_eq!(first["status"], "queued");
    let (_, second) = post_job(&url, &body).await;
    let second_id = id_of(&second);
    let (queued, _) = wait_job(&url, &second_id, |_| true).await;
    assert_eq!(queued["status"], "queued");
    assert!(queued["promptId"].is_null(), "not posted yet: {queued:#}");

    let (job, seen) = wait_job(&url, &second_id, status_is("complete")).await;
    assert_eq!(
        seen,
        ["queued", "running", "complete"],
        "{second_id} went {seen:?}"
    );
    let (first_job, _) = wait_job(&url, &id_of(&first), status_is("complete")).await;

    // The seed was drawn once and kept; the request is stored with its defaults.
    assert_eq!(job["seed"], second["seed"]);
    assert_eq!(job["seedDrawn"], true);
    assert_eq!(job["request"]["seed"], second["seed"]);
    assert_eq!(job["request"]["cfg"], 7.0);
    assert!(job["promptId"].is_string() && job["server"] == sim.url().as_str());
    assert!(job["key"].as_str().unwrap().starts_with("ch03_p004_j"));

    // Same chapter and page: the next free versions, named like `run` names them.
    assert_eq!(first_job["imagePath"], "ch-03/raw/comfyui/ch03_p004_v1.png");
    assert_eq!(job["imagePath"], "ch-03/raw/comfyui/ch03_p004_v2.png");
    assert_eq!(job["imageFile"], "ch03_p004_v2.png");
    let file = out.join(job["imagePath"].as_str().unwrap());
    assert_eq!(png_size(&file), (64, 96));

    let response = http()
        .get(format!("{url}/jobs/{second_id}/image"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.as_ref(), std::fs::read(&file).unwrap().as_slice());

    // The chapter ledger knows the image under the job's key, as for `run`.
    let ledger = std::fs::read_to_string(out.join("ch-03/ledger.jsonl")).unwrap();
    assert!(ledger.contains(job["key"].as_str().unwrap()));
    assert!(ledger.contains("raw/comfyui/ch03_p004_v2.png"));

    // The list, newest first.
    let (status, list, _) = call("get", &url, "/jobs?limit=1", "/jobs", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 2);
    assert_eq!(list["jobs"][0]["jobId"], second_id.as_str());
    assert_eq!(list["nextOffset"], 1);
    let (status, list, _) =
        call("get", &url, "/jobs?status=complete&offset=1", "/jobs", None).await;
    assert_eq!(
        (status, list["jobs"][0]["jobId"].clone()),
        (200, first["jobId"].clone())
    );
    let (status, _, _) = call("get", &url, "/jobs?limit=0", "/jobs", None).await;
    assert_eq!(status, 400);

    let (status, _, _) = call("get", &url, "/healthz", "/healthz", None).await;
    assert_eq!(status, 200);
    let (status, ready, _) = call("get", &url, "/readyz", "/readyz", None).await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
    let served: Value = http()
        .get(format!("{url}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(&served, openapi());

    let stats = sim.stats();
    assert_eq!(
        stats.posts_without_socket, 0,
        "posted before the socket was open"
    );
    assert!(
        stats.peak_queue <= 1,
        "more than in_flight prompts on the server"
    );
    service.shutdown().await.unwrap();
}

#[tokio::test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario, a table of cases checked in turn"
)]
async fn every_field_is_validated_with_its_name_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&[]).await.idle_ok();
    let service = start(config(&[&sim], dir.path())).await;
    let url = service.url();
    let cases: &[(Value, &str, &str)] = &[
        (json!({}), "prompt_text", "is required"),
        (
            json!({"prompt_text": "  "}),
            "prompt_text",
            "must not be empty",
        ),
        (json!({"prompt_text": 7}), "prompt_text", "must be a string"),
        (
            json!({"prompt_text": "a", "negative_prompt": []}),
            "negative_prompt",
            "must be a string",
        ),
        (
            json!({"prompt_text": "a", "seed": -1}),
            "seed",
            "must be in 0..=",
        ),
        (
            json!({"prompt_text": "a", "seed": 1.5}),
            "seed",
            "must be an integer",
        ),
        (
            json!({"prompt_text": "a", "steps": 0}),
            "steps",
            "must be in 1..=10000",
        ),
        (
            json!({"prompt_text": "a", "steps": 10001}),
            "steps",
            "must be in 1..=10000",
        ),
        (
            json!({"prompt_text": "a", "cfg": 100.5}),
            "cfg",
            "must be in 0.0..=100.0",
        ),
        (
            json!({"prompt_text": "a", "cfg": "7"}),
            "cfg",
            "must be a number",
        ),
        (
            json!({"prompt_text": "a", "sampler": ""}),
            "sampler",
            "must not be empty",
        ),
        (
            json!({"prompt_text": "a", "scheduler": "karas"}),
            "scheduler",
            "did you mean `karras`?",
        ),
        (
            json!({"prompt_text": "a", "checkpoint_name": ""}),
            "checkpoint_name",
            "must not be empty",
        ),
        (
            json!({"prompt_text": "a", "lora": "ink"}),
            "lora",
            "must be an object",
        ),
        (
            json!({"prompt_text": "a", "lora": {}}),
            "lora.name",
            "is required",
        ),
        (
            json!({"prompt_text": "a", "lora": {"name": "x", "strength_clip": 101}}),
            "lora.strength_clip",
            "must be in",
        ),
        (
            json!({"prompt_text": "a", "resolution": {"width": 65, "height": 64}}),
            "resolution.width",
            "multiple of 8",
        ),
        (
            json!({"prompt_text": "a", "resolution": {"width": 64, "height": 8}}),
            "resolution.height",
            "must be in 16..=16384",
        ),
        (
            json!({"prompt_text": "a", "resolution": {"width": 64}}),
            "resolution.height",
            "is required",
        ),
        (
            json!({"prompt_text": "a", "resolution": [64, 64]}),
            "resolution",
            "must be an object",
        ),
        (
            json!({"prompt_text": "a", "chapter": 0}),
            "chapter",
            "must be in 1..=999",
        ),
        (
            json!({"prompt_text": "a", "page": 1000}),
            "page",
            "must be in 1..=999",
        ),
        (
            json!({"prompt_text": "a", "pgae": 2}),
            "pgae",
            "unknown field; did you mean `page`?",
        ),
        (
            json!({"prompt_text": "a", "resolution": {"width": 64, "height": 64, "depth": 1}}),
            "resolution.depth",
            "unknown field",
        ),
        (json!([1, 2]), "", "must be a JSON object"),
    ];
    for (body, field, reason) in cases {
        let (status, error) = post_job(&url, body).await;
        assert_eq!(status, 400, "{body} was accepted");
        assert_eq!(error["field"], *field, "{body}: {error:#}");
        assert!(
            error["reason"].as_str().unwrap().contains(reason),
            "{body}: {error:#}"
        );
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("invalid job request")
        );
    }
    // Every problem at once.
    let (_, error) = post_job(&url, &json!({"steps": 0, "cfg": -1, "page": 0})).await;
    let fields: Vec<&str> = error["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["prompt_text", "steps", "cfg", "page"]);
    // Not JSON at all.
    let response = http()
        .post(format!("{url}/jobs"))
        .header("content-type", "application/json")
        .body("{prompt_text")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    check_schema("post", "/jobs", 400, &error);
    assert!(error["reason"].as_str().unwrap().contains("not valid JSON"));
    assert_eq!(
        sim.prompts_posted(),
        0,
        "nothing invalid reached the server"
    );
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_ids_and_routes_are_404() {
    let dir = tempfile::tempdir().unwrap();
    // No job is posted: only unknown ids and routes.
    let sim = TestSim::start(&[]).await.idle_ok();
    let service = start(config(&[&sim], dir.path())).await;
    let url = service.url();
    let id = uuid::Uuid::new_v4();
    for (method, path, template) in [
        ("get", format!("/jobs/{id}"), "/jobs/{id}"),
        ("delete", format!("/jobs/{id}"), "/jobs/{id}"),
        ("get", format!("/jobs/{id}/image"), "/jobs/{id}/image"),
        ("get", "/jobs/not-a-uuid".to_owned(), "/jobs/{id}"),
    ] {
        let (status, error, _) = call(method, &url, &path, template, None).await;
        assert_eq!(status, 404, "{method} {path}");
        assert!(error["error"].as_str().unwrap().contains("no job with id"));
    }
    let response = http().get(format!("{url}/nothing")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    // One service per output root: a second one would compact the journal under the first.
    match Service::start(config(&[&sim], dir.path())).await {
        Err(ServeError::InUse(message)) => assert!(message.contains("in use"), "{message}"),
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(_) => panic!("two services share an output root"),
    }
    service.shutdown().await.unwrap();
    Service::start(config(&[&sim], dir.path()))
        .await
        .expect("free again after a shutdown")
        .shutdown()
        .await
        .unwrap();
}

#[tokio::test]
async fn cancelling_removes_queued_jobs_and_deletes_or_interrupts_posted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&["hang:KSampler"]).await;
    let service = start(config(&[&sim], dir.path())).await;
    let url = service.url();
    // Two slots: A runs (and hangs), B waits in ComfyUI's queue, C in ours.
    let a = id_of(&post_job(&url, &small(json!({}))).await.1);
    let (a_job, _) = wait_job(&url, &a, status_is("running")).await;
    let b = id_of(&post_job(&url, &small(json!({"prompt_text": "b"}))).await.1);
    let (b_job, _) = wait_job(&url, &b, |j| j["promptId"].is_string()).await;
    let c = id_of(&post_job(&url, &small(json!({"prompt_text": "c"}))).await.1);
    let c_job = get_job(&url, &c).await;
    assert_eq!(c_job["status"], "queued");
    assert!(c_job["promptId"].is_null());
    let posted = sim.stats().prompts_accepted;

    let (status, c_job, _) = call("delete", &url, &format!("/jobs/{c}"), "/jobs/{id}", None).await;
    assert_eq!((status, c_job["status"].as_str()), (200, Some("cancelled")));
    assert_eq!(c_job["error"]["kind"], "cancelled");
    assert_eq!(
        sim.stats().prompts_accepted,
        posted,
        "C never reached the server"
    );

    let b_prompt = b_job["promptId"].as_str().unwrap().to_owned();
    let (status, b_job, _) = call("delete", &url, &format!("/jobs/{b}"), "/jobs/{id}", None).await;
    assert_eq!((status, b_job["status"].as_str()), (200, Some("cancelled")));
    assert!(
        sim.stats().queue_deletes.contains(&b_prompt),
        "B was not deleted from ComfyUI's queue: {:?}",
        sim.stats()
    );

    let a_prompt = a_job["promptId"].as_str().unwrap().to_owned();
    let (status, a_job, _) = call("delete", &url, &format!("/jobs/{a}"), "/jobs/{id}", None).await;
    assert_eq!((status, a_job["status"].as_str()), (200, Some("cancelled")));
    let interrupts = sim.stats().interrupts;
    assert!(
        interrupts
            .iter()
            .any(|i| i.prompt_id.as_deref() == Some(&a_prompt)
                && i.hit.as_deref() == Some(&a_prompt)),
        "A was not interrupted on the server: {interrupts:?}"
    );
    assert!(
        interrupts.iter().all(|i| i.prompt_id.is_some()),
        "a global interrupt was sent"
    );

    // Over is over.
    let (status, _, _) = call("delete", &url, &format!("/jobs/{a}"), "/jobs/{id}", None).await;
    assert_eq!(status, 409);
    let (status, error, _) = call(
        "get",
        &url,
        &format!("/jobs/{a}/image"),
        "/jobs/{id}/image",
        None,
    )
    .await;
    assert_eq!(status, 409, "{error}");
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_job_past_its_timeout_fails_and_is_interrupted_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&["hang:KSampler"]).await;
    let mut cfg = config(&[&sim], dir.path());
    cfg.engine.timeout = Duration::from_millis(300);
    let service = start(cfg).await;
    let url = service.url();
    let id = id_of(&post_job(&url, &small(json!({}))).await.1);
    let (job, seen) = wait_job(&url, &id, |j| {
        j["status"] != "queued" && j["status"] != "running"
    })
    .await;
    assert_eq!(job["status"], "failed", "{seen:?}");
    assert_eq!(job["error"]["kind"], "timeout", "{job:#}");
    assert!(job["imagePath"].is_null());
    let prompt = job["promptId"].as_str().unwrap();
    assert!(
        sim.stats()
            .interrupts
            .iter()
            .any(|i| i.hit.as_deref() == Some(prompt)),
        "the timed-out prompt kept running on the server"
    );
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn after_a_restart_finished_jobs_answer_and_queued_ones_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");

    // 1: a job finishes.
    let good = TestSim::start(&[]).await;
    let service = start(config(&[&good], &out)).await;
    let url = service.url();
    let done = id_of(&post_job(&url, &small(json!({"page": 2}))).await.1);
    let (done_job, _) = wait_job(&url, &done, status_is("complete")).await;
    service.shutdown().await.unwrap();

    // 2: one job running (it hangs), one in our queue, when the service stops.
    let hanging = TestSim::start(&["hang:KSampler"]).await;
    let mut cfg = config(&[&hanging], &out);
    cfg.engine = cfg.engine.with_fixed_depth(Some(1));
    let service = start(cfg).await;
    let url = service.url();
    let running = id_of(&post_job(&url, &small(json!({"page": 3}))).await.1);
    let (running_job, _) = wait_job(&url, &running, status_is("running")).await;
    let queued = id_of(&post_job(&url, &small(json!({"page": 4}))).await.1);
    assert_eq!(get_job(&url, &queued).await["status"], "queued");
    service.shutdown().await.unwrap();
    let prompt = running_job["promptId"].as_str().unwrap();
    assert!(
        hanging
            .stats()
            .interrupts
            .iter()
            .any(|i| i.hit.as_deref() == Some(prompt)),
        "the running job was not interrupted at shutdown"
    );
    assert_eq!(hanging.stats().prompts_accepted, 1);

    // 3: both run after the restart; the finished one still answers as it was.
    let service = start(config(&[&good], &out)).await;
    let url = service.url();
    assert_eq!(get_job(&url, &done).await, done_job);
    let (job, _) = wait_job(&url, &running, status_is("complete")).await;
    assert_eq!(
        job["seed"], running_job["seed"],
        "the same job, not a new one"
    );
    assert_eq!(job["imagePath"], "ch-01/raw/comfyui/ch01_p003_v1.png");
    let (job, _) = wait_job(&url, &queued, status_is("complete")).await;
    assert_eq!(job["imagePath"], "ch-01/raw/comfyui/ch01_p004_v1.png");
    let (_, list, _) = call("get", &url, "/jobs", "/jobs", None).await;
    assert_eq!(list["total"], 3);
    service.shutdown().await.unwrap();
    // The journal keeps one line per job after compaction, plus what happened since.
    let journal = std::fs::read_to_string(out.join("serve/jobs.jsonl")).unwrap();
    assert!(journal.lines().count() <= 5, "{journal}");
}

#[tokio::test]
async fn a_full_queue_answers_429() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&["hang:KSampler"]).await;
    let mut cfg = config(&[&sim], dir.path());
    cfg.max_queue = 2;
    let service = start(cfg).await;
    let url = service.url();
    let first = id_of(&post_job(&url, &small(json!({}))).await.1);
    assert_eq!(post_job(&url, &small(json!({}))).await.0, 202);
    let (status, headers, error) = send(
        http().post(format!("{url}/jobs")).json(&small(json!({}))),
        "post",
        "/jobs",
    )
    .await;
    assert_eq!(status, 429, "{error}");
    assert!(error["error"].as_str().unwrap().contains("--max-queue 2"));
    assert_eq!(headers["retry-after"], "5");
    // A finished job frees its place.
    call(
        "delete",
        &url,
        &format!("/jobs/{first}"),
        "/jobs/{id}",
        None,
    )
    .await;
    assert_eq!(post_job(&url, &small(json!({}))).await.0, 202);
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_hundred_concurrent_posts_make_a_hundred_jobs_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sim = TestSim::with_config(plasma_batch::sim::SimConfig {
        step_ms: 0,
        ..Default::default()
    })
    .await;
    let service = start(config(&[&sim], &out)).await;
    let url = service.url();
    let body = small(json!({"chapter": 5, "steps": 1}));
    let posts = (0..100).map(|_| {
        let (url, body) = (url.clone(), body.clone());
        tokio::spawn(async move { post_job(&url, &body).await })
    });
    let mut ids = HashSet::new();
    for post in posts {
        let (status, accepted) = post.await.unwrap();
        assert_eq!(status, 202);
        ids.insert(id_of(&accepted));
    }
    assert_eq!(ids.len(), 100);
    let mut files = HashSet::new();
    for id in &ids {
        let (job, _) = wait_job(&url, id, status_is("complete")).await;
        files.insert(job["imageFile"].as_str().unwrap().to_owned());
    }
    let expected: HashSet<String> = (1..=100).map(|v| format!("ch05_p001_v{v}.png")).collect();
    assert_eq!(files, expected);
    let on_disk: HashSet<String> = std::fs::read_dir(out.join("ch-05/raw/comfyui"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk, expected);
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_token_is_required_off_loopback_and_checked_when_given() {
    let dir = tempfile::tempdir().unwrap();
    // Every job here is refused: no prompt may reach the simulator.
    let sim = TestSim::start(&[]).await.idle_ok();
    let mut cfg = config(&[&sim], dir.path());
    cfg.listen = "0.0.0.0:0".parse().unwrap();
    match Service::start(cfg.clone()).await {
        Err(ServeError::TokenRequired(_)) => {}
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(_) => panic!("listened on 0.0.0.0 without a token"),
    }
    // A token that could be guessed is no lock.
    cfg.token = Some("s3cret".to_owned());
    match Service::start(cfg.clone()).await {
        Err(e @ ServeError::TokenTooShort(_)) => {
            assert!(e.to_string().contains("shorter than 16 characters"), "{e}");
        }
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(_) => panic!("listened on 0.0.0.0 with a 6-character token"),
    }
    let token = "s3cret-0123456789";
    cfg.token = Some(token.to_owned());
    let service = start(cfg).await;
    // Only ever talk to it over loopback.
    let url = format!("http://127.0.0.1:{}", service.addr().port());
    let (status, error, headers) = call("get", &url, "/jobs", "/jobs", None).await;
    assert_eq!(status, 401, "{error}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _) = post_job(&url, &small(json!({}))).await;
    assert_eq!(status, 401);
    // The scheme name is case-insensitive (RFC 7235); the token is not.
    for (value, expected) in [
        ("Bearer wrong-0123456789".to_owned(), 401),
        (format!("Bearer {}", token.to_uppercase()), 401),
        (format!("Bearer {token}"), 200),
        (format!("bearer {token}"), 200),
        (format!("BEARER  {token}"), 200),
        (format!("Basic {token}"), 401),
        (token.to_owned(), 401),
    ] {
        let response = http()
            .get(format!("{url}/jobs"))
            .header("authorization", &value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "Authorization: {value}");
    }
    let response = http().get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200, "/healthz needs no token");
    service.shutdown().await.unwrap();
    assert_eq!(sim.prompts_posted(), 0, "a refused job reached the server");
}

fn binary() -> PathBuf {
    assert_cmd::cargo::cargo_bin("plasma-batch")
}

/// The real binary as `serve ARGS --listen 127.0.0.1:0 --out OUT` (stderr piped), once it
/// printed its URL.
async fn spawn_serve(
    args: &[&str],
    out: &Path,
    token: Option<&str>,
) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut command = tokio::process::Command::new(binary());
    command
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--out"])
        .arg(out)
        .env_remove("PLASMA_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(token) = token {
        command.env("PLASMA_TOKEN", token);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_default();
    let url = first
        .strip_prefix("plasma-batch serve listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
        .to_owned();
    // Keep reading so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

#[test]
fn the_binary_refuses_a_public_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(binary())
        .args(["serve", "--sim", "--listen", "0.0.0.0:0", "--out"])
        .arg(dir.path())
        .env_remove("PLASMA_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without a token"), "{stderr}");
    assert!(stderr.contains("--token"), "{stderr}");
}

#[tokio::test]
async fn the_binary_serves_jobs_on_the_simulator_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) =
        spawn_serve(&["--sim", "--sim-step-ms", "1"], dir.path(), Some("t0ken")).await;
    assert!(url.starts_with("http://127.0.0.1:"));
    let client = http();
    let response = client
        .post(format!("{url}/jobs"))
        .bearer_auth("t0ken")
        .json(&small(json!({"chapter": 2, "page": 9})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = id_of(&response.json().await.unwrap());
    let start = Instant::now();
    let job = loop {
        let job: Value = client
            .get(format!("{url}/jobs/{id}"))
            .bearer_auth("t0ken")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == "complete" {
            break job;
        }
        assert!(start.elapsed() < DEADLINE, "{job:#}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    check_schema("get", "/jobs/{id}", 200, &job);
    assert_eq!(job["imagePath"], "ch-02/raw/comfyui/ch02_p009_v1.png");
    let image = client
        .get(format!("{url}/jobs/{id}/image"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        image.as_ref(),
        std::fs::read(dir.path().join("ch-02/raw/comfyui/ch02_p009_v1.png"))
            .unwrap()
            .as_slice()
    );

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("the service exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let journal = std::fs::read_to_string(dir.path().join("serve/jobs.jsonl")).unwrap();
    assert!(journal.contains(&id) && journal.contains("\"complete\""));
}

#[tokio::test]
async fn with_no_server_up_readyz_is_503_and_jobs_wait_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let dead = unused_url();
    let mut cfg = config(&[], &out);
    cfg.servers = vec![client(&dead)];
    cfg.on_shutdown = ShutdownMode::Finish;
    let service = start(cfg).await;
    let url = service.url();
    let (status, ready, _) = call("get", &url, "/readyz", "/readyz", None).await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (503, Some("unavailable"))
    );
    assert_eq!(ready["servers"][0]["reachable"], false);
    let (status, _, _) = call("get", &url, "/healthz", "/healthz", None).await;
    assert_eq!(status, 200);
    let id = id_of(&post_job(&url, &small(json!({}))).await.1);
    assert_eq!(get_job(&url, &id).await["status"], "queued");
    // Stopping does not wait for a server that is down.
    tokio::time::timeout(DEADLINE, service.shutdown())
        .await
        .expect("shutdown returned")
        .unwrap();

    let good = TestSim::start(&[]).await;
    let service = start(config(&[&good], &out)).await;
    let (job, _) = wait_job(&service.url(), &id, status_is("complete")).await;
    assert_eq!(job["imagePath"], "ch-01/raw/comfyui/ch01_p001_v1.png");
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lora_picks_the_lora_workflow_unless_another_workflow_is_forced() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&[]).await;
    let service = start(config(&[&sim], dir.path())).await;
    let url = service.url();
    let lora = json!({"lora": {"name": "inkline_v2.safetensors", "strength_clip": 0.5}});
    let id = id_of(&post_job(&url, &small(lora.clone())).await.1);
    let (job, _) = wait_job(&url, &id, |j| {
        j["status"] != "queued" && j["status"] != "running"
    })
    .await;
    assert_eq!(job["status"], "complete", "{job:#}");
    assert_eq!(
        job["request"]["lora"],
        json!({"name": "inkline_v2.safetensors", "strength_model": 1.0, "strength_clip": 0.5})
    );
    service.shutdown().await.unwrap();

    let mut cfg = config(&[&sim], dir.path());
    cfg.workflow = Some(repo().join("workflows/txt2img.json"));
    let service = start(cfg).await;
    let (status, error) = post_job(&service.url(), &small(lora)).await;
    assert_eq!(status, 400);
    assert_eq!(error["field"], "lora");
    assert!(
        error["reason"]
            .as_str()
            .unwrap()
            .contains("no {{lora_name}} slot"),
        "{error}"
    );
    assert_eq!(post_job(&service.url(), &small(json!({}))).await.0, 202);
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_job_running_when_the_process_is_killed_is_re_attached_not_posted_again() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::with_config(plasma_batch::sim::SimConfig {
        step_ms: 10,
        ..Default::default()
    })
    .await;
    let (mut child, url) = spawn_serve(&["--server", &sim.url()], dir.path(), None).await;
    let id = id_of(
        &post_job(&url, &small(json!({"steps": 100, "page": 6})))
            .await
            .1,
    );
    let (running, _) = wait_job(&url, &id, status_is("running")).await;
    child.kill().await.unwrap(); // SIGKILL: no shutdown, nothing synced
    assert_eq!(sim.stats().prompts_accepted, 1);

    let service = start(config(&[&sim], dir.path())).await;
    let (job, _) = wait_job(&service.url(), &id, status_is("complete")).await;
    assert_eq!(
        job["promptId"], running["promptId"],
        "the same prompt, found again"
    );
    assert_eq!(job["imagePath"], "ch-01/raw/comfyui/ch01_p006_v1.png");
    assert_eq!(
        sim.stats().prompts_accepted,
        1,
        "the prompt was posted twice"
    );
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn stopping_refuses_new_jobs_waits_for_posted_ones_and_keeps_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let hanging = TestSim::start(&["hang:KSampler"]).await;
    let mut cfg = config(&[&hanging], &out);
    cfg.engine = cfg.engine.with_fixed_depth(Some(1));
    cfg.on_shutdown = ShutdownMode::Finish;
    let service = start(cfg).await;
    let url = service.url();
    let a = id_of(&post_job(&url, &small(json!({"page": 1}))).await.1);
    let (a_job, _) = wait_job(&url, &a, status_is("running")).await;
    let b = id_of(&post_job(&url, &small(json!({"page": 2}))).await.1);

    let hurry = service.hurry();
    let stopping = tokio::spawn(service.shutdown());
    // An empty body is a 400 until the service drains, then a 503: no job is created.
    let since = Instant::now();
    loop {
        let (status, error) = post_job(&url, &json!({})).await;
        if status == 503 {
            assert!(error["error"].as_str().unwrap().contains("shutting down"));
            break;
        }
        assert_eq!(status, 400);
        assert!(since.elapsed() < DEADLINE, "never refused new jobs");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Still answering, and still waiting for A, which hangs on its server.
    assert_eq!(get_job(&url, &a).await["status"], "running");
    assert_eq!(get_job(&url, &b).await["status"], "queued");
    assert!(!stopping.is_finished());
    // The second signal: interrupt what is posted.
    hurry.send(true).unwrap();
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("stopped after the interrupt")
        .unwrap()
        .unwrap();
    let prompt = a_job["promptId"].as_str().unwrap();
    assert!(
        hanging
            .stats()
            .interrupts
            .iter()
            .any(|i| i.hit.as_deref() == Some(prompt))
    );
    assert_eq!(hanging.stats().prompts_accepted, 1, "B was never posted");

    let good = TestSim::start(&[]).await;
    let service = start(config(&[&good], &out)).await;
    for id in [&a, &b] {
        wait_job(&service.url(), id, status_is("complete")).await;
    }
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_transient_server_error_is_retried_like_in_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&["prompt-500:1"]).await;
    let service = start(config(&[&sim], dir.path())).await;
    let url = service.url();
    let id = id_of(&post_job(&url, &small(json!({}))).await.1);
    let (job, _) = wait_job(&url, &id, |j| {
        j["status"] != "queued" && j["status"] != "running"
    })
    .await;
    assert_eq!(job["status"], "complete", "{job:#}");
    assert_eq!(job["attempts"], 2);
    assert_eq!(sim.stats().prompts_accepted, 1);
    service.shutdown().await.unwrap();
}

#[test]
fn the_binary_refuses_a_short_token_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(binary())
        .args(["serve", "--sim", "--listen", "0.0.0.0:0", "--out"])
        .arg(dir.path())
        .env("PLASMA_TOKEN", "x")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("shorter than 16 characters"), "{stderr}");
    assert!(
        !stderr.contains(" x "),
        "the token is not printed: {stderr}"
    );
}

/// A raw request: status, headers and the JSON body (checked against the document).
async fn send(
    request: reqwest::RequestBuilder,
    method: &str,
    template: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    assert_eq!(
        headers["content-type"], "application/json",
        "{method} {template} {status} is not JSON"
    );
    let body: Value = response.json().await.unwrap();
    check_schema(method, template, status, &body);
    (status, headers, body)
}

#[tokio::test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario, a table of cases checked in turn"
)]
async fn requests_a_web_page_could_send_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&[]).await;
    let service = start(config(&[&sim], dir.path())).await;
    let url = service.url();
    let port = service.addr().port();
    let body = serde_json::to_string(&small(json!({}))).unwrap();

    // The classic cross-site form post: text/plain needs no CORS preflight.
    let (status, _, error) = send(
        http()
            .post(format!("{url}/jobs"))
            .header("origin", "http://evil.example")
            .header("content-type", "text/plain")
            .body(body.clone()),
        "post",
        "/jobs",
    )
    .await;
    assert_eq!(status, 403, "{error}");
    assert!(error["error"].as_str().unwrap().contains("evil.example"));
    // The same from a program without an Origin: still not JSON.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = http().post(format!("{url}/jobs")).body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let (status, _, error) = send(request, "post", "/jobs").await;
        assert_eq!(status, 415, "{content_type:?}: {error}");
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("application/json")
        );
    }
    // A foreign Origin with JSON too, on every route, and `null` (sandboxed pages).
    for origin in [
        "http://evil.example",
        "null",
        "https://127.0.0.1",
        &format!("http://127.0.0.1:{}", port.wrapping_add(1)),
    ] {
        let (status, _, _) = send(
            http()
                .post(format!("{url}/jobs"))
                .header("origin", origin)
                .json(&small(json!({}))),
            "post",
            "/jobs",
        )
        .await;
        assert_eq!(status, 403, "Origin {origin}");
        let (status, _, _) = send(
            http().get(format!("{url}/jobs")).header("origin", origin),
            "get",
            "/jobs",
        )
        .await;
        assert_eq!(status, 403, "Origin {origin}");
    }
    // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
    for host in [format!("evil.example:{port}"), "127.0.0.1".to_owned()] {
        for (method, path) in [("get", "/jobs"), ("get", "/healthz"), ("get", "/readyz")] {
            let (status, _, error) = send(
                http().get(format!("{url}{path}")).header("host", &host),
                method,
                path,
            )
            .await;
            assert_eq!(status, 403, "Host {host} {path}: {error}");
        }
    }
    assert_eq!(
        sim.stats().prompts_accepted,
        0,
        "nothing reached the server"
    );

    // The service's own names are fine, with or without an Origin.
    for host in ["localhost", "127.0.0.1", "LOCALHOST", "[::1]"] {
        let authority = format!("{host}:{port}");
        let (status, _, accepted) = send(
            http()
                .post(format!("{url}/jobs"))
                .header("host", &authority)
                .header("origin", format!("http://{authority}"))
                .json(&small(json!({}))),
            "post",
            "/jobs",
        )
        .await;
        assert_eq!(status, 202, "{authority}: {accepted}");
    }
    service.shutdown().await.unwrap();

    // With a token a page cannot authenticate, and the service may be reached by any name:
    // only a foreign Origin is refused.
    let mut cfg = config(&[&sim], dir.path());
    cfg.token = Some("a-token-of-some-length".to_owned());
    let service = start(cfg).await;
    let url = service.url();
    let authed = |request: reqwest::RequestBuilder| request.bearer_auth("a-token-of-some-length");
    let (status, _, _) = send(
        authed(http().get(format!("{url}/jobs"))).header("host", "gpu-box.lan:1234"),
        "get",
        "/jobs",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = send(
        authed(http().get(format!("{url}/jobs")))
            .header("host", "gpu-box.lan:1234")
            .header("origin", "http://gpu-box.lan:1234"),
        "get",
        "/jobs",
    )
    .await;
    assert_eq!(status, 200, "same origin under another name");
    let (status, _, _) = send(
        authed(http().get(format!("{url}/jobs"))).header("origin", "http://evil.example"),
        "get",
        "/jobs",
    )
    .await;
    assert_eq!(status, 403);
    service.shutdown().await.unwrap();
}

#[tokio::test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario, a table of cases checked in turn"
)]
async fn post_refuses_paths_as_names_repeated_keys_huge_numbers_and_huge_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::with_config(plasma_batch::sim::SimConfig {
        step_ms: 1,
        checkpoints: vec![
            "AnythingXL_inkBase.safetensors".into(),
            "sdxl/base_1.0.safetensors".into(),
        ],
        ..Default::default()
    })
    .await;
    let service = start(config(&[&sim], dir.path())).await;
    let url = service.url();
    let refused: &[(Value, &str, &str)] = &[
        (
            json!({"checkpoint_name": "../../etc/passwd"}),
            "checkpoint_name",
            "not a path with `..`",
        ),
        (
            json!({"checkpoint_name": "/etc/passwd"}),
            "checkpoint_name",
            "not an absolute path",
        ),
        (
            json!({"lora": {"name": "../loras/x.safetensors"}}),
            "lora.name",
            "not a path",
        ),
        (json!({"sampler": "../euler"}), "sampler", "not a path"),
        (json!({"sampler": "euler/x"}), "sampler", "not a path"),
        // Names the server does not list: refused with what it has.
        (
            json!({"checkpoint_name": "anythingxl_inkbase.safetensors"}),
            "checkpoint_name",
            "which has: AnythingXL_inkBase.safetensors, sdxl/base_1.0.safetensors",
        ),
        (
            json!({"checkpoint_name": "sdxl/other.safetensors"}),
            "checkpoint_name",
            "is not on",
        ),
        (
            json!({"lora": {"name": "inkline_v3.safetensors"}}),
            "lora.name",
            "did you mean \"inkline_v2.safetensors\"?",
        ),
        (
            json!({"sampler": "eulr"}),
            "sampler",
            "did you mean \"euler\"?",
        ),
    ];
    for (extra, field, reason) in refused {
        let (status, error) = post_job(&url, &small(extra.clone())).await;
        assert_eq!(status, 400, "{extra} was accepted");
        assert_eq!(error["field"], *field, "{extra}: {error:#}");
        let text = error["reason"].as_str().unwrap();
        assert!(text.contains(reason), "{extra}: {text}");
    }

    // A key given twice, and a seed past 64 bits, in raw JSON.
    for (raw, field, reason) in [
        (
            r#"{"prompt_text": "a", "seed": 1, "seed": 2}"#,
            "seed",
            "more than once",
        ),
        (
            r#"{"prompt_text": "a", "seed": 18446744073709551616}"#,
            "seed",
            "is out of range: must be in 0..=18446744073709551615",
        ),
    ] {
        let (status, _, error) = send(
            http()
                .post(format!("{url}/jobs"))
                .header("content-type", "application/json")
                .body(raw),
            "post",
            "/jobs",
        )
        .await;
        assert_eq!(status, 400, "{raw}");
        assert_eq!(error["field"], field);
        let text = error["reason"].as_str().unwrap();
        assert!(text.contains(reason) && !text.contains("e+19"), "{text}");
    }

    // 413 in the JSON error shape: past 1 MiB plus room for input images (3x the cap).
    let cap = usize::try_from(plasma_batch::serve::inputs::DEFAULT_MAX_INPUT_BYTES).unwrap();
    let huge = format!(
        r#"{{"prompt_text": "{}"}}"#,
        "a".repeat((1 << 20) + 3 * cap)
    );
    let (status, _, error) = send(
        http()
            .post(format!("{url}/jobs"))
            .header("content-type", "application/json")
            .body(huge),
        "post",
        "/jobs",
    )
    .await;
    assert_eq!(status, 413);
    assert!(error["error"].as_str().unwrap().contains("larger than"));
    // Another method on a route: JSON too.
    let response = http().put(format!("{url}/jobs")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"].is_string());
    assert_eq!(
        sim.stats().prompts_accepted,
        0,
        "nothing reached the server"
    );

    // A model in a subfolder the server lists is a name like any other.
    let (status, accepted) = post_job(
        &url,
        &small(json!({"checkpoint_name": "sdxl/base_1.0.safetensors"})),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let (job, _) = wait_job(&url, &id_of(&accepted), |j| {
        j["status"] != "queued" && j["status"] != "running"
    })
    .await;
    assert_eq!(job["status"], "complete", "{job:#}");
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_no_server_list_a_subfolder_name_is_refused_and_plain_names_wait() {
    let dir = tempfile::tempdir().unwrap();
    let dead = unused_url();
    let mut cfg = config(&[], dir.path());
    cfg.servers = vec![client(&dead)];
    let service = start(cfg).await;
    let url = service.url();
    let (status, error) = post_job(
        &url,
        &small(json!({"checkpoint_name": "sdxl/base_1.0.safetensors"})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error["reason"]
            .as_str()
            .unwrap()
            .contains("no server's list could be read"),
        "{error}"
    );
    // The server decides about a plain name once it is up.
    let (status, _) = post_job(
        &url,
        &small(json!({"checkpoint_name": "maybe.safetensors"})),
    )
    .await;
    assert_eq!(status, 202);
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_link_planted_in_the_image_folder_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sim = TestSim::start(&[]).await;
    let service = start(config(&[&sim], &out)).await;
    let url = service.url();
    let mut files = Vec::new();
    for page in 1..=3 {
        let id = id_of(&post_job(&url, &small(json!({"page": page}))).await.1);
        let (job, _) = wait_job(&url, &id, status_is("complete")).await;
        files.push((id, out.join(job["imagePath"].as_str().unwrap())));
    }
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "not for the web").unwrap();
    // 1: the image replaced by a link to a file outside; 2: by a link to another image
    // (a PNG, but still a link); 3: by a file that is not a PNG.
    std::fs::remove_file(&files[0].1).unwrap();
    std::os::unix::fs::symlink(&secret, &files[0].1).unwrap();
    std::fs::remove_file(&files[1].1).unwrap();
    std::os::unix::fs::symlink(&files[2].1, &files[1].1).unwrap();
    let (_, third) = &files[2];
    let png = std::fs::read(third).unwrap();
    std::fs::write(third, "not for the web").unwrap();
    for (id, path) in &files {
        let response = http()
            .get(format!("{url}/jobs/{id}/image"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 410, "{} was served", path.display());
        let error: Value = response.json().await.unwrap();
        check_schema("get", "/jobs/{id}/image", 410, &error);
        assert!(!error.to_string().contains("not for the web"));
    }
    // Put back, it is served again.
    std::fs::write(third, &png).unwrap();
    let response = http()
        .get(format!("{url}/jobs/{}/image", files[2].0))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), png.as_slice());
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_deleted_output_folder_stops_accepting_jobs_and_readyz_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sim = TestSim::start(&[]).await;
    let service = start(config(&[&sim], &out)).await;
    let url = service.url();
    let id = id_of(&post_job(&url, &small(json!({}))).await.1);
    wait_job(&url, &id, status_is("complete")).await;
    let (status, ready, _) = call("get", &url, "/readyz", "/readyz", None).await;
    assert_eq!(
        (status, ready["output"]["usable"].as_bool()),
        (200, Some(true))
    );

    std::fs::remove_dir_all(&out).unwrap();
    let (status, ready, _) = call("get", &url, "/readyz", "/readyz", None).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["output"]["usable"], false);
    assert!(
        ready["output"]["error"]
            .as_str()
            .unwrap()
            .contains("jobs.jsonl")
    );
    let (status, error) = post_job(&url, &small(json!({}))).await;
    assert_eq!(status, 503, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("deleted"),
        "{error}"
    );
    assert_eq!(sim.stats().prompts_accepted, 1, "no job was started");
    assert!(!out.exists(), "nothing was written after the folder went");
    // The jobs already known still answer.
    assert_eq!(get_job(&url, &id).await["status"], "complete");
    let _ = service.shutdown().await;
}

#[tokio::test]
async fn a_damaged_journal_line_is_warned_about_and_kept_aside_not_erased() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sim = TestSim::start(&[]).await;
    let service = start(config(&[&sim], &out)).await;
    let mut ids = Vec::new();
    for page in 1..=3 {
        let id = id_of(
            &post_job(&service.url(), &small(json!({"page": page})))
                .await
                .1,
        );
        wait_job(&service.url(), &id, status_is("complete")).await;
        ids.push(id);
    }
    service.shutdown().await.unwrap();
    // A start compacts the journal to one line per job.
    start(config(&[&sim], &out)).await.shutdown().await.unwrap();
    let journal = out.join("serve/jobs.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[1].contains(&ids[1]));
    // A damaged middle line: a byte flipped in a key.
    lines[1] = lines[1].replacen("\"status\"", "\"st\u{1}tus\"", 1);
    std::fs::write(&journal, lines.join("\n") + "\n").unwrap();

    // The real binary warns, naming the line and where it is kept.
    let (child, _) = spawn_serve(&["--server", &sim.url()], &out, None).await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning:")
            && stderr.contains("1 line(s) could not be read (line 2;")
            && stderr.contains("jobs.jsonl.corrupt"),
        "{stderr}"
    );
    let aside = out.join("serve/jobs.jsonl.corrupt");
    assert_eq!(
        std::fs::read_to_string(&aside).unwrap(),
        format!("{}\n", lines[1]),
        "the damaged line is kept byte for byte"
    );

    // Compaction left it out, but nothing was erased: the next start has nothing new to
    // warn about, the other jobs answer, and the line is still kept.
    let service = start(config(&[&sim], &out)).await;
    assert!(service.warnings().is_empty(), "{:?}", service.warnings());
    for id in [&ids[0], &ids[2]] {
        assert_eq!(get_job(&service.url(), id).await["status"], "complete");
    }
    assert!(std::fs::read_to_string(&aside).unwrap().contains(&ids[1]));
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn only_the_names_the_template_fills_in_are_checked_against_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::with_config(plasma_batch::sim::SimConfig {
        step_ms: 1,
        checkpoints: vec!["only.safetensors".into()],
        ..Default::default()
    })
    .await;
    // The shipped template fills in the default checkpoint, which this server lacks.
    let service = start(config(&[&sim], &dir.path().join("a"))).await;
    let (status, error) = post_job(&service.url(), &small(json!({}))).await;
    assert_eq!(status, 400);
    assert_eq!(error["field"], "checkpoint_name");
    assert!(
        error["reason"]
            .as_str()
            .unwrap()
            .contains("which has: only.safetensors"),
        "{error}"
    );
    service.shutdown().await.unwrap();
    // A template with its own checkpoint never sends the request's.
    let template = std::fs::read_to_string(repo().join("workflows/txt2img.json"))
        .unwrap()
        .replace("{{checkpoint}}", "only.safetensors");
    let workflow = dir.path().join("fixed.json");
    std::fs::write(&workflow, template).unwrap();
    let mut cfg = config(&[&sim], &dir.path().join("b"));
    cfg.workflow = Some(workflow);
    let service = start(cfg).await;
    let (status, accepted) = post_job(&service.url(), &small(json!({}))).await;
    assert_eq!(status, 202, "{accepted}");
    let (job, _) = wait_job(&service.url(), &id_of(&accepted), |j| {
        j["status"] != "queued" && j["status"] != "running"
    })
    .await;
    assert_eq!(job["status"], "complete", "{job:#}");
    service.shutdown().await.unwrap();
}

// ---- Input images (`images` in `POST /jobs`) ----

/// The shipped img2img template with its one non-image variable written in: its only
/// variable left is the image slot `{{source}}`.
fn img2img_workflow(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("workflows/img2img.json")).unwrap();
    assert!(text.contains("\"{{denoise}}\"") && text.contains("\"{{source}}\""));
    let path = dir.join("img2img.json");
    std::fs::write(&path, text.replace("\"{{denoise}}\"", "0.6")).unwrap();
    path
}

fn img2img_config(sims: &[&Sim], dir: &Path) -> ServeConfig {
    let mut cfg = config(sims, &dir.join("out"));
    cfg.workflow = Some(img2img_workflow(dir));
    cfg
}

fn sketch(dir: &Path, seed: u32) -> Vec<u8> {
    let path = crate::uploads::png_file(dir, &format!("sketch{seed}.png"), 24, 16, seed);
    std::fs::read(path).unwrap()
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What the simulator holds under the name the engine uploads `bytes` as.
fn on_server(sim: &TestSim, bytes: &[u8]) -> Vec<u8> {
    let name = format!("{}.png", &hex_sha256(bytes)[..32]);
    std::fs::read(sim.input_dir().join("plasma").join(name)).unwrap()
}

#[tokio::test]
async fn an_input_image_sent_base64_or_as_an_earlier_job_is_kept_uploaded_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&[]).await;
    let service = start(img2img_config(&[&sim], dir.path())).await;
    let url = service.url();
    let bytes = sketch(dir.path(), 11);
    let sha = hex_sha256(&bytes);

    // The bytes, base64.
    let body = small(
        json!({"page": 3, "images": {"source": {"base64": b64(&bytes), "filename": "sketch.png"}}}),
    );
    let (status, accepted) = post_job(&url, &body).await;
    assert_eq!(status, 202, "{accepted}");
    let first = id_of(&accepted);
    let (job, _) = wait_job(&url, &first, status_is("complete")).await;
    let shown = &job["request"]["images"]["source"];
    assert_eq!(shown["sha256"], sha.as_str());
    let kept = format!("serve/inputs/{sha}.png");
    assert_eq!(shown["path"], kept.as_str());
    assert_eq!(
        std::fs::read(dir.path().join("out").join(&kept)).unwrap(),
        bytes
    );
    assert_eq!(
        on_server(&sim, &bytes),
        bytes,
        "the server got the same bytes"
    );
    let workflow = &sim.stats();
    assert!(workflow.uploads >= 1);

    // "Page 3 again, starting from that job's image": one request, by job id.
    let body = small(json!({"page": 3, "images": {"source": {"job": first}}}));
    let (status, accepted) = post_job(&url, &body).await;
    assert_eq!(status, 202, "{accepted}");
    let (second, _) = wait_job(&url, &id_of(&accepted), status_is("complete")).await;
    let earlier = std::fs::read(
        dir.path()
            .join("out")
            .join(job["imagePath"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(
        second["request"]["images"]["source"]["sha256"],
        hex_sha256(&earlier).as_str()
    );
    assert_eq!(on_server(&sim, &earlier), earlier);

    // A job's request is accepted back as it is (the kept image, by sha256).
    let (status, accepted) = post_job(&url, &second["request"]).await;
    assert_eq!(status, 202, "{accepted}");
    wait_job(&url, &id_of(&accepted), status_is("complete")).await;

    // An unknown job, or none at all for the workflow's image slot, is refused clearly.
    let body = small(json!({"images": {"source": {"job": "no-such-job"}}}));
    let (status, error) = post_job(&url, &body).await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["field"], "images.source");
    assert!(error["error"].as_str().unwrap().contains("no-such-job"));
    let (status, error) = post_job(&url, &small(json!({}))).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["field"], "images.source");
    let body = small(json!({"images": {"pose": {"base64": b64(&bytes)}}}));
    let (status, error) = post_job(&url, &body).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["field"], "images.pose");
    assert!(
        error["reason"].as_str().unwrap().contains("source"),
        "{error}"
    );
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_earlier_job_not_finished_yet_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&["hang:KSampler"]).await;
    let service = start(img2img_config(&[&sim], dir.path())).await;
    let url = service.url();
    let bytes = sketch(dir.path(), 12);
    let body = small(json!({"images": {"source": {"base64": b64(&bytes)}}}));
    let running = id_of(&post_job(&url, &body).await.1);
    wait_job(&url, &running, status_is("running")).await;
    let body = small(json!({"images": {"source": {"job": running}}}));
    let (status, error) = post_job(&url, &body).await;
    assert_eq!(status, 409, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("running"),
        "{error}"
    );
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_input_image_sent_as_a_multipart_file_part_runs() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&[]).await;
    let service = start(img2img_config(&[&sim], dir.path())).await;
    let url = service.url();
    let bytes = sketch(dir.path(), 13);
    let form = reqwest::multipart::Form::new()
        .part(
            "request",
            reqwest::multipart::Part::text(small(json!({"page": 5})).to_string())
                .mime_str("application/json")
                .unwrap(),
        )
        .part(
            "source",
            reqwest::multipart::Part::bytes(bytes.clone())
                .file_name("sketch.png")
                .mime_str("image/png")
                .unwrap(),
        );
    let (status, _, accepted) = send(
        http().post(format!("{url}/jobs")).multipart(form),
        "post",
        "/jobs",
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let (job, _) = wait_job(&url, &id_of(&accepted), status_is("complete")).await;
    assert_eq!(
        job["request"]["images"]["source"]["sha256"],
        hex_sha256(&bytes).as_str()
    );
    assert_eq!(on_server(&sim, &bytes), bytes);
    // Without the JSON part, the answer says what is missing.
    let form = reqwest::multipart::Form::new()
        .part("source", reqwest::multipart::Part::bytes(bytes.clone()));
    let (status, _, error) = send(
        http().post(format!("{url}/jobs")).multipart(form),
        "post",
        "/jobs",
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("`request`"),
        "{error}"
    );
    // A form a web page posts cross-site (multipart needs no CORS preflight) is refused.
    let form = reqwest::multipart::Form::new()
        .text("request", small(json!({})).to_string())
        .part("source", reqwest::multipart::Part::bytes(bytes.clone()));
    let (status, _, error) = send(
        http()
            .post(format!("{url}/jobs"))
            .header("origin", "http://evil.example")
            .multipart(form),
        "post",
        "/jobs",
    )
    .await;
    assert_eq!(status, 403, "{error}");
    let (_, list, _) = call("get", &url, "/jobs", "/jobs", None).await;
    assert_eq!(list["total"], 1);
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_input_over_the_cap_is_413_and_one_that_is_no_image_is_400_without_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let sim = TestSim::start(&[]).await.idle_ok();
    let mut cfg = img2img_config(&[&sim], dir.path());
    cfg.max_input_bytes = 1000;
    let service = start(cfg).await;
    let url = service.url();
    let big = std::fs::read(crate::uploads::png_file(dir.path(), "big.png", 40, 40, 14)).unwrap();
    assert!(big.len() > 1000);
    let (status, error) = post_job(
        &url,
        &small(json!({"images": {"source": {"base64": b64(&big)}}})),
    )
    .await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["field"], "images.source");
    assert!(
        error["reason"].as_str().unwrap().contains("1000 bytes"),
        "{error}"
    );

    let secret = b"password=hunter2-do-not-echo this is not an image at all";
    let (status, error) = post_job(
        &url,
        &small(json!({"images": {"source": {"base64": b64(secret)}}})),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["field"], "images.source");
    let text = error.to_string();
    assert!(
        text.contains("PNG, JPEG or WebP") && text.contains("text"),
        "{text}"
    );
    assert!(
        !text.contains("hunter2") && !text.contains(&b64(secret)),
        "{text}"
    );
    let (status, error) = post_job(
        &url,
        &small(json!({"images": {"source": {"base64": "%%%"}}})),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["field"], "images.source.base64");
    // Nothing refused was kept, and no job was created.
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("out/serve/inputs"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(kept.is_empty(), "{kept:?}");
    let (_, list, _) = call("get", &url, "/jobs", "/jobs", None).await;
    assert_eq!(list["total"], 0);
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restarted_service_runs_a_job_with_the_input_it_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = sketch(dir.path(), 15);

    // The job is running (it hangs) when the process is killed.
    let hanging = TestSim::start(&["hang:KSampler"]).await;
    let workflow = img2img_workflow(dir.path());
    let args = [
        "--server",
        &hanging.url(),
        "--workflow",
        workflow.to_str().unwrap(),
    ];
    let (mut child, url) = spawn_serve(&args, &dir.path().join("out"), None).await;
    let body = small(json!({"page": 7, "images": {"source": {"base64": b64(&bytes)}}}));
    let id = id_of(&post_job(&url, &body).await.1);
    wait_job(&url, &id, status_is("running")).await;
    child.kill().await.unwrap(); // SIGKILL: no shutdown

    // A fresh server that never saw the image: the restarted service uploads the kept bytes.
    let good = TestSim::start(&[]).await;
    let service = start(img2img_config(&[&good], dir.path())).await;
    let url = service.url();
    let (job, _) = wait_job(&url, &id, status_is("complete")).await;
    assert_eq!(
        job["request"]["images"]["source"]["sha256"],
        hex_sha256(&bytes).as_str()
    );
    assert_eq!(on_server(&good, &bytes), bytes);
    service.shutdown().await.unwrap();
    let journal = std::fs::read_to_string(dir.path().join("out/serve/jobs.jsonl")).unwrap();
    assert!(
        journal.lines().all(|l| l.starts_with(r#"{"v":2,"#)),
        "{journal}"
    );
}
