//! The running system: components built from one validated flow set (a *generation*),
//! and the single path that replaces one generation with the next.
//!
//! `prepare` loads and compiles (flows + scripts) without starting anything; `Runtime`
//! owns the running subscribers and producers, each with its own cancellation token and
//! task tracker under one root. `Runtime::apply` diffs the running generation against a
//! prepared one by component name: identical components are left alone, a subscriber whose
//! script alone changed gets the new code in place, changed components are drained and
//! restarted, removed ones drained, added ones started. Starting is applying onto nothing.

pub mod chains;
pub mod dead_letter;
pub mod history;
pub mod metrics;
pub mod producers;
pub mod relay;
pub mod reload;
pub mod step_registry;
pub mod subscriber;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::broker::{Broker, BrokerError, GroupSpec, QueueSpec, Removed, WireSpec};
use crate::flow::diagnostic::{FlowReport, FlowWarning};
use crate::flow::model::{
    ChainConfig, FlowSet, ProducerConfig, ProducerKind, QueueConfig, RelayConfig, ScriptSource,
    StoreConfig, SubscriberConfig, SubscriberInput, TopicConfig, TopicMode,
};
use crate::flow::pattern::TopicPattern;
use crate::script::{compile_set_reusing, CompiledScripts, Limits, ScriptEngine};

pub use metrics::Metrics;
use subscriber::{HandlerCode, SubscriberTask};

/// A loaded, validated and compiled flow set, ready to run.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub flows: Arc<FlowSet>,
    pub scripts: CompiledScripts,
    pub warnings: Vec<FlowWarning>,
    /// Every file the set depends on: flow files, scripts and imported modules.
    pub files: Vec<PathBuf>,
    /// The text of every imported module, so that a change under an `import` is a change.
    pub module_texts: BTreeMap<PathBuf, Arc<str>>,
}

/// Loads flow files and folders, compiles their scripts and lints the two together.
///
/// # Errors
/// Every problem at once, as one report.
pub fn prepare(paths: &[PathBuf]) -> Result<Prepared, FlowReport> {
    prepare_after(paths, None)
}

/// As `prepare`, reusing the compiled scripts of `previous` whose source and imported
/// modules did not change (what a reload does).
///
/// # Errors
/// Every problem at once, as one report.
pub fn prepare_after(
    paths: &[PathBuf],
    previous: Option<&Prepared>,
) -> Result<Prepared, FlowReport> {
    let loaded = crate::flow::load(paths)?;
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let reuse = |key: &str, source: &ScriptSource| {
        let previous = previous?;
        let script = previous.scripts.by_component.get(key)?;
        let same_source = script.path == source.path && script.text == source.text;
        let same_modules = script.imports.iter().all(|module| {
            let now = std::fs::read_to_string(module).ok();
            now.as_deref() == previous.module_texts.get(module).map(|t| &**t)
        });
        (same_source && same_modules).then(|| script.clone())
    };
    let scripts = compile_set_reusing(&loaded.flows, reuse)
        .map_err(|errors| FlowReport::new(&names, errors))?;
    // The CQRS lint, on what the compiled handlers do.
    let facts: crate::flow::lint::Facts = loaded
        .flows
        .subscribers
        .iter()
        .filter(|(_, s)| s.script.is_some())
        .map(|(name, _)| {
            let key = format!("subscribers.{name}");
            let facts = scripts.by_component.get(&key).and_then(|s| s.facts.clone());
            (name.clone(), facts)
        })
        .collect();
    let mut warnings = loaded.warnings.clone();
    warnings.extend(
        crate::flow::lint::lint(&loaded, &facts)
            .map_err(|errors| FlowReport::new(&names, errors))?,
    );
    let mut files = loaded.files_read;
    let mut module_texts = BTreeMap::new();
    for module in scripts.imports() {
        if let Ok(text) = std::fs::read_to_string(&module) {
            module_texts.insert(module.clone(), Arc::from(text));
        }
        files.push(module);
    }
    files.sort();
    files.dedup();
    Ok(Prepared {
        flows: Arc::new(loaded.flows),
        scripts,
        warnings,
        files,
        module_texts,
    })
}

/// Settings of a runtime that hold for its whole life.
#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    /// `--role`: run only subscribers with one of these roles (all when empty).
    pub roles: Vec<String>,
    /// `--listen`: overrides the HTTP producer's address.
    pub listen: Option<String>,
    /// `--token` (or `EDAFLOW_TOKEN`): the bearer token of every HTTP producer, in place
    /// of the flow file's `token`.
    pub token: Option<crate::flow::model::ApiToken>,
    /// Start producers (false for `edaflow test`, which publishes itself).
    pub producers: bool,
    /// Let script-less subscribers print the article's output (false for `edaflow test`,
    /// whose report would be interleaved with it).
    pub quiet: bool,
    pub limits: Limits,
}

/// The outcome of the last reload, for `/healthz` and the log.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ReloadOutcome {
    pub generation: u64,
    pub ok: bool,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Subscribers whose script was swapped in place.
    pub swapped: Vec<String>,
    pub took_ms: f64,
    pub message: Option<String>,
    #[serde(with = "unix_ms")]
    pub at: SystemTime,
    /// What became of the work waiting for each component removed or renamed (only those
    /// that had some).
    pub backlogs: Vec<Backlog>,
}

