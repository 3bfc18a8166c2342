//! `ApiError`: every way an HTTP request can be refused, mapped to a status and a JSON
//! body `{"error": "...", "code": "..."}`. Messages are safe to show: broker and script
//! details go to the log, never to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// A refused request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid JSON: {detail}")]
    InvalidJson { detail: String },
    #[error("invalid topic name {topic:?}: {detail}")]
    InvalidTopic { topic: String, detail: String },
    #[error("invalid CloudEvent: {detail}")]
    InvalidEvent { detail: String },
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("unsupported content type {content_type:?}; send application/json or application/cloudevents+json")]
    UnsupportedMediaType { content_type: String },
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("too busy: the buffer of `{group}` is full; retry later")]
    Backpressure { group: String },
    #[error("the broker is unavailable; retry later")]
    Unavailable,
    #[error("the broker is out of memory; retry later")]
    BrokerOutOfMemory,
    #[error("invalid parameter: {detail}")]
    BadParameter { detail: String },
    #[error("reloading is not available in this process")]
    ReloadUnavailable,
    #[error("no queue named {queue:?}")]
    UnknownQueue { queue: String },
    #[error("no reply on `{topic}` within {after_ms} ms")]
    QueryTimeout { topic: String, after_ms: u128 },
    #[error("the query handler failed (request {request}); details are in the server's log")]
    QueryFailed { request: String },
    #[error("this broker cannot carry query replies")]
    QueriesUnsupported,
    #[error("store {store:?} is not exposed over HTTP (set `expose = true` in [stores.{store}])")]
    NotExposed { store: String },
    #[error("no key {key:?} in store {store:?}")]
    NoSuchKey { store: String, key: String },
    #[error("no journey {correlation:?} in the recent history")]
    UnknownJourney { correlation: String },
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson { .. }
            | ApiError::InvalidTopic { .. }
            | ApiError::InvalidEvent { .. }
            | ApiError::BadParameter { .. } => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::UnknownQueue { .. }
            | ApiError::NotExposed { .. }
            | ApiError::NoSuchKey { .. }
            | ApiError::UnknownJourney { .. } => StatusCode::NOT_FOUND,
            ApiError::QueryTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::QueryFailed { .. } => StatusCode::BAD_GATEWAY,
            ApiError::QueriesUnsupported => StatusCode::NOT_IMPLEMENTED,
            ApiError::Backpressure { .. }
            | ApiError::Unavailable
            | ApiError::BrokerOutOfMemory
            | ApiError::ReloadUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson { .. } => "invalid_json",
            ApiError::InvalidTopic { .. } => "invalid_topic",
            ApiError::InvalidEvent { .. } => "invalid_event",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Backpressure { .. } => "backpressure",
            ApiError::Unavailable => "unavailable",
            ApiError::BrokerOutOfMemory => "broker_out_of_memory",
            ApiError::BadParameter { .. } => "bad_parameter",
            ApiError::ReloadUnavailable => "reload_unavailable",
            ApiError::UnknownQueue { .. } => "unknown_queue",
            ApiError::QueryTimeout { .. } => "query_timeout",
            ApiError::QueryFailed { .. } => "query_failed",
            ApiError::QueriesUnsupported => "queries_unsupported",
            ApiError::NotExposed { .. } => "not_exposed",
            ApiError::NoSuchKey { .. } => "no_such_key",
            ApiError::UnknownJourney { .. } => "unknown_journey",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            serde_json::json!({ "error": self.to_string(), "code": self.code() }).to_string();
        let mut response = (self.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self {
            ApiError::Backpressure { .. } | ApiError::Unavailable | ApiError::BrokerOutOfMemory => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
