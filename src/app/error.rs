//! `Error`: everything a command can end with, one diagnostic per boundary it crosses
//! (flows, runtime, client, watcher, broker, the article's commands). `main.rs` prints it
//! and exits non-zero; nothing in the library exits the process.

use crate::article::ArticleError;
use crate::broker::BrokerError;
use crate::client::ClientError;
use crate::flow::diagnostic::FlowReport;
use crate::runtime::RuntimeError;
use crate::watch::WatchError;

use super::init::InitError;
use super::install::InstallError;

/// Everything that can end a command with a failure.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum Error {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Flow(#[from] FlowReport),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Otel(#[from] crate::otel::OtelError),
    /// Invalid flows whose diagnostics went to stdout as JSON (`--format json`).
    #[error("{summary} (listed on stdout)")]
    #[diagnostic(code(edaflow::flow::invalid))]
    Reported { summary: String },
    #[error("cannot write the report {}", path.display())]
    #[diagnostic(code(edaflow::test::report))]
    Report {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{failed} of {total} flow tests failed")]
    #[diagnostic(code(edaflow::test::failed))]
    TestsFailed { failed: usize, total: usize },
    #[error("invalid JSON on line {line}")]
    #[diagnostic(
        code(edaflow::publish::json),
        help("pass one JSON value, e.g. '{{\"order_id\": 1}}'")
    )]
    BadJson {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Init(#[from] InitError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Install(#[from] InstallError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Article(#[from] ArticleError),
    #[error("the options of the built-in flow's `edaflow run` do not parse")]
    #[diagnostic(
        code(edaflow::article::options),
        help("an EDAFLOW_* variable of `edaflow run` in the environment holds a bad value")
    )]
    BuiltinOptions {
        #[source]
        source: clap::Error,
    },
    #[error("cannot read events from stdin")]
    #[diagnostic(code(edaflow::publish::stdin))]
    Stdin {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to stdout")]
    #[diagnostic(code(edaflow::stdout))]
    Stdout {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime")]
    #[diagnostic(code(edaflow::io))]
    Io(#[source] std::io::Error),
}

impl Error {
    /// The process's exit code for this error: 2 for a command line that does not parse
    /// (as clap exits for `edaflow`'s own), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BuiltinOptions { .. } => 2,
            _ => 1,
        }
    }
}
