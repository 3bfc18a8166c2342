//! Wires the pieces for each command: flows + broker + runtime + HTTP for `run`, and the
//! client side for `publish` and `tail`. Owns the tokio runtime and shutdown.

use std::future::Future;
use std::io::{BufRead, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tracing::{info, warn};

use crate::article::{ArticleCommand, ArticleError};
use crate::broker::{
    Broker, BrokerError, BrokerUrl, MemoryBroker, MemoryOptions, RedisBroker, RedisOptions,
};
use crate::cli::{Cli, Command, DeadAction, Remote, RunArgs};
use crate::client::{ClientError, Target};
use crate::flow::diagnostic::{render, FlowReport};
use crate::runtime::reload::{ReloadCause, ReloadRequest, Reloader};
use crate::runtime::{prepare, Prepared, Runtime, RuntimeError, RuntimeOptions};
use crate::watch::{FileWatcher, WatchError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything that can end a command with a failure.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum Error {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Flow(#[from] FlowReport),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Watch(#[from] WatchError),
    #[error("{failed} of {total} flow tests failed")]
    #[diagnostic(code(edaflow::test::failed))]
    TestsFailed { failed: usize, total: usize },
    #[error("invalid JSON on line {line}")]
    #[diagnostic(
        code(edaflow::publish::json),
        help("pass one JSON value, e.g. '{{\"order_id\": 1}}'")
    )]
    BadJson {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Article(#[from] ArticleError),
    #[error("cannot start the async runtime")]
    #[diagnostic(code(edaflow::io))]
    Io(#[from] std::io::Error),
}

/// Runs one parsed command line.
///
/// # Errors
/// What the command failed on, as a diagnostic.
pub fn main(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Run(args) => run_blocking(args),
        Command::ApiServer(args) => {
            let listen = Some(args.listen);
            run_article(ArticleCommand::ApiServer, &args.redis.redis, listen)
        }
        Command::Consumer(args) => {
            let command = match (args.topic, args.master) {
                (Some(topic), _) => ArticleCommand::Topic(topic),
                (None, true) => ArticleCommand::Master,
                (None, false) => ArticleCommand::Worker { poll: args.poll },
            };
            run_article(command, &args.redis.redis, None)
        }
        Command::Validate { flows } => validate(&flows),
        Command::Test { flows } => {
            let prepared = load(&flows)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()?;
            rt.block_on(test(&prepared))
        }
        Command::Publish {
            topic,
            data,
            remote,
        } => client_runtime()?.block_on(publish(&topic, &data, &remote)),
        Command::Query {
            topic,
            data,
            remote,
        } => client_runtime()?.block_on(query(&topic, &data, &remote)),
        Command::Trace {
            correlation_id,
            remote,
        } => client_runtime()?.block_on(trace(&correlation_id, &remote)),
        Command::Graph {
            flows,
            format,
            live,
            token,
        } => {
            let prepared = load(&flows)?;
            let counts = match live {
                None => crate::flow::graph::LiveCounts::default(),
                Some(url) => client_runtime()?.block_on(live_counts(&url, token))?,
            };
            let format = match format {
                crate::cli::GraphFormatArg::Mermaid => crate::flow::graph::GraphFormat::Mermaid,
                crate::cli::GraphFormatArg::Dot => crate::flow::graph::GraphFormat::Dot,
            };
            print!(
                "{}",
                crate::flow::graph::render(&prepared.flows, format, &counts)
            );
            Ok(())
        }
        Command::Dead { action } => client_runtime()?.block_on(dead(action)),
        Command::Tail {
            pattern,
            json,
            remote,
        } => client_runtime()?.block_on(tail(&pattern, json, &remote)),
    }
}

/// One of the article's commands: `edaflow run` of its built-in flow, written to a
/// temporary folder, on Redis (namespace `article`), without watching files.
fn run_article(command: ArticleCommand, redis: &str, listen: Option<String>) -> Result<(), Error> {
    let text = command.flow_text()?;
    let dir = tempfile::Builder::new()
        .prefix("edaflow-article-")
        .tempdir()
        .map_err(|source| ArticleError::Write { source })?;
    let path = dir.path().join(command.file_name());
    std::fs::write(&path, text).map_err(|source| ArticleError::Write { source })?;
    let mut argv: Vec<std::ffi::OsString> = vec!["edaflow".into(), "run".into(), path.into()];
    for arg in ["--no-watch", "--namespace", "article", "--broker", redis] {
        argv.push(arg.into());
    }
    if let Some(listen) = listen {
        argv.push("--listen".into());
        argv.push(listen.into());
    }
    // Parsed like a command line, so every other option of `run` keeps its default.
    let args = match <Cli as clap::Parser>::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Run(args),
            ..
        }) => args,
        Ok(_) => unreachable!("the arguments start with `run`"),
        Err(e) => e.exit(),
    };
    info!(flow = %format!("flows/article/{}", command.file_name()), redis = %redis, "the article's command, as a built-in flow");
    let result = run_blocking(args);
    drop(dir);
    result
}

