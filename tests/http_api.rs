//! The HTTP producer through its router (`tower::ServiceExt::oneshot`, no socket), plus one
//! test on a real socket: every status the ingest API answers, the JSON error bodies, and
//! the promise that a refused request publishes nothing.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use bytes::Bytes;
use indoc::indoc;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use common::http_server::oneshot;
use common::runtime::{drain, start_with, tap};
use common::{wait_for, FlowDir};
use edaflow::broker::{Broker, GroupSpec, MemoryBroker, MemoryOptions};
use edaflow::event::Event;
use edaflow::flow::{HttpProducer, TopicPattern};
use edaflow::runtime::{Runtime, RuntimeOptions};

const ARTICLE: &str = r#"{"order_id": 123, "customer": "John Doe", "total": 49.99}"#;
const TOKEN: &str = "s3cret-token";

/// A subscriber that echoes every order, so a test can see an accepted event handled.
const RECORDER: &str = indoc! {r#"
    [flow]
    name = "orders"

    [subscribers.recorder]
    topic = "orderCreated"
    script = "record.rhai"
    emits = ["orderRecorded"]
"#};

/// A runtime running `RECORDER`, with its API as a router.
struct Api {
    runtime: Runtime<MemoryBroker>,
    broker: MemoryBroker,
    router: Router,
    _dir: FlowDir,
}

struct Settings {
    token: Option<&'static str>,
    body_limit: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            token: None,
            body_limit: 1 << 20,
        }
    }
}

fn http_config(settings: &Settings) -> HttpProducer {
    HttpProducer {
        listen: "127.0.0.1:0".into(),
        token: settings
            .token
            .map(|t| edaflow::flow::ApiToken::new(t).expect("a valid token")),
        body_limit: settings.body_limit,
        ..HttpProducer::default()
    }
}

