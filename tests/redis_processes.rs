//! Several `edaflow run` processes on one Redis (a server each test starts itself): two or
//! three compete within a group and fan out across groups, three share a deferred queue
//! (items taken ahead by any of them, none started early), when one is killed with SIGKILL
//! under load the other finishes every event, and both hot-reload edits under load with
//! nothing lost. Counted by ids read back from Redis: every
//! published event handled, no emitted event duplicated.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::redis::{connect, counts_of_n, RedisServer};
use common::{post_json, Edaflow, FlowDir, Running};

const PATIENCE: Duration = Duration::from_secs(20);

/// The flow set's name and its HTTP ingest, shared by the flows of these tests.
const HEADER: &str = r#"
[flow]
name = "multi"

[producers.api]
kind = "http"
listen = "127.0.0.1:0"
"#;

const SUBSCRIBERS: &str = r#"
[subscribers.work]
topic = "job"
script = "work.rhai"
emits = ["worked"]
concurrency = 2

[subscribers.audit]
topic = "job"
script = "audit.rhai"
emits = ["audited"]

[subscribers.done]
topics = ["worked", "audited"]
script = "done.rhai"
"#;

/// Some work per event, so a process holds events in flight when it is killed.
const WORK: &str = r#"
let x = 0;
for i in 0..2000 { x += i; }
log(`worked ${event.data.n}`);
emit("worked", #{ n: event.data.n });
"#;

const AUDIT: &str = r#"emit("audited", #{ n: event.data.n });"#;

const DONE: &str = "let n = event.data.n;";

fn flow() -> String {
    format!("{HEADER}{SUBSCRIBERS}")
}

fn flow_dir() -> FlowDir {
    let dir = FlowDir::new();
    dir.write("multi.toml", &flow());
    dir.write("work.rhai", WORK);
    dir.write("audit.rhai", AUDIT);
    dir.write("done.rhai", DONE);
    dir
}

fn start(dir: &FlowDir, server: &RedisServer, extra: &[&str]) -> (Running, SocketAddr) {
    start_watching(dir, server, false, extra)
}

fn start_watching(
    dir: &FlowDir,
    server: &RedisServer,
    watch: bool,
    extra: &[&str],
) -> (Running, SocketAddr) {
    let mut args = vec!["run", "multi.toml"];
    if !watch {
        args.push("--no-watch");
    }
    args.extend(["--listen", "127.0.0.1:0", "--broker"]);
    let url = server.url();
    args.push(&url);
    args.extend_from_slice(extra);
    let mut running = Edaflow::new(dir.root()).args(args).spawn();
    let addr = running.listening_addr(PATIENCE);
    (running, addr)
}

fn publish(addr: SocketAddr, n: usize) {
    let body = format!("{{\"n\":{n}}}");
    let reply = post_json(addr, "/topics/job", body);
    assert_eq!(reply.status, 202, "{reply:?}");
}

/// Waits until `topic` has an event for each of `0..total`, then returns the counts.
fn wait_emitted(
    conn: &mut redis::Connection,
    topic: &str,
    total: usize,
    within: Duration,
) -> BTreeMap<u64, usize> {
    let deadline = Instant::now() + within;
    loop {
        let counts = counts_of_n(conn, &format!("edaflow:{{multi}}:t:{topic}"));
        if counts.len() >= total || Instant::now() >= deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_each_once(counts: &BTreeMap<u64, usize>, total: usize, what: &str) {
    let missing: Vec<u64> = (0..total as u64)
        .filter(|n| !counts.contains_key(n))
        .collect();
    let doubled: Vec<(&u64, &usize)> = counts.iter().filter(|(_, c)| **c > 1).collect();
    // The tally the closing notes quote (`cargo test -- --nocapture`).
    eprintln!(
        "{what}: {total} published, {} handled, {} duplicated, {} lost",
        counts.len(),
        doubled.len(),
        missing.len()
    );
    assert!(
        missing.is_empty() && doubled.is_empty(),
        "{what}: {} of {total} handled; lost {missing:?}; duplicated {doubled:?}",
        counts.len()
    );
}

#[test]
fn two_processes_compete_within_a_group_and_fan_out_across_groups() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = flow_dir();
    let (first, addr) = start(&dir, &server, &[]);
    let (second, other) = start(&dir, &server, &[]);
    const TOTAL: usize = 200;
    for n in 0..TOTAL {
        // Ingest on both: either process may publish; the groups are shared.
        publish(if n % 2 == 0 { addr } else { other }, n);
    }
    let mut conn = connect(&server.url());
    let worked = wait_emitted(&mut conn, "worked", TOTAL, PATIENCE);
    let audited = wait_emitted(&mut conn, "audited", TOTAL, PATIENCE);
    assert_each_once(&worked, TOTAL, "group `work` across both processes");
    assert_each_once(&audited, TOTAL, "group `audit` across both processes");
    let (a, b) = (first.worked_lines(), second.worked_lines());
    assert_eq!(a + b, TOTAL, "each event handled by one process");
    assert!(
        a > 0 && b > 0,
        "both processes compete: {a} and {b}\n{}{}",
        first.dump(),
        second.dump()
    );
}

#[test]
fn kill_9_of_one_process_under_load_loses_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = flow_dir();
    let claim = ["--claim-idle", "500ms"];
    let (survivor, addr) = start(&dir, &server, &claim);
    let (victim, _) = start(&dir, &server, &claim);
    const TOTAL: usize = 600;
    let mut conn = connect(&server.url());
    for n in 0..TOTAL / 2 {
        publish(addr, n);
    }
    // Mid-load, once the victim is taking part.
    victim.kill_9_once_working(PATIENCE);
    for n in TOTAL / 2..TOTAL {
        publish(addr, n);
    }
    let worked = wait_emitted(&mut conn, "worked", TOTAL, PATIENCE);
    let audited = wait_emitted(&mut conn, "audited", TOTAL, PATIENCE);
    assert_each_once(&worked, TOTAL, "after kill -9, group `work`");
    assert_each_once(&audited, TOTAL, "after kill -9, group `audit`");
    drop(survivor);
    drop(victim);
}

/// Both processes watch the flow folder; under load, the handler and the flow file are
/// edited (script-only edits swap code in place; a changed `concurrency` restarts the
/// subscriber on its Redis group). Every event is handled once, by one version or another.
#[test]
fn hot_reload_on_two_processes_under_load_loses_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = flow_dir();
    let (first, addr) = start_watching(&dir, &server, true, &[]);
    let (second, other) = start_watching(&dir, &server, true, &[]);
    const TOTAL: usize = 400;
    let mut conn = connect(&server.url());
    for n in 0..TOTAL {
        publish(if n % 2 == 0 { addr } else { other }, n);
        if n % 50 == 25 {
            let version = n / 50;
            if version % 2 == 0 {
                dir.write(
                    "work.rhai",
                    &WORK.replace("worked ${", &format!("worked v{version} ${{")),
                );
            } else {
                let concurrency = if version % 4 == 1 { 3 } else { 2 };
                dir.write(
                    "multi.toml",
                    &flow().replace("concurrency = 2", &format!("concurrency = {concurrency}")),
                );
            }
        }
    }
    let worked = wait_emitted(&mut conn, "worked", TOTAL, PATIENCE);
    let audited = wait_emitted(&mut conn, "audited", TOTAL, PATIENCE);
    assert_each_once(
        &worked,
        TOTAL,
        "group `work` through reloads on both processes",
    );
    assert_each_once(
        &audited,
        TOTAL,
        "group `audit` through reloads on both processes",
    );
    for process in [&first, &second] {
        let reloads = process.stderr().matches("flows reloaded").count();
        assert!(
            reloads >= 4,
            "each process reloaded the edits ({reloads} reloads)\n{}",
            process.dump()
        );
    }
}

