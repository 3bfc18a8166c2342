//! What the integration tests share: waiting on conditions with a deadline, flow folders
//! in temp dirs, a builder that drives the real `edaflow` binary (ripgrep/just style:
//! `NO_COLOR`, no `EDAFLOW_*` from the user's environment, and a full dump of command,
//! folder, stdout and stderr on failure), a guard that kills a spawned binary even when the
//! test panics, and a minimal blocking HTTP/1.1 client for talking to it.

// Each test crate includes this module and uses a different part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use edaflow::runtime::Prepared;

/// Polls `done` every few milliseconds of tokio time until it holds, and panics with
/// `what` once `within` has passed. On paused time the deadline is virtual, so it also
/// bounds how far retries and backoffs may run.
pub async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if done() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A flow folder in a temp dir, removed when dropped.
pub struct FlowDir {
    dir: tempfile::TempDir,
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

    /// Loads and compiles one flow file of the folder, panicking with the rendered
    /// diagnostics if it is invalid.
    pub fn prepare(&self, relative: &str) -> Prepared {
        match edaflow::runtime::prepare(&[self.path(relative)]) {
            Ok(prepared) => prepared,
            Err(report) => panic!(
                "{relative} should be valid:\n{}",
                edaflow::flow::diagnostic::render(&report, 100)
            ),
        }
    }
}

/// The crate root, where `flows/` and `tests/fixtures/` live.
pub fn crate_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Copies `flows/orders.toml` and everything it uses into `dir`.
pub fn copy_orders_flow(dir: &FlowDir) -> PathBuf {
    let flows = crate_root().join("flows");
    for relative in [
        "orders.toml",
        "handlers/charge_payment.rhai",
        "handlers/fraud_check.rhai",
        "handlers/notify_customer.rhai",
        "handlers/reserve_inventory.rhai",
        "handlers/ship_order.rhai",
        "lib/orders.rhai",
    ] {
        let text = std::fs::read_to_string(flows.join(relative))
            .unwrap_or_else(|e| panic!("read flows/{relative}: {e}"));
        dir.write(&format!("flows/{relative}"), &text);
    }
    dir.path("flows/orders.toml")
}

// ---------------------------------------------------------------------------------------
// The binary

/// How long a command that should finish by itself may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(20);

/// One invocation of the `edaflow` binary, run in `dir`.
pub struct Edaflow {
    dir: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
}

impl Edaflow {
    pub fn new(dir: impl Into<PathBuf>) -> Edaflow {
        Edaflow {
            dir: dir.into(),
            args: Vec::new(),
            envs: Vec::new(),
            stdin: None,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Edaflow
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Edaflow {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Edaflow {
        self.stdin = Some(bytes.into());
        self
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_edaflow"));
        command.args(&self.args).current_dir(&self.dir);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("EDAFLOW_") {
                command.env_remove(&key);
            }
        }
        command
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100");
        for (key, value) in &self.envs {
            command.env(key, value);
        }
        command
    }

    fn describe(&self) -> String {
        let mut text = String::from("edaflow");
        for arg in &self.args {
            let _ = write!(text, " {arg:?}");
        }
        text
    }

    /// Runs to completion (at most `COMMAND_LIMIT`), capturing everything.
    pub fn run(self) -> Finished {
        let mut running = self.spawn();
        let status = running.wait_exit(COMMAND_LIMIT);
        running.join_readers();
        Finished {
            description: running.description.clone(),
            dir: running.dir.clone(),
            status,
            stdout: running.stdout(),
            stderr: running.stderr(),
        }
    }

    /// Starts the binary; the returned guard kills it when dropped.
    pub fn spawn(self) -> Running {
        let mut command = self.command();
        command
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.describe()));
        if let Some(bytes) = self.stdin.clone() {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            // Written from a thread so a child that does not read cannot block the test;
            // dropping the handle closes the pipe (end of input).
            std::thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
        }
        let stdout = Arc::new(Output::default());
        let stderr = Arc::new(Output::default());
        let readers = vec![
            read_lines(
                child.stdout.take().expect("stdout is piped"),
                stdout.clone(),
            ),
            read_lines(
                child.stderr.take().expect("stderr is piped"),
                stderr.clone(),
            ),
        ];
        Running {
            child,
            description: self.describe(),
            dir: self.dir,
            stdout,
            stderr,
            readers,
            exit: None,
        }
    }
}

/// The lines a child wrote on one stream so far, with a condvar to wait for more.
#[derive(Default)]
struct Output {
    state: Mutex<OutputState>,
    changed: Condvar,
}

#[derive(Default)]
struct OutputState {
    text: String,
    /// Lines not yet looked at by `next_line`.
    unread: VecDeque<String>,
    closed: bool,
}

fn read_lines(
    stream: impl Read + Send + 'static,
    output: Arc<Output>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let mut state = output.state.lock().unwrap_or_else(|e| e.into_inner());
                    state.text.push_str(&line);
                    state
                        .unread
                        .push_back(line.trim_end_matches(['\n', '\r']).to_owned());
                    drop(state);
                    output.changed.notify_all();
                }
            }
        }
        output
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        output.changed.notify_all();
    })
}

impl Output {
    fn text(&self) -> String {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .text
            .clone()
    }

