//! Helpers shared by the hot-reload tests (`tests/reload.rs`, in process) and
//! (`tests/reload_cli.rs`, the real binary): waiting on conditions with deadlines, flow
//! folders in temp dirs written the way editors write, a tiny HTTP/1.1 client, and a guard
//! around a running `edaflow run` that kills it on drop and dumps its output on failure.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(3);

/// Polls `done` (on tokio time) until it holds; panics with `what` after `within`.
pub async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Blocking `wait_until` (for tests that drive the binary). `context` is appended to
/// the panic message (the child's output).
pub fn wait_until_blocking(
    what: &str,
    within: Duration,
    context: impl Fn() -> String,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {within:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// A flow folder in a temp dir.
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
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Plain write (create or truncate, then write), creating folders.
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
}

/// A subscriber script that emits `done` with the event's `id` and its `version`.
pub fn versioned_handler(version: &str) -> String {
    format!("emit(\"done\", #{{ id: event.data.id, version: \"{version}\" }});\n")
}

// ---------------------------------------------------------------------------------------
// HTTP

/// A response: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// One blocking HTTP/1.1 request with `Connection: close`.
///
/// # Errors
/// Connection or I/O failures (a refused connection when nothing listens).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("content-type: application/json\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok(Answer { status, body })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// `http` from async code, off the runtime's worker threads.
pub async fn http_async(
    addr: SocketAddr,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: String,
) -> std::io::Result<Answer> {
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        http(addr, method, &path, &headers, &body)
    })
    .await
    .expect("the request thread does not panic")
}

// ---------------------------------------------------------------------------------------
// The binary

/// `edaflow run …` in a folder; killed when dropped (also when the test panics).
pub struct Instance {
    child: Child,
    command: String,
    dir: PathBuf,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    pub addr: SocketAddr,
}

impl Instance {
    /// Starts `edaflow run ARGS --listen 127.0.0.1:0` in `dir` without the user's
    /// `EDAFLOW_*` settings, and waits for the HTTP producer's address on stderr.
    pub fn start(dir: &Path, args: &[&str]) -> Instance {
        let mut command = Command::new(env!("CARGO_BIN_EXE_edaflow"));
        command
            .arg("run")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("EDAFLOW_") {
                command.env_remove(&key);
            }
        }
        command
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100");
        let description = format!("edaflow run {} --listen 127.0.0.1:0", args.join(" "));
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {description}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        collect(child.stderr.take().expect("piped"), stderr.clone());
        collect(child.stdout.take().expect("piped"), stdout.clone());
        let mut instance = Instance {
            child,
            command: description,
            dir: dir.to_owned(),
            stderr,
            stdout,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let mut addr = None;
        instance.wait(
            "the `http ingest listening` line",
            Duration::from_secs(20),
            |i| {
                addr = listening_addr(&i.stderr());
                addr.is_some()
            },
        );
        instance.addr = addr.expect("waited for it");
        instance
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything worth seeing when a test fails.
    pub fn dump(&self) -> String {
        let mut files = Vec::new();
        list_files(&self.dir, &mut files);
        format!(
            "--- command: {}\n--- folder: {}\n{}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.command,
            self.dir.display(),
            files.join("\n"),
            self.stdout.lock().unwrap_or_else(|e| e.into_inner()),
            self.stderr()
        )
    }

    /// Waits (polling) until `done` holds, dumping the child's output on timeout.
    pub fn wait(&mut self, what: &str, within: Duration, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            if done(self) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
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
    /// missed; this rewrites `file` of `dir` with its own bytes until the instance
    /// reports the no-op reload (`flows unchanged`).
    pub fn wait_until_watching(&mut self, dir: &FlowDir, file: &str) {
        let path = dir.path(file);
        let bytes = std::fs::read(&path).expect("read the file back");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let before = self.stderr().matches("flows unchanged").count();
            std::fs::write(&path, &bytes).expect("rewrite the same bytes");
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

    /// A request to the instance's HTTP producer.
    pub fn request(&self, method: &str, path: &str, body: &str) -> Answer {
        http(self.addr, method, path, &[], body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.dump()))
    }

    /// `/healthz` as JSON.
    pub fn health(&self) -> serde_json::Value {
        let answer = self.request("GET", "/healthz", "");
        assert_eq!(answer.status, 200, "{answer:?}");
        serde_json::from_str(&answer.body).expect("healthz is JSON")
    }

    /// The generation `/healthz` reports.
    pub fn generation(&self) -> u64 {
        self.health()["generation"].as_u64().expect("a generation")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            into.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(&line);
            line.clear();
        }
    });
}

fn list_files(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            list_files(&path, out);
        } else {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            out.push(format!("--- {}:\n{text}", path.display()));
        }
    }
}

/// The address in `http ingest listening … addr=127.0.0.1:PORT`.
pub fn listening_addr(stderr: &str) -> Option<SocketAddr> {
    stderr
        .lines()
        .filter(|l| l.contains("http ingest listening"))
        .find_map(|l| {
            let after = &l[l.find("addr=")? + "addr=".len()..];
            after.split_whitespace().next()?.parse().ok()
        })
}
