//! Schemas: the flow-file JSON Schema (`edaflow schema`, `docs/flow.schema.json`) against
//! every shipped flow and typical mistakes, topic schemas at ingest and on handlers' emits,
//! their diagnostics and hot reload, and `edaflow asyncapi` against the official AsyncAPI
//! 3.0.0 JSON Schema (from the npm package `@asyncapi/specs`, cached under target/).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{crate_root, http, Edaflow, FlowDir};
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(20);

fn committed_schema() -> Value {
    let text = std::fs::read_to_string(crate_root().join("docs/flow.schema.json"))
        .expect("docs/flow.schema.json is committed");
    serde_json::from_str(&text).expect("the committed schema is JSON")
}

fn flow_validator() -> jsonschema::Validator {
    jsonschema::validator_for(&committed_schema()).expect("the flow schema compiles")
}

/// A flow file's TOML as JSON, the shape editors check against the schema.
fn toml_as_json(text: &str) -> Value {
    let value: toml::Value = toml::from_str(text).expect("TOML");
    serde_json::to_value(value).expect("TOML as JSON")
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path().as_str()))
        .collect()
}

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a folder").flatten() {
        let path = entry.path();
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

#[test]
fn the_committed_schema_is_what_the_command_prints() {
    let printed = Edaflow::new(crate_root()).args(["schema"]).run().success();
    let committed =
        std::fs::read_to_string(crate_root().join("docs/flow.schema.json")).expect("committed");
    assert!(
        printed.stdout == committed,
        "docs/flow.schema.json is stale: run `cargo run -- schema > docs/flow.schema.json`"
    );
}

#[test]
fn every_shipped_flow_matches_the_schema_and_points_at_it() {
    let validator = flow_validator();
    let mut files = Vec::new();
    for dir in ["flows", "examples", "bench/flows"] {
        toml_files(&crate_root().join(dir), &mut files);
    }
    assert!(files.len() > 10, "found only {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let problems = errors(&validator, &toml_as_json(&text));
        assert!(problems.is_empty(), "{}: {problems:#?}", file.display());
        // The directive names the committed schema, relative to the file.
        let first = text.lines().next().unwrap_or_default();
        let target = first
            .strip_prefix("#:schema ")
            .unwrap_or_else(|| panic!("{} does not start with #:schema", file.display()));
        let resolved = file.parent().expect("a folder").join(target);
        assert_eq!(
            std::fs::canonicalize(&resolved).expect("the #:schema target exists"),
            std::fs::canonicalize(crate_root().join("docs/flow.schema.json")).expect("schema"),
            "{}",
            file.display()
        );
    }
}

#[test]
fn the_init_template_matches_the_schema_it_writes() {
    let dir = FlowDir::new();
    Edaflow::new(dir.root())
        .args(["init", "hello"])
        .run()
        .success();
    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path("hello/flow.schema.json")).expect("init writes it"),
    )
    .expect("JSON");
    assert_eq!(written, committed_schema());
    let flow = std::fs::read_to_string(dir.path("hello/flow.toml")).expect("written");
    assert!(flow.starts_with("#:schema ./flow.schema.json\n"), "{flow}");
    let validator = jsonschema::validator_for(&written).expect("compiles");
    let problems = errors(&validator, &toml_as_json(&flow));
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn typical_mistakes_are_rejected_where_they_are() {
    let validator = flow_validator();
    let cases = [
        // An unknown key, a misspelt one, a wrong type, a bad enum value, a bad duration,
        // a producer key of another kind, a subscriber reading nothing, or two things.
        (
            "[subscribers.a]\ntopic = \"t\"\nscirpt = \"a.rhai\"\n",
            "/subscribers/a",
        ),
        ("[flow]\nnmae = \"x\"\n", "/flow"),
        (
            "[subscribers.a]\ntopic = \"t\"\nconcurrency = \"4\"\n",
            "/subscribers/a/concurrency",
        ),
        ("[topics.t]\nmode = \"streams\"\n", "/topics/t/mode"),
        ("[queues.q]\ndelay = \"10\"\n", "/queues/q/delay"),
        (
            "[producers.p]\nkind = \"http\"\nevery = \"1s\"\n",
            "/producers/p",
        ),
        ("[subscribers.a]\nscript = \"a.rhai\"\n", "/subscribers/a"),
        (
            "[subscribers.a]\ntopic = \"t\"\nqueue = \"q\"\n",
            "/subscribers/a",
        ),
        (
            "[topics.t]\nvalidate_emits = \"yes\"\n",
            "/topics/t/validate_emits",
        ),
        ("[nonsense]\n", ""),
    ];
    for (text, at) in cases {
        let problems = errors(&validator, &toml_as_json(text));
        assert!(
            problems.iter().any(|p| p.starts_with(&format!("{at}:"))),
            "{text:?} should fail at {at:?}, got {problems:#?}"
        );
    }
    // And what the loader takes, the schema takes.
    let fine = "[subscribers.a]\ntopic = \"t\"\nretry = { attempts = 5, backoff = \"1m30s\" }\n\n[topics.t]\nschema = \"t.json\"\nvalidate_emits = true\n";
    assert!(errors(&validator, &toml_as_json(fine)).is_empty());
}

