//! One flow set spread over the three masters of a Redis Cluster (`--shards 3`), under
//! faults: `kill -9` of one of two `edaflow` processes under load, and `kill -9` of a
//! master whose replica takes over. The chain `job` → `mid` → `done` puts each topic on
//! another shard (`[topics.NAME] shard`), so every handler's effects go through an outbox
//! and a forwarder. Each fault test counts, by `n`, what reached `done`: published
//! (answered 202), handled, lost, duplicated. And a process asking for another shard count
//! than the namespace's is refused. Spread by journey (`--spread-by journey`), the same chain
//! commits every hop on its journey's own shard: killed mid-load, nothing is lost or
//! doubled, no outbox is ever written, and every shard carries part of the load. `/metrics`
//! shows each shard's outbox: what waits in it, for how long, and what was forwarded. A
//! pub/sub topic's events are handled once, not once per shard.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::load::{self, Load};
use common::redis::{connect, counts_of_n, run_on, RedisCluster};
use common::{post_json, FlowDir, Running};
use edaflow::broker::{RedisBroker, RedisOptions, RedisUrl};

const PATIENCE: Duration = Duration::from_secs(30);

const FLOW: &str = r#"
[flow]
name = "spread"

[producers.api]
kind = "http"
listen = "127.0.0.1:0"

[topics.job]
shard = 0

[topics.mid]
shard = 1

[topics.done]
shard = 2

[subscribers.work]
topic = "job"
script = "work.rhai"
emits = ["mid"]
concurrency = 2

[subscribers.relay]
topic = "mid"
script = "relay.rhai"
emits = ["done"]
concurrency = 2
"#;

/// Some work per event, so a process holds events in flight when it is killed.
const WORK: &str = r#"
let x = 0;
for i in 0..20000 { x += i; }
log(`worked ${event.data.n}`);
emit("mid", #{ n: event.data.n });
"#;

const RELAY: &str = r#"emit("done", #{ n: event.data.n });"#;

fn flow_dir() -> FlowDir {
    FlowDir::with_files(&[
        ("spread.toml", FLOW),
        ("work.rhai", WORK),
        ("relay.rhai", RELAY),
    ])
}

fn start(dir: &FlowDir, url: &str, namespace: &str) -> (Running, SocketAddr) {
    start_with(dir, url, namespace, &[])
}

fn start_with(dir: &FlowDir, url: &str, namespace: &str, more: &[&str]) -> (Running, SocketAddr) {
    let mut running = run_on(dir, "spread.toml", url)
        .args(["--namespace", namespace, "--shards", "3"])
        .args(more.iter().copied())
        .args(["--claim-idle", "1s", "--unread-retention", "0s"])
        .spawn();
    let addr = running.listening_addr(PATIENCE);
    (running, addr)
}

fn post(addr: SocketAddr, n: u64) -> common::Reply {
    post_json(addr, "/topics/job", format!("{{\"n\":{n}}}"))
}

/// Where shard `k` of `namespace` keeps its keys: its prefix and its slot.
fn shard_of(cluster: &RedisCluster, namespace: &str, k: usize) -> (String, u16) {
    let url = RedisUrl::parse(&cluster.seeds_url()).expect("a valid url");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let broker = RedisBroker::connect(
            &url,
            RedisOptions {
                namespace: namespace.to_owned(),
                shards: 3,
                ..RedisOptions::default()
            },
        )
        .await
        .expect("connect to the cluster");
        let prefix = broker.shard_prefixes()[k].clone();
        let (slot, _) = broker.cluster_slots()[k]
            .clone()
            .expect("a shard's slot on a cluster");
        (prefix, slot)
    })
}

/// How many times each `n` reached `done` (read from its stream on the master serving it).
fn done_counts(cluster: &RedisCluster, done: &(String, u16)) -> BTreeMap<u64, usize> {
    let master = cluster.master_of(done.1);
    let key = format!("{}t:done", done.0);
    counts_of_n(&mut connect(&format!("redis://127.0.0.1:{master}")), &key)
}

/// The tally the closing notes quote (`cargo test -- --nocapture`), and the ids lost and
/// doubled.
fn tally(what: &str, acked: &BTreeSet<u64>, counts: &BTreeMap<u64, usize>) -> (Vec<u64>, Vec<u64>) {
    let lost: Vec<u64> = acked
        .iter()
        .filter(|n| !counts.contains_key(n))
        .copied()
        .collect();
    let doubled: Vec<u64> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    eprintln!(
        "{what}: {} published (answered 202), {} handled, {} duplicated, {} lost",
        acked.len(),
        counts.keys().filter(|n| acked.contains(n)).count(),
        doubled.len(),
        lost.len()
    );
    (lost, doubled)
}

/// Posts to `addr` (the survivor; both processes handle them) until 100 are answered,
/// kills `victim` once it has handled one, posts until 100 more are answered, and returns
/// every post answered 202.
fn posts_through_a_kill(addr: SocketAddr, victim: &Running) -> BTreeSet<u64> {
    let load = Load::start(vec![addr], PATIENCE, post);
    load.wait_acked(100, "before the kill");
    victim.kill_9_once_working(PATIENCE);
    let after = load.next_fresh();
    load.wait_acked_from(after, 100, "after the kill");
    load.finish().0
}

