//! The examples under `examples/` keep working, through the real binary: every example
//! folder validates without a warning and its `[[tests]]` pass, and each example's README
//! walkthrough gives what the README says against `edaflow run` (the query side's scale-out
//! on Redis included). `examples/embed.rs` is compiled by `cargo test` with the other
//! example targets.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{crate_root, http, Edaflow, Reply, Running};
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(20);

/// Every folder of `examples/` (relative to the crate root), in name order.
fn example_folders() -> Vec<String> {
    let mut folders: Vec<String> = std::fs::read_dir(crate_root().join("examples"))
        .expect("read examples/")
        .filter_map(|entry| {
            let entry = entry.expect("read an entry of examples/");
            entry
                .file_type()
                .expect("file type")
                .is_dir()
                .then(|| format!("examples/{}", entry.file_name().to_string_lossy()))
        })
        .collect();
    folders.sort();
    folders
}

/// The folders this suite knows are there, so that a rename cannot empty the loop.
#[test]
fn the_example_folders_are_found() {
    let folders = example_folders();
    for expected in [
        "examples/cqrs-read-model",
        "examples/iot-alerts",
        "examples/saga",
    ] {
        assert!(
            folders.iter().any(|f| f == expected),
            "{expected} missing from {folders:?}"
        );
    }
    for folder in &folders {
        let readme = crate_root().join(folder).join("README.md");
        assert!(readme.is_file(), "{folder} has no README.md");
    }
}

#[test]
fn every_example_validates_without_warnings() {
    for folder in example_folders() {
        let finished = Edaflow::new(crate_root())
            .args(["validate", &folder])
            .run()
            .success();
        assert!(
            finished.stdout.starts_with("ok: ")
                && finished.stdout.trim_end().ends_with("; 0 warning(s)"),
            "{folder}: {}",
            finished.dump()
        );
        assert_eq!(finished.stderr, "", "{folder} warns:{}", finished.dump());
    }
}

