//! The router as hyper's service (`ConnService`): each request's body goes to the router
//! on its clock (`TimedBody`, which fails with `BodyTimeout` at `body_timeout`), and the
//! answer's body (`Answer`) tells `Progress` when hyper is done with it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::progress::Progress;

/// Calls the router for each request, with the request's body on its clock and the
/// answer's body reporting back when it is done.
#[derive(Clone)]
pub(super) struct ConnService {
    pub(super) router: Router,
    pub(super) progress: Arc<Progress>,
    pub(super) body_timeout: Duration,
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
pub(super) struct Answer {
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
