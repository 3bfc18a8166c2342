//! Unit tests for loading: inline TOML written into a temp dir, loaded, and checked against
//! the model or against the diagnostics (code and labelled text).

use std::path::{Path, PathBuf};
use std::time::Duration;

use indoc::indoc;
use miette::Diagnostic;
use serde_json::json;
use tempfile::TempDir;

use super::{load, Loaded};
use crate::flow::diagnostic::{FlowError, FlowReport, FlowWarning};
use crate::flow::model::*;
use crate::pattern::TopicPattern;

/// A temp dir holding flow files and scripts.
struct Dir(TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(TempDir::new().expect("temp dir"))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create dir");
        }
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// Loads, then lints as the prepare step does (facts read off each script's text, as
    /// `script::compile` would before optimizing), without compiling.
    fn load(&self, names: &[&str]) -> Result<Loaded, FlowReport> {
        let paths: Vec<PathBuf> = names.iter().map(|n| self.path().join(n)).collect();
        let mut loaded = load(&paths)?;
        let facts: crate::flow::lint::Facts = loaded
            .flows
            .subscribers
            .iter()
            .filter_map(|(name, s)| {
                let script = s.script.as_ref()?;
                Some((name.clone(), crate::script::facts::analyse(&script.text)))
            })
            .collect();
        let given: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let warnings = crate::flow::lint::lint(&loaded, &facts)
            .map_err(|errors| FlowReport::new(&given, errors))?;
        loaded.warnings.extend(warnings);
        Ok(loaded)
    }
}

/// Loads one flow file that must be valid.
fn valid(toml: &str) -> (Dir, Loaded) {
    let dir = Dir::new();
    dir.write("flow.toml", toml);
    match dir.load(&["flow.toml"]) {
        Ok(loaded) => (dir, loaded),
        Err(report) => panic!("{}", crate::flow::diagnostic::render(&report, 100)),
    }
}

/// Loads one flow file that must be invalid; returns its errors.
fn invalid(toml: &str) -> Vec<FlowError> {
    let dir = Dir::new();
    dir.write("flow.toml", toml);
    match dir.load(&["flow.toml"]) {
        Ok(_) => panic!("expected errors for:\n{toml}"),
        Err(report) => report.errors,
    }
}

fn code(d: &dyn Diagnostic) -> String {
    d.code().map(|c| c.to_string()).unwrap_or_default()
}

/// The text under each label of a diagnostic.
fn labelled(d: &dyn Diagnostic) -> Vec<String> {
    let Some(src) = d.source_code() else {
        return Vec::new();
    };
    d.labels()
        .into_iter()
        .flatten()
        .map(|label| {
            let contents = src.read_span(label.inner(), 0, 0).expect("span in range");
            String::from_utf8_lossy(contents.data()).into_owned()
        })
        .collect()
}

fn help(d: &dyn Diagnostic) -> String {
    d.help().map(|h| h.to_string()).unwrap_or_default()
}

/// `(code, first label text)` of each error.
fn summary(errors: &[FlowError]) -> Vec<(String, String)> {
    errors
        .iter()
        .map(|e| {
            let label = labelled(e).into_iter().next().unwrap_or_default();
            (code(e), label)
        })
        .collect()
}

fn only(errors: Vec<FlowError>) -> FlowError {
    assert_eq!(
        errors.len(),
        1,
        "expected one error, got {}",
        summary(&errors).len()
    );
    errors.into_iter().next().expect("one error")
}

fn pattern(p: &str) -> TopicPattern {
    TopicPattern::parse(p).expect("valid pattern")
}

