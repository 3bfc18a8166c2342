//! W3 (see bench/README.md): 20,000 deferred jobs with a 1 s delay, enqueued in one burst
//! into a queue with 50 competing workers running a Rhai handler: on the memory broker, or
//! on Redis when `BENCH_BROKER=redis://…` is set (a fresh namespace per run).
//!
//!     cargo run --release --example w3_deferred -- bench/flows/w3.toml 20000
//!     BENCH_BROKER=redis://127.0.0.1:6379 cargo run --release --example w3_deferred
//!
//! Lateness is the handler's own `now_ms()` (its first statement) minus the item's due
//! time (enqueue time + delay), in milliseconds, as BullMQ's benchmark computes it.
//! Prints one `RESULT` line; with `BENCH_W3_DUMP=FILE`, also writes each job's due time
//! (ms after the first) and lateness to FILE, in due order.
//!
//! The handlers' `done` events are collected with a tap on the memory broker (in process,
//! free). On Redis they are read from the `done` stream once it holds one per job: a tap
//! there would make Redis publish every enqueued item and every `done` event to this
//! harness (40,000 messages a run) and the harness parse them, load that the workload
//! itself does not have (BullMQ's benchmark records in its worker).
//!
//! With `BENCH_W3_RECORD=log` and `bench/flows/w3_inproc.toml`, the handler records as
//! BullMQ's worker does, in the process: it logs `w3 {task_id} {started}`, which this
//! harness reads from the log (a tracing layer), and emits nothing, so each job's commit
//! is its acknowledgement alone. Redis then does per job what it does for BullMQ's
//! `removeOnComplete` jobs: take it, and remove it once done.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edaflow::broker::{Broker, MemoryBroker, MemoryOptions};
use edaflow::event::Event;
use edaflow::flow::pattern::TopicPattern;
use edaflow::runtime::{prepare, Runtime, RuntimeOptions};
use futures_util::{StreamExt, TryStreamExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

/// Sized as `edaflow run` sizes its runtime (`BENCH_THREADS` overrides), so that the
/// figures are the binary's.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::runtime()?.block_on(measure())
}

async fn measure() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let flow = PathBuf::from(args.next().unwrap_or_else(|| "bench/flows/w3.toml".into()));
    let n: usize = args
        .next()
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(20_000);
    let prepared = prepare(&[flow])?;
    let delay = prepared
        .flows
        .queues
        .get("jobs")
        .map(|q| q.delay)
        .ok_or("the flow needs [queues.jobs]")?;
    let logged = (std::env::var("BENCH_W3_RECORD").as_deref() == Ok("log")).then(record_logs);
    match common::redis_url() {
        Some(url) => {
            let broker = common::redis_broker(&url, "w3").await?;
            if let Some(lines) = logged {
                return run(broker, prepared, n, delay, Collect::Log(lines)).await;
            }
            let collect = Collect::Stream {
                conn: redis::Client::open(url)?
                    .get_multiplexed_async_connection()
                    .await?,
                key: format!("{}t:done", broker.prefix()),
            };
            run(broker, prepared, n, delay, collect).await
        }
        None => {
            let broker = MemoryBroker::new(MemoryOptions::default());
            if let Some(lines) = logged {
                return run(broker, prepared, n, delay, Collect::Log(lines)).await;
            }
            // Before the runtime starts, so that no `done` event goes by unseen.
            let tap = broker.tap(TopicPattern::parse("done")?, n + 1);
            run(broker, prepared, n, delay, Collect::Tap(tap)).await
        }
    }
}

/// How the handlers' start times reach the harness (see the module docs).
enum Collect {
    Tap(tokio::sync::mpsc::Receiver<std::sync::Arc<Event>>),
    Stream {
        conn: redis::aio::MultiplexedConnection,
        key: String,
    },
    /// `(task_id, started)` from the handlers' `w3 …` log lines.
    Log(Arc<Mutex<Vec<(u64, f64)>>>),
}

/// Installs a tracing layer that keeps the handlers' `w3 {task_id} {started}` log lines.
fn record_logs() -> Arc<Mutex<Vec<(u64, f64)>>> {
    let lines = Arc::new(Mutex::new(Vec::with_capacity(20_000)));
    tracing_subscriber::registry()
        .with(W3Lines(lines.clone()))
        .init();
    lines
}

struct W3Lines(Arc<Mutex<Vec<(u64, f64)>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for W3Lines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "edaflow::script" {
            return;
        }
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let mut parts = message.0.split(' ');
        if parts.next() != Some("w3") {
            return;
        }
        let id = parts.next().and_then(|p| p.parse().ok());
        let at = parts.next().and_then(|p| p.parse().ok());
        if let (Some(id), Some(at)) = (id, at) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((id, at));
        }
    }
}

