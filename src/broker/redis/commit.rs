//! What goes through the batch script, and how deliveries are settled: publishes, commits
//! (with the shortcut for a commit that is an ack alone), and nacks.
//!
//! A commit is one operation of the batch script (see `batch`, `scripts::BATCH`): the
//! handler's published, deferred and enqueued events, its dead letter, store writes and
//! query reply, then the ack of the delivery, all or nothing (see "Delivery guarantee" in
//! the parent module). A delivery's tag says where its entry lies (`Position`), which the
//! commit acks and a nack gives back from. What goes over the article's wire (pub/sub
//! topics, plain-list queues) is sent first, by `wire`.
//!
//! This module must not read entries (`consumer`) or move due items (`mover`).

use std::time::Duration;

use redis::Value;
use tracing::debug;

use super::failure::{unavailable, unexpected};
use super::keys::QUEUE_GROUP;
use super::reply::{count, head, items, nth, text};
use super::{batch, defaults, replies, scripts, wire, ShardBroker};
use crate::broker::{Backpressure, Broker, BrokerError, Delivery, Effects};
use crate::event::Event;
use crate::store::StoreOp;

/// What a commit with no delivery to ack passes as its ack: kind `-`, nothing else.
pub(super) const NO_ACK: [&str; 4] = ["-", "", "", ""];

/// What a commit on a spread namespace writes for other shards (see `spread`): outbox
/// entries (destination shard, body), and whether its dead letter's topic lies on another
/// shard (then the dead letter is kept here and published there, through the outbox).
#[derive(Default)]
pub(crate) struct Outbound {
    pub(crate) entries: Vec<(usize, String)>,
    pub(crate) dead_elsewhere: bool,
}

impl Outbound {
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && !self.dead_elsewhere
    }
}

/// What one forward from another shard's outbox came to (see `ShardBroker::forward`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Forwarded {
    /// Landed now, or before (the watermark was past it).
    Landed,
    /// Refused here (a queue unknown or full, Redis out of memory), or waiting behind a
    /// refused one of the same outbox: to be tried again, in order.
    Refused(String),
}

