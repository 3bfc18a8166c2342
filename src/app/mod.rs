//! The command line's library side: `main` takes a parsed `Cli` and hands each command to
//! the module that owns it, and returns what it failed on. It never exits the process:
//! `main.rs` prints the error and sets the exit code.
//!
//! - `run`: `edaflow run`, the long-running process (runtime threads, reloads, shutdown).
//! - `signals`: Ctrl-C, SIGTERM and SIGHUP as futures and reload requests.
//! - `article`: `edaflow api-server` and `edaflow consumer`, each a `run` of a built-in flow.
//! - `flow_files`: `validate` and `test`, which read flow files without running them.
//! - `graph`: `edaflow graph`, with live counts from a running instance.
//! - `publish`, `tail`, `trace`, `dead`, `top`: the commands that talk to a running instance
//!   (through `crate::client`).
//! - `install`: `edaflow completions` and `edaflow man`, generated from `crate::cli`.
//! - `init`: `edaflow init`, a new flow folder to start from.
//! - `schemas`: `edaflow schema` and `edaflow asyncapi`, the flow-file and event schemas.
//! - `render`: what the commands print; `json` and `junit`: the same for tools and CI.
//! - `error`: `Error`, everything a command can fail with.

mod article;
mod dead;
mod error;
mod flow_files;
mod graph;
mod init;
mod install;
mod json;
mod junit;
mod publish;
mod render;
mod run;
mod schemas;
mod signals;
mod tail;
mod top;
mod trace;

use std::future::Future;

use crate::cli::{Cli, Command};

pub use error::Error;
pub use render::render_trace;
pub use run::{build_runtime, run, runtime_threads};
pub use signals::shutdown_signal;

/// Runs one parsed command line.
///
/// # Errors
/// What the command failed on, as a diagnostic.
pub fn main(cli: Cli) -> Result<(), Error> {
    match dispatch(cli.command) {
        // The reader of stdout went away (`edaflow tail | head`): that ends the command, as
        // SIGPIPE ends other tools, without an error of its own.
        Err(Error::Stdout { source }) if source.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result,
    }
}

/// Hands a command to the module that owns it.
fn dispatch(command: Command) -> Result<(), Error> {
    match command {
        Command::Run(args) => run::run_blocking(args),
        Command::ApiServer(args) => article::api_server(args),
        Command::Consumer(args) => article::consumer(args),
        Command::Validate { flows, format } => flow_files::validate(&flows, format),
        Command::Test {
            flows,
            format,
            junit,
        } => flow_files::test(&flows, format, junit.as_deref()),
        Command::Init { dir, force } => init::init(&dir, force),
        Command::Schema => schemas::schema(),
        Command::Asyncapi { flows } => schemas::asyncapi(&flows),
        Command::Completions { shell } => install::completions(shell),
        Command::Man { dir } => install::man(dir.as_deref()),
        Command::Graph {
            flows,
            format,
            live,
            token,
        } => graph::graph(&flows, format, live.as_deref(), token),
        Command::Publish {
            topic,
            data,
            remote,
        } => on_client_runtime(publish::publish(&topic, &data, &remote)),
        Command::Query {
            topic,
            data,
            remote,
        } => on_client_runtime(publish::query(&topic, &data, &remote)),
        Command::Trace {
            correlation_id,
            format,
            remote,
        } => on_client_runtime(trace::trace(&correlation_id, format, &remote)),
        Command::Dead { action } => on_client_runtime(dead::dead(action)),
        Command::Tail {
            pattern,
            json,
            remote,
        } => on_client_runtime(tail::tail(&pattern, json, &remote)),
        Command::Top {
            interval,
            once,
            remote,
        } => on_client_runtime(top::top(top::TopArgs {
            remote: &remote,
            interval,
            once,
        })),
    }
}

/// The single-threaded runtime the client commands (publish, query, trace, dead, tail,
/// top, graph --live) run their requests on.
fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Runs one client command to its end on a `client_runtime`.
fn on_client_runtime<T>(command: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    client_runtime().map_err(Error::Io)?.block_on(command)
}
