//! Queues on Redis: declaring and removing them, enqueueing, making their consumers, and
//! starting their movers.
//!
//! A queue is a record in `P queues` (its capacity), a schedule (`P q:{queue}:sched`, items
//! by due time) and two streams read with the group `workers`: `ready`, where the mover
//! puts items once due (or due within the take-ahead, see "Taking ahead" in the parent
//! module), and `back`, where given-back items wait to be taken first. Enqueueing goes
//! through the commit script (`commit`), which checks the capacity. A queue declared
//! `list = "…"` is a plain Redis list instead (see `wire`) and has none of these keys.
//!
//! The mover itself is `mover`'s; this module must not move items.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tracing::Instrument;

use super::commit::NO_ACK;
use super::consumer::{self, ShardConsumer};
use super::failure::unavailable;
use super::keys::QUEUE_GROUP;
use super::mover::{self, Moving};
use super::{scripts, wire, ShardBroker};
use crate::broker::{BrokerError, Effects, QueueSpec, Removed};
use crate::event::Event;

impl ShardBroker {
    /// Writes a queue's record and creates its ready and back streams with their XGROUP
    /// (nothing is created twice).
    pub(super) async fn create_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        let keys = &self.inner.keys;
        redis::cmd("HSET")
            .arg(keys.queues())
            .arg(&spec.name)
            // '' for an unbounded queue.
            .arg(spec.capacity.map(|c| c.to_string()).unwrap_or_default())
            .query_async::<Value>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        for part in ["ready", "back"] {
            self.create_xgroup(&keys.queue(&spec.name, part), QUEUE_GROUP)
                .await?;
        }
        Ok(())
    }

    /// Whether this process declared `queue` in Redis (not a plain list).
    pub(super) fn declared_queue(&self, queue: &str) -> bool {
        self.inner
            .queue_specs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(queue)
    }

    /// `take_ahead` in ms, capped at a quarter of `claim_idle` (an item held until its due
    /// time must not look abandoned meanwhile).
    pub(super) fn take_ahead_ms(&self) -> u64 {
        let options = &self.inner.options;
        let ahead = options.take_ahead.min(options.claim_idle / 4);
        u64::try_from(ahead.as_millis()).unwrap_or(u64::MAX)
    }

    /// How far ahead of their due time this queue's items may be taken, in ms (none for a
    /// queue this process did not declare).
    pub(super) fn queue_ahead(&self, queue: &str) -> u64 {
        self.inner
            .queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
            .copied()
            .unwrap_or(0)
    }

    /// Whether `queue` exists: declared by this process, or registered in Redis by another
    /// (one synchronous round trip, see `connection`).
    fn knows_queue(&self, queue: &str) -> Result<bool, BrokerError> {
        if self
            .inner
            .queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(queue)
        {
            return Ok(true);
        }
        let key = self.inner.keys.queues();
        self.with_sync(|conn| redis::cmd("HEXISTS").arg(&key).arg(queue).query(conn))
    }

    /// Starts the queue's mover in this process, unless it runs already.
    pub(super) fn start_queue_mover(&self, queue: &str) {
        let started = self
            .inner
            .queue_movers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(queue.to_owned());
        if started {
            let span =
                tracing::info_span!("redis_queue_mover", component = "broker", queue = %queue);
            // Tracked by ownership: it holds a Weak and ends once the broker is gone.
            tokio::spawn(
                mover::run(Arc::downgrade(&self.inner), Moving::Queue(queue.to_owned()))
                    .instrument(span),
            );
        }
    }

    /// The queue's mover has ended (the queue is gone).
    pub(super) fn forget_queue_mover(&self, queue: &str) {
        self.inner
            .queue_movers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(queue);
    }
}

/// Declares a queue (see `Broker::declare_queue`) and starts its mover in this process.
pub(super) async fn declare(broker: &ShardBroker, spec: &QueueSpec) -> Result<(), BrokerError> {
    if broker.inner.wire.list_of(&spec.name).is_some() {
        // A plain list needs no keys of edaflow's: it exists once something is pushed.
        broker
            .inner
            .queues
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.name.clone(), 0);
        return Ok(());
    }
    broker.create_queue(spec).await?;
    // See "Taking ahead" for why these two never do.
    let ahead = if spec.poll.is_some() || spec.capacity.is_some() {
        0
    } else {
        broker.take_ahead_ms()
    };
    broker
        .inner
        .queues
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(spec.name.clone(), ahead);
    broker
        .inner
        .queue_specs
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(spec.name.clone(), spec.clone());
    broker.start_queue_mover(&spec.name);
    broker.mark_epoch(false).await
}

/// Removes a queue (see `Broker::remove_queue`): its items go to `successor`, or are
/// dropped.
pub(super) async fn remove(
    broker: &ShardBroker,
    name: &str,
    successor: Option<&str>,
) -> Result<Removed, BrokerError> {
    let keys = &broker.inner.keys;
    broker
        .inner
        .queues
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(name);
    broker
        .inner
        .queue_specs
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(name);
    let mut conn = broker.conn();
    let (moved, dropped): (u64, u64) = scripts::REHOME_QUEUE
        .prepare_invoke()
        .arg(keys.prefix())
        .arg(name)
        .arg(successor.unwrap_or(""))
        .invoke_async(&mut conn)
        .await
        .map_err(unavailable)?;
    redis::cmd("HDEL")
        .arg(keys.queues())
        .arg(name)
        .query_async::<Value>(&mut conn)
        .await
        .map_err(unavailable)?;
    redis::cmd("DEL")
        .arg(keys.queue(name, "sched"))
        .arg(keys.queue(name, "ready"))
        .arg(keys.queue(name, "back"))
        .query_async::<Value>(&mut conn)
        .await
        .map_err(unavailable)?;
    broker.wake(keys.queue(name, "wake")).await?;
    Ok(Removed { moved, dropped })
}

/// Enqueues one item, due after `delay` (see `Broker::enqueue`): a commit with nothing to
/// ack.
pub(super) async fn enqueue(
    broker: &ShardBroker,
    queue: &str,
    item: Event,
    delay: Duration,
) -> Result<(), BrokerError> {
    let effects = Effects {
        enqueue: vec![(queue.to_owned(), item, delay)],
        ..Effects::default()
    };
    broker
        .run_commit(NO_ACK, &effects, &super::commit::Outbound::default())
        .await
}

/// The consumers of one subscriber of `queue` (see `Broker::queue_consumers`): list
/// readers for a plain-list queue (see `wire`), else `n` consumers sharing one reader.
pub(super) fn consumers(
    broker: &ShardBroker,
    queue: &str,
    n: usize,
) -> Result<Vec<ShardConsumer>, BrokerError> {
    let n = n.max(1);
    if let Some(list) = broker.inner.wire.list_of(queue) {
        return Ok((0..n)
            .map(|_| wire::list_consumer(broker, queue, list.clone()))
            .collect());
    }
    if !broker.knows_queue(queue)? {
        return Err(BrokerError::UnknownQueue {
            queue: queue.to_owned(),
        });
    }
    Ok(consumer::spawn(
        broker.clone(),
        consumer::Source::Queue(queue.into()),
        broker.new_consumer_name(),
        n,
    ))
}
