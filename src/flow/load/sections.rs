//! The flow-file schema: one function per section (`[flow]`, `[producers.NAME]`, …,
//! `[[tests]]`) that reads its table into model types, reporting every problem it sees.
//!
//! Checks that need more than one file (duplicate names, queue references, topic warnings)
//! are not made here: the references are recorded in `Findings::refs` for `check`.

use std::time::Duration;

use crate::flow::load::toml_tree::{
    self, Key, Span, Spanned, SyntaxError, Table, Value, ValueInner,
};

use crate::flow::diagnostic::{FlowError, Suggestion};
use crate::flow::load::fields::Fields;
use crate::flow::load::findings::{Findings, Located};
use crate::flow::load::reader::{EnvLookup, FlowSource, Reader};
use crate::flow::model::{
    ApiToken, ChainConfig, ExpectedEvent, FlowFile, FlowTest, GeneratorProducer, HttpProducer,
    IntervalProducer, LinesProducer, ProducerConfig, ProducerKind, QueueConfig, RelayConfig,
    RetryPolicy, StoreConfig, SubscriberConfig, SubscriberInput, TestStep, TopicConfig, TopicKind,
    TopicMode,
};
use crate::pattern::validate_topic;

/// The top-level keys of a flow file.
pub(crate) const SECTIONS: &[&str] = &[
    "flow",
    "producers",
    "subscribers",
    "queues",
    "relays",
    "chains",
    "topics",
    "stores",
    "tests",
];

pub(crate) const FLOW_KEYS: &[&str] =
    &["name", "broker", "deferred_topic", "topic_mode", "max_hops"];
pub(crate) const PRODUCER_KINDS: &[&str] = &["http", "interval", "lines", "generator"];
pub(crate) const HTTP_KEYS: &[&str] = &[
    "kind",
    "role",
    "listen",
    "token",
    "body_limit",
    "header_timeout",
    "body_timeout",
    "idle_timeout",
    "max_connections",
];
pub(crate) const INTERVAL_KEYS: &[&str] = &["kind", "role", "every", "topic", "data", "script"];
pub(crate) const LINES_KEYS: &[&str] = &["kind", "role", "path", "topic"];
pub(crate) const GENERATOR_KEYS: &[&str] = &["kind", "role", "topic", "count", "data"];
pub(crate) const SUBSCRIBER_INPUTS: &[&str] = &["topic", "topics", "queue"];
pub(crate) const SUBSCRIBER_KEYS: &[&str] = &[
    "topic",
    "topics",
    "queue",
    "script",
    "emits",
    "concurrency",
    "retry",
    "dead_letter",
    "group",
    "role",
    "renamed_from",
];
pub(crate) const RETRY_KEYS: &[&str] = &["attempts", "backoff", "max_backoff", "jitter"];
pub(crate) const QUEUE_KEYS: &[&str] = &[
    "delay",
    "poll",
    "capacity",
    "per_poll",
    "list",
    "renamed_from",
];
pub(crate) const RELAY_KEYS: &[&str] = &["from", "to", "delay", "filter", "script", "renamed_from"];
pub(crate) const CHAIN_KEYS: &[&str] = &["steps", "timeout", "on_timeout"];
pub(crate) const TOPIC_KEYS: &[&str] = &[
    "mode",
    "kind",
    "retention",
    "timeout",
    "schema",
    "validate_emits",
    "shard",
];
pub(crate) const STORE_KEYS: &[&str] = &["expose"];
pub(crate) const TEST_KEYS: &[&str] = &["name", "publish", "advance", "expect"];
pub(crate) const PUBLISH_KEYS: &[&str] = &["topic", "data"];
pub(crate) const EXPECT_KEYS: &[&str] = &["topic", "data", "handled_by"];

/// A named component as declared: the name (for duplicate checks) and its configuration,
/// `None` when the table had errors (already reported).
pub(super) struct Component<T> {
    pub name: Located<String>,
    pub config: Option<T>,
}

