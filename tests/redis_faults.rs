//! Redis failing under a running `edaflow run` (a redis-server each test starts itself):
//! unreachable (503, backoff, one warning, resume), killed and restarted with AOF under
//! load, stalled with SIGSTOP under load, a process stopped with SIGTERM under load, TLS
//! with a private CA and a password that never shows, and the probes (`/readyz` follows
//! Redis, `/livez` never does). Every load test counts ids: each event answered 202 is
//! handled, and no emitted event is duplicated.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::load::{self, Load};
use common::redis::{connect, counts_of_n, run_on, RedisServer, ServerOptions, TlsFiles};
use common::{http, post_json, Edaflow, FlowDir, Running};

const PATIENCE: Duration = Duration::from_secs(15);

const FLOW: &str = r#"
[flow]
name = "faults"

[producers.api]
kind = "http"
listen = "127.0.0.1:0"

[subscribers.work]
topic = "job"
script = "work.rhai"
emits = ["done"]
concurrency = 2
"#;

/// A handler doing `spin` loop iterations of work per event, so that events are in flight
/// when the fault strikes.
fn flow_dir(spin: u32) -> FlowDir {
    let dir = FlowDir::new();
    dir.write("faults.toml", FLOW);
    dir.write(
        "work.rhai",
        &format!(
            "let x = 0;\nfor i in 0..{spin} {{ x += i; }}\nlog(`worked ${{event.data.n}}`);\nemit(\"done\", #{{ n: event.data.n }});\n"
        ),
    );
    dir
}

fn edaflow(dir: &FlowDir, url: &str, extra: &[&str]) -> Edaflow {
    // The tests count what was emitted on `done`, which nothing reads: it must not be
    // trimmed meanwhile, however slow the machine.
    run_on(dir, "faults.toml", url)
        .args(["--unread-retention", "0s"])
        .args(extra.iter().copied())
}

fn listening(running: &mut Running) -> SocketAddr {
    running.listening_addr(PATIENCE)
}

fn start(dir: &FlowDir, url: &str, extra: &[&str]) -> (Running, SocketAddr) {
    let mut running = edaflow(dir, url, extra).spawn();
    let addr = listening(&mut running);
    (running, addr)
}

fn post(addr: SocketAddr, n: u64) -> common::Reply {
    post_json(addr, "/topics/job", format!("{{\"n\":{n}}}"))
}

/// How many times each `n` was emitted on `done` (read from its stream).
fn done_counts(url: &str) -> BTreeMap<u64, usize> {
    counts_of_n(&mut connect(url), "edaflow:{faults}:t:done")
}

/// Waits until every acknowledged id was emitted on `done`, then returns the counts.
fn wait_handled(url: &str, acked: &BTreeSet<u64>) -> BTreeMap<u64, usize> {
    load::wait_handled(acked, PATIENCE, || done_counts(url))
}

/// Every acknowledged id handled, and no id emitted twice.
fn assert_complete(counts: &BTreeMap<u64, usize>, acked: &BTreeSet<u64>, what: &str) {
    let missing: Vec<&u64> = acked.iter().filter(|n| !counts.contains_key(n)).collect();
    let doubled: Vec<(&u64, &usize)> = counts.iter().filter(|(_, c)| **c > 1).collect();
    // The tally the closing notes quote (`cargo test -- --nocapture`).
    eprintln!(
        "{what}: {} published (answered 202), {} handled, {} duplicated, {} lost",
        acked.len(),
        counts.keys().filter(|n| acked.contains(n)).count(),
        doubled.len(),
        missing.len()
    );
    assert!(
        missing.is_empty() && doubled.is_empty(),
        "{what}: {} acknowledged, {} handled; lost {missing:?}; duplicated {doubled:?}",
        acked.len(),
        counts.len()
    );
}

fn healthz(addr: SocketAddr) -> common::Reply {
    http(addr, "GET", "/healthz", &[], b"")
}

