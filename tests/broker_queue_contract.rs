//! The work-queue half of the broker contract, written once over `B: Broker` so that every
//! broker (memory now, Redis later) runs the same checks unchanged: add an instantiation to
//! `contract_tests!` at the bottom.
//!
//! Timing goes through `Clock`. For the memory broker it is paused tokio time:
//! `advance` moves the clock exactly, and a consumer waiting in `next()` lets tokio jump
//! straight to the next due time; no memory test sleeps on the wall clock. Redis keeps its
//! own clock, so its instantiation runs on real time with the delays scaled down and
//! timing checked within a tolerance (never early).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use edaflow::broker::{
    Broker, BrokerError, Consumer, DeadFilter, Delivery, Effects, QueueSpec, Removed,
};
use edaflow::event::Event;
use edaflow::flow::TopicPattern;

mod common;
use common::redis::Clock;

const SOURCE: &str = "edaflow://contract/test";

fn item(queue: &str, n: i64) -> Event {
    Event::new(queue, SOURCE, json!({ "n": n }))
}

fn n_of(delivery: &Delivery) -> i64 {
    delivery.event.data["n"]
        .as_i64()
        .expect("test items carry `n`")
}

async fn declare<B: Broker>(broker: &B, name: &str, capacity: Option<usize>) {
    broker
        .declare_queue(&QueueSpec {
            name: name.to_owned(),
            capacity,
            poll: None,
        })
        .await
        .unwrap_or_else(|e| panic!("declare queue `{name}`: {e}"));
}

async fn enqueue<B: Broker>(broker: &B, queue: &str, n: i64, delay_ms: u64) -> Event {
    let event = item(queue, n);
    broker
        .enqueue(queue, event.clone(), Duration::from_millis(delay_ms))
        .await
        .unwrap_or_else(|e| panic!("enqueue {n} on `{queue}`: {e}"));
    event
}

async fn stats_of<B: Broker>(broker: &B, queue: &str) -> edaflow::broker::QueueStats {
    broker
        .queue_stats()
        .await
        .into_iter()
        .find(|s| s.name == queue)
        .unwrap_or_else(|| panic!("no stats for queue `{queue}`"))
}

async fn take_now<C: Consumer>(consumer: &mut C) -> Option<Delivery> {
    consumer.try_next().await.expect("try_next on a live queue")
}

fn pattern(text: &str) -> TopicPattern {
    TopicPattern::parse(text).expect("test pattern")
}

fn dead_letter(origin_queue: Option<&str>, origin_topic: &str, n: i64) -> Event {
    let original = Event::new(origin_topic, SOURCE, json!({ "n": n }));
    let mut dead = original.caused(format!("dead.{origin_topic}"), SOURCE, json!({ "n": n }));
    dead.extensions
        .insert("deadlettertopic".into(), origin_topic.into());
    dead.extensions
        .insert("deadletterreason".into(), "it broke".into());
    dead.extensions
        .insert("deadletterattempts".into(), 3.into());
    if let Some(queue) = origin_queue {
        dead.extensions
            .insert("deadletterqueue".into(), queue.into());
    }
    dead
}

// ---------------------------------------------------------------------------------------
// The checks

/// Items come out when they fall due, earliest first, whatever order they went in; each
/// is delivered at its own due time (per-item delays, not one queue-wide delay).
pub async fn items_come_out_in_due_order<B: Broker>(broker: B, clock: Clock) {
    declare(&broker, "tasks", None).await;
    let t0 = Instant::now();
    for (n, delay) in [(1, 3000), (2, 1000), (3, 2000), (4, 0), (5, 1000)] {
        enqueue(&broker, "tasks", n, clock.ms(delay)).await;
    }
    let mut consumer = broker.queue_consumer("tasks").expect("a consumer");
    let mut order = Vec::new();
    for _ in 0..5 {
        let delivery = consumer.next().await.expect("a delivery");
        order.push((n_of(&delivery), t0.elapsed()));
        assert!(delivery.from_queue);
        assert_eq!(&*delivery.group, "tasks");
        assert_eq!(delivery.redeliveries, 0);
        broker
            .commit(delivery, Effects::default())
            .await
            .expect("commit");
    }
    // Equal due times keep their enqueue order (2 before 5).
    let expected = [(4, 0), (2, 1000), (5, 1000), (3, 2000), (1, 3000)];
    assert_eq!(
        order.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        expected.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "{order:?}"
    );
    for ((n, at), (_, due)) in order.iter().zip(expected) {
        clock.assert_at(*at, due, &format!("item {n}"));
    }
}

/// `try_next` never waits: `None` before the item is due, `Some` at and after.
pub async fn try_next_is_none_before_due_and_some_from_due<B: Broker>(broker: B, clock: Clock) {
    declare(&broker, "tasks", None).await;
    enqueue(&broker, "tasks", 1, clock.ms(1000)).await;
    enqueue(&broker, "tasks", 2, clock.ms(2000)).await;
    let mut consumer = broker.queue_consumer("tasks").expect("a consumer");
    assert!(take_now(&mut consumer).await.is_none(), "nothing due at 0");
    let second = clock.d(Duration::from_secs(1));
    clock.advance(second - clock.early()).await;
    assert!(
        take_now(&mut consumer).await.is_none(),
        "nothing due just before 1s"
    );
    // Exactly at the due time on paused time; just past it on real time.
    clock
        .advance(clock.early() + clock.late(Duration::ZERO).min(Duration::from_millis(5)))
        .await;
    let first = take_now(&mut consumer).await.expect("item 1 is due at 1s");
    assert_eq!(n_of(&first), 1);
    assert!(
        take_now(&mut consumer).await.is_none(),
        "item 2 is not due at 1s"
    );
    clock.advance(clock.d(Duration::from_millis(1500))).await;
    let second = take_now(&mut consumer)
        .await
        .expect("item 2 is due after 2s");
    assert_eq!(n_of(&second), 2);
    for delivery in [first, second] {
        broker
            .commit(delivery, Effects::default())
            .await
            .expect("commit");
    }
    assert!(
        take_now(&mut consumer).await.is_none(),
        "the queue is empty"
    );
}

