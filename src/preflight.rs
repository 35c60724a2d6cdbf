//! Before anything is submitted: is every server reachable, and does it have every node
//! class, model and option the jobs name? One clear error instead of a run of failed jobs.
//!
//! The check is generic over the workflow: every literal input of every node is compared with
//! the server's `/object_info` spec for that input (combo lists such as `ckpt_name`,
//! `lora_name`, `sampler_name`, `scheduler`; numeric min/max).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::comfy::{ComfyClient, ComfyError};
use crate::events::{Refusal, RouteState, ServerRouting};
use crate::plan::Job;

/// What the report records about a server.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub url: String,
    pub comfyui_version: Option<String>,
}

/// One preflight problem, with where it comes from and what to try.
#[derive(Debug, Clone, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
#[diagnostic(code(plasma_batch::preflight))]
pub struct PreflightError {
    pub message: String,
    #[help]
    pub help: Option<String>,
}

/// Probe every server, then check the jobs against each server's node catalogue.
pub async fn check(
    servers: &[ComfyClient],
    jobs: &[Arc<Job>],
) -> Result<Vec<ServerInfo>, Vec<PreflightError>> {
    let probes = futures::future::join_all(servers.iter().map(|server| probe(server, jobs))).await;
    let mut infos = Vec::new();
    let mut problems = Vec::new();
    for probe in probes {
        match probe {
            Ok(info) => infos.push(info),
            Err(mut errors) => problems.append(&mut errors),
        }
    }
    if problems.is_empty() {
        Ok(infos)
    } else {
        Err(problems)
    }
}

async fn probe(server: &ComfyClient, jobs: &[Arc<Job>]) -> Result<ServerInfo, Vec<PreflightError>> {
    let (info, object_info) = reach(server, jobs).await.map_err(|(e, _)| vec![e])?;
    let problems = check_jobs(server.url(), &object_info, jobs);
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(info)
}

/// Ask a server what it is (`/system_stats`) and what it has (`/object_info`).
async fn reach(
    server: &ComfyClient,
    jobs: &[Arc<Job>],
) -> Result<(ServerInfo, Value), (PreflightError, String)> {
    let unreachable = |error: crate::comfy::ComfyError| {
        let reason = error.to_string();
        let error = PreflightError {
            message: format!("server {} is not usable: {reason}", server.url()),
            help: Some(format!(
                "start ComfyUI at {} (or fix the URL in [comfy] servers / --server / PLASMA_COMFY_URL), or use --sim to run on the built-in simulator",
                server.url()
            )),
        };
        (error, reason)
    };
    let stats = server.system_stats().await.map_err(unreachable)?;
    let object_info = catalogue(server, jobs).await.map_err(unreachable)?;
    let info = ServerInfo {
        url: server.url().to_owned(),
        comfyui_version: stats
            .pointer("/system/comfyui_version")
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    Ok((info, object_info))
}

/// One server at the start of a run that routes jobs by what each server has.
#[derive(Debug)]
pub enum Survey {
    /// It answered: what it is and its node catalogue (`/object_info`).
    Up {
        info: ServerInfo,
        catalogue: Arc<Value>,
    },
    /// It could not be reached: the preflight error, and the bare reason.
    Down {
        info: ServerInfo,
        error: PreflightError,
        reason: String,
    },
}

impl Survey {
    pub fn info(&self) -> &ServerInfo {
        match self {
            Survey::Up { info, .. } | Survey::Down { info, .. } => info,
        }
    }
}

/// Ask every server, at once, what it is and what it has.
pub async fn survey(servers: &[ComfyClient], jobs: &[Arc<Job>]) -> Vec<Survey> {
    futures::future::join_all(servers.iter().map(|server| async move {
        match reach(server, jobs).await {
            Ok((info, object_info)) => Survey::Up {
                info,
                catalogue: Arc::new(object_info),
            },
            Err((error, reason)) => Survey::Down {
                info: ServerInfo {
                    url: server.url().to_owned(),
                    comfyui_version: None,
                },
                error,
                reason,
            },
        }
    }))
    .await
}

/// Why the server at `server` with this catalogue cannot take `job` (each problem, `; `
/// between them), or `None` if it has every node class, model and option the job needs.
pub fn refusal(server: &str, object_info: &Value, job: &Job) -> Option<String> {
    let problems = job_problems(server, object_info, job);
    if problems.is_empty() {
        return None;
    }
    let texts: Vec<String> = problems.into_iter().map(|(text, _)| text).collect();
    Some(texts.join("; "))
}

/// Which of `jobs` the server can take, with the others grouped by why.
pub fn routing<'j>(
    server: &str,
    object_info: &Value,
    jobs: impl IntoIterator<Item = &'j Job>,
    state: RouteState,
) -> ServerRouting {
    grouped(
        state,
        jobs.into_iter()
            .map(|job| (job.key.as_str(), refusal(server, object_info, job))),
    )
}

