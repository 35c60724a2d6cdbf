//! The single worker: takes prompts from the queue in order and executes them the way
//! ComfyUI 0.8.0's `PromptExecutor.execute_async` does (execution list staging, input
//! signature cache, per-node messages, interrupts, errors, history). It owns the cache. What
//! a node does is its class's (`nodes`); the worker looks the class up and calls it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::fault::Fault;
use super::messages::Messages;
use super::nodes::{
    Catalog, Exec, Execute, NodeClass, NodeFail, NodeResult, Val, exception, unless_interrupted,
};
use super::pyjson;
use super::state::{Ctrl, QueueItem, Shared};

struct CachedNode {
    outputs: Vec<Val>,
    ui: Option<Value>,
}

/// The value on a link: from this prompt's results, else from the cache.
fn resolve<'c>(
    from: &str,
    slot: usize,
    results: &'c HashMap<String, Vec<Val>>,
    sigs: &HashMap<String, u64>,
    cache: &'c HashMap<u64, CachedNode>,
) -> Option<&'c Val> {
    results.get(from).and_then(|o| o.get(slot)).or_else(|| {
        sigs.get(from)
            .and_then(|s| cache.get(s))
            .and_then(|c| c.outputs.get(slot))
    })
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn is_link(v: &Value) -> Option<(&str, usize)> {
    match v.as_array()?.as_slice() {
        [Value::String(id), slot] => Some((id, slot.as_u64()? as usize)),
        _ => None,
    }
}

/// The worker task. Runs until aborted (crash or shutdown).
pub async fn run(shared: Arc<Shared>, catalog: Arc<Catalog>) {
    let mut cache: HashMap<u64, CachedNode> = HashMap::new();
    // This task has its thread to itself: hold frames between waits (`Shared::hold_frames`).
    Shared::hold_frames();
    loop {
        let item = loop {
            let next = {
                let mut core = shared.core();
                if std::mem::take(&mut core.free_memory) {
                    cache.clear();
                }
                let item = core.pending.pop_front();
                if let Some(item) = &item {
                    core.running = Some(item.clone());
                    shared.broadcast_status(core.queue_remaining());
                }
                item
            };
            if let Some(item) = next {
                break item;
            }
            shared.release_frames();
            shared.wake.notified().await;
        };
        {
            let mut st = shared.stats_mut();
            if let Some(since) = st.idle_since.take() {
                st.idle_total += since.elapsed();
            }
        }
        let started = shared.prompts_started_total.fetch_add(1, Ordering::SeqCst) + 1;
        let crash = shared.faults().find_map(|f| match f {
            Fault::CrashAfter { prompts, down_ms } if started == *prompts => Some(*down_ms),
            Fault::CrashEvery { prompts, down_ms } if started % prompts == 0 => Some(*down_ms),
            _ => None,
        });
        let mut run = Run::new(&shared, &catalog, &item, crash);
        run.execute(&mut cache).await;
        shared.release_frames();
        tokio::task::yield_now().await;
    }
}

struct Run<'a> {
    shared: &'a Shared,
    catalog: &'a Catalog,
    item: &'a QueueItem,
    messages: Messages<'a>,
    executed: Vec<String>,
    ui_outputs: Map<String, Value>,
    crash_ms: Option<u64>,
}

impl<'a> Run<'a> {
    fn new(
        shared: &'a Shared,
        catalog: &'a Catalog,
        item: &'a QueueItem,
        crash_ms: Option<u64>,
    ) -> Self {
        Run {
            shared,
            catalog,
            item,
            messages: Messages::new(shared, &item.prompt_id, item.client_id()),
            executed: Vec::new(),
            ui_outputs: Map::new(),
            crash_ms,
        }
    }

    fn pid(&self) -> &str {
        &self.item.prompt_id
    }

