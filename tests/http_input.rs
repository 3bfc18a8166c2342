//! What ingest takes and refuses, as the CloudEvents spec and `event::limits` say: ids,
//! times with any offset, `data_base64`, extension names, the `edaflowhops` hop count,
//! binary-mode `ce-*` headers, every length limit, data depth, and the JSON answer (with
//! its stable code) of every refusal the router or the server makes, 404, 405, 413, 415,
//! a malformed or oversized head and strict admin bodies included. Refused input is never
//! published.
//!
//! Most cases drive the router directly (`oneshot`); the refusals made beneath it (a
//! head hyper cannot read) go through a real socket.

mod common;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use indoc::indoc;
use serde_json::{json, Value};

use common::http_server::{exchange, oneshot, request, serve};
use common::runtime::{self, drain, tap};
use common::FlowDir;
use edaflow::broker::{Broker, DeadFilter, MemoryBroker, MemoryOptions};
use edaflow::event::{limits, Event};
use edaflow::flow::HttpProducer;
use edaflow::runtime::{Runtime, RuntimeOptions};

struct Api {
    runtime: Runtime<MemoryBroker>,
    broker: MemoryBroker,
    router: Router,
    _dir: FlowDir,
}

async fn api_with(flow: &str, files: &[(&str, &str)], body_limit: usize) -> Api {
    let dir = FlowDir::with_files(files);
    dir.write("flow.toml", flow);
    let broker = MemoryBroker::new(MemoryOptions::default());
    let options = RuntimeOptions {
        quiet: true,
        ..runtime::options()
    };
    let (runtime, _) = runtime::start_with(broker.clone(), options, &dir).await;
    let router = runtime.api_router(
        HttpProducer {
            listen: "127.0.0.1:0".into(),
            body_limit,
            ..HttpProducer::default()
        },
        "master",
    );
    Api {
        runtime,
        broker,
        router,
        _dir: dir,
    }
}

async fn api() -> Api {
    api_with("[flow]\nname = \"input\"\n", &[], 1 << 20).await
}

fn structured(topic: &str, event: &Value) -> Request<Body> {
    Request::post(format!("/topics/{topic}"))
        .header(header::CONTENT_TYPE, "application/cloudevents+json")
        .body(Body::from(event.to_string()))
        .expect("a request")
}

fn order(extra: Value) -> Value {
    let mut event = json!({
        "specversion": "1.0",
        "id": "order-1",
        "source": "urn:shop",
        "type": "orderCreated",
        "data": {"order_id": 1},
    });
    for (k, v) in extra.as_object().expect("an object") {
        event[k] = v.clone();
    }
    event
}

/// Sends a structured event built from `order(extra)` and asserts the refusal; then makes
/// sure nothing was published.
async fn refuses(api: &Api, extra: Value, status: StatusCode, code: &str) -> String {
    let mut all = tap(&api.broker, ">");
    let error = oneshot(
        &api.router,
        structured("orderCreated", &order(extra.clone())),
    )
    .await
    .refused(status, code);
    assert!(drain(&mut all).is_empty(), "{extra} was published");
    error
}

async fn accepts(api: &Api, event: &Value) -> Arc<Event> {
    let mut all = tap(&api.broker, ">");
    let id = oneshot(&api.router, structured("orderCreated", event))
        .await
        .accepted();
    let published = drain(&mut all);
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].id, id);
    published[0].clone()
}

// ---------------------------------------------------------------------------------------
// CloudEvents attributes

#[tokio::test]
async fn an_empty_id_is_refused_and_a_missing_one_is_made() {
    let api = api().await;
    let error = refuses(
        &api,
        json!({"id": ""}),
        StatusCode::BAD_REQUEST,
        "invalid_event",
    )
    .await;
    assert!(error.contains("`id` must not be empty"), "{error}");
    for empty in ["source", "correlationid", "causationid"] {
        refuses(
            &api,
            json!({ empty: "" }),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        )
        .await;
    }
    let mut event = order(json!({}));
    event.as_object_mut().expect("an object").remove("id");
    let made = accepts(&api, &event).await;
    assert_eq!(made.id.len(), 26, "a ULID: {}", made.id);
    assert_eq!(made.correlation_id, made.id);
}

