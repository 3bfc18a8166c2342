//! Redis failures at the broker boundary: what a failed command becomes as a
//! `BrokerError`.
//!
//! This module must not let the redis crate's error types out of `broker::redis`.

use crate::broker::BrokerError;

/// Maps a Redis failure to the broker boundary: Redis out of memory (`-OOM`, see `oom`) is
/// `OutOfMemory`, anything else `Unavailable`.
pub(super) fn unavailable(source: redis::RedisError) -> BrokerError {
    if source.code() == Some("OOM") {
        return BrokerError::OutOfMemory;
    }
    BrokerError::Unavailable { source }
}