/// A diagnostic as one line (miette wraps it and draws a margin).
fn flat(text: &str) -> String {
    text.replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn lines_with(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn unreachable_redis_answers_503_backs_off_and_work_resumes() {
    let Some(mut server) = RedisServer::start_with(true) else {
        return;
    };
    let dir = flow_dir(50_000);
    let url = server.url();
    // Two runtime threads, so that ingest goes on while the workers spin (with Redis on
    // loopback a 2-core machine gets one by default, and one thread takes turns: each
    // event is handled before the next request is read, and nothing is left waiting).
    // A read in the air when Redis goes away may have taken entries whose reply never
    // arrives: they stay pending with this process and are claimed after `--claim-idle`
    // (30 s by default), so the test keeps it short.
    let (mut running, addr) = {
        let mut running = edaflow(&dir, &url, &["--threads", "2", "--claim-idle", "2s"])
            .env(
                "EDAFLOW_LOG",
                "info,edaflow::broker::redis=debug,edaflow::runtime::subscriber=debug",
            )
            .spawn();
        let addr = listening(&mut running);
        (running, addr)
    };
    assert_eq!(healthz(addr).status, 200);
    // A burst the two workers cannot keep up with: some are still waiting or in flight
    // when Redis goes away.
    let mut acked = BTreeSet::new();
    for n in 0..120 {
        let reply = post(addr, n);
        assert_eq!(reply.status, 202, "{reply:?}");
        acked.insert(n);
    }
    let before = done_counts(&url).len();
    server.kill();
    assert!(
        before < acked.len(),
        "the handlers kept up ({before} of {}): nothing was pending at the outage",
        acked.len()
    );
    let down = Instant::now();

    // Ingest refuses, with Retry-After; health says why.
    let refused = post(addr, 10_000);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.header("Retry-After"), Some("1"));
    assert!(refused.body.contains("\"unavailable\""), "{}", refused.body);
    let health = healthz(addr);
    assert_eq!(health.status, 503, "{health:?}");
    assert!(
        health.body.contains("\"status\":\"down\"") && health.body.contains("redis unreachable"),
        "{}",
        health.body
    );

    // An outage of a few seconds: each worker, waiting for an event (its consumer) or
    // committing one it handled, backs off rather than spins.
    while down.elapsed() < Duration::from_secs(3) {
        assert_eq!(post(addr, 10_001).status, 503);
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = running.stderr();
    let warnings = lines_with(&log, "redis unreachable: ingest answers 503");
    assert_eq!(warnings, 1, "one warning per outage\n{log}");
    assert_eq!(lines_with(&log, "publish failed"), 0, "{log}");
    let mut pauses: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in log.lines() {
        let key = if line.contains("consumer retry") {
            "consumer="
        } else if line.contains("commit failed; retrying") {
            "worker="
        } else {
            continue;
        };
        let who = line
            .split_once(key)
            .and_then(|(_, rest)| rest.split(['}', ' ', ':']).next())
            .map(|id| format!("{key}{id}"))
            .unwrap_or_default();
        let ms = line
            .split_once("retry_in_ms=")
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .expect("retry_in_ms");
        pauses.entry(who).or_default().push(ms);
    }
    assert_eq!(pauses.len(), 2, "both workers retry: {pauses:?}\n{log}");
    for (who, pauses) in &pauses {
        assert!(
            pauses.len() <= 15,
            "{who} spins: {} retries in 3 s: {pauses:?}",
            pauses.len()
        );
        assert!(pauses.iter().all(|ms| *ms <= 2000), "capped: {pauses:?}");
        if pauses.len() >= 3 {
            assert!(pauses.last() > pauses.first(), "backs off: {pauses:?}");
        }
    }

    // Redis comes back (same port, AOF): new events are accepted and everything is handled,
    // the events waiting or in flight at the outage included.
    server.start_again();
    let deadline = Instant::now() + PATIENCE;
    let mut n = 1_000;
    loop {
        let reply = post(addr, n);
        if reply.status == 202 {
            acked.insert(n);
            break;
        }
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(Instant::now() < deadline, "ingest never recovered");
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    for n in 2_000..2_020 {
        let reply = post(addr, n);
        assert_eq!(reply.status, 202, "{reply:?}");
        acked.insert(n);
    }
    let counts = wait_handled(&url, &acked);
    assert_complete(&counts, &acked, "after Redis came back");
    let health = healthz(addr);
    assert_eq!(health.status, 200, "{health:?}");
    assert!(
        health.body.contains("\"broker\":{\"status\":\"up\""),
        "{}",
        health.body
    );
    running.wait_stderr("the end of the outage logged", PATIENCE, |log| {
        log.contains("redis reachable again")
    });
    running.terminate();
    assert!(running.wait_exit(PATIENCE).success(), "{}", running.dump());
}

#[test]
fn redis_down_makes_readyz_503_while_livez_stays_200() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let dir = flow_dir(1);
    let (mut running, addr) = start(&dir, &server.url(), &[]);
    let probe = |path: &str| http(addr, "GET", path, &[], b"");
    running.wait("/readyz 200", PATIENCE, |_| probe("/readyz").status == 200);
    assert_eq!(probe("/livez").status, 200);

    server.kill();
    running.wait("/readyz 503 with Redis down", PATIENCE, |_| {
        let live = probe("/livez");
        assert_eq!(live.status, 200, "liveness followed the broker: {live:?}");
        probe("/readyz").status == 503
    });
    let ready = probe("/readyz");
    assert_eq!(ready.status, 503, "{ready:?}");
    assert_eq!(ready.header("Retry-After"), Some("1"));
    let body = ready.json();
    assert_eq!(body["status"], "unavailable", "{body:#}");
    assert_eq!(body["broker"]["status"], "down", "{body:#}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("redis unreachable")),
        "{body:#}"
    );
    assert_eq!(probe("/livez").status, 200);

    server.start_again();
    running.wait("/readyz 200 with Redis back", PATIENCE, |_| {
        probe("/readyz").status == 200
    });
}

#[test]
fn starting_without_redis_fails_at_once_with_a_clear_error() {
    // A port nothing listens on.
    let port = common::free_port();
    let dir = flow_dir(1);
    let url = format!("redis://:hunter2-secret@127.0.0.1:{port}");
    let started = Instant::now();
    let finished = edaflow(&dir, &url, &[]).run().code(1);
    let took = started.elapsed();
    let output = format!("{}{}", finished.stdout, finished.stderr);
    assert!(!output.contains("hunter2-secret"), "{output}");
    assert!(
        flat(&finished.stderr).contains(&format!(
            "cannot connect to Redis at `redis://:***@127.0.0.1:{port}`: Connection refused"
        )),
        "{output}"
    );
    assert!(took < Duration::from_secs(10), "gave up after {took:?}");
}

#[test]
fn redis_killed_and_restarted_with_aof_under_load_loses_no_acknowledged_event() {
    let Some(mut server) = RedisServer::start_with(true) else {
        return;
    };
    let dir = flow_dir(2_000);
    let url = server.url();
    let (running, addr) = start(&dir, &url, &["--claim-idle", "1s"]);
    let load = Load::start(vec![addr], PATIENCE, post);
    load.wait_acked(100, "before the restart");
    server.restart();
    let at_restart = load.acked();
    load.wait_acked(at_restart + 100, "after the restart");
    let (acked, refused) = load.finish();
    let counts = wait_handled(&url, &acked);
    eprintln!(
        "restart under load: {} acknowledged ({at_restart} before the restart), {refused} refused, {} handled",
        acked.len(),
        counts.len()
    );
    assert_complete(&counts, &acked, "kill -9 and restart of redis-server (AOF)");
    assert_eq!(healthz(addr).status, 200, "{}", running.dump());
}

#[test]
fn redis_stalled_by_sigstop_under_load_loses_and_duplicates_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = flow_dir(20_000);
    let url = server.url();
    // A response timeout below the stall, so that commands time out mid-flight (and some
    // of them still run once Redis resumes).
    let (mut running, addr) = {
        let mut running = edaflow(
            &dir,
            &url,
            &["--claim-idle", "1s", "--redis-timeout", "500ms"],
        )
        .env("EDAFLOW_LOG", "info,edaflow::broker::redis=debug")
        .spawn();
        let addr = listening(&mut running);
        (running, addr)
    };
    let load = Load::start(vec![addr], PATIENCE, post);
    load.wait_acked(100, "before the stall");
    // A burst on top, so that both workers are busy handling when Redis stops: their
    // commits go out to a stalled server.
    let mut burst = BTreeSet::new();
    for n in 100_000..100_100 {
        let reply = post(addr, n);
        assert_eq!(reply.status, 202, "{reply:?}");
        burst.insert(n);
    }
    server.signal("STOP");
    std::thread::sleep(Duration::from_secs(2));
    server.signal("CONT");
    let at_resume = load.acked();
    load.wait_acked(at_resume + 100, "after the stall");
    let (mut acked, refused) = load.finish();
    acked.extend(burst);
    let counts = wait_handled(&url, &acked);
    let log = running.stderr();
    let settled = lines_with(&log, "commit skipped");
    eprintln!(
        "stall under load: {} acknowledged, {refused} refused, {} handled, {settled} retried commits found settled already",
        acked.len(),
        counts.len(),
    );
    assert_complete(&counts, &acked, "SIGSTOP/SIGCONT of redis-server");
    assert!(
        log.contains("redis unreachable"),
        "the stall went unnoticed (no command timed out)\n{log}"
    );
    // Whether a commit was caught mid-flight by the stall depends on timing, so it is not
    // asserted here (the count above says whether it happened this run); the guard that
    // makes such a retry apply nothing is checked deterministically by the broker
    // contract (`a_second_commit_of_one_delivery_applies_nothing`).
    assert_eq!(healthz(addr).status, 200);
    running.terminate();
    assert!(running.wait_exit(PATIENCE).success(), "{}", running.dump());
}

#[test]
fn sigterm_under_load_finishes_in_flight_work_and_leaves_the_rest_to_another_process() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = flow_dir(20_000);
    let url = server.url();
    let claim = ["--claim-idle", "1s"];
    let (mut stopping, _) = start(&dir, &url, &claim);
    let (survivor, addr) = start(&dir, &url, &claim);
    stopping.wait_catching_sigterm(PATIENCE);
    let load = Load::start(vec![addr], PATIENCE, post);
    load.wait_acked(50, "before SIGTERM");
    stopping.wait_stderr("the stopping process taking part", PATIENCE, |log| {
        log.contains("worked ")
    });
    stopping.terminate();
    let status = stopping.wait_exit(PATIENCE);
    assert!(status.success(), "{}", stopping.dump());
    let log = stopping.stderr();
    assert!(log.contains("stopped"), "{log}");
    let at_exit = load.acked();
    load.wait_acked(at_exit + 100, "after SIGTERM");
    let (acked, _) = load.finish();
    let counts = wait_handled(&url, &acked);
    assert_complete(&counts, &acked, "SIGTERM of one of two processes");
    let by_stopped = lines_with(&log, "worked ");
    let by_survivor = lines_with(&survivor.stderr(), "worked ");
    assert!(
        by_stopped > 0 && by_survivor > 0,
        "{by_stopped} and {by_survivor}"
    );
}

