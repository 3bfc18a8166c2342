//! What a runtime offers the HTTP API, and how it starts an `http` producer without
//! knowing HTTP.
//!
//! `ApiContext` is the narrow view of a running runtime that the API may use: the broker
//! (ingest, health, admin), metrics, status, history, reload requests and the running
//! generation's queue, store and topic settings; never the components, the script engine
//! or the rest of `Shared`. `ApiServer` is how the runtime starts an `http` producer: it
//! binds the listener itself (so that a port in use fails the apply, and `http_addrs`
//! knows the port), then hands it over with an `ApiProducer`. The `http` module
//! implements it, and the crate root hands it to `Runtime::new`; the runtime never names
//! `http`. Nothing here routes or serves.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::flow::model::{EventSchemas, HttpProducer, QueueConfig, StoreConfig, TopicConfig};
use crate::runtime::history::History;
use crate::runtime::metrics::Metrics;
use crate::runtime::reload::ReloadHandle;
use crate::runtime::{FlowView, Status};

/// What the HTTP API may read and drive in a runtime. Cheap to clone: every field is a
/// handle.
#[derive(Clone)]
pub struct ApiContext<B: Broker> {
    /// Where ingest publishes and enqueues, and what the health and admin routes ask.
    pub broker: B,
    pub metrics: Arc<Metrics>,
    /// Generation, last reload, uptime.
    pub status: Arc<Status>,
    /// Recent journeys (`/trace`), where ingest records what it published.
    pub history: Arc<History>,
    /// Where `POST /admin/reload` asks for a reload.
    pub reload: ReloadHandle,
    /// The running generation's queues (default delay, and which exist).
    pub queues: watch::Receiver<Arc<BTreeMap<String, QueueConfig>>>,
    /// The running generation's stores (which are exposed).
    pub stores: watch::Receiver<Arc<BTreeMap<String, StoreConfig>>>,
    /// The running generation's topic settings (query reply timeouts).
    pub topics: watch::Receiver<Arc<BTreeMap<String, TopicConfig>>>,
    /// The running generation's topic schemas (what ingest checks event data against).
    pub schemas: watch::Receiver<Arc<EventSchemas>>,
    /// The running generation's flow set and files (the console's graph and editor).
    pub flows: watch::Receiver<Arc<FlowView>>,
    /// The flow folders (`RuntimeOptions::roots`): where the console may edit files.
    pub roots: Arc<[PathBuf]>,
    /// Span export, when on: ingest's spans (see `crate::otel`).
    pub tracing: Option<crate::otel::Tracing>,
}

/// One `http` producer, as the runtime hands it to its `ApiServer`.
pub struct ApiProducer<B: Broker> {
    pub runtime: ApiContext<B>,
    /// Its settings, with `--token` applied.
    pub config: HttpProducer,
    /// Where `POST /deferred-exec` publishes (`[flow] deferred_topic`).
    pub deferred_topic: String,
    /// The `source` of the events it ingests: `edaflow://FLOW/NAME`.
    pub source: String,
}

/// Serves the HTTP API of `http` producers (the `http` module's `Api`).
pub trait ApiServer<B: Broker>: Send + Sync + 'static {
    /// Serves `producer` on `listener` until `stop` is cancelled; the future ends once its
    /// connections are closed.
    fn serve(
        &self,
        listener: TcpListener,
        producer: ApiProducer<B>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()>;
}
