//! The JSON Schema of flow files (`edaflow schema`, committed as `docs/flow.schema.json`):
//! what editors (Taplo, Even Better TOML) use for completion, hover text and checks while
//! a flow is typed.
//!
//! It is written in draft-07 with keywords that draft-04 also knows (no `const`, no
//! `if`/`then`, `definitions` rather than `$defs`), since Taplo's validator is the oldest
//! reader it has. The loader (`flow::load`) stays the judge: the schema describes the same
//! tables and keys, and its tests check that it names exactly the keys the loader's lists
//! hold (and the loader checks, in debug builds, that it reads no key its lists lack).

use serde_json::{json, Map, Value};

/// Where the committed copy lives, relative to the repository.
pub const COMMITTED_PATH: &str = "docs/flow.schema.json";

/// A duration string as `crate::duration` parses it.
const DURATION_PATTERN: &str = r"^\s*([0-9.]+\s*(ms|s|m|h|d)\s*)+$";

/// The schema, as pretty JSON with a final newline (what `edaflow schema` prints).
pub fn flow_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&flow_schema()).expect("a JSON value serializes");
    text.push('\n');
    text
}

/// The flow-file schema.
pub fn flow_schema() -> Value {
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://github.com/edaflow/edaflow/blob/main/docs/flow.schema.json",
        "title": "edaflow flow file",
        "description": "A flow file: producers create events, subscribers run Rhai handlers on them, queues defer work, relays move events into queues, chains declare choreographies. Reference: docs/flow-files.md.",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "flow": flow(),
            "producers": named("Producers: what creates events from outside the flow, one table per producer (`[producers.NAME]`).", json!({"$ref": "#/definitions/producer"})),
            "subscribers": named("Subscribers: groups of competing workers running one handler on a topic, topic patterns or a queue (`[subscribers.NAME]`).", json!({"$ref": "#/definitions/subscriber"})),
            "queues": named("Deferred work queues (`[queues.NAME]`).", json!({"$ref": "#/definitions/queue"})),
            "relays": named("Relays: move events from topics into a queue, optionally filtered or transformed (`[relays.NAME]`).", json!({"$ref": "#/definitions/relay"})),
            "chains": named("Declared choreographies: steps a journey must pass, with a timeout (`[chains.NAME]`).", json!({"$ref": "#/definitions/chain"})),
            "topics": named("Optional per-topic settings (`[topics.NAME]`); dotted names need quotes: `[topics.\"orders.created\"]`.", json!({"$ref": "#/definitions/topic"})),
            "stores": named("State stores for projections and queries (`[stores.NAME]`).", json!({"$ref": "#/definitions/store"})),
            "tests": {
                "description": "Flow tests run by `edaflow test`: publish events, move virtual time, expect events (`[[tests]]`).",
                "type": "array",
                "items": {"$ref": "#/definitions/test"}
            }
        },
        "definitions": definitions()
    })
}

/// A table of named components: any name, each value `item`.
fn named(description: &str, item: Value) -> Value {
    json!({
        "description": description,
        "type": "object",
        "additionalProperties": item
    })
}

