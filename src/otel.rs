//! OpenTelemetry export: a span for each handler run (and one for each event an `http`
//! producer accepts), sent over OTLP/HTTP (protobuf) to a collector.
//!
//! Off unless an endpoint is configured (`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT`
//! or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); the runtime then holds no `Tracing` at all, so
//! the per-event path builds no span and allocates nothing for it. The trace context itself
//! (`traceparent`/`tracestate` on events, `crate::tracecontext`) is carried either way.
//!
//! This module owns the configuration (endpoint resolution, service name), the tracer
//! provider and its batch exporter, the HTTP client the exporter sends through, and the
//! span names and attributes (OpenTelemetry's messaging conventions).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::event::Event;
use crate::tracecontext::{self, TraceParent};

/// The standard variables read here (the exporter reads the rest of `OTEL_EXPORTER_OTLP_*`
/// itself: headers, timeout).
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const TRACES_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const SERVICE_NAME_ENV: &str = "OTEL_SERVICE_NAME";
pub const SDK_DISABLED_ENV: &str = "OTEL_SDK_DISABLED";

/// The `messaging.system` of every span, and the service name when none is set.
pub const SYSTEM: &str = "edaflow";

/// Where spans go: the full URL of the collector's traces resource.
///
/// Precedence, highest first: `--otlp-endpoint` (a base URL, `/v1/traces` appended unless
/// it ends so already), `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as given),
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL). `OTEL_SDK_DISABLED=true` turns export off
/// whatever is set. `None`: export is off.
pub fn traces_endpoint(flag: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if set(SDK_DISABLED_ENV).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    if let Some(base) = flag.filter(|v| !v.trim().is_empty()) {
        return Some(with_traces_path(base));
    }
    if let Some(full) = set(TRACES_ENDPOINT_ENV) {
        return Some(full.trim().to_owned());
    }
    set(ENDPOINT_ENV).map(|base| with_traces_path(&base))
}

fn with_traces_path(base: &str) -> String {
    let base = base.trim().trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Why export could not start.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("cannot export traces to {endpoint:?}: {detail}")]
#[diagnostic(
    code(edaflow::otlp::endpoint),
    help("give the collector's OTLP/HTTP address, e.g. --otlp-endpoint http://localhost:4318")
)]
pub struct OtelError {
    pub endpoint: String,
    pub detail: String,
}

/// Export on: the tracer handlers' and producers' spans come from. Cheap to clone.
#[derive(Clone)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("Tracing")
    }
}

impl Tracing {
    /// Starts export to `endpoint` (a full `…/v1/traces` URL): spans are batched and sent
    /// from a thread of the SDK's, through an HTTP client that runs on the current Tokio
    /// runtime (so call this inside one). The service name is `OTEL_SERVICE_NAME`, else
    /// `edaflow`; `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*` and `OTEL_TRACES_SAMPLER` are
    /// read by the SDK.
    pub fn start(endpoint: &str) -> Result<Tracing, OtelError> {
        let fail = |detail: String| OtelError {
            endpoint: endpoint.to_owned(),
            detail,
        };
        let uri: hyper::Uri = endpoint
            .parse()
            .map_err(|e| fail(format!("not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(fail(
                "only http:// is supported (OTLP over TLS needs a collector or proxy in front)"
                    .to_owned(),
            ));
        }
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| fail("no async runtime to send from".to_owned()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(LoopClient {
                handle,
                endpoint: endpoint.to_owned(),
                failing: Failing::default(),
            })
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var(SERVICE_NAME_ENV).map_or(true, |v| v.trim().is_empty()) {
            resource = resource.with_service_name(SYSTEM);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer(SYSTEM);
        Ok(Tracing { provider, tracer })
    }

    /// Sends every span ended so far and waits for the collector's answer. Blocks: call it
    /// off the runtime's workers (`spawn_blocking`).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "could not send the spans");
        }
    }