/// Until `n` `done` events have come (or 60 s passed): each event's data.
async fn collect_done(
    collect: Collect,
    n: usize,
) -> Result<Vec<serde_json::Value>, Box<dyn std::error::Error>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    match collect {
        Collect::Tap(mut done) => {
            // Drained every few ms, never waited on: a receiver parked on the tap would be
            // woken by nearly every `done` event, and those wake-ups (a futex each, and the
            // tap's lock held meanwhile) would take CPU from the workers being measured.
            // The tap holds `n + 1` events, so nothing is dropped between looks; the
            // lateness is the handlers' own clock, so when they are seen does not count.
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                while let Ok(event) = done.try_recv() {
                    out.push(event.data.clone());
                }
                if out.len() >= n {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("{} of {n} jobs done after 60 s", out.len()).into());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(out)
        }
        Collect::Log(lines) => loop {
            let got = lines.lock().unwrap_or_else(|e| e.into_inner()).len();
            if got >= n {
                let lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                return Ok(lines
                    .iter()
                    .map(|(id, at)| serde_json::json!({"task_id": id, "started": at}))
                    .collect());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("{got} of {n} jobs done after 60 s").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        },
        Collect::Stream { mut conn, key } => {
            loop {
                let len: usize = redis::cmd("XLEN").arg(&key).query_async(&mut conn).await?;
                if len >= n {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("{len} of {n} jobs done after 60 s").into());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await?;
            entries
                .ids
                .iter()
                .map(|entry| {
                    let json: String = entry.get("e").ok_or("an entry without its event")?;
                    let event: Event = serde_json::from_str(&json)?;
                    Ok(event.data)
                })
                .collect()
        }
    }
}

async fn run<B: Broker>(
    broker: B,
    prepared: edaflow::runtime::Prepared,
    n: usize,
    delay: Duration,
    collect: Collect,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut runtime = Runtime::new(
        broker.clone(),
        RuntimeOptions {
            producers: false,
            ..RuntimeOptions::default()
        },
    );
    runtime.apply(prepared).await?;

    // The burst: every item is due `delay` after its own enqueue.
    let t0 = unix_ms();
    let started = Instant::now();
    // Up to 64 enqueues in flight at once: on Redis they share one pipelined connection
    // (the bulk enqueue of the workload); on the memory broker it makes no difference.
    let due: Vec<f64> = futures_util::stream::iter(0..n)
        .map(|i| {
            let broker = broker.clone();
            async move {
                let item = Event::new(
                    "jobs",
                    "edaflow://w3/bench",
                    serde_json::json!({"task_id": i, "description": "Process data files"}),
                );
                let due = unix_ms() + delay.as_secs_f64() * 1000.0;
                broker.enqueue("jobs", item, delay).await.map(|()| (i, due))
            }
        })
        .buffer_unordered(64)
        .try_fold(vec![0.0f64; n], |mut due, (i, at)| async move {
            due[i] = at;
            Ok(due)
        })
        .await?;
    let enqueue_ms = started.elapsed().as_secs_f64() * 1000.0;

    let mut lateness = Vec::with_capacity(n);
    let mut seen = vec![false; n];
    let mut duplicates = 0;
    let (mut first, mut last) = (f64::MAX, 0.0f64);
    // Each job's own lateness, for BENCH_W3_DUMP.
    let mut late_of = vec![0.0f64; n];
    for data in collect_done(collect, n).await? {
        let id = data["task_id"].as_u64().ok_or("task_id")? as usize;
        let at = data["started"].as_f64().ok_or("started")?;
        if std::mem::replace(&mut seen[id], true) {
            duplicates += 1;
            continue;
        }
        late_of[id] = at - due[id];
        lateness.push(late_of[id]);
        first = first.min(at);
        last = last.max(at);
    }
    if lateness.len() < n {
        // Duplicates stood in for jobs not seen yet: the figures would be wrong.
        return Err(format!(
            "{duplicates} duplicate done events; {} of {n} jobs seen",
            lateness.len()
        )
        .into());
    }
    if let Ok(path) = std::env::var("BENCH_W3_DUMP") {
        // One line per job, in due order: ms after the first due time, then lateness.
        let mut rows: Vec<(f64, f64)> = due.iter().copied().zip(late_of).collect();
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        let t = rows[0].0;
        let text: String = rows
            .iter()
            .map(|(d, l)| format!("{:.1} {l:.1}\n", d - t))
            .collect();
        std::fs::write(path, text)?;
    }
    lateness.sort_by(|a, b| a.total_cmp(b));
    let drain_s = ((last - first) / 1000.0).max(0.001);
    println!(
        "RESULT n={n} delay_ms={} workers=50 enqueue_ms={enqueue_ms:.1} total_ms={:.1} drain_ms={:.1} drain_jobs_per_s={:.0} late_min_ms={:.1} late_p10_ms={:.1} late_p50_ms={:.1} late_p99_ms={:.1} late_max_ms={:.1} duplicates={duplicates} peak_rss_kib={}",
        delay.as_millis(),
        last - t0,
        last - first,
        n as f64 / drain_s,
        lateness[0],
        pct(&lateness, 10.0),
        pct(&lateness, 50.0),
        pct(&lateness, 99.0),
        lateness[lateness.len() - 1],
        common::peak_rss_kib()
    );
    runtime.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
