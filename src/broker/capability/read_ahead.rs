//! Read-ahead: state-store reads made ahead of a handler run, asynchronously and in one
//! go, for a broker whose reads cross the network, so that no run waits on one while it
//! holds a worker thread (see `crate::store`).
//!
//! Offered by the Redis broker. The memory broker's stores answer at once, and handlers
//! read them as they run (`Broker::stores`); it offers none.

use super::BoxFuture;
use crate::store::{Fetched, StoreError, StoreWant};

/// A broker whose store reads a handler run asks for ahead.
pub trait StoreReadAhead: Send + Sync {
    /// Makes `wants` in one go; the answers come in the same order.
    fn read_ahead(&self, wants: Vec<StoreWant>) -> BoxFuture<'_, Result<Vec<Fetched>, StoreError>>;
}
