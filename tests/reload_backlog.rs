//! A reload never drops a backlog silently. Removing a subscriber or a queue that still has
//! work reports what was dropped, with the count, in the reload outcome; `renamed_from` on
//! the component's successor moves the work there instead. The same scenarios run on the
//! memory broker and on a private Redis, and must end the same way.
//!
//! A backlog is made without timing: a handler that always fails, with a one-hour backoff,
//! holds one event while the others wait in its group; a queue with a one-hour delay holds
//! its items. Every wait is a condition with a deadline.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indoc::indoc;
use serde_json::json;
use tokio::sync::mpsc;

use edaflow::broker::{Broker, MemoryBroker, MemoryOptions, RedisOptions};
use edaflow::event::Event;
use edaflow::flow::TopicPattern;
use edaflow::runtime::reload::{ReloadCause, ReloadReport, ReloadRequest, Reloader};
use edaflow::runtime::{Backlog, ReloadOutcome, RuntimeOptions};

use common::runtime::{self, start_reloader, tap};
use common::FlowDir;

const WITHIN: Duration = Duration::from_secs(15);
const SOURCE: &str = "edaflow://reload/backlog";

/// Fails every time, and waits an hour before trying again: what it reads piles up.
const STUCK: &str = r#"throw "not yet";"#;
const DONE: &str = r#"emit("done", #{ n: event.data.n });"#;