#[test]
fn every_example_passes_its_flow_tests() {
    for folder in example_folders() {
        let finished = Edaflow::new(crate_root())
            .args(["test", &folder])
            .run()
            .success();
        let passed: usize = finished
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("flow test result: ok. "))
            .and_then(|rest| rest.strip_suffix(" passed; 0 failed"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{folder}: no passing result line{}", finished.dump()));
        assert!(passed > 0, "{folder} has no flow tests{}", finished.dump());
    }
}

// ---------------------------------------------------------------------------------------
// The READMEs' walkthroughs

/// `edaflow run FLOW --listen 127.0.0.1:0` from the crate root, and its address.
fn start(flow: &str, extra: &[&str]) -> (Running, SocketAddr) {
    let mut args = vec!["run", flow, "--no-watch", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut running = Edaflow::new(crate_root()).args(args).spawn();
    let addr = running.listening_addr(PATIENCE);
    (running, addr)
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    common::post_json(addr, path, body.to_string())
}

fn publish(addr: SocketAddr, topic: &str, body: Value, running: &Running) {
    let reply = post(addr, &format!("/topics/{topic}"), &body);
    assert_eq!(reply.status, 202, "{reply:?}\n{}", running.dump());
}

/// Asks `ask` until its answer is a 200 whose JSON body satisfies `done`, or fails after
/// `PATIENCE` with the last answer and the processes' output.
fn until(
    what: &str,
    mut ask: impl FnMut() -> Reply,
    done: impl Fn(&Value) -> bool,
    processes: &[&Running],
) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = ask();
        if reply.status == 200 {
            if let Ok(body) = serde_json::from_str::<Value>(&reply.body) {
                if done(&body) {
                    return body;
                }
            }
        }
        if Instant::now() >= deadline {
            let dumps: Vec<String> = processes.iter().map(|p| p.dump()).collect();
            panic!("{what}: last answer {reply:?}\n{}", dumps.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// examples/saga/README.md: a paid order ships, a declined one is compensated.
#[test]
fn saga_readme_walkthrough() {
    let (running, addr) = start("examples/saga/saga.toml", &[]);
    let get =
        |key: &'static str| move || http(addr, "GET", &format!("/stores/orders/{key}"), &[], b"");
    publish(
        addr,
        "order.placed",
        json!({"order_id": 1, "sku": "kettle", "qty": 1, "total": 24.5, "card": "4242-4242-4242-4242"}),
        &running,
    );
    let shipped = until(
        "order 1 shipped",
        get("order:1"),
        |o| o["state"] == "shipped",
        &[&running],
    );
    assert_eq!(shipped["stock"], "shipped");
    publish(
        addr,
        "order.placed",
        json!({"order_id": 2, "sku": "kettle", "qty": 2, "total": 49.0, "card": "4000-0000-0000-0002"}),
        &running,
    );
    let cancelled = until(
        "order 2 cancelled",
        get("order:2"),
        |o| o["state"] == "cancelled",
        &[&running],
    );
    assert_eq!(cancelled["stock"], "released", "the compensation ran");
    assert_eq!(cancelled["reason"], "card declined");
}

/// examples/iot-alerts/README.md: a high reading raises an alert with its escalation
/// queued; acknowledging it records who took it. (The escalation itself, 10 s later, is
/// covered by the flow's own tests on virtual time.)
#[test]
fn iot_alerts_readme_walkthrough() {
    let (running, addr) = start("examples/iot-alerts/alerts.toml", &[]);
    publish(
        addr,
        "sensor.reading",
        json!({"sensor": "boiler-1", "value": 92.5}),
        &running,
    );
    until(
        "the alert is raised",
        || http(addr, "GET", "/stores/alerts/boiler-1-1", &[], b""),
        |a| a["state"] == "open" && a["value"] == 92.5,
        &[&running],
    );
    let queues = http(addr, "GET", "/queues/escalations", &[], b"");
    assert_eq!(queues.status, 200, "{queues:?}");
    let queue: Value = serde_json::from_str(&queues.body).expect("JSON");
    assert_eq!(queue["depth"], 1, "the escalation waits: {queue}");
    publish(
        addr,
        "alert.ack",
        json!({"alert_id": "boiler-1-1", "by": "dana"}),
        &running,
    );
    until(
        "the alert is acknowledged",
        || http(addr, "GET", "/stores/alerts/boiler-1-1", &[], b""),
        |a| a["state"] == "acknowledged" && a["acknowledged_by"] == "dana",
        &[&running],
    );
    let reading = http(addr, "GET", "/stores/readings/boiler-1", &[], b"");
    assert_eq!(reading.status, 200, "{reading:?}");
    assert!(reading.body.contains("92.5"), "{reading:?}");
}

fn reviews_walkthrough(processes: &[&Running], command: SocketAddr, query: SocketAddr) {
    for (author, rating) in [("ann", 4), ("bob", 5)] {
        publish(
            command,
            "reviews.command.submit",
            json!({"product": "kettle", "rating": rating, "author": author, "text": "Boils fast."}),
            processes[0],
        );
    }
    publish(
        command,
        "reviews.command.submit",
        json!({"product": "toaster", "rating": 3, "author": "cy"}),
        processes[0],
    );
    let kettle = until(
        "the kettle's summary",
        || {
            post(
                query,
                "/query/reviews.query.product",
                &json!({"product": "kettle"}),
            )
        },
        |s| s["reviews"] == 2,
        processes,
    );
    assert_eq!(kettle["average"], 4.5, "{kettle}");
    assert_eq!(kettle["latest"][0]["author"], "bob", "{kettle}");
    let top = until(
        "the top products",
        || post(query, "/query/reviews.query.top", &json!({})),
        |t| t["top"].as_array().is_some_and(|a| a.len() == 2),
        processes,
    );
    assert_eq!(top["top"][0]["product"], "kettle", "{top}");
    assert_eq!(top["top"][1]["product"], "toaster", "{top}");
    let unknown = post(
        query,
        "/query/reviews.query.product",
        &json!({"product": "lamp"}),
    );
    assert_eq!(unknown.status, 200, "{unknown:?}");
    assert!(unknown.body.contains(r#""found":false"#), "{unknown:?}");
}

/// examples/cqrs-read-model/README.md, in one process on the memory broker.
#[test]
fn cqrs_readme_walkthrough() {
    let (running, addr) = start("examples/cqrs-read-model/reviews.toml", &[]);
    reviews_walkthrough(&[&running], addr, addr);
}

/// examples/cqrs-read-model/README.md, scaled out on Redis: the command side and the
/// projection in one process, the query side in another. Queries asked of the command
/// process are answered by the query process, and commands sent to the query process are
/// handled by the command process.
#[test]
fn cqrs_readme_scale_out_on_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let flow = "examples/cqrs-read-model/reviews.toml";
    let broker = ["--broker", url.as_str()];
    let (command, command_addr) = start(
        flow,
        &[
            broker[0],
            broker[1],
            "--role",
            "command",
            "--role",
            "projection",
        ],
    );
    let (query, query_addr) = start(flow, &[broker[0], broker[1], "--role", "query"]);
    reviews_walkthrough(&[&command, &query], query_addr, command_addr);
}