/// The work a removed or renamed component still had when a reload took it away.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Backlog {
    /// `subscribers.NAME`, `relays.NAME`, `queues.NAME` or `chains.NAME`.
    pub component: String,
    /// The component that took the work over (`renamed_from`, or a subscriber's new group).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Events or queue items handed to `to`.
    pub moved: u64,
    /// Events or queue items dropped with the component.
    pub dropped: u64,
}

impl ReloadOutcome {
    /// Records what removing `component` did with its work, and logs it: a drop at warn
    /// level, since those events are gone.
    fn backlog(&mut self, component: String, to: Option<String>, removed: Removed) {
        if removed.is_empty() {
            return;
        }
        if removed.dropped > 0 {
            warn!(
                component,
                dropped = removed.dropped,
                moved = removed.moved,
                "{component} was removed with {} waiting events or items; they are dropped (to keep a backlog, give its successor `renamed_from`)",
                removed.dropped
            );
        }
        if removed.moved > 0 {
            info!(
                component,
                to = to.as_deref().unwrap_or(""),
                moved = removed.moved,
                "moved the backlog of {component} to its successor"
            );
        }
        self.backlogs.push(Backlog {
            component,
            to,
            moved: removed.moved,
            dropped: removed.dropped,
        });
    }
}

mod unix_ms {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }
}

/// Live status shared with the HTTP API.
#[derive(Debug)]
pub struct Status {
    pub generation: AtomicU64,
    pub last_reload: Mutex<Option<ReloadOutcome>>,
    pub started: Instant,
}

/// What every component of a runtime shares.
pub struct Shared<B: Broker> {
    pub broker: B,
    /// The queues of the running generation (defaults and existence for `enqueue` and HTTP).
    pub queues: watch::Sender<Arc<BTreeMap<String, QueueConfig>>>,
    /// The stores of the running generation (`expose` for HTTP).
    pub stores: watch::Sender<Arc<BTreeMap<String, StoreConfig>>>,
    /// Their names, for handlers' `store(name)`.
    pub declared_stores: watch::Sender<Arc<BTreeSet<String>>>,
    /// Per-topic settings of the running generation (query reply timeouts).
    pub topics: watch::Sender<Arc<BTreeMap<String, TopicConfig>>>,
    /// Recent journeys, for `edaflow trace`.
    pub history: history::History,
    /// When set, each successfully handled event is reported here with its subscriber
    /// (`edaflow test` uses it to check `handled_by`); lossy if the reader falls behind.
    pub handled:
        std::sync::OnceLock<tokio::sync::mpsc::Sender<(Arc<str>, Arc<crate::event::Event>)>>,
    /// Where `POST /admin/reload` sends its request (set once by whoever owns reloads).
    pub reload: std::sync::OnceLock<tokio::sync::mpsc::Sender<reload::ReloadRequest>>,
    pub engine: ScriptEngine,
    pub metrics: Arc<Metrics>,
    pub status: Arc<Status>,
    /// The chain trackers' step topics, fed by the broker with every event it accepts
    /// (on a broker that does not keep chain state; see `chains`).
    pub(crate) steps: Arc<step_registry::StepRegistry>,
    /// Whether the broker took `steps` as its observer.
    pub(crate) steps_reported: bool,
    /// The running generation's `[flow] max_hops`.
    pub max_hops: std::sync::atomic::AtomicU32,
}

struct RunningSubscriber {
    config: SubscriberConfig,
    code: watch::Sender<HandlerCode>,
    token: CancellationToken,
    tracker: TaskTracker,
}

struct RunningRelay {
    config: RelayConfig,
    token: CancellationToken,
    tracker: TaskTracker,
}

struct RunningChain {
    config: ChainConfig,
    token: CancellationToken,
    tracker: TaskTracker,
}

struct RunningProducer {
    config: ProducerConfig,
    token: CancellationToken,
    tracker: TaskTracker,
}

