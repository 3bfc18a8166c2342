//! Stop and reload never wait on a client. Clients hold connections open in every way a
//! connection can be held (half a head, half a body, an idle keep-alive, an open tail);
//! then the runtime stops, a reload moves `listen`, or the binary gets SIGTERM. The
//! listener closes at once, the held connections are dropped after a short grace, and the
//! stop or reload is over in well under a second or two.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use common::http_server::{
    connect, exchange, healthz, read_answer, read_until_closed, refuses, request, serve,
};
use common::runtime::start_reloader;
use common::{free_port, run_flow, FlowDir};
use edaflow::runtime::reload::{ReloadCause, ReloadReport, ReloadRequest};
use edaflow::runtime::RuntimeOptions;

const WITHIN: Duration = Duration::from_secs(5);

/// The ways a client holds a connection: half a head, half a body, an idle kept-alive
/// connection (served once), an open tail.
async fn hold_connections(addr: SocketAddr) -> Vec<(&'static str, TcpStream)> {
    let mut half_head = connect(addr).await;
    half_head
        .write_all(b"POST /topics/orderCreated HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .await
        .expect("send half a head");
    let mut half_body = connect(addr).await;
    half_body
        .write_all(b"POST /topics/orderCreated HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pad\": \"xx")
        .await
        .expect("send half a body");
    let mut idle = connect(addr).await;
    idle.write_all(&healthz()).await.expect("send");
    assert_eq!(read_answer(&mut idle, WITHIN).await.status, 200);
    let mut tail = connect(addr).await;
    tail.write_all(&request("GET", "/tail", &[], b""))
        .await
        .expect("open a tail");
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(WITHIN, tokio::io::AsyncReadExt::read(&mut tail, &mut buf))
        .await
        .expect("the tail's head")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    vec![
        ("half a head", half_head),
        ("half a body", half_body),
        ("an idle connection", idle),
        ("a tail", tail),
    ]
}

/// Asserts that every held connection is closed by the server within `within`.
async fn assert_all_closed(held: Vec<(&'static str, TcpStream)>, within: Duration) {
    for (what, mut stream) in held {
        let closed = tokio::time::timeout(within, read_until_closed(&mut stream, within)).await;
        assert!(closed.is_ok(), "{what} was still open after {within:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_closes_the_listener_at_once_and_drops_held_connections_after_a_short_grace() {
    let server = serve("").await;
    let addr = server.addr;
    let held = hold_connections(addr).await;

    let started = Instant::now();
    let stopping = tokio::spawn(server.runtime.shutdown(Duration::ZERO));
    // The listener goes first: new connections are refused while held ones may still be
    // in their grace.
    let mut refused_at = None;
    let deadline = Instant::now() + WITHIN;
    while refused_at.is_none() {
        if refuses(addr).await {
            refused_at = Some(started.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "still accepting after {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_all_closed(held, Duration::from_secs(2)).await;
    let closed_at = started.elapsed();
    let report = tokio::time::timeout(WITHIN, stopping)
        .await
        .expect("the runtime stops")
        .expect("the stop task");
    let stopped_at = started.elapsed();
    assert!(
        refused_at.is_some_and(|r| r <= closed_at),
        "refused at {refused_at:?}, connections closed at {closed_at:?}"
    );
    assert!(
        closed_at < Duration::from_secs(1),
        "held connections closed after {closed_at:?}"
    );
    assert!(
        stopped_at < Duration::from_millis(1500),
        "the stop took {stopped_at:?}"
    );
    assert!(
        !report.forced,
        "the producer did not stop in its half second"
    );
}

/// A flow serving on `port`.
fn flow_on(port: u16, extra: &str) -> String {
    format!(
        "[flow]\nname = \"moving\"\n\n[producers.api]\nkind = \"http\"\nlisten = \"127.0.0.1:{port}\"\n\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_moves_listen_takes_effect_without_waiting_on_old_clients() {
    let (first, second) = (free_port(), free_port());
    let dir = FlowDir::new();
    let path = dir.write("flow.toml", &flow_on(first, ""));
    let (mut reloader, _) = start_reloader(
        edaflow::broker::MemoryBroker::new(edaflow::broker::MemoryOptions::default()),
        RuntimeOptions {
            producers: true,
            quiet: true,
            ..RuntimeOptions::default()
        },
        vec![path.clone()],
    )
    .await;
    let old: SocketAddr = ([127, 0, 0, 1], first).into();
    let new: SocketAddr = ([127, 0, 0, 1], second).into();

    // A reload that leaves the producer alone leaves its connections alone.
    let mut kept = connect(old).await;
    kept.write_all(&healthz()).await.expect("send");
    assert_eq!(read_answer(&mut kept, WITHIN).await.status, 200);
    dir.write(
        "flow.toml",
        &flow_on(first, "[subscribers.s]\ntopic = \"orderCreated\"\n"),
    );
    let report = reloader.handle(ReloadRequest::new(ReloadCause::Http)).await;
    assert!(
        matches!(&report, ReloadReport::Applied(o) if o.added == ["subscribers.s"] && o.changed.is_empty()),
        "{report:#?}"
    );
    kept.write_all(&healthz()).await.expect("send again");
    assert_eq!(read_answer(&mut kept, WITHIN).await.status, 200);

    // Moving `listen` with clients holding the old address.
    let held = hold_connections(old).await;
    dir.write(
        "flow.toml",
        &flow_on(second, "[subscribers.s]\ntopic = \"orderCreated\"\n"),
    );
    let started = Instant::now();
    let report = reloader.handle(ReloadRequest::new(ReloadCause::Http)).await;
    let took = started.elapsed();
    assert!(
        matches!(&report, ReloadReport::Applied(o) if o.changed == ["producers.api"]),
        "{report:#?}"
    );
    assert!(took < Duration::from_secs(1), "the reload took {took:?}");
    assert_eq!(exchange(new, &healthz()).await.status, 200);
    assert!(refuses(old).await, "the old address still accepts");
    assert_eq!(
        reloader.runtime().http_addrs()["api"],
        new,
        "the producer's address"
    );
    assert_all_closed(held, Duration::from_secs(1)).await;
    let _ = read_until_closed(&mut kept, Duration::from_secs(1)).await;
    reloader.into_runtime().shutdown(Duration::ZERO).await;
}

/// A blocking connection that holds: returns it after sending `bytes`.
fn hold_blocking(addr: SocketAddr, bytes: &[u8]) -> std::net::TcpStream {
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.write_all(bytes).expect("send");
    stream
}

#[test]
fn sigterm_ends_the_process_within_grace_even_with_clients_holding_connections() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        "[flow]\nname = \"held\"\n\n[producers.api]\nkind = \"http\"\n\n[subscribers.log]\ntopic = \"orderCreated\"\nscript = \"log.rhai\"\n",
    );
    dir.write("log.rhai", "log(`order ${event.data}`);");
    let mut running = run_flow(dir.root(), &["flow.toml", "--no-watch", "--grace", "1s"]);
    let addr = running.addr();
    running.wait_catching_sigterm(WITHIN);
    let half_head = hold_blocking(
        addr,
        b"POST /topics/orderCreated HTTP/1.1\r\nHost: x\r\nContent-Le",
    );
    let half_body = hold_blocking(
        addr,
        b"POST /topics/orderCreated HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"a\"",
    );
    let mut tail = hold_blocking(addr, b"GET /tail HTTP/1.1\r\nHost: x\r\n\r\n");
    tail.set_read_timeout(Some(WITHIN)).expect("a read timeout");
    let mut head = [0u8; 12];
    tail.read_exact(&mut head).expect("the tail answers");
    assert_eq!(&head, b"HTTP/1.1 200");

    let started = std::time::Instant::now();
    running.terminate();
    // The promise: --grace plus 1.5 s, whatever clients do.
    let status = running.wait_exit(Duration::from_millis(2500) + WITHIN);
    let took = started.elapsed();
    assert!(status.success(), "exit {status}\n{}", running.dump());
    assert!(
        took < Duration::from_millis(2500),
        "SIGTERM took {took:?} with clients holding connections\n{}",
        running.dump()
    );
    for (what, mut stream) in [("half a head", half_head), ("half a body", half_body)] {
        stream
            .set_read_timeout(Some(WITHIN))
            .expect("a read timeout");
        let mut rest = Vec::new();
        // Closed (end of stream or reset), not timed out.
        match stream.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{what}: still open after the process exited"
            ),
        }
    }
}