/// `edaflow run` on a runtime of its own, sized by `--threads` (see `runtime_threads`),
/// until a shutdown signal.
fn run_blocking(args: RunArgs) -> Result<(), Error> {
    let prepared = load(&args.flows)?;
    let rt = build_runtime(args.threads, &broker_url(&args, &prepared))?;
    let result = rt.block_on(async {
        let signals = Signals::listen();
        run_prepared(args, prepared, signals.nth(1), signals.nth(2)).await
    });
    // A handler still running on a blocking thread (it was left behind by a forced stop)
    // must not hold the exit up.
    rt.shutdown_background();
    result
}

/// Counts Ctrl-C and SIGTERM: the first asks for a shutdown, the second for an exit now.
#[derive(Clone)]
struct Signals(tokio::sync::watch::Receiver<u32>);

impl Signals {
    /// Starts listening (inside the tokio runtime); the listener lives as long as the
    /// runtime.
    fn listen() -> Signals {
        let (count, seen) = tokio::sync::watch::channel(0u32);
        let signal = shutdown_signal_repeating();
        // Untracked on purpose: it must outlive every tracker, to see the second signal.
        tokio::spawn(async move {
            let mut signal = signal;
            loop {
                signal.recv().await;
                count.send_modify(|n| *n += 1);
            }
        });
        Signals(seen)
    }

