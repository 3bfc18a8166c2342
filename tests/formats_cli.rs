//! The machine-readable output of the binary, read back as a tool reads it: `validate`,
//! `test` and `trace` with `--format json`, `graph --format json`, and the JUnit report of
//! `test --junit` parsed as XML. Good and broken flows; the trace comes from a running
//! instance.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{copy_orders_flow, crate_root, http, run_flow, Edaflow, Finished, FlowDir};

/// How long a journey may take to be recorded by a running instance.
const PATIENCE: Duration = Duration::from_secs(10);

fn cli_fixtures() -> std::path::PathBuf {
    crate_root().join("tests/fixtures/cli")
}

fn json_of(finished: &Finished) -> Value {
    serde_json::from_str(&finished.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", finished.dump()))
}

/// The diagnostic with `code`, or a panic showing them all.
fn diagnostic<'a>(json: &'a Value, code: &str) -> &'a Value {
    json["diagnostics"]
        .as_array()
        .expect("diagnostics")
        .iter()
        .find(|d| d["code"] == code)
        .unwrap_or_else(|| panic!("no {code} in {json:#}"))
}

#[test]
fn validate_json_lists_every_error_with_its_place() {
    let finished = Edaflow::new(cli_fixtures())
        .args(["validate", "broken/flow.toml", "--format", "json"])
        .run()
        .code(1)
        .stderr_has("broken/flow.toml: 3 errors (listed on stdout)");
    let json = json_of(&finished);
    assert_eq!(json["ok"], false);
    assert_eq!(json["summary"]["errors"], 3);
    assert_eq!(json["summary"]["declared"], Value::Null);
    assert_eq!(json["diagnostics"].as_array().map(Vec::len), Some(3));
    let places = [
        ("edaflow::flow::unknown_key", 8, 1),
        ("edaflow::flow::invalid_topic", 12, 11),
        ("edaflow::flow::invalid_duration", 13, 36),
    ];
    for (code, line, column) in places {
        let d = diagnostic(&json, code);
        assert_eq!(d["file"], "broken/flow.toml", "{d:#}");
        assert_eq!(
            (d["line"].clone(), d["column"].clone()),
            (line.into(), column.into()),
            "{d:#}"
        );
        assert_eq!(d["severity"], "error", "{d:#}");
        assert_eq!(d["labels"][0]["line"], line, "{d:#}");
        assert!(
            d["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{d:#}"
        );
    }
    assert_eq!(
        diagnostic(&json, "edaflow::flow::unknown_key")["help"],
        "did you mean `body_limit`?"
    );
}

#[test]
fn validate_json_of_a_good_flow_counts_it_and_lists_its_warnings() {
    let finished = Edaflow::new(crate_root())
        .args(["validate", "flows/orders.toml", "--format", "json"])
        .run()
        .success();
    let json = json_of(&finished);
    assert_eq!(json["ok"], true);
    let declared = &json["summary"]["declared"];
    assert_eq!(declared["files"], 1);
    assert_eq!(declared["producers"], 1);
    assert_eq!(declared["subscribers"], 6);
    assert_eq!(declared["chains"], 1);
    assert_eq!(declared["tests"], 5);
    assert_eq!(json["summary"]["errors"], 0);
    // JSON carries the warnings, so stderr stays quiet.
    assert_eq!(finished.stderr, "", "{}", finished.dump());

    // A valid flow with warnings: each with its line.
    let finished = Edaflow::new(cli_fixtures())
        .args(["validate", "failing_test/flow.toml", "--format", "json"])
        .run()
        .success();
    let json = json_of(&finished);
    assert_eq!(json["summary"]["warnings"], 2);
    let consumed = diagnostic(&json, "edaflow::flow::never_consumed");
    assert_eq!(consumed["severity"], "warning");
    assert_eq!(
        (consumed["line"].clone(), consumed["column"].clone()),
        (8.into(), 11.into())
    );
    let produced = diagnostic(&json, "edaflow::flow::never_produced");
    assert_eq!(produced["line"], 6);
    assert_eq!(produced["file"], "failing_test/flow.toml");
}

#[test]
fn test_json_reports_each_flow_test() {
    let finished = Edaflow::new(cli_fixtures())
        .args(["test", "failing_test/flow.toml", "--format", "json"])
        .run()
        .code(1)
        .stderr_has("1 of 2 flow tests failed");
    let json = json_of(&finished);
    assert_eq!(json["passed"], false);
    let summary = &json["summary"];
    assert_eq!(
        (
            summary["total"].clone(),
            summary["passed"].clone(),
            summary["failed"].clone()
        ),
        (2.into(), 1.into(), 1.into())
    );
    let tests = json["tests"].as_array().expect("tests");
    assert_eq!(tests[0]["name"], "stock is reserved for Ann");
    assert_eq!(tests[0]["passed"], true);
    assert_eq!(tests[0]["failure"], Value::Null);
    assert_eq!(tests[1]["name"], "expects the wrong customer");
    assert_eq!(tests[1]["passed"], false);
    assert!(
        tests[1]["failure"]
            .as_str()
            .is_some_and(|f| f.contains(r#"data.customer: expected "Eve", got "Bob""#)),
        "{json:#}"
    );
    for test in tests {
        assert_eq!(test["file"], "failing_test/flow.toml");
        assert!(
            test["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
            "{test:#}"
        );
    }

    // Flows that do not load: no tests, the errors, exit 1.
    let finished = Edaflow::new(cli_fixtures())
        .args(["test", "broken/flow.toml", "--format", "json"])
        .run()
        .code(1);
    let json = json_of(&finished);
    assert_eq!(json["passed"], false);
    assert_eq!(json["tests"].as_array().map(Vec::len), Some(0));
    assert_eq!(diagnostic(&json, "edaflow::flow::unknown_key")["line"], 8);
}

/// Parses a JUnit report, checks the totals on `<testsuites>` agree with its test cases,
/// and gives back (tests, failures, errors) and the parsed text.
fn junit_counts(path: &Path) -> (usize, usize, usize, String) {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no JUnit report at {}: {e}", path.display()));
    let doc = roxmltree::Document::parse(&text)
        .unwrap_or_else(|e| panic!("not well-formed XML ({e}):\n{text}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites", "{text}");
    let attr = |node: roxmltree::Node, name: &str| -> usize {
        node.attribute(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric {name} on <{}>:\n{text}", node.tag_name().name()))
    };
    let cases: Vec<roxmltree::Node> = root
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    let with = |child: &str| {
        cases
            .iter()
            .filter(|c| c.children().any(|n| n.has_tag_name(child)))
            .count()
    };
    let counts = (
        attr(root, "tests"),
        attr(root, "failures"),
        attr(root, "errors"),
    );
    assert_eq!(
        counts,
        (cases.len(), with("failure"), with("error")),
        "{text}"
    );
    let mut suite_tests = 0;
    for suite in root.children().filter(|n| n.has_tag_name("testsuite")) {
        suite_tests += attr(suite, "tests");
    }
    assert_eq!(suite_tests, cases.len(), "{text}");
    (counts.0, counts.1, counts.2, text)
}

#[test]
fn junit_reports_are_well_formed_with_the_right_counts() {
    let out = FlowDir::new();
    // A folder that does not exist yet, as CI paths often are.
    let report = out.path("reports/failing.xml");
    let finished = Edaflow::new(cli_fixtures())
        .args(["test", "failing_test/flow.toml", "--junit"])
        .args([report.display().to_string()])
        .run()
        .code(1)
        // The normal output still prints.
        .stdout_has("flow test result: FAILED. 1 passed; 1 failed");
    let (tests, failures, errors, text) = junit_counts(&report);
    assert_eq!((tests, failures, errors), (2, 1, 0), "{}", finished.dump());
    let doc = roxmltree::Document::parse(&text).expect("parsed above");
    let failure = doc
        .descendants()
        .find(|n| n.has_tag_name("failure"))
        .expect("a failure");
    assert_eq!(
        failure.parent().and_then(|c| c.attribute("name")),
        Some("expects the wrong customer")
    );
    assert!(
        failure
            .text()
            .is_some_and(|t| t.contains("data.customer: expected \"Eve\", got \"Bob\"\n")),
        "{text}"
    );

    let passing = out.path("passing.xml");
    Edaflow::new(crate_root())
        .args(["test", "flows/orders.toml", "--format", "json", "--junit"])
        .args([passing.display().to_string()])
        .run()
        .success();
    let (tests, failures, errors, text) = junit_counts(&passing);
    assert_eq!((tests, failures, errors), (5, 0, 0), "{text}");

    let broken = out.path("broken.xml");
    Edaflow::new(cli_fixtures())
        .args(["test", "broken/flow.toml", "--junit"])
        .args([broken.display().to_string()])
        .run()
        .code(1);
    let (tests, failures, errors, text) = junit_counts(&broken);
    assert_eq!((tests, failures, errors), (1, 0, 1), "{text}");
    assert!(text.contains("unknown key `body_limt`"), "{text}");
}

#[test]
fn junit_escapes_what_a_test_name_and_its_failure_hold() {
    let dir = FlowDir::new();
    let name = "a <b> & \"c\" ]]> 'd' \u{1}";
    dir.write(
        "flow.toml",
        &format!(
            "[subscribers.echo]\ntopic = \"in\"\nscript = \"echo.rhai\"\nemits = [\"out\"]\n\n[subscribers.sink]\ntopic = \"out\"\n\n[[tests]]\nname = {}\npublish = {{ topic = \"in\", data = {{ text = \"<x>&</x>\" }} }}\nexpect = [{{ topic = \"out\", data = {{ text = \"]]>\" }} }}]\n",
            serde_json::to_string(name).expect("a TOML basic string is a JSON string here")
        ),
    );
    dir.write("echo.rhai", "emit(\"out\", event.data);");
    let report = dir.path("report.xml");
    Edaflow::new(dir.root())
        .args(["test", "flow.toml", "--junit", "report.xml"])
        .run()
        .code(1);
    let (tests, failures, _, text) = junit_counts(&report);
    assert_eq!((tests, failures), (1, 1), "{text}");
    let doc = roxmltree::Document::parse(&text).expect("parsed above");
    let case = doc
        .descendants()
        .find(|n| n.has_tag_name("testcase"))
        .expect("a test case");
    // The control character XML cannot carry becomes U+FFFD; the rest is intact.
    assert_eq!(
        case.attribute("name"),
        Some("a <b> & \"c\" ]]> 'd' \u{fffd}")
    );
    let failure = case
        .children()
        .find(|n| n.has_tag_name("failure"))
        .and_then(|n| n.text())
        .unwrap_or_default();
    assert!(failure.contains(r#"got:  {"text": "<x>&</x>"}"#), "{text}");
}

#[test]
fn graph_json_has_nodes_and_edges_with_kinds() {
    let finished = Edaflow::new(crate_root())
        .args(["graph", "examples/saga", "--format", "json"])
        .run()
        .success();
    let json = json_of(&finished);
    let nodes = json["nodes"].as_array().expect("nodes");
    let kind_of_node = |id: &str| {
        nodes
            .iter()
            .find(|n| n["id"] == id)
            .map(|n| n["kind"].clone())
            .unwrap_or_else(|| panic!("no node {id} in {json:#}"))
    };
    assert_eq!(kind_of_node("producer_api"), "producer");
    assert_eq!(kind_of_node("queue_pickups"), "queue");
    assert_eq!(kind_of_node("sub_ship_order"), "subscriber");
    let edges = json["edges"].as_array().expect("edges");
    for edge in edges {
        // Every edge joins two nodes that are listed.
        kind_of_node(edge["from"].as_str().expect("from"));
        kind_of_node(edge["to"].as_str().expect("to"));
        assert!(edge["kind"].is_string(), "{edge:#}");
    }
    // ship_order.rhai calls enqueue("pickups", …); no flow file key declares it.
    assert!(
        edges.iter().any(|e| e["from"] == "sub_ship_order"
            && e["to"] == "queue_pickups"
            && e["kind"] == "enqueues"),
        "{json:#}"
    );
    // The other formats draw it too.
    Edaflow::new(crate_root())
        .args(["graph", "examples/saga"])
        .run()
        .success()
        .stdout_has("  sub_ship_order --> queue_pickups\n");
}

#[test]
fn trace_json_of_a_journey_on_a_running_instance() {
    let dir = FlowDir::new();
    copy_orders_flow(&dir);
    let running = run_flow(dir.root(), &["flows/orders.toml"]);
    let addr = running.addr();
    let reply = http(
        addr,
        "POST",
        "/topics/orderCreated",
        &[("Content-Type", "application/json")],
        br#"{"order_id": 7, "customer": "Ann", "total": 20}"#,
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    let id: Value = serde_json::from_str(&reply.body).expect("JSON");
    let id = id["id"].as_str().expect("an id").to_owned();
    let url = format!("http://{addr}");
    // The journey ends with orderShipped; wait until it is recorded.
    let deadline = Instant::now() + PATIENCE;
    let json = loop {
        let finished = Edaflow::new(dir.root())
            .args(["trace", &id, "--format", "json", "--url", &url])
            .run();
        if finished.status.success() {
            let json = json_of(&finished);
            let shipped = json["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["topic"] == "orderShipped"));
            if shipped {
                break json;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the journey never reached orderShipped\n{}\n{}",
            finished.dump(),
            running.dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(json["correlation_id"], id.as_str());
    let events = json["events"].as_array().expect("events");
    let root = &events[0];
    assert_eq!(root["id"], id.as_str());
    assert_eq!(root["topic"], "orderCreated");
    assert_eq!(root["parent_id"], Value::Null);
    assert_eq!(root["depth"], 0);
    assert_eq!(root["delta_ms"], Value::Null);
    // Each event comes after its parent, one level deeper.
    for (i, event) in events.iter().enumerate().skip(1) {
        let parent = event["parent_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{json:#}"));
        let at = events[..i]
            .iter()
            .position(|p| p["id"] == parent)
            .unwrap_or_else(|| panic!("{parent} is not before {event:#} in {json:#}"));
        assert_eq!(
            event["depth"].as_u64(),
            events[at]["depth"].as_u64().map(|d| d + 1),
            "{json:#}"
        );
        assert!(event["delta_ms"].as_f64().is_some(), "{event:#}");
        assert!(
            event["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{event:#}"
        );
    }
    let by_topic = |topic: &str| {
        events
            .iter()
            .find(|e| e["topic"] == topic)
            .unwrap_or_else(|| panic!("no {topic} in {json:#}"))
    };
    let reserved = by_topic("inventoryReserved");
    assert_eq!(reserved["parent_id"], id.as_str());
    assert_eq!(reserved["emitted_by"], "reserve_inventory");
    assert_eq!(reserved["generation"], 1);
    let charged = by_topic("paymentCharged");
    assert_eq!(charged["parent_id"], reserved["id"]);
    assert_eq!(charged["emitted_by"], "charge_payment");
    assert_eq!(by_topic("orderShipped")["parent_id"], charged["id"]);
}
