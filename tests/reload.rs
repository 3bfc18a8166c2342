//! Hot reload in process, in the style of Vector's topology reload tests: flows and
//! scripts are rewritten in a temp dir, `Reloader::handle` runs the one reload path, and
//! each test asserts both the report (what the reloader says it did, exactly) and the
//! behaviour (what handlers emit, seen through `broker.tap`). Handlers emit `done` with
//! the event's `id` and a `version` string, and every emitted event carries the
//! `edaflowgeneration` extension, so each test can tell which code handled which event.
//!
//! Nothing here sleeps to wait for a result: every wait is a condition with a deadline.
//! The last test runs the real `FileWatcher` + `Reloader` loop under load.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indoc::{formatdoc, indoc};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use edaflow::broker::{Broker, MemoryBroker, MemoryOptions};
use edaflow::event::Event;
use edaflow::flow::TopicPattern;
use edaflow::runtime::reload::{ReloadCause, ReloadReport, ReloadRequest, Reloader};
use edaflow::runtime::subscriber::GENERATION_EXTENSION;
use edaflow::runtime::{ReloadOutcome, RuntimeOptions};
use edaflow::script::Limits;
use edaflow::watch::{FileWatcher, DEFAULT_DEBOUNCE};

use common::http_server::{oneshot, router};
use common::runtime::{self, start_reloader};
use common::{http_async, wait_for, FlowDir};

/// Upper bound for anything a test waits on (generous: the machine may be busy).
const WITHIN: Duration = Duration::from_secs(10);

const SOURCE: &str = "edaflow://reload/test";

