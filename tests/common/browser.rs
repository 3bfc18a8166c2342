//! A headless Chromium for the browser console's tests, driven through chromedriver with a
//! small W3C WebDriver client (JSON over blocking HTTP/1.1, answers read with `common`'s
//! `parse_reply`): open a page, find elements by CSS, read, click, type, run scripts, wait on conditions with a
//! deadline, and take screenshots (`target/console-screenshots/NAME.png`).
//!
//! Each `Browser` owns its chromedriver (on a free loopback port) and one session with a
//! fresh profile. Chromedriver runs under a small `sh` watchdog that leads a process group
//! of its own and kills the whole group (chromedriver, Chromium and its helpers) when the
//! test's end of a pipe closes: when the `Browser` is dropped, and also when the test
//! process ends however it ends. At most `SESSIONS` browsers run at once per test binary,
//! so that parallel tests do not crowd the machine.
//!
//! A failed wait panics with what was awaited, the page's address, a screenshot, the
//! browser's console log and the start of the page's DOM.
//!
//! Without Chromium or chromedriver the tests fail and say how to install them, unless
//! `EDAFLOW_SKIP_BROWSER=1` is set: then `Browser::start` says the test was skipped and
//! gives `None`.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, parse_reply, Reply};

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Where Debian's `chromium-driver` package puts chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How many browsers may run at once in one test binary.
const SESSIONS: usize = 2;

/// How long chromedriver may take to listen, and a session to start.
const START_LIMIT: Duration = Duration::from_secs(30);

/// How long one WebDriver command may take (a page load is bounded lower, below).
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// How often the waits poll.
const POLL: Duration = Duration::from_millis(25);

/// The key of a W3C element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How much of the DOM a failure report shows.
const DOM_SNIPPET: usize = 4000;

/// Chromium's switches: headless, no sandbox (containers, root), nothing that talks to the
/// network on its own or depends on the desktop, a fixed window for stable screenshots.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--window-size=1366,768",
];

/// The W3C key codes the tests type (`send_keys`, `press`).
pub mod key {
    /// Releases the modifiers held down in a `send_keys` text.
    pub const NULL: &str = "\u{E000}";
    pub const BACKSPACE: &str = "\u{E003}";
    pub const TAB: &str = "\u{E004}";
    pub const ENTER: &str = "\u{E007}";
    pub const SHIFT: &str = "\u{E008}";
    pub const CONTROL: &str = "\u{E009}";
    pub const ESCAPE: &str = "\u{E00C}";
    pub const END: &str = "\u{E010}";
    pub const HOME: &str = "\u{E011}";
}

/// Runs chromedriver (`$1`, port `$2`, output to the file `$3`) and, once its standard
/// input reaches end of file, kills its whole process group (it leads one of its own).
const WATCHDOG: &str = r#""$1" --port="$2" </dev/null >"$3" 2>&1 &
read -r _ignored
kill -9 0
"#;

/// An element found on the page (a WebDriver element reference) and the selector that
/// found it, for messages.
#[derive(Clone, Debug)]
pub struct Element {
    id: String,
    selector: String,
}

impl Element {
    /// The element as a script argument (`arguments[i]` in `Browser::execute`).
    pub fn arg(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    /// The selector it was found with.
    pub fn selector(&self) -> &str {
        &self.selector
    }
}

/// A WebDriver error answer: its `error` code and message.
#[derive(Debug)]
pub struct Failure {
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let message = self.message.lines().next().unwrap_or_default();
        write!(f, "{}: {message}", self.error)
    }
}

