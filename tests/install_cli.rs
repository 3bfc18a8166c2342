//! The commands that install edaflow into a user's tools and start a new project:
//! `completions` for every shell clap_complete knows, `man` to stdout and into a folder,
//! and `init`, whose folder `validate`, `test` and `run` accept as written.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{http, Edaflow, FlowDir};

/// How long a started `edaflow run` may take to listen.
const PATIENCE: Duration = Duration::from_secs(10);

#[test]
fn completions_for_every_shell_mention_the_subcommands() {
    let dir = FlowDir::new();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let done = Edaflow::new(dir.root())
            .args(["completions", shell])
            .run()
            .success();
        assert!(!done.stdout.trim().is_empty(), "{shell}: empty script");
        assert!(
            done.stdout.contains("run"),
            "{shell}: no `run` in\n{}",
            done.stdout
        );
    }
}

#[test]
fn bash_completion_loads_and_registers_edaflow() {
    let script = format!(
        "source <('{}' completions bash) && complete -p edaflow",
        env!("CARGO_BIN_EXE_edaflow")
    );
    let output = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("edaflow"),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn an_unknown_shell_is_refused() {
    let dir = FlowDir::new();
    Edaflow::new(dir.root())
        .args(["completions", "tcsh"])
        .run()
        .code(2)
        .stderr_has("tcsh");
}

#[test]
fn man_prints_roff_naming_the_subcommands() {
    let dir = FlowDir::new();
    let done = Edaflow::new(dir.root()).args(["man"]).run().success();
    assert!(done.stdout.contains(".TH edaflow 1"), "{}", done.stdout);
    assert!(done.stdout.contains("edaflow\\-run"), "{}", done.stdout);
}

#[test]
fn man_into_a_folder_writes_a_page_per_subcommand() {
    let dir = FlowDir::new();
    Edaflow::new(dir.root())
        .args(["man", "pages"])
        .run()
        .success()
        .stdout_has("pages");
    for page in [
        "edaflow.1",
        "edaflow-run.1",
        "edaflow-init.1",
        "edaflow-dead-list.1",
    ] {
        let text = std::fs::read_to_string(dir.path(&format!("pages/{page}")))
            .unwrap_or_else(|error| panic!("{page}: {error}"));
        assert!(text.contains(".TH"), "{page} is not roff:\n{text}");
    }
}

#[test]
fn init_makes_a_flow_that_validates_tests_and_runs() {
    let dir = FlowDir::new();
    Edaflow::new(dir.root())
        .args(["init", "hello"])
        .run()
        .success()
        .stdout_has("edaflow test hello");
    Edaflow::new(dir.root())
        .args(["validate", "hello"])
        .run()
        .success()
        .stdout_has("0 warning(s)");
    Edaflow::new(dir.root())
        .args(["test", "hello"])
        .run()
        .success()
        .stdout_has("1 passed; 0 failed");

    let running = Edaflow::new(dir.root())
        .args(["run", "hello", "--listen", "127.0.0.1:0"])
        .serve(PATIENCE);
    let health = http(running.addr(), "GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200, "{health:?}\n{}", running.dump());
    let published = http(
        running.addr(),
        "POST",
        "/topics/greetingRequested",
        &[("Content-Type", "application/json")],
        br#"{"name": "Ada"}"#,
    );
    assert_eq!(published.status, 202, "{published:?}\n{}", running.dump());
}

#[test]
fn init_refuses_to_overwrite_and_names_the_files() {
    let dir = FlowDir::new();
    dir.write("hello/flow.toml", "# mine\n");
    dir.write("hello/notes.txt", "kept\n");
    Edaflow::new(dir.root())
        .args(["init", "hello"])
        .run()
        .code(1)
        .stderr_has("flow.toml")
        .stderr_has("--force");
    assert_eq!(
        std::fs::read_to_string(dir.path("hello/flow.toml")).expect("still there"),
        "# mine\n"
    );
    assert!(!dir.path("hello/handlers/greet.rhai").exists());

    Edaflow::new(dir.root())
        .args(["init", "hello", "--force"])
        .run()
        .success();
    let flow = std::fs::read_to_string(dir.path("hello/flow.toml")).expect("written");
    assert!(flow.contains("[[tests]]"), "{flow}");
    assert_eq!(
        std::fs::read_to_string(dir.path("hello/notes.txt")).expect("untouched"),
        "kept\n"
    );
}
