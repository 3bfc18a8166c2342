//! Generated hostile HTTP against a running `http` producer, over real sockets: request
//! lines, headers (`ce-*` ones, content types, lengths that lie, chunked bodies that are
//! not), bodies of random bytes, random JSON, CloudEvents with random attributes, deep
//! nesting. Every request gets one well-formed HTTP answer whose body is JSON (refusals
//! `{"error", "code"}`), no 5xx but the documented 503s, and the server goes on answering.
//!
//! `PROPTEST_CASES` sets how many requests are generated (256 by default, a few seconds;
//! raise it for a longer hunt, e.g. `PROPTEST_CASES=20000`). The count is printed.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

use common::http_server::serve_with;
use common::{parse_reply, Reply};

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// The 503s docs/http-api.md documents; any other 5xx is a failure.
const DOCUMENTED_503: &[&str] = &[
    "backpressure",
    "unavailable",
    "broker_out_of_memory",
    "too_many_connections",
    "reload_unavailable",
];

/// One generated request.
#[derive(Debug, Clone)]
struct Generated {
    method: &'static str,
    path: String,
    version: &'static str,
    headers: Vec<(String, Vec<u8>)>,
    length: Length,
    body: Vec<u8>,
}

/// What `Content-Length` says.
#[derive(Debug, Clone)]
enum Length {
    True,
    Absent,
    Lie(usize),
}

impl Generated {
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} {}\r\nHost: hostile.test\r\nConnection: close\r\n",
            self.method, self.path, self.version
        )
        .into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        match self.length {
            Length::True => {
                out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes())
            }
            Length::Absent => {}
            Length::Lie(n) => out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,24}".prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z_0-9]{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Attribute names of a structured CloudEvent, the spec's and not.
fn attribute_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "specversion", "id", "source", "type", "time", "datacontenttype", "data",
            "data_base64", "correlationid", "causationid", "edaflowhops", "subject",
            "dataschema", "replyto", "tenant", "Tenant", "ten_ant", "",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z0-9]{1,70}",
        1 => "\\PC{0,10}",
    ]
}

/// Values that reach the interesting checks more often than random JSON would.
fn attribute_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => prop::sample::select(vec![
            json!("1.0"), json!("0.3"), json!("orderCreated"), json!(""), json!("urn:s"),
            json!("2026-11-26T10:30:00+05:30"), json!("2026-11-26T05:00:00"),
            json!("1969-12-31T23:59:59Z"), json!("9999-12-31T23:59:59-01:00"),
            json!("AAEC"), json!("AAE"), json!("application/json"), json!("text/plain"),
            json!(3), json!(-1), json!(4_294_967_296u64), json!(1.5),
            json!("i".repeat(300)), json!("s".repeat(1100)),
        ]),
        2 => json_value(),
    ]
}

fn cloudevent() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((attribute_name(), attribute_value()), 0..12).prop_map(|pairs| {
        let mut event = serde_json::Map::new();
        event.insert("specversion".into(), json!("1.0"));
        event.insert("id".into(), json!("h-1"));
        event.insert("source".into(), json!("urn:hostile"));
        event.insert("type".into(), json!("orderCreated"));
        for (name, value) in pairs {
            event.insert(name, value);
        }
        Value::Object(event).to_string().into_bytes()
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => Just(Vec::new()),
        3 => json_value().prop_map(|v| v.to_string().into_bytes()),
        3 => cloudevent(),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => (0usize..300).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
        1 => (0usize..300).prop_map(|n| "{\"a\":".repeat(n).into_bytes()),
        1 => Just(b"3\r\nabc\r\n0\r\n\r\n".to_vec()),
        1 => Just(b"zz\r\nnot chunked".to_vec()),
    ]
}

fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
    let content_type = prop::sample::select(vec![
        "application/json",
        "application/json; charset=utf-8",
        "application/cloudevents+json",
        "APPLICATION/CLOUDEVENTS+JSON",
        "text/plain",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
        "",
        ";;;",
    ])
    .prop_map(|v| ("Content-Type".to_owned(), v.as_bytes().to_vec()));
    let ce = (
        prop::sample::select(vec![
            "ce-specversion",
            "ce-id",
            "ce-source",
            "ce-type",
            "ce-time",
            "ce-correlationid",
            "ce-causationid",
            "ce-edaflowhops",
            "ce-tenant",
            "ce-ten_ant",
            "ce-datacontenttype",
            "ce-replyto",
            "ce-",
        ]),
        prop_oneof![
            prop::sample::select(vec![
                "1.0",
                "orderCreated",
                "",
                "2026-11-26T10:30:00+05:30",
                "2026-11-26",
                "3",
                "-1",
                "%zz",
                "%C3%A9",
                "%C3",
            ])
            .prop_map(str::to_owned),
            "[ -~]{0,40}",
            (250usize..300).prop_map(|n| "x".repeat(n)),
        ],
    )
        .prop_map(|(name, value)| (name.to_owned(), value.into_bytes()));
    let other = prop_oneof![
        Just(("Transfer-Encoding".to_owned(), b"chunked".to_vec())),
        Just(("Expect".to_owned(), b"100-continue".to_vec())),
        Just(("Authorization".to_owned(), b"Bearer nope".to_vec())),
        Just(("Content-Length".to_owned(), b"abc".to_vec())),
        Just((
            "Content-Length".to_owned(),
            b"99999999999999999999".to_vec()
        )),
        ("[A-Za-z-]{1,12}", "[ -~]{0,40}").prop_map(|(n, v)| (n, v.into_bytes())),
        ("\\PC{1,6}", prop::collection::vec(any::<u8>(), 0..12)),
    ];
    prop_oneof![3 => content_type, 3 => ce, 2 => other]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "/topics/orderCreated",
            "/topics/orderCreated?x=1",
            "/topics/a..b",
            "/topics/orders.*",
            "/topics/%FF%FE",
            "/topics/",
            "/queues/tasks",
            "/queues/tasks?delay=1s",
            "/queues/tasks?delay=-1s",
            "/queues/tasks?delay=200000000000000d",
            "/queues/tasks?dealy=1s",
            "/queues/nowhere",
            "/queues",
            "/deferred-exec",
            "/healthz",
            "/chains",
            "/admin/dead",
            "/admin/dead?origin=a..b",
            "/admin/dead/replay",
            "/admin/dead/drop",
            "/admin/reload",
            "/trace/abc",
            "/stores/totals/k",
            "/",
            "/nowhere",
            "*",
            "http://hostile.test/healthz",
        ])
        .prop_map(str::to_owned),
        1 => "/topics/[a-zA-Z0-9._:-]{0,300}",
        1 => "/[ -~]{0,30}",
        1 => "[^\r\n]{0,20}",
    ]
}

/// Anything: every part drawn on its own.
fn chaos() -> impl Strategy<Value = Generated> {
    (
        prop::sample::select(vec![
            "GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO",
        ]),
        path(),
        prop_oneof![
            20 => Just("HTTP/1.1"),
            2 => Just("HTTP/1.0"),
            1 => Just("HTTP/2.0"),
            1 => Just("HTTP/9"),
        ],
        prop::collection::vec(header(), 0..6),
        length(),
        body(),
    )
        .prop_map(|(method, path, version, headers, length, body)| Generated {
            method,
            path,
            version,
            headers,
            length,
            body,
        })
}

fn length() -> impl Strategy<Value = Length> {
    prop_oneof![
        18 => Just(Length::True),
        1 => Just(Length::Absent),
        1 => (0usize..400).prop_map(Length::Lie),
    ]
}

/// A publish shaped like one of the three modes, with hostile attributes and data: what
/// reaches the CloudEvents checks.
fn publish() -> impl Strategy<Value = Generated> {
    let target = prop_oneof![
        6 => Just("/topics/orderCreated".to_owned()),
        1 => Just("/queues/tasks".to_owned()),
        1 => Just("/deferred-exec".to_owned()),
        1 => "/topics/[a-zA-Z0-9._:-]{1,300}",
    ];
    let plain = (
        prop::sample::select(vec![
            "application/json",
            "application/json; charset=utf-8",
            "text/json",
        ]),
        body(),
    )
        .prop_map(|(ct, body)| {
            (
                vec![("Content-Type".to_owned(), ct.as_bytes().to_vec())],
                body,
            )
        });
    let structured = cloudevent().prop_map(|body| {
        (
            vec![(
                "Content-Type".to_owned(),
                b"application/cloudevents+json".to_vec(),
            )],
            body,
        )
    });
    let binary = (prop::collection::vec(header(), 0..8), body()).prop_map(|(mut headers, body)| {
        headers.insert(0, ("ce-specversion".to_owned(), b"1.0".to_vec()));
        (headers, body)
    });
    (
        target,
        prop_oneof![2 => plain, 3 => structured, 2 => binary],
        length(),
    )
        .prop_map(|(path, (headers, body), length)| Generated {
            method: "POST",
            path,
            version: "HTTP/1.1",
            headers,
            length,
            body,
        })
}

