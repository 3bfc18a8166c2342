//! CQRS over HTTP: `POST /query/{topic}` publishes the body as a query event carrying a
//! reply address and waits for the handler's `reply(…)` (200), its failure (502, with a safe
//! message) or the topic's timeout (504, default 5 s); `GET /stores/{store}/{key}` reads a
//! store the flow exposes (`[stores.NAME] expose = true`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tracing::warn;

use crate::broker::{Backpressure, Broker};
use crate::event::{new_id, REPLY_TO_EXTENSION};
use crate::http::ingest::{read_event, refused};
use crate::http::{json_response, ApiError, ApiState};

/// How long a query waits for its reply when its topic sets no `timeout`.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// `POST /query/{topic}`.
pub(crate) async fn query<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut event = read_event(&state, topic, &headers, body).await?;
    let broker = &state.runtime.broker;
    let request = new_id();
    let Some(replies) = broker.replies() else {
        return Err(ApiError::QueriesUnsupported);
    };
    let answer = replies.await_reply(&request);
    event.extensions.insert(
        REPLY_TO_EXTENSION.into(),
        replies.reply_address(&request).into(),
    );
    let timeout = state
        .runtime
        .topics
        .borrow()
        .get(&event.topic)
        .and_then(|t| t.timeout)
        .unwrap_or(DEFAULT_QUERY_TIMEOUT);
    let topic = event.topic.clone();
    if let Err(e) = broker.publish(event, Backpressure::Reject).await {
        replies.forget_reply(&request);
        return Err(refused(e));
    }
    state.runtime.metrics.published(&topic);
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(Ok(data))) => Ok(json_response(StatusCode::OK, data.to_string())),
        Ok(Ok(Err(message))) => {
            warn!(%topic, request = %request, %message, "query failed");
            Err(ApiError::QueryFailed { request })
        }
        Ok(Err(_)) => Err(ApiError::Unavailable),
        Err(_) => {
            replies.forget_reply(&request);
            Err(ApiError::QueryTimeout {
                topic,
                after_ms: timeout.as_millis(),
            })
        }
    }
}

/// `GET /stores/{store}/{key}`.
pub(crate) async fn read_store<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    Path((store, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let exposed = state
        .runtime
        .stores
        .borrow()
        .get(&store)
        .is_some_and(|s| s.expose);
    if !exposed {
        return Err(ApiError::NotExposed { store });
    }
    let Some(reader) = state.runtime.broker.stores() else {
        return Err(ApiError::NoSuchKey { store, key });
    };
    // `StoreRead::get` is synchronous, and on Redis it waits for a round trip: it runs
    // where waiting holds up no other request.
    let read = {
        let (store, key) = (store.clone(), key.clone());
        tokio::task::spawn_blocking(move || reader.get(&store, &key))
    };
    let value = read
        .await
        .map_err(|e| {
            warn!(error = %e, "a store read's thread failed");
            ApiError::Unavailable
        })?
        .map_err(|e| {
            warn!(error = %e, "a store read failed");
            ApiError::Unavailable
        })?
        .ok_or(ApiError::NoSuchKey { store, key })?;
    Ok(json_response(StatusCode::OK, value.to_string()))
}