    /// Resolves once `n` signals have arrived.
    fn nth(&self, n: u32) -> impl Future<Output = ()> + use<> {
        let mut seen = self.0.clone();
        async move {
            if seen.wait_for(|count| *count >= n).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A multi-thread tokio runtime with `runtime_threads(asked, broker)` workers (the count
/// is logged). The benchmark harnesses build theirs here too, so their figures are the
/// binary's.
///
/// # Errors
/// The runtime could not start (no threads, no I/O driver).
pub fn build_runtime(asked: Option<u16>, broker: &str) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = runtime_threads(asked, broker);
    info!(threads, "starting the runtime");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
}

/// The runtime's worker threads: `asked` if given, else one per CPU, less one when the
/// broker is a Redis server on this machine, at least one. Redis runs its commands on one
/// thread; with as many busy runtime threads as cores, that thread waits for a core while
/// edaflow waits for Redis. Measured on 2 cores with Redis on loopback (BENCHMARKS.md,
/// the 2026-11-27 sitting): one runtime thread instead of two gave 40-70 % more chains/s and halved
/// the query round trip's p99, while on the memory broker two threads stay ahead.
pub fn runtime_threads(asked: Option<u16>, broker: &str) -> usize {
    if let Some(n) = asked {
        return usize::from(n).max(1);
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let redis_here =
        matches!(BrokerUrl::parse(broker), Ok(BrokerUrl::Redis(url)) if url.is_local());
    if redis_here {
        cores.saturating_sub(1).max(1)
    } else {
        cores
    }
}

/// The broker URL in effect. Precedence: --broker, then EDAFLOW_BROKER (clap reads both),
/// then `[flow] broker`, then `memory`.
fn broker_url(args: &RunArgs, prepared: &Prepared) -> String {
    args.broker
        .clone()
        .or_else(|| prepared.flows.files.iter().find_map(|f| f.broker.clone()))
        .unwrap_or_else(|| "memory".to_owned())
}

/// Loads and compiles, printing warnings to stderr.
fn load(flows: &[PathBuf]) -> Result<Prepared, Error> {
    let prepared = prepare(flows)?;
    for warning in &prepared.warnings {
        eprintln!("{}", render(warning, terminal_width()));
    }
    Ok(prepared)
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100)
}

fn validate(flows: &[PathBuf]) -> Result<(), Error> {
    let prepared = load(flows)?;
    let f = &prepared.flows;
    println!(
        "ok: {} file(s), {} producer(s), {} subscriber(s), {} queue(s), {} relay(s), {} chain(s), {} test(s); {} warning(s)",
        f.files.len(),
        f.producers.len(),
        f.subscribers.len(),
        f.queues.len(),
        f.relays.len(),
        f.chains.len(),
        f.tests.len(),
        prepared.warnings.len()
    );
    Ok(())
}

/// `edaflow run`: starts everything and runs until `shutdown` resolves.
///
/// # Errors
/// Invalid flows, or a component that cannot start (a port in use).
pub async fn run(args: RunArgs, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let prepared = load(&args.flows)?;
    run_prepared(args, prepared, shutdown, std::future::pending()).await
}

/// As `run`, for flows already loaded; `now` (a second signal) cuts a shutdown short.
async fn run_prepared(
    args: RunArgs,
    prepared: Prepared,
    shutdown: impl Future<Output = ()>,
    now: impl Future<Output = ()>,
) -> Result<(), Error> {
    // Every reload trigger feeds one channel; one loop applies them in order. The watcher
    // starts before the first generation does, and one check right after startup catches
    // an edit made while starting.
    let (requests, pending) = mpsc::channel::<ReloadRequest>(16);
    let tracker = TaskTracker::new();
    let token = CancellationToken::new();
    let watcher = if args.no_watch {
        None
    } else {
        Some(FileWatcher::spawn(
            &args.flows,
            &prepared.files,
            args.debounce,
            requests.clone(),
            &tracker,
            token.clone(),
        )?)
    };

    let url = broker_url(&args, &prepared);
    let setup = Setup {
        args,
        prepared,
        requests,
        pending,
        tracker,
        token,
        watcher,
    };
    match BrokerUrl::parse(&url)? {
        BrokerUrl::Memory => {
            let broker = MemoryBroker::new(MemoryOptions {
                full_wait: setup.args.full_wait,
                ..MemoryOptions::default()
            });
            run_on(broker, "memory".to_owned(), setup, shutdown, now).await
        }
        BrokerUrl::Redis(url) => {
            let namespace = setup.args.namespace.clone().unwrap_or_else(|| {
                setup
                    .prepared
                    .flows
                    .files
                    .first()
                    .map_or_else(|| "default".to_owned(), |f| f.name.clone())
            });
            let options = RedisOptions {
                namespace,
                claim_idle: setup.args.claim_idle,
                take_ahead: setup.args.take_ahead,
                hold_ahead: setup.args.hold_ahead,
                response_timeout: setup.args.redis_timeout,
                tls_ca: setup.args.redis_ca.clone(),
                unread_retention: Some(setup.args.unread_retention)
                    .filter(|retention| !retention.is_zero()),
                ..RedisOptions::default()
            };
            let broker = RedisBroker::connect(&url, options).await?;
            run_on(broker, url.to_string(), setup, shutdown, now).await
        }
    }
}

/// What `run` prepares before it knows the broker.
struct Setup {
    args: RunArgs,
    prepared: Prepared,
    requests: mpsc::Sender<ReloadRequest>,
    pending: mpsc::Receiver<ReloadRequest>,
    tracker: TaskTracker,
    token: CancellationToken,
    watcher: Option<std::sync::Arc<FileWatcher>>,
}

/// The rest of `run`, on one broker.
async fn run_on<B: Broker>(
    broker: B,
    broker_name: String,
    setup: Setup,
    shutdown: impl Future<Output = ()>,
    now: impl Future<Output = ()>,
) -> Result<(), Error> {
    let Setup {
        args,
        prepared,
        requests,
        mut pending,
        tracker,
        token,
        watcher,
    } = setup;
    let durable = broker_name != "memory";
    let mut runtime = Runtime::new(
        broker,
        RuntimeOptions {
            roles: args.roles.clone(),
            listen: args.listen.clone(),
            token: args.token.clone(),
            producers: true,
            ..RuntimeOptions::default()
        },
    );
    let outcome = runtime.apply(prepared).await?;
    runtime.set_reload_channel(requests.clone());
    spawn_sighup(requests.clone(), &tracker, token.clone());
    if watcher.is_some() {
        let _ = requests
            .send(ReloadRequest::new(ReloadCause::Startup))
            .await;
    }
    drop(requests);
    info!(
        generation = outcome.generation,
        components = outcome.added.len(),
        took_ms = format!("{:.1}", outcome.took_ms),
        broker = %broker_name,
        watching = !args.no_watch,
        "edaflow running"
    );

    let mut reloader = Reloader::new(runtime, args.flows.clone());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(request) = pending.recv() => {
                reloader.handle(request).await;
                if let Some(watcher) = &watcher {
                    watcher.update(&reloader.watched_files());
                }
            }
        }
    }
    token.cancel();
    tracker.close();
    // The watcher and the SIGHUP listener end at once; a reload in progress is not
    // waited for past a moment.
    let _ = tokio::time::timeout(Duration::from_millis(200), tracker.wait()).await;
    // A durable broker keeps what is queued for the next process: no drain, only the
    // events in flight finish.
    let grace = if durable { Duration::ZERO } else { args.grace };
    info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: ingest stopped, draining (a second Ctrl-C or SIGTERM exits at once)"
    );
    tokio::select! {
        biased;
        _ = now => {
            warn!("second signal: exiting now, without waiting for what is in flight");
        }
        report = reloader.into_runtime().shutdown(grace) => {
            info!(forced = report.forced, unfinished = report.unfinished, "stopped");
        }
    }
    Ok(())
}

