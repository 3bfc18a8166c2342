//! What waits in Redis, counted for `/healthz`, `/metrics`, the queue reports and
//! shutdown: groups' queued and in-flight entries, scheduled deferred events, queues'
//! depths.
//!
//! Each is one round trip on the shared asynchronous connection, refused at once while the
//! circuit is open. A count that cannot be read is reported as nothing, as the trait
//! asks, and logged: at
//! debug level while Redis is unreachable (the outage is logged once elsewhere), as a
//! warning when Redis answered something the broker cannot read.

use redis::Value;
use tracing::{debug, warn};

use super::failure::{unavailable, unexpected};
use super::reply::{count, items, text};
use super::{scripts, ShardBroker};
use crate::broker::{BrokerError, FailureKind, GroupStats, QueueStats};

/// Logs why `what` could not be counted (see the module docs).
fn not_counted(what: &str, error: &BrokerError) {
    match error {
        BrokerError::Unavailable { source } if source.kind == FailureKind::UnexpectedReply => {
            warn!(error = %source, "{what} unavailable");
        }
        other => debug!(error = %other, "{what} unavailable"),
    }
}

/// A count as a `usize`.
fn size(value: &Value) -> Result<usize, BrokerError> {
    usize::try_from(count(value)?).map_err(|_| unexpected("a count", value))
}

/// Text that is empty for none (`''` from the scripts), else a number.
fn optional_number<T: std::str::FromStr>(value: &Value) -> Result<Option<T>, BrokerError> {
    match text(value)?.as_str() {
        "" => Ok(None),
        n => n
            .parse()
            .map(Some)
            .map_err(|_| unexpected("a number or nothing", value)),
    }
}

/// Every group's queued and in-flight entries (see `Broker::stats`).
pub(super) async fn groups(broker: &ShardBroker) -> Vec<GroupStats> {
    read_groups(broker).await.unwrap_or_else(|e| {
        not_counted("group stats", &e);
        Vec::new()
    })
}

async fn read_groups(broker: &ShardBroker) -> Result<Vec<GroupStats>, BrokerError> {
    broker.inner.circuit.admit()?;
    let reply = scripts::STATS
        .prepare_invoke()
        .arg(broker.inner.keys.prefix())
        .invoke_async::<Value>(&mut broker.conn())
        .await
        .map_err(unavailable)?;
    let capacity = broker.inner.options.group_capacity.unwrap_or(usize::MAX);
    let reply = items(&reply)?;
    if reply.len() % 3 != 0 {
        return Err(unexpected("groups' names and counts", &reply));
    }
    let mut stats = reply
        .chunks_exact(3)
        .map(|c| {
            Ok(GroupStats {
                name: text(&c[0])?,
                queued: size(&c[1])?,
                in_flight: size(&c[2])?,
                capacity,
            })
        })
        .collect::<Result<Vec<GroupStats>, BrokerError>>()?;
    stats.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(stats)
}

/// Deferred events waiting for their due time (see `Broker::scheduled`).
pub(super) async fn scheduled(broker: &ShardBroker) -> usize {
    let count = async {
        broker.inner.circuit.admit()?;
        redis::cmd("ZCARD")
            .arg(broker.inner.keys.deferred())
            .query_async::<usize>(&mut broker.conn())
            .await
            .map_err(unavailable)
    };
    match count.await {
        Ok(n) => n,
        Err(e) => {
            not_counted("scheduled count", &e);
            0
        }
    }
}

/// Every queue's depth, items due now, next due time and items in flight (see
/// `Broker::queue_stats`).
pub(super) async fn queues(broker: &ShardBroker) -> Vec<QueueStats> {
    read_queues(broker).await.unwrap_or_else(|e| {
        not_counted("queue stats", &e);
        Vec::new()
    })
}

async fn read_queues(broker: &ShardBroker) -> Result<Vec<QueueStats>, BrokerError> {
    broker.inner.circuit.admit()?;
    let reply = scripts::QUEUE_STATS
        .prepare_invoke()
        .arg(broker.inner.keys.prefix())
        .arg(broker.take_ahead_ms())
        .invoke_async::<Value>(&mut broker.conn())
        .await
        .map_err(unavailable)?;
    let reply = items(&reply)?;
    if reply.len() % 6 != 0 {
        return Err(unexpected("queues' names and counts", &reply));
    }
    let mut stats = reply
        .chunks_exact(6)
        .map(|c| {
            Ok(QueueStats {
                name: text(&c[0])?,
                // '' for an unbounded queue.
                capacity: optional_number(&c[1])?,
                depth: size(&c[2])?,
                due_now: size(&c[3])?,
                // '' when nothing waits for a due time.
                next_due_ms: optional_number(&c[4])?,
                in_flight: size(&c[5])?,
            })
        })
        .collect::<Result<Vec<QueueStats>, BrokerError>>()?;
    stats.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(stats)
}
