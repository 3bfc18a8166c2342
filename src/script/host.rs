//! The host API that handlers call: `emit`, `log`, `fail`, `now`, `uuid`, and the
//! `event` value. Calls record effects into the state of the run in progress on this
//! thread (`RunState`); nothing is published from here. The runtime commits what a run
//! recorded only after the run succeeds.
//!
//! A run is synchronous on one thread from start to end, so a thread-local holds its state;
//! `RunGuard` installs it and always takes it back, even if the run panics.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rhai::plugin::*;
use rhai::{Dynamic, EvalAltResult, ImmutableString, Map, Position};

use super::convert::{to_dynamic, to_json};
use crate::duration::parse_duration;
use crate::event::Event;
use crate::pattern::validate_topic;
use crate::store::{ReadAhead, StoreOp, StoreRead, StoreWant, StoreWrite};

/// An event a run asked to emit.
#[derive(Clone, Debug, PartialEq)]
pub struct Emitted {
    pub topic: String,
    pub data: serde_json::Value,
    /// `emit(topic, data, #{ delay: "5s" })`.
    pub delay: Option<Duration>,
    /// `emit(topic, data, #{ key: "…" })`: a partition/ordering key, kept as an extension.
    pub key: Option<String>,
}

/// A work item a run asked to enqueue.
#[derive(Clone, Debug, PartialEq)]
pub struct Enqueued {
    pub queue: String,
    pub data: serde_json::Value,
    /// `enqueue(queue, data, "30m")`; `None` takes the queue's default delay.
    pub delay: Option<Duration>,
}

/// Everything a successful run asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScriptOutput {
    pub emits: Vec<Emitted>,
    pub enqueues: Vec<Enqueued>,
    pub store_writes: Vec<StoreWrite>,
    /// `reply(data)`: the answer to a query.
    pub reply: Option<serde_json::Value>,
}

/// The state of the run in progress on this thread.
pub(crate) struct RunState {
    pub deadline: Instant,
    /// When the run must leave the thread it runs on (`Limits::inline_time`), if it runs
    /// inline; past it the run stops and is run again elsewhere.
    pub inline_until: Option<Instant>,
    pub max_emits: usize,
    pub output: ScriptOutput,
    pub timed_out: bool,
    pub stores: StoreEnv,
    /// This run's own writes, so that it reads what it wrote: (store, key) -> value.
    pub overlay: HashMap<(String, String), Option<serde_json::Value>>,
    /// When recording: reads the run could not answer from `stores.ahead` (the run is
    /// then discarded). When `None`, such reads go to `stores.reader`.
    pub wanted: Option<Vec<StoreWant>>,
    /// `log` lines held until the run is known to stand (when reading ahead: a discarded
    /// run logs nothing, so that its re-run does not log twice).
    pub logs: Option<Vec<String>>,
}

/// The state stores a run may use.
#[derive(Clone, Default)]
pub struct StoreEnv {
    /// Where reads go; `None` when the broker keeps no stores.
    pub reader: Option<Arc<dyn StoreRead>>,
    /// The stores the flow declares (`store("x")` for any other name fails the run).
    pub declared: Arc<BTreeSet<String>>,
    /// When set, reads come from here and never from `reader`: what is not here is
    /// recorded as wanted and reads as missing (see `crate::store`).
    pub ahead: Option<Arc<ReadAhead>>,
}

/// Entries `scan` returns at most.
pub const SCAN_LIMIT: usize = 1000;

thread_local! {
    static CURRENT: RefCell<Option<RunState>> = const { RefCell::new(None) };
}

/// Installs a run's state for the duration of the run.
pub(crate) struct RunGuard;

impl RunGuard {
    pub fn install(state: RunState) -> RunGuard {
        CURRENT.with(|c| *c.borrow_mut() = Some(state));
        RunGuard
    }

    /// Ends the run, returning what it recorded.
    pub fn finish(self) -> Option<RunState> {
        CURRENT.with(|c| c.borrow_mut().take())
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().take());
    }
}

fn with_state<T>(f: impl FnOnce(&mut RunState) -> T) -> Option<T> {
    CURRENT.with(|c| c.borrow_mut().as_mut().map(f))
}

/// Why the engine's progress hook stops a run (the token of Rhai's `ErrorTerminated`).
pub(crate) const STOP_WALL_TIME: &str = "wall time";
/// The run held its thread past `Limits::inline_time` and is to be run again elsewhere.
pub(crate) const STOP_INLINE_TIME: &str = "inline time";
/// The run holds more than `Limits::max_memory`.
pub(crate) const STOP_MEMORY: &str = "memory";