/// A CA and a server certificate for 127.0.0.1, made with the `openssl` CLI, or `None`
/// (after saying so) when it is not installed outside CI.
fn certificates(dir: &std::path::Path) -> Option<TlsFiles> {
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "openssl is not installed; CI must install it"
        );
        eprintln!("SKIPPED: openssl is not installed; the TLS test did not run");
        return None;
    }
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write ext.cnf");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=edaflow test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    Some(TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        ca: dir.join("ca.pem"),
    })
}

#[test]
fn tls_with_a_private_ca_and_a_password_that_never_shows() {
    let certs_dir = tempfile::tempdir().expect("a temp dir");
    let Some(tls) = certificates(certs_dir.path()) else {
        return;
    };
    const PASSWORD: &str = "pw-Zq81-never-shown";
    let Some(server) = RedisServer::start_custom(ServerOptions {
        password: Some(PASSWORD.to_owned()),
        tls: Some(tls.clone()),
        ..ServerOptions::default()
    }) else {
        return;
    };
    let dir = flow_dir(1);
    let port = server.port();
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{port}");
    let ca = tls.ca.to_string_lossy().into_owned();

    // The private CA (from the environment) and the password: events flow, and nothing
    // the process writes holds the password, even at debug level.
    let mut running = edaflow(&dir, &url, &[])
        .env("EDAFLOW_REDIS_CA", &ca)
        .env("EDAFLOW_LOG", "debug")
        .env("RUST_LOG", "debug")
        .spawn();
    let addr = listening(&mut running);
    for n in 0..5 {
        let reply = post(addr, n);
        assert_eq!(reply.status, 202, "{reply:?}");
    }
    running.wait_stderr("the events handled over TLS", PATIENCE, |log| {
        (0..5).all(|n| log.contains(&format!("worked {n}")))
    });
    assert_eq!(healthz(addr).status, 200);
    running.terminate();
    assert!(running.wait_exit(PATIENCE).success(), "{}", running.dump());
    let everything = format!("{}{}", running.stdout(), running.stderr());
    assert!(
        everything.contains(&format!("rediss://:***@127.0.0.1:{port}")),
        "{everything}"
    );
    assert!(
        !everything.contains(PASSWORD),
        "the password shows:\n{everything}"
    );

    // A wrong password: a clear error that does not quote it.
    let wrong = format!("rediss://:wrong-pw-Xy77@127.0.0.1:{port}");
    let finished = edaflow(&dir, &wrong, &["--redis-ca", &ca])
        .env("EDAFLOW_LOG", "debug")
        .run()
        .code(1);
    let output = format!("{}{}", finished.stdout, finished.stderr);
    assert!(!output.contains("wrong-pw-Xy77"), "{output}");
    assert!(
        flat(&finished.stderr).contains(&format!(
            "cannot connect to Redis at `rediss://:***@127.0.0.1:{port}`: Password authentication failed"
        )),
        "{output}"
    );

    // Without the CA, the server's certificate is not trusted (system roots only).
    let finished = edaflow(&dir, &url, &[]).run().code(1);
    let output = format!("{}{}", finished.stdout, finished.stderr);
    assert!(!output.contains(PASSWORD), "{output}");
    let said = flat(&finished.stderr);
    assert!(
        said.contains("cannot connect to Redis at") && said.contains("UnknownIssuer"),
        "says why: {output}"
    );

    // `#insecure` skips verification (tests only).
    let insecure = format!("{url}/#insecure");
    let (mut running, addr) = start(&dir, &insecure, &[]);
    assert_eq!(post(addr, 100).status, 202);
    running.wait_stderr("an event handled without verification", PATIENCE, |log| {
        log.contains("worked 100")
    });
    running.terminate();
    assert!(running.wait_exit(PATIENCE).success(), "{}", running.dump());
    let everything = format!("{}{}", running.stdout(), running.stderr());
    assert!(!everything.contains(PASSWORD), "{everything}");
}

#[test]
fn a_password_in_a_plain_url_works_and_never_shows() {
    const PASSWORD: &str = "plain-pw-K2j9";
    let Some(server) = RedisServer::start_custom(ServerOptions {
        password: Some(PASSWORD.to_owned()),
        ..ServerOptions::default()
    }) else {
        return;
    };
    let dir = flow_dir(1);
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", server.port());
    let mut running = edaflow(&dir, &url, &[]).env("EDAFLOW_LOG", "debug").spawn();
    let addr = listening(&mut running);
    let reply = post(addr, 7);
    assert_eq!(reply.status, 202, "{reply:?}");
    let counts = wait_handled(&url, &BTreeSet::from([7]));
    assert_complete(&counts, &BTreeSet::from([7]), "with a password");
    // The server goes away: the outage is logged without the password either.
    drop(server);
    running.wait_stderr("the outage logged", PATIENCE, |log| {
        log.contains("redis unreachable")
    });
    running.terminate();
    assert!(running.wait_exit(PATIENCE).success(), "{}", running.dump());
    let everything = format!("{}{}", running.stdout(), running.stderr());
    assert!(!everything.contains(PASSWORD), "{everything}");
}
