//! The browser console in a real browser: a headless Chromium (`common::browser`) on the
//! page a real `edaflow run` serves, read and driven only through the page's documented
//! DOM hooks (the console's contract): the graph of the orders demo and its live counts,
//! a component's panel, the live tail, a journey, dead letters replayed and dropped, live
//! editing of a handler (diagnostics, applied, conflicts), the login form and the health
//! view, and the same smoke on Redis. Screenshots go to `target/console-screenshots/`.
//!
//! What the page shows is checked against what the server says over HTTP (`/trace`,
//! `/admin/dead`, `/healthz`) and what the handlers log.
//!
//! `harness_drives_a_static_page` checks the WebDriver harness itself on a page served
//! from the test. `save_latency` (ignored: a benchmark) is described in
//! `bench/console/README.md`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indoc::indoc;
use serde_json::{json, Value};

use common::browser::{key, Browser};
use common::redis::{run_on, RedisServer};
use common::{copy_orders_flow, post_json, run_flow, FlowDir, Running};

/// How long the page may take to show something (generous: the machine may be busy).
const WITHIN: Duration = Duration::from_secs(15);

/// The orders demo's components and their kinds, as the graph must show them.
const ORDERS_NODES: &[(&str, &str)] = &[
    ("producers.api", "producer"),
    ("topics.orderCreated", "topic"),
    ("topics.inventoryReserved", "topic"),
    ("topics.paymentCharged", "topic"),
    ("topics.orderShipped", "topic"),
    ("subscribers.log_orders", "subscriber"),
    ("subscribers.reserve_inventory", "subscriber"),
    ("subscribers.fraud_check", "subscriber"),
    ("subscribers.charge_payment", "subscriber"),
    ("subscribers.ship_order", "subscriber"),
    ("subscribers.notify_customer", "subscriber"),
    ("chains.fulfilment", "chain"),
];

/// The steps of an order that goes all the way, in journey order.
const FULFILMENT: &[&str] = &[
    "orderCreated",
    "inventoryReserved",
    "paymentCharged",
    "orderShipped",
];

