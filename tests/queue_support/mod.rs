//! What the deferred-execution tests share: flow folders in temp dirs, a runtime on the
//! memory broker, taps that time what they see (tokio time, so paused-time tests measure
//! virtual milliseconds), a tracing capture for log assertions, and, for the binary-level
//! tests, a guard around a spawned `edaflow` (killed on drop, even when the test panics)
//! with timestamped output lines and a tiny blocking HTTP/1.1 client.

// Each test crate includes this module and uses a different part of it.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use edaflow::broker::{MemoryBroker, MemoryOptions};
use edaflow::event::Event;
use edaflow::flow::TopicPattern;
use edaflow::runtime::{Prepared, Runtime, RuntimeOptions};
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------------------
// In process

/// Polls `done` every millisecond of tokio time until it holds; panics with `what` once
/// `within` has passed. On paused time the deadline is virtual.
pub async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if done() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A flow folder in a temp dir, removed when dropped.
pub struct FlowDir {
    dir: tempfile::TempDir,
}

impl Default for FlowDir {
    fn default() -> Self {
        FlowDir::new()
    }
}

impl FlowDir {
    pub fn new() -> FlowDir {
        FlowDir {
            dir: tempfile::tempdir().expect("create a temp dir"),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes a file (creating folders), returning its path.
    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create folders");
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Loads and compiles a flow file, panicking with the rendered report if invalid.
    pub fn prepare(&self, relative: &str) -> Prepared {
        match edaflow::runtime::prepare(&[self.path(relative)]) {
            Ok(prepared) => prepared,
            Err(report) => panic!(
                "{relative} should be valid:\n{}",
                edaflow::flow::diagnostic::render(&report, 100)
            ),
        }
    }

    /// Loads a flow file that must be invalid; returns the rendered report.
    pub fn rejected(&self, relative: &str) -> String {
        match edaflow::runtime::prepare(&[self.path(relative)]) {
            Ok(_) => panic!("{relative} should be rejected"),
            Err(report) => edaflow::flow::diagnostic::render(&report, 100),
        }
    }
}

pub fn runtime_options() -> RuntimeOptions {
    RuntimeOptions {
        producers: false,
        ..RuntimeOptions::default()
    }
}

/// Starts a runtime on a fresh memory broker with `flow.toml` of `dir`.
pub async fn start(dir: &FlowDir) -> (Runtime<MemoryBroker>, MemoryBroker) {
    let broker = MemoryBroker::new(MemoryOptions::default());
    let mut runtime = Runtime::new(broker.clone(), runtime_options());
    let outcome = runtime
        .apply(dir.prepare("flow.toml"))
        .await
        .expect("the flow starts");
    assert!(outcome.ok, "{outcome:?}");
    (runtime, broker)
}

pub fn tap(broker: &MemoryBroker, pattern: &str) -> mpsc::Receiver<Arc<Event>> {
    let pattern = TopicPattern::parse(pattern).expect("test pattern");
    edaflow::broker::Broker::tap(broker, pattern, 100_000)
}

/// Everything a tap has seen so far.
pub fn drain(tap: &mut mpsc::Receiver<Arc<Event>>) -> Vec<Arc<Event>> {
    let mut events = Vec::new();
    while let Ok(event) = tap.try_recv() {
        events.push(event);
    }
    events
}

/// The next event of a tap and the tokio time it arrived, measured from `since`; panics
/// after `within` of (virtual) time.
pub async fn next_timed(
    tap: &mut mpsc::Receiver<Arc<Event>>,
    since: tokio::time::Instant,
    within: Duration,
) -> (Arc<Event>, Duration) {
    match tokio::time::timeout(within, tap.recv()).await {
        Ok(Some(event)) => (event, since.elapsed()),
        Ok(None) => panic!("the tap closed"),
        Err(_) => panic!("no event within {within:?}"),
    }
}

/// Asserts `at` is `expected` give or take `slack`.
pub fn assert_near(what: &str, at: Duration, expected: Duration, slack: Duration) {
    let low = expected.saturating_sub(slack);
    let high = expected + slack;
    assert!(
        at >= low && at <= high,
        "{what}: at {at:?}, expected {expected:?} ± {slack:?}"
    );
}

/// A `tracing` writer that keeps everything in memory, for asserting log lines.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Installs the capture as this thread's default subscriber (paused-time tests run on
    /// one thread, so every task of the runtime logs through it).
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// ---------------------------------------------------------------------------------------
// The binary

/// The crate root, where `flows/` lives.
pub fn crate_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `edaflow` with a clean environment: no `EDAFLOW_*` or `RUST_LOG` from the user,
/// `NO_COLOR`, fixed width.
pub fn edaflow(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_edaflow"));
    command.args(args).current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EDAFLOW_") {
            command.env_remove(&key);
        }
    }
    command
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100");
    command
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Finished {
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn dump(&self) -> String {
        format!(
            "command: {}\nexit: {:?}\n--- stdout\n{}--- stderr\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

/// Runs a command to completion (at most `limit`, then it is killed and the test fails).
pub fn run_to_end(mut command: Command, limit: Duration) -> Finished {
    let description = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let running = Running::start(command);
    let deadline = Instant::now() + limit;
    let code = loop {
        let status = running
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_wait()
            .expect("wait for the child");
        if let Some(status) = status {
            break status.code();
        }
        if Instant::now() >= deadline {
            panic!(
                "{description} did not finish within {limit:?}\n{}",
                running.dump()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    running.wait_closed(Duration::from_secs(5));
    Finished {
        command: description,
        code,
        stdout: running.stdout.text(),
        stderr: running.stderr.text(),
    }
}

/// Lines a child wrote on one stream, each with the moment it was read.
#[derive(Default)]
pub struct Lines {
    state: Mutex<(Vec<(Instant, String)>, bool)>,
    changed: Condvar,
}

impl Lines {
    pub fn text(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0.iter().fold(String::new(), |mut out, (_, line)| {
            let _ = writeln!(out, "{line}");
            out
        })
    }

    pub fn lines(&self) -> Vec<(Instant, String)> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Waits until some line gives `Some`, or panics after `within` with `dump`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        dump: impl Fn() -> String,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> (Instant, T) {
        let deadline = Instant::now() + within;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(hit) = state
                .0
                .iter()
                .find_map(|(at, line)| found(line).map(|t| (*at, t)))
            {
                return hit;
            }
            let now = Instant::now();
            if now >= deadline || state.1 {
                drop(state);
                panic!("never saw {what} (within {within:?})\n{}", dump());
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn push(&self, line: String) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .push((Instant::now(), line));
        self.changed.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.changed.notify_all();
    }

    fn closed(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

fn read_lines(stream: impl Read + Send + 'static, lines: Arc<Lines>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => lines.push(line.trim_end_matches(['\n', '\r']).to_owned()),
            }
        }
        lines.close();
    });
}

/// A spawned `edaflow`, killed when dropped (also when the test panics).
pub struct Running {
    child: Mutex<Child>,
    pub started: Instant,
    pub stdout: Arc<Lines>,
    pub stderr: Arc<Lines>,
}

impl Running {
    /// Spawns with piped output; `command` should come from `edaflow`.
    pub fn start(mut command: Command) -> Running {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stdout = Arc::new(Lines::default());
        let stderr = Arc::new(Lines::default());
        read_lines(
            child.stdout.take().expect("stdout is piped"),
            stdout.clone(),
        );
        read_lines(
            child.stderr.take().expect("stderr is piped"),
            stderr.clone(),
        );
        Running {
            child: Mutex::new(child),
            started,
            stdout,
            stderr,
        }
    }

    /// `edaflow run FLOW --listen 127.0.0.1:0 …` in `dir`; returns it with its address
    /// (read from the `http ingest listening … addr=…` line).
    pub fn run_flow(dir: &Path, args: &[&str]) -> (Running, SocketAddr) {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--listen", "127.0.0.1:0"]);
        let running = Running::start(edaflow(dir, &all));
        let (_, addr) = running.stderr.wait_for(
            "the `http ingest listening` line",
            Duration::from_secs(15),
            || running.dump(),
            |line| {
                if !line.contains("http ingest listening") {
                    return None;
                }
                let (_, after) = line.split_once("addr=")?;
                after.split_whitespace().next()?.parse::<SocketAddr>().ok()
            },
        );
        (running, addr)
    }

    fn wait_closed(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !(self.stdout.closed() && self.stderr.closed()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn dump(&self) -> String {
        format!(
            "--- stdout\n{}--- stderr\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One blocking HTTP/1.1 request with `Connection: close`.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    stream.write_all(body).expect("send the body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("a complete HTTP answer");
    let mut head_lines = head.lines();
    let status = head_lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = head_lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}
