//! `edaflow run`: loads the flows, builds the tokio runtime (`--threads`), connects the
//! broker, starts the runtime, the file watcher, the console's own listener (`--console`)
//! and the probes' and metrics' own (`--admin`), and applies reload requests (files, SIGHUP,
//! `POST /admin/reload`) one at a time until a shutdown signal, then drains.
//! It owns the order of startup and shutdown; what each component does is `runtime`'s.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use super::flow_files::load;
use super::signals::{spawn_sighup, Signals};
use super::Error;
use crate::broker::{Broker, BrokerUrl, MemoryBroker, MemoryOptions, RedisBroker, RedisOptions};
use crate::cli::RunArgs;
use crate::flow::model::{ApiToken, HttpProducer, ProducerKind};
use crate::runtime::api::ApiProducer;
use crate::runtime::reload::{ReloadCause, ReloadRequest, Reloader};
use crate::runtime::{Prepared, Runtime, RuntimeError, RuntimeOptions};
use crate::watch::FileWatcher;

/// `edaflow run` on a runtime of its own, sized by `--threads` (see `runtime_threads`),
/// until a shutdown signal.
pub(super) fn run_blocking(args: RunArgs) -> Result<(), Error> {
    let prepared = load(&args.flows)?;
    let rt = build_runtime(args.threads, &broker_url(&args, &prepared)).map_err(Error::Io)?;
    let result = rt.block_on(async {
        let signals = Signals::listen();
        run_prepared(args, prepared, signals.nth(1), signals.nth(2)).await
    });
    // A handler still running on a blocking thread (it was left behind by a forced stop)
    // must not hold the exit up.
    rt.shutdown_background();
    result
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
        .as_ref()
        .or_else(|| prepared.flows.files.iter().find_map(|f| f.broker.as_ref()))
        .map_or_else(|| "memory".to_owned(), |url| url.expose().to_owned())
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
            let options = redis_options(&setup.args, &setup.prepared);
            let broker = RedisBroker::connect(&url, options).await?;
            run_on(broker, url.to_string(), setup, shutdown, now).await
        }
    }
}

