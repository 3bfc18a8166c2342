//! A small HTTP/1.1 client for the CLI commands that talk to a running instance
//! (`publish`, `query`, `tail`, `trace`, `dead`, `graph --live`). Plain `http://` on hyper's
//! connection API; nothing else is needed to reach a loopback address.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;

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
    #[error("HTTP error talking to {addr}")]
    #[diagnostic(code(edaflow::client::http))]
    Http {
        addr: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the server answered {status}: {body}")]
    #[diagnostic(code(edaflow::client::status))]
    Status { status: u16, body: String },
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

/// A base URL such as `http://127.0.0.1:3000`, and the token to send there.
#[derive(Clone, Debug)]
pub struct Target {
    authority: String,
    prefix: String,
    token: Option<BearerToken>,
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
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|source| ClientError::Connect {
                addr: self.authority.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Http {
                addr: self.authority.clone(),
                source,
            })?;
        // The connection task ends with the request; it is owned by this call.
        let conn = tokio::spawn(connection);
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.prefix, path))
            .header(hyper::header::HOST, &self.authority);
        if let Some(ct) = content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, ct);
        }
        if let Some(token) = &self.token {
            let value = format!("Bearer {}", token.expose());
            builder = builder.header(hyper::header::AUTHORIZATION, value);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|_| ClientError::Url {
                url: path.to_owned(),
            })?;
        let response = sender.send_request(request).await;
        if response.is_err() {
            conn.abort();
        }
        response.map_err(|source| ClientError::Http {
            addr: self.authority.clone(),
            source,
        })
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
        let response = self.send(method, path, content_type, body).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|source| ClientError::Http {
                addr: self.authority.clone(),
                source,
            })?
            .to_bytes();
        if !status.is_success() {
            let body = String::from_utf8_lossy(&bytes);
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| body.trim().to_owned());
            return Err(ClientError::Status {
                status: status.as_u16(),
                body: message,
            });
        }
        Ok(bytes)
    }

    /// Opens a streaming GET and calls `on_chunk` with each piece of the body until the
    /// server closes it.
    ///
    /// # Errors
    /// As `call`.
    pub async fn stream(
        &self,
        path: &str,
        mut on_chunk: impl FnMut(&[u8]),
    ) -> Result<(), ClientError> {
        let response = self.send("GET", path, None, Bytes::new()).await?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(ClientError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).trim().to_owned(),
            });
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| ClientError::Http {
                addr: self.authority.clone(),
                source,
            })?;
            if let Some(data) = frame.data_ref() {
                on_chunk(data);
            }
        }
        Ok(())
    }
}

/// Percent-encodes `text` for a URL path segment or query value: everything but ASCII
/// letters, digits and `-_.~`.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