/// A headless Chromium session of this test; dropping it ends the session and stops
/// chromedriver and the browser (see the module's docs).
pub struct Browser {
    addr: SocketAddr,
    session: String,
    /// The test's name (its thread's), the prefix of the failure screenshots.
    test: String,
    /// How many failure screenshots were taken.
    failures: Cell<u32>,
    /// The browser's console log so far (WebDriver hands each entry out once).
    log: RefCell<Vec<String>>,
    // Dropped in this order, after `Drop::drop` ended the session.
    driver: Driver,
    profile: tempfile::TempDir,
    _slot: Slot,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile.
    ///
    /// Gives `None` after printing a skip line when `EDAFLOW_SKIP_BROWSER=1`.
    ///
    /// # Panics
    /// When Chromium or chromedriver is not installed (the message says how to install
    /// them), or when they do not start.
    #[track_caller]
    pub fn start() -> Option<Browser> {
        let test = std::thread::current()
            .name()
            .unwrap_or("browser")
            .replace("::", "-");
        if std::env::var_os("EDAFLOW_SKIP_BROWSER").is_some_and(|v| v == "1") {
            eprintln!("SKIPPED: EDAFLOW_SKIP_BROWSER=1, so {test} drove no browser");
            return None;
        }
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|path| !Path::new(path).exists())
            .collect();
        assert!(
            missing.is_empty(),
            "{} {} not installed: the browser console's tests drive a headless Chromium \
             through chromedriver. Install them (Debian: `apt-get install -y chromium \
             chromium-driver`; .ci/run does it in CI), or set EDAFLOW_SKIP_BROWSER=1 to skip \
             these tests.",
            missing.join(" and "),
            if missing.len() == 1 { "is" } else { "are" }
        );
        let slot = Slot::take();
        let profile = tempfile::tempdir().expect("a temp dir for the browser profile");
        let driver = Driver::start(profile.path());
        let session = driver.new_session(&profile.path().join("chromium"));
        Some(Browser {
            addr: driver.addr,
            session,
            test,
            failures: Cell::new(0),
            log: RefCell::new(Vec::new()),
            driver,
            profile,
            _slot: slot,
        })
    }

    // -----------------------------------------------------------------------------------
    // Commands

    /// Sends one command of this session (`path` after `/session/ID`).
    fn try_command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        command(
            self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
    }

    /// As `try_command`, panicking (with the page's state) on a WebDriver error.
    #[track_caller]
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        match self.try_command(method, path, body) {
            Ok(value) => value,
            Err(failure) => self.fail(&format!("{method} {path}: {failure}")),
        }
    }

    /// Opens `url` and waits for its `load` event.
    #[track_caller]
    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })));
    }

    /// The page's address.
    #[track_caller]
    pub fn url(&self) -> String {
        self.command("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The first element matching `css`, if any.
    #[track_caller]
    pub fn try_find(&self, css: &str) -> Option<Element> {
        self.find_from("", css).into_iter().next()
    }

    /// The first element matching `css`; panics when there is none.
    #[track_caller]
    pub fn find(&self, css: &str) -> Element {
        match self.try_find(css) {
            Some(element) => element,
            None => self.fail(&format!("no element matches {css:?}")),
        }
    }

    /// Every element matching `css`, in document order.
    #[track_caller]
    pub fn find_all(&self, css: &str) -> Vec<Element> {
        self.find_from("", css)
    }

    /// Every element matching `css` inside `parent`.
    #[track_caller]
    pub fn find_all_in(&self, parent: &Element, css: &str) -> Vec<Element> {
        self.find_from(&format!("/element/{}", parent.id), css)
    }

    /// The first element matching `css` inside `parent`; panics when there is none.
    #[track_caller]
    pub fn find_in(&self, parent: &Element, css: &str) -> Element {
        match self.find_all_in(parent, css).into_iter().next() {
            Some(element) => element,
            None => self.fail(&format!(
                "no element matches {css:?} inside {:?}",
                parent.selector
            )),
        }
    }

    #[track_caller]
    fn find_from(&self, scope: &str, css: &str) -> Vec<Element> {
        let found = self.command(
            "POST",
            &format!("{scope}/elements"),
            Some(json!({ "using": "css selector", "value": css })),
        );
        found
            .as_array()
            .map(|elements| {
                elements
                    .iter()
                    .filter_map(|e| e.get(ELEMENT_KEY)?.as_str())
                    .map(|id| Element {
                        id: id.to_owned(),
                        selector: css.to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The element's rendered text (as a user sees it: hidden parts left out).
    #[track_caller]
    pub fn text(&self, element: &Element) -> String {
        self.element_command("GET", element, "/text", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The element's attribute (or property of that name), if it has one.
    #[track_caller]
    pub fn attribute(&self, element: &Element, name: &str) -> Option<String> {
        let value = self.element_command("GET", element, &format!("/attribute/{name}"), None);
        value.as_str().map(str::to_owned)
    }

    /// Whether the element is displayed.
    #[track_caller]
    pub fn displayed(&self, element: &Element) -> bool {
        self.element_command("GET", element, "/displayed", None)
            .as_bool()
            .unwrap_or(false)
    }

    /// Clicks the element's centre (scrolling it into view first).
    #[track_caller]
    pub fn click(&self, element: &Element) {
        self.element_command("POST", element, "/click", Some(json!({})));
    }

    /// Focuses the element and types `text` into it; the codes of `key` stand for keys
    /// (`key::CONTROL` stays held down until `key::NULL` or the end of the text).
    #[track_caller]
    pub fn send_keys(&self, element: &Element, text: &str) {
        self.element_command("POST", element, "/value", Some(json!({ "text": text })));
    }

    /// Empties an input or a textarea.
    #[track_caller]
    pub fn clear(&self, element: &Element) {
        self.element_command("POST", element, "/clear", Some(json!({})));
    }

    #[track_caller]
    fn element_command(
        &self,
        method: &str,
        element: &Element,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        match self.try_command(method, &format!("/element/{}{path}", element.id), body) {
            Ok(value) => value,
            Err(failure) => self.fail(&format!(
                "{method} {path} on {:?}: {failure}",
                element.selector
            )),
        }
    }

    /// Presses `keys` together on the focused element, in order, and releases them in
    /// reverse order (`press(&[key::CONTROL, "s"])` is Ctrl+S).
    #[track_caller]
    pub fn press(&self, keys: &[&str]) {
        let mut actions: Vec<Value> = keys
            .iter()
            .map(|k| json!({ "type": "keyDown", "value": k }))
            .collect();
        actions.extend(
            keys.iter()
                .rev()
                .map(|k| json!({ "type": "keyUp", "value": k })),
        );
        let body = json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] });
        self.command("POST", "/actions", Some(body));
        self.command("DELETE", "/actions", None);
    }

    /// Runs `script` (a function body: `return …`) in the page with `args` as
    /// `arguments`, and gives back what it returned, as JSON.
    #[track_caller]
    pub fn execute(&self, script: &str, args: &[Value]) -> Value {
        match self.try_execute(script, args) {
            Ok(value) => value,
            Err(failure) => self.fail(&format!("script failed: {failure}\n{script}")),
        }
    }

    /// As `execute`, giving back a script error instead of failing.
    pub fn try_execute(&self, script: &str, args: &[Value]) -> Result<Value, Failure> {
        self.try_command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// The text of every element matching `css`, in document order (`textContent`, so
    /// hidden parts too).
    #[track_caller]
    pub fn texts(&self, css: &str) -> Vec<String> {
        let value = self.execute(
            "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent);",
            &[json!(css)],
        );
        serde_json::from_value(value).unwrap_or_default()
    }

    /// How many elements match `css`.
    #[track_caller]
    pub fn count(&self, css: &str) -> usize {
        let value = self.execute(
            "return document.querySelectorAll(arguments[0]).length;",
            &[json!(css)],
        );
        value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
    }

    // -----------------------------------------------------------------------------------
    // Waiting

    /// Polls `ready` until it gives `Some`, or fails the test (screenshot, console log and
    /// DOM in the message) once `within` has passed.
    #[track_caller]
    pub fn wait<T>(
        &self,
        what: &str,
        within: Duration,
        mut ready: impl FnMut(&Browser) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = ready(self) {
                return found;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("timed out after {within:?} waiting for {what}"));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until an element matches `css`, and gives the first.
    #[track_caller]
    pub fn wait_for(&self, css: &str, within: Duration) -> Element {
        self.wait(&format!("an element matching {css:?}"), within, |b| {
            b.try_find(css)
        })
    }

    /// Waits until `script` (a function body, as for `execute`) returns a truthy value,
    /// and gives that value. A script that throws counts as not yet (the page may still
    /// be building what it reads); its last error is in the failure message.
    #[track_caller]
    pub fn wait_until(&self, what: &str, script: &str, args: &[Value], within: Duration) -> Value {
        let mut last_error = None;
        let deadline = Instant::now() + within;
        loop {
            match self.try_execute(script, args) {
                Ok(value) if truthy(&value) => return value,
                Ok(_) => {}
                Err(failure) => last_error = Some(failure),
            }
            if Instant::now() >= deadline {
                let error = last_error
                    .map(|f| format!(" (the condition's last error: {f})"))
                    .unwrap_or_default();
                self.fail(&format!(
                    "timed out after {within:?} waiting for {what}{error}\ncondition: {script}"
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the text (`textContent`) of the first element matching `css` satisfies
    /// `ready`, and gives that text.
    #[track_caller]
    pub fn wait_for_text(
        &self,
        css: &str,
        within: Duration,
        ready: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        let mut seen = None;
        loop {
            let text = self
                .try_execute(
                    "const e = document.querySelector(arguments[0]); \
                     return e ? e.textContent : null;",
                    &[json!(css)],
                )
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned));
            if let Some(text) = text {
                if ready(&text) {
                    return text;
                }
                seen = Some(text);
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "timed out after {within:?} waiting for the text of {css:?}; last seen: {seen:?}"
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Checks `holds` every poll for `during`, failing the test the first time it does not.
    /// For what must *not* happen (a paused list that must not grow): call it only once
    /// what would have shown the failure has happened elsewhere (the server has handled
    /// the event), so that `during` only covers the page's own delay.
    #[track_caller]
    pub fn assert_for(
        &self,
        what: &str,
        during: Duration,
        mut holds: impl FnMut(&Browser) -> bool,
    ) {
        let end = Instant::now() + during;
        loop {
            if !holds(self) {
                self.fail(&format!("{what} stopped holding"));
            }
            if Instant::now() >= end {
                return;
            }
            std::thread::sleep(POLL);
        }
    }

    // -----------------------------------------------------------------------------------
    // What the page shows

    /// Takes a screenshot of the window into `target/console-screenshots/NAME.png` and
    /// gives its path.
    #[track_caller]
    pub fn screenshot(&self, name: &str) -> PathBuf {
        match self.try_screenshot(name) {
            Ok(path) => path,
            Err(e) => panic!("screenshot {name}: {e}"),
        }
    }

    fn try_screenshot(&self, name: &str) -> Result<PathBuf, String> {
        let value = self
            .try_command("GET", "/screenshot", None)
            .map_err(|f| f.to_string())?;
        let text = value.as_str().ok_or("the screenshot is not a string")?;
        let png = edaflow::http::base64::decode(text).map_err(|e| e.to_string())?;
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).map_err(|e| format!("write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// The browser's console log so far (messages, uncaught errors, failed requests), one
    /// entry a line: `LEVEL message`.
    pub fn console_log(&self) -> Vec<String> {
        if let Ok(Value::Array(entries)) =
            self.try_command("POST", "/se/log", Some(json!({ "type": "browser" })))
        {
            let mut log = self.log.borrow_mut();
            for entry in entries {
                log.push(format!(
                    "{} {}",
                    entry["level"].as_str().unwrap_or("?"),
                    entry["message"].as_str().unwrap_or_default()
                ));
            }
        }
        self.log.borrow().clone()
    }

    /// The console log's entries at level SEVERE (errors) so far, but for the browser's
    /// own request for `/favicon.ico`, which no page asks for.
    pub fn console_errors(&self) -> Vec<String> {
        self.console_log()
            .into_iter()
            .filter(|line| line.starts_with("SEVERE") && !line.contains("/favicon.ico "))
            .collect()
    }

    /// Fails the test with `what`, a screenshot, the page's address, its console log and
    /// the start of its DOM.
    #[track_caller]
    pub fn fail(&self, what: &str) -> ! {
        let n = self.failures.get() + 1;
        self.failures.set(n);
        let shot = match self.try_screenshot(&format!("{}-failed-{n}", self.test)) {
            Ok(path) => path.display().to_string(),
            Err(e) => format!("(no screenshot: {e})"),
        };
        let url = self
            .try_command("GET", "/url", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".to_owned());
        let mut log = String::new();
        for line in self.console_log().iter().rev().take(40).rev() {
            let _ = writeln!(log, "  {line}");
        }
        let dom = self
            .try_execute(
                "const root = document.body || document.documentElement; \
                 return root ? root.outerHTML : '';",
                &[],
            )
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let dom = match dom.char_indices().nth(DOM_SNIPPET) {
            Some((cut, _)) => format!("{}… ({} bytes in all)", &dom[..cut], dom.len()),
            None => dom,
        };
        panic!(
            "{what}\n===== page: {url}\n===== screenshot: {shot}\n===== console log:\n{log}===== DOM:\n{dom}\n====="
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session, which quits Chromium; the driver's drop then kills what is left.
        let _ = command(
            self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

/// JavaScript's truthiness of a returned value.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// `target/console-screenshots` (next to the build's own `tmp`).
pub fn screenshot_dir() -> PathBuf {
    let target = option_env!("CARGO_TARGET_TMPDIR")
        .and_then(|tmp| Path::new(tmp).parent().map(Path::to_path_buf))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("console-screenshots")
}

/// One WebDriver command: `method path` with a JSON body, answered with `{"value": …}`.
fn command(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let headers: &[(&str, &str)] = if body.is_empty() {
        &[]
    } else {
        &[("Content-Type", "application/json; charset=utf-8")]
    };
    let reply = exchange(addr, method, path, headers, body.as_bytes()).map_err(|e| Failure {
        error: "no answer from chromedriver".to_owned(),
        message: e.to_string(),
    })?;
    let mut answer: Value = serde_json::from_str(&reply.body).map_err(|e| Failure {
        error: format!("chromedriver answered {} with no JSON", reply.status),
        message: format!("{e}: {}", reply.body),
    })?;
    let value = answer["value"].take();
    if reply.status >= 400 {
        return Err(Failure {
            error: value["error"]
                .as_str()
                .unwrap_or("unknown error")
                .to_owned(),
            message: value["message"].as_str().unwrap_or_default().to_owned(),
        });
    }
    Ok(value)
}

/// Sends one request and reads its answer. Chromedriver keeps connections open whatever
/// the request says, so the answer ends where its length says, not at end of file.
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(COMMAND_LIMIT))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut received = Vec::new();
    let mut buffer = [0u8; 16384];
    loop {
        if let Some((reply, _)) = parse_reply(&received) {
            return Ok(reply);
        }
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the connection closed after {} bytes of an answer",
                    received.len()
                ),
            ));
        }
        received.extend_from_slice(&buffer[..n]);
    }
}

/// Chromedriver under its watchdog (see `WATCHDOG`).
struct Driver {
    addr: SocketAddr,
    watchdog: Child,
    /// Closing it makes the watchdog kill the group.
    pipe: Option<ChildStdin>,
    log: PathBuf,
}

impl Driver {
    /// Starts chromedriver on a free loopback port and waits until it is ready; its output
    /// goes to `chromedriver.log` in `dir`.
    fn start(dir: &Path) -> Driver {
        let log = dir.join("chromedriver.log");
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut watchdog = Command::new("sh")
                .arg("-c")
                .arg(WATCHDOG)
                .arg("chromedriver-watchdog")
                .arg(CHROMEDRIVER)
                .arg(port.to_string())
                .arg(&log)
                .process_group(0)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER} under sh: {e}"));
            let pipe = watchdog.stdin.take();
            let driver = Driver {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                watchdog,
                pipe,
                log: log.clone(),
            };
            match driver.wait_ready() {
                Ok(()) => return driver,
                // Another process may have taken the port first: try another.
                Err(e) => last = e,
            }
        }
        panic!("chromedriver did not start: {last}");
    }

    /// Waits until `GET /status` says ready.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            match command(self.addr, "GET", "/status", None) {
                Ok(status) if status["ready"] == true => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(status) => return Err(format!("not ready: {status}\n{}", self.log_text())),
                Err(failure) => return Err(format!("{failure}\n{}", self.log_text())),
            }
        }
    }

    /// A session of a headless Chromium with its profile in `profile`.
    fn new_session(&self, profile: &Path) -> String {
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    // A page's `confirm()` before a destructive action is accepted, not left
                    // to block every later command.
                    "unhandledPromptBehavior": "accept",
                    "timeouts": { "implicit": 0, "pageLoad": 20000, "script": 10000 },
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                    "goog:loggingPrefs": { "browser": "ALL" },
                }
            }
        });
        let deadline = Instant::now() + START_LIMIT;
        loop {
            match command(self.addr, "POST", "/session", Some(capabilities.clone())) {
                Ok(session) => {
                    if let Some(id) = session["sessionId"].as_str() {
                        return id.to_owned();
                    }
                    panic!("chromedriver answered no session id: {session}");
                }
                // A busy machine can make Chromium slow to come up; chromedriver then says
                // so, and trying again is what a user would do.
                Err(failure) if Instant::now() < deadline => {
                    eprintln!("starting a browser session failed, trying again: {failure}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(failure) => panic!(
                    "chromedriver could not start {CHROMIUM}: {failure}\n{}",
                    self.log_text()
                ),
            }
        }
    }

    fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("===== chromedriver output:\n{text}=====")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // End of file for the watchdog, which kills the group and exits.
        drop(self.pipe.take());
        let _ = self.watchdog.wait();
    }
}

/// One of the `SESSIONS` places for a running browser, given back when dropped.
struct Slot;

static RUNNING: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

impl Slot {
    /// Waits until fewer than `SESSIONS` browsers run, then takes a place.
    fn take() -> Slot {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= SESSIONS {
            running = FREED.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        drop(running);
        FREED.notify_one();
    }
}
