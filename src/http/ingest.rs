//! Turning an HTTP request into an event: content negotiation (plain JSON, structured and
//! binary CloudEvents), size limits, topic checks, then one publish that refuses rather
//! than waits when a buffer is full.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use tracing::{debug, warn};

use crate::broker::{Backpressure, Broker, BrokerError};
use crate::event::{new_id, Event, RawPayload, SPEC_VERSION};
use crate::flow::duration::parse_duration;
use crate::flow::pattern::validate_topic;
use crate::http::{json_response, ApiError, ApiState};
use crate::runtime::history::Pending;

/// `POST /topics/{topic}`.
pub(crate) async fn publish_topic<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let result = accept(&state, topic, Destination::Topic, &headers, body).await;
    count(&state, &result);
    result
}

/// `POST /deferred-exec`: the article's endpoint; publishes to the flow's relay topic.
pub(crate) async fn publish_deferred<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let topic = state.deferred_topic.clone();
    let result = accept(&state, topic, Destination::Topic, &headers, body).await;
    count(&state, &result);
    result
}

fn count<B: Broker>(state: &ApiState<B>, result: &Result<Response, ApiError>) {
    let http = &state.shared.metrics.http;
    let counter = match result {
        Ok(_) => &http.accepted,
        Err(ApiError::Backpressure { .. }) => &http.backpressured,
        Err(_) => &http.rejected,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Where an accepted event goes.
enum Destination {
    Topic,
    Queue(Duration),
}

/// `POST /queues/{queue}?delay=10s`: enqueue a work item directly.
pub(crate) async fn enqueue<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    Path(queue): Path<String>,
    Query(query): Query<EnqueueQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let result = async {
        state.authorize(&headers)?;
        let default_delay = state
            .shared
            .queues
            .borrow()
            .get(&queue)
            .map(|q| q.delay)
            .ok_or_else(|| ApiError::UnknownQueue {
                queue: queue.clone(),
            })?;
        let delay = match &query.delay {
            None => default_delay,
            Some(text) => parse_duration(text).map_err(|e| ApiError::BadParameter {
                detail: format!("delay {text:?}: {e} (write e.g. 500ms, 10s, 5m)"),
            })?,
        };
        accept(&state, queue, Destination::Queue(delay), &headers, body).await
    }
    .await;
    count(&state, &result);
    result
}

/// The query string of `POST /queues/{queue}`.
#[derive(Deserialize)]
pub(crate) struct EnqueueQuery {
    delay: Option<String>,
}

async fn accept<B: Broker>(
    state: &ApiState<B>,
    topic: String,
    destination: Destination,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let event = read_event(state, topic, headers, body).await?;
    let id = event.id.clone();
    let published_topic = event.topic.clone();
    let pending = Pending::of(&event, state.producer_name(), None);
    let result = match destination {
        Destination::Topic => {
            state
                .shared
                .broker
                .publish(event, Backpressure::Reject)
                .await
        }
        Destination::Queue(delay) => {
            state
                .shared
                .broker
                .enqueue(&published_topic, event, delay)
                .await
        }
    };
    match result {
        Ok(()) => {
            state.shared.metrics.published(&published_topic);
            state.shared.history.insert(pending);
            Ok(json_response(
                StatusCode::ACCEPTED,
                format!("{{\"id\":\"{id}\"}}"),
            ))
        }
        Err(e) => Err(refused(e)),
    }
}

/// The HTTP answer to a broker's refusal.
pub(crate) fn refused(error: BrokerError) -> ApiError {
    match error {
        BrokerError::Full { group } => ApiError::Backpressure { group },
        BrokerError::QueueFull { queue, .. } => ApiError::Backpressure { group: queue },
        BrokerError::OverBudget { held, .. } => ApiError::Backpressure { group: held },
        BrokerError::UnknownQueue { queue } => ApiError::UnknownQueue { queue },
        e @ BrokerError::DelayTooLong { .. } => ApiError::BadParameter {
            detail: e.to_string(),
        },
        // The broker logs each out-of-memory episode once, not once per refused request.
        BrokerError::OutOfMemory => ApiError::BrokerOutOfMemory,
        // The broker logs an outage once, when it starts; not once per refused request.
        e if e.is_transient() => {
            debug!(error = %e, "publish failed: the broker is unavailable");
            ApiError::Unavailable
        }
        e => {
            warn!(error = %e, "publish failed");
            ApiError::Unavailable
        }
    }
}

/// Checks the request and builds the event it carries (not yet published).
pub(crate) async fn read_event<B: Broker>(
    state: &ApiState<B>,
    topic: String,
    headers: &HeaderMap,
    body: Body,
) -> Result<Event, ApiError> {
    state.authorize(headers)?;
    validate_topic(&topic).map_err(|e| ApiError::InvalidTopic {
        topic: topic.clone(),
        detail: e.to_string(),
    })?;
    let mode = content_mode(headers)?;
    let limit = state.config.body_limit;
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if length > limit {
            return Err(ApiError::TooLarge { limit });
        }
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge { limit })?;
    Ok(match mode {
        Mode::Plain => {
            let mut event = Event::new(topic, state.source.clone(), parse_json(&bytes)?);
            // Valid JSON, so valid UTF-8: kept so the article's wire repeats it unchanged.
            event.raw = RawPayload(std::str::from_utf8(&bytes).ok().map(Arc::from));
            event
        }
        Mode::Binary => binary_event(topic, headers, &bytes, &state.source)?,
        Mode::Structured => structured_event(topic, &bytes)?,
    })
}

