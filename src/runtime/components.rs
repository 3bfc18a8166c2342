//! The running components of a generation and how each kind starts. A `Running` is one
//! started subscriber, relay, chain tracker or producer: the config it was started from,
//! its own cancellation token (a child of the runtime's root) and the tracker of its
//! tasks. The runtime keeps them by `ComponentKey`.
//!
//! Starting is building a `Running` from a config; what to start or stop is the diff's
//! decision (`flow::diff`) and when is `apply`'s.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, Instrument};

use crate::broker::Broker;
use crate::flow::diff::{ComponentKey, Kind};
use crate::flow::model::{
    ChainConfig, FlowSet, ProducerConfig, ProducerKind, RelayConfig, SubscriberConfig,
    SubscriberInput,
};
use crate::runtime::api::ApiProducer;
use crate::runtime::subscriber::{HandlerCode, SubscriberTask};
use crate::runtime::{chains, producers, relay, subscriber, Prepared, Runtime, RuntimeError};

/// One started component.
pub(crate) struct Running {
    /// What it was started from (a producer: as declared, before `--listen` and
    /// `--token`), for the next generation to be compared against.
    pub(crate) config: ComponentConfig,
    /// A subscriber's handler code, which a reload swaps in place; `None` for the other
    /// kinds.
    code: Option<watch::Sender<HandlerCode>>,
    token: CancellationToken,
    tracker: TaskTracker,
}

/// The config of a started component, by kind.
#[derive(Clone, Debug)]
pub(crate) enum ComponentConfig {
    Subscriber(SubscriberConfig),
    Relay(RelayConfig),
    Chain(ChainConfig),
    Producer(ProducerConfig),
}

impl Running {
    /// A component whose tasks are about to be spawned on `tracker`.
    fn new(config: ComponentConfig, root: &CancellationToken) -> Running {
        Running {
            config,
            code: None,
            token: root.child_token(),
            tracker: TaskTracker::new(),
        }
    }

    /// Asks its tasks to stop; each finishes what it holds first.
    pub(crate) fn stop(&self) {
        self.token.cancel();
        self.tracker.close();
    }

    /// Waits until every task has ended (after `stop`, or the root's cancellation).
    pub(crate) async fn stopped(&self) {
        self.tracker.wait().await;
    }

    /// A subscriber runs `code` from its next event on.
    pub(crate) fn send_code(&self, code: HandlerCode) {
        if let Some(sender) = &self.code {
            sender.send_replace(code);
        }
    }

    /// A subscriber keeps its code; only the generation its events report moves on.
    pub(crate) fn keep_code(&self, generation: u64) {
        if let Some(sender) = &self.code {
            sender.send_modify(|code| code.generation = generation);
        }
    }
}

/// The code subscriber `key` runs in `next`, as of `generation`.
pub(crate) fn handler_code(next: &Prepared, key: &ComponentKey, generation: u64) -> HandlerCode {
    HandlerCode {
        script: next
            .scripts
            .by_component
            .get(&key.to_string())
            .cloned()
            .map(Arc::new),
        generation,
    }
}

/// The `[flow] name` of the file that declared a component, for its events' `source`.
fn flow_name(flows: &FlowSet, file: usize) -> &str {
    flows.files.get(file).map_or("flows", |f| f.name.as_str())
}

impl<B: Broker> Runtime<B> {
    /// Starts subscriber, relay or chain tracker `key` as `next` declares it (a
    /// subscriber with the code of `generation`). `None` for the kinds that are not
    /// started this way: producers (`start_producer`), and queues, topics and stores,
    /// which nothing runs.
    ///
    /// # Errors
    /// The broker refuses the component's consumers.
    pub(super) async fn start(
        &self,
        key: &ComponentKey,
        next: &Prepared,
        generation: u64,
    ) -> Result<Option<Running>, RuntimeError> {
        let flows = &next.flows;
        let name = key.name.as_str();
        let started = match key.kind {
            Kind::Subscriber => match flows.subscribers.get(name) {
                Some(config) => Some(self.start_subscriber(key, config, next, generation).await),
                None => None,
            },
            Kind::Relay => match flows.relays.get(name) {
                Some(config) => Some(self.start_relay(name, config, next).await),
                None => None,
            },
            Kind::Chain => match flows.chains.get(name) {
                Some(config) => Some(self.start_chain(name, config, flows).await),
                None => None,
            },
            Kind::Queue | Kind::Producer | Kind::Topic | Kind::Store => None,
        };
        started.transpose()
    }