#[test]
fn the_loader_accepts_the_schema_directive() {
    let dir = FlowDir::with_files(&[(
        "flow.toml",
        "#:schema ./flow.schema.json\n[subscribers.a]\ntopic = \"t\"\n\n[producers.p]\nkind = \"generator\"\ntopic = \"t\"\ncount = 1\n",
    )]);
    Edaflow::new(dir.root())
        .args(["validate", "flow.toml"])
        .run()
        .success();
}

const ORDER_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["order_id", "total"],
  "properties": {
    "order_id": {"type": "integer"},
    "total": {"type": "number", "minimum": 0},
    "items": {"type": "array", "items": {"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}}}
  }
}"#;

const SCHEMA_FLOW: &str = r#"[producers.api]
kind = "http"

[topics.orderCreated]
schema = "schemas/order.json"

[topics.orderPriced]
schema = "schemas/order.json"
validate_emits = true

[subscribers.price]
topic = "orderCreated"
script = "price.rhai"
emits = ["orderPriced"]

[subscribers.audit]
topic = "orderPriced"
"#;

/// The handler emits a negative total when asked to: the emit fails `orderPriced`'s schema.
const PRICE: &str = r#"let total = if event.data.order_id == 13 { -1.0 } else { event.data.total };
emit("orderPriced", #{ order_id: event.data.order_id, total: total });
"#;

fn schema_dir() -> FlowDir {
    FlowDir::with_files(&[
        ("flow.toml", SCHEMA_FLOW),
        ("schemas/order.json", ORDER_SCHEMA),
        ("price.rhai", PRICE),
    ])
}

fn post(running: &common::Running, topic: &str, body: &str) -> common::Reply {
    http(
        running.addr(),
        "POST",
        &format!("/topics/{topic}"),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

#[test]
fn ingest_refuses_data_that_does_not_match_naming_the_pointer() {
    let dir = schema_dir();
    let running = Edaflow::new(dir.root())
        .args(["run", "flow.toml", "--listen", "127.0.0.1:0"])
        .serve(PATIENCE);
    let ok = post(&running, "orderCreated", r#"{"order_id": 1, "total": 9.5}"#);
    assert_eq!(ok.status, 202, "{ok:?}\n{}", running.dump());

    let bad = post(
        &running,
        "orderCreated",
        r#"{"order_id": 1, "total": 9.5, "items": [{"sku": 7}]}"#,
    );
    assert_eq!(bad.status, 400, "{bad:?}");
    let body: Value = serde_json::from_str(&bad.body).expect("JSON body");
    assert_eq!(body["code"], "schema_mismatch", "{body}");
    assert_eq!(body["pointer"], "/items/0/sku", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("string")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("/items/0/sku")),
        "{body}"
    );

    let missing = post(&running, "orderCreated", r#"{"order_id": 1}"#);
    assert_eq!(missing.status, 400, "{missing:?}");
    let body: Value = serde_json::from_str(&missing.body).expect("JSON body");
    assert_eq!(body["pointer"], "", "{body}");
    assert!(
        body["reason"].as_str().is_some_and(|r| r.contains("total")),
        "{body}"
    );

    // A topic without a schema takes anything.
    let free = post(&running, "somethingElse", r#"[1, "two"]"#);
    assert_eq!(free.status, 202, "{free:?}");
}

#[test]
fn an_emit_that_fails_its_schema_is_dead_lettered_with_the_pointer() {
    let dir = schema_dir();
    let running = Edaflow::new(dir.root())
        .args(["run", "flow.toml", "--listen", "127.0.0.1:0"])
        .serve(PATIENCE);
    let good = post(&running, "orderCreated", r#"{"order_id": 1, "total": 9.5}"#);
    assert_eq!(good.status, 202, "{good:?}");
    let bad = post(
        &running,
        "orderCreated",
        r#"{"order_id": 13, "total": 9.5}"#,
    );
    assert_eq!(bad.status, 202, "{bad:?}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let dead = running.request("GET", "/admin/dead", "");
        if dead.status == 200 && dead.body.contains("/total") {
            assert!(dead.body.contains("orderPriced"), "{}", dead.body);
            assert!(dead.body.contains("dead.price"), "{}", dead.body);
            // Not retried: dead-lettered after its first run.
            assert!(!dead.body.contains("\"attempts\":3"), "{}", dead.body);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter naming /total: {dead:?}\n{}",
            running.dump()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_missing_or_invalid_schema_file_is_a_diagnostic_at_the_key() {
    let missing = FlowDir::with_files(&[("flow.toml", "[topics.t]\nschema = \"nope.json\"\n")]);
    Edaflow::new(missing.root())
        .env("NO_COLOR", "1")
        .args(["validate", "flow.toml"])
        .run()
        .code(1)
        .stderr_has("edaflow::flow::missing_schema")
        .stderr_has("cannot read event schema nope.json")
        .stderr_has("schema = \"nope.json\"");

    let not_json = FlowDir::with_files(&[
        ("flow.toml", "[topics.t]\nschema = \"bad.json\"\n"),
        ("bad.json", "{ \"type\": "),
    ]);
    Edaflow::new(not_json.root())
        .env("NO_COLOR", "1")
        .args(["validate", "flow.toml"])
        .run()
        .code(1)
        .stderr_has("edaflow::flow::invalid_schema")
        .stderr_has("not JSON");

    let not_a_schema = FlowDir::with_files(&[
        ("flow.toml", "[topics.t]\nschema = \"bad.json\"\n"),
        ("bad.json", "{ \"type\": \"nothing\" }"),
    ]);
    Edaflow::new(not_a_schema.root())
        .env("NO_COLOR", "1")
        .args(["validate", "flow.toml"])
        .run()
        .code(1)
        .stderr_has("invalid event schema bad.json");

    let no_schema = FlowDir::with_files(&[("flow.toml", "[topics.t]\nvalidate_emits = true\n")]);
    Edaflow::new(no_schema.root())
        .env("NO_COLOR", "1")
        .args(["validate", "flow.toml"])
        .run()
        .code(1)
        .stderr_has("validate_emits");
}

#[test]
fn editing_a_schema_file_reloads_it() {
    let dir = schema_dir();
    let mut running = Edaflow::new(dir.root())
        .args(["run", "flow.toml", "--listen", "127.0.0.1:0"])
        .serve(PATIENCE);
    running.wait_until_watching(&dir, "flow.toml");
    let body = r#"{"order_id": 1, "total": 9.5, "note": 5}"#;
    assert_eq!(post(&running, "orderCreated", body).status, 202);
    let before = running.generation();
    dir.save_atomic(
        "schemas/order.json",
        &ORDER_SCHEMA.replace(
            r#""order_id": {"type": "integer"},"#,
            r#""order_id": {"type": "integer"}, "note": {"type": "string"},"#,
        ),
    );
    running.wait("the schema reload", PATIENCE, |r| r.generation() > before);
    let reply = post(&running, "orderCreated", body);
    assert_eq!(reply.status, 400, "{reply:?}\n{}", running.dump());
    assert!(reply.body.contains("/note"), "{reply:?}");
}

/// The official AsyncAPI 3.0.0 JSON Schema, from the npm package `@asyncapi/specs`, packed
/// once into target/asyncapi-specs (never committed).
fn asyncapi_meta_schema() -> Value {
    let cache = crate_root().join("target/asyncapi-specs");
    let file = cache.join("package/schemas/3.0.0-without-$id.json");
    if !file.exists() {
        std::fs::create_dir_all(&cache).expect("create the cache folder");
        let packed = Command::new("npm")
            .args(["pack", "@asyncapi/specs@6", "--silent"])
            .current_dir(&cache)
            .output();
        let packed = match packed {
            Ok(out) if out.status.success() => out,
            other => panic!(
                "this test needs the AsyncAPI 3.0.0 JSON Schema from npm: install npm (Node.js) and let it reach the registry, or run `npm pack @asyncapi/specs@6` in {} and extract it there (`tar xzf asyncapi-specs-*.tgz`); npm said: {other:?}",
                cache.display()
            ),
        };
        let tarball = String::from_utf8_lossy(&packed.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        let status = Command::new("tar")
            .args(["xzf", &tarball])
            .current_dir(&cache)
            .status()
            .expect("tar runs");
        assert!(
            status.success(),
            "could not extract {tarball} in {}",
            cache.display()
        );
    }
    serde_json::from_str(&std::fs::read_to_string(&file).expect("the extracted schema"))
        .expect("the AsyncAPI schema is JSON")
}

#[test]
fn asyncapi_documents_validate_against_the_official_schema() {
    let meta = asyncapi_meta_schema();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&meta)
        .expect("the AsyncAPI schema compiles");
    let dir = schema_dir();
    let mut inputs: Vec<(String, PathBuf)> = vec![("schema flow".into(), dir.path("flow.toml"))];
    for shipped in [
        "flows/orders.toml",
        "flows/cqrs.toml",
        "flows/deferred.toml",
        "examples/saga",
        "examples/iot-alerts",
        "examples/cqrs-read-model",
    ] {
        inputs.push((shipped.into(), crate_root().join(shipped)));
    }
    for (name, path) in inputs {
        let out = Edaflow::new(crate_root())
            .args(["asyncapi".to_owned(), path.display().to_string()])
            .run()
            .success();
        let document: Value = serde_json::from_str(&out.stdout).expect("JSON");
        let problems = errors(&validator, &document);
        assert!(problems.is_empty(), "{name}: {problems:#?}\n{document:#}");
        assert_eq!(document["asyncapi"], "3.0.0");
    }
    // The check has teeth: AsyncAPI 3 knows no `publish` action.
    let mut broken: Value = serde_json::from_str(
        &Edaflow::new(dir.root())
            .args(["asyncapi", "flow.toml"])
            .run()
            .success()
            .stdout,
    )
    .expect("JSON");
    broken["operations"]["price.receive.orderCreated"]["action"] = json!("publish");
    assert!(!errors(&validator, &broken).is_empty());
    // The schema flow's payloads come from its topic schemas.
    let out = Edaflow::new(dir.root())
        .args(["asyncapi", "flow.toml"])
        .run()
        .success();
    let document: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let order: Value = serde_json::from_str(ORDER_SCHEMA).expect("JSON");
    assert_eq!(document["components"]["schemas"]["orderCreated"], order);
    assert_eq!(
        document["components"]["messages"]["orderCreated"]["payload"],
        json!({"$ref": "#/components/schemas/orderCreated"})
    );
    assert_eq!(
        document["operations"]["price.receive.orderCreated"]["action"],
        "receive"
    );
    assert_eq!(
        document["operations"]["price.send.orderPriced"]["action"],
        "send"
    );
    assert_eq!(
        document["operations"]["api.send.orderCreated"]["action"],
        "send"
    );
    assert_eq!(
        document["channels"]["orderPriced"]["address"],
        "orderPriced"
    );
}