/// A server's routing from each job's key and why it cannot take it (`None`: it can).
pub fn grouped<'k>(
    state: RouteState,
    verdicts: impl IntoIterator<Item = (&'k str, Option<String>)>,
) -> ServerRouting {
    let mut checked = 0;
    let mut by_reason: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, why) in verdicts {
        checked += 1;
        if let Some(reason) = why {
            by_reason.entry(reason).or_default().push(key.to_owned());
        }
    }
    ServerRouting {
        state,
        checked,
        cannot_take: by_reason
            .into_iter()
            .map(|(reason, jobs)| Refusal { reason, jobs })
            .collect(),
        reason: None,
    }
}

/// The server's catalogue entries of the classes `jobs` use, one `/object_info/{class}` each
/// (at once). The whole `/object_info` only when one is not found that way (to be sure it is
/// really missing: a name a proxy mangles, a server without the per-class route), so the
/// answer is the same as from the whole catalogue.
async fn catalogue(server: &ComfyClient, jobs: &[Arc<Job>]) -> Result<Value, ComfyError> {
    // A graph's classes are the same in all the jobs filled from it: one job each is enough.
    let mut graphs: Vec<&crate::workflow::Workflow> = Vec::new();
    let mut classes = BTreeSet::new();
    for job in jobs {
        if graphs.iter().any(|seen| seen.same_graph(&job.workflow)) {
            continue;
        }
        graphs.push(&job.workflow);
        let workflow = job.workflow.to_value();
        for node in workflow.as_object().into_iter().flat_map(|n| n.values()) {
            if let Some(class) = node.get("class_type").and_then(Value::as_str) {
                classes.insert(class.to_owned());
            }
        }
    }
    let answers =
        futures::future::join_all(classes.iter().map(|class| server.object_info_class(class)))
            .await;
    let mut found = serde_json::Map::new();
    for answer in answers {
        match answer {
            Ok(Value::Object(entries)) => found.extend(entries),
            // A route this server (or a proxy in front of it) does not have.
            Ok(_) | Err(ComfyError::Status { .. }) => {
                return server.object_info().await;
            }
            Err(error) => return Err(error),
        }
    }
    if classes.iter().all(|class| found.contains_key(class)) {
        Ok(Value::Object(found))
    } else {
        server.object_info().await
    }
}

/// Compare every node of every job with the catalogue. Problems are grouped so that a model
/// missing on all 200 jobs is one line naming the jobs, not 200 lines.
pub fn check_jobs(server: &str, object_info: &Value, jobs: &[Arc<Job>]) -> Vec<PreflightError> {
    // (problem text) -> (help, job keys)
    let mut found: BTreeMap<String, (Option<String>, Vec<String>)> = BTreeMap::new();
    for job in jobs {
        for (text, help) in job_problems(server, object_info, job) {
            let entry = found.entry(text).or_insert_with(|| (help, Vec::new()));
            entry.1.push(job.key.clone());
        }
    }
    found
        .into_iter()
        .map(|(text, (help, keys))| {
            let shown: Vec<&str> = keys.iter().take(5).map(String::as_str).collect();
            let more = if keys.len() > shown.len() {
                format!(" and {} more", keys.len() - shown.len())
            } else {
                String::new()
            };
            PreflightError {
                message: format!("{text} (jobs {}{more})", shown.join(", ")),
                help: help.or_else(|| {
                    Some("install the missing model or change the manifest; `plasma-batch validate --server URL` repeats this check".to_owned())
                }),
            }
        })
        .collect()
}

