//! W3C trace context and OpenTelemetry export, end to end: a request's `traceparent` is
//! carried onto every event of its journey (memory and Redis brokers, all three ingest
//! modes), and with export on each ingest and handler run is a span, received here by a
//! loopback OTLP/HTTP collector of the test's own that decodes what it is sent.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use indoc::indoc;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::Value;

use common::http_server::{oneshot, router};
use common::redis::RedisServer;
use common::runtime::{drain, start_with, tap};
use common::{http, wait_for, Edaflow, FlowDir};
use edaflow::broker::{Broker, MemoryBroker, MemoryOptions, RedisOptions};
use edaflow::event::Event;
use edaflow::otel::Tracing;
use edaflow::runtime::{Runtime, RuntimeOptions};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
const PATIENCE: Duration = Duration::from_secs(20);

/// A three-hop chain: orderCreated → reserve → charge → ship → orderShipped.
fn chain_flow() -> FlowDir {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [subscribers.reserve]
            topic = "orderCreated"
            script = "pass.rhai"
            emits = ["inventoryReserved"]

            [subscribers.charge]
            topic = "inventoryReserved"
            script = "charge.rhai"
            emits = ["paymentCharged"]

            [subscribers.ship]
            topic = "paymentCharged"
            script = "ship.rhai"
            emits = ["orderShipped"]
        "#},
    );
    dir.write("pass.rhai", r#"emit("inventoryReserved", event.data);"#);
    dir.write("charge.rhai", r#"emit("paymentCharged", event.data);"#);
    dir.write("ship.rhai", r#"emit("orderShipped", event.data);"#);
    dir
}

// ---------------------------------------------------------------------------------------
// The collector

/// One span as the collector received it: ids as hex, attributes as text.
#[derive(Clone, Debug)]
struct Span {
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_id: String,
    attributes: BTreeMap<String, String>,
    error: bool,
    service: String,
}

/// A loopback OTLP/HTTP collector: answers every `POST /v1/traces` with 200 and keeps the
/// spans; stops with the runtime that serves it.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    requests: Arc<AtomicUsize>,
}

impl Collector {
    async fn start() -> (Collector, String) {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("its address");
        let kept = collector.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    kept.receive(&body);
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (collector, format!("http://{addr}"))
    }

    fn receive(&self, body: &[u8]) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace request");
        let mut spans = self.spans.lock().unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Span {
                        name: span.name,
                        kind: span.kind,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_id: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                            .collect(),
                        error: span.status.is_some_and(|s| s.code == 2),
                        service: service.clone(),
                    });
                }
            }
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    fn named(&self, name: &str) -> Span {
        let spans = self.spans();
        spans
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(n)) => n.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Sends what has ended (the SDK's flush blocks: off the runtime's workers).
async fn flush(tracing: &Tracing) {
    let tracing = tracing.clone();
    tokio::task::spawn_blocking(move || tracing.flush())
        .await
        .expect("flush");
}

async fn post(app: &axum::Router, topic: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut request = Request::post(format!("/topics/{topic}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let reply = oneshot(app, request.body(Body::from(body.to_owned())).unwrap()).await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(reply.bytes())
    );
    reply.json()["id"].as_str().expect("an id").to_owned()
}

async fn wait_handled<B: Broker>(runtime: &Runtime<B>, subscriber: &str, n: u64) {
    let metrics = runtime.metrics().subscriber(subscriber);
    wait_for(subscriber, PATIENCE, || {
        metrics.handled.load(Ordering::Relaxed) >= n
    })
    .await;
}

fn extension<'a>(event: &'a Event, name: &str) -> Option<&'a str> {
    event.extensions.get(name).and_then(Value::as_str)
}

fn find<'a>(events: &'a [Arc<Event>], topic: &str) -> &'a Event {
    events
        .iter()
        .find(|e| e.topic == topic)
        .unwrap_or_else(|| panic!("no {topic} in {events:#?}"))
}