/// A flow whose one handler logs which version of it handled an event.
const WORKER_FLOW: &str = indoc! {r#"
    [flow]
    name = "console"

    [producers.api]
    kind = "http"

    [subscribers.worker]
    topic = "work"
    script = "handlers/worker.rhai"
"#};

/// The worker's file id: root 0 is the flow file's folder.
const WORKER_FILE: &str = "0/handlers/worker.rhai";

/// The handler: logs `worker VERSION handled ID`.
fn worker(version: &str) -> String {
    format!("log(`worker {version} handled ${{event.data.id}}`);\n")
}

/// Numbers unique across the tests of this binary (order ids, event ids).
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

// ---------------------------------------------------------------------------------------
// The instance under test

/// The orders demo copied into a temp dir and running (`edaflow run flows/orders.toml`).
fn orders(extra: &[&str]) -> (FlowDir, Running) {
    let dir = FlowDir::new();
    copy_orders_flow(&dir);
    let mut args = vec!["flows/orders.toml"];
    args.extend_from_slice(extra);
    let instance = run_flow(dir.root(), &args);
    assert_console_served(&instance);
    (dir, instance)
}

/// `WORKER_FLOW` with the handler at `v1`, running with `extra` arguments.
fn worker_instance(extra: &[&str]) -> (FlowDir, Running) {
    let dir = FlowDir::with_files(&[
        ("flow.toml", WORKER_FLOW),
        ("handlers/worker.rhai", &worker("v1")),
    ]);
    let mut args = vec!["flow.toml"];
    args.extend_from_slice(extra);
    let instance = run_flow(dir.root(), &args);
    assert_console_served(&instance);
    (dir, instance)
}

/// Waits until the instance runs its whole first generation (its producer listens
/// before), then fails at once, and clearly, when it serves no console page (rather than
/// after every wait on the page has run out).
fn assert_console_served(instance: &Running) {
    instance.wait_stderr("`edaflow running`", WITHIN, |text| {
        text.contains("edaflow running")
    });
    let reply = instance.request("GET", "/", "");
    let html = reply
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html"));
    assert!(
        reply.status == 200 && html,
        "GET / does not serve the console page (status {}, content type {:?})\n{}",
        reply.status,
        reply.header("content-type"),
        instance.dump()
    );
}

/// The console's address at hash route `route` (`graph`, `tail`, …).
fn page(instance: &Running, route: &str) -> String {
    format!("http://{}/#/{route}", instance.addr())
}

/// Publishes an order that goes all the way to shipping; gives its event id, which is
/// also its journey's correlation id.
fn publish_order(instance: &Running) -> String {
    let n = next_id();
    let body = json!({ "order_id": n, "customer": "Ann", "total": 49.99 }).to_string();
    post_json(instance.addr(), "/topics/orderCreated", body).accepted()
}

/// An event the test published: its number (`data.id`) and its id, which is also its
/// journey's correlation id.
struct Published {
    n: u64,
    id: String,
}

/// Publishes `{"id": N}` on `topic`.
fn publish_work(instance: &Running, topic: &str) -> Published {
    let n = next_id();
    let body = json!({ "id": n }).to_string();
    let id = post_json(instance.addr(), &format!("/topics/{topic}"), body).accepted();
    Published { n, id }
}

/// Waits until the server's trace of `correlation` holds an `orderShipped` step; gives
/// the trace's entries.
fn wait_shipped(instance: &mut Running, correlation: &str) -> Vec<Value> {
    let path = format!("/trace/{correlation}");
    let mut entries = Vec::new();
    instance.wait(&format!("journey {correlation} to ship"), WITHIN, |i| {
        let reply = i.request("GET", &path, "");
        if reply.status != 200 {
            return false;
        }
        entries = serde_json::from_str::<Vec<Value>>(&reply.body).unwrap_or_default();
        entries.iter().any(|e| e["topic"] == "orderShipped")
    });
    entries
}

/// Waits until the handler logs `worker VERSION handled N`.
fn wait_handled_by(instance: &mut Running, version: &str, n: u64) {
    let line = format!("worker {version} handled {n}");
    instance.wait_stderr(&format!("`{line}`"), WITHIN, |text| {
        text.lines().any(|l| l.contains(&line))
    });
}

/// Waits until one of two processes logs that the handler at `version` handled `n`.
fn wait_handled_by_either(one: &mut Running, two: &Running, version: &str, n: u64) {
    let line = format!("worker {version} handled {n}");
    let deadline = std::time::Instant::now() + WITHIN;
    while ![&*one, two]
        .iter()
        .any(|p| p.stderr().lines().any(|l| l.contains(&line)))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "neither process logged `{line}`:\n{}\n{}",
            one.dump(),
            two.dump()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The dead letters the server holds.
fn dead_letters(instance: &Running) -> Vec<Value> {
    let reply = instance.request("GET", "/admin/dead", "");
    assert_eq!(reply.status, 200, "{reply:?}");
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
}

// ---------------------------------------------------------------------------------------
// Reading the page

/// The selector of a graph node.
fn node(id: &str) -> String {
    format!("svg#graph g.node[data-id=\"{id}\"]")
}

/// The selector of a graph edge.
fn edge(from: &str, to: &str) -> String {
    format!("svg#graph g.edge[data-from=\"{from}\"][data-to=\"{to}\"]")
}

/// The first whole number in `text` ("12", "12 events", "count 12").
fn first_number(text: &str) -> Option<u64> {
    let digits: String = text
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Whether `text` says "generation N" (and not N0, N1…).
fn shows_generation(text: &str, n: u64) -> bool {
    let wanted = format!("generation {n}");
    text.match_indices(&wanted).any(|(at, _)| {
        !text[at + wanted.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// The number an edge's `text.edge-count` shows (0 when it shows none yet).
fn edge_count(browser: &Browser, from: &str, to: &str) -> u64 {
    browser
        .texts(&format!("{} text.edge-count", edge(from, to)))
        .first()
        .and_then(|t| first_number(t))
        .unwrap_or(0)
}

/// The page's hash route.
fn hash(browser: &Browser) -> String {
    browser
        .execute("return location.hash;", &[])
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until the page's hash route is `wanted`.
fn wait_hash(browser: &Browser, wanted: &str) {
    browser.wait(&format!("the route {wanted}"), WITHIN, |b| {
        (hash(b) == wanted).then_some(())
    });
}

/// Waits until the element `css` is displayed.
fn wait_displayed(browser: &Browser, css: &str) {
    browser.wait(&format!("{css} to be displayed"), WITHIN, |b| {
        b.try_find(css).filter(|e| b.displayed(e)).map(|_| ())
    });
}

/// Whether `css` matches a displayed element.
fn is_displayed(browser: &Browser, css: &str) -> bool {
    browser.try_find(css).is_some_and(|e| browser.displayed(&e))
}

/// The generation the header shows.
fn header_generation(browser: &Browser) -> Option<u64> {
    browser
        .texts("#status-generation")
        .first()
        .and_then(|t| first_number(t))
}

/// Words that only show when the page printed a value it did not mean to.
const JUNK: &[&str] = &["[object ", "undefined", "NaN"];

/// Takes a screenshot of the view (`target/console-screenshots/NAME.png`), once the text
/// it shows has been checked for values printed by mistake and the console for the
/// page's errors.
#[track_caller]
fn screenshot(browser: &Browser, name: &str) {
    let text = browser.execute("return document.body.innerText;", &[]);
    let text = text.as_str().unwrap_or_default();
    let outcome = browser.texts("#editor-outcome").join(" ");
    for junk in JUNK {
        if text.contains(junk) {
            browser.fail(&format!("the {name} view shows {junk:?}"));
        }
    }
    if outcome.contains("null") {
        browser.fail(&format!("the editor's outcome shows \"null\": {outcome:?}"));
    }
    // Refused requests (401 before the login, 409 on a conflict) are logged by the browser
    // itself and checked by the tests; what is left is the page's own errors.
    let errors: Vec<String> = browser
        .console_errors()
        .into_iter()
        .filter(|line| !line.contains("Failed to load resource"))
        .collect();
    if !errors.is_empty() {
        browser.fail(&format!("the {name} view logged errors: {errors:#?}"));
    }
    browser.screenshot(name);
}

/// Whether every `li.journey-step` of the server's `trace` hangs inside its cause's `ul`.
const NESTED_BY_CAUSATION: &str = r#"
    const entries = arguments[0];
    const ids = new Set(entries.map(e => e.id));
    return entries.every(e => {
        const li = document.querySelector(`#journey-tree li.journey-step[data-id="${e.id}"]`);
        if (!li || li.dataset.topic !== e.topic) return false;
        if (!li.querySelector('.step-time') || !li.querySelector('.step-elapsed')) return false;
        if (!e.causation_id || !ids.has(e.causation_id)) return true;
        const list = li.parentElement;
        const cause = list && list.tagName === 'UL' ? list.closest('li.journey-step') : null;
        return !!cause && cause.dataset.id === e.causation_id;
    });
"#;

// ---------------------------------------------------------------------------------------
// (a) The graph

#[test]
fn the_graph_shows_the_orders_demo_and_its_counts_rise() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let (_dir, mut instance) = orders(&[]);
    browser.goto(&page(&instance, "graph"));
    browser.wait_for(&node("subscribers.reserve_inventory"), WITHIN);

    for (id, kind) in ORDERS_NODES {
        let css = format!("{}[data-kind=\"{kind}\"]", node(id));
        let label = browser.texts(&format!("{css} .node-label"));
        let name = id.split_once('.').map_or(*id, |(_, name)| name);
        assert!(
            label.len() == 1 && label[0].contains(name),
            "the node {id} ({kind}) with its name as label: {label:?}"
        );
    }
    for (from, to) in [
        ("topics.orderCreated", "subscribers.reserve_inventory"),
        ("topics.orderCreated", "subscribers.log_orders"),
        ("subscribers.reserve_inventory", "topics.inventoryReserved"),
        ("topics.inventoryReserved", "subscribers.charge_payment"),
        ("topics.orderShipped", "chains.fulfilment"),
    ] {
        assert_eq!(browser.count(&edge(from, to)), 1, "the edge {from} -> {to}");
    }
    let rate = browser.texts(&format!(
        "{} text.edge-rate",
        edge("topics.orderCreated", "subscribers.reserve_inventory")
    ));
    assert_eq!(rate.len(), 1, "the edge shows a rate: {rate:?}");

    let before = edge_count(
        &browser,
        "topics.orderCreated",
        "subscribers.reserve_inventory",
    );
    let orders: Vec<String> = (0..3).map(|_| publish_order(&instance)).collect();
    for order in &orders {
        wait_shipped(&mut instance, order);
    }
    browser.wait(
        "the orderCreated -> reserve_inventory count to rise by 3",
        WITHIN,
        |b| {
            let now = edge_count(b, "topics.orderCreated", "subscribers.reserve_inventory");
            (now >= before + 3).then_some(())
        },
    );
    browser.wait(
        "the paymentCharged -> ship_order count to rise",
        WITHIN,
        |b| (edge_count(b, "topics.paymentCharged", "subscribers.ship_order") >= 3).then_some(()),
    );
    screenshot(&browser, "graph");
}

// ---------------------------------------------------------------------------------------
// (b) A component

#[test]
fn a_subscribers_panel_shows_its_highlighted_source_and_latency() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let (_dir, mut instance) = orders(&[]);
    let orders: Vec<String> = (0..3).map(|_| publish_order(&instance)).collect();
    for order in &orders {
        wait_shipped(&mut instance, order);
    }

    browser.goto(&page(&instance, "graph"));
    let reserve = browser.wait_for(&node("subscribers.reserve_inventory"), WITHIN);
    browser.click(&reserve);
    wait_hash(&browser, "#/component/subscribers.reserve_inventory");
    browser.wait_for_text("#component-panel h2", WITHIN, |t| {
        t.trim() == "subscribers.reserve_inventory"
    });
    let settings = browser.wait_for_text("#component-panel .component-settings", WITHIN, |t| {
        t.contains("orderCreated")
    });
    assert!(
        settings.contains('2'),
        "the concurrency (2) is among the settings: {settings}"
    );

    browser.wait_for("#component-panel pre.source span.tok-kw", WITHIN);
    let keywords = browser.texts("#component-panel pre.source span.tok-kw");
    for word in ["import", "let", "if", "return"] {
        assert!(
            keywords.iter().any(|k| k == word),
            "`{word}` is highlighted as a keyword: {keywords:?}"
        );
    }
    let strings = browser.texts("#component-panel pre.source span.tok-str");
    assert!(
        strings.iter().any(|s| s.contains("inventoryReserved")),
        "strings are highlighted: {strings:?}"
    );
    let comments = browser.texts("#component-panel pre.source span.tok-com");
    assert!(
        comments.iter().any(|c| c.contains("validate the order")),
        "comments are highlighted: {comments:?}"
    );
    let source = browser.texts("#component-panel pre.source");
    assert!(
        source[0].contains("orders::problem(order)"),
        "the whole source is shown: {source:?}"
    );

    browser.wait_until(
        "the latency histogram to have bars",
        "return document.querySelectorAll('#latency-histogram .bar').length;",
        &[],
        WITHIN,
    );
    let edit = browser.find("#component-panel a.edit-source");
    let href = browser.attribute(&edit, "href").unwrap_or_default();
    assert!(
        href.contains("#/edit/") && href.contains("reserve_inventory.rhai"),
        "the source links to its editor: {href}"
    );
    screenshot(&browser, "component");
}

// ---------------------------------------------------------------------------------------
// (c) The tail, and (d) the journey it links to

#[test]
fn the_tail_shows_events_pauses_and_opens_a_journey() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let (_dir, mut instance) = orders(&[]);
    browser.goto(&page(&instance, "tail"));
    browser.wait_for("input#tail-pattern", WITHIN);

    // The page opens its stream on its own time: publish until an order shows.
    let correlation = tail_until_shown(&browser, || publish_order(&instance));
    let trace = wait_shipped(&mut instance, &correlation);
    let created = format!(
        "ul#tail-list > li.tail-event[data-topic=\"orderCreated\"][data-correlation=\"{correlation}\"]"
    );
    let row = browser.find(&created);
    assert_eq!(
        browser.attribute(&row, "data-id").as_deref(),
        Some(correlation.as_str()),
        "the order's own event is the journey's first"
    );
    // The rest of the journey streams in too.
    browser.wait_for(
        &format!(
            "ul#tail-list > li.tail-event[data-topic=\"orderShipped\"][data-correlation=\"{correlation}\"]"
        ),
        WITHIN,
    );
    screenshot(&browser, "tail");

    // Paused, the list does not grow, though the server handles new orders.
    let pause = browser.find("button#tail-pause");
    browser.click(&pause);
    browser.wait("the pause button to be pressed", WITHIN, |b| {
        let button = b.find("button#tail-pause");
        let pressed = b.attribute(&button, "aria-pressed").as_deref() == Some("true");
        (pressed && b.text(&button).contains("Resume")).then_some(())
    });
    let rows = browser.count("ul#tail-list > li.tail-event");
    let paused = publish_order(&instance);
    wait_shipped(&mut instance, &paused);
    browser.assert_for(
        "the paused tail to show nothing new",
        Duration::from_millis(750),
        |b| {
            b.count("ul#tail-list > li.tail-event") == rows
                && b.count(&format!("li.tail-event[data-correlation=\"{paused}\"]")) == 0
        },
    );
    browser.click(&browser.find("button#tail-pause"));
    browser.wait("the pause button to be released", WITHIN, |b| {
        let button = b.find("button#tail-pause");
        let released = b.attribute(&button, "aria-pressed").as_deref() == Some("false");
        (released && b.text(&button).contains("Pause")).then_some(())
    });
    tail_until_shown(&browser, || publish_order(&instance));

    // A row's JSON, and the way to its journey.
    browser.click(&browser.find(&created));
    let shown = browser.wait("the event's JSON", WITHIN, |b| {
        let text = b.texts("pre#tail-json").into_iter().next()?;
        let event: Value = serde_json::from_str(&text).ok()?;
        (event["id"] == correlation.as_str()).then_some(event)
    });
    assert_eq!(shown["data"]["customer"], "Ann", "{shown}");
    let link = browser.wait_for("a.open-journey", WITHIN);
    let href = browser.attribute(&link, "href").unwrap_or_default();
    assert!(
        href.ends_with(&format!("#/journey/{correlation}")),
        "the link opens the journey: {href}"
    );
    browser.click(&link);
    wait_hash(&browser, &format!("#/journey/{correlation}"));

    // (d) The journey: every step, each inside its cause's list.
    browser.wait_until(
        "the journey's steps nested by causation",
        NESTED_BY_CAUSATION,
        &[json!(trace)],
        WITHIN,
    );
    let path = FULFILMENT
        .iter()
        .map(|t| format!("li.journey-step[data-topic=\"{t}\"]"))
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(
        browser.count(&format!("#journey-tree {path}")),
        1,
        "orderCreated > inventoryReserved > paymentCharged > orderShipped"
    );
    let id = browser.execute(
        "return document.querySelector('#journey-tree li.journey-step').dataset.id;",
        &[],
    );
    assert_eq!(id, json!(correlation), "the tree starts at the order");
    for topic in FULFILMENT {
        let css = format!("#journey-chains li.chain-step[data-topic=\"{topic}\"]");
        browser.wait_for_text(&css, WITHIN, |t| t.contains("done"));
        let step = browser.find(&css);
        let class = browser.attribute(&step, "class").unwrap_or_default();
        assert!(
            class.split_whitespace().any(|c| c == "done"),
            "the chain step {topic} is done: class {class:?}"
        );
    }
    screenshot(&browser, "journey");
}

/// Publishes events (`publish` gives each one's id, which is also its journey's
/// correlation id) until one shows in the tail, as the page opens its stream on its own
/// time; gives what showed. It waits for the published event itself, not any of its
/// journey: a journey whose first event went by before the stream opened shows only its
/// later events, and the next try publishes again.
fn tail_until_shown<T: Correlated>(browser: &Browser, mut publish: impl FnMut() -> T) -> T {
    let deadline = Instant::now() + WITHIN;
    loop {
        let published = publish();
        let css = format!(
            "li.tail-event[data-id=\"{0}\"][data-correlation=\"{0}\"]",
            published.correlation()
        );
        // Each try gives the page a second; a try that misses publishes again.
        let this_try = Instant::now() + Duration::from_secs(1);
        while Instant::now() < this_try {
            if browser.count(&css) > 0 {
                return published;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        if Instant::now() >= deadline {
            browser.fail("no published event showed in the tail");
        }
    }
}

/// What has a journey's correlation id.
trait Correlated {
    fn correlation(&self) -> &str;
}

impl Correlated for String {
    fn correlation(&self) -> &str {
        self
    }
}

impl Correlated for Published {
    fn correlation(&self) -> &str {
        &self.id
    }
}

// ---------------------------------------------------------------------------------------
// (e) Dead letters

const FAILING_FLOW: &str = indoc! {r#"
    [flow]
    name = "failing"

    [producers.api]
    kind = "http"

    [subscribers.always_fails]
    topic = "work"
    script = "fail.rhai"
    retry = { attempts = 1 }
"#};

#[test]
fn dead_letters_are_listed_replayed_and_dropped() {
    dead_letters_in_the_browser(None, "dead-letters");
}

#[test]
fn on_redis_dead_letters_are_listed_replayed_and_dropped() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    dead_letters_in_the_browser(Some(&server.url()), "redis-dead-letters");
}

/// Lists, replays one of and drops three dead letters through the page, on the memory
/// broker or on the Redis at `redis`; screenshots are named after `shots`.
fn dead_letters_in_the_browser(redis: Option<&str>, shots: &str) {
    let Some(browser) = Browser::start() else {
        return;
    };
    let dir = FlowDir::with_files(&[
        ("flow.toml", FAILING_FLOW),
        ("fail.rhai", "throw `no such customer: ${event.data.id}`;\n"),
    ]);
    let mut instance = match redis {
        None => run_flow(dir.root(), &["flow.toml"]),
        Some(url) => run_on(&dir, "flow.toml", url)
            .args(["--namespace", &common::redis::unique_namespace("dead")])
            .serve(WITHIN),
    };
    assert_console_served(&instance);
    let ids: Vec<u64> = (0..3).map(|_| publish_work(&instance, "work").n).collect();
    instance.wait("3 dead letters", WITHIN, |i| dead_letters(i).len() == 3);

    browser.goto(&page(&instance, "queues"));
    browser.wait("3 dead letters listed", WITHIN, |b| {
        (b.count("table#dead-table tr.dead-letter") == 3).then_some(())
    });
    let rows = browser.texts("table#dead-table tr.dead-letter");
    for n in &ids {
        assert!(
            rows.iter()
                .any(|r| r.contains(&format!("no such customer: {n}")) && r.contains("id")),
            "a row with the reason and payload of {n}: {rows:?}"
        );
    }
    screenshot(&browser, shots);

    // Replay one: it leaves the list (and, failing again, comes back as a new letter).
    let first = browser.find("table#dead-table tr.dead-letter");
    let replayed = browser
        .attribute(&first, "data-id")
        .expect("a dead letter's id");
    browser.click(&browser.find_in(&first, "input.dead-select"));
    browser.click(&browser.find("button#dead-replay"));
    let result = browser.wait_for_text("#dead-result", WITHIN, |t| t.contains('1'));
    browser.wait("the replayed letter to leave the list", WITHIN, |b| {
        let css = format!("table#dead-table tr.dead-letter[data-id=\"{replayed}\"]");
        (b.count(&css) == 0).then_some(())
    });
    instance.wait("the replayed event to fail again", WITHIN, |i| {
        let letters = dead_letters(i);
        letters.len() == 3 && letters.iter().all(|l| l["id"] != replayed.as_str())
    });
    browser.click(&browser.find("button#dead-refresh"));
    browser.wait("the new letter listed", WITHIN, |b| {
        (b.count("table#dead-table tr.dead-letter") == 3).then_some(())
    });

    // Drop them all.
    browser.click(&browser.find("button#dead-select-all"));
    let selected = browser.count("table#dead-table tr.dead-letter input.dead-select:checked");
    assert_eq!(selected, 3, "select all checks every row");
    browser.click(&browser.find("button#dead-drop"));
    browser.wait_for_text("#dead-result", WITHIN, |t| t != result && t.contains('3'));
    browser.wait("an empty list", WITHIN, |b| {
        (b.count("table#dead-table tr.dead-letter") == 0).then_some(())
    });
    assert!(
        dead_letters(&instance).is_empty(),
        "the server dropped them"
    );
    screenshot(&browser, &format!("{shots}-dropped"));
}

// ---------------------------------------------------------------------------------------
// (f) Live editing

#[test]
fn live_edit_shows_diagnostics_applies_fixes_and_catches_conflicts() {
    let Some(browser) = Browser::start() else {
        return;
    };
    // Without the watcher, a change on disk reaches the page only through a save (the
    // conflict below), never through a reload of its own.
    let (dir, mut instance) = worker_instance(&["--no-watch"]);
    let generation = instance.generation();
    let editor = open_editor(&browser, &instance);

    // A syntax error on line 2: a diagnostic, and the running code stays.
    browser.click(&editor);
    browser.press(&[key::CONTROL, key::END]);
    browser.send_keys(&editor, "let broken = ;\n");
    browser.press(&[key::CONTROL, "s"]);
    let diagnostic = "ul#editor-diagnostics > li.diagnostic[data-line=\"2\"]";
    let text = browser.wait_for_text(diagnostic, WITHIN, |t| !t.is_empty());
    assert!(
        text.contains("worker.rhai") && text.contains('2'),
        "the diagnostic names the file and the line: {text:?}"
    );
    browser.wait_for("#editor-gutter .diagnostic-line[data-line=\"2\"]", WITHIN);
    let outcome = browser.texts("#editor-outcome").join(" ");
    assert!(!outcome.trim().is_empty(), "an outcome is shown");
    let save = last_save(&browser);
    assert_eq!(save["result"], "invalid", "{save}");
    assert_eq!(instance.generation(), generation, "nothing was applied");
    assert_eq!(header_generation(&browser), Some(generation));
    screenshot(&browser, "editor-diagnostic");

    // Clicking the diagnostic puts the caret on its line.
    browser.click(&browser.find(diagnostic));
    browser.wait_until(
        "the caret on line 2",
        "const t = document.querySelector('textarea#editor'); \
         return t.value.slice(0, t.selectionStart).split('\\n').length === 2;",
        &[],
        WITHIN,
    );
    let n = publish_work(&instance, "work").n;
    wait_handled_by(&mut instance, "v1", n);

    // The fix: applied as the next generation, and events run it.
    replace_text(&browser, &editor, &worker("v2"));
    browser.press(&[key::CONTROL, "s"]);
    let applied = generation + 1;
    browser.wait_for_text("#editor-outcome", WITHIN, |t| {
        t.contains("applied") && shows_generation(t, applied)
    });
    assert_eq!(
        browser.count("ul#editor-diagnostics > li.diagnostic"),
        0,
        "the diagnostics are gone"
    );
    assert_eq!(instance.generation(), applied);
    assert_eq!(
        std::fs::read_to_string(dir.path("handlers/worker.rhai")).expect("the handler"),
        worker("v2"),
        "the page's text is on disk"
    );
    browser.wait("the header to show the new generation", WITHIN, |b| {
        (header_generation(b) == Some(applied)).then_some(())
    });
    let n = publish_work(&instance, "work").n;
    wait_handled_by(&mut instance, "v2", n);

    // A change on disk behind the page's back: the next save is a conflict.
    assert!(
        !is_displayed(&browser, "#editor-conflict"),
        "no conflict shown before there is one"
    );
    dir.save_atomic("handlers/worker.rhai", &worker("v3"));
    browser.click(&editor);
    browser.press(&[key::CONTROL, key::END]);
    browser.send_keys(&editor, "// edited in the page\n");
    browser.press(&[key::CONTROL, "s"]);
    wait_displayed(&browser, "#editor-conflict");
    assert_eq!(
        std::fs::read_to_string(dir.path("handlers/worker.rhai")).expect("the handler"),
        worker("v3"),
        "a conflict overwrites nothing"
    );
    assert_eq!(instance.generation(), applied, "a conflict reloads nothing");
    screenshot(&browser, "editor-conflict");
}

/// Opens the editor on the worker's handler through the page's own links; gives the
/// textarea once it holds the file.
fn open_editor(browser: &Browser, instance: &Running) -> common::browser::Element {
    browser.goto(&page(instance, "graph"));
    browser.click(&browser.wait_for("nav a[data-nav=\"edit\"]", WITHIN));
    let file = browser.wait_for(
        &format!("ul#file-list a[data-file=\"{WORKER_FILE}\"]"),
        WITHIN,
    );
    browser.click(&file);
    browser.wait_until(
        "the handler in the editor",
        "const t = document.querySelector('textarea#editor'); \
         return !!t && t.value.includes('worker v1 handled');",
        &[],
        WITHIN,
    );
    browser.find("textarea#editor")
}

/// Replaces the editor's text by typing `text` into it.
fn replace_text(browser: &Browser, editor: &common::browser::Element, text: &str) {
    browser.clear(editor);
    browser.send_keys(editor, text);
    let value = browser.execute("return arguments[0].value;", &[editor.arg()]);
    assert_eq!(value, json!(text), "the editor holds what was typed");
}

/// `window.edaflowConsole.lastSave`.
fn last_save(browser: &Browser) -> Value {
    browser.execute(
        "return window.edaflowConsole ? window.edaflowConsole.lastSave : null;",
        &[],
    )
}

// ---------------------------------------------------------------------------------------
// (g) Login

const TOKEN: &str = "console-test-token";

#[test]
fn with_a_token_the_page_asks_for_it_and_only_the_right_one_opens_the_graph() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let (_dir, instance) = orders(&["--token", TOKEN]);
    let unauthorized = instance.request("GET", "/console/model", "");
    assert_eq!(unauthorized.status, 401, "{unauthorized:?}");

    browser.goto(&format!("http://{}/", instance.addr()));
    wait_displayed(&browser, "form#login");
    assert_eq!(
        browser.count("svg#graph g.node"),
        0,
        "no data before the login"
    );

    let input = browser.find("input#login-token");
    browser.send_keys(&input, "not-the-token");
    browser.click(&browser.find("#login-submit"));
    browser.wait_until(
        "the login request to be answered",
        "return performance.getEntriesByType('resource') \
             .some(e => new URL(e.name).pathname === '/console/login' && e.responseEnd > 0);",
        &[],
        WITHIN,
    );
    browser.assert_for("the login form to stay", Duration::from_millis(300), |b| {
        is_displayed(b, "form#login") && b.count("svg#graph g.node") == 0
    });
    screenshot(&browser, "login");

    let input = browser.find("input#login-token");
    browser.clear(&input);
    browser.send_keys(&input, TOKEN);
    browser.send_keys(&input, key::ENTER);
    browser.wait_for(&node("subscribers.reserve_inventory"), WITHIN);
    assert!(!is_displayed(&browser, "form#login"), "the form is gone");
    let cookies = browser.execute("return document.cookie;", &[]);
    assert!(
        !cookies
            .as_str()
            .unwrap_or_default()
            .contains("edaflow_console"),
        "the session cookie is HttpOnly: {cookies}"
    );

    // The cookie holds: a new visit goes straight to the graph.
    browser.goto(&page(&instance, "graph"));
    browser.wait_for(&node("subscribers.reserve_inventory"), WITHIN);
    assert!(!is_displayed(&browser, "form#login"));
}

// ---------------------------------------------------------------------------------------
// (h) Health

#[test]
fn the_health_view_shows_the_generation_broker_and_processes() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let (_dir, instance) = orders(&[]);
    let generation = instance.generation();
    browser.goto(&page(&instance, "graph"));
    browser.click(&browser.wait_for("nav a[data-nav=\"health\"]", WITHIN));
    wait_hash(&browser, "#/health");
    browser.wait_for_text("#health-generation", WITHIN, |t| {
        first_number(t) == Some(generation)
    });
    browser.wait_for_text("#health-broker", WITHIN, |t| t.contains("memory"));
    browser.wait_for("table#processes tr.process[data-id]", WITHIN);
    let process = browser.find("table#processes tr.process");
    let id = browser.attribute(&process, "data-id").unwrap_or_default();
    assert!(!id.is_empty(), "the process has an id");
    assert!(
        !browser
            .texts("#health-last-reload")
            .join("")
            .trim()
            .is_empty(),
        "the last reload is shown"
    );
    assert_eq!(header_generation(&browser), Some(generation));
    assert!(
        !browser.texts("#status-health").join("").trim().is_empty(),
        "the header shows the health"
    );
    screenshot(&browser, "health");
}

// ---------------------------------------------------------------------------------------
// Redis

#[test]
fn on_redis_the_graph_tail_and_live_edit_work() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = FlowDir::with_files(&[
        ("flow.toml", WORKER_FLOW),
        ("handlers/worker.rhai", &worker("v1")),
    ]);
    let namespace = common::redis::unique_namespace("console");
    let mut instance = run_on(&dir, "flow.toml", &server.url())
        .args(["--namespace", &namespace])
        .serve(WITHIN);
    assert_console_served(&instance);

    // The graph, and its count.
    browser.goto(&page(&instance, "graph"));
    browser.wait_for(
        &format!("{}[data-kind=\"subscriber\"]", node("subscribers.worker")),
        WITHIN,
    );
    let before = edge_count(&browser, "topics.work", "subscribers.worker");
    let n = publish_work(&instance, "work").n;
    wait_handled_by(&mut instance, "v1", n);
    browser.wait("the work -> worker count to rise", WITHIN, |b| {
        (edge_count(b, "topics.work", "subscribers.worker") > before).then_some(())
    });
    screenshot(&browser, "redis-graph");

    // The tail.
    browser.click(&browser.find("nav a[data-nav=\"tail\"]"));
    browser.wait_for("input#tail-pattern", WITHIN);
    let shown = tail_until_shown(&browser, || publish_work(&instance, "work"));
    let row = browser.find(&format!("li.tail-event[data-correlation=\"{}\"]", shown.id));
    assert_eq!(
        browser.attribute(&row, "data-topic").as_deref(),
        Some("work")
    );
    wait_handled_by(&mut instance, "v1", shown.n);

    // A second process on the namespace: from here on, either may handle an event.
    let other = run_on(&dir, "flow.toml", &server.url())
        .args(["--namespace", &namespace])
        .serve(WITHIN);

    // The journey, from the history the processes share.
    browser.click(&row);
    let link = browser.wait_for("a.open-journey", WITHIN);
    browser.click(&link);
    browser.wait_for(
        &format!("#journey-tree li.journey-step[data-id=\"{}\"]", shown.id),
        WITHIN,
    );

    // Both processes, this one marked.
    browser.click(&browser.find("nav a[data-nav=\"health\"]"));
    browser.wait("both processes listed", WITHIN, |b| {
        (b.count("table#processes tr.process[data-id]") == 2).then_some(())
    });
    for pid in [instance.pid(), other.pid()] {
        assert!(
            browser
                .text(&browser.find("table#processes"))
                .contains(&pid.to_string()),
            "process {pid} listed"
        );
    }
    screenshot(&browser, "redis-health");

    // A live edit.
    let generation = instance.generation();
    let editor = open_editor(&browser, &instance);
    replace_text(&browser, &editor, &worker("v2"));
    browser.press(&[key::CONTROL, "s"]);
    browser.wait_for_text("#editor-outcome", WITHIN, |t| {
        t.contains("applied") && shows_generation(t, generation + 1)
    });
    // The other process (without a watcher, as this one) reloads the same file.
    let reload = other.request("POST", "/admin/reload", "");
    assert_eq!(reload.status, 200, "{reload:?}");
    assert_eq!(other.generation(), generation + 1);
    let n = publish_work(&instance, "work").n;
    wait_handled_by_either(&mut instance, &other, "v2", n);
    screenshot(&browser, "redis-editor");
}

/// A flow of 60 components (a producer, 30 topics, 29 subscribers in a chain with side
/// branches): every node is drawn, none overlaps another, and the first view is readable.
#[test]
fn a_flow_of_sixty_components_is_laid_out_without_overlaps() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let mut flow = String::from("[flow]\nname = \"big\"\n\n[producers.api]\nkind = \"http\"\n");
    for i in 0..29 {
        let next = if i % 3 == 2 {
            format!("[\"t{}\", \"side{i}\"]", i + 1)
        } else {
            format!("[\"t{}\"]", i + 1)
        };
        flow.push_str(&format!(
            "\n[subscribers.s{i}]\ntopic = \"t{i}\"\nscript = \"pass.rhai\"\nemits = {next}\n"
        ));
    }
    let dir = FlowDir::with_files(&[
        ("flow.toml", flow.as_str()),
        ("pass.rhai", "let seen = event.data;\n"),
    ]);
    let instance = run_flow(dir.root(), &["flow.toml"]);
    assert_console_served(&instance);
    browser.goto(&page(&instance, "graph"));
    browser.wait_for(&node("subscribers.s28"), WITHIN);
    let drawn = browser.count("svg#graph g.node[data-id]");
    assert!(drawn >= 60, "{drawn} nodes drawn");
    // Every pair of node boxes, in screen coordinates, apart.
    let overlaps = browser.execute(
        r#"
        const boxes = [...document.querySelectorAll('svg#graph g.node[data-id]')]
          .map(n => [n.dataset.id, n.getBoundingClientRect()]);
        const out = [];
        for (let i = 0; i < boxes.length; i++)
          for (let j = i + 1; j < boxes.length; j++) {
            const [a, p] = boxes[i], [b, q] = boxes[j];
            if (p.left < q.right - 1 && q.left < p.right - 1 && p.top < q.bottom - 1 && q.top < p.bottom - 1)
              out.push(a + ' / ' + b);
          }
        return out;
        "#,
        &[],
    );
    assert_eq!(overlaps, json!([]), "overlapping nodes");
    // The first view's labels are at least 7 px high on screen.
    let smallest = browser.execute(
        r#"
        const hs = [...document.querySelectorAll('svg#graph g.node[data-id] .node-label')]
          .map(l => l.getBoundingClientRect().height).filter(h => h > 0);
        return Math.min(...hs);
        "#,
        &[],
    );
    let smallest = smallest.as_f64().unwrap_or(0.0);
    assert!(smallest >= 7.0, "labels {smallest} px high");
    screenshot(&browser, "graph-sixty");
}

// ---------------------------------------------------------------------------------------
// The harness itself

/// A page with something to click, type into, save with Ctrl+S, and log.
const HARNESS_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>harness</title>
<style>body { font: 16px sans-serif; margin: 2em; } li.item { color: #063; }</style>
</head><body>
<h1 id="title">WebDriver harness</h1>
<button id="add">Add an item</button>
<ul id="items"></ul>
<input id="name" placeholder="a name"> <span id="entered"></span>
<p><textarea id="editor" rows="4" cols="40"></textarea></p>
<p id="saved">not saved</p>
<p id="hidden" style="display: none">hidden</p>
<script>
let count = 0;
document.getElementById('add').addEventListener('click', () => {
  // Later than the click's answer: the test has to wait for it.
  setTimeout(() => {
    const li = document.createElement('li');
    li.className = 'item';
    li.dataset.n = String(++count);
    li.textContent = 'item ' + count;
    document.getElementById('items').appendChild(li);
  }, 150);
});
document.getElementById('name').addEventListener('keydown', e => {
  if (e.key === 'Enter') {
    document.getElementById('entered').textContent = 'entered: ' + e.target.value;
  }
});
document.addEventListener('keydown', e => {
  if (e.ctrlKey && e.key === 's') {
    e.preventDefault();
    const lines = document.getElementById('editor').value.split('\n').length;
    document.getElementById('saved').textContent = 'saved ' + lines + ' lines';
  }
});
console.log('harness page ready');
console.error('a deliberate error for the log');
</script>
</body></html>
"#;

/// Serves `HARNESS_PAGE` for every request from a loopback listener of the test, until
/// dropped.
struct StaticPage {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StaticPage {
    fn serve(html: &'static str) -> StaticPage {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("its address");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    answer(stream, html);
                }
            }
        });
        StaticPage {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

/// Reads one request's head and answers it with `html` (404 for anything but `/`).
fn answer(mut stream: TcpStream, html: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
        line.clear();
    }
    let (status, body) = if first.starts_with("GET / ") {
        ("200 OK", html)
    } else {
        ("404 Not Found", "not found")
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

impl Drop for StaticPage {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn harness_drives_a_static_page() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let served = StaticPage::serve(HARNESS_PAGE);
    browser.goto(&format!("http://{}/", served.addr));
    assert_eq!(browser.text(&browser.find("#title")), "WebDriver harness");
    assert_eq!(browser.url(), format!("http://{}/", served.addr));

    // Clicks, and waiting for what they cause later.
    let add = browser.find("button#add");
    browser.click(&add);
    browser.click(&add);
    browser.wait_until(
        "two items",
        "return document.querySelectorAll('li.item').length === 2;",
        &[],
        WITHIN,
    );
    let items = browser.find_all("ul#items li.item");
    assert_eq!(items.len(), 2);
    assert_eq!(browser.attribute(&items[1], "data-n").as_deref(), Some("2"));
    assert_eq!(browser.text(&items[0]), "item 1");
    assert_eq!(browser.attribute(&items[0], "data-missing"), None);
    let list = browser.find("#items");
    assert_eq!(browser.find_all_in(&list, "li").len(), 2);
    assert_eq!(browser.texts("li.item"), ["item 1", "item 2"]);

    // Typing, Enter, and Ctrl+S through the keyboard actions.
    let name = browser.find("input#name");
    browser.send_keys(&name, "Ann");
    browser.send_keys(&name, key::ENTER);
    browser.wait_for_text("#entered", WITHIN, |t| t == "entered: Ann");
    let editor = browser.find("textarea#editor");
    browser.send_keys(&editor, "one\ntwo\nthree");
    browser.press(&[key::CONTROL, "s"]);
    browser.wait_for_text("#saved", WITHIN, |t| t == "saved 3 lines");
    browser.clear(&editor);
    browser.send_keys(&editor, "only");
    assert_eq!(
        browser.execute("return arguments[0].value;", &[editor.arg()]),
        json!("only")
    );

    // Scripts with arguments, returning JSON.
    let value = browser.execute(
        "return {sum: arguments[0] + arguments[1].length, id: arguments[2].id};",
        &[json!(40), json!([1, 2]), editor.arg()],
    );
    assert_eq!(value, json!({ "sum": 42, "id": "editor" }));
    assert!(browser.displayed(&browser.find("#title")));
    assert!(!browser.displayed(&browser.find("#hidden")));
    assert!(browser.try_find("#nothing").is_none());
    assert_eq!(browser.count("li"), 2);

    // A screenshot is a PNG.
    let path = browser.screenshot("harness");
    let png = std::fs::read(&path).expect("the screenshot file");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
        "{} is a PNG",
        path.display()
    );

    // The console log.
    let log = browser.console_log();
    assert!(
        log.iter().any(|l| l.contains("harness page ready")),
        "{log:?}"
    );
    assert_eq!(browser.console_errors().len(), 1, "{log:?}");

    // A failed wait says what it waited for and shows the page.
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        browser.wait_for("#never", Duration::from_millis(200));
    }))
    .expect_err("waiting for nothing fails");
    let message = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    for part in [
        "waiting for an element matching \"#never\"",
        "===== screenshot: ",
        "harness_drives_a_static_page-failed-1.png",
        "a deliberate error for the log",
        "<h1 id=\"title\">WebDriver harness</h1>",
    ] {
        assert!(
            message.contains(part),
            "{part:?} in the failure:\n{message}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The save-latency benchmark (see bench/console/README.md)

/// How many saves `save_latency` times.
const SAVES: usize = 50;

#[test]
#[ignore = "a benchmark: cargo test --release --test console_browser -- --ignored save_latency"]
fn save_latency() {
    let Some(browser) = Browser::start() else {
        return;
    };
    // Without the watcher: its own reload of a saved file could take a save's change
    // first, and leave the save's reload `unchanged`.
    let (_dir, instance) = worker_instance(&["--no-watch"]);
    let editor = open_editor(&browser, &instance);
    let versions = [worker("a"), worker("b")];
    let mut samples = Vec::with_capacity(SAVES);
    for i in 0..SAVES {
        // The text is set at once (typing is not what is measured), as an edit would leave it.
        browser.execute(
            "const t = arguments[0]; t.value = arguments[1]; \
             t.dispatchEvent(new Event('input', { bubbles: true })); \
             window.benchBefore = window.edaflowConsole ? window.edaflowConsole.lastSave : null; \
             t.focus();",
            &[editor.arg(), json!(versions[i % 2])],
        );
        browser.press(&[key::CONTROL, "s"]);
        let save = browser.wait_until(
            "the save's outcome",
            "const now = window.edaflowConsole && window.edaflowConsole.lastSave; \
             return now && now !== window.benchBefore ? now : null;",
            &[],
            WITHIN,
        );
        assert_eq!(save["result"], "applied", "save {i}: {save}");
        samples.push(
            save["ms"]
                .as_f64()
                .unwrap_or_else(|| panic!("no ms in {save}")),
        );
    }
    samples.sort_by(f64::total_cmp);
    let rank = |p: f64| samples[((p * SAVES as f64).ceil() as usize).clamp(1, SAVES) - 1];
    println!(
        "RESULT console_save_ms saves={SAVES} p50={:.1} p99={:.1} max={:.1}",
        rank(0.50),
        rank(0.99),
        samples[SAVES - 1]
    );
}
