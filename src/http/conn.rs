//! One HTTP/1.1 connection of the `http` producer, with the clocks a slow or greedy client
//! runs into: a request's head must arrive within `header_timeout` (from the connection's
//! start, or from the first byte of a later request), its body within `body_timeout` of its
//! head, and a kept-alive connection may wait `idle_timeout` for its next request. A client
//! that takes no byte of an answer for `idle_timeout` is dropped too.
//!
//! hyper parses and the router answers; this module owns the socket beneath them
//! (`ConnIo`), the request body handed to the router (`TimedBody`) and the answer's body
//! (`Answer`), which tell a shared `Progress` where the request stands. The clocks are
//! read from that, so an open `/tail` stream (a request whose body is in and whose answer
//! is still going) runs no clock at all.
//!
//! Refusals are JSON like every other answer: a head that times out after some bytes gets
//! `408 header_timeout`, a body that times out `408 body_timeout` (from the handler, which
//! sees the body fail), and what hyper refuses itself (a malformed or oversized head) is
//! rewritten from hyper's empty answer into the JSON one. It does not stop anything: the
//! accept loop (`http::server`) decides when a connection must end.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::http::error::ApiError;
use crate::runtime::metrics::Metrics;

/// The largest request head (request line and headers) read; past it, 431.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long past `body_timeout` the socket itself gives up on a body nobody reads (the
/// handler, which reads the body, answers 408 at `body_timeout`).
const BODY_BACKSTOP: Duration = Duration::from_secs(1);
/// How long writing one of this module's own answers (a 408) may take.
const OWN_ANSWER_TIME: Duration = Duration::from_secs(1);
/// After a connection ends, what the client still sends is read and dropped for this long
/// (and up to `LINGER_BYTES`), so that closing does not reset the connection under the
/// answer before the client has read it.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

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
            Pin::new(&mut conn).graceful_shutdown();
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

// ---------------------------------------------------------------------------------------
// Where a request stands

/// Where the connection stands, shared by the socket (`ConnIo`) and the bodies.
struct Progress {
    timeouts: Timeouts,
    /// Where the clocks that run out are counted.
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    stage: Stage,
    /// Whether everything written for the last answer has been flushed since it was
    /// complete: only then is a write in the `Head` stage one of hyper's own refusals
    /// (and only then may this module write a 408).
    flushed: bool,
    /// The task waiting on a read. hyper does not read again by itself when a request is
    /// over (its last read, made while answering, is still pending); woken then, it does,
    /// and the read finds the idle clock to run.
    reader: Option<Waker>,
}

#[derive(Clone, Copy, Debug)]
enum Stage {
    /// Waiting for a request head, which must be complete by `deadline`.
    Head {
        deadline: Instant,
        /// Some bytes of the head have arrived.
        started: bool,
        /// `deadline` is the header clock (else the idle one, until a byte arrives).
        header_clock: bool,
    },
    /// A request is with the router.
    Request {
        /// When its body must be in, while it is still arriving.
        body_deadline: Option<Instant>,
        /// Its answer has been handed over whole (its body dropped by hyper).
        answered: bool,
    },
}

/// What the socket does when its read clock runs out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// Close without a word: an idle connection, a body nobody reads.
    Close,
    /// Close without a word, counted as a slow head: nothing of it arrived (or an answer
    /// is still unflushed, which a 408 must not interleave with).
    SlowHead,
    /// Answer `408 header_timeout`, then close.
    HeaderTimeout,
}

