//! Per-topic retention on the Redis broker, against a private `redis-server`: acked entries
//! older than the retention are trimmed, entries a group has not read or acknowledged are
//! kept and counted (with a warning naming the topic, the group and how many), a declared
//! group whose XGROUP is not on the stream yet holds its entries too, several trimmers
//! running at once lose nothing, and a topic no group reads is trimmed by the unread
//! retention (while one a group reads, or one with a retention of its own, is not).
//!
//! Retentions are short (200 ms) and every wait polls a condition against a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use edaflow::broker::{
    Backpressure, Broker, Consumer, Delivery, Effects, GroupSpec, RedisBroker, RedisOptions,
    TrimReport,
};
use edaflow::event::Event;
use edaflow::flow::TopicPattern;

mod common;
use common::redis::RedisServer;
use common::runtime::{apply, start_with, LogCapture};
use common::{post_json, Edaflow, FlowDir};
use edaflow::runtime::RuntimeOptions;

const RETENTION: Duration = Duration::from_millis(200);
const DEADLINE: Duration = Duration::from_secs(10);

fn options(namespace: &str) -> RedisOptions {
    RedisOptions {
        namespace: namespace.to_owned(),
        block: Duration::from_millis(100),
        ..RedisOptions::default()
    }
}

async fn group(broker: &RedisBroker, name: &str, topic: &str) {
    let spec = GroupSpec {
        name: name.to_owned(),
        patterns: vec![TopicPattern::parse(topic).expect("pattern")],
    };
    broker.declare_group(&spec).await.expect("declare group");
}

async fn publish(broker: &RedisBroker, topic: &str, n: u64) {
    for i in 0..n {
        let event = Event::new(topic, "test", json!({ "n": i }));
        broker
            .publish(event, Backpressure::Wait)
            .await
            .expect("publish");
    }
}

