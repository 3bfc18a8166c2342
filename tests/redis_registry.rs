//! The registry of processes sharing one Redis namespace (a server each test starts
//! itself): through the broker's `Processes` capability in process (entries listed with
//! their age, refreshed, removed on leaving, dropped once stale; the process id is what its
//! consumer names start with), and through `/healthz` of real `edaflow run` processes
//! (each sees the others with their generation, a reload shows in the registry, a process
//! killed with SIGKILL drops out after `GONE_AFTER`, one stopped cleanly at once).

mod common;

use std::time::{Duration, Instant};

use edaflow::broker::capability::processes::{GONE_AFTER, HEARTBEAT_EVERY};
use edaflow::broker::{
    Backpressure, Broker, Consumer, GroupSpec, ProcessInfo, RedisBroker, RedisOptions,
};
use edaflow::event::Event;
use edaflow::flow::TopicPattern;
use edaflow::runtime::processes::list_processes;

use common::redis::{connect, unique_namespace, RedisServer};
use common::{Edaflow, FlowDir, Running};

/// How long a process may take to start, reload, or show up in another's list.
const PATIENCE: Duration = Duration::from_secs(20);

fn options(namespace: &str) -> RedisOptions {
    RedisOptions {
        namespace: namespace.to_owned(),
        ..RedisOptions::default()
    }
}

/// The entry a process on `broker` would send, running `generation`.
fn entry(broker: &RedisBroker, generation: u64) -> ProcessInfo {
    let registry = broker
        .processes()
        .expect("the Redis broker keeps a registry");
    ProcessInfo {
        id: registry.process_id().to_owned(),
        host: "test-host".to_owned(),
        pid: std::process::id(),
        version: "0.0.0".to_owned(),
        generation,
        started_at: "2026-01-01T00:00:00.000Z".to_owned(),
        http: vec!["127.0.0.1:1".to_owned()],
        seen_ms_ago: 0,
        this: false,
    }
}

async fn listed(broker: &RedisBroker) -> Vec<ProcessInfo> {
    broker
        .processes()
        .expect("a registry")
        .list()
        .await
        .expect("the registry is readable")
}

fn ids(processes: &[ProcessInfo]) -> Vec<&str> {
    processes.iter().map(|p| p.id.as_str()).collect()
}

