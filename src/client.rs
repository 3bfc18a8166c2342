//! A small HTTP/1.1 client for the CLI commands that talk to a running instance
//! (`publish`, `query`, `tail`, `trace`, `dead`, `graph --live`). Plain `http://` on hyper's
//! connection API; nothing else is needed to reach a loopback address.
//!
//! A `Target` keeps one HTTP/1.1 connection alive across its requests (`publish -` sends
//! every line on it) and opens another, once, when the server had closed it as the
//! request went out (closed or reset with not a byte of answer). Connecting is bounded by the target's timeout, and so is waiting for
//! a whole answer; a stream (`tail`) is bounded only while connecting.
//!
//! A failure is never an empty answer: a connection that fails, a status that is not 2xx
//! (with the `code` and `error` of the server's JSON body when it sent one) and a body
//! that is not what the command expects are each a `ClientError` the user sees.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

/// Why a request to a running instance failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ClientError {
    #[error("invalid URL {url:?}")]
    #[diagnostic(
        code(edaflow::client::url),
        help("use http://HOST:PORT, e.g. http://127.0.0.1:3000")
    )]
    Url { url: String },
    #[error("cannot connect to {addr}")]
    #[diagnostic(
        code(edaflow::client::connect),
        help("is `edaflow run` running there? Its HTTP producer sets the address (`listen`)")
    )]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no connection to {addr} within {}", crate::duration::format_duration(*.after))]
    #[diagnostic(
        code(edaflow::client::connect_timeout),
        help("is the address right, and reachable from here? --timeout sets how long to wait")
    )]
    ConnectTimeout { addr: String, after: Duration },
    #[error("no answer to {request} within {}", crate::duration::format_duration(*.after))]
    #[diagnostic(
        code(edaflow::client::timeout),
        help("the instance accepted the connection but did not answer; --timeout sets how long to wait")
    )]
    Timeout { request: String, after: Duration },
    #[error("HTTP error talking to {addr}")]
    #[diagnostic(code(edaflow::client::http))]
    Http {
        addr: String,
        #[source]
        source: hyper::Error,
    },
    #[error("`{path}` cannot be sent as a request path")]
    #[diagnostic(
        code(edaflow::client::path),
        help("topic names are letters, digits, `_`, `-`, `:` and `.`")
    )]
    Path { path: String },
    #[error("the token cannot be sent in an `Authorization` header")]
    #[diagnostic(
        code(edaflow::client::token),
        help("a token is visible ASCII without spaces or control characters")
    )]
    Token,
    #[error("{}", status_text(.status, .code.as_deref(), .request, .message.as_deref()))]
    #[diagnostic(code(edaflow::client::status))]
    Status {
        /// The method and path, e.g. `GET /admin/dead`.
        request: String,
        status: u16,
        /// The server's `code`, when its body is edaflow's JSON error.
        code: Option<String>,
        /// The server's `error`, else the start of its body; `None` for an empty body.
        message: Option<String>,
    },
    #[error("unexpected answer to {request}: expected {expected}, got {excerpt}")]
    #[diagnostic(
        code(edaflow::client::reply),
        help("is --url the address of an edaflow instance's HTTP producer, of this version?")
    )]
    Reply {
        /// The method and path, e.g. `GET /admin/dead`.
        request: String,
        /// What the command reads, e.g. `a JSON array of dead letters`.
        expected: &'static str,
        /// The start of what came instead.
        excerpt: String,
        #[source]
        source: Option<serde_json::Error>,
    },
}

/// How many characters of a server's body an error message quotes.
const EXCERPT_CHARS: usize = 200;

/// `ClientError::Status`'s message: `the server answered 404 Not Found (unknown_journey) to
/// GET /trace/x: no journey "x" in the recent history`.
fn status_text(status: &u16, code: Option<&str>, request: &str, message: Option<&str>) -> String {
    let reason = hyper::StatusCode::from_u16(*status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(|r| format!(" {r}"))
        .unwrap_or_default();
    let code = code.map(|c| format!(" ({c})")).unwrap_or_default();
    let message = message.map(|m| format!(": {m}")).unwrap_or_default();
    format!("the server answered {status}{reason}{code} to {request}{message}")
}

/// The start of a body, as text fit for a terminal: at most `EXCERPT_CHARS` characters,
/// control characters escaped (a server cannot move the cursor or change colours).
/// `None` for a body of only whitespace.
fn excerpt(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == EXCERPT_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// The error for a non-2xx answer: the `code` and `error` of edaflow's JSON error body
/// (`{"error": "...", "code": "..."}`), else the start of whatever the body was.
fn status_error(request: String, status: u16, body: &[u8]) -> ClientError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
        code: Option<String>,
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(json) => (
            json.code.and_then(|c| excerpt(c.as_bytes())),
            excerpt(json.error.as_bytes()),
        ),
        Err(_) => (None, excerpt(body)),
    };
    ClientError::Status {
        request,
        status,
        code,
        message,
    }
}

