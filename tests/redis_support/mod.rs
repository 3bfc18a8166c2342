//! What the Redis tests share: a `redis-server` of their own on a free loopback port in a
//! temp dir (never the one on 6379), killed when the guard is dropped; a broker on it; and
//! the `Clock` the generic contract checks read time through (paused tokio time for the
//! memory broker, real time with a tolerance for Redis, which keeps its own clock).
//!
//! Without `redis-server` installed the tests say so and pass, except under CI (`CI` set),
//! where a missing server is a failure: CI installs it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edaflow::broker::{RedisBroker, RedisOptions, RedisUrl};

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
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed; CI must install it (.ci/run does)"
            );
            eprintln!("SKIPPED: redis-server is not installed; the Redis tests did not run");
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
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        if let Some(password) = &self.options.password {
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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
