//! The validated, immutable flow set: plain data that the runtime is built from.
//!
//! Everything here is `Clone + PartialEq + Debug` and free of tokio and Rhai, so a reload
//! can diff two generations by component name with `==` (see `diff`). Nothing here parses:
//! `load` turns TOML into these types and `validate` checks the cross-references.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::pattern::TopicPattern;

pub use crate::flow::api_token::{ApiToken, TokenError};

/// Every flow file of one `edaflow run`, merged. Component names are unique across the set.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct FlowSet {
    /// One entry per flow file, in the order they were given.
    pub files: Vec<FlowFile>,
    pub producers: BTreeMap<String, ProducerConfig>,
    pub subscribers: BTreeMap<String, SubscriberConfig>,
    pub queues: BTreeMap<String, QueueConfig>,
    pub relays: BTreeMap<String, RelayConfig>,
    pub chains: BTreeMap<String, ChainConfig>,
    pub topics: BTreeMap<String, TopicConfig>,
    pub stores: BTreeMap<String, StoreConfig>,
    /// The `[[tests]]` of every file, in file order.
    pub tests: Vec<FlowTest>,
}

/// The `[flow]` table of one file and where the file lives.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowFile {
    /// `[flow] name`, or the file stem when absent.
    pub name: String,
    /// The flow file itself (as given, joined onto the working directory).
    pub path: PathBuf,
    /// `[flow] broker`, a broker URL; process-level, so it only matters at start. Its
    /// `Debug` hides a password.
    pub broker: Option<crate::broker::SecretUrl>,
    /// `[flow] deferred_topic`: where `POST /deferred-exec` publishes (default `master`).
    pub deferred_topic: Option<String>,
    /// `[flow] topic_mode`: the mode of every topic without a `[topics.NAME] mode` of its
    /// own. Applies to the whole set (the first file that sets it wins); Redis only.
    pub topic_mode: Option<TopicMode>,
    /// `[flow] max_hops`: how many events a journey may chain (by causation) before a
    /// handler's emits are refused and its event dead-lettered. Applies to the whole set
    /// (the first file that sets it wins); default `DEFAULT_MAX_HOPS`.
    pub max_hops: Option<u32>,
}

/// A journey's length past which handlers' emits are refused (`[flow] max_hops`).
pub const DEFAULT_MAX_HOPS: u32 = 64;

/// A Rhai source file referenced by a component. Equality compares the text, so a
/// touched-but-unchanged script is not a change.
#[derive(Clone, Debug, PartialEq)]
pub struct ScriptSource {
    /// Absolute (or flow-relative, joined) path of the `.rhai` file.
    pub path: PathBuf,
    /// The directory that `import "lib/x"` resolves against: the flow file's directory.
    pub base_dir: PathBuf,
    /// The file's contents at load time.
    pub text: Arc<str>,
}

/// A producer: something that creates events from outside the flow.
#[derive(Clone, Debug, PartialEq)]
pub struct ProducerConfig {
    /// The flow file that declared it (index into `FlowSet::files`).
    pub file: usize,
    /// `role = "…"`: only run where this role is selected (none: run everywhere).
    pub role: Option<String>,
    pub kind: ProducerKind,
}

/// The kinds of producer, one variant per `kind = "…"`.
#[derive(Clone, Debug, PartialEq)]
pub enum ProducerKind {
    Http(HttpProducer),
    Interval(IntervalProducer),
    Lines(LinesProducer),
    Generator(GeneratorProducer),
}

impl ProducerKind {
    /// The topic the producer publishes on, when it has a fixed one (an `http` producer
    /// takes the topic from each request; an `interval` one may name none).
    pub fn topic(&self) -> Option<&str> {
        match self {
            ProducerKind::Http(_) => None,
            ProducerKind::Interval(p) => p.topic.as_deref(),
            ProducerKind::Lines(p) => Some(&p.topic),
            ProducerKind::Generator(p) => Some(&p.topic),
        }
    }
}