    async fn start_subscriber(
        &self,
        key: &ComponentKey,
        config: &SubscriberConfig,
        next: &Prepared,
        generation: u64,
    ) -> Result<Running, RuntimeError> {
        let flows = &next.flows;
        let name = key.name.as_str();
        let queue = match &config.input {
            SubscriberInput::Queue(q) => flows.queues.get(q),
            SubscriberInput::Topics(_) => None,
        };
        let (code, code_rx) = watch::channel(handler_code(next, key, generation));
        let mut running = Running::new(ComponentConfig::Subscriber(config.clone()), &self.root);
        running.code = Some(code);
        let task = SubscriberTask {
            shared: self.shared.clone(),
            name: Arc::from(name),
            config: config.clone(),
            source: format!("edaflow://{}/{name}", flow_name(flows, config.file)),
            code: code_rx,
            metrics: self.shared.metrics.subscriber(name),
            poll: queue.and_then(|q| q.poll),
            per_poll: queue.and_then(|q| q.per_poll),
            quiet: self.options.quiet,
            slow: Default::default(),
        };
        subscriber::spawn(task, &running.tracker, &running.token).await?;
        Ok(running)
    }

    async fn start_chain(
        &self,
        name: &str,
        config: &ChainConfig,
        flows: &FlowSet,
    ) -> Result<Running, RuntimeError> {
        let running = Running::new(ComponentConfig::Chain(config.clone()), &self.root);
        let task = chains::ChainTask {
            shared: self.shared.clone(),
            name: Arc::from(name),
            config: config.clone(),
            source: format!("edaflow://{}/chains/{name}", flow_name(flows, config.file)),
            stats: self.shared.metrics.chain(name, &config.steps),
        };
        chains::spawn(task, &running.tracker, &running.token).await?;
        Ok(running)
    }

    async fn start_relay(
        &self,
        name: &str,
        config: &RelayConfig,
        next: &Prepared,
    ) -> Result<Running, RuntimeError> {
        let running = Running::new(ComponentConfig::Relay(config.clone()), &self.root);
        let script = |key: String| next.scripts.by_component.get(&key).cloned().map(Arc::new);
        let task = relay::RelayTask {
            shared: self.shared.clone(),
            name: Arc::from(name),
            config: config.clone(),
            source: format!("edaflow://{}/{name}", flow_name(&next.flows, config.file)),
            filter: script(format!("relays.{name}.filter")),
            transform: script(ComponentKey::new(Kind::Relay, name).to_string()),
            metrics: self.shared.metrics.relay(name),
        };
        relay::spawn(task, &running.tracker, &running.token).await?;
        Ok(running)
    }

    /// Starts a producer with `config` (the declared one with `--listen` and `--token`
    /// applied); the declared one is kept to compare against the next generation.
    ///
    /// # Errors
    /// An HTTP producer cannot listen, or a `lines` producer cannot open its file.
    pub(super) async fn start_producer(
        &self,
        name: &str,
        config: ProducerConfig,
        declared: ProducerConfig,
        next: &Prepared,
    ) -> Result<Running, RuntimeError> {
        let running = Running::new(ComponentConfig::Producer(declared), &self.root);
        let file = next.flows.files.get(config.file);
        let source = format!("edaflow://{}/{name}", flow_name(&next.flows, config.file));
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
                let producer = ApiProducer {
                    runtime: self.api_context(),
                    config: http.clone(),
                    deferred_topic: file
                        .and_then(|f| f.deferred_topic.clone())
                        .unwrap_or_else(|| "master".to_owned()),
                    source,
                };
                let span = tracing::info_span!("producer", component = name);
                running.tracker.spawn(
                    self.api
                        .serve(listener, producer, running.token.clone())
                        .instrument(span),
                );
            }
            ProducerKind::Interval(interval) => {
                let script = next
                    .scripts
                    .by_component
                    .get(&ComponentKey::new(Kind::Producer, name).to_string())
                    .cloned()
                    .map(Arc::new);
                let cx = self.producer_context(name, source, &running);
                producers::spawn_interval(cx, interval.clone(), script, &running.tracker);
            }
            ProducerKind::Lines(lines) => {
                let cx = self.producer_context(name, source, &running);
                producers::spawn_lines(cx, lines.clone(), &running.tracker).await?;
            }
            ProducerKind::Generator(generator) => {
                let cx = self.producer_context(name, source, &running);
                producers::spawn_generator(cx, generator.clone(), &running.tracker);
            }
        }
        Ok(running)
    }

    fn producer_context(
        &self,
        name: &str,
        source: String,
        running: &Running,
    ) -> producers::ProducerContext<B> {
        producers::ProducerContext {
            shared: self.shared.clone(),
            name: Arc::from(name),
            source,
            token: running.token.clone(),
        }
    }
}
