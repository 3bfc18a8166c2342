//! Hot-reload latency benchmark (not a test).
//!
//! (a) Save-to-live: the real `FileWatcher` + `Reloader` loop in process (as `app::run`
//!     wires them), a handler that emits its version, and a publisher sending one event
//!     every millisecond. For each of 50 edits (atomic saves), the time from just before
//!     the write to the moment the first event handled by the new code is committed (seen
//!     on a broker tap). This includes the watcher's debounce window, the reload, and up
//!     to one publishing period.
//! (b) Reload work: 50 subscribers with 50 small scripts; one script changes per reload;
//!     the time of `Reloader::handle` itself (load, compile, diff, swap), i.e. what
//!     follows the debounce, over 50 reloads.
//!
//! Run with `cargo run --release --example reload_latency`. One `RESULT …` line is printed
//! per measurement.

mod common;

use std::collections::HashMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use edaflow::broker::{Backpressure, Broker, MemoryBroker, MemoryOptions};
use edaflow::event::Event;
use edaflow::flow::TopicPattern;
use edaflow::runtime::reload::{ReloadCause, ReloadReport, ReloadRequest, Reloader};
use edaflow::runtime::{prepare, Runtime, RuntimeOptions};
use edaflow::watch::{FileWatcher, DEFAULT_DEBOUNCE};

const EDITS: usize = 50;
const RELOADS: usize = 50;
const SUBSCRIBERS: usize = 50;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Flow text shared by both parts: an (unstarted) HTTP producer and a sink for `done`,
/// so that loading prints no "never produced/consumed" warnings into the timings.
const QUIET: &str = "[producers.api]\nkind = \"http\"\n\n[subscribers.sink]\ntopic = \"done\"\nscript = \"sink.rhai\"\n";

fn handler(version: &str) -> String {
    format!("emit(\"done\", #{{ id: event.data.id, version: \"{version}\" }});\n")
}

/// An editor's atomic save: temp file in the same folder, renamed over the target.
fn save_atomic(path: &Path, text: &str) -> Result<()> {
    let temp = path.with_extension("rhai.swp");
    std::fs::write(&temp, text)?;
    std::fs::rename(&temp, path)?;
    Ok(())
}

/// p-th percentile (nearest rank) of sorted samples, in milliseconds.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

async fn start(paths: &[PathBuf]) -> Result<(Reloader<MemoryBroker>, MemoryBroker)> {
    let broker = MemoryBroker::new(MemoryOptions::default());
    let mut runtime = Runtime::new(
        broker.clone(),
        RuntimeOptions {
            producers: false,
            ..RuntimeOptions::default()
        },
    );
    let prepared =
        prepare(paths).map_err(|report| edaflow::flow::diagnostic::render(&report, 100))?;
    runtime.apply(prepared).await?;
    Ok((Reloader::new(runtime, paths.to_vec()), broker))
}

