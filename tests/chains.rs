//! Tracked choreography on paused time: a chain instance completes when its last step is
//! seen, stalls while a step is missing, and times out into `on_timeout` with its context.
//! On the memory broker the tracker sees each step the broker accepts, by whatever path it
//! was published, and none it refuses.

mod common;

use std::sync::Arc;
use std::time::Duration;

use indoc::indoc;
use serde_json::json;
use tokio::sync::mpsc;

use common::http_server::{oneshot, router};
use common::runtime::{publish, start_with, tap};
use common::{wait_for, FlowDir};
use edaflow::broker::{Broker, GroupSpec, MemoryBroker, MemoryOptions};
use edaflow::event::Event;
use edaflow::flow::TopicPattern;
use edaflow::runtime::chains::ChainReport;
use edaflow::runtime::{Runtime, RuntimeOptions};

/// A three-step chain; `ship` only ships orders whose `ship` flag is true, so a test can
/// make an instance stall at `paymentCharged`.
fn flow(dir: &FlowDir) {
    dir.write(
        "flow.toml",
        indoc! {r#"
            [subscribers.charge]
            topic = "orderCreated"
            script = "charge.rhai"
            emits = ["paymentCharged"]

            [subscribers.ship]
            topic = "paymentCharged"
            script = "ship.rhai"
            emits = ["orderShipped"]

            [subscribers.compensate]
            topic = "orderStalled"
            script = "compensate.rhai"

            [chains.fulfilment]
            steps = ["orderCreated", "paymentCharged", "orderShipped"]
            timeout = "30s"
            on_timeout = "orderStalled"
        "#},
    );
    dir.write("charge.rhai", r#"emit("paymentCharged", event.data);"#);
    dir.write(
        "ship.rhai",
        r#"if event.data.ship { emit("orderShipped", event.data); }"#,
    );
    dir.write("compensate.rhai", "let context = event.data;");
}

async fn start(
    dir: &FlowDir,
) -> (
    Runtime<MemoryBroker>,
    MemoryBroker,
    mpsc::Receiver<Arc<Event>>,
) {
    let broker = MemoryBroker::new(MemoryOptions::default());
    let stalled = tap(&broker, "orderStalled");
    let (runtime, _) = start_with(broker.clone(), RuntimeOptions::default(), dir).await;
    (runtime, broker, stalled)
}

fn report(runtime: &Runtime<MemoryBroker>) -> ChainReport {
    runtime
        .metrics()
        .chain_reports()
        .into_iter()
        .find(|r| r.chain == "fulfilment")
        .expect("the chain is tracked")
}

async fn order(broker: &MemoryBroker, id: u64, ship: bool) -> Event {
    let data = json!({"order_id": id, "ship": ship});
    publish(broker, "orderCreated", "edaflow://test", data).await
}

#[tokio::test(start_paused = true)]
async fn a_chain_that_reaches_its_last_step_completes() {
    let dir = FlowDir::new();
    flow(&dir);
    let (runtime, broker, mut stalled) = start(&dir).await;
    order(&broker, 1, true).await;
    order(&broker, 2, true).await;
    wait_for("two completions", Duration::from_secs(5), || {
        report(&runtime).completed == 2
    })
    .await;
    let r = report(&runtime);
    assert_eq!(
        (r.started, r.completed, r.timed_out, r.in_flight),
        (2, 2, 0, 0),
        "{r:?}"
    );
    assert_eq!(r.duration_ms.expect("durations").samples, 2);
    assert_eq!(
        r.step_ms.keys().cloned().collect::<Vec<_>>(),
        ["orderShipped", "paymentCharged"]
    );
    // Long after the timeout, a completed instance does not time out.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(report(&runtime).timed_out, 0);
    assert!(stalled.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_stalled_chain_times_out_into_on_timeout_with_its_context() {
    let dir = FlowDir::new();
    flow(&dir);
    let (runtime, broker, mut stalled) = start(&dir).await;
    let first = order(&broker, 7, false).await;
    wait_for(
        "the instance to reach paymentCharged",
        Duration::from_secs(1),
        || report(&runtime).step_ms.contains_key("paymentCharged"),
    )
    .await;
    // Stalled: in flight until the timeout.
    tokio::time::sleep(Duration::from_millis(29_900)).await;
    let r = report(&runtime);
    assert_eq!((r.in_flight, r.timed_out), (1, 0), "{r:?}");
    assert!(stalled.try_recv().is_err(), "not before the timeout");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let event = stalled.recv().await.expect("the on_timeout event");
    assert_eq!(event.topic, "orderStalled");
    assert_eq!(
        event.correlation_id, first.id,
        "the journey's correlation id"
    );
    assert_eq!(event.data["chain"], "fulfilment");
    assert_eq!(event.data["correlation_id"], first.id.as_str());
    assert_eq!(
        event.data["steps_reached"],
        json!(["orderCreated", "paymentCharged"])
    );
    assert_eq!(event.data["last_event"]["topic"], "paymentCharged");
    assert_eq!(
        event.data["last_event"]["data"],
        json!({"order_id": 7, "ship": false})
    );
    let r = report(&runtime);
    assert_eq!(
        (r.started, r.completed, r.timed_out, r.in_flight),
        (1, 0, 1, 0),
        "{r:?}"
    );
    // The compensation handler got it.
    let compensate = runtime.metrics().subscriber("compensate");
    wait_for("the compensation to run", Duration::from_secs(1), || {
        compensate
            .handled
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn chains_are_reported_over_http_and_in_metrics() {
    let dir = FlowDir::new();
    flow(&dir);
    let (runtime, broker, _stalled) = start(&dir).await;
    order(&broker, 1, true).await;
    wait_for("a completion", Duration::from_secs(5), || {
        report(&runtime).completed == 1
    })
    .await;
    let app = router(&runtime);
    let reply = oneshot(
        &app,
        axum::http::Request::get("/chains")
            .body(axum::body::Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(reply.status, 200);
    let chains: serde_json::Value = serde_json::from_slice(reply.bytes()).expect("JSON");
    assert_eq!(chains[0]["chain"], "fulfilment");
    assert_eq!(chains[0]["completed"], 1);
    assert_eq!(
        chains[0]["steps"],
        json!(["orderCreated", "paymentCharged", "orderShipped"])
    );
    let reply = oneshot(
        &app,
        axum::http::Request::get("/metrics")
            .body(axum::body::Body::empty())
            .expect("request"),
    )
    .await;
    let text = reply.body;
    assert!(
        text.contains("edaflow_chain_completed_total{chain=\"fulfilment\"} 1"),
        "{text}"
    );
}

/// Posts `data` to `/topics/{topic}` through the HTTP API and returns the status.
async fn ingest(app: &axum::Router, topic: &str, data: serde_json::Value) -> u16 {
    let request = axum::http::Request::post(format!("/topics/{topic}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(data.to_string()))
        .expect("request");
    oneshot(app, request).await.status
}

#[tokio::test(start_paused = true)]
async fn steps_are_seen_from_every_publishing_path_and_not_when_refused() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [producers.tick]
            kind = "interval"
            every = "10s"
            topic = "orderCreated"
            data = { order_id = 2 }

            [subscribers.charge]
            topic = "orderCreated"
            script = "charge.rhai"
            emits = ["paymentCharged"]

            [subscribers.ship]
            topic = "paymentCharged"
            script = "ship.rhai"
            emits = ["orderShipped"]

            [chains.fulfilment]
            steps = ["orderCreated", "paymentCharged", "orderShipped"]
            timeout = "30s"
        "#},
    );
    dir.write("charge.rhai", r#"emit("paymentCharged", event.data);"#);
    // A delayed emit: its step is seen when it falls due.
    dir.write(
        "ship.rhai",
        r#"emit("orderShipped", event.data, #{ delay: "2s" });"#,
    );
    // `blocker` takes every orderCreated and is never read: with room for two events, the
    // third orderCreated published with `Reject` (HTTP ingest) is refused.
    let broker = MemoryBroker::new(MemoryOptions {
        group_capacity: 2,
        ..MemoryOptions::default()
    });
    broker
        .declare_group(&GroupSpec {
            name: "blocker".into(),
            patterns: vec![TopicPattern::parse("orderCreated").expect("pattern")],
        })
        .await
        .expect("group");
    let (runtime, _) = start_with(
        broker.clone(),
        RuntimeOptions {
            producers: true,
            ..RuntimeOptions::default()
        },
        &dir,
    )
    .await;
    let app = router(&runtime);
    let t0 = tokio::time::Instant::now();

    // HTTP ingest starts an instance; the handler's emit and the delayed emit complete it.
    assert_eq!(
        ingest(&app, "orderCreated", json!({"order_id": 1})).await,
        202
    );
    wait_for(
        "the instance to reach paymentCharged",
        Duration::from_secs(1),
        || report(&runtime).step_ms.contains_key("paymentCharged"),
    )
    .await;
    let r = report(&runtime);
    assert_eq!((r.started, r.completed, r.in_flight), (1, 0, 1), "{r:?}");
    wait_for("the first completion", Duration::from_secs(5), || {
        report(&runtime).completed == 1
    })
    .await;
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "the delayed step counts when it falls due, not when it is emitted"
    );

    // The interval producer's event (at 10 s) starts the second.
    wait_for("the second completion", Duration::from_secs(15), || {
        report(&runtime).completed == 2
    })
    .await;
    assert!(t0.elapsed() >= Duration::from_secs(12));

    // `blocker` is full now: the broker refuses the next ingest, and the tracker does not
    // see it.
    assert_eq!(
        ingest(&app, "orderCreated", json!({"order_id": 3})).await,
        503
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = report(&runtime);
    assert_eq!(
        (r.started, r.completed, r.timed_out, r.in_flight),
        (2, 2, 0, 0),
        "{r:?}"
    );
}