#[tokio::test]
async fn brokers_list_each_other_and_forget_who_leaves_or_goes_quiet() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let namespace = unique_namespace("registry");
    let a = server.broker(options(&namespace)).await;
    let b = server.broker(options(&namespace)).await;
    let (ra, rb) = (a.processes().expect("a"), b.processes().expect("b"));
    assert_ne!(ra.process_id(), rb.process_id());
    assert!(
        ra.process_id()
            .contains(&format!("-{}-", std::process::id())),
        "{}",
        ra.process_id()
    );

    ra.heartbeat(&entry(&a, 1)).await.expect("a registers");
    rb.heartbeat(&entry(&b, 1)).await.expect("b registers");
    let seen = listed(&a).await;
    let mut expected = vec![ra.process_id(), rb.process_id()];
    expected.sort_unstable();
    let mut got = ids(&seen);
    got.sort_unstable();
    assert_eq!(got, expected, "{seen:?}");
    for process in &seen {
        assert!(!process.this, "the broker flags no one: {process:?}");
        assert!(process.seen_ms_ago < 2000, "just seen: {process:?}");
        assert_eq!(process.generation, 1);
        assert_eq!(process.http, ["127.0.0.1:1"]);
    }

    // A heartbeat carries the new generation.
    rb.heartbeat(&entry(&b, 2)).await.expect("b refreshes");
    let of_b = listed(&a)
        .await
        .into_iter()
        .find(|p| p.id == rb.process_id())
        .expect("b listed");
    assert_eq!(of_b.generation, 2);

    // The runtime's list: this process first and flagged, then the others.
    let mine = list_processes(&a, &entry(&a, 1)).await;
    assert_eq!(ids(&mine), [ra.process_id(), rb.process_id()]);
    assert!(mine[0].this && !mine[1].this, "{mine:?}");

    // Leaving removes the entry at once.
    rb.deregister(rb.process_id()).await.expect("b leaves");
    assert_eq!(ids(&listed(&a).await), [ra.process_id()]);

    // An entry last seen longer ago than GONE_AFTER (by Redis's clock), or one whose seen
    // time cannot be read, is removed by whoever lists; a fresh one edaflow cannot read is
    // left out of the list and kept.
    let mut conn = connect(&server.url());
    let (s, us): (i64, i64) = redis::cmd("TIME").query(&mut conn).expect("TIME");
    let now_ms = s * 1000 + us / 1000;
    let key = format!("edaflow:{{{namespace}}}:processes");
    let json = serde_json::to_string(&ProcessInfo {
        id: "ghost".to_owned(),
        ..entry(&b, 1)
    })
    .expect("JSON");
    let stale = now_ms - i64::try_from(GONE_AFTER.as_millis()).expect("ms") - 1000;
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("ghost")
        .arg(format!("{stale}\n{json}"))
        .arg("garbled")
        .arg("no seen time")
        .arg("alien")
        .arg(format!("{now_ms}\nnot json"))
        .query(&mut conn)
        .expect("HSET");
    assert_eq!(ids(&listed(&a).await), [ra.process_id()]);
    let left: Vec<String> = redis::cmd("HKEYS")
        .arg(&key)
        .query(&mut conn)
        .expect("HKEYS");
    let mut left: Vec<&str> = left.iter().map(String::as_str).collect();
    left.sort_unstable();
    let mut kept = vec!["alien", ra.process_id()];
    kept.sort_unstable();
    assert_eq!(left, kept);
}

#[tokio::test]
async fn consumer_names_start_with_the_process_id() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let namespace = unique_namespace("registry");
    let broker = server.broker(options(&namespace)).await;
    let group = GroupSpec {
        name: "work".to_owned(),
        patterns: vec![TopicPattern::parse("job").expect("a pattern")],
    };
    broker.declare_group(&group).await.expect("declare");
    let mut consumer = broker.consumer("work").expect("a consumer");
    let event = Event::new("job", "edaflow://registry/test", serde_json::json!({}));
    broker
        .publish(event, Backpressure::Wait)
        .await
        .expect("publish");
    let delivery = tokio::time::timeout(PATIENCE, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("a delivery");
    let mut conn = connect(&server.url());
    let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(format!("edaflow:{{{namespace}}}:t:job"))
        .arg("work")
        .query(&mut conn)
        .expect("XINFO CONSUMERS");
    let id = broker.processes().expect("a registry").process_id();
    let names: Vec<&str> = reply.consumers.iter().map(|c| c.name.as_str()).collect();
    assert!(
        !names.is_empty() && names.iter().all(|n| n.starts_with(&format!("{id}-"))),
        "every consumer of this process is named `{id}-N`: {names:?}"
    );
    broker
        .commit(delivery, Default::default())
        .await
        .expect("commit");
}

// ---------------------------------------------------------------------------------------
// `edaflow run` processes, through `/healthz`

const FLOW: &str = r#"
[flow]
name = "registry"

[producers.api]
kind = "http"
listen = "127.0.0.1:0"

[subscribers.work]
topic = "job"
script = "work.rhai"
"#;

fn flow_dir() -> FlowDir {
    let dir = FlowDir::new();
    dir.write("registry.toml", FLOW);
    dir.write("work.rhai", "let n = 1;");
    dir
}

/// `edaflow run` on the flow folder and the test's Redis, watching the folder.
fn start(dir: &FlowDir, server: &RedisServer) -> Running {
    let url = server.url();
    let mut running = Edaflow::new(dir.root())
        .args([
            "run",
            "registry.toml",
            "--listen",
            "127.0.0.1:0",
            "--broker",
            &url,
        ])
        .spawn();
    running.listening_addr(PATIENCE);
    running
}

