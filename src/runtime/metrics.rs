//! Counters and histograms the runtime keeps, rendered in the Prometheus text format for
//! `GET /metrics` and read as plain numbers for the console (`*_counts`). Hot paths hold
//! an `Arc` to their own counters (atomics, no locks); the maps are only locked to
//! register a new topic or subscriber and to render or read.
//!
//! Subscribers and relays also keep their last `RECENT_ERRORS` failures (`RecentErrors`),
//! behind a mutex touched only when a run fails: the success path never sees it.
//!
//! The rendering follows Prometheus' naming: counters end in `_total`, durations are in
//! seconds (`_seconds`), and the build and the process (`process_*`, read from
//! `/proc/self` on Linux, absent elsewhere) are described as the official clients do.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::broker::{GroupStats, QueueStats};
use crate::event::Event;
use crate::runtime::chains::{ChainReport, ChainStats};

/// Upper bounds of the handler latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The histogram as it stands: each bucket's own count (not cumulative). Runs longer
    /// than the last bound are in `count` only.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            le: &LATENCY_BUCKETS,
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            count: self.count.load(Ordering::Relaxed),
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A histogram read at one moment (`Histogram::snapshot`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencySnapshot {
    /// The buckets' upper bounds, in seconds.
    pub le: &'static [f64],
    /// Observations per bucket, not cumulative.
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

/// How many recent failures a subscriber or a relay keeps.
pub const RECENT_ERRORS: usize = 20;

/// A failure message is kept to this many bytes.
const RECENT_ERROR_BYTES: usize = 1024;

/// One failed run, as the console lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecentError {
    #[serde(serialize_with = "rfc3339_millis")]
    pub at: SystemTime,
    pub message: String,
    pub event_id: String,
    pub correlation: String,
    /// Which run of the event failed (1 for the first).
    pub attempt: u32,
}

fn rfc3339_millis<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// The last `RECENT_ERRORS` failures of one component, oldest first.
#[derive(Debug, Default)]
pub struct RecentErrors(Mutex<VecDeque<RecentError>>);

impl RecentErrors {
    /// Keeps a failure of `event`, forgetting the oldest past `RECENT_ERRORS`.
    pub fn record(&self, event: &Event, attempt: u32, message: &str) {
        let mut end = message.len().min(RECENT_ERROR_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let error = RecentError {
            at: SystemTime::now(),
            message: message[..end].to_owned(),
            event_id: event.id.clone(),
            correlation: event.correlation_id.clone(),
            attempt,
        };
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= RECENT_ERRORS {
            kept.pop_front();
        }
        kept.push_back(error);
    }

    /// The failures kept, oldest first.
    pub fn list(&self) -> Vec<RecentError> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Per-topic counters.
#[derive(Debug, Default)]
pub struct TopicMetrics {
    /// Events published to the topic.
    pub events_in: AtomicU64,
    /// Events of the topic handed to a handler.
    pub events_out: AtomicU64,
}

/// Per-subscriber counters.
#[derive(Debug, Default)]
pub struct SubscriberMetrics {
    /// Events received (each delivery once, retries not counted).
    pub events_in: AtomicU64,
    /// Events emitted by successful runs.
    pub events_out: AtomicU64,
    /// Events handled successfully.
    pub handled: AtomicU64,
    /// Failed runs (each attempt counts).
    pub errors: AtomicU64,
    /// Events sent to the dead-letter topic.
    pub dead_letters: AtomicU64,
    /// Runs moved off the runtime's threads for running long (`Limits::inline_time`).
    pub offloaded: AtomicU64,
    /// Commits that gave up waiting for room in a full group (the run then failed and
    /// was retried).
    pub full_waits: AtomicU64,
    /// Events dead-lettered because their journey passed the flow set's `max_hops`.
    pub hop_limited: AtomicU64,
    /// Time per run.
    pub latency: Histogram,
    /// The last failed runs.
    recent_errors: RecentErrors,
}

impl SubscriberMetrics {
    /// Keeps a failed run of `event` (only called when a run fails).
    pub fn record_error(&self, event: &Event, attempt: u32, message: &str) {
        self.recent_errors.record(event, attempt, message);
    }

    /// The last failed runs, oldest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.recent_errors.list()
    }

    /// The counters as they stand, for the console.
    pub fn counts(&self) -> SubscriberCounts {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SubscriberCounts {
            events_in: read(&self.events_in),
            events_out: read(&self.events_out),
            handled: read(&self.handled),
            errors: read(&self.errors),
            dead_letters: read(&self.dead_letters),
            latency: self.latency.snapshot(),
            recent_errors: self.recent_errors(),
        }
    }
}

/// A subscriber's counters read at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubscriberCounts {
    #[serde(rename = "in")]
    pub events_in: u64,
    #[serde(rename = "out")]
    pub events_out: u64,
    pub handled: u64,
    pub errors: u64,
    pub dead_letters: u64,
    pub latency: LatencySnapshot,
    pub recent_errors: Vec<RecentError>,
}

/// Per-relay counters.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    /// Events moved into the queue.
    pub relayed: AtomicU64,
    /// Events the filter rejected.
    pub filtered: AtomicU64,
    /// Events the transform dropped (it returned `()`).
    pub dropped: AtomicU64,
    /// Filter or transform failures (the event is not queued).
    pub errors: AtomicU64,
    /// The last failures.
    recent_errors: RecentErrors,
}

