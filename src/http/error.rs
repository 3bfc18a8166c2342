//! `ApiError`: every way an HTTP request can be refused, mapped to a status and a JSON
//! body `{"error": "...", "code": "..."}`. Messages are safe to show: broker and script
//! details go to the log, never to the client. The codes are stable: clients match on
//! them, so a code is never renamed or reused for another refusal.
//!
//! Refusals that happen before a request reaches the router (a malformed head, a timeout,
//! too many connections) are written by `http::conn` and `http::server` through
//! `ApiError::raw_response`, so they read the same.

use std::fmt;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::event::limits;

/// A refused request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid JSON: {detail}")]
    InvalidJson { detail: String },
    #[error("invalid topic name {topic:?}: {detail}")]
    InvalidTopic { topic: String, detail: String },
    #[error("invalid CloudEvent: {detail}")]
    InvalidEvent { detail: String },
    #[error("invalid extension attribute name {name:?}: names are 1 to {max} lowercase letters (a-z) and digits (0-9)", max = limits::MAX_EXTENSION_NAME_BYTES)]
    InvalidExtensionName { name: String },
    #[error("invalid value of extension attribute `{name}`: {detail}")]
    InvalidExtensionValue { name: String, detail: String },
    #[error("{}", .field.message(*.limit))]
    TooLong { field: LimitedField, limit: usize },
    #[error("data nested more than {limit} levels deep")]
    DataTooDeep { limit: usize },
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("unsupported content type {content_type:?}; send application/json or application/cloudevents+json")]
    UnsupportedMediaType { content_type: String },
    #[error("unknown field `{field}` in the request body; expected {expected}")]
    UnknownField {
        field: String,
        expected: &'static str,
    },
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error(
        "a request authorised by the console's cookie must carry the header `X-Edaflow-Console: 1`"
    )]
    Csrf,
    #[error("too busy: the buffer of `{group}` is full; retry later")]
    Backpressure { group: String },
    #[error("too busy: {held} are over their byte budget ({bytes} bytes); retry later")]
    OverBudget { held: String, bytes: usize },
    #[error("the broker is unavailable; retry later")]
    Unavailable,
    #[error("the broker is out of memory; retry later")]
    BrokerOutOfMemory,
    #[error("invalid parameter: {detail}")]
    BadParameter { detail: String },
    #[error("bad request: {detail}")]
    BadRequest { detail: String },
    #[error("the data does not match the schema of topic `{topic}` at {}: {reason}", if .pointer.is_empty() { "(the data itself)" } else { .pointer.as_str() })]
    SchemaMismatch {
        topic: String,
        /// The JSON pointer (instance path) of the value that failed; `""` is the data.
        pointer: String,
        reason: String,
    },
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
    #[error("no route {method} {path}")]
    NotFound { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the request head did not arrive within {after_ms} ms")]
    HeaderTimeout { after_ms: u128 },
    #[error("the request body did not arrive within {after_ms} ms")]
    BodyTimeout { after_ms: u128 },
    #[error("the request head is larger than this server reads")]
    HeadersTooLarge,
    #[error("the request's URI is longer than this server reads")]
    UriTooLong,
    #[error("too many connections (at most {limit} at once); retry later")]
    TooManyConnections { limit: usize },
    #[error("the request was refused ({status})")]
    Refused { status: u16 },
    #[error("{}", .refusal.message(.id))]
    BadFile { id: String, refusal: FileRefusal },
    #[error("{}", .conflict.message())]
    EditConflict {
        conflict: Conflict,
        /// The version of the file on disk now, if there is one.
        version: Option<String>,
    },
    #[error("send `If-Match` with the version that was read, or `If-None-Match: *` to create a new file")]
    PreconditionRequired,
    #[error("{what} is not UTF-8 text")]
    NotUtf8 { what: &'static str },
    #[error("the file could not be read or written; details are in the server's log")]
    FileIo,
}

/// Why a console file id (`ROOT/relative/path`) is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileRefusal {
    /// It does not start with a root's index and a slash.
    NoRoot,
    /// No flow folder has that index.
    UnknownRoot,
    /// It starts with `/`.
    Absolute,
    /// A `..` part.
    ParentPart,
    /// An empty or `.` part (`0//a.rhai`, `0/./a.rhai`, a trailing slash).
    EmptyPart,
    Backslash,
    Nul,
    /// Not a `.toml` or `.rhai` file.
    Extension,
    /// A link that leads out of its flow folder (or nowhere).
    OutsideRoot,
    /// No such file, or no such folder for a new one.
    Missing,
}

