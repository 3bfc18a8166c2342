//! What went wrong between a broker and its server, in edaflow's words: the cause carried
//! by `BrokerError::Unavailable`. A broker describes its server's failures with these (the
//! Redis broker from the redis crate's errors, in `broker::redis::failure`), so that no
//! client library's types cross the broker boundary.

/// What kind of failure a `ServerFailure` is: what retrying can do, and whether the server
/// could be reached at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The server could not be reached, or did not answer in time: refused, reset,
    /// dropped, timed out. Transient.
    Unreachable,
    /// The connection could not be made or used, and trying again the same way will not
    /// help (permission denied on the socket, a TLS failure). Not transient.
    Unusable,
    /// The server answered with an error that passes (loading its data, a failover, a
    /// cluster slot moving), or the connection has to be made again. Transient.
    TryAgain,
    /// The server refused the command (a script error, a wrong type, no permission).
    /// Not transient.
    Refused,
    /// The server answered with a reply of a shape the broker does not expect. Not
    /// transient.
    UnexpectedReply,
}

/// One failure of a broker's server: its kind and what happened, as the server or the
/// connection said it (never a URL or a password).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ServerFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl ServerFailure {
    /// A failure of `kind` saying `message`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> ServerFailure {
        ServerFailure {
            kind,
            message: message.into(),
        }
    }

    /// True when trying again later may succeed (see `FailureKind`).
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, FailureKind::Unreachable | FailureKind::TryAgain)
    }

    /// True when the server could not be reached or the connection not used, as opposed
    /// to an answer that is an error.
    pub fn is_unreachable(&self) -> bool {
        matches!(self.kind, FailureKind::Unreachable | FailureKind::Unusable)
    }
}
