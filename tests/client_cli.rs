//! The client commands (`dead`, `tail`, `trace`, `publish`, `query`, `graph --live`)
//! against a stub server that answers wrong: an error status, JSON of another shape, a
//! body that is not JSON, bytes that are not HTTP, or nothing at all. Each must exit 1
//! with a message that says what the server answered, never print an empty list or a
//! blank id. The stub also answers right, so a stub that never worked cannot pass for a
//! client that refuses. Last, stdout: a write that fails is an error, a reader that goes
//! away (`edaflow tail | head`) ends the command quietly. And the connection: `publish -`
//! keeps one alive for every line, and a server that never answers is a timeout.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::{crate_root, Edaflow, Finished, FlowDir};

const JSON: &str = "application/json";

/// edaflow's JSON error body for a broker that is down.
const UNAVAILABLE: &str =
    r#"{"error":"the broker is unavailable; retry later","code":"unavailable"}"#;

/// A server on a free port that gives every request the same raw answer, then closes the
/// connection. It keeps the head of each request it read.
struct Stub {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Stub {
    fn answering(answer: impl Into<Vec<u8>>) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let addr = listener.local_addr().expect("the stub's address");
        let answer = answer.into();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        // Ends with the test process; it only ever blocks in `accept`.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else {
                    return;
                };
                let head = read_request(&mut stream);
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(head);
                let _ = stream.write_all(&answer);
                let _ = stream.shutdown(Shutdown::Write);
            }
        });
        Stub { addr, heads }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The heads of the requests read so far.
    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Reads one request whole (head, and a body of `content-length` bytes) so that closing
/// the connection after the answer cannot reset it; returns the head.
fn read_request(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&bytes).into_owned(),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = bytes.len() - head_end;
    while body < length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body += n,
        }
    }
    head
}

/// An HTTP/1.1 answer with a body of known length.
fn answer(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// An HTTP/1.1 200 whose body runs until the connection closes, as a stream does.
fn streamed(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n{body}"
    )
}

/// `edaflow ARGS… --url STUB`, run to its end in a temp dir.
fn client(stub: &Stub, args: &[&str]) -> Finished {
    let dir = FlowDir::new();
    Edaflow::new(dir.root())
        .args(args.iter().copied())
        .args(["--url", &stub.url()])
        .run()
}

/// A miette report without its margins and without whitespace: miette wraps long lines
/// wherever it likes (inside a path, say), so reports and needles compare this way.
fn squeezed(report: &str) -> String {
    report
        .split_whitespace()
        .filter(|word| !matches!(*word, "│" | "×" | "╰─▶" | "├─▶"))
        .collect()
}

/// Asserts exit code 1, nothing on stdout, and each of `needles` in the report.
fn fails_saying(finished: Finished, needles: &[&str]) {
    let finished = finished.code(1);
    assert_eq!(finished.stdout, "", "nothing printed\n{}", finished.dump());
    let report = squeezed(&finished.stderr);
    for needle in needles {
        assert!(
            report.contains(&squeezed(needle)),
            "expected the report to say {needle:?}\n{}",
            finished.dump()
        );
    }
}

#[test]
fn dead_list_prints_what_a_sound_answer_holds_and_sends_the_token() {
    let stub = Stub::answering(answer("200 OK", JSON, "[]"));
    let finished = client(&stub, &["dead", "list", "--token", "s3cret"]).success();
    assert_eq!(finished.stdout, "no dead letters\n", "{}", finished.dump());
    let heads = stub.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].starts_with("GET /admin/dead HTTP/1.1\r\n"),
        "{heads:?}"
    );
    assert!(
        heads[0].contains("authorization: Bearer s3cret\r\n"),
        "{heads:?}"
    );
}

#[test]
fn dead_list_fails_with_the_servers_status_code_and_message() {
    let stub = Stub::answering(answer("500 Internal Server Error", JSON, UNAVAILABLE));
    fails_saying(
        client(&stub, &["dead", "list"]),
        &[
            "edaflow::client::status",
            "the server answered 500 Internal Server Error (unavailable) to GET /admin/dead: the broker is unavailable; retry later",
        ],
    );
}

#[test]
fn dead_list_fails_on_an_error_status_without_a_json_body() {
    let stub = Stub::answering(answer(
        "502 Bad Gateway",
        "text/html",
        "<h1>bad gateway</h1>",
    ));
    fails_saying(
        client(&stub, &["dead", "list"]),
        &["the server answered 502 Bad Gateway to GET /admin/dead: <h1>bad gateway</h1>"],
    );
    let stub = Stub::answering(answer("503 Service Unavailable", "text/plain", ""));
    fails_saying(
        client(&stub, &["dead", "list"]),
        &["the server answered 503 Service Unavailable to GET /admin/dead"],
    );
}

