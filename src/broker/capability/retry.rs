//! Retryable commits: a commit that can fail for a while and then succeed
//! (`BrokerError::is_transient`: the broker's server is unreachable, or out of memory), so
//! that a worker retries it with the same effects rather than giving the event up.
//!
//! Offered by the Redis broker. The memory broker's commit fails only for good, and it
//! offers none: its workers hand it the effects without keeping a copy (copying every
//! emitted event costs the memory broker a third of its throughput). A broker that offers
//! it also keeps what a stopping process leaves unfinished, for another process (or the
//! next start) to take.

use super::BoxFuture;
use crate::broker::{BrokerError, Delivery, Effects};

/// A broker whose commits a worker retries while they fail transiently.
pub trait RetryableCommit: Send + Sync {
    /// As `Broker::commit`, from borrowed effects, so that the caller keeps them for the
    /// next attempt without a copy.
    fn commit_retryable<'a>(
        &'a self,
        delivery: &'a Delivery,
        effects: &'a Effects,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;
}
