//! The non-HTTP producers in process: `interval` (a fixed event, or a script that emits),
//! `lines` (JSON lines from a file; a bad line is skipped and the rest still flows) and
//! `generator` (N events). Interval tests run on paused time, so periods are exact.

mod common;

use std::sync::Arc;
use std::time::Duration;

use indoc::indoc;
use serde_json::json;
use tokio::sync::mpsc;

use common::runtime::{drain, start_with, tap};
use common::{wait_for, FlowDir};
use edaflow::broker::{MemoryBroker, MemoryOptions};
use edaflow::event::Event;
use edaflow::runtime::{Runtime, RuntimeOptions};

async fn start(dir: &FlowDir) -> (Runtime<MemoryBroker>, mpsc::Receiver<Arc<Event>>) {
    let broker = MemoryBroker::new(MemoryOptions::default());
    let tap = tap(&broker, ">");
    let (runtime, _) = start_with(
        broker,
        RuntimeOptions {
            producers: true,
            ..RuntimeOptions::default()
        },
        dir,
    )
    .await;
    (runtime, tap)
}

#[tokio::test(start_paused = true)]
async fn an_interval_publishes_its_fixed_event_every_period() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [producers.heartbeat]
            kind = "interval"
            every = "5s"
            topic = "heartbeat"
            data = { service = "orders" }
        "#},
    );
    let (runtime, mut tap) = start(&dir).await;
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(4_999)).await;
    assert!(
        drain(&mut tap).is_empty(),
        "nothing before the first period"
    );
    tokio::time::sleep(Duration::from_millis(10_002)).await;
    let beats = drain(&mut tap);
    assert_eq!(beats.len(), 3, "at 5 s, 10 s and 15 s: {beats:?}");
    assert!(beats
        .iter()
        .all(|e| e.topic == "heartbeat" && e.data == json!({"service": "orders"})));
    assert!(beats.iter().all(|e| e.source.ends_with("/heartbeat")));
    assert!(t0.elapsed() >= Duration::from_secs(15));
    runtime.shutdown(Duration::ZERO).await;
}

#[tokio::test(start_paused = true)]
async fn an_interval_script_emits_what_it_likes() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [producers.sweeper]
            kind = "interval"
            every = "1m"
            script = "sweep.rhai"
        "#},
    );
    dir.write(
        "sweep.rhai",
        r#"emit("sweep.started", #{ at: now() }); emit("sweep.batch", #{ n: 1 }); emit("sweep.batch", #{ n: 2 });"#,
    );
    let (runtime, mut tap) = start(&dir).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    wait_for("a tick's three events", Duration::from_secs(1), || {
        !tap.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let events = drain(&mut tap);
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(topics, ["sweep.started", "sweep.batch", "sweep.batch"]);
    assert_eq!(events[2].data, json!({"n": 2}));
    runtime.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn lines_skips_a_bad_line_and_publishes_the_rest() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [producers.import]
            kind = "lines"
            path = "orders.jsonl"
            topic = "orderCreated"

            [subscribers.count]
            topic = "orderCreated"
            script = "count.rhai"
        "#},
    );
    dir.write("count.rhai", "let o = event.data;");
    dir.write(
        "orders.jsonl",
        "{\"order_id\": 1}\n{\"order_id\": 2\nnot json at all\n\n{\"order_id\": 3}\n",
    );
    let (runtime, mut tap) = start(&dir).await;
    let count = runtime.metrics().subscriber("count");
    wait_for("two good lines handled", Duration::from_secs(5), || {
        count.handled.load(std::sync::atomic::Ordering::Relaxed) == 2
    })
    .await;
    let ids: Vec<_> = drain(&mut tap)
        .iter()
        .map(|e| e.data["order_id"].clone())
        .collect();
    assert_eq!(
        ids,
        [json!(1), json!(3)],
        "lines 2 and 3 are bad, line 4 is blank"
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn lines_from_a_missing_file_fails_the_start() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [producers.import]
            kind = "lines"
            path = "missing.jsonl"
            topic = "orderCreated"
        "#},
    );
    let broker = MemoryBroker::new(MemoryOptions::default());
    let mut runtime = Runtime::new(
        broker,
        RuntimeOptions {
            producers: true,
            ..RuntimeOptions::default()
        },
    );
    let error = runtime
        .apply(dir.prepare("flow.toml"))
        .await
        .expect_err("a lines producer needs its file");
    assert!(error.to_string().contains("missing.jsonl"), "{error}");
}

#[tokio::test]
async fn a_generator_publishes_exactly_its_count() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [producers.load]
            kind = "generator"
            topic = "orderCreated"
            count = 2500
            data = { order_id = 123 }

            [subscribers.count]
            topic = "orderCreated"
            script = "count.rhai"
        "#},
    );
    dir.write("count.rhai", "let o = event.data;");
    let (runtime, _tap) = start(&dir).await;
    let count = runtime.metrics().subscriber("count");
    wait_for("2,500 events handled", Duration::from_secs(10), || {
        count.handled.load(std::sync::atomic::Ordering::Relaxed) == 2500
    })
    .await;
    runtime.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        count.handled.load(std::sync::atomic::Ordering::Relaxed),
        2500
    );
}
