//! The console's editor through the real binary: `edaflow run` on a temp flow folder,
//! files read and saved with `GET`/`PUT /console/file`, and events POSTed to see which
//! code handles them (the handler logs its version to stderr). A save answers with the
//! report of the reload it asked for, so the next event already runs what was saved.
//! Also: conflicts with edits made on disk, preconditions, and ids that try to leave the
//! flow folder. Every wait polls a condition with a deadline; on failure the instance's
//! command, folder and output are dumped.

mod common;

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use indoc::indoc;
use serde_json::Value;

use common::http_server::{oneshot, router};
use common::runtime::{options, start_with};
use common::{http, run_flow, FlowDir, Reply, Running};
use edaflow::broker::{MemoryBroker, MemoryOptions};
use edaflow::runtime::RuntimeOptions;

/// Generous: the machine may be busy.
const WITHIN: Duration = Duration::from_secs(15);

const FLOW: &str = indoc! {r#"
    [flow]
    name = "console"

    [producers.api]
    kind = "http"

    [subscribers.worker]
    topic = "work"
    script = "handlers/worker.rhai"
"#};

/// The handler: logs `worker VERSION handled ID`.
fn worker(version: &str) -> String {
    format!("// the worker\nlog(`worker {version} handled ${{event.data.id}}`);\n")
}

/// The query string of a file id, percent-encoded but for `/`.
fn file_query(id: &str) -> String {
    let mut query = String::from("/console/file?id=");
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"/-_.~".contains(&byte) {
            query.push(char::from(byte));
        } else {
            query.push_str(&format!("%{byte:02X}"));
        }
    }
    query
}

fn get_file(instance: &Running, id: &str) -> Reply {
    http(instance.addr(), "GET", &file_query(id), &[], b"")
}

fn put_file(instance: &Running, id: &str, headers: &[(&str, &str)], text: &str) -> Reply {
    let mut all = vec![("Content-Type", "text/plain; charset=utf-8")];
    all.extend_from_slice(headers);
    http(
        instance.addr(),
        "PUT",
        &file_query(id),
        &all,
        text.as_bytes(),
    )
}

/// Saves `text` as the file `id` over the version read; asserts 200 and returns the body.
#[track_caller]
fn save(instance: &Running, id: &str, read: &str, text: &str) -> Value {
    let tag = format!("\"{read}\"");
    let answer = put_file(instance, id, &[("If-Match", &tag)], text);
    assert_eq!(answer.status, 200, "{answer:?}\n{}", instance.dump());
    answer.json()
}

/// The file as the console reads it: its text and version.
#[track_caller]
fn read(instance: &Running, id: &str) -> (String, String) {
    let answer = get_file(instance, id);
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = answer.json();
    assert_eq!(body["id"], id, "{body}");
    let version = body["version"].as_str().expect("a version").to_owned();
    assert_eq!(
        answer.header("etag"),
        Some(format!("\"{version}\"").as_str()),
        "{answer:?}"
    );
    let text = body["text"].as_str().expect("a text").to_owned();
    (text, version)
}

