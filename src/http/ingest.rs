//! Turning an HTTP request into an event: content negotiation (plain JSON, structured and
//! binary CloudEvents, read by `http::cloudevents`), the body's size and time limits, topic
//! checks, then one publish that refuses rather than waits when a buffer is full.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use tracing::{debug, warn};

use crate::broker::{Backpressure, Broker, BrokerError};
use crate::duration::parse_duration;
use crate::event::{limits, Event};
use crate::http::cloudevents;
use crate::http::conn::BodyTimeout;
use crate::http::error::LimitedField;
use crate::http::{json_response, ApiError, ApiState};
use crate::pattern::{validate_topic, PatternError};
use crate::runtime::history::Pending;
use crate::tracecontext::{self, TRACEPARENT, TRACESTATE};

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
    let http = &state.runtime.metrics.http;
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
        state.authorize_bearer(&headers)?;
        let default_delay = state
            .runtime
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

/// The query string of `POST /queues/{queue}` (a misspelt `delay` is refused, not
/// ignored).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
    let mut event = read_event(state, topic, headers, body).await?;
    if let Destination::Topic = destination {
        check_schema(state, &event)?;
    }
    // With export on, the event's trace continues from a span of its own here.
    let span = state.runtime.tracing.as_ref().map(|tracing| {
        let span = tracing.ingest_span(state.producer_name(), &event);
        span.stamp(std::iter::once(&mut event));
        span
    });
    let id = event.id.clone();
    let published_topic = event.topic.clone();
    let pending = Pending::of(&event, state.producer_name(), None);
    let result = match destination {
        Destination::Topic => {
            state
                .runtime
                .broker
                .publish(event, Backpressure::Reject)
                .await
        }
        Destination::Queue(delay) => {
            state
                .runtime
                .broker
                .enqueue(&published_topic, event, delay)
                .await
        }
    };
    if let Some(span) = span {
        match &result {
            Ok(()) => span.end("ok", None),
            Err(e) => span.end("error", Some(&e.to_string())),
        }
    }
    match result {
        Ok(()) => {
            state.runtime.metrics.published(&published_topic);
            state.runtime.history.insert(pending);
            Ok(json_response(StatusCode::ACCEPTED, accepted_body(&id)))
        }
        Err(e) => Err(refused(e)),
    }
}

/// Checks an event's data against its topic's schema, when the topic has one: a 400
/// naming the JSON pointer that failed. A set without schemas pays one empty-map check.
fn check_schema<B: Broker>(state: &ApiState<B>, event: &Event) -> Result<(), ApiError> {
    let schemas = state.runtime.schemas.borrow();
    if schemas.ingest.is_empty() {
        return Ok(());
    }
    let Some(schema) = schemas.ingest.get(&event.topic) else {
        return Ok(());
    };
    schema
        .check(&event.data)
        .map_err(|violation| ApiError::SchemaMismatch {
            topic: event.topic.clone(),
            pointer: violation.pointer,
            reason: violation.reason,
        })
}

/// The body of a 202: `{"id":"…"}`, the id escaped as JSON needs (a client may choose
/// any id); generated ids need no escaping and skip the serializer.
fn accepted_body(id: &str) -> String {
    if id.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        format!("{{\"id\":\"{id}\"}}")
    } else {
        serde_json::json!({ "id": id }).to_string()
    }
}

/// The HTTP answer to a broker's refusal.
pub(crate) fn refused(error: BrokerError) -> ApiError {
    match error {
        BrokerError::Full { group } => ApiError::Backpressure { group },
        BrokerError::QueueFull { queue, .. } => ApiError::Backpressure { group: queue },
        BrokerError::OverBudget { held, bytes } => ApiError::OverBudget { held, bytes },
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
    state.authorize_bearer(headers)?;
    check_topic(&topic)?;
    let mode = content_mode(headers)?;
    let bytes = read_body(headers, body, state.config.body_limit).await?;
    let mut event = match mode {
        Mode::Plain => cloudevents::plain(topic, &state.source, &bytes),
        Mode::Binary => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            cloudevents::binary(
                topic,
                headers,
                content_type.as_deref(),
                &bytes,
                &state.source,
            )
        }
        Mode::Structured => cloudevents::structured(topic, &bytes),
    }?;
    trace_context(&mut event, headers);
    Ok(event)
}