    fn class(&self, id: &str) -> Option<&'a NodeClass> {
        let ct = self.item.prompt.get(id)?.get("class_type")?.as_str()?;
        self.catalog.get(ct)
    }

    fn inputs(&self, id: &str) -> &'a Map<String, Value> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        self.item
            .prompt
            .get(id)
            .and_then(|n| n.get("inputs"))
            .and_then(|i| i.as_object())
            .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
    }

    #[allow(
        clippy::too_many_lines,
        reason = "mirrors ComfyUI's execute (execution.py): one prompt's nodes and messages in order"
    )]
    async fn execute(&mut self, cache: &mut HashMap<u64, CachedNode>) {
        let shared = self.shared;
        shared.interrupt.store(false, Ordering::SeqCst);
        let pid = self.pid().to_string();
        self.messages.add_message(
            "execution_start",
            json!({"prompt_id": pid, "timestamp": now_ms()}),
            false,
        );

        let sigs = signatures(&self.item.prompt, self.catalog, &shared.input_dir);
        let live: HashSet<u64> = sigs.values().copied().collect();
        cache.retain(|k, _| live.contains(k));
        let cached_nodes: Vec<String> = self
            .item
            .prompt
            .keys()
            .filter(|id| sigs.get(*id).is_some_and(|s| cache.contains_key(s)))
            .cloned()
            .collect();
        self.messages.add_message(
            "execution_cached",
            json!({"nodes": cached_nodes, "prompt_id": pid, "timestamp": now_ms()}),
            false,
        );

        let is_cached = |id: &str| sigs.get(id).is_some_and(|s| cache.contains_key(s));
        let mut list = ExecList::default();
        for o in &self.item.outputs {
            list.add_node(o, &self.item.prompt, &is_cached);
        }
        let mut results: HashMap<String, Vec<Val>> = HashMap::new();
        let mut failure: Option<(String, NodeFail)> = None;
        let mut first = true;
        while !list.pending.is_empty() {
            let ready: Vec<String> = list
                .pending
                .iter()
                .filter(|n| list.block_count.get(*n) == Some(&0))
                .cloned()
                .collect();
            let Some(node) = self.pick(&ready, &list) else {
                let node = list.pending[0].clone();
                failure = Some((
                    node,
                    exception(
                        "comfy_execution.graph.DependencyCycleError",
                        "Dependency cycle detected",
                    ),
                ));
                break;
            };
            let sig = sigs.get(&node).copied().unwrap_or(0);
            if let Some(hit) = cache.get(&sig) {
                if self.messages.client.is_some() {
                    let out = hit.ui.clone().unwrap_or(Value::Null);
                    self.messages.to_client("executed", &json!({"node": node, "display_node": node, "output": out, "prompt_id": pid}));
                    if let Some(ui) = &hit.ui {
                        self.ui_outputs.insert(node.clone(), ui.clone());
                    }
                }
                self.messages.finish_progress(&node);
                results.insert(node.clone(), hit.outputs.clone());
                list.complete(&node);
                continue;
            }
            match self
                .execute_node(&node, &sigs, cache, &results, first)
                .await
            {
                Ok((outputs, ui)) => {
                    first = false;
                    if let Some(ui) = &ui {
                        self.messages.to_client("executed", &json!({"node": node, "display_node": node, "output": ui, "prompt_id": pid}));
                        self.ui_outputs.insert(node.clone(), ui.clone());
                    }
                    self.messages.finish_progress(&node);
                    self.executed.push(node.clone());
                    cache.insert(
                        sig,
                        CachedNode {
                            outputs: outputs.clone(),
                            ui,
                        },
                    );
                    results.insert(node.clone(), outputs);
                    list.complete(&node);
                }
                Err(NodeFail::Crashed) => {
                    // The supervisor aborts this task; nothing more may be sent or written.
                    std::future::pending::<()>().await;
                }
                Err(fail) => {
                    failure = Some((node, fail));
                    break;
                }
            }
        }

        let success = failure.is_none();
        if let Some((node, fail)) = failure {
            let node_type = self.class(&node).map(|c| c.name).unwrap_or_default();
            match fail {
                NodeFail::Interrupted => {
                    let data = json!({
                        "prompt_id": pid, "node_id": node, "node_type": node_type,
                        "executed": self.executed, "timestamp": now_ms(),
                    });
                    self.messages
                        .add_message("execution_interrupted", data, true);
                }
                NodeFail::Exception {
                    type_name,
                    message,
                    traceback,
                } => {
                    let current_inputs = self.current_inputs(&node, &results, cache, &sigs);
                    let data = json!({
                        "prompt_id": pid, "node_id": node, "node_type": node_type,
                        "executed": self.executed,
                        "exception_message": format!("{message}\n"),
                        "exception_type": type_name,
                        "traceback": traceback,
                        "current_inputs": current_inputs,
                        "current_outputs": self.item.prompt.keys().collect::<Vec<_>>(),
                        "timestamp": now_ms(),
                    });
                    self.messages.add_message("execution_error", data, false);
                }
                NodeFail::Crashed => {}
            }
        } else {
            self.messages.add_message(
                "execution_success",
                json!({"prompt_id": pid, "timestamp": now_ms()}),
                false,
            );
        }
        self.finish(success).await;
    }

    async fn finish(&mut self, success: bool) {
        let shared = self.shared;
        let meta: Map<String, Value> = self
            .ui_outputs
            .keys()
            .map(|k| (k.clone(), json!({"node_id": k, "display_node": k, "parent_node": null, "real_node_id": k})))
            .collect();
        // Moved, not copied: nothing is sent from them after this.
        let outputs = Value::Object(std::mem::take(&mut self.ui_outputs));
        let messages = Value::Array(std::mem::take(&mut self.messages.history));
        // Built by hand: `json!` would deep-copy every value given to it.
        let status = Map::from_iter([
            (
                "status_str".to_owned(),
                json!(if success { "success" } else { "error" }),
            ),
            ("completed".to_owned(), json!(success)),
            ("messages".to_owned(), messages),
        ]);
        let entry = Value::Object(Map::from_iter([
            ("prompt".to_owned(), self.item.to_json()),
            ("outputs".to_owned(), outputs),
            ("status".to_owned(), Value::Object(status)),
            ("meta".to_owned(), Value::Object(meta)),
        ]));
        let late = shared.faults().find_map(|f| match f {
            Fault::LateHistory { ms } => Some(*ms),
            _ => None,
        });
        let mut entry = Some(entry);
        let mut write = |core: &mut super::state::Core| {
            if let Some(entry) = entry.take() {
                core.history.insert(&self.item.prompt_id, entry);
            }
        };
        let idle_now = if let Some(ms) = late {
            {
                let mut core = shared.core();
                core.running = None;
                core.last_node = None;
                shared.broadcast_status(core.queue_remaining());
            }
            shared.release_frames();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let mut core = shared.core();
            write(&mut core);
            core.pending.is_empty()
        } else {
            let mut core = shared.core();
            write(&mut core);
            core.running = None;
            core.last_node = None;
            shared.broadcast_status(core.queue_remaining());
            core.pending.is_empty()
        };
        {
            // Counted before the last message, so a client that saw it sees the count.
            let mut st = shared.stats_mut();
            st.stats.executed += 1;
            if idle_now {
                st.idle_since = Some(Instant::now());
            }
        }
        self.messages
            .to_client("executing", &json!({"node": null, "prompt_id": self.pid()}));
    }

    /// `ExecutionList.ux_friendly_pick_node`.
    fn pick(&self, ready: &[String], list: &ExecList) -> Option<String> {
        let is_output = |id: &str| self.class(id).is_some_and(|c| c.output_node);
        let blocked = |id: &str| list.blocking.get(id).cloned().unwrap_or_default();
        if let Some(n) = ready.iter().find(|n| is_output(n)) {
            return Some(n.clone());
        }
        if let Some(n) = ready
            .iter()
            .find(|n| blocked(n).iter().any(|b| is_output(b)))
        {
            return Some(n.clone());
        }
        if let Some(n) = ready.iter().find(|n| {
            blocked(n)
                .iter()
                .any(|b| blocked(b).iter().any(|b1| is_output(b1)))
        }) {
            return Some(n.clone());
        }
        ready.first().cloned()
    }

    fn current_inputs(
        &self,
        node: &str,
        results: &HashMap<String, Vec<Val>>,
        cache: &HashMap<u64, CachedNode>,
        sigs: &HashMap<String, u64>,
    ) -> Value {
        let mut out = Map::new();
        let class = self.class(node);
        for (name, value) in self.inputs(node) {
            let declared = class.is_some_and(|c| {
                c.required
                    .iter()
                    .chain(c.optional.iter())
                    .any(|(k, _)| k == name)
            });
            if let Some((from, slot)) = is_link(value) {
                let val = resolve(from, slot, results, sigs, cache);
                if let Some(v) = val {
                    out.insert(name.clone(), json!([v.py_str()]));
                }
            } else if declared {
                let v = match value {
                    Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
                        value.clone()
                    }
                    other => Value::String(pyjson::str_value(other)),
                };
                out.insert(name.clone(), json!([v]));
            }
        }
        if let Some(c) = class {
            for (name, kind) in &c.hidden {
                let v = match *kind {
                    "PROMPT" => {
                        Value::String(pyjson::str_value(&Value::Object(self.item.prompt.clone())))
                    }
                    "EXTRA_PNGINFO" => match self.item.extra_data.get("extra_pnginfo") {
                        Some(v) => Value::String(pyjson::str_value(v)),
                        None => Value::Null,
                    },
                    _ => Value::Null,
                };
                out.insert(name.to_string(), json!([v]));
            }
        }
        Value::Object(out)
    }

    /// `execution.execute` for one node: its messages, the interrupt check before it, the
    /// faults aimed at its class, then the class's own function on its inputs.
    async fn execute_node(
        &mut self,
        node: &str,
        sigs: &HashMap<String, u64>,
        cache: &HashMap<u64, CachedNode>,
        results: &HashMap<String, Vec<Val>>,
        first: bool,
    ) -> NodeResult {
        let shared = self.shared;
        let pid = self.pid().to_string();
        self.messages
            .progress_state(node, &json!(0.0), json!(1.0), "running");
        self.messages.to_client(
            "executing",
            &json!({"node": node, "display_node": node, "prompt_id": pid}),
        );
        {
            let mut core = shared.core();
            core.last_client.clone_from(&self.messages.client);
            core.last_node = Some(node.to_string());
        }
        if first && let Some(ms) = self.crash_ms.take() {
            // What was sent before the crash reached the sockets.
            shared.release_frames();
            let _ = shared.ctrl.send(Ctrl::Crash(Duration::from_millis(ms)));
            return Err(NodeFail::Crashed);
        }
        let class = self
            .class(node)
            .ok_or_else(|| exception("KeyError", "class"))?;
        let class_name = class.name;

        // Inputs: links resolved to values, literals as coerced by validation.
        let raw = self.inputs(node);
        let mut links: HashMap<&str, Val> = HashMap::new();
        for (name, value) in raw {
            if let Some((from, slot)) = is_link(value) {
                let val = resolve(from, slot, results, sigs, cache);
                if let Some(v) = val {
                    links.insert(name.as_str(), v.clone());
                }
            }
        }
        // before_node_execution(): the interrupt check.
        if shared.interrupt.load(Ordering::SeqCst) {
            return Err(NodeFail::Interrupted);
        }
        for fault in shared.faults() {
            match fault {
                Fault::SlowNode { class: slow, ms } if slow == class_name => {
                    shared.release_frames();
                    let work = tokio::time::sleep(Duration::from_millis(*ms));
                    if class.model_ops {
                        unless_interrupted(shared, work).await?;
                    } else {
                        work.await;
                    }
                }
                Fault::Hang { class: hung } if hung == class_name => {
                    shared.release_frames();
                    unless_interrupted(shared, std::future::pending::<()>()).await?;
                }
                Fault::Raise { class: raised } if raised == class_name => {
                    return Err(exception(
                        "RuntimeError",
                        format!(
                            "simulated failure in {class_name} (plasma-batch sim fault raise:{class_name})"
                        ),
                    ));
                }
                _ => {}
            }
        }
        let mut ex = Exec::new(shared, self.item, node, &mut self.messages, raw, links);
        match class.execute {
            Execute::Now(execute) => execute(&mut ex),
            Execute::Wait(execute) => execute(&mut ex).await,
        }
    }
}