    /// Sends what is batched and stops the exporter (waits at most a second).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(1)) {
            tracing::warn!(error = %e, "could not send the last spans");
        }
    }

    /// The span of one handler run of `event` by `component`: a consumer span named
    /// `<component> process`, the child of the event's `traceparent` (a new trace when it
    /// has none).
    pub(crate) fn handler_span(&self, component: &str, event: &Event, attempt: u32) -> RunSpan {
        let attributes = vec![
            KeyValue::new("messaging.system", SYSTEM),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", event.topic.clone()),
            KeyValue::new("messaging.message.id", event.id.clone()),
            KeyValue::new(
                "messaging.message.conversation_id",
                event.correlation_id.clone(),
            ),
            KeyValue::new("edaflow.component", component.to_owned()),
            KeyValue::new("edaflow.attempt", i64::from(attempt)),
        ];
        self.begin(
            format!("{component} process"),
            SpanKind::Consumer,
            attributes,
            event,
        )
    }

    /// The span of an event an `http` producer accepted: a producer span named
    /// `<topic> publish`, the child of the request's trace context.
    pub(crate) fn ingest_span(&self, producer: &str, event: &Event) -> RunSpan {
        let attributes = vec![
            KeyValue::new("messaging.system", SYSTEM),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", event.topic.clone()),
            KeyValue::new("messaging.message.id", event.id.clone()),
            KeyValue::new("edaflow.component", producer.to_owned()),
        ];
        self.begin(
            format!("{} publish", event.topic),
            SpanKind::Producer,
            attributes,
            event,
        )
    }

    fn begin(
        &self,
        name: String,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        event: &Event,
    ) -> RunSpan {
        let incoming = tracecontext::of(&event.extensions);
        let parent = match incoming {
            Some(parent) => {
                let state = event
                    .extensions
                    .get(tracecontext::TRACESTATE)
                    .and_then(|v| v.as_str())
                    .and_then(|v| v.parse::<TraceState>().ok())
                    .unwrap_or_default();
                Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from_bytes(parent.trace_id),
                    SpanId::from_bytes(parent.parent_id),
                    TraceFlags::new(parent.flags & 1),
                    true,
                    state,
                ))
            }
            None => Context::new(),
        };
        let span = self
            .tracer
            .span_builder(Cow::Owned(name))
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let context = opentelemetry::trace::Span::span_context(&span);
        let child = TraceParent {
            trace_id: context.trace_id().to_bytes(),
            parent_id: context.span_id().to_bytes(),
            flags: u8::from(context.is_sampled()),
        };
        RunSpan { span, child }
    }
}

/// A started span; ended by `end` (or when dropped, with no outcome).
pub(crate) struct RunSpan {
    span: opentelemetry_sdk::trace::Span,
    child: TraceParent,
}

impl RunSpan {
    /// Sets `traceparent` on every event of `events` to this span (their `tracestate`,
    /// inherited from the event handled, stays).
    pub(crate) fn stamp<'a>(&self, events: impl Iterator<Item = &'a mut Event>) {
        let text = serde_json::Value::String(self.child.to_string());
        for event in events {
            event
                .extensions
                .insert(tracecontext::TRACEPARENT.to_owned(), text.clone());
        }
    }

    /// Ends the span with its outcome: `ok`, `retry`, `dead` or `error` (with the
    /// error's text as the status for all but `ok`).
    pub(crate) fn end(mut self, outcome: &'static str, error: Option<&str>) {
        use opentelemetry::trace::Span as _;
        self.span
            .set_attribute(KeyValue::new("edaflow.outcome", outcome));
        if let Some(error) = error {
            self.span.set_status(Status::error(error.to_owned()));
        }
        self.span.end();
    }
}

/// The exporter's HTTP client: hyper's HTTP/1 client, run on the Tokio runtime that
/// started export. The SDK exports from a thread of its own, outside any runtime; each
/// request is spawned onto the runtime and awaited from there.
///
/// The SDK drops a batch it could not send without a word, so the client says it: a
/// warning when requests start failing (the collector unreachable, slow or answering an
/// error), once per outage, and a note when one succeeds again.
#[derive(Debug)]
struct LoopClient {
    handle: tokio::runtime::Handle,
    endpoint: String,
    failing: Failing,
}

