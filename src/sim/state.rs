//! State shared by the HTTP handlers, the socket tasks and the worker: the queue, history,
//! the socket registry (ComfyUI's `sockets` dict, keyed by client id), statistics and fault
//! bookkeeping. Every lock here is a short synchronous critical section, never held across
//! an `.await`. Lock order where two are taken: `core` before `sockets`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, Utf8Bytes};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc, watch};

use super::config::{InterruptRecord, SimConfig, SimStats};
use super::fault::Fault;
use super::pyjson;

/// Frames and their socket id (`None`: every socket), in the order sent.
type Frames = Vec<(Message, Option<String>)>;

thread_local! {
    /// Frames held back on this thread (see [`Shared::hold_frames`]).
    static HELD: RefCell<Option<Frames>> = const { RefCell::new(None) };
}

/// One frame for one socket, stamped with the time it was produced (for `--latency-ms`).
pub struct Outgoing {
    pub msg: Message,
    pub at: Instant,
}

pub struct SocketEntry {
    pub tx: mpsc::UnboundedSender<Outgoing>,
    pub preview_metadata: bool,
}

/// A queued prompt: ComfyUI's `(number, prompt_id, prompt, extra_data, outputs_to_execute)`.
#[derive(Clone)]
pub struct QueueItem {
    pub number: Value,
    pub sort_key: f64,
    pub prompt_id: String,
    pub prompt: Map<String, Value>,
    pub extra_data: Map<String, Value>,
    pub outputs: Vec<String>,
}

impl QueueItem {
    pub fn to_json(&self) -> Value {
        json!([
            self.number,
            self.prompt_id,
            self.prompt,
            self.extra_data,
            self.outputs
        ])
    }

    pub fn client_id(&self) -> Option<String> {
        match self.extra_data.get("client_id") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(pyjson::str_value(other)),
        }
    }
}

pub const MAX_HISTORY: usize = 10000;

/// `PromptQueue.history`: a dict in insertion order, the oldest entry evicted when full.
/// Kept as a sequence-keyed tree plus an index so eviction and deletes never shift memory.
#[derive(Default)]
pub struct History {
    by_seq: BTreeMap<u64, (String, Value)>,
    seq_of: HashMap<String, u64>,
    next: u64,
}

impl History {
    /// `task_done`: evict the oldest entry if over the limit, then `history[id] = entry`
    /// (a reused id keeps its place, as a Python dict assignment does).
    pub fn insert(&mut self, id: &str, entry: Value) {
        if self.by_seq.len() > MAX_HISTORY
            && let Some((_, (old, _))) = self.by_seq.pop_first()
        {
            self.seq_of.remove(&old);
        }
        if let Some(seq) = self.seq_of.get(id) {
            if let Some(slot) = self.by_seq.get_mut(seq) {
                slot.1 = entry;
            }
        } else {
            self.next += 1;
            self.seq_of.insert(id.to_string(), self.next);
            self.by_seq.insert(self.next, (id.to_string(), entry));
        }
    }

    pub fn get(&self, id: &str) -> Option<&Value> {
        self.seq_of
            .get(id)
            .and_then(|s| self.by_seq.get(s))
            .map(|(_, v)| v)
    }

    pub fn remove(&mut self, id: &str) {
        if let Some(seq) = self.seq_of.remove(id) {
            self.by_seq.remove(&seq);
        }
    }

    pub fn clear(&mut self) {
        self.by_seq.clear();
        self.seq_of.clear();
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.by_seq.values().map(|(k, v)| (k, v))
    }
}

#[derive(Default)]
pub struct Core {
    pub number: i64,
    pub pending: VecDeque<QueueItem>,
    pub running: Option<QueueItem>,
    pub history: History,
    /// `POST /free {"free_memory": true}` asks the worker to drop its cache.
    pub free_memory: bool,
    /// The running prompt's client id and node, for the reconnect `executing` hint.
    pub last_client: Option<String>,
    pub last_node: Option<String>,
}

impl Core {
    pub fn queue_remaining(&self) -> usize {
        self.pending.len() + usize::from(self.running.is_some())
    }

    pub fn insert_pending(&mut self, item: QueueItem) {
        let pos = self.pending.partition_point(|x| {
            (x.sort_key, x.prompt_id.as_str()) <= (item.sort_key, item.prompt_id.as_str())
        });
        self.pending.insert(pos, item);
    }
}

/// Commands to the listener supervisor.
pub enum Ctrl {
    Crash(Duration),
    Shutdown,
}

#[derive(Default)]
pub struct StatsInner {
    pub stats: SimStats,
    pub idle_since: Option<Instant>,
    pub idle_total: Duration,
}

pub struct Shared {
    pub config: SimConfig,
    pub output_dir: PathBuf,
    pub input_dir: PathBuf,
    pub temp_dir: PathBuf,
    pub core: Mutex<Core>,
    pub sockets: Mutex<HashMap<String, SocketEntry>>,
    pub stats: Mutex<StatsInner>,
    /// Wakes the worker when something is queued.
    pub wake: Notify,
    /// ComfyUI's global interrupt flag and a wake-up for nodes waiting on it.
    pub interrupt: AtomicBool,
    pub interrupt_wake: Notify,
    /// Bumped on crash and shutdown; every connection dies when it changes.
    pub epoch: watch::Sender<u64>,
    pub ctrl: mpsc::UnboundedSender<Ctrl>,
    pub prompt_posts: AtomicU64,
    pub prompts_accepted_total: AtomicU64,
    pub prompts_started_total: AtomicU64,
    pub drop_once_used: AtomicBool,
    pub rng: Mutex<u64>,
    /// `SaveImage` counters: per folder, the file names in it (read from disk once, then kept
    /// current), and the highest counter per (folder, filename prefix).
    pub counters: Mutex<SaveCounters>,
}