/// Consumers of one queue compete: every item goes to exactly one of them, and both get
/// work.
pub async fn competing_consumers_share_items_once<B: Broker>(broker: B, clock: Clock) {
    declare(&broker, "tasks", None).await;
    const ITEMS: i64 = 20;
    for n in 0..ITEMS {
        enqueue(&broker, "tasks", n, 10 * n as u64).await;
    }
    let (tx, mut rx) = mpsc::channel::<(usize, i64)>(100);
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for worker in 0..2 {
        let mut consumer = broker.queue_consumer("tasks").expect("a consumer");
        let broker = broker.clone();
        let tx = tx.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = consumer.next() => next.expect("a delivery"),
                };
                let n = n_of(&delivery);
                // Work takes longer than the gap between items, so the other consumer
                // has to take the next one.
                tokio::time::sleep(Duration::from_millis(15)).await;
                broker
                    .commit(delivery, Effects::default())
                    .await
                    .expect("commit");
                let _ = tx.send((worker, n)).await;
            }
        }));
    }
    drop(tx);
    let mut seen = Vec::new();
    while seen.len() < ITEMS as usize {
        let got = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("every item is delivered")
            .expect("workers are running");
        seen.push(got);
    }
    // Nothing more arrives: no item is delivered twice.
    clock.advance(clock.d(Duration::from_secs(5))).await;
    assert!(rx.try_recv().is_err(), "an item was delivered twice");
    stop.cancel();
    for w in workers {
        w.await.expect("worker ends");
    }
    let items: BTreeSet<i64> = seen.iter().map(|(_, n)| *n).collect();
    assert_eq!(items, (0..ITEMS).collect(), "{seen:?}");
    assert_eq!(seen.len(), ITEMS as usize, "{seen:?}");
    for worker in 0..2 {
        assert!(
            seen.iter().any(|(w, _)| *w == worker),
            "consumer {worker} got nothing: {seen:?}"
        );
    }
    let stats = stats_of(&broker, "tasks").await;
    assert_eq!((stats.depth, stats.in_flight), (0, 0), "{stats:?}");
}