fn request() -> impl Strategy<Value = Generated> {
    prop_oneof![3 => publish(), 2 => chaos()]
}

/// Sends `bytes` on a new connection and reads until one whole answer is in, or the
/// server closes; `None` when it closed without one.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Result<Reply, String> {
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    // The server may answer (and close) before it has read everything: a failed write is
    // not the test's concern, the answer is.
    let _ = stream.write_all(bytes);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut read = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some((answer, _)) = parse_reply(&read) {
            return Ok(answer);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no whole answer in 10 s: {:?}",
                String::from_utf8_lossy(&read)
            ));
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(format!(
                    "closed without a whole answer: {:?}",
                    String::from_utf8_lossy(&read)
                ))
            }
            Ok(n) => read.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!(
                    "read failed ({e}) after {:?}",
                    String::from_utf8_lossy(&read)
                ))
            }
        }
    }
}

/// What every answer must be.
fn check(answer: &Reply) -> Result<(), String> {
    // The console's page and its assets (`GET /`, `/console/assets/…`) are the only
    // answers that are not JSON, and only when they succeed.
    let page = ["text/html", "text/css", "text/javascript"];
    if answer.status < 400
        && answer
            .header("content-type")
            .is_some_and(|t| page.iter().any(|p| t.starts_with(p)))
    {
        return Ok(());
    }
    let body: Value = serde_json::from_slice(answer.bytes()).map_err(|e| {
        format!(
            "a {} answer whose body is not JSON ({e}): {:?}",
            answer.status, answer.body
        )
    })?;
    if answer.status >= 400 {
        if answer.header("content-type") != Some("application/json") {
            return Err(format!(
                "a refusal without the JSON content type: {answer:?}"
            ));
        }
        let code = body["code"]
            .as_str()
            .ok_or_else(|| format!("a refusal without a code: {body}"))?;
        if body["error"].as_str().is_none_or(str::is_empty) {
            return Err(format!("a refusal without a message: {body}"));
        }
        if answer.status >= 500 && !(answer.status == 503 && DOCUMENTED_503.contains(&code)) {
            return Err(format!("an undocumented {}: {body}", answer.status));
        }
    }
    Ok(())
}

const FLOW_REST: &str = r#"
[queues.tasks]

[subscribers.worker]
queue = "tasks"
script = "ok.rhai"

[subscribers.orders]
topic = "orderCreated"
script = "ok.rhai"

[stores.totals]
expose = true
"#;

#[test]
fn every_generated_request_gets_a_json_answer_and_the_server_keeps_answering() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // Short clocks: a request that lies about its length is answered 408 quickly.
    let server = rt.block_on(serve_with(
        "header_timeout = \"200ms\"\nbody_timeout = \"200ms\"\nbody_limit = \"16KiB\"",
        FLOW_REST,
        &[("ok.rhai", "let x = event.data;")],
    ));
    let addr = server.addr;
    let ran = AtomicU32::new(0);
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let mut runner = TestRunner::new(Config {
        cases: cases(256),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&request(), |generated| {
        ran.fetch_add(1, Ordering::Relaxed);
        let bytes = generated.bytes();
        let answer = exchange(addr, &bytes).map_err(TestCaseError::fail)?;
        check(&answer).map_err(TestCaseError::fail)?;
        *seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(answer.status)
            .or_default() += 1;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Still answering, and still publishing.
    let health = exchange(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("health after the run");
    assert_eq!(health.status, 200, "{health:?}");
    let published = exchange(
        addr,
        b"POST /topics/orderCreated HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    )
    .expect("a publish after the run");
    assert_eq!(published.status, 202, "{published:?}");
    let statuses = seen.into_inner().unwrap_or_else(|e| e.into_inner());
    println!(
        "generated HTTP requests: {} run, answers by status: {statuses:?}",
        ran.load(Ordering::Relaxed)
    );
    rt.block_on(server.runtime.shutdown(Duration::from_secs(1)));
}
