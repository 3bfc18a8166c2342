//! What the Redis tests share: a `redis-server` of their own on a free loopback port in a
//! temp dir (never the one on 6379), killed when the guard is dropped, or a three-master
//! cluster of their own; a broker on either; reading back which events a stream holds; and
//! the `Clock` the generic contract checks read time through (paused tokio time for the
//! memory broker, real time with a tolerance for Redis, which keeps its own clock).
//!
//! Without `redis-server` installed the tests say so and pass, except under CI (`CI` set),
//! where a missing server is a failure: CI installs it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edaflow::broker::{RedisBroker, RedisOptions, RedisUrl};

use super::{free_port, Edaflow, FlowDir};

/// A `redis-server` this test started. Dropping it kills the server and removes its dir.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    appendonly: bool,
    options: ServerOptions,
}

/// Extra settings for `RedisServer::start_custom`.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    pub appendonly: bool,
    /// `--requirepass`.
    pub password: Option<String>,
    /// Serve TLS only (`--port 0 --tls-port PORT`) with these PEM files.
    pub tls: Option<TlsFiles>,
}

/// The PEM files of a TLS server.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
}

impl RedisServer {
    /// Starts a server without persistence, or returns `None` (after saying why) when
    /// `redis-server` is not installed outside CI.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with(false)
    }

    /// As `start`, with `appendonly yes` when `appendonly` (for restart tests).
    pub fn start_with(appendonly: bool) -> Option<RedisServer> {
        RedisServer::start_custom(ServerOptions {
            appendonly,
            ..ServerOptions::default()
        })
    }

    /// As `start`, with a password and/or TLS (see `ServerOptions`).
    pub fn start_custom(options: ServerOptions) -> Option<RedisServer> {
        let appendonly = options.appendonly;
        if !installed("the Redis tests") {
            return None;
        }
        let dir = tempfile::tempdir().expect("a temp dir for redis-server");
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn(dir.path(), port, &options);
            if wait_ready(&mut child, port, &options, Duration::from_secs(5)) {
                return Some(RedisServer {
                    child,
                    port,
                    dir,
                    appendonly,
                    options,
                });
            }
            // Another process took the port first: try another.
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start on a free port");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and dir.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Kills the server (SIGKILL) and waits until it is gone; `start_again` brings it back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and dir, after `kill`.
    pub fn start_again(&mut self) {
        self.options.appendonly = self.appendonly;
        self.child = spawn(self.dir.path(), self.port, &self.options);
        assert!(
            wait_ready(
                &mut self.child,
                self.port,
                &self.options,
                Duration::from_secs(10)
            ),
            "redis-server did not come back"
        );
    }

    /// Sends a signal to the server (`STOP`, `CONT`, ...) through `kill`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} redis-server");
    }

    /// Sends one command in RESP and returns the raw reply (for test assertions).
    pub fn command(&self, args: &[&str]) -> String {
        resp(self.port, self.options.password.as_deref(), args)
    }

    /// A broker on this server, in its own namespace.
    pub async fn broker(&self, options: RedisOptions) -> RedisBroker {
        let url = RedisUrl::parse(&self.url()).expect("a valid url");
        RedisBroker::connect(&url, options)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url()))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &std::path::Path, port: u16, options: &ServerOptions) -> Child {
    let mut command = Command::new("redis-server");
    match &options.tls {
        None => command.args(["--port", &port.to_string()]),
        Some(tls) => command
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&tls.cert)
            .arg("--tls-key-file")
            .arg(&tls.key)
            .arg("--tls-ca-cert-file")
            .arg(&tls.ca)
            .args(["--tls-auth-clients", "no"]),
    };
    if let Some(password) = &options.password {
        command.args(["--requirepass", password]);
    }
    command
        .args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            if options.appendonly { "yes" } else { "no" },
            // Every write on disk before Redis answers: a test that kills Redis (SIGKILL)
            // counts on what was acknowledged to survive, which `everysec` does not promise
            // while a slow fsync holds writes back.
            "--appendfsync",
            "always",
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server")
}

