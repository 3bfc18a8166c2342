//! CQRS in process: stores written by handlers (only when the run succeeds), request/reply
//! over `POST /query/{topic}` (200, 502 with a safe message, 504), exposed stores over
//! `GET /stores/{store}/{key}`, and `--role` selecting one side.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use indoc::indoc;
use serde_json::{json, Value};

use common::http_server::{oneshot, router};
use common::runtime::{publish, start_with};
use common::{wait_for, FlowDir};
use edaflow::broker::{Broker, MemoryBroker, MemoryOptions};
use edaflow::runtime::{Runtime, RuntimeOptions};

fn flow(dir: &FlowDir) {
    dir.write(
        "flow.toml",
        indoc! {r#"
            [topics."orders.query.get"]
            kind = "query"
            timeout = "2s"

            [stores.orders]
            expose = true

            [stores.private]

            [subscribers.project]
            topic = "orders.event.placed"
            role = "command"
            script = "project.rhai"

            [subscribers.get_order]
            topic = "orders.query.get"
            role = "query"
            script = "get.rhai"

            [subscribers.broken_query]
            topic = "orders.query.broken"
            role = "query"
            script = "broken.rhai"
            retry = { attempts = 2, backoff = "10ms" }
        "#},
    );
    dir.write(
        "project.rhai",
        indoc! {r#"
            let o = event.data;
            let s = store("orders");
            s.set(`order:${o.order_id}`, o);
            let n = s.incr("count");
            s.set("last_count_seen", n);
            store("private").set("seen", true);
            if o.fail == true { fail("projection refused"); }
        "#},
    );
    dir.write(
        "get.rhai",
        indoc! {r#"
            let found = store("orders").get(`order:${event.data.order_id}`);
            let all = store("orders").scan("order:");
            reply(#{ found: found != (), order: found, orders_in_model: all.len() });
        "#},
    );
    dir.write(
        "broken.rhai",
        // It would reply, but it fails first.
        r#"fail("secret database password is hunter2"); reply(#{ never: true });"#,
    );
}

async fn start(dir: &FlowDir, roles: &[&str]) -> (Runtime<MemoryBroker>, MemoryBroker) {
    let broker = MemoryBroker::new(MemoryOptions::default());
    let (runtime, _) = start_with(
        broker.clone(),
        RuntimeOptions {
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..RuntimeOptions::default()
        },
        dir,
    )
    .await;
    (runtime, broker)
}

async fn call(app: &axum::Router, method: &str, uri: &str, body: Value) -> (u16, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let reply = oneshot(app, request).await;
    let json = serde_json::from_slice(reply.bytes()).unwrap_or(Value::Null);
    (reply.status, json)
}

async fn place(broker: &MemoryBroker, data: Value) {
    publish(broker, "orders.event.placed", "edaflow://test", data).await;
}

#[tokio::test(start_paused = true)]
async fn projections_write_stores_and_queries_reply_from_them() {
    let dir = FlowDir::new();
    flow(&dir);
    let (runtime, broker) = start(&dir, &[]).await;
    let app = router(&runtime);

    let (status, answer) = call(
        &app,
        "POST",
        "/query/orders.query.get",
        json!({"order_id": 1}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["found"], false, "nothing projected yet: {answer}");

    place(&broker, json!({"order_id": 1, "customer": "ann"})).await;
    place(&broker, json!({"order_id": 2, "customer": "bob"})).await;
    let stores = broker.stores().expect("the memory broker keeps stores");
    wait_for("two projections", Duration::from_secs(1), || {
        stores.get("orders", "count").unwrap() == Some(json!(2))
    })
    .await;
    // incr returns the new value, and the run reads its own writes.
    assert_eq!(
        stores.get("orders", "last_count_seen").unwrap(),
        Some(json!(2))
    );

    let (status, answer) = call(
        &app,
        "POST",
        "/query/orders.query.get",
        json!({"order_id": 1}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["found"], true);
    assert_eq!(answer["order"], json!({"order_id": 1, "customer": "ann"}));
    assert_eq!(answer["orders_in_model"], 2, "scan by prefix: {answer}");

    let (status, value) = call(&app, "GET", "/stores/orders/order:2", Value::Null).await;
    assert_eq!(
        (status, value),
        (200, json!({"order_id": 2, "customer": "bob"}))
    );
    let (status, error) = call(&app, "GET", "/stores/private/seen", Value::Null).await;
    assert_eq!(status, 404, "a store that is not exposed: {error}");
    assert_eq!(error["code"], "not_exposed");
    let (status, error) = call(&app, "GET", "/stores/orders/nope", Value::Null).await;
    assert_eq!((status, error["code"].clone()), (404, json!("no_such_key")));
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_writes_nothing() {
    let dir = FlowDir::new();
    flow(&dir);
    let (runtime, broker) = start(&dir, &[]).await;
    place(
        &broker,
        json!({"order_id": 9, "customer": "eve", "fail": true}),
    )
    .await;
    let project = runtime.metrics().subscriber("project");
    wait_for("the dead letter", Duration::from_secs(60), || {
        project
            .dead_letters
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    let stores = broker.stores().expect("stores");
    assert_eq!(stores.get("orders", "order:9").unwrap(), None);
    assert_eq!(stores.get("orders", "count").unwrap(), None);
    assert_eq!(stores.get("private", "seen").unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_failing_query_is_a_502_without_its_details_and_a_silent_one_a_504() {
    let dir = FlowDir::new();
    flow(&dir);
    let (runtime, _broker) = start(&dir, &[]).await;
    let app = router(&runtime);
    let (status, error) = call(&app, "POST", "/query/orders.query.broken", json!({})).await;
    assert_eq!(status, 502, "{error}");
    assert_eq!(error["code"], "query_failed");
    let text = error["error"].as_str().expect("a message");
    assert!(!text.contains("hunter2"), "internals must not leak: {text}");

    let started = tokio::time::Instant::now();
    let (status, error) = call(&app, "POST", "/query/nobody.listens", json!({})).await;
    assert_eq!(status, 504, "{error}");
    assert_eq!(error["code"], "query_timeout");
    assert_eq!(started.elapsed().as_secs(), 5, "the default timeout");
}

#[tokio::test(start_paused = true)]
async fn role_query_runs_only_the_query_side() {
    let dir = FlowDir::new();
    flow(&dir);
    let (runtime, broker) = start(&dir, &["query"]).await;
    let groups: Vec<String> = broker.stats().into_iter().map(|g| g.name).collect();
    assert_eq!(
        groups,
        ["broken_query", "get_order"],
        "only query subscribers run"
    );
    let app = router(&runtime);
    let (status, _) = call(
        &app,
        "POST",
        "/query/orders.query.get",
        json!({"order_id": 1}),
    )
    .await;
    assert_eq!(status, 200);
}
