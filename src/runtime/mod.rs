//! The running system: components built from one validated flow set (a *generation*),
//! and the single path that replaces one generation with the next.
//!
//! `prepare` loads and compiles (flows + scripts) without starting anything. `Runtime`
//! owns the running components (`components`), each with its own cancellation token and
//! task tracker under one root, and what they share (`Shared`). `Runtime::apply` diffs
//! what runs against a prepared set (`flow::diff`) and acts on the diff in phases
//! (`apply`): identical components are left alone, a subscriber whose code alone changed
//! gets the new code in place, changed components are drained and restarted, removed ones
//! drained, added ones started. Starting is applying onto nothing; `shutdown` stops it all.
//!
//! The other modules are the components themselves (`subscriber`, `relay`, `chains`,
//! `producers`) and what they record (`metrics`, `history`, `dead_letter`,
//! `step_registry`), the reload path (`reload`) and its report (`outcome`). `processes`
//! keeps this process's entry in the broker's registry of processes and lists them. `api`
//! is what the HTTP API may see of a runtime and how the runtime starts it, without
//! naming it.

pub mod api;
mod apply;
pub mod chains;
mod components;
pub mod dead_letter;
pub mod history;
pub mod metrics;
mod outcome;
mod prepare;
pub mod processes;
pub mod producers;
pub mod relay;
pub mod reload;
mod shutdown;
pub mod step_registry;
pub mod subscriber;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError};
use crate::flow::diff::{ComponentKey, Selection};
use crate::flow::model::{QueueConfig, StoreConfig, TopicConfig};
use crate::script::{Limits, ScriptEngine};

pub use apply::wire_spec;
pub use metrics::Metrics;
pub use outcome::{Backlog, ReloadOutcome};
pub use prepare::{prepare, prepare_after, Prepared};
pub use shutdown::{ShutdownReport, COMPONENTS_STOP, PRODUCERS_STOP};

use api::{ApiContext, ApiServer};
use components::Running;

/// Makes a component's consumers on a blocking thread: on Redis, a consumer of a group
/// this process has not declared itself checks with a blocking call that the group exists.
pub(crate) async fn off_thread<B: Broker, T: Send + 'static>(
    broker: &B,
    make: impl FnOnce(B) -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, BrokerError> {
    let broker = broker.clone();
    tokio::task::spawn_blocking(move || make(broker))
        .await
        .map_err(|e| BrokerError::Unavailable {
            source: crate::broker::ServerFailure::new(
                crate::broker::FailureKind::Unusable,
                format!("making a consumer failed: {e}"),
            ),
        })?
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
    /// The flow folders: the folders given to `edaflow run`, or a given flow file's folder.
    /// Only files inside them may be edited from the console.
    pub roots: Vec<std::path::PathBuf>,
    /// OpenTelemetry export (`--otlp-endpoint`): `None`, the default, builds no spans.
    pub tracing: Option<crate::otel::Tracing>,
}

/// Live status shared with the HTTP API.
#[derive(Debug)]
pub struct Status {
    pub generation: AtomicU64,
    pub last_reload: Mutex<Option<ReloadOutcome>>,
    pub started: Instant,
    /// Every reload's report, whatever caused it, as it finishes (the console's stream).
    pub reports: tokio::sync::broadcast::Sender<reload::ReloadReport>,
    /// Who this process is in the registry of the processes sharing the broker.
    pub process: processes::ThisProcess,
}

impl Status {
    /// This process's registry entry as of now: its generation and HTTP addresses, for
    /// `processes::list_processes`.
    pub fn this_process(&self) -> crate::broker::ProcessInfo {
        self.process.info(self.generation.load(Ordering::SeqCst))
    }
}

/// The running generation as the console shows it: its flow set and the files it was
/// loaded from.
#[derive(Clone, Debug, Default)]
pub struct FlowView {
    pub generation: u64,
    pub flows: Arc<crate::flow::model::FlowSet>,
    /// Flow files, scripts and imported modules.
    pub files: Arc<[std::path::PathBuf]>,
}

/// What every component of a runtime shares. Not for the HTTP API, which gets the narrow
/// `api::ApiContext`.
pub(crate) struct Shared<B: Broker> {
    pub broker: B,
    /// The queues of the running generation (defaults and existence for `enqueue` and HTTP).
    pub queues: watch::Sender<Arc<BTreeMap<String, QueueConfig>>>,
    /// The stores of the running generation (`expose` for HTTP).
    pub stores: watch::Sender<Arc<BTreeMap<String, StoreConfig>>>,
    /// Their names, for handlers' `store(name)`.
    pub declared_stores: watch::Sender<Arc<BTreeSet<String>>>,
    /// Per-topic settings of the running generation (query reply timeouts).
    pub topics: watch::Sender<Arc<BTreeMap<String, TopicConfig>>>,
    /// The running generation's topic schemas (ingest and handlers' emits are checked).
    pub schemas: watch::Sender<Arc<crate::flow::model::EventSchemas>>,
    /// The running generation's flow set and files.
    pub flows: watch::Sender<Arc<FlowView>>,
    /// Recent journeys, for `edaflow trace`.
    pub history: Arc<history::History>,
    /// When set, each successfully handled event is reported here with its subscriber
    /// (`edaflow test` uses it to check `handled_by`); lossy if the reader falls behind.
    pub handled:
        std::sync::OnceLock<tokio::sync::mpsc::Sender<(Arc<str>, Arc<crate::event::Event>)>>,
    /// Where `POST /admin/reload` sends its request (set once by whoever owns reloads).
    pub reload: reload::ReloadHandle,
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
    /// Span export, when on (see `crate::otel`).
    pub tracing: Option<crate::otel::Tracing>,
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
    /// What serves the `http` producers.
    api: Arc<dyn ApiServer<B>>,
    /// Which components of a set this process runs (from `options`).
    selection: Selection,
    /// The set last applied.
    current: Option<Prepared>,
    /// What runs: subscribers, relays, chain trackers and producers.
    running: BTreeMap<ComponentKey, Running>,
    /// Set while an apply is under way: if it fails half-way, code from the failed set may
    /// be running, so the next apply (the rollback) re-sends every script.
    code_unsure: bool,
    /// Addresses the HTTP producers actually listen on (after port 0 is resolved).
    http_addrs: Arc<Mutex<BTreeMap<String, std::net::SocketAddr>>>,
    /// Keeps this process's entry in the broker's registry fresh, once a generation runs
    /// (`None` before, and on a broker without a registry).
    heartbeat: Option<processes::Heartbeat>,
    root: CancellationToken,
}

