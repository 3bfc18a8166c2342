//! The accept feed: a report of every event a broker accepts for delivery, to one
//! observer in the process.
//!
//! Offered by the memory broker, where one process sees every event, so the runtime's
//! chain trackers follow their instances from this feed without a consumer group. The
//! Redis broker offers none: its events are accepted by whichever process publishes
//! them, and chain instances live in Redis instead (see `SharedChains`).

use std::sync::Arc;

use crate::event::Event;

/// Sees each event a broker accepts for delivery (see `AcceptFeed`).
pub trait AcceptObserver: Send + Sync + 'static {
    /// Called once per accepted event with the broker's own shared copy of it. It may run
    /// under one of the broker's locks: it must be quick and must not block or call back
    /// into the broker.
    fn accepted(&self, event: &Arc<Event>);
}

/// A broker that reports the events it accepts.
pub trait AcceptFeed: Send + Sync {
    /// Reports every event this broker accepts for delivery to `observer`, once each and
    /// before any consumer can take it (a journey's events reach the observer in the order
    /// they happened): events published, published by a commit (emits, dead letters), and
    /// delayed ones when they fall due. Redeliveries, and items entering work queues, are
    /// not reported. A broker takes one observer: returns false when one was taken
    /// already, and this one is refused.
    fn observe_accepted(&self, observer: Arc<dyn AcceptObserver>) -> bool;
}
