//! `${VAR}` references in flow files, through the binary: `edaflow validate` reads them
//! from its own environment, says which variable is missing and where, and never prints a
//! token that came from the environment. The variables are `EDAFLOW_*`, which the
//! `Edaflow` builder never passes on from the environment running the tests.

mod common;

use common::{Edaflow, FlowDir};

const FLOW: &str = r#"[flow]
name = "deploy"
broker = "redis://:${EDAFLOW_TEST_REDIS_PASSWORD}@127.0.0.1:6379/0"

[producers.api]
kind = "http"
listen = "${EDAFLOW_TEST_LISTEN:-127.0.0.1:0}"
token = "${EDAFLOW_TEST_TOKEN}"

[subscribers.audit]
topic = "orders.created"
"#;

#[test]
fn validate_accepts_a_flow_whose_variables_are_set() {
    let dir = FlowDir::with_files(&[("flow.toml", FLOW)]);
    let finished = Edaflow::new(dir.root())
        .args(["validate", "flow.toml"])
        .env("EDAFLOW_TEST_REDIS_PASSWORD", "hunter2")
        .env("EDAFLOW_TEST_TOKEN", "s3cret-from-env")
        .run()
        .success();
    assert!(
        finished.stdout.starts_with("ok: 1 file(s)"),
        "{}",
        finished.dump()
    );
    assert!(!finished.stdout.contains("hunter2"), "{}", finished.dump());
    assert!(!finished.stderr.contains("hunter2"), "{}", finished.dump());
}

#[test]
fn validate_names_a_missing_variable_at_its_reference() {
    let dir = FlowDir::with_files(&[("flow.toml", FLOW)]);
    let finished = Edaflow::new(dir.root())
        .args(["validate", "flow.toml"])
        .env("EDAFLOW_TEST_TOKEN", "s3cret-from-env")
        .run()
        .code(1)
        .stderr_has("edaflow::flow::env_missing")
        .stderr_has("`broker` refers to environment variable `EDAFLOW_TEST_REDIS_PASSWORD`")
        .stderr_has("`EDAFLOW_TEST_REDIS_PASSWORD` is not set")
        .stderr_has("${EDAFLOW_TEST_REDIS_PASSWORD:-value}");
    assert!(
        !finished.stderr.contains("s3cret-from-env"),
        "{}",
        finished.dump()
    );
}

#[test]
fn a_bad_token_from_the_environment_is_reported_without_its_value() {
    let dir = FlowDir::with_files(&[("flow.toml", FLOW)]);
    let finished = Edaflow::new(dir.root())
        .args(["validate", "flow.toml"])
        .env("EDAFLOW_TEST_REDIS_PASSWORD", "hunter2")
        .env("EDAFLOW_TEST_TOKEN", "not a token")
        .run()
        .code(1)
        .stderr_has("edaflow::flow::invalid_token");
    assert!(
        !finished.stderr.contains("not a token"),
        "{}",
        finished.dump()
    );
    assert!(!finished.stderr.contains("hunter2"), "{}", finished.dump());
}
