//! What the HTTP server tests share: an in-process runtime serving one `http` producer on
//! a free loopback port, and raw TCP clients that send exactly the bytes a test chooses
//! (half a head, a trickled body), read answers with deadlines and notice when the server
//! closes. Nothing here sleeps to wait for a result: every wait has a deadline.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::common::FlowDir;
use edaflow::broker::{MemoryBroker, MemoryOptions};
use edaflow::runtime::{Runtime, RuntimeOptions};

/// A runtime serving `[producers.api]` on a free port.
pub struct Server {
    pub runtime: Runtime<MemoryBroker>,
    pub broker: MemoryBroker,
    pub addr: SocketAddr,
    pub dir: FlowDir,
}

/// A flow with one `http` producer `api` on `127.0.0.1:0`, whose table gets `settings`
/// (TOML lines such as `header_timeout = "300ms"`), then `rest` (more tables).
pub fn flow_text(settings: &str, rest: &str) -> String {
    format!(
        "[flow]\nname = \"http\"\n\n[producers.api]\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n{settings}\n\n{rest}\n"
    )
}

/// Starts a runtime on `flow_text(settings, rest)` (files in `files` are written beside
/// it) and returns it with the producer's address.
pub async fn serve_with(settings: &str, rest: &str, files: &[(&str, &str)]) -> Server {
    let dir = FlowDir::new();
    dir.write("flow.toml", &flow_text(settings, rest));
    for (name, text) in files {
        dir.write(name, text);
    }
    let broker = MemoryBroker::new(MemoryOptions::default());
    let mut runtime = Runtime::new(
        broker.clone(),
        RuntimeOptions {
            producers: true,
            quiet: true,
            ..RuntimeOptions::default()
        },
    );
    runtime
        .apply(dir.prepare("flow.toml"))
        .await
        .expect("the flow starts");
    let addr = runtime.http_addrs()["api"];
    Server {
        runtime,
        broker,
        addr,
        dir,
    }
}

/// `serve_with` without other tables.
pub async fn serve(settings: &str) -> Server {
    serve_with(settings, "", &[]).await
}

/// One HTTP answer as read off the socket.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?} {:?}", self.text()))
    }

    /// Asserts a JSON refusal `{error, code}` with this status and code.
    #[track_caller]
    pub fn refused(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?} {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{}",
            self.text()
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "a readable `error`: {body}"
        );
    }
}

/// Parses one answer from the start of `bytes`: `None` until it is complete. Skips `1xx`
/// interim answers. Returns the answer and how many bytes it took.
pub fn parse_answer(bytes: &[u8]) -> Option<(Answer, usize)> {
    let mut start = 0;
    loop {
        let rest = &bytes[start..];
        let head_end = rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = std::str::from_utf8(&rest[..head_end]).ok()?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        if (100..200).contains(&status) {
            start += head_end;
            continue;
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let body_start = start + head_end;
        if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            let mut at = body_start;
            loop {
                let line_end = bytes[at..].windows(2).position(|w| w == b"\r\n")? + at;
                let size_text = std::str::from_utf8(&bytes[at..line_end]).ok()?;
                let size = usize::from_str_radix(size_text.trim(), 16).ok()?;
                at = line_end + 2;
                if size == 0 {
                    bytes.get(at..at + 2)?;
                    return Some((
                        Answer {
                            status,
                            headers,
                            body,
                        },
                        at + 2,
                    ));
                }
                body.extend_from_slice(bytes.get(at..at + size)?);
                at += size + 2;
            }
        }
        let length: usize = find("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = bytes.get(body_start..body_start + length)?.to_vec();
        return Some((
            Answer {
                status,
                headers,
                body,
            },
            body_start + length,
        ));
    }
}

/// Reads from `stream` until one whole answer is in, or panics after `within`.
pub async fn read_answer(stream: &mut TcpStream, within: Duration) -> Answer {
    let deadline = Instant::now() + within;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some((answer, _)) = parse_answer(&bytes) {
            return answer;
        }
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no whole answer within {within:?}; read so far: {:?}",
                    preview(&bytes)
                )
            });
        match read {
            Ok(0) | Err(_) => panic!(
                "the server closed before a whole answer; read: {:?}",
                preview(&bytes)
            ),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads until the server closes the connection (end of stream or reset) and returns what
/// came; panics if it is still open after `within`.
pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the server kept the connection open past {within:?}; read {} bytes: {:?}",
                    bytes.len(),
                    preview(&bytes)
                )
            });
        match read {
            Ok(0) | Err(_) => return bytes,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// The start of what was read, for a failure message.
pub fn preview(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(300)];
    let mut text = String::from_utf8_lossy(shown).into_owned();
    if bytes.len() > shown.len() {
        text.push('…');
    }
    text
}

/// Connects to `addr`.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Sends `request` on a new connection and reads one answer (within 10 s).
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = connect(addr).await;
    stream.write_all(request).await.expect("send the request");
    read_answer(&mut stream, Duration::from_secs(10)).await
}

/// A complete request with `Content-Length`, kept alive.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: edaflow.test\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// `GET /healthz`, kept alive.
pub fn healthz() -> Vec<u8> {
    request("GET", "/healthz", &[], b"")
}

/// Whether a connection to `addr` is refused now.
pub async fn refuses(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_err()
}

/// A free loopback port (bound, then released for the test to use).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