/// One flow file, read but not yet merged with the others.
pub(super) struct RawFlowFile {
    pub flow: FlowFile,
    pub producers: Vec<Component<ProducerConfig>>,
    pub subscribers: Vec<Component<SubscriberConfig>>,
    pub queues: Vec<Component<QueueConfig>>,
    pub relays: Vec<Component<RelayConfig>>,
    pub chains: Vec<Component<ChainConfig>>,
    pub topics: Vec<Component<TopicConfig>>,
    pub stores: Vec<Component<StoreConfig>>,
    pub tests: Vec<FlowTest>,
}

/// Parses one flow file's text, recording every problem in `found`.
pub(super) fn parse_file(
    file: &FlowSource,
    found: &mut Findings,
    env: EnvLookup<'_>,
) -> RawFlowFile {
    let stem = file
        .shown
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut raw = RawFlowFile {
        flow: FlowFile {
            name: stem,
            path: file.absolute.clone(),
            broker: None,
            deferred_topic: None,
            topic_mode: None,
            max_hops: None,
        },
        producers: Vec::new(),
        subscribers: Vec::new(),
        queues: Vec::new(),
        relays: Vec::new(),
        chains: Vec::new(),
        topics: Vec::new(),
        stores: Vec::new(),
        tests: Vec::new(),
    };
    let mut r = Reader { file, found, env };
    let table = match toml_tree::parse(&file.text) {
        Ok(table) => table,
        Err(errors) => {
            for error in errors {
                report_syntax(&mut r, error);
            }
            return raw;
        }
    };
    let file_name = file.shown.display().to_string();
    let mut root = Fields::new(file_name, Span::new(0, 0), table);

    if let Some(value) = root.take("flow") {
        if let Some(fields) = r.table("flow".into(), None, value) {
            read_flow(&mut r, fields, &mut raw.flow);
        }
    }
    raw.producers = section(&mut r, &mut root, "producers", producer);
    raw.subscribers = section(&mut r, &mut root, "subscribers", subscriber);
    raw.queues = section(&mut r, &mut root, "queues", queue);
    raw.relays = section(&mut r, &mut root, "relays", relay);
    raw.chains = section(&mut r, &mut root, "chains", chain);
    raw.topics = section(&mut r, &mut root, "topics", topic);
    raw.stores = section(&mut r, &mut root, "stores", store);
    if let Some(value) = root.take("tests") {
        raw.tests = tests(&mut r, value);
    }
    root.finish(&mut r, SECTIONS);
    raw
}

/// Reports a TOML syntax error, with a second label on the first definition of a duplicate.
fn report_syntax(r: &mut Reader<'_>, error: SyntaxError) {
    let first = error.first.map(|at| r.span(at));
    let SyntaxError {
        message,
        span: at,
        label,
        ..
    } = error;
    r.report(at, |src, span| FlowError::Syntax {
        reason: message,
        src,
        span,
        label,
        first,
    });
}

/// `[flow]`.
fn read_flow(r: &mut Reader<'_>, mut f: Fields<'_>, flow: &mut FlowFile) {
    if let Some(name) = f.take("name").and_then(|v| r.string("name", v)) {
        flow.name = name.value;
    }
    flow.broker = f
        .take("broker")
        .and_then(|v| r.expanded("broker", v))
        .map(|s| s.value.into());
    if let Some(topic) = f
        .take("deferred_topic")
        .and_then(|v| r.topic("deferred_topic", v))
    {
        r.found.refs.produced_quietly.push(topic.value.clone());
        flow.deferred_topic = Some(topic.value);
    }
    flow.topic_mode = f
        .take("topic_mode")
        .and_then(|v| r.choice("topic_mode", v, &["stream", "pubsub"]))
        .map(|mode| match mode {
            "pubsub" => TopicMode::Pubsub,
            _ => TopicMode::Stream,
        });
    flow.max_hops = f
        .take("max_hops")
        .and_then(|v| r.at_least::<u32>("max_hops", v, 1));
    f.finish(r, FLOW_KEYS);
}

