//! Redis losing what edaflow keeps there, or refusing to keep more, under running
//! `edaflow run` processes (a redis-server each test starts itself): `FLUSHALL` under load
//! with two processes sharing Redis, a restart without persistence under load, and an
//! out-of-memory episode (`maxmemory` with `noeviction`). Each test counts ids: every event
//! answered 202 after the fault is handled, only events accepted before it may be lost
//! (and are counted), none is duplicated, each loss and each episode is logged once, and
//! the processes are alive and answering afterwards. Each prints a line
//! `fault tally | <fault> | published N | handled N | dead-lettered N | lost N | duplicated N | alive yes`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::load::{wait_handled, Load};
use common::redis::{connect, counts_of_n, run_on, RedisServer};
use common::{http, post_json, FlowDir, Running};

const PATIENCE: Duration = Duration::from_secs(20);
const LOST_STATE: &str = "redis lost its state";

/// A subscriber that logs each event it handles and emits its number on `done`.
const FLOW: &str = r#"
[flow]
name = "state"

[producers.api]
kind = "http"
listen = "127.0.0.1:0"

[subscribers.work]
topic = "job"
script = "work.rhai"
emits = ["done"]
concurrency = 2
"#;

/// The same handler behind a relay and a queue: `job` events move into the queue
/// `tasks`, whose workers run it (a group, a queue and its mover to declare again).
const RELAYED: &str = r#"
[flow]
name = "state"

[producers.api]
kind = "http"
listen = "127.0.0.1:0"

[relays.forward]
from = "job"
to = "tasks"

[queues.tasks]

[subscribers.work]
queue = "tasks"
script = "work.rhai"
emits = ["done"]
concurrency = 2
"#;

/// The flow, its handler doing `spin` loop iterations of work per event (so that events
/// wait for the workers when the fault strikes).
fn flow_dir(spin: u32) -> FlowDir {
    flow_dir_of(FLOW, spin)
}

fn flow_dir_of(flow: &str, spin: u32) -> FlowDir {
    let dir = FlowDir::new();
    dir.write("state.toml", flow);
    dir.write(
        "work.rhai",
        &format!(
            "let spin = event.data.spin ?? {spin};\nlet x = 0;\nfor i in 0..spin {{ x += i; }}\nlog(`worked ${{event.data.n}}`);\nemit(\"done\", #{{ n: event.data.n }});\n"
        ),
    );
    dir
}

fn start(dir: &FlowDir, url: &str) -> (Running, SocketAddr) {
    let running = run_on(dir, "state.toml", url)
        // `done` is counted, and nothing reads it: it must not be trimmed meanwhile,
        // however slow the machine.
        .args(["--unread-retention", "0s"])
        // Commit retries are logged at debug level.
        .env("EDAFLOW_LOG", "info,edaflow::runtime::subscriber=debug")
        .serve(PATIENCE);
    let addr = running.addr();
    (running, addr)
}

fn post(addr: SocketAddr, n: u64, pad: usize) -> common::Reply {
    let body = serde_json::json!({ "n": n, "pad": "x".repeat(pad) });
    post_json(addr, "/topics/job", body.to_string())
}

/// An event whose handler spins `spin` rounds (the flow's own count otherwise).
fn post_slow(addr: SocketAddr, n: u64, spin: u32) -> common::Reply {
    let body = serde_json::json!({ "n": n, "spin": spin });
    post_json(addr, "/topics/job", body.to_string())
}

fn healthz(addr: SocketAddr) -> common::Reply {
    http(addr, "GET", "/healthz", &[], b"")
}

fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    let body = http(addr, "GET", "/metrics", &[], b"").body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

fn lines_with(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// How many times each `n` was handled, from the `worked n` lines of the processes' logs.
fn worked(logs: &[String]) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for log in logs {
        for line in log.lines() {
            let Some((_, after)) = line.split_once("worked ") else {
                continue;
            };
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse::<u64>() {
                *counts.entry(n).or_default() += 1;
            }
        }
    }
    counts
}

/// How many times each `n` was emitted on `done` (its handler's commit landed).
fn done_counts(url: &str) -> BTreeMap<u64, usize> {
    counts_of_n(&mut connect(url), "edaflow:{state}:t:done")
}

fn dead_letters(url: &str) -> u64 {
    redis::cmd("XLEN")
        .arg("edaflow:{state}:dead")
        .query(&mut connect(url))
        .expect("XLEN")
}