#[tokio::test]
async fn times_with_any_offset_are_taken_and_normalised_to_utc() {
    let api = api().await;
    let utc = "2026-11-26T05:00:00.250Z";
    for time in [
        "2026-11-26T05:00:00.25Z",
        "2026-11-26t05:00:00.250z",
        "2026-11-26T10:30:00.25+05:30",
        "2026-11-25T21:00:00.250-08:00",
        "2026-11-26T05:00:00.250000000+00:00",
    ] {
        let event = accepts(&api, &order(json!({ "time": time }))).await;
        assert_eq!(
            humantime::format_rfc3339_millis(event.time).to_string(),
            utc,
            "{time}"
        );
        let wire: Value = serde_json::from_str(&event.to_json()).expect("JSON");
        assert_eq!(wire["time"], utc, "written back in UTC");
    }
    let fine = accepts(
        &api,
        &order(json!({"time": "2026-11-26T05:00:00.123456789Z"})),
    )
    .await;
    assert_eq!(
        fine.time
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .subsec_nanos(),
        123_456_789
    );
    for bad in [
        "2026-11-26T05:00:00",
        "2026-11-26",
        "2026-02-30T05:00:00Z",
        "1969-12-31T23:59:59Z",
        "2026-11-26T05:00:00+5:30",
        "yesterday",
    ] {
        let error = refuses(
            &api,
            json!({ "time": bad }),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        )
        .await;
        assert!(error.contains("time"), "{error}");
    }
    refuses(
        &api,
        json!({"time": 1_700_000_000}),
        StatusCode::BAD_REQUEST,
        "invalid_event",
    )
    .await;
}

#[tokio::test]
async fn data_base64_keeps_binary_bytes_and_decodes_json() {
    let api = api().await;
    // Bytes that are no text: kept as base64, `data` left out of the envelope.
    let bytes: Vec<u8> = vec![0, 159, 146, 150, 255, 10];
    let text = edaflow::http::base64::encode(&bytes);
    let mut event =
        order(json!({"datacontenttype": "application/octet-stream", "data_base64": text}));
    event.as_object_mut().expect("an object").remove("data");
    let binary = accepts(&api, &event).await;
    assert_eq!(binary.data, Value::Null);
    assert_eq!(binary.datacontenttype, "application/octet-stream");
    assert!(binary.has_binary_data());
    assert_eq!(binary.extensions["data_base64"], json!(text));
    let wire: Value = serde_json::from_str(&binary.to_json()).expect("JSON");
    assert!(wire.get("data").is_none(), "{wire}");
    assert_eq!(
        edaflow::http::base64::decode(wire["data_base64"].as_str().expect("a string")),
        Ok(bytes.clone())
    );
    // What a broker stores reads back as the same event.
    let back: Event = serde_json::from_str(&binary.to_stored_json()).expect("stored JSON");
    assert_eq!(&back, binary.as_ref());

    // Without a datacontenttype: still bytes, typed as such.
    let mut untyped = order(json!({"data_base64": "AAEC"}));
    untyped.as_object_mut().expect("an object").remove("data");
    let untyped = accepts(&api, &untyped).await;
    assert_eq!(untyped.datacontenttype, "application/octet-stream");
    assert_eq!(untyped.extensions["data_base64"], "AAEC");

    // JSON sent as base64 is the JSON.
    let json_text = r#"{"order_id": 7, "note": "héllo"}"#;
    let mut as_json = order(json!({
        "datacontenttype": "application/json",
        "data_base64": edaflow::http::base64::encode(json_text.as_bytes()),
    }));
    as_json.as_object_mut().expect("an object").remove("data");
    let decoded = accepts(&api, &as_json).await;
    assert_eq!(decoded.data, json!({"order_id": 7, "note": "héllo"}));
    assert!(!decoded.has_binary_data());
    assert_eq!(decoded.raw.get(), Some(json_text), "its bytes as they came");

    for (extra, why) in [
        (json!({"data_base64": "AAE"}), "not base64"),
        (json!({"data_base64": "AA=A"}), "not base64"),
        (json!({"data_base64": 12}), "must be a string"),
        (
            json!({"datacontenttype": "application/json", "data_base64": "bm90IGpzb24="}),
            "holds no JSON",
        ),
    ] {
        let mut event = order(extra.clone());
        event.as_object_mut().expect("an object").remove("data");
        let mut all = tap(&api.broker, ">");
        let error = oneshot(&api.router, structured("orderCreated", &event))
            .await
            .refused(StatusCode::BAD_REQUEST, "invalid_event");
        assert!(error.contains(why), "{extra}: {error}");
        assert!(drain(&mut all).is_empty());
    }
    let error = refuses(
        &api,
        json!({"data_base64": "AAEC"}),
        StatusCode::BAD_REQUEST,
        "invalid_event",
    )
    .await;
    assert!(error.contains("cannot both be present"), "{error}");
}