/// ComfyUI's input signature per node: class, literal inputs, the ancestors' signatures and
/// what the class's `IS_CHANGED` says.
fn signatures(
    prompt: &Map<String, Value>,
    catalog: &Catalog,
    input_dir: &std::path::Path,
) -> HashMap<String, u64> {
    use super::image::{FNV_OFFSET, fnv1a as fnv};
    fn sig(
        id: &str,
        prompt: &Map<String, Value>,
        catalog: &Catalog,
        input_dir: &std::path::Path,
        memo: &mut HashMap<String, u64>,
        visiting: &mut HashSet<String>,
    ) -> u64 {
        if let Some(s) = memo.get(id) {
            return *s;
        }
        if !visiting.insert(id.to_string()) {
            return 0;
        }
        let node = prompt.get(id);
        let class = node
            .and_then(|n| n.get("class_type"))
            .and_then(|c| c.as_str())
            .unwrap_or("");
        let mut h = fnv(FNV_OFFSET, class.as_bytes());
        let empty = Map::new();
        let inputs = node
            .and_then(|n| n.get("inputs"))
            .and_then(|i| i.as_object())
            .unwrap_or(&empty);
        let mut keys: Vec<&String> = inputs.keys().collect();
        keys.sort();
        for k in keys {
            h = fnv(h, k.as_bytes());
            let v = &inputs[k];
            match is_link(v) {
                Some((from, slot)) if prompt.contains_key(from) => {
                    let child = sig(from, prompt, catalog, input_dir, memo, visiting);
                    h = fnv(h, &child.to_le_bytes());
                    h = fnv(h, &slot.to_le_bytes());
                }
                _ => h = fnv(h, pyjson::dumps(v).as_bytes()),
            }
        }
        if let Some(is_changed) = catalog.get(class).and_then(|c| c.hooks.is_changed)
            && let Some(changed) = is_changed(inputs, input_dir)
        {
            h = fnv(h, &changed);
        }
        visiting.remove(id);
        memo.insert(id.to_string(), h);
        h
    }
    let mut memo = HashMap::new();
    let mut visiting = HashSet::new();
    for id in prompt.keys() {
        sig(id, prompt, catalog, input_dir, &mut memo, &mut visiting);
    }
    memo
}