#[test]
fn kill_9_of_one_of_two_processes_loses_and_doubles_nothing() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let namespace = "spread-kill";
    let dir = flow_dir();
    let (survivor, addr) = start(&dir, &cluster.seeds_url(), namespace);
    let (victim, _) = start(&dir, &cluster.seeds_url(), namespace);
    let done = shard_of(&cluster, namespace, 2);
    let acked = posts_through_a_kill(addr, &victim);
    let counts = load::wait_handled(&acked, PATIENCE, || done_counts(&cluster, &done));
    let (lost, doubled) = tally("kill -9 of one of two processes, 3 shards", &acked, &counts);
    assert!(
        lost.is_empty() && doubled.is_empty(),
        "lost {lost:?}, duplicated {doubled:?}\n{}",
        survivor.dump()
    );
}

/// The chain spread by journey: the flow without its topics' `shard`, every event placed
/// by its correlation id.
#[test]
fn spread_by_journey_commits_each_hop_on_its_shard_and_survives_a_kill_9() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let namespace = "spread-journey";
    let unplaced: String = FLOW
        .split("[topics.")
        .enumerate()
        .map(|(i, part)| match i {
            0 => part.to_owned(),
            // Drops each `[topics.NAME]\nshard = K\n\n` block, keeps what follows it.
            _ => part.splitn(3, '\n').nth(2).unwrap_or_default().to_owned(),
        })
        .collect();
    assert!(!unplaced.contains("shard"), "{unplaced}");
    let dir = FlowDir::with_files(&[
        ("spread.toml", unplaced.as_str()),
        ("work.rhai", WORK),
        ("relay.rhai", RELAY),
    ]);
    let journey = ["--spread-by", "journey"];
    let (survivor, addr) = start_with(&dir, &cluster.seeds_url(), namespace, &journey);
    let (victim, _) = start_with(&dir, &cluster.seeds_url(), namespace, &journey);
    let shards: Vec<(String, u16)> = (0..3).map(|k| shard_of(&cluster, namespace, k)).collect();
    let acked = posts_through_a_kill(addr, &victim);
    let per_shard = || -> Vec<BTreeMap<u64, usize>> {
        shards
            .iter()
            .map(|shard| done_counts(&cluster, shard))
            .collect()
    };
    let counts = load::wait_handled(&acked, PATIENCE, || {
        let mut all = BTreeMap::new();
        for counts in per_shard() {
            for (n, c) in counts {
                *all.entry(n).or_insert(0) += c;
            }
        }
        all
    });
    let (lost, doubled) = tally(
        "kill -9 of one of two processes, spread by journey",
        &acked,
        &counts,
    );
    assert!(
        lost.is_empty() && doubled.is_empty(),
        "lost {lost:?}, duplicated {doubled:?}\n{}",
        survivor.dump()
    );
    for (k, (counts, (prefix, slot))) in per_shard().iter().zip(&shards).enumerate() {
        assert!(
            counts.len() >= acked.len() / 10,
            "shard {k} carried {} of {} journeys",
            counts.len(),
            acked.len()
        );
        // Every hop committed on its own shard: no outbox was ever written.
        let master = cluster.master_of(*slot);
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("{prefix}outbox"))
            .query(&mut connect(&format!("redis://127.0.0.1:{master}")))
            .expect("EXISTS");
        assert!(!exists, "shard {k} wrote an outbox");
    }
}

#[test]
fn kill_9_of_a_master_fails_over_and_the_flow_set_goes_on() {
    let Some(mut cluster) = RedisCluster::start_with(1) else {
        return;
    };
    let namespace = "spread-failover";
    let dir = flow_dir();
    let (running, addr) = start(&dir, &cluster.seeds_url(), namespace);
    let mid = shard_of(&cluster, namespace, 1);
    let done = shard_of(&cluster, namespace, 2);
    let load = Load::start(vec![addr], PATIENCE, post);
    load.wait_acked(200, "before the failover");
    // The master of `mid`'s shard: every `work` commit lands there, every `relay` commit
    // starts there.
    let victim = cluster.master_of(mid.1);
    cluster.kill(victim);
    let new_master = cluster.wait_failover(mid.1, victim, PATIENCE);
    let after = load.next_fresh();
    load.wait_acked_from(after, 200, "after the failover");
    let (acked, refused) = load.finish();
    let counts = load::wait_handled(&acked, PATIENCE, || done_counts(&cluster, &done));
    eprintln!("failover from {victim} to {new_master}: {refused} posts answered 503 meanwhile");
    let (lost, doubled) = tally(
        "kill -9 of a master, replica takes over, 3 shards",
        &acked,
        &counts,
    );
    // Replication is asynchronous: what the killed master acknowledged in its last moment
    // may be lost or (its commit lost after its outbox was forwarded) done again. Nothing
    // else is, and nothing published after the failover.
    let after_failover: Vec<&u64> = lost
        .iter()
        .chain(&doubled)
        .filter(|n| **n >= after)
        .collect();
    assert!(
        after_failover.is_empty(),
        "lost or doubled after the failover: {after_failover:?}\n{}",
        running.dump()
    );
    assert!(
        lost.len() + doubled.len() <= acked.len() / 100,
        "lost {lost:?}, duplicated {doubled:?} of {}\n{}",
        acked.len(),
        running.dump()
    );
}

