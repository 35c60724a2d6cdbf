//! The single worker: takes prompts from the queue in order and executes them the way
//! ComfyUI 0.8.0's `PromptExecutor.execute_async` does (execution list staging, input
//! signature cache, per-node messages, interrupts, errors, history). It owns the cache.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Message;
use serde_json::{Map, Value, json};

use super::fault::Fault;
use super::image::{self, Image, Mask};
use super::nodes::NodeClass;
use super::pyjson;
use super::state::Ctrl;
use super::state::{QueueItem, Shared};

/// A value flowing along a link.
#[derive(Clone, Debug)]
pub enum Val {
    Model {
        ckpt: String,
        loras: Vec<(String, f64)>,
    },
    Clip {
        ckpt: String,
        loras: Vec<(String, f64)>,
    },
    Vae,
    Cond {
        text: String,
    },
    Latent {
        width: u32,
        height: u32,
        batch: u32,
        sampled: Option<(u64, String)>,
    },
    Image(Image),
    Mask(Mask),
}

impl Val {
    /// `str(x)` of the Python object this stands for (for `current_inputs`).
    fn py_str(&self) -> String {
        match self {
            Val::Model { .. } => {
                "<comfy.model_patcher.ModelPatcher object at 0x7f5e4c1d2e90>".into()
            }
            Val::Clip { .. } => "<comfy.sd.CLIP object at 0x7f5e4c1d3a10>".into(),
            Val::Vae => "<comfy.sd.VAE object at 0x7f5e4c1d3b50>".into(),
            Val::Cond { .. } => {
                let t = image::torch_repr(&[1, 77, 768], &|_| 0.0);
                format!("[[{t}, {{'pooled_output': None}}]]")
            }
            Val::Latent {
                width,
                height,
                batch,
                ..
            } => {
                let shape = [
                    *batch as usize,
                    4,
                    (*height / 8).max(1) as usize,
                    (*width / 8).max(1) as usize,
                ];
                format!("{{'samples': {}}}", image::torch_repr(&shape, &|_| 0.0))
            }
            Val::Image(i) => i.torch_repr(),
            Val::Mask(m) => m.torch_repr(),
        }
    }
}

struct CachedNode {
    outputs: Vec<Val>,
    ui: Option<Value>,
}

/// `[u32 BE event][u32 BE word][head][body]`, the shape of every binary frame.
fn binary_frame(event: u32, word: u32, head: &[u8], body: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(8 + head.len() + body.len());
    frame.extend_from_slice(&event.to_be_bytes());
    frame.extend_from_slice(&word.to_be_bytes());
    frame.extend_from_slice(head);
    frame.extend_from_slice(body);
    Message::Binary(frame.into())
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

/// Why a node did not finish.
enum NodeFail {
    Interrupted,
    Exception {
        type_name: String,
        message: String,
        traceback: Vec<String>,
    },
    /// The simulator crashed under this prompt: stop without a word.
    Crashed,
}

fn exception(type_name: &str, message: impl Into<String>) -> NodeFail {
    NodeFail::Exception {
        type_name: type_name.into(),
        message: message.into(),
        traceback: image_to_mask_traceback().into_iter().take(4).collect(),
    }
}

/// The traceback ComfyUI 0.8.0 gives for `ImageToMask` with `channel: alpha` on RGB (transcript 03).
fn image_to_mask_traceback() -> Vec<String> {
    [
        "  File \"ComfyUI/execution.py\", line 518, in execute\n    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, v3_data=v3_data)\n                                                              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
        "  File \"ComfyUI/execution.py\", line 329, in get_output_data\n    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, v3_data=v3_data)\n                    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
        "  File \"ComfyUI/execution.py\", line 303, in _async_map_node_over_list\n    await process_inputs(input_dict, i)\n",
        "  File \"ComfyUI/execution.py\", line 291, in process_inputs\n    result = f(**inputs)\n             ^^^^^^^^^^^\n",
        "  File \"ComfyUI/comfy_api/internal/__init__.py\", line 149, in wrapped_func\n    return method(locked_class, **inputs)\n           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
        "  File \"ComfyUI/comfy_api/latest/_io.py\", line 1570, in EXECUTE_NORMALIZED\n    to_return = cls.execute(*args, **kwargs)\n                ^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
        "  File \"ComfyUI/comfy_extras/nodes_mask.py\", line 141, in execute\n    mask = image[:, :, :, channels.index(channel)]\n           ~~~~~^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
    ]
    .map(String::from)
    .to_vec()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn is_link(v: &Value) -> Option<(&str, usize)> {
    match v.as_array()?.as_slice() {
        [Value::String(id), slot] => Some((id, slot.as_u64()? as usize)),
        _ => None,
    }
}

/// The worker task. Runs until aborted (crash or shutdown).
pub async fn run(shared: Arc<Shared>) {
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
            match next {
                Some(item) => break item,
                None => {
                    shared.release_frames();
                    shared.wake.notified().await
                }
            }
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
        let mut run = Run::new(&shared, &item, crash);
        run.execute(&mut cache).await;
        shared.release_frames();
        tokio::task::yield_now().await;
    }
}

/// One node's entry of `progress_state`, kept serialised (`"id": {...}`).
struct NodeProgress {
    node: String,
    max: Value,
    json: String,
}

struct Run<'a> {
    shared: &'a Shared,
    item: &'a QueueItem,
    client: Option<String>,
    messages: Vec<Value>,
    progress: Vec<NodeProgress>,
    executed: Vec<String>,
    ui_outputs: Map<String, Value>,
    preview: bool,
    crash_ms: Option<u64>,
}