/// ComfyUI rescans the output folder on every save (`get_save_image_path`), which makes a
/// long run quadratic; the simulator reads each folder once and keeps its names in order,
/// so finding the highest `<filename>_N` is a range query.
#[derive(Debug, Default)]
pub struct SaveCounters {
    pub folders: HashMap<PathBuf, std::collections::BTreeSet<String>>,
    pub highest: HashMap<(PathBuf, String), u64>,
}

impl SaveCounters {
    pub fn clear(&mut self) {
        self.folders.clear();
        self.highest.clear();
    }
}

impl Shared {
    pub fn faults(&self) -> impl Iterator<Item = &Fault> {
        self.config.faults.iter()
    }

    /// A uniform number in [0, 1) from the seeded generator.
    pub fn random(&self) -> f64 {
        let mut state = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut rng = super::image::Rng(*state);
        let z = rng.next();
        *state = rng.0;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn sockets(&self) -> std::sync::MutexGuard<'_, HashMap<String, SocketEntry>> {
        self.sockets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn stats_mut(&self) -> std::sync::MutexGuard<'_, StatsInner> {
        self.stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn snapshot_stats(&self) -> SimStats {
        let inner = self.stats_mut();
        let mut s = inner.stats.clone();
        s.worker_idle_ms_while_outstanding = inner.idle_total.as_millis() as u64;
        s
    }

    pub fn record_interrupt(&self, prompt_id: Option<String>, hit: Option<String>) {
        self.stats_mut()
            .stats
            .interrupts
            .push(InterruptRecord { prompt_id, hit });
    }

    pub fn is_connected(&self, sid: &str) -> bool {
        self.sockets().contains_key(sid)
    }

    /// `{"type": ty, "data": data}` as the server's `json.dumps` writes it (serialised in
    /// place: a progress frame is sent per sampler step, nothing is copied for it).
    pub fn frame<T: serde::Serialize + ?Sized>(ty: &str, data: &T) -> Message {
        #[derive(serde::Serialize)]
        struct Frame<'a, T: ?Sized> {
            r#type: &'a str,
            data: &'a T,
        }
        Message::Text(Utf8Bytes::from(pyjson::dumps(&Frame { r#type: ty, data })))
    }

    /// `send_json(event, data, sid)`: to one socket, or to all when `sid` is None (held
    /// back on a thread that [`Shared::hold_frames`]).
    pub fn send(&self, msg: Message, sid: Option<&str>) {
        let msg = HELD.with(|held| match held.borrow_mut().as_mut() {
            Some(held) => {
                held.push((msg, sid.map(str::to_owned)));
                None
            }
            None => Some(msg),
        });
        if let Some(msg) = msg {
            self.send_now([(msg, sid)]);
        }
    }

    fn send_now<S: AsRef<str>>(&self, frames: impl IntoIterator<Item = (Message, Option<S>)>) {
        let at = Instant::now();
        let sockets = self.sockets();
        for (msg, sid) in frames {
            match sid {
                Some(sid) => {
                    if let Some(entry) = sockets.get(sid.as_ref()) {
                        let _ = entry.tx.send(Outgoing { msg, at });
                    }
                }
                None => {
                    for entry in sockets.values() {
                        let _ = entry.tx.send(Outgoing {
                            msg: msg.clone(),
                            at,
                        });
                    }
                }
            }
        }
    }

    /// From now on, frames sent from this thread wait for [`Shared::release_frames`]. The
    /// prompt worker (on a thread of its own) holds a node's burst (its end, the next one's
    /// start, progress) and sends it at once: one wake-up of the socket tasks instead of
    /// one per frame. It releases before every wait, so no frame is held while time passes.
    pub fn hold_frames() {
        HELD.with(|held| *held.borrow_mut() = Some(Vec::new()));
    }

    /// Send what this thread holds, in order.
    pub fn release_frames(&self) {
        let frames = HELD.with(|held| held.borrow_mut().as_mut().map(std::mem::take));
        if let Some(frames) = frames
            && !frames.is_empty()
        {
            self.send_now(frames);
        }
    }

    pub fn send_json<T: serde::Serialize + ?Sized>(&self, ty: &str, data: &T, sid: Option<&str>) {
        self.send(Self::frame(ty, data), sid);
    }

    /// `queue_updated()`: a `status` broadcast with the current queue length.
    pub fn broadcast_status(&self, queue_remaining: usize) {
        self.send_json(
            "status",
            &json!({"status": {"exec_info": {"queue_remaining": queue_remaining}}}),
            None,
        );
    }

    pub fn preview_metadata(&self, sid: &str) -> bool {
        self.sockets().get(sid).is_some_and(|e| e.preview_metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_dict_semantics() {
        let mut h = History::default();
        h.insert("a", json!(1));
        h.insert("b", json!(2));
        h.insert("a", json!(3));
        let order: Vec<(&String, &Value)> = h.iter().collect();
        assert_eq!(
            order,
            [(&"a".to_string(), &json!(3)), (&"b".to_string(), &json!(2))]
        );
        h.remove("a");
        assert_eq!(h.get("a"), None);
        for i in 0..MAX_HISTORY + 5 {
            h.insert(&i.to_string(), json!(i));
        }
        // Evicts one before each insert once over the limit: at most MAX + 1 entries.
        assert_eq!(h.len(), MAX_HISTORY + 1);
        assert_eq!(h.get("b"), None);
        assert_eq!(
            h.get(&(MAX_HISTORY + 4).to_string()),
            Some(&json!(MAX_HISTORY + 4))
        );
    }
}
