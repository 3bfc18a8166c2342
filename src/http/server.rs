//! The `http` producer's accept loop: one task per connection (`http::conn`), at most
//! `max_connections` of them, and a stop that never waits on a client.
//!
//! Past the limit, a new connection is answered `503 too_many_connections` and closed
//! (the answer is written by a small, separately bounded set of tasks, so a flood of
//! connections costs no more than that). When the producer stops, the listener closes at
//! once (its address is free for the next generation), open streams end, idle connections
//! close, a request being handled gets `STOP_GRACE` to finish, and whatever is still open
//! then is dropped. It owns no routes: the router is handed in.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::http::conn::{serve_connection, Timeouts};
use crate::http::error::ApiError;
use crate::runtime::metrics::Metrics;

/// How long requests in progress may go on once the producer stops, before their
/// connections are dropped (within the runtime's half-second for stopping producers).
pub const STOP_GRACE: Duration = Duration::from_millis(400);
/// Connections being refused at once (past `max_connections`); past this, a refused
/// connection gets one non-blocking try at the answer and is closed.
const REFUSERS: usize = 64;
/// How long refusing one connection may take.
const REFUSAL_TIME: Duration = Duration::from_secs(1);
/// How long the loop waits after an accept error that is not the client's (out of file
/// descriptors), before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The limits of one server, from the producer's settings.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `stop` is cancelled; `stopping` is cancelled at the
/// same moment, for the routes (open `/tail` streams end on it). Returns once every
/// connection is closed: at most `STOP_GRACE` (plus a moment) after `stop`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    stopping: CancellationToken,
) {
    let timeouts = Timeouts {
        header: limits.header_timeout,
        body: limits.body_timeout,
        idle: limits.idle_timeout,
    };
    let connections = TaskTracker::new();
    // Any count a flow file can write is far beyond what a process can hold open.
    let permits = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let refusers = Arc::new(Semaphore::new(REFUSERS));
    // Cancelled when the grace is over: connections still open are dropped.
    let force = CancellationToken::new();
    let mut accept_failing = false;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                accept_failing = false;
                accepted
            }
            // The client gave up between its connect and our accept: nothing to do.
            Err(e) if is_client_gone(&e) => continue,
            Err(e) => {
                if !accept_failing {
                    warn!(error = %e, "cannot accept connections; retrying every 100 ms");
                    accept_failing = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        // Small answers go out at once rather than waiting for more to send.
        let _ = stream.set_nodelay(true);
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let span = tracing::debug_span!("connection", %peer);
                let (router, stop, force) = (router.clone(), stop.clone(), force.clone());
                let open = OpenConnection::count(metrics.clone());
                let metrics = metrics.clone();
                connections.spawn(tracing::Instrument::instrument(
                    async move {
                        serve_connection(stream, router, timeouts, metrics, stop, force).await;
                        drop((permit, open));
                    },
                    span,
                ));
            }
            Err(_) => {
                debug!(%peer, limit = limits.max_connections, "refusing a connection: too many open");
                let http = &metrics.http;
                http.connections_refused.fetch_add(1, Ordering::Relaxed);
                refuse(
                    stream,
                    limits.max_connections,
                    &refusers,
                    &connections,
                    &stop,
                );
            }
        }
    }
    // Closing the listener frees the address at once; the connections go on a moment.
    drop(listener);
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(STOP_GRACE, connections.wait())
        .await
        .is_err()
    {
        debug!(
            open = connections.len(),
            "dropping the connections still open"
        );
        force.cancel();
        connections.wait().await;
    }
}

/// One connection in `edaflow_http_connections_open`, for as long as it lives (a dropped
/// task included).
struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    fn count(metrics: Arc<Metrics>) -> OpenConnection {
        metrics
            .http
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        OpenConnection(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.http.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers `503 too_many_connections` on `stream` and closes it.
fn refuse(
    mut stream: TcpStream,
    limit: usize,
    refusers: &Arc<Semaphore>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) {
    let answer = ApiError::TooManyConnections { limit }.raw_response();
    let Ok(permit) = refusers.clone().try_acquire_owned() else {
        // Too many being refused already: one try that cannot block, then closed.
        let _ = stream.try_write(&answer);
        return;
    };
    let stop = stop.clone();
    tracker.spawn(async move {
        let refusal = async {
            if stream.write_all(&answer).await.is_err() {
                return;
            }
            let _ = stream.shutdown().await;
            // Read what the client sent, so that closing does not reset the connection
            // under the answer before the client has read it.
            let mut buf = [0u8; 4096];
            let mut left = 64 * 1024usize;
            while left > 0 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(REFUSAL_TIME, refusal) => {}
            _ = stop.cancelled() => {}
        }
        drop(permit);
    });
}

/// Accept errors that concern one connection only, not the listener.
fn is_client_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    )
}
