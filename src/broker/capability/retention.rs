//! Topic retention: how long each topic's events are kept after delivery.
//!
//! Offered by the Redis broker, whose topic streams keep events after every group has
//! taken them, trimmed by age. The memory broker keeps nothing past delivery and offers
//! none.

use std::time::Duration;

/// Sets how long each topic's events are kept (`[topics.NAME] retention`).
pub trait TopicRetention: Send + Sync {
    /// Replaces what was set before: topics left out are kept for ever.
    fn set_retention(&self, topics: &[(String, Duration)]);
}
