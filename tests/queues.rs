//! Deferred execution in process, on the memory broker and paused tokio time: flows in a
//! temp dir, `prepare` + `Runtime::apply`, observed through taps (which see events
//! published and items entering queues), metrics, the dead-letter store and the HTTP API
//! (`api_router` + `oneshot`).
//!
//! Paused time makes delays exact: a handler that runs at 1 s of virtual time runs at
//! exactly 1 s, so the tests can assert due times to the millisecond without sleeping.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use indoc::indoc;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use common::deferred::{assert_near, next_timed};
use common::http_server::{oneshot, router};
use common::runtime::{self, drain, start, tap, LogCapture};
use common::{wait_for, FlowDir};
use edaflow::broker::{Broker, DeadFilter, MemoryBroker};
use edaflow::event::Event;
use edaflow::runtime::Runtime;

const SOURCE: &str = "edaflow://queues/test";

/// Exact on paused time; a few ms of slack keeps the assertions about intent.
const SLACK: Duration = Duration::from_millis(5);

const ECHO: &str = r#"emit("handled", event.data);"#;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn publish(broker: &MemoryBroker, topic: &str, data: Value) -> Event {
    runtime::publish(broker, topic, SOURCE, data).await
}

async fn enqueue(broker: &MemoryBroker, queue: &str, data: Value, delay: Duration) -> Event {
    let event = Event::new(queue, SOURCE, data);
    broker
        .enqueue(queue, event.clone(), delay)
        .await
        .unwrap_or_else(|e| panic!("enqueue on `{queue}`: {e}"));
    event
}

/// Collects what a tap sees until `until` (virtual), each with its time since `t0`.
async fn collect_until(
    tap: &mut mpsc::Receiver<Arc<Event>>,
    t0: Instant,
    until: Duration,
) -> Vec<(Arc<Event>, Duration)> {
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout_at(t0 + until, tap.recv()).await {
        seen.push((event, t0.elapsed()));
    }
    seen
}

fn render_metrics(runtime: &Runtime<MemoryBroker>) -> String {
    runtime
        .metrics()
        .render(&runtime.broker().stats(), runtime.generation())
}