#[tokio::test]
async fn text_data_keeps_its_type_and_other_data_needs_json() {
    let api = api().await;
    let text = accepts(
        &api,
        &order(json!({"datacontenttype": "text/plain", "data": "hello"})),
    )
    .await;
    assert_eq!(text.data, json!("hello"));
    assert_eq!(text.datacontenttype, "text/plain");
    refuses(
        &api,
        json!({"datacontenttype": "text/plain", "data": {"a": 1}}),
        StatusCode::BAD_REQUEST,
        "invalid_event",
    )
    .await;
}

#[tokio::test]
async fn extension_names_are_lowercase_letters_and_digits() {
    let api = api().await;
    let name64 = "e".repeat(limits::MAX_EXTENSION_NAME_BYTES);
    let event = accepts(
        &api,
        &order(
            json!({"tenant": "acme", "x9": 9, "flag": true, name64.clone(): "ok", "nothing": null}),
        ),
    )
    .await;
    assert_eq!(event.extensions["tenant"], "acme");
    assert_eq!(event.extensions["x9"], 9);
    assert_eq!(event.extensions["flag"], true);
    assert_eq!(event.extensions[&name64], "ok");
    assert!(!event.extensions.contains_key("nothing"), "null is absent");

    for name in ["Tenant", "ten_ant", "ten-ant", "tenänt", "tenant ", "a.b"] {
        let error = refuses(
            &api,
            json!({ name: "x" }),
            StatusCode::BAD_REQUEST,
            "invalid_extension_name",
        )
        .await;
        assert!(error.contains(name), "{error}");
    }
    refuses(
        &api,
        json!({ "e".repeat(limits::MAX_EXTENSION_NAME_BYTES + 1): "x" }),
        StatusCode::BAD_REQUEST,
        "extension_name_too_long",
    )
    .await;
    for value in [json!({"a": 1}), json!([1])] {
        refuses(
            &api,
            json!({ "tenant": value }),
            StatusCode::BAD_REQUEST,
            "invalid_extension_value",
        )
        .await;
    }
    // A query's reply address is edaflow's own.
    refuses(
        &api,
        json!({"replyto": "elsewhere"}),
        StatusCode::BAD_REQUEST,
        "invalid_event",
    )
    .await;
}

#[tokio::test]
async fn edaflowhops_is_the_hop_count_not_an_extension() {
    let api = api().await;
    let event = accepts(&api, &order(json!({"edaflowhops": 3}))).await;
    assert_eq!(event.hops, 3);
    assert!(!event.extensions.contains_key("edaflowhops"));
    let wire: Value = serde_json::from_str(&event.to_json()).expect("JSON");
    assert_eq!(wire["edaflowhops"], 3);
    assert_eq!(
        accepts(&api, &order(json!({"edaflowhops": 0}))).await.hops,
        0
    );
    for bad in [
        json!(-1),
        json!(1.5),
        json!("3"),
        json!(4_294_967_296u64),
        json!([3]),
    ] {
        let error = refuses(
            &api,
            json!({ "edaflowhops": bad }),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        )
        .await;
        assert!(error.contains("non-negative integer"), "{bad}: {error}");
    }
}

#[tokio::test]
async fn duplicated_attributes_are_refused() {
    let api = api().await;
    let mut all = tap(&api.broker, ">");
    let body = r#"{"specversion":"1.0","id":"a","id":"b","source":"s","type":"orderCreated"}"#;
    let request = Request::post("/topics/orderCreated")
        .header(header::CONTENT_TYPE, "application/cloudevents+json")
        .body(Body::from(body))
        .expect("a request");
    let error = oneshot(&api.router, request)
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_event");
    assert!(error.contains("`id` appears twice"), "{error}");
    assert!(drain(&mut all).is_empty());
}

// ---------------------------------------------------------------------------------------
// Binary mode

fn binary(
    headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: &'static [u8],
) -> Request<Body> {
    let mut request = Request::post("/topics/orderCreated").header("ce-specversion", "1.0");
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::from(body)).expect("a request")
}

