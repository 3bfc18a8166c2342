//! edaflow: a runtime for event-driven systems described in files.
//!
//! Flow files (TOML) declare producers, topic subscribers, queues, relays and chains;
//! Rhai scripts handle each event. Modules, in dependency order:
//!
//! - [`event`]: the CloudEvents envelope and its limits.
//! - [`tracecontext`]: W3C trace context on events (leaf); [`otel`]: OpenTelemetry export.
//! - [`pattern`], [`duration`]: topic names and patterns, duration strings (leaf modules).
//! - [`flow`]: TOML to a validated, immutable flow set, with diagnostics, the CQRS lint and
//!   the reload diff (no tokio, no Rhai).
//! - [`script`]: the Rhai engine, host API, sandbox limits.
//! - [`store`]: state stores (the memory ones, and the read trait handlers go through).
//! - [`broker`]: the broker contract, the memory broker and the Redis broker.
//! - [`runtime`]: preparing and applying generations, running components, reload, metrics.
//! - [`http`]: the HTTP producer (its accept loop and clocks, ingest, health, metrics, tail).
//! - [`flowtest`]: `edaflow test`.
//! - [`client`], [`cli`], [`app`]: the command line.
//! - [`article`]: the article's own commands, as built-in flows.
//! - [`watch`]: the file watcher behind hot reload.

pub mod app;
pub mod article;
pub mod broker;
pub mod cli;
pub mod client;
pub mod duration;
pub mod event;
pub mod flow;
pub mod flowtest;
pub mod http;
pub mod otel;
pub mod pattern;
pub mod runtime;
pub mod script;
pub mod store;
pub mod tracecontext;
pub mod watch;

pub use app::Error;

/// Where `runtime` and `http` meet: the runtime starts `http` producers through
/// `runtime::api::ApiServer`, and this is the one place that hands it the `http` module's,
/// so that neither module names the other's insides.
impl<B: broker::Broker> runtime::Runtime<B> {
    /// A runtime with nothing running yet, whose `http` producers serve [`http::Api`];
    /// `apply` starts a generation.
    pub fn new(broker: B, options: runtime::RuntimeOptions) -> runtime::Runtime<B> {
        runtime::Runtime::with_api(broker, options, std::sync::Arc::new(http::Api))
    }

    /// The HTTP API over this runtime, as a router (for embedding, and for tests that drive
    /// it with `tower::ServiceExt::oneshot`). `deferred_topic` is where `/deferred-exec`
    /// publishes.
    pub fn api_router(
        &self,
        config: flow::model::HttpProducer,
        deferred_topic: &str,
    ) -> axum::Router {
        http::router(http::ApiState::new(runtime::api::ApiProducer {
            runtime: self.api_context(),
            config,
            deferred_topic: deferred_topic.to_owned(),
            source: "edaflow://embedded/api".to_owned(),
        }))
    }
}

/// The unit tests count script memory as the binary does.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: script::memory::MeteredAlloc<std::alloc::System> =
    script::memory::MeteredAlloc(std::alloc::System);
