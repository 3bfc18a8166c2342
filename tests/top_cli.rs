//! `edaflow top` against a real `edaflow run`: with events flowing, `--once` prints one
//! frame with each topic's rate, the subscribers' errors and last error, and the queues'
//! depths; the `--admin` listener serves it too; an instance that is not there is a clear
//! error and exit code 1.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::load::Load;
use common::{free_port, post_json, run_flow, try_http, Edaflow, Finished, FlowDir};

const FLOW: &str = r#"
[flow]
name = "shop"

[producers.api]
kind = "http"
listen = "127.0.0.1:3000"

[subscribers.reserve]
topic = "orderCreated"
script = "reserve.rhai"

[subscribers.audit]
topic = "orderAudited"
script = "audit.rhai"
retry = { attempts = 1, backoff = "10ms" }

[queues.reminders]
delay = "1h"

[subscribers.remind]
queue = "reminders"
"#;

fn flow_dir() -> FlowDir {
    FlowDir::with_files(&[
        ("shop.toml", FLOW),
        ("reserve.rhai", "log(`reserved ${event.data.n}`);"),
        ("audit.rhai", r#"fail("the audit log is full");"#),
    ])
}

fn post_order(addr: SocketAddr, n: u64) -> common::Reply {
    post_json(addr, "/topics/orderCreated", format!(r#"{{"n":{n}}}"#))
}

/// The figures of the row of `table` (its heading's first word) named `name`.
fn row(stdout: &str, table: &str, name: &str) -> Vec<String> {
    let mut in_table = false;
    for line in stdout.lines() {
        if line.split_whitespace().next() == Some(table) {
            in_table = true;
            continue;
        }
        if in_table && line.is_empty() {
            break;
        }
        if in_table && line.split_whitespace().next() == Some(name) {
            return line.split_whitespace().skip(1).map(str::to_owned).collect();
        }
    }
    panic!("no {name} row in the {table} table:\n{stdout}");
}

fn rate(figure: &str) -> f64 {
    figure
        .parse()
        .unwrap_or_else(|_| panic!("{figure:?} is not a rate"))
}

fn top_once(url: &str) -> Finished {
    let dir = FlowDir::new();
    Edaflow::new(dir.root())
        .args(["top", "--once", "--interval", "500ms", "--url", url])
        .run()
        .success()
}

#[test]
fn top_once_shows_rates_errors_and_queue_depths() {
    let dir = flow_dir();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut running = run_flow(
        dir.root(),
        &[
            dir.path("shop.toml").to_str().expect("a UTF-8 path"),
            "--admin",
            &admin.to_string(),
        ],
    );
    let addr = running.addr();
    for i in 0..3 {
        running.request("POST", "/queues/reminders", &format!(r#"{{"i":{i}}}"#));
    }
    running.request("POST", "/topics/orderAudited", r#"{"n":1}"#);
    running.wait(
        "the audit event dead-lettered",
        Duration::from_secs(10),
        |r| r.request("GET", "/stats", "").json()["subscribers"]["audit"]["dead_letters"] == 1,
    );
    let load = Load::start(vec![addr], Duration::from_secs(20), post_order);
    load.wait_acked(20, "orders posted before top samples");

    let finished = top_once(&format!("http://{addr}"));
    let out = &finished.stdout;
    assert!(
        out.starts_with(&format!("edaflow top  http://{addr}  generation 1")),
        "{}",
        finished.dump()
    );
    // TOPIC IN/s OUT/s IN OUT
    let topic = row(out, "TOPIC", "orderCreated");
    assert!(rate(&topic[0]) > 0.0, "{}", finished.dump());
    // SUBSCRIBER IN/s DONE/s ERR/s WAITING IN-FLIGHT ERRORS DEAD LAST-ERROR…
    let reserve = row(out, "SUBSCRIBER", "reserve");
    assert!(rate(&reserve[0]) > 0.0, "{}", finished.dump());
    let audit = row(out, "SUBSCRIBER", "audit");
    assert_eq!(&audit[5..7], ["1", "1"], "{}", finished.dump());
    assert!(
        audit[7..].join(" ").contains("the audit log is full"),
        "{}",
        finished.dump()
    );
    // QUEUE READY DELAYED IN-FLIGHT DEAD
    assert_eq!(
        row(out, "QUEUE", "reminders"),
        ["0", "3", "0", "0"],
        "{}",
        finished.dump()
    );

    // The --admin listener serves the same figures.
    let deadline = Instant::now() + Duration::from_secs(10);
    while try_http(admin, "GET", "/livez", &[], b"").is_err() {
        assert!(
            Instant::now() < deadline,
            "the admin listener never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let finished = top_once(&format!("http://{admin}"));
    let topic = row(&finished.stdout, "TOPIC", "orderCreated");
    assert!(rate(&topic[0]) > 0.0, "{}", finished.dump());
    load.finish();
    running.terminate();
}

#[test]
fn top_against_an_instance_that_is_not_there_is_an_error() {
    let dir = FlowDir::new();
    let url = format!("http://127.0.0.1:{}", free_port());
    let finished = Edaflow::new(dir.root())
        .args(["top", "--once", "--url", &url])
        .run()
        .code(1);
    assert_eq!(finished.stdout, "", "{}", finished.dump());
    assert!(
        finished.stderr.contains("cannot connect to 127.0.0.1:")
            && finished.stderr.contains("edaflow::client::connect"),
        "{}",
        finished.dump()
    );
    // Piped stdout (not a terminal) without --once prints one frame the same way, so it
    // fails the same way too rather than waiting.
    Edaflow::new(dir.root())
        .args(["top", "--url", &url])
        .run()
        .code(1);
}
