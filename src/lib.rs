//! edaflow: a runtime for event-driven systems described in files.
//!
//! Flow files (TOML) declare producers, topic subscribers, queues, relays and chains;
//! Rhai scripts handle each event. Modules, in dependency order:
//!
//! - [`event`]: the CloudEvents envelope.
//! - [`flow`]: TOML to a validated, immutable flow set, with diagnostics (no tokio).
//! - [`script`]: the Rhai engine, host API, sandbox limits.
//! - [`broker`]: the broker contract and the memory broker.
//! - [`runtime`]: running components, handler execution, generations.
//! - [`http`]: the HTTP producer (its accept loop and clocks, ingest, health, metrics, tail).
//! - [`flowtest`]: `edaflow test`.
//! - [`client`], [`cli`], [`app`]: the command line.
//! - [`article`]: the article's own commands, as built-in flows.

pub mod app;
pub mod article;
pub mod broker;
pub mod cli;
pub mod client;
pub mod event;
pub mod flow;
pub mod flowtest;
pub mod http;
pub mod runtime;
pub mod script;
pub mod store;
pub mod watch;

pub use app::Error;

/// The unit tests count script memory as the binary does.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: script::memory::MeteredAlloc<std::alloc::System> =
    script::memory::MeteredAlloc(std::alloc::System);