enum Mode {
    Plain,
    Structured,
    Binary,
}

fn content_mode(headers: &HeaderMap) -> Result<Mode, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        // curl without -H sends a form type; no header at all is taken as JSON (binary
        // mode when `ce-*` headers say so).
        if headers.contains_key("ce-specversion") {
            return Ok(Mode::Binary);
        }
        return Ok(Mode::Plain);
    };
    let text = value.to_str().unwrap_or("");
    let media = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" | "text/json" => {
            if headers.contains_key("ce-specversion") {
                Ok(Mode::Binary)
            } else {
                Ok(Mode::Plain)
            }
        }
        "application/cloudevents+json" => Ok(Mode::Structured),
        _ => Err(ApiError::UnsupportedMediaType {
            content_type: text.to_owned(),
        }),
    }
}

fn parse_json(bytes: &Bytes) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidJson {
        detail: e.to_string(),
    })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn check_type(topic: &str, ty: &str) -> Result<(), ApiError> {
    if ty == topic {
        Ok(())
    } else {
        Err(ApiError::InvalidEvent {
            detail: format!("type {ty:?} does not match the topic {topic:?} of the URL"),
        })
    }
}

fn parse_time(text: Option<&str>) -> Result<SystemTime, ApiError> {
    match text {
        None => Ok(SystemTime::now()),
        Some(t) => humantime::parse_rfc3339_weak(t).map_err(|e| ApiError::InvalidEvent {
            detail: format!("time {t:?}: {e}"),
        }),
    }
}

fn binary_event(
    topic: String,
    headers: &HeaderMap,
    bytes: &Bytes,
    default_source: &str,
) -> Result<Event, ApiError> {
    let version = header_str(headers, "ce-specversion").unwrap_or("");
    if version != SPEC_VERSION {
        return Err(ApiError::InvalidEvent {
            detail: format!("ce-specversion {version:?} is not supported (1.0 is)"),
        });
    }
    if let Some(ty) = header_str(headers, "ce-type") {
        check_type(&topic, ty)?;
    }
    let mut event = Event::new(topic, default_source, parse_json(bytes)?);
    if let Some(id) = header_str(headers, "ce-id") {
        event.id = id.to_owned();
        event.correlation_id = id.to_owned();
    }
    if let Some(source) = header_str(headers, "ce-source") {
        event.source = source.to_owned();
    }
    event.time = parse_time(header_str(headers, "ce-time"))?;
    if let Some(c) = header_str(headers, "ce-correlationid") {
        event.correlation_id = c.to_owned();
    }
    if let Some(c) = header_str(headers, "ce-causationid") {
        event.causation_id = Some(c.to_owned());
    }
    Ok(event)
}

/// A structured CloudEvent as clients send it: optional fields are filled in.
#[derive(Deserialize)]
struct IncomingEvent {
    specversion: String,
    id: Option<String>,
    source: String,
    #[serde(rename = "type")]
    ty: String,
    time: Option<String>,
    datacontenttype: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
    correlationid: Option<String>,
    causationid: Option<String>,
    #[serde(flatten)]
    extensions: BTreeMap<String, serde_json::Value>,
}

fn structured_event(topic: String, bytes: &Bytes) -> Result<Event, ApiError> {
    let incoming: IncomingEvent =
        serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidEvent {
            detail: e.to_string(),
        })?;
    if incoming.specversion != SPEC_VERSION {
        return Err(ApiError::InvalidEvent {
            detail: format!(
                "specversion {:?} is not supported (1.0 is)",
                incoming.specversion
            ),
        });
    }
    check_type(&topic, &incoming.ty)?;
    if let Some(ct) = &incoming.datacontenttype {
        if !ct.starts_with("application/json") {
            return Err(ApiError::InvalidEvent {
                detail: format!("datacontenttype {ct:?}: only JSON data is supported"),
            });
        }
    }
    let id = incoming.id.unwrap_or_else(new_id);
    Ok(Event {
        specversion: SPEC_VERSION.to_owned(),
        correlation_id: incoming.correlationid.unwrap_or_else(|| id.clone()),
        id,
        source: incoming.source,
        topic,
        time: parse_time(incoming.time.as_deref())?,
        datacontenttype: "application/json".to_owned(),
        data: incoming.data,
        causation_id: incoming.causationid,
        hops: 0,
        extensions: incoming.extensions,
        raw: Default::default(),
    })
}