/// Every node of one job compared with the catalogue: each problem (naming the server) and,
/// where there is one beyond the usual, what to do.
fn job_problems(server: &str, object_info: &Value, job: &Job) -> Vec<(String, Option<String>)> {
    let mut problems = Vec::new();
    let workflow = job.workflow.to_value();
    let Some(nodes) = workflow.as_object() else {
        return problems;
    };
    for (node_id, node) in nodes {
        let class = node.get("class_type").and_then(Value::as_str).unwrap_or("");
        let Some(info) = object_info.get(class) else {
            problems.push((
                format!("node {node_id}: class {class} does not exist on {server}"),
                Some(format!(
                    "install the custom node that provides {class} on {server}, or change the workflow"
                )),
            ));
            continue;
        };
        let Some(inputs) = node.get("inputs").and_then(Value::as_object) else {
            continue;
        };
        for (name, value) in inputs {
            let Some(spec) = input_spec(info, name) else {
                continue;
            };
            if let Some((problem, help)) = check_value(spec, value) {
                problems.push((
                    format!("node {node_id} ({class}): {name} {problem} on {server}"),
                    help.map(str::to_owned),
                ));
            }
        }
    }
    problems
}

fn input_spec<'a>(info: &'a Value, name: &str) -> Option<&'a Value> {
    let input = info.get("input")?;
    input
        .get("required")
        .and_then(|r| r.get(name))
        .or_else(|| input.get("optional").and_then(|o| o.get(name)))
}

/// What to do about a number outside an input's range (whatever filled it: a setting, a
/// variable, a sweep value or the template's own literal).
const RANGE_HELP: &str = "change the value in the manifest (the setting, variable or sweep \
                          value that fills this input) or in the workflow to one within the \
                          range; `plasma-batch validate --server URL` repeats this check";

/// `None` if the value is acceptable (or a link, or not checkable); else the problem and, if
/// not the default (a missing model), what to do.
fn check_value(spec: &Value, value: &Value) -> Option<(String, Option<&'static str>)> {
    if is_link(value) {
        return None;
    }
    let kind = spec.get(0)?;
    let options = spec.get(1);
    // An uploaded input (`LoadImage`'s `image`): the list is only the input folder's top
    // level, and the file is uploaded before the job is posted; the server checks it then.
    if options.and_then(|o| o.get("image_upload")) == Some(&Value::Bool(true)) {
        return None;
    }
    // Classic combo: `[["a", "b"], {...}]`; V3 combo: `["COMBO", {"options": [...]}]`.
    let choices = kind.as_array().or_else(|| {
        (kind == "COMBO")
            .then(|| options?.get("options")?.as_array())
            .flatten()
    });
    if let Some(choices) = choices {
        if choices.iter().any(|choice| choice == value) {
            return None;
        }
        let listed: BTreeSet<String> = choices
            .iter()
            .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_owned))
            .collect();
        let listed: Vec<String> = listed.into_iter().collect();
        let available = if listed.is_empty() {
            "none are available".to_owned()
        } else if listed.len() > 12 {
            format!(
                "{} are available, e.g. {}",
                listed.len(),
                listed[..12].join(", ")
            )
        } else {
            format!("available: {}", listed.join(", "))
        };
        return Some((format!("{value} is not available ({available})"), None));
    }
    if let (Some(number), Some(options)) = (value.as_f64(), options) {
        if let Some(min) = options.get("min").and_then(Value::as_f64)
            && number < min
        {
            return Some((
                format!("{value} is below the minimum {min}"),
                Some(RANGE_HELP),
            ));
        }
        if let Some(max) = options.get("max").and_then(Value::as_f64)
            && number > max
        {
            return Some((
                format!("{value} is above the maximum {max}"),
                Some(RANGE_HELP),
            ));
        }
    }
    None
}