const ORDERS: &str = indoc! {r#"
    [flow]
    name = "orders"

    [producers.api]
    kind = "http"
    listen = "127.0.0.1:3000"

    [producers.heartbeat]
    kind = "interval"
    every = "5s"
    topic = "heartbeat"

    [subscribers.reserve_inventory]
    topic = "orderCreated"
    script = "handlers/reserve_inventory.rhai"
    emits = ["inventoryReserved", "fraudCheckRequested"]
    concurrency = 4
    retry = { attempts = 5, backoff = "100ms", max_backoff = "10s" }
    dead_letter = "orderCreated.dead"

    [subscribers.log_orders]
    topic = "orderCreated"

    # Declared outputs only (no scripts), so that the chain below is reachable.
    [subscribers.charge_payment]
    topic = "inventoryReserved"
    emits = ["paymentCharged"]

    [subscribers.ship_order]
    topic = "paymentCharged"
    emits = ["orderShipped"]

    [queues.tasks]
    delay = "0s"
    poll = "10s"

    [subscribers.process_task]
    queue = "tasks"
    script = "handlers/process_task.rhai"

    [relays.master]
    from = "master"
    to = "tasks"

    [chains.fulfilment]
    steps = ["orderCreated", "inventoryReserved", "paymentCharged", "orderShipped"]
    timeout = "30s"
    on_timeout = "orderStalled"

    [topics.orderCreated]
    retention = "1d"

    [stores.orders]
    expose = false

    [[tests]]
    name = "an order reserves inventory"
    publish = { topic = "orderCreated", data = { order_id = 1, total = 10.0 } }
    expect = [{ topic = "inventoryReserved", data = { order_id = 1 } }]
"#};

#[test]
fn the_design_sketch_loads_into_the_model() {
    let dir = Dir::new();
    let flow = dir.write("orders.toml", ORDERS);
    let reserve = dir.write(
        "handlers/reserve_inventory.rhai",
        "emit(\"inventoryReserved\", #{});\n",
    );
    let process = dir.write("handlers/process_task.rhai", "log(event.data);\n");
    let loaded = dir.load(&["orders.toml"]).expect("valid flow");
    let flows = &loaded.flows;

    assert_eq!(
        flows.files,
        vec![FlowFile {
            name: "orders".into(),
            path: flow.clone(),
            broker: None,
            deferred_topic: None,
            topic_mode: None,
            max_hops: None,
        }]
    );
    assert_eq!(
        flows.producers["api"],
        ProducerConfig {
            file: 0,
            role: None,
            kind: ProducerKind::Http(HttpProducer {
                listen: "127.0.0.1:3000".into(),
                token: None,
                body_limit: 1 << 20,
                header_timeout: Duration::from_secs(10),
                body_timeout: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(60),
                max_connections: 1024,
            }),
        }
    );
    assert_eq!(
        flows.producers["heartbeat"].kind,
        ProducerKind::Interval(IntervalProducer {
            every: Duration::from_secs(5),
            topic: Some("heartbeat".into()),
            data: json!({}),
            script: None,
        })
    );
    assert_eq!(
        flows.subscribers["reserve_inventory"],
        SubscriberConfig {
            file: 0,
            input: SubscriberInput::Topics(vec![pattern("orderCreated")]),
            script: Some(ScriptSource {
                path: reserve.clone(),
                base_dir: dir.path().to_path_buf(),
                text: "emit(\"inventoryReserved\", #{});\n".into(),
            }),
            emits: vec!["inventoryReserved".into(), "fraudCheckRequested".into()],
            concurrency: 4,
            retry: RetryPolicy {
                attempts: 5,
                backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(10),
                jitter: true,
            },
            dead_letter: "orderCreated.dead".into(),
            group: "reserve_inventory".into(),
            role: None,
            renamed_from: None,
        }
    );
    assert_eq!(
        flows.subscribers["process_task"].input,
        SubscriberInput::Queue("tasks".into())
    );
    assert_eq!(
        flows.queues["tasks"],
        QueueConfig {
            file: 0,
            delay: Duration::ZERO,
            poll: Some(Duration::from_secs(10)),
            capacity: None,
            per_poll: None,
            list: None,
            renamed_from: None,
        }
    );
    assert_eq!(
        flows.relays["master"],
        RelayConfig {
            file: 0,
            from: pattern("master"),
            to: "tasks".into(),
            delay: None,
            filter: None,
            script: None,
            renamed_from: None,
        }
    );
    assert_eq!(
        flows.chains["fulfilment"],
        ChainConfig {
            file: 0,
            steps: vec![
                "orderCreated".into(),
                "inventoryReserved".into(),
                "paymentCharged".into(),
                "orderShipped".into(),
            ],
            timeout: Some(Duration::from_secs(30)),
            on_timeout: Some("orderStalled".into()),
        }
    );
    assert_eq!(
        flows.topics["orderCreated"],
        TopicConfig {
            file: 0,
            mode: TopicMode::Stream,
            mode_set: false,
            kind: TopicKind::Event,
            retention: Some(Duration::from_secs(86_400)),
            timeout: None,
            schema: None,
            validate_emits: false,
            shard: None,
        }
    );
    assert_eq!(
        flows.stores["orders"],
        StoreConfig {
            file: 0,
            expose: false
        }
    );
    assert_eq!(
        flows.tests,
        vec![FlowTest {
            file: 0,
            name: "an order reserves inventory".into(),
            steps: vec![TestStep::Publish {
                topic: "orderCreated".into(),
                data: json!({ "order_id": 1, "total": 10.0 }),
            }],
            expect: vec![ExpectedEvent {
                topic: "inventoryReserved".into(),
                handled_by: None,
                data: Some(json!({ "order_id": 1 })),
            }],
        }]
    );
    assert_eq!(loaded.files_read, vec![flow, reserve, process]);
}

#[test]
fn defaults_fill_what_is_left_out() {
    let (dir, loaded) = valid(indoc! {r#"
        [producers.api]
        kind = "http"

        [subscribers.audit]
        topic = "order.>"

        [queues.later]

        [stores.totals]

        [topics."orders.query.get"]
    "#});
    let flows = loaded.flows;
    assert_eq!(flows.files[0].name, "flow");
    assert_eq!(flows.files[0].path, dir.path().join("flow.toml"));
    let ProducerKind::Http(http) = &flows.producers["api"].kind else {
        panic!("http producer");
    };
    assert_eq!(http.listen, "127.0.0.1:3000");
    assert_eq!(http.body_limit, 1024 * 1024);
    let audit = &flows.subscribers["audit"];
    assert_eq!(audit.concurrency, 1);
    assert_eq!(audit.retry, RetryPolicy::default());
    assert_eq!(audit.dead_letter, "dead.audit");
    assert_eq!(audit.group, "audit");
    assert_eq!(audit.script, None);
    assert!(audit.emits.is_empty());
    assert_eq!(flows.queues["later"].delay, Duration::ZERO);
    assert_eq!(flows.queues["later"].poll, None);
    assert!(!flows.stores["totals"].expose);
    let topic = &flows.topics["orders.query.get"];
    assert_eq!(
        (topic.mode, topic.kind),
        (TopicMode::Stream, TopicKind::Event)
    );
}

#[test]
fn every_producer_kind_and_setting_is_read() {
    let (dir, loaded) = valid(indoc! {r#"
        [producers.api]
        kind = "http"
        listen = "0.0.0.0:8080"
        token = "s3cret"
        body_limit = "512KiB"
        header_timeout = "2s"
        body_timeout = "1m"
        idle_timeout = "500ms"
        max_connections = 8

        [producers.small]
        kind = "http"
        body_limit = 100
        role = "command"

        [producers.stdin]
        kind = "lines"
        path = "-"
        topic = "lines.in"

        [producers.file]
        kind = "lines"
        path = "data/in.jsonl"
        topic = "lines.in"

        [producers.load]
        kind = "generator"
        topic = "load.test"
        count = 1000
        data = { n = [1, 2.5, "x", true], nested = { z = 1, a = 2 } }

        [subscribers.all]
        topics = ["lines.in", "load.*"]

        [topics."lines.in"]
        mode = "pubsub"
        kind = "command"
        timeout = "2s"
    "#});
    let p = &loaded.flows.producers;
    assert_eq!(
        p["api"].kind,
        ProducerKind::Http(HttpProducer {
            listen: "0.0.0.0:8080".into(),
            token: Some(ApiToken::new("s3cret").expect("a valid token")),
            body_limit: 512 * 1024,
            header_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_millis(500),
            max_connections: 8,
        })
    );
    let ProducerKind::Http(small) = &p["small"].kind else {
        panic!("http producer");
    };
    assert_eq!(small.body_limit, 100);
    assert_eq!(p["small"].role.as_deref(), Some("command"));
    assert_eq!(
        p["stdin"].kind,
        ProducerKind::Lines(LinesProducer {
            path: None,
            topic: "lines.in".into()
        })
    );
    assert_eq!(
        p["file"].kind,
        ProducerKind::Lines(LinesProducer {
            path: Some(dir.path().join("data/in.jsonl")),
            topic: "lines.in".into()
        })
    );
    let ProducerKind::Generator(generator) = &p["load"].kind else {
        panic!("generator producer");
    };
    assert_eq!(generator.count, 1000);
    assert_eq!(
        generator.data,
        json!({ "n": [1, 2.5, "x", true], "nested": { "z": 1, "a": 2 } })
    );
    // Source order is kept in objects.
    let keys: Vec<_> = generator.data["nested"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(keys, ["z", "a"]);
    assert_eq!(
        loaded.flows.subscribers["all"].input,
        SubscriberInput::Topics(vec![pattern("lines.in"), pattern("load.*")])
    );
    let topic = &loaded.flows.topics["lines.in"];
    assert_eq!(topic.mode, TopicMode::Pubsub);
    assert_eq!(topic.kind, TopicKind::Command);
    assert_eq!(topic.timeout, Some(Duration::from_secs(2)));
}

#[test]
fn tests_publish_in_order_then_advance() {
    let (_dir, loaded) = valid(indoc! {r#"
        [producers.api]
        kind = "http"

        [subscribers.s]
        topic = "a"

        [[tests]]
        name = "two publishes and a wait"
        publish = [{ topic = "a", data = { n = 1 } }, { topic = "a" }]
        advance = "10s"
        expect = [{ topic = "b" }]

        [[tests]]
        name = "nothing happens"
    "#});
    let tests = &loaded.flows.tests;
    assert_eq!(tests.len(), 2);
    assert_eq!(
        tests[0].steps,
        vec![
            TestStep::Publish {
                topic: "a".into(),
                data: json!({ "n": 1 })
            },
            TestStep::Publish {
                topic: "a".into(),
                data: json!({})
            },
            TestStep::Advance(Duration::from_secs(10)),
        ]
    );
    assert_eq!(
        tests[0].expect,
        vec![ExpectedEvent {
            topic: "b".into(),
            handled_by: None,
            data: None
        }]
    );
    assert!(tests[1].steps.is_empty() && tests[1].expect.is_empty());
}

#[test]
fn interval_with_a_script_and_relay_with_filter() {
    let dir = Dir::new();
    dir.write("tick.rhai", "emit(\"tick\", #{});");
    dir.write("relay.rhai", "event");
    dir.write(
        "flow.toml",
        indoc! {r#"
            [flow]
            deferred_topic = "deferred"
            broker = "redis://127.0.0.1:6379"

            [producers.tick]
            kind = "interval"
            every = "1m30s"
            script = "tick.rhai"
            data = { a = 1 }

            [queues.work]
            capacity = 10

            [relays.r]
            from = "deferred"
            to = "work"
            delay = "250ms"
            filter = "event.data.total > 10"
            script = "relay.rhai"

            [subscribers.worker]
            queue = "work"
        "#},
    );
    let loaded = dir.load(&["flow.toml"]).expect("valid flow");
    let flows = &loaded.flows;
    assert_eq!(flows.files[0].deferred_topic.as_deref(), Some("deferred"));
    assert_eq!(
        flows.files[0].broker.as_ref().map(|url| url.expose()),
        Some("redis://127.0.0.1:6379")
    );
    let ProducerKind::Interval(tick) = &flows.producers["tick"].kind else {
        panic!("interval producer");
    };
    assert_eq!(tick.every, Duration::from_secs(90));
    assert_eq!(tick.topic, None);
    assert_eq!(tick.data, json!({ "a": 1 }));
    let script = tick.script.as_ref().expect("script");
    assert_eq!(script.path, dir.path().join("tick.rhai"));
    assert_eq!(&*script.text, "emit(\"tick\", #{});");
    let relay = &flows.relays["r"];
    assert_eq!(relay.delay, Some(Duration::from_millis(250)));
    assert_eq!(relay.filter.as_deref(), Some("event.data.total > 10"));
    assert_eq!(flows.queues["work"].capacity, Some(10));
    assert_eq!(loaded.files_read.len(), 3);
    // `deferred` is produced (through HTTP's /deferred-exec), so no warning about it.
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn syntax_errors_are_labelled() {
    let e = only(invalid("[subscribers.a]\ntopic = \"x\"\ntopic = \"y\"\n"));
    assert_eq!(code(&e), "edaflow::flow::toml_syntax");
    assert_eq!(labelled(&e), ["topic", "topic"]);
    assert!(e.to_string().contains("duplicate key"), "{e}");

    let e = only(invalid("[flow]\nname = \"unterminated\n"));
    assert_eq!(code(&e), "edaflow::flow::toml_syntax");
    assert!(e.to_string().contains("invalid TOML"), "{e}");

    // An error at end of file stays inside the file.
    let e = only(invalid("[flow]\nname ="));
    assert_eq!(code(&e), "edaflow::flow::toml_syntax");
    assert_eq!(labelled(&e), [""]);
}

#[test]
fn unknown_keys_suggest_the_closest_known_key() {
    let errors = invalid(indoc! {r#"
        [subscriber.a]
        topic = "x"

        [subscribers.b]
        topic = "x"
        scirpt = "b.rhai"
        retry = { atempts = 2 }
        banana = 1
    "#});
    assert_eq!(
        summary(&errors),
        [
            ("edaflow::flow::unknown_key".into(), "subscriber".into()),
            ("edaflow::flow::unknown_key".into(), "scirpt".into()),
            ("edaflow::flow::unknown_key".into(), "atempts".into()),
            ("edaflow::flow::unknown_key".into(), "banana".into()),
        ]
    );
    assert_eq!(help(&errors[0]), "did you mean `subscribers`?");
    assert_eq!(help(&errors[1]), "did you mean `script`?");
    assert_eq!(help(&errors[2]), "did you mean `attempts`?");
    assert!(help(&errors[3]).starts_with("expected a key: `topic`, `topics`"));
    assert_eq!(
        errors[2].to_string(),
        "unknown key `atempts` in `subscribers.b.retry`"
    );
}

#[test]
fn wrong_types_are_labelled_on_the_value() {
    let errors = invalid(indoc! {r#"
        [subscribers.a]
        topic = 42
        concurrency = "4"
        emits = "x"

        [stores.s]
        expose = "yes"

        [queues]
        q = 1
    "#});
    assert_eq!(
        summary(&errors),
        [
            ("edaflow::flow::wrong_type".into(), "42".into()),
            ("edaflow::flow::wrong_type".into(), "4".into()),
            ("edaflow::flow::wrong_type".into(), "x".into()),
            ("edaflow::flow::wrong_type".into(), "yes".into()),
            ("edaflow::flow::wrong_type".into(), "1".into()),
        ]
    );
    assert_eq!(
        errors[0].to_string(),
        "`topic` must be a string, found integer"
    );
    assert_eq!(
        errors[1].to_string(),
        "`concurrency` must be an integer, found string"
    );
    assert_eq!(
        errors[4].to_string(),
        "`queues.q` must be a table, found integer"
    );
}

#[test]
fn missing_required_keys_point_at_the_table() {
    let errors = invalid(indoc! {r#"
        [relays.master]
        from = "master"

        [chains.c]
        timeout = "1s"

        [producers.p]
        role = "x"

        [[tests]]
        publish = { data = 1 }
    "#});
    assert_eq!(
        summary(&errors),
        [
            ("edaflow::flow::missing_key".into(), "master".into()),
            ("edaflow::flow::missing_key".into(), "c".into()),
            ("edaflow::flow::missing_key".into(), "p".into()),
            ("edaflow::flow::missing_key".into(), "[[tests]]".into()),
            ("edaflow::flow::missing_key".into(), "{ data = 1 }".into()),
        ]
    );
    assert_eq!(errors[0].to_string(), "`relays.master` is missing `to`");
    assert_eq!(errors[3].to_string(), "`tests[0]` is missing `name`");
    assert_eq!(
        errors[4].to_string(),
        "`tests[0].publish` is missing `topic`"
    );
}

#[test]
fn bad_durations_and_sizes() {
    let errors = invalid(indoc! {r#"
        [producers.p]
        kind = "interval"
        every = "5"
        topic = "t"

        [producers.api]
        kind = "http"
        body_limit = "1 parsec"

        [queues.q]
        delay = "-1s"
        poll = "10x"
    "#});
    assert_eq!(
        summary(&errors),
        [
            ("edaflow::flow::invalid_duration".into(), "5".into()),
            ("edaflow::flow::invalid_size".into(), "1 parsec".into()),
            ("edaflow::flow::invalid_duration".into(), "-1s".into()),
            ("edaflow::flow::invalid_duration".into(), "10x".into()),
        ]
    );
    assert_eq!(
        errors[0].to_string(),
        "`every` is not a valid duration: missing unit after 5"
    );
    assert!(help(&errors[0]).contains("ms, s, m, h, d"));
    assert_eq!(
        errors[3].to_string(),
        "`poll` is not a valid duration: unknown unit `x`"
    );
}

#[test]
fn http_timeouts_and_limits_are_checked() {
    let errors = invalid(indoc! {r#"
        [producers.api]
        kind = "http"
        header_timeout = "0s"
        body_timeout = "0ms"
        idle_timeout = "forever"
        max_connections = 0
        token = ""

        [producers.other]
        kind = "http"
        listen = "127.0.0.1:0"
        token = "with space"
    "#});
    assert_eq!(
        summary(&errors),
        [
            ("edaflow::flow::zero_duration".into(), "0s".into()),
            ("edaflow::flow::zero_duration".into(), "0ms".into()),
            ("edaflow::flow::invalid_duration".into(), "forever".into()),
            ("edaflow::flow::too_small".into(), "0".into()),
            // An empty string is labelled with its quotes.
            ("edaflow::flow::invalid_token".into(), "\"\"".into()),
            ("edaflow::flow::invalid_token".into(), "with space".into()),
        ]
    );
    assert_eq!(
        errors[0].to_string(),
        "`header_timeout` must be longer than zero"
    );
    assert!(
        help(&errors[0]).contains("the default is 10s"),
        "{}",
        help(&errors[0])
    );
    assert!(help(&errors[1]).contains("the default is 30s"));
    assert_eq!(
        errors[3].to_string(),
        "`max_connections` must be at least 1, found 0"
    );
    assert_eq!(
        errors[4].to_string(),
        "`token` is not a usable bearer token: a token cannot be empty"
    );
}

#[test]
fn the_defaults_in_zero_duration_help_are_the_defaults() {
    for (text, default) in [
        ("10s", HttpProducer::DEFAULT_HEADER_TIMEOUT),
        ("30s", HttpProducer::DEFAULT_BODY_TIMEOUT),
        ("60s", HttpProducer::DEFAULT_IDLE_TIMEOUT),
    ] {
        assert_eq!(crate::duration::parse_duration(text), Ok(default));
    }
}

#[test]
fn a_missing_script_names_the_resolved_path() {
    let dir = Dir::new();
    dir.write(
        "flows/orders.toml",
        "[subscribers.a]\ntopic = \"x\"\nscript = \"handlers/nope.rhai\"\n",
    );
    let report = dir
        .load(&["flows/orders.toml"])
        .expect_err("missing script");
    let e = only(report.errors);
    assert_eq!(code(&e), "edaflow::flow::missing_script");
    assert_eq!(labelled(&e), ["handlers/nope.rhai"]);
    let expected = dir.path().join("flows/handlers/nope.rhai");
    assert_eq!(
        e.to_string(),
        format!("cannot read script {}", expected.display())
    );
}

#[test]
fn unknown_producer_kind_suggests_one() {
    let errors = invalid(indoc! {r#"
        [producers.a]
        kind = "htp"
        whatever = 1

        [producers.b]
        kind = "kafka"
    "#});
    assert_eq!(
        summary(&errors),
        [
            ("edaflow::flow::unknown_producer_kind".into(), "htp".into()),
            (
                "edaflow::flow::unknown_producer_kind".into(),
                "kafka".into()
            ),
        ]
    );
    assert_eq!(help(&errors[0]), "did you mean `http`?");
    assert_eq!(
        help(&errors[1]),
        "expected a kind: `http`, `interval`, `lines` or `generator`"
    );
}

#[test]
fn bad_topics_and_patterns() {
    let errors = invalid(indoc! {r#"
        [subscribers.a]
        topics = ["ok.*", "a..b"]
        emits = ["fine", "order.*"]
        dead_letter = "dead letters"

        [relays.r]
        from = "x.>.y"
        to = "q"

        [queues.q]

        [topics."no wild.*"]

        [subscribers."bad name"]
        topic = "x"
    "#});
    assert_eq!(
        summary(&errors),
        [
            ("edaflow::flow::invalid_pattern".into(), "a..b".into()),
            ("edaflow::flow::invalid_topic".into(), "order.*".into()),
            ("edaflow::flow::invalid_topic".into(), "dead letters".into()),
            ("edaflow::flow::invalid_pattern".into(), "x.>.y".into()),
            ("edaflow::flow::invalid_topic".into(), "no wild.*".into()),
            ("edaflow::flow::invalid_name".into(), "bad name".into()),
        ]
    );
    assert!(
        errors[0].to_string().contains("empty segment"),
        "{}",
        errors[0]
    );
    assert!(errors[1].to_string().contains("wildcards"), "{}", errors[1]);
}

#[test]
fn dotted_topic_names_need_quotes() {
    let errors = invalid(indoc! {r#"
        [topics.orders.query.get]
        kind = "query"

        [topics.lines.in]
        mode = "pubsub"
        bogus = 1
    "#});
    assert_eq!(
        summary(&errors),
        [
            ("edaflow::flow::unquoted_topic_name".into(), "query".into()),
            ("edaflow::flow::unquoted_topic_name".into(), "in".into()),
        ]
    );
    assert_eq!(
        errors[0].to_string(),
        "topic `orders.query.get` needs quotes in a table header"
    );
    assert_eq!(
        help(&errors[1]),
        "TOML splits unquoted keys at dots; write `[topics.\"lines.in\"]`"
    );
}

#[test]
fn a_subscriber_reads_exactly_one_input() {
    let errors = invalid(indoc! {r#"
        [subscribers.both]
        topic = "x"
        queue = "q"

        [subscribers.neither]
        script_less = true

        [subscribers.empty]
        topics = []

        [queues.q]
    "#});
    let codes: Vec<_> = summary(&errors)
        .into_iter()
        .map(|(c, l)| format!("{c} {l}"))
        .collect();
    assert_eq!(
        codes,
        [
            "edaflow::flow::conflicting_keys queue",
            "edaflow::flow::missing_one_of neither",
            "edaflow::flow::unknown_key script_less",
            "edaflow::flow::wrong_type []",
        ]
    );
    assert_eq!(labelled(&errors[0]), ["queue", "topic"]);
    assert_eq!(
        errors[0].to_string(),
        "`subscribers.both` sets both `topic` and `queue`"
    );
    assert_eq!(
        errors[1].to_string(),
        "`subscribers.neither` needs one of `topic`, `topics` or `queue`"
    );
}

#[test]
fn queues_must_be_declared() {
    let errors = invalid(indoc! {r#"
        [queues.tasks]

        [subscribers.w]
        queue = "taks"

        [relays.r]
        from = "master"
        to = "elsewhere"
    "#});
    assert_eq!(
        summary(&errors),
        [
            ("edaflow::flow::unknown_queue".into(), "taks".into()),
            ("edaflow::flow::unknown_queue".into(), "elsewhere".into()),
        ]
    );
    assert_eq!(help(&errors[0]), "did you mean `tasks`?");
    assert_eq!(help(&errors[1]), "expected a queue: `tasks`");

    let e = only(invalid("[subscribers.w]\nqueue = \"tasks\"\n"));
    assert_eq!(help(&e), "no queue is declared");
}

#[test]
fn renamed_from_names_a_component_that_is_gone_once() {
    let errors = invalid(indoc! {r#"
        [queues.tasks]
        [queues.jobs]
        renamed_from = "tasks"

        [subscribers.a]
        topic = "x"
        [subscribers.b]
        topic = "x"
        renamed_from = "old"
        [subscribers.c]
        topic = "x"
        renamed_from = "old"

        [relays.r]
        from = "x"
        to = "jobs"
        renamed_from = "r"
    "#});
    assert_eq!(
        summary(&errors),
        [
            (
                "edaflow::flow::renamed_from_declared".into(),
                "tasks".into()
            ),
            ("edaflow::flow::renamed_twice".into(), "old".into()),
            ("edaflow::flow::renamed_from_declared".into(), "r".into()),
        ]
    );
    assert_eq!(
        errors[0].to_string(),
        "`[queues.jobs]` says it was renamed from `tasks`, but `[queues.tasks]` is still declared"
    );
    assert_eq!(
        errors[1].to_string(),
        "`[subscribers.c]` and `[subscribers.b]` both say they were renamed from `old`"
    );

    let (_dir, loaded) = valid(indoc! {r#"
        [queues.jobs]
        renamed_from = "tasks"
        [subscribers.b]
        queue = "jobs"
        renamed_from = "a"
        [relays.r]
        from = "x"
        to = "jobs"
        renamed_from = "master"
    "#});
    let flows = loaded.flows;
    assert_eq!(flows.queues["jobs"].renamed_from.as_deref(), Some("tasks"));
    assert_eq!(flows.subscribers["b"].renamed_from.as_deref(), Some("a"));
    assert_eq!(flows.relays["r"].renamed_from.as_deref(), Some("master"));
}

#[test]
fn numbers_below_their_minimum() {
    let errors = invalid(indoc! {r#"
        [subscribers.a]
        topic = "x"
        concurrency = 0
        retry = { attempts = 0 }

        [queues.q]
        capacity = 0

        [chains.short]
        steps = ["only"]

        [producers.g]
        kind = "generator"
        topic = "g"
        count = -1
    "#});
    assert_eq!(
        summary(&errors),
        [
            ("edaflow::flow::too_small".into(), "0".into()),
            ("edaflow::flow::too_small".into(), "0".into()),
            ("edaflow::flow::too_small".into(), "0".into()),
            ("edaflow::flow::chain_too_short".into(), "[\"only\"]".into()),
            ("edaflow::flow::too_small".into(), "-1".into()),
        ]
    );
    assert_eq!(
        errors[0].to_string(),
        "`concurrency` must be at least 1, found 0"
    );
    assert_eq!(
        errors[3].to_string(),
        "chain `short` has 1 step(s); a chain needs at least 2"
    );
}

#[test]
fn every_error_of_a_file_is_reported_in_source_order() {
    let errors = invalid(indoc! {r#"
        [flow]
        nmae = "x"

        [producers.p]
        kind = "interval"

        [subscribers.s]
        topic = "a b"
        concurrency = 0
        retry = { backoff = "soon" }

        [relays.r]
        from = "x"
        to = "missing"
    "#});
    let codes: Vec<_> = errors.iter().map(|e| code(e)).collect();
    assert_eq!(
        codes,
        [
            "edaflow::flow::unknown_key",
            "edaflow::flow::missing_one_of",
            "edaflow::flow::missing_key",
            "edaflow::flow::invalid_pattern",
            "edaflow::flow::too_small",
            "edaflow::flow::invalid_duration",
            "edaflow::flow::unknown_queue",
        ]
    );
}

#[test]
fn folders_load_every_toml_file_in_name_order() {
    let dir = Dir::new();
    dir.write("flows/b.toml", "[subscribers.second]\ntopic = \"x\"\n");
    dir.write(
        "flows/a.toml",
        "[flow]\nname = \"first\"\n[producers.api]\nkind = \"http\"\n",
    );
    dir.write("flows/notes.md", "not a flow");
    dir.write("flows/nested/c.toml", "this is not read = at all");
    let loaded = dir.load(&["flows"]).expect("valid folder");
    let names: Vec<_> = loaded.flows.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["first", "b"]);
    assert_eq!(loaded.flows.subscribers["second"].file, 1);
    assert_eq!(loaded.flows.producers["api"].file, 0);

    // The same file through its folder and by name is read once.
    let loaded = dir.load(&["flows", "flows/a.toml"]).expect("valid folder");
    assert_eq!(loaded.flows.files.len(), 2);

    dir.write("empty/readme.txt", "");
    let e = only(dir.load(&["empty"]).expect_err("no flow files").errors);
    assert_eq!(code(&e), "edaflow::flow::no_flow_files");
}

#[test]
fn missing_paths_are_reported_with_the_rest() {
    let dir = Dir::new();
    dir.write("ok.toml", "[subscribers.s]\ntopic = 1\n");
    let report = dir
        .load(&["nope.toml", "ok.toml"])
        .expect_err("missing path");
    let codes: Vec<_> = report.errors.iter().map(|e| code(e)).collect();
    assert_eq!(
        codes,
        ["edaflow::flow::path_not_found", "edaflow::flow::wrong_type"]
    );
    assert!(report.summary.ends_with(": 2 errors"), "{}", report.summary);
}

#[test]
fn duplicate_names_across_files_are_errors() {
    let dir = Dir::new();
    dir.write(
        "flows/a.toml",
        "[subscribers.s]\ntopic = \"x\"\n[queues.q]\n",
    );
    dir.write(
        "flows/b.toml",
        "[subscribers.s]\ntopic = \"y\"\n[stores.q]\n[queues.q]\ndelay = \"1s\"\n",
    );
    let report = dir.load(&["flows"]).expect_err("duplicates");
    let errors = report.errors;
    assert_eq!(
        summary(&errors),
        [
            ("edaflow::flow::duplicate_name".into(), "s".into()),
            ("edaflow::flow::duplicate_name".into(), "q".into()),
        ]
    );
    let first = dir.path().join("flows/a.toml");
    assert_eq!(
        errors[0].to_string(),
        format!(
            "`[subscribers.s]` is already declared in {}",
            first.display()
        )
    );
    assert!(errors[1].to_string().starts_with("`[queues.q]`"));
}

#[test]
fn warnings_for_unconsumed_and_unproduced_topics() {
    let (_dir, loaded) = valid(indoc! {r#"
        [producers.beat]
        kind = "interval"
        every = "1s"
        topic = "heartbeat"

        [subscribers.a]
        topic = "orderCreated"
        emits = ["orderReserved", "orderAudited", "orderReserved"]

        [subscribers.b]
        topics = ["order*", "audit.>"]

        [subscribers.c]
        topic = "dead.a"

        [subscribers.d]
        topic = "never"
        emits = ["lonely"]

        [chains.c]
        steps = ["orderCreated", "orderReserved"]
        on_timeout = "stalled"
    "#});
    let warnings: Vec<_> = loaded
        .warnings
        .iter()
        .map(|w| format!("{} {}", code(w), labelled(w).join(",")))
        .collect();
    assert_eq!(
        warnings,
        [
            "edaflow::flow::never_consumed heartbeat",
            "edaflow::flow::never_consumed lonely",
            "edaflow::flow::never_consumed stalled",
            "edaflow::flow::never_produced orderCreated",
            "edaflow::flow::never_produced never",
        ]
    );
    assert!(loaded
        .warnings
        .iter()
        .all(|w| w.severity() == Some(miette::Severity::Warning)));
    assert!(matches!(
        &loaded.warnings[0],
        FlowWarning::NeverConsumed { topic, .. } if topic == "heartbeat"
    ));
}

#[test]
fn an_http_producer_silences_never_produced() {
    let (_dir, loaded) = valid(indoc! {r#"
        [producers.api]
        kind = "http"

        [subscribers.a]
        topic = "orderCreated"
        emits = ["nobody.listens"]
    "#});
    let codes: Vec<_> = loaded.warnings.iter().map(|w| code(w)).collect();
    assert_eq!(codes, ["edaflow::flow::never_consumed"]);
}

#[test]
fn rendering_is_plain_text() {
    let errors = invalid("[subscribers.a]\ntopic = \"x\"\nconcurrency = 0\n");
    let text = crate::flow::diagnostic::render(&errors[0], 80);
    assert!(!text.contains('\u{1b}'), "no colour codes: {text:?}");
    assert!(text.contains("edaflow::flow::too_small"), "{text}");
    assert!(text.contains("must be at least 1"), "{text}");
}

/// Loads a valid flow with scripts; returns `code label` of each warning.
fn lint(toml: &str, scripts: &[(&str, &str)]) -> Vec<String> {
    let dir = Dir::new();
    dir.write("flow.toml", toml);
    for (name, text) in scripts {
        dir.write(name, text);
    }
    let loaded = match dir.load(&["flow.toml"]) {
        Ok(loaded) => loaded,
        Err(report) => panic!("{}", crate::flow::diagnostic::render(&report, 100)),
    };
    loaded
        .warnings
        .iter()
        .map(|w| format!("{} {}", code(w), labelled(w).join(",")))
        .collect()
}

const QUERY_FLOW: &str = r#"
[producers.api]
kind = "http"

[subscribers.get]
topic = "orders.query.get"
script = "get.rhai"
"#;

#[test]
fn a_query_reply_that_cannot_run_is_a_warning() {
    for script in [
        "return;\nreply(1);",
        "if false { reply(1) }",
        "fn answer(x) { reply(x) }\nlog(1);",
        "throw \"not yet\";\nreply(1);",
    ] {
        assert_eq!(
            lint(QUERY_FLOW, &[("get.rhai", script)]),
            ["edaflow::flow::unreachable_reply orders.query.get"],
            "{script}"
        );
    }
    let dir = Dir::new();
    dir.write("flow.toml", QUERY_FLOW);
    dir.write("get.rhai", "let id = event.data.id;\nreturn;\nreply(id);\n");
    let loaded = dir.load(&["flow.toml"]).expect("valid");
    let FlowWarning::UnreachableReply { subscriber, at, .. } = &loaded.warnings[0] else {
        panic!("{:?}", loaded.warnings);
    };
    assert_eq!(subscriber, "get");
    assert_eq!(
        at,
        "get.rhai:3 never runs: it comes after an unconditional `return`"
    );
    assert!(help(&loaded.warnings[0]).contains("get.rhai:3"));
}

#[test]
fn conditional_and_indirect_replies_are_not_warned() {
    for script in [
        "if event.data.found { reply(1) } else { reply(2) }",
        "if event.data.id == () { reply(#{ error: \"no id\" }); return; }\nreply(event.data.id);",
        "fn answer(x) { reply(x) }\nanswer(event.data);",
        // A module might reply: the lint cannot see into it, so it says nothing.
        "import \"lib/q\" as q;\nq::answer(event);",
    ] {
        let warnings = lint(
            QUERY_FLOW,
            &[
                ("get.rhai", script),
                ("lib/q.rhai", "fn answer(e) { reply(e.data) }"),
            ],
        );
        assert!(warnings.is_empty(), "{script}: {warnings:?}");
    }
}

#[test]
fn a_reply_only_in_a_comment_is_no_reply() {
    let dir = Dir::new();
    dir.write("flow.toml", QUERY_FLOW);
    dir.write("get.rhai", "// reply(1) later\nlog(\"no answer\");\n");
    let Err(report) = dir.load(&["flow.toml"]) else {
        panic!("a query handler without a reply is an error");
    };
    assert_eq!(
        code(&only(report.errors)),
        "edaflow::flow::query_without_reply"
    );
}

const STORE_FLOW: &str = r#"
[producers.api]
kind = "http"

[subscribers.project]
topic = "orders.event.placed"
script = "project.rhai"

[subscribers.get]
topic = "orders.query.get"
script = "get.rhai"

[stores.orders]
"#;

#[test]
fn a_store_written_and_queried_is_fine() {
    let warnings = lint(
        STORE_FLOW,
        &[
            (
                "project.rhai",
                "let o = store(\"orders\");\no.set(\"a\", event.data);",
            ),
            ("get.rhai", "reply(store(\"orders\").get(\"a\"));"),
        ],
    );
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn store_rules_warn_on_the_store_declaration() {
    let project = ("project.rhai", "store(\"orders\").set(\"a\", event.data);");
    let silent = ("get.rhai", "reply(1);");
    assert_eq!(
        lint(STORE_FLOW, &[project, silent]),
        ["edaflow::flow::store_not_queried orders"]
    );
    let reads = ("get.rhai", "reply(store(\"orders\").get(\"a\"));");
    let writes_nothing = ("project.rhai", "log(event.data);");
    assert_eq!(
        lint(STORE_FLOW, &[writes_nothing, reads]),
        ["edaflow::flow::store_never_written orders"]
    );
    assert_eq!(
        lint(STORE_FLOW, &[writes_nothing, silent]),
        ["edaflow::flow::store_unused orders"]
    );
    // Reading it from a handler that is not a query does not make it queried.
    let reads_back = (
        "project.rhai",
        "let o = store(\"orders\"); o.set(\"n\", o.get(\"n\"));",
    );
    assert_eq!(
        lint(STORE_FLOW, &[reads_back, silent]),
        ["edaflow::flow::store_not_queried orders"]
    );
}

#[test]
fn an_exposed_store_counts_as_queried() {
    let flow = STORE_FLOW.replace("[stores.orders]", "[stores.orders]\nexpose = true");
    let warnings = lint(
        &flow,
        &[
            ("project.rhai", "store(\"orders\").incr(\"n\");"),
            ("get.rhai", "reply(1);"),
        ],
    );
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn store_rules_stay_quiet_when_a_name_is_computed() {
    // `store(name)` might be any store: no rule that such a use could contradict fires.
    let warnings = lint(
        STORE_FLOW,
        &[
            ("project.rhai", "store(event.data.which).set(\"a\", 1);"),
            ("get.rhai", "reply(store(\"orders\").get(\"a\"));"),
        ],
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    // A handle passed to a function may be written there.
    let warnings = lint(
        STORE_FLOW,
        &[
            (
                "project.rhai",
                "fn keep(s, e) { s.set(\"a\", e) }\nkeep(store(\"orders\"), event.data);",
            ),
            ("get.rhai", "reply(store(\"orders\").get(\"a\"));"),
        ],
    );
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn rings_of_emits_are_warned_about_once_each() {
    let (_dir, loaded) = valid(indoc! {r#"
        [producers.api]
        kind = "http"

        [subscribers.echo]
        topic = "ping"
        emits = ["ping"]

        [subscribers.a]
        topic = "left"
        emits = ["right"]

        [subscribers.b]
        topic = "right"
        emits = ["master"]

        [relays.master]
        from = "master"
        to = "work"

        [queues.work]

        [subscribers.worker]
        queue = "work"
        emits = ["left", "done"]

        [subscribers.done]
        topic = "done"
    "#});
    let loops: Vec<String> = loaded
        .warnings
        .iter()
        .filter(|w| code(*w) == "edaflow::flow::emit_loop")
        .map(|w| format!("{w} @ {}", labelled(w).join(",")))
        .collect();
    assert_eq!(
        loops,
        [
            "emit loop: `echo` -> `echo` @ ping",
            "emit loop: `a` -> `b` -> `relays.master` -> `worker` -> `a` @ right",
        ]
    );
}

/// The environment `${VAR}` references see in these tests (not the process's).
fn test_env(name: &str) -> Option<String> {
    match name {
        "REDIS_PASSWORD" => Some("hunter2".to_owned()),
        "REDIS_HOST" => Some("redis.staging".to_owned()),
        "API_TOKEN" => Some("t0ken-from-env".to_owned()),
        "BAD_TOKEN" => Some("leaked secret".to_owned()),
        "DATA_DIR" => Some("in".to_owned()),
        _ => None,
    }
}

/// Loads one flow file with `test_env` as the environment.
fn with_env(toml: &str) -> Result<Loaded, FlowReport> {
    let dir = Dir::new();
    let path = dir.write("flow.toml", toml);
    super::load_with_env(&[path], &test_env)
}

#[test]
fn environment_variables_fill_the_deployment_keys() {
    let loaded = with_env(indoc! {r#"
        [flow]
        broker = "redis://:${REDIS_PASSWORD}@${REDIS_HOST}:6379/0"

        [producers.api]
        kind = "http"
        listen = "${LISTEN:-127.0.0.1:3100}"
        token = "${API_TOKEN}"

        [producers.file]
        kind = "lines"
        path = "${DATA_DIR}/$${literal}.jsonl"
        topic = "lines.in"

        [subscribers.all]
        topic = "lines.in"
    "#})
    .unwrap_or_else(|report| panic!("{}", crate::flow::diagnostic::render(&report, 100)));
    assert_eq!(
        loaded.flows.files[0]
            .broker
            .as_ref()
            .map(|url| url.expose()),
        Some("redis://:hunter2@redis.staging:6379/0")
    );
    let p = &loaded.flows.producers;
    let ProducerKind::Http(api) = &p["api"].kind else {
        panic!("http producer");
    };
    assert_eq!(api.listen, "127.0.0.1:3100");
    assert_eq!(
        api.token.as_ref().map(ApiToken::expose),
        Some("t0ken-from-env")
    );
    let ProducerKind::Lines(file) = &p["file"].kind else {
        panic!("lines producer");
    };
    let path = file.path.as_ref().expect("a file path");
    assert!(path.ends_with("in/${literal}.jsonl"), "{}", path.display());
}

#[test]
fn a_missing_variable_points_at_its_reference() {
    let report = with_env(indoc! {r#"
        [flow]
        broker = "redis://:${REDIS_PASSWORD}@${REDIS_HOSTNAME}:6379"
    "#})
    .expect_err("REDIS_HOSTNAME is not set");
    let error = only(report.errors);
    assert_eq!(code(&error), "edaflow::flow::env_missing");
    assert_eq!(labelled(&error), ["${REDIS_HOSTNAME}"]);
    assert!(
        help(&error).contains("`REDIS_HOSTNAME`"),
        "{}",
        help(&error)
    );
    assert!(
        help(&error).contains("${REDIS_HOSTNAME:-value}"),
        "{}",
        help(&error)
    );
    assert_eq!(
        error.to_string(),
        "`broker` refers to environment variable `REDIS_HOSTNAME`, which is not set"
    );
}

#[test]
fn malformed_references_point_at_what_was_written() {
    let report = with_env(indoc! {r#"
        [producers.a]
        kind = "http"
        listen = "${1X}:3000"

        [producers.b]
        kind = "http"
        listen = "127.0.0.1:3001"
        token = "ab${API_TOKEN:-x"
    "#})
    .expect_err("two malformed references");
    assert_eq!(
        summary(&report.errors),
        [
            ("edaflow::flow::env_malformed".into(), "${1X}".into()),
            (
                "edaflow::flow::env_malformed".into(),
                "${API_TOKEN:-x".into()
            ),
        ]
    );
}

#[test]
fn a_string_with_escapes_labels_its_whole_value() {
    let report =
        with_env("[flow]\nbroker = \"redis://\\u0041${NOPE}\"\n").expect_err("NOPE is not set");
    let error = only(report.errors);
    assert_eq!(code(&error), "edaflow::flow::env_missing");
    assert_eq!(labelled(&error), ["redis://\\u0041${NOPE}"]);
}

#[test]
fn a_token_from_the_environment_never_shows_in_a_diagnostic() {
    let report = with_env(indoc! {r#"
        [producers.api]
        kind = "http"
        token = "${BAD_TOKEN}"
    "#})
    .expect_err("a token with a space");
    let rendered = crate::flow::diagnostic::render(&report, 100);
    assert!(rendered.contains("invalid_token"), "{rendered}");
    assert!(!rendered.contains("leaked secret"), "{rendered}");
    assert!(!format!("{report:?}").contains("leaked secret"));
}

#[test]
fn names_topics_and_scripts_stay_literal() {
    let report = with_env(indoc! {r#"
        [producers.tick]
        kind = "interval"
        every = "1s"
        topic = "${REDIS_HOST}"
    "#})
    .expect_err("a topic is never expanded");
    let error = only(report.errors);
    assert_eq!(code(&error), "edaflow::flow::invalid_topic");
    assert_eq!(labelled(&error), ["${REDIS_HOST}"]);
}
