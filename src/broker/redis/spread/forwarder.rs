//! The forwarder: carries each shard's outbox (effects its commits wrote for other shards)
//! to their shards, exactly once and in order per pair of shards.
//!
//! Every process runs one forwarder per shard; the one holding the shard's lease
//! (`P fwd:lease`, renewed every loop, expiring after `LEASE`) forwards, the others wait to
//! take over. A loop reads the oldest entries of the outbox (`XREAD … 0-0`: forwarded
//! entries are deleted, so what is there is what has not landed), runs one batch script
//! per destination carrying that destination's entries in outbox order (ack kind `f`, see
//! `scripts::BATCH`), and deletes from the outbox what landed.
//!
//! Exactly once: the destination keeps, per source shard, the id of the last outbox entry
//! that landed (`P fwd:{shard}`), moved in the same script run as the entry's effects; an
//! entry at or below it is skipped. A forwarder that dies after the landing and before the
//! delete, or two forwarders at once (a lease that expired under a stalled process), land
//! nothing twice. In order: one destination's entries go in one script run, and once one
//! is refused (its queue full or unknown, Redis out of memory) the later ones wait with it,
//! so the watermark never passes an entry that has not landed.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::streams::StreamReadReply;
use redis::Value;
use tracing::{debug, warn};

use super::outbox::Parcel;
use super::Spread;
use crate::broker::redis::batch::{self, OpArgs};
use crate::broker::redis::commit::Forwarded;
use crate::broker::redis::failure::unavailable;
use crate::broker::redis::reply::text;
use crate::broker::redis::scripts;
use crate::broker::redis::ShardBroker;
use crate::broker::BrokerError;

/// How long a lease holds without being renewed: how soon another process takes over
/// the outbox of one that died.
const LEASE: Duration = Duration::from_secs(3);
/// How often a process without the lease looks whether it is free.
const LEASE_POLL: Duration = Duration::from_secs(1);
/// Most outbox entries one loop reads.
const READ: usize = 512;
/// Longest one read blocks (below `LEASE`, so the holder renews it in time).
const BLOCK: Duration = Duration::from_millis(1000);
/// Back-off after a refused forward or a failed command, doubling up to `RETRY_MAX`.
const RETRY_START: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// One outbox entry read: its id, destination and parcel.
struct Entry {
    id: String,
    to: usize,
    parcel: Parcel,
}

