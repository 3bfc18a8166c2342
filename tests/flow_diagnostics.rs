//! Snapshot tests of flow diagnostics: each broken fixture under `tests/fixtures/invalid/`
//! is prepared as `edaflow validate` does (loaded, scripts compiled, linted) and its report
//! rendered exactly as the CLI prints it; valid fixtures prepare.
//!
//! Fixtures are given by paths relative to the crate root (cargo runs integration tests
//! there), so the rendered file names are the same on every machine.

use std::path::{Path, PathBuf};

use edaflow::flow::diagnostic::render;
use edaflow::flow::{ProducerKind, SubscriberInput};
use edaflow::runtime::{prepare, Prepared};

/// Makes relative fixture paths resolve, whoever runs the test binary.
fn at_crate_root() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if std::env::current_dir().ok().as_deref() != Some(root) {
        std::env::set_current_dir(root).expect("crate root exists");
    }
}

fn fixture_paths(paths: &[&str]) -> Vec<PathBuf> {
    at_crate_root();
    paths
        .iter()
        .map(|p| PathBuf::from(format!("tests/fixtures/{p}")))
        .collect()
}

/// Loads fixtures that must be invalid and renders the report at 100 columns.
fn report(paths: &[&str]) -> String {
    match prepare(&fixture_paths(paths)) {
        Ok(_) => panic!("{paths:?} should not load"),
        Err(report) => render(&report, 100),
    }
}

/// Prepares fixtures that must be valid.
fn loaded(paths: &[&str]) -> Prepared {
    match prepare(&fixture_paths(paths)) {
        Ok(loaded) => loaded,
        Err(report) => panic!("{}", render(&report, 100)),
    }
}

#[test]
fn syntax_duplicate_key() {
    insta::assert_snapshot!(report(&["invalid/syntax_duplicate_key.toml"]));
}

#[test]
fn syntax_unterminated() {
    insta::assert_snapshot!(report(&["invalid/syntax_unterminated.toml"]));
}

#[test]
fn unknown_keys() {
    insta::assert_snapshot!(report(&["invalid/unknown_keys.toml"]));
}

#[test]
fn wrong_types() {
    insta::assert_snapshot!(report(&["invalid/wrong_types.toml"]));
}

#[test]
fn missing_keys() {
    insta::assert_snapshot!(report(&["invalid/missing_keys.toml"]));
}

#[test]
fn durations() {
    insta::assert_snapshot!(report(&["invalid/durations.toml"]));
}

#[test]
fn missing_script() {
    insta::assert_snapshot!(report(&["invalid/missing_script.toml"]));
}

#[test]
fn producer_kind() {
    insta::assert_snapshot!(report(&["invalid/producer_kind.toml"]));
}

#[test]
fn topics() {
    insta::assert_snapshot!(report(&["invalid/topics.toml"]));
}

#[test]
fn subscriber_input() {
    insta::assert_snapshot!(report(&["invalid/subscriber_input.toml"]));
}

#[test]
fn unknown_queue() {
    insta::assert_snapshot!(report(&["invalid/unknown_queue.toml"]));
}

#[test]
fn limits() {
    insta::assert_snapshot!(report(&["invalid/limits.toml"]));
}

#[test]
fn cqrs_lint() {
    insta::assert_snapshot!(report(&["invalid/cqrs_lint.toml"]));
}

#[test]
fn broken_chain() {
    insta::assert_snapshot!(report(&["invalid/broken_chain.toml"]));
}

#[test]
fn many_problems() {
    insta::assert_snapshot!(report(&["invalid/many_problems.toml"]));
}

#[test]
fn duplicates_across_files() {
    insta::assert_snapshot!(report(&["invalid/duplicates"]));
}

#[test]
fn missing_paths() {
    insta::assert_snapshot!(report(&["invalid/nope.toml", "invalid/no_such_folder/"]));
}

#[test]
fn warnings() {
    let loaded = loaded(&["warnings/unused_topics.toml"]);
    let rendered: Vec<String> = loaded.warnings.iter().map(|w| render(w, 100)).collect();
    insta::assert_snapshot!(rendered.join("\n"));
}

#[test]
fn cqrs_warnings() {
    let loaded = loaded(&["warnings/cqrs_lint.toml"]);
    let rendered: Vec<String> = loaded.warnings.iter().map(|w| render(w, 100)).collect();
    insta::assert_snapshot!(rendered.join("\n"));
}

#[test]
fn valid_fixtures_load_without_errors_or_warnings() {
    let loaded = loaded(&["valid"]);
    let flows = &loaded.flows;
    let names: Vec<&str> = flows.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["orders", "projections"]);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    let reserve = &flows.subscribers["reserve_inventory"];
    let script = reserve
        .script
        .as_ref()
        .expect("reserve_inventory has a script");
    assert!(script.text.contains("emit(\"inventoryReserved\""));
    assert!(script.path.is_absolute());
    assert!(script
        .path
        .ends_with("tests/fixtures/valid/handlers/reserve_inventory.rhai"));
    assert!(script.base_dir.ends_with("tests/fixtures/valid"));
    assert!(matches!(
        flows.subscribers["process_task"].input,
        SubscriberInput::Queue(ref q) if q == "tasks"
    ));
    assert!(matches!(
        flows.producers["load"].kind,
        ProducerKind::Generator(ref g) if g.count == 3
    ));
    assert_eq!(flows.tests.len(), 2);

    // Both flow files and all three scripts, for the watcher, in the order they were read.
    let read: Vec<String> = edaflow::flow::load(&fixture_paths(&["valid"]))
        .expect("valid fixtures load")
        .files_read
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(
        read,
        [
            "orders.toml",
            "projections.toml",
            "reserve_inventory.rhai",
            "process_task.rhai",
            "project_orders.rhai",
        ]
    );
}

#[test]
fn each_valid_file_also_loads_alone() {
    for file in ["valid/orders.toml", "valid/projections.toml"] {
        loaded(&[file]);
    }
}