fn string(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

fn duration(description: &str) -> Value {
    json!({"type": "string", "pattern": DURATION_PATTERN, "description": description})
}

fn duration_default(description: &str, default: &str) -> Value {
    let mut value = duration(description);
    value["default"] = json!(default);
    value
}

fn integer(description: &str, minimum: u64) -> Value {
    json!({"type": "integer", "minimum": minimum, "description": description})
}

fn topic(description: &str) -> Value {
    json!({"type": "string", "minLength": 1, "description": description})
}

fn topic_list(description: &str) -> Value {
    json!({"type": "array", "items": {"type": "string", "minLength": 1}, "description": description})
}

fn any_data(description: &str) -> Value {
    json!({"description": description, "default": {}})
}

fn object(description: &str, required: &[&str], properties: Value) -> Value {
    let mut value = json!({
        "type": "object",
        "description": description,
        "additionalProperties": false,
        "properties": properties
    });
    if !required.is_empty() {
        value["required"] = json!(required);
    }
    value
}

fn flow() -> Value {
    object(
        "The flow's own settings.",
        &[],
        json!({
            "name": string("The flow's name, used in event sources (`edaflow://NAME/producer`). Default: the file's stem."),
            "broker": string("Broker URL: `memory` (default) or `redis://host:6379/0` (`rediss://` for TLS). Process-level: read at start. May hold `${VAR}` references."),
            "deferred_topic": {"type": "string", "minLength": 1, "default": "master", "description": "Where `POST /deferred-exec` publishes."},
            "topic_mode": {"type": "string", "enum": ["stream", "pubsub"], "default": "stream", "description": "Redis only: the mode of every topic without a `[topics.NAME] mode` of its own. `stream`: a Redis stream with consumer groups (durable); `pubsub`: plain PUBLISH/SUBSCRIBE (the article's wire format). The whole set's, from the first file that sets it."},
            "max_hops": {"type": "integer", "minimum": 1, "default": crate::flow::model::DEFAULT_MAX_HOPS, "description": "How many events a journey may chain (by causation) before a handler's emits are refused and its event dead-lettered: the end of an emit loop. The whole set's, from the first file that sets it."}
        }),
    )
}

fn definitions() -> Value {
    let mut defs = Map::new();
    defs.insert("producer".into(), producer());
    defs.insert("subscriber".into(), subscriber());
    defs.insert("retry".into(), retry());
    defs.insert("queue".into(), queue());
    defs.insert("relay".into(), relay());
    defs.insert("chain".into(), chain());
    defs.insert("topic".into(), topic_settings());
    defs.insert("store".into(), store());
    defs.insert("test".into(), test());
    defs.insert("publish".into(), publish());
    defs.insert("expect".into(), expect());
    Value::Object(defs)
}

/// The keys every producer kind has.
fn producer_common(kind: &str, description: &str) -> Map<String, Value> {
    let mut keys = Map::new();
    keys.insert(
        "kind".into(),
        json!({"type": "string", "enum": [kind], "description": description}),
    );
    keys.insert(
        "role".into(),
        string("Run this producer only where this role is selected (`edaflow run --role`); without it, everywhere."),
    );
    keys
}

fn producer_kind(kind: &str, description: &str, required: &[&str], extra: Value) -> Value {
    let mut keys = producer_common(kind, description);
    if let Value::Object(extra) = extra {
        keys.extend(extra);
    }
    let mut required: Vec<&str> = required.to_vec();
    required.insert(0, "kind");
    object(description, &required, Value::Object(keys))
}

fn producer() -> Value {
    let http = producer_kind(
        "http",
        "`http`: the HTTP ingest API (POST /topics/NAME, /queues/NAME, queries, admin).",
        &[],
        json!({
            "listen": {"type": "string", "default": "127.0.0.1:3000", "description": "Address and port to listen on. May hold `${VAR}` references."},
            "token": string("Bearer token every request must carry (`Authorization: Bearer …`); `--token` takes its place. Keep it out of the file with `${VAR}`."),
            "body_limit": {"type": ["integer", "string"], "default": "1MiB", "description": "Largest request body: bytes, or a string with a unit (`\"512KiB\"`, `\"2MiB\"`)."},
            "header_timeout": duration_default("How long a client may take to send a request's head.", "10s"),
            "body_timeout": duration_default("How long a client may take to send a request's body once its head is in.", "30s"),
            "idle_timeout": duration_default("How long a kept-alive connection may wait for its next request.", "60s"),
            "max_connections": {"type": "integer", "minimum": 1, "default": 1024, "description": "Connections served at once; past it a new connection is answered 503."}
        }),
    );
    let interval = producer_kind(
        "interval",
        "`interval`: every period, publishes `data` on `topic` and/or runs `script` (which emits).",
        &["every"],
        json!({
            "every": duration("The period (`\"5s\"`, `\"1m\"`)."),
            "topic": topic("The topic of the fixed event (required unless `script` emits)."),
            "data": any_data("The fixed event's data (any TOML value, sent as JSON)."),
            "script": string("A Rhai script run on each tick, relative to this file's folder.")
        }),
    );
    let lines = producer_kind(
        "lines",
        "`lines`: one event per JSON line of a file or stdin; stops at the end of the input.",
        &["path", "topic"],
        json!({
            "path": string("The file to read, relative to this file's folder; `\"-\"` is stdin. May hold `${VAR}` references."),
            "topic": topic("The topic of every event.")
        }),
    );
    let generator = producer_kind(
        "generator",
        "`generator`: `count` copies of `data` as fast as the broker takes them (benchmarks).",
        &["topic", "count"],
        json!({
            "topic": topic("The topic of every event."),
            "count": integer("How many events.", 0),
            "data": any_data("Every event's data (any TOML value, sent as JSON).")
        }),
    );
    json!({
        "description": "A producer; its `kind` decides which other keys it takes.",
        "type": "object",
        "required": ["kind"],
        "properties": {
            "kind": {"type": "string", "enum": ["http", "interval", "lines", "generator"], "description": "What the producer is: `http` (the ingest API), `interval` (a timer), `lines` (JSON lines from a file or stdin) or `generator` (benchmark load)."}
        },
        "oneOf": [http, interval, lines, generator]
    })
}

fn subscriber() -> Value {
    let mut value = object(
        "A subscriber: reads one of `topic`, `topics` or `queue`.",
        &[],
        json!({
            "topic": string("The topic (or NATS-style pattern: `order.*`, `order.>`) to read."),
            "topics": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}, "description": "Topic patterns to read."},
            "queue": string("A deferred queue to read (a `[queues.NAME]`)."),
            "script": string("The Rhai handler, relative to this file's folder; without one, the subscriber prints each event (the article's consumer output)."),
            "emits": topic_list("Topics the handler emits: checked (a topic nobody consumes is a warning), documented, used by chains."),
            "concurrency": {"type": "integer", "minimum": 1, "default": 1, "description": "Workers competing for this subscriber's events."},
            "retry": {"$ref": "#/definitions/retry"},
            "dead_letter": {"type": "string", "minLength": 1, "description": "Where an event goes after its last failed attempt. Default: `dead.NAME`."},
            "group": string("Consumer group: subscribers (and processes) in one group compete; groups fan out. Default: the subscriber's name."),
            "role": string("`command`, `query` or any name, for `edaflow run --role`."),
            "renamed_from": string("The subscriber's former name: what waited for it is handled here.")
        }),
    );
    value["oneOf"] = json!([
        {"required": ["topic"]},
        {"required": ["topics"]},
        {"required": ["queue"]}
    ]);
    value
}

