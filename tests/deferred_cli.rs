//! The article's "Deferred Execution" walkthrough and the dead-letter commands, driven
//! through the real `edaflow` binary: `run` on a free port (`--listen 127.0.0.1:0`),
//! requests over a socket, `edaflow dead list|replay|drop` against the running instance,
//! and `edaflow test` on the demo flow.
//!
//! Every child runs with `NO_COLOR`, without the user's `EDAFLOW_*`, and is killed when its
//! guard drops (also when a test panics). Waits poll for a condition with a deadline.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{crate_root, http, run_flow, Edaflow, FlowDir, Running};

const ARTICLE_BODY: &str = r#"{"task_id": 456, "description": "Process data files"}"#;
const ARTICLE_LINE: &str =
    r#"Processing event: {"task_id": 456, "description": "Process data files"}"#;

/// How long a running instance may take to do what is asked of it.
const PATIENCE: Duration = Duration::from_secs(10);

/// How long a short-lived command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(15);

/// Polls `probe` until it gives `Some`, or panics after `within` with the instance's output.
fn wait_until<T>(
    what: &str,
    running: &Running,
    within: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}\n{}", running.dump());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn queue_depth(addr: SocketAddr, queue: &str) -> u64 {
    let reply = http(addr, "GET", &format!("/queues/{queue}"), &[], b"");
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()["depth"].as_u64().expect("depth")
}

