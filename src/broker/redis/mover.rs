//! The movers: tasks that move what falls due, in batches. The deferred mover publishes
//! the namespace's `publish_later` events to their topics; a queue's mover moves its due
//! items (or those due within the take-ahead, see "Taking ahead" in the parent module) to
//! its ready stream, so that the queue's consumers can block in `XREADGROUP` there (see
//! `consumer`) rather than each run the take script.
//!
//! Any number of processes may run a mover for the same thing: the script moves each item
//! once. A mover sleeps until the next due time, or until a commit scheduling an earlier
//! item writes the wake stream. The deferred mover runs as long as the broker; a queue's
//! runs in each process that declared the queue, and ends when the queue is removed (or
//! the broker dropped).
//!
//! This module owns the movers' loop; the moving itself is the scripts' (`MOVE_DEFERRED`,
//! `MOVE_QUEUE`).

use std::sync::Weak;
use std::time::Duration;

use redis::Value;
use tracing::debug;

use super::failure::{unavailable, unexpected};
use super::reply::{head, int, items, nth, text};
use super::{blocking, outage, scripts, Inner, ShardBroker};
use crate::broker::BrokerError;
use crate::event::Event;

/// What a mover moves as it falls due.
pub(super) enum Moving {
    /// The namespace's deferred events, published to their topics.
    Deferred,
    /// One queue's items, moved to its ready stream.
    Queue(String),
}

/// The dead letter a deferred member that cannot be read becomes (see
/// `scripts::MOVE_DEFERRED`, which gives it the member as its data and an id of its own).
fn undecodable_deferred() -> Event {
    let mut dead = Event::new(
        "dead.deferred",
        "edaflow://redis/deferred",
        serde_json::Value::Null,
    );
    dead.extensions.insert(
        crate::event::dead_letter::REASON.into(),
        "undecodable delayed event: a stored member that is not `seq\\ntopic\\njson` \
         with a valid topic name"
            .into(),
    );
    dead
}

/// What one run of a mover's script did.
struct Moved {
    /// Items moved.
    count: i64,
    /// Ms until the next item falls due (comes within the take-ahead), if any.
    next_due: Option<u64>,
    /// The wake stream's last id, to block on what comes after it.
    wake_id: String,
}

/// One run of the mover's script; `None` when the queue is gone in Redis.
async fn step(broker: &ShardBroker, moving: &Moving) -> Result<Option<Moved>, BrokerError> {
    let batch = broker.inner.options.mover_batch;
    let prefix = broker.inner.keys.prefix();
    let reply: Value = match moving {
        Moving::Deferred => {
            scripts::MOVE_DEFERRED
                .prepare_invoke()
                .arg(prefix)
                .arg(batch)
                .arg(undecodable_deferred().to_stored_json())
                .invoke_async(&mut broker.conn())
                .await
        }
        Moving::Queue(queue) => {
            scripts::MOVE_QUEUE
                .prepare_invoke()
                .arg(prefix)
                .arg(queue)
                .arg(batch)
                .arg(broker.queue_ahead(queue))
                .invoke_async(&mut broker.conn())
                .await
        }
    }
    .map_err(unavailable)?;
    let reply = items(&reply)?;
    if head(reply)? == "gone" {
        return Ok(None);
    }
    let count = int(nth(reply, 0)?)?;
    let next_due = match text(nth(reply, 1)?)?.as_str() {
        // Nothing scheduled: no due time to wait for.
        "" => None,
        ms => Some(
            ms.parse::<u64>()
                .map_err(|_| unexpected("the ms until the next due item", &reply))?,
        ),
    };
    let wake_id = text(nth(reply, 2)?)?;
    // Only a queue's mover reports Redis's time (the deferred mover's script does not).
    if let Some(now) = reply.get(3) {
        broker.inner.clock.learn(int(now)?);
    }
    Ok(Some(Moved {
        count,
        next_due,
        wake_id,
    }))
}

/// Moves what falls due, in batches, until the broker is dropped (or the queue removed).
pub(super) async fn run(weak: Weak<Inner>, moving: Moving) {
    let what = match &moving {
        Moving::Deferred => "deferred mover",
        Moving::Queue(_) => "queue mover",
    };
    let mut conn: Option<blocking::BlockingConn> = None;
    let mut backoff = outage::BACKOFF_START;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let broker = ShardBroker { inner };
        if let Moving::Queue(queue) = &moving {
            let declared = broker
                .inner
                .queues
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(queue);
            if !declared {
                broker.forget_queue_mover(queue);
                return;
            }
        }
        if broker.inner.circuit.is_open() {
            // Redis is unreachable: the probe tells when to go on.
            drop(broker);
            tokio::time::sleep(outage::jittered(&mut backoff)).await;
            continue;
        }
        let heals = broker.heals();
        let stepped = async {
            let moved = step(&broker, &moving).await?;
            if moved.is_some() && conn.is_none() {
                conn = Some(blocking::BlockingConn::open(&broker).await?);
            }
            Ok::<_, BrokerError>(moved)
        };
        let moved = match broker.track(what, stepped.await) {
            Ok(Some(moved)) => {
                backoff = outage::BACKOFF_START;
                moved
            }
            Ok(None) => {
                // The queue is gone in Redis: Redis lost its state (healed now, the mover
                // goes on), or another process removed it (its consumers' take script
                // answers `gone` too).
                match broker.state_check(heals).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        debug!(mover = what, error = %outage::describe(&e), "redis unavailable; retrying");
                        drop(broker);
                        tokio::time::sleep(outage::jittered(&mut backoff)).await;
                        continue;
                    }
                }
                if let Moving::Queue(queue) = &moving {
                    broker.forget_queue_mover(queue);
                }
                return;
            }
            Err(e) => {
                debug!(mover = what, error = %outage::describe(&e), "redis unavailable; retrying");
                drop(broker);
                tokio::time::sleep(outage::jittered(&mut backoff)).await;
                continue;
            }
        };
        if moved.count >= broker.inner.options.mover_batch as i64 {
            continue;
        }
        let block = broker.inner.options.block;
        let wake_key = match &moving {
            Moving::Deferred => broker.inner.keys.deferred_wake(),
            Moving::Queue(queue) => broker.inner.keys.queue(queue, "wake"),
        };
        let wait = moved
            .next_due
            .map_or(block, |ms| Duration::from_millis(ms).min(block));
        if wait.is_zero() {
            continue;
        }
        let Some(c) = conn.as_mut() else { continue };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("BLOCK")
            .arg(u64::try_from(wait.as_millis()).unwrap_or(1000))
            .arg("STREAMS")
            .arg(&wake_key)
            .arg(&moved.wake_id);
        // Redis would end the wait up to a cron tick late (see `blocking`): a due time is
        // timed here.
        let due = (wait < block).then_some(wait);
        let shared = broker.conn();
        // Hold no strong reference while waiting: the broker may be dropped meanwhile.
        drop(broker);
        match c.read(shared, &cmd, blocking::after(due)).await {
            Ok(blocking::Ended::Reply(_)) => {}
            Ok(blocking::Ended::Abandoned) | Err(_) => conn = None,
        }
    }
}