fn is_link(value: &Value) -> bool {
    matches!(value.as_array(), Some(a) if a.len() == 2 && a[0].is_string() && a[1].is_u64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(workflow: Value) -> Arc<Job> {
        Arc::new(Job {
            key: "ch01_p001_s1".into(),
            chapter: 1,
            page: 1,
            variant: 1,
            seed: 1,
            params: crate::plan::JobParams {
                page: std::sync::Arc::new(crate::plan::PageParams {
                    prompt: "p".into(),
                    negative: "n".into(),
                    checkpoint: "a.safetensors".into(),
                    steps: 20,
                    cfg: 7.0,
                    sampler: "euler".into(),
                    scheduler: "normal".into(),
                    width: 512,
                    height: 768,
                    lora: None,
                    loras: Vec::new(),
                    vars: std::collections::BTreeMap::new(),
                    workflow_path: std::path::Path::new("w.json").into(),
                    sweep: Vec::new(),
                }),
                filename_prefix: "x".into(),
                seed_source: crate::plan::SeedSource::Derived,
            },
            workflow: workflow.into(),
            output_nodes: Arc::from(["9".to_owned()]),
            hash: crate::digest::Sha256Digest::default(),
            workflow_sha256: "w".into(),
            inputs: Vec::new(),
        })
    }

    #[test]
    fn finds_missing_class_model_and_out_of_range_value() {
        let info = json!({
            "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a.safetensors"], {}]}}},
            "KSampler": {"input": {"required": {
                "model": ["MODEL", {}],
                "steps": ["INT", {"min": 1, "max": 10000}],
                "sampler_name": ["COMBO", {"options": ["euler", "ddim"]}]
            }}}
        });
        let ok = job(json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
            "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "steps": 20, "sampler_name": "euler"}}
        }));
        assert!(check_jobs("http://s", &info, &[ok]).is_empty());
        let bad = job(json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}},
            "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "steps": 0, "sampler_name": "nope"}},
            "9": {"class_type": "FancySave", "inputs": {}}
        }));
        let problems = check_jobs("http://s", &info, &[bad.clone(), bad]);
        let text: Vec<String> = problems.iter().map(|p| p.message.clone()).collect();
        assert_eq!(problems.len(), 4, "{text:#?}");
        assert!(text.iter().any(|t| {
            t.contains("\"missing.safetensors\" is not available (available: a.safetensors)")
        }));
        assert!(
            text.iter()
                .any(|t| t.contains("steps 0 is below the minimum 1"))
        );
        assert!(text.iter().any(|t| t.contains("\"nope\" is not available")));
        assert!(
            text.iter()
                .any(|t| t.contains("class FancySave does not exist on http://s"))
        );
        // Grouped: both jobs named once each in the same line.
        assert!(
            text[0].contains("(jobs ch01_p001_s1, ch01_p001_s1)"),
            "{}",
            text[0]
        );
    }

    #[test]
    fn an_uploaded_input_is_not_checked_against_the_input_folder_list() {
        // ComfyUI 0.8.0's LoadImage lists only the input folder's top level; an upload under
        // `plasma/` is never in that list, and is put there before the job is posted.
        let info = json!({"LoadImage": {"input": {"required": {
            "image": [["a.png"], {"image_upload": true}]
        }}}});
        let wf =
            job(json!({"10": {"class_type": "LoadImage", "inputs": {"image": "plasma/0123.png"}}}));
        assert!(check_jobs("http://s", &info, &[wf]).is_empty());
        let listed = json!({"X": {"input": {"required": {"image": [["a.png"], {}]}}}});
        let wf = job(json!({"10": {"class_type": "X", "inputs": {"image": "plasma/0123.png"}}}));
        assert_eq!(check_jobs("http://s", &listed, &[wf]).len(), 1);
    }

    /// A server that knows `EmptyImage` and `SaveImage` on real loopback HTTP, logging the
    /// path of every request; `per_class`: whether it has `/object_info/{class}`.
    async fn catalogue_server(
        per_class: bool,
    ) -> (ComfyClient, Arc<std::sync::Mutex<Vec<String>>>) {
        use axum::extract::{Path, State};
        use axum::routing::get;
        type Log = Arc<std::sync::Mutex<Vec<String>>>;
        fn all() -> Value {
            json!({
                "EmptyImage": {"input": {"required": {"width": ["INT", {"min": 1, "max": 16384}]}}},
                "SaveImage": {"input": {"required": {"images": ["IMAGE", {}]}}}
            })
        }
        fn note(log: &Log, path: String) {
            log.lock().unwrap().push(path);
        }
        let log: Log = Arc::default();
        let mut app = axum::Router::new()
            .route(
                "/system_stats",
                get(|State(log): State<Log>| async move {
                    note(&log, "/system_stats".into());
                    axum::Json(json!({"system": {"comfyui_version": "0.8.0"}}))
                }),
            )
            .route(
                "/object_info",
                get(|State(log): State<Log>| async move {
                    note(&log, "/object_info".into());
                    axum::Json(all())
                }),
            );
        if per_class {
            app = app.route(
                "/object_info/{class}",
                get(
                    |State(log): State<Log>, Path(class): Path<String>| async move {
                        note(&log, format!("/object_info/{class}"));
                        let one = all().get(&class).map(|info| json!({ class: info }));
                        axum::Json(one.unwrap_or_else(|| json!({})))
                    },
                ),
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(axum::serve(listener, app.with_state(log.clone())).into_future());
        let client = ComfyClient::new(&url, crate::comfy::http_client()).unwrap();
        (client, log)
    }

    fn trivial(class: &str, width: u32) -> Arc<Job> {
        job(json!({
            "1": {"class_type": class, "inputs": {"width": width}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}
        }))
    }

    #[tokio::test]
    async fn asks_only_for_the_classes_the_jobs_use() {
        let (server, log) = catalogue_server(true).await;
        let jobs = [trivial("EmptyImage", 512), trivial("EmptyImage", 768)];
        let infos = check(std::slice::from_ref(&server), &jobs).await.unwrap();
        assert_eq!(infos[0].comfyui_version.as_deref(), Some("0.8.0"));
        let mut asked = log.lock().unwrap().clone();
        asked.sort();
        assert_eq!(
            asked,
            [
                "/object_info/EmptyImage",
                "/object_info/SaveImage",
                "/system_stats"
            ],
            "one request per class, never the whole catalogue"
        );
        // The entries found one by one are checked as the whole catalogue's would be.
        let problems = check(&[server], &[trivial("EmptyImage", 0)])
            .await
            .unwrap_err();
        assert!(
            problems[0]
                .message
                .contains("width 0 is below the minimum 1"),
            "{}",
            problems[0].message
        );
    }

    #[tokio::test]
    async fn jobs_of_one_workflow_file_with_other_graphs_are_asked_for_all_their_classes() {
        // Same workflow file (a LoRA stack chained into one page's graph keeps the file's
        // sha256), other nodes: the second job's classes are asked for too.
        let (server, log) = catalogue_server(true).await;
        let save_only =
            job(json!({"2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}));
        check(&[server], &[save_only, trivial("EmptyImage", 8)])
            .await
            .unwrap();
        let asked = log.lock().unwrap().clone();
        assert!(
            asked.contains(&"/object_info/EmptyImage".to_owned()),
            "{asked:?}"
        );
    }

    #[tokio::test]
    async fn a_class_not_found_by_name_is_looked_up_in_the_whole_catalogue() {
        // Missing one by one: the whole catalogue confirms it (the name went out encoded).
        let (server, log) = catalogue_server(true).await;
        let problems = check(&[server], &[trivial("Fancy Save", 8)])
            .await
            .unwrap_err();
        assert!(
            problems[0]
                .message
                .contains("class Fancy Save does not exist"),
            "{}",
            problems[0].message
        );
        let asked = log.lock().unwrap().clone();
        assert!(
            asked.contains(&"/object_info/Fancy Save".to_owned()),
            "{asked:?}"
        );
        assert!(asked.contains(&"/object_info".to_owned()), "{asked:?}");
        // A server without the per-class route: the whole catalogue, and all is well.
        let (server, log) = catalogue_server(false).await;
        check(&[server], &[trivial("EmptyImage", 8)]).await.unwrap();
        assert!(log.lock().unwrap().contains(&"/object_info".to_owned()));
    }
}
