//! `GET /trace/{correlation}`: the recorded tree of one journey, with who emitted each
//! event and with which generation's code.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use indoc::indoc;
use serde_json::Value;

use common::http_server::{oneshot, router};
use common::runtime::start_with;
use common::{wait_for, FlowDir};
use edaflow::broker::{MemoryBroker, MemoryOptions};
use edaflow::runtime::RuntimeOptions;

async fn get(app: &axum::Router, uri: &str) -> (u16, Value) {
    let reply = oneshot(app, Request::get(uri).body(Body::empty()).expect("request")).await;
    let json = serde_json::from_slice(reply.bytes()).unwrap_or(Value::Null);
    (reply.status, json)
}

#[tokio::test(start_paused = true)]
async fn a_journey_is_traced_from_ingest_to_its_last_event() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [subscribers.reserve]
            topic = "orderCreated"
            script = "reserve.rhai"
            emits = ["inventoryReserved"]

            [subscribers.charge]
            topic = "inventoryReserved"
            script = "charge.rhai"
            emits = ["paymentCharged"]
        "#},
    );
    dir.write("reserve.rhai", r#"emit("inventoryReserved", event.data);"#);
    dir.write("charge.rhai", r#"emit("paymentCharged", event.data);"#);
    let broker = MemoryBroker::new(MemoryOptions::default());
    let (runtime, _) = start_with(broker, RuntimeOptions::default(), &dir).await;
    let app = router(&runtime);
    let reply = oneshot(
        &app,
        Request::post("/topics/orderCreated")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"order_id": 1}"#))
            .expect("request"),
    )
    .await;
    let id = reply.json()["id"].as_str().expect("id").to_owned();
    let charge = runtime.metrics().subscriber("charge");
    wait_for("the chain", Duration::from_secs(1), || {
        charge.handled.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;

    let (status, journey) = get(&app, &format!("/trace/{id}")).await;
    assert_eq!(status, 200, "{journey}");
    let entries = journey.as_array().expect("a list");
    let topics: Vec<&str> = entries
        .iter()
        .map(|e| e["topic"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        topics,
        ["orderCreated", "inventoryReserved", "paymentCharged"]
    );
    assert_eq!(entries[0]["emitted_by"], "api");
    assert_eq!(entries[0]["generation"], Value::Null);
    assert_eq!(entries[1]["emitted_by"], "reserve");
    assert_eq!(entries[1]["generation"], 1);
    assert_eq!(entries[1]["causation_id"], entries[0]["id"]);
    assert_eq!(entries[2]["causation_id"], entries[1]["id"]);

    let (status, error) = get(&app, "/trace/01NOSUCHJOURNEY").await;
    assert_eq!(
        (status, error["code"].clone()),
        (404, Value::from("unknown_journey"))
    );
}