impl Progress {
    fn new(timeouts: Timeouts, metrics: Arc<Metrics>) -> Progress {
        Progress {
            timeouts,
            metrics,
            state: Mutex::new(State {
                // A new connection owes its first head within `header_timeout`.
                stage: Stage::Head {
                    deadline: Instant::now() + timeouts.header,
                    started: false,
                    header_clock: true,
                },
                flushed: true,
                reader: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived.
    fn read_some(&self) {
        let mut state = self.lock();
        if let Stage::Head {
            deadline,
            started,
            header_clock,
        } = &mut state.stage
        {
            *started = true;
            if !*header_clock {
                *header_clock = true;
                *deadline = Instant::now() + self.timeouts.header;
            }
        }
    }

    /// hyper handed a request over; `body_deadline` is `None` for a request without body.
    fn request_started(&self, body_deadline: Option<Instant>) {
        let mut state = self.lock();
        state.stage = Stage::Request {
            body_deadline,
            answered: false,
        };
        state.flushed = false;
    }

    /// The request's body has arrived whole.
    fn body_ended(&self) {
        let mut state = self.lock();
        if let Stage::Request {
            body_deadline,
            answered,
        } = &mut state.stage
        {
            *body_deadline = None;
            if *answered {
                self.go_idle(state);
            }
        }
    }

    /// hyper is done with the answer's body.
    fn answered(&self) {
        let mut state = self.lock();
        if let Stage::Request {
            body_deadline,
            answered,
        } = &mut state.stage
        {
            *answered = true;
            if body_deadline.is_none() {
                self.go_idle(state);
            }
        }
    }

    /// The request is over: the idle clock runs, and the reader is woken to see it.
    fn go_idle(&self, mut state: std::sync::MutexGuard<'_, State>) {
        state.stage = Stage::Head {
            deadline: Instant::now() + self.timeouts.idle,
            started: false,
            header_clock: false,
        };
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    /// A read is pending in `cx`'s task.
    fn reading(&self, cx: &Context<'_>) {
        let mut state = self.lock();
        if !state
            .reader
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.reader = Some(cx.waker().clone());
        }
    }

    /// A flush went through.
    fn flushed(&self) {
        let mut state = self.lock();
        if matches!(state.stage, Stage::Head { .. }) {
            state.flushed = true;
        }
    }

    /// Whether a write now is hyper refusing a head by itself.
    fn writes_refusal(&self) -> bool {
        let state = self.lock();
        matches!(state.stage, Stage::Head { .. }) && state.flushed
    }

    /// When reading must have made progress by, and what happens then.
    fn read_deadline(&self) -> Option<(Instant, Expiry)> {
        let state = self.lock();
        match state.stage {
            Stage::Head {
                deadline,
                started,
                header_clock,
            } => {
                let expiry = if !header_clock {
                    Expiry::Close
                } else if started && state.flushed {
                    Expiry::HeaderTimeout
                } else {
                    Expiry::SlowHead
                };
                Some((deadline, expiry))
            }
            Stage::Request { body_deadline, .. } => {
                body_deadline.map(|d| (d + BODY_BACKSTOP, Expiry::Close))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The socket

/// The accepted socket, as hyper sees it: reads and writes that fail once a clock runs
/// out, and this module's own answers written in place of hyper's bare refusals.
struct ConnIo {
    stream: TcpStream,
    progress: Arc<Progress>,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
    /// Since when writes have made no progress.
    write_stalled_since: Option<Instant>,
    /// An answer of this module's still to write, and how much of it is written.
    own: Vec<u8>,
    own_written: usize,
    own_deadline: Option<Instant>,
    /// After our own 408: every read fails.
    failed: bool,
    /// After rewriting one of hyper's refusals: whatever hyper writes next is dropped.
    swallowing: bool,
}

impl ConnIo {
    fn new(stream: TcpStream, progress: Arc<Progress>) -> ConnIo {
        let now = Instant::now();
        ConnIo {
            stream,
            progress,
            read_timer: Box::pin(tokio::time::sleep_until(now)),
            write_timer: Box::pin(tokio::time::sleep_until(now)),
            write_stalled_since: None,
            own: Vec::new(),
            own_written: 0,
            own_deadline: None,
            failed: false,
            swallowing: false,
        }
    }

    /// Sets this module's answer to write before anything else.
    fn answer(&mut self, error: &ApiError) {
        self.own = error.raw_response();
        self.own_written = 0;
        self.own_deadline = Some(Instant::now() + OWN_ANSWER_TIME);
    }

    /// Writes what is left of this module's own answer.
    fn poll_own(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.own_written < self.own.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.own[self.own_written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.own_written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    let deadline = self
                        .own_deadline
                        .unwrap_or_else(|| Instant::now() + OWN_ANSWER_TIME);
                    if self.write_timer.deadline() != deadline {
                        self.write_timer.as_mut().reset(deadline);
                    }
                    if self.write_timer.as_mut().poll(cx).is_ready() {
                        self.own.clear();
                        self.own_written = 0;
                        return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                    }
                    return Poll::Pending;
                }
            }
        }
        self.own.clear();
        self.own_written = 0;
        self.own_deadline = None;
        Poll::Ready(Ok(()))
    }

    /// Checks the write clock after a write that could not go through.
    fn poll_write_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let since = *self.write_stalled_since.get_or_insert_with(Instant::now);
        let deadline = since + self.progress.timeouts.idle;
        if self.write_timer.deadline() != deadline {
            self.write_timer.as_mut().reset(deadline);
        }
        match self.write_timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                debug!("the client took no byte of the answer for the idle timeout");
                let http = &self.progress.metrics.http;
                http.write_timeouts.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(io::ErrorKind::TimedOut.into())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reads and drops what the client still sends after the end, briefly (see
    /// `LINGER_TIME`), once the write side is shut.
    async fn linger(&mut self) {
        let _ = self.stream.shutdown().await;
        let mut buf = [0u8; 4096];
        let mut left = LINGER_BYTES;
        let _ = tokio::time::timeout(LINGER_TIME, async {
            while left > 0 {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed {
            ready!(this.poll_own(cx))?;
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progress.read_some();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.progress.reading(cx);
                let Some((deadline, expiry)) = this.progress.read_deadline() else {
                    return Poll::Pending;
                };
                if this.read_timer.deadline() != deadline {
                    this.read_timer.as_mut().reset(deadline);
                }
                if this.read_timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let http = &this.progress.metrics.http;
                match expiry {
                    Expiry::Close => {
                        debug!("closing a connection: a read timed out");
                        Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
                    }
                    Expiry::SlowHead => {
                        debug!("closing a connection: no request head in time");
                        http.header_timeouts.fetch_add(1, Ordering::Relaxed);
                        Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
                    }
                    Expiry::HeaderTimeout => {
                        debug!("answering 408: the request head was too slow");
                        http.header_timeouts.fetch_add(1, Ordering::Relaxed);
                        let after_ms = this.progress.timeouts.header.as_millis();
                        this.answer(&ApiError::HeaderTimeout { after_ms });
                        this.failed = true;
                        ready!(this.poll_own(cx))?;
                        Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
                    }
                }
            }
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.swallowing {
            return Poll::Ready(Ok(buf.len()));
        }
        if this.own.is_empty() && this.progress.writes_refusal() {
            if let Some(refusal) = hyper_refusal(buf) {
                debug!(code = refusal.code(), "hyper refused a request head");
                this.answer(&refusal);
                this.swallowing = true;
                // hyper's own bytes are dropped: ours go out at the next flush.
                return Poll::Ready(Ok(buf.len()));
            }
        }
        if !this.own.is_empty() {
            ready!(this.poll_own(cx))?;
        }
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.write_stalled_since = None;
                Poll::Ready(result)
            }
            Poll::Pending => match this.poll_write_stall(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.own.is_empty() {
            ready!(this.poll_own(cx))?;
        }
        ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        this.progress.flushed();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.own.is_empty() {
            ready!(this.poll_own(cx))?;
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// The JSON refusal for the bare answer hyper writes when it cannot read a head
/// (`HTTP/1.1 400 Bad Request`, `431`, `414`, …), or `None` when `written` is not one.
fn hyper_refusal(written: &[u8]) -> Option<ApiError> {
    let status = written.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    let status: u16 = std::str::from_utf8(status).ok()?.parse().ok()?;
    Some(match status {
        400 => ApiError::BadRequest {
            detail: "the request head is not valid HTTP/1.1".to_owned(),
        },
        414 => ApiError::UriTooLong,
        431 => ApiError::HeadersTooLarge,
        status => ApiError::Refused { status },
    })
}

// ---------------------------------------------------------------------------------------
// The router as hyper's service

/// Calls the router for each request, with the request's body on its clock and the
/// answer's body reporting back when it is done.
#[derive(Clone)]
struct ConnService {
    router: Router,
    progress: Arc<Progress>,
    body_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Answer>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Answer>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let deadline = Instant::now() + self.body_timeout;
        let empty = request.body().is_end_stream();
        self.progress.request_started((!empty).then_some(deadline));
        let progress = self.progress.clone();
        let body_timeout = self.body_timeout;
        let request = request.map(|body| TimedBody {
            inner: body,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            after: body_timeout,
            progress: Some(progress.clone()),
        });
        let mut router = self.router.clone();
        Box::pin(async move {
            let response = match tower_service::Service::call(&mut router, request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|body| Answer {
                inner: body,
                progress,
            }))
        })
    }
}

/// A request body that fails with `BodyTimeout` once its deadline passes.
struct TimedBody {
    inner: Incoming,
    timer: Pin<Box<Sleep>>,
    after: Duration,
    /// Told once when the body ends (then `None`).
    progress: Option<Arc<Progress>>,
}

/// The error a request body fails with when it did not arrive within `body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} ms", .after.as_millis())]
pub(crate) struct BodyTimeout {
    pub after: Duration,
}

impl TimedBody {
    fn ended(&mut self) {
        if let Some(progress) = self.progress.take() {
            progress.body_ended();
        }
    }

    /// Fails for good (the socket's backstop closes the connection if nobody answers).
    fn timed_out(&mut self) -> Box<dyn std::error::Error + Send + Sync> {
        if let Some(progress) = self.progress.take() {
            let http = &progress.metrics.http;
            http.body_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        Box::new(BodyTimeout { after: self.after })
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.progress.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.ended();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.ended();
                } else if this.timer.is_elapsed() {
                    // A body trickling in never waits long enough to see its clock.
                    return Poll::Ready(Some(Err(this.timed_out())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(this.timed_out()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.progress.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The router's answer body; tells the connection when hyper is done with it.
struct Answer {
    inner: Body,
    progress: Arc<Progress>,
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.progress.answered();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bare_refusals_become_json_ones() {
        let refusal = hyper_refusal(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(refusal.map(|r| r.code()), Some("bad_request"));
        let refusal = hyper_refusal(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n");
        assert_eq!(refusal.map(|r| r.code()), Some("headers_too_large"));
        let refusal = hyper_refusal(b"HTTP/1.0 414 URI Too Long\r\n\r\n");
        assert_eq!(refusal.map(|r| r.code()), Some("uri_too_long"));
        assert!(hyper_refusal(b"0\r\n\r\n").is_none());
        assert!(hyper_refusal(b"HTTP/1.1 4").is_none());
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            header: Duration::from_secs(10),
            body: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_clocks_follow_the_request() {
        let start = Instant::now();
        let progress = Progress::new(timeouts(), Arc::default());
        // A new connection: its first head is due within the header timeout, and if
        // nothing came, it closes without a word.
        assert_eq!(
            progress.read_deadline(),
            Some((start + Duration::from_secs(10), Expiry::SlowHead))
        );
        progress.read_some();
        assert_eq!(
            progress.read_deadline(),
            Some((start + Duration::from_secs(10), Expiry::HeaderTimeout))
        );
        // A request with a body: the body's clock, plus the backstop.
        tokio::time::advance(Duration::from_secs(1)).await;
        progress.request_started(Some(Instant::now() + Duration::from_secs(30)));
        assert!(!progress.writes_refusal());
        assert_eq!(
            progress.read_deadline(),
            Some((start + Duration::from_secs(32), Expiry::Close))
        );
        // The body is in: no clock while the answer goes out (an open tail).
        progress.body_ended();
        assert_eq!(progress.read_deadline(), None);
        // Answered: the idle clock, until a byte of the next head starts the header one.
        tokio::time::advance(Duration::from_secs(100)).await;
        progress.answered();
        assert_eq!(
            progress.read_deadline(),
            Some((start + Duration::from_secs(161), Expiry::Close))
        );
        assert!(!progress.writes_refusal(), "the answer is not flushed yet");
        progress.flushed();
        assert!(progress.writes_refusal());
        tokio::time::advance(Duration::from_secs(5)).await;
        progress.read_some();
        assert_eq!(
            progress.read_deadline(),
            Some((start + Duration::from_secs(116), Expiry::HeaderTimeout))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_before_the_body_leaves_the_body_clock_running() {
        let start = Instant::now();
        let progress = Progress::new(timeouts(), Arc::default());
        progress.request_started(Some(start + Duration::from_secs(30)));
        progress.answered();
        assert_eq!(
            progress.read_deadline(),
            Some((start + Duration::from_secs(31), Expiry::Close))
        );
        progress.body_ended();
        assert_eq!(
            progress.read_deadline(),
            Some((start + Duration::from_secs(60), Expiry::Close))
        );
    }
}
