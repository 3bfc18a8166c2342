//! `GET /console/stream`: Server-Sent Events for an open console page. A `snapshot` event
//! at once and then every second (the counters, cumulative, as they stand; the page draws
//! rates from successive ones), and a `reload` event the moment any reload finishes,
//! whatever asked for it. The stream ends when the producer stops.
//!
//! One open page costs one timer: nothing here runs per event. A snapshot is the one
//! `GET /stats` answers (`http::stats`); the dead letters in it are counted at most every
//! `stats::DEAD_LETTER_EVERY` per page.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::http::stats::{self, DeadCount, Snapshot};
use crate::http::{ApiError, ApiState};
use crate::runtime::reload::ReloadReport;

/// How often a snapshot is sent.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// `GET /console/stream`.
pub(super) async fn stream<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let mut ticks = tokio::time::interval(SNAPSHOT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = Feed {
        reports: Some(state.runtime.status.reports.subscribe()),
        stopping: state.stopping.clone(),
        state,
        ticks,
        dead: None,
    };
    let frames = futures_util::stream::unfold(feed, |mut feed| async move {
        let frame = feed.next().await?;
        Some((Ok::<_, Infallible>(frame), feed))
    });
    let mut response = Body::from_stream(frames).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// One page's stream.
struct Feed<B: Broker> {
    state: Arc<ApiState<B>>,
    /// Reload reports; `None` once the runtime is gone.
    reports: Option<broadcast::Receiver<ReloadReport>>,
    stopping: CancellationToken,
    ticks: tokio::time::Interval,
    /// The last count of dead letters.
    dead: Option<DeadCount>,
}

impl<B: Broker> Feed<B> {
    /// The next event to send, or `None` when the producer stops.
    async fn next(&mut self) -> Option<String> {
        loop {
            tokio::select! {
                biased;
                () = self.stopping.cancelled() => return None,
                report = recv(&mut self.reports) => match report {
                    Ok(report) => {
                        let data = super::files::report_json(&self.state.runtime.roots, &report).to_string();
                        return Some(frame("reload", &data));
                    }
                    // Reports missed by a slow page: the next snapshot has the generation.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => self.reports = None,
                },
                _ = self.ticks.tick() => {
                    let snapshot = self.snapshot().await;
                    let data = serde_json::to_string(&snapshot).unwrap_or_default();
                    return Some(frame("snapshot", &data));
                }
            }
        }
    }

    async fn snapshot(&mut self) -> Snapshot {
        stats::snapshot(&self.state, &mut self.dead).await
    }
}

/// The next reload report, or never once there can be none.
async fn recv(
    reports: &mut Option<broadcast::Receiver<ReloadReport>>,
) -> Result<ReloadReport, broadcast::error::RecvError> {
    match reports {
        Some(reports) => reports.recv().await,
        None => std::future::pending().await,
    }
}

/// One SSE event (`data` is one line of JSON).
fn frame(event: &str, data: &str) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}