/// One subscriber `a` on `work`, running `a.rhai`.
const ONE_SUBSCRIBER: &str = indoc! {r#"
    [flow]
    name = "reload"

    [subscribers.a]
    topic = "work"
    script = "a.rhai"
    emits = ["done"]
"#};

fn options() -> RuntimeOptions {
    RuntimeOptions {
        producers: true,
        ..RuntimeOptions::default()
    }
}

/// Limits loose enough for a handler that busy-waits to stay in flight during a reload.
fn slow_handler_options() -> RuntimeOptions {
    RuntimeOptions {
        limits: Limits {
            max_operations: 0,
            wall_time: Duration::from_secs(30),
            ..Limits::default()
        },
        ..options()
    }
}

/// A subscriber script that emits `done` with the event's `id` and its `version`.
fn versioned_handler(version: &str) -> String {
    format!("emit(\"done\", #{{ id: event.data.id, version: \"{version}\" }});\n")
}

/// A handler that busy-waits `event.data.busy_ms` (if given), then emits its version.
fn busy_handler(version: &str) -> String {
    formatdoc! {r#"
        let busy = event.data.busy_ms;
        if busy != () {{
            let stop_at = now_ms() + busy;
            while now_ms() < stop_at {{ }}
        }}
        emit("done", #{{ id: event.data.id, version: "{version}" }});
    "#}
}

/// Starts generation 1 from `paths` on a fresh memory broker.
async fn start(
    paths: Vec<PathBuf>,
    options: RuntimeOptions,
) -> (Reloader<MemoryBroker>, MemoryBroker) {
    let broker = MemoryBroker::new(MemoryOptions::default());
    let (reloader, outcome) = start_reloader(broker.clone(), options, paths).await;
    assert_eq!(outcome.generation, 1);
    (reloader, broker)
}

/// The one reload path, as `POST /admin/reload` drives it.
async fn reload(reloader: &mut Reloader<MemoryBroker>) -> ReloadReport {
    reloader.handle(ReloadRequest::new(ReloadCause::Http)).await
}

#[track_caller]
fn applied(report: ReloadReport) -> ReloadOutcome {
    match report {
        ReloadReport::Applied(outcome) => outcome,
        other => panic!("expected the reload to apply, got {other:#?}"),
    }
}

/// Asserts an outcome exactly: generation, and the contents of the four lists.
#[track_caller]
fn assert_outcome(
    outcome: &ReloadOutcome,
    generation: u64,
    added: &[&str],
    changed: &[&str],
    removed: &[&str],
    swapped: &[&str],
) {
    assert!(outcome.ok, "{outcome:#?}");
    assert_eq!(outcome.generation, generation, "{outcome:#?}");
    // The order within a list is not part of the contract; the contents are, exactly.
    let sorted = |list: &[String]| {
        let mut list = list.to_vec();
        list.sort();
        list
    };
    let expected = |list: &[&str]| sorted(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(
        sorted(&outcome.added),
        expected(added),
        "added, in {outcome:#?}"
    );
    assert_eq!(
        sorted(&outcome.changed),
        expected(changed),
        "changed, in {outcome:#?}"
    );
    assert_eq!(
        sorted(&outcome.removed),
        expected(removed),
        "removed, in {outcome:#?}"
    );
    assert_eq!(
        sorted(&outcome.swapped),
        expected(swapped),
        "swapped, in {outcome:#?}"
    );
}

async fn publish(broker: &MemoryBroker, topic: &str, data: Value) {
    runtime::publish(broker, topic, SOURCE, data).await;
}

/// A live view of the events on some topics, read with deadlines.
struct Seen {
    rx: mpsc::Receiver<Arc<Event>>,
}

impl Seen {
    fn new(broker: &MemoryBroker, pattern: &str) -> Seen {
        let pattern = TopicPattern::parse(pattern).expect("a test pattern");
        Seen {
            rx: broker.tap(pattern, 1 << 20),
        }
    }

    /// The next event, waiting at most `WITHIN`.
    async fn next(&mut self, what: &str) -> Arc<Event> {
        match tokio::time::timeout(WITHIN, self.rx.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the tap closed while waiting for {what}"),
            Err(_) => panic!("timed out after {WITHIN:?} waiting for {what}"),
        }
    }

    /// Events up to and including the first one for which `last` holds.
    async fn until(&mut self, what: &str, last: impl Fn(&Event) -> bool) -> Vec<Arc<Event>> {
        let mut events = Vec::new();
        loop {
            let event = self.next(what).await;
            let done = last(&event);
            events.push(event);
            if done {
                return events;
            }
        }
    }

    /// What arrived so far, without waiting.
    fn drain(&mut self) -> Vec<Arc<Event>> {
        let mut events = Vec::new();
        while let Ok(event) = self.rx.try_recv() {
            events.push(event);
        }
        events
    }
}

fn version(event: &Event) -> &str {
    event.data["version"].as_str().unwrap_or_else(|| {
        panic!("no version in {}", event.to_json());
    })
}

fn id(event: &Event) -> u64 {
    event.data["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no id in {}", event.to_json()))
}

fn generation_of(event: &Event) -> u64 {
    event
        .extensions
        .get(GENERATION_EXTENSION)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no {GENERATION_EXTENSION} on {}", event.to_json()))
}

/// `(version, generation)` of each `done` for event `id`, sorted.
fn handled_by(events: &[Arc<Event>], wanted: u64) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e.topic == "done" && id(e) == wanted)
        .map(|e| (version(e).to_owned(), generation_of(e)))
        .collect();
    found.sort();
    found
}

/// Publishes `work` with `id` and returns the `done` events up to the one from `last_version`.
async fn handle_one(
    broker: &MemoryBroker,
    seen: &mut Seen,
    n: u64,
    last_version: &str,
) -> Vec<Arc<Event>> {
    publish(broker, "work", json!({ "id": n })).await;
    seen.until(&format!("event {n} handled by {last_version}"), |e| {
        id(e) == n && version(e) == last_version
    })
    .await
}

fn pair(version: &str, generation: u64) -> (String, u64) {
    (version.to_owned(), generation)
}

// ---------------------------------------------------------------------------------------
// Subscribers, producers and config-only sections: add, change, remove.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_are_added_changed_and_removed() {
    let dir = FlowDir::new();
    dir.write("a.rhai", &versioned_handler("a1"));
    dir.write("b.rhai", &versioned_handler("b1"));
    let flow = dir.write("flow.toml", ONE_SUBSCRIBER);
    let (mut reloader, broker) = start(vec![flow], options()).await;
    let mut seen = Seen::new(&broker, "done");

    // Add `b` next to `a`.
    let with_b = format!(
        "{ONE_SUBSCRIBER}\n{}",
        indoc! {r#"
            [subscribers.b]
            topic = "work"
            script = "b.rhai"
            emits = ["done"]
        "#}
    );
    dir.write("flow.toml", &with_b);
    let outcome = applied(reload(&mut reloader).await);
    assert_outcome(&outcome, 2, &["subscribers.b"], &[], &[], &[]);
    publish(&broker, "work", json!({ "id": 1 })).await;
    let events = vec![
        seen.next("a `done`").await,
        seen.next("a second `done`").await,
    ];
    assert_eq!(handled_by(&events, 1), [pair("a1", 2), pair("b1", 2)]);

    // Change `b`'s topic: it drains and restarts on the new topic; `a` is untouched.
    dir.write(
        "flow.toml",
        &with_b.replace(
            "topic = \"work\"\nscript = \"b.rhai\"",
            "topic = \"other\"\nscript = \"b.rhai\"",
        ),
    );
    let outcome = applied(reload(&mut reloader).await);
    assert_outcome(&outcome, 3, &[], &["subscribers.b"], &[], &[]);
    publish(&broker, "work", json!({ "id": 2 })).await;
    publish(&broker, "other", json!({ "id": 3 })).await;
    // `b` handles its group in order: had it still received `work`, event 2 would come
    // before event 3.
    let mut events = seen
        .until("b to handle event 3", |e| id(e) == 3 && version(e) == "b1")
        .await;
    if handled_by(&events, 2).is_empty() {
        events.extend(seen.until("a to handle event 2", |e| id(e) == 2).await);
    }
    assert_eq!(handled_by(&events, 2), [pair("a1", 3)], "{events:#?}");
    assert_eq!(handled_by(&events, 3), [pair("b1", 3)], "{events:#?}");

    // Remove `b`: its group goes, `a` runs on.
    dir.write("flow.toml", ONE_SUBSCRIBER);
    let outcome = applied(reload(&mut reloader).await);
    assert_outcome(&outcome, 4, &[], &[], &["subscribers.b"], &[]);
    assert!(
        broker.stats().iter().all(|g| g.name != "b"),
        "the removed subscriber's group is gone: {:?}",
        broker.stats()
    );
    let events = handle_one(&broker, &mut seen, 4, "a1").await;
    assert_eq!(handled_by(&events, 4), [pair("a1", 4)]);
    reloader.into_runtime().shutdown(WITHIN).await;
}

#[tokio::test(start_paused = true)]
async fn interval_producers_are_added_changed_and_removed() {
    // Paused time: ticks and the "no more ticks" window are virtual and exact.
    let dir = FlowDir::new();
    dir.write("a.rhai", &versioned_handler("a1"));
    let flow = dir.write("flow.toml", ONE_SUBSCRIBER);
    let (mut reloader, broker) = start(vec![flow], options()).await;
    let mut ticks = Seen::new(&broker, "tick");
    let with_tick = |body: &str| {
        format!(
            "{ONE_SUBSCRIBER}\n[producers.tick]\nkind = \"interval\"\nevery = \"10ms\"\n{body}\n"
        )
    };

    dir.write(
        "flow.toml",
        &with_tick("topic = \"tick\"\ndata = { v = 1 }"),
    );
    let outcome = applied(reload(&mut reloader).await);
    assert_outcome(&outcome, 2, &["producers.tick"], &[], &[], &[]);
    let tick = ticks.next("the first tick").await;
    assert_eq!(tick.data, json!({ "v": 1 }));

    // Change the fixed event: the producer restarts; every tick after the report is new.
    dir.write(
        "flow.toml",
        &with_tick("topic = \"tick\"\ndata = { v = 2 }"),
    );
    let outcome = applied(reload(&mut reloader).await);
    assert_outcome(&outcome, 3, &[], &["producers.tick"], &[], &[]);
    ticks.drain();
    for _ in 0..3 {
        assert_eq!(
            ticks.next("a tick after the change").await.data,
            json!({ "v": 2 })
        );
    }

    // Switch to a script, then edit only the script: an interval producer restarts with
    // the new code (producers are not swapped in place).
    dir.write("tick.rhai", r#"emit("tick", #{ v: 3 });"#);
    dir.write("flow.toml", &with_tick("script = \"tick.rhai\""));
    let outcome = applied(reload(&mut reloader).await);
    assert_outcome(&outcome, 4, &[], &["producers.tick"], &[], &[]);
    ticks.drain();
    assert_eq!(ticks.next("a scripted tick").await.data, json!({ "v": 3 }));
    dir.write("tick.rhai", r#"emit("tick", #{ v: 4 });"#);
    let outcome = applied(reload(&mut reloader).await);
    assert_outcome(&outcome, 5, &[], &["producers.tick"], &[], &[]);
    ticks.drain();
    assert_eq!(
        ticks.next("a tick from the edited script").await.data,
        json!({ "v": 4 })
    );

    // Remove it: it is stopped before the report, so no tick follows (over 100 periods).
    dir.write("flow.toml", ONE_SUBSCRIBER);
    let outcome = applied(reload(&mut reloader).await);
    assert_outcome(&outcome, 6, &[], &[], &["producers.tick"], &[]);
    ticks.drain();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(ticks.drain().is_empty(), "a removed producer ticked");
    reloader.into_runtime().shutdown(WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_producers_are_added_changed_and_removed() {
    let dir = FlowDir::new();
    dir.write("a.rhai", &versioned_handler("a1"));
    let flow = dir.write("flow.toml", ONE_SUBSCRIBER);
    let (mut reloader, broker) = start(vec![flow], options()).await;
    let mut seen = Seen::new(&broker, "done");
    let with_api = |extra: &str| {
        format!("{ONE_SUBSCRIBER}\n[producers.api]\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n{extra}\n")
    };
    let post = |addr, n: u64, token: Option<&str>| {
        let headers = token
            .map(|t| vec![("authorization", format!("Bearer {t}"))])
            .unwrap_or_default();
        http_async(
            addr,
            "POST",
            "/topics/work".to_owned(),
            headers,
            format!(r#"{{"id": {n}}}"#),
        )
    };

    dir.write("flow.toml", &with_api(""));
    let outcome = applied(reload(&mut reloader).await);
    assert_outcome(&outcome, 2, &["producers.api"], &[], &[], &[]);
    let addr = reloader.runtime().http_addrs()["api"];
    let answer = post(addr, 1, None)
        .await
        .expect("the added producer serves");
    assert_eq!(answer.status, 202, "{answer:?}");
    seen.until("event 1", |e| id(e) == 1).await;

    // Change it (a token): restarted with the new settings.
    dir.write("flow.toml", &with_api("token = \"s3cret\""));
    let outcome = applied(reload(&mut reloader).await);
    assert_outcome(&outcome, 3, &[], &["producers.api"], &[], &[]);
    let addr = reloader.runtime().http_addrs()["api"];
    let answer = post(addr, 2, None)
        .await
        .expect("the changed producer serves");
    assert_eq!(answer.status, 401, "the token is now required: {answer:?}");
    let answer = post(addr, 3, Some("s3cret")).await.expect("serves");
    assert_eq!(answer.status, 202, "{answer:?}");
    let events = seen.until("event 3", |e| id(e) == 3).await;
    assert!(
        handled_by(&events, 2).is_empty(),
        "a refused event was published"
    );

    // Remove it: the port closes.
    dir.write("flow.toml", ONE_SUBSCRIBER);
    let outcome = applied(reload(&mut reloader).await);
    assert_outcome(&outcome, 4, &[], &[], &["producers.api"], &[]);
    assert!(reloader.runtime().http_addrs().is_empty());
    assert!(
        post(addr, 4, Some("s3cret")).await.is_err(),
        "the removed producer still answers on {addr}"
    );
    reloader.into_runtime().shutdown(WITHIN).await;
}

/// One edit of a section: its name, the section text, and the expected
/// `[added, changed, removed]`.
type Step<'a> = (&'a str, &'a str, [&'a [&'a str]; 3]);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_only_sections_reload_without_restarting_subscribers() {
    let dir = FlowDir::new();
    dir.write("a.rhai", &busy_handler("a1"));
    let flow = dir.write("flow.toml", ONE_SUBSCRIBER);
    let (mut reloader, broker) = start(vec![flow], slow_handler_options()).await;
    let mut seen = Seen::new(&broker, "done");
    let metrics = reloader.runtime().metrics().subscriber("a");

    // Each section is added, changed and removed; the outcome names exactly that
    // component, and none of it may touch subscriber `a`. (A relay needs its queue, which
    // comes and goes with it.)
    let relay = "[queues.tasks]\n[relays.master]\nfrom = \"master\"\nto = \"tasks\"";
    let sections: [(&str, [Step; 3]); 5] = [
        ("queues", [
            ("add", "[queues.tasks]\ndelay = \"1s\"", [&["queues.tasks"], &[], &[]]),
            ("change", "[queues.tasks]\ndelay = \"2s\"\ncapacity = 10", [&[], &["queues.tasks"], &[]]),
            ("remove", "", [&[], &[], &["queues.tasks"]]),
        ]),
        ("relays", [
            ("add", relay, [&["queues.tasks", "relays.master"], &[], &[]]),
            ("change", &*format!("{relay}\ndelay = \"5s\""), [&[], &["relays.master"], &[]]),
            ("remove", "", [&[], &[], &["queues.tasks", "relays.master"]]),
        ]),
        ("chains", [
            ("add", "[chains.journey]\nsteps = [\"work\", \"done\"]", [&["chains.journey"], &[], &[]]),
            (
                "change",
                "[chains.journey]\nsteps = [\"work\", \"done\"]\ntimeout = \"30s\"\non_timeout = \"stalled\"",
                [&[], &["chains.journey"], &[]],
            ),
            ("remove", "", [&[], &[], &["chains.journey"]]),
        ]),
        ("topics", [
            ("add", "[topics.work]\nretention = \"1d\"", [&["topics.work"], &[], &[]]),
            ("change", "[topics.work]\nretention = \"2d\"\nkind = \"command\"", [&[], &["topics.work"], &[]]),
            ("remove", "", [&[], &[], &["topics.work"]]),
        ]),
        ("stores", [
            ("add", "[stores.orders]", [&["stores.orders"], &[], &[]]),
            ("change", "[stores.orders]\nexpose = true", [&[], &["stores.orders"], &[]]),
            ("remove", "", [&[], &[], &["stores.orders"]]),
        ]),
    ];
    let mut generation = 1;
    let mut n = 0;
    for (section, steps) in sections {
        for (step, text, [added, changed, removed]) in steps {
            n += 1;
            dir.write("flow.toml", &format!("{ONE_SUBSCRIBER}\n{text}\n"));
            // On each change, an event is in flight on `a` (busy for 700 ms) while the
            // reload runs: had `a` been restarted, the reload would have waited for it.
            let slow = step == "change";
            if slow {
                let before = metrics.events_in.load(Ordering::SeqCst);
                publish(&broker, "work", json!({ "id": n, "busy_ms": 700 })).await;
                wait_for("the slow event to be in flight", WITHIN, || {
                    metrics.events_in.load(Ordering::SeqCst) > before
                })
                .await;
            }
            let outcome = applied(reload(&mut reloader).await);
            generation += 1;
            assert_outcome(&outcome, generation, added, changed, removed, &[]);
            if slow {
                assert!(
                    seen.drain().is_empty(),
                    "{step} {section}: the reload waited for `a`'s event in flight (it restarted `a`)"
                );
                let events = seen
                    .until(&format!("{step} {section}: event {n}"), |e| id(e) == n)
                    .await;
                // It started on the previous generation and reports the code it ran.
                assert_eq!(handled_by(&events, n), [pair("a1", generation - 1)]);
            }
            let events = handle_one(&broker, &mut seen, 1000 + n, "a1").await;
            assert_eq!(handled_by(&events, 1000 + n), [pair("a1", generation)]);
        }
    }
    reloader.into_runtime().shutdown(WITHIN).await;
}

// ---------------------------------------------------------------------------------------
// Invalid edits, identical saves, new files, modules.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_edits_change_nothing_and_the_old_code_runs_on() {
    let dir = FlowDir::new();
    let good_script = versioned_handler("a1");
    dir.write("a.rhai", &good_script);
    let flow = dir.write("flow.toml", ONE_SUBSCRIBER);
    let (mut reloader, broker) = start(vec![flow], options()).await;
    let mut seen = Seen::new(&broker, "done");

    let unknown_key = format!("{ONE_SUBSCRIBER}scirpt = \"a.rhai\"\n");
    let missing_script = ONE_SUBSCRIBER.replace("a.rhai", "missing.rhai");
    let cases: [(&str, &str, &str, &[&str]); 4] = [
        (
            "invalid TOML",
            "flow.toml",
            "[subscribers.a\ntopic = \"work\"\n",
            &["edaflow::flow::toml_syntax", "flow.toml"],
        ),
        (
            "an unknown key",
            "flow.toml",
            &unknown_key,
            &[
                "edaflow::flow::unknown_key",
                "unknown key `scirpt` in `subscribers.a`",
            ],
        ),
        (
            "a Rhai syntax error",
            "a.rhai",
            "emit(\"done\", #{ id: event.data.id, version: \"a2\" ;\n",
            &["edaflow::script::compile", "a.rhai"],
        ),
        (
            "a missing script",
            "flow.toml",
            &missing_script,
            &["edaflow::flow::missing_script", "missing.rhai"],
        ),
    ];
    for (n, (what, file, text, expected)) in cases.into_iter().enumerate() {
        let n = n as u64;
        dir.write(file, text);
        match reload(&mut reloader).await {
            ReloadReport::Invalid {
                generation,
                diagnostic,
                problems,
            } => {
                assert_eq!(generation, 1, "{what}");
                for part in expected {
                    assert!(
                        diagnostic.contains(part),
                        "{what}: the diagnostic should contain {part:?}:\n{diagnostic}"
                    );
                }
                // The same problem as data, placed in the edited file.
                assert!(
                    problems.iter().any(|p| p.code == expected[0]
                        && p.file.as_deref().is_some_and(|f| f.ends_with(file))
                        && p.line.is_some()),
                    "{what}: a {} problem in {file}: {problems:#?}",
                    expected[0]
                );
            }
            other => panic!("{what}: expected Invalid, got {other:#?}"),
        }
        assert_eq!(reloader.runtime().generation(), 1, "{what}");
        let events = handle_one(&broker, &mut seen, n, "a1").await;
        assert_eq!(handled_by(&events, n), [pair("a1", 1)], "{what}");
        let last = reloader
            .runtime()
            .status()
            .last_reload
            .lock()
            .unwrap()
            .clone();
        let last = last.expect("the failure is recorded");
        assert!(!last.ok && last.generation == 1, "{what}: {last:?}");

        // Putting the good text back is no change at all.
        dir.write("flow.toml", ONE_SUBSCRIBER);
        dir.write("a.rhai", &good_script);
        assert_eq!(
            reload(&mut reloader).await,
            ReloadReport::Unchanged { generation: 1 },
            "{what}"
        );
    }
    reloader.into_runtime().shutdown(WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saving_identical_bytes_is_unchanged() {
    let dir = FlowDir::new();
    dir.write("lib/version.rhai", "export const VERSION = \"m1\";\n");
    dir.write(
        "a.rhai",
        "import \"lib/version\" as v;\nemit(\"done\", #{ id: event.data.id, version: v::VERSION });\n",
    );
    let flow = dir.write("flow.toml", ONE_SUBSCRIBER);
    let (mut reloader, broker) = start(vec![flow], options()).await;
    let mut seen = Seen::new(&broker, "done");
    for file in ["flow.toml", "a.rhai", "lib/version.rhai"] {
        let bytes = std::fs::read(dir.path(file)).expect("read back");
        std::fs::write(dir.path(file), bytes).expect("rewrite");
        assert_eq!(
            reload(&mut reloader).await,
            ReloadReport::Unchanged { generation: 1 },
            "rewriting {file} unchanged"
        );
    }
    let events = handle_one(&broker, &mut seen, 1, "m1").await;
    assert_eq!(handled_by(&events, 1), [pair("m1", 1)]);
    reloader.into_runtime().shutdown(WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flow_file_dropped_into_a_watched_folder_is_added() {
    let dir = FlowDir::new();
    dir.write("flows/a.rhai", &versioned_handler("a1"));
    dir.write("flows/b.rhai", &versioned_handler("b1"));
    dir.write("flows/a.toml", ONE_SUBSCRIBER);
    let folder = dir.path("flows");
    let (mut reloader, broker) = start(vec![folder.clone()], options()).await;
    let mut seen = Seen::new(&broker, "done");

    let (requests, mut pending) = mpsc::channel(16);
    let tracker = TaskTracker::new();
    let token = CancellationToken::new();
    let _watcher = FileWatcher::spawn(
        &[folder],
        &reloader.watched_files(),
        DEFAULT_DEBOUNCE,
        requests,
        &tracker,
        token.clone(),
    )
    .expect("watching starts");

    dir.save_atomic(
        "flows/b.toml",
        indoc! {r#"
            [flow]
            name = "second"

            [subscribers.b]
            topic = "work"
            script = "b.rhai"
            emits = ["done"]
        "#},
    );
    let request = tokio::time::timeout(WITHIN, pending.recv())
        .await
        .expect("the watcher notices the new file")
        .expect("the watcher runs");
    match &request.cause {
        ReloadCause::Files(paths) => assert!(
            paths.iter().any(|p| p.ends_with("b.toml")),
            "the request names the new file: {paths:?}"
        ),
        other => panic!("expected a file change, got {other:?}"),
    }
    let outcome = applied(reloader.handle(request).await);
    assert_outcome(&outcome, 2, &["subscribers.b"], &[], &[], &[]);
    publish(&broker, "work", json!({ "id": 1 })).await;
    let events = vec![
        seen.next("a `done`").await,
        seen.next("a second `done`").await,
    ];
    assert_eq!(handled_by(&events, 1), [pair("a1", 2), pair("b1", 2)]);

    token.cancel();
    tracker.close();
    tracker.wait().await;
    reloader.into_runtime().shutdown(WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_module_swaps_only_its_importers() {
    let dir = FlowDir::new();
    dir.write("lib/version.rhai", "export const VERSION = \"m1\";\n");
    let importer = |name: &str| {
        format!(
            "import \"lib/version\" as v;\nemit(\"done\", #{{ id: event.data.id, version: \"{name}-\" + v::VERSION }});\n"
        )
    };
    dir.write("a.rhai", &importer("a"));
    dir.write("b.rhai", &importer("b"));
    dir.write("c.rhai", &versioned_handler("c1"));
    let mut text = String::from("[flow]\nname = \"modules\"\n");
    for name in ["a", "b", "c"] {
        text.push_str(&format!(
            "\n[subscribers.{name}]\ntopic = \"work\"\nscript = \"{name}.rhai\"\nemits = [\"done\"]\n"
        ));
    }
    let flow = dir.write("flow.toml", &text);
    let (mut reloader, broker) = start(vec![flow], options()).await;
    let mut seen = Seen::new(&broker, "done");

    dir.save_atomic("lib/version.rhai", "export const VERSION = \"m2\";\n");
    let outcome = applied(reload(&mut reloader).await);
    assert_outcome(
        &outcome,
        2,
        &[],
        &[],
        &[],
        &["subscribers.a", "subscribers.b"],
    );
    publish(&broker, "work", json!({ "id": 1 })).await;
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(seen.next("three `done`s").await);
    }
    assert_eq!(
        handled_by(&events, 1),
        [pair("a-m2", 2), pair("b-m2", 2), pair("c1", 2)]
    );
    reloader.into_runtime().shutdown(WITHIN).await;
}

// ---------------------------------------------------------------------------------------
// Swaps, restarts, rollbacks.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_script_edit_swaps_in_place_and_in_flight_events_finish_on_the_old_code() {
    let dir = FlowDir::new();
    dir.write("a.rhai", &busy_handler("v1"));
    let flow = dir.write(
        "flow.toml",
        &ONE_SUBSCRIBER.replace("emits = [\"done\"]", "emits = [\"done\"]\nconcurrency = 2"),
    );
    let (mut reloader, broker) = start(vec![flow], slow_handler_options()).await;
    let mut seen = Seen::new(&broker, "done");
    let metrics = reloader.runtime().metrics().subscriber("a");

    // Event 1 is in flight on worker 1 (busy for 1.5 s) when the script changes.
    publish(&broker, "work", json!({ "id": 1, "busy_ms": 1500 })).await;
    wait_for("event 1 to be in flight", WITHIN, || {
        metrics.events_in.load(Ordering::SeqCst) == 1
    })
    .await;
    dir.save_atomic("a.rhai", &busy_handler("v2"));
    let outcome = applied(reload(&mut reloader).await);
    assert_outcome(&outcome, 2, &[], &[], &[], &["subscribers.a"]);
    assert!(
        seen.drain().is_empty(),
        "the swap must not wait for the event in flight"
    );

    // The next event runs the new code on the other worker while event 1 still runs…
    publish(&broker, "work", json!({ "id": 2 })).await;
    let events = seen.until("event 1", |e| id(e) == 1).await;
    let order: Vec<u64> = events.iter().map(|e| id(e)).collect();
    assert_eq!(order, [2, 1], "event 2 finished first: {events:#?}");
    // …and event 1 finishes on the code it started with.
    assert_eq!(handled_by(&events, 2), [pair("v2", 2)]);
    assert_eq!(handled_by(&events, 1), [pair("v1", 1)]);
    reloader.into_runtime().shutdown(WITHIN).await;
}

/// Publishes `count` events on `work` as fast as the broker takes them while `edit` is
/// saved and reloaded; asserts `a` was restarted (`changed`) and handled every event once.
async fn restart_under_traffic(edit: impl Fn(&str) -> String) {
    const COUNT: u64 = 3000;
    let dir = FlowDir::new();
    dir.write("a.rhai", &versioned_handler("a1"));
    let base = ONE_SUBSCRIBER;
    let flow = dir.write("flow.toml", base);
    let (mut reloader, broker) = start(vec![flow], options()).await;
    let mut seen = Seen::new(&broker, "done");

    let published = Arc::new(AtomicU64::new(0));
    // The last fifth waits until the reload is asked for, so that the reload always lands
    // in the middle of the traffic, however slow the machine.
    let reloading = Arc::new(tokio::sync::Notify::new());
    let publisher = tokio::spawn({
        let broker = broker.clone();
        let published = published.clone();
        let reloading = reloading.clone();
        async move {
            // 10 events a millisecond.
            let mut interval = tokio::time::interval(Duration::from_millis(1));
            for n in 0..COUNT {
                if n == COUNT * 4 / 5 {
                    reloading.notified().await;
                }
                if n % 10 == 0 {
                    interval.tick().await;
                }
                publish(&broker, "work", json!({ "id": n })).await;
                published.store(n + 1, Ordering::SeqCst);
            }
        }
    });
    wait_for("some traffic before the reload", WITHIN, || {
        published.load(Ordering::SeqCst) >= COUNT / 5
    })
    .await;
    dir.write("flow.toml", &edit(base));
    let before = published.load(Ordering::SeqCst);
    reloading.notify_one();
    let outcome = applied(reload(&mut reloader).await);
    assert_outcome(&outcome, 2, &[], &["subscribers.a"], &[], &[]);
    publisher.await.expect("the publisher finishes");
    assert!(
        before < COUNT,
        "the reload was asked for while events were being published"
    );

    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while (counts.len() as u64) < COUNT && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), seen.rx.recv()).await {
            Ok(Some(event)) => *counts.entry(id(&event)).or_default() += 1,
            Ok(None) => break,
            Err(_) => {}
        }
    }
    wait_for("the broker to go idle", WITHIN, || broker.is_idle()).await;
    for event in seen.drain() {
        *counts.entry(id(&event)).or_default() += 1;
    }
    let missing: Vec<u64> = (0..COUNT).filter(|n| !counts.contains_key(n)).collect();
    let twice: Vec<(&u64, &usize)> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "every event exactly once: {} missing (first {:?}), {} more than once (first {:?})",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        twice.len(),
        twice.iter().take(10).collect::<Vec<_>>()
    );
    reloader.into_runtime().shutdown(WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_topic_restarts_without_losing_events() {
    restart_under_traffic(|base| {
        base.replace("topic = \"work\"", "topics = [\"work\", \"extra\"]")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_concurrency_restarts_without_losing_events() {
    restart_under_traffic(|base| format!("{base}concurrency = 3\n")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_retry_policy_restarts_without_losing_events() {
    restart_under_traffic(|base| format!("{base}retry = {{ attempts = 5, backoff = \"10ms\" }}\n"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]

async fn a_changed_group_restarts_without_losing_events() {
    restart_under_traffic(|base| format!("{base}group = \"renamed\"\n")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_while_applying_rolls_back() {
    let dir = FlowDir::new();
    dir.write("a.rhai", &versioned_handler("a1"));
    let with_api = |listen: &str| {
        format!("{ONE_SUBSCRIBER}\n[producers.api]\nkind = \"http\"\nlisten = \"{listen}\"\n")
    };
    let flow = dir.write("flow.toml", &with_api("127.0.0.1:0"));
    let (mut reloader, broker) = start(vec![flow], options()).await;
    let mut seen = Seen::new(&broker, "done");

    // The new generation wants a port someone else holds, and new code for `a`.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let taken_addr = taken.local_addr().expect("its address");
    dir.write("flow.toml", &with_api(&taken_addr.to_string()));
    dir.write("a.rhai", &versioned_handler("a2"));
    match reload(&mut reloader).await {
        ReloadReport::RolledBack { generation, error } => {
            assert_eq!(generation, 1);
            assert!(
                error.contains(&format!("cannot listen on {taken_addr}")),
                "{error}"
            );
        }
        other => panic!("expected a rollback, got {other:#?}"),
    }
    assert_eq!(reloader.runtime().generation(), 1);

    // The old producer serves again (on a fresh port 0) and the old code handles events.
    let addr = reloader.runtime().http_addrs()["api"];
    assert_ne!(addr, taken_addr);
    let answer = http_async(
        addr,
        "POST",
        "/topics/work".into(),
        vec![],
        r#"{"id": 1}"#.into(),
    )
    .await
    .expect("the restored producer serves");
    assert_eq!(answer.status, 202, "{answer:?}");
    let events = seen.until("event 1", |e| id(e) == 1).await;
    assert_eq!(handled_by(&events, 1), [pair("a1", 1)]);
    let health = http_async(addr, "GET", "/healthz".into(), vec![], String::new())
        .await
        .expect("healthz");
    let health: Value = serde_json::from_str(&health.body).expect("JSON");
    assert_eq!(health["generation"], 1, "{health}");
    assert_eq!(health["last_reload"]["ok"], false, "{health}");
    let message = health["last_reload"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("rolled back"), "{health}");
    drop(taken);
    reloader.into_runtime().shutdown(WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]

async fn a_rollback_restores_the_old_module_code() {
    let dir = FlowDir::new();
    dir.write("lib/version.rhai", "export const VERSION = \"m1\";\n");
    dir.write(
        "a.rhai",
        "import \"lib/version\" as v;\nemit(\"done\", #{ id: event.data.id, version: v::VERSION });\n",
    );
    let with_api = |listen: &str| {
        format!("{ONE_SUBSCRIBER}\n[producers.api]\nkind = \"http\"\nlisten = \"{listen}\"\n")
    };
    let flow = dir.write("flow.toml", &with_api("127.0.0.1:0"));
    let (mut reloader, broker) = start(vec![flow], options()).await;
    let mut seen = Seen::new(&broker, "done");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    dir.write(
        "flow.toml",
        &with_api(&taken.local_addr().expect("addr").to_string()),
    );
    dir.write("lib/version.rhai", "export const VERSION = \"m2\";\n");
    assert!(
        matches!(
            reload(&mut reloader).await,
            ReloadReport::RolledBack { generation: 1, .. }
        ),
        "the reload rolls back"
    );
    publish(&broker, "work", json!({ "id": 1 })).await;
    let events = seen.until("event 1", |e| id(e) == 1).await;
    assert_eq!(
        handled_by(&events, 1),
        [pair("m1", 1)],
        "after the rollback, generation 1's module code runs"
    );
    drop(taken);
    reloader.into_runtime().shutdown(WITHIN).await;
}

// ---------------------------------------------------------------------------------------
// /healthz

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthz_shows_the_generation_and_the_last_reload() {
    let dir = FlowDir::new();
    dir.write("a.rhai", &versioned_handler("a1"));
    let flow = dir.write("flow.toml", ONE_SUBSCRIBER);
    let (mut reloader, _broker) = start(vec![flow], options()).await;
    let router = router(reloader.runtime());
    let health = |router: axum::Router| async move {
        let request = axum::http::Request::get("/healthz")
            .body(axum::body::Body::empty())
            .expect("a request");
        let reply = oneshot(&router, request).await;
        assert_eq!(reply.status, 200);
        serde_json::from_slice::<Value>(reply.bytes()).expect("JSON")
    };

    let first = health(router.clone()).await;
    assert_eq!(first["generation"], 1, "{first}");

    dir.write("a.rhai", &versioned_handler("a2"));
    applied(reload(&mut reloader).await);
    let after_swap = health(router.clone()).await;
    assert_eq!(after_swap["generation"], 2, "{after_swap}");
    let last = &after_swap["last_reload"];
    assert_eq!(last["ok"], true, "{after_swap}");
    assert_eq!(last["generation"], 2, "{after_swap}");
    assert_eq!(last["swapped"], json!(["subscribers.a"]), "{after_swap}");
    assert_eq!(last["changed"], json!([]), "{after_swap}");

    dir.write("a.rhai", "emit(");
    assert!(matches!(
        reload(&mut reloader).await,
        ReloadReport::Invalid { generation: 2, .. }
    ));
    let after_invalid = health(router.clone()).await;
    assert_eq!(after_invalid["generation"], 2, "{after_invalid}");
    let last = &after_invalid["last_reload"];
    assert_eq!(last["ok"], false, "{after_invalid}");
    assert_eq!(last["generation"], 2, "{after_invalid}");
    assert!(
        last["message"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid"),
        "{after_invalid}"
    );
    reloader.into_runtime().shutdown(WITHIN).await;
}

// ---------------------------------------------------------------------------------------
// Under load, through the real watcher.

/// What the reload loop saw: each report, with the publish sequence number reached when
/// it was reported (every event numbered at or above it was published afterwards).
type Reports = Arc<Mutex<Vec<(ReloadReport, u64)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_lose_nothing_and_switch_code_at_once() {
    const EDITS: usize = 20;
    const TICK: Duration = Duration::from_millis(5);
    const PER_TICK: u64 = 12; // 2,400 events/s
    let dir = FlowDir::new();
    dir.write("a.rhai", &versioned_handler("v0"));
    let flow = dir.write(
        "flow.toml",
        &ONE_SUBSCRIBER.replace("emits = [\"done\"]", "emits = [\"done\"]\nconcurrency = 2"),
    );
    let paths = vec![flow];
    let (reloader, broker) = start(paths.clone(), options()).await;
    let metrics = reloader.runtime().metrics().subscriber("a");

    // Who handled what: id -> versions.
    let handled: Arc<Mutex<BTreeMap<u64, Vec<String>>>> = Arc::default();
    let mut tap = Seen::new(&broker, "done").rx;
    let collector = tokio::spawn({
        let handled = handled.clone();
        async move {
            while let Some(event) = tap.recv().await {
                let v = version(&event).to_owned();
                handled
                    .lock()
                    .unwrap()
                    .entry(id(&event))
                    .or_default()
                    .push(v);
            }
        }
    });

    // The reload loop of `app::run`: watcher → channel → one reloader.
    let next_seq = Arc::new(AtomicU64::new(0));
    let reports: Reports = Arc::default();
    let (requests, mut pending) = mpsc::channel::<ReloadRequest>(16);
    let tracker = TaskTracker::new();
    let token = CancellationToken::new();
    let watcher = FileWatcher::spawn(
        &paths,
        &reloader.watched_files(),
        DEFAULT_DEBOUNCE,
        requests,
        &tracker,
        token.clone(),
    )
    .expect("watching starts");
    let reload_loop = tokio::spawn({
        let (token, reports, next_seq) = (token.clone(), reports.clone(), next_seq.clone());
        let mut reloader = reloader;
        async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return reloader,
                    Some(request) = pending.recv() => {
                        let report = reloader.handle(request).await;
                        let mark = next_seq.load(Ordering::SeqCst);
                        reports.lock().unwrap().push((report, mark));
                        watcher.update(&reloader.watched_files());
                    }
                }
            }
        }
    });

    // The publisher: PER_TICK events every TICK, numbered in order.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (broker, stop, next_seq) = (broker.clone(), stop.clone(), next_seq.clone());
        async move {
            let started = Instant::now();
            let mut interval = tokio::time::interval(TICK);
            while !stop.load(Ordering::SeqCst) {
                interval.tick().await;
                for _ in 0..PER_TICK {
                    let n = next_seq.fetch_add(1, Ordering::SeqCst);
                    publish(&broker, "work", json!({ "id": n })).await;
                }
            }
            (next_seq.load(Ordering::SeqCst), started.elapsed())
        }
    });
    wait_for("traffic before the first edit", WITHIN, || {
        next_seq.load(Ordering::SeqCst) >= 500
    })
    .await;

    // 20 edits, alternating a new version and a syntax error, each through the watcher.
    let mut valid_marks: Vec<(String, u64)> = vec![("v0".into(), 0)];
    for edit in 1..=EDITS {
        let valid = edit % 2 == 1;
        let version = format!("v{edit}");
        if valid {
            dir.save_atomic("a.rhai", &versioned_handler(&version));
        } else {
            dir.save_atomic(
                "a.rhai",
                &format!("emit(\"done\", #{{ version: \"{version}\" "),
            );
        }
        let report = {
            let mut found = None;
            wait_for(&format!("edit {edit} to be reloaded"), WITHIN, || {
                let reports = reports.lock().unwrap();
                let decisive: Vec<_> = reports
                    .iter()
                    .filter(|(r, _)| !matches!(r, ReloadReport::Unchanged { .. }))
                    .collect();
                found = decisive.get(edit - 1).map(|(r, mark)| (r.clone(), *mark));
                found.is_some()
            })
            .await;
            found.expect("waited for it")
        };
        match (valid, &report.0) {
            (true, ReloadReport::Applied(outcome)) => {
                assert_eq!(
                    outcome.swapped,
                    ["subscribers.a"],
                    "edit {edit}: {outcome:#?}"
                );
                assert!(outcome.changed.is_empty(), "edit {edit}: {outcome:#?}");
                valid_marks.push((version, report.1));
            }
            (false, ReloadReport::Invalid { diagnostic, .. }) => {
                assert!(
                    diagnostic.contains("edaflow::script::compile"),
                    "{diagnostic}"
                );
            }
            (_, other) => panic!("edit {edit} (valid: {valid}): unexpected {other:#?}"),
        }
        // Pace the edits (not a wait for a result).
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (total, publishing) = publisher.await.expect("the publisher finishes");
    wait_for("every event to be handled", WITHIN, || {
        handled.lock().unwrap().len() as u64 >= total
    })
    .await;
    wait_for("the broker to go idle", WITHIN, || broker.is_idle()).await;
    token.cancel();
    let reloader = reload_loop.await.expect("the reload loop ends");
    tracker.close();
    tracker.wait().await;
    reloader.into_runtime().shutdown(WITHIN).await;
    collector.abort();

    let rate = total as f64 / publishing.as_secs_f64();
    assert!(
        rate >= 2000.0,
        "published {total} events at only {rate:.0}/s"
    );

    // 1. Every event exactly once.
    let handled = handled.lock().unwrap().clone();
    let missing: Vec<u64> = (0..total).filter(|n| !handled.contains_key(n)).collect();
    let twice: Vec<(&u64, &Vec<String>)> = handled.iter().filter(|(_, v)| v.len() != 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "{} of {total} events missing (first {:?}); {} handled more than once (first {:?})",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        metrics.errors.load(Ordering::SeqCst),
        0,
        "no handler run failed"
    );

    // 2 and 3. An event published after a valid edit was reported applied ran that
    // version or a later one; invalid edits never interrupted (nothing failed, nothing is
    // missing, and no invalid version ever ran).
    let rank: BTreeMap<&str, usize> = valid_marks
        .iter()
        .enumerate()
        .map(|(i, (v, _))| (v.as_str(), i))
        .collect();
    let mut late = Vec::new();
    for (n, versions) in &handled {
        let ran = versions[0].as_str();
        let ran_rank = *rank
            .get(ran)
            .unwrap_or_else(|| panic!("event {n} ran `{ran}`, which was never a valid version"));
        let required = valid_marks
            .iter()
            .rposition(|(_, mark)| mark <= n)
            .unwrap_or(0);
        if ran_rank < required {
            late.push((*n, ran.to_owned(), valid_marks[required].0.clone()));
        }
    }
    assert!(
        late.is_empty(),
        "{} events published after a reload was reported ran older code (first {:?})",
        late.len(),
        late.iter().take(10).collect::<Vec<_>>()
    );
    let used: BTreeSet<&str> = handled.values().map(|v| v[0].as_str()).collect();
    assert_eq!(
        used.len(),
        valid_marks.len(),
        "every valid version handled events: {used:?}"
    );
}