fn metric_line(metrics: &str, line: &str) {
    assert!(
        metrics.lines().any(|l| l == line),
        "metrics lack `{line}`:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("edaflow_relay") || l.starts_with("edaflow_subscriber"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn queue_stats(broker: &MemoryBroker, queue: &str) -> edaflow::broker::QueueStats {
    broker
        .queue_stats()
        .into_iter()
        .find(|s| s.name == queue)
        .unwrap_or_else(|| panic!("no queue `{queue}`"))
}

// ---------------------------------------------------------------------------------------
// Timing

#[tokio::test(start_paused = true)]
async fn items_are_handled_when_due_to_the_millisecond() {
    let dir = FlowDir::with_files(&[
        (
            "flow.toml",
            indoc! {r#"
                [queues.tasks]
                delay = "1s"

                [subscribers.worker]
                queue = "tasks"
                script = "worker.rhai"
            "#},
        ),
        ("worker.rhai", ECHO),
    ]);
    let (_runtime, broker) = start(&dir).await;
    let mut handled = tap(&broker, "handled");
    let t0 = Instant::now();
    enqueue(&broker, "tasks", json!({"n": 1}), ms(1000)).await;
    enqueue(&broker, "tasks", json!({"n": 2}), ms(250)).await;
    enqueue(&broker, "tasks", json!({"n": 3}), ms(2500)).await;
    enqueue(&broker, "tasks", json!({"n": 4}), ms(1001)).await;
    for (n, due) in [(2, 250), (1, 1000), (4, 1001), (3, 2500)] {
        let (event, at) = next_timed(&mut handled, t0, Duration::from_secs(10)).await;
        assert_eq!(event.data, json!({"n": n}));
        assert_near(&format!("item {n}"), at, ms(due), SLACK);
    }
}

#[tokio::test(start_paused = true)]
async fn a_polling_worker_looks_only_at_each_tick() {
    let dir = FlowDir::with_files(&[
        (
            "flow.toml",
            indoc! {r#"
                [queues.tasks]
                poll = "10s"

                [subscribers.worker]
                queue = "tasks"
                script = "worker.rhai"
            "#},
        ),
        ("worker.rhai", ECHO),
    ]);
    let (_runtime, broker) = start(&dir).await;
    let mut handled = tap(&broker, "handled");
    let t0 = Instant::now();
    enqueue(&broker, "tasks", json!({"n": "due at 3s"}), ms(3000)).await;
    enqueue(&broker, "tasks", json!({"n": "due at 10s"}), ms(10_000)).await;
    enqueue(&broker, "tasks", json!({"n": "due at 10.001s"}), ms(10_001)).await;
    enqueue(&broker, "tasks", json!({"n": "due at 0"}), Duration::ZERO).await;

    // Nothing is handled before the first tick, although two items are due.
    tokio::time::sleep(ms(9_990)).await;
    assert!(drain(&mut handled).is_empty());
    assert_eq!(queue_stats(&broker, "tasks").due_now, 2);

    let seen = collect_until(&mut handled, t0, ms(25_000)).await;
    let got: Vec<(String, Duration)> = seen
        .iter()
        .map(|(e, at)| (e.data["n"].as_str().unwrap_or("?").to_owned(), *at))
        .collect();
    assert_eq!(got.len(), 4, "{got:?}");
    for (i, (name, due)) in [
        ("due at 0", 10_000),
        ("due at 3s", 10_000),
        ("due at 10s", 10_000),
        ("due at 10.001s", 20_000),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(got[i].0, name, "{got:?}");
        assert_near(name, got[i].1, ms(due), SLACK);
    }
}

// ---------------------------------------------------------------------------------------
// Handler effects: enqueue and delayed emit

const PLANNER_FLOW: &str = indoc! {r#"
    [queues.tasks]
    delay = "3s"

    [subscribers.planner]
    topic = "plan"
    script = "planner.rhai"
    retry = { attempts = 3, backoff = "100ms", jitter = false }

    [subscribers.worker]
    queue = "tasks"
    script = "worker.rhai"
"#};

const PLANNER: &str = indoc! {r#"
    enqueue("tasks", #{ kind: "default" });
    enqueue("tasks", #{ kind: "five" }, "5s");
    enqueue("tasks", #{ kind: "ms" }, 1500);
    emit("reminder", #{ kind: "two" }, #{ delay: "2s" });
    if event.data.fail_until >= event.attempt {
        fail(`attempt ${event.attempt} fails`);
    }
"#};

#[tokio::test(start_paused = true)]
async fn handler_enqueues_and_delayed_emits_land_on_time() {
    let dir = FlowDir::with_files(&[
        ("flow.toml", PLANNER_FLOW),
        ("planner.rhai", PLANNER),
        ("worker.rhai", ECHO),
    ]);
    let (_runtime, broker) = start(&dir).await;
    let mut all = tap(&broker, ">");
    let t0 = Instant::now();
    let plan = publish(&broker, "plan", json!({"fail_until": 0})).await;
    let seen = collect_until(&mut all, t0, ms(10_000)).await;
    let timeline: Vec<(String, String, u128)> = seen
        .iter()
        .filter(|(e, _)| e.topic != "plan")
        .map(|(e, at)| {
            (
                e.topic.clone(),
                e.data["kind"].as_str().unwrap_or("?").to_owned(),
                at.as_millis(),
            )
        })
        .collect();
    let expected: Vec<(String, String, u128)> = [
        // The items enter the queue when the run commits, at once.
        ("tasks", "default", 0),
        ("tasks", "five", 0),
        ("tasks", "ms", 0),
        // Then each is handled at its own due time.
        ("handled", "ms", 1500),
        ("reminder", "two", 2000),
        ("handled", "default", 3000),
        ("handled", "five", 5000),
    ]
    .iter()
    .map(|(t, k, at)| (t.to_string(), k.to_string(), *at))
    .collect();
    assert_eq!(timeline, expected);
    // The items belong to the journey of the event that planned them.
    for (event, _) in &seen {
        assert_eq!(event.correlation_id, plan.correlation_id, "{event:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_enqueues_nothing_and_the_retry_enqueues_once() {
    let dir = FlowDir::with_files(&[
        ("flow.toml", PLANNER_FLOW),
        ("planner.rhai", PLANNER),
        ("worker.rhai", ECHO),
    ]);
    let (runtime, broker) = start(&dir).await;
    let mut all = tap(&broker, ">");
    let t0 = Instant::now();
    // Attempts 1 and 2 fail; attempt 3 (after 100 ms + 200 ms of backoff) succeeds.
    publish(&broker, "plan", json!({"fail_until": 2})).await;
    let seen = collect_until(&mut all, t0, ms(10_000)).await;
    let timeline: Vec<(String, String, u128)> = seen
        .iter()
        .filter(|(e, _)| e.topic != "plan")
        .map(|(e, at)| {
            (
                e.topic.clone(),
                e.data["kind"].as_str().unwrap_or("?").to_owned(),
                at.as_millis(),
            )
        })
        .collect();
    let expected: Vec<(String, String, u128)> = [
        ("tasks", "default", 300),
        ("tasks", "five", 300),
        ("tasks", "ms", 300),
        ("handled", "ms", 1800),
        ("reminder", "two", 2300),
        ("handled", "default", 3300),
        ("handled", "five", 5300),
    ]
    .iter()
    .map(|(t, k, at)| (t.to_string(), k.to_string(), *at))
    .collect();
    assert_eq!(timeline, expected);
    let planner = runtime.metrics().subscriber("planner");
    assert_eq!(planner.errors.load(Ordering::Relaxed), 2);
    assert_eq!(planner.handled.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_run_that_always_fails_enqueues_nothing_and_is_dead_lettered() {
    let dir = FlowDir::with_files(&[
        ("flow.toml", PLANNER_FLOW),
        ("planner.rhai", PLANNER),
        ("worker.rhai", ECHO),
    ]);
    let (_runtime, broker) = start(&dir).await;
    let mut all = tap(&broker, ">");
    let t0 = Instant::now();
    let plan = publish(&broker, "plan", json!({"fail_until": 99})).await;
    let seen = collect_until(&mut all, t0, ms(30_000)).await;
    let topics: Vec<&str> = seen.iter().map(|(e, _)| e.topic.as_str()).collect();
    assert_eq!(topics, vec!["plan", "dead.planner"], "{seen:?}");
    let dead = &seen[1].0;
    assert_eq!(dead.extensions["deadletterid"], json!(plan.id));
    assert_eq!(dead.extensions["deadletterattempts"], json!(3));
    assert_eq!(queue_stats(&broker, "tasks").depth, 0);
    assert_eq!(broker.scheduled(), 0, "the delayed emit was discarded");
}

#[tokio::test(start_paused = true)]
async fn enqueue_to_an_unknown_queue_fails_the_run() {
    let dir = FlowDir::with_files(&[
        (
            "flow.toml",
            indoc! {r#"
                [queues.tasks]

                [subscribers.planner]
                topic = "plan"
                script = "planner.rhai"
                retry = { attempts = 2, backoff = "10ms", jitter = false }
            "#},
        ),
        (
            "planner.rhai",
            indoc! {r#"
                emit("planned", #{});
                enqueue("tasks", #{ ok: true });
                enqueue("nope", #{ ok: false });
            "#},
        ),
    ]);
    let (runtime, broker) = start(&dir).await;
    let mut all = tap(&broker, ">");
    publish(&broker, "plan", json!({})).await;
    let t0 = Instant::now();
    let seen = collect_until(&mut all, t0, ms(5_000)).await;
    let topics: Vec<&str> = seen.iter().map(|(e, _)| e.topic.as_str()).collect();
    assert_eq!(
        topics,
        vec!["plan", "dead.planner"],
        "nothing of the run lands"
    );
    let reason = seen[1].0.extensions["deadletterreason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(reason.contains("\"nope\""), "{reason}");
    assert!(
        reason.contains("tasks"),
        "names the declared queues: {reason}"
    );
    assert_eq!(queue_stats(&broker, "tasks").depth, 0);
    let planner = runtime.metrics().subscriber("planner");
    assert_eq!(planner.errors.load(Ordering::Relaxed), 2);
    assert_eq!(planner.dead_letters.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_handler_enqueueing_into_a_full_queue_loses_nothing() {
    let dir = FlowDir::with_files(&[
        (
            "flow.toml",
            indoc! {r#"
                [queues.tasks]
                capacity = 1
                poll = "5s"

                [subscribers.planner]
                topic = "plan"
                script = "planner.rhai"

                [subscribers.worker]
                queue = "tasks"
                script = "worker.rhai"
            "#},
        ),
        ("planner.rhai", r#"enqueue("tasks", event.data);"#),
        ("worker.rhai", ECHO),
    ]);
    let (_runtime, broker) = start(&dir).await;
    let mut handled = tap(&broker, "handled");
    for n in 0..3 {
        publish(&broker, "plan", json!({"n": n})).await;
    }
    // Ticks at 5 s, 10 s, … drain the queue one item at a time: a minute is plenty.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let groups = broker.stats();
    assert!(
        groups.iter().all(|g| g.queued == 0 && g.in_flight == 0),
        "an event is stuck in its group: {groups:?}"
    );
    let dead = broker
        .dead_letters(&DeadFilter::default())
        .await
        .expect("list");
    let done = drain(&mut handled).len();
    assert_eq!(done + dead.len(), 3, "handled {done}, dead {}", dead.len());
}

// ---------------------------------------------------------------------------------------
// Failing queue workers

#[tokio::test(start_paused = true)]
async fn a_failing_queue_worker_retries_then_dead_letters_with_its_queue() {
    let dir = FlowDir::with_files(&[
        (
            "flow.toml",
            indoc! {r#"
                [queues.tasks]

                [subscribers.worker]
                queue = "tasks"
                script = "worker.rhai"
                retry = { attempts = 3, backoff = "100ms", jitter = false }

                [subscribers.picky]
                queue = "other"
                script = "worker.rhai"
                retry = { attempts = 1, jitter = false }
                dead_letter = "other.failed"

                [queues.other]
            "#},
        ),
        (
            "worker.rhai",
            r#"fail(`cannot process task ${event.data.n} (attempt ${event.attempt})`);"#,
        ),
    ]);
    let (runtime, broker) = start(&dir).await;
    let mut dead_tap = tap(&broker, ">");
    let t0 = Instant::now();
    let item = enqueue(&broker, "tasks", json!({"n": 7}), ms(500)).await;
    let other = enqueue(&broker, "other", json!({"n": 8}), Duration::ZERO).await;
    let seen = collect_until(&mut dead_tap, t0, ms(5_000)).await;
    let dead: Vec<&(Arc<Event>, Duration)> = seen
        .iter()
        .filter(|(e, _)| e.topic != "tasks" && e.topic != "other")
        .collect();
    assert_eq!(dead.len(), 2, "{seen:?}");

    let (picky, at) = dead[0];
    assert_eq!(picky.topic, "other.failed");
    assert_near("picky's dead letter", *at, Duration::ZERO, SLACK);
    assert_eq!(picky.extensions["deadletterqueue"], json!("other"));
    assert_eq!(picky.extensions["deadletterattempts"], json!(1));
    assert_eq!(picky.extensions["deadletterid"], json!(other.id));

    // 500 ms due, then 100 ms and 200 ms of backoff.
    let (letter, at) = dead[1];
    assert_near("worker's dead letter", *at, ms(800), SLACK);
    assert_eq!(letter.topic, "dead.worker");
    assert_eq!(letter.data, json!({"n": 7}));
    assert_eq!(letter.extensions["deadletterqueue"], json!("tasks"));
    assert_eq!(letter.extensions["deadlettertopic"], json!("tasks"));
    assert_eq!(letter.extensions["deadletterattempts"], json!(3));
    assert_eq!(letter.extensions["deadlettersubscriber"], json!("worker"));
    assert_eq!(letter.extensions["deadletterid"], json!(item.id));
    assert_eq!(
        letter.extensions["deadletterreason"],
        json!("cannot process task 7 (attempt 3)")
    );
    assert_eq!(letter.causation_id.as_deref(), Some(item.id.as_str()));
    assert_eq!(letter.correlation_id, item.correlation_id);

    let stored = broker
        .dead_letters(&DeadFilter {
            origin: Some(edaflow::flow::TopicPattern::parse("tasks").expect("pattern")),
            ids: Vec::new(),
        })
        .await
        .expect("list");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0], **letter);
    let stats = queue_stats(&broker, "tasks");
    assert_eq!((stats.depth, stats.in_flight), (0, 0), "{stats:?}");
    let worker = runtime.metrics().subscriber("worker");
    assert_eq!(worker.errors.load(Ordering::Relaxed), 3);
    assert_eq!(worker.dead_letters.load(Ordering::Relaxed), 1);
    assert_eq!(worker.events_in.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn queue_subscribers_run_concurrency_workers() {
    // Each item fails once and is handled on its second attempt 1 s later: the worker
    // holds it meanwhile, so how many are held at once shows the concurrency.
    let worker = indoc! {r#"
        if event.attempt == 1 { fail("not yet"); }
        emit("handled", event.data);
    "#};
    for (concurrency, expected) in [
        (3, vec![1000, 1000, 1000, 2000, 2000, 2000]),
        (1, vec![1000, 2000, 3000, 4000, 5000, 6000]),
    ] {
        let dir = FlowDir::with_files(&[
            (
                "flow.toml",
                &format!(
                    indoc! {r#"
                        [queues.tasks]

                        [subscribers.worker]
                        queue = "tasks"
                        script = "worker.rhai"
                        concurrency = {}
                        retry = {{ attempts = 2, backoff = "1s", jitter = false }}
                    "#},
                    concurrency
                ),
            ),
            ("worker.rhai", worker),
        ]);
        let (_runtime, broker) = start(&dir).await;
        let mut handled = tap(&broker, "handled");
        let t0 = Instant::now();
        for n in 0..6 {
            enqueue(&broker, "tasks", json!({"n": n}), Duration::ZERO).await;
        }
        tokio::time::sleep(ms(500)).await;
        let stats = queue_stats(&broker, "tasks");
        assert_eq!(
            (stats.in_flight, stats.depth),
            (concurrency, 6 - concurrency),
            "{stats:?}"
        );
        let seen = collect_until(&mut handled, t0, ms(10_000)).await;
        let times: Vec<u128> = seen.iter().map(|(_, at)| at.as_millis()).collect();
        assert_eq!(times, expected, "concurrency {concurrency}");
    }
}

// ---------------------------------------------------------------------------------------
// Relays

#[tokio::test(start_paused = true)]
async fn a_relay_moves_matching_events_into_its_queue_with_its_delay() {
    let dir = FlowDir::with_files(&[
        (
            "flow.toml",
            indoc! {r#"
                [queues.tasks]
                delay = "1s"

                [relays.master]
                from = "jobs.*"
                to = "tasks"
                delay = "3s"
                filter = "event.data.priority > 1"

                [relays.plain]
                from = "plain"
                to = "tasks"

                [subscribers.worker]
                queue = "tasks"
                script = "worker.rhai"
            "#},
        ),
        ("worker.rhai", ECHO),
    ]);
    let (runtime, broker) = start(&dir).await;
    let mut all = tap(&broker, ">");
    let t0 = Instant::now();
    let urgent = publish(&broker, "jobs.a", json!({"name": "urgent", "priority": 2})).await;
    publish(&broker, "jobs.b", json!({"name": "minor", "priority": 0})).await;
    publish(
        &broker,
        "other.c",
        json!({"name": "elsewhere", "priority": 9}),
    )
    .await;
    publish(&broker, "plain", json!({"name": "plain"})).await;
    let seen = collect_until(&mut all, t0, ms(10_000)).await;
    let timeline: Vec<(String, String, u128)> = seen
        .iter()
        .filter(|(e, _)| e.topic == "tasks" || e.topic == "handled")
        .map(|(e, at)| {
            (
                e.topic.clone(),
                e.data["name"].as_str().unwrap_or("?").to_owned(),
                at.as_millis(),
            )
        })
        .collect();
    // Two relays move at the same instant; which of them goes first is not a contract.
    let mut timeline = timeline;
    timeline.sort_by_key(|(topic, name, at)| (*at, topic != "tasks", name.clone()));
    assert_eq!(
        timeline,
        vec![
            ("tasks".to_owned(), "plain".to_owned(), 0),
            ("tasks".to_owned(), "urgent".to_owned(), 0),
            // The queue's default delay for `plain`, the relay's own for `master`.
            ("handled".to_owned(), "plain".to_owned(), 1000),
            ("handled".to_owned(), "urgent".to_owned(), 3000),
        ]
    );
    let queued = seen
        .iter()
        .find(|(e, _)| e.topic == "tasks" && e.data["name"] == "urgent")
        .map(|(e, _)| e.clone())
        .expect("the urgent item");
    assert_eq!(queued.causation_id.as_deref(), Some(urgent.id.as_str()));
    assert_eq!(queued.correlation_id, urgent.correlation_id);

    let metrics = render_metrics(&runtime);
    metric_line(&metrics, "edaflow_relay_relayed_total{relay=\"master\"} 1");
    metric_line(&metrics, "edaflow_relay_filtered_total{relay=\"master\"} 1");
    metric_line(&metrics, "edaflow_relay_errors_total{relay=\"master\"} 0");
    metric_line(&metrics, "edaflow_relay_relayed_total{relay=\"plain\"} 1");
    let stats = queue_stats(&broker, "tasks");
    assert_eq!((stats.depth, stats.in_flight), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_relay_filter_that_throws_is_counted_logged_and_skipped() {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let dir = FlowDir::with_files(&[
        (
            "flow.toml",
            indoc! {r#"
                [queues.tasks]

                [relays.master]
                from = "jobs"
                to = "tasks"
                filter = "parse_int(event.data.priority) > 1"

                [subscribers.worker]
                queue = "tasks"
                script = "worker.rhai"
            "#},
        ),
        ("worker.rhai", ECHO),
    ]);
    let (runtime, broker) = start(&dir).await;
    let mut handled = tap(&broker, "handled");
    // `parse_int("high")` throws: the filter fails for the first event only.
    let bad = publish(&broker, "jobs", json!({"name": "bad", "priority": "high"})).await;
    publish(&broker, "jobs", json!({"name": "next", "priority": "5"})).await;
    let t0 = Instant::now();
    let (event, _) = next_timed(&mut handled, t0, Duration::from_secs(5)).await;
    assert_eq!(event.data["name"], "next", "the relay went on");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(drain(&mut handled).is_empty());
    let metrics = render_metrics(&runtime);
    metric_line(&metrics, "edaflow_relay_errors_total{relay=\"master\"} 1");
    metric_line(&metrics, "edaflow_relay_filtered_total{relay=\"master\"} 0");
    metric_line(&metrics, "edaflow_relay_relayed_total{relay=\"master\"} 1");
    let log = logs.text();
    let line = log
        .lines()
        .find(|l| l.contains("relay filter failed"))
        .unwrap_or_else(|| panic!("no log line for the failed filter:\n{log}"));
    assert!(line.contains(&bad.id), "the line names the event: {line}");
    assert!(line.contains("master"), "the line names the relay: {line}");
    // The relay's group is settled: the failed event is acked, not stuck.
    assert!(broker
        .stats()
        .iter()
        .all(|g| g.in_flight == 0 && g.queued == 0));
}

#[tokio::test(start_paused = true)]
async fn a_relay_script_transforms_or_drops() {
    let dir = FlowDir::with_files(&[
        (
            "flow.toml",
            indoc! {r#"
                [queues.tasks]

                [relays.master]
                from = "jobs"
                to = "tasks"
                script = "shape.rhai"

                [subscribers.worker]
                queue = "tasks"
                script = "worker.rhai"
            "#},
        ),
        (
            "shape.rhai",
            indoc! {r#"
                if event.data.skip == true {
                    ()
                } else {
                    #{ task: event.data.id * 10, from: event.topic }
                }
            "#},
        ),
        ("worker.rhai", ECHO),
    ]);
    let (runtime, broker) = start(&dir).await;
    let mut handled = tap(&broker, "handled");
    publish(&broker, "jobs", json!({"id": 1})).await;
    publish(&broker, "jobs", json!({"id": 2, "skip": true})).await;
    publish(&broker, "jobs", json!({"id": 3})).await;
    let t0 = Instant::now();
    let seen = collect_until(&mut handled, t0, ms(2_000)).await;
    let data: Vec<Value> = seen.iter().map(|(e, _)| e.data.clone()).collect();
    assert_eq!(
        data,
        vec![
            json!({"task": 10, "from": "jobs"}),
            json!({"task": 30, "from": "jobs"})
        ]
    );
    let metrics = render_metrics(&runtime);
    metric_line(&metrics, "edaflow_relay_relayed_total{relay=\"master\"} 2");
    metric_line(&metrics, "edaflow_relay_dropped_total{relay=\"master\"} 1");
    metric_line(&metrics, "edaflow_relay_errors_total{relay=\"master\"} 0");
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_makes_the_relay_wait_not_drop() {
    let dir = FlowDir::with_files(&[
        (
            "flow.toml",
            indoc! {r#"
                [queues.tasks]
                capacity = 2
                poll = "5s"

                [relays.master]
                from = "jobs"
                to = "tasks"

                [subscribers.worker]
                queue = "tasks"
                script = "worker.rhai"
            "#},
        ),
        ("worker.rhai", ECHO),
    ]);
    let (runtime, broker) = start(&dir).await;
    let mut handled = tap(&broker, "handled");
    let t0 = Instant::now();
    for n in 0..7 {
        publish(&broker, "jobs", json!({"n": n})).await;
    }
    // Before the worker's first look: the queue is full, the relay holds the third event
    // and the rest wait in its group.
    tokio::time::sleep(ms(4_000)).await;
    let stats = queue_stats(&broker, "tasks");
    assert_eq!(stats.depth, 2, "{stats:?}");
    let relay_group = broker
        .stats()
        .into_iter()
        .find(|g| g.name == "relay:master")
        .expect("the relay's group");
    assert_eq!((relay_group.in_flight, relay_group.queued), (1, 4));
    assert!(drain(&mut handled).is_empty());

    let seen = collect_until(&mut handled, t0, ms(60_000)).await;
    let order: Vec<i64> = seen
        .iter()
        .map(|(e, _)| e.data["n"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        order,
        (0..7).collect::<Vec<_>>(),
        "all arrive, once, in order"
    );
    // The first two at the first tick; the rest at later ticks as room frees up.
    assert_near("first", seen[0].1, ms(5_000), SLACK);
    assert_near("second", seen[1].1, ms(5_000), SLACK);
    assert!(seen[6].1 > ms(5_000));
    let metrics = render_metrics(&runtime);
    metric_line(&metrics, "edaflow_relay_relayed_total{relay=\"master\"} 7");
    let stats = queue_stats(&broker, "tasks");
    assert_eq!((stats.depth, stats.in_flight), (0, 0));
}

// ---------------------------------------------------------------------------------------
// `edaflow test` steps

#[tokio::test(start_paused = true)]
async fn flow_tests_advance_virtual_time() {
    let dir = FlowDir::with_files(&[
        (
            "flow.toml",
            indoc! {r#"
                [queues.tasks]
                delay = "30s"

                [subscribers.planner]
                topic = "plan"
                script = "planner.rhai"

                [subscribers.worker]
                queue = "tasks"
                script = "worker.rhai"

                [[tests]]
                name = "advanced past the delay"
                publish = { topic = "plan", data = { n = 1 } }
                advance = "30s"
                expect = [{ topic = "done", data = { n = 1 } }, { topic = "nudge", data = { n = 1 } }]

                [[tests]]
                name = "not advanced far enough"
                publish = { topic = "plan", data = { n = 2 } }
                advance = "29s"
                expect = [{ topic = "done", data = { n = 2 } }]

                [[tests]]
                name = "the delayed emit needs time too"
                publish = { topic = "plan", data = { n = 3 } }
                expect = [{ topic = "nudge", data = { n = 3 } }]
            "#},
        ),
        (
            "planner.rhai",
            indoc! {r#"
                enqueue("tasks", event.data);
                emit("nudge", event.data, #{ delay: "20s" });
            "#},
        ),
        ("worker.rhai", r#"emit("done", event.data);"#),
    ]);
    let prepared = dir.prepare("flow.toml");
    let reports = edaflow::flowtest::run_all(&prepared)
        .await
        .expect("the runtime starts");
    let verdicts: BTreeMap<&str, Option<&str>> = reports
        .iter()
        .map(|r| (r.name.as_str(), r.failure.as_deref()))
        .collect();
    assert_eq!(verdicts["advanced past the delay"], None, "{reports:?}");
    let short = verdicts["not advanced far enough"].expect("fails: the item is not due yet");
    assert!(short.contains("expected an event on `done`"), "{short}");
    let nudge = verdicts["the delayed emit needs time too"].expect("fails without advance");
    assert!(nudge.contains("`nudge`"), "{nudge}");
}

#[tokio::test(start_paused = true)]
async fn the_deferred_demo_passes_its_own_flow_test() {
    let path = common::crate_root().join("flows/deferred.toml");
    let prepared = edaflow::runtime::prepare(&[path]).expect("flows/deferred.toml is valid");
    let reports = edaflow::flowtest::run_all(&prepared).await.expect("runs");
    assert!(!reports.is_empty());
    for report in &reports {
        assert_eq!(report.failure, None, "{}", report.name);
    }
}

// ---------------------------------------------------------------------------------------
// Bad flows

#[test]
fn negative_or_unparseable_delays_are_rejected() {
    for (key, table, value) in [
        ("delay", "[queues.tasks]", "-5s"),
        ("delay", "[queues.tasks]", "soon"),
        ("poll", "[queues.tasks]", "-1s"),
        ("poll", "[queues.tasks]", "often"),
        (
            "delay",
            "[queues.tasks]\n[relays.master]\nfrom = \"jobs\"\nto = \"tasks\"",
            "-5s",
        ),
        (
            "delay",
            "[queues.tasks]\n[relays.master]\nfrom = \"jobs\"\nto = \"tasks\"",
            "soon",
        ),
    ] {
        let dir = FlowDir::with_files(&[("flow.toml", &format!("{table}\n{key} = \"{value}\"\n"))]);
        let rendered = dir.rejected("flow.toml");
        assert!(
            rendered.contains("invalid duration"),
            "{key} = {value:?}:\n{rendered}"
        );
        assert!(
            rendered.contains(&format!("{key} = \"{value}\"")),
            "the label shows the line:\n{rendered}"
        );
    }
}

#[test]
fn a_relay_to_a_missing_queue_is_labelled_on_the_value() {
    let dir = FlowDir::with_files(&[(
        "flow.toml",
        indoc! {r#"
            [queues.tasks]

            [relays.master]
            from = "jobs"
            to = "taks"
        "#},
    )]);
    let rendered = dir.rejected("flow.toml");
    assert!(
        rendered.contains("no `[queues.taks]` declares queue `taks`"),
        "{rendered}"
    );
    assert!(
        rendered.contains("edaflow::flow::unknown_queue"),
        "{rendered}"
    );
    assert!(
        rendered.contains("tasks"),
        "suggests the declared queue:\n{rendered}"
    );
    // The label sits under the value, not the key.
    let lines: Vec<&str> = rendered.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("to = \"taks\""))
        .unwrap_or_else(|| panic!("the source line is shown:\n{rendered}"));
    let column = |line: &str, byte: usize| line[..byte].chars().count();
    let value_column = column(lines[at], lines[at].find("taks\"").expect("the value"));
    let marker = lines[at + 1..]
        .iter()
        .find(|l| l.contains("unknown queue"))
        .unwrap_or_else(|| panic!("labelled `unknown queue`:\n{rendered}"));
    let underline = lines[at + 1];
    let marker_column = column(underline, underline.find(['─', '┬', '╰']).unwrap_or(0));
    assert!(
        marker_column == value_column,
        "the label points at the value:\n{rendered}\n{marker}"
    );
}

// ---------------------------------------------------------------------------------------
// HTTP

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
}

async fn call(router: &axum::Router, method: &str, uri: &str, body: Option<Value>) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(v) => {
            request = request.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let reply = oneshot(router, request.body(body).expect("a request")).await;
    let body = if reply.bytes().is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(reply.bytes()).unwrap_or_else(|_| Value::String(reply.body.clone()))
    };
    Answer {
        status: StatusCode::from_u16(reply.status).expect("a status code"),
        retry_after: reply.header("retry-after").map(str::to_owned),
        body,
    }
}

const HTTP_FLOW: &str = indoc! {r#"
    [queues.tasks]
    delay = "2s"
    capacity = 3

    [subscribers.worker]
    queue = "tasks"
    script = "worker.rhai"
"#};

#[tokio::test(start_paused = true)]
async fn http_enqueue_takes_the_queue_default_or_the_given_delay() {
    let dir = FlowDir::with_files(&[("flow.toml", HTTP_FLOW), ("worker.rhai", ECHO)]);
    let (runtime, broker) = start(&dir).await;
    let router = router(&runtime);
    let mut handled = tap(&broker, "handled");
    let t0 = Instant::now();
    let a = call(
        &router,
        "POST",
        "/queues/tasks",
        Some(json!({"n": "default"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    assert!(a.body["id"].is_string(), "{:?}", a.body);
    let b = call(
        &router,
        "POST",
        "/queues/tasks?delay=500ms",
        Some(json!({"n": "half"})),
    )
    .await;
    assert_eq!(b.status, StatusCode::ACCEPTED);
    let c = call(
        &router,
        "POST",
        "/queues/tasks?delay=0s",
        Some(json!({"n": "now"})),
    )
    .await;
    assert_eq!(c.status, StatusCode::ACCEPTED);
    for (n, due) in [("now", 0), ("half", 500), ("default", 2000)] {
        let (event, at) = next_timed(&mut handled, t0, Duration::from_secs(5)).await;
        assert_eq!(event.data["n"], n);
        assert_near(n, at, ms(due), SLACK);
    }
}

#[tokio::test(start_paused = true)]
async fn http_enqueue_refuses_bad_input() {
    let dir = FlowDir::with_files(&[("flow.toml", HTTP_FLOW), ("worker.rhai", ECHO)]);
    let (runtime, broker) = start(&dir).await;
    let router = router(&runtime);

    let nope = call(&router, "POST", "/queues/nope", Some(json!({}))).await;
    assert_eq!(nope.status, StatusCode::NOT_FOUND, "{:?}", nope.body);
    assert_eq!(nope.body["code"], "unknown_queue");
    let nope = call(&router, "GET", "/queues/nope", None).await;
    assert_eq!(nope.status, StatusCode::NOT_FOUND, "{:?}", nope.body);

    for delay in ["-1s", "soon", "5", ""] {
        let bad = call(
            &router,
            "POST",
            &format!("/queues/tasks?delay={delay}"),
            Some(json!({})),
        )
        .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "delay={delay:?}");
        assert_eq!(bad.body["code"], "bad_parameter", "{:?}", bad.body);
        let message = bad.body["error"].as_str().unwrap_or("");
        assert!(message.contains("delay"), "{message}");
    }
    let bad_json = Request::builder()
        .method("POST")
        .uri("/queues/tasks")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .expect("a request");
    let answer = oneshot(&router, bad_json).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST.as_u16());
    assert_eq!(
        queue_stats(&broker, "tasks").depth,
        0,
        "nothing bad was queued"
    );

    // Capacity 3: the fourth is refused with 503 + Retry-After, and nothing is dropped.
    for n in 0..3 {
        let ok = call(
            &router,
            "POST",
            "/queues/tasks?delay=1m",
            Some(json!({"n": n})),
        )
        .await;
        assert_eq!(ok.status, StatusCode::ACCEPTED);
    }
    let full = call(&router, "POST", "/queues/tasks", Some(json!({"n": 3}))).await;
    assert_eq!(
        full.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        full.body
    );
    assert_eq!(full.body["code"], "backpressure");
    assert!(
        full.retry_after
            .as_deref()
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "Retry-After: {:?}",
        full.retry_after
    );
    assert_eq!(queue_stats(&broker, "tasks").depth, 3);
    assert_eq!(
        runtime.metrics().http.backpressured.load(Ordering::Relaxed),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn http_reports_queues() {
    let dir = FlowDir::with_files(&[
        (
            "flow.toml",
            indoc! {r#"
                [queues.tasks]
                capacity = 10

                [queues.idle]

                [subscribers.worker]
                queue = "tasks"
                script = "worker.rhai"
                retry = { attempts = 1, jitter = false }
            "#},
        ),
        (
            "worker.rhai",
            r#"if event.data.fail == true { fail("broken"); } emit("handled", event.data);"#,
        ),
    ]);
    let (runtime, broker) = start(&dir).await;
    let router = router(&runtime);
    let mut handled = tap(&broker, "handled");
    enqueue(&broker, "tasks", json!({"fail": true}), Duration::ZERO).await;
    enqueue(&broker, "tasks", json!({"n": 1}), ms(5_000)).await;
    enqueue(&broker, "tasks", json!({"n": 2}), ms(7_000)).await;
    wait_for("the dead letter", Duration::from_secs(5), || {
        queue_stats(&broker, "tasks").depth == 2
    })
    .await;
    tokio::time::sleep(ms(1_000)).await;

    let all = call(&router, "GET", "/queues", None).await;
    assert_eq!(all.status, StatusCode::OK);
    let list = all.body.as_array().expect("a JSON array").clone();
    let names: Vec<&str> = list.iter().filter_map(|q| q["name"].as_str()).collect();
    assert_eq!(names, vec!["idle", "tasks"]);
    let tasks = &list[1];
    assert_eq!(tasks["depth"], 2, "{tasks}");
    assert_eq!(tasks["due_now"], 0, "{tasks}");
    let next_due = tasks["next_due_ms"].as_u64().expect("next_due_ms");
    assert!((3_990..=4_000).contains(&next_due), "{tasks}");
    assert_eq!(tasks["in_flight"], 0, "{tasks}");
    assert_eq!(tasks["capacity"], 10, "{tasks}");
    assert_eq!(tasks["dead_letters"], 1, "{tasks}");
    let idle = &list[0];
    assert_eq!(idle["depth"], 0);
    assert_eq!(idle["next_due_ms"], Value::Null);
    assert_eq!(idle["capacity"], Value::Null);
    assert_eq!(idle["dead_letters"], 0);

    let one = call(&router, "GET", "/queues/tasks", None).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body, *tasks, "same report for one queue");

    next_timed(&mut handled, Instant::now(), Duration::from_secs(10)).await;
    let one = call(&router, "GET", "/queues/tasks", None).await;
    assert_eq!(one.body["depth"], 1);
    let next_due = one.body["next_due_ms"].as_u64().expect("next_due_ms");
    assert!((1_990..=2_000).contains(&next_due), "{:?}", one.body);
}

const DEAD_FLOW: &str = indoc! {r#"
    [queues.tasks]

    [subscribers.worker]
    queue = "tasks"
    script = "worker.rhai"
    retry = { attempts = 2, backoff = "10ms", jitter = false }

    [subscribers.orders]
    topic = "orderCreated"
    script = "worker.rhai"
    retry = { attempts = 1, jitter = false }
"#};

/// Fails every item unless its data says `ok` (a replay carries the same data, so a
/// replayed item fails again: that second dead letter proves it was re-delivered).
const DEAD_WORKER: &str = indoc! {r#"
    if event.data.ok != true { fail(`task ${event.data.n} is broken`); }
    emit("handled", event.data);
"#};

async fn dead_letters_ready(broker: &MemoryBroker, n: usize) {
    let broker = broker.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = broker
            .dead_letters(&DeadFilter::default())
            .await
            .expect("list")
            .len();
        if found >= n {
            assert_eq!(found, n);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {found} of {n} dead letters"
        );
        tokio::time::sleep(ms(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn http_lists_and_filters_dead_letters() {
    let dir = FlowDir::with_files(&[("flow.toml", DEAD_FLOW), ("worker.rhai", DEAD_WORKER)]);
    let (runtime, broker) = start(&dir).await;
    let router = router(&runtime);
    enqueue(&broker, "tasks", json!({"n": 1}), Duration::ZERO).await;
    publish(&broker, "orderCreated", json!({"n": 2})).await;
    enqueue(&broker, "tasks", json!({"n": 3}), ms(100)).await;
    dead_letters_ready(&broker, 3).await;

    let all = call(&router, "GET", "/admin/dead", None).await;
    assert_eq!(all.status, StatusCode::OK);
    let list = all.body.as_array().expect("an array");
    // Oldest first: the topic subscriber gives up at once, the worker after a retry.
    let order: Vec<(&str, i64)> = list
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("?"),
                e["data"]["n"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![("dead.orders", 2), ("dead.worker", 1), ("dead.worker", 3)]
    );
    let first = &list[1];
    assert_eq!(first["deadletterqueue"], "tasks");
    assert_eq!(first["deadlettersubscriber"], "worker");
    assert_eq!(first["deadletterattempts"], 2);
    assert_eq!(first["deadletterreason"], "task 1 is broken");

    let from_tasks = call(&router, "GET", "/admin/dead?origin=tasks", None).await;
    let ns: Vec<i64> = from_tasks
        .body
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|e| e["data"]["n"].as_i64())
        .collect();
    assert_eq!(ns, vec![1, 3]);
    let from_orders = call(&router, "GET", "/admin/dead?origin=order*", None).await;
    let list = from_orders.body.as_array().expect("an array");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["deadlettertopic"], "orderCreated");
    assert!(list[0].get("deadletterqueue").is_none());

    let bad = call(&router, "GET", "/admin/dead?origin=a..b", None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);
}

#[tokio::test(start_paused = true)]
async fn http_replay_puts_dead_letters_back_where_they_came_from() {
    let dir = FlowDir::with_files(&[("flow.toml", DEAD_FLOW), ("worker.rhai", DEAD_WORKER)]);
    let (runtime, broker) = start(&dir).await;
    let router = router(&runtime);
    let original = enqueue(&broker, "tasks", json!({"n": 1}), Duration::ZERO).await;
    publish(&broker, "orderCreated", json!({"n": 2})).await;
    dead_letters_ready(&broker, 2).await;
    let mut letters = broker
        .dead_letters(&DeadFilter::default())
        .await
        .expect("list");
    // The queue's dead letter first, then the topic's.
    letters.sort_by_key(|l| !l.extensions.contains_key("deadletterqueue"));

    // Replay the queue's dead letter with a delay: back on `tasks`, due 5 s later.
    let mut tasks = tap(&broker, "tasks");
    let t0 = Instant::now();
    let answer = call(
        &router,
        "POST",
        "/admin/dead/replay",
        Some(json!({"origin": "tasks", "delay": "5s"})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.body["replayed"], 1);
    assert_eq!(answer.body["failed"], json!([]));
    let (item, _) = next_timed(&mut tasks, t0, ms(10)).await;
    assert_eq!(item.topic, "tasks");
    assert_eq!(item.data, json!({"n": 1}));
    assert_eq!(item.correlation_id, original.correlation_id);
    assert_eq!(item.extensions["replayedfrom"], json!(letters[0].id));
    assert!(!item.extensions.contains_key("deadletterqueue"));
    let stats = queue_stats(&broker, "tasks");
    assert_eq!((stats.depth, stats.next_due_ms), (1, Some(5_000)));
    let left = broker
        .dead_letters(&DeadFilter::default())
        .await
        .expect("list");
    assert_eq!(left.len(), 1, "the replayed one left the store");
    assert_eq!(left[0].id, letters[1].id);

    // It fails again at 5 s (same data), which proves it was re-delivered to the worker.
    dead_letters_ready(&broker, 2).await;
    assert_near("redelivered", t0.elapsed(), ms(5_010), SLACK);

    // Replay the topic's dead letter by id, at once: back on `orderCreated`.
    let mut orders = tap(&broker, "orderCreated");
    let answer = call(
        &router,
        "POST",
        "/admin/dead/replay",
        Some(json!({"ids": [letters[1].id]})),
    )
    .await;
    assert_eq!(answer.body["replayed"], 1, "{:?}", answer.body);
    let (event, _) = next_timed(&mut orders, Instant::now(), ms(10)).await;
    assert_eq!(event.data, json!({"n": 2}));
    assert_eq!(event.extensions["replayedfrom"], json!(letters[1].id));

    let bad = call(
        &router,
        "POST",
        "/admin/dead/replay",
        Some(json!({"delay": "-1s"})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(start_paused = true)]
async fn http_drop_needs_a_selection() {
    let dir = FlowDir::with_files(&[("flow.toml", DEAD_FLOW), ("worker.rhai", DEAD_WORKER)]);
    let (runtime, broker) = start(&dir).await;
    let router = router(&runtime);
    enqueue(&broker, "tasks", json!({"n": 1}), Duration::ZERO).await;
    enqueue(&broker, "tasks", json!({"n": 2}), Duration::ZERO).await;
    publish(&broker, "orderCreated", json!({"n": 3})).await;
    publish(&broker, "orderCreated", json!({"n": 4})).await;
    dead_letters_ready(&broker, 4).await;

    for body in [
        None,
        Some(json!({})),
        Some(json!({"all": false, "ids": []})),
    ] {
        let refused = call(&router, "POST", "/admin/dead/drop", body.clone()).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{body:?}");
        let message = refused.body["error"].as_str().unwrap_or("");
        assert!(message.contains("origin, ids, or all"), "{message}");
    }
    dead_letters_ready(&broker, 4).await;

    let by_origin = call(
        &router,
        "POST",
        "/admin/dead/drop",
        Some(json!({"origin": "tasks"})),
    )
    .await;
    assert_eq!(by_origin.body, json!({"dropped": 2}));
    let left = broker
        .dead_letters(&DeadFilter::default())
        .await
        .expect("list");
    assert_eq!(left.len(), 2);
    let by_id = call(
        &router,
        "POST",
        "/admin/dead/drop",
        Some(json!({"ids": [left[1].id]})),
    )
    .await;
    assert_eq!(by_id.body, json!({"dropped": 1}));
    let remaining = broker
        .dead_letters(&DeadFilter::default())
        .await
        .expect("list");
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0].id, left[0].id);
    let all = call(
        &router,
        "POST",
        "/admin/dead/drop",
        Some(json!({"all": true})),
    )
    .await;
    assert_eq!(all.body, json!({"dropped": 1}));
    dead_letters_ready(&broker, 0).await;
}

// ---------------------------------------------------------------------------------------
// Absurd delays

/// Parses as a `Duration` (about 1.7e19 s, below `u64::MAX` seconds) but is past what an
/// `Instant` can hold, so `now + delay` overflows.
const HUGE_DELAY: &str = "200000000000000d";

#[tokio::test(start_paused = true)]
async fn http_refuses_a_delay_past_what_the_clock_can_hold() {
    let dir = FlowDir::with_files(&[("flow.toml", HTTP_FLOW), ("worker.rhai", ECHO)]);
    let (runtime, broker) = start(&dir).await;
    let router = router(&runtime);
    let answer = tokio::spawn({
        let router = router.clone();
        async move {
            call(
                &router,
                "POST",
                &format!("/queues/tasks?delay={HUGE_DELAY}"),
                Some(json!({})),
            )
            .await
            .status
        }
    })
    .await;
    match answer {
        Ok(status) => assert_eq!(status, StatusCode::BAD_REQUEST),
        Err(e) => panic!("the request handler panicked: {e}"),
    }
    assert_eq!(queue_stats(&broker, "tasks").depth, 0);
}

#[tokio::test(start_paused = true)]
async fn a_script_delay_past_what_the_clock_can_hold_fails_only_that_run() {
    let dir = FlowDir::with_files(&[
        (
            "flow.toml",
            indoc! {r#"
                [queues.tasks]

                [subscribers.planner]
                topic = "plan"
                script = "planner.rhai"
                retry = { attempts = 1, jitter = false }
            "#},
        ),
        (
            "planner.rhai",
            &format!(
                indoc! {r#"
                    if event.data.huge == true {{ enqueue("tasks", #{{}}, "{}"); }}
                    emit("planned", event.data);
                "#},
                HUGE_DELAY
            ),
        ),
    ]);
    let (_runtime, broker) = start(&dir).await;
    let mut planned = tap(&broker, "planned");
    publish(&broker, "plan", json!({"huge": true})).await;
    publish(&broker, "plan", json!({"huge": false})).await;
    let t0 = Instant::now();
    let seen = collect_until(&mut planned, t0, ms(5_000)).await;
    assert!(
        seen.iter().any(|(e, _)| e.data["huge"] == false),
        "the planner stopped handling events after the huge delay"
    );
}

#[test]
fn a_delay_past_what_the_clock_can_hold_is_rejected() {
    for table in [
        "[queues.tasks]",
        "[queues.tasks]\n[relays.master]\nfrom = \"jobs\"\nto = \"tasks\"",
    ] {
        let dir =
            FlowDir::with_files(&[("flow.toml", &format!("{table}\ndelay = \"{HUGE_DELAY}\"\n"))]);
        let result = edaflow::runtime::prepare(&[dir.path("flow.toml")]);
        assert!(result.is_err(), "accepted in {table:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_deferred_demo_test_fails_when_its_worker_fails() {
    let demo = std::fs::read_to_string(common::crate_root().join("flows/deferred.toml"))
        .expect("read the demo");
    let worker = "[subscribers.worker]";
    assert!(demo.contains(worker), "the demo has a worker");
    let broken = demo.replacen(
        worker,
        &format!("{worker}\nscript = \"broken.rhai\"\nretry = {{ attempts = 1, jitter = false }}"),
        1,
    );
    let dir = FlowDir::with_files(&[
        ("deferred.toml", &broken),
        ("broken.rhai", r#"fail("the worker is broken");"#),
    ]);
    let prepared = dir.prepare("deferred.toml");
    let reports = edaflow::flowtest::run_all(&prepared).await.expect("runs");
    assert!(
        reports.iter().all(|r| r.failure.is_some()),
        "the demo's test passed with a worker that fails every item: {reports:?}"
    );
}