/// `comfy_execution.graph.ExecutionList`: pending nodes in insertion order and the links
/// that block them.
#[derive(Default)]
struct ExecList {
    pending: Vec<String>,
    block_count: HashMap<String, usize>,
    blocking: HashMap<String, Vec<String>>,
}

impl ExecList {
    fn add_node(
        &mut self,
        id: &str,
        prompt: &Map<String, Value>,
        is_cached: &dyn Fn(&str) -> bool,
    ) {
        let mut stack = vec![id.to_string()];
        let mut links = Vec::new();
        while let Some(u) = stack.pop() {
            if self.pending.contains(&u) {
                continue;
            }
            self.pending.push(u.clone());
            self.block_count.insert(u.clone(), 0);
            self.blocking.insert(u.clone(), Vec::new());
            if let Some(inputs) = prompt
                .get(&u)
                .and_then(|n| n.get("inputs"))
                .and_then(|i| i.as_object())
            {
                for value in inputs.values() {
                    if let Some((from, _)) = is_link(value)
                        && prompt.contains_key(from)
                    {
                        if !is_cached(from) {
                            stack.push(from.to_string());
                        }
                        links.push((from.to_string(), u.clone()));
                    }
                }
            }
        }
        for (from, to) in links {
            if !is_cached(&from) {
                self.add_node(&from, prompt, is_cached);
                let blocked = self.blocking.entry(from).or_default();
                if !blocked.contains(&to) {
                    blocked.push(to.clone());
                    *self.block_count.entry(to).or_default() += 1;
                }
            }
        }
    }

    fn complete(&mut self, id: &str) {
        self.pending.retain(|p| p != id);
        for to in self.blocking.remove(id).unwrap_or_default() {
            if let Some(c) = self.block_count.get_mut(&to) {
                *c = c.saturating_sub(1);
            }
        }
    }
}
