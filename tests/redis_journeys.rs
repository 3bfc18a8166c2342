//! Journeys across processes on Redis. Tracked chains: two `edaflow run` processes share
//! the chain tracker's group, so each reads only some of the step events, yet both report
//! every instance (the state is in Redis), and each stalled instance emits `on_timeout`
//! exactly once, whichever process took it. Traces: a journey whose steps ran in two
//! processes is traced whole from either.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::redis::{connect, counts_by, run_on, RedisServer};
use common::{http, post_json, FlowDir, Running};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(20);

const FLOW: &str = r#"
[flow]
name = "tracked"

[producers.api]
kind = "http"
listen = "127.0.0.1:0"

[subscribers.reserve]
topic = "orderCreated"
script = "reserve.rhai"
emits = ["inventoryReserved"]

[subscribers.charge]
topic = "inventoryReserved"
script = "charge.rhai"
emits = ["paymentCharged"]

[subscribers.compensate]
topic = "orderStalled"
script = "compensate.rhai"

[chains.order]
steps = ["orderCreated", "inventoryReserved", "paymentCharged"]
timeout = "1s"
on_timeout = "orderStalled"
"#;

fn start(dir: &FlowDir, server: &RedisServer) -> (Running, SocketAddr) {
    start_with(dir, server, "tracked.toml", &[])
}

fn start_with(
    dir: &FlowDir,
    server: &RedisServer,
    flow: &str,
    extra: &[&str],
) -> (Running, SocketAddr) {
    let running = run_on(dir, flow, &server.url())
        .args(extra.iter().copied())
        .serve(PATIENCE);
    let addr = running.addr();
    (running, addr)
}

fn chain_report(addr: SocketAddr) -> Value {
    let reply = http(addr, "GET", "/chains", &[], b"");
    assert_eq!(reply.status, 200, "{reply:?}");
    let reports: Value = serde_json::from_str(&reply.body).expect("JSON");
    reports[0].clone()
}

/// How many `orderStalled` events each order id has on the topic's stream.
fn stalled(conn: &mut redis::Connection) -> BTreeMap<u64, usize> {
    counts_by(conn, "edaflow:{tracked}:t:orderStalled", |event| {
        assert_eq!(event["data"]["chain"], "order");
        event["data"]["last_event"]["data"]["n"]
            .as_u64()
            .expect("the last step's data")
    })
}

#[test]
fn two_processes_track_one_chain_and_time_out_each_stalled_instance_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = FlowDir::new();
    dir.write("tracked.toml", FLOW);
    dir.write("reserve.rhai", "emit(\"inventoryReserved\", event.data);\n");
    dir.write(
        "charge.rhai",
        "if event.data.stall != true { emit(\"paymentCharged\", event.data); }\n",
    );
    dir.write(
        "compensate.rhai",
        "log(`compensating ${event.data.correlation_id}`);\n",
    );
    let (first, a) = start(&dir, &server);
    let (second, b) = start(&dir, &server);
    const TOTAL: u64 = 60;
    let stalls: Vec<u64> = (0..TOTAL).filter(|n| n % 10 == 3).collect();
    for n in 0..TOTAL {
        let body = format!("{{\"n\":{n},\"stall\":{}}}", stalls.contains(&n));
        let reply = post_json(if n % 2 == 0 { a } else { b }, "/topics/orderCreated", body);
        assert_eq!(reply.status, 202, "{reply:?}");
    }
    let completed = TOTAL - stalls.len() as u64;
    let deadline = Instant::now() + PATIENCE;
    for addr in [a, b] {
        loop {
            let report = chain_report(addr);
            if report["completed"] == completed
                && report["timed_out"] == stalls.len() as u64
                && report["in_flight"] == 0
            {
                assert_eq!(report["started"], TOTAL);
                assert!(report["duration_ms"]["samples"].as_u64() == Some(completed));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the chain was not fully tracked on {addr}: {report}\n{}{}",
                first.dump(),
                second.dump()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut conn = connect(&server.url());
    let counts = stalled(&mut conn);
    let expected: BTreeMap<u64, usize> = stalls.iter().map(|n| (*n, 1)).collect();
    assert_eq!(
        counts, expected,
        "each stalled order timed out exactly once"
    );
    // And each on_timeout event was handled once, by one of the two processes.
    let lines = |r: &Running| r.stderr().matches("compensating").count();
    assert_eq!(lines(&first) + lines(&second), stalls.len());
}

const SPLIT_FLOW: &str = r#"
[flow]
name = "split"

[producers.api]
kind = "http"
listen = "127.0.0.1:0"

[subscribers.reserve]
topic = "orderCreated"
role = "a"
script = "reserve.rhai"
emits = ["inventoryReserved"]

[subscribers.charge]
topic = "inventoryReserved"
role = "b"
script = "charge.rhai"
emits = ["paymentCharged"]

[subscribers.done]
topic = "paymentCharged"
role = "a"
script = "done.rhai"
"#;

/// `reserve` runs only in the first process and `charge` only in the second, so the
/// journey's events were recorded by both; either process traces all of it.
#[test]
fn a_journey_across_two_processes_is_traced_whole_from_either() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = FlowDir::new();
    dir.write("split.toml", SPLIT_FLOW);
    dir.write("reserve.rhai", "emit(\"inventoryReserved\", event.data);\n");
    dir.write("charge.rhai", "emit(\"paymentCharged\", event.data);\n");
    dir.write("done.rhai", "let n = event.data.n;\n");
    let (first, a) = start_with(&dir, &server, "split.toml", &["--role", "a"]);
    let (second, b) = start_with(&dir, &server, "split.toml", &["--role", "b"]);
    let accepted = post_json(a, "/topics/orderCreated", b"{\"n\":1}");
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let id = serde_json::from_str::<Value>(&accepted.body).expect("JSON")["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    for addr in [a, b] {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let reply = http(addr, "GET", &format!("/trace/{id}"), &[], b"");
            if reply.status == 200 {
                let journey: Value = serde_json::from_str(&reply.body).expect("JSON");
                let steps: Vec<(String, String)> = journey
                    .as_array()
                    .expect("entries")
                    .iter()
                    .map(|e| {
                        (
                            e["topic"].as_str().unwrap_or("").to_owned(),
                            e["emitted_by"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect();
                if steps.len() == 3 {
                    assert_eq!(
                        steps,
                        [
                            ("orderCreated".to_owned(), "api".to_owned()),
                            ("inventoryReserved".to_owned(), "reserve".to_owned()),
                            ("paymentCharged".to_owned(), "charge".to_owned()),
                        ],
                        "{journey}"
                    );
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the journey was not traced whole from {addr}: {reply:?}\n{}{}",
                first.dump(),
                second.dump()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