/// The outboxes as `/metrics` shows them, on three shards of one Redis: every hop of the
/// chain crosses shards, so shards 0 and 1 forward one entry per event, and once the chain
/// has drained nothing waits.
#[test]
fn metrics_show_each_shards_outbox() {
    let Some(server) = common::redis::RedisServer::start() else {
        return;
    };
    let dir = flow_dir();
    let (running, addr) = start(&dir, &server.url(), "spread-metrics");
    for n in 0..20 {
        assert_eq!(post(addr, n).status, 202);
    }
    let metric = |name: &str| -> Option<f64> {
        let body = common::http(addr, "GET", "/metrics", &[], b"").body;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    };
    let deadline = Instant::now() + PATIENCE;
    loop {
        let forwarded: Vec<f64> = (0..3)
            .map(|k| {
                metric(&format!("edaflow_outbox_forwarded_total{{shard=\"{k}\"}}")).unwrap_or(-1.0)
            })
            .collect();
        let waiting: Vec<f64> = (0..3)
            .map(|k| metric(&format!("edaflow_outbox_waiting{{shard=\"{k}\"}}")).unwrap_or(-1.0))
            .collect();
        if forwarded == [20.0, 20.0, 0.0] && waiting == [0.0, 0.0, 0.0] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "forwarded {forwarded:?}, waiting {waiting:?}\n{}",
            running.dump()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for k in 0..3 {
        let oldest = metric(&format!("edaflow_outbox_oldest_seconds{{shard=\"{k}\"}}"));
        assert_eq!(
            oldest,
            Some(0.0),
            "shard {k}: nothing waits, so nothing is old"
        );
    }
}

/// A pub/sub topic on a spread namespace: a message reaches every subscription to its
/// channel, so the group subscribes from one shard only, and each event is handled once.
#[test]
fn a_pubsub_topic_on_three_shards_is_handled_once() {
    let Some(server) = common::redis::RedisServer::start() else {
        return;
    };
    let dir = FlowDir::with_files(&[
        (
            "spread.toml",
            r#"
[flow]
name = "pubsub"

[producers.api]
kind = "http"
listen = "127.0.0.1:0"

[topics.ping]
mode = "pubsub"

[subscribers.seen]
topic = "ping"
script = "seen.rhai"
"#,
        ),
        ("seen.rhai", "log(`worked ${event.data.n};`);"),
    ]);
    let (running, addr) = start(&dir, &server.url(), "spread-pubsub");
    let ping = |n: u64| post_json(addr, "/topics/ping", format!("{{\"n\":{n}}}"));
    // The subscription is made as the runtime starts: wait until a ping is seen.
    let deadline = Instant::now() + PATIENCE;
    while running.worked_lines() == 0 {
        assert!(
            Instant::now() < deadline,
            "no ping handled\n{}",
            running.dump()
        );
        assert_eq!(ping(0).status, 202);
        std::thread::sleep(Duration::from_millis(50));
    }
    for n in 1..=3 {
        assert_eq!(ping(n).status, 202);
    }
    // Redis writes a message to every subscription as it is published: once the last
    // one is handled, a copy of the others would be too.
    let sentinel = 99;
    assert_eq!(ping(sentinel).status, 202);
    let handled = |n: u64| running.stderr().matches(&format!("worked {n};")).count();
    while handled(sentinel) == 0 {
        assert!(
            Instant::now() < deadline,
            "the last ping was not handled\n{}",
            running.dump()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for n in [1, 2, 3, sentinel] {
        assert_eq!(handled(n), 1, "ping {n}\n{}", running.dump());
    }
}

/// Processes spreading one namespace over different shard counts would each see part of
/// it: the second count is refused at connect, naming the first.
#[tokio::test]
async fn a_different_shard_count_for_a_namespace_is_refused() {
    let Some(server) = common::redis::RedisServer::start() else {
        return;
    };
    let url = RedisUrl::parse(&server.url()).expect("a valid url");
    let options = |shards| RedisOptions {
        namespace: "layout".to_owned(),
        shards,
        ..RedisOptions::default()
    };
    let first = RedisBroker::connect(&url, options(3))
        .await
        .expect("the first count is taken");
    RedisBroker::connect(&url, options(3))
        .await
        .expect("the same count is taken again");
    for other in [1, 2] {
        let refused = RedisBroker::connect(&url, options(other)).await;
        let Err(e) = refused else {
            panic!("{other} shards were taken for a namespace spread over 3");
        };
        assert!(
            e.to_string().contains("spread over 3 shard(s)"),
            "{other} shards: {e}"
        );
    }
    drop(first);
}