/// The event's W3C trace context: its own (`ce-traceparent` in binary mode, the
/// `traceparent` attribute in structured mode), else the request's `traceparent` and
/// `tracestate` headers. An invalid value is dropped (the event starts a new trace).
fn trace_context(event: &mut Event, headers: &HeaderMap) {
    if !event.extensions.contains_key(TRACEPARENT) {
        if let Some(parent) = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()) {
            event.extensions.remove(TRACESTATE);
            event
                .extensions
                .insert(TRACEPARENT.to_owned(), parent.to_owned().into());
            // Repeated `tracestate` headers are one list (RFC 9110 field lines).
            let state: Vec<&str> = headers
                .get_all(TRACESTATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if !state.is_empty() {
                event
                    .extensions
                    .insert(TRACESTATE.to_owned(), state.join(",").into());
            }
        }
    }
    if event.extensions.contains_key(TRACEPARENT) || event.extensions.contains_key(TRACESTATE) {
        tracecontext::sanitize(&mut event.extensions);
    }
}

/// A topic (or queue) name from a URL.
fn check_topic(topic: &str) -> Result<(), ApiError> {
    if topic.len() > limits::MAX_TOPIC_BYTES {
        return Err(ApiError::TooLong {
            field: LimitedField::Topic,
            limit: limits::MAX_TOPIC_BYTES,
        });
    }
    validate_topic(topic).map_err(|e| match e {
        PatternError::TooLong { max } => ApiError::TooLong {
            field: LimitedField::Topic,
            limit: max,
        },
        e => ApiError::InvalidTopic {
            topic: topic.to_owned(),
            detail: e.to_string(),
        },
    })
}

/// Reads a whole request body of at most `limit` bytes: 413 past it (on the declared
/// length alone when there is one), 408 when it does not arrive within the producer's
/// `body_timeout`.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if length > limit as u64 {
            return Err(ApiError::TooLarge { limit });
        }
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let e = e.into_inner();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
        while let Some(error) = cause {
            if let Some(timeout) = error.downcast_ref::<BodyTimeout>() {
                return ApiError::BodyTimeout {
                    after_ms: timeout.after.as_millis(),
                };
            }
            if error.is::<http_body_util::LengthLimitError>() {
                return ApiError::TooLarge { limit };
            }
            cause = error.source();
        }
        ApiError::BadRequest {
            detail: "the request body could not be read to its end".to_owned(),
        }
    })
}

enum Mode {
    Plain,
    Structured,
    Binary,
}

fn content_mode(headers: &HeaderMap) -> Result<Mode, ApiError> {
    let binary = headers.contains_key("ce-specversion");
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        // curl without -H sends a form type; no header at all is taken as JSON (binary
        // mode when `ce-*` headers say so).
        return Ok(if binary { Mode::Binary } else { Mode::Plain });
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let media = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media == "application/cloudevents+json" {
        return Ok(Mode::Structured);
    }
    if binary {
        // Binary mode carries data of any type: JSON is read, anything else kept as bytes.
        return Ok(Mode::Binary);
    }
    if cloudevents::is_json_type(&media) {
        Ok(Mode::Plain)
    } else {
        Err(ApiError::UnsupportedMediaType {
            content_type: text.into_owned(),
        })
    }
}

#[cfg(test)]
mod accepted_tests {
    use super::accepted_body;

    #[test]
    fn an_accepted_body_is_json_whatever_the_id() {
        for id in [
            "01J0000000000000000000000A",
            "a\\c",
            "say \"hi\"",
            "tab\there",
            "é",
        ] {
            let body: serde_json::Value = serde_json::from_str(&accepted_body(id)).unwrap();
            assert_eq!(body["id"], id);
        }
    }
}