/// An event of the load: `n`, without padding.
fn post_plain(addr: SocketAddr, n: u64) -> common::Reply {
    post(addr, n, 0)
}

/// The tally of one fault: what was published (answered 202), handled, dead-lettered,
/// lost and duplicated, by id.
struct Tally {
    published: usize,
    handled: usize,
    dead_lettered: u64,
    lost: BTreeSet<u64>,
    duplicated: BTreeSet<u64>,
}

impl Tally {
    fn of(acked: &BTreeSet<u64>, handled: &BTreeMap<u64, usize>, dead_lettered: u64) -> Tally {
        Tally {
            published: acked.len(),
            handled: acked.iter().filter(|n| handled.contains_key(n)).count(),
            dead_lettered,
            lost: acked
                .iter()
                .filter(|n| !handled.contains_key(n))
                .copied()
                .collect(),
            duplicated: handled
                .iter()
                .filter(|(_, c)| **c > 1)
                .map(|(n, _)| *n)
                .collect(),
        }
    }

    fn print(&self, fault: &str, alive: bool) {
        eprintln!(
            "fault tally | {fault} | published {} | handled {} | dead-lettered {} | lost {} | duplicated {} | alive {}",
            self.published,
            self.handled,
            self.dead_lettered,
            self.lost.len(),
            self.duplicated.len(),
            if alive { "yes" } else { "no" }
        );
    }
}

/// Alive and answering: `/healthz` is 200 with the broker up, reporting `state_lost`.
fn assert_alive(addr: SocketAddr, state_lost: u64, running: &Running) -> bool {
    let health = healthz(addr);
    assert_eq!(health.status, 200, "{health:?}\n{}", running.dump());
    let body: serde_json::Value = serde_json::from_str(&health.body).expect("JSON");
    assert_eq!(body["broker"]["status"], "up", "{body}");
    assert_eq!(
        body["broker"]["incidents"]["state_lost"], state_lost,
        "{body}"
    );
    true
}

/// Two processes, each with a relay from `job` into the queue `tasks` and the queue's
/// workers: the flush takes the relay's group, the queue and everything waiting.
#[test]
fn flushall_under_load_with_two_processes_is_noticed_healed_and_loses_only_what_waited() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = flow_dir_of(RELAYED, 20_000);
    let url = server.url();
    let (mut a, addr_a) = start(&dir, &url);
    let (mut b, addr_b) = start(&dir, &url);
    let load = Load::start(vec![addr_a, addr_b], PATIENCE, post_plain);
    load.wait_acked_from(0, 100, "before the flush");

    let reply = server.command(&["FLUSHALL"]);
    assert!(reply.starts_with("+OK"), "{reply}");
    // A number being posted now may have reached Redis before the flush did; the ones
    // after it were sent once the flush was done.
    let flush_from = load.posting();
    let after = load.next_fresh();

    // Each process notices, logs it once, declares again what it needs, and goes on.
    for (name, running) in [("a", &a), ("b", &b)] {
        running.wait_stderr(
            &format!("process {name} noticing the loss"),
            PATIENCE,
            |log| log.contains(LOST_STATE),
        );
    }
    load.wait_acked_from(after, 100, "after the flush");
    let (acked, _) = load.finish();
    let must: BTreeSet<u64> = acked.range(after..).copied().collect();
    let handled = wait_handled(&must, PATIENCE, || worked(&[a.stderr(), b.stderr()]));
    let tally = Tally::of(&acked, &handled, dead_letters(&url));

    let alive = assert_alive(addr_a, 1, &a) && assert_alive(addr_b, 1, &b);
    tally.print("FLUSHALL, two processes", alive);
    assert!(
        tally.lost.iter().all(|n| *n <= flush_from),
        "lost after the flush: {:?} (flushed while posting {flush_from})",
        tally.lost
    );
    assert!(tally.duplicated.is_empty(), "{:?}", tally.duplicated);
    assert_eq!(tally.dead_lettered, 0);
    for (name, running, addr) in [("a", &a, addr_a), ("b", &b, addr_b)] {
        let log = running.stderr();
        assert_eq!(
            lines_with(&log, LOST_STATE),
            1,
            "process {name}: once\n{log}"
        );
        let line = log.lines().find(|l| l.contains(LOST_STATE)).unwrap_or("");
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains("may_be_lost"), "{line}");
        assert_eq!(metric(addr, "edaflow_broker_state_lost_total"), Some(1));
    }
    // The loss as /healthz shows it: when, and what was missing (names only). The process
    // that healed first found the queue gone; the other may find only the marker replaced.
    let mut found = String::new();
    for addr in [addr_a, addr_b] {
        let body: serde_json::Value =
            serde_json::from_str(&healthz(addr).body).expect("healthz JSON");
        let loss = &body["broker"]["incidents"]["last_state_loss"];
        assert!(
            loss["at"].as_str().is_some_and(|at| at.contains('T')),
            "{loss}"
        );
        let missing = loss["missing"].to_string();
        assert!(missing.contains("epoch marker"), "{missing}");
        found.push_str(&missing);
    }
    assert!(found.contains("queue `tasks`"), "{found}");
    for running in [&mut a, &mut b] {
        running.terminate();
        assert!(running.wait_exit(PATIENCE).success(), "{}", running.dump());
    }
}

