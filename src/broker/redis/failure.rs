//! Redis failures at the broker boundary: what a failed command, or a reply the broker
//! cannot read, becomes as a `BrokerError`.
//!
//! The redis crate's errors are described here in edaflow's words (`ServerFailure`: a kind
//! and a message) and go no further: this module must not let the redis crate's types
//! out of `broker::redis`. (A `From<redis::RedisError>` impl on `BrokerError` would be
//! public whatever its module, so the conversion is this function instead.)

use crate::broker::{BrokerError, FailureKind, ServerFailure};

/// Maps a Redis failure to the broker boundary: Redis out of memory (`-OOM`, see `oom`) is
/// `OutOfMemory`, anything else `Unavailable` with the failure described.
pub(super) fn unavailable(error: redis::RedisError) -> BrokerError {
    if error.code() == Some("OOM") {
        return BrokerError::OutOfMemory;
    }
    BrokerError::Unavailable {
        source: describe(&error),
    }
}

/// A Redis failure in edaflow's words: its kind, from what the redis crate says of it
/// (whether it reached Redis, whether retrying may help), and its message.
pub(super) fn describe(error: &redis::RedisError) -> ServerFailure {
    let reached = !(error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal());
    let transient = !matches!(error.retry_method(), redis::RetryMethod::NoRetry);
    let kind = match (reached, transient) {
        (false, true) => FailureKind::Unreachable,
        (false, false) => FailureKind::Unusable,
        (true, true) => FailureKind::TryAgain,
        (true, false) if error.kind() == redis::ErrorKind::UnexpectedReturnType => {
            FailureKind::UnexpectedReply
        }
        (true, false) => FailureKind::Refused,
    };
    ServerFailure::new(kind, error.to_string())
}

/// Redis is unreachable, as this process found without a command failing (the circuit is
/// open, a `PING` got no answer in time): a transient `Unavailable` saying `message`.
pub(super) fn unreachable(message: impl Into<String>) -> BrokerError {
    BrokerError::Unavailable {
        source: ServerFailure::new(FailureKind::Unreachable, message),
    }
}

/// Redis answered with `reply`, which is not of the shape expected (`what` says which):
/// an error, never read as an empty or zero value. Not transient.
pub(super) fn unexpected(what: &str, reply: &impl std::fmt::Debug) -> BrokerError {
    let mut shown = format!("{reply:?}");
    if shown.len() > 256 {
        let mut cut = 256;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
        shown.push('…');
    }
    BrokerError::Unavailable {
        source: ServerFailure::new(
            FailureKind::UnexpectedReply,
            format!("unexpected reply from Redis ({what}): {shown}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> redis::RedisError {
        redis::RedisError::from(std::io::Error::new(kind, "the cause"))
    }

    #[test]
    fn failures_keep_what_retrying_can_do_and_their_message() {
        let refused = describe(&io(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(refused.kind, FailureKind::Unreachable);
        assert!(refused.is_transient() && refused.is_unreachable());
        assert_eq!(refused.message, "the cause");
        let timed_out = describe(&io(std::io::ErrorKind::TimedOut));
        assert_eq!(timed_out.kind, FailureKind::Unreachable);
        let denied = describe(&io(std::io::ErrorKind::PermissionDenied));
        assert_eq!(denied.kind, FailureKind::Unusable);
        assert!(!denied.is_transient() && denied.is_unreachable());
        let loading = describe(&redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading),
            "LOADING",
        )));
        assert_eq!(loading.kind, FailureKind::TryAgain);
        assert!(loading.is_transient() && !loading.is_unreachable());
        let wrong_type = describe(&redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "WRONGTYPE",
        )));
        assert_eq!(wrong_type.kind, FailureKind::Refused);
        assert!(!wrong_type.is_transient() && !wrong_type.is_unreachable());
    }

    #[test]
    fn out_of_memory_is_its_own_error() {
        let oom = redis::make_extension_error(
            "OOM".to_owned(),
            Some("command not allowed when used memory > 'maxmemory'".to_owned()),
        );
        assert!(matches!(unavailable(oom), BrokerError::OutOfMemory));
    }

    #[test]
    fn an_unexpected_reply_is_an_error_that_is_not_retried_and_shows_it_briefly() {
        let error = unexpected("a test", &"x".repeat(1000));
        let BrokerError::Unavailable { source } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(source.kind, FailureKind::UnexpectedReply);
        assert!(!error.is_transient());
        assert!(source.message.len() < 400, "{}", source.message);
    }
}