#[tokio::test]
async fn binary_mode_reads_ce_headers_as_the_spec_says() {
    let api = api().await;
    let mut all = tap(&api.broker, ">");
    let id = oneshot(
        &api.router,
        binary(
            &[
                ("ce-id", "pos-1"),
                ("ce-source", "urn:shop:pos"),
                ("ce-type", "orderCreated"),
                ("ce-time", "2026-11-26T10:30:00+05:30"),
                ("ce-tenant", "acme%20corp%C3%A9"),
                ("ce-edaflowhops", "2"),
            ],
            Some("application/json"),
            br#"{"order_id": 1}"#,
        ),
    )
    .await
    .accepted();
    let event = &drain(&mut all)[0];
    assert_eq!(id, "pos-1");
    assert_eq!(event.source, "urn:shop:pos");
    assert_eq!(event.extensions["tenant"], "acme corpé", "percent-decoded");
    assert_eq!(event.hops, 2);
    assert!(!event.extensions.contains_key("edaflowhops"));
    assert_eq!(
        humantime::format_rfc3339_seconds(event.time).to_string(),
        "2026-11-26T05:00:00Z"
    );

    // Data that is not JSON is kept as bytes.
    oneshot(
        &api.router,
        binary(
            &[("ce-id", "pos-2")],
            Some("image/png"),
            b"\x89PNG\r\n\x1a\n",
        ),
    )
    .await
    .accepted();
    let png = &drain(&mut all)[0];
    assert_eq!(png.datacontenttype, "image/png");
    assert_eq!(
        edaflow::http::base64::decode(png.extensions["data_base64"].as_str().expect("base64")),
        Ok(b"\x89PNG\r\n\x1a\n".to_vec())
    );
    // No body: an event without data.
    oneshot(&api.router, binary(&[("ce-id", "pos-3")], None, b""))
        .await
        .accepted();
    assert_eq!(drain(&mut all)[0].data, Value::Null);

    for (headers, code) in [
        (vec![("ce-ten_ant", "x")], "invalid_extension_name"),
        (vec![("ce-id", "")], "invalid_event"),
        (vec![("ce-edaflowhops", "-1")], "invalid_event"),
        (vec![("ce-edaflowhops", "1e3")], "invalid_event"),
        (vec![("ce-time", "2026-11-26T05:00:00")], "invalid_event"),
        (vec![("ce-tenant", "%zz")], "invalid_event"),
        (vec![("ce-datacontenttype", "text/plain")], "invalid_event"),
        (vec![("ce-replyto", "x")], "invalid_event"),
    ] {
        oneshot(
            &api.router,
            binary(&headers, Some("application/json"), b"{}"),
        )
        .await
        .refused(StatusCode::BAD_REQUEST, code);
    }
    let twice = Request::post("/topics/orderCreated")
        .header("ce-specversion", "1.0")
        .header("ce-id", "a")
        .header("ce-id", "b")
        .body(Body::from("{}"))
        .expect("a request");
    oneshot(&api.router, twice)
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_event");
    assert!(drain(&mut all).is_empty());
}

// ---------------------------------------------------------------------------------------
// Limits