impl FileRefusal {
    fn code(self) -> &'static str {
        match self {
            FileRefusal::NoRoot => "file_id_root",
            FileRefusal::UnknownRoot => "unknown_root",
            FileRefusal::Absolute => "file_id_absolute",
            FileRefusal::ParentPart => "file_id_parent",
            FileRefusal::EmptyPart => "file_id_empty_part",
            FileRefusal::Backslash => "file_id_backslash",
            FileRefusal::Nul => "file_id_nul",
            FileRefusal::Extension => "file_id_extension",
            FileRefusal::OutsideRoot => "file_outside_root",
            FileRefusal::Missing => "unknown_file",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            FileRefusal::UnknownRoot | FileRefusal::Missing => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn message(self, id: &str) -> String {
        let why = match self {
            FileRefusal::NoRoot => "does not start with a flow folder's index (`0/flow.toml`)",
            FileRefusal::UnknownRoot => "names a flow folder that does not exist",
            FileRefusal::Absolute => "is an absolute path; ids are `ROOT/relative/path`",
            FileRefusal::ParentPart => "has a `..` part",
            FileRefusal::EmptyPart => "has an empty or `.` part",
            FileRefusal::Backslash => "has a backslash",
            FileRefusal::Nul => "has a NUL character",
            FileRefusal::Extension => "is not a `.toml` or `.rhai` file",
            FileRefusal::OutsideRoot => "leads outside its flow folder",
            FileRefusal::Missing => "names no file",
        };
        format!("file id {id:?} {why}")
    }
}

/// How a save met a change on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// The file is not the version the save was based on.
    Changed,
    /// The file was deleted since it was read.
    Deleted,
    /// A new file was to be created, but one exists.
    Exists,
}

impl Conflict {
    fn message(self) -> &'static str {
        match self {
            Conflict::Changed => "the file changed on disk since it was read",
            Conflict::Deleted => "the file was deleted since it was read",
            Conflict::Exists => "the file already exists",
        }
    }
}

/// A client-chosen string edaflow keeps, bounded by `event::limits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitedField {
    Id,
    CorrelationId,
    CausationId,
    Source,
    Topic,
    ExtensionName,
    ExtensionValue,
    /// The number of extension attributes, not a length.
    Extensions,
}

impl LimitedField {
    fn code(self) -> &'static str {
        match self {
            LimitedField::Id => "id_too_long",
            LimitedField::CorrelationId => "correlationid_too_long",
            LimitedField::CausationId => "causationid_too_long",
            LimitedField::Source => "source_too_long",
            LimitedField::Topic => "topic_too_long",
            LimitedField::ExtensionName => "extension_name_too_long",
            LimitedField::ExtensionValue => "extension_value_too_long",
            LimitedField::Extensions => "too_many_extensions",
        }
    }

    fn message(self, limit: usize) -> String {
        let what = match self {
            LimitedField::Id => "`id`",
            LimitedField::CorrelationId => "`correlationid`",
            LimitedField::CausationId => "`causationid`",
            LimitedField::Source => "`source`",
            LimitedField::Topic => "the topic name",
            LimitedField::ExtensionName => "an extension attribute's name",
            LimitedField::ExtensionValue => "an extension attribute's value",
            LimitedField::Extensions => {
                return format!("more than {limit} extension attributes");
            }
        };
        format!("{what} is longer than {limit} bytes")
    }
}

