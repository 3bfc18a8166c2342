//! The `http` producer: ingest (`POST /topics/{topic}`, `POST /deferred-exec`), health,
//! metrics, a live tail and the admin routes, on axum, served by edaflow's own accept loop.
//!
//! Ingest accepts the article's plain JSON, structured CloudEvents
//! (`application/cloudevents+json`) and binary-mode CloudEvents (`ce-*` headers). Bad input
//! is refused with a JSON error and never published; a full buffer answers 503 with
//! `Retry-After`. An event answered 202 has been handed to the broker. Every refusal, the
//! router's own (404, 405, a rejected path or query) included, is JSON with a stable code.
//!
//! `server` owns the accept loop and the connection limit, `conn` a connection's clocks,
//! `cloudevents` reading an event from a request, `error` the refusals, `console` the
//! browser console's routes (also served alone, without ingest, by `serve_console`),
//! `stats` the figures `edaflow top` polls; the probes, metrics and stats are also served
//! alone by `serve_admin`.
//!
//! Ingest takes the token as `Authorization: Bearer` only. The read and admin routes also
//! take the console's cookie, and a change (not GET or HEAD) authorised by the cookie alone
//! must carry `X-Edaflow-Console: 1` (see `console`).
//!
//! It sees the runtime only through `runtime::api::ApiContext` (the broker, metrics,
//! status, history, reload requests and the running generation's settings), and the
//! runtime starts it through `Api`, its `runtime::api::ApiServer`.

mod admin;
pub mod base64;
mod cloudevents;
mod conn;
pub mod console;
pub mod error;
mod ingest;
pub mod query;
pub mod rfc3339;
pub mod server;
mod stats;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::broker::capability::placement::OutboxStats;
use crate::broker::{Broker, BrokerHealth};
use crate::flow::model::HttpProducer;
use crate::pattern::TopicPattern;
use crate::runtime::api::{ApiContext, ApiProducer, ApiServer};
use crate::runtime::history::TraceEntry;
use crate::runtime::reload::{ReloadCause, ReloadReport};

pub use error::ApiError;

/// A `/tail` reader that falls behind holds at most this many events…
const TAIL_EVENTS: usize = 1024;
/// …and this many bytes of them; past either, events are skipped for that reader.
const TAIL_BYTES: usize = 4 << 20;

/// The HTTP API as the runtime starts it: `ApiServer` for every `http` producer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Api;

impl<B: Broker> ApiServer<B> for Api {
    fn serve(
        &self,
        listener: tokio::net::TcpListener,
        producer: ApiProducer<B>,
        stop: CancellationToken,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(serve(listener, ApiState::new(producer), stop))
    }
}

/// What the handlers share.
pub struct ApiState<B: Broker> {
    /// What the API may read and drive in the runtime.
    pub(crate) runtime: ApiContext<B>,
    pub(crate) config: HttpProducer,
    pub(crate) deferred_topic: String,
    pub(crate) source: String,
    /// Ends open streams (tails) when the producer stops.
    pub(crate) stopping: CancellationToken,
    /// `GET /stats`'s last count of the dead letters, shared by its callers.
    pub(crate) dead_count: std::sync::Mutex<Option<stats::DeadCount>>,
}

impl<B: Broker> ApiState<B> {
    /// State for one HTTP producer.
    pub fn new(producer: ApiProducer<B>) -> Arc<ApiState<B>> {
        let ApiProducer {
            runtime,
            config,
            deferred_topic,
            source,
        } = producer;
        Arc::new(ApiState {
            runtime,
            config,
            deferred_topic,
            source,
            stopping: CancellationToken::new(),
            dead_count: std::sync::Mutex::new(None),
        })
    }

    /// The producer's name (the last part of its source).
    pub(crate) fn producer_name(&self) -> &str {
        self.source.rsplit('/').next().unwrap_or("api")
    }

    /// Ingest's check: the token as `Authorization: Bearer` (the console's cookie does not
    /// publish).
    fn authorize_bearer(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match self.credential(headers, false)? {
            Credential::Open | Credential::Bearer => Ok(()),
            Credential::Cookie => Err(ApiError::Unauthorized),
        }
    }