/// Past capacity, enqueueing fails with `QueueFull` (never a silent drop, never a longer
/// queue), and there is room again once an item is consumed.
pub async fn capacity_refuses_and_frees_up<B: Broker>(broker: B, clock: Clock) {
    declare(&broker, "tasks", Some(2)).await;
    enqueue(&broker, "tasks", 1, 0).await;
    enqueue(&broker, "tasks", 2, clock.ms(5000)).await;
    let refused = broker
        .enqueue("tasks", item("tasks", 3), Duration::ZERO)
        .await;
    match refused {
        Err(BrokerError::QueueFull { queue, capacity }) => {
            assert_eq!((queue.as_str(), capacity), ("tasks", 2));
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    let stats = stats_of(&broker, "tasks").await;
    assert_eq!(stats.depth, 2, "{stats:?}");
    assert_eq!(stats.capacity, Some(2), "{stats:?}");

    let mut consumer = broker.queue_consumer("tasks").expect("a consumer");
    let delivery = take_now(&mut consumer).await.expect("item 1 is due");
    assert_eq!(n_of(&delivery), 1);
    broker
        .commit(delivery, Effects::default())
        .await
        .expect("commit");
    enqueue(&broker, "tasks", 4, 0).await;
    let refused = broker
        .enqueue("tasks", item("tasks", 5), Duration::ZERO)
        .await;
    assert!(
        matches!(refused, Err(BrokerError::QueueFull { .. })),
        "{refused:?}"
    );
    // What was refused never shows up; what was accepted all does.
    clock.advance(clock.d(Duration::from_secs(10))).await;
    let mut out = Vec::new();
    while let Some(d) = take_now(&mut consumer).await {
        out.push(n_of(&d));
        broker.commit(d, Effects::default()).await.expect("commit");
    }
    assert_eq!(out, vec![4, 2]);
}

/// A nacked item comes back first, with its redelivery count raised, and nothing is lost.
pub async fn nack_redelivers_first<B: Broker>(broker: B, _clock: Clock) {
    declare(&broker, "tasks", None).await;
    enqueue(&broker, "tasks", 1, 0).await;
    enqueue(&broker, "tasks", 2, 0).await;
    let mut consumer = broker.queue_consumer("tasks").expect("a consumer");
    let first = take_now(&mut consumer).await.expect("item 1");
    assert_eq!((n_of(&first), first.redeliveries), (1, 0));
    assert_eq!(stats_of(&broker, "tasks").await.in_flight, 1);
    let id = first.event.id.clone();
    broker.nack(first).await.expect("nack");
    let stats = stats_of(&broker, "tasks").await;
    assert_eq!((stats.depth, stats.in_flight), (2, 0), "{stats:?}");

    let again = take_now(&mut consumer).await.expect("item 1 again");
    assert_eq!(again.event.id, id);
    assert_eq!(again.redeliveries, 1);
    broker.nack(again).await.expect("nack");
    let third = take_now(&mut consumer).await.expect("item 1 a third time");
    assert_eq!((n_of(&third), third.redeliveries), (1, 2));
    broker
        .commit(third, Effects::default())
        .await
        .expect("commit");
    let second = take_now(&mut consumer).await.expect("item 2");
    assert_eq!((n_of(&second), second.redeliveries), (2, 0));
    broker
        .commit(second, Effects::default())
        .await
        .expect("commit");
    assert!(take_now(&mut consumer).await.is_none());
}

/// A commit makes its queue items visible (not before), and only then is the delivery
/// acked: it stays in flight until the commit.
pub async fn commit_enqueues_then_acks<B: Broker>(broker: B, clock: Clock) {
    declare(&broker, "inbox", None).await;
    declare(&broker, "later", None).await;
    enqueue(&broker, "inbox", 1, 0).await;
    let mut tap = broker.tap(pattern("later"), 100);
    let mut inbox = broker.queue_consumer("inbox").expect("a consumer");
    let mut later = broker.queue_consumer("later").expect("a consumer");
    let delivery = take_now(&mut inbox).await.expect("item 1");

    let follow_up = delivery.event.caused("later", SOURCE, json!({ "n": 10 }));
    let now = delivery.event.caused("later", SOURCE, json!({ "n": 11 }));
    let effects = Effects {
        enqueue: vec![
            (
                "later".to_owned(),
                follow_up.clone(),
                clock.d(Duration::from_secs(2)),
            ),
            ("later".to_owned(), now.clone(), Duration::ZERO),
        ],
        ..Effects::default()
    };
    // Before the commit: the delivery is in flight and nothing is visible downstream.
    clock.advance(clock.d(Duration::from_secs(1))).await;
    let inbox_stats = stats_of(&broker, "inbox").await;
    assert_eq!(
        (inbox_stats.depth, inbox_stats.in_flight),
        (0, 1),
        "{inbox_stats:?}"
    );
    assert_eq!(stats_of(&broker, "later").await.depth, 0);
    assert!(take_now(&mut later).await.is_none());
    assert!(tap.try_recv().is_err(), "a tap saw an uncommitted item");

    broker.commit(delivery, effects).await.expect("commit");
    let inbox_stats = stats_of(&broker, "inbox").await;
    assert_eq!(inbox_stats.in_flight, 0, "acked by the commit");
    let later_stats = stats_of(&broker, "later").await;
    assert_eq!((later_stats.depth, later_stats.due_now), (2, 1));
    // Delays count from the commit, not from when the effects were built.
    clock.assert_remaining(later_stats.next_due_ms, 2000, "next due");
    let first = take_now(&mut later).await.expect("the undelayed item");
    assert_eq!(first.event.id, now.id);
    assert_eq!(first.event.causation_id, now.causation_id);
    broker
        .commit(first, Effects::default())
        .await
        .expect("commit");
    clock.settle().await;
    let seen: Vec<String> = std::iter::from_fn(|| tap.try_recv().ok())
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(seen.len(), 2, "the tap sees both items entering the queue");
}

/// A commit whose queue items do not all fit fails as a whole: none of them is visible,
/// so retrying the handler run cannot queue anything twice.
pub async fn commit_past_capacity_makes_nothing_visible<B: Broker>(broker: B, _clock: Clock) {
    declare(&broker, "inbox", None).await;
    declare(&broker, "small", Some(1)).await;
    enqueue(&broker, "inbox", 1, 0).await;
    let mut inbox = broker.queue_consumer("inbox").expect("a consumer");
    let delivery = take_now(&mut inbox).await.expect("item 1");
    let effects = Effects {
        enqueue: vec![
            ("small".to_owned(), item("small", 10), Duration::ZERO),
            ("small".to_owned(), item("small", 11), Duration::ZERO),
        ],
        ..Effects::default()
    };
    let result = broker.commit(delivery.clone(), effects).await;
    assert!(
        matches!(result, Err(BrokerError::QueueFull { .. })),
        "{result:?}"
    );
    assert_eq!(
        stats_of(&broker, "small").await.depth,
        0,
        "a failed commit left part of its effects visible"
    );
}

/// A committed dead letter is published to its topic (taps see it) and kept in the store;
/// `take_dead_letters` removes exactly what its filter selects.
pub async fn dead_letters_are_published_stored_and_taken_by_filter<B: Broker>(
    broker: B,
    clock: Clock,
) {
    declare(&broker, "tasks", None).await;
    let mut dead_tap = broker.tap(pattern("dead.>"), 100);
    let letters = [
        dead_letter(Some("tasks"), "tasks", 1),
        dead_letter(None, "orderCreated", 2),
        dead_letter(Some("tasks"), "tasks", 3),
        dead_letter(None, "orderShipped", 4),
    ];
    for (i, letter) in letters.iter().enumerate() {
        enqueue(&broker, "tasks", i as i64, 0).await;
        let mut consumer = broker.queue_consumer("tasks").expect("a consumer");
        let delivery = take_now(&mut consumer).await.expect("the item");
        broker
            .commit(
                delivery,
                Effects {
                    dead_letter: Some(letter.clone()),
                    ..Effects::default()
                },
            )
            .await
            .expect("commit a dead letter");
    }
    clock.settle().await;
    let published: Vec<String> = std::iter::from_fn(|| dead_tap.try_recv().ok())
        .map(|e| e.id.clone())
        .collect();
    let ids: Vec<String> = letters.iter().map(|l| l.id.clone()).collect();
    // Order across topics is not part of the contract (a namespace spread over shards
    // keeps it per topic); each letter goes to a topic of its own here.
    let (mut published, mut expected) = (published, ids.clone());
    published.sort();
    expected.sort();
    assert_eq!(published, expected, "each dead letter is published once");
    let all = broker
        .dead_letters(&DeadFilter::default())
        .await
        .expect("list");
    assert_eq!(
        all.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        ids,
        "listed oldest first"
    );
    assert_eq!(all[0], letters[0], "stored as committed");
    assert_eq!(stats_of(&broker, "tasks").await.in_flight, 0);

    let from_tasks = DeadFilter {
        origin: Some(pattern("tasks")),
        ids: Vec::new(),
    };
    let listed = broker.dead_letters(&from_tasks).await.expect("list");
    assert_eq!(
        listed.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        vec![ids[0].clone(), ids[2].clone()]
    );
    let order_pattern = DeadFilter {
        origin: Some(pattern("order*")),
        ids: Vec::new(),
    };
    assert_eq!(
        broker
            .dead_letters(&order_pattern)
            .await
            .expect("list")
            .len(),
        2
    );

    // Listing takes nothing.
    assert_eq!(
        broker
            .dead_letters(&DeadFilter::default())
            .await
            .expect("list")
            .len(),
        4
    );
    let taken = broker.take_dead_letters(&from_tasks).await.expect("take");
    assert_eq!(
        taken.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        vec![ids[0].clone(), ids[2].clone()]
    );
    let by_id = DeadFilter {
        origin: None,
        ids: vec![ids[3].clone(), "no-such-id".to_owned()],
    };
    let taken = broker.take_dead_letters(&by_id).await.expect("take");
    assert_eq!(
        taken.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        vec![ids[3].clone()]
    );
    let left = broker
        .dead_letters(&DeadFilter::default())
        .await
        .expect("list");
    assert_eq!(
        left.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        vec![ids[1].clone()]
    );
    // Origin and ids together: both must match.
    let both = DeadFilter {
        origin: Some(pattern("tasks")),
        ids: vec![ids[1].clone()],
    };
    assert!(broker
        .take_dead_letters(&both)
        .await
        .expect("take")
        .is_empty());
    assert_eq!(
        broker
            .dead_letters(&DeadFilter::default())
            .await
            .expect("list")
            .len(),
        1
    );
}

/// `queue_stats` reports depth, what is due now, when the next item falls due, and what
/// is in flight.
pub async fn queue_stats_report_depth_due_and_in_flight<B: Broker>(broker: B, clock: Clock) {
    declare(&broker, "tasks", Some(10)).await;
    declare(&broker, "empty", None).await;
    let empty = stats_of(&broker, "empty").await;
    assert_eq!(
        (
            empty.depth,
            empty.due_now,
            empty.next_due_ms,
            empty.in_flight,
            empty.capacity
        ),
        (0, 0, None, 0, None)
    );

    enqueue(&broker, "tasks", 1, 0).await;
    enqueue(&broker, "tasks", 2, 0).await;
    enqueue(&broker, "tasks", 3, clock.ms(5000)).await;
    enqueue(&broker, "tasks", 4, clock.ms(8000)).await;
    let stats = stats_of(&broker, "tasks").await;
    assert_eq!(stats.name, "tasks");
    assert_eq!(
        (
            stats.depth,
            stats.due_now,
            stats.next_due_ms,
            stats.in_flight,
            stats.capacity
        ),
        (4, 2, stats.next_due_ms, 0, Some(10))
    );
    clock.assert_remaining(stats.next_due_ms, 5000, "next due at first");

    let mut consumer = broker.queue_consumer("tasks").expect("a consumer");
    let taken = take_now(&mut consumer).await.expect("item 1");
    clock.advance(clock.d(Duration::from_millis(2000))).await;
    let stats = stats_of(&broker, "tasks").await;
    assert_eq!(
        (stats.depth, stats.due_now, stats.in_flight),
        (3, 1, 1),
        "{stats:?}"
    );
    clock.assert_remaining(stats.next_due_ms, 3000, "next due after 2s");
    broker
        .commit(taken, Effects::default())
        .await
        .expect("commit");
    // Exactly at item 3's due time on paused time; just past it on real time.
    clock
        .advance(
            clock.d(Duration::from_millis(3000))
                + clock.late(Duration::ZERO).min(Duration::from_millis(5)),
        )
        .await;
    let stats = stats_of(&broker, "tasks").await;
    assert_eq!(
        (stats.depth, stats.due_now, stats.in_flight),
        (3, 2, 0),
        "{stats:?}"
    );
    clock.assert_remaining(stats.next_due_ms, 3000, "next due after 5s");
    let names: Vec<String> = broker
        .queue_stats()
        .await
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec!["empty".to_owned(), "tasks".to_owned()]);
}

/// Unknown and removed queues are errors, never silent drops.
pub async fn unknown_and_removed_queues_are_errors<B: Broker>(broker: B, _clock: Clock) {
    let result = broker
        .enqueue("nope", item("nope", 1), Duration::ZERO)
        .await;
    match result {
        Err(BrokerError::UnknownQueue { queue }) => assert_eq!(queue, "nope"),
        other => panic!("expected UnknownQueue, got {other:?}"),
    }
    assert!(matches!(
        broker.queue_consumer("nope"),
        Err(BrokerError::UnknownQueue { .. })
    ));

    declare(&broker, "tasks", None).await;
    enqueue(&broker, "tasks", 1, 0).await;
    enqueue(&broker, "tasks", 2, 60_000).await;
    let mut waiting = broker.queue_consumer("tasks").expect("a consumer");
    let mut idle = broker.queue_consumer("tasks").expect("a consumer");
    let delivery = take_now(&mut waiting).await.expect("item 1");
    // A consumer blocked in `next()` is woken by the removal.
    let blocked = tokio::spawn(async move { idle.next().await.map(|d| d.event.id.clone()) });
    tokio::task::yield_now().await;
    broker.remove_queue("tasks", None).await.expect("remove");
    let woke = tokio::time::timeout(Duration::from_secs(1), blocked)
        .await
        .expect("the waiting consumer wakes up")
        .expect("the task ends");
    assert!(
        matches!(woke, Err(BrokerError::UnknownQueue { .. })),
        "{woke:?}"
    );
    let result = broker
        .enqueue("tasks", item("tasks", 3), Duration::ZERO)
        .await;
    assert!(
        matches!(result, Err(BrokerError::UnknownQueue { .. })),
        "{result:?}"
    );
    assert!(matches!(
        waiting.try_next().await,
        Err(BrokerError::UnknownQueue { .. })
    ));
    assert!(broker.queue_stats().await.iter().all(|s| s.name != "tasks"));
    // Settling a delivery of a removed queue is harmless.
    let _ = broker.nack(delivery).await;

    // Declaring it again starts empty.
    declare(&broker, "tasks", None).await;
    let stats = stats_of(&broker, "tasks").await;
    assert_eq!((stats.depth, stats.in_flight), (0, 0), "{stats:?}");
}

/// Removing a queue with a successor (a queue renamed on reload) moves its items there,
/// each keeping its due time; without one, what waits is dropped and counted.
pub async fn removing_a_queue_hands_its_items_to_a_successor<B: Broker>(broker: B, clock: Clock) {
    declare(&broker, "old", None).await;
    let t0 = Instant::now();
    for (n, delay) in [(1, 0), (2, 2000), (3, 1000)] {
        enqueue(&broker, "old", n, clock.ms(delay)).await;
    }
    declare(&broker, "new", None).await;
    let removed = broker
        .remove_queue("old", Some("new"))
        .await
        .expect("remove with a successor");
    assert_eq!(
        removed,
        Removed {
            moved: 3,
            dropped: 0
        }
    );
    assert!(broker.queue_stats().await.iter().all(|s| s.name != "old"));
    assert_eq!(stats_of(&broker, "new").await.depth, 3);
    let mut consumer = broker.queue_consumer("new").expect("a consumer");
    for (n, due) in [(1, 0), (3, 1000), (2, 2000)] {
        let delivery = consumer.next().await.expect("a delivery");
        assert_eq!(n_of(&delivery), n);
        assert_eq!(&*delivery.group, "new");
        clock.assert_at(t0.elapsed(), due, &format!("moved item {n}"));
        broker
            .commit(delivery, Effects::default())
            .await
            .expect("commit");
    }

    enqueue(&broker, "new", 4, clock.ms(5000)).await;
    enqueue(&broker, "new", 5, 0).await;
    let removed = broker.remove_queue("new", None).await.expect("remove");
    assert_eq!(
        removed,
        Removed {
            moved: 0,
            dropped: 2
        }
    );
}

/// Declaring an existing queue again keeps its items and applies the new capacity.
pub async fn redeclaring_keeps_items_and_updates_capacity<B: Broker>(broker: B, _clock: Clock) {
    declare(&broker, "tasks", None).await;
    enqueue(&broker, "tasks", 1, 0).await;
    enqueue(&broker, "tasks", 2, 0).await;
    declare(&broker, "tasks", Some(2)).await;
    let stats = stats_of(&broker, "tasks").await;
    assert_eq!((stats.depth, stats.capacity), (2, Some(2)));
    let refused = broker
        .enqueue("tasks", item("tasks", 3), Duration::ZERO)
        .await;
    assert!(
        matches!(refused, Err(BrokerError::QueueFull { .. })),
        "{refused:?}"
    );
}

/// Generates one test per check for a broker. `$make` is a future of `Some((broker,
/// guard))` (`None` skips, for a broker whose server is not installed); `$clock` says how
/// the checks read time; the attribute goes on every generated test.
macro_rules! contract_tests {
    ($module:ident, #[$test:meta], $clock:expr, $make:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            contract_tests!(@each #[$test] $clock, $make;
                items_come_out_in_due_order,
                try_next_is_none_before_due_and_some_from_due,
                competing_consumers_share_items_once,
                capacity_refuses_and_frees_up,
                nack_redelivers_first,
                commit_enqueues_then_acks,
                dead_letters_are_published_stored_and_taken_by_filter,
                queue_stats_report_depth_due_and_in_flight,
                unknown_and_removed_queues_are_errors,
                redeclaring_keeps_items_and_updates_capacity,
                removing_a_queue_hands_its_items_to_a_successor,
                commit_past_capacity_makes_nothing_visible,
            );
        }
    };
    (@each #[$test:meta] $clock:expr, $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[$test]
            async fn $check() {
                let Some((broker, _guard)) = $make.await else {
                    return;
                };
                super::$check(broker, $clock).await;
            }
        )*
    };
}