fn retry() -> Value {
    let mut value = object(
        "Runs per event (the first included); the wait doubles from `backoff` up to `max_backoff`.",
        &[],
        json!({
            "attempts": {"type": "integer", "minimum": 1, "default": 3, "description": "Total runs, the first included."},
            "backoff": duration_default("Delay before the second run; doubles each time.", "100ms"),
            "max_backoff": duration_default("Upper bound on the delay.", "10s"),
            "jitter": {"type": "boolean", "default": true, "description": "Equal jitter: each wait is drawn between half the delay and all of it, so failing events spread out. `false` waits the exact delay."}
        }),
    );
    value["default"] =
        json!({"attempts": 3, "backoff": "100ms", "max_backoff": "10s", "jitter": true});
    value
}

fn queue() -> Value {
    object(
        "A deferred work queue.",
        &[],
        json!({
            "delay": duration_default("Default delay of items entering the queue (an `enqueue` delay or HTTP `?delay=` overrides it).", "0s"),
            "poll": duration("Workers look only at this interval, then take every item due; without it, an item is handed out the moment it is due."),
            "capacity": integer("Items held at most; past it, enqueueing fails (HTTP 503). Default: unbounded.", 1),
            "per_poll": integer("With `poll`: items taken at each look. Default: every due item.", 1),
            "list": string("Redis only: the queue is this plain Redis list of raw payloads (the article's wire format); no due times."),
            "renamed_from": string("The queue's former name: its items move here, keeping their due times.")
        }),
    )
}