impl ClientError {
    /// The error for a 2xx answer to `request` that is not `expected`.
    pub fn unexpected(
        request: &str,
        expected: &'static str,
        body: &[u8],
        source: Option<serde_json::Error>,
    ) -> ClientError {
        ClientError::Reply {
            request: request.to_owned(),
            expected,
            excerpt: excerpt(body).unwrap_or_else(|| "an empty body".to_owned()),
            source,
        }
    }
}

/// Reads a 2xx answer's body as `T`; `expected` says what that is, for the error.
///
/// # Errors
/// `ClientError::Reply` when the body is not JSON of that shape.
pub fn decode<T: DeserializeOwned>(
    request: &str,
    expected: &'static str,
    body: &[u8],
) -> Result<T, ClientError> {
    serde_json::from_slice(body)
        .map_err(|source| ClientError::unexpected(request, expected, body, Some(source)))
}

/// The bearer token a client command sends (`--token`, `EDAFLOW_TOKEN`). `Debug` prints
/// `<redacted>`, so a dump of a parsed command line or of a `Target` never shows it; only
/// `expose` does, for the `Authorization` header. Sent as given: the server says whether
/// it is right.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// Wraps `text`.
    pub fn new(text: impl Into<String>) -> BearerToken {
        BearerToken(text.into())
    }

    /// The token itself, for the one place that needs it: the request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for BearerToken {
    type Err = Infallible;

    fn from_str(text: &str) -> Result<BearerToken, Infallible> {
        Ok(BearerToken::new(text))
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How long a client command waits to connect and for an answer, unless told otherwise
/// (`--timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A base URL such as `http://127.0.0.1:3000`, the token to send there, how long to wait,
/// and the connection kept alive between requests (clones share it).
#[derive(Clone, Debug)]
pub struct Target {
    authority: String,
    prefix: String,
    token: Option<BearerToken>,
    timeout: Duration,
    /// The idle kept-alive connection, taken out while a request uses it (the lock is
    /// never held across an `.await`).
    idle: Arc<Mutex<Option<SendRequest<Full<Bytes>>>>>,
}

impl Target {
    /// Parses the base URL.
    ///
    /// # Errors
    /// `ClientError::Url` for anything but `http://host:port[/prefix]`.
    pub fn parse(url: &str, token: Option<BearerToken>) -> Result<Target, ClientError> {
        let bad = || ClientError::Url {
            url: url.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("http") {
            return Err(bad());
        }
        let authority = uri.authority().ok_or_else(bad)?;
        let host_port = if authority.port().is_some() {
            authority.to_string()
        } else {
            format!("{}:80", authority.host())
        };
        Ok(Target {
            authority: host_port,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            token,
            timeout: DEFAULT_TIMEOUT,
            idle: Arc::default(),
        })
    }

    /// The same target, waiting `timeout` to connect and for each answer.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Target {
        self.timeout = timeout;
        self
    }

    /// A new connection, within the timeout; its task runs until the connection closes.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let addr = || self.authority.clone();
        let connecting = async {
            let stream = tokio::net::TcpStream::connect(&self.authority)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: addr(),
                    source,
                })?;
            hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|source| ClientError::Http {
                    addr: addr(),
                    source,
                })
        };
        let (sender, connection) = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| ClientError::ConnectTimeout {
                addr: addr(),
                after: self.timeout,
            })??;
        // Ends when the server or this process closes the connection (dropping every
        // `SendRequest` closes it); the command's runtime ends it at the latest.
        tokio::spawn(connection);
        Ok(sender)
    }

    /// The kept-alive connection if it is still open, else a new one.
    async fn connection(&self) -> Result<(SendRequest<Full<Bytes>>, bool), ClientError> {
        let kept = self.idle.lock().unwrap_or_else(|e| e.into_inner()).take();
        match kept {
            Some(sender) if sender.is_ready() => Ok((sender, true)),
            _ => Ok((self.connect().await?, false)),
        }
    }

    /// Builds a request to `path` (with the URL's prefix, the host and the token).
    fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let authorization = match &self.token {
            Some(token) => Some(
                hyper::header::HeaderValue::try_from(format!("Bearer {}", token.expose()))
                    .map_err(|_| ClientError::Token)?,
            ),
            None => None,
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.prefix, path))
            .header(hyper::header::HOST, &self.authority);
        if let Some(ct) = content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, ct);
        }
        if let Some(value) = authorization {
            builder = builder.header(hyper::header::AUTHORIZATION, value);
        }
        builder
            .body(Full::new(body))
            .map_err(|_| ClientError::Path {
                path: path.to_owned(),
            })
    }

    /// Sends a request on the kept-alive connection, or a new one, and waits for the
    /// answer's head (without a deadline: callers bound it). When a kept connection turns
    /// out closed before the request went out, or closes or is reset without a word of
    /// answer (the server dropped it while idle, as the request crossed), the request goes
    /// once more on a new connection.
    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<(Response<Incoming>, SendRequest<Full<Bytes>>), ClientError> {
        let request = self.request(method, path, content_type, body.clone())?;
        let (mut sender, reused) = self.connection().await?;
        let http = |source| ClientError::Http {
            addr: self.authority.clone(),
            source,
        };
        match sender.try_send_request(request).await {
            Ok(response) => Ok((response, sender)),
            Err(failed) => {
                // Closed before the request went out, or closed (or reset) with not a byte
                // of answer: the server had closed the kept connection as the request
                // crossed it, so it never took the request.
                let error = failed.error();
                let closed = error.is_canceled()
                    || error.is_incomplete_message()
                    || std::error::Error::source(error)
                        .and_then(|e| e.downcast_ref::<std::io::Error>())
                        .is_some_and(|e| {
                            matches!(
                                e.kind(),
                                std::io::ErrorKind::ConnectionReset
                                    | std::io::ErrorKind::BrokenPipe
                            )
                        });
                if !(reused && closed) {
                    return Err(http(failed.into_error()));
                }
                let request = self.request(method, path, content_type, body)?;
                let mut sender = self.connect().await?;
                let response = sender.send_request(request).await.map_err(http)?;
                Ok((response, sender))
            }
        }
    }

    /// Keeps `sender` for the next request.
    fn keep(&self, sender: SendRequest<Full<Bytes>>) {
        *self.idle.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
    }

    /// Sends a request and reads the whole answer; non-2xx answers are errors.
    ///
    /// # Errors
    /// Connection problems, or `ClientError::Status` with the server's message.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Bytes, ClientError> {
        let exchange = async {
            let (response, sender) = self.send(method, path, content_type, body).await?;
            let status = response.status();
            let bytes = self.read_body(response).await?;
            self.keep(sender);
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                request: self.describe(method, path),
                after: self.timeout,
            })??;
        if !status.is_success() {
            return Err(status_error(
                self.describe(method, path),
                status.as_u16(),
                &bytes,
            ));
        }
        Ok(bytes)
    }

    /// As `call`, sending `json` (if any) as `application/json` and reading the answer as
    /// `T`, described by `expected` (e.g. `a JSON array of dead letters`) for the error.
    ///
    /// # Errors
    /// As `call`, and `ClientError::Reply` when the answer is not a `T`.
    pub async fn call_json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        json: Option<String>,
        expected: &'static str,
    ) -> Result<T, ClientError> {
        let content_type = json.as_ref().map(|_| "application/json");
        let body = json.map(Bytes::from).unwrap_or_default();
        let answer = self.call(method, path, content_type, body).await?;
        decode(&self.describe(method, path), expected, &answer)
    }

    /// Opens a streaming GET and calls `on_chunk` with each piece of the body until the
    /// server closes it or `on_chunk` fails.
    ///
    /// # Errors
    /// As `call`, and whatever `on_chunk` returns.
    pub async fn stream<E: From<ClientError>>(
        &self,
        path: &str,
        mut on_chunk: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let (response, _sender) = self.send("GET", path, None, Bytes::new()).await?;
        let status = response.status();
        if !status.is_success() {
            let bytes = self.read_body(response).await?;
            let request = self.describe("GET", path);
            return Err(status_error(request, status.as_u16(), &bytes).into());
        }
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| ClientError::Http {
                addr: self.authority.clone(),
                source,
            })?;
            if let Some(data) = frame.data_ref() {
                on_chunk(data)?;
            }
        }
        Ok(())
    }

    /// A request as error messages name it: `GET /admin/dead`, with the URL's path prefix.
    pub fn describe(&self, method: &str, path: &str) -> String {
        format!("{method} {}{path}", self.prefix)
    }

    /// Reads a whole answer's body.
    async fn read_body(&self, response: Response<Incoming>) -> Result<Bytes, ClientError> {
        let collected = response.into_body().collect().await;
        collected
            .map(|c| c.to_bytes())
            .map_err(|source| ClientError::Http {
                addr: self.authority.clone(),
                source,
            })
    }
}