impl<'a> Run<'a> {
    fn new(shared: &'a Shared, item: &'a QueueItem, crash_ms: Option<u64>) -> Self {
        let preview = matches!(
            item.extra_data
                .get("preview_method")
                .and_then(|v| v.as_str()),
            Some("auto" | "latent2rgb" | "taesd")
        );
        Run {
            shared,
            item,
            client: item.client_id(),
            messages: Vec::new(),
            progress: Vec::new(),
            executed: Vec::new(),
            ui_outputs: Map::new(),
            preview,
            crash_ms,
        }
    }

    fn pid(&self) -> &str {
        &self.item.prompt_id
    }

    /// "→client; suppressed if none".
    fn to_client(&self, ty: &str, data: &Value) {
        if ty == "executed"
            && self
                .shared
                .faults()
                .any(|f| matches!(f, Fault::DropExecuted))
        {
            return;
        }
        if let Some(c) = &self.client {
            self.shared.send_json(ty, data, Some(c));
        }
    }

    /// "→client; broadcast if none".
    fn to_client_or_all(&self, msg: Message) {
        self.shared.send(msg, self.client.as_deref());
    }

    /// `PromptExecutor.add_message`: recorded for history, then sent.
    fn add_message(&mut self, ty: &str, data: Value, broadcast: bool) {
        if self.client.is_some() || broadcast {
            self.shared.send_json(ty, &data, self.client.as_deref());
        }
        self.messages
            .push(Value::Array(vec![Value::from(ty), data]));
    }

    /// `progress_state`: every node's state so far, sent on each change (each sampler step
    /// too). Only the changed node's entry is serialised; the frame joins the others' text.
    fn progress_state(&mut self, node: &str, value: Value, max: Value, state: &str) {
        #[derive(serde::Serialize)]
        struct Entry<'a> {
            value: &'a Value,
            max: &'a Value,
            state: &'a str,
            node_id: &'a str,
            prompt_id: &'a str,
            display_node_id: &'a str,
            parent_node_id: Option<()>,
            real_node_id: &'a str,
        }
        let entry = Entry {
            value: &value,
            max: &max,
            state,
            node_id: node,
            prompt_id: self.pid(),
            display_node_id: node,
            parent_node_id: None,
            real_node_id: node,
        };
        let json = format!("{}: {}", pyjson::dumps(node), pyjson::dumps(&entry));
        match self.progress.iter_mut().find(|p| p.node == node) {
            Some(p) => {
                p.max = max;
                p.json = json;
            }
            None => self.progress.push(NodeProgress {
                node: node.to_owned(),
                max,
                json,
            }),
        }
        let mut text = String::with_capacity(
            64 + self
                .progress
                .iter()
                .map(|p| p.json.len() + 2)
                .sum::<usize>(),
        );
        text.push_str(r#"{"type": "progress_state", "data": {"prompt_id": "#);
        text.push_str(&pyjson::dumps(self.pid()));
        text.push_str(r#", "nodes": {"#);
        for (i, p) in self.progress.iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            text.push_str(&p.json);
        }
        text.push_str("}}}");
        self.to_client_or_all(Message::Text(text.into()));
    }

