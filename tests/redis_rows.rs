//! A subscriber's worker on Redis handles what its reader's last read brought in a row
//! and commits the runs together (one script run for many): against a backlog left
//! by a stopped process (a redis-server each test starts itself), every event is handled
//! once and in order, the commits do go together, a run that reads a store sees what the
//! runs before it in the row wrote, and a commit refused in the middle of a row stops the
//! ones after it, which land only after it, in order. A row of runs that write nothing is
//! acknowledged with one command (on a queue, with the acks of the moment, and deleted).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::redis::{unique_namespace, RedisServer};
use common::runtime::{options, publish, start_with, tap};
use common::{wait_for, FlowDir};
use edaflow::broker::{Broker, RedisBroker, RedisOptions};
use edaflow::event::Event;
use edaflow::runtime::Runtime;
use indoc::indoc;
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(20);

/// Events in the backlog: twenty full reads of the reader's prefetch (16).
const BACKLOG: u64 = 320;

fn redis_options(namespace: &str) -> RedisOptions {
    RedisOptions {
        namespace: namespace.to_owned(),
        block: Duration::from_millis(100),
        ..RedisOptions::default()
    }
}

/// Where a backlog waits.
#[derive(Clone, Copy)]
enum Backlog {
    /// Published on the topic `in`.
    Topic,
    /// Enqueued, due at once, in the named queue.
    Queue(&'static str),
}

/// A flow directory whose `flow.toml` is the flow `rows` with `body` (its queues and
/// subscribers); the tests write their scripts beside it.
fn rows_flow(body: &str) -> FlowDir {
    let dir = FlowDir::new();
    dir.write("flow.toml", &format!("[flow]\nname = \"rows\"\n\n{body}"));
    dir
}

/// Runs `flow.toml` of `dir` once, to declare its groups and queues, and stops it; puts
/// `n` events `{n}` on `in` (or into a queue) meanwhile; then starts it again on a fresh
/// broker of the same namespace, with the backlog waiting, and returns it with a tap on
/// every topic opened before it started.
async fn backlog_then_start(
    server: &RedisServer,
    dir: &FlowDir,
    n: u64,
) -> (
    Runtime<RedisBroker>,
    tokio::sync::mpsc::Receiver<Arc<Event>>,
) {
    backlog_in_then_start(server, dir, n, Backlog::Topic).await
}

async fn backlog_in_then_start(
    server: &RedisServer,
    dir: &FlowDir,
    n: u64,
    into: Backlog,
) -> (
    Runtime<RedisBroker>,
    tokio::sync::mpsc::Receiver<Arc<Event>>,
) {
    let namespace = unique_namespace("rows");
    let first = server.broker(redis_options(&namespace)).await;
    let (runtime, _) = start_with(first.clone(), options(), dir).await;
    runtime.shutdown(Duration::from_secs(1)).await;
    for k in 0..n {
        match into {
            Backlog::Topic => {
                publish(&first, "in", "test", json!({ "n": k })).await;
            }
            Backlog::Queue(queue) => first
                .enqueue(
                    queue,
                    Event::new("in", "test", json!({ "n": k })),
                    Duration::ZERO,
                )
                .await
                .unwrap_or_else(|e| panic!("enqueue into `{queue}`: {e}")),
        }
    }
    let broker = server.broker(redis_options(&namespace)).await;
    let seen = tap(&broker, ">");
    server.command(&["CONFIG", "RESETSTAT"]);
    let (runtime, _) = start_with(broker, options(), dir).await;
    (runtime, seen)
}

/// What the tap sees until `count` events on the topics `topics` came (or `PATIENCE`
/// passed), in the order Redis accepted them.
async fn seen_on(
    seen: &mut tokio::sync::mpsc::Receiver<Arc<Event>>,
    topics: &[&str],
    count: usize,
) -> Vec<Arc<Event>> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while events.len() < count {
        match tokio::time::timeout_at(deadline, seen.recv()).await {
            Ok(Some(event)) if topics.contains(&event.topic.as_str()) => events.push(event),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    events
}

/// The `n` of each event on `topic` among `events`, in the order they were seen.
fn numbers(events: &[Arc<Event>], topic: &str) -> Vec<i64> {
    events
        .iter()
        .filter(|e| e.topic == topic)
        .map(|e| e.data["n"].as_i64().expect("an n"))
        .collect()
}

/// Calls of `commands` on the server since its counters were reset.
fn calls(server: &RedisServer, commands: &[&str]) -> u64 {
    let stats = server.command(&["INFO", "commandstats"]);
    stats
        .lines()
        .filter(|l| {
            commands
                .iter()
                .any(|c| l.starts_with(&format!("cmdstat_{c}:")))
        })
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Calls of script runs on the server since its counters were reset.
fn script_runs(server: &RedisServer) -> u64 {
    calls(server, &["evalsha", "eval"])
}

async fn wait_handled(runtime: &Runtime<RedisBroker>, subscriber: &str, n: u64) {
    let metrics = runtime.metrics().subscriber(subscriber);
    wait_for("the backlog to be handled", PATIENCE, || {
        metrics.handled.load(Ordering::Relaxed) >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_handles_a_backlog_once_in_order_committing_runs_together() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = rows_flow(indoc! {r#"
        [subscribers.work]
        topic = "in"
        script = "work.rhai"
        emits = ["out"]
    "#});
    dir.write("work.rhai", r#"emit("out", #{ n: event.data.n });"#);
    let (runtime, mut seen) = backlog_then_start(&server, &dir, BACKLOG).await;
    wait_handled(&runtime, "work", BACKLOG).await;
    let runs = script_runs(&server);
    let events = seen_on(&mut seen, &["out"], BACKLOG as usize).await;
    let expected: Vec<i64> = (0..BACKLOG as i64).collect();
    assert_eq!(numbers(&events, "out"), expected, "each once, in order");
    // One by one, each commit would be a script run of its own (320 at least).
    assert!(
        runs < BACKLOG / 4,
        "{runs} script runs for {BACKLOG} commits: the runs were not committed together"
    );
    let work = runtime.metrics().subscriber("work");
    assert_eq!(work.events_in.load(Ordering::Relaxed), BACKLOG);
    assert_eq!(work.errors.load(Ordering::Relaxed), 0);
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_of_runs_that_write_nothing_is_acked_with_one_command() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = rows_flow(indoc! {r#"
        [subscribers.count]
        topic = "in"
        script = "count.rhai"
    "#});
    dir.write("count.rhai", "let n = event.data.n;");
    let (runtime, _seen) = backlog_then_start(&server, &dir, BACKLOG).await;
    wait_handled(&runtime, "count", BACKLOG).await;
    let acks = calls(&server, &["xack"]);
    assert!(
        acks < BACKLOG / 4,
        "{acks} XACK calls for {BACKLOG} events: the rows were not acked together"
    );
    let broker = runtime.broker().clone();
    wait_for_settled(&broker).await;
    runtime.shutdown(Duration::from_secs(1)).await;
}

/// A queue's entries ack by deleting: a row of its runs that write nothing joins the acks
/// of the moment (one `XACK` and one `XDEL` for the row), and each entry is gone after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_of_queue_runs_that_write_nothing_is_acked_and_deleted_together() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = rows_flow(indoc! {r#"
        [queues.jobs]

        [subscribers.work]
        queue = "jobs"
        script = "work.rhai"
    "#});
    dir.write("work.rhai", "let n = event.data.n;");
    let (runtime, _seen) =
        backlog_in_then_start(&server, &dir, BACKLOG, Backlog::Queue("jobs")).await;
    wait_handled(&runtime, "work", BACKLOG).await;
    let keys = server.command(&["KEYS", "*:q:jobs:ready"]);
    let ready = keys
        .lines()
        .find(|l| !l.starts_with(['*', '$']))
        .expect("the queue's ready stream")
        .to_owned();
    wait_for("every item deleted once acked", PATIENCE, || {
        server.command(&["XLEN", &ready]).trim() == ":0"
    })
    .await;
    let work = runtime.metrics().subscriber("work");
    assert_eq!(work.events_in.load(Ordering::Relaxed), BACKLOG, "each once");
    let deletes = calls(&server, &["xdel"]);
    assert!(
        deletes < BACKLOG / 4,
        "{deletes} XDEL calls for {BACKLOG} items: the rows were not acked together"
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

/// Waits until no group holds an event waiting or unacknowledged.
async fn wait_for_settled(broker: &RedisBroker) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stats = broker.stats().await;
        if !stats.is_empty() && stats.iter().all(|g| g.queued == 0 && g.in_flight == 0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events left unacknowledged: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_a_row_that_reads_a_store_sees_what_the_runs_before_it_wrote() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = rows_flow(indoc! {r#"
        [stores.counts]

        [subscribers.work]
        topic = "in"
        script = "work.rhai"
        emits = ["out"]
    "#});
    // Every run writes its number; every fourth reads the number before its own first,
    // between runs that only write and so wait to be committed together.
    dir.write(
        "work.rhai",
        indoc! {r#"
            let n = event.data.n;
            let s = store("counts");
            if n % 4 == 3 { emit("out", #{ n: n, last: s.get("last") }); }
            s.set("last", n);
        "#},
    );
    let (runtime, mut seen) = backlog_then_start(&server, &dir, BACKLOG).await;
    wait_handled(&runtime, "work", BACKLOG).await;
    let events = seen_on(&mut seen, &["out"], (BACKLOG / 4) as usize).await;
    let read: Vec<(i64, i64)> = events
        .iter()
        .map(|e| {
            (
                e.data["n"].as_i64().expect("n"),
                e.data["last"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let expected: Vec<(i64, i64)> = (0..BACKLOG as i64 / 4)
        .map(|k| (4 * k + 3, 4 * k + 2))
        .collect();
    assert_eq!(
        read, expected,
        "(n, what the run read) for each reading run"
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_refused_in_a_row_lands_before_the_runs_after_it() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = rows_flow(indoc! {r#"
        [queues.side]
        capacity = 1

        [subscribers.work]
        topic = "in"
        script = "work.rhai"
        emits = ["out"]
        dead_letter = "dead"
        retry = { attempts = 2, backoff = "10ms", jitter = false }
    "#});
    // Event 0 fills the queue (nobody reads it); event 5's commit is refused for a full
    // queue, each time, until it is dead-lettered.
    dir.write(
        "work.rhai",
        indoc! {r#"
            let n = event.data.n;
            if n == 0 || n == 5 { enqueue("side", #{ n: n }); }
            emit("out", #{ n: n });
        "#},
    );
    let n = 40;
    let (runtime, mut seen) = backlog_then_start(&server, &dir, n).await;
    let work = runtime.metrics().subscriber("work");
    wait_for("the backlog to be settled", PATIENCE, || {
        work.handled.load(Ordering::Relaxed) + work.dead_letters.load(Ordering::Relaxed) >= n
    })
    .await;
    let events = seen_on(&mut seen, &["out", "dead"], n as usize).await;
    // What was published, in the order it landed: `out` 0 to 4, the dead letter of 5,
    // then `out` 6 onwards.
    let landed: Vec<String> = events
        .iter()
        .filter(|e| e.topic == "out" || e.topic == "dead")
        .map(|e| match e.topic.as_str() {
            "dead" => "dead".to_owned(),
            _ => e.data["n"].to_string(),
        })
        .collect();
    let mut expected: Vec<String> = (0..5).map(|k: u64| k.to_string()).collect();
    expected.push("dead".to_owned());
    expected.extend((6..n).map(|k| k.to_string()));
    assert_eq!(landed, expected);
    assert_eq!(work.dead_letters.load(Ordering::Relaxed), 1);
    assert_eq!(work.handled.load(Ordering::Relaxed), n - 1);
    runtime.shutdown(Duration::from_secs(1)).await;
}

/// Several workers take rows too, each within its share of what the reader holds: every
/// event once. The events come through a relay into a queue, so a queue's reader is
/// covered as well as a group's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_of_a_queue_take_rows_and_handle_each_event_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = rows_flow(indoc! {r#"
        [relays.forward]
        from = "in"
        to = "jobs"

        [queues.jobs]

        [subscribers.work]
        queue = "jobs"
        script = "work.rhai"
        emits = ["out"]
        concurrency = 4
    "#});
    dir.write("work.rhai", r#"emit("out", #{ n: event.data.n });"#);
    let (runtime, mut seen) = backlog_then_start(&server, &dir, BACKLOG).await;
    wait_handled(&runtime, "work", BACKLOG).await;
    let events = seen_on(&mut seen, &["out"], BACKLOG as usize).await;
    let mut got = numbers(&events, "out");
    got.sort_unstable();
    let expected: Vec<i64> = (0..BACKLOG as i64).collect();
    assert_eq!(got, expected, "each once");
    let work = runtime.metrics().subscriber("work");
    assert_eq!(work.events_in.load(Ordering::Relaxed), BACKLOG);
    runtime.shutdown(Duration::from_secs(1)).await;
}
