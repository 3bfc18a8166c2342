//! HTTP in process: a runtime's API router and requests through it without a socket,
//! a runtime serving one `http` producer on a free loopback port, and raw TCP clients
//! that send exactly the bytes a test chooses (half a head, a trickled body), read answers
//! with deadlines and notice when the server closes. Nothing here sleeps to wait for a
//! result: every wait has a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt;

use super::{parse_reply, FlowDir, Reply};
use edaflow::broker::{Broker, MemoryBroker, MemoryOptions};
use edaflow::flow::model::HttpProducer;
use edaflow::runtime::{Runtime, RuntimeOptions};

/// The API router of `runtime` as a `master` serves it: token-free, a 1 MiB body limit.
pub fn router<B: Broker>(runtime: &Runtime<B>) -> axum::Router {
    runtime.api_router(
        HttpProducer {
            listen: "127.0.0.1:0".into(),
            token: None,
            body_limit: 1 << 20,
            ..HttpProducer::default()
        },
        "master",
    )
}

/// Sends `request` through `router` (no socket) and reads the whole answer.
pub async fn oneshot(router: &axum::Router, request: Request<Body>) -> Reply {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("read the body")
        .to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        bytes: bytes.to_vec(),
    }
}

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
    let options = RuntimeOptions {
        producers: true,
        quiet: true,
        ..RuntimeOptions::default()
    };
    let (runtime, _) = super::runtime::start_with(broker.clone(), options, &dir).await;
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

/// Reads from `stream` until one whole answer is in, or panics after `within`.
pub async fn read_answer(stream: &mut TcpStream, within: Duration) -> Reply {
    let deadline = Instant::now() + within;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some((answer, _)) = parse_reply(&bytes) {
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
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
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