fn relay() -> Value {
    object(
        "A relay (the article's master node): moves events from topics into a queue.",
        &["from", "to"],
        json!({
            "from": string("The topic or pattern to read."),
            "to": string("A declared queue."),
            "delay": duration("Overrides the queue's default delay."),
            "filter": string("A Rhai expression over `event` (`event.data.total > 100.0`); events for which it is false are not queued."),
            "script": string("A transform, relative to this file's folder: the script's value is the new data; `()` drops the event."),
            "renamed_from": string("The relay's former name: the events it had not relayed yet are taken over.")
        }),
    )
}

fn chain() -> Value {
    object(
        "A declared choreography.",
        &["steps"],
        json!({
            "steps": {"type": "array", "minItems": 2, "items": {"type": "string", "minLength": 1}, "description": "The topics a journey passes, in order (at least two)."},
            "timeout": duration("How long a journey may take from its first step to its last."),
            "on_timeout": topic("The topic published when a journey times out.")
        }),
    )
}

fn topic_settings() -> Value {
    object(
        "Settings of one topic.",
        &[],
        json!({
            "mode": {"type": "string", "enum": ["stream", "pubsub"], "default": "stream", "description": "Redis only: `stream` (a Redis stream with consumer groups, durable) or `pubsub` (plain PUBLISH/SUBSCRIBE of the raw payload, fire-and-forget). Default: `[flow] topic_mode`."},
            "kind": {"type": "string", "enum": ["event", "command", "query"], "default": "event", "description": "What the topic carries, for the CQRS lint: facts (`event`), requests to act (`command`) or questions answered by a reply (`query`)."},
            "retention": duration("Redis only: how long the topic's stream keeps events every group has read and acknowledged. Default: kept for ever."),
            "timeout": duration_default("A query topic's reply timeout.", "5s"),
            "schema": string("A JSON Schema file (relative to this file's folder) that event data must match: HTTP ingest answers 400 naming the failing JSON pointer. Hot-reloaded like a script."),
            "validate_emits": {"type": "boolean", "default": false, "description": "Also check what handlers emit on this topic against `schema`: an emit that fails fails the run, and the event is dead-lettered at once with the failing pointer."},
            "shard": {"type": "integer", "minimum": 0, "description": "Redis with `--shards N` only: the shard holding this topic (`shard % N`), so a flow set's busy topics go to different masters. Default: placed by the hash of the topic's name. Every process of the flow set must agree, as they do when they load the same files."}
        }),
    )
}

fn store() -> Value {
    object(
        "A state store.",
        &[],
        json!({
            "expose": {"type": "boolean", "default": false, "description": "Serve the store's keys over HTTP (`GET /stores/NAME/KEY`)."}
        }),
    )
}

fn test() -> Value {
    object(
        "A flow test: its publishes, in order, then the `advance` of virtual time; then every `expect` must have happened.",
        &["name"],
        json!({
            "name": string("The test's name, as `edaflow test` reports it."),
            "publish": {
                "description": "What the test publishes: one `{ topic, data }` or a list of them.",
                "anyOf": [
                    {"$ref": "#/definitions/publish"},
                    {"type": "array", "items": {"$ref": "#/definitions/publish"}}
                ]
            },
            "advance": duration("Virtual time to move forward after the publishes (deferred queues, timeouts)."),
            "expect": {"type": "array", "items": {"$ref": "#/definitions/expect"}, "description": "Events that must have been published."}
        }),
    )
}

fn publish() -> Value {
    object(
        "An event a test publishes.",
        &["topic"],
        json!({
            "topic": topic("The topic."),
            "data": any_data("The event's data (any TOML value, sent as JSON).")
        }),
    )
}