/// Runs the chain with export on, on `broker`, from one request carrying `TRACEPARENT`,
/// and checks the spans and the events' trace context.
async fn chain_with_export<B: Broker>(broker: B) {
    let (collector, endpoint) = Collector::start().await;
    let tracing = Tracing::start(&format!("{endpoint}/v1/traces")).expect("export starts");
    let dir = chain_flow();
    let mut events = tap(&broker, "*");
    let options = RuntimeOptions {
        producers: false,
        tracing: Some(tracing.clone()),
        ..RuntimeOptions::default()
    };
    let (runtime, _) = start_with(broker, options, &dir).await;
    let app = router(&runtime);
    let id = post(
        &app,
        "orderCreated",
        &[
            ("content-type", "application/json"),
            ("traceparent", TRACEPARENT),
            ("tracestate", TRACESTATE),
        ],
        r#"{"order_id": 1}"#,
    )
    .await;
    wait_handled(&runtime, "ship", 1).await;
    flush(&tracing).await;
    wait_for("four spans", PATIENCE, || collector.spans().len() >= 4).await;

    let spans = collector.spans();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    for span in &spans {
        assert_eq!(span.trace_id, TRACE_ID, "{span:#?}");
        assert_eq!(span.service, "edaflow");
        assert_eq!(span.attributes["messaging.system"], "edaflow");
        assert!(!span.error, "{span:#?}");
        assert_eq!(span.attributes["edaflow.outcome"], "ok");
    }
    let ingest = collector.named("orderCreated publish");
    assert_eq!(ingest.kind, SpanKind::Producer as i32);
    assert_eq!(ingest.parent_id, CALLER);
    assert_eq!(ingest.attributes["messaging.message.id"], id);
    let reserve = collector.named("reserve process");
    let charge = collector.named("charge process");
    let ship = collector.named("ship process");
    assert_eq!(reserve.parent_id, ingest.span_id);
    assert_eq!(charge.parent_id, reserve.span_id);
    assert_eq!(ship.parent_id, charge.span_id);
    for (span, component, topic) in [
        (&reserve, "reserve", "orderCreated"),
        (&charge, "charge", "inventoryReserved"),
        (&ship, "ship", "paymentCharged"),
    ] {
        assert_eq!(span.kind, SpanKind::Consumer as i32);
        assert_eq!(span.attributes["edaflow.component"], component);
        assert_eq!(span.attributes["messaging.destination.name"], topic);
        assert_eq!(span.attributes["edaflow.attempt"], "1");
        assert!(!span.attributes["messaging.message.id"].is_empty());
    }

    // Each event names the span that published or emitted it, and keeps the tracestate.
    let mut seen = Vec::new();
    wait_for("the tap", PATIENCE, || {
        seen.extend(drain(&mut events));
        seen.iter().any(|e| e.topic == "orderShipped")
    })
    .await;
    for (topic, parent) in [
        ("orderCreated", &ingest),
        ("inventoryReserved", &reserve),
        ("paymentCharged", &charge),
        ("orderShipped", &ship),
    ] {
        let event = find(&seen, topic);
        assert_eq!(
            extension(event, "traceparent"),
            Some(format!("00-{TRACE_ID}-{}-01", parent.span_id).as_str()),
            "{topic}"
        );
        assert_eq!(extension(event, "tracestate"), Some(TRACESTATE), "{topic}");
    }
    // The message ids of the handler spans are the events they handled.
    assert_eq!(reserve.attributes["messaging.message.id"], id);
    assert_eq!(
        charge.attributes["messaging.message.id"],
        find(&seen, "inventoryReserved").id
    );

    // GET /trace shows each event's traceparent.
    let reply = oneshot(
        &app,
        Request::get(format!("/trace/{id}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let journey = reply.json();
    let entries = journey.as_array().expect("a journey");
    assert_eq!(entries.len(), 4, "{journey}");
    for entry in entries {
        let parent = entry["traceparent"].as_str().expect("a traceparent");
        assert!(parent.starts_with(&format!("00-{TRACE_ID}-")), "{journey}");
    }
    runtime.shutdown(Duration::from_secs(1)).await;
    stop_export(tracing).await;
}

/// Stops export (the SDK's shutdown blocks: off the runtime's workers).
async fn stop_export(tracing: Tracing) {
    tokio::task::spawn_blocking(move || tracing.shutdown())
        .await
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_spans_share_the_request_trace_and_chain_their_parents() {
    chain_with_export(MemoryBroker::new(MemoryOptions::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_crosses_the_redis_broker() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let broker = server
        .broker(RedisOptions {
            namespace: "otel".into(),
            ..RedisOptions::default()
        })
        .await;
    chain_with_export(broker).await;
}

/// Export off: every event of the journey carries the request's trace context unchanged,
/// whichever way the request carried it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_export_events_carry_the_incoming_trace_context_unchanged() {
    let broker = MemoryBroker::new(MemoryOptions::default());
    let mut events = tap(&broker, "*");
    let dir = chain_flow();
    let (runtime, _) = start_with(broker, common::runtime::options(), &dir).await;
    let app = router(&runtime);
    let structured = serde_json::json!({
        "specversion": "1.0", "id": "structured-1", "source": "test", "type": "orderCreated",
        "traceparent": TRACEPARENT.replace("-01", "-00"), "data": {"n": 2}
    });
    let plain = post(
        &app,
        "orderCreated",
        &[
            ("content-type", "application/json"),
            ("traceparent", TRACEPARENT),
            ("tracestate", TRACESTATE),
        ],
        r#"{"n": 1}"#,
    )
    .await;
    post(
        &app,
        "orderCreated",
        &[("content-type", "application/cloudevents+json")],
        &structured.to_string(),
    )
    .await;
    let binary = post(
        &app,
        "orderCreated",
        &[
            ("content-type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", "binary-1"),
            ("ce-source", "test"),
            ("ce-type", "orderCreated"),
            (
                "ce-traceparent",
                &TRACEPARENT.replace(CALLER, "1111111111111111"),
            ),
            ("ce-tracestate", "a=1"),
            // The event's own context wins over the request's.
            ("traceparent", TRACEPARENT),
        ],
        r#"{"n": 3}"#,
    )
    .await;
    assert_eq!(binary, "binary-1");
    wait_handled(&runtime, "ship", 3).await;
    let mut seen = Vec::new();
    wait_for("the tap", PATIENCE, || {
        seen.extend(drain(&mut events));
        seen.iter().filter(|e| e.topic == "orderShipped").count() == 3
    })
    .await;
    let expected = [
        (plain.as_str(), TRACEPARENT.to_owned(), Some(TRACESTATE)),
        ("structured-1", TRACEPARENT.replace("-01", "-00"), None),
        (
            "binary-1",
            TRACEPARENT.replace(CALLER, "1111111111111111"),
            Some("a=1"),
        ),
    ];
    for (journey, parent, state) in expected {
        let of_journey: Vec<&Arc<Event>> = seen
            .iter()
            .filter(|e| e.correlation_id == journey)
            .collect();
        assert_eq!(of_journey.len(), 4, "{journey}: {of_journey:#?}");
        for event in of_journey {
            assert_eq!(extension(event, "traceparent"), Some(parent.as_str()));
            assert_eq!(extension(event, "tracestate"), state);
        }
    }
    runtime.shutdown(Duration::from_secs(1)).await;
}

/// An invalid `traceparent` is ignored (202, no trace context kept), in each mode; with
/// export on, the journey then starts a new trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_traceparent_is_ignored() {
    let (collector, endpoint) = Collector::start().await;
    let tracing = Tracing::start(&format!("{endpoint}/v1/traces")).expect("export starts");
    let broker = MemoryBroker::new(MemoryOptions::default());
    let mut events = tap(&broker, "orderCreated");
    let dir = chain_flow();
    let options = RuntimeOptions {
        producers: false,
        tracing: Some(tracing.clone()),
        ..RuntimeOptions::default()
    };
    let (runtime, _) = start_with(broker, options, &dir).await;
    let app = router(&runtime);
    let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    post(
        &app,
        "orderCreated",
        &[
            ("content-type", "application/json"),
            ("traceparent", zero_trace),
            ("tracestate", TRACESTATE),
        ],
        "{}",
    )
    .await;
    post(
        &app,
        "orderCreated",
        &[
            ("content-type", "application/json"),
            ("traceparent", &TRACEPARENT.to_uppercase()),
        ],
        "{}",
    )
    .await;
    let structured = serde_json::json!({
        "specversion": "1.0", "id": "s", "source": "test", "type": "orderCreated",
        "traceparent": "00-garbage", "tracestate": "a=1", "data": {}
    });
    post(
        &app,
        "orderCreated",
        &[("content-type", "application/cloudevents+json")],
        &structured.to_string(),
    )
    .await;
    post(
        &app,
        "orderCreated",
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "b"),
            ("ce-source", "test"),
            ("ce-type", "orderCreated"),
            (
                "ce-traceparent",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
        "{}",
    )
    .await;
    wait_handled(&runtime, "ship", 4).await;
    flush(&tracing).await;
    wait_for("sixteen spans", PATIENCE, || collector.spans().len() >= 16).await;

    // Each of the four journeys is a trace of its own, none of them the invalid one.
    let spans = collector.spans();
    let ingests: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.ends_with("publish"))
        .collect();
    assert_eq!(ingests.len(), 4);
    let mut traces: Vec<&str> = ingests.iter().map(|s| s.trace_id.as_str()).collect();
    traces.sort_unstable();
    traces.dedup();
    assert_eq!(traces.len(), 4, "{ingests:#?}");
    for ingest in ingests {
        assert_ne!(ingest.trace_id, "0".repeat(32));
        assert_ne!(ingest.trace_id, TRACE_ID);
        assert_eq!(ingest.parent_id, "", "a root span: {ingest:#?}");
    }
    // The published events carry the new trace (the ingest span), not what was sent, and
    // no tracestate (meaningless without a valid traceparent).
    let published = drain(&mut events);
    assert_eq!(published.len(), 4);
    for event in &published {
        let parent = extension(event, "traceparent").expect("the new trace");
        assert!(!parent.contains(TRACE_ID), "{parent}");
        assert_eq!(extension(event, "tracestate"), None);
    }
    runtime.shutdown(Duration::from_secs(1)).await;
    stop_export(tracing).await;
}

// ---------------------------------------------------------------------------------------
// The binary

fn http_chain_flow() -> FlowDir {
    let dir = chain_flow();
    let text = std::fs::read_to_string(dir.path("flow.toml")).unwrap();
    dir.write(
        "flow.toml",
        &format!("[producers.api]\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n\n{text}"),
    );
    dir
}

/// Runs the chain in the binary with `args`/`envs`, sends one request with `TRACEPARENT`,
/// waits for the journey to end, stops the binary and returns what `collector` got.
fn run_binary(args: &[&str], envs: &[(&str, &str)]) -> (Collector, Vec<Span>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (collector, endpoint) = rt.block_on(Collector::start());
    let dir = http_chain_flow();
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("{collector}", &endpoint))
        .collect();
    let mut edaflow = Edaflow::new(dir.root())
        .args(["run", "flow.toml", "--no-watch"])
        .args(args);
    for (key, value) in envs {
        edaflow = edaflow.env(key, &value.replace("{collector}", &endpoint));
    }
    let mut server = edaflow.serve(PATIENCE);
    let reply = http(
        server.addr(),
        "POST",
        "/topics/orderCreated",
        &[
            ("Content-Type", "application/json"),
            ("traceparent", TRACEPARENT),
        ],
        b"{}",
    );
    let id = reply.accepted();
    server.wait("the journey's four events", PATIENCE, |server| {
        let reply = server.request("GET", &format!("/trace/{id}"), "");
        reply.status == 200 && reply.json().as_array().is_some_and(|a| a.len() == 4)
    });
    server.terminate();
    assert!(server.wait_exit(PATIENCE).success(), "{}", server.dump());
    let spans = collector.spans();
    drop(rt);
    (collector, spans)
}

#[test]
fn the_binary_exports_to_the_otlp_endpoint_flag_and_flushes_at_exit() {
    let (_, spans) = run_binary(
        &["--otlp-endpoint", "{collector}"],
        &[("OTEL_SERVICE_NAME", "orders")],
    );
    assert_eq!(spans.len(), 4, "{spans:#?}");
    for span in &spans {
        assert_eq!(span.trace_id, TRACE_ID);
        assert_eq!(span.service, "orders");
    }
}

#[test]
fn the_binary_reads_the_standard_endpoint_variable() {
    let (_, spans) = run_binary(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "{collector}")]);
    assert_eq!(spans.len(), 4, "{spans:#?}");
}

