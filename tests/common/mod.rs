//! What the integration tests share, in one module every test crate includes with
//! `mod common;`: waiting on conditions with a deadline, flow folders in temp dirs (written
//! plainly or the way editors save), a builder that drives the real `edaflow` binary
//! (ripgrep/just style: `NO_COLOR`, no `EDAFLOW_*` from the user's environment, and a full
//! dump of command, folder, stdout and stderr on failure), one guard that kills a spawned
//! binary even when the test panics, and one blocking HTTP/1.1 client.
//!
//! The submodules hold what only some crates need: `runtime` (a runtime or a reloader in
//! process on a flow folder, publishing, taps, a log capture), `deferred` (taps that time
//! what they see), `http_server` (the API router without a socket, an in-process HTTP
//! server and raw async clients), `load` (numbered events posted to running processes
//! until stopped), `browser` (a headless Chromium driven over WebDriver, for the console)
//! and `redis` (a `redis-server` or cluster of the test's own, `edaflow run` on it, what
//! its streams hold, and the clock the broker contract reads time through).

// Each test crate includes this module and uses a different part of it.
#![allow(dead_code)]

pub mod browser;
pub mod deferred;
pub mod http_server;
pub mod load;
pub mod redis;
pub mod runtime;

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

/// A free loopback port (bound, then released for the test to use).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

