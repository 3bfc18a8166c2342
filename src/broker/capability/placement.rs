//! A namespace spread over shards: which shard holds a topic (`[topics.NAME] shard`), and
//! how the outboxes carrying effects between shards are doing.
//!
//! Offered by the Redis broker, which can spread a namespace over shards (see its
//! `spread` module). The memory broker has one place for everything and offers none.

use std::time::Duration;

use super::BoxFuture;

/// Sets the shards topics are placed on.
pub trait TopicPlacement: Send + Sync {
    /// Replaces what was set before: topics left out are placed by the hash of their name.
    /// A shard beyond the broker's count wraps around (`shard % shards`).
    fn place_topics(&self, topics: &[(String, usize)]);

    /// Each shard's outbox: what waits in it to be forwarded, and what this process
    /// forwarded from it. Empty for a namespace of one shard (it has no outbox). A shard
    /// that cannot be asked is left out.
    fn outboxes(&self) -> BoxFuture<'_, Vec<OutboxStats>>;
}

/// One shard's outbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub shard: usize,
    /// Entries written by commits and not forwarded yet.
    pub waiting: u64,
    /// How long the oldest of them has waited (zero when none waits).
    pub oldest: Duration,
    /// Entries this process's forwarder carried from it since start.
    pub forwarded: u64,
}
