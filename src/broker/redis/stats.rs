//! What waits in Redis, counted for `/healthz`, `/metrics`, the queue reports and
//! shutdown: groups' queued and in-flight entries, scheduled deferred events, queues'
//! depths.
//!
//! These are synchronous trait methods (`Broker::stats`, `scheduled`, `queue_stats`), so
//! they read over the synchronous connection (see `connection`), one round trip each. A
//! count that cannot be read is logged at debug level and reported as nothing, as the
//! trait asks.

use redis::Value;
use tracing::debug;

use super::reply::{int, items, text};
use super::{scripts, RedisBroker};
use crate::broker::{GroupStats, QueueStats};

/// Every group's queued and in-flight entries (see `Broker::stats`).
pub(super) fn groups(broker: &RedisBroker) -> Vec<GroupStats> {
    let prefix = broker.inner.keys.prefix().to_owned();
    let reply = broker.with_sync(|conn| {
        scripts::STATS
            .prepare_invoke()
            .arg(&prefix)
            .invoke::<Value>(conn)
    });
    let reply = match reply {
        Ok(reply) => reply,
        Err(e) => {
            debug!(error = %e, "group stats unavailable");
            return Vec::new();
        }
    };
    let capacity = broker.inner.options.group_capacity.unwrap_or(usize::MAX);
    let mut stats: Vec<GroupStats> = items(&reply)
        .chunks(3)
        .filter(|c| c.len() == 3)
        .map(|c| GroupStats {
            name: text(&c[0]),
            queued: usize::try_from(int(&c[1])).unwrap_or(0),
            in_flight: usize::try_from(int(&c[2])).unwrap_or(0),
            capacity,
        })
        .collect();
    stats.sort_by(|a, b| a.name.cmp(&b.name));
    stats
}

/// Deferred events waiting for their due time (see `Broker::scheduled`).
pub(super) fn scheduled(broker: &RedisBroker) -> usize {
    let key = broker.inner.keys.deferred();
    match broker.with_sync(|conn| redis::cmd("ZCARD").arg(&key).query::<usize>(conn)) {
        Ok(n) => n,
        Err(e) => {
            debug!(error = %e, "scheduled count unavailable");
            0
        }
    }
}

/// Every queue's depth, items due now, next due time and items in flight (see
/// `Broker::queue_stats`).
pub(super) fn queues(broker: &RedisBroker) -> Vec<QueueStats> {
    let prefix = broker.inner.keys.prefix().to_owned();
    let ahead = broker.take_ahead_ms();
    let reply = broker.with_sync(|conn| {
        scripts::QUEUE_STATS
            .prepare_invoke()
            .arg(&prefix)
            .arg(ahead)
            .invoke::<Value>(conn)
    });
    let reply = match reply {
        Ok(reply) => reply,
        Err(e) => {
            debug!(error = %e, "queue stats unavailable");
            return Vec::new();
        }
    };
    let count = |v: &Value| usize::try_from(int(v)).unwrap_or(0);
    let mut stats: Vec<QueueStats> = items(&reply)
        .chunks(6)
        .filter(|c| c.len() == 6)
        .map(|c| QueueStats {
            name: text(&c[0]),
            capacity: text(&c[1]).parse().ok(),
            depth: count(&c[2]),
            due_now: count(&c[3]),
            next_due_ms: text(&c[4]).parse().ok(),
            in_flight: count(&c[5]),
        })
        .collect();
    stats.sort_by(|a, b| a.name.cmp(&b.name));
    stats
}