    /// A read route's check: the token as `Authorization: Bearer` or as the console's
    /// cookie.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        self.credential(headers, true).map(drop)
    }

    /// A change's check (any method but GET and HEAD): as `authorize`, and a request
    /// authorised by the cookie alone must also carry `X-Edaflow-Console: 1`, which a
    /// cross-site form or link cannot send.
    fn authorize_change(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match self.credential(headers, true)? {
            Credential::Cookie
                if headers
                    .get(console::CHANGE_HEADER)
                    .is_none_or(|v| v.as_bytes() != b"1") =>
            {
                Err(ApiError::Csrf)
            }
            _ => Ok(()),
        }
    }

    /// What authorises the request: nothing needed (no token set), the bearer header, or
    /// (when `cookie`) the console's cookie; both compared in constant time.
    fn credential(&self, headers: &HeaderMap, cookie: bool) -> Result<Credential, ApiError> {
        let Some(token) = &self.config.token else {
            return Ok(Credential::Open);
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or(b"");
        if token.matches(given) {
            return Ok(Credential::Bearer);
        }
        if cookie && console::cookie_token(headers).is_some_and(|given| token.matches(&given)) {
            return Ok(Credential::Cookie);
        }
        Err(ApiError::Unauthorized)
    }
}

/// What authorised a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Credential {
    /// No token is set: everything is open.
    Open,
    Bearer,
    /// The console's cookie (`POST /console/login`).
    Cookie,
}

/// The routes of the HTTP producer: ingest, the read and admin routes, and the console.
pub fn router<B: Broker>(state: Arc<ApiState<B>>) -> Router {
    let ingest = Router::new()
        .route("/topics/{topic}", post(ingest::publish_topic::<B>))
        .route("/deferred-exec", post(ingest::publish_deferred::<B>))
        .route("/query/{topic}", post(query::query::<B>))
        .route("/queues/{queue}", post(ingest::enqueue::<B>));
    finish(
        ingest
            .merge(read_and_admin::<B>())
            .merge(console::routes::<B>()),
        state,
    )
}

/// The routes of the operator's listener (`edaflow run --admin`): the probes, metrics and
/// stats only, nothing that changes anything or shows events.
pub fn admin_router<B: Broker>(state: Arc<ApiState<B>>) -> Router {
    finish(probes::<B>(), state)
}

/// The routes of the console's own listener (`edaflow run --console`): the read and admin
/// routes and the console, without ingest.
pub fn console_router<B: Broker>(state: Arc<ApiState<B>>) -> Router {
    finish(read_and_admin::<B>().merge(console::routes::<B>()), state)
}

/// Probes and metrics, tail, trace, chains, queues, stores, reload and dead letters.
fn read_and_admin<B: Broker>() -> Router<Arc<ApiState<B>>> {
    Router::new()
        .merge(probes::<B>())
        .route("/tail", get(tail::<B>))
        .route("/admin/reload", post(admin_reload::<B>))
        .route("/chains", get(chains::<B>))
        .route("/trace/{correlation}", get(trace::<B>))
        .route("/stores/{store}/{key}", get(query::read_store::<B>))
        .route("/queues", get(admin::list_queues::<B>))
        .route("/queues/{queue}", get(admin::show_queue::<B>))
        .route("/admin/dead", get(admin::list_dead::<B>))
        .route("/admin/dead/replay", post(admin::replay_dead::<B>))
        .route("/admin/dead/drop", post(admin::drop_dead::<B>))
}

/// Health, liveness, readiness, metrics and stats: what probes, scrapers and `edaflow top`
/// read.
fn probes<B: Broker>() -> Router<Arc<ApiState<B>>> {
    Router::new()
        .route("/healthz", get(healthz::<B>))
        .route("/livez", get(livez::<B>))
        .route("/readyz", get(readyz::<B>))
        .route("/metrics", get(metrics::<B>))
        .route("/stats", get(stats::stats::<B>))
}

/// `routes` with the JSON 404 and the JSON refusals, on `state`.
fn finish<B: Broker>(routes: Router<Arc<ApiState<B>>>, state: Arc<ApiState<B>>) -> Router {
    let body_limit = state.config.body_limit;
    routes
        .fallback(not_found)
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                json_refusals(request, next, body_limit)
            },
        ))
        .with_state(state)
}

/// Serves until `token` is cancelled: the listener closes at once, open streams end, and
/// connections still open after `server::STOP_GRACE` are dropped.
pub async fn serve<B: Broker>(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState<B>>,
    token: CancellationToken,
) {
    let router = router(state.clone());
    serve_router(listener, state, router, token).await;
}

