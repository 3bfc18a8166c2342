//! Hot reload through the real binary: `edaflow run FLOW --listen 127.0.0.1:0` in a temp
//! dir, with files edited the way editors and tools do it (atomic rename, truncate and
//! write, `sed -i`), reloads asked for by SIGHUP and `POST /admin/reload`, and events POSTed
//! to the instance to see which code handles them (the handler logs its version to
//! stderr). Every wait polls a condition with a deadline; on failure the command, the
//! folder and the instance's output are dumped.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indoc::indoc;

use common::{run_flow, FlowDir, Running};

/// Generous: the machine may be busy.
const WITHIN: Duration = Duration::from_secs(15);

const FLOW: &str = indoc! {r#"
    [flow]
    name = "cli"

    [producers.api]
    kind = "http"

    [subscribers.worker]
    topic = "work"
    script = "handlers/worker.rhai"
"#};

/// The handler: logs `worker VERSION handled ID`.
fn worker(version: &str) -> String {
    format!("log(`worker {version} handled ${{event.data.id}}`);\n")
}

/// A flow folder with `flow.toml` and the handler at `v1`.
fn flow_dir() -> FlowDir {
    let dir = FlowDir::new();
    dir.write("flow.toml", FLOW);
    dir.write("handlers/worker.rhai", &worker("v1"));
    dir
}

/// Ids unique across the tests of this binary.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// POSTs one event and waits until a `worker … handled ID` line shows which version
/// handled it.
fn handled_by(instance: &mut Running) -> String {
    let id = next_id();
    let answer = instance.request("POST", "/topics/work", &format!(r#"{{"id": {id}}}"#));
    assert_eq!(answer.status, 202, "{answer:?}\n{}", instance.dump());
    let wanted = id.to_string();
    let mut version = None;
    instance.wait(&format!("event {id} to be handled"), WITHIN, |i| {
        // `… edaflow::script: worker VERSION handled ID component=worker worker=0`
        version = i.stderr().lines().find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words.windows(4).find_map(|w| {
                (w[0] == "worker" && w[2] == "handled" && w[3] == wanted).then(|| w[1].to_owned())
            })
        });
        version.is_some()
    });
    version.expect("waited for it")
}

/// Posts events until one is handled by `version` (the edit before may still be in the
/// debounce window or being reloaded).
fn wait_for_version(instance: &mut Running, version: &str) {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        if handled_by(instance) == version {
            return;
        }
        if std::time::Instant::now() >= deadline {
            panic!(
                "timed out waiting for events to run {version}\n{}",
                instance.dump()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn editor_saves_are_picked_up() {
    let dir = flow_dir();
    let mut instance = run_flow(dir.root(), &["flow.toml"]);
    instance.wait_until_watching(&dir, "flow.toml");
    assert_eq!(handled_by(&mut instance), "v1");
    assert_eq!(instance.generation(), 1);

    // (1) Atomic save: a temp file in the same folder renamed over the script.
    dir.save_atomic("handlers/worker.rhai", &worker("v2"));
    wait_for_version(&mut instance, "v2");
    assert_eq!(instance.generation(), 2, "one save, one reload");

    // (2) Truncate and write in place (the watch must have survived the rename).
    dir.save_truncating("handlers/worker.rhai", &worker("v3"));
    wait_for_version(&mut instance, "v3");

    // (3) The real `sed -i`, which writes a temp file and renames it over the script.
    dir.sed_in_place("handlers/worker.rhai", "s/v3/v4/");
    wait_for_version(&mut instance, "v4");
    // Once it runs, it stays: the next events run v4 too.
    for _ in 0..3 {
        assert_eq!(handled_by(&mut instance), "v4");
    }

    // The flow file itself is watched as well.
    dir.save_atomic(
        "flow.toml",
        &FLOW.replace("handlers/worker.rhai", "handlers/other.rhai"),
    );
    // (The script it now names does not exist yet: invalid, then valid once it does.)
    dir.write("handlers/other.rhai", &worker("other"));
    wait_for_version(&mut instance, "other");
    let health = instance.health();
    assert_eq!(health["last_reload"]["ok"], true, "{health}");
}

#[test]
fn an_invalid_edit_prints_the_diagnostic_and_the_old_code_keeps_working() {
    let dir = flow_dir();
    let mut instance = run_flow(dir.root(), &["flow.toml"]);
    instance.wait_until_watching(&dir, "flow.toml");
    assert_eq!(handled_by(&mut instance), "v1");

    dir.save_atomic(
        "handlers/worker.rhai",
        "log(`worker v2 handled ${event.data.id}`\n",
    );
    instance.wait("the diagnostic and `keeping generation 1`", WITHIN, |i| {
        let stderr = i.stderr();
        stderr.contains("edaflow::script::compile")
            && stderr.contains("worker.rhai")
            && stderr.contains("keeping generation 1")
    });
    for _ in 0..3 {
        assert_eq!(
            handled_by(&mut instance),
            "v1",
            "the old code keeps working"
        );
    }
    let health = instance.health();
    assert_eq!(health["generation"], 1, "{health}");
    assert_eq!(health["last_reload"]["ok"], false, "{health}");

    // Fixing it is picked up as usual.
    dir.save_atomic("handlers/worker.rhai", &worker("v2"));
    wait_for_version(&mut instance, "v2");
    assert_eq!(instance.generation(), 2);
}

#[test]
fn an_import_ring_saved_live_is_a_diagnostic_and_the_last_good_generation_runs_on() {
    let dir = flow_dir();
    dir.write("lib/a.rhai", "fn tag() { \"a\" }\n");
    dir.write("lib/b.rhai", "fn tag() { \"b\" }\n");
    dir.write(
        "handlers/worker.rhai",
        &format!("import \"lib/a\" as a;\n{}", worker("v1")),
    );
    let mut instance = run_flow(dir.root(), &["flow.toml"]);
    instance.wait_until_watching(&dir, "flow.toml");
    assert_eq!(handled_by(&mut instance), "v1");

    // `a` imports `b`, which imports `a`: unbounded recursion if it were followed.
    dir.save_atomic("lib/b.rhai", "import \"lib/a\" as a;\nfn tag() { \"b\" }\n");
    dir.save_atomic("lib/a.rhai", "import \"lib/b\" as b;\nfn tag() { \"a\" }\n");
    instance.wait("the import ring's diagnostic", WITHIN, |i| {
        let stderr = i.stderr();
        stderr.contains("import cycle: `lib/a` imports `lib/b` imports `lib/a`")
            && stderr.contains("keeping generation 1")
    });
    for _ in 0..3 {
        assert_eq!(
            handled_by(&mut instance),
            "v1",
            "the last good code runs on"
        );
    }
    assert_eq!(instance.health()["generation"], 1);

    // Breaking the ring is picked up as usual.
    dir.save_atomic("lib/b.rhai", "fn tag() { \"b\" }\n");
    dir.save_atomic("handlers/worker.rhai", &worker("v2"));
    wait_for_version(&mut instance, "v2");
}

#[test]
fn with_no_watch_edits_wait_for_sighup_or_admin_reload() {
    let dir = flow_dir();
    let mut instance = run_flow(dir.root(), &["flow.toml", "--no-watch"]);
    assert_eq!(handled_by(&mut instance), "v1");

    dir.save_atomic("handlers/worker.rhai", &worker("v2"));
    // Nothing may notice the edit. Absence can only be shown over a window: events keep
    // running v1 for 20 debounce periods.
    let window = std::time::Instant::now() + edaflow::watch::DEFAULT_DEBOUNCE * 20;
    while std::time::Instant::now() < window {
        assert_eq!(
            handled_by(&mut instance),
            "v1",
            "--no-watch reloaded on its own"
        );
    }
    assert_eq!(instance.generation(), 1);

    // SIGHUP reloads.
    let status = std::process::Command::new("kill")
        .args(["-HUP", &instance.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP: {status}");
    instance.wait("generation 2 after SIGHUP", WITHIN, |i| i.generation() == 2);
    assert_eq!(handled_by(&mut instance), "v2");

    // So does POST /admin/reload, answering with the outcome.
    dir.save_atomic("handlers/worker.rhai", &worker("v3"));
    let answer = instance.request("POST", "/admin/reload", "");
    assert_eq!(answer.status, 200, "{answer:?}");
    let report: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    assert_eq!(report["result"], "applied", "{report}");
    assert_eq!(report["generation"], 3, "{report}");
    assert_eq!(
        report["swapped"],
        serde_json::json!(["subscribers.worker"]),
        "{report}"
    );
    assert_eq!(handled_by(&mut instance), "v3");

    // An invalid edit through the admin endpoint: 422 with the diagnostic.
    dir.save_atomic("handlers/worker.rhai", "log(");
    let answer = instance.request("POST", "/admin/reload", "");
    assert_eq!(answer.status, 422, "{answer:?}");
    assert!(
        answer.body.contains("edaflow::script::compile"),
        "{answer:?}"
    );
    assert_eq!(handled_by(&mut instance), "v3");
    assert_eq!(instance.generation(), 3);
}
