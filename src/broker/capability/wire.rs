//! The article's wire format: topics that travel as plain pub/sub with raw payloads, and
//! queues that are plain lists, for interoperating with programs that speak Redis
//! directly.
//!
//! Offered by the Redis broker. On the memory broker every topic and queue behaves the
//! same, so it offers none; the runtime warns when flows ask for it there.

use std::collections::{BTreeMap, BTreeSet};

/// Which topics and queues use the article's wire format. Built from the flows on every
/// load and handed to `WireFormat::declare_wire`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WireSpec {
    /// `[flow] topic_mode = "pubsub"`: every topic not in `streams` is pub/sub.
    pub pubsub_by_default: bool,
    /// Topics declared `mode = "pubsub"`.
    pub pubsub: BTreeSet<String>,
    /// Topics declared `mode = "stream"` (what stays a stream under a pub/sub default).
    pub streams: BTreeSet<String>,
    /// Queue name -> the plain list holding its items (`list = "…"`).
    pub lists: BTreeMap<String, String>,
}

impl WireSpec {
    /// Does `topic` travel as plain pub/sub?
    pub fn is_pubsub(&self, topic: &str) -> bool {
        self.pubsub.contains(topic) || (self.pubsub_by_default && !self.streams.contains(topic))
    }

    /// True when nothing uses the article's wire.
    pub fn is_empty(&self) -> bool {
        !self.pubsub_by_default && self.pubsub.is_empty() && self.lists.is_empty()
    }
}

/// A broker that can carry topics and queues in the article's wire format.
pub trait WireFormat: Send + Sync {
    /// Sets which topics and queues use the wire format, replacing what was set before
    /// (before the groups and queues of a new flow generation are declared).
    fn declare_wire(&self, wire: &WireSpec);
}