/// SIGHUP asks for a reload, as for most daemons.
fn spawn_sighup(
    requests: mpsc::Sender<ReloadRequest>,
    tracker: &TaskTracker,
    token: CancellationToken,
) {
    #[cfg(unix)]
    tracker.spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                signal = hup.recv() => {
                    if signal.is_none() || requests.send(ReloadRequest::new(ReloadCause::Signal)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (requests, tracker, token);
}

/// Ctrl-C and SIGTERM, as many times as they come.
struct RepeatingSignal {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl RepeatingSignal {
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn wait(s: Option<&mut tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = wait(self.interrupt.as_mut()) => {}
                _ = wait(self.terminate.as_mut()) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Installs the Ctrl-C and SIGTERM handlers now (so a signal that arrives while flows are
/// starting is not fatal). Call it inside the tokio runtime.
fn shutdown_signal_repeating() -> RepeatingSignal {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        RepeatingSignal {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }
    #[cfg(not(unix))]
    {
        RepeatingSignal {}
    }
}

/// Resolves on Ctrl-C or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is first polled,
/// so a signal that arrives while flows are starting is not fatal. Call it inside the
/// tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    let mut signal = shutdown_signal_repeating();
    async move { signal.recv().await }
}

async fn test(prepared: &Prepared) -> Result<(), Error> {
    let reports = crate::flowtest::run_all(prepared).await?;
    let total = reports.len();
    let mut failed = 0;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "running {total} flow test{}",
        if total == 1 { "" } else { "s" }
    );
    for report in &reports {
        match &report.failure {
            None => {
                let _ = writeln!(out, "test {} ... ok", report.name);
            }
            Some(_) => {
                failed += 1;
                let _ = writeln!(out, "test {} ... FAILED", report.name);
            }
        }
    }
    if failed > 0 {
        let _ = writeln!(out, "\nfailures:");
        for report in reports.iter().filter(|r| r.failure.is_some()) {
            let _ = writeln!(
                out,
                "\n---- {} ({}) ----\n{}",
                report.name,
                report.file,
                report.failure.as_deref().unwrap_or("")
            );
        }
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    let _ = writeln!(
        out,
        "\nflow test result: {verdict}. {} passed; {failed} failed",
        total - failed
    );
    if failed > 0 {
        return Err(Error::TestsFailed { failed, total });
    }
    Ok(())
}

async fn publish(topic: &str, data: &str, remote: &Remote) -> Result<(), Error> {
    let target = Target::parse(&remote.url, remote.token.clone())?;
    let path = format!("/topics/{topic}");
    let send = |body: String| {
        let target = target.clone();
        let path = path.clone();
        async move {
            let answer = target
                .call("POST", &path, Some("application/json"), Bytes::from(body))
                .await?;
            let id = serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
                .unwrap_or_default();
            println!("{id}");
            Ok::<(), Error>(())
        }
    };
    if data != "-" {
        serde_json::from_str::<serde_json::Value>(data)
            .map_err(|source| Error::BadJson { line: 1, source })?;
        return send(data.to_owned()).await;
    }
    let stdin = std::io::stdin();
    for (i, line) in stdin.lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        serde_json::from_str::<serde_json::Value>(&line).map_err(|source| Error::BadJson {
            line: i + 1,
            source,
        })?;
        send(line).await?;
    }
    Ok(())
}

async fn tail(pattern: &str, json: bool, remote: &Remote) -> Result<(), Error> {
    let target = Target::parse(&remote.url, remote.token.clone())?;
    let path = format!("/tail?pattern={}", percent_encode(pattern));
    let mut pending = Vec::new();
    let stream = target.stream(&path, |chunk| {
        pending.extend_from_slice(chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            if json {
                println!("{text}");
            } else if let Ok(event) = serde_json::from_str::<crate::event::Event>(text) {
                println!(
                    "{} {} {} {}",
                    humantime::format_rfc3339_millis(event.time),
                    event.topic,
                    event.id,
                    crate::event::to_article_json(&event.data)
                );
            }
        }
    });
    tokio::select! {
        result = stream => result?,
        _ = shutdown_signal() => {}
    }
    Ok(())
}

async fn dead(action: DeadAction) -> Result<(), Error> {
    match action {
        DeadAction::List {
            origin,
            json,
            remote,
        } => {
            let target = Target::parse(&remote.url, remote.token.clone())?;
            let path = match &origin {
                Some(o) => format!("/admin/dead?origin={}", percent_encode(o)),
                None => "/admin/dead".to_owned(),
            };
            let body = target.call("GET", &path, None, Bytes::new()).await?;
            let letters: Vec<crate::event::Event> =
                serde_json::from_slice(&body).unwrap_or_default();
            let mut out = std::io::stdout().lock();
            if json {
                for letter in &letters {
                    let _ = writeln!(out, "{}", letter.to_json());
                }
                return Ok(());
            }
            if letters.is_empty() {
                let _ = writeln!(out, "no dead letters");
                return Ok(());
            }
            for letter in &letters {
                let ext = |k: &str| {
                    letter
                        .extensions
                        .get(k)
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .unwrap_or_default()
                };
                let origin = if ext("deadletterqueue").is_empty() {
                    format!("topic {}", ext("deadlettertopic"))
                } else {
                    format!("queue {}", ext("deadletterqueue"))
                };
                let _ = writeln!(
                    out,
                    "{}  {}  {}  by {} after {} attempt(s)\n    error: {}\n    data:  {}",
                    letter.id,
                    humantime::format_rfc3339_millis(letter.time),
                    origin,
                    ext("deadlettersubscriber"),
                    ext("deadletterattempts"),
                    ext("deadletterreason"),
                    crate::event::to_article_json(&letter.data)
                );
            }
            let _ = writeln!(out, "{} dead letter(s)", letters.len());
            Ok(())
        }
        DeadAction::Replay {
            origin,
            ids,
            delay,
            all,
            remote,
        } => {
            let target = Target::parse(&remote.url, remote.token.clone())?;
            let body =
                serde_json::json!({ "origin": origin, "ids": ids, "all": all, "delay": delay })
                    .to_string();
            let answer = target
                .call(
                    "POST",
                    "/admin/dead/replay",
                    Some("application/json"),
                    Bytes::from(body),
                )
                .await?;
            let report: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
            println!("replayed {}", report["replayed"]);
            if let Some(failed) = report["failed"].as_array().filter(|f| !f.is_empty()) {
                for f in failed {
                    println!(
                        "not replayed {}: {}",
                        f["id"].as_str().unwrap_or(""),
                        f["error"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        DeadAction::Drop {
            origin,
            ids,
            all,
            remote,
        } => {
            let target = Target::parse(&remote.url, remote.token.clone())?;
            let body = serde_json::json!({ "origin": origin, "ids": ids, "all": all }).to_string();
            let answer = target
                .call(
                    "POST",
                    "/admin/dead/drop",
                    Some("application/json"),
                    Bytes::from(body),
                )
                .await?;
            let report: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
            println!("dropped {}", report["dropped"]);
            Ok(())
        }
    }
}

async fn query(topic: &str, data: &str, remote: &Remote) -> Result<(), Error> {
    serde_json::from_str::<serde_json::Value>(data)
        .map_err(|source| Error::BadJson { line: 1, source })?;
    let target = Target::parse(&remote.url, remote.token.clone())?;
    let answer = target
        .call(
            "POST",
            &format!("/query/{topic}"),
            Some("application/json"),
            Bytes::from(data.to_owned()),
        )
        .await?;
    println!("{}", String::from_utf8_lossy(&answer));
    Ok(())
}

async fn trace(correlation: &str, remote: &Remote) -> Result<(), Error> {
    let target = Target::parse(&remote.url, remote.token.clone())?;
    let body = target
        .call(
            "GET",
            &format!("/trace/{}", percent_encode(correlation)),
            None,
            Bytes::new(),
        )
        .await?;
    let entries: Vec<crate::runtime::history::TraceEntry> =
        serde_json::from_slice(&body).unwrap_or_default();
    print!("{}", render_trace(&entries));
    Ok(())
}

/// The tree of a journey: each event under the one that caused it, with who emitted it,
/// the generation of its code, its time and the delta from its parent.
pub fn render_trace(entries: &[crate::runtime::history::TraceEntry]) -> String {
    use std::fmt::Write as _;
    let ids: std::collections::HashSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let mut out = String::new();
    fn walk(
        out: &mut String,
        entries: &[crate::runtime::history::TraceEntry],
        index: usize,
        prefix: &str,
        last: bool,
        root: bool,
    ) {
        let e = &entries[index];
        let parent = e
            .causation_id
            .as_deref()
            .and_then(|c| entries.iter().find(|p| p.id == c));
        let delta = parent
            .and_then(|p| e.time.duration_since(p.time).ok())
            .map(|d| format!(" +{:.1}ms", d.as_secs_f64() * 1000.0))
            .unwrap_or_default();
        let generation = e
            .generation
            .map(|g| format!(" gen {g}"))
            .unwrap_or_default();
        let branch = if root {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        let _ = writeln!(
            out,
            "{prefix}{branch}{} {} by {}{generation} {}{delta}",
            e.topic,
            e.id,
            e.emitted_by,
            humantime::format_rfc3339_millis(e.time)
        );
        let children: Vec<usize> = entries
            .iter()
            .enumerate()
            .filter(|(_, c)| c.causation_id.as_deref() == Some(e.id.as_str()))
            .map(|(i, _)| i)
            .collect();
        let next_prefix = if root {
            String::new()
        } else {
            format!("{prefix}{}", if last { "   " } else { "│  " })
        };
        for (n, child) in children.iter().enumerate() {
            walk(
                out,
                entries,
                *child,
                &next_prefix,
                n + 1 == children.len(),
                false,
            );
        }
    }
    for (i, e) in entries.iter().enumerate() {
        let is_root = e.causation_id.as_deref().is_none_or(|c| !ids.contains(c));
        if is_root {
            walk(&mut out, entries, i, "", true, true);
        }
    }
    out
}

/// Reads the per-topic and per-subscriber counts of a running instance from `/metrics`.
async fn live_counts(
    url: &str,
    token: Option<String>,
) -> Result<crate::flow::graph::LiveCounts, Error> {
    let target = Target::parse(url, token)?;
    let body = target.call("GET", "/metrics", None, Bytes::new()).await?;
    let text = String::from_utf8_lossy(&body);
    let mut counts = crate::flow::graph::LiveCounts::default();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        let label = |prefix: &str| {
            series
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix("\"}"))
                .map(str::to_owned)
        };
        if let Some(topic) = label("edaflow_topic_events_in_total{topic=\"") {
            counts.topics.insert(topic, value);
        } else if let Some(subscriber) = label("edaflow_subscriber_handled_total{subscriber=\"") {
            counts.subscribers.insert(subscriber, value);
        }
    }
    Ok(counts)
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The single-threaded runtime the client commands (publish, query, trace, dead, tail,
/// graph --live) run their one request on.
fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::history::TraceEntry;
    use std::time::{Duration, SystemTime};

    fn entry(id: &str, cause: Option<&str>, topic: &str, by: &str, ms: u64) -> TraceEntry {
        TraceEntry {
            id: id.into(),
            causation_id: cause.map(str::to_owned),
            topic: topic.into(),
            emitted_by: by.into(),
            generation: cause.map(|_| 1),
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
        }
    }

    #[test]
    fn traces_render_as_a_tree_with_deltas() {
        let entries = [
            entry("a", None, "orderCreated", "api", 0),
            entry("b", Some("a"), "inventoryReserved", "reserve", 2),
            entry("c", Some("a"), "audit", "audit", 3),
            entry("d", Some("b"), "paymentCharged", "charge", 5),
        ];
        let text = render_trace(&entries);
        let expected = "\
orderCreated a by api 1970-01-01T00:00:00.000Z
├─ inventoryReserved b by reserve gen 1 1970-01-01T00:00:00.002Z +2.0ms
│  └─ paymentCharged d by charge gen 1 1970-01-01T00:00:00.005Z +3.0ms
└─ audit c by audit gen 1 1970-01-01T00:00:00.003Z +3.0ms
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_redis_on_this_machine_is_left_a_core() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(runtime_threads(None, "memory"), cores);
        assert_eq!(runtime_threads(None, "redis://10.1.2.3:6379"), cores);
        assert_eq!(
            runtime_threads(None, "redis://127.0.0.1:6379"),
            (cores - 1).max(1)
        );
        assert_eq!(
            runtime_threads(None, "redis://localhost"),
            (cores - 1).max(1)
        );
        assert_eq!(runtime_threads(Some(3), "redis://127.0.0.1"), 3);
        // A URL that does not parse fails later, with its own error; the count is the plain one.
        assert_eq!(runtime_threads(None, "nonsense://x"), cores);
    }
}
