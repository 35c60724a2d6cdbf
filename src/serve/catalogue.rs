//! The names each ComfyUI server offers for what a job request names (checkpoints, LoRAs,
//! samplers), read from its `/object_info`, so `POST /jobs` refuses a name a server does not
//! have, with the names it does have, instead of failing the job later on that server.
//! A list is fetched when a request first needs it, and again when a name is missing from a
//! list older than [`REFRESH_AFTER`] (a model added since). A server whose list cannot be
//! read is not asked again for [`RETRY_AFTER`], and its list is "unknown": the server decides.
//! Knows nothing of HTTP routes or the engine.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Notify;

use super::request::{FieldProblem, JobRequest};
use crate::comfy::ComfyClient;
use crate::diagnostic::did_you_mean;
use crate::workflow::Placeholder;

/// A list at least this old is read again before a name missing from it is refused.
const REFRESH_AFTER: Duration = Duration::from_secs(10);
/// After a failed read, the server is not asked again for this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// A request waits this long at most for a list being read; later requests get it.
const WAIT: Duration = Duration::from_secs(10);
/// A `/object_info` read may take this long (a real server scans its model folders).
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// How many names an error lists.
const SHOWN: usize = 12;

/// The lists of one server; `None` where no node class of the server has that input.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Names {
    pub checkpoints: Option<BTreeSet<String>>,
    pub loras: Option<BTreeSet<String>>,
    pub samplers: Option<BTreeSet<String>>,
}

impl Names {
    /// The choices of every combo input named `ckpt_name`, `lora_name` and `sampler_name`,
    /// of any node class, so a custom `--workflow` with other loaders is covered too.
    pub fn from_object_info(object_info: &Value) -> Names {
        let mut names = Names::default();
        let Some(classes) = object_info.as_object() else {
            return names;
        };
        for info in classes.values() {
            for group in ["required", "optional"] {
                let Some(inputs) = info.pointer(&format!("/input/{group}")) else {
                    continue;
                };
                for (input, slot) in [
                    ("ckpt_name", &mut names.checkpoints),
                    ("lora_name", &mut names.loras),
                    ("sampler_name", &mut names.samplers),
                ] {
                    if let Some(choices) = inputs.get(input).and_then(combo_choices) {
                        slot.get_or_insert_with(BTreeSet::new)
                            .extend(choices.iter().filter_map(Value::as_str).map(str::to_owned));
                    }
                }
            }
        }
        names
    }
}

/// Classic combo `[["a", "b"], {...}]`, or V3 `["COMBO", {"options": [...]}]`.
fn combo_choices(spec: &Value) -> Option<&Vec<Value>> {
    let kind = spec.get(0)?;
    kind.as_array().or_else(|| {
        (kind == "COMBO")
            .then(|| spec.get(1)?.get("options")?.as_array())
            .flatten()
    })
}

#[derive(Default)]
struct Entry {
    names: Option<Arc<Names>>,
    fetched_at: Option<Instant>,
    tried_at: Option<Instant>,
    /// A read failed, or kept a request waiting past [`WAIT`], since the last one that worked.
    failing: bool,
    fetching: bool,
}

struct Server {
    client: ComfyClient,
    entry: Mutex<Entry>,
    fetched: Notify,
}

impl Server {
    /// The server's list: cached unless older than `max_age`; else read now. A request
    /// waits for the read (at most [`WAIT`]) on first contact and before refusing a name
    /// (`max_age`); while a server's reads fail, requests do not wait for the next try, so
    /// a server that is down never slows `POST /jobs`. `None` while unknown.
    async fn names(self: &Arc<Self>, max_age: Option<Duration>) -> Option<Arc<Names>> {
        let fetched = self.fetched.notified();
        {
            let mut entry = self.entry.lock().expect("catalogue poisoned");
            let fresh = entry
                .fetched_at
                .is_some_and(|at| max_age.is_none_or(|max| at.elapsed() < max));
            if fresh {
                return entry.names.clone();
            }
            let may_try = entry.tried_at.is_none_or(|at| at.elapsed() >= RETRY_AFTER);
            if !entry.fetching && may_try {
                entry.fetching = true;
                entry.tried_at = Some(Instant::now());
                tokio::spawn(self.clone().fetch());
            }
            let first_contact = entry.fetched_at.is_none() && !entry.failing;
            if !entry.fetching || !(first_contact || max_age.is_some()) {
                return entry.names.clone();
            }
        }
        let waited = tokio::time::timeout(WAIT, fetched).await;
        let mut entry = self.entry.lock().expect("catalogue poisoned");
        if waited.is_err() {
            // Slow to answer: the next requests go on without waiting for it.
            entry.failing = true;
        }
        entry.names.clone()
    }

    async fn fetch(self: Arc<Self>) {
        let read = tokio::time::timeout(FETCH_TIMEOUT, self.client.object_info()).await;
        {
            let mut entry = self.entry.lock().expect("catalogue poisoned");
            match read {
                Ok(Ok(info)) => {
                    entry.names = Some(Arc::new(Names::from_object_info(&info)));
                    entry.fetched_at = Some(Instant::now());
                    entry.failing = false;
                }
                Ok(Err(error)) => {
                    entry.failing = true;
                    tracing::debug!(server = self.client.url(), %error, "object_info not read");
                }
                Err(_) => {
                    entry.failing = true;
                    tracing::debug!(server = self.client.url(), "object_info timed out");
                }
            }
            entry.fetching = false;
        }
        self.fetched.notify_waiters();
    }
}