/// A collector that cannot be reached is said so once, in the log, and the journey runs
/// on regardless.
#[test]
fn an_unreachable_collector_is_warned_about_once() {
    // A port nothing listens on.
    let port = common::free_port();
    let dir = http_chain_flow();
    let mut server = Edaflow::new(dir.root())
        .args(["run", "flow.toml", "--no-watch"])
        .args(["--otlp-endpoint", &format!("http://127.0.0.1:{port}")])
        .env("OTEL_BSP_SCHEDULE_DELAY", "20")
        .serve(PATIENCE);
    for _ in 0..3 {
        let reply = http(
            server.addr(),
            "POST",
            "/topics/orderCreated",
            &[("Content-Type", "application/json")],
            b"{}",
        );
        reply.accepted();
        server.wait_stderr("the export warning", PATIENCE, |line| {
            line.contains("could not export spans")
        });
    }
    server.terminate();
    assert!(server.wait_exit(PATIENCE).success(), "{}", server.dump());
    let warned = server.stderr().matches("could not export spans").count();
    assert_eq!(warned, 1, "one warning for the outage:\n{}", server.dump());
}

/// Export off sends nothing, even with an endpoint set, when the SDK is disabled.
#[test]
fn export_off_sends_nothing() {
    let (collector, spans) = run_binary(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "{collector}"),
            ("OTEL_SDK_DISABLED", "true"),
        ],
    );
    assert!(spans.is_empty(), "{spans:#?}");
    assert_eq!(collector.requests.load(Ordering::SeqCst), 0);
}
