//! Embedding edaflow in a Rust program: load a flow folder, run it on the memory broker,
//! publish an event, read the result, shut down.
//!
//!     cargo run --example embed
//!
//! It runs the order saga of `examples/saga/` without its HTTP server: the program
//! publishes an order itself, waits for `order.shipped`, and reads the order's final state
//! from the saga's `orders` store.

use std::path::Path;
use std::time::Duration;

use edaflow::broker::{Backpressure, Broker, MemoryBroker, MemoryOptions};
use edaflow::event::Event;
use edaflow::flow::TopicPattern;
use edaflow::runtime::{prepare, Runtime, RuntimeOptions};
use miette::{miette, IntoDiagnostic};
use serde_json::json;

/// Counts what each script run allocates, so that the per-run memory limit holds here as
/// it does in the `edaflow` binary.
#[global_allocator]
static ALLOCATOR: edaflow::script::memory::MeteredAlloc<std::alloc::System> =
    edaflow::script::memory::MeteredAlloc(std::alloc::System);

#[tokio::main]
async fn main() -> miette::Result<()> {
    // Handlers' `log(…)` lines and the runtime's own go through `tracing`.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();

    // Load, validate and compile every flow file of the folder and the scripts they use;
    // a mistake comes back as a diagnostic pointing at the file and line.
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/saga");
    let prepared = prepare(&[folder])?;

    // Producers (the HTTP server) stay off by default: this program is the producer.
    let broker = MemoryBroker::new(MemoryOptions::default());
    let mut runtime = Runtime::new(broker.clone(), RuntimeOptions::default());
    let mut shipped = broker.tap(TopicPattern::parse("order.shipped").into_diagnostic()?, 16);
    runtime.apply(prepared).await?;

    let order = json!({"order_id": 7, "sku": "kettle", "qty": 1, "total": 24.5, "card": "4242"});
    let placed = Event::new("order.placed", "edaflow://embed", order);
    broker.publish(placed, Backpressure::Wait).await?;

    let event = tokio::time::timeout(Duration::from_secs(5), shipped.recv())
        .await
        .into_diagnostic()?
        .ok_or_else(|| miette!("the broker closed before the order shipped"))?;
    println!("{}: {}", event.topic, event.data);

    // Shutting down lets the last handlers finish; the stores outlive the runtime.
    let report = runtime.shutdown(Duration::from_secs(1)).await;
    let stores = broker.stores().ok_or_else(|| miette!("no stores"))?;
    let state = stores.get("orders", "order:7").into_diagnostic()?;
    println!("orders/order:7: {}", state.unwrap_or_default());
    println!("stopped; {} event(s) left unfinished", report.unfinished);
    Ok(())
}
