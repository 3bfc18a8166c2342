//! Shared history: the journey entries every process records, in one place, so that
//! `edaflow trace` (and `GET /trace/…`) on any process sees the events handled by all of
//! them.
//!
//! Offered by the Redis broker. On the memory broker each process's own history (see
//! `runtime::history`) is the whole story, and it offers none.

use super::BoxFuture;
use crate::broker::BrokerError;

/// A journey history shared by every process using the broker.
pub trait SharedHistory: Send + Sync {
    /// Records history entries: (correlation id, entry JSON), in order. Bounded by the
    /// broker (journeys kept, entries per journey, age).
    fn record(&self, entries: Vec<(String, String)>) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// The entries recorded for one journey, in the order they were recorded (empty when
    /// none were).
    fn entries<'a>(
        &'a self,
        correlation: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, BrokerError>>;
}
