//! The accepted socket as hyper sees it (`ConnIo`): reads and writes that fail once a
//! clock of `Progress` runs out, the `408 header_timeout` written when a head is too slow,
//! hyper's own bare refusals (`400`, `431`, `414`) rewritten as JSON ones, and a short
//! linger after the end so that closing does not reset the connection under the answer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::progress::{Expiry, Progress};
use crate::http::error::ApiError;

/// How long writing one of this module's own answers (a 408) may take.
const OWN_ANSWER_TIME: Duration = Duration::from_secs(1);
/// After a connection ends, what the client still sends is read and dropped for this long
/// (and up to `LINGER_BYTES`), so that closing does not reset the connection under the
/// answer before the client has read it.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// The accepted socket, as hyper sees it: reads and writes that fail once a clock runs
/// out, and this module's own answers written in place of hyper's bare refusals.
pub(super) struct ConnIo {
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
    pub(super) fn new(stream: TcpStream, progress: Arc<Progress>) -> ConnIo {
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
    pub(super) async fn linger(&mut self) {
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
}