/// A delay in whole ms, refusing what a Lua number cannot add exactly.
pub(crate) fn delay_ms(delay: Duration) -> Result<u64, BrokerError> {
    const MAX_MS: u128 = 1 << 52;
    let ms = delay.as_millis();
    if ms > MAX_MS {
        return Err(BrokerError::DelayTooLong { delay_ms: ms });
    }
    // Bounded above by 2^52.
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Where a delivery's entry lies, read from its tag (see `consumer::Reader::delivery`).
pub(super) struct Position {
    /// `t` topic stream, `i` inbox, `r` ready stream, `b` back stream.
    pub(super) kind: String,
    /// The stream's key.
    pub(super) key: String,
    /// The XGROUP the entry is pending in.
    pub(super) xgroup: String,
    /// The entry's id.
    pub(super) id: String,
    /// Where an inherited or given-back entry first lay: stream key and entry id.
    pub(super) origin_key: String,
    pub(super) origin_id: String,
    /// A queue item taken ahead: its due time (Redis ms); empty otherwise.
    pub(super) due: String,
}

impl Position {
    /// The ack a commit of this delivery carries: kind, key, group, id.
    pub(super) fn ack(&self) -> [&str; 4] {
        [&self.kind, &self.key, &self.xgroup, &self.id]
    }
}

impl ShardBroker {
    /// Where a delivery lives; `None` for a tag that is not a stream entry's.
    pub(super) fn position(&self, delivery: &Delivery) -> Option<Position> {
        let keys = &self.inner.keys;
        let mut parts = delivery.tag.split('\n');
        let kind = parts.next()?.to_owned();
        let id = parts.next()?.to_owned();
        let origin_key = parts.next().unwrap_or("").to_owned();
        let origin_id = parts.next().unwrap_or("").to_owned();
        let due = parts.next().unwrap_or("").to_owned();
        // The stream an entry was read from, when its reader knew it (a topic's entry is
        // acked on the stream it lies in, whatever its event says).
        let stream = parts.next().filter(|k| !k.is_empty());
        let (key, xgroup) = match kind.as_str() {
            "t" => (
                stream.map_or_else(|| keys.topic(&delivery.event.topic), str::to_owned),
                delivery.group.to_string(),
            ),
            "i" => (keys.inbox(&delivery.group), delivery.group.to_string()),
            "r" => (keys.queue(&delivery.group, "ready"), QUEUE_GROUP.to_owned()),
            "b" => (keys.queue(&delivery.group, "back"), QUEUE_GROUP.to_owned()),
            _ => return None,
        };
        Some(Position {
            kind,
            key,
            xgroup,
            id,
            origin_key,
            origin_id,
            due,
        })
    }

    /// A commit with nothing to write but the ack (and perhaps the answer to a query of this
    /// process): the ack alone is the whole commit, so it goes out as a plain `XACK` on the
    /// shared connection or, for streams that ack by deleting, as `XACK` and `XDEL` in one
    /// `MULTI`, in one pipeline with the other such acks of the moment (`batch::Acks`),
    /// instead of through the batch script. A local answer is handed over at once: it
    /// writes nothing, so there is nothing for it to wait on (if the ack is lost, the run is
    /// done again later and its second answer finds nobody waiting). `None` when the commit
    /// has effects: it takes the script.
    async fn ack_only(
        &self,
        [kind, key, group, id]: [&str; 4],
        effects: &Effects,
    ) -> Option<Result<(), BrokerError>> {
        if !effects.writes_nothing() {
            return None;
        }
        let local = match &effects.reply {
            None => None,
            Some(reply) => match replies::split(&reply.to) {
                Some((instance, request)) if instance == self.inner.instance => {
                    Some((request, reply))
                }
                _ => return None,
            },
        };
        if let Some((request, reply)) = local {
            self.inner.waiting.answer(request, reply.result.clone());
        }
        if kind == "-" {
            return Some(Ok(()));
        }
        if kind != "t" {
            return Some(self.inner.acks.ack(key, group, id).await);
        }
        Some(self.xack(key, group, &[id]).await)
    }

    /// Acks `ids` on a topic stream with one `XACK`. An entry no longer pending was
    /// settled already (a lost-reply retry, another consumer), as the commit script's
    /// guard finds: an ack applies nothing twice. A stream or group that is gone (removed,
    /// or Redis lost its state) holds nothing pending.
    async fn xack(&self, key: &str, group: &str, ids: &[&str]) -> Result<(), BrokerError> {
        let acked = redis::cmd("XACK")
            .arg(key)
            .arg(group)
            .arg(ids)
            .query_async::<i64>(&mut self.conn())
            .await;
        match acked {
            Ok(n) => {
                if n < ids.len() as i64 {
                    debug!(
                        settled = ids.len() as i64 - n,
                        of = ids.len(),
                        "commit skipped: entries were settled already"
                    );
                }
                Ok(())
            }
            Err(e) if e.code() == Some("NOGROUP") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Runs the commit script: effects, then the ack of `ack` (kind, key, group, id). A
    /// queue this process declared that Redis does not know means Redis lost its state:
    /// it is healed (see `epoch`) and the commit tried once more.
    pub(super) async fn run_commit(
        &self,
        ack: [&str; 4],
        effects: &Effects,
        outbound: &Outbound,
    ) -> Result<(), BrokerError> {
        let heals = self.heals();
        match self.run_commit_once(ack, effects, outbound).await {
            Err(BrokerError::UnknownQueue { queue }) if self.declared_queue(&queue) => {
                if self.state_check(heals).await? {
                    self.run_commit_once(ack, effects, outbound).await
                } else {
                    Err(BrokerError::UnknownQueue { queue })
                }
            }
            other => other,
        }
    }

    async fn run_commit_once(
        &self,
        ack: [&str; 4],
        effects: &Effects,
        outbound: &Outbound,
    ) -> Result<(), BrokerError> {
        // Every delay is checked before anything is sent (pub/sub effects go out first):
        // a commit refused for one must not have sent the rest.
        for (_, delay) in &effects.deferred {
            delay_ms(*delay)?;
        }
        for (_, _, delay) in &effects.enqueue {
            delay_ms(*delay)?;
        }
        let rest = wire::send_effects(self, effects).await?;
        let effects = rest.as_ref().unwrap_or(effects);
        if outbound.is_empty() {
            if let Some(done) = self.ack_only(ack, effects).await {
                return done;
            }
        }
        self.ensure_topics(event_topics(effects, !outbound.dead_elsewhere))
            .await?;
        let (op, local_reply) = self.commit_op(ack, effects, outbound)?;
        let reply = self.inner.batcher.run(op).await?;
        let reply = items(&reply)?;
        let outcome = head(reply)?;
        if self.landed(&outcome, local_reply) {
            self.wrote();
        }
        commit_outcome(&outcome, reply, ack[3])
    }

    /// Whether a commit whose script reply began with `outcome` landed (`ok`, or `settled`
    /// by an earlier try of it); a landed commit's answer to a query of this process goes
    /// to the request waiting for it.
    fn landed(&self, outcome: &str, local_reply: LocalReply<'_>) -> bool {
        let landed = matches!(outcome, "ok" | "settled");
        if let (true, Some((id, answer))) = (landed, local_reply) {
            self.inner.waiting.answer(id, answer.clone());
        }
        landed
    }

    /// Commits `runs` of one worker in order as one `s` operation of the batch script (see
    /// `CommitInOrder`), or as one `XACK` when each is an ack alone (`ack_row`). Carries
    /// runs up to the first that cannot go this way: one with effects over the article's
    /// wire, a delay too long, or a delivery that is no stream entry.
    pub(super) async fn commit_sequence(
        &self,
        runs: &[(&Delivery, &Effects)],
    ) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        if let Some(acked) = self.ack_row(runs).await {
            return acked.map(|()| runs.iter().map(|_| Ok(())).collect());
        }
        let mut commits = Vec::with_capacity(runs.len());
        let mut local_replies = Vec::with_capacity(runs.len());
        let mut ids = Vec::with_capacity(runs.len());
        for (delivery, effects) in runs {
            let Some(at) = self.position(delivery) else {
                break;
            };
            if self.inner.wire.touches(effects) {
                break;
            }
            let Ok((op, local_reply)) = self.commit_op(at.ack(), effects, &Outbound::default())
            else {
                break;
            };
            commits.push(op);
            local_replies.push(local_reply);
            ids.push(at.id);
        }
        let carried = &runs[..commits.len()];
        if carried.is_empty() {
            return Ok(Vec::new());
        }
        let topics = carried
            .iter()
            .flat_map(|(_, effects)| event_topics(effects, true));
        self.ensure_topics(topics).await?;
        let reply = self
            .inner
            .batcher
            .run(batch::OpArgs::sequence(commits))
            .await?;
        let replies = items(&reply)?;
        // Redis out of memory refused the whole script run: the first run is refused.
        if let Some(Value::BulkString(_) | Value::SimpleString(_)) = replies.first() {
            let outcome = head(replies)?;
            return Ok(vec![commit_outcome(&outcome, replies, &ids[0])]);
        }
        if replies.len() != carried.len() {
            return Err(unexpected("one reply per commit of a sequence", &reply));
        }
        let mut results = Vec::with_capacity(carried.len());
        let mut wrote = false;
        for ((reply, id), local_reply) in replies.iter().zip(&ids).zip(local_replies) {
            let reply = items(reply)?;
            let outcome = head(reply)?;
            if outcome == "skipped" {
                break;
            }
            wrote |= self.landed(&outcome, local_reply);
            let result = commit_outcome(&outcome, reply, id);
            let refused = result.is_err();
            results.push(result);
            if refused {
                break;
            }
        }
        if wrote {
            self.wrote();
        }
        Ok(results)
    }

    /// A row of commits that are each an ack alone, of entries of one stream (a subscriber
    /// that only counts or reads, as the last hop of a chain; a job whose handler records
    /// it in process): no script (see `ack_only`). On a topic stream one `XACK` of every
    /// id; on a queue or inbox, which ack by deleting, the ids join the acks of the moment
    /// (`batch::Acks`). `None` when the row is not such.
    async fn ack_row(&self, runs: &[(&Delivery, &Effects)]) -> Option<Result<(), BrokerError>> {
        let mut ids = Vec::with_capacity(runs.len());
        let mut stream: Option<(String, String, String)> = None;
        for (delivery, effects) in runs {
            if !effects.writes_nothing() || effects.reply.is_some() {
                return None;
            }
            let at = self.position(delivery)?;
            match &stream {
                Some((kind, key, group))
                    if *kind != at.kind || *key != at.key || *group != at.xgroup =>
                {
                    return None
                }
                Some(_) => {}
                None => stream = Some((at.kind, at.key, at.xgroup)),
            }
            ids.push(at.id);
        }
        let (kind, key, group) = stream?;
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        if kind == "t" {
            Some(self.xack(&key, &group, &ids).await)
        } else {
            Some(self.inner.acks.ack_all(&key, &group, &ids).await)
        }
    }

    /// The batch script's arguments for one commit (see `scripts::BATCH`), and the answer
    /// to a query of this process, handed over once the commit landed rather than
    /// published (see `replies`).
    fn commit_op<'e>(
        &self,
        ack: [&str; 4],
        effects: &'e Effects,
        outbound: &Outbound,
    ) -> Result<(batch::OpArgs, LocalReply<'e>), BrokerError> {
        let mut op = batch::OpArgs::new("c");
        for part in ack {
            op.text(part);
        }
        op.num(effects.publish.len());
        for event in &effects.publish {
            op.text(&event.topic).owned(event.to_stored_json());
        }
        op.num(effects.deferred.len());
        for (event, delay) in &effects.deferred {
            op.text(&event.topic)
                .num(delay_ms(*delay)?)
                .owned(event.to_stored_json());
        }
        op.num(effects.enqueue.len());
        for (queue, item, delay) in &effects.enqueue {
            op.text(queue)
                .num(delay_ms(*delay)?)
                .owned(item.to_stored_json());
        }
        match &effects.dead_letter {
            Some(dead) if outbound.dead_elsewhere => op.text("").owned(dead.to_stored_json()),
            Some(dead) => op.text(&dead.topic).owned(dead.to_stored_json()),
            None => op.text("").text(""),
        };
        op.num(effects.store_writes.len());
        for write in &effects.store_writes {
            op.text(&write.store).text(&write.key);
            match &write.op {
                StoreOp::Set(value) => op.text("s").owned(value.to_string()),
                StoreOp::Remove => op.text("r").text(""),
                StoreOp::Incr(n) => op.text("i").num(n),
            };
        }
        let mut local_reply = None;
        let to = effects
            .reply
            .as_ref()
            .map(|r| replies::reply_to(&self.inner.keys, &self.inner.instance, &r.to, &r.result));
        match to {
            Some(replies::ReplyTo::Channel(channel, payload)) => {
                op.owned(channel).owned(payload);
            }
            Some(replies::ReplyTo::Here(id, answer)) => {
                local_reply = Some((id, answer));
                op.text("").text("");
            }
            Some(replies::ReplyTo::Nowhere) | None => {
                op.text("").text("");
            }
        }
        op.num(outbound.entries.len());
        for (shard, body) in &outbound.entries {
            op.num(shard).text(body);
        }
        Ok((op, local_reply))
    }
}

/// A commit's answer to a query of this process: the request id and the answer.
type LocalReply<'e> = Option<(&'e str, &'e replies::Answer)>;

/// The topics a commit's events go to: published, delayed, and its dead letter's when
/// `dead` (not when the dead letter goes to another shard).
fn event_topics(effects: &Effects, dead: bool) -> impl Iterator<Item = &str> {
    let dead = effects.dead_letter.iter().filter(move |_| dead);
    effects
        .publish
        .iter()
        .chain(effects.deferred.iter().map(|(event, _)| event))
        .chain(dead)
        .map(|event| event.topic.as_str())
}

/// What the batch script's reply to one commit means: its `outcome` (the reply's first
/// element) and the rest of `reply` (`entry`: the id acked, for the log).
///
/// # Errors
/// What the script refused, and an unexpected reply for an outcome it does not give.
fn commit_outcome(outcome: &str, reply: &[Value], entry: &str) -> Result<(), BrokerError> {
    match outcome {
        "ok" => Ok(()),
        "oom" => Err(BrokerError::OutOfMemory),
        // The entry is no longer pending: this commit ran already (its reply was lost
        // to a timeout) or another consumer settled the entry. Nothing applied twice.
        "settled" => {
            debug!(entry, "commit skipped: the entry was settled already");
            Ok(())
        }
        "unknown_queue" => Err(BrokerError::UnknownQueue {
            queue: text(nth(reply, 1)?)?,
        }),
        "queue_full" => {
            let capacity = count(nth(reply, 2)?)?;
            Err(BrokerError::QueueFull {
                queue: text(nth(reply, 1)?)?,
                capacity: usize::try_from(capacity)
                    .map_err(|_| unexpected("a queue's capacity", &reply))?,
            })
        }
        _ => Err(unexpected("the outcome of a commit", &reply)),
    }
}

/// Publishes one event (see `Broker::publish`): over the article's wire for a pub/sub
/// topic, else through the batch script, which refuses it while a group reading the topic
/// holds `group_capacity` entries (`Full`, or a wait with `Backpressure::Wait`).
pub(super) async fn publish(
    broker: &ShardBroker,
    event: Event,
    mode: Backpressure,
) -> Result<(), BrokerError> {
    if broker.inner.wire.is_pubsub(&event.topic) {
        let effects = Effects {
            publish: vec![event],
            ..Effects::default()
        };
        wire::send_effects(broker, &effects).await?;
        return Ok(());
    }
    broker.ensure_topics([event.topic.as_str()]).await?;
    let json = event.to_stored_json();
    // '' for unbounded groups: the script then checks nothing.
    let capacity = broker
        .inner
        .options
        .group_capacity
        .map(|c| c.to_string())
        .unwrap_or_default();
    let mut backoff = defaults::PUBLISH_RETRY_START;
    loop {
        let mut op = batch::OpArgs::new("p");
        op.text(&event.topic).text(&json).text(&capacity);
        let reply = broker.inner.batcher.run(op).await?;
        let reply = items(&reply)?;
        match head(reply)?.as_str() {
            "ok" => {
                broker.wrote();
                return Ok(());
            }
            "full" => {}
            "oom" => return Err(BrokerError::OutOfMemory),
            _ => return Err(unexpected("the outcome of a publish", &reply)),
        }
        let group = text(nth(reply, 1)?)?;
        if mode == Backpressure::Reject {
            return Err(BrokerError::Full { group });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(defaults::PUBLISH_RETRY_MAX);
    }
}

/// Publishes one event after `delay` (see `Broker::publish_later`): at once when there is
/// none (through `Broker::publish`, guarded on its own), else a commit with nothing to ack
/// that schedules it.
pub(super) async fn publish_later(
    broker: &ShardBroker,
    event: Event,
    delay: Duration,
) -> Result<(), BrokerError> {
    if delay.is_zero() {
        return Broker::publish(broker, event, Backpressure::Wait).await;
    }
    let effects = Effects {
        deferred: vec![(event, delay)],
        ..Effects::default()
    };
    broker
        .run_commit(NO_ACK, &effects, &Outbound::default())
        .await
}

/// Commits a handler run (see `Broker::commit`): its effects and the ack of its delivery.
pub(super) async fn commit(
    broker: &ShardBroker,
    delivery: &Delivery,
    effects: &Effects,
) -> Result<(), BrokerError> {
    commit_outbound(broker, delivery, effects, &Outbound::default()).await
}

/// Commits a handler run with what it writes for other shards (see `spread`).
pub(crate) async fn commit_outbound(
    broker: &ShardBroker,
    delivery: &Delivery,
    effects: &Effects,
    outbound: &Outbound,
) -> Result<(), BrokerError> {
    match broker.position(delivery) {
        Some(at) => broker.run_commit(at.ack(), effects, outbound).await,
        None => broker.run_commit(NO_ACK, effects, outbound).await,
    }
}

/// Gives a delivery back untouched (see `Broker::nack`): over the article's wire for one
/// that came from it, else to its group's inbox or its queue's back stream, to be taken
/// again first.
pub(super) async fn nack(broker: &ShardBroker, delivery: Delivery) -> Result<(), BrokerError> {
    if let Some(done) = wire::nack(broker, &delivery).await {
        return done;
    }
    let Some(at) = broker.position(&delivery) else {
        return Ok(());
    };
    let keys = &broker.inner.keys;
    let dest = if delivery.from_queue {
        keys.queue(&delivery.group, "back")
    } else {
        keys.inbox(&delivery.group)
    };
    let (origin_key, origin_id) = match at.kind.as_str() {
        "t" => (at.key.clone(), at.id.clone()),
        _ => (at.origin_key.clone(), at.origin_id.clone()),
    };
    scripts::NACK
        .prepare_invoke()
        .arg(keys.prefix())
        .arg(&at.kind)
        .arg(&at.key)
        .arg(&at.xgroup)
        .arg(&at.id)
        .arg(dest)
        .arg(delivery.event.to_stored_json())
        .arg(delivery.redeliveries.saturating_add(1))
        .arg(origin_key)
        .arg(origin_id)
        .arg(&at.due)
        .invoke_async::<Value>(&mut broker.conn())
        .await
        .map_err(unavailable)?;
    Ok(())
}