fn wait_ready(child: &mut Child, port: u16, options: &ServerOptions, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if options.tls.is_some() {
            // Listening is as ready as the test can tell without speaking TLS.
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 16];
            if stream.write_all(b"PING\r\n").is_ok()
                && stream.read(&mut buf).is_ok_and(|n| {
                    buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH")
                })
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// How the generic checks read and move time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    paused: bool,
    divisor: u32,
    slack: Duration,
}

impl Clock {
    /// Paused tokio time: `advance` is exact and free, timing assertions are exact.
    pub const PAUSED: Clock = Clock {
        paused: true,
        divisor: 1,
        slack: Duration::ZERO,
    };

    /// Real time: durations of the checks divided by `divisor`, and timing assertions
    /// allowed to be late (never early) by `slack`.
    pub const fn real(divisor: u32, slack: Duration) -> Clock {
        Clock {
            paused: false,
            divisor,
            slack,
        }
    }

    pub fn is_paused(self) -> bool {
        self.paused
    }

    /// A duration of the check, scaled.
    pub fn d(self, d: Duration) -> Duration {
        d / self.divisor
    }

    /// Milliseconds of the check, scaled.
    pub fn ms(self, ms: u64) -> u64 {
        ms / u64::from(self.divisor)
    }

    /// Lets `d` pass.
    pub async fn advance(self, d: Duration) {
        if self.paused {
            tokio::time::advance(d).await;
        } else {
            tokio::time::sleep(d).await;
        }
    }

    /// How far before a due time "not yet" is checked.
    pub fn early(self) -> Duration {
        if self.paused {
            Duration::from_millis(1)
        } else {
            self.slack
        }
    }

    /// How late something may happen: `exact` on paused time, the slack on real time.
    pub fn late(self, exact: Duration) -> Duration {
        if self.paused {
            exact
        } else {
            self.slack
        }
    }

    /// On real time, gives background work (tap threads) a moment to catch up.
    pub async fn settle(self) {
        if !self.paused {
            tokio::time::sleep(self.slack).await;
        }
    }

    /// Asserts that something measured at `actual` happened at the scaled `expected_ms`:
    /// exactly on paused time, not early and at most `slack` late on real time.
    pub fn assert_at(self, actual: Duration, expected_ms: u64, what: &str) {
        let expected = Duration::from_millis(self.ms(expected_ms));
        if self.paused {
            assert_eq!(actual, expected, "{what}");
        } else {
            assert!(
                actual + Duration::from_millis(2) >= expected && actual <= expected + self.slack,
                "{what}: at {actual:?}, expected {expected:?} (+{:?})",
                self.slack
            );
        }
    }

    /// Asserts a "ms until due" figure: exact on paused time; on real time at most the
    /// scaled `expected_ms` and not more than `slack` below it.
    pub fn assert_remaining(self, actual: Option<u64>, expected_ms: u64, what: &str) {
        let expected = self.ms(expected_ms);
        if self.paused {
            assert_eq!(actual, Some(expected), "{what}");
        } else {
            let actual = actual.unwrap_or_else(|| panic!("{what}: nothing due later"));
            let slack = u64::try_from(self.slack.as_millis()).unwrap_or(u64::MAX);
            assert!(
                // +2: the server reads its clock in whole ms and rounds due times up.
                actual <= expected + 2 && actual + slack >= expected,
                "{what}: {actual} ms, expected {expected} ms (-{slack})"
            );
        }
    }
}

/// A three-master Redis Cluster this test started, on free loopback ports in temp dirs.
///
/// Each `redis-server` runs under a small `sh` watchdog that reads the test's end of a pipe:
/// dropping the cluster closes the pipe, and so does the end of the test process however
/// it ends, and either way the watchdog kills its server. That makes a cluster shared by
/// every test of a binary (`shared()`, kept in a static that is never dropped) as clean
/// as one per test.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    dir: tempfile::TempDir,
}