async fn take(broker: &RedisBroker, group: &str) -> Delivery {
    let mut consumer = broker.consumer(group).expect("consumer");
    tokio::time::timeout(DEADLINE, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("a delivery")
}

async fn take_and_ack(broker: &RedisBroker, group: &str, n: u64) {
    for _ in 0..n {
        let delivery = take(broker, group).await;
        broker
            .commit(delivery, Effects::default())
            .await
            .expect("commit");
    }
}

fn xlen(server: &RedisServer, key: &str) -> u64 {
    let reply = server.command(&["XLEN", key]);
    reply
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap_or_else(|_| panic!("XLEN reply {reply:?}"))
}

/// Runs trimming passes until `done` holds for a pass's report (or the deadline passes).
async fn trim_until(broker: &RedisBroker, mut done: impl FnMut(&TrimReport) -> bool) -> TrimReport {
    let start = Instant::now();
    loop {
        let reports = broker.trim_now().await.expect("trim");
        let report = reports
            .into_iter()
            .next()
            .expect("one topic has a retention");
        if done(&report) {
            return report;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "condition not reached; last pass: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn acked_entries_older_than_the_retention_are_trimmed() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let broker = server.broker(options("trim")).await;
    group(&broker, "billing", "orders").await;
    broker.set_retention(&[("orders".to_owned(), RETENTION)]);
    publish(&broker, "orders", 5).await;
    take_and_ack(&broker, "billing", 5).await;
    let key = "edaflow:{trim}:t:orders";
    assert_eq!(xlen(&server, key), 5, "acked, but not old yet");

    // One more, never read: it must outlive every pass.
    publish(&broker, "orders", 1).await;
    // The background trimmer runs too, so watch the stream rather than one pass's count.
    trim_until(&broker, |_| xlen(&server, key) <= 1).await;
    assert_eq!(xlen(&server, key), 1, "only the unread entry is left");
    let delivery = take(&broker, "billing").await;
    assert_eq!(
        delivery.event.data,
        json!({ "n": 0 }),
        "the sixth, unread one"
    );

    // Topics without a retention are never trimmed.
    publish(&broker, "payments", 3).await;
    broker.set_retention(&[]);
    assert!(broker.trim_now().await.expect("trim").is_empty());
    assert_eq!(xlen(&server, "edaflow:{trim}:t:payments"), 3);
}

#[tokio::test]
async fn unread_and_unacked_entries_are_kept_counted_and_logged() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let captured = LogCapture::global_warnings();

    let broker = server.broker(options("keep")).await;
    group(&broker, "billing", "orders").await;
    group(&broker, "audit", "orders").await;
    broker.set_retention(&[("orders".to_owned(), RETENTION)]);
    publish(&broker, "orders", 3).await;
    take_and_ack(&broker, "billing", 3).await;
    // `audit` takes one and does not settle it: pending, so it may run again.
    let pending = take(&broker, "audit").await;

    let expected = [("audit".to_owned(), 3)];
    let report = trim_until(&broker, |r| r.kept == expected).await;
    assert_eq!(
        report.trimmed, 0,
        "1 pending + 2 unread, nothing trimmed: {report:?}"
    );
    assert_eq!(xlen(&server, "edaflow:{keep}:t:orders"), 3);
    let log = captured.text();
    assert!(
        log.contains(
            "retention: kept 3 entries of `orders` older than 200ms that group `audit` has not read or acknowledged yet"
        ),
        "{log}"
    );

    // Once `audit` has settled everything, the entries go.
    broker
        .commit(pending, Effects::default())
        .await
        .expect("commit");
    take_and_ack(&broker, "audit", 2).await;
    let report = trim_until(&broker, |_| xlen(&server, "edaflow:{keep}:t:orders") == 0).await;
    assert!(report.kept.is_empty(), "{report:?}");
}

#[tokio::test]
async fn a_declared_group_not_yet_on_the_stream_holds_its_entries() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let broker = server.broker(options("late")).await;
    group(&broker, "billing", "orders").await;
    group(&broker, "late", "orders").await;
    broker.set_retention(&[("orders".to_owned(), RETENTION)]);
    publish(&broker, "orders", 4).await;
    take_and_ack(&broker, "billing", 4).await;
    // As if `late` had been declared while the stream was being created elsewhere: its
    // record matches the topic, but its XGROUP is not on the stream.
    let key = "edaflow:{late}:t:orders";
    assert!(server
        .command(&["XGROUP", "DESTROY", key, "late"])
        .starts_with(":1"));

    let expected = [("late".to_owned(), 4)];
    let report = trim_until(&broker, |r| r.kept == expected).await;
    assert_eq!(report.trimmed, 0, "{report:?}");
    assert_eq!(xlen(&server, key), 4);
}

#[tokio::test]
async fn several_trimmers_at_once_lose_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let brokers = vec![
        server.broker(options("many")).await,
        server.broker(options("many")).await,
        server.broker(options("many")).await,
    ];
    group(&brokers[0], "billing", "orders").await;
    for broker in &brokers {
        // Each also runs its own background trimmer.
        broker.set_retention(&[("orders".to_owned(), Duration::from_millis(50))]);
    }
    const EVENTS: u64 = 200;
    let publisher = brokers[0].clone();
    let publishing = tokio::spawn(async move { publish(&publisher, "orders", EVENTS).await });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut trimmers = Vec::new();
    for broker in &brokers[1..] {
        let (broker, stop) = (broker.clone(), stop.clone());
        trimmers.push(tokio::spawn(async move {
            let mut trimmed = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for report in broker.trim_now().await.expect("trim") {
                    trimmed += report.trimmed;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            trimmed
        }));
    }
    // A slow consumer: every event must still arrive, once, in order.
    let consumer = brokers[0].clone();
    let mut seen = Vec::new();
    for _ in 0..EVENTS {
        let delivery = take(&consumer, "billing").await;
        seen.push(delivery.event.data["n"].as_u64().expect("n"));
        consumer
            .commit(delivery, Effects::default())
            .await
            .expect("commit");
        if seen.len() % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    publishing.await.expect("publisher");
    assert_eq!(seen, (0..EVENTS).collect::<Vec<_>>());

    let key = "edaflow:{many}:t:orders";
    let start = Instant::now();
    while xlen(&server, key) > 0 {
        assert!(start.elapsed() < DEADLINE, "the stream was not emptied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut by_tests = 0;
    for trimmer in trimmers {
        by_tests += trimmer.await.expect("trimmer");
    }
    // Between the test's loops and the background tasks, every entry went exactly once.
    assert!(by_tests <= EVENTS, "{by_tests}");
}

#[tokio::test]
async fn the_runtime_passes_topic_retention_to_the_broker_and_reload_updates_it() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let broker = server.broker(options("runtime")).await;
    let dir = FlowDir::new();
    let flow = |retention: &str| {
        format!(
            "[producers.api]\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n\n\
             [subscribers.billing]\ntopic = \"orders\"\n\n\
             [topics.orders]\n{retention}\n"
        )
    };
    dir.write("flow.toml", &flow("retention = \"200ms\""));
    let (mut runtime, _) = start_with(
        broker.clone(),
        RuntimeOptions {
            producers: false,
            quiet: true,
            ..RuntimeOptions::default()
        },
        &dir,
    )
    .await;
    let topics = |reports: Vec<TrimReport>| -> Vec<(String, Duration)> {
        reports
            .into_iter()
            .map(|r| (r.topic, r.retention))
            .collect()
    };
    assert_eq!(
        topics(broker.trim_now().await.expect("trim")),
        [("orders".to_owned(), RETENTION)]
    );

    dir.write("flow.toml", &flow("retention = \"1h\""));
    apply(&mut runtime, &dir).await;
    assert_eq!(
        topics(broker.trim_now().await.expect("trim")),
        [("orders".to_owned(), Duration::from_secs(3600))]
    );

    dir.write("flow.toml", &flow(""));
    apply(&mut runtime, &dir).await;
    assert!(broker.trim_now().await.expect("trim").is_empty());
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_topic_no_group_reads_is_trimmed_by_the_unread_retention_and_no_other() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let broker = server
        .broker(RedisOptions {
            unread_retention: Some(RETENTION),
            ..options("unread")
        })
        .await;
    group(&broker, "billing", "orders").await;
    // A group declared for a pattern: the topics it matches are read, streams or not.
    group(&broker, "audit", "audit.>").await;
    broker.set_retention(&[("archive".to_owned(), Duration::from_secs(3600))]);
    // Taken before the events exist: an event is old `RETENTION` after it was published,
    // not after the last of them was.
    let start = Instant::now();
    for topic in ["orders", "audit.login", "done", "archive"] {
        publish(&broker, topic, 3).await;
    }
    let key = |topic: &str| format!("edaflow:{{unread}}:t:{topic}");
    loop {
        let reports = broker.trim_unread_now().await.expect("trim");
        // Only the topic nobody reads is looked at: the others are read, or have a
        // retention of their own.
        let topics: Vec<&str> = reports.iter().map(|r| r.topic.as_str()).collect();
        assert_eq!(topics, ["done"], "{reports:?}");
        assert_eq!(reports[0].retention, RETENTION);
        if xlen(&server, &key("done")) == 0 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "`done` never trimmed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(start.elapsed() >= RETENTION, "trimmed before it was old");
    for topic in ["orders", "audit.login", "archive"] {
        assert_eq!(xlen(&server, &key(topic)), 3, "{topic} is kept");
    }
    // The unread events of `orders` still reach its group.
    take_and_ack(&broker, "billing", 3).await;

    // Off: nothing is looked at.
    let off = server
        .broker(RedisOptions {
            unread_retention: None,
            ..options("unread")
        })
        .await;
    publish(&off, "done", 2).await;
    assert!(off.trim_unread_now().await.expect("trim").is_empty());
}

#[test]
fn edaflow_run_takes_the_unread_retention_from_its_flag() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = FlowDir::new();
    dir.write(
        "flow.toml",
        "[flow]\nname = \"flag\"\n\n[producers.api]\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n\n\
         [subscribers.billing]\ntopic = \"orders\"\n",
    );
    let mut running = Edaflow::new(dir.root())
        .args([
            "run",
            "flow.toml",
            "--no-watch",
            "--listen",
            "127.0.0.1:0",
            "--broker",
            &server.url(),
            "--unread-retention",
            "300ms",
        ])
        .spawn();
    let addr = running.listening_addr(DEADLINE);
    for topic in ["orders", "nobody"] {
        let reply = post_json(addr, &format!("/topics/{topic}"), b"{}");
        assert_eq!(reply.status, 202, "{reply:?}");
    }
    let start = Instant::now();
    while xlen(&server, "edaflow:{flag}:t:nobody") > 0 {
        assert!(start.elapsed() < DEADLINE, "{}", running.dump());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        xlen(&server, "edaflow:{flag}:t:orders"),
        1,
        "read by billing"
    );
    running.wait_stderr("the trim said once", DEADLINE, |log| {
        log.contains("no group reads topic `nobody`")
    });
    running.terminate();
    assert!(running.wait_exit(DEADLINE).success(), "{}", running.dump());
}