/// Errors that stop a runtime from starting or a reload from applying.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum RuntimeError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Broker(#[from] BrokerError),
    #[error("cannot listen on {addr}")]
    #[diagnostic(
        code(edaflow::http::bind),
        help("is another process using the port? `--listen 127.0.0.1:0` picks a free one")
    )]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read `{path}` for producer `{producer}`")]
    #[diagnostic(code(edaflow::producer::open))]
    Open {
        producer: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The running generation.
pub struct Runtime<B: Broker> {
    shared: Arc<Shared<B>>,
    options: RuntimeOptions,
    current: Option<Prepared>,
    subscribers: BTreeMap<String, RunningSubscriber>,
    producers: BTreeMap<String, RunningProducer>,
    relays: BTreeMap<String, RunningRelay>,
    chains: BTreeMap<String, RunningChain>,
    /// Set while an apply is under way: if it fails half-way, code from the failed set may
    /// be running, so the next apply (the rollback) re-sends every script.
    code_unsure: bool,
    /// Addresses the HTTP producers actually listen on (after port 0 is resolved).
    http_addrs: Arc<Mutex<BTreeMap<String, std::net::SocketAddr>>>,
    root: CancellationToken,
}

impl<B: Broker> Runtime<B> {
    /// A runtime with nothing running yet; `apply` starts a generation.
    pub fn new(broker: B, options: RuntimeOptions) -> Runtime<B> {
        let steps = Arc::new(step_registry::StepRegistry::default());
        let steps_reported = !broker.tracks_chains() && broker.observe_accepted(steps.clone());
        let shared = Arc::new(Shared {
            history: history::History::for_broker(&broker),
            broker,
            queues: watch::Sender::new(Arc::new(BTreeMap::new())),
            stores: watch::Sender::new(Arc::new(BTreeMap::new())),
            declared_stores: watch::Sender::new(Arc::new(BTreeSet::new())),
            topics: watch::Sender::new(Arc::new(BTreeMap::new())),
            reload: std::sync::OnceLock::new(),
            handled: std::sync::OnceLock::new(),
            engine: ScriptEngine::new(options.limits),
            metrics: Arc::new(Metrics::default()),
            status: Arc::new(Status {
                generation: AtomicU64::new(0),
                last_reload: Mutex::new(None),
                started: Instant::now(),
            }),
            steps,
            steps_reported,
            max_hops: crate::flow::model::DEFAULT_MAX_HOPS.into(),
        });
        Runtime {
            shared,
            options,
            current: None,
            subscribers: BTreeMap::new(),
            producers: BTreeMap::new(),
            relays: BTreeMap::new(),
            chains: BTreeMap::new(),
            code_unsure: false,
            http_addrs: Arc::new(Mutex::new(BTreeMap::new())),
            root: CancellationToken::new(),
        }
    }

    /// The broker the runtime runs on.
    pub fn broker(&self) -> &B {
        &self.shared.broker
    }

    /// Counters and histograms.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Generation and last reload.
    pub fn status(&self) -> &Arc<Status> {
        &self.shared.status
    }

    /// The generation running now (0 before the first `apply`).
    pub fn generation(&self) -> u64 {
        self.shared.status.generation.load(Ordering::SeqCst)
    }

    /// Records the outcome of a reload for `/healthz`.
    pub fn set_last_reload(&self, outcome: ReloadOutcome) {
        *self
            .shared
            .status
            .last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    }

    /// Reports every successfully handled event, with its subscriber, on the returned
    /// channel (at most `buffer` waiting; more are dropped). Only the first call counts.
    pub fn watch_handled(
        &self,
        buffer: usize,
    ) -> tokio::sync::mpsc::Receiver<(Arc<str>, Arc<crate::event::Event>)> {
        let (tx, rx) = tokio::sync::mpsc::channel(buffer.max(1));
        let _ = self.shared.handled.set(tx);
        rx
    }

    /// Lets `POST /admin/reload` reach the reload path.
    pub fn set_reload_channel(&self, requests: tokio::sync::mpsc::Sender<reload::ReloadRequest>) {
        let _ = self.shared.reload.set(requests);
    }

    /// The flow set running now.
    pub fn current(&self) -> Option<&Prepared> {
        self.current.as_ref()
    }

    /// The HTTP API over this runtime, as a router (for embedding, and for tests that drive
    /// it with `tower::ServiceExt::oneshot`). `deferred_topic` is where `/deferred-exec`
    /// publishes.
    pub fn api_router(
        &self,
        config: crate::flow::model::HttpProducer,
        deferred_topic: &str,
    ) -> axum::Router {
        crate::http::router(crate::http::ApiState::new(
            self.shared.clone(),
            config,
            deferred_topic.to_owned(),
            "edaflow://embedded/api".to_owned(),
        ))
    }

    /// Where each HTTP producer listens, by producer name.
    pub fn http_addrs(&self) -> BTreeMap<String, std::net::SocketAddr> {
        self.http_addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn wanted_role(&self, role: Option<&String>) -> bool {
        self.options.roles.is_empty() || role.is_some_and(|r| self.options.roles.contains(r))
    }

    fn producer_wanted(&self, role: Option<&String>) -> bool {
        self.options.producers
            && (role.is_none()
                || self.options.roles.is_empty()
                || role.is_some_and(|r| self.options.roles.contains(r)))
    }

    /// Replaces the running generation with `next`, touching only what differs, as the
    /// next generation number.
    ///
    /// # Errors
    /// A component that cannot start (a port in use, a missing input file). What was
    /// already applied stays applied: the caller restores the previous set (`restore`).
    pub async fn apply(&mut self, next: Prepared) -> Result<ReloadOutcome, RuntimeError> {
        let generation = self.generation() + 1;
        self.apply_as(next, generation).await
    }

    /// Re-applies an earlier flow set under its own generation number, after a failed
    /// `apply` (the rollback).
    ///
    /// # Errors
    /// As `apply`; a failed rollback leaves whatever could be started running.
    pub async fn restore(
        &mut self,
        previous: Prepared,
        generation: u64,
    ) -> Result<ReloadOutcome, RuntimeError> {
        self.apply_as(previous, generation).await
    }

    /// True when `next` is the running set exactly (flows, scripts and imported modules):
    /// applying it would change nothing.
    pub fn is_current(&self, next: &Prepared) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| c.flows == next.flows && c.module_texts == next.module_texts)
    }

    async fn apply_as(
        &mut self,
        next: Prepared,
        generation: u64,
    ) -> Result<ReloadOutcome, RuntimeError> {
        let started = Instant::now();
        let flows = next.flows.clone();
        let changed_modules = self.changed_modules(&next);
        let force_code = std::mem::replace(&mut self.code_unsure, true);
        let mut outcome = ReloadOutcome {
            generation,
            ok: true,
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            swapped: Vec::new(),
            took_ms: 0.0,
            message: None,
            at: SystemTime::now(),
            backlogs: Vec::new(),
        };
        let old_queues: BTreeMap<String, QueueConfig> = self
            .current
            .as_ref()
            .map(|c| c.flows.queues.clone())
            .unwrap_or_default();
        let queue_changed = |q: &str| old_queues.get(q) != flows.queues.get(q);

        // The article's wire format first: groups and queues declared below depend on it.
        let wire = wire_spec(&flows);
        if !self.shared.broker.declare_wire(&wire) && !wire.is_empty() {
            warn!(
                pubsub_topics = ?wire.pubsub,
                topic_mode_pubsub = wire.pubsub_by_default,
                list_queues = ?wire.lists.keys().collect::<Vec<_>>(),
                "`mode = \"pubsub\"` topics and `list` queues are Redis wire formats; this broker ignores them"
            );
        }

        // Queues exist before anything that feeds or reads them starts.
        for (name, queue) in &flows.queues {
            let spec = QueueSpec {
                name: name.clone(),
                capacity: queue.capacity,
                poll: queue.poll,
            };
            self.shared.broker.declare_queue(&spec).await?;
            if !old_queues.contains_key(name) {
                outcome.added.push(format!("queues.{name}"));
            } else if old_queues[name] != *queue {
                outcome.changed.push(format!("queues.{name}"));
            }
        }
        self.shared
            .queues
            .send_replace(Arc::new(flows.queues.clone()));
        self.shared
            .stores
            .send_replace(Arc::new(flows.stores.clone()));
        self.shared
            .declared_stores
            .send_replace(Arc::new(flows.stores.keys().cloned().collect()));
        self.shared
            .topics
            .send_replace(Arc::new(flows.topics.clone()));
        self.shared
            .max_hops
            .store(flows.max_hops(), Ordering::Relaxed);
        // Pub/sub topics have no stream to trim.
        let retention: Vec<(String, Duration)> = flows
            .topics
            .iter()
            .filter(|(topic, _)| flows.topic_mode(topic) == TopicMode::Stream)
            .filter_map(|(topic, config)| Some((topic.clone(), config.retention?)))
            .collect();
        self.shared.broker.set_retention(&retention);

        // Stop what is removed or changed: subscribers, then relays (they drain in place).
        let wanted: BTreeMap<&String, &SubscriberConfig> = flows
            .subscribers
            .iter()
            .filter(|(_, c)| self.wanted_role(c.role.as_ref()))
            .collect();
        let mut stopping = Vec::new();
        for name in self.subscribers.keys().cloned().collect::<Vec<_>>() {
            let restart = match wanted.get(&name) {
                None => {
                    outcome.removed.push(format!("subscribers.{name}"));
                    true
                }
                Some(config) => {
                    let old = &self.subscribers[&name].config;
                    let poll_changed =
                        matches!(&config.input, SubscriberInput::Queue(q) if queue_changed(q));
                    let restart = !same_settings(old, config) || poll_changed;
                    if restart {
                        outcome.changed.push(format!("subscribers.{name}"));
                    }
                    restart
                }
            };
            if let Some(sub) = restart.then(|| self.subscribers.remove(&name)).flatten() {
                sub.token.cancel();
                sub.tracker.close();
                stopping.push((sub.tracker, Some((name.clone(), sub.config.group))));
            }
        }
        for name in self.relays.keys().cloned().collect::<Vec<_>>() {
            let keep = match flows.relays.get(&name) {
                None => {
                    outcome.removed.push(format!("relays.{name}"));
                    false
                }
                Some(config) => {
                    let script_key = format!("relays.{name}");
                    let imports_changed = next
                        .scripts
                        .by_component
                        .get(&script_key)
                        .is_some_and(|s| s.imports.iter().any(|i| changed_modules.contains(i)));
                    let same = self.relays[&name].config == *config
                        && !imports_changed
                        && !queue_changed(&config.to);
                    if !same {
                        outcome.changed.push(format!("relays.{name}"));
                    }
                    same
                }
            };
            if !keep {
                if let Some(relay) = self.relays.remove(&name) {
                    relay.token.cancel();
                    relay.tracker.close();
                    stopping.push((relay.tracker, None));
                }
            }
        }
        for name in self.chains.keys().cloned().collect::<Vec<_>>() {
            let keep = match flows.chains.get(&name) {
                None => {
                    outcome.removed.push(format!("chains.{name}"));
                    self.shared.metrics.forget_chain(&name);
                    false
                }
                Some(config) => {
                    let same = self.chains[&name].config == *config;
                    if !same {
                        outcome.changed.push(format!("chains.{name}"));
                    }
                    same
                }
            };
            if !keep {
                self.shared.steps.unregister(&name);
                if let Some(chain) = self.chains.remove(&name) {
                    chain.token.cancel();
                    chain.tracker.close();
                    stopping.push((chain.tracker, None));
                }
            }
        }
        for (tracker, _) in &stopping {
            tracker.wait().await;
        }

        // Consumer groups: the union of patterns per group. New groups are declared before
        // old ones go, and what waits in a group a subscriber left moves to its new group,
        // so renaming a group loses nothing.
        let groups = self.group_patterns(&wanted, &flows);
        for (group, patterns) in &groups {
            let spec = GroupSpec {
                name: group.clone(),
                patterns: patterns.clone(),
            };
            self.shared.broker.declare_group(&spec).await?;
        }
        // What waits for a component that goes moves to its successor: the same subscriber
        // under a new group, or whichever component says `renamed_from` the old name.
        let first = self.current.is_none();
        let mut gone_subscribers = BTreeSet::new();
        for (_, left) in &stopping {
            if let Some((subscriber, group)) = left {
                gone_subscribers.insert(subscriber.clone());
                if !groups.contains_key(group) {
                    let heir = match wanted.get_key_value(subscriber) {
                        Some((name, config)) => Some((*name, *config)),
                        None => renamed_to(&wanted, subscriber, |c| c.renamed_from.as_deref())
                            .map(|(name, config)| (name, *config)),
                    };
                    let removed = self
                        .shared
                        .broker
                        .remove_group(group, heir.map(|(_, c)| c.group.as_str()))
                        .await?;
                    outcome.backlog(
                        format!("subscribers.{subscriber}"),
                        heir.map(|(name, _)| format!("subscribers.{name}")),
                        removed,
                    );
                }
            }
        }
        let old_relays = self
            .current
            .as_ref()
            .map(|c| c.flows.relays.keys().cloned().collect::<BTreeSet<_>>())
            .unwrap_or_default();
        for name in &old_relays {
            if !flows.relays.contains_key(name) {
                let heir = renamed_to(&flows.relays, name, |c| c.renamed_from.as_deref());
                let removed = self
                    .shared
                    .broker
                    .remove_group(
                        &relay::group_name(name),
                        heir.map(|(new, _)| relay::group_name(new)).as_deref(),
                    )
                    .await?;
                outcome.backlog(
                    format!("relays.{name}"),
                    heir.map(|(new, _)| format!("relays.{new}")),
                    removed,
                );
            }
        }
        for name in self
            .current
            .as_ref()
            .map(|c| c.flows.chains.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if !flows.chains.contains_key(&name) {
                let removed = self
                    .shared
                    .broker
                    .remove_group(&chains::group_name(&name), None)
                    .await?;
                outcome.backlog(format!("chains.{name}"), None, removed);
            }
        }
        for name in old_queues.keys() {
            if !flows.queues.contains_key(name) {
                let heir = renamed_to(&flows.queues, name, |c| c.renamed_from.as_deref());
                let removed = self
                    .shared
                    .broker
                    .remove_queue(name, heir.map(|(new, _)| new.as_str()))
                    .await?;
                outcome.removed.push(format!("queues.{name}"));
                outcome.backlog(
                    format!("queues.{name}"),
                    heir.map(|(new, _)| format!("queues.{new}")),
                    removed,
                );
            }
        }
        // At start, a durable broker may still hold the backlog of a component a previous
        // run knew under its former name: it moves too (a no-op on the memory broker).
        if first {
            for (name, config) in &wanted {
                let Some(old) = config.renamed_from.as_deref() else {
                    continue;
                };
                if groups.contains_key(old) || gone_subscribers.contains(old) {
                    continue;
                }
                let removed = self
                    .shared
                    .broker
                    .remove_group(old, Some(&config.group))
                    .await?;
                outcome.backlog(
                    format!("subscribers.{old}"),
                    Some(format!("subscribers.{name}")),
                    removed,
                );
            }
            for (name, config) in &flows.relays {
                let Some(old) = config.renamed_from.as_deref() else {
                    continue;
                };
                let removed = self
                    .shared
                    .broker
                    .remove_group(&relay::group_name(old), Some(&relay::group_name(name)))
                    .await?;
                outcome.backlog(
                    format!("relays.{old}"),
                    Some(format!("relays.{name}")),
                    removed,
                );
            }
            for (name, config) in &flows.queues {
                let Some(old) = config.renamed_from.as_deref() else {
                    continue;
                };
                let removed = self.shared.broker.remove_queue(old, Some(name)).await?;
                outcome.backlog(
                    format!("queues.{old}"),
                    Some(format!("queues.{name}")),
                    removed,
                );
            }
        }

        // Start or update subscribers.
        for (name, config) in &wanted {
            let key = format!("subscribers.{name}");
            let script = next.scripts.by_component.get(&key).cloned().map(Arc::new);
            let imports_changed = script
                .as_ref()
                .is_some_and(|s| s.imports.iter().any(|i| changed_modules.contains(i)));
            let code = HandlerCode { script, generation };
            if let Some(running) = self.subscribers.get_mut(*name) {
                if running.config.script != config.script || imports_changed || force_code {
                    outcome.swapped.push(key);
                    running.code.send_replace(code);
                    running.config = (*config).clone();
                } else {
                    // Same code; only the generation it reports moves on.
                    running.code.send_modify(|c| c.generation = generation);
                }
                continue;
            }
            if !outcome.changed.contains(&key) {
                outcome.added.push(key);
            }
            let poll = match &config.input {
                SubscriberInput::Queue(q) => flows.queues.get(q).and_then(|q| q.poll),
                SubscriberInput::Topics(_) => None,
            };
            self.start_subscriber(name, config, code, poll, &flows)?;
        }

        // Start chain trackers.
        for (name, config) in &flows.chains {
            if self.chains.contains_key(name) {
                continue;
            }
            let key = format!("chains.{name}");
            if !outcome.changed.contains(&key) {
                outcome.added.push(key);
            }
            self.start_chain(name, config, &flows)?;
        }

        // Start relays.
        for (name, config) in &flows.relays {
            if self.relays.contains_key(name) {
                continue;
            }
            let key = format!("relays.{name}");
            if !outcome.changed.contains(&key) {
                outcome.added.push(key);
            }
            self.start_relay(name, config, &next)?;
        }

        // Producers.
        let wanted_producers: BTreeMap<&String, &ProducerConfig> = flows
            .producers
            .iter()
            .filter(|(_, c)| self.producer_wanted(c.role.as_ref()))
            .collect();
        for name in self.producers.keys().cloned().collect::<Vec<_>>() {
            let key = format!("producers.{name}");
            let keep = wanted_producers.get(&name).is_some_and(|c| {
                let script_same = match next.scripts.by_component.get(&key) {
                    Some(script) => !script.imports.iter().any(|i| changed_modules.contains(i)),
                    None => true,
                };
                **c == self.producers[&name].config && script_same && !force_code
            });
            if !keep {
                if let Some(p) = self.producers.remove(&name) {
                    p.token.cancel();
                    p.tracker.close();
                    p.tracker.wait().await;
                    self.http_addrs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&name);
                }
                if wanted_producers.contains_key(&name) {
                    outcome.changed.push(key);
                } else {
                    outcome.removed.push(key);
                }
            }
        }
        let mut first_http = true;
        for (name, config) in &wanted_producers {
            if self.producers.contains_key(*name) {
                continue;
            }
            let key = format!("producers.{name}");
            if !outcome.changed.contains(&key) {
                outcome.added.push(key);
            }
            let declared = (*config).clone();
            let mut config = declared.clone();
            if let ProducerKind::Http(http) = &mut config.kind {
                if let (Some(listen), true) = (&self.options.listen, first_http) {
                    http.listen = listen.clone();
                    first_http = false;
                }
                if let Some(token) = &self.options.token {
                    http.token = Some(token.clone());
                }
            }
            self.start_producer(name, config, declared, &next).await?;
        }

        // Config-only sections (their runtime comes with later features) still count as changes.
        if let Some(current) = &self.current {
            diff_names("topics", &current.flows.topics, &flows.topics, &mut outcome);
            diff_names("stores", &current.flows.stores, &flows.stores, &mut outcome);
        }

        self.warn_exposed_without_token();
        self.code_unsure = false;
        self.shared
            .status
            .generation
            .store(generation, Ordering::SeqCst);
        outcome.took_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.current = Some(next);
        self.set_last_reload(outcome.clone());
        Ok(outcome)
    }

    /// Warns about every HTTP producer that listens on more than loopback without a
    /// token: anyone who can reach it may publish, replay dead letters and reload. Said at
    /// start and again on every reload that keeps it so.
    fn warn_exposed_without_token(&self) {
        let addrs = self.http_addrs.lock().unwrap_or_else(|e| e.into_inner());
        for (name, producer) in &self.producers {
            let ProducerKind::Http(http) = &producer.config.kind else {
                continue;
            };
            let Some(addr) = addrs.get(name) else {
                continue;
            };
            if !addr.ip().is_loopback() && http.token.is_none() && self.options.token.is_none() {
                warn!(
                    producer = %name,
                    %addr,
                    "the HTTP API listens beyond this machine without a token: anyone who reaches it can publish, replay dead letters and reload; set `token` on the producer, or pass --token or EDAFLOW_TOKEN"
                );
            }
        }
    }

    /// Imported module files whose text differs between the running set and `next`.
    fn changed_modules(&self, next: &Prepared) -> BTreeSet<PathBuf> {
        match &self.current {
            None => next.module_texts.keys().cloned().collect(),
            Some(current) => current
                .module_texts
                .iter()
                .filter(|(path, text)| next.module_texts.get(*path) != Some(*text))
                .map(|(path, _)| path.clone())
                .chain(
                    next.module_texts
                        .keys()
                        .filter(|p| !current.module_texts.contains_key(*p))
                        .cloned(),
                )
                .collect(),
        }
    }

    /// The patterns each consumer group receives: the union over its subscribers, plus one
    /// group per relay and, on a broker that keeps chain state, one per chain.
    fn group_patterns(
        &self,
        wanted: &BTreeMap<&String, &SubscriberConfig>,
        flows: &FlowSet,
    ) -> BTreeMap<String, Vec<TopicPattern>> {
        let mut groups: BTreeMap<String, Vec<TopicPattern>> = BTreeMap::new();
        for config in wanted.values() {
            if let SubscriberInput::Topics(patterns) = &config.input {
                let entry = groups.entry(config.group.clone()).or_default();
                for p in patterns {
                    if !entry.contains(p) {
                        entry.push(p.clone());
                    }
                }
            }
        }
        for (name, relay) in &flows.relays {
            groups.insert(relay::group_name(name), vec![relay.from.clone()]);
        }
        // Elsewhere the step registry feeds the trackers (see `chains`).
        let chain_groups = self.shared.broker.tracks_chains();
        for (name, chain) in flows.chains.iter().filter(|_| chain_groups) {
            let steps = chain
                .steps
                .iter()
                .filter_map(|s| TopicPattern::parse(s).ok())
                .collect();
            groups.insert(chains::group_name(name), steps);
        }
        groups
    }

    fn start_subscriber(
        &mut self,
        name: &str,
        config: &SubscriberConfig,
        code: HandlerCode,
        poll: Option<Duration>,
        flows: &FlowSet,
    ) -> Result<(), RuntimeError> {
        let (tx, rx) = watch::channel(code);
        let token = self.root.child_token();
        let tracker = TaskTracker::new();
        let flow = flows
            .files
            .get(config.file)
            .map_or("flows", |f| f.name.as_str());
        let task = SubscriberTask {
            shared: self.shared.clone(),
            name: Arc::from(name),
            config: config.clone(),
            source: format!("edaflow://{flow}/{name}"),
            code: rx,
            metrics: self.shared.metrics.subscriber(name),
            poll,
            per_poll: match &config.input {
                SubscriberInput::Queue(q) => flows.queues.get(q).and_then(|q| q.per_poll),
                SubscriberInput::Topics(_) => None,
            },
            quiet: self.options.quiet,
            slow: Default::default(),
        };
        subscriber::spawn(task, &tracker, &token)?;
        self.subscribers.insert(
            name.to_owned(),
            RunningSubscriber {
                config: config.clone(),
                code: tx,
                token,
                tracker,
            },
        );
        Ok(())
    }

    fn start_chain(
        &mut self,
        name: &str,
        config: &ChainConfig,
        flows: &FlowSet,
    ) -> Result<(), RuntimeError> {
        let token = self.root.child_token();
        let tracker = TaskTracker::new();
        let flow = flows
            .files
            .get(config.file)
            .map_or("flows", |f| f.name.as_str());
        let task = chains::ChainTask {
            shared: self.shared.clone(),
            name: Arc::from(name),
            config: config.clone(),
            source: format!("edaflow://{flow}/chains/{name}"),
            stats: self.shared.metrics.chain(name, &config.steps),
        };
        chains::spawn(task, &tracker, &token)?;
        self.chains.insert(
            name.to_owned(),
            RunningChain {
                config: config.clone(),
                token,
                tracker,
            },
        );
        Ok(())
    }

    fn start_relay(
        &mut self,
        name: &str,
        config: &RelayConfig,
        next: &Prepared,
    ) -> Result<(), RuntimeError> {
        let token = self.root.child_token();
        let tracker = TaskTracker::new();
        let flow = next
            .flows
            .files
            .get(config.file)
            .map_or("flows", |f| f.name.as_str());
        let task = relay::RelayTask {
            shared: self.shared.clone(),
            name: Arc::from(name),
            config: config.clone(),
            source: format!("edaflow://{flow}/{name}"),
            filter: next
                .scripts
                .by_component
                .get(&format!("relays.{name}.filter"))
                .cloned()
                .map(Arc::new),
            transform: next
                .scripts
                .by_component
                .get(&format!("relays.{name}"))
                .cloned()
                .map(Arc::new),
            metrics: self.shared.metrics.relay(name),
        };
        relay::spawn(task, &tracker, &token)?;
        self.relays.insert(
            name.to_owned(),
            RunningRelay {
                config: config.clone(),
                token,
                tracker,
            },
        );
        Ok(())
    }

    /// Starts a producer with `config` (the declared one with `--listen` applied); the
    /// declared one is kept to compare against the next generation.
    async fn start_producer(
        &mut self,
        name: &str,
        config: ProducerConfig,
        declared: ProducerConfig,
        next: &Prepared,
    ) -> Result<(), RuntimeError> {
        let token = self.root.child_token();
        let tracker = TaskTracker::new();
        let flow = next
            .flows
            .files
            .get(config.file)
            .map_or("flows", |f| f.name.as_str());
        let source = format!("edaflow://{flow}/{name}");
        let deferred_topic = next
            .flows
            .files
            .get(config.file)
            .and_then(|f| f.deferred_topic.clone())
            .unwrap_or_else(|| "master".to_owned());
        let cx = producers::ProducerContext {
            shared: self.shared.clone(),
            name: Arc::from(name),
            source,
            token: token.clone(),
        };
        match &config.kind {
            ProducerKind::Http(http) => {
                let listener =
                    tokio::net::TcpListener::bind(&http.listen)
                        .await
                        .map_err(|source| RuntimeError::Bind {
                            addr: http.listen.clone(),
                            source,
                        })?;
                if let Ok(addr) = listener.local_addr() {
                    info!(producer = name, %addr, "http ingest listening");
                    self.http_addrs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name.to_owned(), addr);
                }
                let state = crate::http::ApiState::new(
                    self.shared.clone(),
                    http.clone(),
                    deferred_topic,
                    cx.source.clone(),
                );
                let span = tracing::info_span!("producer", component = name);
                tracker.spawn(tracing::Instrument::instrument(
                    crate::http::serve(listener, state, token.clone()),
                    span,
                ));
            }
            ProducerKind::Interval(interval) => {
                let script = next
                    .scripts
                    .by_component
                    .get(&format!("producers.{name}"))
                    .cloned()
                    .map(Arc::new);
                producers::spawn_interval(cx, interval.clone(), script, &tracker);
            }
            ProducerKind::Lines(lines) => {
                producers::spawn_lines(cx, lines.clone(), &tracker).await?;
            }
            ProducerKind::Generator(generator) => {
                producers::spawn_generator(cx, generator.clone(), &tracker);
            }
        }
        self.producers.insert(
            name.to_owned(),
            RunningProducer {
                config: declared,
                token,
                tracker,
            },
        );
        Ok(())
    }

    /// Stops ingest, lets queued events drain for at most `grace`, then stops every
    /// subscriber after the event it holds. Always over within `grace` plus
    /// `PRODUCERS_STOP` and `COMPONENTS_STOP`, whatever is stuck: a component still going
    /// then is left behind, and what it had not finished is counted and logged.
    pub async fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        let producers: Vec<RunningProducer> =
            std::mem::take(&mut self.producers).into_values().collect();
        for p in &producers {
            p.token.cancel();
            p.tracker.close();
        }
        let stopped = async {
            for p in &producers {
                p.tracker.wait().await;
            }
        };
        let mut report = ShutdownReport::default();
        if tokio::time::timeout(PRODUCERS_STOP, stopped).await.is_err() {
            warn!(
                after_ms = PRODUCERS_STOP.as_millis() as u64,
                "a producer did not stop in time; going on without it"
            );
            report.forced = true;
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let broker = &self.shared.broker;
            let busy = broker
                .stats()
                .iter()
                .map(|g| g.queued + g.in_flight)
                .sum::<usize>()
                + broker.scheduled();
            if busy == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                if !grace.is_zero() {
                    warn!(events = busy, "grace period over; events still queued are dropped (the memory broker keeps nothing)");
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.root.cancel();
        let components: Vec<TaskTracker> = std::mem::take(&mut self.subscribers)
            .into_values()
            .map(|s| s.tracker)
            .chain(
                std::mem::take(&mut self.relays)
                    .into_values()
                    .map(|r| r.tracker),
            )
            .chain(
                std::mem::take(&mut self.chains)
                    .into_values()
                    .map(|c| c.tracker),
            )
            .collect();
        for tracker in &components {
            tracker.close();
        }
        let stopped = async {
            for tracker in &components {
                tracker.wait().await;
            }
        };
        if tokio::time::timeout(COMPONENTS_STOP, stopped)
            .await
            .is_err()
        {
            report.forced = true;
        }
        report.unfinished = self.unfinished();
        if report.forced || report.unfinished > 0 {
            if self.shared.broker.commit_may_fail_transiently() {
                warn!(
                    in_flight = report.unfinished,
                    "stopped with events unfinished: they stay pending in the broker, and another process (or the next start) takes them after --claim-idle"
                );
            } else if report.unfinished > 0 {
                warn!(
                    events = report.unfinished,
                    "stopped with events unfinished (queued, in flight or scheduled); the memory broker keeps nothing, so they are dropped"
                );
            }
        }
        report
    }

    /// Events queued, in flight or scheduled in this process's broker, queue items
    /// included (for a remote broker: only what this process holds).
    fn unfinished(&self) -> usize {
        let broker = &self.shared.broker;
        broker
            .stats()
            .iter()
            .map(|g| g.queued + g.in_flight)
            .sum::<usize>()
            + broker.scheduled()
            + if broker.commit_may_fail_transiently() {
                0
            } else {
                broker
                    .queue_stats()
                    .iter()
                    .map(|q| q.depth + q.in_flight)
                    .sum::<usize>()
            }
    }
}