contract_tests!(
    memory,
    #[tokio::test(start_paused = true)],
    Clock::PAUSED,
    async {
        Some((
            edaflow::broker::MemoryBroker::new(edaflow::broker::MemoryOptions::default()),
            (),
        ))
    }
);

/// A Redis server per test, so checks never see each other's keys.
async fn redis_broker() -> Option<(edaflow::broker::RedisBroker, common::redis::RedisServer)> {
    let server = common::redis::RedisServer::start()?;
    let broker = server
        .broker(edaflow::broker::RedisOptions {
            namespace: "queues".to_owned(),
            block: Duration::from_millis(200),
            ..edaflow::broker::RedisOptions::default()
        })
        .await;
    Some((broker, server))
}

contract_tests!(
    redis,
    #[tokio::test],
    Clock::real(4, Duration::from_millis(120)),
    redis_broker()
);

/// A three-master Redis Cluster shared by this binary's tests, a namespace per test,
/// reached through a seed node.
async fn cluster_broker() -> Option<(edaflow::broker::RedisBroker, ())> {
    let cluster = common::redis::RedisCluster::shared()?;
    let broker = cluster
        .broker(edaflow::broker::RedisOptions {
            namespace: common::redis::unique_namespace("queues"),
            block: Duration::from_millis(200),
            ..edaflow::broker::RedisOptions::default()
        })
        .await;
    assert!(
        broker.cluster_slot().is_some(),
        "the broker did not see the cluster"
    );
    Some((broker, ()))
}

