//! The browser console's server side, through the real binary: the embedded page and its
//! assets, the graph model of the orders demo, the stream of snapshots (at once, counts
//! that move after a publish, a `reload` event after an edit), login by cookie with the
//! CSRF header on changes, and `--console` on a flow without an `http` producer.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{copy_orders_flow, http, post_json, run_flow, Edaflow, FlowDir, Reply, Running};

const WITHIN: Duration = Duration::from_secs(15);
const TOKEN: &str = "s3cret-0f-the-console";
const ORDER: &str = r#"{"order_id": 7, "customer": "Ann", "total": 12.5}"#;

/// `edaflow run flows/orders.toml` (a copy, in a temp dir) with `args`.
fn orders(args: &[&str]) -> (FlowDir, Running) {
    let dir = FlowDir::new();
    copy_orders_flow(&dir);
    let mut all = vec!["flows/orders.toml"];
    all.extend_from_slice(args);
    let running = run_flow(dir.root(), &all);
    // The producer listens before the generation is complete: wait for the whole of it.
    running.wait_stderr("the first generation", WITHIN, |text| {
        text.contains("edaflow running")
    });
    (dir, running)
}

/// A GET with `headers`, read to its end.
fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    http(addr, "GET", path, headers, b"")
}

/// The status and headers of a request whose body streams (`/tail`, `/console/stream`),
/// without waiting for the body.
fn head_only(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<String>) {
    let (status, head, _) = open(addr, path, headers);
    (status, head)
}

/// Opens a GET and reads its head; the reader is left at the body.
fn open(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<String>, BufReader<TcpStream>) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(WITHIN))
        .expect("set a read timeout");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read the head");
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let status = lines
        .first()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {lines:?}"));
    (status, lines, reader)
}

/// Server-sent events as they come: `(event, data)` on a channel, read by a thread of its
/// own that ends with the connection.
struct Events {
    events: mpsc::Receiver<(String, Value)>,
}

impl Events {
    fn open(addr: SocketAddr, headers: &[(&str, &str)]) -> (Vec<String>, Events) {
        let (status, head, mut reader) = open(addr, "/console/stream", headers);
        assert_eq!(status, 200, "{head:?}");
        let chunked = head
            .iter()
            .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            while let Some(bytes) = next_piece(&mut reader, chunked) {
                text.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(end) = text.find("\n\n") {
                    let block: String = text.drain(..end + 2).collect();
                    let mut event = String::new();
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(name) = line.strip_prefix("event: ") {
                            event = name.to_owned();
                        } else if let Some(json) = line.strip_prefix("data: ") {
                            data.push_str(json);
                        }
                    }
                    let data = serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("event {event} is not JSON ({e}): {data}"));
                    if tx.send((event, data)).is_err() {
                        return;
                    }
                }
            }
        });
        (head, Events { events })
    }

    /// The first event `find` accepts (skipping the others), or panics after `within`.
    fn find<T>(
        &self,
        what: &str,
        within: Duration,
        mut find: impl FnMut(&str, &Value) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((event, data)) => {
                    if let Some(found) = find(&event, &data) {
                        return found;
                    }
                }
                Err(e) => panic!("no {what} within {within:?}: {e}"),
            }
        }
    }
}

/// The next piece of a body: a chunk, or whatever a plain read gives; `None` at its end.
fn next_piece(reader: &mut BufReader<TcpStream>, chunked: bool) -> Option<Vec<u8>> {
    if !chunked {
        let mut buffer = vec![0; 8192];
        let n = reader.read(&mut buffer).ok().filter(|n| *n > 0)?;
        buffer.truncate(n);
        return Some(buffer);
    }
    let mut size = String::new();
    reader.read_line(&mut size).ok()?;
    let size = usize::from_str_radix(size.trim(), 16)
        .ok()
        .filter(|s| *s > 0)?;
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).ok()?;
    chunk.truncate(size);
    Some(chunk)
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .header(name)
        .unwrap_or_else(|| panic!("no {name} in {reply:?}"))
}