/// How long a stopping runtime waits for its producers (an HTTP server closing its
/// connections, a timer between ticks).
pub const PRODUCERS_STOP: Duration = Duration::from_millis(500);
/// How long a stopping runtime waits, after the grace period, for its subscribers, relays
/// and chain trackers to finish what they hold (a handler run, a commit).
pub const COMPONENTS_STOP: Duration = Duration::from_secs(1);

/// How a shutdown went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Some component did not stop in time and was left behind.
    pub forced: bool,
    /// Events left unfinished in this process (dropped on the memory broker; pending on
    /// a durable one).
    pub unfinished: usize,
}

/// Whether script runs that hold a runtime thread too long move to a thread of their
/// own: on a multi-thread runtime, whose worker threads also serve HTTP ingest. On a
/// current-thread runtime (`edaflow test`, on paused time) everything shares one thread
/// anyway, and runs stay inline.
pub(crate) fn offloading() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|h| {
        matches!(
            h.runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread
        )
    })
}

/// Equal apart from the script's text (a text-only change swaps code in place).
/// Which topics and queues use the article's wire format (Redis pub/sub, plain lists).
pub fn wire_spec(flows: &FlowSet) -> WireSpec {
    let declared = |mode: TopicMode| {
        flows
            .topics
            .iter()
            .filter(move |(_, t)| t.mode_set && t.mode == mode)
            .map(|(name, _)| name.clone())
            .collect()
    };
    WireSpec {
        pubsub_by_default: flows.default_topic_mode() == TopicMode::Pubsub,
        pubsub: declared(TopicMode::Pubsub),
        streams: declared(TopicMode::Stream),
        lists: flows
            .queues
            .iter()
            .filter_map(|(name, q)| Some((name.clone(), q.list.clone()?)))
            .collect(),
    }
}

