//! The runtime in process, on the memory broker: flows written into a temp dir, prepared,
//! applied, fed with `broker.publish` and observed through taps and `stats()`.
//!
//! Every test runs on paused tokio time: retries, backoffs and delays are exact and take
//! no real time, and `wait_for` deadlines are virtual. Rhai runs inline, so a test only
//! has to let the runtime's tasks run (by awaiting) to see handlers do their work.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indoc::indoc;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use common::runtime::{self, apply, drain, options, start_with, tap};
use common::{wait_for, FlowDir};
use edaflow::broker::{Backpressure, Broker, BrokerError, GroupStats, MemoryBroker, MemoryOptions};
use edaflow::event::Event;
use edaflow::runtime::{ReloadOutcome, Runtime};

/// The `source` of the events the tests publish.
const SOURCE: &str = "edaflow://runtime/test";

/// Virtual time a flow may take to settle; far beyond any backoff used here.
const SETTLE: Duration = Duration::from_secs(3600);

/// Starts a runtime on a fresh memory broker with `flow.toml` of `dir`.
async fn start(dir: &FlowDir, group_capacity: usize) -> (Runtime<MemoryBroker>, MemoryBroker) {
    let broker = MemoryBroker::new(MemoryOptions {
        group_capacity,
        ..MemoryOptions::default()
    });
    let (runtime, outcome) = start_with(broker.clone(), options(), dir).await;
    assert_eq!(outcome.generation, 1);
    (runtime, broker)
}

async fn publish(broker: &MemoryBroker, topic: &str, data: Value) -> Event {
    runtime::publish(broker, topic, SOURCE, data).await
}

/// Waits until nothing is queued, in flight or scheduled.
async fn settle(broker: &MemoryBroker) {
    wait_for("the flow to settle", SETTLE, || broker.is_idle()).await;
}

fn stats_of(broker: &MemoryBroker, group: &str) -> GroupStats {
    let all = broker.stats();
    all.iter()
        .find(|g| g.name == group)
        .cloned()
        .unwrap_or_else(|| panic!("no group `{group}` in {all:?}"))
}

fn ext<'a>(event: &'a Event, name: &str) -> &'a Value {
    event
        .extensions
        .get(name)
        .unwrap_or_else(|| panic!("no `{name}` extension on {}", event.to_json()))
}

fn assert_no_change(outcome: &ReloadOutcome) {
    assert!(outcome.ok, "{outcome:?}");
    assert!(
        outcome.added.is_empty()
            && outcome.changed.is_empty()
            && outcome.removed.is_empty()
            && outcome.swapped.is_empty(),
        "applying identical flows must change nothing: {outcome:?}"
    );
}

// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_three_hop_chain_shares_the_correlation_id() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [flow]
            name = "shop"

            [subscribers.reserve]
            topic = "orderCreated"
            script = "handlers/reserve.rhai"
            emits = ["inventoryReserved"]

            [subscribers.charge]
            topic = "inventoryReserved"
            script = "handlers/charge.rhai"
            emits = ["paymentCharged"]
        "#},
    );
    dir.write(
        "handlers/reserve.rhai",
        r#"emit("inventoryReserved", #{ order_id: event.data.order_id, total: event.data.total });"#,
    );
    dir.write(
        "handlers/charge.rhai",
        r#"emit("paymentCharged", #{ order_id: event.data.order_id, amount: event.data.total });"#,
    );
    let (runtime, broker) = start(&dir, 64).await;
    let mut all = tap(&broker, ">");

    let created = publish(
        &broker,
        "orderCreated",
        json!({"order_id": 123, "customer": "John Doe", "total": 49.99}),
    )
    .await;
    settle(&broker).await;

    let events = drain(&mut all);
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        topics,
        ["orderCreated", "inventoryReserved", "paymentCharged"]
    );
    let (reserved, charged) = (&events[1], &events[2]);
    assert_eq!(events[0].id, created.id);
    assert_eq!(created.causation_id, None);
    for event in &events {
        assert_eq!(
            event.correlation_id, created.id,
            "{} shares the journey's correlation id",
            event.topic
        );
    }
    assert_eq!(reserved.causation_id.as_deref(), Some(created.id.as_str()));
    assert_eq!(charged.causation_id.as_deref(), Some(reserved.id.as_str()));
    assert_eq!(reserved.source, "edaflow://shop/reserve");
    assert_eq!(charged.source, "edaflow://shop/charge");
    assert_eq!(reserved.data, json!({"order_id": 123, "total": 49.99}));
    assert_eq!(charged.data, json!({"order_id": 123, "amount": 49.99}));

    let metrics = runtime.metrics();
    assert_eq!(
        metrics
            .subscriber("reserve")
            .handled
            .load(Ordering::Relaxed),
        1
    );
    assert_eq!(
        metrics
            .subscriber("charge")
            .events_out
            .load(Ordering::Relaxed),
        1
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn effects_of_a_failed_run_are_discarded() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [subscribers.flaky]
            topic = "work"
            script = "flaky.rhai"
            emits = ["sideEffect"]
            retry = { attempts = 3, backoff = "100ms", jitter = false }

            [subscribers.doomed]
            topic = "doomedWork"
            script = "doomed.rhai"
            emits = ["sideEffect"]
            retry = { attempts = 3, backoff = "100ms", jitter = false }
        "#},
    );
    // Emits on every attempt, then fails on the first two.
    dir.write(
        "flaky.rhai",
        indoc! {r#"
            emit("sideEffect", #{ from: "flaky", attempt: event.attempt });
            if event.attempt < 3 { fail(`attempt ${event.attempt} failed`); }
        "#},
    );
    dir.write(
        "doomed.rhai",
        r#"emit("sideEffect", #{ from: "doomed", attempt: event.attempt }); fail("always");"#,
    );
    let (runtime, broker) = start(&dir, 64).await;
    let mut side_effects = tap(&broker, "sideEffect");
    let mut dead = tap(&broker, "dead.>");

    publish(&broker, "work", json!({})).await;
    publish(&broker, "doomedWork", json!({})).await;
    settle(&broker).await;

    let emitted: Vec<Value> = drain(&mut side_effects)
        .iter()
        .map(|e| e.data.clone())
        .collect();
    assert_eq!(
        emitted,
        [json!({"from": "flaky", "attempt": 3})],
        "only the successful run's emit is published; retries never emit twice"
    );
    let dead: Vec<String> = drain(&mut dead).iter().map(|e| e.topic.clone()).collect();
    assert_eq!(dead, ["dead.doomed"]);
    let flaky = runtime.metrics().subscriber("flaky");
    assert_eq!(flaky.errors.load(Ordering::Relaxed), 2);
    assert_eq!(flaky.handled.load(Ordering::Relaxed), 1);
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_then_dead_letter_with_the_details() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [subscribers.payments]
            topic = "paymentRequested"
            script = "decline.rhai"
            retry = { attempts = 4, backoff = "100ms", max_backoff = "250ms", jitter = false }

            [subscribers.refunds]
            topic = "refundRequested"
            script = "decline.rhai"
            retry = { attempts = 2, backoff = "1s", jitter = false }
            dead_letter = "refunds.failed"
        "#},
    );
    dir.write(
        "decline.rhai",
        r#"fail(`card declined for order ${event.data.order_id}`);"#,
    );
    let (runtime, broker) = start(&dir, 64).await;
    let mut dead = tap(&broker, "dead.>");
    let mut custom = tap(&broker, "refunds.failed");

    let started = tokio::time::Instant::now();
    let payment = publish(&broker, "paymentRequested", json!({"order_id": 7})).await;
    let dead_letters = runtime.metrics().subscriber("payments");
    wait_for("the payment to be dead-lettered", SETTLE, || {
        dead_letters.dead_letters.load(Ordering::Relaxed) == 1
    })
    .await;
    // Waits of 100 ms, 200 ms, then 400 ms capped at 250 ms (no jitter).
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(600),
        "four attempts with backoff took {took:?} of virtual time, expected 550 ms"
    );
    settle(&broker).await;

    let letters = drain(&mut dead);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.topic, "dead.payments");
    assert_eq!(
        letter.data, payment.data,
        "the dead letter carries the data"
    );
    assert_eq!(ext(letter, "deadletterreason"), "card declined for order 7");
    assert_eq!(ext(letter, "deadletterattempts"), 4);
    assert_eq!(ext(letter, "deadlettersubscriber"), "payments");
    assert_eq!(ext(letter, "deadlettertopic"), "paymentRequested");
    assert_eq!(ext(letter, "deadletterid"), payment.id.as_str());
    assert_eq!(letter.correlation_id, payment.id);
    assert_eq!(letter.causation_id.as_deref(), Some(payment.id.as_str()));
    assert_eq!(dead_letters.errors.load(Ordering::Relaxed), 4);
    assert_eq!(dead_letters.handled.load(Ordering::Relaxed), 0);

    // A subscriber's own `dead_letter` topic.
    let refund = publish(&broker, "refundRequested", json!({"order_id": 8})).await;
    settle(&broker).await;
    let letters = drain(&mut custom);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(ext(&letters[0], "deadletterattempts"), 2);
    assert_eq!(ext(&letters[0], "deadlettersubscriber"), "refunds");
    assert_eq!(ext(&letters[0], "deadlettertopic"), "refundRequested");
    assert_eq!(ext(&letters[0], "deadletterid"), refund.id.as_str());
    assert_eq!(
        ext(&letters[0], "deadletterreason"),
        "card declined for order 8"
    );
    assert!(drain(&mut dead).is_empty(), "not also on dead.refunds");
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_succeeds_on_attempt_two_is_not_dead_lettered() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [subscribers.charge]
            topic = "inventoryReserved"
            script = "charge.rhai"
            emits = ["paymentCharged"]
            retry = { attempts = 3, backoff = "50ms", jitter = false }
        "#},
    );
    dir.write(
        "charge.rhai",
        indoc! {r#"
            if event.attempt < 2 { fail("payment provider timed out"); }
            emit("paymentCharged", #{ order_id: event.data.order_id, attempt: event.attempt });
        "#},
    );
    let (runtime, broker) = start(&dir, 64).await;
    let mut charged = tap(&broker, "paymentCharged");
    let mut dead = tap(&broker, "dead.>");

    publish(&broker, "inventoryReserved", json!({"order_id": 9})).await;
    settle(&broker).await;

    let data: Vec<Value> = drain(&mut charged).iter().map(|e| e.data.clone()).collect();
    assert_eq!(data, [json!({"order_id": 9, "attempt": 2})]);
    assert!(
        drain(&mut dead).is_empty(),
        "dead-lettered after succeeding"
    );
    let metrics = runtime.metrics().subscriber("charge");
    assert_eq!(metrics.errors.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.dead_letters.load(Ordering::Relaxed), 0);
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn an_endless_loop_fails_only_its_event() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [subscribers.worker]
            topic = "job"
            script = "worker.rhai"
            emits = ["jobDone"]
            retry = { attempts = 1, jitter = false }
        "#},
    );
    dir.write(
        "worker.rhai",
        indoc! {r#"
            if event.data.spin { loop { } }
            emit("jobDone", #{ n: event.data.n });
        "#},
    );
    let (runtime, broker) = start(&dir, 64).await;
    let mut done = tap(&broker, "jobDone");
    let mut dead = tap(&broker, "dead.worker");

    let spinning = publish(&broker, "job", json!({"n": 1, "spin": true})).await;
    publish(&broker, "job", json!({"n": 2, "spin": false})).await;
    settle(&broker).await;

    let done: Vec<Value> = drain(&mut done).iter().map(|e| e.data.clone()).collect();
    assert_eq!(done, [json!({"n": 2})], "the next event is handled");
    let letters = drain(&mut dead);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(ext(&letters[0], "deadletterid"), spinning.id.as_str());
    let reason = ext(&letters[0], "deadletterreason")
        .as_str()
        .expect("a string reason");
    assert!(
        reason.starts_with("script limit exceeded") || reason.starts_with("script ran longer"),
        "the reason names the sandbox limit: {reason}"
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn concurrency_sets_how_many_events_a_subscriber_holds_at_once() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [subscribers.wide]
            topic = "jobs.wide"
            script = "hold.rhai"
            emits = ["jobDone"]
            concurrency = 4
            retry = { attempts = 2, backoff = "10s", jitter = false }

            [subscribers.narrow]
            topic = "jobs.narrow"
            script = "hold.rhai"
            emits = ["jobDone"]
            retry = { attempts = 2, backoff = "10s", jitter = false }
        "#},
    );
    // The first attempt fails, so each worker holds its event through a 10 s backoff:
    // what is in flight then is exactly how many workers are busy.
    dir.write(
        "hold.rhai",
        indoc! {r#"
            if event.attempt == 1 { fail("hold the event through a backoff"); }
            emit("jobDone", #{ topic: event.topic, n: event.data.n });
        "#},
    );
    let (runtime, broker) = start(&dir, 64).await;
    let mut done = tap(&broker, "jobDone");
    for n in 0..4 {
        publish(&broker, "jobs.wide", json!({ "n": n })).await;
        publish(&broker, "jobs.narrow", json!({ "n": n })).await;
    }

    wait_for(
        "4 wide and 1 narrow worker busy",
        Duration::from_secs(1),
        || stats_of(&broker, "wide").in_flight == 4 && stats_of(&broker, "narrow").in_flight == 1,
    )
    .await;
    let wide = stats_of(&broker, "wide");
    let narrow = stats_of(&broker, "narrow");
    assert_eq!((wide.queued, wide.in_flight), (0, 4), "{wide:?}");
    assert_eq!((narrow.queued, narrow.in_flight), (3, 1), "{narrow:?}");

    settle(&broker).await;
    let done: BTreeSet<(String, i64)> = drain(&mut done)
        .iter()
        .map(|e| {
            (
                e.data["topic"].as_str().unwrap_or_default().to_owned(),
                e.data["n"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(done.len(), 8, "every job done once: {done:?}");
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_full_group_pushes_back_on_publishers() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [subscribers.stuck]
            topic = "orders.in"
            script = "hold.rhai"
            emits = ["released"]
            retry = { attempts = 2, backoff = "10s", jitter = false }
        "#},
    );
    dir.write(
        "hold.rhai",
        indoc! {r#"
            if event.attempt == 1 { fail("busy"); }
            emit("released", #{ n: event.data.n });
        "#},
    );
    let (runtime, broker) = start(&dir, 2).await;
    let mut released = tap(&broker, "released");

    // The only worker holds event 1 through its backoff; 2 and 3 fill the buffer.
    publish(&broker, "orders.in", json!({"n": 1})).await;
    wait_for("the worker to hold event 1", Duration::from_secs(1), || {
        stats_of(&broker, "stuck").in_flight == 1
    })
    .await;
    for n in [2, 3] {
        broker
            .publish(
                Event::new("orders.in", SOURCE, json!({ "n": n })),
                Backpressure::Reject,
            )
            .await
            .expect("room for two");
    }
    match broker
        .publish(
            Event::new("orders.in", SOURCE, json!({"n": 4})),
            Backpressure::Reject,
        )
        .await
    {
        Err(BrokerError::Full { group }) => assert_eq!(group, "stuck"),
        other => panic!("expected Full, got {other:?}"),
    }

    // `Wait` parks the publisher instead, until the worker makes room.
    let mut waiting = tokio::spawn({
        let broker = broker.clone();
        async move {
            broker
                .publish(
                    Event::new("orders.in", SOURCE, json!({"n": 5})),
                    Backpressure::Wait,
                )
                .await
        }
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut waiting)
            .await
            .is_err(),
        "Wait returned while the buffer was full"
    );
    tokio::time::timeout(SETTLE, waiting)
        .await
        .expect("the worker makes room")
        .expect("publisher task")
        .expect("publish");
    settle(&broker).await;

    let released: BTreeSet<i64> = drain(&mut released)
        .iter()
        .map(|e| e.data["n"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        released,
        BTreeSet::from([1, 2, 3, 5]),
        "the refused event 4 was never handled"
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

const GREETER: &str = indoc! {r#"
    [subscribers.greeter]
    topic = "hello"
    script = "greet.rhai"
    emits = ["greeting"]
"#};

/// Publishes one `hello` and returns the `version` of the greeting it produced.
async fn greeting_version(
    broker: &MemoryBroker,
    greetings: &mut mpsc::Receiver<Arc<Event>>,
) -> Value {
    publish(broker, "hello", json!({})).await;
    settle(broker).await;
    let got = drain(greetings);
    assert_eq!(got.len(), 1, "{got:?}");
    got[0].data["version"].clone()
}

#[tokio::test(start_paused = true)]
async fn a_script_edit_is_swapped_in_without_a_restart() {
    let dir = FlowDir::new();
    dir.write("flow.toml", GREETER);
    dir.write("greet.rhai", r#"emit("greeting", #{ version: 1 });"#);
    let (mut runtime, broker) = start(&dir, 64).await;
    let mut greetings = tap(&broker, "greeting");
    assert_eq!(greeting_version(&broker, &mut greetings).await, 1);

    dir.write("greet.rhai", r#"emit("greeting", #{ version: 2 });"#);
    let outcome = apply(&mut runtime, &dir).await;
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(outcome.generation, 2);
    assert_eq!(outcome.swapped, ["subscribers.greeter"]);
    assert!(
        outcome.added.is_empty() && outcome.changed.is_empty() && outcome.removed.is_empty(),
        "a script-only edit restarts nothing: {outcome:?}"
    );
    assert_eq!(runtime.generation(), 2);
    assert_eq!(greeting_version(&broker, &mut greetings).await, 2);
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn applying_identical_flows_is_a_no_op() {
    let dir = FlowDir::new();
    dir.write("flow.toml", GREETER);
    dir.write("greet.rhai", r#"emit("greeting", #{ version: 1 });"#);
    let (mut runtime, broker) = start(&dir, 64).await;
    let outcome = apply(&mut runtime, &dir).await;
    assert_no_change(&outcome);
    assert_eq!(outcome.generation, 2);
    let mut greetings = tap(&broker, "greeting");
    assert_eq!(greeting_version(&broker, &mut greetings).await, 1);
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn applying_identical_flows_after_a_swap_is_a_no_op() {
    let dir = FlowDir::new();
    dir.write("flow.toml", GREETER);
    dir.write("greet.rhai", r#"emit("greeting", #{ version: 1 });"#);
    let (mut runtime, _broker) = start(&dir, 64).await;
    dir.write("greet.rhai", r#"emit("greeting", #{ version: 2 });"#);
    let swap = apply(&mut runtime, &dir).await;
    assert_eq!(swap.swapped, ["subscribers.greeter"]);
    let again = apply(&mut runtime, &dir).await;
    assert_no_change(&again);
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn reverting_a_swapped_script_runs_the_original_code_again() {
    let dir = FlowDir::new();
    dir.write("flow.toml", GREETER);
    dir.write("greet.rhai", r#"emit("greeting", #{ version: 1 });"#);
    let (mut runtime, broker) = start(&dir, 64).await;
    let mut greetings = tap(&broker, "greeting");

    dir.write("greet.rhai", r#"emit("greeting", #{ version: 2 });"#);
    apply(&mut runtime, &dir).await;
    assert_eq!(greeting_version(&broker, &mut greetings).await, 2);

    dir.write("greet.rhai", r#"emit("greeting", #{ version: 1 });"#);
    let revert = apply(&mut runtime, &dir).await;
    assert_eq!(revert.swapped, ["subscribers.greeter"], "{revert:?}");
    assert_eq!(greeting_version(&broker, &mut greetings).await, 1);
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_queued_and_deferred_events() {
    const JOBS: usize = 20;
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [subscribers.worker]
            topic = "job"
            script = "worker.rhai"
            emits = ["jobDone", "jobReminder"]
        "#},
    );
    dir.write(
        "worker.rhai",
        indoc! {r#"
            emit("jobDone", #{ n: event.data.n });
            emit("jobReminder", #{ n: event.data.n }, #{ delay: "2s" });
        "#},
    );
    let (runtime, broker) = start(&dir, 64).await;
    let mut done = tap(&broker, "jobDone");
    let mut reminders = tap(&broker, "jobReminder");
    for n in 0..JOBS {
        publish(&broker, "job", json!({ "n": n })).await;
    }
    assert!(
        stats_of(&broker, "worker").queued > 0,
        "the jobs must still be waiting when shutdown starts"
    );

    runtime.shutdown(Duration::from_secs(30)).await;

    assert_eq!(drain(&mut done).len(), JOBS, "every queued job was handled");
    assert_eq!(
        drain(&mut reminders).len(),
        JOBS,
        "deferred effects were published before shutdown returned"
    );
    assert!(broker.is_idle());
}

#[tokio::test(start_paused = true)]
async fn flow_tests_report_passes_and_readable_failures() {
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        indoc! {r#"
            [flow]
            name = "checked"

            [subscribers.reserve]
            topic = "orderCreated"
            script = "reserve.rhai"
            emits = ["inventoryReserved"]

            [[tests]]
            name = "stock is reserved"
            publish = { topic = "orderCreated", data = { order_id = 1, customer = "Ann" } }
            expect = [{ topic = "inventoryReserved", data = { order_id = 1, customer = "Ann" } }]

            [[tests]]
            name = "expects the wrong customer"
            publish = { topic = "orderCreated", data = { order_id = 2, customer = "Bob" } }
            expect = [{ topic = "inventoryReserved", data = { order_id = 2, customer = "Eve" } }]
        "#},
    );
    dir.write(
        "reserve.rhai",
        r#"emit("inventoryReserved", #{ order_id: event.data.order_id, customer: event.data.customer });"#,
    );
    let prepared = dir.prepare("flow.toml");
    let reports = edaflow::flowtest::run_all(&prepared)
        .await
        .expect("the tests run");

    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].name, "stock is reserved");
    assert_eq!(reports[0].failure, None);
    assert!(
        reports[0].file.ends_with("flow.toml"),
        "{}",
        reports[0].file
    );

    assert_eq!(reports[1].name, "expects the wrong customer");
    let failure = reports[1]
        .failure
        .as_deref()
        .expect("the second test fails");
    assert!(
        failure.contains("`inventoryReserved`"),
        "names the topic:\n{failure}"
    );
    assert!(
        failure.contains(r#"data.customer: expected "Eve", got "Bob""#),
        "names the mismatching field:\n{failure}"
    );
    assert!(
        failure
            .lines()
            .any(|l| l.trim_start().starts_with("got:") && l.contains(r#""customer": "Bob""#)),
        "shows what was emitted:\n{failure}"
    );
}