const STUCK_A: &str = indoc! {r#"
    [subscribers.a]
    topic = "work"
    script = "stuck.rhai"
    retry = { attempts = 5, backoff = "1h", max_backoff = "1h" }

    [subscribers.other]
    topic = "elsewhere"
    script = "done.rhai"
    emits = ["done"]
"#};

const RENAMED_TO_B: &str = indoc! {r#"
    [subscribers.b]
    topic = "work"
    script = "done.rhai"
    emits = ["done"]
    renamed_from = "a"

    [subscribers.other]
    topic = "elsewhere"
    script = "done.rhai"
    emits = ["done"]
"#};

const WITHOUT_A: &str = indoc! {r#"
    [subscribers.other]
    topic = "elsewhere"
    script = "done.rhai"
    emits = ["done"]
"#};

const QUEUE_LATER: &str = indoc! {r#"
    [queues.later]
    delay = "1h"

    [relays.r]
    from = "in"
    to = "later"

    [subscribers.w]
    queue = "later"
    script = "done.rhai"
    emits = ["done"]
"#};

const QUEUE_RENAMED: &str = indoc! {r#"
    [queues.soon]
    delay = "1h"
    renamed_from = "later"

    [relays.r]
    from = "in"
    to = "soon"

    [subscribers.w]
    queue = "soon"
    script = "done.rhai"
    emits = ["done"]
"#};

fn flow_dir(flow: &str) -> (FlowDir, Vec<PathBuf>) {
    let dir = FlowDir::new();
    dir.write("stuck.rhai", STUCK);
    dir.write("done.rhai", DONE);
    let path = dir.write("flow.toml", flow);
    (dir, vec![path])
}

async fn reload<B: Broker>(reloader: &mut Reloader<B>) -> ReloadOutcome {
    match reloader.handle(ReloadRequest::new(ReloadCause::Http)).await {
        ReloadReport::Applied(outcome) => outcome,
        other => panic!("expected the reload to apply, got {other:#?}"),
    }
}

async fn publish<B: Broker>(broker: &B, topic: &str, n: u64) {
    runtime::publish(broker, topic, SOURCE, json!({ "n": n })).await;
}

async fn waiting_in_group<B: Broker>(broker: &B, group: &str) -> (usize, usize) {
    broker
        .stats()
        .await
        .into_iter()
        .find(|s| s.name == group)
        .map_or((0, 0), |s| (s.queued, s.in_flight))
}

async fn queue_depth<B: Broker>(broker: &B, queue: &str) -> Option<usize> {
    broker
        .queue_stats()
        .await
        .into_iter()
        .find(|s| s.name == queue)
        .map(|s| s.depth)
}

fn backlog(component: &str, to: Option<&str>, moved: u64, dropped: u64) -> Backlog {
    Backlog {
        component: component.to_owned(),
        to: to.map(str::to_owned),
        moved,
        dropped,
    }
}

/// Publishes three events to `work` and waits until subscriber `a` (stuck) holds one and
/// the other two wait for it.
async fn pile_up_on_a<B: Broker>(broker: &B) {
    for n in 1..=3 {
        publish(broker, "work", n).await;
    }
    // `wait_for` takes a synchronous check; broker stats are read asynchronously.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let (queued, in_flight) = waiting_in_group(broker, "a").await;
        if in_flight >= 1 && queued + in_flight == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WITHIN:?} waiting for a backlog of three on `a`"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn the_ns_done(taps: &mut mpsc::Receiver<Arc<Event>>, count: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let event = tokio::time::timeout(WITHIN, taps.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for `done` events; saw {seen:?}"))
            .expect("the tap stays open");
        seen.push(event.data["n"].as_u64().expect("n in done"));
    }
    seen.sort_unstable();
    seen
}

/// A renamed subscriber takes the backlog of its former name over and handles all of it.
async fn a_renamed_subscriber_keeps_its_backlog<B: Broker>(broker: B) {
    let (dir, paths) = flow_dir(STUCK_A);
    let mut done = tap(&broker, "done");
    let (mut reloader, _) = start_reloader(broker.clone(), RuntimeOptions::default(), paths).await;
    pile_up_on_a(&broker).await;

    dir.write("flow.toml", RENAMED_TO_B);
    let outcome = reload(&mut reloader).await;
    assert_eq!(
        outcome.backlogs,
        [backlog("subscribers.a", Some("subscribers.b"), 3, 0)],
        "{outcome:#?}"
    );
    assert_eq!(the_ns_done(&mut done, 3).await, [1, 2, 3]);
    assert!(broker.stats().await.iter().all(|s| s.name != "a"));
    reloader
        .into_runtime()
        .shutdown(Duration::from_secs(2))
        .await;
}

/// A subscriber removed with work waiting says how much it dropped.
async fn a_removed_subscriber_reports_what_it_dropped<B: Broker>(broker: B) {
    let (dir, paths) = flow_dir(STUCK_A);
    let (mut reloader, _) = start_reloader(broker.clone(), RuntimeOptions::default(), paths).await;
    pile_up_on_a(&broker).await;

    dir.write("flow.toml", WITHOUT_A);
    let outcome = reload(&mut reloader).await;
    assert_eq!(
        outcome.backlogs,
        [backlog("subscribers.a", None, 0, 3)],
        "{outcome:#?}"
    );
    reloader
        .into_runtime()
        .shutdown(Duration::from_secs(2))
        .await;
}

/// A renamed queue keeps its items and their due times; removing it reports the drop.
async fn a_renamed_queue_keeps_its_items<B: Broker>(broker: B) {
    let (dir, paths) = flow_dir(QUEUE_LATER);
    let (mut reloader, _) = start_reloader(broker.clone(), RuntimeOptions::default(), paths).await;
    publish(&broker, "in", 1).await;
    publish(&broker, "in", 2).await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while queue_depth(&broker, "later").await != Some(2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WITHIN:?} waiting for two items in `later`"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    dir.write("flow.toml", QUEUE_RENAMED);
    let outcome = reload(&mut reloader).await;
    assert_eq!(
        outcome.backlogs,
        [backlog("queues.later", Some("queues.soon"), 2, 0)],
        "{outcome:#?}"
    );
    assert_eq!(queue_depth(&broker, "later").await, None);
    let soon = broker
        .queue_stats()
        .await
        .into_iter()
        .find(|s| s.name == "soon")
        .expect("the renamed queue");
    assert_eq!((soon.depth, soon.due_now), (2, 0), "{soon:?}");
    let next_due = soon.next_due_ms.expect("items not due yet");
    assert!(
        next_due > 30 * 60 * 1000,
        "the items keep their due time, an hour away: {next_due} ms"
    );

    dir.write("flow.toml", WITHOUT_A);
    let outcome = reload(&mut reloader).await;
    assert_eq!(
        outcome.backlogs,
        [backlog("queues.soon", None, 0, 2)],
        "{outcome:#?}"
    );
    reloader
        .into_runtime()
        .shutdown(Duration::from_secs(2))
        .await;
}

/// At start, `renamed_from` picks up a backlog left under the former name (on Redis, by an
/// earlier run; here, by a group declared before the runtime starts).
async fn at_start_a_renamed_subscriber_takes_over_a_left_backlog<B: Broker>(broker: B) {
    broker
        .declare_group(&edaflow::broker::GroupSpec {
            name: "a".to_owned(),
            patterns: vec![TopicPattern::parse("work").expect("pattern")],
        })
        .await
        .expect("declare the old group");
    for n in 1..=2 {
        publish(&broker, "work", n).await;
    }
    let mut done = tap(&broker, "done");
    let (_dir, paths) = flow_dir(RENAMED_TO_B);
    let (reloader, outcome) =
        start_reloader(broker.clone(), RuntimeOptions::default(), paths).await;
    assert_eq!(
        outcome.backlogs,
        [backlog("subscribers.a", Some("subscribers.b"), 2, 0)],
        "{outcome:#?}"
    );
    assert_eq!(the_ns_done(&mut done, 2).await, [1, 2]);
    reloader
        .into_runtime()
        .shutdown(Duration::from_secs(2))
        .await;
}

macro_rules! on_both_brokers {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::MemoryBroker::new(super::MemoryOptions::default()))
                        .await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let Some(server) = super::common::redis::RedisServer::start() else {
                        return;
                    };
                    let broker = server
                        .broker(super::RedisOptions {
                            namespace: "backlog".to_owned(),
                            ..super::RedisOptions::default()
                        })
                        .await;
                    super::$scenario(broker).await;
                }
            )*
        }
    };
}

on_both_brokers!(
    a_renamed_subscriber_keeps_its_backlog,
    a_removed_subscriber_reports_what_it_dropped,
    a_renamed_queue_keeps_its_items,
    at_start_a_renamed_subscriber_takes_over_a_left_backlog,
);
