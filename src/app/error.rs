//! `Error`: everything a command can end with, one diagnostic per boundary it crosses
//! (flows, runtime, client, watcher, broker, the article's commands). `main.rs` prints it
//! and exits non-zero; nothing in the library exits the process.

use crate::article::ArticleError;
use crate::broker::BrokerError;
use crate::client::ClientError;
use crate::flow::diagnostic::FlowReport;
use crate::runtime::RuntimeError;
use crate::watch::WatchError;

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
    Article(#[from] ArticleError),
    #[error("cannot start the async runtime")]
    #[diagnostic(code(edaflow::io))]
    Io(#[from] std::io::Error),
}
