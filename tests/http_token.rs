//! The HTTP producer's token, through the real binary: `--token` and `EDAFLOW_TOKEN` on
//! `edaflow run` (in place of the flow file's `token`), a token that never reaches the
//! log, and the warning about an API listening beyond loopback without one, at start and
//! again on each reload that keeps it so.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;

use common::{http, Edaflow, FlowDir, Running};

const WITHIN: Duration = Duration::from_secs(10);
const TOKEN: &str = "s3cret-0f-the-test";
const WARNING: &str = "listens beyond this machine without a token";

fn flow(token_line: &str) -> String {
    format!("[flow]\nname = \"guarded\"\n\n[producers.api]\nkind = \"http\"\n{token_line}\n")
}

/// `edaflow run flow.toml` with `args`, `env` set; returns the process and where to reach
/// its API.
fn run(dir: &FlowDir, args: &[&str], env: &[(&str, &str)]) -> (Running, SocketAddr) {
    let mut all = vec!["run", "flow.toml", "--no-watch"];
    all.extend_from_slice(args);
    if !args.contains(&"--listen") {
        all.extend_from_slice(&["--listen", "127.0.0.1:0"]);
    }
    let mut command = Edaflow::new(dir.root())
        .args(all)
        .env("EDAFLOW_LOG", "debug");
    for (key, value) in env {
        command = command.env(key, value);
    }
    let mut running = command.spawn();
    let mut addr = running.listening_addr(WITHIN);
    if addr.ip().is_unspecified() {
        addr.set_ip([127, 0, 0, 1].into());
    }
    (running, addr)
}

fn publish(addr: SocketAddr, auth: Option<&str>) -> u16 {
    let header = auth.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = header
        .as_deref()
        .map(|h| vec![("Authorization", h), ("Content-Type", "application/json")])
        .unwrap_or_else(|| vec![("Content-Type", "application/json")]);
    http(addr, "POST", "/topics/orderCreated", &headers, b"{}").status
}

fn stop(mut running: Running) -> String {
    running.wait_catching_sigterm(WITHIN);
    running.terminate();
    let status = running.wait_exit(WITHIN);
    assert!(status.success(), "exit {status}\n{}", running.dump());
    running.stderr()
}

#[test]
fn the_token_flag_guards_the_api_and_never_reaches_the_log() {
    let dir = FlowDir::new();
    dir.write("flow.toml", &flow(""));
    let (running, addr) = run(&dir, &["--token", TOKEN], &[]);
    assert_eq!(publish(addr, None), 401, "{}", running.dump());
    assert_eq!(publish(addr, Some("wrong")), 401);
    assert_eq!(publish(addr, Some(TOKEN)), 202, "{}", running.dump());
    let stderr = stop(running);
    assert!(!stderr.contains(TOKEN), "the token was logged:\n{stderr}");
    assert!(!stderr.contains(WARNING), "{stderr}");
}

#[test]
fn edaflow_token_in_the_environment_does_the_same() {
    let dir = FlowDir::new();
    dir.write("flow.toml", &flow(""));
    let (running, addr) = run(&dir, &[], &[("EDAFLOW_TOKEN", TOKEN)]);
    assert_eq!(publish(addr, None), 401, "{}", running.dump());
    assert_eq!(publish(addr, Some(TOKEN)), 202, "{}", running.dump());
    let stderr = stop(running);
    assert!(!stderr.contains(TOKEN), "the token was logged:\n{stderr}");
}

#[test]
fn the_flag_takes_the_place_of_the_flow_files_token() {
    let dir = FlowDir::new();
    dir.write("flow.toml", &flow("token = \"from-the-file\""));
    let (running, addr) = run(&dir, &["--token", TOKEN], &[]);
    assert_eq!(
        publish(addr, Some("from-the-file")),
        401,
        "{}",
        running.dump()
    );
    assert_eq!(publish(addr, Some(TOKEN)), 202, "{}", running.dump());
    stop(running);

    // Without the flag, the file's token holds.
    let (running, addr) = run(&dir, &[], &[]);
    assert_eq!(
        publish(addr, Some("from-the-file")),
        202,
        "{}",
        running.dump()
    );
    assert_eq!(publish(addr, Some(TOKEN)), 401);
    stop(running);
}

#[test]
fn an_unusable_token_is_refused_at_start() {
    let dir = FlowDir::new();
    dir.write("flow.toml", &flow(""));
    for bad in ["", "has space"] {
        let finished = Edaflow::new(dir.root())
            .args(["run", "flow.toml", "--no-watch", "--token", bad])
            .run();
        assert_eq!(finished.status.code(), Some(2), "{}", finished.dump());
        assert!(
            finished.stderr.contains("--token"),
            "names the flag\n{}",
            finished.dump()
        );
    }
}

/// Counts the warning's lines so far.
fn warnings(running: &Running) -> usize {
    running
        .stderr()
        .lines()
        .filter(|l| l.contains(WARNING))
        .count()
}

#[test]
fn listening_beyond_loopback_without_a_token_warns_at_start_and_on_each_reload() {
    let dir = FlowDir::new();
    dir.write("flow.toml", &flow(""));
    let (running, addr) = run(&dir, &["--listen", "0.0.0.0:0"], &[]);
    running.wait_stderr("the warning at start", WITHIN, |err| err.contains(WARNING));
    // Reloads are taken once the runtime is up.
    running.wait_stderr("the start", WITHIN, |err| err.contains("edaflow running"));
    assert_eq!(warnings(&running), 1, "{}", running.dump());

    // A reload that keeps it so says it again.
    dir.write(
        "flow.toml",
        &format!("{}\n[subscribers.s]\ntopic = \"orderCreated\"\n", flow("")),
    );
    let reload = http(addr, "POST", "/admin/reload", &[], b"");
    assert_eq!(reload.status, 200, "{reload:?}\n{}", running.dump());
    let deadline = Instant::now() + WITHIN;
    while warnings(&running) < 2 {
        assert!(
            Instant::now() < deadline,
            "no second warning\n{}",
            running.dump()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    stop(running);

    // With a token, no warning; on loopback, none either.
    let (running, _) = run(&dir, &["--listen", "0.0.0.0:0", "--token", TOKEN], &[]);
    let stderr = stop(running);
    assert!(!stderr.contains(WARNING), "{stderr}");
    let (running, _) = run(&dir, &[], &[]);
    let stderr = stop(running);
    assert!(!stderr.contains(WARNING), "{stderr}");
}

#[test]
fn the_token_is_redacted_wherever_it_is_printed() {
    let cli = edaflow::cli::Cli::try_parse_from(["edaflow", "run", "flow.toml", "--token", TOKEN])
        .expect("a valid command line");
    let shown = format!("{cli:?}");
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(shown.contains("[redacted]"), "{shown}");
    let edaflow::cli::Command::Run(args) = cli.command else {
        panic!("a run command");
    };
    let token = args.token.expect("the token");
    assert_eq!(token.to_string(), "[redacted]");
    assert_eq!(token.expose(), TOKEN);
}