fn expect() -> Value {
    object(
        "An event a test expects.",
        &["topic"],
        json!({
            "topic": topic("The topic the event must be on."),
            "data": {"description": "Fields the event's data must contain (a subset, compared recursively)."},
            "handled_by": string("A subscriber that must also have handled the event successfully.")
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::load::sections as keys;

    /// The property names of the schema at `pointer`, sorted.
    fn names(schema: &Value, pointer: &str) -> Vec<String> {
        let object = schema
            .pointer(pointer)
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("no object at {pointer}"));
        let mut names: Vec<String> = object.keys().cloned().collect();
        names.sort();
        names
    }

    fn sorted(list: &[&str]) -> Vec<String> {
        let mut list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        list.sort();
        list
    }

    /// Every table of the schema names exactly the keys the loader reads there.
    #[test]
    fn the_schema_names_every_key_the_loader_knows() {
        let schema = flow_schema();
        let d = "/definitions";
        let cases: Vec<(String, &[&str])> = vec![
            ("/properties".into(), keys::SECTIONS),
            ("/properties/flow/properties".into(), keys::FLOW_KEYS),
            (format!("{d}/producer/oneOf/0/properties"), keys::HTTP_KEYS),
            (
                format!("{d}/producer/oneOf/1/properties"),
                keys::INTERVAL_KEYS,
            ),
            (format!("{d}/producer/oneOf/2/properties"), keys::LINES_KEYS),
            (
                format!("{d}/producer/oneOf/3/properties"),
                keys::GENERATOR_KEYS,
            ),
            (format!("{d}/subscriber/properties"), keys::SUBSCRIBER_KEYS),
            (format!("{d}/retry/properties"), keys::RETRY_KEYS),
            (format!("{d}/queue/properties"), keys::QUEUE_KEYS),
            (format!("{d}/relay/properties"), keys::RELAY_KEYS),
            (format!("{d}/chain/properties"), keys::CHAIN_KEYS),
            (format!("{d}/topic/properties"), keys::TOPIC_KEYS),
            (format!("{d}/store/properties"), keys::STORE_KEYS),
            (format!("{d}/test/properties"), keys::TEST_KEYS),
            (format!("{d}/publish/properties"), keys::PUBLISH_KEYS),
            (format!("{d}/expect/properties"), keys::EXPECT_KEYS),
        ];
        for (pointer, known) in cases {
            assert_eq!(names(&schema, &pointer), sorted(known), "at {pointer}");
        }
        let kinds = schema["definitions"]["producer"]["properties"]["kind"]["enum"].clone();
        assert_eq!(kinds, json!(keys::PRODUCER_KINDS));
        for (i, kind) in keys::PRODUCER_KINDS.iter().enumerate() {
            let variant = &schema["definitions"]["producer"]["oneOf"][i];
            assert_eq!(variant["properties"]["kind"]["enum"], json!([kind]));
        }
    }

    /// Hover text: every key of every table says what it is.
    #[test]
    fn every_key_has_a_description() {
        fn walk(value: &Value, at: &str) {
            if let Some(properties) = value.get("properties").and_then(Value::as_object) {
                for (key, property) in properties {
                    let described =
                        property.get("description").is_some() || property.get("$ref").is_some();
                    assert!(described, "{at}/properties/{key} has no description");
                    walk(property, &format!("{at}/properties/{key}"));
                }
            }
            for list in ["oneOf", "anyOf"] {
                for (i, item) in value
                    .get(list)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    walk(item, &format!("{at}/{list}/{i}"));
                }
            }
            if let Some(defs) = value.get("definitions").and_then(Value::as_object) {
                for (name, def) in defs {
                    assert!(
                        def.get("description").is_some(),
                        "definition {name} has no description"
                    );
                    walk(def, &format!("{at}/definitions/{name}"));
                }
            }
        }
        walk(&flow_schema(), "");
    }

    #[test]
    fn the_duration_pattern_takes_what_the_loader_takes() {
        let pattern = regex_lite(DURATION_PATTERN);
        for ok in ["250ms", "10s", "1m30s", "1m 30s", "2h", "1d", "1.5s", "0s"] {
            assert!(crate::duration::parse_duration(ok).is_ok(), "{ok}");
            assert!(pattern.is_valid(&json!(ok)), "{ok}");
        }
        for bad in ["10", "s", "ten seconds", "", "5 minutes"] {
            assert!(!pattern.is_valid(&json!(bad)), "{bad}");
        }
    }

    fn regex_lite(pattern: &str) -> jsonschema::Validator {
        jsonschema::validator_for(&json!({"type": "string", "pattern": pattern}))
            .expect("the pattern compiles")
    }
}