/// The Redis broker's options from `run`'s. The namespace defaults to the first flow's
/// name; an unread retention of zero keeps unread topics for ever.
fn redis_options(args: &RunArgs, prepared: &Prepared) -> RedisOptions {
    let namespace = args.namespace.clone().unwrap_or_else(|| {
        prepared
            .flows
            .files
            .first()
            .map_or_else(|| "default".to_owned(), |f| f.name.clone())
    });
    RedisOptions {
        namespace,
        claim_idle: args.claim_idle,
        take_ahead: args.take_ahead,
        hold_ahead: args.hold_ahead,
        response_timeout: args.redis_timeout,
        tls_ca: args.redis_ca.clone(),
        unread_retention: Some(args.unread_retention).filter(|retention| !retention.is_zero()),
        shards: usize::from(args.shards),
        spread_by: match args.spread_by {
            crate::cli::SpreadByArg::Topic => crate::broker::redis::SpreadBy::Topic,
            crate::cli::SpreadByArg::Journey => crate::broker::redis::SpreadBy::Journey,
        },
        ..RedisOptions::default()
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

/// The rest of `run`, on one broker: the first generation, then reloads until `shutdown`,
/// then the stop.
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
    let tracing = start_tracing(args.otlp_endpoint.as_deref())?;
    let mut runtime = Runtime::new(
        broker,
        RuntimeOptions {
            roles: args.roles.clone(),
            listen: args.listen.clone(),
            token: args.token.clone(),
            producers: true,
            roots: flow_roots(&args.flows),
            tracing: tracing.clone(),
            ..RuntimeOptions::default()
        },
    );
    // Bound before anything starts, so that an address in use fails the start.
    let console = match &args.console {
        Some(addr) => Some(bind_console(addr).await?),
        None => None,
    };
    let admin = match &args.admin {
        Some(addr) => Some(bind_console(addr).await?),
        None => None,
    };
    let console_token = args.token.clone().or_else(|| first_token(&prepared));
    let outcome = runtime.apply(prepared).await?;
    runtime.set_reload_channel(requests.clone());
    if let Some(listener) = console {
        serve_console(
            &runtime,
            listener,
            console_token.clone(),
            &tracker,
            token.clone(),
        );
    }
    if let Some(listener) = admin {
        serve_admin(&runtime, listener, console_token, &tracker, token.clone());
    }
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
    reload_until(&mut reloader, &mut pending, watcher.as_deref(), shutdown).await;
    token.cancel();
    tracker.close();
    // The watcher and the SIGHUP listener end at once; a reload in progress is not
    // waited for past a moment.
    let _ = tokio::time::timeout(Duration::from_millis(200), tracker.wait()).await;
    // A durable broker keeps what is queued for the next process: no drain, only the
    // events in flight finish.
    let grace = if durable { Duration::ZERO } else { args.grace };
    stop(reloader, grace, now).await;
    if let Some(tracing) = tracing {
        // The exporter's last batch goes out through this runtime: wait on a thread that
        // may block, not on one of its workers.
        let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    }
    Ok(())
}

/// The console's or the admin listener (`--console ADDR`, `--admin ADDR`).
async fn bind_console(addr: &str) -> Result<TcpListener, RuntimeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RuntimeError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// The `token` of the first `http` producer that has one (the console's, without
/// `--token`).
fn first_token(prepared: &Prepared) -> Option<ApiToken> {
    prepared
        .flows
        .producers
        .values()
        .find_map(|p| match &p.kind {
            ProducerKind::Http(http) => http.token.clone(),
            _ => None,
        })
}

/// Serves the console, the read and the admin routes on `listener` until `stop`, and says
/// where (never with the token).
fn serve_console<B: Broker>(
    runtime: &Runtime<B>,
    listener: TcpListener,
    token: Option<ApiToken>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) {
    let Ok(addr) = listener.local_addr() else {
        warn!("the console's listener has no address; not serving the console");
        return;
    };
    if !addr.ip().is_loopback() && token.is_none() {
        warn!(%addr, "the console listens beyond this machine without a token: anyone who reaches it can replay dead letters and reload; pass --token or EDAFLOW_TOKEN");
    }
    let producer = listener_producer(runtime, addr, token, "console");
    info!(%addr, "console at http://{addr}/");
    tracker.spawn(
        crate::http::serve_console(listener, producer, stop)
            .instrument(tracing::info_span!("console")),
    );
}

/// The producer a listener of `run`'s own (`--console`, `--admin`) is served as: default
/// HTTP settings on `addr` with `token`, and no ingest (nothing publishes there).
fn listener_producer<B: Broker>(
    runtime: &Runtime<B>,
    addr: std::net::SocketAddr,
    token: Option<ApiToken>,
    name: &str,
) -> ApiProducer<B> {
    ApiProducer {
        runtime: runtime.api_context(),
        config: HttpProducer {
            listen: addr.to_string(),
            token,
            ..HttpProducer::default()
        },
        deferred_topic: String::new(),
        source: format!("edaflow://{name}"),
    }
}

/// Serves the probes and metrics alone on `listener` until `stop` (`--admin`), and says
/// where.
fn serve_admin<B: Broker>(
    runtime: &Runtime<B>,
    listener: TcpListener,
    token: Option<ApiToken>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) {
    let Ok(addr) = listener.local_addr() else {
        warn!("the admin listener has no address; not serving it");
        return;
    };
    let producer = listener_producer(runtime, addr, token, "admin");
    info!(%addr, "admin (probes and metrics) at http://{addr}/");
    tracker.spawn(
        crate::http::serve_admin(listener, producer, stop).instrument(tracing::info_span!("admin")),
    );
}

/// Applies reload requests one at a time, in order, until `shutdown` resolves, and points
/// the watcher at the files of each new generation.
async fn reload_until<B: Broker>(
    reloader: &mut Reloader<B>,
    pending: &mut mpsc::Receiver<ReloadRequest>,
    watcher: Option<&FileWatcher>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(request) = pending.recv() => {
                reloader.handle(request).await;
                if let Some(watcher) = watcher {
                    watcher.update(&reloader.watched_files());
                }
            }
        }
    }
}

/// Stops the runtime: ingest first, then queued events drain for `grace` and the events in
/// flight finish; `now` (a second signal) cuts that short.
async fn stop<B: Broker>(reloader: Reloader<B>, grace: Duration, now: impl Future<Output = ()>) {
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
}

/// Span export, when an endpoint is configured (`crate::otel::traces_endpoint`).
fn start_tracing(flag: Option<&str>) -> Result<Option<crate::otel::Tracing>, Error> {
    let Some(endpoint) = crate::otel::traces_endpoint(flag, |name| std::env::var(name).ok()) else {
        return Ok(None);
    };
    let tracing = crate::otel::Tracing::start(&endpoint)?;
    info!(%endpoint, "exporting handler spans over OTLP");
    Ok(Some(tracing))
}

/// The flow folders of `paths`: a folder as given, a flow file's own folder.
fn flow_roots(paths: &[std::path::PathBuf]) -> Vec<std::path::PathBuf> {
    let mut roots: Vec<std::path::PathBuf> = paths
        .iter()
        .map(|path| {
            let folder = if path.is_dir() {
                path.as_path()
            } else {
                path.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."))
            };
            std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf())
        })
        .collect();
    roots.dedup();
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `RunArgs` derives `Debug`; a password in `--broker` or `EDAFLOW_BROKER` stays out
    /// of it, while the broker in effect is still the whole URL.
    #[test]
    fn a_broker_password_never_shows_in_the_run_options() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "edaflow",
            "run",
            "flow.toml",
            "--broker",
            "redis://app:hunter2@10.0.0.1:6379/0",
        ])
        .expect("parses");
        assert!(!format!("{cli:?}").contains("hunter2"), "{cli:?}");
        let crate::cli::Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let shown = format!("{args:?} {args:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://app:***@10.0.0.1:6379/0"), "{shown}");
        let prepared = crate::runtime::prepare(&[]).expect("no flows is an empty set");
        assert_eq!(
            broker_url(&args, &prepared),
            "redis://app:hunter2@10.0.0.1:6379/0"
        );
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