#[test]
fn dead_list_fails_on_json_of_another_shape() {
    let stub = Stub::answering(answer("200 OK", JSON, r#"{"unexpected": true}"#));
    fails_saying(
        client(&stub, &["dead", "list"]),
        &[
            "edaflow::client::reply",
            r#"unexpected answer to GET /admin/dead: expected a JSON array of dead letters (CloudEvents), got {"unexpected": true}"#,
        ],
    );
    // An array of something else is no list of dead letters either.
    let stub = Stub::answering(answer("200 OK", JSON, r#"[{"id": 1}]"#));
    fails_saying(
        client(&stub, &["dead", "list", "--json"]),
        &["unexpected answer to GET /admin/dead"],
    );
}

#[test]
fn dead_list_fails_on_a_body_that_is_not_json() {
    let stub = Stub::answering(answer("200 OK", JSON, "garbage"));
    fails_saying(
        client(&stub, &["dead", "list"]),
        &["unexpected answer to GET /admin/dead", "got garbage"],
    );
}

#[test]
fn dead_list_fails_on_an_answer_that_is_not_http() {
    let stub = Stub::answering("garbage\r\n\r\n");
    fails_saying(
        client(&stub, &["dead", "list"]),
        &[
            "edaflow::client::http",
            &format!("HTTP error talking to {}", stub.addr),
        ],
    );
}

#[test]
fn dead_list_fails_when_nothing_listens() {
    // Bind and drop a listener to get a port that nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = FlowDir::new();
    let finished = Edaflow::new(dir.root())
        .args(["dead", "list", "--url", &format!("http://127.0.0.1:{port}")])
        .run();
    fails_saying(finished, &[&format!("cannot connect to 127.0.0.1:{port}")]);
}

#[test]
fn dead_replay_and_drop_fail_on_json_of_another_shape() {
    let stub = Stub::answering(answer("200 OK", JSON, r#"{"unexpected": true}"#));
    fails_saying(
        client(&stub, &["dead", "replay", "--all"]),
        &["unexpected answer to POST /admin/dead/replay"],
    );
    fails_saying(
        client(&stub, &["dead", "drop", "--all"]),
        &["unexpected answer to POST /admin/dead/drop"],
    );
}

#[test]
fn tail_fails_on_a_line_that_is_not_an_event() {
    let stub = Stub::answering(streamed("garbage\n"));
    fails_saying(
        client(&stub, &["tail", "order*"]),
        &[
            "unexpected answer to GET /tail?pattern=order%2A",
            "expected one CloudEvent JSON per line, got garbage",
        ],
    );
    let stub = Stub::answering(streamed("{\"unexpected\": true}\n"));
    fails_saying(
        client(&stub, &["tail", "--json"]),
        &["unexpected answer to GET /tail?pattern=%3E"],
    );
}

#[test]
fn tail_fails_with_the_servers_status_code_and_message() {
    let body = r#"{"error":"missing or wrong bearer token","code":"unauthorized"}"#;
    let stub = Stub::answering(answer("401 Unauthorized", JSON, body));
    fails_saying(
        client(&stub, &["tail"]),
        &["the server answered 401 Unauthorized (unauthorized) to GET /tail?pattern=%3E: missing or wrong bearer token"],
    );
}

#[test]
fn trace_fails_on_an_error_status_and_on_json_of_another_shape() {
    let body = r#"{"error":"no journey \"x\" in the recent history","code":"unknown_journey"}"#;
    let stub = Stub::answering(answer("404 Not Found", JSON, body));
    fails_saying(
        client(&stub, &["trace", "x"]),
        &[
            r#"the server answered 404 Not Found (unknown_journey) to GET /trace/x: no journey "x" in the recent history"#,
        ],
    );
    let stub = Stub::answering(answer("200 OK", JSON, r#"{"unexpected": true}"#));
    fails_saying(
        client(&stub, &["trace", "x"]),
        &["unexpected answer to GET /trace/x"],
    );
}

#[test]
fn publish_fails_on_an_answer_without_an_id() {
    let stub = Stub::answering(answer("202 Accepted", JSON, "{}"));
    fails_saying(
        client(&stub, &["publish", "orderCreated", r#"{"order_id": 1}"#]),
        &[
            "unexpected answer to POST /topics/orderCreated",
            "the event's `id`",
        ],
    );
}

#[test]
fn query_fails_on_a_reply_that_is_not_json() {
    let stub = Stub::answering(answer("200 OK", JSON, "garbage"));
    fails_saying(
        client(&stub, &["query", "orders.query.get", "{}"]),
        &[
            "unexpected answer to POST /query/orders.query.get",
            "got garbage",
        ],
    );
}

#[test]
fn graph_live_fails_on_an_answer_that_is_not_metrics() {
    let stub = Stub::answering(answer("200 OK", "text/html", "<html>a login page</html>"));
    let finished = Edaflow::new(crate_root())
        .args(["graph", "flows/orders.toml", "--live", &stub.url()])
        .run();
    fails_saying(
        finished,
        &[
            "unexpected answer to GET /metrics",
            "<html>a login page</html>",
        ],
    );
}

/// One event as `GET /tail` streams it.
const EVENT_LINE: &str = r#"{"specversion":"1.0","id":"01J0000000000000000000000A","source":"edaflow://test","type":"orderCreated","time":"2026-01-01T00:00:00.000Z","datacontenttype":"application/json","data":{"order_id":1},"correlationid":"01J0000000000000000000000A"}"#;

/// The binary with its environment cleaned as `common::Edaflow` does, for the tests that
/// need stdout to be something other than a pipe the test reads.
fn bare(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_edaflow"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EDAFLOW_") {
            command.env_remove(&key);
        }
    }
    command
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command
}

#[test]
fn tail_prints_a_sound_stream() {
    let stub = Stub::answering(streamed(&format!("{EVENT_LINE}\n{EVENT_LINE}")));
    let finished = client(&stub, &["tail"]).success();
    let line =
        "2026-01-01T00:00:00.000Z orderCreated 01J0000000000000000000000A {\"order_id\": 1}\n";
    assert_eq!(
        finished.stdout,
        format!("{line}{line}"),
        "a last line without its newline is printed too\n{}",
        finished.dump()
    );
}

#[cfg(target_os = "linux")]
#[test]
fn a_stdout_that_takes_nothing_is_an_error() {
    let stub = Stub::answering(answer("200 OK", JSON, "[]"));
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full");
    let output = bare(&["dead", "list", "--url", &stub.url()])
        .stdout(full)
        .output()
        .expect("run edaflow");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        squeezed(&stderr).contains("cannotwritetostdout"),
        "{stderr}"
    );
}

#[test]
fn a_reader_that_goes_away_ends_tail_quietly() {
    let body = format!("{EVENT_LINE}\n").repeat(20_000);
    let stub = Stub::answering(streamed(&body));
    let mut child = bare(&["tail", "--url", &stub.url()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run edaflow");
    // Closing the only reader of its stdout, as `edaflow tail | head -1` does once `head`
    // has its line: the next write fails with a broken pipe.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait for edaflow");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "", "no error of its own");
}

/// A server on a free port that keeps each connection alive and answers every request on
/// it with `202 {"id":"eN"}` (N counting requests). It counts the connections it accepted.
struct KeepAlive {
    addr: SocketAddr,
    connections: Arc<Mutex<usize>>,
}

impl KeepAlive {
    fn start() -> KeepAlive {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let addr = listener.local_addr().expect("the server's address");
        let connections = Arc::new(Mutex::new(0));
        let accepted = connections.clone();
        let requests = Arc::new(Mutex::new(0usize));
        // Ends with the test process; it only ever blocks in `accept` or a read.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else {
                    return;
                };
                *accepted.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                let requests = requests.clone();
                std::thread::spawn(move || loop {
                    let head = read_request(&mut stream);
                    if !head.ends_with("\r\n\r\n") {
                        return;
                    }
                    let n = {
                        let mut count = requests.lock().unwrap_or_else(|e| e.into_inner());
                        *count += 1;
                        *count
                    };
                    let body = format!(r#"{{"id":"e{n}"}}"#);
                    let answer = format!(
                        "HTTP/1.1 202 Accepted\r\ncontent-type: {JSON}\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                });
            }
        });
        KeepAlive { addr, connections }
    }

    fn connections(&self) -> usize {
        *self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[test]
fn publish_sends_every_stdin_line_on_one_connection() {
    let server = KeepAlive::start();
    let dir = FlowDir::new();
    let lines: String = (1..=20).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let finished = Edaflow::new(dir.root())
        .args([
            "publish",
            "t",
            "-",
            "--url",
            &format!("http://{}", server.addr),
        ])
        .stdin(lines)
        .run()
        .success();
    let expected: String = (1..=20).map(|i| format!("e{i}\n")).collect();
    assert_eq!(finished.stdout, expected, "{}", finished.dump());
    assert_eq!(server.connections(), 1, "{}", finished.dump());
}

#[test]
fn publish_opens_a_new_connection_when_the_server_closed_the_kept_one() {
    // The stub closes every connection after its answer, without saying so in a header:
    // each next line finds the kept connection closed and goes on a new one.
    let stub = Stub::answering(
        "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"id\":\"e1\"}",
    );
    let dir = FlowDir::new();
    let finished = Edaflow::new(dir.root())
        .args(["publish", "t", "-", "--url", &stub.url()])
        .stdin("{}\n{}\n{}\n")
        .run()
        .success();
    assert_eq!(finished.stdout, "e1\ne1\ne1\n", "{}", finished.dump());
    assert_eq!(stub.heads().len(), 3, "{}", finished.dump());
}

#[test]
fn a_server_that_never_answers_is_a_timeout_not_a_hang() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    // Accepts and holds every connection, reading nothing and answering nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(stream) = stream else {
                return;
            };
            held.push(stream);
        }
    });
    let dir = FlowDir::new();
    for args in [
        &["publish", "t", "{}"][..],
        &["dead", "list"][..],
        &["query", "q.get", "{}"][..],
    ] {
        let finished = Edaflow::new(dir.root())
            .args(args.iter().copied())
            .args(["--url", &url, "--timeout", "300ms"])
            .limit(std::time::Duration::from_secs(10))
            .run();
        fails_saying(
            finished,
            &["edaflow::client::timeout", "within 300ms", "--timeout"],
        );
    }
}