/// POSTs event `id` and waits for the `worker VERSION handled ID` line; the version.
fn handled_by(instance: &mut Running, id: u64) -> String {
    let answer = instance.request("POST", "/topics/work", &format!(r#"{{"id": {id}}}"#));
    assert_eq!(answer.status, 202, "{answer:?}\n{}", instance.dump());
    let wanted = id.to_string();
    instance.find_in_stderr(&format!("event {id} handled"), WITHIN, |line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.windows(4).find_map(|w| {
            (w[0] == "worker" && w[2] == "handled" && w[3] == wanted).then(|| w[1].to_owned())
        })
    })
}

/// How many reloads so far found nothing to do.
fn unchanged_reloads(instance: &Running) -> usize {
    instance
        .stderr()
        .matches("flows unchanged; nothing to reload")
        .count()
}

#[test]
fn saves_are_reloaded_and_reported_with_their_problems() {
    let dir = FlowDir::with_files(&[("flow.toml", FLOW), ("handlers/worker.rhai", &worker("v1"))]);
    let mut instance = run_flow(dir.root(), &["flow.toml"]);
    instance.wait_until_watching(&dir, "flow.toml");
    assert_eq!(handled_by(&mut instance, 1), "v1");

    let id = "0/handlers/worker.rhai";
    let (text, v1) = read(&instance, id);
    assert_eq!(text, worker("v1"));

    // A good save: applied as generation 2, and the next event runs it.
    let unchanged_before = unchanged_reloads(&instance);
    let answer = save(&instance, id, &v1, &worker("v2"));
    let report = &answer["report"];
    assert_eq!(report["result"], "applied", "{answer}");
    assert_eq!(report["generation"], 2, "{answer}");
    assert_eq!(
        report["swapped"],
        serde_json::json!(["subscribers.worker"]),
        "{answer}"
    );
    let v2 = answer["version"].as_str().expect("a version").to_owned();
    assert_eq!(handled_by(&mut instance, 2), "v2");
    assert_eq!(read(&instance, id), (worker("v2"), v2.clone()));
    assert_eq!(
        std::fs::read_to_string(dir.path("handlers/worker.rhai")).expect("read"),
        worker("v2")
    );
    // The watcher saw the same save: its reload finds nothing changed.
    instance.wait("the watcher's reload of the same save", WITHIN, |i| {
        unchanged_reloads(i) > unchanged_before
    });
    assert_eq!(instance.generation(), 2);

    // A broken save: invalid, with the problem placed in the script; generation 2 runs on.
    let broken = "// the worker\nlet = 5;\n";
    let answer = save(&instance, id, &v2, broken);
    let report = &answer["report"];
    assert_eq!(report["result"], "invalid", "{answer}");
    assert_eq!(report["generation"], 2, "{answer}");
    let problems = report["problems"].as_array().expect("problems");
    let [problem] = problems.as_slice() else {
        panic!("one problem: {answer}");
    };
    assert_eq!(problem["file"], id, "{answer}");
    assert_eq!(problem["code"], "edaflow::script::compile", "{answer}");
    assert_eq!(problem["line"], 2, "{answer}");
    assert_eq!(problem["column"], 5, "{answer}");
    assert!(
        report["diagnostic"]
            .as_str()
            .is_some_and(|d| d.contains("edaflow::script::compile")),
        "{answer}"
    );
    let broken_version = answer["version"].as_str().expect("a version").to_owned();
    assert_eq!(handled_by(&mut instance, 3), "v2", "the old code runs on");
    assert_eq!(instance.generation(), 2);

    // Fixed: applied as generation 3.
    let answer = save(&instance, id, &broken_version, &worker("v3"));
    assert_eq!(answer["report"]["result"], "applied", "{answer}");
    assert_eq!(answer["report"]["generation"], 3, "{answer}");
    assert_eq!(handled_by(&mut instance, 4), "v3");

    // A broken flow file: the problem is in the flow file, by its id.
    let (flow, flow_version) = read(&instance, "0/flow.toml");
    let answer = save(
        &instance,
        "0/flow.toml",
        &flow_version,
        &flow.replace("topic = \"work\"", "topic = \"work\"\nscirpt = \"x.rhai\""),
    );
    assert_eq!(answer["report"]["result"], "invalid", "{answer}");
    let problem = &answer["report"]["problems"][0];
    assert_eq!(problem["file"], "0/flow.toml", "{answer}");
    assert_eq!(problem["code"], "edaflow::flow::unknown_key", "{answer}");
    assert_eq!(problem["line"], 9, "{answer}");
    assert_eq!(problem["help"], "did you mean `script`?", "{answer}");
    assert_eq!(handled_by(&mut instance, 5), "v3");
}

#[test]
fn stale_saves_preconditions_creation_and_a_save_that_restarts_the_producer() {
    let dir = FlowDir::with_files(&[("flow.toml", FLOW), ("handlers/worker.rhai", &worker("v1"))]);
    let mut instance = run_flow(dir.root(), &["flow.toml"]);
    let id = "0/handlers/worker.rhai";
    let (_, v1) = read(&instance, id);

    // Edited on disk after the console read it: 409 with the version on disk, nothing
    // written.
    dir.save_atomic("handlers/worker.rhai", &worker("on disk"));
    let answer = put_file(
        &instance,
        id,
        &[("If-Match", &format!("\"{v1}\""))],
        &worker("console"),
    );
    assert_eq!(answer.status, 409, "{answer:?}");
    let body = answer.json();
    assert_eq!(body["error"], "edit_conflict", "{body}");
    assert_eq!(body["code"], "edit_conflict", "{body}");
    let (on_disk, on_disk_version) = read(&instance, id);
    assert_eq!(on_disk, worker("on disk"));
    assert_eq!(body["version"], on_disk_version.as_str(), "{body}");

    // No If-Match: 428, nothing written.
    let answer = put_file(&instance, id, &[], &worker("blind"));
    answer.refused(428, "precondition_required");
    assert_eq!(read(&instance, id).0, worker("on disk"));

    // Over the version on disk, the save goes through.
    let answer = save(&instance, id, &on_disk_version, &worker("console"));
    assert_eq!(answer["report"]["result"], "applied", "{answer}");

    // If-None-Match: * creates a new file (nothing uses it yet: unchanged)...
    let new = "0/handlers/new.rhai";
    assert_eq!(get_file(&instance, new).status, 404);
    let answer = put_file(&instance, new, &[("If-None-Match", "*")], &worker("new"));
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = answer.json();
    assert_eq!(body["report"]["result"], "unchanged", "{body}");
    assert_eq!(
        read(&instance, new),
        (
            worker("new"),
            body["version"].as_str().expect("v").to_owned()
        )
    );
    // ...once: it exists now.
    let answer = put_file(&instance, new, &[("If-None-Match", "*")], &worker("again"));
    assert_eq!(answer.status, 409, "{answer:?}");
    assert_eq!(answer.json()["version"], body["version"], "{answer:?}");
    assert_eq!(read(&instance, new).0, worker("new"));

    // The body must be UTF-8.
    let tag = format!("\"{}\"", body["version"].as_str().expect("v"));
    let answer = http(
        instance.addr(),
        "PUT",
        &file_query(new),
        &[("If-Match", &tag)],
        b"log(\"\xff\");",
    );
    answer.refused(400, "not_utf8");
    assert_eq!(read(&instance, new).0, worker("new"));

    // A save whose reload restarts this very HTTP producer is answered as the producer
    // stops (the reload waits for its requests to finish), without the report.
    let (flow, flow_version) = read(&instance, "0/flow.toml");
    // The watcher may or may not have applied the edit made on disk above before the
    // console's save superseded it (one generation or two): count from here.
    let before = instance.generation();
    let answer = put_file(
        &instance,
        "0/flow.toml",
        &[("If-Match", &format!("\"{flow_version}\""))],
        &flow.replace("kind = \"http\"", "kind = \"http\"\nbody_limit = \"2MiB\""),
    );
    assert_eq!(answer.status, 202, "{answer:?}");
    let body = answer.json();
    assert_eq!(body["report"]["result"], "in_progress", "{body}");
    // The producer comes back (on another port: it listens on port 0), one generation on.
    instance.listening_addr(WITHIN);
    assert_eq!(instance.generation(), before + 1);
    assert_eq!(
        read(&instance, "0/flow.toml").1,
        body["version"].as_str().expect("v")
    );
}

#[test]
fn ids_that_leave_the_flow_folder_are_refused_and_nothing_is_written() {
    let dir = FlowDir::with_files(&[
        ("flows/flow.toml", FLOW),
        ("flows/handlers/worker.rhai", &worker("v1")),
        ("flows/notes.txt", "notes\n"),
        ("outside/secret.rhai", "secret\n"),
    ]);
    std::os::unix::fs::symlink(dir.path("outside"), dir.path("flows/out")).expect("symlink");
    std::os::unix::fs::symlink(
        dir.path("outside/secret.rhai"),
        dir.path("flows/secret.rhai"),
    )
    .expect("symlink");
    let instance = run_flow(dir.root(), &["flows"]);
    let listing = |folder: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let top_before = listing(dir.root());
    let outside_before = listing(&dir.path("outside"));

    let refusals = [
        ("0/../x.rhai", 400, "file_id_parent"),
        ("0/handlers/../../x.rhai", 400, "file_id_parent"),
        ("/etc/passwd", 400, "file_id_absolute"),
        ("0/a\\b.rhai", 400, "file_id_backslash"),
        ("0/a\0.rhai", 400, "file_id_nul"),
        ("0//x.rhai", 400, "file_id_empty_part"),
        ("0/notes.txt", 400, "file_id_extension"),
        ("0/flow.toml.txt", 400, "file_id_extension"),
        ("x.rhai", 400, "file_id_root"),
        ("0/secret.rhai", 400, "file_outside_root"),
        ("0/out/secret.rhai", 400, "file_outside_root"),
        ("0/out/new.rhai", 400, "file_outside_root"),
        ("5/x.rhai", 404, "unknown_root"),
        ("0/nowhere/x.rhai", 404, "unknown_file"),
    ];
    for (id, status, code) in refusals {
        let answer = get_file(&instance, id);
        assert_eq!(answer.status, status, "GET {id:?}: {answer:?}");
        answer.refused(status, code);
        for precondition in [("If-None-Match", "*"), ("If-Match", "*")] {
            let answer = put_file(&instance, id, &[precondition], "pwned\n");
            assert_eq!(answer.status, status, "PUT {id:?}: {answer:?}");
            answer.refused(status, code);
        }
    }
    assert_eq!(listing(dir.root()), top_before);
    assert_eq!(listing(&dir.path("outside")), outside_before);
    assert_eq!(
        std::fs::read_to_string(dir.path("outside/secret.rhai")).expect("read"),
        "secret\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path("flows/notes.txt")).expect("read"),
        "notes\n"
    );
    // The flow still runs as it was.
    assert_eq!(instance.generation(), 1);
    assert_eq!(read(&instance, "0/handlers/worker.rhai").0, worker("v1"));
}

/// Without a reload path (a runtime embedded without a reloader), a save stands and says
/// so: its version, and no report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reloader_a_save_has_no_report() {
    let dir = FlowDir::with_files(&[("flow.toml", FLOW), ("handlers/worker.rhai", &worker("v1"))]);
    let broker = MemoryBroker::new(MemoryOptions::default());
    let options = RuntimeOptions {
        roots: vec![dir.root().to_path_buf()],
        ..options()
    };
    // Producers off: the router is driven here, without a socket.
    let (runtime, _) = start_with(broker, options, &dir).await;
    let api = router(&runtime);
    let request = Request::put(file_query("0/handlers/worker.rhai"))
        .header("If-Match", "*")
        .body(Body::from(worker("v2")))
        .expect("a request");
    let answer = oneshot(&api, request).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = answer.json();
    assert_eq!(body["report"], Value::Null, "{body}");
    assert_eq!(
        std::fs::read_to_string(dir.path("handlers/worker.rhai")).expect("read"),
        worker("v2")
    );
    assert_eq!(runtime.generation(), 1);
    runtime.shutdown(Duration::from_secs(5)).await;
}
