//! CQRS at binary level, on both brokers: `flows/cqrs.toml` as shipped (a command, then a
//! query that finds the order once the projection has run, waited on as a condition), a
//! query that times out (504) and one whose handler fails (502, without its details); and
//! on Redis, `--role` splitting the command and query sides across two processes, with the
//! query process answering the other's HTTP requests through Redis.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{crate_root, http, Edaflow, FlowDir, Reply, Running};
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(20);

/// Copies `flows/cqrs.toml` and its scripts into `dir`.
fn copy_cqrs_flow(dir: &FlowDir) {
    let flows = crate_root().join("flows");
    for relative in [
        "cqrs.toml",
        "cqrs/place_order.rhai",
        "cqrs/project_orders.rhai",
        "cqrs/log_rejections.rhai",
        "cqrs/get_order.rhai",
        "cqrs/orders_by_customer.rhai",
    ] {
        let text = std::fs::read_to_string(flows.join(relative))
            .unwrap_or_else(|e| panic!("read flows/{relative}: {e}"));
        dir.write(relative, &text);
    }
}

/// Starts `edaflow run FLOW` on `broker` with `extra` arguments; returns it and the
/// address its HTTP producer listens on.
fn start(dir: &FlowDir, flow: &str, broker: &str, extra: &[&str]) -> (Running, SocketAddr) {
    let mut args = vec![
        "run",
        flow,
        "--no-watch",
        "--listen",
        "127.0.0.1:0",
        "--broker",
        broker,
    ];
    args.extend_from_slice(extra);
    let mut running = Edaflow::new(dir.root())
        .args(args)
        .env("EDAFLOW_NAMESPACE", "cqrs-test")
        .spawn();
    let addr = running.listening_addr(PATIENCE);
    (running, addr)
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    common::post_json(addr, path, body.to_string())
}

fn json_of(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("not JSON ({e}): {reply:?}"))
}

/// Asks `query` until `found` holds for its 200 answer, or fails after `PATIENCE`.
fn query_until(
    addr: SocketAddr,
    query: &str,
    body: &Value,
    found: impl Fn(&Value) -> bool,
    processes: &[&Running],
) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = post(addr, &format!("/query/{query}"), body);
        if reply.status == 200 {
            let answer = json_of(&reply);
            if found(&answer) {
                return answer;
            }
        }
        if Instant::now() >= deadline {
            let dumps: Vec<String> = processes.iter().map(|p| p.dump()).collect();
            panic!(
                "{query} never answered as expected; last {reply:?}\n{}",
                dumps.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The shipped demo: the command is accepted, the read model catches up within a poll of
/// the projection queue, and both queries answer from it.
fn command_then_query(broker: &str) {
    let dir = FlowDir::new();
    copy_cqrs_flow(&dir);
    let (running, addr) = start(&dir, "cqrs.toml", broker, &[]);
    let order = json!({"order_id": 7, "customer": "ann", "total": 49.99});
    let accepted = post(addr, "/topics/orders.command.place", &order);
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let answer = query_until(
        addr,
        "orders.query.get",
        &json!({"order_id": 7}),
        |a| a["found"] == json!(true),
        &[&running],
    );
    assert_eq!(answer["order"]["customer"], json!("ann"));
    let by_customer = post(
        addr,
        "/query/orders.query.by_customer",
        &json!({"customer": "ann"}),
    );
    assert_eq!(by_customer.status, 200, "{by_customer:?}");
    assert_eq!(json_of(&by_customer)["orders"][0]["order_id"], json!(7));
    let stored = http(addr, "GET", "/stores/orders/order:7", &[], b"");
    assert_eq!(stored.status, 200, "{stored:?}");
    assert_eq!(json_of(&stored)["total"], json!(49.99));
}

const FAILING_FLOW: &str = r#"
[flow]
name = "answers"

[producers.api]
kind = "http"
listen = "127.0.0.1:0"

[topics."q.silent"]
kind = "query"
timeout = "300ms"

[topics."q.broken"]
kind = "query"

[subscribers.silent]
topic = "q.silent"
script = "silent.rhai"

[subscribers.broken]
topic = "q.broken"
script = "broken.rhai"
retry = { attempts = 1 }
"#;

/// A handler that never replies gives 504 after the topic's timeout; one that throws gives
/// 502 whose body names the request but not the handler's error.
fn timeout_and_failure(broker: &str) {
    let dir = FlowDir::new();
    dir.write("answers.toml", FAILING_FLOW);
    dir.write(
        "silent.rhai",
        "// replies only when asked to, which this test never does\nif event.data.answer == true { reply(#{}); }\n",
    );
    dir.write(
        "broken.rhai",
        "if event.data.x == () { throw \"secret-detail: the database password is hunter2\"; }\nreply(#{ x: event.data.x });\n",
    );
    let (running, addr) = start(&dir, "answers.toml", broker, &[]);
    let started = Instant::now();
    let silent = post(addr, "/query/q.silent", &json!({}));
    assert_eq!(silent.status, 504, "{silent:?}\n{}", running.dump());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "504 only after the timeout"
    );
    let broken = post(addr, "/query/q.broken", &json!({}));
    assert_eq!(broken.status, 502, "{broken:?}\n{}", running.dump());
    assert!(
        !broken.body.contains("hunter2") && !broken.body.contains("secret-detail"),
        "the handler's error stays in the logs: {}",
        broken.body
    );
    assert!(json_of(&broken)["error"].is_string(), "{broken:?}");
}

#[test]
fn memory_command_then_query() {
    command_then_query("memory");
}

#[test]
fn memory_query_timeout_and_failure() {
    timeout_and_failure("memory");
}

#[test]
fn redis_command_then_query() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    command_then_query(&server.url());
}