impl RelayMetrics {
    /// Keeps a failure on `event` (only called when the filter or transform fails).
    pub fn record_error(&self, event: &Event, message: &str) {
        self.recent_errors.record(event, 1, message);
    }

    /// The last failures, oldest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.recent_errors.list()
    }

    /// The counters as they stand, for the console.
    pub fn counts(&self) -> RelayCounts {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RelayCounts {
            relayed: read(&self.relayed),
            filtered: read(&self.filtered),
            dropped: read(&self.dropped),
            errors: read(&self.errors),
            recent_errors: self.recent_errors(),
        }
    }
}

/// A relay's counters read at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RelayCounts {
    pub relayed: u64,
    pub filtered: u64,
    pub dropped: u64,
    pub errors: u64,
    pub recent_errors: Vec<RecentError>,
}

/// A topic's counters read at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TopicCounts {
    #[serde(rename = "in")]
    pub events_in: u64,
    #[serde(rename = "out")]
    pub events_out: u64,
}

/// HTTP ingest counters, and the HTTP server's (every `http` producer's together).
#[derive(Debug, Default)]
pub struct HttpMetrics {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub backpressured: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Connections refused past `max_connections`.
    pub connections_refused: AtomicU64,
    /// Connections whose request head did not arrive within `header_timeout`.
    pub header_timeouts: AtomicU64,
    /// Requests whose body did not arrive within `body_timeout`.
    pub body_timeouts: AtomicU64,
    /// Connections dropped because the client took no byte of an answer for `idle_timeout`.
    pub write_timeouts: AtomicU64,
}

/// Everything `/metrics` shows.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Looked up per event: foldhash (randomly seeded) rather than SipHash.
    topics: RwLock<HashMap<String, Arc<TopicMetrics>, foldhash::fast::RandomState>>,
    subscribers: RwLock<BTreeMap<String, Arc<SubscriberMetrics>>>,
    relays: RwLock<BTreeMap<String, Arc<RelayMetrics>>>,
    /// Per chain: its steps and its counters.
    chains: RwLock<BTreeMap<String, TrackedChain>>,
    pub http: HttpMetrics,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

/// Topics past this many are counted under `topic="_other"`, so that arbitrary topic names
/// from HTTP clients cannot grow the registry without bound.
const TOPIC_LIMIT: usize = 10_000;

