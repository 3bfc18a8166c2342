//! Generated hostile entries stored straight into Redis under a running `edaflow run` (a
//! redis-server of its own): whatever lies in a subscribed topic's stream, a group's
//! inbox, a queue's ready or given-back stream, a queue's schedule or the delayed events
//! (garbage fields, bytes
//! that are not UTF-8, JSON that is not an event, events with wrong types, ids too long,
//! data nested too deep, megabyte values, events of another topic, due times that make no
//! sense), each entry ends handled (its handler emitted `seen`) or dead-lettered (in the
//! dead-letter store), exactly one of the two, with nothing left pending, and the process
//! stays up and answering.
//!
//! `PROPTEST_CASES` sets how many entries are generated (default below: a few seconds;
//! raise it for a longer hunt, e.g. `PROPTEST_CASES=5000`).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use common::redis::{connect, RedisServer};
use common::{http, post_json, Edaflow, FlowDir};
use edaflow::event::Event;

const PATIENCE: Duration = Duration::from_secs(10);
const P: &str = "edaflow:{hostile}:";

const FLOW: &str = r#"
[flow]
name = "hostile"

[producers.api]
kind = "http"
listen = "127.0.0.1:0"

[subscribers.work]
topic = "job"
script = "seen.rhai"
emits = ["seen"]
concurrency = 2

[queues.tasks]

[subscribers.tasker]
queue = "tasks"
script = "seen.rhai"
emits = ["seen"]
concurrency = 2
"#;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Where an entry is stored.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// The subscribed topic's stream (`t:job`, group `work`).
    Topic,
    /// The group's inbox (`g:work:inbox`).
    Inbox,
    /// The queue's ready stream (`q:tasks:ready`, group `workers`).
    Ready,
    /// The queue's given-back stream (`q:tasks:back`).
    Back,
    /// The queue's schedule (`q:tasks:sched`, a member due long ago).
    Schedule,
    /// The delayed events (`deferred`, a member due long ago, for `job`).
    Deferred,
}

#[derive(Clone, Debug)]
struct Entry {
    target: Target,
    /// Stream fields (name, value); for `Schedule`, the first value is the member.
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

fn event_json(topic: &str, data: serde_json::Value) -> serde_json::Value {
    serde_json::to_value(Event::new(topic, "edaflow://hostile", data)).expect("an event")
}

fn nested(depth: usize) -> serde_json::Value {
    let mut value = serde_json::json!(1);
    for _ in 0..depth {
        value = serde_json::json!([value]);
    }
    value
}

/// Event data, ordinary or not: scalars, small objects, nesting around the limit of 64
/// levels, strings up to about 2 MB.
fn data() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        4 => any::<i64>().prop_map(|n| serde_json::json!({ "n": n })),
        2 => ".{0,40}".prop_map(serde_json::Value::String),
        2 => (55usize..75).prop_map(nested),
        1 => (120usize..140).prop_map(nested),
        1 => (100_000usize..2_000_000).prop_map(|n| serde_json::Value::String("x".repeat(n))),
        1 => Just(serde_json::Value::Null),
    ]
}

/// An event for `topic`, left as it is or broken in one place.
fn event(topic: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let mutation = prop_oneof![
        4 => Just("none"),
        1 => Just("id-number"),
        1 => Just("id-long"),
        1 => Just("time-bad"),
        1 => Just("no-specversion"),
        1 => Just("other-topic"),
        1 => Just("hops-negative"),
        1 => Just("hops-max"),
        1 => Just("correlation-null"),
        1 => Just("many-extensions"),
        1 => Just("truncated"),
    ];
    (data(), mutation, any::<prop::sample::Index>()).prop_map(move |(data, mutation, at)| {
        let mut event = event_json(topic, data);
        let object = event.as_object_mut().expect("an object");
        match mutation {
            "id-number" => {
                object.insert("id".into(), 5.into());
            }
            "id-long" => {
                object.insert("id".into(), "i".repeat(300).into());
            }
            "time-bad" => {
                object.insert("time".into(), "yesterday".into());
            }
            "no-specversion" => {
                object.remove("specversion");
            }
            "other-topic" => {
                object.insert("type".into(), "elsewhere".into());
            }
            "hops-negative" => {
                object.insert("edaflowhops".into(), (-1).into());
            }
            "hops-max" => {
                object.insert("edaflowhops".into(), u32::MAX.into());
            }
            "correlation-null" => {
                object.insert("correlationid".into(), serde_json::Value::Null);
            }
            "many-extensions" => {
                for i in 0..200 {
                    object.insert(format!("ext{i}"), i.into());
                }
            }
            _ => {}
        }
        let mut bytes = event.to_string().into_bytes();
        if mutation == "truncated" {
            bytes.truncate(at.index(bytes.len().max(1)));
        }
        bytes
    })
}

