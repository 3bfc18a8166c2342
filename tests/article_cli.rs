//! The article's commands on a Redis of the test's own: `api-server`, `consumer --topic`,
//! `consumer -d --master` and `consumer -d` replay the "Topics" and "Deferred Execution"
//! walkthroughs byte for byte, and speak the article tool's wire format, checked with a
//! raw RESP client the way `redis-cli` (or the original `eda` tool) would see it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{http, Edaflow, FlowDir, Running};

const PATIENCE: Duration = Duration::from_secs(20);

/// The article's two bodies, exactly as its curl commands send them.
const ORDER: &str = r#"{"order_id": 123, "customer": "John Doe", "total": 49.99}"#;
const TASK: &str = r#"{"task_id": 456, "description": "Process data files"}"#;

/// Starts one of the article's commands against `server`.
fn start(dir: &FlowDir, server: &RedisServer, args: &[&str]) -> Running {
    let url = server.url();
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["--redis", &url]);
    Edaflow::new(dir.root()).args(all).spawn()
}

/// `edaflow api-server` on a free port; returns it with the address it listens on.
fn api_server(dir: &FlowDir, server: &RedisServer) -> (Running, SocketAddr) {
    let mut running = start(dir, server, &["api-server", "--listen", "127.0.0.1:0"]);
    let addr = running.listening_addr(PATIENCE);
    (running, addr)
}

/// The article's curl: POST a JSON body.
fn post(addr: SocketAddr, path: &str, body: &str) {
    let reply = http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(reply.status, 202, "{reply:?}");
}