/// `kind = "http"`: the ingest API.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpProducer {
    /// `listen`, default `127.0.0.1:3000`.
    pub listen: String,
    /// `token`: when set, every request needs `Authorization: Bearer <token>`.
    pub token: Option<ApiToken>,
    /// `body_limit` in bytes, default 1 MiB.
    pub body_limit: usize,
    /// `header_timeout`: how long a client may take to send a request's head (from the
    /// connection's start, or from the first byte of a later request), default 10 s.
    pub header_timeout: Duration,
    /// `body_timeout`: how long a client may take to send a request's body once its head
    /// is in, default 30 s.
    pub body_timeout: Duration,
    /// `idle_timeout`: how long a kept-alive connection may wait for its next request,
    /// default 60 s.
    pub idle_timeout: Duration,
    /// `max_connections`: connections served at once; past it a new connection is
    /// answered 503 and closed. Default 1024.
    pub max_connections: usize,
}

impl HttpProducer {
    /// The default `listen`.
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:3000";
    /// The default `body_limit`: 1 MiB.
    pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;
    /// The default `header_timeout`.
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default `body_timeout`.
    pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default `idle_timeout`.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// The default `max_connections`.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
}

impl Default for HttpProducer {
    /// What `[producers.NAME] kind = "http"` with no other key declares.
    fn default() -> HttpProducer {
        HttpProducer {
            listen: HttpProducer::DEFAULT_LISTEN.to_owned(),
            token: None,
            body_limit: HttpProducer::DEFAULT_BODY_LIMIT,
            header_timeout: HttpProducer::DEFAULT_HEADER_TIMEOUT,
            body_timeout: HttpProducer::DEFAULT_BODY_TIMEOUT,
            idle_timeout: HttpProducer::DEFAULT_IDLE_TIMEOUT,
            max_connections: HttpProducer::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// `kind = "interval"`: a timer.
#[derive(Clone, Debug, PartialEq)]
pub struct IntervalProducer {
    pub every: Duration,
    /// The topic of the fixed event (required unless `script` emits).
    pub topic: Option<String>,
    /// The fixed event's data (any TOML value, converted to JSON); default `{}`.
    pub data: serde_json::Value,
    /// A script run on each tick, which emits what it likes.
    pub script: Option<ScriptSource>,
}

/// `kind = "lines"`: JSON lines from a file or stdin, one event per line.
#[derive(Clone, Debug, PartialEq)]
pub struct LinesProducer {
    /// `path`, or `None` for stdin (`path = "-"`).
    pub path: Option<PathBuf>,
    pub topic: String,
}

/// `kind = "generator"`: `count` copies of `data` as fast as the broker takes them.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorProducer {
    pub topic: String,
    pub count: u64,
    pub data: serde_json::Value,
}

/// What a subscriber reads from.
#[derive(Clone, Debug, PartialEq)]
pub enum SubscriberInput {
    /// `topic = "…"` or `topics = […]`: patterns, NATS style.
    Topics(Vec<TopicPattern>),
    /// `queue = "…"`: a deferred work queue.
    Queue(String),
}

/// A topic or queue subscriber: a group of competing workers running one handler.
#[derive(Clone, Debug, PartialEq)]
pub struct SubscriberConfig {
    pub file: usize,
    pub input: SubscriberInput,
    /// `script`; `None` prints the article's consumer output.
    pub script: Option<ScriptSource>,
    /// `emits`: declared outputs.
    pub emits: Vec<String>,
    /// `concurrency`, default 1.
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// `dead_letter`, default `dead.<subscriber name>`.
    pub dead_letter: String,
    /// `group`, default the subscriber's name.
    pub group: String,
    /// `role`, e.g. `command` or `query`.
    pub role: Option<String>,
    /// `renamed_from`: the subscriber's former name; what waits for it moves here.
    pub renamed_from: Option<String>,
}

/// `retry = { attempts, backoff, max_backoff }`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Total runs, the first included. Default 3.
    pub attempts: u32,
    /// Delay before the second run; doubles each time. Default 100 ms.
    pub backoff: Duration,
    /// Upper bound on the delay. Default 10 s.
    pub max_backoff: Duration,
    /// Equal jitter on each wait (`jittered_delay_after`). Default true; false waits
    /// exactly `delay_after`, for flows (and tests) that rely on exact retry times.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The wait before run number `attempt + 1`, given that run `attempt` (1-based) failed.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// The wait before run number `attempt + 1` with equal jitter: half of
    /// `delay_after(attempt)`, plus `unit` times the other half, `unit` being a random
    /// number in `[0, 1)` (clamped to `[0, 1]`). Retries of events that failed together
    /// spread out instead of hitting a struggling dependency at the same instant, and
    /// still wait at least half the backoff (full jitter may retry at once).
    /// Without `jitter`, `delay_after(attempt)` whatever `unit` is.
    pub fn jittered_delay_after(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.delay_after(attempt);
        if !self.jitter {
            return ceiling;
        }
        let half = ceiling / 2;
        half + (ceiling - half).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// `[queues.NAME]`: a deferred work queue.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueConfig {
    pub file: usize,
    /// Default delay of items entering the queue.
    pub delay: Duration,
    /// Workers look only at this interval when set.
    pub poll: Option<Duration>,
    /// Maximum items held; enqueueing past it fails.
    pub capacity: Option<usize>,
    /// With `poll`: items taken at each look (`None`: every due item).
    pub per_poll: Option<usize>,
    /// `list = "message:queue"`: on Redis, the queue is this plain list (the article's
    /// wire format: raw payloads, LPUSH in, RPOP out, no due times). `None`: a scheduled
    /// queue.
    pub list: Option<String>,
    /// `renamed_from`: the queue's former name; its items move here, keeping their due times.
    pub renamed_from: Option<String>,
}

/// `[relays.NAME]`: the master node, moving events from topics into a queue.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayConfig {
    pub file: usize,
    pub from: TopicPattern,
    pub to: String,
    pub delay: Option<Duration>,
    /// A Rhai expression over `event`; events for which it is false are not queued.
    pub filter: Option<String>,
    pub script: Option<ScriptSource>,
    /// `renamed_from`: the relay's former name; the events it had not relayed yet move here.
    pub renamed_from: Option<String>,
}

/// `[chains.NAME]`: a declared choreography.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainConfig {
    pub file: usize,
    pub steps: Vec<String>,
    pub timeout: Option<Duration>,
    pub on_timeout: Option<String>,
}

