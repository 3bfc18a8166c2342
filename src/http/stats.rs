//! `GET /stats`: the running instance's figures in one JSON object, as they stand: per
//! topic, subscriber and relay the cumulative counters (with each component's last
//! failures), what waits in each group and queue, the chains, HTTP ingest, the dead
//! letters and, on Redis, the processes sharing the work. `edaflow top` polls it and
//! draws rates from successive answers; the console's stream sends the same snapshot.
//!
//! A snapshot reads the metrics' atomics and asks the broker for its groups, queues and
//! health; nothing here runs per event. The dead letters, which only a full listing can
//! count, are counted at most every `DEAD_LETTER_EVERY` (a listing every second would
//! read every dead letter off Redis every second): the count says when it was taken.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;

use crate::broker::ProcessInfo;
use crate::broker::{Broker, BrokerHealth, DeadFilter, GroupStats, QueueStats};
use crate::flow::model::SubscriberInput;
use crate::http::admin::dead_letters_by_queue;
use crate::http::{json_response, ApiError, ApiState};
use crate::runtime::chains::ChainReport;
use crate::runtime::metrics::{RelayCounts, SubscriberCounts, TopicCounts};
use crate::runtime::ReloadOutcome;

/// How often the dead letters are counted again, at most.
pub(crate) const DEAD_LETTER_EVERY: Duration = Duration::from_secs(5);

/// The last count of the dead letters: when, in all, and by queue.
#[derive(Clone, Debug)]
pub(crate) struct DeadCount {
    at: Instant,
    total: usize,
    by_queue: BTreeMap<String, usize>,
}

/// `GET /stats`. The dead letters are counted at most every `DEAD_LETTER_EVERY` for all
/// callers of this listener together.
pub(crate) async fn stats<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let mut dead = state
        .dead_count
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let answer = snapshot(&state, &mut dead).await;
    *state.dead_count.lock().unwrap_or_else(|e| e.into_inner()) = dead;
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&answer).unwrap_or_default(),
    ))
}

/// The figures as they stand; `dead` is the last count of the dead letters, taken again
/// here when it is older than `DEAD_LETTER_EVERY`.
pub(crate) async fn snapshot<B: Broker>(
    state: &ApiState<B>,
    dead: &mut Option<DeadCount>,
) -> Snapshot {
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
        && dead
            .as_ref()
            .is_none_or(|count| count.at.elapsed() >= DEAD_LETTER_EVERY)
    {
        if let Ok(letters) = broker.dead_letters(&DeadFilter::default()).await {
            *dead = Some(DeadCount {
                at: Instant::now(),
                total: letters.len(),
                by_queue: dead_letters_by_queue(&letters),
            });
        }
    }
    let (dead_total, dead_by_queue) = match dead {
        Some(count) => (count.total, count.by_queue.clone()),
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
    let processes =
        crate::runtime::processes::list_processes(&runtime.broker, &runtime.status.this_process())
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

/// What `GET /stats` answers and a console snapshot event carries.
#[derive(Serialize)]
pub(crate) struct Snapshot {
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