/// A section of named components (`[producers.NAME]`, …): checks each name and reads each
/// table with `build`.
fn section<'de, T>(
    r: &mut Reader<'_>,
    root: &mut Fields<'de>,
    section: &'static str,
    build: fn(&mut Reader<'_>, &str, Fields<'de>) -> Option<T>,
) -> Vec<Component<T>> {
    let Some(value) = root.take(section) else {
        return Vec::new();
    };
    let Some(fields) = r.table(section.into(), None, value) else {
        return Vec::new();
    };
    let mut components = Vec::new();
    for (key, value) in fields.into_entries() {
        let name = key.name.into_owned();
        check_name(r, section, &name, key.span);
        let config = r
            .table(format!("{section}.{name}"), Some(key.span), value)
            .and_then(|fields| build(r, &name, fields));
        components.push(Component {
            name: r.locate(name, key.span),
            config,
        });
    }
    components
}

/// Component names end up in topic names (`dead.<name>`) and broker keys, so they follow the
/// topic-name rules; a `[topics.NAME]` name *is* a topic name.
fn check_name(r: &mut Reader<'_>, section: &'static str, name: &str, at: Span) {
    let Err(reason) = validate_topic(name) else {
        return;
    };
    let name = name.to_owned();
    if section == "topics" {
        r.report(at, |src, span| FlowError::InvalidTopic {
            topic: name,
            reason,
            src,
            span,
        });
    } else {
        r.report(at, |src, span| FlowError::InvalidName {
            section,
            name,
            reason,
            src,
            span,
        });
    }
}

/// `[producers.NAME]`.
fn producer(r: &mut Reader<'_>, _name: &str, mut f: Fields<'_>) -> Option<ProducerConfig> {
    let role = f
        .take("role")
        .and_then(|v| r.string("role", v))
        .map(|s| s.value);
    let Some(kind) = f.take("kind") else {
        r.missing(
            &f,
            "kind",
            Some("a producer's kind is one of http, interval, lines or generator"),
        );
        return None;
    };
    let kind = r.string("kind", kind)?;
    let (kind, known) = match kind.value.as_str() {
        "http" => (http(r, &mut f).map(ProducerKind::Http), HTTP_KEYS),
        "interval" => (
            interval(r, &mut f).map(ProducerKind::Interval),
            INTERVAL_KEYS,
        ),
        "lines" => (lines(r, &mut f).map(ProducerKind::Lines), LINES_KEYS),
        "generator" => (
            generator(r, &mut f).map(ProducerKind::Generator),
            GENERATOR_KEYS,
        ),
        _ => {
            let help = Box::new(Suggestion::new("kind", &kind.value, PRODUCER_KINDS));
            r.report(kind.span, |src, span| FlowError::UnknownProducerKind {
                kind: kind.value,
                help,
                src,
                span,
            });
            // Without a kind the other keys cannot be judged; they are not reported.
            return None;
        }
    };
    f.finish(r, known);
    Some(ProducerConfig {
        file: r.file.index,
        role,
        kind: kind?,
    })
}

fn http(r: &mut Reader<'_>, f: &mut Fields<'_>) -> Option<HttpProducer> {
    r.found.refs.has_http = true;
    let defaults = HttpProducer::default();
    let listen = f.take("listen").and_then(|v| r.expanded("listen", v));
    let token = f
        .take("token")
        .and_then(|v| r.expanded("token", v))
        .and_then(|text| match ApiToken::new(text.value) {
            Ok(token) => Some(token),
            Err(reason) => {
                r.report(text.span, |src, span| FlowError::InvalidToken {
                    reason,
                    src,
                    span,
                });
                None
            }
        });
    let body_limit = f.take("body_limit").and_then(|v| r.size("body_limit", v));
    let mut timeout = |key: &'static str, default: &'static str| {
        f.take(key)
            .and_then(|v| r.positive_duration(key, v, default))
    };
    let header_timeout = timeout("header_timeout", "10s");
    let body_timeout = timeout("body_timeout", "30s");
    let idle_timeout = timeout("idle_timeout", "60s");
    let max_connections = f
        .take("max_connections")
        .and_then(|v| r.at_least::<usize>("max_connections", v, 1));
    Some(HttpProducer {
        listen: listen.map_or(defaults.listen, |s| s.value),
        token,
        body_limit: body_limit.unwrap_or(defaults.body_limit),
        header_timeout: header_timeout.unwrap_or(defaults.header_timeout),
        body_timeout: body_timeout.unwrap_or(defaults.body_timeout),
        idle_timeout: idle_timeout.unwrap_or(defaults.idle_timeout),
        max_connections: max_connections.unwrap_or(defaults.max_connections),
    })
}