/// (a) Save-to-live latency through the watcher.
async fn save_to_live() -> Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("a.rhai");
    std::fs::write(&script, handler("v0"))?;
    let flow = dir.path().join("flow.toml");
    std::fs::write(dir.path().join("sink.rhai"), "// events end here\n")?;
    std::fs::write(
        &flow,
        format!(
            "{QUIET}\n[subscribers.a]\ntopic = \"work\"\nscript = \"a.rhai\"\nemits = [\"done\"]\n"
        ),
    )?;
    let paths = vec![flow];
    let (reloader, broker) = start(&paths).await?;

    // First time each version was seen handling an event.
    let first_seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut tap = broker.tap(TopicPattern::parse("done")?, 1 << 16);
    let collector = tokio::spawn({
        let first_seen = first_seen.clone();
        async move {
            while let Some(event) = tap.recv().await {
                let at = Instant::now();
                if let Some(version) = event.data["version"].as_str() {
                    first_seen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(version.to_owned())
                        .or_insert(at);
                }
            }
        }
    });

    // The reload loop of `app::run`.
    let (requests, mut pending) = mpsc::channel::<ReloadRequest>(16);
    let tracker = TaskTracker::new();
    let token = CancellationToken::new();
    let watcher = FileWatcher::spawn(
        &paths,
        &reloader.watched_files(),
        DEFAULT_DEBOUNCE,
        requests,
        &tracker,
        token.clone(),
    )?;
    let reload_loop = tokio::spawn({
        let token = token.clone();
        let mut reloader = reloader;
        async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return reloader,
                    Some(request) = pending.recv() => {
                        reloader.handle(request).await;
                        watcher.update(&reloader.watched_files());
                    }
                }
            }
        }
    });

    // One event per millisecond.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (broker, stop) = (broker.clone(), stop.clone());
        async move {
            let ids = AtomicU64::new(0);
            let mut interval = tokio::time::interval(Duration::from_millis(1));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.load(Ordering::SeqCst) {
                interval.tick().await;
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let event = Event::new("work", "edaflow://bench/publisher", json!({ "id": id }));
                let _ = broker.publish(event, Backpressure::Wait).await;
            }
        }
    });

    let mut latencies = Vec::with_capacity(EDITS);
    for edit in 1..=EDITS {
        let version = format!("v{edit}");
        let before = Instant::now();
        save_atomic(&script, &handler(&version))?;
        let deadline = before + Duration::from_secs(10);
        let live = loop {
            if let Some(at) = first_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&version)
            {
                break *at;
            }
            if Instant::now() > deadline {
                return Err(format!("edit {edit}: {version} never ran").into());
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        latencies.push(live.saturating_duration_since(before));
        // Pace the edits so that two saves never share a debounce window.
        tokio::time::sleep(DEFAULT_DEBOUNCE * 3).await;
    }

    stop.store(true, Ordering::SeqCst);
    publisher.await?;
    token.cancel();
    let reloader = reload_loop.await?;
    tracker.close();
    tracker.wait().await;
    reloader
        .into_runtime()
        .shutdown(Duration::from_secs(5))
        .await;
    collector.abort();
    Ok(latencies)
}

/// (b) `Reloader::handle` with 50 subscribers, one script changing each time.
async fn reload_work() -> Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("sink.rhai"), "// events end here\n")?;
    let mut flow_text = format!("[flow]\nname = \"many\"\n\n{QUIET}");
    for n in 0..SUBSCRIBERS {
        std::fs::write(
            dir.path().join(format!("s{n}.rhai")),
            handler(&format!("s{n}-v0")),
        )?;
        flow_text.push_str(&format!(
            "\n[subscribers.s{n}]\ntopic = \"work.{n}\"\nscript = \"s{n}.rhai\"\nemits = [\"done\"]\n"
        ));
    }
    let flow = dir.path().join("flow.toml");
    std::fs::write(&flow, flow_text)?;
    let (mut reloader, _broker) = start(&[flow]).await?;

    let mut took = Vec::with_capacity(RELOADS);
    for reload in 1..=RELOADS {
        let n = reload % SUBSCRIBERS;
        std::fs::write(
            dir.path().join(format!("s{n}.rhai")),
            handler(&format!("s{n}-v{reload}")),
        )?;
        let started = Instant::now();
        let report = reloader.handle(ReloadRequest::new(ReloadCause::Http)).await;
        took.push(started.elapsed());
        match report {
            ReloadReport::Applied(outcome) if outcome.swapped == [format!("subscribers.s{n}")] => {}
            other => return Err(format!("reload {reload}: unexpected {other:?}").into()),
        }
    }
    reloader
        .into_runtime()
        .shutdown(Duration::from_secs(5))
        .await;
    Ok(took)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<()> {
    let mut latencies = save_to_live().await?;
    latencies.sort();
    println!(
        "RESULT save_to_live_ms edits={} p50={:.2} p99={:.2} max={:.2} debounce_ms={} publish_every_ms=1",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0),
        DEFAULT_DEBOUNCE.as_millis()
    );

    let mut took = reload_work().await?;
    took.sort();
    println!(
        "RESULT reload_handle_ms subscribers={SUBSCRIBERS} reloads={} p50={:.2} p99={:.2} max={:.2}",
        took.len(),
        percentile(&took, 50.0),
        percentile(&took, 99.0),
        percentile(&took, 100.0)
    );
    Ok(())
}