/// A miette report as one line: the box-drawing margin removed and wrapped lines joined.
fn unwrapped(report: &str) -> String {
    report
        .split_whitespace()
        .filter(|word| !matches!(*word, "│" | "×"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The entries of `edaflow dead list`: a line starting with the id, then indented lines.
fn entries(stdout: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in stdout.lines() {
        match out.last_mut() {
            Some(entry) if line.starts_with(' ') => {
                entry.push('\n');
                entry.push_str(line);
            }
            _ => out.push(line.to_owned()),
        }
    }
    out
}

/// `edaflow dead ARGS… --url http://ADDR`, run to the end.
fn dead(dir: &Path, addr: SocketAddr, args: &[&str]) -> common::Finished {
    let url = format!("http://{addr}");
    let mut all = vec!["dead"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--url", &url]);
    Edaflow::new(dir).args(all).limit(COMMAND_LIMIT).run()
}

#[test]
fn the_articles_deferred_walkthrough() {
    // flows/deferred.toml exactly, but the worker looks every 2 s instead of every 10 s.
    let demo = std::fs::read_to_string(crate_root().join("flows/deferred.toml"))
        .expect("read flows/deferred.toml");
    assert!(demo.contains("poll = \"10s\""), "the demo polls every 10 s");
    let poll = Duration::from_secs(2);
    let dir = FlowDir::new();
    dir.write(
        "deferred.toml",
        &demo.replacen("poll = \"10s\"", "poll = \"2s\"", 1),
    );

    let running = run_flow(dir.root(), &["deferred.toml"]);
    let addr = running.addr();
    assert_eq!(queue_depth(addr, "tasks"), 0);

    let reply = http(addr, "POST", "/deferred-exec", &[], ARTICLE_BODY.as_bytes());
    assert_eq!(reply.status, 202, "{reply:?}\n{}", running.dump());
    assert!(reply.json()["id"].is_string(), "{reply:?}");
    // The master node moved it into the queue; the worker has not looked yet.
    let waiting = wait_until("the item in the queue", &running, PATIENCE, || {
        let depth = queue_depth(addr, "tasks");
        let printed = !running.stdout_lines().is_empty();
        (depth == 1 || printed).then_some(printed)
    });
    assert!(
        !waiting,
        "handled before the worker's first look\n{}",
        running.dump()
    );

    let (printed_at, line) =
        running.wait_stdout_line("the article's `Processing event:` line", PATIENCE, |line| {
            line.starts_with("Processing event:")
                .then(|| line.to_owned())
        });
    assert_eq!(line, ARTICLE_LINE);
    // The worker's clock starts when the process does, so the first look comes at least
    // one poll interval after the process was started.
    assert!(
        printed_at.duration_since(running.started()) >= poll,
        "printed {:?} after start, before the first poll at {poll:?}\n{}",
        printed_at.duration_since(running.started()),
        running.dump()
    );
    wait_until("the queue to empty", &running, PATIENCE, || {
        (queue_depth(addr, "tasks") == 0).then_some(())
    });
    assert_eq!(
        running.stdout(),
        format!("{ARTICLE_LINE}\n"),
        "one line, once\n{}",
        running.dump()
    );
}

const JOBS_FLOW: &str = r#"
[flow]
name = "jobs"

[producers.api]
kind = "http"

[queues.tasks]

[subscribers.worker]
queue = "tasks"
script = "worker.rhai"
retry = { attempts = 2, backoff = "10ms" }
"#;

const BROKEN_WORKER: &str = "fail(`task ${event.data.task_id} is broken`);\n";
const FIXED_WORKER: &str = "log(`processed task ${event.data.task_id}`);\n";

#[test]
fn dead_letters_are_listed_replayed_and_dropped_from_the_cli() {
    let dir = FlowDir::new();
    dir.write("jobs.toml", JOBS_FLOW);
    dir.write("worker.rhai", BROKEN_WORKER);
    let running = run_flow(dir.root(), &["jobs.toml", "--no-watch"]);
    let addr = running.addr();

    for task in [7, 8] {
        let body = format!(r#"{{"task_id": {task}}}"#);
        let reply = http(addr, "POST", "/queues/tasks", &[], body.as_bytes());
        assert_eq!(reply.status, 202, "{reply:?}");
    }
    let letters = wait_until("two dead letters", &running, PATIENCE, || {
        let list = http(addr, "GET", "/admin/dead", &[], b"").json();
        let list = list.as_array().cloned().unwrap_or_default();
        (list.len() == 2).then_some(list)
    });
    let id_of = |task: i64| -> String {
        letters
            .iter()
            .find(|l| l["data"]["task_id"] == task)
            .and_then(|l| l["id"].as_str())
            .unwrap_or_else(|| panic!("a dead letter for task {task}: {letters:?}"))
            .to_owned()
    };
    let (seven, eight) = (id_of(7), id_of(8));

    // list: id, origin, subscriber, attempts, error and data of each.
    let listed = dead(dir.root(), addr, &["list"]);
    assert_eq!(listed.status.code(), Some(0), "{}", listed.dump());
    for (id, task) in [(&seven, 7), (&eight, 8)] {
        let entry = entries(&listed.stdout)
            .into_iter()
            .find(|entry| entry.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("no entry for {id}\n{}", listed.dump()));
        assert!(entry.contains("queue tasks"), "{}", listed.dump());
        assert!(
            entry.contains("by worker after 2 attempt(s)"),
            "{}",
            listed.dump()
        );
        assert!(
            entry.contains(&format!("error: task {task} is broken")),
            "{}",
            listed.dump()
        );
        assert!(
            entry.contains(&format!("data:  {{\"task_id\": {task}}}")),
            "{}",
            listed.dump()
        );
    }
    assert!(
        listed.stdout.trim_end().ends_with("2 dead letter(s)"),
        "{}",
        listed.dump()
    );
    let elsewhere = dead(dir.root(), addr, &["list", "orders.*"]);
    assert_eq!(elsewhere.status.code(), Some(0), "{}", elsewhere.dump());
    assert_eq!(
        elsewhere.stdout,
        "no dead letters\n",
        "{}",
        elsewhere.dump()
    );
    let as_json = dead(dir.root(), addr, &["list", "tasks", "--json"]);
    assert_eq!(as_json.stdout.lines().count(), 2, "{}", as_json.dump());

    // drop with nothing selected is refused, and drops nothing.
    let refused = dead(dir.root(), addr, &["drop"]);
    assert_ne!(refused.status.code(), Some(0), "{}", refused.dump());
    assert!(
        unwrapped(&refused.stderr)
            .contains("say which dead letters to drop: an origin, ids, or all"),
        "{}",
        refused.dump()
    );
    assert_eq!(
        http(addr, "GET", "/admin/dead", &[], b"")
            .json()
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // replay with nothing selected is refused too, and replays nothing.
    let refused = dead(dir.root(), addr, &["replay"]);
    assert_ne!(refused.status.code(), Some(0), "{}", refused.dump());
    assert!(
        unwrapped(&refused.stderr)
            .contains("say which dead letters to replay: an origin, ids, or all"),
        "{}",
        refused.dump()
    );
    assert_eq!(
        http(addr, "GET", "/admin/dead", &[], b"")
            .json()
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // Fix the worker, reload, and replay task 7: it is handled this time.
    dir.write("worker.rhai", FIXED_WORKER);
    let reload = http(addr, "POST", "/admin/reload", &[], b"");
    assert_eq!(reload.status, 200, "{reload:?}\n{}", running.dump());
    let replayed = dead(dir.root(), addr, &["replay", "--id", &seven]);
    assert_eq!(replayed.status.code(), Some(0), "{}", replayed.dump());
    assert_eq!(replayed.stdout, "replayed 1\n", "{}", replayed.dump());
    running.wait_stderr_line("the replayed task to be processed", PATIENCE, |line| {
        line.contains("processed task 7").then_some(())
    });
    let listed = dead(dir.root(), addr, &["list"]);
    assert!(listed.stdout.contains(&eight), "{}", listed.dump());
    assert!(!listed.stdout.contains(&seven), "{}", listed.dump());
    assert!(
        listed.stdout.trim_end().ends_with("1 dead letter(s)"),
        "{}",
        listed.dump()
    );

    // replay --all takes what is left: task 8, handled this time.
    let replayed = dead(dir.root(), addr, &["replay", "--all"]);
    assert_eq!(replayed.status.code(), Some(0), "{}", replayed.dump());
    assert_eq!(replayed.stdout, "replayed 1\n", "{}", replayed.dump());
    running.wait_stderr_line("the replayed task 8 to be processed", PATIENCE, |line| {
        line.contains("processed task 8").then_some(())
    });

    // A new dead letter; drop by origin empties the store.
    dir.write("worker.rhai", BROKEN_WORKER);
    let reload = http(addr, "POST", "/admin/reload", &[], b"");
    assert_eq!(reload.status, 200, "{reload:?}\n{}", running.dump());
    let reply = http(addr, "POST", "/queues/tasks", &[], br#"{"task_id": 9}"#);
    assert_eq!(reply.status, 202, "{reply:?}");
    wait_until("a dead letter for task 9", &running, PATIENCE, || {
        let list = http(addr, "GET", "/admin/dead", &[], b"").json();
        (list.as_array().map(Vec::len) == Some(1)).then_some(())
    });
    let dropped = dead(dir.root(), addr, &["drop", "tasks"]);
    assert_eq!(dropped.status.code(), Some(0), "{}", dropped.dump());
    assert_eq!(dropped.stdout, "dropped 1\n", "{}", dropped.dump());
    let listed = dead(dir.root(), addr, &["list"]);
    assert_eq!(listed.stdout, "no dead letters\n", "{}", listed.dump());
    let none = dead(dir.root(), addr, &["drop", "--all"]);
    assert_eq!(none.stdout, "dropped 0\n", "{}", none.dump());
    assert!(
        !running.stderr().contains("processed task 9"),
        "task 9 was never replayed\n{}",
        running.dump()
    );
}

#[test]
fn the_deferred_demo_passes_edaflow_test() {
    let finished = Edaflow::new(crate_root())
        .args(["test", "flows/deferred.toml"])
        .limit(COMMAND_LIMIT)
        .run();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.dump());
    assert!(
        finished
            .stdout
            .contains("test a task waits for the worker's next look at the queue ... ok"),
        "{}",
        finished.dump()
    );
    assert!(
        finished
            .stdout
            .contains("flow test result: ok. 1 passed; 0 failed"),
        "{}",
        finished.dump()
    );
}

#[test]
fn the_deferred_demo_validates() {
    let finished = Edaflow::new(crate_root())
        .args(["validate", "flows/deferred.toml"])
        .limit(COMMAND_LIMIT)
        .run();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.dump());
    assert!(
        finished.stdout.contains("1 queue(s), 1 relay(s)"),
        "{}",
        finished.dump()
    );
}