fn interval(r: &mut Reader<'_>, f: &mut Fields<'_>) -> Option<IntervalProducer> {
    if !f.has("topic") && !f.has("script") {
        let table = f.path.clone();
        r.report(f.at, |src, span| FlowError::MissingOneOf {
            keys: &["topic", "script"],
            table,
            help: Some("an interval producer publishes a fixed event to `topic`, or runs a `script` that emits"),
            src,
            span,
        });
    }
    let every = r.required(f, "every").and_then(|v| r.duration("every", v));
    let topic = f.take("topic").and_then(|v| r.topic("topic", v));
    let data = f.take("data").and_then(|v| r.json("data", v));
    let script = f.take("script").and_then(|v| r.script("script", v));
    if let Some(topic) = &topic {
        emitted(r, topic);
    }
    Some(IntervalProducer {
        every: every?,
        topic: topic.map(|t| t.value),
        data: data.unwrap_or_else(empty_object),
        script,
    })
}

fn lines(r: &mut Reader<'_>, f: &mut Fields<'_>) -> Option<LinesProducer> {
    let path = r.required(f, "path").and_then(|v| r.expanded("path", v));
    let topic = r.required(f, "topic").and_then(|v| r.topic("topic", v));
    if let Some(topic) = &topic {
        emitted(r, topic);
    }
    let path = path?;
    Some(LinesProducer {
        path: (path.value != "-").then(|| r.file.dir_absolute().join(&path.value)),
        topic: topic?.value,
    })
}

fn generator(r: &mut Reader<'_>, f: &mut Fields<'_>) -> Option<GeneratorProducer> {
    let topic = r.required(f, "topic").and_then(|v| r.topic("topic", v));
    let count = r
        .required(f, "count")
        .and_then(|v| r.at_least::<u64>("count", v, 0));
    let data = f.take("data").and_then(|v| r.json("data", v));
    if let Some(topic) = &topic {
        emitted(r, topic);
    }
    Some(GeneratorProducer {
        topic: topic?.value,
        count: count?,
        data: data.unwrap_or_else(empty_object),
    })
}

/// `[subscribers.NAME]`.
fn subscriber(r: &mut Reader<'_>, name: &str, mut f: Fields<'_>) -> Option<SubscriberConfig> {
    let before = r.found.refs.consumed.len();
    let input = subscriber_input(r, &mut f);
    let mine: Vec<_> = r.found.refs.consumed[before..]
        .iter()
        .map(|p| (name.to_owned(), p.clone()))
        .collect();
    r.found.refs.subscriber_patterns.extend(mine);
    let script = f.take("script").and_then(|v| r.script("script", v));
    let emits = f.take("emits").and_then(|v| r.topics("emits", v));
    for topic in emits.iter().flatten() {
        emitted(r, topic);
        let located = r.locate(topic.value.clone(), topic.span);
        r.found
            .refs
            .subscriber_emits
            .push((name.to_owned(), located));
    }
    let concurrency = f
        .take("concurrency")
        .and_then(|v| r.at_least::<usize>("concurrency", v, 1));
    let retry = f
        .take("retry")
        .and_then(|v| r.table(format!("{}.retry", f.path), None, v))
        .map(|fields| retry(r, fields));
    let dead_letter = f
        .take("dead_letter")
        .and_then(|v| r.topic("dead_letter", v));
    let dead_letter = dead_letter.map_or_else(|| format!("dead.{name}"), |t| t.value);
    r.found.refs.produced_quietly.push(dead_letter.clone());
    let group = f.take("group").and_then(|v| r.string("group", v));
    let role = f.take("role").and_then(|v| r.string("role", v));
    let renamed_from = renamed_from(r, "subscribers", name, &mut f);
    f.finish(r, SUBSCRIBER_KEYS);
    Some(SubscriberConfig {
        file: r.file.index,
        input: input?,
        script,
        emits: emits
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.value)
            .collect(),
        concurrency: concurrency.unwrap_or(1),
        retry: retry.unwrap_or_default(),
        dead_letter,
        group: group.map_or_else(|| name.to_owned(), |g| g.value),
        role: role.map(|s| s.value),
        renamed_from,
    })
}

