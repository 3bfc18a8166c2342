//! Slow and greedy clients against the `http` producer, over raw TCP: a head trickled in
//! byte by byte (slowloris), a body that never finishes, a kept-alive connection left
//! idle, more connections than `max_connections`. Each is answered with a JSON refusal
//! (or closed, when nothing of a request came) within its clock, and the server goes on
//! answering everyone else.
//!
//! Clocks are set short (hundreds of milliseconds) and every wait has a deadline; a client
//! that trickles bytes paces itself, which is the behaviour under test, not a wait.

mod common;
mod http_support;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use edaflow::broker::Broker;
use edaflow::flow::TopicPattern;
use http_support::{
    connect, exchange, healthz, parse_answer, preview, read_answer, read_until_closed, request,
    serve,
};

/// Generous bound for a close or an answer that is due: the machine may be busy.
const WITHIN: Duration = Duration::from_secs(5);

/// Writes one byte of `bytes` every `every` until they run out or the server closes.
fn trickle(mut stream: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, every: Duration) {
    tokio::spawn(async move {
        for b in bytes {
            tokio::time::sleep(every).await;
            if stream.write_all(&[b]).await.is_err() {
                return;
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_in_is_answered_408_at_the_header_timeout() {
    let server = serve(r#"header_timeout = "400ms""#).await;
    let started = Instant::now();
    let stream = connect(server.addr).await;
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(b"POST /topics/orderCreated HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send half a head");
    // One header byte every 50 ms: never idle long, never done.
    trickle(write, b"X-Slow: ".repeat(100), Duration::from_millis(50));

    let mut bytes = Vec::new();
    let closed = tokio::time::timeout(WITHIN, async {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::io::AsyncReadExt::read(&mut read, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "still open after {WITHIN:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "closed after {elapsed:?}, before the header timeout"
    );
    let (answer, _) =
        parse_answer(&bytes).unwrap_or_else(|| panic!("no answer: {:?}", preview(&bytes)));
    answer.refused(408, "header_timeout");
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(
        answer.json()["error"],
        "the request head did not arrive within 400 ms"
    );

    // Everyone else is still served.
    exchange(server.addr, &healthz()).await;
    server.runtime.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_without_a_word() {
    let server = serve(r#"header_timeout = "300ms""#).await;
    let started = Instant::now();
    let mut stream = connect(server.addr).await;
    let bytes = read_until_closed(&mut stream, WITHIN).await;
    assert!(bytes.is_empty(), "{:?}", preview(&bytes));
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.runtime.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_in_is_answered_408_at_the_body_timeout_and_not_published() {
    let server = serve(r#"body_timeout = "400ms""#).await;
    let mut all = server
        .broker
        .tap(TopicPattern::parse(">").expect("a pattern"), 16);
    let started = Instant::now();
    let stream = connect(server.addr).await;
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(
            b"POST /topics/orderCreated HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"pad\": \"",
        )
        .await
        .expect("send the head and some body");
    trickle(write, vec![b'x'; 900], Duration::from_millis(50));

    let bytes = tokio::time::timeout(WITHIN, async {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::io::AsyncReadExt::read(&mut read, &mut buf).await {
                Ok(0) | Err(_) => return bytes,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("still open after {WITHIN:?}"));
    assert!(started.elapsed() >= Duration::from_millis(400));
    let (answer, _) =
        parse_answer(&bytes).unwrap_or_else(|| panic!("no answer: {:?}", preview(&bytes)));
    answer.refused(408, "body_timeout");
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(all.try_recv().is_err(), "a timed-out body was published");
    server.runtime.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_closes_at_the_idle_timeout_not_the_header_one() {
    let server = serve("header_timeout = \"200ms\"\nidle_timeout = \"1200ms\"").await;
    let mut stream = connect(server.addr).await;
    stream.write_all(&healthz()).await.expect("send");
    assert_eq!(read_answer(&mut stream, WITHIN).await.status, 200);

    // Quiet for longer than the header timeout, shorter than the idle one: still open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stream.write_all(&healthz()).await.expect("send again");
    assert_eq!(read_answer(&mut stream, WITHIN).await.status, 200);

    // Then left idle: closed without a word after the idle timeout.
    let idle_from = Instant::now();
    let bytes = read_until_closed(&mut stream, WITHIN).await;
    let idle = idle_from.elapsed();
    assert!(bytes.is_empty(), "{:?}", preview(&bytes));
    assert!(
        idle >= Duration::from_millis(1100),
        "closed after {idle:?} idle"
    );
    server.runtime.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_started_after_an_idle_wait_runs_on_the_header_clock() {
    let server = serve("header_timeout = \"300ms\"\nidle_timeout = \"10s\"").await;
    let mut stream = connect(server.addr).await;
    stream.write_all(&healthz()).await.expect("send");
    assert_eq!(read_answer(&mut stream, WITHIN).await.status, 200);
    // The first bytes of the next head start its clock; the rest never comes.
    stream.write_all(b"GET /hea").await.expect("send a part");
    let started = Instant::now();
    let bytes = read_until_closed(&mut stream, WITHIN).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the idle clock ran"
    );
    let (answer, _) = parse_answer(&bytes).expect("an answer");
    answer.refused(408, "header_timeout");
    server.runtime.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tail_runs_no_clock() {
    let server =
        serve("header_timeout = \"200ms\"\nbody_timeout = \"200ms\"\nidle_timeout = \"200ms\"")
            .await;
    let mut tail = connect(server.addr).await;
    tail.write_all(&request("GET", "/tail?pattern=orderCreated", &[], b""))
        .await
        .expect("open the tail");
    // Wait until the tail is registered (its head is answered at once).
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WITHIN, tokio::io::AsyncReadExt::read(&mut tail, &mut buf))
            .await
            .expect("the tail's head")
            .expect("read");
        assert!(n > 0, "the tail closed");
        head.extend_from_slice(&buf[..n]);
    }
    // Longer than every clock.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let published = exchange(
        server.addr,
        &request(
            "POST",
            "/topics/orderCreated",
            &[("Content-Type", "application/json")],
            b"{\"n\": 1}",
        ),
    )
    .await;
    assert_eq!(published.status, 202, "{}", published.text());
    let id = published.json()["id"].as_str().expect("an id").to_owned();
    let mut seen = head;
    tokio::time::timeout(WITHIN, async {
        while !String::from_utf8_lossy(&seen).contains(&id) {
            let n = tokio::io::AsyncReadExt::read(&mut tail, &mut buf)
                .await
                .expect("read the tail");
            assert!(n > 0, "the tail was closed");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the event on the tail");
    server.runtime.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_new_one_gets_503_json_and_the_server_recovers() {
    let server = serve("max_connections = 2").await;
    // Two connections, each served once (so each surely holds its place), kept open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(server.addr).await;
        stream.write_all(&healthz()).await.expect("send");
        assert_eq!(read_answer(&mut stream, WITHIN).await.status, 200);
        held.push(stream);
    }

    // A third is refused: 503 JSON, Retry-After, closed.
    let mut third = connect(server.addr).await;
    let _ = third.write_all(&healthz()).await;
    let bytes = read_until_closed(&mut third, WITHIN).await;
    let (answer, _) =
        parse_answer(&bytes).unwrap_or_else(|| panic!("no answer: {:?}", preview(&bytes)));
    answer.refused(503, "too_many_connections");
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(
        answer.json()["error"],
        "too many connections (at most 2 at once); retry later"
    );

    // Held connections are still served.
    held[0].write_all(&healthz()).await.expect("send");
    assert_eq!(read_answer(&mut held[0], WITHIN).await.status, 200);

    // One leaves: a new connection is served again (once the server has seen it go).
    drop(held.pop());
    let deadline = Instant::now() + WITHIN;
    loop {
        let mut stream = connect(server.addr).await;
        let _ = stream.write_all(&healthz()).await;
        let bytes = read_until_closed_or_answer(&mut stream).await;
        let (answer, _) = parse_answer(&bytes).expect("an answer");
        if answer.status == 200 {
            break;
        }
        answer.refused(503, "too_many_connections");
        assert!(
            Instant::now() < deadline,
            "no place freed after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.runtime.shutdown(Duration::ZERO).await;
}

/// Reads until one whole answer is in or the server closes.
async fn read_until_closed_or_answer(stream: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WITHIN, async {
        while parse_answer(&bytes).is_none() {
            match tokio::io::AsyncReadExt::read(stream, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("an answer or a close");
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_past_the_limit_is_refused_without_harm() {
    let server = Arc::new(serve("max_connections = 4").await);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = connect(server.addr).await;
        stream.write_all(&healthz()).await.expect("send");
        assert_eq!(read_answer(&mut stream, WITHIN).await.status, 200);
        held.push(stream);
    }
    // Many at once: each is answered 503 or closed, none is served, none hangs.
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let addr = server.addr;
        flood.spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return None;
            };
            let _ = stream.write_all(&healthz()).await;
            let bytes = read_until_closed_or_answer(&mut stream).await;
            parse_answer(&bytes).map(|(a, _)| a.status)
        });
    }
    let mut refused = 0;
    while let Some(status) = flood.join_next().await {
        match status.expect("a flood client") {
            Some(503) => refused += 1,
            None => {}
            Some(other) => panic!("a connection past the limit got {other}"),
        }
    }
    assert!(refused > 0, "no 503 at all");
    drop(held);
    let deadline = Instant::now() + WITHIN;
    loop {
        let mut stream = connect(server.addr).await;
        let _ = stream.write_all(&healthz()).await;
        let bytes = read_until_closed_or_answer(&mut stream).await;
        if parse_answer(&bytes).is_some_and(|(a, _)| a.status == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "the server did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server = Arc::try_unwrap(server).unwrap_or_else(|_| panic!("the server is shared"));
    server.runtime.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_no_byte_of_its_answer_is_dropped_at_the_idle_timeout() {
    let server = serve(r#"idle_timeout = "500ms""#).await;
    let mut tail = connect(server.addr).await;
    tail.write_all(&request("GET", "/tail?pattern=bulk", &[], b""))
        .await
        .expect("open the tail");
    // The tail is open once a first event comes through it; from then on nobody reads.
    let deadline = Instant::now() + WITHIN;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"first\"") {
        assert!(Instant::now() < deadline, "the tail never opened");
        let first = edaflow::event::Event::new("bulk", "test", serde_json::json!("first"));
        server
            .broker
            .publish(first, edaflow::broker::Backpressure::Reject)
            .await
            .expect("publish");
        let mut buffer = [0u8; 4096];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(50), tail.read(&mut buffer)).await
        {
            assert!(n > 0, "the tail closed");
            seen.extend_from_slice(&buffer[..n]);
        }
    }
    // Far more than the socket buffers hold, and nobody reading.
    let big = serde_json::json!({ "pad": "x".repeat(64 * 1024) });
    for _ in 0..400 {
        let event = edaflow::event::Event::new("bulk", "test", big.clone());
        server
            .broker
            .publish(event, edaflow::broker::Backpressure::Reject)
            .await
            .expect("publish");
        tokio::task::yield_now().await;
    }
    // The client stays away until the server has given up on it (its write clock, counted
    // in metrics); reading now finds what was sent, then the end. (Were it still open, it
    // would stay open: nothing more is published.)
    let deadline = Instant::now() + WITHIN;
    loop {
        let metrics = exchange(server.addr, &request("GET", "/metrics", &[], b"")).await;
        if metric(
            &metrics.text(),
            "edaflow_http_timeouts_total{clock=\"write\"}",
        ) >= 1
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never gave up on the tail"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bytes = read_until_closed(&mut tail, WITHIN).await;
    assert!(bytes.len() > 1 << 20, "only {} bytes came", bytes.len());
    // Everyone else is still served.
    assert_eq!(exchange(server.addr, &healthz()).await.status, 200);
    server.runtime.shutdown(Duration::ZERO).await;
}

/// The value of the metric line starting with `name ` in `/metrics`.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clocks_and_the_limit_are_counted_in_metrics() {
    let server =
        serve("max_connections = 2\nheader_timeout = \"300ms\"\nbody_timeout = \"300ms\"").await;
    // Two slow heads hold both places; a third is refused.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(server.addr).await;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHo")
            .await
            .expect("send");
        slow.push(stream);
    }
    let mut third = connect(server.addr).await;
    let bytes = read_until_closed(&mut third, WITHIN).await;
    parse_answer(&bytes)
        .expect("an answer")
        .0
        .refused(503, "too_many_connections");
    for mut stream in slow {
        let bytes = read_until_closed(&mut stream, WITHIN).await;
        parse_answer(&bytes)
            .expect("an answer")
            .0
            .refused(408, "header_timeout");
    }
    // A slow body (once the closed connections have left: they may linger a moment).
    let deadline = Instant::now() + WITHIN;
    loop {
        let mut body = connect(server.addr).await;
        let _ = body
            .write_all(b"POST /topics/t HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
            .await;
        let bytes = read_until_closed(&mut body, WITHIN).await;
        let (answer, _) = parse_answer(&bytes).expect("an answer");
        if answer.status != 503 {
            answer.refused(408, "body_timeout");
            break;
        }
        assert!(Instant::now() < deadline, "no room for the slow body");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The closed connections may linger a moment: ask until there is room.
    let deadline = Instant::now() + WITHIN;
    let text = loop {
        let mut stream = connect(server.addr).await;
        let _ = stream
            .write_all(&request("GET", "/metrics", &[], b""))
            .await;
        let bytes = read_until_closed_or_answer(&mut stream).await;
        match parse_answer(&bytes) {
            Some((answer, _)) if answer.status == 200 => break answer.text(),
            _ => {
                assert!(Instant::now() < deadline, "no room for /metrics");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(
        metric(&text, "edaflow_http_timeouts_total{clock=\"header\"}"),
        2
    );
    assert_eq!(
        metric(&text, "edaflow_http_timeouts_total{clock=\"body\"}"),
        1
    );
    assert_eq!(
        metric(&text, "edaflow_http_timeouts_total{clock=\"write\"}"),
        0
    );
    assert!(metric(&text, "edaflow_http_connections_refused_total") >= 1);
    let open = metric(&text, "edaflow_http_connections_open");
    assert!((1..=2).contains(&open), "{open} open");
    server.runtime.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enormous_limits_are_only_large_ones() {
    let server = serve(
        "max_connections = 9223372036854775807\nheader_timeout = \"36500d\"\nbody_timeout = \"36500d\"\nidle_timeout = \"36500d\"",
    )
    .await;
    let mut stream = connect(server.addr).await;
    for _ in 0..2 {
        stream.write_all(&healthz()).await.expect("send");
        assert_eq!(read_answer(&mut stream, WITHIN).await.status, 200);
    }
    server.runtime.shutdown(Duration::ZERO).await;
}