impl fmt::Display for LimitedField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl ApiError {
    /// The HTTP status of this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson { .. }
            | ApiError::InvalidTopic { .. }
            | ApiError::InvalidEvent { .. }
            | ApiError::InvalidExtensionName { .. }
            | ApiError::InvalidExtensionValue { .. }
            | ApiError::TooLong { .. }
            | ApiError::DataTooDeep { .. }
            | ApiError::UnknownField { .. }
            | ApiError::BadParameter { .. }
            | ApiError::BadRequest { .. }
            | ApiError::SchemaMismatch { .. }
            | ApiError::NotUtf8 { .. } => StatusCode::BAD_REQUEST,
            ApiError::BadFile { refusal, .. } => refusal.status(),
            ApiError::EditConflict { .. } => StatusCode::CONFLICT,
            ApiError::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
            ApiError::FileIo => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Csrf => StatusCode::FORBIDDEN,
            ApiError::UnknownQueue { .. }
            | ApiError::NotExposed { .. }
            | ApiError::NoSuchKey { .. }
            | ApiError::UnknownJourney { .. }
            | ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::HeaderTimeout { .. } | ApiError::BodyTimeout { .. } => {
                StatusCode::REQUEST_TIMEOUT
            }
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::UriTooLong => StatusCode::URI_TOO_LONG,
            ApiError::QueryTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::QueryFailed { .. } => StatusCode::BAD_GATEWAY,
            ApiError::QueriesUnsupported => StatusCode::NOT_IMPLEMENTED,
            ApiError::Backpressure { .. }
            | ApiError::OverBudget { .. }
            | ApiError::Unavailable
            | ApiError::BrokerOutOfMemory
            | ApiError::ReloadUnavailable
            | ApiError::TooManyConnections { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Refused { status } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
            }
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson { .. } => "invalid_json",
            ApiError::InvalidTopic { .. } => "invalid_topic",
            ApiError::InvalidEvent { .. } => "invalid_event",
            ApiError::InvalidExtensionName { .. } => "invalid_extension_name",
            ApiError::InvalidExtensionValue { .. } => "invalid_extension_value",
            ApiError::TooLong { field, .. } => field.code(),
            ApiError::DataTooDeep { .. } => "data_too_deep",
            ApiError::TooLarge { .. } => "body_too_large",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::UnknownField { .. } => "unknown_field",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Csrf => "csrf",
            // One family for every "too busy, retry later": clients back off alike.
            ApiError::Backpressure { .. } | ApiError::OverBudget { .. } => "backpressure",
            ApiError::Unavailable => "unavailable",
            ApiError::BrokerOutOfMemory => "broker_out_of_memory",
            ApiError::BadParameter { .. } => "bad_parameter",
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::SchemaMismatch { .. } => "schema_mismatch",
            ApiError::ReloadUnavailable => "reload_unavailable",
            ApiError::UnknownQueue { .. } => "unknown_queue",
            ApiError::QueryTimeout { .. } => "query_timeout",
            ApiError::QueryFailed { .. } => "query_failed",
            ApiError::QueriesUnsupported => "queries_unsupported",
            ApiError::NotExposed { .. } => "not_exposed",
            ApiError::NoSuchKey { .. } => "no_such_key",
            ApiError::UnknownJourney { .. } => "unknown_journey",
            ApiError::NotFound { .. } => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::HeaderTimeout { .. } => "header_timeout",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::HeadersTooLarge => "headers_too_large",
            ApiError::UriTooLong => "uri_too_long",
            ApiError::TooManyConnections { .. } => "too_many_connections",
            ApiError::Refused { .. } => "refused",
            ApiError::BadFile { refusal, .. } => refusal.code(),
            ApiError::EditConflict { .. } => "edit_conflict",
            ApiError::PreconditionRequired => "precondition_required",
            ApiError::NotUtf8 { .. } => "not_utf8",
            ApiError::FileIo => "file_io",
        }
    }

    /// The JSON body: `{"error": "...", "code": "..."}`; a schema mismatch adds `pointer` and
    /// `reason`. An edit conflict reads as the
    /// console's contract has it: `{"error": "edit_conflict", "detail": "...", "version":
    /// "<on disk>"}`, with the `code` too.
    pub fn body(&self) -> String {
        if let ApiError::EditConflict { version, .. } = self {
            return serde_json::json!({
                "error": self.code(),
                "code": self.code(),
                "detail": self.to_string(),
                "version": version,
            })
            .to_string();
        }
        if let ApiError::SchemaMismatch {
            pointer, reason, ..
        } = self
        {
            return serde_json::json!({
                "error": self.to_string(),
                "code": self.code(),
                "pointer": pointer,
                "reason": reason,
            })
            .to_string();
        }
        serde_json::json!({ "error": self.to_string(), "code": self.code() }).to_string()
    }

    /// Whether the client is told to come back later (`Retry-After: 1`).
    fn retry_later(&self) -> bool {
        matches!(
            self,
            ApiError::Backpressure { .. }
                | ApiError::OverBudget { .. }
                | ApiError::Unavailable
                | ApiError::BrokerOutOfMemory
                | ApiError::TooManyConnections { .. }
        )
    }

    /// Whether the connection cannot carry another request after this answer: the
    /// request's body was not read to its end, or the client was too slow.
    fn closes(&self) -> bool {
        matches!(
            self,
            ApiError::TooLarge { .. }
                | ApiError::HeaderTimeout { .. }
                | ApiError::BodyTimeout { .. }
                | ApiError::HeadersTooLarge
                | ApiError::UriTooLong
                | ApiError::TooManyConnections { .. }
        )
    }

    /// The whole HTTP/1.1 answer as bytes (`Connection: close`), for refusals written
    /// straight to a socket, outside the router.
    pub fn raw_response(&self) -> Vec<u8> {
        let status = self.status();
        let body = self.body();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if self.retry_later() {
            head.push_str("retry-after: 1\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        bytes
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), self.body()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.retry_later() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ApiError::Unauthorized) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.closes() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_responses_are_complete_json_answers() {
        let raw = ApiError::TooManyConnections { limit: 3 }.raw_response();
        let text = String::from_utf8(raw).expect("ASCII");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nretry-after: 1"), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(json["code"], "too_many_connections");
        assert_eq!(
            json["error"],
            "too many connections (at most 3 at once); retry later"
        );
    }

    #[test]
    fn over_budget_reads_plainly_in_the_backpressure_family() {
        let e = ApiError::OverBudget {
            held: "the delayed events".into(),
            bytes: 1024,
        };
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code(), "backpressure");
        assert_eq!(
            e.to_string(),
            "too busy: the delayed events are over their byte budget (1024 bytes); retry later"
        );
    }

    #[test]
    fn length_refusals_name_their_field() {
        let e = ApiError::TooLong {
            field: LimitedField::CorrelationId,
            limit: 256,
        };
        assert_eq!(e.code(), "correlationid_too_long");
        assert_eq!(e.to_string(), "`correlationid` is longer than 256 bytes");
        let e = ApiError::TooLong {
            field: LimitedField::Extensions,
            limit: 64,
        };
        assert_eq!(e.code(), "too_many_extensions");
        assert_eq!(e.to_string(), "more than 64 extension attributes");
    }

    #[test]
    fn an_edit_conflict_carries_the_version_on_disk() {
        let e = ApiError::EditConflict {
            conflict: Conflict::Changed,
            version: Some("00ff".into()),
        };
        assert_eq!(e.status(), StatusCode::CONFLICT);
        let body: serde_json::Value = serde_json::from_str(&e.body()).expect("JSON");
        assert_eq!(
            body,
            serde_json::json!({
                "error": "edit_conflict",
                "code": "edit_conflict",
                "detail": "the file changed on disk since it was read",
                "version": "00ff",
            })
        );
    }

    #[test]
    fn file_refusals_have_their_own_codes() {
        let e = ApiError::BadFile {
            id: "0/../x.rhai".into(),
            refusal: FileRefusal::ParentPart,
        };
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.code(), "file_id_parent");
        assert_eq!(e.to_string(), "file id \"0/../x.rhai\" has a `..` part");
        let e = ApiError::BadFile {
            id: "5/x.rhai".into(),
            refusal: FileRefusal::UnknownRoot,
        };
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.code(), "unknown_root");
    }
}
