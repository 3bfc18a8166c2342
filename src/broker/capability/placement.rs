//! Topic placement: which shard of a spread namespace holds a topic
//! (`[topics.NAME] shard`).
//!
//! Offered by the Redis broker, which can spread a namespace over shards (see its
//! `spread` module). The memory broker has one place for everything and offers none.

/// Sets the shards topics are placed on.
pub trait TopicPlacement: Send + Sync {
    /// Replaces what was set before: topics left out are placed by the hash of their name.
    /// A shard beyond the broker's count wraps around (`shard % shards`).
    fn place_topics(&self, topics: &[(String, usize)]);
}