#[test]
fn redis_query_timeout_and_failure() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    timeout_and_failure(&server.url());
}

/// `--role command` on one process, `--role query` on another: a query sent to the
/// command process is answered by the query process through Redis, and once the query
/// process is gone nobody answers it (504), which shows where the answers came from.
#[test]
fn redis_roles_split_across_two_processes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let dir = FlowDir::new();
    copy_cqrs_flow(&dir);
    let (command, command_addr) = start(&dir, "cqrs.toml", &url, &["--role", "command"]);
    let (mut query, query_addr) = start(&dir, "cqrs.toml", &url, &["--role", "query"]);
    let order = json!({"order_id": 11, "customer": "bob", "total": 5});
    let accepted = post(command_addr, "/topics/orders.command.place", &order);
    assert_eq!(accepted.status, 202, "{accepted:?}");
    for addr in [command_addr, query_addr] {
        let answer = query_until(
            addr,
            "orders.query.get",
            &json!({"order_id": 11}),
            |a| a["found"] == json!(true),
            &[&command, &query],
        );
        assert_eq!(answer["order"]["customer"], json!("bob"));
    }
    // Commands sent to the query process are handled by the command process.
    let second = json!({"order_id": 12, "customer": "bob", "total": 6});
    assert_eq!(
        post(query_addr, "/topics/orders.command.place", &second).status,
        202
    );
    let both = query_until(
        query_addr,
        "orders.query.by_customer",
        &json!({"customer": "bob"}),
        |a| a["orders"].as_array().is_some_and(|o| o.len() == 2),
        &[&command, &query],
    );
    assert_eq!(both["orders"][1]["order_id"], json!(12));

    query.terminate();
    query.wait_exit(PATIENCE);
    let unanswered = post(
        command_addr,
        "/query/orders.query.get",
        &json!({"order_id": 11}),
    );
    assert_eq!(
        unanswered.status,
        504,
        "only the query process answers queries: {unanswered:?}\n{}",
        command.dump()
    );
}