    fn finish_progress(&mut self, node: &str) {
        let max = match self.progress.iter().find(|p| p.node == node) {
            Some(p) => p.max.clone(),
            None => json!(1),
        };
        self.progress_state(node, max.clone(), max, "finished");
    }

    fn class(&self, id: &str) -> Option<&'a NodeClass> {
        let ct = self.item.prompt.get(id)?.get("class_type")?.as_str()?;
        self.shared.catalog.get(ct)
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

    async fn execute(&mut self, cache: &mut HashMap<u64, CachedNode>) {
        let shared = self.shared;
        shared.interrupt.store(false, Ordering::SeqCst);
        let pid = self.pid().to_string();
        self.add_message(
            "execution_start",
            json!({"prompt_id": pid, "timestamp": now_ms()}),
            false,
        );

        let sigs = signatures(&self.item.prompt, &shared.input_dir);
        let live: HashSet<u64> = sigs.values().copied().collect();
        cache.retain(|k, _| live.contains(k));
        let cached_nodes: Vec<String> = self
            .item
            .prompt
            .keys()
            .filter(|id| sigs.get(*id).is_some_and(|s| cache.contains_key(s)))
            .cloned()
            .collect();
        self.add_message(
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
                if self.client.is_some() {
                    let out = hit.ui.clone().unwrap_or(Value::Null);
                    self.to_client("executed", &json!({"node": node, "display_node": node, "output": out, "prompt_id": pid}));
                    if let Some(ui) = &hit.ui {
                        self.ui_outputs.insert(node.clone(), ui.clone());
                    }
                }
                self.finish_progress(&node);
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
                        self.to_client("executed", &json!({"node": node, "display_node": node, "output": ui, "prompt_id": pid}));
                        self.ui_outputs.insert(node.clone(), ui.clone());
                    }
                    self.finish_progress(&node);
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
                    self.add_message("execution_interrupted", data, true);
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
                    self.add_message("execution_error", data, false);
                }
                NodeFail::Crashed => {}
            }
        } else {
            self.add_message(
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
        let messages = Value::Array(std::mem::take(&mut self.messages));
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
        self.to_client("executing", &json!({"node": null, "prompt_id": self.pid()}));
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

    async fn execute_node(
        &mut self,
        node: &str,
        sigs: &HashMap<String, u64>,
        cache: &HashMap<u64, CachedNode>,
        results: &HashMap<String, Vec<Val>>,
        first: bool,
    ) -> Result<(Vec<Val>, Option<Value>), NodeFail> {
        let shared = self.shared;
        let pid = self.pid().to_string();
        self.progress_state(node, json!(0.0), json!(1.0), "running");
        self.to_client(
            "executing",
            &json!({"node": node, "display_node": node, "prompt_id": pid}),
        );
        {
            let mut core = shared.core();
            core.last_client = self.client.clone();
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
        let lit_i = |k: &str| {
            raw.get(k)
                .and_then(|v| v.as_i64().or_else(|| v.as_u64().map(|u| u as i64)))
                .unwrap_or(0)
        };
        let lit_u = |k: &str| {
            raw.get(k)
                .and_then(|v| v.as_u64().or_else(|| v.as_i64().map(|i| i as u64)))
                .unwrap_or(0)
        };
        let lit_f = |k: &str| raw.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
        let lit_s = |k: &str| raw.get(k).map(pyjson::str_value).unwrap_or_default();

        // before_node_execution(): the interrupt check.
        if shared.interrupt.load(Ordering::SeqCst) {
            return Err(NodeFail::Interrupted);
        }
        for fault in shared.faults() {
            match fault {
                Fault::SlowNode { class, ms } if class == class_name => {
                    shared.release_frames();
                    let work = tokio::time::sleep(Duration::from_millis(*ms));
                    if runs_model_ops(class_name) {
                        unless_interrupted(shared, work).await?;
                    } else {
                        work.await;
                    }
                }
                Fault::Hang { class } if class == class_name => {
                    shared.release_frames();
                    unless_interrupted(shared, std::future::pending::<()>()).await?;
                }
                Fault::Raise { class } if class == class_name => {
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

        let image = |k: &str| match links.get(k) {
            Some(Val::Image(i)) => Ok(i.clone()),
            _ => Err(exception(
                "AttributeError",
                format!("'NoneType' object has no attribute 'shape' ({k})"),
            )),
        };
        let out: (Vec<Val>, Option<Value>) = match class_name {
            "CheckpointLoaderSimple" => {
                let ckpt = lit_s("ckpt_name");
                (
                    vec![
                        Val::Model {
                            ckpt: ckpt.clone(),
                            loras: vec![],
                        },
                        Val::Clip {
                            ckpt,
                            loras: vec![],
                        },
                        Val::Vae,
                    ],
                    None,
                )
            }
            "LoraLoader" => {
                let lora = lit_s("lora_name");
                let (
                    Some(Val::Model { ckpt: m, loras: ml }),
                    Some(Val::Clip { ckpt: c, loras: cl }),
                ) = (links.get("model"), links.get("clip"))
                else {
                    return Err(exception(
                        "AttributeError",
                        "'NoneType' object has no attribute 'clone'",
                    ));
                };
                let mut ml = ml.clone();
                ml.push((lora.clone(), lit_f("strength_model")));
                let mut cl = cl.clone();
                cl.push((lora, lit_f("strength_clip")));
                (
                    vec![
                        Val::Model {
                            ckpt: m.clone(),
                            loras: ml,
                        },
                        Val::Clip {
                            ckpt: c.clone(),
                            loras: cl,
                        },
                    ],
                    None,
                )
            }
            "CLIPTextEncode" => (
                vec![Val::Cond {
                    text: lit_s("text"),
                }],
                None,
            ),
            "EmptyLatentImage" => (
                vec![Val::Latent {
                    width: lit_i("width") as u32,
                    height: lit_i("height") as u32,
                    batch: lit_i("batch_size") as u32,
                    sampled: None,
                }],
                None,
            ),
            "KSampler" => {
                let Some(Val::Latent {
                    width,
                    height,
                    batch,
                    ..
                }) = links.get("latent_image").cloned()
                else {
                    return Err(exception(
                        "TypeError",
                        "'NoneType' object is not subscriptable",
                    ));
                };
                let text = match links.get("positive") {
                    Some(Val::Cond { text }) => text.clone(),
                    _ => String::new(),
                };
                let seed = lit_u("seed");
                let steps = lit_i("steps").max(1) as u64;
                self.sample(node, seed, &text, width, height, steps).await?;
                (
                    vec![Val::Latent {
                        width,
                        height,
                        batch,
                        sampled: Some((seed, text)),
                    }],
                    None,
                )
            }
            "VAEDecode" => {
                let Some(Val::Latent {
                    width,
                    height,
                    batch,
                    sampled,
                }) = links.get("samples")
                else {
                    return Err(exception(
                        "TypeError",
                        "'NoneType' object is not subscriptable",
                    ));
                };
                let img = match sampled {
                    Some((seed, text)) => image::render(*seed, text, *width, *height, *batch),
                    None => Image::solid(*width, *height, *batch, 0x7f7f7f),
                };
                (vec![Val::Image(img)], None)
            }
            "SaveImage" | "PreviewImage" => {
                let img = image("images")?;
                let ui = self.save_images(
                    &img,
                    class_name == "PreviewImage",
                    &lit_s("filename_prefix"),
                )?;
                (vec![], Some(ui))
            }
            "EmptyImage" => (
                vec![Val::Image(Image::solid(
                    lit_i("width") as u32,
                    lit_i("height") as u32,
                    lit_i("batch_size") as u32,
                    lit_i("color") as u32,
                ))],
                None,
            ),
            "ImageBlur" => {
                let img = image("image")?;
                (
                    vec![Val::Image(
                        img.blur(lit_i("blur_radius") as u32, lit_f("sigma")),
                    )],
                    None,
                )
            }
            "ImageToMask" => {
                let img = image("image")?;
                let channel = ["red", "green", "blue", "alpha"]
                    .iter()
                    .position(|c| *c == lit_s("channel"))
                    .unwrap_or(0);
                if channel >= 3 {
                    return Err(NodeFail::Exception {
                        type_name: "IndexError".into(),
                        message: format!(
                            "index {channel} is out of bounds for dimension 3 with size 3"
                        ),
                        traceback: image_to_mask_traceback(),
                    });
                }
                (vec![Val::Mask(img.channel_mask(channel))], None)
            }
            "MaskToImage" => match links.get("mask") {
                Some(Val::Mask(m)) => (vec![Val::Image(m.to_image())], None),
                _ => {
                    return Err(exception(
                        "AttributeError",
                        "'NoneType' object has no attribute 'reshape'",
                    ));
                }
            },
            "LoadImage" => {
                let name = lit_s("image");
                let name = name.strip_suffix(" [input]").unwrap_or(&name).to_string();
                let path = shared.input_dir.join(&name);
                let bytes = std::fs::read(&path)
                    .map_err(|e| exception("FileNotFoundError", e.to_string()))?;
                let (img, mask) = image::decode_png(&bytes).map_err(|_| {
                    exception(
                        "PIL.UnidentifiedImageError",
                        format!("cannot identify image file '{}'", path.display()),
                    )
                })?;
                (vec![Val::Image(img), Val::Mask(mask)], None)
            }
            "ImageScale" => {
                let img = image("image")?;
                (
                    vec![Val::Image(
                        img.scale(lit_i("width") as u32, lit_i("height") as u32),
                    )],
                    None,
                )
            }
            other => {
                return Err(exception(
                    "NotImplementedError",
                    format!("the simulator cannot run {other}"),
                ));
            }
        };
        Ok(out)
    }

    /// KSampler's steps: wait, check the interrupt flag, then progress (and previews).
    async fn sample(
        &mut self,
        node: &str,
        seed: u64,
        text: &str,
        w: u32,
        h: u32,
        steps: u64,
    ) -> Result<(), NodeFail> {
        let shared = self.shared;
        let step = Duration::from_millis(shared.config.step_ms);
        let pid = self.pid().to_string();
        let metadata = self.preview
            && self
                .client
                .as_deref()
                .is_some_and(|c| shared.preview_metadata(c));
        // Step k ends at start + k * step, so a render takes steps x step_ms (sleeping 1 ms
        // per step took about 2 ms each), and no step ends more than microseconds late (see
        // `sleep_until_precise`; tokio's timer could end step 19 of 20 after step 20's end).
        let start = tokio::time::Instant::now();
        for value in 1..=steps {
            if !step.is_zero() {
                shared.release_frames();
                // Every model op checks the flag: an interrupt ends the step at once.
                let step_end = sleep_until_precise(start + step * value as u32, value == steps);
                unless_interrupted(shared, step_end).await?;
            }
            // hijack_progress.hook: the interrupt check comes first.
            if shared.interrupt.load(Ordering::SeqCst) {
                return Err(NodeFail::Interrupted);
            }
            self.progress_state(node, json!(value), json!(steps), "running");
            // Latent previews are JPEG, as `latent_preview` sends them (quality 95).
            let jpeg = self.preview.then(|| {
                let preview = image::render_preview(
                    seed,
                    text,
                    (w / 8).max(1),
                    (h / 8).max(1),
                    value as f32 / steps as f32,
                );
                super::jpeg::encode(&preview.frame(0), preview.width, preview.height, 95)
            });
            if let (Some(jpeg), true) = (&jpeg, metadata) {
                let meta = pyjson::dumps(&json!({
                    "node_id": node, "prompt_id": pid, "display_node_id": node,
                    "parent_node_id": null, "real_node_id": node, "image_type": "image/jpeg",
                }));
                // PREVIEW_IMAGE_WITH_METADATA: [u32 4][u32 json_len][json][image].
                self.to_client_or_all(binary_frame(4, meta.len() as u32, meta.as_bytes(), jpeg));
            }
            let progress = json!({"value": value, "max": steps, "prompt_id": pid, "node": node});
            self.to_client_or_all(Shared::frame("progress", &progress));
            if let (Some(jpeg), false) = (jpeg, metadata) {
                // PREVIEW_IMAGE: [u32 1][u32 image type, 1 = JPEG][image].
                self.to_client_or_all(binary_frame(1, 1, &[], &jpeg));
            }
        }
        Ok(())
    }

    /// `SaveImage.save_images` / `PreviewImage`.
    fn save_images(&self, img: &Image, temp: bool, prefix: &str) -> Result<Value, NodeFail> {
        let shared = self.shared;
        let (base, kind, prefix) = if temp {
            let letters: String = (0..5)
                .map(|_| (b'a' + (shared.random() * 26.0) as u8) as char)
                .collect();
            (&shared.temp_dir, "temp", format!("ComfyUI_temp_{letters}"))
        } else {
            (&shared.output_dir, "output", prefix.to_string())
        };
        let prefix = compute_vars(&prefix, img.width, img.height);
        let Some(norm) = normpath(&prefix) else {
            return Err(exception(
                "Exception",
                format!(
                    "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: {}\n         output_dir: {}",
                    prefix,
                    base.display()
                ),
            ));
        };
        let (subfolder, filename) = match norm.rsplit_once('/') {
            Some((dir, name)) => (dir.to_string(), name.to_string()),
            None => (String::new(), norm.clone()),
        };
        let folder = if subfolder.is_empty() {
            base.clone()
        } else {
            base.join(&subfolder)
        };
        let mut text = vec![("prompt".to_string(), pyjson::dumps(&self.item.prompt))];
        if let Some(Value::Object(extra)) = self.item.extra_data.get("extra_pnginfo") {
            for (k, v) in extra {
                text.push((k.clone(), pyjson::dumps(v)));
            }
        }
        let traversal = shared
            .faults()
            .any(|f| matches!(f, Fault::TraversalFilenames));
        let mut counters = shared.counters.lock().unwrap_or_else(|e| e.into_inner());
        let counters = &mut *counters;
        // A folder is made (and read) the first time it is used after a start.
        let names = counters.folders.entry(folder.clone()).or_insert_with(|| {
            let _ = std::fs::create_dir_all(&folder);
            folder_names(&folder)
        });
        let counter = counters
            .highest
            .entry((folder.clone(), filename.clone()))
            .or_insert_with(|| highest_counter(names, &filename));
        let mut images = Vec::new();
        for i in 0..img.batch {
            *counter += 1;
            let name = format!(
                "{}_{:05}_.png",
                filename.replace("%batch_num%", &i.to_string()),
                *counter
            );
            names.insert(name.clone());
            let bytes = image::encode_png(img, i, &text);
            std::fs::write(folder.join(&name), bytes)
                .map_err(|e| exception("OSError", e.to_string()))?;
            if traversal {
                images.push(json!({"filename": format!("../../{name}"), "subfolder": "../..", "type": kind}));
            } else {
                images.push(json!({"filename": name, "subfolder": subfolder, "type": kind}));
            }
        }
        Ok(json!({"images": images}))
    }
}

/// Whether ComfyUI 0.8.0 checks the interrupt flag inside nodes of this class, not only
/// before them: every layer of a model (`comfy.ops`, `run_every_op`) raises
/// `InterruptProcessingException` once the flag is set, so a sampler, a CLIP encode or a VAE
/// decode stops within moments (recorded: `10-interrupt-in-node.jsonl`, VAEDecode). Plain
/// tensor nodes (EmptyImage, ImageBlur, ImageScale, SaveImage, ...) only see it at the next
/// node boundary (`before_node_execution`).
fn runs_model_ops(class: &str) -> bool {
    matches!(class, "KSampler" | "CLIPTextEncode" | "VAEDecode")
}

/// `work`, unless the interrupt flag is or becomes set first (then `Interrupted`). A
/// targeted interrupt of another prompt wakes the wait but leaves the flag clear.
async fn unless_interrupted(
    shared: &Shared,
    work: impl std::future::Future<Output = ()>,
) -> Result<(), NodeFail> {
    let mut work = std::pin::pin!(work);
    loop {
        let wake = shared.interrupt_wake.notified();
        let mut wake = std::pin::pin!(wake);
        // Registered before the flag is read, so a `notify_waiters` in between is not lost.
        wake.as_mut().enable();
        if shared.interrupt.load(Ordering::SeqCst) {
            return Err(NodeFail::Interrupted);
        }
        tokio::select! {
            () = &mut work => return Ok(()),
            () = wake => {}
        }
    }
}

/// Sleep until `deadline`, late by microseconds rather than tokio's up to 1-2 ms: its timer
/// fires on whole milliseconds, which at a 20 ms render is 5-10 % of the simulated GPU time
/// that the client gets blamed for. The coarse timer takes all but the last 2 ms; the rest
/// is the OS's own sleep and (for a render's last step) a spin of at most 150 us, blocking
/// the thread: the worker has a thread and runtime of its own (`WorkerThread` in
/// `sim/lifecycle.rs`), so that holds up nothing else.
async fn sleep_until_precise(deadline: tokio::time::Instant, spin: bool) {
    const COARSE_SLACK: Duration = Duration::from_millis(2);
    if let Some(early) = deadline.checked_sub(COARSE_SLACK)
        && early > tokio::time::Instant::now()
    {
        tokio::time::sleep_until(early).await;
    }
    // The OS sleep wakes up to ~50 us late (timer slack) plus the scheduler's delay: with
    // `spin`, sleep to just short of the deadline and spin the rest.
    let spin_for = Duration::from_micros(if spin { 150 } else { 0 });
    let deadline = deadline.into_std();
    if let Some(rest) = deadline
        .checked_sub(spin_for)
        .map(|d| d.saturating_duration_since(Instant::now()))
        && !rest.is_zero()
    {
        std::thread::sleep(rest);
    }
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

/// `folder_paths.compute_vars`: size and date placeholders (UTC here; ComfyUI uses local time).
fn compute_vars(prefix: &str, width: u32, height: u32) -> String {
    // `YYYY-MM-DDTHH:MM:SSZ`; each field is a fixed slice of it.
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    prefix
        .replace("%width%", &width.to_string())
        .replace("%height%", &height.to_string())
        .replace("%year%", &now[0..4])
        .replace("%month%", &now[5..7])
        .replace("%day%", &now[8..10])
        .replace("%hour%", &now[11..13])
        .replace("%minute%", &now[14..16])
        .replace("%second%", &now[17..19])
}

/// Lexical `os.path.normpath`; None when the path leaves its base (absolute or leading `..`).
pub fn normpath(p: &str) -> Option<String> {
    if p.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

/// The file names in a folder (empty if it cannot be read).
fn folder_names(folder: &std::path::Path) -> std::collections::BTreeSet<String> {
    let Ok(rd) = std::fs::read_dir(folder) else {
        return Default::default();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// `get_save_image_path`'s counter: the highest N among `<filename>_N...` files.
fn highest_counter(names: &std::collections::BTreeSet<String>, filename: &str) -> u64 {
    let want = format!("{filename}_");
    names
        .range(want.clone()..)
        .take_while(|n| n.starts_with(&want))
        .map(|n| {
            n[want.len()..]
                .split('_')
                .next()
                .and_then(|d| d.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

/// ComfyUI's input signature per node: class, literal inputs and the ancestors' signatures.
fn signatures(prompt: &Map<String, Value>, input_dir: &std::path::Path) -> HashMap<String, u64> {
    use super::image::{FNV_OFFSET, fnv1a as fnv};
    fn sig(
        id: &str,
        prompt: &Map<String, Value>,
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
                    let child = sig(from, prompt, input_dir, memo, visiting);
                    h = fnv(h, &child.to_le_bytes());
                    h = fnv(h, &slot.to_le_bytes());
                }
                _ => h = fnv(h, pyjson::dumps(v).as_bytes()),
            }
        }
        if class == "LoadImage"
            && let Some(name) = inputs.get("image").and_then(|v| v.as_str())
        {
            // IS_CHANGED: the file's content hash.
            let bytes =
                std::fs::read(input_dir.join(name.strip_suffix(" [input]").unwrap_or(name)))
                    .unwrap_or_default();
            h = fnv(h, &bytes);
        }
        visiting.remove(id);
        memo.insert(id.to_string(), h);
        h
    }
    let mut memo = HashMap::new();
    let mut visiting = HashSet::new();
    for id in prompt.keys() {
        sig(id, prompt, input_dir, &mut memo, &mut visiting);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_placeholders_and_paths() {
        let p = compute_vars("%year%-%month%-%day%/img_%width%x%height%", 64, 48);
        let (date, rest) = p.split_once('/').unwrap();
        assert_eq!(rest, "img_64x48");
        assert_eq!(date.len(), 10, "{date}");
        assert!(date.starts_with("20"));
        assert_eq!(normpath("a/./b/../c"), Some("a/c".into()));
        assert_eq!(normpath("../x"), None);
        assert_eq!(normpath("/abs"), None);
    }
}