/// `[topics.NAME]`: optional per-topic settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicConfig {
    pub file: usize,
    pub mode: TopicMode,
    /// `mode` was written (else it is the default and `[flow] topic_mode` decides).
    pub mode_set: bool,
    pub kind: TopicKind,
    pub retention: Option<Duration>,
    /// Reply timeout for query topics.
    pub timeout: Option<Duration>,
    /// `schema`: the JSON Schema that the data of events ingested on this topic must match.
    pub schema: Option<TopicSchema>,
    /// `validate_emits`: handlers' emits on this topic are checked against `schema` too.
    pub validate_emits: bool,
    /// `shard`: on Redis with `--shards N`, the shard holding the topic (`shard % N`);
    /// `None` places it by the hash of its name.
    pub shard: Option<usize>,
}

/// A topic's event schema (`[topics.NAME] schema`), read and compiled once when the flows
/// load. Equality compares the path and the text, so an edited schema file is a change
/// and a touched-but-unchanged one is not.
#[derive(Clone)]
pub struct TopicSchema {
    /// Absolute (or flow-relative, joined) path of the schema file.
    pub path: PathBuf,
    /// The file's contents at load time.
    pub text: Arc<str>,
    /// The parsed document (for `edaflow asyncapi`).
    pub document: Arc<serde_json::Value>,
    /// The compiled validator.
    pub validator: Arc<jsonschema::Validator>,
}

impl PartialEq for TopicSchema {
    fn eq(&self, other: &TopicSchema) -> bool {
        self.path == other.path && self.text == other.text
    }
}

impl std::fmt::Debug for TopicSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicSchema")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Why an event's data does not match its topic's schema: the JSON pointer of the first
/// failing value (`""` for the data itself) and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaViolation {
    pub pointer: String,
    pub reason: String,
}

impl std::fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "(the data itself)"
        } else {
            &self.pointer
        };
        write!(f, "at {pointer}: {}", self.reason)
    }
}

impl TopicSchema {
    /// Checks `data`; the first violation, if any.
    pub fn check(&self, data: &serde_json::Value) -> Result<(), SchemaViolation> {
        match self.validator.iter_errors(data).next() {
            None => Ok(()),
            Some(error) => Err(SchemaViolation {
                pointer: error.instance_path().as_str().to_owned(),
                reason: error.masked().to_string(),
            }),
        }
    }
}