impl Metrics {
    /// The counters of a topic, created on first use.
    fn topic(&self, topic: &str) -> Arc<TopicMetrics> {
        if let Some(found) = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
        {
            return found.clone();
        }
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let key = if topics.len() >= TOPIC_LIMIT && !topics.contains_key(topic) {
            "_other"
        } else {
            topic
        };
        topics.entry(key.to_owned()).or_default().clone()
    }

    /// Counts one event published to `topic`.
    pub fn published(&self, topic: &str) {
        self.count(topic, |m| &m.events_in);
    }

    /// Counts one event of `topic` handed to a handler.
    pub fn handed_out(&self, topic: &str) {
        self.count(topic, |m| &m.events_out);
    }

    /// Adds one to a counter of `topic`. Every event counts twice or more, from every
    /// worker thread: a known topic is counted under the read lock, without taking a
    /// reference to its counters (an `Arc` shared by all threads, whose count would change
    /// hands between cores twice per event).
    fn count(&self, topic: &str, counter: impl Fn(&TopicMetrics) -> &AtomicU64) {
        {
            let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
            if let Some(found) = topics.get(topic) {
                counter(found).fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        counter(&self.topic(topic)).fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of a subscriber, created on first use (kept across restarts).
    pub fn subscriber(&self, name: &str) -> Arc<SubscriberMetrics> {
        self.subscribers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// The counters of a relay, created on first use.
    pub fn relay(&self, name: &str) -> Arc<RelayMetrics> {
        self.relays
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// The counters of a chain, created on first use; `steps` are kept for reports.
    pub fn chain(&self, name: &str, steps: &[String]) -> Arc<ChainStats> {
        let mut chains = self.chains.write().unwrap_or_else(|e| e.into_inner());
        let entry = chains
            .entry(name.to_owned())
            .or_insert_with(|| (steps.to_vec(), Arc::default()));
        entry.0 = steps.to_vec();
        entry.1.clone()
    }

    /// Forgets a chain that is no longer declared.
    pub fn forget_chain(&self, name: &str) {
        self.chains
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Every topic's counters, by name.
    pub fn topic_counts(&self) -> BTreeMap<String, TopicCounts> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, m)| {
                let counts = TopicCounts {
                    events_in: m.events_in.load(Ordering::Relaxed),
                    events_out: m.events_out.load(Ordering::Relaxed),
                };
                (name.clone(), counts)
            })
            .collect()
    }

    /// Every subscriber's counters (those of subscribers since removed too), by name.
    pub fn subscriber_counts(&self) -> BTreeMap<String, SubscriberCounts> {
        let subscribers: Vec<(String, Arc<SubscriberMetrics>)> = self
            .subscribers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, m)| (name.clone(), m.clone()))
            .collect();
        subscribers
            .into_iter()
            .map(|(name, m)| (name, m.counts()))
            .collect()
    }

    /// Every relay's counters, by name.
    pub fn relay_counts(&self) -> BTreeMap<String, RelayCounts> {
        let relays: Vec<(String, Arc<RelayMetrics>)> = self
            .relays
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, m)| (name.clone(), m.clone()))
            .collect();
        relays
            .into_iter()
            .map(|(name, m)| (name, m.counts()))
            .collect()
    }

    /// What `GET /chains` shows.
    pub fn chain_reports(&self) -> Vec<ChainReport> {
        self.chains
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, (steps, stats))| stats.report(name, steps))
            .collect()
    }

    /// Renders everything in the Prometheus text exposition format.
    pub fn render(&self, groups: &[GroupStats], generation: u64) -> String {
        let mut out = String::with_capacity(4096);
        self.render_topics(&mut out);
        self.render_subscribers(&mut out);
        self.render_relays(&mut out);
        Self::render_groups(&mut out, groups);
        self.render_http(&mut out);
        self.render_chains(&mut out);
        self.render_generation(&mut out, generation);
        render_build_info(&mut out);
        process::render(&mut out);
        out
    }

    /// Per queue: items held and items in flight (appended to `render`'s text by the
    /// caller, which reads them from the broker).
    pub fn render_queues(out: &mut String, queues: &[QueueStats]) {
        header(
            out,
            "edaflow_queue_depth",
            "gauge",
            "Items held in a queue, waiting for their due time or ready.",
        );
        for q in queues {
            let _ = writeln!(
                out,
                "edaflow_queue_depth{{queue=\"{}\"}} {}",
                escape(&q.name),
                q.depth
            );
        }
        header(
            out,
            "edaflow_queue_due_now",
            "gauge",
            "Items of a queue due now (ready to be taken).",
        );
        for q in queues {
            let _ = writeln!(
                out,
                "edaflow_queue_due_now{{queue=\"{}\"}} {}",
                escape(&q.name),
                q.due_now
            );
        }
        header(
            out,
            "edaflow_queue_in_flight",
            "gauge",
            "Items of a queue delivered and not yet settled.",
        );
        for q in queues {
            let _ = writeln!(
                out,
                "edaflow_queue_in_flight{{queue=\"{}\"}} {}",
                escape(&q.name),
                q.in_flight
            );
        }
    }

    /// Events in and out per topic.
    fn render_topics(&self, out: &mut String) {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let mut topic_names: Vec<&String> = topics.keys().collect();
        topic_names.sort();
        header(
            out,
            "edaflow_topic_events_in_total",
            "counter",
            "Events published to a topic.",
        );
        for name in &topic_names {
            let v = topics[*name].events_in.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "edaflow_topic_events_in_total{{topic=\"{}\"}} {v}",
                escape(name)
            );
        }
        header(
            out,
            "edaflow_topic_events_out_total",
            "counter",
            "Events of a topic delivered to handlers.",
        );
        for name in &topic_names {
            let v = topics[*name].events_out.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "edaflow_topic_events_out_total{{topic=\"{}\"}} {v}",
                escape(name)
            );
        }
        drop(topics);
    }

    /// Per subscriber: events, runs, errors, dead letters, latency.
    fn render_subscribers(&self, out: &mut String) {
        let subs = self.subscribers.read().unwrap_or_else(|e| e.into_inner());
        let counters: [(&str, &str, CounterOf); 8] = [
            (
                "edaflow_subscriber_events_in_total",
                "Events received by a subscriber.",
                |m| &m.events_in,
            ),
            (
                "edaflow_subscriber_events_out_total",
                "Events emitted by a subscriber's successful runs.",
                |m| &m.events_out,
            ),
            (
                "edaflow_subscriber_handled_total",
                "Events a subscriber handled successfully.",
                |m| &m.handled,
            ),
            (
                "edaflow_handler_errors_total",
                "Failed handler runs (every attempt).",
                |m| &m.errors,
            ),
            (
                "edaflow_dead_letters_total",
                "Events sent to a dead-letter topic.",
                |m| &m.dead_letters,
            ),
            (
                "edaflow_handler_offloaded_total",
                "Handler runs moved off the runtime's threads for running long.",
                |m| &m.offloaded,
            ),
            (
                "edaflow_commit_full_waits_total",
                "Commits that gave up waiting for room in a full group (the run is retried).",
                |m| &m.full_waits,
            ),
            (
                "edaflow_hop_limit_dead_letters_total",
                "Events dead-lettered because their journey passed max_hops.",
                |m| &m.hop_limited,
            ),
        ];
        for (metric, help, get) in counters {
            header(out, metric, "counter", help);
            for (name, m) in subs.iter() {
                let _ = writeln!(
                    out,
                    "{metric}{{subscriber=\"{}\"}} {}",
                    escape(name),
                    get(m).load(Ordering::Relaxed)
                );
            }
        }
        header(
            out,
            "edaflow_handler_duration_seconds",
            "histogram",
            "Time per handler run.",
        );
        for (name, m) in subs.iter() {
            let name = escape(name);
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += m.latency.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "edaflow_handler_duration_seconds_bucket{{subscriber=\"{name}\",le=\"{bound}\"}} {cumulative}");
            }
            let count = m.latency.count.load(Ordering::Relaxed);
            let _ = writeln!(out, "edaflow_handler_duration_seconds_bucket{{subscriber=\"{name}\",le=\"+Inf\"}} {count}");
            let sum = m.latency.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "edaflow_handler_duration_seconds_sum{{subscriber=\"{name}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "edaflow_handler_duration_seconds_count{{subscriber=\"{name}\"}} {count}"
            );
        }
        drop(subs);
    }

    /// Per relay: what it moved and what failed.
    fn render_relays(&self, out: &mut String) {
        let relays = self.relays.read().unwrap_or_else(|e| e.into_inner());
        let relay_counters: [(&str, &str, RelayCounterOf); 4] = [
            (
                "edaflow_relay_relayed_total",
                "Events a relay moved into its queue.",
                |m| &m.relayed,
            ),
            (
                "edaflow_relay_filtered_total",
                "Events a relay's filter rejected.",
                |m| &m.filtered,
            ),
            (
                "edaflow_relay_dropped_total",
                "Events a relay's script dropped.",
                |m| &m.dropped,
            ),
            (
                "edaflow_relay_errors_total",
                "Relay filter or script failures.",
                |m| &m.errors,
            ),
        ];
        for (metric, help, get) in relay_counters {
            header(out, metric, "counter", help);
            for (name, m) in relays.iter() {
                let _ = writeln!(
                    out,
                    "{metric}{{relay=\"{}\"}} {}",
                    escape(name),
                    get(m).load(Ordering::Relaxed)
                );
            }
        }
        drop(relays);
    }

    /// Per consumer group: what waits and what is in flight.
    fn render_groups(out: &mut String, groups: &[GroupStats]) {
        header(
            out,
            "edaflow_buffer_depth",
            "gauge",
            "Events waiting in a consumer group's buffer.",
        );
        for g in groups {
            let _ = writeln!(
                out,
                "edaflow_buffer_depth{{group=\"{}\"}} {}",
                escape(&g.name),
                g.queued
            );
        }
        header(
            out,
            "edaflow_in_flight",
            "gauge",
            "Events delivered to a group and not yet settled.",
        );
        for g in groups {
            let _ = writeln!(
                out,
                "edaflow_in_flight{{group=\"{}\"}} {}",
                escape(&g.name),
                g.in_flight
            );
        }
    }

    /// The HTTP producer: requests by outcome, connections, clocks.
    fn render_http(&self, out: &mut String) {
        header(
            out,
            "edaflow_http_requests_total",
            "counter",
            "HTTP ingest requests by outcome.",
        );
        for (outcome, v) in [
            ("accepted", &self.http.accepted),
            ("rejected", &self.http.rejected),
            ("backpressured", &self.http.backpressured),
        ] {
            let _ = writeln!(
                out,
                "edaflow_http_requests_total{{outcome=\"{outcome}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "edaflow_http_connections_open",
            "gauge",
            "HTTP connections open now.",
        );
        let http = &self.http;
        let _ = writeln!(
            out,
            "edaflow_http_connections_open {}",
            http.connections_open.load(Ordering::Relaxed)
        );
        header(
            out,
            "edaflow_http_connections_refused_total",
            "counter",
            "HTTP connections answered 503 and closed past max_connections.",
        );
        let _ = writeln!(
            out,
            "edaflow_http_connections_refused_total {}",
            http.connections_refused.load(Ordering::Relaxed)
        );
        header(
            out,
            "edaflow_http_timeouts_total",
            "counter",
            "HTTP clients cut off by a clock: a request head or body too slow, an answer not taken.",
        );
        for (clock, v) in [
            ("header", &http.header_timeouts),
            ("body", &http.body_timeouts),
            ("write", &http.write_timeouts),
        ] {
            let _ = writeln!(
                out,
                "edaflow_http_timeouts_total{{clock=\"{clock}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }

    /// Per chain: its instances and steps.
    fn render_chains(&self, out: &mut String) {
        let reports = self.chain_reports();
        let chain_counters: [(&str, &str, ChainCounterOf); 4] = [
            (
                "edaflow_chain_started_total",
                "Chain instances started.",
                |r| r.started,
            ),
            (
                "edaflow_chain_completed_total",
                "Chain instances that reached their last step.",
                |r| r.completed,
            ),
            (
                "edaflow_chain_timed_out_total",
                "Chain instances that timed out.",
                |r| r.timed_out,
            ),
            (
                "edaflow_chain_in_flight",
                "Chain instances in flight.",
                |r| r.in_flight,
            ),
        ];
        for (metric, help, get) in chain_counters {
            let kind = if metric.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            header(out, metric, kind, help);
            for r in &reports {
                let _ = writeln!(out, "{metric}{{chain=\"{}\"}} {}", escape(&r.chain), get(r));
            }
        }
        // In seconds, and in milliseconds under the name it had before (deprecated: it
        // goes in the next release).
        for (metric, help, per_ms) in [
            (
                "edaflow_chain_duration_seconds",
                "Whole-chain durations over recent completions, in seconds.",
                1e-3,
            ),
            (
                "edaflow_chain_duration_ms",
                "Deprecated, use edaflow_chain_duration_seconds: whole-chain durations in milliseconds.",
                1.0,
            ),
        ] {
            header(out, metric, "summary", help);
            for r in &reports {
                if let Some(p) = r.duration_ms {
                    for (q, v) in [("0.5", p.p50), ("0.9", p.p90), ("0.99", p.p99)] {
                        let _ = writeln!(
                            out,
                            "{metric}{{chain=\"{}\",quantile=\"{q}\"}} {}",
                            escape(&r.chain),
                            v * per_ms
                        );
                    }
                }
            }
        }
    }

    /// The running generation and its reloads.
    fn render_generation(&self, out: &mut String, generation: u64) {
        header(
            out,
            "edaflow_generation",
            "gauge",
            "The flow generation running.",
        );
        let _ = writeln!(out, "edaflow_generation {generation}");
        header(out, "edaflow_reloads_total", "counter", "Reloads applied.");
        let _ = writeln!(
            out,
            "edaflow_reloads_total {}",
            self.reloads.load(Ordering::Relaxed)
        );
        header(
            out,
            "edaflow_reload_failures_total",
            "counter",
            "Reloads refused or rolled back.",
        );
        let _ = writeln!(
            out,
            "edaflow_reload_failures_total {}",
            self.reload_failures.load(Ordering::Relaxed)
        );
    }
}

/// `edaflow_build_info{version="…"} 1`, the version that runs as a label.
fn render_build_info(out: &mut String) {
    header(
        out,
        "edaflow_build_info",
        "gauge",
        "Always 1; the edaflow version running as the version label.",
    );
    let _ = writeln!(
        out,
        "edaflow_build_info{{version=\"{}\"}} 1",
        escape(env!("CARGO_PKG_VERSION"))
    );
}

/// The process's own figures under the names every Prometheus client uses, read from
/// `/proc/self` on Linux; elsewhere (or if `/proc` cannot be read) they are left out.
mod process {
    use std::fmt::Write as _;

    use super::header;

    /// What is known of the process now.
    #[derive(Debug, Default, PartialEq)]
    pub(super) struct Figures {
        pub cpu_seconds: Option<f64>,
        pub resident_bytes: Option<u64>,
        pub open_fds: Option<u64>,
        pub max_fds: Option<u64>,
        pub start_time_seconds: Option<f64>,
    }

    /// Appends the `process_*` families that could be read.
    pub(super) fn render(out: &mut String) {
        let figures = read();
        let families: [(&str, &str, &str, Option<f64>); 5] = [
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent, in seconds.",
                figures.cpu_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size, in bytes.",
                figures.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "gauge",
                "Open file descriptors.",
                figures.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "gauge",
                "The most file descriptors the process may open.",
                figures.max_fds.map(|v| v as f64),
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
                figures.start_time_seconds,
            ),
        ];
        for (name, kind, help, value) in families {
            if let Some(value) = value {
                header(out, name, kind, help);
                let _ = writeln!(out, "{name} {value}");
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn read() -> Figures {
        Figures::default()
    }

    #[cfg(target_os = "linux")]
    pub(super) fn read() -> Figures {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks = (ticks > 0).then_some(ticks as f64);
        let stat = read("/proc/self/stat");
        let boot = read("/proc/stat").as_deref().and_then(boot_time);
        let (cpu_seconds, start_time_seconds) = match (stat.as_deref().and_then(parse_stat), ticks)
        {
            (Some((cpu, start)), Some(hz)) => (
                Some(cpu as f64 / hz),
                boot.map(|boot| boot as f64 + start as f64 / hz),
            ),
            _ => (None, None),
        };
        Figures {
            cpu_seconds,
            resident_bytes: read("/proc/self/status")
                .as_deref()
                .and_then(resident_bytes),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|fds| fds.count() as u64),
            max_fds: read("/proc/self/limits").as_deref().and_then(max_fds),
            start_time_seconds,
        }
    }

    /// User plus system CPU and the start time, in clock ticks, from `/proc/self/stat`.
    /// The command name (field 2) may hold spaces and parentheses: fields are counted
    /// after its last `)`.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(super) fn parse_stat(stat: &str) -> Option<(u64, u64)> {
        let after = &stat[stat.rfind(')')? + 1..];
        // After the name come field 3 (state) onwards: utime is field 14, stime 15 and
        // starttime 22, that is the 12th, 13th and 20th here (from 1).
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some((field(14)? + field(15)?, field(22)?))
    }

    /// `btime` of `/proc/stat`: when the machine booted, in seconds since the epoch.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(super) fn boot_time(stat: &str) -> Option<u64> {
        stat.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// `VmRSS` of `/proc/self/status`, in bytes.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(super) fn resident_bytes(status: &str) -> Option<u64> {
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()?;
        Some(kib * 1024)
    }

    /// The soft limit of `Max open files` in `/proc/self/limits` (none when unlimited).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(super) fn max_fds(limits: &str) -> Option<u64> {
        limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

/// Picks one counter out of a subscriber's metrics.
type CounterOf = fn(&SubscriberMetrics) -> &AtomicU64;

/// A chain's steps and counters.
type TrackedChain = (Vec<String>, Arc<ChainStats>);

/// Picks one number out of a chain's report.
type ChainCounterOf = fn(&ChainReport) -> u64;

/// Picks one counter out of a relay's metrics.
type RelayCounterOf = fn(&RelayMetrics) -> &AtomicU64;

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.published("orderCreated");
        m.published("orderCreated");
        let s = m.subscriber("reserve");
        s.events_in.fetch_add(1, Ordering::Relaxed);
        s.latency.observe(Duration::from_micros(300));
        let text = m.render(
            &[GroupStats {
                name: "reserve".into(),
                queued: 3,
                in_flight: 1,
                capacity: 10,
            }],
            1,
        );
        assert!(
            text.contains("edaflow_topic_events_in_total{topic=\"orderCreated\"} 2"),
            "{text}"
        );
        assert!(text.contains("edaflow_subscriber_events_in_total{subscriber=\"reserve\"} 1"));
        assert!(text.contains(
            "edaflow_handler_duration_seconds_bucket{subscriber=\"reserve\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "edaflow_handler_duration_seconds_bucket{subscriber=\"reserve\",le=\"0.00025\"} 0"
        ));
        assert!(text.contains("edaflow_buffer_depth{group=\"reserve\"} 3"));
        assert!(text.contains("# TYPE edaflow_handler_duration_seconds histogram"));
    }

    #[test]
    fn build_info_queues_and_chain_seconds_are_rendered() {
        let m = Metrics::default();
        m.chain("order", &["a".into(), "b".into()]);
        let mut text = m.render(&[], 1);
        Metrics::render_queues(
            &mut text,
            &[QueueStats {
                name: "mail".into(),
                depth: 4,
                due_now: 1,
                next_due_ms: None,
                in_flight: 2,
                capacity: None,
            }],
        );
        let version = env!("CARGO_PKG_VERSION");
        for line in [
            format!("edaflow_build_info{{version=\"{version}\"}} 1"),
            "edaflow_queue_depth{queue=\"mail\"} 4".to_owned(),
            "edaflow_queue_due_now{queue=\"mail\"} 1".to_owned(),
            "edaflow_queue_in_flight{queue=\"mail\"} 2".to_owned(),
            "# TYPE edaflow_chain_duration_seconds summary".to_owned(),
            "# TYPE edaflow_chain_duration_ms summary".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        if cfg!(target_os = "linux") {
            for family in [
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_open_fds",
                "process_max_fds",
                "process_start_time_seconds",
            ] {
                assert!(
                    text.contains(&format!("# TYPE {family} ")),
                    "no {family} in:\n{text}"
                );
            }
        }
    }

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        // A command name with a space and a parenthesis, as `comm` may hold.
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 3000 0 0 0 \
                    150 50 0 0 20 0 9 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(process::parse_stat(stat), Some((200, 123_456)));
        assert_eq!(
            process::boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
        assert_eq!(
            process::resident_bytes("Name:\tedaflow\nVmRSS:\t   2048 kB\n"),
            Some(2048 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(process::max_fds(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(process::max_fds(unlimited), None);
    }

    #[test]
    fn only_the_last_failures_are_kept_oldest_first() {
        let m = Metrics::default();
        let s = m.subscriber("reserve");
        assert!(s.recent_errors().is_empty());
        let event = Event::new("orderCreated", "test", serde_json::json!({}));
        for attempt in 1..=(RECENT_ERRORS as u32 + 5) {
            s.record_error(&event, attempt, &format!("failure {attempt}"));
        }
        let kept = s.recent_errors();
        assert_eq!(kept.len(), RECENT_ERRORS);
        assert_eq!(kept[0].attempt, 6);
        assert_eq!(kept[0].message, "failure 6");
        assert_eq!(kept[RECENT_ERRORS - 1].attempt, RECENT_ERRORS as u32 + 5);
        assert_eq!(kept[0].event_id, event.id);
        assert_eq!(kept[0].correlation, event.correlation_id);
        let json = serde_json::to_value(&kept[0]).expect("serializes");
        let at = json["at"].as_str().expect("a time");
        assert!(at.ends_with('Z') && at.contains('T'), "{at}");
        // A long message is cut on a character boundary.
        s.record_error(&event, 1, &"é".repeat(RECENT_ERROR_BYTES));
        let last = s.recent_errors().pop().expect("kept");
        assert!(last.message.len() <= RECENT_ERROR_BYTES);
        assert_eq!(
            m.subscriber_counts()["reserve"].recent_errors.len(),
            RECENT_ERRORS
        );

        let r = m.relay("master");
        r.record_error(&event, "relay filter failed");
        assert_eq!(m.relay_counts()["master"].recent_errors[0].attempt, 1);
    }

    #[test]
    fn latency_snapshots_count_per_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_micros(400));
        h.observe(Duration::from_secs(3));
        let snap = h.snapshot();
        assert_eq!(snap.le.len(), snap.counts.len());
        assert_eq!(snap.counts[0], 1);
        assert_eq!(snap.counts[3], 2);
        assert_eq!(
            snap.counts.iter().sum::<u64>(),
            3,
            "past the last bound: in count only"
        );
        assert_eq!(snap.count, 4);
        assert!(snap.sum_seconds > 3.0);
    }
}
