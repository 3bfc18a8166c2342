//! The `edaflow` binary: parse the command line, set up logging, run the library.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use edaflow::cli::{Cli, Command, LogFormat};

/// mimalloc instead of the system allocator: events, deliveries and Redis replies are many
/// small, short-lived allocations, where glibc's malloc cost a fifth of the CPU. Metered,
/// so that a script run's memory is bounded (`edaflow::script::memory`).
#[global_allocator]
static ALLOCATOR: edaflow::script::memory::MeteredAlloc<mimalloc::MiMalloc> =
    edaflow::script::memory::MeteredAlloc(mimalloc::MiMalloc);

/// The only place the process exits: with the command's error rendered by miette (as a
/// `miette::Result` from `main` would be), and its exit code.
fn main() -> ExitCode {
    let cli = Cli::parse();
    // `edaflow test` reports results itself; handler logs would drown them.
    let default_level = match cli.command {
        Command::Test { .. } => "warn",
        _ => "info",
    };
    init_tracing(cli.log_format, default_level);
    match edaflow::app::main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error.exit_code();
            eprintln!("Error: {:?}", miette::Report::new(error));
            ExitCode::from(code)
        }
    }
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_env("EDAFLOW_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let ansi = std::env::var_os("NO_COLOR").is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.with_ansi(ansi).compact().init(),
        LogFormat::Json => builder.json().init(),
    }
}