/// Exactly one of `topic`, `topics` and `queue`.
fn subscriber_input(r: &mut Reader<'_>, f: &mut Fields<'_>) -> Option<SubscriberInput> {
    let mut given: Vec<(&'static str, Span, Value<'_>)> = SUBSCRIBER_INPUTS
        .iter()
        .filter_map(|key| f.take_entry(key).map(|(k, v)| (*key, k.span, v)))
        .collect();
    given.sort_by_key(|(_, at, _)| at.start);
    if given.len() > 1 {
        let (first, first_at, _) = given[0];
        for (second, at, _) in &given[1..] {
            let table = f.path.clone();
            let first_span = r.span(first_at);
            r.report(*at, |src, span| FlowError::ConflictingKeys {
                first,
                second,
                table,
                help: Some("a subscriber reads one topic (`topic`), a list of topic patterns (`topics`) or one deferred queue (`queue`): keep one"),
                src,
                span,
                first_span,
            });
        }
        return None;
    }
    let Some((key, _, value)) = given.pop() else {
        let table = f.path.clone();
        r.report(f.at, |src, span| FlowError::MissingOneOf {
            keys: SUBSCRIBER_INPUTS,
            table,
            help: Some("a subscriber reads a topic (`topic = \"orderCreated\"`), topic patterns (`topics = [\"order.*\"]`) or a deferred queue (`queue = \"tasks\"`)"),
            src,
            span,
        });
        return None;
    };
    match key {
        "queue" => {
            let queue = r.string("queue", value)?;
            let used = r.locate(queue.value.clone(), queue.span);
            r.found.refs.queues_used.push(used);
            Some(SubscriberInput::Queue(queue.value))
        }
        "topic" => {
            let pattern = r.pattern("topic", value)?;
            consumed(r, &pattern);
            Some(SubscriberInput::Topics(vec![pattern.value]))
        }
        _ => {
            let at = value.span;
            let items = r.array("topics", value)?;
            if items.is_empty() {
                r.report(at, |src, span| FlowError::WrongType {
                    key: "topics".into(),
                    expected: "a non-empty array of topic patterns",
                    found: "an empty array",
                    src,
                    span,
                });
                return None;
            }
            let n = items.len();
            let mut patterns = Vec::with_capacity(n);
            for (i, item) in items.into_iter().enumerate() {
                if let Some(pattern) = r.pattern(&format!("topics[{i}]"), item) {
                    consumed(r, &pattern);
                    patterns.push(pattern.value);
                }
            }
            (patterns.len() == n).then_some(SubscriberInput::Topics(patterns))
        }
    }
}

/// `retry = { attempts, backoff, max_backoff, jitter }`; absent keys take the defaults.
fn retry(r: &mut Reader<'_>, mut f: Fields<'_>) -> RetryPolicy {
    let defaults = RetryPolicy::default();
    let attempts = f
        .take("attempts")
        .and_then(|v| r.at_least::<u32>("attempts", v, 1));
    let backoff = f.take("backoff").and_then(|v| r.duration("backoff", v));
    let max_backoff = f
        .take("max_backoff")
        .and_then(|v| r.duration("max_backoff", v));
    let jitter = f.take("jitter").and_then(|v| r.boolean("jitter", v));
    f.finish(r, RETRY_KEYS);
    RetryPolicy {
        attempts: attempts.unwrap_or(defaults.attempts),
        backoff: backoff.unwrap_or(defaults.backoff),
        max_backoff: max_backoff.unwrap_or(defaults.max_backoff),
        jitter: jitter.unwrap_or(defaults.jitter),
    }
}

