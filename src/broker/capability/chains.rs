//! Shared chains: the instances of tracked chains kept in the broker, so that the
//! trackers of several processes, each reading some of a chain's steps from the consumer
//! group `chain:NAME`, follow them together; a timed-out instance is taken by one tracker.
//!
//! Offered by the Redis broker. On the memory broker one process sees every step and each
//! tracker keeps its instances in memory, fed by the accept feed (see `AcceptFeed`); it
//! offers none.

use std::sync::Arc;
use std::time::Duration;

use super::BoxFuture;
use crate::broker::BrokerError;
use crate::event::Event;

/// Chain instances kept in the broker and shared by every process.
pub trait SharedChains: Send + Sync {
    /// Records steps of a chain's instances (a step that does not advance its instance,
    /// such as a redelivery, is not counted twice).
    fn observe<'a>(
        &'a self,
        chain: &'a ChainSpec,
        steps: &'a [ChainStep],
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Takes up to `limit` instances past their timeout; each is handed to one caller.
    fn expire<'a>(
        &'a self,
        chain: &'a ChainSpec,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ExpiredChain>, BrokerError>>;

    /// The chain's shared counters.
    fn counts<'a>(
        &'a self,
        chain: &'a ChainSpec,
    ) -> BoxFuture<'a, Result<ChainCounts, BrokerError>>;
}

/// A tracked chain, as the broker needs to know it to keep its instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSpec {
    pub name: String,
    /// How many steps it has.
    pub steps: usize,
    pub timeout: Option<Duration>,
}

/// One step event a chain tracker read: the step's index in the chain.
#[derive(Clone, Debug)]
pub struct ChainStep {
    pub step: usize,
    pub event: Arc<Event>,
}

/// An instance that did not complete in time, taken by exactly one tracker.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpiredChain {
    pub correlation: String,
    /// Indexes of the steps it reached, in order.
    pub reached: Vec<usize>,
    pub waited: Duration,
    /// The last step event it reached.
    pub last: Event,
}

/// A chain's counters as a broker shares them between processes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChainCounts {
    pub started: u64,
    pub completed: u64,
    pub timed_out: u64,
    pub in_flight: u64,
    /// Recent whole-chain durations, ms, newest last.
    pub durations_ms: Vec<f64>,
    /// Per step index after the first: recent durations from the previous step, ms.
    pub step_ms: Vec<(usize, Vec<f64>)>,
}
