//! One HTTP/1.1 connection of the `http` producer, with the clocks a slow or greedy client
//! runs into: a request's head must arrive within `header_timeout` (from the connection's
//! start, or from the first byte of a later request), its body within `body_timeout` of its
//! head, and a kept-alive connection may wait `idle_timeout` for its next request. A client
//! that takes no byte of an answer for `idle_timeout` is dropped too.
//!
//! hyper parses and the router answers; this module owns the socket beneath them
//! (`socket::ConnIo`), the request body handed to the router and the answer's body
//! (`service`), which tell a shared `progress::Progress` where the request stands. The
//! clocks are read from that, so an open `/tail` stream (a request whose body is in and
//! whose answer is still going) runs no clock at all.
//!
//! Refusals are JSON like every other answer: a head that times out after some bytes gets
//! `408 header_timeout`, a body that times out `408 body_timeout` (from the handler, which
//! sees the body fail), and what hyper refuses itself (a malformed or oversized head) is
//! rewritten from hyper's empty answer into the JSON one. It does not stop anything: the
//! accept loop (`http::server`) decides when a connection must end.

mod progress;
mod service;
mod socket;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::runtime::metrics::Metrics;
use progress::Progress;
pub(crate) use service::BodyTimeout;
use service::ConnService;
use socket::ConnIo;

/// The largest request head (request line and headers) read; past it, 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The clocks of one connection (from the producer's settings).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub header: Duration,
    pub body: Duration,
    pub idle: Duration,
}

/// Serves one accepted connection until it ends, `stop` asks it to finish (the request in
/// progress completes, then it closes), or `force` drops it.
pub(crate) async fn serve_connection(
    stream: TcpStream,
    router: Router,
    timeouts: Timeouts,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    force: CancellationToken,
) {
    let progress = Arc::new(Progress::new(timeouts, metrics));
    let io = ConnIo::new(stream, progress.clone());
    let service = ConnService {
        router,
        progress,
        body_timeout: timeouts.body,
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The clocks are `ConnIo`'s: hyper's own header timeout would also end kept-alive
    // connections after `header_timeout` of quiet.
    builder
        .header_read_timeout(None)
        .max_header_size(MAX_HEAD_BYTES);
    let mut conn = builder.serve_connection(TokioIo::new(io), service);
    let ended = tokio::select! {
        ended = &mut conn => ended,
        _ = stop.cancelled() => {
            std::pin::Pin::new(&mut conn).graceful_shutdown();
            tokio::select! {
                ended = &mut conn => ended,
                // Dropping the connection closes the socket.
                _ = force.cancelled() => return,
            }
        }
    };
    if let Err(e) = ended {
        debug!(error = %e, "connection ended with an error");
    }
    if stop.is_cancelled() {
        return;
    }
    let mut io = conn.into_parts().io.into_inner();
    tokio::select! {
        () = io.linger() => {}
        _ = stop.cancelled() => {}
    }
}
