//! W2 (see bench/README.md): a three-hop Rhai chain fed by an in-process generator,
//! measured by the runtime's own clock. (`examples/embed.rs` is the example of embedding
//! edaflow; this harness does the same with a generator and watches the metrics.)
//!
//!     cargo run --release --example w2_chain -- bench/flows/w2.toml 200000
//!     BENCH_BROKER=redis://127.0.0.1:6379 cargo run --release --example w2_chain   # on Redis
//!
//! Prints one `RESULT` line: chains, elapsed time from the first generated event to the
//! last chain's completion, chains/s, and the process's peak RSS.
//!
//! With `BENCH_WAIT_PAGE=1` (for a flow with an `http` producer, such as
//! `bench/flows/w2_console.toml`), the flow first runs without its generators until a
//! browser has the console open (a connection to the producer, then 3 s for the page to
//! load and open its stream), and only then generates: how `bench/console/cost.sh`
//! measures what an open console costs.
//!
//! With `BENCH_TRACE` set, the harness publishes the events itself (64 in flight, as the
//! generator does) instead of the flow's generators, so that three arms compare like for
//! like: `none` (no trace context), `context` (each event carries a `traceparent` and a
//! `tracestate`; span export off) and `export` (the same, with a span per handler run
//! exported over OTLP/HTTP to a loopback sink in this process that reads and discards each
//! request). The `RESULT` line then says `trace=ARM`.

mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edaflow::broker::{Backpressure, Broker, MemoryBroker, MemoryOptions};
use edaflow::event::Event;
use edaflow::flow::model::ProducerKind;
use edaflow::runtime::{prepare, Runtime, RuntimeOptions};
use futures_util::StreamExt as _;

/// Sized as `edaflow run` sizes its runtime (`BENCH_THREADS` overrides), so that the
/// figures are the binary's.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::runtime()?.block_on(measure())
}

async fn measure() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let flow = PathBuf::from(args.next().unwrap_or_else(|| "bench/flows/w2.toml".into()));
    let count: Option<u64> = args.next().map(|n| n.parse()).transpose()?;
    let mut prepared = prepare(&[flow])?;
    // The generator's `count` can be overridden from the command line.
    let mut flows = (*prepared.flows).clone();
    let mut total = 0;
    for producer in flows.producers.values_mut() {
        if let ProducerKind::Generator(g) = &mut producer.kind {
            if let Some(n) = count {
                g.count = n;
            }
            total += g.count;
        }
    }
    prepared.flows = std::sync::Arc::new(flows);

    match common::redis_url() {
        Some(url) => run(common::redis_broker(&url, "w2").await?, prepared, total).await,
        None => run(MemoryBroker::new(MemoryOptions::default()), prepared, total).await,
    }
}

async fn run<B: Broker>(
    broker: B,
    prepared: edaflow::runtime::Prepared,
    total: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let trace = std::env::var("BENCH_TRACE").ok();
    let tracing = match trace.as_deref() {
        None | Some("none" | "context") => None,
        Some("export") => Some(edaflow::otel::Tracing::start(&discarding_sink().await?)?),
        Some(other) => return Err(format!("BENCH_TRACE={other}: none, context or export").into()),
    };
    // The events the harness publishes itself (`BENCH_TRACE`): the generators' topic and
    // data, `total` of them.
    let mut own = None;
    let mut prepared = prepared;
    if trace.is_some() {
        let mut flows = (*prepared.flows).clone();
        for producer in flows.producers.values() {
            if let ProducerKind::Generator(g) = &producer.kind {
                own = Some((g.topic.clone(), g.data.clone()));
            }
        }
        flows
            .producers
            .retain(|_, p| !matches!(p.kind, ProducerKind::Generator(_)));
        prepared.flows = std::sync::Arc::new(flows);
    }
    let publisher = broker.clone();
    let mut runtime = Runtime::new(
        broker,
        RuntimeOptions {
            producers: true,
            tracing: tracing.clone(),
            ..RuntimeOptions::default()
        },
    );
    let last = runtime.metrics().subscriber("count");
    if std::env::var_os("BENCH_WAIT_PAGE").is_some() {
        let mut waiting = prepared.clone();
        let mut flows = (*waiting.flows).clone();
        flows
            .producers
            .retain(|_, p| !matches!(p.kind, ProducerKind::Generator(_)));
        waiting.flows = std::sync::Arc::new(flows);
        runtime.apply(waiting).await?;
        eprintln!("waiting for a browser on the console");
        let waited = Instant::now();
        while runtime
            .metrics()
            .http
            .connections_open
            .load(Ordering::Relaxed)
            == 0
        {
            if waited.elapsed() > Duration::from_secs(60) {
                return Err("no browser opened the console within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let started = Instant::now();
    runtime.apply(prepared).await?;
    if let Some((topic, data)) = own {
        let traced = trace.as_deref() != Some("none");
        tokio::spawn(publish_own(publisher, topic, data, total, traced));
    }
    loop {
        if last.handled.load(Ordering::Relaxed) >= total {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err("the chain did not finish within 300 s".into());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let elapsed = started.elapsed();
    let arm = trace.map(|t| format!(" trace={t}")).unwrap_or_default();
    println!(
        "RESULT chains={total} elapsed_ms={:.1} chains_per_s={:.0} peak_rss_kib={}{arm}",
        elapsed.as_secs_f64() * 1000.0,
        total as f64 / elapsed.as_secs_f64(),
        common::peak_rss_kib()
    );
    runtime.shutdown(Duration::from_secs(1)).await;
    if let Some(tracing) = tracing {
        let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    }
    Ok(())
}

/// Publishes `total` events as a generator does (64 in flight), each with a trace context
/// when `traced`.
async fn publish_own<B: Broker>(
    broker: B,
    topic: String,
    data: serde_json::Value,
    total: u64,
    traced: bool,
) {
    let parent = serde_json::Value::from("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    let state = serde_json::Value::from("bench=w2");
    let mut publishes = futures_util::stream::iter(0..total)
        .map(|_| {
            let mut event = Event::new(topic.clone(), "edaflow://w2/harness", data.clone());
            if traced {
                event
                    .extensions
                    .insert("traceparent".into(), parent.clone());
                event.extensions.insert("tracestate".into(), state.clone());
            }
            let broker = broker.clone();
            async move { broker.publish(event, Backpressure::Wait).await }
        })
        .buffered(64);
    while let Some(published) = publishes.next().await {
        if let Err(e) = published {
            eprintln!("publish failed: {e}");
            return;
        }
    }
}

/// A loopback OTLP/HTTP sink: reads each request whole, answers 200, keeps nothing.
/// Returns its traces URL.
async fn discarding_sink() -> Result<String, Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(|body: axum::body::Bytes| async move {
            drop(body);
            ""
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/v1/traces"))
}