/// The processes `/healthz` of `from` lists.
fn processes(from: &Running) -> Vec<serde_json::Value> {
    from.health()["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("a processes array\n{}", from.dump()))
        .clone()
}

/// The entry of the process whose pid is `pid`, as `from` lists it.
fn entry_of(from: &Running, pid: u32) -> Option<serde_json::Value> {
    processes(from)
        .into_iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
}

/// Waits until `from` lists the process `pid` running `generation`.
fn wait_listed(from: &mut Running, pid: u32, generation: u64) {
    from.wait(
        &format!("process {pid} listed at generation {generation}"),
        PATIENCE,
        |from| entry_of(from, pid).is_some_and(|p| p["generation"] == generation),
    );
}

#[test]
fn processes_on_one_namespace_see_each_other_reload_and_leave() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = flow_dir();
    let mut first = start(&dir, &server);
    let mut second = start(&dir, &server);
    let (a, b) = (first.pid(), second.pid());

    // Each lists itself first, flagged, then the other, with its generation and address.
    wait_listed(&mut first, b, 1);
    wait_listed(&mut second, a, 1);
    for (me, other, running) in [(a, b, &first), (b, a, &second)] {
        let listed = processes(running);
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert_eq!(listed[0]["pid"], me, "{listed:?}");
        assert_eq!(listed[0]["self"], true, "{listed:?}");
        assert_eq!(listed[1]["pid"], other, "{listed:?}");
        assert_eq!(listed[1]["self"], false, "{listed:?}");
        assert_eq!(
            listed[0]["http"][0],
            running.addr().to_string(),
            "{listed:?}"
        );
        let id = listed[0]["id"].as_str().expect("an id");
        assert!(id.contains(&format!("-{me}-")), "{id}");
        assert!(
            listed[1]["seen_ms_ago"].as_u64().expect("an age") < GONE_AFTER.as_millis() as u64,
            "{listed:?}"
        );
    }

    // An edit reloads both: each one's entry shows its new generation.
    first.wait_until_watching(&dir, "work.rhai");
    second.wait_until_watching(&dir, "work.rhai");
    dir.write("work.rhai", "let n = 2;");
    first.wait("the reload", PATIENCE, |p| p.generation() == 2);
    second.wait("the reload", PATIENCE, |p| p.generation() == 2);
    wait_listed(&mut first, b, 2);
    wait_listed(&mut second, a, 2);

    // Killed with SIGKILL, the second leaves its entry behind: the first lists it until
    // GONE_AFTER has passed without a heartbeat, then no more.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &b.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let at = Instant::now();
    second.wait_exit(PATIENCE);
    first.wait(
        "the killed process to drop out",
        GONE_AFTER + PATIENCE,
        |from| entry_of(from, b).is_none(),
    );
    // Its last heartbeat was about HEARTBEAT_EVERY before the kill at most (one more
    // allowed for a beat held up on a busy machine).
    assert!(
        at.elapsed() >= GONE_AFTER - 2 * HEARTBEAT_EVERY,
        "dropped {:?} after the kill, before its entry was stale",
        at.elapsed()
    );

    // A third, stopped cleanly (SIGTERM), is gone from the list as soon as it has exited.
    let mut third = start(&dir, &server);
    let c = third.pid();
    wait_listed(&mut first, c, third.generation());
    third.wait_catching_sigterm(PATIENCE);
    third.terminate();
    third.wait_exit(PATIENCE);
    let listed = processes(&first);
    assert!(
        listed.iter().all(|p| p["pid"] != c),
        "a cleanly stopped process is gone at once: {listed:?}\n{}",
        third.dump()
    );
    assert_eq!(listed.len(), 1, "{listed:?}");
}