#[tokio::test]
async fn every_kept_string_is_bounded_with_a_code_naming_it() {
    let api = api().await;
    let id_at = "i".repeat(limits::MAX_ID_BYTES);
    let id_over = "i".repeat(limits::MAX_ID_BYTES + 1);
    let event = accepts(
        &api,
        &order(json!({"id": id_at, "correlationid": id_at, "causationid": id_at, "source": "s".repeat(limits::MAX_SOURCE_BYTES)})),
    )
    .await;
    assert_eq!(event.id.len(), limits::MAX_ID_BYTES);

    for (extra, code) in [
        (json!({"id": id_over}), "id_too_long"),
        (json!({"correlationid": id_over}), "correlationid_too_long"),
        (json!({"causationid": id_over}), "causationid_too_long"),
        (
            json!({"source": "s".repeat(limits::MAX_SOURCE_BYTES + 1)}),
            "source_too_long",
        ),
        (
            json!({"tenant": "v".repeat(limits::MAX_EXTENSION_VALUE_BYTES)}),
            "extension_value_too_long",
        ),
    ] {
        refuses(&api, extra, StatusCode::BAD_REQUEST, code).await;
    }
    let error = refuses(
        &api,
        json!({"id": id_over}),
        StatusCode::BAD_REQUEST,
        "id_too_long",
    )
    .await;
    assert_eq!(error, "`id` is longer than 256 bytes");

    // Extensions: 64 are fine, 65 are not.
    let many = |n: usize| {
        let mut extra = serde_json::Map::new();
        for i in 0..n {
            extra.insert(format!("x{i}"), json!(i));
        }
        Value::Object(extra)
    };
    assert_eq!(
        accepts(&api, &order(many(limits::MAX_EXTENSIONS)))
            .await
            .extensions
            .len(),
        limits::MAX_EXTENSIONS
    );
    refuses(
        &api,
        many(limits::MAX_EXTENSIONS + 1),
        StatusCode::BAD_REQUEST,
        "too_many_extensions",
    )
    .await;

    // Binary mode: the same limits on headers.
    oneshot(
        &api.router,
        binary(
            &[("ce-id", Box::leak(id_over.clone().into_boxed_str()))],
            None,
            b"{}",
        ),
    )
    .await
    .refused(StatusCode::BAD_REQUEST, "id_too_long");

    // Topics: in the URL.
    let long_topic = "t".repeat(limits::MAX_TOPIC_BYTES + 1);
    let request = Request::post(format!("/topics/{long_topic}"))
        .body(Body::from("{}"))
        .expect("a request");
    oneshot(&api.router, request)
        .await
        .refused(StatusCode::BAD_REQUEST, "topic_too_long");
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn data_deeper_than_the_limit_is_refused_in_every_mode() {
    let api = api().await;
    let max = limits::MAX_DATA_DEPTH;
    let mut all = tap(&api.broker, ">");
    let plain = |body: String| {
        Request::post("/topics/orderCreated")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("a request")
    };
    oneshot(&api.router, plain(nested(max))).await.accepted();
    for depth in [max + 1, 200, 100_000] {
        oneshot(&api.router, plain(nested(depth)))
            .await
            .refused(StatusCode::BAD_REQUEST, "data_too_deep");
    }
    let envelope = |depth: usize| {
        let text = format!(
            r#"{{"specversion":"1.0","id":"d","source":"s","type":"orderCreated","data":{}}}"#,
            nested(depth)
        );
        Request::post("/topics/orderCreated")
            .header(header::CONTENT_TYPE, "application/cloudevents+json")
            .body(Body::from(text))
            .expect("a request")
    };
    oneshot(&api.router, envelope(max)).await.accepted();
    for depth in [max + 1, 100_000] {
        oneshot(&api.router, envelope(depth))
            .await
            .refused(StatusCode::BAD_REQUEST, "data_too_deep");
    }
    let deep_binary = Request::post("/topics/orderCreated")
        .header("ce-specversion", "1.0")
        .body(Body::from(nested(max + 1)))
        .expect("a request");
    oneshot(&api.router, deep_binary)
        .await
        .refused(StatusCode::BAD_REQUEST, "data_too_deep");
    assert_eq!(drain(&mut all).len(), 2, "only the two at the limit");
}

// ---------------------------------------------------------------------------------------
// Every refusal is JSON

#[tokio::test]
async fn router_refusals_are_json_with_stable_codes() {
    let api = api_with("[flow]\nname = \"input\"\n", &[], 64).await;
    let get = |path: &str| Request::get(path).body(Body::empty()).expect("a request");

    let error = oneshot(&api.router, get("/no/such/route"))
        .await
        .refused(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(error, "no route GET /no/such/route");

    let answer = oneshot(&api.router, get("/topics/orderCreated")).await;
    answer.refused(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(answer.header("allow"), Some("POST"));
    oneshot(
        &api.router,
        Request::delete("/healthz")
            .body(Body::empty())
            .expect("a request"),
    )
    .await
    .refused(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    oneshot(
        &api.router,
        Request::post("/topics/orderCreated")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(format!("[{}]", "1,".repeat(40) + "1")))
            .expect("a request"),
    )
    .await
    .refused(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");

    oneshot(
        &api.router,
        Request::post("/topics/orderCreated")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("hi"))
            .expect("a request"),
    )
    .await
    .refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");

    // A query string with a misspelt key names it.
    let error = oneshot(
        &api.router,
        Request::post("/queues/tasks?dealy=5s")
            .body(Body::from("{}"))
            .expect("a request"),
    )
    .await
    .refused(StatusCode::BAD_REQUEST, "bad_request");
    assert!(error.contains("dealy"), "{error}");
    let error = oneshot(&api.router, get("/tail?patern=orders"))
        .await
        .refused(StatusCode::BAD_REQUEST, "bad_request");
    assert!(error.contains("patern"), "{error}");
    // A path that does not decode.
    oneshot(&api.router, get("/trace/%FF%FE"))
        .await
        .refused(StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_hyper_refuses_get_json_answers_too() {
    let server = serve("").await;
    for (raw, status, code) in [
        (b"GARBAGE\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "b".repeat(70_000)
            )
            .into_bytes(),
            431,
            "headers_too_large",
        ),
    ] {
        exchange(server.addr, &raw).await.refused(status, code);
    }
    // And ordinary refusals through the socket carry the same body.
    exchange(server.addr, &request("GET", "/nowhere", &[], b""))
        .await
        .refused(404, "not_found");
    server.runtime.shutdown(Duration::ZERO).await;
}

// ---------------------------------------------------------------------------------------
// Strict admin bodies

const FAILING: &str = indoc! {r#"
    [flow]
    name = "dead"

    [subscribers.broken]
    topic = "orderCreated"
    script = "fail.rhai"
    retry = { attempts = 1 }
"#};

async fn with_dead_letters(n: usize) -> Api {
    let api = api_with(FAILING, &[("fail.rhai", r#"fail("broken");"#)], 1 << 20).await;
    for i in 0..n {
        oneshot(
            &api.router,
            Request::post("/topics/orderCreated")
                .body(Body::from(format!("{{\"n\": {i}}}")))
                .expect("a request"),
        )
        .await
        .accepted();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dead_count(&api).await < n {
        assert!(tokio::time::Instant::now() < deadline, "no dead letters");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    api
}

async fn dead_count(api: &Api) -> usize {
    api.broker
        .dead_letters(&DeadFilter::default())
        .await
        .expect("list")
        .len()
}

fn admin(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .expect("a request")
}

#[tokio::test]
async fn admin_bodies_are_strict_and_never_widen_what_is_done() {
    let api = with_dead_letters(2).await;
    for (path, body, code, names) in [
        (
            "/admin/dead/replay",
            r#"{"idz": ["x"]}"#,
            "unknown_field",
            "idz",
        ),
        (
            "/admin/dead/replay",
            r#"{"orign": "orderCreated"}"#,
            "unknown_field",
            "orign",
        ),
        (
            "/admin/dead/replay",
            r#"{"all": true, "dealy": "1s"}"#,
            "unknown_field",
            "dealy",
        ),
        (
            "/admin/dead/drop",
            r#"{"delay": "1s", "all": true}"#,
            "unknown_field",
            "delay",
        ),
        (
            "/admin/dead/replay",
            "",
            "bad_parameter",
            "origin, ids, or all",
        ),
        (
            "/admin/dead/replay",
            "{}",
            "bad_parameter",
            "origin, ids, or all",
        ),
        (
            "/admin/dead/replay",
            r#"{"ids": []}"#,
            "bad_parameter",
            "origin, ids, or all",
        ),
        (
            "/admin/dead/replay",
            r#"{"all": false}"#,
            "bad_parameter",
            "origin, ids, or all",
        ),
        (
            "/admin/dead/replay",
            r#"{"all": true, "ids": ["x"]}"#,
            "bad_parameter",
            "goes alone",
        ),
        (
            "/admin/dead/drop",
            r#"{"all": true, "origin": "x"}"#,
            "bad_parameter",
            "goes alone",
        ),
        (
            "/admin/dead/drop",
            "",
            "bad_parameter",
            "origin, ids, or all",
        ),
        (
            "/admin/dead/replay",
            r#"{"all": "yes"}"#,
            "bad_parameter",
            "all",
        ),
        ("/admin/dead/replay", "[1]", "invalid_json", "object"),
    ] {
        let error = oneshot(&api.router, admin(path, body))
            .await
            .refused(StatusCode::BAD_REQUEST, code);
        assert!(error.contains(names), "{path} {body}: {error}");
        assert_eq!(dead_count(&api).await, 2, "{path} {body} acted");
    }
    oneshot(
        &api.router,
        Request::post("/admin/dead/replay")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(r#"{"all": true}"#))
            .expect("a request"),
    )
    .await
    .refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let error = oneshot(
        &api.router,
        Request::get("/admin/dead?orign=x")
            .body(Body::empty())
            .expect("a request"),
    )
    .await
    .refused(StatusCode::BAD_REQUEST, "bad_request");
    assert!(error.contains("orign"), "{error}");

    // Said explicitly, it is done.
    let answer = oneshot(&api.router, admin("/admin/dead/replay", r#"{"all": true}"#)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["replayed"], 2);
    api.runtime.shutdown(Duration::from_secs(1)).await;
}