/// Serves the console and the read and admin routes, without ingest, on a listener of
/// their own (`edaflow run --console`), until `token` is cancelled, as `serve` does.
pub async fn serve_console<B: Broker>(
    listener: tokio::net::TcpListener,
    producer: ApiProducer<B>,
    token: CancellationToken,
) {
    let state = ApiState::new(producer);
    let router = console_router(state.clone());
    serve_router(listener, state, router, token).await;
}

/// Serves only the probes, metrics and stats (`/healthz`, `/livez`, `/readyz`, `/metrics`,
/// `/stats`) on a listener of their own (`edaflow run --admin`), until `token` is cancelled, as `serve`
/// does.
pub async fn serve_admin<B: Broker>(
    listener: tokio::net::TcpListener,
    producer: ApiProducer<B>,
    token: CancellationToken,
) {
    let state = ApiState::new(producer);
    let router = admin_router(state.clone());
    serve_router(listener, state, router, token).await;
}

async fn serve_router<B: Broker>(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState<B>>,
    router: Router,
    token: CancellationToken,
) {
    let config = &state.config;
    let limits = server::ServerLimits {
        header_timeout: config.header_timeout,
        body_timeout: config.body_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections,
    };
    let stopping = state.stopping.clone();
    let metrics = state.runtime.metrics.clone();
    server::serve(listener, router, limits, metrics, token, stopping).await;
}

/// Any route not listed.
async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound {
        method: method.to_string(),
        path: shown_path(uri.path()),
    }
}