impl<B: Broker> Runtime<B> {
    /// A runtime with nothing running yet, whose `http` producers `api` serves; `apply`
    /// starts a generation. (`Runtime::new`, at the crate root, hands it the `http`
    /// module's API.)
    pub fn with_api(broker: B, options: RuntimeOptions, api: Arc<dyn ApiServer<B>>) -> Runtime<B> {
        let steps = Arc::new(step_registry::StepRegistry::default());
        let http_addrs = Arc::new(Mutex::new(BTreeMap::new()));
        let process = processes::ThisProcess::new(&broker, http_addrs.clone());
        let steps_reported = broker.chains().is_none()
            && broker
                .accept_feed()
                .is_some_and(|feed| feed.observe_accepted(steps.clone()));
        let shared = Arc::new(Shared {
            history: Arc::new(history::History::for_broker(&broker)),
            broker,
            queues: watch::Sender::new(Arc::new(BTreeMap::new())),
            stores: watch::Sender::new(Arc::new(BTreeMap::new())),
            declared_stores: watch::Sender::new(Arc::new(BTreeSet::new())),
            topics: watch::Sender::new(Arc::new(BTreeMap::new())),
            schemas: watch::Sender::new(Arc::default()),
            flows: watch::Sender::new(Arc::new(FlowView::default())),
            reload: reload::ReloadHandle::default(),
            handled: std::sync::OnceLock::new(),
            engine: ScriptEngine::new(options.limits),
            metrics: Arc::new(Metrics::default()),
            status: Arc::new(Status {
                generation: AtomicU64::new(0),
                last_reload: Mutex::new(None),
                started: Instant::now(),
                reports: tokio::sync::broadcast::channel(16).0,
                process,
            }),
            steps,
            steps_reported,
            max_hops: crate::flow::model::DEFAULT_MAX_HOPS.into(),
            tracing: options.tracing.clone(),
        });
        Runtime {
            shared,
            selection: Selection {
                roles: options.roles.clone(),
                producers: options.producers,
            },
            options,
            api,
            current: None,
            running: BTreeMap::new(),
            code_unsure: false,
            http_addrs,
            heartbeat: None,
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
        self.shared.reload.connect(requests);
    }

    /// The flow set running now.
    pub fn current(&self) -> Option<&Prepared> {
        self.current.as_ref()
    }

    /// The narrow view of this runtime that its HTTP API is built on.
    pub fn api_context(&self) -> ApiContext<B> {
        let shared = &self.shared;
        ApiContext {
            broker: shared.broker.clone(),
            metrics: shared.metrics.clone(),
            status: shared.status.clone(),
            history: shared.history.clone(),
            reload: shared.reload.clone(),
            queues: shared.queues.subscribe(),
            stores: shared.stores.subscribe(),
            topics: shared.topics.subscribe(),
            schemas: shared.schemas.subscribe(),
            flows: shared.flows.subscribe(),
            roots: self.options.roots.clone().into(),
            tracing: shared.tracing.clone(),
        }
    }

    /// Where each HTTP producer listens, by producer name.
    pub fn http_addrs(&self) -> BTreeMap<String, std::net::SocketAddr> {
        self.http_addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the running generation with `next`, touching only what differs, as the
    /// next generation number.
    ///
    /// # Errors
    /// A component that cannot start (a port in use, a missing input file). What was
    /// already applied stays applied: the caller restores the previous set (`restore`).
    pub async fn apply(&mut self, next: Prepared) -> Result<ReloadOutcome, RuntimeError> {
        let generation = self.generation() + 1;
        let outcome = self.apply_as(next, generation).await;
        self.announce();
        outcome
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
        let outcome = self.apply_as(previous, generation).await;
        self.announce();
        outcome
    }

    /// Shows what runs now in the broker's registry of processes: starts the heartbeat
    /// after the first apply, and refreshes the entry at once after the others.
    fn announce(&mut self) {
        match &self.heartbeat {
            Some(heartbeat) => heartbeat.nudge(),
            None => {
                self.heartbeat = processes::Heartbeat::start(
                    self.shared.broker.clone(),
                    self.shared.status.clone(),
                );
            }
        }
    }

    /// True when `next` is the running set exactly (flows, scripts and imported modules):
    /// applying it would change nothing.
    pub fn is_current(&self, next: &Prepared) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| c.flows == next.flows && c.module_texts == next.module_texts)
    }
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
