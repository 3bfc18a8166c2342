//! The Redis broker on a Redis Cluster (three masters the test starts itself): flow sets in
//! namespaces whose slots sit on different masters each run on their own master, reached
//! through one seed node; and a namespace whose slot moves to another master (resharding)
//! is followed there without losing what waits in it; a URL with several seed nodes, the
//! first unreachable. Plus the single-Redis side of cluster detection: a user not allowed
//! `INFO` still connects, and several seeds that are one single Redis are refused.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::redis::{run_on, RedisCluster};
use common::{post_json, FlowDir, Running};
use edaflow::broker::{Backpressure, Broker, Consumer, Effects, GroupSpec, RedisOptions};
use edaflow::event::Event;
use edaflow::flow::TopicPattern;

const PATIENCE: Duration = Duration::from_secs(20);

const FLOW: &str = r#"
[flow]
name = "spread"

[producers.api]
kind = "http"
listen = "127.0.0.1:0"

[subscribers.work]
topic = "job"
script = "work.rhai"
emits = ["done"]

[subscribers.sink]
topic = "done"
script = "sink.rhai"
"#;

const WORK: &str = r#"emit("done", #{ n: event.data.n });"#;

const SINK: &str = "let n = event.data.n;";

/// Two namespaces whose slots are served by different masters.
fn namespaces_on_two_masters(cluster: &RedisCluster) -> [(String, u16); 2] {
    let first = "shop-0".to_owned();
    let first_master = cluster.master_of_namespace(&first);
    for i in 1..100 {
        let other = format!("shop-{i}");
        let master = cluster.master_of_namespace(&other);
        if master != first_master {
            return [(first, first_master), (other, master)];
        }
    }
    panic!("no two of 100 namespaces on different masters");
}

fn start(dir: &FlowDir, cluster: &RedisCluster, namespace: &str) -> (Running, SocketAddr) {
    let running = run_on(dir, "spread.toml", &cluster.seed_url())
        .args(["--namespace", namespace])
        .serve(PATIENCE);
    let addr = running.addr();
    (running, addr)
}

/// Entries of a stream, read on the node at `port` (`0` when the key is not there).
fn xlen(cluster: &RedisCluster, port: u16, key: &str) -> usize {
    let reply = cluster.command(port, &["XLEN", key]);
    reply
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap_or_else(|_| panic!("XLEN {key} on {port}: {reply:?}"))
}