async fn api(settings: Settings) -> Api {
    let dir = FlowDir::new();
    dir.write("flow.toml", RECORDER);
    dir.write("record.rhai", r#"emit("orderRecorded", event.data);"#);
    let broker = MemoryBroker::new(MemoryOptions::default());
    let (runtime, _) = start_with(
        broker.clone(),
        RuntimeOptions {
            producers: false,
            ..RuntimeOptions::default()
        },
        &dir,
    )
    .await;
    let router = runtime.api_router(http_config(&settings), "master");
    Api {
        runtime,
        broker,
        router,
        _dir: dir,
    }
}

fn post(path: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post(path);
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    request.body(body.into()).expect("a valid request")
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .body(Body::empty())
        .expect("a valid request")
}

/// Publishes a marker through the API and asserts that it is the first (and only) event
/// the tap has seen: whatever was refused before it was never published.
async fn assert_nothing_published_before_marker(api: &Api, tap: &mut mpsc::Receiver<Arc<Event>>) {
    let marker = oneshot(
        &api.router,
        post("/topics/marker", Some("application/json"), "{}"),
    )
    .await
    .accepted();
    let ids: Vec<String> = drain(tap).iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, [marker], "a refused request was published");
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_articles_plain_json_is_accepted_and_handled() {
    let api = api(Settings::default()).await;
    let mut orders = tap(&api.broker, "orderCreated");
    let mut recorded = tap(&api.broker, "orderRecorded");

    let answer = oneshot(
        &api.router,
        post("/topics/orderCreated", Some("application/json"), ARTICLE),
    )
    .await;
    let id = answer.accepted();
    assert_eq!(
        answer.json(),
        json!({ "id": id }),
        "the body is only the id"
    );

    let published = drain(&mut orders);
    assert_eq!(published.len(), 1);
    let event = &published[0];
    assert_eq!(event.id, id);
    assert_eq!(event.topic, "orderCreated");
    assert_eq!(event.correlation_id, id, "a new journey starts here");
    assert_eq!(event.source, "edaflow://embedded/api");
    assert_eq!(
        event.data,
        json!({"order_id": 123, "customer": "John Doe", "total": 49.99})
    );

    let mut handled = Vec::new();
    wait_for(
        "the recorder to handle the order",
        Duration::from_secs(5),
        || {
            handled.extend(drain(&mut recorded));
            !handled.is_empty()
        },
    )
    .await;
    assert_eq!(handled[0].data, event.data);
    assert_eq!(handled[0].causation_id.as_deref(), Some(id.as_str()));
    api.runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_body_without_content_type_is_taken_as_json() {
    let api = api(Settings::default()).await;
    let mut orders = tap(&api.broker, "orderCreated");
    let id = oneshot(&api.router, post("/topics/orderCreated", None, ARTICLE))
        .await
        .accepted();
    assert_eq!(drain(&mut orders)[0].id, id);
}

#[tokio::test]
async fn structured_cloudevents_keep_their_attributes() {
    let api = api(Settings::default()).await;
    let mut orders = tap(&api.broker, "orderCreated");
    let body = json!({
        "specversion": "1.0",
        "id": "order-123",
        "source": "urn:shop:checkout",
        "type": "orderCreated",
        "time": "2026-11-26T05:00:00Z",
        "datacontenttype": "application/json",
        "correlationid": "journey-42",
        "causationid": "cart-7",
        "tenant": "acme",
        "data": {"order_id": 123, "customer": "John Doe", "total": 49.99},
    });
    let answer = oneshot(
        &api.router,
        post(
            "/topics/orderCreated",
            Some("application/cloudevents+json; charset=utf-8"),
            body.to_string(),
        ),
    )
    .await;
    assert_eq!(answer.accepted(), "order-123");

    let event = &drain(&mut orders)[0];
    assert_eq!(event.id, "order-123");
    assert_eq!(event.source, "urn:shop:checkout");
    assert_eq!(event.correlation_id, "journey-42");
    assert_eq!(event.causation_id.as_deref(), Some("cart-7"));
    assert_eq!(event.extensions.get("tenant"), Some(&json!("acme")));
    assert_eq!(event.data, body["data"]);
    assert_eq!(
        humantime::format_rfc3339_seconds(event.time).to_string(),
        "2026-11-26T05:00:00Z"
    );
}

#[tokio::test]
async fn a_structured_event_whose_type_is_not_the_url_topic_is_refused() {
    let api = api(Settings::default()).await;
    let mut all = tap(&api.broker, ">");
    let body = json!({
        "specversion": "1.0",
        "id": "order-124",
        "source": "urn:shop",
        "type": "orderShipped",
        "data": {},
    });
    oneshot(
        &api.router,
        post(
            "/topics/orderCreated",
            Some("application/cloudevents+json"),
            body.to_string(),
        ),
    )
    .await
    .refused(StatusCode::BAD_REQUEST, "invalid_event");
    assert_nothing_published_before_marker(&api, &mut all).await;
}

#[tokio::test]
async fn binary_cloudevents_take_their_attributes_from_ce_headers() {
    let api = api(Settings::default()).await;
    let mut orders = tap(&api.broker, "orderCreated");
    let request = Request::post("/topics/orderCreated")
        .header(header::CONTENT_TYPE, "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-type", "orderCreated")
        .header("ce-id", "pos-0001")
        .header("ce-source", "urn:shop:pos")
        .header("ce-correlationid", "journey-9")
        .body(Body::from(ARTICLE))
        .expect("a valid request");
    assert_eq!(oneshot(&api.router, request).await.accepted(), "pos-0001");

    let event = &drain(&mut orders)[0];
    assert_eq!(event.id, "pos-0001");
    assert_eq!(event.source, "urn:shop:pos");
    assert_eq!(event.correlation_id, "journey-9");
    assert_eq!(event.data["customer"], "John Doe");

    let mismatch = Request::post("/topics/orderCreated")
        .header(header::CONTENT_TYPE, "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-type", "orderShipped")
        .header("ce-id", "pos-0002")
        .header("ce-source", "urn:shop:pos")
        .body(Body::from(ARTICLE))
        .expect("a valid request");
    oneshot(&api.router, mismatch)
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_event");
    assert!(drain(&mut orders).is_empty());
}

#[tokio::test]
async fn invalid_json_is_a_400() {
    let api = api(Settings::default()).await;
    let mut all = tap(&api.broker, ">");
    for body in [r#"{"order_id": 123,"#, "not json", ""] {
        oneshot(
            &api.router,
            post("/topics/orderCreated", Some("application/json"), body),
        )
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_json");
    }
    assert_nothing_published_before_marker(&api, &mut all).await;
}

#[tokio::test]
async fn invalid_topic_names_are_a_400() {
    let api = api(Settings::default()).await;
    let mut all = tap(&api.broker, ">");
    for path in [
        "/topics/bad%20topic",
        "/topics/a..b",
        "/topics/.orders",
        "/topics/orders.*",
        "/topics/orders.%3E",
    ] {
        let answer = oneshot(&api.router, post(path, Some("application/json"), ARTICLE)).await;
        answer.refused(StatusCode::BAD_REQUEST, "invalid_topic");
    }
    assert_nothing_published_before_marker(&api, &mut all).await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_a_413() {
    const LIMIT: usize = 64;
    let api = api(Settings {
        body_limit: LIMIT,
        ..Settings::default()
    })
    .await;
    let mut all = tap(&api.broker, ">");

    // Exactly at the limit is fine.
    let at_limit = format!(r#"{{"pad": "{}"}}"#, "x".repeat(LIMIT - 11));
    assert_eq!(at_limit.len(), LIMIT);
    let accepted = oneshot(
        &api.router,
        post("/topics/orderCreated", Some("application/json"), at_limit),
    )
    .await
    .accepted();
    assert_eq!(drain(&mut all)[0].id, accepted);

    // Refused on the declared length alone.
    let too_long = format!(r#"{{"pad": "{}"}}"#, "x".repeat(LIMIT));
    let declared = Request::post("/topics/orderCreated")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, too_long.len())
        .body(Body::from(too_long.clone()))
        .expect("a valid request");
    oneshot(&api.router, declared)
        .await
        .refused(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");

    // A streamed body with no length is cut off at the limit.
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..8)
        .map(|_| Ok(Bytes::from_static(b"[1,2,3,4,5,6,7,8,9,0],")))
        .collect();
    let streamed = Request::post("/topics/orderCreated")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .expect("a valid request");
    oneshot(&api.router, streamed)
        .await
        .refused(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");

    assert_nothing_published_before_marker(&api, &mut all).await;
}

#[tokio::test]
async fn unsupported_content_types_are_a_415() {
    let api = api(Settings::default()).await;
    let mut all = tap(&api.broker, ">");
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ] {
        oneshot(
            &api.router,
            post("/topics/orderCreated", Some(content_type), ARTICLE),
        )
        .await
        .refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    }
    assert_nothing_published_before_marker(&api, &mut all).await;
}

#[tokio::test]
async fn a_configured_token_is_required() {
    let api = api(Settings {
        token: Some(TOKEN),
        ..Settings::default()
    })
    .await;
    let mut all = tap(&api.broker, ">");
    let with_auth = |auth: Option<&str>| {
        let mut request =
            Request::post("/topics/orderCreated").header(header::CONTENT_TYPE, "application/json");
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        request.body(Body::from(ARTICLE)).expect("a valid request")
    };

    for auth in [
        None,
        Some("Bearer wrong-token"),
        Some(TOKEN),
        Some("Basic czNjcmV0LXRva2Vu"),
        Some("Bearer s3cret-token-and-more"),
    ] {
        let answer = oneshot(&api.router, with_auth(auth)).await;
        answer.refused(StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    }
    let metrics = oneshot(&api.router, get("/metrics")).await;
    metrics.refused(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        drain(&mut all).is_empty(),
        "a refused request was published"
    );

    let id = oneshot(&api.router, with_auth(Some(&format!("Bearer {TOKEN}"))))
        .await
        .accepted();
    assert_eq!(drain(&mut all)[0].id, id);
}

/// A runtime with no flow and one group that nobody consumes, of capacity 1.
async fn stuck_api() -> (Runtime<MemoryBroker>, MemoryBroker, Router) {
    let broker = MemoryBroker::new(MemoryOptions {
        group_capacity: 1,
        ..MemoryOptions::default()
    });
    broker
        .declare_group(&GroupSpec {
            name: "stuck".into(),
            patterns: vec![TopicPattern::parse("orderCreated").expect("a pattern")],
        })
        .await
        .expect("declare");
    let runtime = Runtime::new(broker.clone(), RuntimeOptions::default());
    let router = runtime.api_router(http_config(&Settings::default()), "master");
    (runtime, broker, router)
}

#[tokio::test]
async fn a_full_buffer_answers_503_with_retry_after() {
    let (_runtime, broker, router) = stuck_api().await;
    oneshot(
        &router,
        post("/topics/orderCreated", Some("application/json"), ARTICLE),
    )
    .await
    .accepted();

    let answer = oneshot(
        &router,
        post("/topics/orderCreated", Some("application/json"), ARTICLE),
    )
    .await;
    answer.refused(StatusCode::SERVICE_UNAVAILABLE, "backpressure");
    assert_eq!(answer.header("retry-after"), Some("1"));

    let stuck = broker
        .stats()
        .into_iter()
        .find(|g| g.name == "stuck")
        .expect("the group");
    assert_eq!(stuck.queued, 1, "the refused event was not queued");
    let metrics = oneshot(&router, get("/metrics")).await;
    assert!(
        metrics
            .body
            .contains("edaflow_http_requests_total{outcome=\"backpressured\"} 1"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("edaflow_topic_events_in_total{topic=\"orderCreated\"} 1"),
        "only the accepted event counts as published:\n{}",
        metrics.body
    );
}

#[tokio::test]
async fn a_503_publishes_nothing_a_tap_can_see() {
    let (_runtime, broker, router) = stuck_api().await;
    let mut all = tap(&broker, ">");
    let accepted = oneshot(
        &router,
        post("/topics/orderCreated", Some("application/json"), ARTICLE),
    )
    .await
    .accepted();
    oneshot(
        &router,
        post("/topics/orderCreated", Some("application/json"), ARTICLE),
    )
    .await
    .refused(StatusCode::SERVICE_UNAVAILABLE, "backpressure");
    let ids: Vec<String> = drain(&mut all).iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, [accepted], "the refused event reached the tap");
}

#[tokio::test]
async fn healthz_reports_the_generation_and_groups() {
    let api = api(Settings {
        token: Some(TOKEN),
        ..Settings::default()
    })
    .await;
    // Health is for load balancers and needs no token.
    let answer = oneshot(&api.router, get("/healthz")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["generation"], 1);
    assert_eq!(body["last_reload"]["generation"], 1);
    assert_eq!(body["last_reload"]["ok"], true);
    assert_eq!(
        body["last_reload"]["added"],
        json!(["subscribers.recorder"])
    );
    assert_eq!(
        body["groups"],
        json!([{"group": "recorder", "queued": 0, "in_flight": 0, "capacity": 10_000}])
    );
}

#[tokio::test]
async fn livez_and_readyz_need_no_token_and_say_alive_and_ready() {
    let api = api(Settings {
        token: Some(TOKEN),
        ..Settings::default()
    })
    .await;
    let live = oneshot(&api.router, get("/livez")).await;
    assert_eq!(live.status, 200, "{}", live.body);
    assert_eq!(live.header("content-type"), Some("application/json"));
    assert_eq!(live.json()["status"], "alive");
    let ready = oneshot(&api.router, get("/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json(), json!({"status": "ready", "generation": 1}));
    // /healthz is as it was.
    assert_eq!(
        oneshot(&api.router, get("/healthz")).await.json()["status"],
        "ok"
    );
}

#[tokio::test]
async fn readyz_is_503_until_the_first_generation_is_applied_while_livez_is_200() {
    let runtime = Runtime::new(
        MemoryBroker::new(MemoryOptions::default()),
        RuntimeOptions {
            producers: false,
            ..RuntimeOptions::default()
        },
    );
    let router = runtime.api_router(http_config(&Settings::default()), "master");
    let ready = oneshot(&router, get("/readyz")).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.header("retry-after"), Some("1"));
    assert_eq!(ready.json()["status"], "starting");
    assert_eq!(ready.json()["generation"], 0);
    assert_eq!(oneshot(&router, get("/livez")).await.status, 200);
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let api = api(Settings::default()).await;
    oneshot(
        &api.router,
        post("/topics/orderCreated", Some("application/json"), ARTICLE),
    )
    .await
    .accepted();
    oneshot(
        &api.router,
        post("/topics/orderCreated", Some("text/plain"), ARTICLE),
    )
    .await
    .refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");

    let answer = oneshot(&api.router, get("/metrics")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for line in [
        "# TYPE edaflow_topic_events_in_total counter",
        "edaflow_topic_events_in_total{topic=\"orderCreated\"} 1",
        "edaflow_http_requests_total{outcome=\"accepted\"} 1",
        "edaflow_http_requests_total{outcome=\"rejected\"} 1",
        "edaflow_generation 1",
    ] {
        assert!(
            answer.body.lines().any(|l| l == line),
            "missing line {line:?} in:\n{}",
            answer.body
        );
    }
}

#[tokio::test]
async fn deferred_exec_publishes_to_the_relay_topic() {
    let api = api(Settings::default()).await;
    let mut master = tap(&api.broker, "master");
    let id = oneshot(
        &api.router,
        post(
            "/deferred-exec",
            Some("application/json"),
            r#"{"task": "send_reminder", "order_id": 123}"#,
        ),
    )
    .await
    .accepted();
    let published = drain(&mut master);
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].id, id);
    assert_eq!(published[0].topic, "master");
    assert_eq!(
        published[0].data,
        json!({"task": "send_reminder", "order_id": 123})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_producer_serves_on_a_real_socket() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        &format!(
            "{RECORDER}\n{}",
            indoc! {r#"
                [producers.api]
                kind = "http"
                listen = "127.0.0.1:3000"
            "#}
        ),
    );
    dir.write("record.rhai", r#"emit("orderRecorded", event.data);"#);
    let broker = MemoryBroker::new(MemoryOptions::default());
    let (runtime, _) = start_with(
        broker.clone(),
        RuntimeOptions {
            producers: true,
            // Never the fixed port of the file: the OS picks a free one.
            listen: Some("127.0.0.1:0".into()),
            ..RuntimeOptions::default()
        },
        &dir,
    )
    .await;
    let addr: SocketAddr = runtime.http_addrs()["api"];
    assert_ne!(addr.port(), 0);
    assert_ne!(addr.port(), 3000);
    let mut recorded = tap(&broker, "orderRecorded");

    let reply = tokio::task::spawn_blocking(move || {
        common::post_json(addr, "/topics/orderCreated", ARTICLE)
    })
    .await
    .expect("client thread");
    assert_eq!(reply.status, 202, "{reply:?}");
    let id = serde_json::from_str::<Value>(&reply.body).expect("JSON")["id"]
        .as_str()
        .expect("an id")
        .to_owned();

    let mut handled = Vec::new();
    wait_for(
        "the recorder to handle the order",
        Duration::from_secs(5),
        || {
            handled.extend(drain(&mut recorded));
            !handled.is_empty()
        },
    )
    .await;
    assert_eq!(handled[0].causation_id.as_deref(), Some(id.as_str()));
    assert_eq!(handled[0].data["customer"], "John Doe");

    let health =
        tokio::task::spawn_blocking(move || common::http(addr, "GET", "/healthz", &[], b""))
            .await
            .expect("client thread");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&health.body).expect("JSON")["generation"],
        1
    );

    runtime.shutdown(Duration::from_secs(5)).await;
    let closed = tokio::task::spawn_blocking(move || std::net::TcpStream::connect(addr))
        .await
        .expect("client thread");
    assert!(closed.is_err(), "still listening on {addr} after shutdown");
}