// ---------------------------------------------------------------------------------------
// Flow folders

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

    /// A folder holding `files` (relative path, text).
    pub fn with_files(files: &[(&str, &str)]) -> FlowDir {
        let dir = FlowDir::new();
        for (relative, text) in files {
            dir.write(relative, text);
        }
        dir
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes a file (create or truncate, then write), creating folders; returns its path.
    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create folders");
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// An editor's atomic save: the new text goes to a temp file in the same folder,
    /// which is then renamed over the target (so readers never see a half-written file).
    pub fn save_atomic(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path(relative);
        let parent = path.parent().expect("a file has a folder");
        std::fs::create_dir_all(parent).expect("create folders");
        let name = path.file_name().expect("a file name").to_string_lossy();
        let temp = parent.join(format!(".{name}.swp"));
        std::fs::write(&temp, text).unwrap_or_else(|e| panic!("write {}: {e}", temp.display()));
        std::fs::rename(&temp, &path)
            .unwrap_or_else(|e| panic!("rename over {}: {e}", path.display()));
        path
    }

    /// Truncate-and-write through one handle, the way simple editors save.
    pub fn save_truncating(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path(relative);
        let mut file = std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        file.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        file.sync_all().ok();
        path
    }

    /// Runs the real `sed -i -e EXPR FILE` in the folder.
    pub fn sed_in_place(&self, relative: &str, expression: &str) {
        let status = Command::new("sed")
            .arg("-i")
            .arg("-e")
            .arg(expression)
            .arg(self.path(relative))
            .status()
            .expect("run sed");
        assert!(
            status.success(),
            "sed -i {expression:?} {relative}: {status}"
        );
    }

    /// Loads and compiles one flow file of the folder, panicking with the rendered
    /// diagnostics if it is invalid.
    pub fn prepare(&self, relative: &str) -> Prepared {
        runtime::prepare(&[self.path(relative)])
    }

    /// Loads a flow file that must be invalid; returns the rendered report.
    pub fn rejected(&self, relative: &str) -> String {
        match edaflow::runtime::prepare(&[self.path(relative)]) {
            Ok(_) => panic!("{relative} should be rejected"),
            Err(report) => edaflow::flow::diagnostic::render(&report, 100),
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

/// How long a command that should finish by itself may take, unless told otherwise.
const COMMAND_LIMIT: Duration = Duration::from_secs(20);

/// How long `run_flow` waits for the HTTP producer to listen.
const SERVE_LIMIT: Duration = Duration::from_secs(20);

/// One invocation of the `edaflow` binary, run in `dir`.
pub struct Edaflow {
    dir: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
    limit: Duration,
}

impl Edaflow {
    pub fn new(dir: impl Into<PathBuf>) -> Edaflow {
        Edaflow {
            dir: dir.into(),
            args: Vec::new(),
            envs: Vec::new(),
            stdin: None,
            limit: COMMAND_LIMIT,
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

    /// How long `run` may take (20 s unless set).
    pub fn limit(mut self, limit: Duration) -> Edaflow {
        self.limit = limit;
        self
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_edaflow"));
        command.args(&self.args).current_dir(&self.dir);
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            // OpenTelemetry's variables would turn span export on.
            if key_text.starts_with("EDAFLOW_") || key_text.starts_with("OTEL_") {
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

    /// Runs to completion (at most `limit`, then it is killed and the test fails),
    /// capturing everything.
    pub fn run(self) -> Finished {
        let limit = self.limit;
        let mut running = self.spawn();
        let status = running.wait_exit(limit);
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
        let started = Instant::now();
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
            started,
            stdout,
            stderr,
            readers,
            exit: None,
            addr: None,
        }
    }

    /// Starts the binary and waits (at most `within`) for the HTTP producer's address,
    /// which `Running::addr` then gives.
    pub fn serve(self, within: Duration) -> Running {
        let mut running = self.spawn();
        running.listening_addr(within);
        running
    }
}

/// `edaflow run ARGS --listen 127.0.0.1:0` in `dir`, past the `http ingest listening` line
/// (its address is `Running::addr`).
pub fn run_flow(dir: &Path, args: &[&str]) -> Running {
    Edaflow::new(dir)
        .args(["run"])
        .args(args.iter().copied())
        .args(["--listen", "127.0.0.1:0"])
        .serve(SERVE_LIMIT)
}

/// The lines a child wrote on one stream so far, each with the moment it was read, and a
/// condvar to wait for more.
#[derive(Default)]
struct Output {
    state: Mutex<OutputState>,
    changed: Condvar,
}

#[derive(Default)]
struct OutputState {
    text: String,
    lines: Vec<(Instant, String)>,
    /// How many lines `next_line` has handed out.
    taken: usize,
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
                    let trimmed = line.trim_end_matches(['\n', '\r']).to_owned();
                    state.lines.push((Instant::now(), trimmed));
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
    fn lock(&self) -> std::sync::MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn text(&self) -> String {
        self.lock().text.clone()
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        self.lock().lines.clone()
    }

    /// Waits until `ready` gives `Some` for the state, or the deadline passes (or the
    /// stream closes with nothing found).
    fn wait<T>(
        &self,
        deadline: Instant,
        mut ready: impl FnMut(&mut OutputState) -> Option<T>,
    ) -> Option<T> {
        let mut state = self.lock();
        loop {
            if let Some(found) = ready(&mut state) {
                return Some(found);
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

    /// Waits until `ready` holds for the whole text or the deadline passes.
    fn wait_text(&self, deadline: Instant, ready: impl Fn(&str) -> bool) -> bool {
        self.wait(deadline, |state| ready(&state.text).then_some(()))
            .is_some()
    }

    /// The next line not handed out before, waiting until the deadline.
    fn next_line(&self, deadline: Instant) -> Option<String> {
        self.wait(deadline, |state| {
            let line = state.lines.get(state.taken)?.1.clone();
            state.taken += 1;
            Some(line)
        })
    }

    /// The first line of all (from the start) for which `find` gives `Some`, with the
    /// moment it was read, waiting until the deadline.
    fn find_line<T>(
        &self,
        deadline: Instant,
        mut find: impl FnMut(&str) -> Option<T>,
    ) -> Option<(Instant, T)> {
        self.wait(deadline, |state| {
            state
                .lines
                .iter()
                .find_map(|(at, line)| find(line).map(|found| (*at, found)))
        })
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

/// Command, folder (with its files when it is a test's temp dir), status and output.
fn dump(description: &str, dir: &Path, status: &str, stdout: &str, stderr: &str) -> String {
    let mut files = String::new();
    if dir.starts_with(std::env::temp_dir()) {
        list_files(dir, &mut files);
    }
    format!(
        "\n===== command: {description}\n===== folder: {}\n{files}===== status: {status}\n===== stdout:\n{stdout}\n===== stderr:\n{stderr}\n=====\n",
        dir.display()
    )
}

/// Each file below `dir` with its text.
fn list_files(dir: &Path, out: &mut String) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            list_files(&path, out);
        } else {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let _ = writeln!(out, "===== file {}:\n{text}", path.display());
        }
    }
}

/// A running `edaflow` process. Dropping it kills the process (and dumps its output if
/// the test is panicking), so no test leaves one behind.
pub struct Running {
    child: Child,
    description: String,
    dir: PathBuf,
    started: Instant,
    stdout: Arc<Output>,
    stderr: Arc<Output>,
    readers: Vec<std::thread::JoinHandle<()>>,
    exit: Option<ExitStatus>,
    /// The HTTP producer's address, once `listening_addr` has read it.
    addr: Option<SocketAddr>,
}

/// How often `Running::wait` polls.
const POLL: Duration = Duration::from_millis(3);

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When the process was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The HTTP producer's address (after `Edaflow::serve`, `run_flow` or
    /// `listening_addr`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
            .unwrap_or_else(|| panic!("no listening address read yet\n{}", self.dump()))
    }

    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// How many `worked N` lines the process has logged (the fault tests' handlers log
    /// one per event they handle), on either stream.
    pub fn worked_lines(&self) -> usize {
        self.stderr().matches("worked ").count() + self.stdout().matches("worked ").count()
    }

    /// Once the process has handled an event (a `worked` line), kills it with SIGKILL: a
    /// crash mid-load, nothing flushed or given back.
    pub fn kill_9_once_working(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        while self.worked_lines() == 0 {
            assert!(
                Instant::now() < deadline,
                "the process never handled an event\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let status = Command::new("kill")
            .args(["-KILL", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL {}", self.pid());
    }

    /// Every stdout line so far, with the moment it was read.
    pub fn stdout_lines(&self) -> Vec<(Instant, String)> {
        self.stdout.lines()
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

    /// Reads stderr line by line (each line once over all calls) until `find` returns
    /// something, or panics at the deadline.
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
    /// It is also kept for `addr` and `request`.
    pub fn listening_addr(&mut self, within: Duration) -> SocketAddr {
        let addr = self.find_in_stderr("`http ingest listening` line", within, |line| {
            let (_, after) = line
                .split_once("http ingest listening")?
                .1
                .split_once("addr=")?;
            after.split_whitespace().next()?.parse::<SocketAddr>().ok()
        });
        self.addr = Some(addr);
        addr
    }

    /// The first stdout line (of all so far, then of those to come) for which `find` gives
    /// `Some`, with the moment it was read; panics after `within`.
    pub fn wait_stdout_line<T>(
        &self,
        what: &str,
        within: Duration,
        find: impl FnMut(&str) -> Option<T>,
    ) -> (Instant, T) {
        self.stdout
            .find_line(Instant::now() + within, find)
            .unwrap_or_else(|| panic!("never saw {what} (within {within:?})\n{}", self.dump()))
    }

    /// As `wait_stdout_line`, on stderr.
    pub fn wait_stderr_line<T>(
        &self,
        what: &str,
        within: Duration,
        find: impl FnMut(&str) -> Option<T>,
    ) -> (Instant, T) {
        self.stderr
            .find_line(Instant::now() + within, find)
            .unwrap_or_else(|| panic!("never saw {what} (within {within:?})\n{}", self.dump()))
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

    /// Polls `done` until it holds; panics (with the dump) if the process exits first or
    /// `within` passes.
    pub fn wait(&mut self, what: &str, within: Duration, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            if done(self) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                panic!(
                    "edaflow exited ({status}) while waiting for {what}\n{}",
                    self.dump()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {within:?} waiting for {what}\n{}",
                    self.dump()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the file watcher is active. `edaflow run` starts serving (and logs
    /// `edaflow running`) before its watches are in place, so an edit made at once can be
    /// missed; this rewrites `file` of `dir` with its own bytes until the process reports
    /// the no-op reload (`flows unchanged`).
    pub fn wait_until_watching(&mut self, dir: &FlowDir, file: &str) {
        let text = std::fs::read_to_string(dir.path(file)).expect("read the file back");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let before = self.stderr().matches("flows unchanged").count();
            // Atomically: a reload could read a truncating rewrite half done, and an empty
            // flow file is a valid flow set without components.
            dir.save_atomic(file, &text);
            let attempt = Instant::now() + Duration::from_millis(250);
            while Instant::now() < attempt {
                if self.stderr().matches("flows unchanged").count() > before {
                    return;
                }
                std::thread::sleep(POLL);
            }
            if Instant::now() >= deadline {
                panic!("the watcher never noticed a rewrite\n{}", self.dump());
            }
        }
    }

    /// A request to the process's HTTP producer (see `addr`), with `body` as it is.
    pub fn request(&self, method: &str, path: &str, body: &str) -> Reply {
        try_http(self.addr(), method, path, &[], body.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.dump()))
    }

    /// `/healthz` as JSON.
    pub fn health(&self) -> serde_json::Value {
        let reply = self.request("GET", "/healthz", "");
        assert_eq!(reply.status, 200, "{reply:?}");
        serde_json::from_str(&reply.body).expect("healthz is JSON")
    }

    /// The generation `/healthz` reports.
    pub fn generation(&self) -> u64 {
        self.health()["generation"].as_u64().expect("a generation")
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

/// One HTTP response (from `http`, or read off a socket by `http_server`).
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
    /// The body's bytes as they came.
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.body)
            .finish()
    }
}

impl Reply {
    /// The body's bytes as they came (`body` is them as text).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts an accepted publish (202, JSON) and returns the event id.
    #[track_caller]
    pub fn accepted(&self) -> String {
        assert_eq!(self.status, 202, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let body = self.json();
        let id = body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {body}"));
        id.to_owned()
    }

    /// Asserts a JSON refusal `{error, code}` with this status and code; returns the
    /// `error`.
    #[track_caller]
    pub fn refused(&self, status: impl Status, code: &str) -> String {
        assert_eq!(self.status, status.code(), "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        let error = body["error"].as_str().unwrap_or_default().to_owned();
        assert!(!error.is_empty(), "a readable `error`: {body}");
        error
    }
}

/// An HTTP status as a test writes it: a number, or axum's `StatusCode`.
pub trait Status {
    fn code(self) -> u16;
}

impl Status for u16 {
    fn code(self) -> u16 {
        self
    }
}

impl Status for axum::http::StatusCode {
    fn code(self) -> u16 {
        self.as_u16()
    }
}

/// Sends one request on a fresh connection (`Connection: close`, and exactly the
/// `headers` given) and reads the answer; panics on connection and I/O failures.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    try_http(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
}

/// `POST PATH` with a JSON `body` (`Content-Type: application/json`), through `http`.
pub fn post_json(addr: SocketAddr, path: &str, body: impl AsRef<[u8]>) -> Reply {
    http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_ref(),
    )
}

/// As `http`, returning connection and I/O failures (a refused connection when nothing
/// listens).
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw, true).map(|(reply, _)| reply).ok_or_else(|| {
        std::io::Error::other(format!(
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&raw)
        ))
    })
}

/// `try_http` from async code, off the runtime's worker threads.
pub async fn http_async(
    addr: SocketAddr,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: String,
) -> std::io::Result<Reply> {
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        try_http(addr, method, path.as_str(), &headers, body.as_bytes())
    })
    .await
    .expect("the request thread does not panic")
}

/// Parses one response from the start of `bytes` read off a connection that is still
/// open, skipping `1xx` interim ones; returns it and how many bytes it took, or `None`
/// while it is incomplete. A body with neither a length nor chunks is empty.
pub fn parse_reply(bytes: &[u8]) -> Option<(Reply, usize)> {
    parse(bytes, false)
}

/// `parse_reply`; with `at_end` (nothing more will come) a body without a length runs to
/// the end, and a cut chunked body is kept as far as it goes.
fn parse(bytes: &[u8], at_end: bool) -> Option<(Reply, usize)> {
    let mut start = 0;
    loop {
        let rest = &bytes[start..];
        let head_end = rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&rest[..head_end]);
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        if (100..200).contains(&status) {
            start += head_end;
            continue;
        }
        let reply = |body: &[u8]| Reply {
            status,
            headers: headers.clone(),
            body: String::from_utf8_lossy(body).into_owned(),
            bytes: body.to_vec(),
        };
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let body_start = start + head_end;
        if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let (body, end) = dechunk(&bytes[body_start..]);
            return match end {
                Some(end) => Some((reply(&body), body_start + end)),
                None if at_end => Some((reply(&body), bytes.len())),
                None => None,
            };
        }
        return match find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            Some(length) => {
                let body = bytes.get(body_start..body_start + length)?;
                Some((reply(body), body_start + length))
            }
            None if at_end => Some((reply(&bytes[body_start..]), bytes.len())),
            None => Some((reply(b""), body_start)),
        };
    }
}

/// A chunked body: the bytes of its chunks, and where it ends (after the last chunk's
/// CRLF) once it is complete.
fn dechunk(bytes: &[u8]) -> (Vec<u8>, Option<usize>) {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = bytes
            .get(at..)
            .and_then(|rest| rest.windows(2).position(|w| w == b"\r\n"))
        else {
            return (body, None);
        };
        let size = std::str::from_utf8(&bytes[at..at + line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size else {
            return (body, None);
        };
        at += line_end + 2;
        if size == 0 {
            return match bytes.get(at..at + 2) {
                Some(_) => (body, Some(at + 2)),
                None => (body, None),
            };
        }
        let Some(chunk) = bytes.get(at..at + size) else {
            return (body, None);
        };
        body.extend_from_slice(chunk);
        at += size + 2;
    }
}
