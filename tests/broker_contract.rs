//! The broker contract: what every `Broker` implementation must do, written once as generic
//! checks and instantiated per broker.
//!
//! Each check is an `async fn check<B: Broker>(broker: B)` that uses only the trait, so a
//! second broker (Redis) runs the same checks by adding one `broker_contract!` line with
//! its own constructor. The checks read time from tokio's clock: the memory instantiation
//! pauses it, so delays and "this must still be blocked" are exact and cost no real time.
//!
//! "Nothing was delivered" is never proven by waiting and hoping: the checks read the
//! group's `stats()` or publish a later marker event and show it is the next delivery.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use edaflow::broker::{
    Backpressure, Broker, BrokerError, Consumer, Delivery, Effects, GroupSpec, GroupStats, Removed,
    Reply,
};
use edaflow::event::Event;
use edaflow::flow::TopicPattern;
use edaflow::store::{StoreOp, StoreWrite};

mod common;
use common::redis::Clock;

/// The `source` of every event these checks publish.
const SOURCE: &str = "edaflow://contract/test";

/// How long a check waits for something that must happen. On paused time this costs
/// nothing; it only turns a broken broker into a failure instead of a hang.
const PATIENCE: Duration = Duration::from_secs(5);

/// Instantiates every check for one broker. `$make` turns a per-group capacity into a
/// future of `Some((broker, guard))` (the guard lives as long as the test; `None` skips it,
/// for a broker whose server is not installed); `$clock` says how the checks read time;
/// the attributes go on every generated test (the runtime flavour).
macro_rules! broker_contract {
    ($(#[$test:meta])* clock = $clock:expr, make = $make:expr) => {
        contract_test!([$(#[$test])*] $clock, $make, publish_fans_out_to_every_matching_group, 16);
        contract_test!([$(#[$test])*] $clock, $make, consumers_of_one_group_compete, 16);
        contract_test!([$(#[$test])*] $clock, $make, topic_patterns_route_by_segment, 16);
        contract_test!([$(#[$test])*] $clock, $make, events_published_before_a_group_exists_are_not_delivered, 16);
        contract_test!([$(#[$test])*] $clock, $make, redeclaring_a_group_changes_its_patterns, 16);
        contract_test!([$(#[$test])*] $clock, $make, nack_returns_the_event_for_redelivery, 16);
        contract_test!([$(#[$test])*] $clock, $make, commit_publishes_the_effects_then_acks, 16);
        contract_test!([$(#[$test])*] $clock, $make, commit_publishes_deferred_effects_after_their_delay, 16);
        contract_test!([$(#[$test])*] $clock, $make, publish_later_waits_for_its_delay, 16);
        contract_test!([$(#[$test])*] $clock, $make, reject_fails_with_full_when_a_buffer_is_full, 2);
        contract_test!([$(#[$test])*] $clock, $make, a_rejected_publish_reaches_no_group, 1);
        contract_test!([$(#[$test])*] $clock, $make, a_rejected_publish_is_not_tapped, 1);
        contract_test!([$(#[$test])*] $clock, $make, wait_blocks_until_a_consumer_takes_an_item, 1);
        contract_test!([$(#[$test])*] $clock, $make, removed_groups_stop_receiving_and_their_consumers_fail, 16);
        contract_test!([$(#[$test])*] $clock, $make, removing_a_group_wakes_its_waiting_consumers, 16);
        contract_test!([$(#[$test])*] $clock, $make, removing_a_group_hands_its_events_to_a_successor, 16);
        contract_test!([$(#[$test])*] $clock, $make, a_successor_does_not_inherit_what_it_already_has, 16);
        contract_test!([$(#[$test])*] $clock, $make, removing_a_group_releases_blocked_publishers, 1);
        contract_test!([$(#[$test])*] $clock, $make, tap_sees_matching_events, 16);
        contract_test!([$(#[$test])*] $clock, $make, tap_is_lossy_and_never_blocks_publishers, 16);
        contract_test!([$(#[$test])*] $clock, $make, stats_report_queued_and_in_flight, 8);
        contract_test!([$(#[$test])*] $clock, $make, commit_applies_store_writes_in_order, 16);
        contract_test!([$(#[$test])*] $clock, $make, a_committed_reply_reaches_the_waiting_request, 16);
        contract_test!([$(#[$test])*] $clock, $make, a_commit_refused_for_a_delay_makes_nothing_visible, 16);
    };
}

/// The checks that hold where a group's topics are ordered with each other: not on a
/// namespace spread over shards by topic, where they lie on different shards.
macro_rules! ordered_contract {
    ($(#[$test:meta])* clock = $clock:expr, make = $make:expr) => {
        contract_test!([$(#[$test])*] $clock, $make, a_group_of_several_topics_gets_them_in_publish_order, 128);
    };
}

/// One generated test: builds the broker with the check's capacity and runs the check.
macro_rules! contract_test {
    ([$(#[$test:meta])*] $clock:expr, $make:expr, $check:ident, $capacity:expr $(, #[$extra:meta])*) => {
        $(#[$test])*
        $(#[$extra])*
        async fn $check() {
            let Some((broker, _guard)) = ($make)($capacity).await else {
                return;
            };
            super::$check(broker, $clock).await;
        }
    };
}

mod memory {
    use crate::common::redis::Clock;
    use edaflow::broker::{MemoryBroker, MemoryOptions};

    broker_contract! {
        #[tokio::test(start_paused = true)]
        clock = Clock::PAUSED,
        make = |group_capacity| async move {
            Some((MemoryBroker::new(MemoryOptions { group_capacity, ..MemoryOptions::default() }), ()))
        }
    }
    ordered_contract! {
        #[tokio::test(start_paused = true)]
        clock = Clock::PAUSED,
        make = |group_capacity| async move {
            Some((MemoryBroker::new(MemoryOptions { group_capacity, ..MemoryOptions::default() }), ()))
        }
    }
}

mod redis {
    use std::time::Duration;

    use crate::common::redis::{Clock, RedisServer};
    use edaflow::broker::{Backpressure, Broker, Consumer, RedisOptions};

    /// A server per test, so checks never see each other's keys.
    async fn make(group_capacity: usize) -> Option<(edaflow::broker::RedisBroker, RedisServer)> {
        let server = RedisServer::start()?;
        let broker = server
            .broker(RedisOptions {
                namespace: "contract".to_owned(),
                group_capacity: Some(group_capacity),
                block: Duration::from_millis(200),
                ..RedisOptions::default()
            })
            .await;
        Some((broker, server))
    }

    broker_contract! {
        #[tokio::test]
        clock = Clock::real(20, Duration::from_millis(150)),
        make = make
    }
    ordered_contract! {
        #[tokio::test]
        clock = Clock::real(20, Duration::from_millis(150)),
        make = make
    }

    /// A commit retried after a timeout (it may have run): the second finds the entry
    /// settled and applies nothing, so its events are not doubled.
    #[tokio::test]
    async fn a_second_commit_of_one_delivery_applies_nothing() {
        let Some((broker, _server)) = make(16).await else {
            return;
        };
        crate::declare(&broker, "work", &["job"]).await;
        crate::declare(&broker, "after", &["done"]).await;
        crate::publish(&broker, crate::event("job", 1), Backpressure::Reject).await;
        let mut work = crate::consumer(&broker, "work");
        let delivery = crate::next_delivery(&mut work, "the job").await;
        let effects = edaflow::broker::Effects {
            publish: vec![delivery
                .event
                .caused("done", crate::SOURCE, serde_json::json!({}))],
            ..Default::default()
        };
        broker
            .commit(delivery.clone(), effects.clone())
            .await
            .expect("first commit");
        broker
            .commit(delivery, effects)
            .await
            .expect("a repeated commit is not an error");
        let done = crate::drain(&broker, "after").await;
        assert_eq!(done.len(), 1, "the effects landed once: {done:?}");
    }

    /// A commit with nothing but the ack skips the batch script (a plain `XACK`, with
    /// `XDEL` for a redelivered entry): repeating it is still not an error, and an entry
    /// given back and acked leaves nothing waiting or in flight.
    #[tokio::test]
    async fn an_ack_alone_is_settled_once() {
        let Some((broker, _server)) = make(16).await else {
            return;
        };
        crate::declare(&broker, "work", &["job"]).await;
        crate::publish(&broker, crate::event("job", 1), Backpressure::Reject).await;
        crate::publish(&broker, crate::event("job", 2), Backpressure::Reject).await;
        let mut work = crate::consumer(&broker, "work");
        let first = crate::next_delivery(&mut work, "the first job").await;
        let second = crate::next_delivery(&mut work, "the second job").await;
        broker.nack(second).await.expect("nack");
        let again = crate::next_delivery(&mut work, "the second job again").await;
        assert_eq!(again.redeliveries, 1);
        for delivery in [first, again] {
            for _ in 0..2 {
                broker
                    .commit(delivery.clone(), edaflow::broker::Effects::default())
                    .await
                    .expect("an ack, repeated or not, is not an error");
            }
        }
        assert_eq!(crate::load(&broker, "work").await, (0, 0));
        crate::publish(&broker, crate::event("job", 3), Backpressure::Reject).await;
        let third = crate::next_delivery(&mut work, "the third job").await;
        assert_eq!(
            third.event.data,
            serde_json::json!({ "n": 3 }),
            "nothing came back"
        );
    }

    /// A consumer of one literal topic blocks in `XREADGROUP`, which hands an entry to the
    /// blocked consumer the moment it is published. A worker that stops waiting (its
    /// `next()` dropped, as at shutdown or reload) must not leave that read blocked: the
    /// next event goes to a consumer that waits, not to one that no longer does, where it
    /// would sit pending until `claim_idle` (here far longer than the test waits).
    #[tokio::test]
    async fn a_blocking_read_nobody_waits_for_takes_nothing() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let broker = server
            .broker(RedisOptions {
                namespace: "contract".to_owned(),
                block: Duration::from_secs(30),
                claim_idle: Duration::from_secs(600),
                ..RedisOptions::default()
            })
            .await;
        crate::declare(&broker, "work", &["job"]).await;
        let mut gone = crate::consumer(&broker, "work");
        let mut waiting = crate::consumer(&broker, "work");
        // Both block in a read; the first stops waiting, the second goes on.
        let cancelled = tokio::time::timeout(Duration::from_millis(300), gone.next()).await;
        assert!(
            cancelled.is_err(),
            "nothing was published yet: {cancelled:?}"
        );
        let next = tokio::spawn(async move { crate::next_delivery(&mut waiting, "the job").await });
        // The cancelled consumer has ended its read once its reader answers `close`.
        gone.close().await;
        crate::publish(&broker, crate::event("job", 1), Backpressure::Reject).await;
        let delivery = next.await.expect("the waiting consumer");
        assert_eq!(delivery.event.data, serde_json::json!({"n": 1}));
        let stats = crate::stats_of(&broker, "work").await;
        assert_eq!((stats.queued, stats.in_flight), (0, 1), "{stats:?}");
    }

    /// A query answered by another process: the reply crosses Redis to the broker that
    /// waits for it, and only to that one.
    #[tokio::test]
    async fn a_reply_committed_by_another_process_reaches_the_requester() {
        let Some((requester, server)) = make(16).await else {
            return;
        };
        let answerer = server
            .broker(RedisOptions {
                namespace: "contract".to_owned(),
                block: Duration::from_millis(200),
                ..RedisOptions::default()
            })
            .await;
        let bystander = server
            .broker(RedisOptions {
                namespace: "contract".to_owned(),
                ..RedisOptions::default()
            })
            .await;
        crate::declare(&answerer, "answer", &["q"]).await;
        let waiting = requester
            .replies()
            .expect("redis carries replies")
            .await_reply("r1");
        let unrelated = bystander
            .replies()
            .expect("redis carries replies")
            .await_reply("r1");
        let mut query = crate::event("q", 1);
        query.extensions.insert(
            "replyto".into(),
            requester
                .replies()
                .expect("replies")
                .reply_address("r1")
                .into(),
        );
        crate::publish(&requester, query, Backpressure::Reject).await;
        let mut consumer = crate::consumer(&answerer, "answer");
        let delivery = crate::next_delivery(&mut consumer, "the query").await;
        let to = delivery.event.extensions["replyto"]
            .as_str()
            .expect("a reply address")
            .to_owned();
        answerer
            .commit(
                delivery,
                edaflow::broker::Effects {
                    reply: Some(crate::Reply {
                        to,
                        result: Ok(serde_json::json!({"found": 1})),
                    }),
                    ..Default::default()
                },
            )
            .await
            .expect("commit");
        let answer = tokio::time::timeout(crate::PATIENCE, waiting)
            .await
            .expect("the reply arrives in time")
            .expect("the waiter is still there");
        assert_eq!(answer, Ok(serde_json::json!({"found": 1})));
        // The same request id waiting in a third process got nothing.
        bystander.replies().expect("replies").forget_reply("r1");
        assert!(unrelated.await.is_err());
    }
}

/// The same checks on a three-master Redis Cluster, through a seed node that need not own
/// the namespace: one cluster for this test binary, a namespace of its own per test (so
/// the tests spread over the masters).
mod redis_cluster {
    use std::time::Duration;

    use crate::common::redis::{unique_namespace, Clock, RedisCluster};
    use edaflow::broker::RedisOptions;

    async fn make(group_capacity: usize) -> Option<(edaflow::broker::RedisBroker, ())> {
        let cluster = RedisCluster::shared()?;
        let broker = cluster
            .broker(RedisOptions {
                namespace: unique_namespace("contract"),
                group_capacity: Some(group_capacity),
                block: Duration::from_millis(200),
                ..RedisOptions::default()
            })
            .await;
        assert!(
            broker.cluster_slot().is_some(),
            "the broker did not see the cluster"
        );
        Some((broker, ()))
    }

    broker_contract! {
        #[tokio::test]
        clock = Clock::real(20, Duration::from_millis(150)),
        make = make
    }
    ordered_contract! {
        #[tokio::test]
        clock = Clock::real(20, Duration::from_millis(150)),
        make = make
    }
}

/// The same checks on a namespace spread over three shards of one Redis: what a handler
/// commits for another shard goes through the outbox and the forwarder.
mod redis_spread {
    use std::time::Duration;

    use crate::common::redis::{Clock, RedisServer};
    use edaflow::broker::redis::SpreadBy;
    use edaflow::broker::RedisOptions;

    async fn make(group_capacity: usize) -> Option<(edaflow::broker::RedisBroker, RedisServer)> {
        make_spread(group_capacity, SpreadBy::Topic).await
    }

    /// Three shards of a Redis of the test's own, spread `by`.
    pub(super) async fn make_spread(
        group_capacity: usize,
        by: SpreadBy,
    ) -> Option<(edaflow::broker::RedisBroker, RedisServer)> {
        let server = RedisServer::start()?;
        let broker = server
            .broker(RedisOptions {
                namespace: "contract".to_owned(),
                group_capacity: Some(group_capacity),
                block: Duration::from_millis(200),
                shards: 3,
                spread_by: by,
                ..RedisOptions::default()
            })
            .await;
        assert_eq!(broker.shard_prefixes().len(), 3);
        Some((broker, server))
    }

    broker_contract! {
        #[tokio::test]
        clock = Clock::real(20, Duration::from_millis(150)),
        make = make
    }
}

/// The checks that hold on a namespace spread over three shards of one Redis by journey:
/// each event goes to the shard of its correlation id, so a topic has a stream on every
/// shard. Left out, as that spreading documents: order between events of different
/// journeys (they lie on different shards), a group's capacity (it is per shard), and how
/// many entries a worker holds at once (it asks every shard, and keeps what several answer).
mod redis_journey_spread {
    use std::time::Duration;

    use crate::common::redis::{Clock, RedisServer};
    use edaflow::broker::redis::SpreadBy;

    async fn make(group_capacity: usize) -> Option<(edaflow::broker::RedisBroker, RedisServer)> {
        super::redis_spread::make_spread(group_capacity, SpreadBy::Journey).await
    }

    macro_rules! journey {
        ($($check:ident, $capacity:expr;)*) => {
            $(contract_test!([#[tokio::test]] Clock::real(20, Duration::from_millis(150)), make, $check, $capacity);)*
        };
    }

    journey! {
        publish_fans_out_to_every_matching_group, 16;
        events_published_before_a_group_exists_are_not_delivered, 16;
        nack_returns_the_event_for_redelivery, 16;
        commit_publishes_the_effects_then_acks, 16;
        commit_publishes_deferred_effects_after_their_delay, 16;
        publish_later_waits_for_its_delay, 16;
        removed_groups_stop_receiving_and_their_consumers_fail, 16;
        removing_a_group_wakes_its_waiting_consumers, 16;
        a_successor_does_not_inherit_what_it_already_has, 16;
        tap_sees_matching_events, 16;
        tap_is_lossy_and_never_blocks_publishers, 16;
        commit_applies_store_writes_in_order, 16;
        a_commit_refused_for_a_delay_makes_nothing_visible, 16;
    }
}

/// The same checks on a namespace spread over the three masters of a Redis Cluster.
mod redis_cluster_spread {
    use std::time::Duration;

    use crate::common::redis::{unique_namespace, Clock, RedisCluster};
    use edaflow::broker::RedisOptions;

    async fn make(group_capacity: usize) -> Option<(edaflow::broker::RedisBroker, ())> {
        let cluster = RedisCluster::shared()?;
        let broker = cluster
            .broker(RedisOptions {
                namespace: unique_namespace("spread"),
                group_capacity: Some(group_capacity),
                block: Duration::from_millis(200),
                shards: 3,
                ..RedisOptions::default()
            })
            .await;
        let masters: std::collections::BTreeSet<String> = broker
            .cluster_slots()
            .into_iter()
            .map(|s| s.expect("the broker sees the cluster").1)
            .collect();
        assert_eq!(masters.len(), 3, "the shards are on three masters");
        Some((broker, ()))
    }

    broker_contract! {
        #[tokio::test]
        clock = Clock::real(20, Duration::from_millis(150)),
        make = make
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

fn pattern(text: &str) -> TopicPattern {
    TopicPattern::parse(text).unwrap_or_else(|e| panic!("test pattern {text:?}: {e}"))
}

async fn declare<B: Broker>(broker: &B, name: &str, patterns: &[&str]) {
    broker
        .declare_group(&GroupSpec {
            name: name.to_owned(),
            patterns: patterns.iter().map(|p| pattern(p)).collect(),
        })
        .await
        .unwrap_or_else(|e| panic!("declare group `{name}`: {e}"));
}

fn event(topic: &str, n: u64) -> Event {
    Event::new(topic, SOURCE, json!({ "n": n }))
}

/// Publishes and returns the event's id.
async fn publish<B: Broker>(broker: &B, event: Event, mode: Backpressure) -> String {
    let id = event.id.clone();
    let topic = event.topic.clone();
    broker
        .publish(event, mode)
        .await
        .unwrap_or_else(|e| panic!("publish to `{topic}`: {e}"));
    id
}

fn consumer<B: Broker>(broker: &B, group: &str) -> B::Consumer {
    broker
        .consumer(group)
        .unwrap_or_else(|e| panic!("consumer of `{group}`: {e}"))
}

/// The next delivery, failing the check if none comes.
async fn next_delivery<C: Consumer>(consumer: &mut C, what: &str) -> Delivery {
    match tokio::time::timeout(PATIENCE, consumer.next()).await {
        Ok(Ok(delivery)) => delivery,
        Ok(Err(e)) => panic!("{what}: the consumer failed: {e}"),
        Err(_) => panic!("{what}: nothing was delivered within {PATIENCE:?}"),
    }
}

async fn ack<B: Broker>(broker: &B, delivery: Delivery) {
    broker
        .commit(delivery, Effects::default())
        .await
        .expect("commit without effects");
}

async fn stats_of<B: Broker>(broker: &B, group: &str) -> GroupStats {
    let all = broker.stats().await;
    all.iter()
        .find(|g| g.name == group)
        .cloned()
        .unwrap_or_else(|| panic!("no stats for group `{group}` in {all:?}"))
}

/// (queued, in flight) of a group.
/// Waits (up to `PATIENCE`) until `scheduled` counts `n`: at once on one shard; on a
/// namespace spread over shards, once the forwarder has carried a deferred effect to its
/// topic's shard.
async fn scheduled_becomes<B: Broker>(broker: &B, n: usize) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let now = broker.scheduled().await;
        if now == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "scheduled is {now}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn load<B: Broker>(broker: &B, group: &str) -> (usize, usize) {
    let stats = stats_of(broker, group).await;
    (stats.queued, stats.in_flight)
}

/// Takes and acks everything waiting in `group` (as `stats` counts it), returning the
/// topics in delivery order; the group is empty afterwards.
async fn drain<B: Broker>(broker: &B, group: &str) -> Vec<String> {
    let mut consumer = consumer(broker, group);
    let waiting = stats_of(broker, group).await.queued;
    let mut topics = Vec::with_capacity(waiting);
    for _ in 0..waiting {
        let delivery = next_delivery(&mut consumer, group).await;
        topics.push(delivery.event.topic.clone());
        ack(broker, delivery).await;
    }
    assert_eq!(
        load(broker, group).await,
        (0, 0),
        "`{group}` after draining it"
    );
    topics
}

// ---------------------------------------------------------------------------------------
// Checks

async fn publish_fans_out_to_every_matching_group<B: Broker>(broker: B, _clock: Clock) {
    declare(&broker, "inventory", &["orderCreated"]).await;
    declare(&broker, "billing", &["paymentCharged", "orderCreated"]).await;
    declare(&broker, "audit", &[">"]).await;
    declare(&broker, "shipping", &["paymentCharged"]).await;

    let sent = Event::new("orderCreated", SOURCE, json!({ "order_id": 123 }));
    let id = publish(&broker, sent.clone(), Backpressure::Reject).await;

    for group in ["inventory", "billing", "audit"] {
        assert_eq!(
            load(&broker, group).await,
            (1, 0),
            "`{group}` holds one copy"
        );
        let mut consumer = consumer(&broker, group);
        let delivery = next_delivery(&mut consumer, group).await;
        assert_eq!(delivery.event.id, id, "`{group}` got the published event");
        assert_eq!(delivery.event.data, sent.data);
        assert_eq!(&*delivery.group, group);
        assert_eq!(delivery.redeliveries, 0);
        ack(&broker, delivery).await;
        assert_eq!(
            load(&broker, group).await,
            (0, 0),
            "`{group}` got exactly one copy"
        );
    }

    // `shipping` does not match: the first thing it ever receives is a later event.
    assert_eq!(load(&broker, "shipping").await, (0, 0));
    let marker = publish(&broker, event("paymentCharged", 2), Backpressure::Reject).await;
    let mut shipping = consumer(&broker, "shipping");
    let first = next_delivery(&mut shipping, "shipping").await;
    assert_eq!(
        first.event.id, marker,
        "`shipping` must not get orderCreated"
    );
}

/// One consumer of a group taking two topics gets their events in the order they were
/// published, across the topics, even when it takes many at a time: so a subscriber of a
/// journey's every step sees a step's event before the events it caused. (Not kept on a
/// namespace spread over shards by topic, whose topics lie on different shards.)
async fn a_group_of_several_topics_gets_them_in_publish_order<B: Broker>(broker: B, _clock: Clock) {
    const BEFORE: u64 = 40;
    const AFTER: u64 = 40;
    declare(&broker, "watch", &["step.a", "step.b"]).await;
    let mut sent = Vec::new();
    for n in 0..BEFORE {
        sent.push(publish(&broker, event("step.a", n), Backpressure::Reject).await);
    }
    sent.push(publish(&broker, event("step.b", BEFORE), Backpressure::Reject).await);
    for n in BEFORE + 1..=BEFORE + AFTER {
        sent.push(publish(&broker, event("step.a", n), Backpressure::Reject).await);
    }
    let mut watch = consumer(&broker, "watch");
    let mut got = Vec::with_capacity(sent.len());
    for _ in 0..sent.len() {
        let delivery = next_delivery(&mut watch, "watch").await;
        got.push(delivery.event.id.clone());
        ack(&broker, delivery).await;
    }
    let position = |id: &String| got.iter().position(|g| g == id);
    assert_eq!(
        position(&sent[BEFORE as usize]),
        Some(BEFORE as usize),
        "the `step.b` event, published between two runs of `step.a`, is delivered between them"
    );
    assert_eq!(got, sent, "delivered in publish order");
}

async fn consumers_of_one_group_compete<B: Broker>(broker: B, _clock: Clock) {
    const EVENTS: u64 = 12;
    declare(&broker, "workers", &["job"]).await;
    let mut first = consumer(&broker, "workers");
    let mut second = consumer(&broker, "workers");
    let mut published = BTreeSet::new();
    for n in 0..EVENTS {
        published.insert(publish(&broker, event("job", n), Backpressure::Wait).await);
    }

    // Both hold an event at once, and never the same one.
    let a = next_delivery(&mut first, "first consumer").await;
    let b = next_delivery(&mut second, "second consumer").await;
    assert_ne!(a.event.id, b.event.id, "two consumers got the same event");
    assert_eq!(load(&broker, "workers").await, (EVENTS as usize - 2, 2));
    let mut seen = vec![a.event.id.clone(), b.event.id.clone()];
    ack(&broker, a).await;
    ack(&broker, b).await;

    // The rest, with both consumers racing for them.
    let (tx, mut rx) = mpsc::channel(EVENTS as usize);
    let mut workers = Vec::new();
    for mut consumer in [first, second] {
        let broker = broker.clone();
        let tx = tx.clone();
        workers.push(tokio::spawn(async move {
            // Ends when the group is removed below.
            while let Ok(delivery) = consumer.next().await {
                tx.send(delivery.event.id.clone())
                    .await
                    .expect("the check is listening");
                broker
                    .commit(delivery, Effects::default())
                    .await
                    .expect("commit");
                tokio::task::yield_now().await;
            }
        }));
    }
    drop(tx);
    while seen.len() < EVENTS as usize {
        match tokio::time::timeout(PATIENCE, rx.recv()).await {
            Ok(Some(id)) => seen.push(id),
            other => panic!(
                "only {} of {EVENTS} events were delivered ({other:?})",
                seen.len()
            ),
        }
    }
    broker.remove_group("workers", None).await.expect("remove");
    for worker in workers {
        tokio::time::timeout(PATIENCE, worker)
            .await
            .expect("consumers stop once their group is removed")
            .expect("consumer task");
    }
    assert!(rx.recv().await.is_none(), "an event was delivered twice");
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "an event was delivered twice: {seen:?}"
    );
    assert_eq!(unique, published, "every event is delivered exactly once");
}

async fn topic_patterns_route_by_segment<B: Broker>(broker: B, _clock: Clock) {
    declare(&broker, "one_segment", &["orders.*"]).await;
    declare(&broker, "the_rest", &["orders.>"]).await;
    declare(&broker, "exact", &["orders.created"]).await;
    declare(&broker, "several", &["payments.*", "orders.eu.>"]).await;

    for topic in [
        "orders.created",
        "orders.eu.created",
        "orders",
        "orders.eu",
        "ordersx.created",
        "payments.refunded",
        "payments.card.refunded",
        "created",
    ] {
        publish(&broker, event(topic, 0), Backpressure::Reject).await;
    }

    assert_eq!(
        drain(&broker, "one_segment").await,
        ["orders.created", "orders.eu"],
        "`*` matches exactly one segment"
    );
    assert_eq!(
        drain(&broker, "the_rest").await,
        ["orders.created", "orders.eu.created", "orders.eu"],
        "`>` matches one or more trailing segments, never zero"
    );
    assert_eq!(
        drain(&broker, "exact").await,
        ["orders.created"],
        "a plain name matches only itself"
    );
    // Order across topics is not part of the contract: a namespace spread over shards
    // keeps it per topic only.
    let mut several = drain(&broker, "several").await;
    several.sort();
    assert_eq!(
        several,
        ["orders.eu.created", "payments.refunded"],
        "a group receives the union of its patterns"
    );
}

async fn events_published_before_a_group_exists_are_not_delivered<B: Broker>(
    broker: B,
    _clock: Clock,
) {
    // Publishing with no group at all is not an error: nobody is listening.
    publish(&broker, event("orderCreated", 1), Backpressure::Reject).await;
    publish(&broker, event("orderCreated", 2), Backpressure::Wait).await;

    declare(&broker, "late", &["orderCreated"]).await;
    assert_eq!(load(&broker, "late").await, (0, 0));
    let after = publish(&broker, event("orderCreated", 3), Backpressure::Reject).await;
    let mut late = consumer(&broker, "late");
    let first = next_delivery(&mut late, "late").await;
    assert_eq!(first.event.id, after, "the late group saw an earlier event");
    assert_eq!(load(&broker, "late").await, (0, 1));
}

async fn redeclaring_a_group_changes_its_patterns<B: Broker>(broker: B, _clock: Clock) {
    declare(&broker, "g", &["before"]).await;
    publish(&broker, event("before", 1), Backpressure::Reject).await;
    declare(&broker, "g", &["after"]).await;
    assert_eq!(
        load(&broker, "g").await,
        (1, 0),
        "redeclaring keeps what already waits"
    );
    publish(&broker, event("before", 2), Backpressure::Reject).await;
    publish(&broker, event("after", 3), Backpressure::Reject).await;
    assert_eq!(drain(&broker, "g").await, ["before", "after"]);
}

async fn nack_returns_the_event_for_redelivery<B: Broker>(broker: B, _clock: Clock) {
    declare(&broker, "g", &["job"]).await;
    let id = publish(&broker, event("job", 7), Backpressure::Reject).await;
    let mut first = consumer(&broker, "g");
    let mut second = consumer(&broker, "g");

    let delivery = next_delivery(&mut first, "first delivery").await;
    assert_eq!(
        (delivery.event.id.as_str(), delivery.redeliveries),
        (id.as_str(), 0)
    );
    assert_eq!(load(&broker, "g").await, (0, 1));
    broker.nack(delivery).await.expect("nack");
    assert_eq!(
        load(&broker, "g").await,
        (1, 0),
        "a nacked event waits again"
    );

    // Any consumer of the group may get it back.
    let again = next_delivery(&mut second, "redelivery").await;
    assert_eq!(again.event.id, id);
    assert_eq!(again.event.data, json!({ "n": 7 }), "redelivered untouched");
    assert_eq!(again.redeliveries, 1);
    broker.nack(again).await.expect("nack");

    let third = next_delivery(&mut first, "second redelivery").await;
    assert_eq!(
        (third.event.id.as_str(), third.redeliveries),
        (id.as_str(), 2)
    );
    ack(&broker, third).await;
    assert_eq!(load(&broker, "g").await, (0, 0));
}

async fn commit_publishes_the_effects_then_acks<B: Broker>(broker: B, _clock: Clock) {
    declare(&broker, "reserve", &["orderCreated"]).await;
    declare(&broker, "charge", &["inventoryReserved"]).await;
    let parent_id = publish(&broker, event("orderCreated", 1), Backpressure::Reject).await;

    let mut reserve = consumer(&broker, "reserve");
    let delivery = next_delivery(&mut reserve, "reserve").await;
    let child = delivery
        .event
        .caused("inventoryReserved", SOURCE, json!({ "reserved": true }));
    let child_id = child.id.clone();
    assert_eq!(
        load(&broker, "charge").await,
        (0, 0),
        "effects wait for the commit"
    );
    broker
        .commit(
            delivery,
            Effects {
                publish: vec![child],
                ..Effects::default()
            },
        )
        .await
        .expect("commit");
    assert_eq!(
        load(&broker, "reserve").await,
        (0, 0),
        "the commit acked the delivery"
    );

    let mut charge = consumer(&broker, "charge");
    let got = next_delivery(&mut charge, "charge").await;
    assert_eq!(got.event.id, child_id);
    assert_eq!(got.event.correlation_id, parent_id);
    assert_eq!(got.event.causation_id.as_deref(), Some(parent_id.as_str()));
    assert_eq!(got.event.data, json!({ "reserved": true }));
}

async fn commit_publishes_deferred_effects_after_their_delay<B: Broker>(broker: B, clock: Clock) {
    let delay = clock.d(Duration::from_secs(30));
    declare(&broker, "reserve", &["orderCreated"]).await;
    declare(&broker, "remind", &["paymentReminder"]).await;
    publish(&broker, event("orderCreated", 1), Backpressure::Reject).await;

    let mut reserve = consumer(&broker, "reserve");
    let delivery = next_delivery(&mut reserve, "reserve").await;
    let later = delivery
        .event
        .caused("paymentReminder", SOURCE, json!({ "n": 1 }));
    let later_id = later.id.clone();
    let committed_at = tokio::time::Instant::now();
    broker
        .commit(
            delivery,
            Effects {
                deferred: vec![(later, delay)],
                ..Effects::default()
            },
        )
        .await
        .expect("commit");
    assert_eq!(load(&broker, "reserve").await, (0, 0), "acked at once");
    scheduled_becomes(&broker, 1).await;
    assert_eq!(
        load(&broker, "remind").await,
        (0, 0),
        "not published before its delay"
    );

    let early = clock.early();
    clock.advance(delay - early).await;
    tokio::task::yield_now().await;
    assert_eq!(
        load(&broker, "remind").await,
        (0, 0),
        "{early:?} early: still waiting"
    );
    assert_eq!(broker.scheduled().await, 1);

    if clock.is_paused() {
        clock.advance(early).await;
    }
    let mut remind = consumer(&broker, "remind");
    let got = next_delivery(&mut remind, "deferred effect").await;
    assert_eq!(got.event.id, later_id);
    let took = committed_at.elapsed();
    assert!(
        took >= delay && took <= delay + clock.late(Duration::from_millis(5)),
        "published after {took:?}, expected {delay:?}"
    );
    assert_eq!(broker.scheduled().await, 0);
}

async fn publish_later_waits_for_its_delay<B: Broker>(broker: B, _clock: Clock) {
    declare(&broker, "g", &["tick"]).await;
    let start = tokio::time::Instant::now();
    let late = event("tick", 2);
    let late_id = late.id.clone();
    broker
        .publish_later(late, Duration::from_millis(250))
        .await
        .expect("publish_later");
    let soon = event("tick", 1);
    let soon_id = soon.id.clone();
    broker
        .publish_later(soon, Duration::from_millis(100))
        .await
        .expect("publish_later");
    assert_eq!(broker.scheduled().await, 2);
    assert_eq!(load(&broker, "g").await, (0, 0));

    let mut g = consumer(&broker, "g");
    let first = next_delivery(&mut g, "the 100 ms event").await;
    assert_eq!(first.event.id, soon_id, "due times, not call order, decide");
    assert!(start.elapsed() >= Duration::from_millis(100));
    let second = next_delivery(&mut g, "the 250 ms event").await;
    assert_eq!(second.event.id, late_id);
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(broker.scheduled().await, 0);

    // A zero delay publishes at once.
    let now = event("tick", 3);
    let now_id = now.id.clone();
    broker
        .publish_later(now, Duration::ZERO)
        .await
        .expect("publish_later");
    assert_eq!(next_delivery(&mut g, "zero delay").await.event.id, now_id);
}

async fn reject_fails_with_full_when_a_buffer_is_full<B: Broker>(broker: B, _clock: Clock) {
    // Capacity 2.
    declare(&broker, "slow", &["job"]).await;
    publish(&broker, event("job", 1), Backpressure::Reject).await;
    publish(&broker, event("job", 2), Backpressure::Reject).await;
    match broker.publish(event("job", 3), Backpressure::Reject).await {
        Err(BrokerError::Full { group }) => assert_eq!(group, "slow"),
        other => panic!("expected Full from a full buffer, got {other:?}"),
    }
    assert_eq!(
        load(&broker, "slow").await,
        (2, 0),
        "the refused event was not queued"
    );

    // Room again once a consumer takes one.
    let mut slow = consumer(&broker, "slow");
    let taken = next_delivery(&mut slow, "slow").await;
    publish(&broker, event("job", 4), Backpressure::Reject).await;
    ack(&broker, taken).await;
    assert_eq!(drain(&broker, "slow").await.len(), 2);
}

async fn a_rejected_publish_reaches_no_group<B: Broker>(broker: B, _clock: Clock) {
    // Capacity 1: `fast` is drained, `slow` stays full.
    declare(&broker, "fast", &["job"]).await;
    declare(&broker, "slow", &["job"]).await;
    publish(&broker, event("job", 1), Backpressure::Reject).await;
    drain(&broker, "fast").await;
    match broker.publish(event("job", 2), Backpressure::Reject).await {
        Err(BrokerError::Full { group }) => assert_eq!(group, "slow"),
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(
        load(&broker, "fast").await,
        (0, 0),
        "a refused event must not reach the groups that had room"
    );
    assert_eq!(load(&broker, "slow").await, (1, 0));
}

async fn a_rejected_publish_is_not_tapped<B: Broker>(broker: B, _clock: Clock) {
    // Capacity 1.
    declare(&broker, "g", &["job"]).await;
    let mut tap = broker.tap(pattern("job"), 16);
    let accepted = publish(&broker, event("job", 1), Backpressure::Reject).await;
    let refused = event("job", 2);
    let refused_id = refused.id.clone();
    assert!(matches!(
        broker.publish(refused, Backpressure::Reject).await,
        Err(BrokerError::Full { .. })
    ));
    drain(&broker, "g").await;
    let marker = publish(&broker, event("job", 3), Backpressure::Reject).await;

    let mut tapped = Vec::new();
    while tapped.last() != Some(&marker) {
        match tokio::time::timeout(PATIENCE, tap.recv()).await {
            Ok(Some(event)) => tapped.push(event.id.clone()),
            other => panic!("the tap stopped before the marker ({other:?}); saw {tapped:?}"),
        }
    }
    assert!(
        !tapped.contains(&refused_id),
        "the tap showed an event that was refused and never published: {tapped:?}"
    );
    assert_eq!(tapped, [accepted, marker]);
}

async fn wait_blocks_until_a_consumer_takes_an_item<B: Broker>(broker: B, clock: Clock) {
    // Capacity 1.
    declare(&broker, "g", &["job"]).await;
    let first = publish(&broker, event("job", 1), Backpressure::Wait).await;
    let second = event("job", 2);
    let second_id = second.id.clone();
    let mut publishing = tokio::spawn({
        let broker = broker.clone();
        async move { broker.publish(second, Backpressure::Wait).await }
    });

    // On paused time this timeout fires only once every task is idle: the publisher is
    // parked, not spinning and not done.
    assert!(
        tokio::time::timeout(clock.d(Duration::from_secs(1)), &mut publishing)
            .await
            .is_err(),
        "Wait returned while the buffer was full"
    );
    assert_eq!(load(&broker, "g").await, (1, 0));

    let mut g = consumer(&broker, "g");
    let taken = next_delivery(&mut g, "first").await;
    assert_eq!(taken.event.id, first);
    tokio::time::timeout(PATIENCE, &mut publishing)
        .await
        .expect("the publisher is released once a consumer takes an item")
        .expect("publisher task")
        .expect("publish");
    assert_eq!(load(&broker, "g").await, (1, 1));
    ack(&broker, taken).await;
    assert_eq!(next_delivery(&mut g, "second").await.event.id, second_id);
}

async fn removed_groups_stop_receiving_and_their_consumers_fail<B: Broker>(
    broker: B,
    _clock: Clock,
) {
    declare(&broker, "g", &["job"]).await;
    declare(&broker, "other", &["job"]).await;
    let mut held = consumer(&broker, "g");
    publish(&broker, event("job", 1), Backpressure::Reject).await;
    assert_eq!(load(&broker, "g").await, (1, 0));

    let removed = broker.remove_group("g", None).await.expect("remove");
    assert_eq!(
        removed,
        Removed {
            moved: 0,
            dropped: 1
        },
        "what waited is dropped, and counted"
    );
    assert!(
        broker.stats().await.iter().all(|s| s.name != "g"),
        "a removed group is not in stats: {:?}",
        broker.stats().await
    );
    match tokio::time::timeout(PATIENCE, held.next()).await {
        Ok(Err(BrokerError::UnknownGroup { group })) => assert_eq!(group, "g"),
        Ok(Ok(d)) => panic!("a removed group delivered {:?}", d.event.topic),
        other => panic!("expected UnknownGroup, got {other:?}"),
    }
    match broker.consumer("g") {
        Err(BrokerError::UnknownGroup { group }) => assert_eq!(group, "g"),
        Err(e) => panic!("expected UnknownGroup, got {e}"),
        Ok(_) => panic!("a consumer of a removed group"),
    }

    // Publishing goes on for the others; nothing is kept for the removed group.
    publish(&broker, event("job", 2), Backpressure::Reject).await;
    assert_eq!(load(&broker, "other").await, (2, 0));
    declare(&broker, "g", &["job"]).await;
    assert_eq!(
        load(&broker, "g").await,
        (0, 0),
        "a re-declared group starts empty"
    );
}

async fn removing_a_group_hands_its_events_to_a_successor<B: Broker>(broker: B, _clock: Clock) {
    declare(&broker, "old", &["job"]).await;
    let mut published = Vec::new();
    for n in 0..3 {
        published.push(publish(&broker, event("job", n), Backpressure::Reject).await);
    }
    declare(&broker, "new", &["other"]).await;
    let removed = broker
        .remove_group("old", Some("new"))
        .await
        .expect("remove with a successor");
    assert_eq!(
        removed,
        Removed {
            moved: 3,
            dropped: 0
        }
    );
    assert!(broker.stats().await.iter().all(|s| s.name != "old"));
    assert_eq!(
        load(&broker, "new").await,
        (3, 0),
        "the successor inherits the waiting events"
    );
    let mut new = consumer(&broker, "new");
    let mut got = Vec::new();
    for _ in 0..3 {
        let delivery = next_delivery(&mut new, "new").await;
        got.push(delivery.event.id.clone());
        ack(&broker, delivery).await;
    }
    assert_eq!(got, published, "in their order");
}

async fn a_successor_does_not_inherit_what_it_already_has<B: Broker>(broker: B, _clock: Clock) {
    // What `Runtime::apply` does when a subscriber changes its group: the new group is
    // declared before the old one is removed, so an event published in between is in both.
    declare(&broker, "old", &["job"]).await;
    let before = publish(&broker, event("job", 1), Backpressure::Reject).await;
    declare(&broker, "new", &["job"]).await;
    let between = publish(&broker, event("job", 2), Backpressure::Reject).await;
    let removed = broker
        .remove_group("old", Some("new"))
        .await
        .expect("remove with a successor");
    assert_eq!(
        removed,
        Removed {
            moved: 2,
            dropped: 0
        },
        "both are with the successor"
    );

    let mut new = consumer(&broker, "new");
    let mut got = Vec::new();
    for _ in 0..stats_of(&broker, "new").await.queued {
        let delivery = next_delivery(&mut new, "new").await;
        got.push(delivery.event.id.clone());
        ack(&broker, delivery).await;
    }
    got.sort();
    let mut expected = vec![before, between];
    expected.sort();
    assert_eq!(
        got, expected,
        "each event once: nothing lost, nothing doubled"
    );
}

async fn removing_a_group_wakes_its_waiting_consumers<B: Broker>(broker: B, _clock: Clock) {
    declare(&broker, "g", &["job"]).await;
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let mut consumer = consumer(&broker, "g");
        waiting.push(tokio::spawn(async move {
            consumer.next().await.map(|d| d.event.id.clone())
        }));
    }
    for task in &mut waiting {
        assert!(
            tokio::time::timeout(Duration::from_millis(100), task)
                .await
                .is_err(),
            "a consumer of an empty group returned"
        );
    }
    broker.remove_group("g", None).await.expect("remove");
    for task in waiting {
        let result = tokio::time::timeout(PATIENCE, task)
            .await
            .expect("waiting consumers are woken by the removal")
            .expect("consumer task");
        assert!(
            matches!(result, Err(BrokerError::UnknownGroup { .. })),
            "{result:?}"
        );
    }
}

async fn removing_a_group_releases_blocked_publishers<B: Broker>(broker: B, clock: Clock) {
    // Capacity 1.
    declare(&broker, "g", &["job"]).await;
    publish(&broker, event("job", 1), Backpressure::Wait).await;
    let mut publishing = tokio::spawn({
        let broker = broker.clone();
        async move { broker.publish(event("job", 2), Backpressure::Wait).await }
    });
    assert!(
        tokio::time::timeout(clock.d(Duration::from_secs(1)), &mut publishing)
            .await
            .is_err(),
        "Wait returned while the buffer was full"
    );
    broker.remove_group("g", None).await.expect("remove");
    let result = tokio::time::timeout(PATIENCE, publishing)
        .await
        .expect("a publisher waiting on a removed group is released")
        .expect("publisher task");
    assert!(result.is_ok(), "{result:?}");
}

async fn tap_sees_matching_events<B: Broker>(broker: B, _clock: Clock) {
    declare(&broker, "g", &["orders.created"]).await;
    let mut tap = broker.tap(pattern("orders.*"), 16);
    let created = publish(&broker, event("orders.created", 1), Backpressure::Reject).await;
    publish(&broker, event("payments.charged", 2), Backpressure::Reject).await;
    publish(&broker, event("orders.eu.shipped", 3), Backpressure::Reject).await;
    // No group listens to this one; the tap still sees it.
    let shipped = publish(&broker, event("orders.shipped", 4), Backpressure::Reject).await;

    let mut seen = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(PATIENCE, tap.recv()).await {
            Ok(Some(event)) => seen.push(event.id.clone()),
            other => panic!("tap ended early ({other:?}); saw {seen:?}"),
        }
    }
    assert_eq!(seen, [created, shipped]);
    assert!(
        matches!(tap.try_recv(), Err(mpsc::error::TryRecvError::Empty)),
        "the tap saw a topic outside its pattern"
    );
    // Tapping does not consume: the group still has its event.
    assert_eq!(load(&broker, "g").await, (1, 0));

    // A dropped tap does not get in the way of publishing.
    drop(tap);
    publish(&broker, event("orders.created", 5), Backpressure::Reject).await;
    assert_eq!(load(&broker, "g").await, (2, 0));
}

async fn tap_is_lossy_and_never_blocks_publishers<B: Broker>(broker: B, clock: Clock) {
    let mut tap = broker.tap(pattern(">"), 1);
    for n in 0..5 {
        // Would hang here if a slow tap pushed back.
        tokio::time::timeout(
            PATIENCE,
            broker.publish(event("tick", n), Backpressure::Wait),
        )
        .await
        .expect("a full tap must not block publishing")
        .expect("publish");
    }
    // A tap fed from another thread gets the chance to see (and drop) all five first.
    clock.settle().await;
    let first = tokio::time::timeout(PATIENCE, tap.recv())
        .await
        .expect("the tap kept one event")
        .expect("tap open");
    assert_eq!(first.data, json!({ "n": 0 }));
    assert!(
        matches!(tap.try_recv(), Err(mpsc::error::TryRecvError::Empty)),
        "a tap with a buffer of 1 holds at most one event"
    );
}

async fn stats_report_queued_and_in_flight<B: Broker>(broker: B, _clock: Clock) {
    // Capacity 8.
    declare(&broker, "a", &["job"]).await;
    declare(&broker, "b", &["other"]).await;
    let fresh = stats_of(&broker, "a").await;
    assert_eq!((fresh.queued, fresh.in_flight, fresh.capacity), (0, 0, 8));

    for n in 0..3 {
        publish(&broker, event("job", n), Backpressure::Reject).await;
    }
    assert_eq!(load(&broker, "a").await, (3, 0));
    assert_eq!(load(&broker, "b").await, (0, 0));

    let mut a = consumer(&broker, "a");
    let one = next_delivery(&mut a, "one").await;
    let two = next_delivery(&mut a, "two").await;
    assert_eq!(load(&broker, "a").await, (1, 2));
    ack(&broker, one).await;
    assert_eq!(load(&broker, "a").await, (1, 1));
    broker.nack(two).await.expect("nack");
    assert_eq!(load(&broker, "a").await, (2, 0));
}

fn write(store: &str, key: &str, op: StoreOp) -> StoreWrite {
    StoreWrite {
        store: store.to_owned(),
        key: key.to_owned(),
        op,
    }
}

async fn commit_applies_store_writes_in_order<B: Broker>(broker: B, _clock: Clock) {
    declare(&broker, "projection", &["placed"]).await;
    publish(&broker, event("placed", 1), Backpressure::Reject).await;
    let stores = broker.stores().expect("the broker keeps stores");
    let mut projection = consumer(&broker, "projection");
    let delivery = next_delivery(&mut projection, "placed").await;
    let writes = vec![
        write(
            "orders",
            "order:2",
            StoreOp::Set(json!({"customer": "bob"})),
        ),
        write(
            "orders",
            "order:1",
            StoreOp::Set(json!({"customer": "ann"})),
        ),
        write("orders", "orderless", StoreOp::Set(json!(true))),
        write("orders", "count", StoreOp::Incr(2)),
        write("orders", "count", StoreOp::Incr(-5)),
        write("orders", "label", StoreOp::Set(json!("x"))),
        write("orders", "label", StoreOp::Incr(4)),
        write("orders", "gone", StoreOp::Set(json!(1))),
        write("orders", "gone", StoreOp::Remove),
        write("other", "order:1", StoreOp::Set(json!("elsewhere"))),
    ];
    assert_eq!(
        stores.get("orders", "order:1").expect("read"),
        None,
        "writes wait for the commit"
    );
    broker
        .commit(
            delivery,
            Effects {
                store_writes: writes,
                ..Effects::default()
            },
        )
        .await
        .expect("commit");
    let get = |key: &str| stores.get("orders", key).expect("read");
    assert_eq!(get("order:1"), Some(json!({"customer": "ann"})));
    assert_eq!(get("count"), Some(json!(-3)));
    assert_eq!(get("label"), Some(json!(4)), "incr replaces a non-integer");
    assert_eq!(get("gone"), None);
    assert_eq!(get("missing"), None);
    let scanned = stores.scan("orders", "order:", 10).expect("scan");
    let keys: Vec<&str> = scanned.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["order:1", "order:2"],
        "a prefix scan is in key order"
    );
    assert_eq!(scanned[1].1, json!({"customer": "bob"}));
    assert_eq!(stores.scan("orders", "order:", 1).expect("scan").len(), 1);
    assert_eq!(stores.scan("orders", "", 100).expect("scan").len(), 5);
    assert!(stores.scan("nothing", "", 10).expect("scan").is_empty());
    assert_eq!(
        stores.get("other", "order:1").expect("read"),
        Some(json!("elsewhere"))
    );

    // Reads made ahead (Redis) answer exactly as the reads a run makes as it goes.
    if let Some(reader) = broker.read_ahead() {
        use edaflow::store::{Fetched, StoreWant};
        let get = |store: &str, key: &str| StoreWant::Get {
            store: store.into(),
            key: key.into(),
        };
        let scan = |store: &str, prefix: &str| StoreWant::Scan {
            store: store.into(),
            prefix: prefix.into(),
        };
        let wants = vec![
            get("orders", "order:1"),
            scan("orders", "order:"),
            get("orders", "missing"),
            scan("orders", ""),
            scan("nothing", ""),
            scan("orders", "zzz"),
            get("other", "order:1"),
        ];
        let expected: Vec<Fetched> = wants
            .iter()
            .map(|want| match want {
                StoreWant::Get { store, key } => Fetched::Value(stores.get(store, key).unwrap()),
                StoreWant::Scan { store, prefix } => {
                    Fetched::Entries(stores.scan(store, prefix, 1000).unwrap())
                }
            })
            .collect();
        let fetched = reader.read_ahead(wants).await.expect("read ahead");
        assert_eq!(fetched, expected);
        assert!(matches!(&fetched[1], Fetched::Entries(e) if e.len() == 2));
        assert!(reader
            .read_ahead(Vec::new())
            .await
            .expect("nothing to read")
            .is_empty());
    }
}

async fn a_commit_refused_for_a_delay_makes_nothing_visible<B: Broker>(broker: B, _clock: Clock) {
    declare(&broker, "handler", &["in"]).await;
    declare(&broker, "after", &["done", "later"]).await;
    publish(&broker, event("in", 1), Backpressure::Reject).await;
    let mut handler = consumer(&broker, "handler");
    let delivery = next_delivery(&mut handler, "in").await;
    let refused = broker
        .commit(
            delivery,
            Effects {
                publish: vec![event("done", 2)],
                deferred: vec![
                    (event("later", 3), Duration::ZERO),
                    (event("later", 4), Duration::MAX),
                ],
                ..Effects::default()
            },
        )
        .await;
    assert!(
        matches!(refused, Err(BrokerError::DelayTooLong { .. })),
        "{refused:?}"
    );
    assert_eq!(
        load(&broker, "after").await,
        (0, 0),
        "nothing of a refused commit is published"
    );
    assert_eq!(broker.scheduled().await, 0, "nor scheduled");
}

async fn a_committed_reply_reaches_the_waiting_request<B: Broker>(broker: B, _clock: Clock) {
    declare(&broker, "answer", &["q"]).await;
    let replies = broker.replies().expect("the broker carries replies");
    let ok = replies.await_reply("ok");
    let failed = replies.await_reply("failed");
    let forgotten = replies.await_reply("forgotten");
    replies.forget_reply("forgotten");
    for (n, id) in [(1, "ok"), (2, "failed")] {
        let mut query = event("q", n);
        query
            .extensions
            .insert("replyto".into(), replies.reply_address(id).into());
        publish(&broker, query, Backpressure::Reject).await;
    }
    let mut answer = consumer(&broker, "answer");
    for result in [Ok(json!({"n": 1})), Err("it failed".to_owned())] {
        let delivery = next_delivery(&mut answer, "a query").await;
        let to = delivery.event.extensions["replyto"]
            .as_str()
            .expect("a reply address")
            .to_owned();
        broker
            .commit(
                delivery,
                Effects {
                    reply: Some(Reply { to, result }),
                    ..Effects::default()
                },
            )
            .await
            .expect("commit");
    }
    let within = |rx| tokio::time::timeout(PATIENCE, rx);
    assert_eq!(
        within(ok).await.expect("in time").expect("answered"),
        Ok(json!({"n": 1}))
    );
    assert_eq!(
        within(failed).await.expect("in time").expect("answered"),
        Err("it failed".to_owned())
    );
    assert!(forgotten.await.is_err(), "a forgotten request gets nothing");
}