contract_tests!(
    redis_cluster,
    #[tokio::test],
    Clock::real(4, Duration::from_millis(120)),
    cluster_broker()
);

/// A namespace spread over the three masters of the cluster: queues and the topics their
/// dead letters go to lie on different shards, so commits go through the outbox.
async fn cluster_spread_broker() -> Option<(edaflow::broker::RedisBroker, ())> {
    let cluster = common::redis::RedisCluster::shared()?;
    let broker = cluster
        .broker(edaflow::broker::RedisOptions {
            namespace: common::redis::unique_namespace("spreadq"),
            block: Duration::from_millis(200),
            shards: 3,
            ..edaflow::broker::RedisOptions::default()
        })
        .await;
    assert_eq!(broker.cluster_slots().len(), 3);
    Some((broker, ()))
}

contract_tests!(
    redis_cluster_spread,
    #[tokio::test],
    Clock::real(4, Duration::from_millis(120)),
    cluster_spread_broker()
);

/// On Redis a queue's consumers block in `XREADGROUP` on its ready stream, so something
/// else must move items there as they fall due: the queue's mover, which runs in the
/// process that declared the queue, consumer or not.
#[tokio::test]
async fn redis_the_queue_mover_moves_due_items_to_the_ready_stream() {
    let Some(server) = common::redis::RedisServer::start() else {
        return;
    };
    let broker = server
        .broker(edaflow::broker::RedisOptions {
            namespace: "queues".to_owned(),
            block: Duration::from_secs(60),
            // Moved when due, not ahead (see the take-ahead tests below).
            take_ahead: Duration::ZERO,
            ..edaflow::broker::RedisOptions::default()
        })
        .await;
    declare(&broker, "later", None).await;
    // The ready stream's length (the reply is raw RESP: `:N`).
    let ready = || {
        let reply = server.command(&["XLEN", "edaflow:{queues}:q:later:ready"]);
        reply.trim().trim_start_matches(':').to_owned()
    };
    enqueue(&broker, "later", 1, 300).await;
    assert_eq!(ready(), "0", "not due yet");
    // No consumer exists: only the mover can move it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ready() != "1" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the due item was not moved to the ready stream within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A consumer blocked in its read gets it at once.
    let mut worker = broker.queue_consumer("later").expect("consumer");
    let delivery = tokio::time::timeout(Duration::from_secs(5), worker.next())
        .await
        .expect("delivered within 5 s")
        .expect("next");
    assert_eq!(n_of(&delivery), 1);
}