/// `[queues.NAME]`.
fn queue(r: &mut Reader<'_>, name: &str, mut f: Fields<'_>) -> Option<QueueConfig> {
    let delay = f.take("delay").and_then(|v| r.duration("delay", v));
    let poll = f.take("poll").and_then(|v| r.duration("poll", v));
    let capacity = f
        .take("capacity")
        .and_then(|v| r.at_least::<usize>("capacity", v, 1));
    let per_poll = f
        .take("per_poll")
        .and_then(|v| r.at_least::<usize>("per_poll", v, 1));
    let list = f
        .take("list")
        .and_then(|v| r.string("list", v))
        .map(|s| s.value);
    let renamed_from = renamed_from(r, "queues", name, &mut f);
    f.finish(r, QUEUE_KEYS);
    Some(QueueConfig {
        file: r.file.index,
        delay: delay.unwrap_or(Duration::ZERO),
        poll,
        capacity,
        per_poll,
        list,
        renamed_from,
    })
}

/// `[relays.NAME]`.
fn relay(r: &mut Reader<'_>, name: &str, mut f: Fields<'_>) -> Option<RelayConfig> {
    let from = r
        .required(&mut f, "from")
        .and_then(|v| r.pattern("from", v));
    if let Some(from) = &from {
        consumed(r, from);
    }
    let to = r.required(&mut f, "to").and_then(|v| r.string("to", v));
    if let Some(to) = &to {
        let used = r.locate(to.value.clone(), to.span);
        r.found.refs.queues_used.push(used);
    }
    let delay = f.take("delay").and_then(|v| r.duration("delay", v));
    let filter = f.take("filter").and_then(|v| r.string("filter", v));
    let script = f.take("script").and_then(|v| r.script("script", v));
    let renamed_from = renamed_from(r, "relays", name, &mut f);
    f.finish(r, RELAY_KEYS);
    Some(RelayConfig {
        file: r.file.index,
        from: from?.value,
        to: to?.value,
        delay,
        filter: filter.map(|s| s.value),
        script,
        renamed_from,
    })
}

/// `renamed_from = "old"` of a subscriber, queue or relay, kept for the check across files
/// (the old name must be gone, and claimed once).
fn renamed_from(
    r: &mut Reader<'_>,
    section: &'static str,
    name: &str,
    f: &mut Fields<'_>,
) -> Option<String> {
    let old = f
        .take("renamed_from")
        .and_then(|v| r.string("renamed_from", v))?;
    let located = r.locate(old.value.clone(), old.span);
    r.found
        .refs
        .renames
        .push((section, name.to_owned(), located));
    Some(old.value)
}

/// `[chains.NAME]`.
fn chain(r: &mut Reader<'_>, name: &str, mut f: Fields<'_>) -> Option<ChainConfig> {
    let steps = r.required(&mut f, "steps").and_then(|v| {
        let at = v.span;
        let steps = r.topics("steps", v)?;
        for (i, step) in steps.iter().enumerate() {
            let located = r.locate(step.value.clone(), step.span);
            r.found.refs.chain_steps.push((name.to_owned(), i, located));
        }
        if steps.len() < 2 {
            let chain = name.to_owned();
            let n = steps.len();
            r.report(at, |src, span| FlowError::ChainTooShort {
                chain,
                steps: n,
                src,
                span,
            });
            return None;
        }
        Some(steps)
    });
    let timeout = f.take("timeout").and_then(|v| r.duration("timeout", v));
    let on_timeout = f.take("on_timeout").and_then(|v| r.topic("on_timeout", v));
    if let Some(topic) = &on_timeout {
        emitted(r, topic);
    }
    f.finish(r, CHAIN_KEYS);
    Some(ChainConfig {
        file: r.file.index,
        steps: steps?.into_iter().map(|s| s.value).collect(),
        timeout,
        on_timeout: on_timeout.map(|t| t.value),
    })
}