struct ClusterNode {
    /// The watchdog shell; it exits when its server does.
    watchdog: Child,
    /// Closing it tells the watchdog to kill the server.
    pipe: Option<std::process::ChildStdin>,
    port: u16,
}

/// Runs `redis-server "$@"`, kills it (SIGKILL) once stdin reaches end of file, and exits
/// when the server does.
const WATCHDOG: &str = r#"exec 3<&0
redis-server "$@" </dev/null >/dev/null 2>&1 &
server=$!
(read line <&3; kill -9 "$server" 2>/dev/null) </dev/null &
guard=$!
exec 3<&-
wait "$server"
kill "$guard" 2>/dev/null
"#;

impl RedisCluster {
    /// Starts three masters and joins them (`redis-cli --cluster create`), waiting until
    /// every node says `cluster_state:ok`; `None` (after saying why) when `redis-server`
    /// is not installed outside CI.
    pub fn start() -> Option<RedisCluster> {
        RedisCluster::start_with(0)
    }

    /// Three masters with `replicas` replicas each (`--cluster-replicas`), so a killed
    /// master fails over to its replica (after the 2 s node timeout).
    pub fn start_with(replicas: usize) -> Option<RedisCluster> {
        if !installed("the Redis Cluster tests") {
            return None;
        }
        let dir = tempfile::tempdir().expect("a temp dir for the cluster");
        let mut nodes = Vec::new();
        for i in 0..3 * (1 + replicas) {
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).expect("a node dir");
            nodes.push(start_node(&node_dir));
        }
        let cluster = RedisCluster { nodes, dir };
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in cluster.ports() {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let created = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        cluster.wait_ok(Duration::from_secs(20));
        if replicas > 0 {
            cluster.wait_replicas_linked(Duration::from_secs(20));
        }
        Some(cluster)
    }

