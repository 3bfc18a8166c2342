//! Runtimes in process: starting one on a broker with `flow.toml` of a flow folder
//! (`Runtime::new` + `apply`), applying the folder again, a `Reloader` over flow files,
//! taps that collect what the broker carries, and a capture of what the runtime logs.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

use edaflow::broker::{Backpressure, Broker, MemoryBroker, MemoryOptions};
use edaflow::event::Event;
use edaflow::flow::TopicPattern;
use edaflow::runtime::reload::Reloader;
use edaflow::runtime::{Prepared, ReloadOutcome, Runtime, RuntimeOptions};
use tokio::sync::mpsc;

use super::FlowDir;

/// The options of most in-process tests: no producers (the test publishes itself).
pub fn options() -> RuntimeOptions {
    RuntimeOptions {
        producers: false,
        ..RuntimeOptions::default()
    }
}

/// Applies `flow.toml` of `dir` (again) and returns the outcome, which must be ok; panics
/// with the rendered diagnostics when the flow is invalid, and with the error when it
/// cannot be applied.
pub async fn apply<B: Broker>(runtime: &mut Runtime<B>, dir: &FlowDir) -> ReloadOutcome {
    let outcome = runtime
        .apply(dir.prepare("flow.toml"))
        .await
        .unwrap_or_else(|e| panic!("flow.toml cannot be applied: {e}"));
    assert!(outcome.ok, "{outcome:?}");
    outcome
}

/// A runtime on `broker` with `options`, running `flow.toml` of `dir`, and the outcome of
/// that first `apply`.
pub async fn start_with<B: Broker>(
    broker: B,
    options: RuntimeOptions,
    dir: &FlowDir,
) -> (Runtime<B>, ReloadOutcome) {
    let mut runtime = Runtime::new(broker, options);
    let outcome = apply(&mut runtime, dir).await;
    (runtime, outcome)
}

/// A runtime with `options()` on a fresh memory broker, running `flow.toml` of `dir`.
pub async fn start(dir: &FlowDir) -> (Runtime<MemoryBroker>, MemoryBroker) {
    let broker = MemoryBroker::new(MemoryOptions::default());
    let (runtime, _) = start_with(broker.clone(), options(), dir).await;
    (runtime, broker)
}

/// Loads and compiles the flow files `paths`, panicking with the rendered diagnostics
/// when they are invalid.
pub fn prepare(paths: &[PathBuf]) -> Prepared {
    edaflow::runtime::prepare(paths).unwrap_or_else(|report| {
        panic!(
            "{paths:?} should be valid:\n{}",
            edaflow::flow::diagnostic::render(&report, 100)
        )
    })
}

/// A reloader over the flow files `paths`, whose runtime on `broker` with `options` runs
/// their first generation; with that generation's outcome.
pub async fn start_reloader<B: Broker>(
    broker: B,
    options: RuntimeOptions,
    paths: Vec<PathBuf>,
) -> (Reloader<B>, ReloadOutcome) {
    let mut runtime = Runtime::new(broker, options);
    let outcome = runtime
        .apply(prepare(&paths))
        .await
        .unwrap_or_else(|e| panic!("generation 1 cannot be applied: {e}"));
    assert!(outcome.ok, "{outcome:?}");
    (Reloader::new(runtime, paths), outcome)
}

/// Publishes an event on `topic` from `source` with `data` (waiting for room); returns it.
pub async fn publish<B: Broker>(
    broker: &B,
    topic: &str,
    source: &str,
    data: serde_json::Value,
) -> Event {
    let event = Event::new(topic, source, data);
    broker
        .publish(event.clone(), Backpressure::Wait)
        .await
        .unwrap_or_else(|e| panic!("publish to `{topic}`: {e}"));
    event
}

/// Everything `broker` carries on topics (and into queues) matching `pattern`, from now on.
pub fn tap<B: Broker>(broker: &B, pattern: &str) -> mpsc::Receiver<Arc<Event>> {
    let pattern = TopicPattern::parse(pattern).expect("test pattern");
    broker.tap(pattern, 100_000)
}

/// Everything a tap has seen so far.
pub fn drain(tap: &mut mpsc::Receiver<Arc<Event>>) -> Vec<Arc<Event>> {
    let mut events = Vec::new();
    while let Ok(event) = tap.try_recv() {
        events.push(event);
    }
    events
}

/// A `tracing` writer that keeps everything in memory, for asserting log lines.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Installs the capture as this thread's default subscriber, at `INFO` (paused-time
    /// tests run on one thread, so every task of the runtime logs through it).
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// The warnings logged by this test binary, from any thread. A global subscriber, not
    /// a scoped one: tracing caches per call site whether anyone listens, and a
    /// thread-local subscriber can miss events once another test thread (with none) has
    /// hit the call site first.
    pub fn global_warnings() -> &'static LogCapture {
        static WARNINGS: LazyLock<LogCapture> = LazyLock::new(|| {
            let captured = LogCapture::default();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(captured.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::WARN)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
            captured
        });
        &WARNINGS
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