fn same_settings(a: &SubscriberConfig, b: &SubscriberConfig) -> bool {
    let strip = |c: &SubscriberConfig| {
        let mut c = c.clone();
        if let Some(s) = &mut c.script {
            s.text = Arc::from("");
        }
        c
    };
    strip(a) == strip(b)
}

/// The component of `table` that says it was `renamed_from` the name `old`.
fn renamed_to<'a, T, M>(
    table: &'a BTreeMap<M, T>,
    old: &str,
    renamed_from: impl Fn(&T) -> Option<&str>,
) -> Option<(&'a String, &'a T)>
where
    M: std::borrow::Borrow<String> + Ord,
    T: 'a,
{
    table
        .iter()
        .find(|(_, c)| renamed_from(c) == Some(old))
        .map(|(name, c)| (name.borrow(), c))
}

/// Lists `kind.NAME` entries added, changed or removed between two tables.
fn diff_names<T: PartialEq>(
    kind: &str,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    outcome: &mut ReloadOutcome,
) {
    for (name, value) in new {
        match old.get(name) {
            None => outcome.added.push(format!("{kind}.{name}")),
            Some(previous) if previous != value => outcome.changed.push(format!("{kind}.{name}")),
            Some(_) => {}
        }
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        outcome.removed.push(format!("{kind}.{name}"));
    }
}
