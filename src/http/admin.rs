//! Inspection and admin routes: queue state (`GET /queues`, `GET /queues/{queue}`) and the
//! dead-letter store (`GET /admin/dead`, `POST /admin/dead/replay`,
//! `POST /admin/dead/drop`), which `edaflow dead …` drives.
//!
//! Admin bodies and query strings are read strictly: an unknown or misspelt field is a 400
//! that names it (it never widens what is done), and replaying or dropping dead letters
//! needs an explicit selection (`{"all": true}`, or an origin and/or ids).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::broker::{Backpressure, Broker, DeadFilter, QueueStats};
use crate::duration::parse_duration;
use crate::event::Event;
use crate::http::cloudevents::is_json_type;
use crate::http::ingest::read_body;
use crate::http::{json_response, ApiError, ApiState};
use crate::pattern::TopicPattern;

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
        .runtime
        .broker
        .dead_letters(&DeadFilter::default())
        .await
        .map_err(|_| ApiError::Unavailable)?;
    let by_queue = dead_letters_by_queue(&dead);
    Ok(state
        .runtime
        .broker
        .queue_stats()
        .await
        .into_iter()
        .map(|stats| {
            let dead_letters = by_queue.get(&stats.name).copied().unwrap_or(0);
            QueueReport {
                stats,
                dead_letters,
            }
        })
        .collect())
}

/// How many of `dead` came from each queue (dead letters of topic events are in none).
pub(crate) fn dead_letters_by_queue(dead: &[Event]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for letter in dead {
        let queue = letter
            .extensions
            .get(crate::event::dead_letter::QUEUE)
            .and_then(|v| v.as_str());
        if let Some(queue) = queue {
            *counts.entry(queue.to_owned()).or_default() += 1;
        }
    }
    counts
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

/// `GET /admin/dead?origin=PATTERN`: which dead letters to list (all without `origin`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadQuery {
    /// A topic pattern matched against the original topic or queue.
    origin: Option<String>,
}

/// The body of `POST /admin/dead/replay`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayRequest {
    /// A topic pattern matched against the original topic or queue.
    origin: Option<String>,
    /// Dead-letter event ids.
    #[serde(default)]
    ids: Vec<String>,
    /// Every dead letter; only alone.
    #[serde(default)]
    all: bool,
    /// Wait this long before the events are due again.
    delay: Option<String>,
}

/// The body of `POST /admin/dead/drop`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DropRequest {
    origin: Option<String>,
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

/// What a field of an admin body holds.
#[derive(Clone, Copy)]
enum Kind {
    /// A string (or null).
    Text,
    /// An array of strings.
    Texts,
    Boolean,
}

impl Kind {
    fn holds(self, value: &serde_json::Value) -> bool {
        match self {
            Kind::Text => value.is_string() || value.is_null(),
            Kind::Texts => value
                .as_array()
                .is_some_and(|items| items.iter().all(serde_json::Value::is_string)),
            Kind::Boolean => value.is_boolean(),
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Text => "a string",
            Kind::Texts => "an array of strings",
            Kind::Boolean => "true or false",
        }
    }
}

const REPLAY_FIELDS: &[(&str, Kind)] = &[
    ("origin", Kind::Text),
    ("ids", Kind::Texts),
    ("all", Kind::Boolean),
    ("delay", Kind::Text),
];
const DROP_FIELDS: &[(&str, Kind)] = &[
    ("origin", Kind::Text),
    ("ids", Kind::Texts),
    ("all", Kind::Boolean),
];

/// The dead letters an admin request acts on: said explicitly, never by default.
///
/// # Errors
/// No selection at all (`action` says what would have been done), `all` together with a
/// narrower one, or an origin that is not a pattern.
fn selection(
    origin: Option<&str>,
    ids: &[String],
    all: bool,
    action: &str,
) -> Result<DeadFilter, ApiError> {
    let narrowed = origin.is_some() || !ids.is_empty();
    if all && narrowed {
        return Err(ApiError::BadParameter {
            detail: "`all` goes alone: give `all`, or an origin and/or ids".to_owned(),
        });
    }
    if !all && !narrowed {
        return Err(ApiError::BadParameter {
            detail: format!("say which dead letters to {action}: an origin, ids, or all"),
        });
    }
    dead_filter(origin, ids)
}