/// Three processes share one flow set with a deferred queue: the topic's work is spread
/// over all three, and each queue item, moved ahead of its due time by whichever process's
/// mover got to it and taken by any process's worker, is handled once and not before it
/// falls due.
#[test]
fn three_processes_share_topic_work_and_a_deferred_queue() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = FlowDir::new();
    dir.write(
        "multi.toml",
        &format!(
            r#"{HEADER}
[subscribers.work]
topic = "job"
script = "work.rhai"
emits = ["worked"]

[queues.later]
delay = "300ms"

[subscribers.finish]
queue = "later"
concurrency = 4
script = "finish.rhai"
emits = ["finished"]
"#
        ),
    );
    dir.write(
        "work.rhai",
        &format!("{WORK}enqueue(\"later\", #{{ n: event.data.n, at: now_ms() }});\n"),
    );
    // The handler's clock against the time the item was enqueued plus its delay.
    dir.write(
        "finish.rhai",
        r#"
log(`started item ${event.data.n}`);
emit("finished", #{ n: event.data.n, early: event.data.at + 300 - now_ms() });
"#,
    );
    let processes: Vec<(Running, SocketAddr)> = (0..3).map(|_| start(&dir, &server, &[])).collect();
    const TOTAL: usize = 300;
    for n in 0..TOTAL {
        publish(processes[n % 3].1, n);
    }
    let mut conn = connect(&server.url());
    let worked = wait_emitted(&mut conn, "worked", TOTAL, PATIENCE);
    let finished = wait_emitted(&mut conn, "finished", TOTAL, PATIENCE);
    assert_each_once(&worked, TOTAL, "group `work` across three processes");
    assert_each_once(&finished, TOTAL, "queue `later` across three processes");
    let shares: Vec<usize> = processes.iter().map(|(p, _)| p.worked_lines()).collect();
    assert_eq!(
        shares.iter().sum::<usize>(),
        TOTAL,
        "each event handled by one process"
    );
    assert!(
        shares.iter().all(|&s| s > 0),
        "all three compete: {shares:?}\n{}",
        processes.iter().map(|(p, _)| p.dump()).collect::<String>()
    );
    // The queue's items, taken ahead by whichever readers wait, are spread too.
    let queue_shares: Vec<usize> = processes
        .iter()
        .map(|(p, _)| p.stderr().matches("started item ").count())
        .collect();
    eprintln!("queue `later`, items started per process: {queue_shares:?}");
    assert_eq!(
        queue_shares.iter().sum::<usize>(),
        TOTAL,
        "{queue_shares:?}"
    );
    assert!(
        queue_shares.iter().all(|&s| s > 0),
        "all three take queue items: {queue_shares:?}"
    );
    // No item started before its due time (`early` is how many ms before it, by the
    // handlers' clocks: all on this machine).
    let stream: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("edaflow:{multi}:t:finished")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("XRANGE");
    for entry in stream.ids {
        let json: String = entry.get("e").expect("an event field");
        let event: serde_json::Value = serde_json::from_str(&json).expect("event JSON");
        let early = event["data"]["early"].as_i64().expect("early");
        assert!(
            early <= 0,
            "an item started {early} ms before its due time: {event}"
        );
    }
}