#[test]
fn flow_sets_in_different_namespaces_run_on_different_masters() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let spread = namespaces_on_two_masters(&cluster);
    let dir = FlowDir::new();
    dir.write("spread.toml", FLOW);
    dir.write("work.rhai", WORK);
    dir.write("sink.rhai", SINK);
    let mut processes = Vec::new();
    for (namespace, master) in &spread {
        let (running, addr) = start(&dir, &cluster, namespace);
        // The process says which master serves its namespace (before it starts ingest).
        let master = format!("master=127.0.0.1:{master}");
        running.wait_stderr("the cluster routing line", PATIENCE, |text| {
            text.lines()
                .any(|l| l.contains("Redis Cluster") && l.contains(&master))
        });
        processes.push((running, addr));
    }
    const EACH: usize = 20;
    for (_, addr) in &processes {
        for n in 0..EACH {
            let reply = post_json(*addr, "/topics/job", format!("{{\"n\":{n}}}"));
            assert_eq!(reply.status, 202, "{reply:?}");
        }
    }
    // Every job handled, its `done` on the namespace's own master and on no other node.
    for ((namespace, master), (running, _)) in spread.iter().zip(&processes) {
        let done = format!("edaflow:{{{namespace}}}:t:done");
        let deadline = Instant::now() + PATIENCE;
        while xlen(&cluster, *master, &done) < EACH {
            assert!(
                Instant::now() < deadline,
                "{namespace}: {} of {EACH} jobs done on {master}\n{}",
                xlen(&cluster, *master, &done),
                running.dump()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(xlen(&cluster, *master, &done), EACH, "{namespace}");
        for port in cluster.ports().into_iter().filter(|p| p != master) {
            let there = cluster.command(port, &["EXISTS", &done]);
            // Another node does not hold the key: it redirects (MOVED), or (a replica) says 0.
            assert!(
                there.starts_with("-MOVED") || there.starts_with(":0"),
                "{namespace}'s key on {port}: {there:?}"
            );
        }
    }
    for (mut running, _) in processes {
        running.terminate();
        running.wait_exit(PATIENCE);
    }
}

fn pattern(text: &str) -> TopicPattern {
    TopicPattern::parse(text).expect("a valid pattern")
}

/// Declares group `g` on topic `job`; returns an event to publish there.
async fn declare_job_group<B: Broker>(broker: &B) -> Event {
    broker
        .declare_group(&GroupSpec {
            name: "g".into(),
            patterns: vec![pattern("job")],
        })
        .await
        .expect("declare");
    Event::new("job", "edaflow://cluster/test", serde_json::json!({"n": 1}))
}

/// A consumer of group `g` is handed `event`.
async fn assert_group_gets<B: Broker>(broker: &B, event: &Event) {
    let mut consumer = broker.consumer("g").expect("a consumer");
    let delivery = tokio::time::timeout(PATIENCE, consumer.next())
        .await
        .expect("delivered in time")
        .expect("a delivery");
    assert_eq!(delivery.event.id, event.id);
}

async fn publish_until_accepted<B: Broker>(broker: &B, event: Event) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match broker.publish(event.clone(), Backpressure::Reject).await {
            Ok(()) => return,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "publish still fails after {PATIENCE:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_namespace_follows_its_slot_to_another_master() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let namespace = "moving";
    let broker = cluster
        .broker(RedisOptions {
            namespace: namespace.to_owned(),
            block: Duration::from_millis(200),
            ..RedisOptions::default()
        })
        .await;
    let (slot, first) = broker.cluster_slot().expect("the broker sees the cluster");
    let from = cluster.master_of(slot);
    assert_eq!(first, format!("127.0.0.1:{from}"));
    let before = declare_job_group(&broker).await;
    broker
        .publish(before.clone(), Backpressure::Reject)
        .await
        .expect("publish before the move");

    let to = cluster
        .ports()
        .into_iter()
        .find(|p| *p != from)
        .expect("another master");
    cluster.move_slot(slot, to);

    // The broker follows the slot: it reports the new master, publishing works again, and
    // what waited in the group moved with the slot and is delivered.
    let deadline = Instant::now() + PATIENCE;
    while broker.cluster_slot().map(|(_, m)| m) != Some(format!("127.0.0.1:{to}")) {
        assert!(
            Instant::now() < deadline,
            "still on {:?} after the move",
            broker.cluster_slot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = Event::new("job", "edaflow://cluster/test", serde_json::json!({"n": 2}));
    publish_until_accepted(&broker, after.clone()).await;
    let mut consumer = broker.consumer("g").expect("a consumer");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let delivery = tokio::time::timeout(PATIENCE, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {seen:?} delivered after the move"))
            .expect("a delivery");
        seen.push(delivery.event.id.clone());
        broker
            .commit(delivery, Effects::default())
            .await
            .expect("commit on the new master");
    }
    assert_eq!(seen, [before.id, after.id]);
    let topic = format!("edaflow:{{{namespace}}}:t:job");
    assert_eq!(
        xlen(&cluster, to, &topic),
        2,
        "both events on the new master"
    );
}

/// Cluster detection asks `INFO cluster`; a user whose ACL forbids INFO still gets a
/// working broker on a single Redis.
#[tokio::test]
async fn a_user_without_info_still_connects_to_a_single_redis() {
    let Some(server) = common::redis::RedisServer::start() else {
        return;
    };
    let reply = server.command(&[
        "ACL", "SETUSER", "app", "on", ">secret", "~*", "&*", "+@all", "-info",
    ]);
    assert!(reply.starts_with("+OK"), "{reply:?}");
    let url = format!("redis://app:secret@127.0.0.1:{}", server.port());
    let url = edaflow::broker::RedisUrl::parse(&url).expect("a valid url");
    let broker = edaflow::broker::RedisBroker::connect(
        &url,
        RedisOptions {
            namespace: "limited".to_owned(),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("connect without INFO: {e}"));
    assert_eq!(broker.cluster_slot(), None);
    let event = declare_job_group(&broker).await;
    broker
        .publish(event.clone(), Backpressure::Reject)
        .await
        .expect("publish");
    assert_group_gets(&broker, &event).await;
}

/// A cluster URL may list several seed nodes: an unreachable one is skipped and the next
/// is asked where the namespace's slot lives.
#[tokio::test]
async fn several_seed_nodes_an_unreachable_one_is_skipped() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    // A loopback port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let ports = cluster.ports();
    let url = format!(
        "redis://127.0.0.1:{dead},127.0.0.1:{},127.0.0.1:{}",
        ports[1], ports[2]
    );
    let url = edaflow::broker::RedisUrl::parse(&url).expect("a valid url");
    let broker = edaflow::broker::RedisBroker::connect(
        &url,
        RedisOptions {
            namespace: common::redis::unique_namespace("seeds"),
            block: Duration::from_millis(200),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("connect through the second seed: {e}"));
    let (slot, master) = broker.cluster_slot().expect("the broker sees the cluster");
    assert_eq!(master, format!("127.0.0.1:{}", cluster.master_of(slot)));
    let event = declare_job_group(&broker).await;
    publish_until_accepted(&broker, event.clone()).await;
    assert_group_gets(&broker, &event).await;
}

/// Several seed nodes name a cluster; a single Redis among them is refused, clearly.
#[tokio::test]
async fn several_seed_nodes_that_are_a_single_redis_are_refused() {
    let Some(server) = common::redis::RedisServer::start() else {
        return;
    };
    let url = format!("redis://127.0.0.1:{0},127.0.0.1:{0}", server.port());
    let url = edaflow::broker::RedisUrl::parse(&url).expect("a valid url");
    let refused = edaflow::broker::RedisBroker::connect(
        &url,
        RedisOptions {
            namespace: "single".to_owned(),
            ..RedisOptions::default()
        },
    )
    .await
    .err()
    .expect("refused");
    let text = refused.to_string();
    assert!(
        text.contains("several seed nodes are for a Redis Cluster"),
        "{text}"
    );
}