#[test]
fn a_restart_without_persistence_under_load_is_healed_and_what_follows_is_handled() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let dir = flow_dir(20_000);
    let url = server.url();
    let (mut running, addr) = start(&dir, &url);
    let load = Load::start(vec![addr], PATIENCE, post_plain);
    load.wait_acked_from(0, 100, "before the restart");

    server.kill();
    // Nothing reaches Redis once it is killed: a number being posted now may have landed
    // just before.
    let killed_while = load.posting();
    // Refused meanwhile (503), at once once the circuit is open.
    running.wait_stderr("the outage noticed", PATIENCE, |log| {
        log.contains("redis unreachable")
    });
    server.start_again();
    let after = load.next_fresh();
    running.wait_stderr("the loss noticed", PATIENCE, |log| log.contains(LOST_STATE));
    load.wait_acked_from(after, 100, "after the restart");
    let (acked, _) = load.finish();
    let must: BTreeSet<u64> = acked.range(after..).copied().collect();
    let handled = wait_handled(&must, PATIENCE, || worked(&[running.stderr()]));
    let tally = Tally::of(&acked, &handled, dead_letters(&url));
    let alive = assert_alive(addr, 1, &running);
    tally.print("restart without persistence", alive);
    assert!(
        tally.lost.iter().all(|n| *n <= killed_while),
        "lost after the restart: {:?} (killed while posting {killed_while})",
        tally.lost
    );
    assert!(tally.duplicated.is_empty(), "{:?}", tally.duplicated);
    assert_eq!(tally.dead_lettered, 0);
    let log = running.stderr();
    assert_eq!(lines_with(&log, LOST_STATE), 1, "{log}");
    running.terminate();
    assert!(running.wait_exit(PATIENCE).success(), "{}", running.dump());
}

/// `INFO memory`'s `used_memory`.
fn used_memory(server: &RedisServer) -> u64 {
    let info = server.command(&["INFO", "memory"]);
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no used_memory in {info}"))
}

fn set_maxmemory(server: &RedisServer, bytes: u64) {
    let reply = server.command(&["CONFIG", "SET", "maxmemory", &bytes.to_string()]);
    assert!(reply.starts_with("+OK"), "{reply}");
}

