//! `GET /console/stream`: Server-Sent Events for an open console page. A `snapshot` event
//! at once and then every second (the counters, cumulative, as they stand; the page draws
//! rates from successive ones), and a `reload` event the moment any reload finishes,
//! whatever asked for it. The stream ends when the producer stops.
//!
//! One open page costs one timer: nothing here runs per event. A snapshot reads the
//! metrics' atomics and asks the broker for its groups, queues and health; the dead
//! letters, which only a full listing can count, are counted at most every
//! `DEAD_LETTER_EVERY` per page (a listing every second would read every dead letter off
//! Redis every second).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::broker::ProcessInfo;
use crate::broker::{Broker, BrokerHealth, DeadFilter, GroupStats, QueueStats};
use crate::flow::model::SubscriberInput;
use crate::http::admin::dead_letters_by_queue;
use crate::http::{ApiError, ApiState};
use crate::runtime::chains::ChainReport;
use crate::runtime::metrics::{RelayCounts, SubscriberCounts, TopicCounts};
use crate::runtime::reload::ReloadReport;
use crate::runtime::ReloadOutcome;

/// How often a snapshot is sent.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// How often the dead letters are counted again, at most.
const DEAD_LETTER_EVERY: Duration = Duration::from_secs(5);

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
    /// The last count of dead letters: when, in all, and by queue.
    dead: Option<(Instant, usize, BTreeMap<String, usize>)>,
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
        let state = &self.state;
        let runtime = &state.runtime;
        let broker = &runtime.broker;
        let health = broker.health().await;
        let up = !matches!(health, BrokerHealth::Down { .. });
        // A broker that is down is not asked for figures it cannot give.
        let (groups, queue_stats) = if up {
            (broker.stats().await, broker.queue_stats().await)
        } else {
            (Vec::new(), Vec::new())
        };
        if up
            && self
                .dead
                .as_ref()
                .is_none_or(|(at, ..)| at.elapsed() >= DEAD_LETTER_EVERY)
        {
            if let Ok(dead) = broker.dead_letters(&DeadFilter::default()).await {
                self.dead = Some((Instant::now(), dead.len(), dead_letters_by_queue(&dead)));
            }
        }
        let (dead_total, dead_by_queue) = match &self.dead {
            Some((_, total, by_queue)) => (*total, by_queue.clone()),
            None => (0, BTreeMap::new()),
        };
        let view = runtime.flows.borrow().clone();
        let subscribers = runtime
            .metrics
            .subscriber_counts()
            .into_iter()
            .map(|(name, counts)| {
                let load = match view.flows.subscribers.get(&name).map(|s| &s.input) {
                    Some(SubscriberInput::Topics(_)) => {
                        let group = &view.flows.subscribers[&name].group;
                        groups.iter().find(|g| &g.name == group).map(Load::of_group)
                    }
                    Some(SubscriberInput::Queue(queue)) => queue_stats
                        .iter()
                        .find(|q| &q.name == queue)
                        .map(Load::of_queue),
                    None => None,
                }
                .unwrap_or_default();
                (name, SubscriberSnapshot { counts, load })
            })
            .collect();
        let queues = queue_stats
            .into_iter()
            .map(|q| {
                let dead_letters = dead_by_queue.get(&q.name).copied().unwrap_or(0);
                let snapshot = QueueSnapshot {
                    depth: q.depth,
                    due_now: q.due_now,
                    next_due_ms: q.next_due_ms,
                    in_flight: q.in_flight,
                    dead_letters,
                };
                (q.name, snapshot)
            })
            .collect();
        let processes = crate::runtime::processes::list_processes(
            &runtime.broker,
            &runtime.status.this_process(),
        )
        .await;
        let http = &runtime.metrics.http;
        let status = &runtime.status;
        Snapshot {
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            generation: status.generation.load(Ordering::SeqCst),
            uptime_seconds: status.started.elapsed().as_secs(),
            health: Health::of(health),
            last_reload: status
                .last_reload
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            topics: runtime.metrics.topic_counts(),
            subscribers,
            relays: runtime.metrics.relay_counts(),
            queues,
            chains: runtime.metrics.chain_reports(),
            http: HttpCounts {
                accepted: http.accepted.load(Ordering::Relaxed),
                rejected: http.rejected.load(Ordering::Relaxed),
                backpressured: http.backpressured.load(Ordering::Relaxed),
                connections_open: http.connections_open.load(Ordering::Relaxed),
            },
            dead_letters: dead_total,
            processes,
        }
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

/// What a snapshot event carries.
#[derive(Serialize)]
struct Snapshot {
    at_ms: u64,
    generation: u64,
    uptime_seconds: u64,
    health: Health,
    last_reload: Option<ReloadOutcome>,
    topics: BTreeMap<String, TopicCounts>,
    subscribers: BTreeMap<String, SubscriberSnapshot>,
    relays: BTreeMap<String, RelayCounts>,
    queues: BTreeMap<String, QueueSnapshot>,
    chains: Vec<ChainReport>,
    http: HttpCounts,
    /// Dead letters in the store (counted at most every `DEAD_LETTER_EVERY`).
    dead_letters: usize,
    processes: Vec<ProcessInfo>,
}

/// The broker's health.
#[derive(Serialize)]
struct Health {
    /// `ok`, `degraded` or `down`.
    status: &'static str,
    reason: Option<String>,
}

impl Health {
    fn of(health: BrokerHealth) -> Health {
        match health {
            BrokerHealth::Up => Health {
                status: "ok",
                reason: None,
            },
            BrokerHealth::Degraded { reason, .. } => Health {
                status: "degraded",
                reason: Some(reason),
            },
            BrokerHealth::Down { reason, .. } => Health {
                status: "down",
                reason: Some(reason),
            },
        }
    }
}

/// A subscriber's counters and what waits for it.
#[derive(Serialize)]
struct SubscriberSnapshot {
    #[serde(flatten)]
    counts: SubscriberCounts,
    #[serde(flatten)]
    load: Load,
}

/// What waits for a subscriber: in its group (topics) or its queue. `None` when the broker
/// did not say (a subscriber since removed, a broker that is down).
#[derive(Default, Serialize)]
struct Load {
    queued: Option<usize>,
    in_flight: Option<usize>,
    capacity: Option<usize>,
}

impl Load {
    fn of_group(group: &GroupStats) -> Load {
        Load {
            queued: Some(group.queued),
            in_flight: Some(group.in_flight),
            capacity: Some(group.capacity),
        }
    }

    /// A queue's items due now wait for its subscriber; those not due yet do not.
    fn of_queue(queue: &QueueStats) -> Load {
        Load {
            queued: Some(queue.due_now),
            in_flight: Some(queue.in_flight),
            capacity: queue.capacity,
        }
    }
}

#[derive(Serialize)]
struct QueueSnapshot {
    depth: usize,
    due_now: usize,
    next_due_ms: Option<u64>,
    in_flight: usize,
    dead_letters: usize,
}

#[derive(Serialize)]
struct HttpCounts {
    accepted: u64,
    rejected: u64,
    backpressured: u64,
    connections_open: u64,
}