/// The lists of every server of the service.
pub(crate) struct Catalogue {
    servers: Vec<Arc<Server>>,
}

impl Catalogue {
    pub fn new(servers: &[ComfyClient]) -> Catalogue {
        Catalogue {
            servers: servers
                .iter()
                .map(|client| {
                    Arc::new(Server {
                        client: client.clone(),
                        entry: Mutex::new(Entry::default()),
                        fetched: Notify::new(),
                    })
                })
                .collect(),
        }
    }

    /// What no server (whose list is known) offers among the request's names that its
    /// template `uses`: like `run`'s preflight, every server must have them, since a job
    /// may go to any of them.
    pub async fn check(
        &self,
        request: &JobRequest,
        uses: impl Fn(Placeholder) -> bool,
    ) -> Vec<FieldProblem> {
        let named = named(request, &uses);
        let mut problems = Vec::new();
        let mut known = false;
        for server in &self.servers {
            let Some(mut names) = server.names(None).await else {
                continue;
            };
            let mut missing = missing_names(&names, &named);
            if !missing.is_empty() {
                // A model added since the list was read: read it again before refusing.
                if let Some(again) = server.names(Some(REFRESH_AFTER)).await {
                    names = again;
                    missing = missing_names(&names, &named);
                }
            }
            known = true;
            for (field, name, list) in missing {
                if !problems.iter().any(|p: &FieldProblem| p.field == field) {
                    problems.push(FieldProblem {
                        field: field.to_owned(),
                        reason: not_offered(server.client.url(), &name, list),
                    });
                }
            }
        }
        if !known {
            // Nothing to compare with: a subfolder name is only taken when a server lists it.
            for &(field, name) in &named {
                if name.contains(['/', '\\']) {
                    problems.push(FieldProblem {
                        field: field.to_owned(),
                        reason: format!(
                            "names a subfolder ({name:?}), which is taken only when a server lists it, and no server's list could be read; try again when a server is up"
                        ),
                    });
                }
            }
        }
        problems
    }
}

/// The request's names the template fills in, by field.
fn named(request: &JobRequest, uses: impl Fn(Placeholder) -> bool) -> Vec<(&'static str, &str)> {
    let mut names = Vec::new();
    if uses(Placeholder::Checkpoint) {
        names.push(("checkpoint_name", request.checkpoint_name.as_str()));
    }
    if uses(Placeholder::Sampler) {
        names.push(("sampler", request.sampler.as_str()));
    }
    if let Some(lora) = &request.lora
        && uses(Placeholder::LoraName)
    {
        names.push(("lora.name", lora.name.as_str()));
    }
    names
}

fn missing_names<'a>(
    names: &'a Names,
    named: &[(&'static str, &str)],
) -> Vec<(&'static str, String, &'a BTreeSet<String>)> {
    named
        .iter()
        .filter_map(|&(field, name)| {
            let list = match field {
                "checkpoint_name" => names.checkpoints.as_ref(),
                "lora.name" => names.loras.as_ref(),
                _ => names.samplers.as_ref(),
            }?;
            (!list.contains(name)).then(|| (field, name.to_owned(), list))
        })
        .collect()
}

/// "`x` is not on <http://gpu1:8188>, which has: a, b (did you mean `b`?)"
fn not_offered(server: &str, name: &str, list: &BTreeSet<String>) -> String {
    if list.is_empty() {
        return format!("{name:?} is not on {server}, which has none");
    }
    let all: Vec<&str> = list.iter().map(String::as_str).collect();
    let mut shown = all
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if all.len() > SHOWN {
        let _ = write!(shown, " and {} more", all.len() - SHOWN);
    }
    let hint = match did_you_mean(name, &all) {
        Some(close) => format!(" (did you mean {close:?}?)"),
        None => String::new(),
    };
    format!("{name:?} is not on {server}, which has: {shown}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_come_from_every_class_and_both_combo_shapes() {
        let info = json!({
            "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a.safetensors", "sdxl/b.safetensors"], {}]}}},
            "ImageOnlyCheckpointLoader": {"input": {"required": {"ckpt_name": [["c.safetensors"], {}]}}},
            "KSampler": {"input": {"required": {"sampler_name": ["COMBO", {"options": ["euler", "ddim"]}]}}},
            "Other": {"input": {"optional": {"seed": ["INT", {}]}}}
        });
        let names = Names::from_object_info(&info);
        let set = |items: &[&str]| Some(items.iter().map(ToString::to_string).collect());
        assert_eq!(
            names,
            Names {
                checkpoints: set(&["a.safetensors", "c.safetensors", "sdxl/b.safetensors"]),
                loras: None,
                samplers: set(&["ddim", "euler"]),
            }
        );
        let message = not_offered(
            "http://s",
            "a.safetensor",
            names.checkpoints.as_ref().unwrap(),
        );
        assert!(
            message.contains("which has: a.safetensors, c.safetensors"),
            "{message}"
        );
        assert!(
            message.contains("did you mean \"a.safetensors\"?"),
            "{message}"
        );
    }
}