/// Called by the engine's progress hook every few hundred operations: why the run must
/// stop now, if it must.
pub(crate) fn out_of_time() -> Option<&'static str> {
    with_state(|s| {
        let now = Instant::now();
        if now >= s.deadline {
            s.timed_out = true;
            return Some(STOP_WALL_TIME);
        }
        match s.inline_until {
            Some(until) if now >= until => Some(STOP_INLINE_TIME),
            _ => None,
        }
    })
    .flatten()
}

/// A script error carrying `message`, as Rhai shows errors a script raises.
pub(super) fn runtime_error(message: impl Into<String>) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(message.into()),
        Position::NONE,
    ))
}

/// The text of a conversion error, without Rhai's "Runtime error:" prefix.
fn reason(err: &EvalAltResult) -> String {
    match err {
        EvalAltResult::ErrorRuntime(value, _) => value.to_string(),
        other => other.to_string(),
    }
}

fn record_emit(
    topic: &str,
    data: &Dynamic,
    options: Option<&Map>,
) -> Result<(), Box<EvalAltResult>> {
    if let Err(e) = validate_topic(topic) {
        return Err(runtime_error(format!("emit: invalid topic {topic:?}: {e}")));
    }
    let data = to_json(data)
        .map_err(|e| runtime_error(format!("emit: data is not JSON: {}", reason(&e))))?;
    let mut delay = None;
    let mut key = None;
    if let Some(options) = options {
        for (name, value) in options {
            match name.as_str() {
                "delay" => delay = Some(delay_option(value)?),
                "key" => key = Some(value.to_string()),
                other => {
                    return Err(runtime_error(format!(
                        "emit: unknown option `{other}` (expected `delay` or `key`)"
                    )))
                }
            }
        }
    }
    let emitted = Emitted {
        topic: topic.to_owned(),
        data,
        delay,
        key,
    };
    with_state(|s| {
        if s.output.emits.len() >= s.max_emits {
            return Err(runtime_error(format!(
                "emit: more than {} events in one run",
                s.max_emits
            )));
        }
        s.output.emits.push(emitted);
        Ok(())
    })
    .unwrap_or_else(|| Err(runtime_error("emit is not available here")))
}

fn record_enqueue(
    queue: &str,
    data: &Dynamic,
    delay: Option<&Dynamic>,
) -> Result<(), Box<EvalAltResult>> {
    let data = to_json(data)
        .map_err(|e| runtime_error(format!("enqueue: data is not JSON: {}", reason(&e))))?;
    let delay = delay.map(delay_option).transpose()?;
    let item = Enqueued {
        queue: queue.to_owned(),
        data,
        delay,
    };
    with_state(|s| {
        if s.output.emits.len() + s.output.enqueues.len() >= s.max_emits {
            return Err(runtime_error(format!(
                "enqueue: more than {} effects in one run",
                s.max_emits
            )));
        }
        s.output.enqueues.push(item);
        Ok(())
    })
    .unwrap_or_else(|| Err(runtime_error("enqueue is not available here")))
}

/// The handle `store("name")` returns.
#[derive(Clone)]
pub struct StoreHandle {
    name: String,
}