/// A field value: an event (most often), or anything else.
fn value(topic: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => event(topic),
        2 => prop::collection::vec(any::<u8>(), 0..200),
        1 => (100usize..400).prop_map(|n| "[".repeat(n).into_bytes()),
        1 => prop_oneof![Just("-5"), Just("0"), Just("99999999999999999999"), Just("abc")]
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => (1_000_000usize..2_000_000).prop_map(|n| vec![b'q'; n]),
        1 => Just(Vec::new()),
    ]
}

fn field_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => Just(b"e".to_vec()),
        1 => Just(b"r".to_vec()),
        1 => Just(b"os".to_vec()),
        1 => Just(b"oi".to_vec()),
        1 => Just(b"d".to_vec()),
        1 => "[a-z]{0,6}".prop_map(String::into_bytes),
    ]
}

fn fields(topic: &'static str) -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    prop::collection::vec((field_name(), value(topic)), 1..4)
}

/// A schedule member: `seq\njson` as edaflow writes it, or not.
fn member() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (any::<u32>(), event("tasks")).prop_map(|(seq, json)| {
            let mut member = format!("{seq:020}\n").into_bytes();
            member.extend(json);
            member
        }),
        1 => prop::collection::vec(any::<u8>(), 1..100),
        1 => Just(b"\n".to_vec()),
    ]
}

/// A delayed event's member: `seq\ntopic\njson` as edaflow writes it (for `job`), or not.
fn deferred_member() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (any::<u32>(), event("job")).prop_map(|(seq, json)| {
            let mut member = format!("{seq:020}\njob\n").into_bytes();
            member.extend(json);
            member
        }),
        1 => prop::collection::vec(any::<u8>(), 1..100),
        1 => Just(b"1\n".to_vec()),
        // A topic no subscriber could ever read: empty, or not a topic name at all.
        1 => (prop_oneof![Just(""), Just("no such topic"), Just("job..x"), Just("\u{e9}t\u{e9}")],
              event("job"))
            .prop_map(|(topic, json)| {
                let mut member = format!("1\n{topic}\n").into_bytes();
                member.extend(json);
                member
            }),
        1 => (1_000_000usize..1_500_000).prop_map(|n| vec![0xe9; n]),
    ]
}

/// One event as edaflow stores it, nothing else.
fn clean(topic: &'static str) -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    data().prop_map(move |data| {
        let json = event_json(topic, data).to_string().into_bytes();
        vec![(b"e".to_vec(), json)]
    })
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        2 => clean("job").prop_map(|fields| Entry { target: Target::Topic, fields }),
        1 => clean("tasks").prop_map(|fields| Entry { target: Target::Ready, fields }),
        3 => fields("job").prop_map(|fields| Entry { target: Target::Topic, fields }),
        1 => fields("job").prop_map(|fields| Entry { target: Target::Inbox, fields }),
        2 => fields("tasks").prop_map(|fields| Entry { target: Target::Ready, fields }),
        1 => fields("tasks").prop_map(|fields| Entry { target: Target::Back, fields }),
        2 => member().prop_map(|member| Entry {
            target: Target::Schedule,
            fields: vec![(Vec::new(), member)],
        }),
        2 => deferred_member().prop_map(|member| Entry {
            target: Target::Deferred,
            fields: vec![(Vec::new(), member)],
        }),
    ]
}

fn xlen(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(format!("{P}{key}"))
        .query(conn)
        .expect("XLEN")
}

/// Entries delivered and not settled, over every stream a consumer reads.
fn pending(conn: &mut redis::Connection) -> u64 {
    let mut total = 0;
    for (key, group) in [
        ("t:job", "work"),
        ("g:work:inbox", "work"),
        ("q:tasks:ready", "workers"),
        ("q:tasks:back", "workers"),
    ] {
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(format!("{P}{key}"))
            .arg(group)
            .query(conn)
            .expect("XPENDING");
        if let redis::Value::Array(parts) = summary {
            if let Some(redis::Value::Int(n)) = parts.first() {
                total += u64::try_from(*n).unwrap_or(0);
            }
        }
    }
    total
}

/// Stores one entry where it belongs.
fn store(conn: &mut redis::Connection, entry: &Entry) -> redis::RedisResult<()> {
    let key = match entry.target {
        Target::Topic => "t:job",
        Target::Inbox => "g:work:inbox",
        Target::Ready => "q:tasks:ready",
        Target::Back => "q:tasks:back",
        Target::Schedule | Target::Deferred => {
            let (set, wake) = match entry.target {
                Target::Schedule => ("q:tasks:sched", "q:tasks:wake"),
                _ => ("deferred", "deferred:wake"),
            };
            let member = &entry.fields[0].1;
            redis::cmd("ZADD")
                .arg(format!("{P}{set}"))
                .arg(0)
                .arg(member)
                .query::<redis::Value>(conn)?;
            // Wakes the mover, as a commit scheduling something does.
            redis::cmd("XADD")
                .arg(format!("{P}{wake}"))
                .arg("MAXLEN")
                .arg(1)
                .arg("*")
                .arg("w")
                .arg(1)
                .query::<redis::Value>(conn)?;
            return Ok(());
        }
    };
    let mut cmd = redis::cmd("XADD");
    cmd.arg(format!("{P}{key}")).arg("*");
    for (name, value) in &entry.fields {
        cmd.arg(name).arg(value);
    }
    cmd.query::<redis::Value>(conn)?;
    Ok(())
}

