//! The Redis broker's circuit breaker, against a private `redis-server` that the test kills
//! and starts again (without persistence). Once two commands in a row failed to reach
//! Redis, every publish is refused at once: the circuit's counters show that none of them
//! tried to reach Redis, and each returns within a generous bound. A probe closes the
//! circuit when Redis is back; the broker then finds Redis empty, declares its group again,
//! and a consumer that waited through it all gets what is published next.

mod common;

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use edaflow::broker::{
    Backpressure, Broker, BrokerError, BrokerHealth, Consumer, GroupSpec, RedisOptions,
};
use edaflow::event::Event;
use edaflow::flow::TopicPattern;

const PATIENCE: Duration = Duration::from_secs(15);
/// Each refusal must come back within this: a bound no refusal that opened a connection
/// or waited for a timeout could keep (they took about 540 ms each before the circuit).
const FAST: Duration = Duration::from_millis(50);
const REFUSALS: u64 = 200;

fn job(n: u64) -> Event {
    Event::new("job", "test", serde_json::json!({ "n": n }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_gone_publishes_are_refused_at_once_and_a_probe_closes_the_circuit() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let broker = server
        .broker(RedisOptions {
            namespace: "circuit".to_owned(),
            block: Duration::from_millis(200),
            ..RedisOptions::default()
        })
        .await;
    broker
        .declare_group(&GroupSpec {
            name: "work".to_owned(),
            patterns: vec![TopicPattern::parse("job").expect("a pattern")],
        })
        .await
        .expect("declare");
    let mut consumer = broker.consumer("work").expect("a consumer");
    broker
        .publish(job(0), Backpressure::Reject)
        .await
        .expect("publish");
    let first = tokio::time::timeout(PATIENCE, consumer.next())
        .await
        .expect("in time")
        .expect("a delivery");
    broker
        .commit(first, Default::default())
        .await
        .expect("commit");
    assert!(!broker.circuit().open);

    // The consumer waits through the outage.
    let waiting = tokio::spawn(async move {
        let delivery = tokio::time::timeout(PATIENCE * 2, consumer.next())
            .await
            .expect("a delivery after the outage")
            .expect("a delivery");
        (consumer, delivery)
    });

    server.kill();
    // Publishes fail until the circuit opens (two failures in a row, from any caller).
    let deadline = Instant::now() + PATIENCE;
    while !broker.circuit().open {
        assert!(Instant::now() < deadline, "the circuit never opened");
        let refused = broker.publish(job(1), Backpressure::Reject).await;
        assert!(
            matches!(&refused, Err(e) if e.is_transient()),
            "{refused:?}"
        );
    }
    let opened = broker.circuit();
    assert_eq!(opened.opened, 1);

    // Open: each publish is refused at once, and none of them tries to reach Redis.
    let mut took = Vec::new();
    for n in 0..REFUSALS {
        let started = Instant::now();
        let refused = broker.publish(job(100 + n), Backpressure::Reject).await;
        took.push(started.elapsed());
        match refused {
            Err(e @ BrokerError::Unavailable { .. }) => assert!(e.is_transient()),
            other => panic!("{other:?}"),
        }
    }
    let after = broker.circuit();
    assert!(after.open);
    assert!(
        after.refused >= opened.refused + REFUSALS,
        "every publish refused by the circuit: {opened:?} then {after:?}"
    );
    took.sort();
    let slowest = *took.last().expect("samples");
    eprintln!(
        "circuit refusals: {REFUSALS} publishes, p50 {:?}, p99 {:?}, max {slowest:?}",
        took[took.len() / 2],
        took[took.len() * 99 / 100],
    );
    assert!(slowest < FAST, "a refusal took {slowest:?}");
    match broker.health().await {
        BrokerHealth::Down { reason, .. } => {
            assert!(reason.contains("refused at once"), "{reason}")
        }
        other => panic!("{other:?}"),
    }

    // Redis back, empty: the probe closes the circuit, the state loss is healed, and what
    // is published now reaches the consumer that waited.
    server.start_again();
    let deadline = Instant::now() + PATIENCE;
    while broker.circuit().open {
        assert!(Instant::now() < deadline, "the circuit never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        match broker.publish(job(7), Backpressure::Reject).await {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline && e.is_transient(),
                "publish after the restart: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_consumer, delivery) = waiting.await.expect("the consumer task");
    assert_eq!(delivery.event.data, serde_json::json!({ "n": 7 }));
    broker
        .commit(delivery, Default::default())
        .await
        .expect("commit");
    // The consumer may have found its group gone and the publish gone through before the
    // broker's watcher (every 500 ms) saw the epoch marker missing: wait for that check.
    let deadline = Instant::now() + PATIENCE;
    while broker.incidents().state_lost == 0 {
        assert!(
            Instant::now() < deadline,
            "the state loss was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let incidents = broker.incidents();
    assert_eq!(incidents.state_lost, 1, "{incidents:?}");
    let loss = incidents.last_state_loss.expect("the loss");
    assert!(
        loss.missing.iter().any(|m| m.contains("group `work`")),
        "{loss:?}"
    );
    assert_eq!(broker.health().await, BrokerHealth::Up);
    assert_eq!(broker.circuit().opened, 1, "opened once");
}