/// Waits until `/healthz` answers 200 (an out-of-memory episode is over).
fn wait_healthy(addr: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let health = healthz(addr);
        if health.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "still degraded: {health:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const OUT_OF_MEMORY: &str = "redis is out of memory";
const WRITES_AGAIN: &str = "redis takes writes again";

#[test]
fn an_out_of_memory_episode_answers_503_is_logged_once_and_loses_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // Slow handlers: events wait for them when Redis runs out of memory, and their
    // commits meet the episode.
    let dir = flow_dir(20_000);
    let url = server.url();
    let (mut running, addr) = start(&dir, &url);
    const PAD: usize = 8 * 1024;
    let mut acked = BTreeSet::new();
    for n in 0..20 {
        assert_eq!(post(addr, n, PAD).status, 202);
        acked.insert(n);
    }
    let counts = wait_handled(&acked, PATIENCE, || done_counts(&url));
    assert_eq!(counts.len(), 20, "handled before the episode");

    // Room for a few dozen more events, then Redis refuses writes.
    let limit = used_memory(&server) + 400 * 1024;
    assert!(server
        .command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .starts_with("+OK"));
    set_maxmemory(&server, limit);
    let mut n = 20;
    let refused = loop {
        assert!(n < 2_000, "Redis never ran out of memory");
        let reply = post(addr, n, PAD);
        match reply.status {
            202 => {
                acked.insert(n);
            }
            503 => break reply,
            _ => panic!("{reply:?}"),
        }
        n += 1;
    };
    assert!(
        refused.body.contains("\"broker_out_of_memory\""),
        "{refused:?}"
    );
    assert_eq!(refused.header("Retry-After"), Some("1"));
    let health = healthz(addr);
    assert_eq!(health.status, 503, "{health:?}");
    let body: serde_json::Value = serde_json::from_str(&health.body).expect("JSON");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["broker"]["status"], "out_of_memory", "{body}");
    assert_eq!(body["broker"]["incidents"]["out_of_memory_episodes"], 1);
    // Still at the limit, Redis hovers: it refuses most writes and takes one now and then,
    // as handlers' acknowledgements and its own buffers free memory. It is one episode:
    // refusals are not logged again.
    let mut refusals = 0;
    let mut n = 10_000;
    while refusals < 5 {
        assert!(n < 10_200, "Redis took nearly every write at its limit");
        let reply = post(addr, n, PAD);
        match reply.status {
            202 => {
                acked.insert(n);
            }
            503 => {
                assert!(reply.body.contains("broker_out_of_memory"), "{reply:?}");
                refusals += 1;
            }
            _ => panic!("{reply:?}"),
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lines_with(&running.stderr(), OUT_OF_MEMORY), 1);

    // Memory is freed: the episode ends (logged once), health is up again.
    set_maxmemory(&server, 0);
    wait_healthy(addr);

    // Handlers' commits meet an episode: slow events are accepted, then Redis refuses
    // every write before their handlers finish. Each refused commit waits and retries,
    // never dead-letters. (A fast machine may finish a batch before the limit comes: then
    // memory is freed and a larger batch is tried.)
    let retried = || {
        running
            .stderr()
            .lines()
            .filter(|l| l.contains("commit failed; retrying") && l.contains("out of memory"))
            .count()
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        assert!(attempt <= 5, "no commit met an episode in 5 batches");
        let batch: BTreeSet<u64> = (0..8 * attempt)
            .map(|k| 30_000 + 100 * attempt + k)
            .collect();
        for &n in &batch {
            assert_eq!(post_slow(addr, n, 80_000).status, 202);
            acked.insert(n);
        }
        set_maxmemory(&server, 1);
        let deadline = Instant::now() + PATIENCE;
        let met = loop {
            if retried() > 0 {
                break true;
            }
            let done = done_counts(&url);
            if batch.iter().all(|n| done.contains_key(n)) {
                break false;
            }
            assert!(
                Instant::now() < deadline,
                "a batch neither committed nor retried"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // Nothing is written while Redis is past its limit.
        assert_eq!(post(addr, 40_000 + attempt, PAD).status, 503);
        set_maxmemory(&server, 0);
        wait_healthy(addr);
        if met {
            break;
        }
    }

    // What was accepted before, during and after is handled.
    for n in 20_000..20_020 {
        assert_eq!(post(addr, n, PAD).status, 202);
        acked.insert(n);
    }
    let counts = wait_handled(&acked, PATIENCE, || done_counts(&url));
    let tally = Tally::of(&acked, &counts, dead_letters(&url));
    let log = running.stderr();
    let alive = assert_alive(addr, 0, &running);
    tally.print("out of memory (maxmemory, noeviction)", alive);
    assert!(tally.lost.is_empty(), "lost {:?}", tally.lost);
    assert!(tally.duplicated.is_empty(), "{:?}", tally.duplicated);
    assert_eq!(tally.dead_lettered, 0);
    let episodes = metric(addr, "edaflow_broker_out_of_memory_episodes_total").unwrap_or(0);
    eprintln!(
        "out-of-memory episodes: {episodes}; commits retried while Redis was out of memory: {}",
        retried()
    );
    assert!(episodes >= 2, "{log}");
    assert_eq!(
        lines_with(&log, OUT_OF_MEMORY) as u64,
        episodes,
        "one error per episode\n{log}"
    );
    assert!(log
        .lines()
        .filter(|l| l.contains(OUT_OF_MEMORY))
        .all(|l| l.contains("ERROR")));
    assert_eq!(
        lines_with(&log, WRITES_AGAIN) as u64,
        episodes,
        "one info when each ends\n{log}"
    );
    assert_eq!(lines_with(&log, "dead-lettering"), 0, "{log}");
    running.terminate();
    assert!(running.wait_exit(PATIENCE).success(), "{}", running.dump());
}