/// A path as an error message shows it: at most 256 bytes of it.
fn shown_path(path: &str) -> String {
    const SHOWN: usize = 256;
    if path.len() <= SHOWN {
        return path.to_owned();
    }
    let mut end = SHOWN;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

/// Turns every refusal that is not JSON yet (axum's 405, an extractor's rejection) into
/// the JSON one for its status, keeping its headers (`Allow` on a 405).
async fn json_refusals(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    body_limit: usize,
) -> Response {
    let method = request.method().to_string();
    let path = shown_path(request.uri().path());
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // A rejection's text: short, and safe to show (it says what was wrong with the input).
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&text).trim().to_owned();
    let error = match status {
        StatusCode::NOT_FOUND => ApiError::NotFound { method, path },
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed { method, path },
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge { limit: body_limit },
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType { content_type },
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY if !detail.is_empty() => {
            ApiError::BadRequest { detail }
        }
        _ => ApiError::Refused {
            status: status.as_u16(),
        },
    };
    let mut answer = error.into_response();
    *answer.status_mut() = status;
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

/// Why the broker cannot serve now: `/healthz`'s and `/readyz`'s overall status and the
/// broker's part of their answer; `None` while it answers.
async fn broker_refusal<B: Broker>(
    state: &ApiState<B>,
) -> Option<(&'static str, serde_json::Value)> {
    let incidents = state.runtime.broker.incidents();
    match state.runtime.broker.health().await {
        BrokerHealth::Up => None,
        BrokerHealth::Down { reason, for_ms } => Some((
            "unavailable",
            serde_json::json!({"status": "down", "reason": reason, "down_for_ms": for_ms, "incidents": incidents}),
        )),
        BrokerHealth::Degraded {
            code,
            reason,
            for_ms,
        } => Some((
            "degraded",
            serde_json::json!({"status": code, "reason": reason, "for_ms": for_ms, "incidents": incidents}),
        )),
    }
}

/// A 503 with `body` and `Retry-After: 1`.
fn unavailable(body: &serde_json::Value) -> Response {
    let mut response = json_response(StatusCode::SERVICE_UNAVAILABLE, body.to_string());
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// `GET /healthz`: 200 with the groups' state while the broker answers; 503 with the
/// reason (and no group figures, which would need the broker) while it does not.
async fn healthz<B: Broker>(State(state): State<Arc<ApiState<B>>>) -> Response {
    let status = &state.runtime.status;
    let last_reload = status
        .last_reload
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some((overall, broker)) = broker_refusal(&state).await {
        return unavailable(&serde_json::json!({
            "status": overall,
            "broker": broker,
            "generation": status.generation.load(Ordering::SeqCst),
            "last_reload": last_reload,
            "uptime_seconds": status.started.elapsed().as_secs(),
        }));
    }
    let incidents = state.runtime.broker.incidents();
    let groups: Vec<serde_json::Value> = state
        .runtime
        .broker
        .stats()
        .await
        .into_iter()
        .map(|g| serde_json::json!({"group": g.name, "queued": g.queued, "in_flight": g.in_flight, "capacity": g.capacity}))
        .collect();
    let body = serde_json::json!({
        "status": "ok",
        "broker": {"status": "up", "incidents": incidents},
        "generation": status.generation.load(Ordering::SeqCst),
        "last_reload": last_reload,
        "uptime_seconds": status.started.elapsed().as_secs(),
        "groups": groups,
        "processes": crate::runtime::processes::list_processes(&state.runtime.broker, &status.this_process()).await,
    });
    json_response(StatusCode::OK, body.to_string())
}

/// `GET /livez`: 200 as long as the process's runtime answers requests. It never asks the
/// broker: a broker outage is for `/readyz` to report, and must not get the process
/// restarted.
async fn livez<B: Broker>(State(state): State<Arc<ApiState<B>>>) -> Response {
    let body = serde_json::json!({
        "status": "alive",
        "uptime_seconds": state.runtime.status.started.elapsed().as_secs(),
    });
    json_response(StatusCode::OK, body.to_string())
}

/// `GET /readyz`: 200 once the first generation is applied and while the broker answers;
/// 503 with the reason otherwise (the broker's part as `/healthz` gives it).
async fn readyz<B: Broker>(State(state): State<Arc<ApiState<B>>>) -> Response {
    let generation = state.runtime.status.generation.load(Ordering::SeqCst);
    if generation == 0 {
        return unavailable(&serde_json::json!({
            "status": "starting",
            "reason": "no flow generation applied yet",
            "generation": 0,
        }));
    }
    if let Some((overall, broker)) = broker_refusal(&state).await {
        let reason = broker["reason"].clone();
        return unavailable(&serde_json::json!({
            "status": overall,
            "reason": reason,
            "broker": broker,
            "generation": generation,
        }));
    }
    let body = serde_json::json!({"status": "ready", "generation": generation});
    json_response(StatusCode::OK, body.to_string())
}

/// A spread namespace's outboxes (`edaflow_outbox_*`, labelled by shard); nothing for a
/// namespace of one shard.
fn render_outboxes(out: &mut String, outboxes: &[OutboxStats]) {
    use std::fmt::Write as _;
    type Value = fn(&OutboxStats) -> String;
    if outboxes.is_empty() {
        return;
    }
    let families: [(&str, &str, &str, Value); 3] = [
        (
            "edaflow_outbox_waiting",
            "gauge",
            "Entries a shard's commits wrote for other shards and not forwarded yet.",
            |o| o.waiting.to_string(),
        ),
        (
            "edaflow_outbox_oldest_seconds",
            "gauge",
            "How long the oldest entry waiting in a shard's outbox has waited.",
            |o| format!("{:.3}", o.oldest.as_secs_f64()),
        ),
        (
            "edaflow_outbox_forwarded_total",
            "counter",
            "Outbox entries this process's forwarder carried from a shard to the others.",
            |o| o.forwarded.to_string(),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for outbox in outboxes {
            let _ = writeln!(
                out,
                "{name}{{shard=\"{}\"}} {}",
                outbox.shard,
                value(outbox)
            );
        }
    }
}

async fn metrics<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let mut text = state.runtime.metrics.render(
        &state.runtime.broker.stats().await,
        state.runtime.status.generation.load(Ordering::SeqCst),
    );
    crate::runtime::metrics::Metrics::render_queues(
        &mut text,
        &state.runtime.broker.queue_stats().await,
    );
    {
        use std::fmt::Write as _;
        let incidents = state.runtime.broker.incidents();
        let _ = write!(
            text,
            "# HELP edaflow_broker_state_lost_total Times the broker's server was found to have lost its state (and it was declared again).\n\
             # TYPE edaflow_broker_state_lost_total counter\n\
             edaflow_broker_state_lost_total {}\n\
             # HELP edaflow_broker_out_of_memory_episodes_total Episodes of the broker's server refusing writes for lack of memory.\n\
             # TYPE edaflow_broker_out_of_memory_episodes_total counter\n\
             edaflow_broker_out_of_memory_episodes_total {}\n",
            incidents.state_lost, incidents.out_of_memory_episodes
        );
    }
    if let Some(placement) = state.runtime.broker.placement() {
        render_outboxes(&mut text, &placement.outboxes().await);
    }
    if state.runtime.broker.history().is_some() {
        use std::fmt::Write as _;
        let _ = write!(
            text,
            "# HELP edaflow_history_unshipped_total History entries dropped because shipping them to the broker fell behind.\n\
             # TYPE edaflow_history_unshipped_total counter\n\
             edaflow_history_unshipped_total {}\n",
            state.runtime.history.unshipped()
        );
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// `POST /admin/reload`: the same reload path as the file watcher and SIGHUP. Answers with
/// the outcome: 200 applied or unchanged, 422 invalid (with the diagnostic), 500 rolled back.
async fn admin_reload<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize_change(&headers)?;
    let answer = state
        .runtime
        .reload
        .request(ReloadCause::Http)
        .await
        .ok_or(ApiError::ReloadUnavailable)?;
    // If the reload restarts this very producer, it waits for this request to finish:
    // answer as soon as the producer starts stopping instead of waiting for the outcome.
    let report = tokio::select! {
        report = answer => report.map_err(|_| ApiError::ReloadUnavailable)?,
        _ = state.stopping.cancelled() => {
            return Ok(json_response(StatusCode::ACCEPTED, r#"{"result":"in_progress","detail":"this HTTP producer restarts as part of the reload"}"#.to_owned()));
        }
    };
    let status = match &report {
        ReloadReport::Applied(_) | ReloadReport::Unchanged { .. } => StatusCode::OK,
        ReloadReport::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        ReloadReport::RolledBack { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::to_string(&report).unwrap_or_default();
    Ok(json_response(status, body))
}

/// `GET /chains`: per chain, instances started, completed, timed out and in flight, and
/// duration percentiles (whole chain and per step) over recent completions.
async fn chains<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let reports = state.runtime.metrics.chain_reports();
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&reports).unwrap_or_default(),
    ))
}

/// `GET /trace/{correlation}`: the recorded events of one journey.
async fn trace<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    axum::extract::Path(correlation): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let broker = &state.runtime.broker;
    let journey = if let Some(shared) = broker.history() {
        // Shared by every process: the whole journey, wherever its events were handled.
        let recorded = shared.entries(&correlation).await.map_err(|e| {
            warn!(error = %e, "could not read the shared history");
            ApiError::Unavailable
        })?;
        let mut entries: Vec<TraceEntry> = recorded
            .iter()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        entries.sort_by_key(|e| e.time);
        // A journey the shared history left out under load (see `runtime::history`) is
        // still in this process's own history, if it passed here.
        Some(entries)
            .filter(|e| !e.is_empty())
            .or_else(|| state.runtime.history.journey(&correlation))
    } else {
        state.runtime.history.journey(&correlation)
    }
    .ok_or(ApiError::UnknownJourney { correlation })?;
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&journey).unwrap_or_default(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TailQuery {
    pattern: Option<String>,
}

/// Streams matching events as JSON lines (one CloudEvent per line) until the client goes
/// away. Lossy by design: a slow reader misses events rather than slowing the flow.
async fn tail<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Query(query): Query<TailQuery>,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let text = query.pattern.unwrap_or_else(|| ">".to_owned());
    let pattern = TopicPattern::parse(&text).map_err(|e| ApiError::BadParameter {
        detail: format!("pattern {text:?}: {e}"),
    })?;
    // Opening a tap may wait for its subscription (on Redis, up to a couple of seconds):
    // on a blocking thread, where waiting holds up no other request.
    let broker = state.runtime.broker.clone();
    let rx =
        tokio::task::spawn_blocking(move || broker.tap_within(pattern, TAIL_EVENTS, TAIL_BYTES))
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "opening a tail's tap failed");
                ApiError::Unavailable
            })?;
    let stopping = state.stopping.clone();
    let stream = futures_util::stream::unfold((rx, stopping), |(mut rx, stopping)| async move {
        let event = tokio::select! {
            _ = stopping.cancelled() => None,
            event = rx.recv() => event,
        }?;
        let mut line = event.to_json();
        line.push('\n');
        Some((Ok::<_, Infallible>(line), (rx, stopping)))
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