fn dead_filter(origin: Option<&str>, ids: &[String]) -> Result<DeadFilter, ApiError> {
    let origin = origin
        .map(|o| {
            TopicPattern::parse(o).map_err(|e| ApiError::BadParameter {
                detail: format!("origin {o:?}: {e}"),
            })
        })
        .transpose()?;
    Ok(DeadFilter {
        origin,
        ids: ids.to_vec(),
    })
}

/// Reads an admin request's JSON body strictly: an object whose fields are all in
/// `fields`, each holding its kind (a misspelt field is refused by name, never ignored),
/// or `None` for an empty body.
async fn strict_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    fields: &'static [(&'static str, Kind)],
    expected: &'static str,
) -> Result<Option<T>, ApiError> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let text = String::from_utf8_lossy(content_type.as_bytes());
        if !is_json_type(&text) {
            return Err(ApiError::UnsupportedMediaType {
                content_type: text.into_owned(),
            });
        }
    }
    let bytes = read_body(headers, body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::InvalidJson {
            detail: format!("{e} (the body is a JSON object)"),
        })?;
    for (name, value) in &object {
        let Some((_, kind)) = fields.iter().find(|(field, _)| field == name) else {
            return Err(ApiError::UnknownField {
                field: name.clone(),
                expected,
            });
        };
        if !kind.holds(value) {
            return Err(ApiError::BadParameter {
                detail: format!("`{name}` must be {}", kind.noun()),
            });
        }
    }
    serde_json::from_value(serde_json::Value::Object(object))
        .map(Some)
        .map_err(|e| ApiError::BadParameter {
            detail: e.to_string(),
        })
}

/// `GET /admin/dead?origin=PATTERN`.
pub(crate) async fn list_dead<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Query(query): Query<DeadQuery>,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let dead = state
        .runtime
        .broker
        .dead_letters(&dead_filter(query.origin.as_deref(), &[])?)
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
    let queue = text(crate::event::dead_letter::QUEUE);
    let topic = queue
        .clone()
        .or_else(|| text(crate::event::dead_letter::TOPIC))
        .unwrap_or_else(|| dead.topic.clone());
    let mut event = dead.caused(topic, dead.source.clone(), dead.data.clone());
    event
        .extensions
        .insert("replayedfrom".into(), dead.id.clone().into());
    (queue, event)
}

/// `POST /admin/dead/replay` with `{"origin": …, "ids": […], "delay": "10s"}` or
/// `{"all": true}`: re-publishes each selected dead letter to its original topic (or
/// queue), then removes those that went through from the store.
pub(crate) async fn replay_dead<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.authorize_change(&headers)?;
    let request: Option<ReplayRequest> = strict_body(
        &headers,
        body,
        state.config.body_limit,
        REPLAY_FIELDS,
        "origin, ids, all or delay",
    )
    .await?;
    let request = request.unwrap_or_default();
    let filter = selection(
        request.origin.as_deref(),
        &request.ids,
        request.all,
        "replay",
    )?;
    let delay = request
        .delay
        .as_deref()
        .map(|d| {
            parse_duration(d).map_err(|e| ApiError::BadParameter {
                detail: format!("delay {d:?}: {e}"),
            })
        })
        .transpose()?;
    let broker = &state.runtime.broker;
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
                    .runtime
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
    body: Body,
) -> Result<Response, ApiError> {
    state.authorize_change(&headers)?;
    let request: Option<DropRequest> = strict_body(
        &headers,
        body,
        state.config.body_limit,
        DROP_FIELDS,
        "origin, ids or all",
    )
    .await?;
    let request = request.unwrap_or_default();
    let filter = selection(request.origin.as_deref(), &request.ids, request.all, "drop")?;
    let taken = state
        .runtime
        .broker
        .take_dead_letters(&filter)
        .await
        .map_err(|_| ApiError::Unavailable)?;
    info!(dropped = taken.len(), "dead letters dropped");
    Ok(json_response(
        StatusCode::OK,
        format!("{{\"dropped\":{}}}", taken.len()),
    ))
}