/// A Redis broker whose queue items may be taken up to `take_ahead` before they fall due.
async fn redis_taking_ahead(
    take_ahead: Duration,
) -> Option<(edaflow::broker::RedisBroker, common::redis::RedisServer)> {
    let hold_ahead = edaflow::broker::RedisOptions::default().hold_ahead;
    redis_holding_ahead(take_ahead, hold_ahead).await
}

/// A Redis broker taking queue items up to 2 s ahead, each reader holding at most
/// `hold_ahead` of them, its server, and a worker on queue `later` (of `capacity`).
async fn later_queue(
    hold_ahead: usize,
    capacity: Option<usize>,
) -> Option<(
    edaflow::broker::RedisBroker,
    common::redis::RedisServer,
    <edaflow::broker::RedisBroker as Broker>::Consumer,
)> {
    let (broker, server) = redis_holding_ahead(Duration::from_secs(2), hold_ahead).await?;
    declare(&broker, "later", capacity).await;
    let worker = broker.queue_consumer("later").expect("consumer");
    Some((broker, server, worker))
}

/// As `redis_taking_ahead`, a reader holding at most `hold_ahead` items not yet due.
async fn redis_holding_ahead(
    take_ahead: Duration,
    hold_ahead: usize,
) -> Option<(edaflow::broker::RedisBroker, common::redis::RedisServer)> {
    let server = common::redis::RedisServer::start()?;
    let broker = server
        .broker(edaflow::broker::RedisOptions {
            namespace: "queues".to_owned(),
            block: Duration::from_millis(200),
            take_ahead,
            hold_ahead,
            ..edaflow::broker::RedisOptions::default()
        })
        .await;
    Some((broker, server))
}

/// Entries in a queue's ready stream, and how many of them are pending with a consumer.
fn ready_and_pending(server: &common::redis::RedisServer, queue: &str) -> (String, String) {
    let key = format!("edaflow:{{queues}}:q:{queue}:ready");
    let len = server.command(&["XLEN", &key]);
    let pending = server.command(&["XPENDING", &key, "workers"]);
    let first_line = |reply: &str| {
        reply
            .lines()
            .find(|l| !l.starts_with('*'))
            .unwrap_or("")
            .trim_start_matches(':')
            .to_owned()
    };
    (first_line(&len), first_line(&pending))
}