fn healthz(addr: SocketAddr) -> common::Reply {
    http(addr, "GET", "/healthz", &[], b"")
}

#[test]
fn every_hostile_stored_entry_ends_handled_or_dead_lettered_and_the_process_lives() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = FlowDir::new();
    dir.write("hostile.toml", FLOW);
    dir.write("seen.rhai", "emit(\"seen\", #{ ok: true });\n");
    let url = server.url();
    // Nothing reads `seen`: it must not be trimmed while it is counted.
    let mut running = Edaflow::new(dir.root())
        .args([
            "run",
            "hostile.toml",
            "--no-watch",
            "--listen",
            "127.0.0.1:0",
            "--broker",
            &url,
            "--unread-retention",
            "0s",
        ])
        .spawn();
    let addr = running.listening_addr(PATIENCE);
    assert_eq!(healthz(addr).status, 200);
    let conn = connect(&url);
    // One ordinary event and item first: the topic is registered (its stream gets the
    // group) and both subscribers are seen to work.
    for (path, body) in [("/topics/job", "{\"n\":1}"), ("/queues/tasks", "{\"n\":2}")] {
        let reply = post_json(addr, path, body);
        assert_eq!(reply.status, 202, "{reply:?}");
    }
    let mut conn = conn;
    let deadline = Instant::now() + PATIENCE;
    while xlen(&mut conn, "t:seen") < 2 {
        assert!(Instant::now() < deadline, "{}", running.dump());
        std::thread::sleep(Duration::from_millis(10));
    }
    let conn = std::cell::RefCell::new(conn);

    let run = AtomicU64::new(0);
    let handled = AtomicU64::new(0);
    let dead = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases: cases(96),
        failure_persistence: None,
        // An entry left pending fails every case after it: shrinking would only wait out
        // the deadline again and again. The failing entry is reported as generated.
        max_shrink_iters: 0,
        ..Config::default()
    });
    let outcome = runner.run(&entry(), |entry| {
        let mut conn = conn.borrow_mut();
        let conn = &mut *conn;
        run.fetch_add(1, Ordering::Relaxed);
        let seen_before = xlen(conn, "t:seen");
        let dead_before = xlen(conn, "dead");
        store(conn, &entry).map_err(|e| TestCaseError::fail(format!("store: {e}")))?;
        // Exactly one outcome, and nothing left pending.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let seen = xlen(conn, "t:seen") - seen_before;
            let died = xlen(conn, "dead") - dead_before;
            prop_assert!(seen + died <= 1, "two outcomes: seen {seen}, dead {died}");
            if seen + died == 1 && pending(conn) == 0 {
                handled.fetch_add(seen, Ordering::Relaxed);
                dead.fetch_add(died, Ordering::Relaxed);
                break;
            }
            prop_assert!(
                Instant::now() < deadline,
                "neither handled nor dead-lettered (pending {})",
                pending(conn)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // A second outcome would show by now.
        std::thread::sleep(Duration::from_millis(5));
        prop_assert_eq!(
            xlen(conn, "t:seen") + xlen(conn, "dead"),
            seen_before + dead_before + 1
        );
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}\n{}", running.dump());
    }
    let mut conn = conn.into_inner();

    // Every dead letter is itself an event edaflow reads back.
    let stored: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{P}dead"))
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("XRANGE");
    for entry in &stored.ids {
        let json: String = entry.get("e").expect("an event field");
        let dead: Event = serde_json::from_str(&json).expect("a readable dead letter");
        assert!(dead.topic.starts_with("dead."), "{}", dead.topic);
        assert!(dead.extensions.contains_key("deadletterreason"));
    }
    assert_eq!(pending(&mut conn), 0);
    assert_eq!(healthz(addr).status, 200, "{}", running.dump());
    let log = running.stderr();
    assert!(!log.contains("panicked"), "{log}");
    eprintln!(
        "hostile stored entries: {} generated cases run: {} handled, {} dead-lettered, 0 pending, alive yes",
        run.load(Ordering::Relaxed),
        handled.load(Ordering::Relaxed),
        dead.load(Ordering::Relaxed),
    );
    running.terminate();
    assert!(running.wait_exit(PATIENCE).success(), "{}", running.dump());
}