    /// Waits until `ready` holds for the whole text or the deadline passes.
    fn wait_text(&self, deadline: Instant, ready: impl Fn(&str) -> bool) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if ready(&state.text) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || state.closed {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The next unread line, waiting until the deadline.
    fn next_line(&self, deadline: Instant) -> Option<String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(line) = state.unread.pop_front() {
                return Some(line);
            }
            let now = Instant::now();
            if now >= deadline || state.closed {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A finished run of the binary.
pub struct Finished {
    description: String,
    dir: PathBuf,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Everything needed to understand a failure.
    pub fn dump(&self) -> String {
        dump(
            &self.description,
            &self.dir,
            &format!("{}", self.status),
            &self.stdout,
            &self.stderr,
        )
    }

    /// Asserts exit status 0.
    pub fn success(self) -> Finished {
        assert!(self.status.success(), "expected success\n{}", self.dump());
        self
    }

    /// Asserts this exit code.
    pub fn code(self, code: i32) -> Finished {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit code {code}\n{}",
            self.dump()
        );
        self
    }

    /// Asserts that `needle` is in stdout.
    pub fn stdout_has(self, needle: &str) -> Finished {
        assert!(
            self.stdout.contains(needle),
            "expected stdout to contain {needle:?}\n{}",
            self.dump()
        );
        self
    }

    /// Asserts that `needle` is in stderr.
    pub fn stderr_has(self, needle: &str) -> Finished {
        assert!(
            self.stderr.contains(needle),
            "expected stderr to contain {needle:?}\n{}",
            self.dump()
        );
        self
    }
}

fn dump(description: &str, dir: &Path, status: &str, stdout: &str, stderr: &str) -> String {
    format!(
        "\n===== command: {description}\n===== folder: {}\n===== status: {status}\n===== stdout:\n{stdout}\n===== stderr:\n{stderr}\n=====\n",
        dir.display()
    )
}

/// A running `edaflow` process. Dropping it kills the process (and dumps its output if
/// the test is panicking), so no test leaves one behind.
pub struct Running {
    child: Child,
    description: String,
    dir: PathBuf,
    stdout: Arc<Output>,
    stderr: Arc<Output>,
    readers: Vec<std::thread::JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    pub fn dump(&self) -> String {
        let status = match self.exit {
            Some(status) => status.to_string(),
            None => "still running".to_owned(),
        };
        dump(
            &self.description,
            &self.dir,
            &status,
            &self.stdout(),
            &self.stderr(),
        )
    }

    /// Reads stderr line by line until `find` returns something, or panics at the deadline.
    pub fn find_in_stderr<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut find: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        while let Some(line) = self.stderr.next_line(deadline) {
            if let Some(found) = find(&line) {
                return found;
            }
        }
        panic!("no {what} on stderr within {within:?}\n{}", self.dump());
    }

    /// The address of the `http ingest listening … addr=…` line on stderr (the HTTP
    /// producer's actual address after `--listen 127.0.0.1:0`), or panics after `within`.
    pub fn listening_addr(&mut self, within: Duration) -> SocketAddr {
        self.find_in_stderr("`http ingest listening` line", within, |line| {
            let (_, after) = line
                .split_once("http ingest listening")?
                .1
                .split_once("addr=")?;
            after.split_whitespace().next()?.parse::<SocketAddr>().ok()
        })
    }

    /// Waits until stdout satisfies `ready`, or panics at the deadline.
    pub fn wait_stdout(&self, what: &str, within: Duration, ready: impl Fn(&str) -> bool) {
        if !self.stdout.wait_text(Instant::now() + within, ready) {
            panic!("no {what} on stdout within {within:?}\n{}", self.dump());
        }
    }

    /// Waits until stderr satisfies `ready`, or panics at the deadline.
    pub fn wait_stderr(&self, what: &str, within: Duration, ready: impl Fn(&str) -> bool) {
        if !self.stderr.wait_text(Instant::now() + within, ready) {
            panic!("no {what} on stderr within {within:?}\n{}", self.dump());
        }
    }

    /// True when the process handles SIGTERM itself (its handler is installed), read from
    /// the caught-signal mask in `/proc/PID/status`. Always true elsewhere than on Linux.
    pub fn catches_sigterm(&self) -> bool {
        const SIGTERM_BIT: u64 = 1 << (15 - 1);
        if !cfg!(target_os = "linux") {
            return true;
        }
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|text| {
                let mask = text.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
                u64::from_str_radix(mask.trim(), 16).ok()
            })
            .is_some_and(|mask| mask & SIGTERM_BIT != 0)
    }

    /// Waits until `catches_sigterm`, or panics at the deadline.
    pub fn wait_catching_sigterm(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.catches_sigterm() {
            if Instant::now() >= deadline {
                panic!(
                    "the process did not install a SIGTERM handler within {within:?}\n{}",
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends SIGTERM (through `kill`, as the crate does not depend on libc).
    pub fn terminate(&mut self) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed\n{}", self.dump());
    }

    /// Waits for the process to exit, or panics (after killing it) at the deadline.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    // Its last lines may still be in the pipes: read them to the end, so a
                    // test reading the output after the exit sees all of it.
                    self.join_readers();
                    return status;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => panic!("still running after {within:?}\n{}", self.dump()),
                Err(e) => panic!("waiting for the process: {e}\n{}", self.dump()),
            }
        }
    }

    /// Waits until both output streams are closed (after the exit).
    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
    }
}

// ---------------------------------------------------------------------------------------
// A blocking HTTP/1.1 client

/// One HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request on a fresh connection (`Connection: close`) and reads the answer.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.write_all(body))
        .unwrap_or_else(|e| panic!("send to {addr}: {e}"));
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read from {addr}: {e}"));
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
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
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}