/// An idle worker takes an item before it falls due (the Redis work of moving and taking
/// it is done by then) and is handed it when it falls due, not before.
#[tokio::test]
async fn redis_an_item_taken_ahead_starts_at_its_due_time_not_before() {
    let Some((broker, server, mut worker)) =
        later_queue(edaflow::broker::RedisOptions::default().hold_ahead, None).await
    else {
        return;
    };
    let started = Instant::now();
    enqueue(&broker, "later", 1, 800).await;
    let next = tokio::spawn(async move {
        let delivery = worker.next().await.expect("next");
        (delivery, started.elapsed(), worker)
    });
    // Taken (pending with the worker's consumer) well before it is due.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ready_and_pending(&server, "later") != ("1".to_owned(), "1".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "not taken ahead: {:?}",
            ready_and_pending(&server, "later")
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "taken only after its due time ({:?}), not ahead",
        started.elapsed()
    );
    assert!(!next.is_finished(), "handed out before its due time");
    let (delivery, at, _worker) = tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .expect("handed out within 5 s")
        .expect("the worker task");
    assert_eq!(n_of(&delivery), 1);
    assert!(
        at >= Duration::from_millis(800),
        "handed out after {at:?}, before its due time"
    );
}

/// A worker holding an item taken ahead does not make an item due sooner wait behind it.
#[tokio::test]
async fn redis_an_item_due_sooner_overtakes_one_taken_ahead() {
    let Some((broker, _server, mut worker)) =
        later_queue(edaflow::broker::RedisOptions::default().hold_ahead, None).await
    else {
        return;
    };
    enqueue(&broker, "later", 1, 1500).await;
    let started = Instant::now();
    let next = tokio::spawn(async move { (worker.next().await.expect("next"), worker) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    enqueue(&broker, "later", 2, 0).await;
    let (first, mut worker) = tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .expect("handed out within 5 s")
        .expect("the worker task");
    assert_eq!(n_of(&first), 2, "the item due at once came first");
    assert!(started.elapsed() < Duration::from_millis(1500));
    broker
        .commit(first, Effects::default())
        .await
        .expect("commit");
    let second = tokio::time::timeout(Duration::from_secs(5), worker.next())
        .await
        .expect("handed out within 5 s")
        .expect("next");
    assert_eq!(n_of(&second), 1);
    assert!(started.elapsed() >= Duration::from_millis(1400));
}

/// An item taken ahead and given back (its worker stopped) keeps its due time: the next
/// worker is not handed it early either.
#[tokio::test]
async fn redis_an_item_given_back_before_its_due_time_keeps_it() {
    let Some((broker, server)) = redis_taking_ahead(Duration::from_secs(2)).await else {
        return;
    };
    declare(&broker, "later", None).await;
    let started = Instant::now();
    enqueue(&broker, "later", 1, 1000).await;
    let mut first = broker.queue_consumer("later").expect("consumer");
    // The worker gives up waiting (it is stopping) while it holds the item.
    let waited = tokio::time::timeout(Duration::from_millis(300), first.next()).await;
    assert!(
        waited.is_err(),
        "handed out before its due time: {waited:?}"
    );
    assert_eq!(
        ready_and_pending(&server, "later").1,
        "1",
        "the item was not taken ahead"
    );
    first.close().await;
    drop(first);
    let mut second = broker.queue_consumer("later").expect("consumer");
    let delivery = tokio::time::timeout(Duration::from_secs(5), second.next())
        .await
        .expect("handed out within 5 s")
        .expect("next");
    assert_eq!(n_of(&delivery), 1);
    let at = started.elapsed();
    assert!(
        at >= Duration::from_millis(1000),
        "handed out after {at:?}, before its due time"
    );
}

/// A queue whose workers poll takes nothing ahead: a polling worker would hold the item
/// until its next look.
#[tokio::test]
async fn redis_a_polled_queue_takes_nothing_ahead() {
    let Some((broker, server)) = redis_taking_ahead(Duration::from_secs(2)).await else {
        return;
    };
    broker
        .declare_queue(&QueueSpec {
            name: "polled".to_owned(),
            capacity: None,
            poll: Some(Duration::from_secs(10)),
        })
        .await
        .expect("declare");
    let mut worker = broker.queue_consumer("polled").expect("consumer");
    enqueue(&broker, "polled", 1, 600).await;
    // Long enough for a mover taking ahead to have moved it (it wakes on the enqueue).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ready_and_pending(&server, "polled").0, "0", "moved ahead");
    assert!(worker.try_next().await.expect("a look").is_none());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(delivery) = worker.try_next().await.expect("a look") {
            assert_eq!(n_of(&delivery), 1);
            break;
        }
        assert!(Instant::now() < deadline, "never due");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Enqueues items 1..=n, item i due `first_ms + i` ms after now; returns when it started.
async fn enqueue_burst<B: Broker>(broker: &B, queue: &str, n: i64, first_ms: u64) -> Instant {
    let started = Instant::now();
    for i in 1..=n {
        enqueue(broker, queue, i, first_ms + i.unsigned_abs()).await;
    }
    started
}

/// Hands out and acks items `from..=n` of a burst: each in due order, none before its due
/// time (item i is due `first_ms + i` ms after `started`). Then nothing is left in the
/// ready stream, pending or not: the batched acks deleted them all.
async fn drain_burst(
    server: &common::redis::RedisServer,
    broker: &edaflow::broker::RedisBroker,
    worker: &mut impl Consumer,
    (from, n, first_ms, started): (i64, i64, u64, Instant),
) {
    let mut commits = Vec::new();
    for expected in from..=n {
        let delivery = tokio::time::timeout(Duration::from_secs(10), worker.next())
            .await
            .expect("handed out within 10 s")
            .expect("next");
        let at = started.elapsed();
        assert_eq!(n_of(&delivery), expected, "handed out out of due order");
        let due = Duration::from_millis(first_ms + expected.unsigned_abs());
        assert!(
            at >= due,
            "item {expected} handed out after {at:?}, before {due:?}"
        );
        let broker = broker.clone();
        // Acked concurrently, as a subscriber's workers do: the acks share batches.
        commits.push(tokio::spawn(async move {
            broker.commit(delivery, Effects::default()).await
        }));
    }
    for commit in commits {
        commit.await.expect("the commit task").expect("commit");
    }
    assert_eq!(
        ready_and_pending(server, "later"),
        ("0".to_owned(), "0".to_owned()),
        "acked items left in the ready stream"
    );
}

/// One idle worker takes a whole burst ahead, far more than one read's or one worker's
/// share, so that only the handlers are left for its due time; it still hands each item
/// out in due order and not before its due time.
#[tokio::test]
async fn redis_a_worker_takes_a_whole_burst_ahead() {
    let Some((broker, server, mut worker)) =
        later_queue(edaflow::broker::RedisOptions::default().hold_ahead, None).await
    else {
        return;
    };
    let (n, first_ms) = (300, 1500);
    let started = enqueue_burst(&broker, "later", n, first_ms).await;
    let (first, worker) = {
        let next = tokio::spawn(async move { (worker.next().await.expect("next"), worker) });
        let all = (n.to_string(), n.to_string());
        let deadline = Instant::now() + Duration::from_secs(5);
        while ready_and_pending(&server, "later") != all {
            assert!(
                Instant::now() < deadline,
                "the burst was not taken ahead: {:?}",
                ready_and_pending(&server, "later")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            started.elapsed() < Duration::from_millis(first_ms),
            "taken only after {:?}, not ahead",
            started.elapsed()
        );
        assert!(!next.is_finished(), "handed out before its due time");
        next.await.expect("the worker task")
    };
    assert_eq!(n_of(&first), 1);
    assert!(started.elapsed() >= Duration::from_millis(first_ms + 1));
    broker
        .commit(first, Effects::default())
        .await
        .expect("commit");
    let mut worker = worker;
    drain_burst(&server, &broker, &mut worker, (2, n, first_ms, started)).await;
}

/// A reader holds at most `hold_ahead` items not yet due (they cost memory); the rest wait
/// in the ready stream and are read as the held ones are handed out.
#[tokio::test]
async fn redis_a_reader_holds_at_most_hold_ahead_items_not_yet_due() {
    let Some((broker, server, mut worker)) = later_queue(50, None).await else {
        return;
    };
    let (n, first_ms) = (200, 1500);
    let started = enqueue_burst(&broker, "later", n, first_ms).await;
    let next = tokio::spawn(async move { (worker.next().await.expect("next"), worker) });
    // Until the first item falls due: all of the burst is moved ahead, and 50 of it, never
    // more, are taken.
    let mut seen = (String::new(), String::new());
    while started.elapsed() < Duration::from_millis(first_ms - 100) {
        seen = ready_and_pending(&server, "later");
        let pending: usize = seen.1.parse().expect("a count");
        assert!(pending <= 50, "holding more than 50 items ahead: {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        seen,
        (n.to_string(), "50".to_owned()),
        "moved / taken ahead"
    );
    let (first, mut worker) = next.await.expect("the worker task");
    assert_eq!(n_of(&first), 1);
    broker
        .commit(first, Effects::default())
        .await
        .expect("commit");
    drain_burst(&server, &broker, &mut worker, (2, n, first_ms, started)).await;
}

/// A queue with a capacity takes nothing ahead: its capacity counts the items not taken
/// yet (as on the memory broker), and a reader holding items taken ahead would let that
/// many more in.
#[tokio::test]
async fn redis_a_queue_with_a_capacity_takes_nothing_ahead() {
    let Some((broker, server, mut worker)) =
        later_queue(edaflow::broker::RedisOptions::default().hold_ahead, Some(2)).await
    else {
        return;
    };
    let started = enqueue_burst(&broker, "later", 2, 1000).await;
    let next = tokio::spawn(async move { (worker.next().await.expect("next"), worker) });
    // Until just before the first item falls due: nothing is moved (a mover taking ahead
    // moves at once, woken by the enqueue), so the queue stays full.
    while started.elapsed() < Duration::from_millis(900) {
        assert_eq!(
            ready_and_pending(&server, "later"),
            ("0".to_owned(), "0".to_owned()),
            "moved ahead"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = broker
        .enqueue("later", item("later", 3), Duration::ZERO)
        .await;
    assert!(
        matches!(refused, Err(BrokerError::QueueFull { .. })),
        "{refused:?}"
    );
    let (first, mut worker) = next.await.expect("the worker task");
    assert_eq!(n_of(&first), 1);
    assert!(started.elapsed() >= Duration::from_millis(1001));
    broker
        .commit(first, Effects::default())
        .await
        .expect("commit");
    let second = tokio::time::timeout(Duration::from_secs(5), worker.next())
        .await
        .expect("handed out within 5 s")
        .expect("next");
    assert_eq!(n_of(&second), 2);
}