fn has_edge(model: &Value, from: &str, to: &str, kind: &str) -> bool {
    model["edges"].as_array().is_some_and(|edges| {
        edges
            .iter()
            .any(|e| e["from"] == from && e["to"] == to && e["kind"] == kind)
    })
}

fn node<'a>(model: &'a Value, id: &str) -> &'a Value {
    model["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == id))
        .unwrap_or_else(|| panic!("no node {id} in {model:#}"))
}

#[test]
fn the_page_and_its_assets_are_served_without_a_token() {
    let (_dir, running) = orders(&["--no-watch", "--token", TOKEN]);
    let addr = running.addr();

    let page = get(addr, "/", &[]);
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert!(page.body.contains("/console/assets/js/app.js"), "{page:?}");

    let script = get(addr, "/console/assets/js/app.js", &[]);
    assert_eq!(script.status, 200, "{script:?}");
    assert_eq!(
        header(&script, "content-type"),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(header(&script, "cache-control"), "no-cache");
    let etag = header(&script, "etag").to_owned();
    let again = get(
        addr,
        "/console/assets/js/app.js",
        &[("If-None-Match", &etag)],
    );
    assert_eq!(again.status, 304, "{again:?}");

    let style = get(addr, "/console/assets/console.css", &[]);
    assert_eq!(header(&style, "content-type"), "text/css; charset=utf-8");

    get(addr, "/console/assets/js/nope.js", &[]).refused(404, "not_found");
    get(addr, "/console/assets/../Cargo.toml", &[]).refused(404, "not_found");
}

#[test]
fn the_model_is_the_orders_demo_as_a_graph() {
    let (_dir, running) = orders(&["--no-watch"]);
    let reply = get(running.addr(), "/console/model", &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(header(&reply, "content-type"), "application/json");
    let model = reply.json();
    assert_eq!(model["generation"], 1, "{model:#}");
    assert_eq!(model["process"]["broker"], "memory");
    assert!(model["process"]["id"]
        .as_str()
        .is_some_and(|id| id.contains(&format!("-{}-", running.pid()))));
    let reserve = node(&model, "subscribers.reserve_inventory");
    assert_eq!(reserve["kind"], "subscriber");
    assert_eq!(reserve["flow"], "orders");
    assert_eq!(reserve["file"], "0/orders.toml");
    assert_eq!(reserve["script"], "0/handlers/reserve_inventory.rhai");
    assert_eq!(reserve["settings"]["concurrency"], 2);
    for id in [
        "producers.api",
        "topics.orderCreated",
        "subscribers.log_orders",
        "subscribers.ship_order",
        "chains.fulfilment",
    ] {
        node(&model, id);
    }
    for (from, to, kind) in [
        ("producers.api", "topics.orderCreated", "publishes"),
        (
            "topics.orderCreated",
            "subscribers.reserve_inventory",
            "subscribes",
        ),
        (
            "subscribers.charge_payment",
            "topics.paymentCharged",
            "emits",
        ),
        ("topics.orderShipped", "chains.fulfilment", "step"),
    ] {
        assert!(
            has_edge(&model, from, to, kind),
            "no {kind} edge {from} -> {to}"
        );
    }
    assert_eq!(model["chains"][0]["name"], "fulfilment");
    let files: Vec<&str> = model["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert!(files.contains(&"0/orders.toml"), "{files:?}");
    assert!(files.contains(&"0/handlers/ship_order.rhai"), "{files:?}");
}

#[test]
fn the_stream_sends_snapshots_whose_counts_move_and_a_reload_after_an_edit() {
    let (dir, mut running) = orders(&[]);
    running.wait_until_watching(&dir, "flows/orders.toml");
    let addr = running.addr();
    let (head, events) = Events::open(addr, &[]);
    assert!(
        head.iter()
            .any(|l| l.eq_ignore_ascii_case("content-type: text/event-stream")),
        "{head:?}"
    );
    assert!(
        head.iter()
            .any(|l| l.eq_ignore_ascii_case("cache-control: no-cache")),
        "{head:?}"
    );

    // Reloads of the rewrites above may still come; a snapshot comes at once.
    let first = events.find("a first snapshot", Duration::from_secs(5), |event, data| {
        (event == "snapshot").then(|| data.clone())
    });
    assert_eq!(first["generation"], 1, "{first:#}");
    assert_eq!(first["health"]["status"], "ok", "{first:#}");
    assert!(
        first["at_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{first:#}"
    );
    let reserve = &first["subscribers"]["reserve_inventory"];
    assert_eq!(
        reserve["latency"]["le"].as_array().map(Vec::len),
        reserve["latency"]["counts"].as_array().map(Vec::len),
        "{first:#}"
    );
    assert!(reserve["recent_errors"].is_array(), "{first:#}");
    assert!(first["chains"].is_array(), "{first:#}");
    assert!(
        first["http"]["connections_open"].as_u64().is_some(),
        "{first:#}"
    );
    let me = &first["processes"][0];
    assert_eq!(me["self"], true, "{first:#}");
    assert_eq!(me["pid"], running.pid(), "{first:#}");

    post_json(addr, "/topics/orderCreated", ORDER).accepted();
    events.find("a snapshot counting the order", WITHIN, |event, data| {
        let counted = event == "snapshot"
            && data["topics"]["orderCreated"]["in"].as_u64() >= Some(1)
            && data["subscribers"]["reserve_inventory"]["handled"].as_u64() >= Some(1)
            && data["http"]["accepted"].as_u64() >= Some(1);
        counted.then_some(())
    });

    let script = dir.path("flows/handlers/ship_order.rhai");
    let text = std::fs::read_to_string(&script).expect("read the handler");
    dir.save_atomic(
        "flows/handlers/ship_order.rhai",
        &format!("{text}\n// edited\n"),
    );
    let report = events.find("a reload event", WITHIN, |event, data| {
        (event == "reload" && data["result"] == "applied").then(|| data.clone())
    });
    assert_eq!(report["generation"], 2, "{report:#}");
    events.find("a snapshot of generation 2", WITHIN, |event, data| {
        (event == "snapshot" && data["generation"] == 2).then_some(())
    });
}

#[test]
fn a_login_cookie_authorises_reads_and_changes_that_say_they_come_from_the_console() {
    let (_dir, mut running) = orders(&["--no-watch", "--token", TOKEN]);
    let addr = running.addr();
    get(addr, "/console/model", &[]).refused(401, "unauthorized");
    assert_eq!(head_only(addr, "/console/stream", &[]).0, 401);

    post_json(addr, "/console/login", r#"{"token": "wrong"}"#).refused(401, "unauthorized");
    let login = post_json(addr, "/console/login", format!(r#"{{"token": "{TOKEN}"}}"#));
    assert_eq!(login.status, 204, "{login:?}");
    let set_cookie = header(&login, "set-cookie");
    assert!(
        set_cookie.starts_with(&format!("edaflow_console={TOKEN};")),
        "{set_cookie}"
    );
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(part), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
    let cookie = format!("edaflow_console={TOKEN}");
    let with_cookie = [("Cookie", cookie.as_str())];

    let model = get(addr, "/console/model", &with_cookie);
    assert_eq!(model.status, 200, "{model:?}");
    assert_eq!(
        head_only(addr, "/tail?pattern=orderCreated", &with_cookie).0,
        200
    );
    assert_eq!(head_only(addr, "/console/stream", &with_cookie).0, 200);
    assert_eq!(get(addr, "/queues", &with_cookie).status, 200);
    get(
        addr,
        "/console/model",
        &[("Cookie", "edaflow_console=wrong")],
    )
    .refused(401, "unauthorized");

    // A change by cookie alone must say it comes from the console.
    http(addr, "POST", "/admin/reload", &with_cookie, b"").refused(403, "csrf");
    let drop = [
        ("Cookie", cookie.as_str()),
        ("Content-Type", "application/json"),
    ];
    http(addr, "POST", "/admin/dead/drop", &drop, br#"{"all": true}"#).refused(403, "csrf");
    let reload = http(
        addr,
        "POST",
        "/admin/reload",
        &[("Cookie", cookie.as_str()), ("X-Edaflow-Console", "1")],
        b"",
    );
    assert_eq!(reload.status, 200, "{reload:?}");
    assert_eq!(reload.json()["result"], "unchanged");
    // The bearer token needs no such header; ingest takes only the bearer token.
    let bearer = format!("Bearer {TOKEN}");
    let reload = http(
        addr,
        "POST",
        "/admin/reload",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(reload.status, 200, "{reload:?}");
    http(
        addr,
        "POST",
        "/topics/orderCreated",
        &[
            ("Cookie", cookie.as_str()),
            ("X-Edaflow-Console", "1"),
            ("Content-Type", "application/json"),
        ],
        ORDER.as_bytes(),
    )
    .refused(401, "unauthorized");

    let logout = http(addr, "POST", "/console/logout", &[], b"");
    assert_eq!(logout.status, 204, "{logout:?}");
    assert!(
        header(&logout, "set-cookie").contains("Max-Age=0"),
        "{logout:?}"
    );

    running.wait_catching_sigterm(WITHIN);
    running.terminate();
    running.wait_exit(WITHIN);
    let stderr = running.stderr();
    assert!(!stderr.contains(TOKEN), "the token was logged:\n{stderr}");
}

#[test]
fn console_serves_a_flow_without_an_http_producer() {
    let dir = FlowDir::with_files(&[
        (
            "flow.toml",
            indoc::indoc! {r#"
                [flow]
                name = "ticking"

                [producers.clock]
                kind = "interval"
                every = "100ms"
                topic = "tick"

                [subscribers.fails]
                topic = "tick"
                script = "fails.rhai"
                retry = { attempts = 1 }
            "#},
        ),
        ("fails.rhai", "throw \"boom at the tick\";\n"),
    ]);
    let mut running = Edaflow::new(dir.root())
        .args(["run", "flow.toml", "--no-watch", "--console", "127.0.0.1:0"])
        .spawn();
    let addr: SocketAddr = running.find_in_stderr("the console's address", WITHIN, |line| {
        let (_, rest) = line.split_once("console at http://")?;
        rest.split('/').next()?.parse().ok()
    });

    let page = get(addr, "/", &[]);
    assert_eq!(page.status, 200, "{page:?}");
    let model = get(addr, "/console/model", &[]).json();
    assert_eq!(node(&model, "subscribers.fails")["script"], "0/fails.rhai");
    assert!(
        has_edge(&model, "producers.clock", "topics.tick", "publishes"),
        "{model:#}"
    );
    assert_eq!(get(addr, "/healthz", &[]).status, 200);
    // No ingest on the console's listener.
    post_json(addr, "/topics/tick", "{}").refused(404, "not_found");

    let (_, events) = Events::open(addr, &[]);
    let failing = events.find(
        "a snapshot with the handler's failures",
        WITHIN,
        |event, data| {
            let fails = &data["subscribers"]["fails"];
            (event == "snapshot"
                && fails["errors"].as_u64() >= Some(1)
                && data["dead_letters"].as_u64() >= Some(1))
            .then(|| fails.clone())
        },
    );
    let recent = &failing["recent_errors"][0];
    assert!(
        recent["message"]
            .as_str()
            .is_some_and(|m| m.contains("boom at the tick")),
        "{failing:#}"
    );
    assert_eq!(recent["attempt"], 1, "{failing:#}");
    assert!(recent["event_id"].as_str().is_some_and(|id| !id.is_empty()));
}