/// What `percent_encode` leaves as is: ASCII letters, digits and `-_.~` (RFC 3986's
/// unreserved characters).
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes `text` for a URL path segment or query value: everything but ASCII
/// letters, digits and `-_.~`.
pub fn percent_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("orders.*"), "orders.%2A");
        assert_eq!(percent_encode("a b/c?d=é~_-"), "a%20b%2Fc%3Fd%3D%C3%A9~_-");
        assert_eq!(percent_encode(">"), "%3E");
    }

    #[test]
    fn a_token_is_redacted_in_debug_output() {
        let token: BearerToken = "s3cret".parse().unwrap_or_else(|never| match never {});
        assert_eq!(format!("{token:?}"), "<redacted>");
        assert_eq!(token.expose(), "s3cret");
        let target = Target::parse("http://127.0.0.1:3000", Some(token)).expect("a valid URL");
        let shown = format!("{target:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn a_token_no_header_can_carry_is_refused_before_connecting() {
        let token = BearerToken::new("two\nlines");
        // Port 9 (discard): nothing is sent, so whether anything listens does not matter.
        let target = Target::parse("http://127.0.0.1:9", Some(token)).expect("a valid URL");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let result = rt.block_on(target.call("GET", "/metrics", None, Bytes::new()));
        assert!(matches!(result, Err(ClientError::Token)), "{result:?}");
    }

    #[test]
    fn a_json_error_body_gives_its_code_and_message() {
        let error = status_error(
            "GET /trace/x".to_owned(),
            404,
            br#"{"error": "no journey \"x\" in the recent history", "code": "unknown_journey"}"#,
        );
        assert_eq!(
            error.to_string(),
            r#"the server answered 404 Not Found (unknown_journey) to GET /trace/x: no journey "x" in the recent history"#
        );
    }

    #[test]
    fn another_body_is_quoted_and_an_empty_one_left_out() {
        let error = status_error(
            "GET /admin/dead".to_owned(),
            502,
            b"<html>bad gateway</html>\n",
        );
        assert_eq!(
            error.to_string(),
            "the server answered 502 Bad Gateway to GET /admin/dead: <html>bad gateway</html>"
        );
        let error = status_error("GET /admin/dead".to_owned(), 500, b"");
        assert_eq!(
            error.to_string(),
            "the server answered 500 Internal Server Error to GET /admin/dead"
        );
    }

    #[test]
    fn excerpts_are_short_and_cannot_drive_the_terminal() {
        assert_eq!(excerpt(b"  \n"), None);
        assert_eq!(excerpt(b"a\x1b[31mb").as_deref(), Some("a\\u{1b}[31mb"));
        let long = "x".repeat(EXCERPT_CHARS + 10);
        let shown = excerpt(long.as_bytes()).expect("not empty");
        assert_eq!(shown.chars().count(), EXCERPT_CHARS + 1);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn a_body_of_the_wrong_shape_is_an_error_naming_what_was_expected() {
        let error = decode::<Vec<u32>>(
            "GET /admin/dead",
            "a JSON array",
            br#"{"unexpected": true}"#,
        )
        .expect_err("an object is not an array");
        assert_eq!(
            error.to_string(),
            r#"unexpected answer to GET /admin/dead: expected a JSON array, got {"unexpected": true}"#
        );
        let error = decode::<Vec<u32>>("GET /admin/dead", "a JSON array", b"")
            .expect_err("nothing is not an array");
        assert!(error.to_string().ends_with("got an empty body"), "{error}");
    }
}