    /// Waits until every replica's link to its master is up (a replica that never synced
    /// does not take over when its master dies).
    fn wait_replicas_linked(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let infos: Vec<String> = self
                .ports()
                .into_iter()
                .map(|p| resp(p, None, &["INFO", "replication"]))
                .collect();
            let replicas = infos.iter().filter(|i| i.contains("role:slave")).count();
            let linked = infos
                .iter()
                .filter(|i| i.contains("master_link_status:up"))
                .count();
            if replicas + 3 == self.nodes.len() && linked == replicas {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replicas are not linked after {within:?}: {infos:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One cluster for every test of this binary (each test uses its own namespace); see
    /// the type's docs for how it stops.
    pub fn shared() -> Option<&'static RedisCluster> {
        static SHARED: std::sync::OnceLock<Option<RedisCluster>> = std::sync::OnceLock::new();
        SHARED.get_or_init(RedisCluster::start).as_ref()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Kills the node on `port` with SIGKILL (through its watchdog) and waits until it is
    /// gone.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on {port}"));
        drop(node.pipe.take());
        let _ = node.watchdog.wait();
    }

    /// The ports of the nodes still running.
    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.pipe.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// Waits until a live node says `cluster_state:ok` and names a master other than
    /// `old` for `slot`; returns the new master's port.
    pub fn wait_failover(&self, slot: u16, old: u16, within: Duration) -> u16 {
        let deadline = Instant::now() + within;
        loop {
            let asked = self.live_ports()[0];
            let ok = resp(asked, None, &["CLUSTER", "INFO"]).contains("cluster_state:ok");
            if ok {
                match self.try_master_of(slot) {
                    Ok(now) if now != old => return now,
                    _ => {}
                }
            }
            assert!(
                Instant::now() < deadline,
                "slot {slot} did not fail over from {old} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:PORT` of the first node: a seed, not necessarily the master of a
    /// given namespace.
    pub fn seed_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[0].port)
    }

    /// Every node as a seed: `redis://127.0.0.1:P1,127.0.0.1:P2,…`, so a process finds the
    /// cluster whichever node is down.
    pub fn seeds_url(&self) -> String {
        let seeds: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis://{}", seeds.join(","))
    }

    /// Sends one command to the node on `port` and returns the raw reply.
    pub fn command(&self, port: u16, args: &[&str]) -> String {
        resp(port, None, args)
    }

    /// Waits until every node says `cluster_state:ok`.
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let states: Vec<String> = self
                .ports()
                .into_iter()
                .map(|p| resp(p, None, &["CLUSTER", "INFO"]))
                .collect();
            if states.iter().all(|s| s.contains("cluster_state:ok")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster is not ok after {within:?}: {states:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The slot of a namespace's keys (`edaflow:{NS}:…`).
    pub fn slot_of(&self, namespace: &str) -> u16 {
        let reply = resp(
            self.nodes[0].port,
            None,
            &["CLUSTER", "KEYSLOT", &format!("edaflow:{{{namespace}}}:")],
        );
        reply
            .trim()
            .trim_start_matches(':')
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT answered {reply:?}"))
    }

    /// The port of the master serving `slot`, as `CLUSTER NODES` on the first node says.
    pub fn master_of(&self, slot: u16) -> u16 {
        self.try_master_of(slot)
            .unwrap_or_else(|nodes| panic!("no master serves slot {slot}:\n{nodes}"))
    }

    /// The port of the master serving `slot`, or `CLUSTER NODES` when none does.
    fn try_master_of(&self, slot: u16) -> Result<u16, String> {
        let nodes = resp(self.live_ports()[0], None, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                match (from.parse::<u16>(), to.parse::<u16>()) {
                    (Ok(from), Ok(to)) => (from..=to).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let port = fields[1].split(['@', ':']).nth(1).unwrap_or("");
                return Ok(port.parse().expect("a port in CLUSTER NODES"));
            }
        }
        Err(nodes)
    }

    /// The master port of each namespace.
    pub fn master_of_namespace(&self, namespace: &str) -> u16 {
        self.master_of(self.slot_of(namespace))
    }

    /// A broker connected through the seed node, in `options.namespace`.
    pub async fn broker(&self, options: RedisOptions) -> RedisBroker {
        let url = RedisUrl::parse(&self.seed_url()).expect("a valid url");
        RedisBroker::connect(&url, options)
            .await
            .unwrap_or_else(|e| panic!("connect to the cluster at {}: {e}", self.seed_url()))
    }

    /// The node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        let reply = resp(port, None, &["CLUSTER", "MYID"]);
        reply
            .lines()
            .nth(1)
            .unwrap_or_else(|| panic!("CLUSTER MYID answered {reply:?}"))
            .to_owned()
    }

    /// Moves `slot`, keys included, to the master on port `to` (as a resharding does:
    /// IMPORTING/MIGRATING, MIGRATE of every key, then SETSLOT NODE on every node).
    pub fn move_slot(&self, slot: u16, to: u16) {
        let from = self.master_of(slot);
        assert_ne!(from, to, "slot {slot} is on {to} already");
        let slot = slot.to_string();
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let ok = |reply: String, what: &str| {
            assert!(reply.starts_with("+OK"), "{what}: {reply:?}");
        };
        ok(
            resp(
                to,
                None,
                &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id],
            ),
            "importing",
        );
        ok(
            resp(
                from,
                None,
                &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id],
            ),
            "migrating",
        );
        loop {
            let keys = resp(from, None, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            let keys: Vec<&str> = keys
                .lines()
                .skip(1)
                .filter(|l| !l.starts_with('$'))
                .collect();
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().copied());
            let reply = resp(from, None, &args);
            assert!(reply.starts_with("+OK"), "MIGRATE {keys:?}: {reply:?}");
        }
        for port in [to, from] {
            ok(
                resp(port, None, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]),
                "setslot node",
            );
        }
        for port in self.ports() {
            if port != to && port != from {
                ok(
                    resp(port, None, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]),
                    "setslot node",
                );
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            // End of file for the watchdog, which kills its server and exits.
            drop(node.pipe.take());
        }
        for node in &mut self.nodes {
            let _ = node.watchdog.wait();
        }
    }
}

fn start_node(dir: &std::path::Path) -> ClusterNode {
    for _ in 0..5 {
        let (port, bus) = (free_port(), free_port());
        if port == bus {
            continue;
        }
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .args([
                "--port",
                &port.to_string(),
                "--cluster-port",
                &bus.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server under its watchdog");
        let pipe = watchdog.stdin.take();
        if wait_ready(
            &mut watchdog,
            port,
            &ServerOptions::default(),
            Duration::from_secs(5),
        ) {
            return ClusterNode {
                watchdog,
                pipe,
                port,
            };
        }
        // Another process took a port first: try others.
        drop(pipe);
        let _ = watchdog.wait();
        let _ = std::fs::remove_file(dir.join("nodes.conf"));
    }
    panic!("a cluster node did not start on free ports");
}

/// Whether `redis-server` is installed; when it is not, says that `what` did not run, or
/// fails under CI (`CI` set), which installs it.
fn installed(what: &str) -> bool {
    if Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok()
    {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "redis-server is not installed; CI must install it (.ci/run does)"
    );
    eprintln!("SKIPPED: redis-server is not installed; {what} did not run");
    false
}

/// One command in RESP to the server on `port` (after `AUTH` when it has a password);
/// the raw reply.
fn resp(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    if let Some(password) = password {
        stream
            .write_all(format!("AUTH {password}\r\n").as_bytes())
            .expect("send AUTH");
        let mut ok = [0u8; 5];
        stream.read_exact(&mut ok).expect("AUTH reply");
        assert_eq!(&ok, b"+OK\r\n", "AUTH");
    }
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).expect("send");
    let mut buf = [0u8; 65536];
    let n = stream.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A namespace no other test of this process uses: `{base}-{n}`.
pub fn unique_namespace(base: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{base}-{n}")
}

/// `edaflow run FLOW --no-watch --listen 127.0.0.1:0 --broker URL` in `dir`, ready for
/// more arguments and settings before `Edaflow::serve`.
pub fn run_on(dir: &FlowDir, flow: &str, url: &str) -> Edaflow {
    Edaflow::new(dir.root()).args([
        "run",
        flow,
        "--no-watch",
        "--listen",
        "127.0.0.1:0",
        "--broker",
        url,
    ])
}

/// A connection to the test's Redis at `url`.
pub fn connect(url: &str) -> ::redis::Connection {
    ::redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("connect to the test's redis")
}

/// How many events of the stream `key` (a topic's stream: `edaflow:{NAMESPACE}:t:TOPIC`)
/// give each number, as `number_of` reads it from the event's JSON.
pub fn counts_by(
    conn: &mut ::redis::Connection,
    key: &str,
    number_of: impl Fn(&serde_json::Value) -> u64,
) -> BTreeMap<u64, usize> {
    let entries: ::redis::streams::StreamRangeReply = ::redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("XRANGE");
    let mut counts = BTreeMap::new();
    for entry in entries.ids {
        let json: String = entry.get("e").expect("an event field");
        let event: serde_json::Value = serde_json::from_str(&json).expect("event JSON");
        *counts.entry(number_of(&event)).or_default() += 1;
    }
    counts
}

/// How many times each `data.n` stands among the events of the stream `key`.
pub fn counts_of_n(conn: &mut ::redis::Connection, key: &str) -> BTreeMap<u64, usize> {
    counts_by(conn, key, |event| event["data"]["n"].as_u64().expect("n"))
}