/// Requests to the collector that failed since the last that succeeded.
#[derive(Debug, Default)]
struct Failing(std::sync::atomic::AtomicU64);

impl Failing {
    fn record(&self, endpoint: &str, outcome: Result<(), String>) {
        use std::sync::atomic::Ordering;
        match outcome {
            Ok(()) => {
                let failed = self.0.swap(0, Ordering::Relaxed);
                if failed > 0 {
                    tracing::info!(
                        target: "edaflow::otlp",
                        endpoint,
                        failed_requests = failed,
                        "span export works again"
                    );
                }
            }
            Err(error) => {
                if self.0.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        target: "edaflow::otlp",
                        endpoint,
                        %error,
                        "could not export spans; they are dropped until the collector answers"
                    );
                }
            }
        }
    }
}

/// A request to the collector takes at most this long (the exporter's default timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl HttpClient for LoopClient {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let task = self.handle.spawn(async move {
            tokio::time::timeout(REQUEST_TIMEOUT, send(request))
                .await
                .map_err(|_| HttpError::from("the collector did not answer in time"))?
        });
        Box::pin(async move {
            let sent = task
                .await
                .map_err(|e| HttpError::from(e.to_string()))
                .and_then(|sent| sent);
            let outcome = match &sent {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("the collector answered {}", response.status())),
                Err(e) => Err(e.to_string()),
            };
            self.failing.record(&self.endpoint, outcome);
            sent
        })
    }
}

/// One request on a connection of its own (a batch goes out every few seconds at most).
async fn send(request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    use http_body_util::{BodyExt, Full};
    let uri = request.uri().clone();
    let host = uri.host().ok_or("the endpoint has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let (mut parts, body) = request.into_parts();
    if !parts.headers.contains_key(hyper::header::HOST) {
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
        parts
            .headers
            .insert(hyper::header::HOST, authority.parse()?);
    }
    // HTTP/1 requests name the path only.
    parts.uri = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()?;
    let response = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = response.into_parts();
    let body = http_body_util::Limited::new(body, 1 << 20)
        .collect()
        .await?
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_until_a_request_succeeds() {
        use std::sync::atomic::Ordering;
        let failing = Failing::default();
        failing.record("http://x", Err("refused".into()));
        failing.record("http://x", Err("refused".into()));
        assert_eq!(failing.0.load(Ordering::Relaxed), 2);
        failing.record("http://x", Ok(()));
        assert_eq!(failing.0.load(Ordering::Relaxed), 0);
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn export_is_off_unless_an_endpoint_is_set() {
        assert_eq!(traces_endpoint(None, env(&[])), None);
        assert_eq!(traces_endpoint(Some(" "), env(&[(ENDPOINT_ENV, "")])), None);
    }

    #[test]
    fn the_endpoint_follows_the_standard_precedence() {
        let both = [
            (ENDPOINT_ENV, "http://base:4318"),
            (TRACES_ENDPOINT_ENV, "http://traces:4318/custom"),
        ];
        assert_eq!(
            traces_endpoint(Some("http://flag:4318/"), env(&both)).as_deref(),
            Some("http://flag:4318/v1/traces")
        );
        assert_eq!(
            traces_endpoint(None, env(&both)).as_deref(),
            Some("http://traces:4318/custom")
        );
        assert_eq!(
            traces_endpoint(None, env(&both[..1])).as_deref(),
            Some("http://base:4318/v1/traces")
        );
        assert_eq!(
            traces_endpoint(Some("http://flag:4318/v1/traces"), env(&[])).as_deref(),
            Some("http://flag:4318/v1/traces")
        );
        let disabled = [
            (ENDPOINT_ENV, "http://base:4318"),
            (SDK_DISABLED_ENV, "TRUE"),
        ];
        assert_eq!(traces_endpoint(Some("http://flag:1"), env(&disabled)), None);
    }

    #[tokio::test]
    async fn a_non_http_endpoint_is_refused() {
        let error = Tracing::start("https://collector:4318/v1/traces").unwrap_err();
        assert!(error.detail.contains("http://"), "{error}");
        assert!(Tracing::start("not a url at all").is_err());
    }
}