fn open_store(name: &str) -> Result<StoreHandle, Box<EvalAltResult>> {
    with_state(|s| {
        if s.stores.declared.contains(name) {
            Ok(StoreHandle {
                name: name.to_owned(),
            })
        } else {
            let known: Vec<&str> = s.stores.declared.iter().map(String::as_str).collect();
            Err(runtime_error(format!(
                "store: no store named {name:?} (declared: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )))
        }
    })
    .unwrap_or_else(|| Err(runtime_error("store is not available here")))
}

/// The value under `key`: the run's own write if it made one, else the store's. A store
/// that cannot be read fails the run (it is retried) rather than reading as empty.
fn store_read(store: &str, key: &str) -> Result<Option<serde_json::Value>, Box<EvalAltResult>> {
    with_state(|s| {
        let at = (store.to_owned(), key.to_owned());
        if let Some(value) = s.overlay.get(&at) {
            return Ok(value.clone());
        }
        if let Some(value) = s.stores.ahead.as_ref().and_then(|a| a.values.get(&at)) {
            return Ok(value.clone());
        }
        if let Some(wanted) = &mut s.wanted {
            let (store, key) = at;
            wanted.push(StoreWant::Get { store, key });
            return Ok(None);
        }
        match s.stores.reader.as_ref() {
            Some(reader) => reader
                .get(store, key)
                .map_err(|e| runtime_error(e.to_string())),
            None => Ok(None),
        }
    })
    .unwrap_or(Ok(None))
}

fn store_write(
    store: &str,
    key: &str,
    op: StoreOp,
    after: Option<serde_json::Value>,
) -> Result<(), Box<EvalAltResult>> {
    with_state(|s| {
        if s.output.store_writes.len() >= s.max_emits {
            return Err(runtime_error(format!(
                "store: more than {} writes in one run",
                s.max_emits
            )));
        }
        s.overlay.insert((store.to_owned(), key.to_owned()), after);
        s.output.store_writes.push(StoreWrite {
            store: store.to_owned(),
            key: key.to_owned(),
            op,
        });
        Ok(())
    })
    .unwrap_or_else(|| Err(runtime_error("store is not available here")))
}

/// Registers `store(name)` and the handle's methods on an engine.
pub fn register_store_type(engine: &mut rhai::Engine) {
    engine
        .register_type_with_name::<StoreHandle>("Store")
        .register_fn("store", |name: &str| open_store(name))
        .register_fn(
            "get",
            |s: &mut StoreHandle, key: &str| -> Result<Dynamic, Box<EvalAltResult>> {
                Ok(store_read(&s.name, key)?.map_or(Dynamic::UNIT, |v| to_dynamic(&v)))
            },
        )
        .register_fn(
            "set",
            |s: &mut StoreHandle, key: &str, value: Dynamic| -> Result<(), Box<EvalAltResult>> {
                let value = to_json(&value).map_err(|e| {
                    runtime_error(format!("store.set: value is not JSON: {}", reason(&e)))
                })?;
                store_write(&s.name, key, StoreOp::Set(value.clone()), Some(value))
            },
        )
        .register_fn(
            "remove",
            |s: &mut StoreHandle, key: &str| -> Result<(), Box<EvalAltResult>> {
                store_write(&s.name, key, StoreOp::Remove, None)
            },
        )
        .register_fn("incr", |s: &mut StoreHandle, key: &str, by: i64| {
            store_incr(s, key, by)
        })
        .register_fn("incr", |s: &mut StoreHandle, key: &str| {
            store_incr(s, key, 1)
        })
        .register_fn(
            "scan",
            |s: &mut StoreHandle, prefix: &str| -> Result<rhai::Array, Box<EvalAltResult>> {
                store_scan(&s.name, prefix)
            },
        );
}

fn store_incr(s: &StoreHandle, key: &str, by: i64) -> Result<i64, Box<EvalAltResult>> {
    let now = match store_read(&s.name, key)? {
        None => 0,
        Some(v) => v.as_i64().ok_or_else(|| {
            runtime_error(format!("store.incr: {key:?} holds {v}, not an integer"))
        })?,
    };
    let after = now.saturating_add(by);
    store_write(&s.name, key, StoreOp::Incr(by), Some(after.into()))?;
    Ok(after)
}

/// Entries under a prefix as `#{ key, value }` maps, the run's own writes included.
fn store_scan(store: &str, prefix: &str) -> Result<rhai::Array, Box<EvalAltResult>> {
    let mut entries: BTreeMap<String, serde_json::Value> = with_state(|s| {
        let at = (store.to_owned(), prefix.to_owned());
        if let Some(found) = s.stores.ahead.as_ref().and_then(|a| a.scans.get(&at)) {
            return Ok(found.clone());
        }
        if let Some(wanted) = &mut s.wanted {
            let (store, prefix) = at;
            wanted.push(StoreWant::Scan { store, prefix });
            return Ok(Vec::new());
        }
        s.stores
            .reader
            .as_ref()
            .map(|r| r.scan(store, prefix, SCAN_LIMIT))
            .unwrap_or_else(|| Ok(Vec::new()))
    })
    .unwrap_or_else(|| Ok(Vec::new()))
    .map_err(|e| runtime_error(e.to_string()))?
    .into_iter()
    .collect();
    with_state(|s| {
        for ((st, key), value) in &s.overlay {
            if st == store && key.starts_with(prefix) {
                match value {
                    Some(v) => {
                        entries.insert(key.clone(), v.clone());
                    }
                    None => {
                        entries.remove(key);
                    }
                }
            }
        }
    });
    Ok(entries
        .into_iter()
        .take(SCAN_LIMIT)
        .map(|(key, value)| {
            let mut map = Map::new();
            map.insert("key".into(), key.into());
            map.insert("value".into(), to_dynamic(&value));
            Dynamic::from_map(map)
        })
        .collect())
}

/// A delay given as `"5s"` or as integer milliseconds.
pub fn delay_option(value: &Dynamic) -> Result<Duration, Box<EvalAltResult>> {
    if let Ok(ms) = value.as_int() {
        let delay = u64::try_from(ms)
            .map(Duration::from_millis)
            .map_err(|_| runtime_error(format!("delay: negative delay {ms}")))?;
        if delay > crate::duration::MAX_DURATION {
            return Err(runtime_error(format!(
                "delay: {ms} ms is too long (at most 100 years)"
            )));
        }
        return Ok(delay);
    }
    if let Some(text) = value.read_lock::<ImmutableString>() {
        return parse_duration(&text)
            .map_err(|e| runtime_error(format!("delay {:?}: {e}", text.as_str())));
    }
    Err(runtime_error(format!(
        "delay: expected a duration like \"5s\" or milliseconds, found {}",
        value.type_name()
    )))
}

/// The `event` value a handler sees.
#[derive(Clone)]
pub struct ScriptEvent {
    pub event: Arc<Event>,
    /// 1 for the first run, 2 for the first retry, …
    pub attempt: i64,
}

/// Registers `event`'s type and properties on an engine.
pub fn register_event_type(engine: &mut rhai::Engine) {
    engine
        .register_type_with_name::<ScriptEvent>("Event")
        .register_get("topic", |e: &mut ScriptEvent| e.event.topic.clone())
        .register_get("id", |e: &mut ScriptEvent| e.event.id.clone())
        .register_get("source", |e: &mut ScriptEvent| e.event.source.clone())
        .register_get("data", |e: &mut ScriptEvent| to_dynamic(&e.event.data))
        .register_get("time", |e: &mut ScriptEvent| {
            humantime::format_rfc3339_millis(e.event.time).to_string()
        })
        .register_get("correlation_id", |e: &mut ScriptEvent| {
            e.event.correlation_id.clone()
        })
        .register_get("causation_id", |e: &mut ScriptEvent| -> Dynamic {
            match &e.event.causation_id {
                Some(id) => id.clone().into(),
                None => Dynamic::UNIT,
            }
        })
        .register_get("attempt", |e: &mut ScriptEvent| e.attempt)
        .register_fn("to_string", |e: &mut ScriptEvent| e.event.to_json())
        .register_fn("to_debug", |e: &mut ScriptEvent| e.event.to_json());
}

/// The functions handlers call. Registered as a global module.
#[export_module]
pub mod api {
    /// `emit(topic, data)`: publish an event when this run succeeds.
    #[rhai_fn(name = "emit", return_raw)]
    pub fn emit(topic: &str, data: Dynamic) -> Result<(), Box<EvalAltResult>> {
        record_emit(topic, &data, None)
    }

    /// `emit(topic, data, #{ delay: "5s", key: "…" })`.
    #[rhai_fn(name = "emit", return_raw)]
    pub fn emit_with(topic: &str, data: Dynamic, options: Map) -> Result<(), Box<EvalAltResult>> {
        record_emit(topic, &data, Some(&options))
    }

    /// `enqueue(queue, data)`: add a work item (due after the queue's default delay) when
    /// this run succeeds.
    #[rhai_fn(name = "enqueue", return_raw)]
    pub fn enqueue(queue: &str, data: Dynamic) -> Result<(), Box<EvalAltResult>> {
        record_enqueue(queue, &data, None)
    }

    /// `enqueue(queue, data, delay)`: with a delay (`"30m"` or milliseconds).
    #[rhai_fn(name = "enqueue", return_raw)]
    pub fn enqueue_after(
        queue: &str,
        data: Dynamic,
        delay: Dynamic,
    ) -> Result<(), Box<EvalAltResult>> {
        record_enqueue(queue, &data, Some(&delay))
    }

    /// `reply(data)`: answer the query this event carries (`POST /query/…`).
    #[rhai_fn(name = "reply", return_raw)]
    pub fn reply(data: Dynamic) -> Result<(), Box<EvalAltResult>> {
        let data = to_json(&data)
            .map_err(|e| runtime_error(format!("reply: data is not JSON: {}", reason(&e))))?;
        with_state(|s| {
            if s.output.reply.is_some() {
                return Err(runtime_error("reply: called twice in one run"));
            }
            s.output.reply = Some(data);
            Ok(())
        })
        .unwrap_or_else(|| Err(runtime_error("reply is not available here")))
    }

    /// `fail(message)`: this run fails; the event is retried, then dead-lettered.
    #[rhai_fn(name = "fail", return_raw)]
    pub fn fail(message: Dynamic) -> Result<(), Box<EvalAltResult>> {
        Err(Box::new(EvalAltResult::ErrorRuntime(
            message,
            Position::NONE,
        )))
    }

    /// `log(…)`: a line in the runtime's log, tagged with the component.
    #[rhai_fn(name = "log")]
    pub fn log(message: Dynamic) {
        let text = if message.is_string() {
            message
                .into_immutable_string()
                .unwrap_or_default()
                .to_string()
        } else {
            message.to_string()
        };
        let held = with_state(|s| match &mut s.logs {
            Some(logs) => {
                logs.push(text.clone());
                true
            }
            None => false,
        });
        if held != Some(true) {
            tracing::info!(target: "edaflow::script", "{text}");
        }
    }

    /// `now()`: the current time, RFC 3339 with milliseconds.
    pub fn now() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }

    /// `now_ms()`: the current time in milliseconds since the Unix epoch.
    pub fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    /// `uuid()`: a random UUID (v4).
    pub fn uuid() -> String {
        uuid::Uuid::new_v4().to_string()
    }
}
