//! Inspection and admin routes: queue state (`GET /queues`, `GET /queues/{queue}`) and the
//! dead-letter store (`GET /admin/dead`, `POST /admin/dead/replay`,
//! `POST /admin/dead/drop`), which `edaflow dead …` drives.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::broker::{Backpressure, Broker, DeadFilter, QueueStats};
use crate::event::Event;
use crate::flow::duration::parse_duration;
use crate::flow::pattern::TopicPattern;
use crate::http::{json_response, ApiError, ApiState};

/// One queue as `GET /queues` reports it.
#[derive(Serialize)]
struct QueueReport {
    #[serde(flatten)]
    stats: QueueStats,
    /// Dead letters in the store that came from this queue.
    dead_letters: usize,
}

async fn queue_reports<B: Broker>(state: &ApiState<B>) -> Result<Vec<QueueReport>, ApiError> {
    let dead = state
        .shared
        .broker
        .dead_letters(&DeadFilter::default())
        .await
        .map_err(|_| ApiError::Unavailable)?;
    Ok(state
        .shared
        .broker
        .queue_stats()
        .into_iter()
        .map(|stats| {
            let dead_letters = dead
                .iter()
                .filter(|e| {
                    e.extensions.get("deadletterqueue").and_then(|v| v.as_str())
                        == Some(stats.name.as_str())
                })
                .count();
            QueueReport {
                stats,
                dead_letters,
            }
        })
        .collect())
}

/// `GET /queues`.
pub(crate) async fn list_queues<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let reports = queue_reports(&state).await?;
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&reports).unwrap_or_default(),
    ))
}

/// `GET /queues/{queue}`.
pub(crate) async fn show_queue<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    Path(queue): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let report = queue_reports(&state)
        .await?
        .into_iter()
        .find(|r| r.stats.name == queue)
        .ok_or(ApiError::UnknownQueue { queue })?;
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&report).unwrap_or_default(),
    ))
}

/// Which dead letters a request is about (query string or JSON body).
#[derive(Deserialize, Default)]
pub(crate) struct DeadSelection {
    /// A topic pattern matched against the original topic or queue.
    origin: Option<String>,
    /// Dead-letter event ids.
    #[serde(default)]
    ids: Vec<String>,
    /// Replay only: wait this long before the events are due again.
    delay: Option<String>,
    /// Drop only: required when neither `origin` nor `ids` narrows the selection.
    #[serde(default)]
    all: bool,
}

impl DeadSelection {
    fn filter(&self) -> Result<DeadFilter, ApiError> {
        let origin = self
            .origin
            .as_deref()
            .map(|o| {
                TopicPattern::parse(o).map_err(|e| ApiError::BadParameter {
                    detail: format!("origin {o:?}: {e}"),
                })
            })
            .transpose()?;
        Ok(DeadFilter {
            origin,
            ids: self.ids.clone(),
        })
    }
}

/// `GET /admin/dead?origin=PATTERN`.
pub(crate) async fn list_dead<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Query(selection): Query<DeadSelection>,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let dead = state
        .shared
        .broker
        .dead_letters(&selection.filter()?)
        .await
        .map_err(|_| ApiError::Unavailable)?;
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&dead).unwrap_or_default(),
    ))
}

/// The result of a replay.
#[derive(Serialize)]
struct ReplayReport {
    replayed: usize,
    /// Dead letters that could not be replayed (they stay in the store).
    failed: Vec<ReplayFailure>,
}

#[derive(Serialize)]
struct ReplayFailure {
    id: String,
    error: String,
}

/// Rebuilds the original event from a dead letter: same data and journey, caused by the
/// dead letter, without the dead-letter attributes.
fn revive(dead: &Event) -> (Option<String>, Event) {
    let text = |key: &str| {
        dead.extensions
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let queue = text("deadletterqueue");
    let topic = queue
        .clone()
        .or_else(|| text("deadlettertopic"))
        .unwrap_or_else(|| dead.topic.clone());
    let mut event = dead.caused(topic, dead.source.clone(), dead.data.clone());
    event
        .extensions
        .insert("replayedfrom".into(), dead.id.clone().into());
    (queue, event)
}

/// `POST /admin/dead/replay` with `{"origin": …, "ids": […], "delay": "10s"}`: re-publishes
/// each selected dead letter to its original topic (or queue), then removes those that
/// went through from the store.
pub(crate) async fn replay_dead<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    body: Option<Json<DeadSelection>>,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let selection = body.map(|Json(s)| s).unwrap_or_default();
    let filter = selection.filter()?;
    let delay = selection
        .delay
        .as_deref()
        .map(|d| {
            parse_duration(d).map_err(|e| ApiError::BadParameter {
                detail: format!("delay {d:?}: {e}"),
            })
        })
        .transpose()?;
    let broker = &state.shared.broker;
    let dead = broker
        .dead_letters(&filter)
        .await
        .map_err(|_| ApiError::Unavailable)?;
    let mut replayed = Vec::new();
    let mut failed = Vec::new();
    for letter in &dead {
        let (queue, event) = revive(letter);
        let result = match (&queue, delay) {
            (Some(queue), delay) => {
                let default = state
                    .shared
                    .queues
                    .borrow()
                    .get(queue)
                    .map_or(Duration::ZERO, |q| q.delay);
                broker.enqueue(queue, event, delay.unwrap_or(default)).await
            }
            (None, Some(delay)) => broker.publish_later(event, delay).await,
            (None, None) => broker.publish(event, Backpressure::Reject).await,
        };
        match result {
            Ok(()) => replayed.push(letter.id.clone()),
            Err(e) => failed.push(ReplayFailure {
                id: letter.id.clone(),
                error: e.to_string(),
            }),
        }
    }
    if !replayed.is_empty() {
        let taken = broker
            .take_dead_letters(&DeadFilter {
                origin: None,
                ids: replayed.clone(),
            })
            .await
            .map_err(|_| ApiError::Unavailable)?;
        info!(
            replayed = taken.len(),
            failed = failed.len(),
            "dead letters replayed"
        );
    }
    if !failed.is_empty() {
        warn!(
            failed = failed.len(),
            "some dead letters could not be replayed; they stay in the store"
        );
    }
    let report = ReplayReport {
        replayed: replayed.len(),
        failed,
    };
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&report).unwrap_or_default(),
    ))
}

/// `POST /admin/dead/drop` with `{"origin": …, "ids": […]}` or `{"all": true}`.
pub(crate) async fn drop_dead<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    body: Option<Json<DeadSelection>>,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let selection = body.map(|Json(s)| s).unwrap_or_default();
    if selection.origin.is_none() && selection.ids.is_empty() && !selection.all {
        return Err(ApiError::BadParameter {
            detail: "say which dead letters to drop: an origin, ids, or all".to_owned(),
        });
    }
    let taken = state
        .shared
        .broker
        .take_dead_letters(&selection.filter()?)
        .await
        .map_err(|_| ApiError::Unavailable)?;
    info!(dropped = taken.len(), "dead letters dropped");
    Ok(json_response(
        StatusCode::OK,
        format!("{{\"dropped\":{}}}", taken.len()),
    ))
}