/// Runs shard `source`'s forwarder until the spread broker is gone.
pub(super) async fn run(spread: Weak<Spread>, source: usize) {
    let mut retry = RETRY_START;
    let mut conn = None;
    let mut refusing = false;
    loop {
        let Some(shard) = spread.upgrade().map(|s| s.shards[source].clone()) else {
            return;
        };
        match hold_lease(&shard).await {
            Ok(true) => {}
            Ok(false) => {
                drop(shard);
                tokio::time::sleep(LEASE_POLL).await;
                continue;
            }
            Err(e) => {
                debug!(shard = source, error = %e, "forwarder: the lease could not be read");
                drop(shard);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        }
        if conn.is_none() {
            conn = shard.dedicated().await.ok();
        }
        let Some(read_conn) = conn.as_mut() else {
            drop(shard);
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
            continue;
        };
        let key = shard.inner.keys.outbox();
        drop(shard);
        let entries = match read(read_conn, &key).await {
            Ok(entries) => entries,
            Err(e) => {
                debug!(shard = source, error = %e, "forwarder: the outbox could not be read");
                conn = None;
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        if entries.is_empty() {
            continue;
        }
        let Some(spread) = spread.upgrade() else {
            return;
        };
        match forward_all(&spread, source, entries).await {
            Ok(None) => {
                if refusing {
                    warn!(shard = source, "forwarder: the outbox moves again");
                    refusing = false;
                }
                retry = RETRY_START;
            }
            Ok(Some(reason)) => {
                if !refusing {
                    warn!(
                        shard = source,
                        reason,
                        "forwarder: a shard refuses what this shard's outbox holds for it; retrying in order"
                    );
                    refusing = true;
                }
                drop(spread);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
            Err(e) => {
                debug!(shard = source, error = %e, "forwarder: a forward failed");
                drop(spread);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Takes or renews the shard's forwarding lease; false when another process holds it.
async fn hold_lease(shard: &ShardBroker) -> Result<bool, BrokerError> {
    let lease_ms = u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX);
    let held: i64 = scripts::HOLD_LEASE
        .prepare_invoke()
        .arg(shard.inner.keys.prefix())
        .arg(shard.inner.keys.forward_lease())
        .arg(&shard.inner.instance)
        .arg(lease_ms)
        .invoke_async(&mut shard.conn())
        .await
        .map_err(unavailable)?;
    Ok(held == 1)
}

/// The oldest entries of the outbox, waiting up to `BLOCK` for one.
async fn read(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Result<Vec<Entry>, BrokerError> {
    let reply: Option<StreamReadReply> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(READ)
        .arg("BLOCK")
        .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(1000))
        .arg("STREAMS")
        .arg(key)
        .arg("0-0")
        .query_async(conn)
        .await
        .map_err(unavailable)?;
    let mut entries = Vec::new();
    for stream in reply.map(|r| r.keys).unwrap_or_default() {
        for id in stream.ids {
            let field = |name: &str| id.map.get(name).map(text).transpose();
            let (Some(to), Some(body)) = (field("s")?, field("b")?) else {
                warn!(
                    entry = id.id,
                    "forwarder: an outbox entry without shard or parcel is skipped"
                );
                continue;
            };
            let (Ok(to), Ok(parcel)) = (to.parse::<usize>(), serde_json::from_str(&body)) else {
                warn!(
                    entry = id.id,
                    "forwarder: an outbox entry that cannot be read is skipped"
                );
                continue;
            };
            entries.push(Entry {
                id: id.id,
                to,
                parcel,
            });
        }
    }
    Ok(entries)
}

/// Forwards `entries` (in outbox order) to their shards, one script run per destination,
/// and deletes from the outbox what landed. `Some(reason)` when a destination refused.
async fn forward_all(
    spread: &Spread,
    source: usize,
    entries: Vec<Entry>,
) -> Result<Option<String>, BrokerError> {
    let mut by_shard: Vec<Vec<Entry>> = (0..spread.shards.len()).map(|_| Vec::new()).collect();
    let mut unknown = Vec::new();
    for entry in entries {
        match by_shard.get_mut(entry.to) {
            Some(list) => list.push(entry),
            None => unknown.push(entry.id),
        }
    }
    if !unknown.is_empty() {
        warn!(
            shard = source,
            entries = unknown.len(),
            shards = spread.shards.len(),
            "forwarder: outbox entries for a shard this process does not have (a different --shards?) stay in the outbox"
        );
    }
    type Forward<'a> = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = (Vec<Entry>, Result<Vec<Forwarded>, BrokerError>)>
                + Send
                + 'a,
        >,
    >;
    let mut sends: Vec<Forward<'_>> = Vec::new();
    for (to, list) in by_shard.into_iter().enumerate() {
        if list.is_empty() {
            continue;
        }
        let shard = &spread.shards[to];
        sends.push(Box::pin(async move {
            let outcome = shard.forward(source, &list).await;
            (list, outcome)
        }));
    }
    let mut landed = Vec::new();
    let mut refused = None;
    for (list, outcome) in futures_util::future::join_all(sends).await {
        match outcome {
            Ok(outcomes) => {
                for (entry, outcome) in list.into_iter().zip(outcomes) {
                    match outcome {
                        Forwarded::Landed => landed.push(entry.id),
                        Forwarded::Refused(reason) => {
                            refused.get_or_insert(reason);
                        }
                    }
                }
            }
            Err(e) => {
                refused.get_or_insert(e.to_string());
            }
        }
    }
    if !landed.is_empty() {
        let source_shard = &spread.shards[source];
        let _: Value = redis::cmd("XDEL")
            .arg(source_shard.inner.keys.outbox())
            .arg(&landed)
            .query_async(&mut source_shard.conn())
            .await
            .map_err(unavailable)?;
        spread.forwarded[source].fetch_add(landed.len() as u64, Ordering::Relaxed);
    }
    Ok(refused)
}

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The ms part of a stream entry id.
fn id_ms(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

impl ShardBroker {
    /// Lands entries of shard `source`'s outbox here, in order, in one script run: one
    /// outcome per entry. A delay counts from the commit that wrote the entry (the id's
    /// time), so forwarding late does not make deferred work later.
    async fn forward(
        &self,
        source: usize,
        entries: &[Entry],
    ) -> Result<Vec<Forwarded>, BrokerError> {
        let mut topics: Vec<&str> = Vec::new();
        for entry in entries {
            topics.extend(entry.parcel.p.iter().map(|(t, _)| t.as_str()));
            topics.extend(entry.parcel.d.iter().map(|(t, _, _)| t.as_str()));
        }
        self.ensure_topics(topics).await?;
        let watermark = self.inner.keys.watermark(source);
        let now = now_ms();
        let ops: Vec<OpArgs> = entries
            .iter()
            .map(|entry| {
                let late = now.saturating_sub(id_ms(&entry.id));
                let parcel = &entry.parcel;
                let mut op = OpArgs::new("c");
                op.text("f").text(&watermark).text(&entry.id).text("");
                op.num(parcel.p.len());
                for (topic, json) in &parcel.p {
                    op.text(topic).text(json);
                }
                op.num(parcel.d.len());
                for (topic, delay, json) in &parcel.d {
                    op.text(topic).num(delay.saturating_sub(late)).text(json);
                }
                op.num(parcel.q.len());
                for (queue, delay, json) in &parcel.q {
                    op.text(queue).num(delay.saturating_sub(late)).text(json);
                }
                op.text("").text("");
                op.num(parcel.w.len());
                for (store, key, kind, value) in &parcel.w {
                    op.text(store).text(key).text(kind).text(value);
                }
                op.text("").text("").num(0);
                op
            })
            .collect();
        let replies = batch::run_once(&self.inner.node, self.inner.keys.prefix(), &ops).await?;
        let mut outcomes = Vec::with_capacity(replies.len());
        let mut wrote = false;
        for reply in &replies {
            let outcome = match reply {
                Value::Array(parts) => parts.first().map(text).transpose()?.unwrap_or_default(),
                other => {
                    return Err(crate::broker::redis::failure::unexpected(
                        "a forward's outcome",
                        other,
                    ))
                }
            };
            outcomes.push(match outcome.as_str() {
                "ok" => {
                    wrote = true;
                    Forwarded::Landed
                }
                "settled" => Forwarded::Landed,
                "blocked" => Forwarded::Refused("waiting behind a refused entry".to_owned()),
                "unknown_queue" => {
                    Forwarded::Refused("a queue this shard does not know".to_owned())
                }
                "queue_full" => Forwarded::Refused("a queue is full".to_owned()),
                "oom" => Forwarded::Refused("Redis is out of memory".to_owned()),
                other => Forwarded::Refused(format!("the outcome `{other}`")),
            });
        }
        if wrote {
            self.wrote();
        }
        Ok(outcomes)
    }
}