/// Waits until `channel` has at least `n` subscribers (PUBSUB NUMSUB): pub/sub keeps
/// nothing, so nothing may be published before the subscribers are in place.
fn wait_subscribers(server: &RedisServer, channel: &str, n: i64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = server.command(&["PUBSUB", "NUMSUB", channel]);
        let count = reply
            .rsplit(':')
            .next()
            .and_then(|c| c.trim().parse::<i64>().ok())
            .unwrap_or(0);
        if count >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{channel} has {count} subscribers, not {n}: {reply:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` until it returns true, or panics with `what` at the deadline.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A raw RESP subscriber: what `redis-cli SUBSCRIBE` sees, byte for byte.
struct Subscriber {
    reader: BufReader<TcpStream>,
}

impl Subscriber {
    fn subscribe(server: &RedisServer, channel: &str) -> Subscriber {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("a read timeout");
        let request = format!(
            "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{channel}\r\n",
            channel.len()
        );
        stream
            .write_all(request.as_bytes())
            .expect("send SUBSCRIBE");
        let mut subscriber = Subscriber {
            reader: BufReader::new(stream),
        };
        let confirmation = subscriber.frame();
        assert_eq!(confirmation[0], b"subscribe");
        subscriber
    }

    /// The next pushed array (`message`, channel, payload), each element's bytes.
    fn frame(&mut self) -> Vec<Vec<u8>> {
        let header = self.line();
        let n: usize = header
            .strip_prefix('*')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("expected an array, got {header:?}"));
        (0..n).map(|_| self.element()).collect()
    }

    fn element(&mut self) -> Vec<u8> {
        let header = self.line();
        if let Some(n) = header.strip_prefix(':') {
            return n.as_bytes().to_vec();
        }
        let len: usize = header
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("expected a bulk string, got {header:?}"));
        let mut bytes = vec![0u8; len + 2];
        self.reader
            .read_exact(&mut bytes)
            .expect("read a bulk string");
        bytes.truncate(len);
        bytes
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read a RESP line");
        line.trim_end().to_owned()
    }
}

/// The article's "Topics" walkthrough: the consumer prints exactly the article's two lines,
/// and a raw `SUBSCRIBE orderCreated` gets exactly the POSTed bytes.
#[test]
fn topics_walkthrough_prints_the_article_lines_and_publishes_the_raw_body() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = FlowDir::new();
    let consumer = start(&dir, &server, &["consumer", "--topic", "orderCreated"]);
    let (api, addr) = api_server(&dir, &server);
    let mut raw = Subscriber::subscribe(&server, "orderCreated");
    wait_subscribers(&server, "orderCreated", 2);

    post(addr, "/topics/orderCreated", ORDER);

    let expected = format!("Received event on topic: orderCreated\nEvent data: {ORDER}\n");
    consumer.wait_stdout("the article's consumer output", PATIENCE, |out| {
        out.len() >= expected.len()
    });
    assert_eq!(
        consumer.stdout(),
        expected,
        "{}\n{}",
        consumer.dump(),
        api.dump()
    );
    let message = raw.frame();
    assert_eq!(message[0], b"message");
    assert_eq!(message[1], b"orderCreated");
    assert_eq!(
        String::from_utf8_lossy(&message[2]),
        ORDER,
        "the channel carries the body as POSTed"
    );
}

/// What the original tool (or `redis-cli PUBLISH`) publishes reaches `consumer --topic`,
/// for any topic; a payload that is not JSON is printed as it came.
#[test]
fn a_raw_publish_reaches_consumer_topic() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = FlowDir::new();
    let consumer = start(&dir, &server, &["consumer", "--topic", "payments.done"]);
    wait_subscribers(&server, "payments.done", 1);

    let body = r#"{"payment":7,"ok":true}"#;
    server.command(&["PUBLISH", "payments.done", body]);
    server.command(&["PUBLISH", "payments.done", "plain text"]);
    // Another channel is not this consumer's.
    server.command(&["PUBLISH", "orderCreated", ORDER]);

    let expected = format!(
        "Received event on topic: payments.done\nEvent data: {body}\n\
         Received event on topic: payments.done\nEvent data: plain text\n"
    );
    consumer.wait_stdout("two events", PATIENCE, |out| out.len() >= expected.len());
    assert_eq!(consumer.stdout(), expected, "{}", consumer.dump());
}

/// The article's "Deferred Execution" walkthrough: the master node moves the POSTed body
/// into the list `message:queue` as it came, and the worker prints `Processing event:`.
#[test]
fn deferred_walkthrough_goes_through_the_message_queue_list() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = FlowDir::new();
    let master = start(&dir, &server, &["consumer", "-d", "--master"]);
    let (_api, addr) = api_server(&dir, &server);
    wait_subscribers(&server, "master", 1);

    post(addr, "/deferred-exec", TASK);

    // No worker yet: the item waits in the list, as the article's master node left it.
    let pushed = format!("${}\r\n{TASK}\r\n", TASK.len());
    wait_until("the task in message:queue", || {
        server.command(&["LRANGE", "message:queue", "0", "-1"]) == format!("*1\r\n{pushed}")
    });

    let worker = start(&dir, &server, &["consumer", "-d", "--poll", "200ms"]);
    let expected = format!("Processing event: {TASK}\n");
    worker.wait_stdout("the worker's line", PATIENCE, |out| {
        out.len() >= expected.len()
    });
    assert_eq!(
        worker.stdout(),
        expected,
        "{}\n{}",
        worker.dump(),
        master.dump()
    );
    assert_eq!(server.command(&["LLEN", "message:queue"]), ":0\r\n");
}

/// Items LPUSHed raw, as the original master node does, are taken by `consumer -d` oldest
/// first (RPOP), one per look.
#[test]
fn raw_list_items_are_taken_oldest_first() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = FlowDir::new();
    server.command(&["LPUSH", "message:queue", r#"{"n": 1}"#]);
    server.command(&["LPUSH", "message:queue", r#"{"n": 2}"#]);
    server.command(&["LPUSH", "message:queue", "not json"]);

    let worker = start(&dir, &server, &["consumer", "-d", "--poll", "100ms"]);
    let expected =
        "Processing event: {\"n\": 1}\nProcessing event: {\"n\": 2}\nProcessing event: not json\n";
    worker.wait_stdout("three items", PATIENCE, |out| out.len() >= expected.len());
    assert_eq!(worker.stdout(), expected, "{}", worker.dump());
    assert_eq!(server.command(&["LLEN", "message:queue"]), ":0\r\n");
}

/// The consumer needs to be told which one it is, and a topic must be a topic name.
#[test]
fn consumer_refuses_unclear_arguments() {
    let dir = FlowDir::new();
    Edaflow::new(dir.root())
        .args(["consumer"])
        .run()
        .code(2)
        .stderr_has("--topic");
    Edaflow::new(dir.root())
        .args(["consumer", "--master"])
        .run()
        .code(2);
    Edaflow::new(dir.root())
        .args([
            "consumer",
            "--topic",
            "order created",
            "--redis",
            "redis://127.0.0.1:1",
        ])
        .run()
        .code(1)
        .stderr_has("is not a topic name");
}

/// An `EDAFLOW_*` variable of `run` that does not parse is a usage error of the built-in
/// `run` (exit 2, naming the option), reported before any Redis is needed.
#[test]
fn a_bad_run_variable_is_a_usage_error() {
    let dir = FlowDir::new();
    Edaflow::new(dir.root())
        .args(["consumer", "-d", "--redis", "redis://127.0.0.1:1"])
        .env("EDAFLOW_THREADS", "0")
        .run()
        .code(2)
        .stderr_has("edaflow::article::options")
        .stderr_has("--threads");
}