/// The topics with a schema, by name: what ingest and handlers' emits are checked against.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventSchemas {
    /// Every topic with a `schema` (checked at ingest).
    pub ingest: BTreeMap<String, TopicSchema>,
    /// The topics with `validate_emits = true` (checked when a handler emits).
    pub emits: BTreeMap<String, TopicSchema>,
}

impl FlowSet {
    /// The set's topic schemas, for the running generation.
    pub fn event_schemas(&self) -> EventSchemas {
        let mut schemas = EventSchemas::default();
        for (name, topic) in &self.topics {
            let Some(schema) = &topic.schema else {
                continue;
            };
            schemas.ingest.insert(name.clone(), schema.clone());
            if topic.validate_emits {
                schemas.emits.insert(name.clone(), schema.clone());
            }
        }
        schemas
    }
}

/// How a topic travels on Redis (the memory broker ignores it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TopicMode {
    /// A Redis stream of CloudEvents with consumer groups: durable, at least once.
    #[default]
    Stream,
    /// Plain PUBLISH/SUBSCRIBE on the channel named after the topic, carrying the raw JSON
    /// payload (the article's `eda` tool): fire-and-forget, nothing kept.
    Pubsub,
}

impl FlowSet {
    /// The mode a topic travels in: its own `[topics.NAME] mode`, else `[flow] topic_mode`.
    pub fn topic_mode(&self, topic: &str) -> TopicMode {
        match self.topics.get(topic) {
            Some(config) if config.mode_set => config.mode,
            _ => self.default_topic_mode(),
        }
    }

    /// `[flow] max_hops` of the first file that sets it, else `DEFAULT_MAX_HOPS`.
    pub fn max_hops(&self) -> u32 {
        self.files
            .iter()
            .find_map(|f| f.max_hops)
            .unwrap_or(DEFAULT_MAX_HOPS)
    }

    /// `[flow] topic_mode` of the first file that sets it, else `stream`.
    pub fn default_topic_mode(&self) -> TopicMode {
        self.files
            .iter()
            .find_map(|f| f.topic_mode)
            .unwrap_or_default()
    }
}

/// What a topic carries, for the CQRS lint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TopicKind {
    #[default]
    Event,
    Command,
    Query,
}

/// `[stores.NAME]`: state for projections and queries.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    pub file: usize,
    pub expose: bool,
}

/// One `[[tests]]` entry, run by `edaflow test`.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowTest {
    pub file: usize,
    pub name: String,
    pub steps: Vec<TestStep>,
    /// Each expected event: the topic must match and `data` must contain these fields.
    pub expect: Vec<ExpectedEvent>,
}

/// One action of a test, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum TestStep {
    /// `publish = { topic, data }` (or an element of `publish = [ … ]`).
    Publish {
        topic: String,
        data: serde_json::Value,
    },
    /// `advance = "10s"`: move virtual time forward.
    Advance(Duration),
}

/// An entry of `expect`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectedEvent {
    pub topic: String,
    /// `handled_by = "worker"`: the event must also have been handled successfully by
    /// this subscriber (not just emitted or queued).
    pub handled_by: Option<String>,
    /// A subset: every field given must be present and equal (recursively for objects).
    pub data: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
            jitter: true,
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = policy();
        let delays: Vec<_> = (1..=4).map(|a| p.delay_after(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 250, 250]);
    }

    #[test]
    fn equal_jitter_waits_between_half_the_backoff_and_all_of_it() {
        let p = policy();
        for attempt in 1..=4 {
            let ceiling = p.delay_after(attempt);
            assert_eq!(p.jittered_delay_after(attempt, 0.0), ceiling / 2);
            assert_eq!(p.jittered_delay_after(attempt, 1.0), ceiling);
            assert_eq!(
                p.jittered_delay_after(attempt, 0.5),
                ceiling / 2 + (ceiling - ceiling / 2) / 2
            );
            // Out-of-range randomness cannot leave the bounds.
            assert_eq!(p.jittered_delay_after(attempt, -3.0), ceiling / 2);
            assert_eq!(p.jittered_delay_after(attempt, 7.0), ceiling);
            let exact = RetryPolicy { jitter: false, ..p };
            assert_eq!(exact.jittered_delay_after(attempt, 0.0), ceiling);
            for _ in 0..100 {
                let d = p.jittered_delay_after(attempt, fastrand::f64());
                assert!(d >= ceiling / 2 && d <= ceiling, "{attempt}: {d:?}");
            }
        }
    }
}