/// `[topics.NAME]`.
fn topic(r: &mut Reader<'_>, name: &str, mut f: Fields<'_>) -> Option<TopicConfig> {
    let had_schema = f.has("schema");
    let mode = f
        .take("mode")
        .and_then(|v| r.choice("mode", v, &["stream", "pubsub"]));
    let kind = f
        .take("kind")
        .and_then(|v| r.choice("kind", v, &["event", "command", "query"]));
    let retention = f.take("retention").and_then(|v| r.duration("retention", v));
    let timeout = f.take("timeout").and_then(|v| r.duration("timeout", v));
    let schema = f.take("schema").and_then(|v| r.event_schema("schema", v));
    let validate_emits = match f.take_entry("validate_emits") {
        None => false,
        Some((key, value)) => {
            let on = r.boolean("validate_emits", value).unwrap_or(false);
            if on && !had_schema {
                let table = f.path.clone();
                r.report(key.span, |src, span| FlowError::MissingOneOf {
                    keys: &["schema"],
                    table,
                    help: Some("`validate_emits` checks handlers' emits against the topic's `schema`: add one"),
                    src,
                    span,
                });
            }
            on
        }
    };
    let shard = f
        .take("shard")
        .and_then(|v| r.at_least::<usize>("shard", v, 0));
    let f = unquoted_topic_names(r, name, f);
    f.finish(r, TOPIC_KEYS);
    Some(TopicConfig {
        file: r.file.index,
        mode: match mode {
            Some("pubsub") => TopicMode::Pubsub,
            _ => TopicMode::Stream,
        },
        mode_set: mode.is_some(),
        kind: match kind {
            Some("command") => TopicKind::Command,
            Some("query") => TopicKind::Query,
            _ => TopicKind::Event,
        },
        retention,
        timeout,
        schema,
        validate_emits,
        shard,
    })
}

/// `[topics.orders.created]` is TOML for a table `orders` holding a table `created`: a
/// sub-table in a topic's settings is a topic name that needed quotes. Reports those and
/// returns the other keys.
fn unquoted_topic_names<'de>(r: &mut Reader<'_>, name: &str, f: Fields<'de>) -> Fields<'de> {
    let Fields { path, at, .. } = &f;
    let mut rest = Fields::new(path.clone(), *at, Default::default());
    for (key, value) in f.into_entries() {
        if value.as_table().is_none() {
            rest.put(key, value);
            continue;
        }
        let mut dotted = format!("{name}.{}", key.name);
        let mut inner = &value;
        // Follow `a.b.c` down while each level holds a single sub-table.
        while let Some((next, next_value)) = inner.as_table().and_then(single_subtable) {
            dotted = format!("{dotted}.{}", next.name);
            inner = next_value;
        }
        r.report(key.span, |src, span| FlowError::UnquotedTopicName {
            name: dotted,
            src,
            span,
        });
    }
    rest
}

/// The only entry of a table, when it is itself a table.
fn single_subtable<'t, 'de>(table: &'t Table<'de>) -> Option<(&'t Key<'de>, &'t Value<'de>)> {
    let mut entries = table.iter();
    match (entries.next(), entries.next()) {
        (Some((key, value)), None) if value.as_table().is_some() => Some((key, value)),
        _ => None,
    }
}

/// `[stores.NAME]`.
fn store(r: &mut Reader<'_>, _name: &str, mut f: Fields<'_>) -> Option<StoreConfig> {
    let expose = f.take("expose").and_then(|v| r.boolean("expose", v));
    f.finish(r, STORE_KEYS);
    Some(StoreConfig {
        file: r.file.index,
        expose: expose.unwrap_or(false),
    })
}

/// `[[tests]]`: an array of tables.
fn tests(r: &mut Reader<'_>, mut value: Value<'_>) -> Vec<FlowTest> {
    let at = value.span;
    let items = match value.take() {
        ValueInner::Array(items) => items,
        other => {
            let found = other.type_str();
            r.report(r.first_line(at), |src, span| FlowError::WrongType {
                key: "tests".into(),
                expected: "an array of tables (`[[tests]]`)",
                found,
                src,
                span,
            });
            return Vec::new();
        }
    };
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let fields = r.table(format!("tests[{i}]"), None, item)?;
            test(r, fields)
        })
        .collect()
}

/// One `[[tests]]` entry: its publishes in order, then the `advance`, if any.
fn test(r: &mut Reader<'_>, mut f: Fields<'_>) -> Option<FlowTest> {
    let name = r.required(&mut f, "name").and_then(|v| r.string("name", v));
    let publish_path = format!("{}.publish", f.path);
    let publishes = f.take("publish").and_then(|v| {
        let at = v.span;
        if v.as_array().is_some() {
            let items = r.array("publish", v)?;
            let n = items.len();
            let steps: Vec<_> = items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| publish(r, format!("{publish_path}[{i}]"), item))
                .collect();
            (steps.len() == n).then_some(steps)
        } else if v.as_table().is_some() {
            publish(r, publish_path, v).map(|step| vec![step])
        } else {
            let found = v.as_ref().type_str();
            r.report(at, |src, span| FlowError::WrongType {
                key: "publish".into(),
                expected: "a table or an array of tables",
                found,
                src,
                span,
            });
            None
        }
    });
    let advance = f.take("advance").and_then(|v| r.duration("advance", v));
    let expect_path = format!("{}.expect", f.path);
    let expect = f.take("expect").and_then(|v| {
        let items = r.array("expect", v)?;
        let n = items.len();
        let expected: Vec<_> = items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| expected(r, format!("{expect_path}[{i}]"), item))
            .collect();
        (expected.len() == n).then_some(expected)
    });
    f.finish(r, TEST_KEYS);
    let mut steps = publishes.unwrap_or_default();
    steps.extend(advance.map(TestStep::Advance));
    Some(FlowTest {
        file: r.file.index,
        name: name?.value,
        steps,
        expect: expect.unwrap_or_default(),
    })
}

/// `{ topic, data }` of a test's `publish`.
fn publish(r: &mut Reader<'_>, path: String, value: Value<'_>) -> Option<TestStep> {
    let mut f = r.table(path, None, value)?;
    let topic = r
        .required(&mut f, "topic")
        .and_then(|v| r.topic("topic", v));
    let data = f.take("data").and_then(|v| r.json("data", v));
    f.finish(r, PUBLISH_KEYS);
    Some(TestStep::Publish {
        topic: topic?.value,
        data: data.unwrap_or_else(empty_object),
    })
}

/// `{ topic, data?, handled_by? }` of a test's `expect`.
fn expected(r: &mut Reader<'_>, path: String, value: Value<'_>) -> Option<ExpectedEvent> {
    let mut f = r.table(path, None, value)?;
    let topic = r
        .required(&mut f, "topic")
        .and_then(|v| r.topic("topic", v));
    let data = f.take("data").and_then(|v| r.json("data", v));
    let handled_by = f
        .take("handled_by")
        .and_then(|v| r.string("handled_by", v))
        .map(|s| s.value);
    f.finish(r, EXPECT_KEYS);
    Some(ExpectedEvent {
        topic: topic?.value,
        handled_by,
        data,
    })
}

/// Records a topic that something emits (checked later for a consumer).
fn emitted(r: &mut Reader<'_>, topic: &Spanned<String>) {
    let located = r.locate(topic.value.clone(), topic.span);
    r.found.refs.emitted.push(located);
}

/// Records a pattern that something consumes.
fn consumed(r: &mut Reader<'_>, pattern: &Spanned<crate::pattern::TopicPattern>) {
    let located = r.locate(pattern.value.clone(), pattern.span);
    r.found.refs.consumed.push(located);
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}
