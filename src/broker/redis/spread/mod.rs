//! A namespace spread over shards: the public `RedisBroker`, which holds one `ShardBroker`
//! per shard and routes each call to the shard it concerns, so one flow set's topics,
//! queues and stores spread over the slots (and masters) of a Redis Cluster.
//!
//! With one shard (the default) this is a thin layer: every call goes to the one shard,
//! whose namespace is the namespace itself, and nothing below is at work.
//!
//! With `shards = n` each shard is a whole single-slot broker with namespace
//! `{NS}.{k}` (see `placement`), its keys on one master, its scripts atomic there. What
//! lives where:
//!
//! | what | shard |
//! |---|---|
//! | a topic's stream, its deferred events | `shard_of(topic)`, or its `[topics.NAME] shard`; spread by journey, each event's `shard_of(correlation id)` |
//! | a queue | `shard_of(queue)` |
//! | a state store | `shard_of(store)` |
//! | a journey's history | `shard_of(correlation id)` |
//! | groups | every shard (a group reads the topics of each; `consumer` merges them) |
//! | chains, the process registry, replies | shard 0 |
//! | dead letters | the shard of the entry that failed (listed from all) |
//!
//! A commit runs on the shard of the entry it acks. The effects that lie there land with
//! the ack, in one script; the others are written, in the same script, to that shard's
//! outbox, one parcel per destination shard (`outbox`), and the `forwarder` lands them
//! there exactly once, in order per pair of shards. So a handler's effects still land
//! exactly once with its acknowledgement; what is no longer atomic is their *visibility*:
//! an event for another shard appears there a moment after the commit (a forward), not
//! in the same instant as the ack, and a handler that writes a store on another shard
//! reads its own write only once it has landed. Events of different shards have no order
//! between them.
//!
//! Spread by journey (`SpreadBy::Journey`), an event goes to the shard of its correlation
//! id, and what a handler emits carries the handled event's: a chain's hops then commit on
//! one shard with no outbox, and every shard gets its share of every topic.
//!
//! A delivery's tag is prefixed with its shard (`{k}|…`), so commits and nacks go back to
//! the shard the entry lies in.
//!
//! The shard count is part of the namespace's layout: every process of a flow set must
//! use the same, which `connect` checks (`edaflow:{NS}:layout`).

mod consumer;
mod forwarder;
mod outbox;
pub(crate) mod placement;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::commit;
use super::retention::TrimReport;
use super::{cluster, failure, replies, CircuitState, RedisOptions, ShardBroker};
use crate::broker::capability::placement::OutboxStats;
use crate::broker::capability::BoxFuture;
use crate::broker::redis::url::RedisUrl;
use crate::broker::{
    Backpressure, Broker, BrokerError, BrokerHealth, BrokerIncidents, CommitInOrder, DeadFilter,
    Delivery, Effects, GroupSpec, GroupStats, Processes, QueueSpec, QueueStats, Removed, Replies,
    ReplyResult, RetryableCommit, SharedChains, SharedHistory, StoreReadAhead, TopicRetention,
    WireFormat,
};
use crate::event::Event;
use crate::pattern::TopicPattern;
use crate::store::{Fetched, StoreError, StoreRead, StoreWant};

pub use consumer::RedisConsumer;
use placement::shard_of;
pub use placement::SpreadBy;

/// Most shards a namespace may be spread over.
pub const MAX_SHARDS: usize = 64;

/// The Redis broker: one namespace, on one Redis or spread over the slots of a Redis
/// Cluster (see the module docs). Clones share one set of connections.
#[derive(Clone)]
pub struct RedisBroker {
    spread: Arc<Spread>,
}

/// The shards of one namespace.
pub(super) struct Spread {
    pub(super) shards: Vec<ShardBroker>,
    stores: Arc<SpreadStores>,
    /// Topics placed by `[topics.NAME] shard` (the others go as `by` says).
    placed: std::sync::RwLock<std::collections::HashMap<String, usize>>,
    by: SpreadBy,
    /// Per shard: outbox entries this process's forwarder carried from it.
    pub(super) forwarded: Vec<std::sync::atomic::AtomicU64>,
}

impl Spread {
    /// The shard `event` is published on: its topic's when the topic is placed, else by
    /// the hash of its topic's name or of its journey's correlation id (`SpreadBy`).
    pub(super) fn event_shard(&self, event: &Event) -> usize {
        let n = self.shards.len();
        if n == 1 {
            return 0;
        }
        let placed = self.placed.read().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = placed.get(&event.topic) {
            return k % n;
        }
        match self.by {
            SpreadBy::Topic => shard_of(&event.topic, n),
            SpreadBy::Journey => shard_of(&event.correlation_id, n),
        }
    }
}

impl RedisBroker {
    /// Connects every shard (see `ShardBroker::connect`), checks that the namespace's
    /// shard count is the one asked for, and starts a forwarder per shard when there are
    /// several. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// As `ShardBroker::connect`; `Layout` when the shard count is out of range or differs
    /// from the one the namespace was spread with.
    pub async fn connect(
        url: &RedisUrl,
        options: RedisOptions,
    ) -> Result<RedisBroker, BrokerError> {
        let n = options.shards;
        if n == 0 || n > MAX_SHARDS {
            return Err(BrokerError::Layout {
                url: url.to_string(),
                reason: format!("{n} shards: give between 1 and {MAX_SHARDS}"),
            });
        }
        // The layout is checked before any shard writes to Redis; with one shard its keys
        // are the namespace's own, so its connection reaches the layout key.
        if n > 1 {
            let prefix = cluster::prefix(&options.namespace)?;
            let base = super::connect_node(url, &options, &prefix).await?.conn();
            check_layout(url, &options, base).await?;
        }
        let mut shards = Vec::with_capacity(n);
        for k in 0..n {
            let mut shard_options = options.clone();
            shard_options.namespace = placement::shard_namespace(&options.namespace, k, n);
            shards.push(ShardBroker::connect(url, shard_options).await?);
        }
        if n == 1 {
            check_layout(url, &options, shards[0].conn()).await?;
        }
        let stores = Arc::new(SpreadStores {
            shards: shards
                .iter()
                .map(|s| Broker::stores(s).expect("a Redis shard reads stores"))
                .collect(),
        });
        let spread = Arc::new(Spread {
            shards,
            stores,
            placed: std::sync::RwLock::default(),
            by: options.spread_by,
            forwarded: (0..n)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        });
        if n > 1 {
            for k in 0..n {
                let span = tracing::info_span!("redis_forwarder", component = "broker", shard = k);
                // Tracked by ownership: it holds a Weak and ends once the broker is gone.
                tokio::spawn(forwarder::run(Arc::downgrade(&spread), k).instrument(span));
            }
        }
        Ok(RedisBroker { spread })
    }

    fn shards(&self) -> &[ShardBroker] {
        &self.spread.shards
    }

    fn n(&self) -> usize {
        self.spread.shards.len()
    }

    fn home(&self) -> &ShardBroker {
        &self.spread.shards[0]
    }

    fn shard_for(&self, name: &str) -> &ShardBroker {
        &self.spread.shards[shard_of(name, self.n())]
    }

    fn event_shard(&self, event: &Event) -> &ShardBroker {
        &self.spread.shards[self.spread.event_shard(event)]
    }

    /// The URL (password hidden when displayed).
    pub fn url(&self) -> &RedisUrl {
        self.home().url()
    }

    /// The key prefix of the first shard, `edaflow:{namespace}:` with one shard (braces
    /// included).
    pub fn prefix(&self) -> &str {
        self.home().prefix()
    }

    /// Every shard's key prefix, in shard order.
    pub fn shard_prefixes(&self) -> Vec<String> {
        self.shards()
            .iter()
            .map(|s| s.prefix().to_owned())
            .collect()
    }

    /// On a Redis Cluster, the first shard's slot and the master serving it now.
    pub fn cluster_slot(&self) -> Option<(u16, String)> {
        self.home().cluster_slot()
    }

    /// On a Redis Cluster, each shard's slot and the master serving it now.
    pub fn cluster_slots(&self) -> Vec<Option<(u16, String)>> {
        self.shards()
            .iter()
            .map(ShardBroker::cluster_slot)
            .collect()
    }

    /// Whether a circuit is open (any shard's), how many times they opened and how many
    /// commands they refused at once, over every shard.
    pub fn circuit(&self) -> CircuitState {
        let mut total = CircuitState {
            open: false,
            opened: 0,
            refused: 0,
        };
        for shard in self.shards() {
            let state = shard.circuit();
            total.open |= state.open;
            total.opened += state.opened;
            total.refused += state.refused;
        }
        total
    }

    /// Runs a trimming pass now on every shard (see `retention`).
    ///
    /// # Errors
    /// The first shard's failure.
    pub async fn trim_now(&self) -> Result<Vec<TrimReport>, BrokerError> {
        let mut all = Vec::new();
        for shard in self.shards() {
            all.extend(shard.trim_now().await?);
        }
        Ok(all)
    }

    /// Trims the topic streams no group reads, now, on every shard (see `retention`).
    ///
    /// # Errors
    /// The first shard's failure.
    pub async fn trim_unread_now(&self) -> Result<Vec<TrimReport>, BrokerError> {
        let mut all = Vec::new();
        for shard in self.shards() {
            all.extend(shard.trim_unread_now().await?);
        }
        Ok(all)
    }

    /// Sets the per-topic retention on every shard (see `retention`).
    pub fn set_retention(&self, topics: &[(String, Duration)]) {
        for shard in self.shards() {
            shard.set_retention(topics);
        }
    }

    /// The shard a delivery came from, and the tag that shard gave it.
    fn shard_of_delivery<'d>(&self, delivery: &'d Delivery) -> (usize, &'d str) {
        if self.n() == 1 {
            return (0, &delivery.tag);
        }
        match delivery.tag.split_once('|') {
            Some((k, rest)) => match k.parse::<usize>() {
                Ok(k) if k < self.n() => (k, rest),
                _ => (0, &delivery.tag),
            },
            None => (0, &delivery.tag),
        }
    }

    /// The shard a delivery came from, and the delivery as that shard tagged it.
    fn route(&self, mut delivery: Delivery) -> (usize, Delivery) {
        let (k, tag) = self.shard_of_delivery(&delivery);
        if tag.len() != delivery.tag.len() {
            delivery.tag = tag.to_owned();
        }
        (k, delivery)
    }

    /// Commits on the delivery's shard. With one shard nothing is copied; with several, the
    /// effects are split (see `outbox`) and the reply goes through the first shard, where
    /// this broker's reply addresses listen.
    async fn commit_routed(
        &self,
        delivery: &Delivery,
        effects: &Effects,
    ) -> Result<(), BrokerError> {
        let (k, tag) = self.shard_of_delivery(delivery);
        let shard = &self.shards()[k];
        if self.n() == 1 {
            return shard
                .guarded("commit", commit::commit(shard, delivery, effects))
                .await;
        }
        let delivery = Delivery {
            tag: tag.to_owned(),
            ..delivery.clone()
        };
        // Effects that all lie on the delivery's own shard (every hop, spread by journey)
        // need no split, and so no copy of them.
        if effects.reply.is_none()
            && outbox::all_here(effects, k, self.n(), &|e| self.spread.event_shard(e))
        {
            return shard
                .guarded("commit", commit::commit(shard, &delivery, effects))
                .await;
        }
        let mut effects = effects.clone();
        let reply = effects.reply.take();
        let (effects, outbound) =
            outbox::split(effects, k, self.n(), &|e| self.spread.event_shard(e))?;
        shard
            .guarded(
                "commit",
                commit::commit_outbound(shard, &delivery, &effects, &outbound),
            )
            .await?;
        if let Some(reply) = reply {
            self.home().deliver_reply(&reply).await;
        }
        Ok(())
    }
}

/// Whether `every_shards_dead_letters` leaves the letters it reads or takes them away.
#[derive(Clone, Copy)]
enum DeadRead {
    Look,
    Take,
}

impl RedisBroker {
    /// The dead letters `filter` picks on every shard, oldest first; `Take` removes them.
    async fn every_shards_dead_letters(
        &self,
        filter: &DeadFilter,
        read: DeadRead,
    ) -> Result<Vec<Event>, BrokerError> {
        let mut all = Vec::new();
        for shard in self.shards() {
            all.extend(match read {
                DeadRead::Take => shard.take_dead_letters(filter).await?,
                DeadRead::Look => shard.dead_letters(filter).await?,
            });
        }
        if self.n() > 1 {
            all.sort_by_key(|e| e.time);
        }
        Ok(all)
    }

    /// Removes queue `name`, handing its items to `to` on another shard: each item is
    /// enqueued there (due when it was due) before the queue is removed, so none is lost;
    /// an item a worker is handling at that moment may run twice (at least once, unlike a
    /// successor on the same shard, which takes the items in one script).
    async fn move_queue(&self, name: &str, to: &str) -> Result<Removed, BrokerError> {
        let from = self.shard_for(name);
        let dest = self.shard_for(to);
        let keys = &from.inner.keys;
        let mut conn = from.conn();
        let scheduled: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(keys.queue(name, "sched"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(failure::unavailable)?;
        let now = forwarder::now_ms();
        let mut items: Vec<(String, u64)> = scheduled
            .into_iter()
            .filter_map(|(member, due)| {
                let (_, json) = member.split_once('\n')?;
                // Scores are whole ms.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let due = due.max(0.0) as u64;
                Some((json.to_owned(), due.saturating_sub(now)))
            })
            .collect();
        for part in ["back", "ready"] {
            let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(keys.queue(name, part))
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .map_err(failure::unavailable)?;
            for entry in entries.ids {
                let json = entry.get::<String>("e");
                let due = entry.get::<u64>("d").unwrap_or(0);
                if let Some(json) = json {
                    items.push((json, due.saturating_sub(now)));
                }
            }
        }
        let mut moved = 0;
        for (json, delay) in items {
            let Ok(item) = serde_json::from_str::<Event>(&json) else {
                tracing::warn!(
                    queue = name,
                    "an item that cannot be read back stays with the removed queue"
                );
                continue;
            };
            dest.enqueue(to, item, Duration::from_millis(delay)).await?;
            moved += 1;
        }
        let removed = from.remove_queue(name, None).await?;
        Ok(Removed {
            moved,
            dropped: removed.dropped.saturating_sub(moved),
        })
    }
}

/// Writes the namespace's shard count at `edaflow:{NS}:layout` unless it is there, and
/// refuses a count that differs from it: processes spreading one namespace differently
/// would each see part of it.
async fn check_layout(
    url: &RedisUrl,
    options: &RedisOptions,
    mut conn: redis::aio::ConnectionManager,
) -> Result<(), BrokerError> {
    let key = format!("{}layout", cluster::prefix(&options.namespace)?);
    let (_, layout): (Option<String>, Option<String>) = redis::pipe()
        .cmd("SET")
        .arg(&key)
        .arg(options.shards)
        .arg("NX")
        .cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .map_err(failure::unavailable)?;
    match layout.as_deref().map(str::parse::<usize>) {
        Some(Ok(n)) if n == options.shards => Ok(()),
        Some(Ok(n)) => Err(BrokerError::Layout {
            url: url.to_string(),
            reason: format!(
                "the namespace `{}` is spread over {n} shard(s) and this process asks for {}",
                options.namespace, options.shards
            ),
        }),
        _ => Err(BrokerError::Layout {
            url: url.to_string(),
            reason: format!("`{key}` does not hold a shard count"),
        }),
    }
}

/// Each method goes to the shard it concerns (see the module docs).
impl Broker for RedisBroker {
    type Consumer = RedisConsumer;

    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn declare_group(&self, spec: &GroupSpec) -> Result<(), BrokerError> {
        for shard in self.shards() {
            shard.declare_group(spec).await?;
        }
        Ok(())
    }

    async fn remove_group(
        &self,
        name: &str,
        successor: Option<&str>,
    ) -> Result<Removed, BrokerError> {
        let mut total = Removed::default();
        for shard in self.shards() {
            let removed = shard.remove_group(name, successor).await?;
            total.moved += removed.moved;
            total.dropped += removed.dropped;
        }
        Ok(total)
    }

    async fn publish(&self, event: Event, mode: Backpressure) -> Result<(), BrokerError> {
        self.event_shard(&event).clone().publish(event, mode).await
    }

    async fn publish_later(&self, event: Event, delay: Duration) -> Result<(), BrokerError> {
        self.event_shard(&event)
            .clone()
            .publish_later(event, delay)
            .await
    }

    fn consumer(&self, group: &str) -> Result<RedisConsumer, BrokerError> {
        Ok(self.consumers(group, 1)?.swap_remove(0))
    }

    fn consumers(&self, group: &str, n: usize) -> Result<Vec<RedisConsumer>, BrokerError> {
        if self.n() == 1 {
            return Ok(self
                .home()
                .consumers(group, n)?
                .into_iter()
                .map(|c| RedisConsumer::one(None, c, self.clone()))
                .collect());
        }
        // A pub/sub message reaches every subscriber of its channel, whichever shard
        // subscribed: a group reading through the hub subscribes once, from shard 0.
        if crate::broker::redis::groups::reads_pubsub(self.home(), group) {
            return Ok(self
                .home()
                .consumers(group, n)?
                .into_iter()
                .map(|c| RedisConsumer::one(Some(0), c, self.clone()))
                .collect());
        }
        let mut per_shard = Vec::with_capacity(self.n());
        for shard in self.shards() {
            per_shard.push(shard.consumers(group, n)?);
        }
        let mut merged: Vec<Vec<_>> = (0..n).map(|_| Vec::with_capacity(self.n())).collect();
        for (k, consumers) in per_shard.into_iter().enumerate() {
            for (i, c) in consumers.into_iter().enumerate() {
                merged[i].push((k, c));
            }
        }
        Ok(merged
            .into_iter()
            .map(|parts| RedisConsumer::merged(parts, self.clone()))
            .collect())
    }

    async fn commit(&self, delivery: Delivery, effects: Effects) -> Result<(), BrokerError> {
        self.commit_routed(&delivery, &effects).await
    }

    async fn nack(&self, delivery: Delivery) -> Result<(), BrokerError> {
        let (k, delivery) = self.route(delivery);
        self.shards()[k].nack(delivery).await
    }

    async fn health(&self) -> BrokerHealth {
        let mut worst = BrokerHealth::Up;
        for health in join_all(self.shards().iter().map(Broker::health)).await {
            let rank = |h: &BrokerHealth| match h {
                BrokerHealth::Up => 0,
                BrokerHealth::Degraded { .. } => 1,
                BrokerHealth::Down { .. } => 2,
            };
            if rank(&health) > rank(&worst) {
                worst = health;
            }
        }
        worst
    }

    fn incidents(&self) -> BrokerIncidents {
        let mut total = BrokerIncidents::default();
        for shard in self.shards() {
            let i = shard.incidents();
            total.state_lost += i.state_lost;
            total.out_of_memory_episodes += i.out_of_memory_episodes;
            if i.last_state_loss.is_some() {
                total.last_state_loss = i.last_state_loss;
            }
        }
        total
    }

    fn tap_within(
        &self,
        pattern: TopicPattern,
        buffer: usize,
        bytes: usize,
    ) -> mpsc::Receiver<Arc<Event>> {
        if self.n() == 1 {
            return self.home().tap_within(pattern, buffer, bytes);
        }
        let (tx, rx) = mpsc::channel(buffer.max(1));
        for shard in self.shards() {
            let mut from = shard.tap_within(pattern.clone(), buffer, bytes);
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(event) = from.recv().await {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            });
        }
        rx
    }

    async fn stats(&self) -> Vec<GroupStats> {
        let mut by_name: BTreeMap<String, GroupStats> = BTreeMap::new();
        for stats in join_all(self.shards().iter().map(Broker::stats)).await {
            for s in stats {
                match by_name.get_mut(&s.name) {
                    Some(total) => {
                        total.queued += s.queued;
                        total.in_flight += s.in_flight;
                    }
                    None => {
                        by_name.insert(s.name.clone(), s);
                    }
                }
            }
        }
        by_name.into_values().collect()
    }

    async fn scheduled(&self) -> usize {
        join_all(self.shards().iter().map(Broker::scheduled))
            .await
            .into_iter()
            .sum()
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        self.shard_for(&spec.name).declare_queue(spec).await
    }

    async fn remove_queue(
        &self,
        name: &str,
        successor: Option<&str>,
    ) -> Result<Removed, BrokerError> {
        match successor {
            Some(to) if shard_of(to, self.n()) != shard_of(name, self.n()) => {
                self.move_queue(name, to).await
            }
            _ => self.shard_for(name).remove_queue(name, successor).await,
        }
    }

    async fn enqueue(&self, queue: &str, item: Event, delay: Duration) -> Result<(), BrokerError> {
        self.shard_for(queue).enqueue(queue, item, delay).await
    }

    fn queue_consumer(&self, queue: &str) -> Result<RedisConsumer, BrokerError> {
        Ok(self.queue_consumers(queue, 1)?.swap_remove(0))
    }

    fn queue_consumers(&self, queue: &str, n: usize) -> Result<Vec<RedisConsumer>, BrokerError> {
        let k = shard_of(queue, self.n());
        let tag = (self.n() > 1).then_some(k);
        Ok(self.shards()[k]
            .queue_consumers(queue, n)?
            .into_iter()
            .map(|c| RedisConsumer::one(tag, c, self.clone()))
            .collect())
    }

    async fn queue_stats(&self) -> Vec<QueueStats> {
        join_all(self.shards().iter().map(Broker::queue_stats))
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    fn stores(&self) -> Option<Arc<dyn StoreRead>> {
        Some(self.spread.stores.clone())
    }

    fn retryable_commit(&self) -> Option<&dyn RetryableCommit> {
        Some(self)
    }

    fn ordered_commit(&self) -> Option<&dyn CommitInOrder> {
        // A spread namespace's commits may also write outboxes for other shards: one by
        // one.
        (self.n() == 1).then_some(self as &dyn CommitInOrder)
    }

    fn read_ahead(&self) -> Option<&dyn StoreReadAhead> {
        Some(self)
    }

    fn replies(&self) -> Option<&dyn Replies> {
        Some(self)
    }

    fn history(&self) -> Option<&dyn SharedHistory> {
        Some(self)
    }

    fn chains(&self) -> Option<&dyn SharedChains> {
        Broker::chains(self.home())
    }

    fn processes(&self) -> Option<&dyn Processes> {
        Broker::processes(self.home())
    }

    fn retention(&self) -> Option<&dyn TopicRetention> {
        Some(self)
    }

    fn placement(&self) -> Option<&dyn crate::broker::capability::placement::TopicPlacement> {
        Some(self)
    }

    fn wire(&self) -> Option<&dyn WireFormat> {
        Some(self)
    }

    async fn dead_letters(&self, filter: &DeadFilter) -> Result<Vec<Event>, BrokerError> {
        self.every_shards_dead_letters(filter, DeadRead::Look).await
    }

    async fn take_dead_letters(&self, filter: &DeadFilter) -> Result<Vec<Event>, BrokerError> {
        self.every_shards_dead_letters(filter, DeadRead::Take).await
    }
}

impl StoreReadAhead for RedisBroker {
    fn read_ahead(&self, wants: Vec<StoreWant>) -> BoxFuture<'_, Result<Vec<Fetched>, StoreError>> {
        Box::pin(async move {
            if self.n() == 1 {
                return StoreReadAhead::read_ahead(self.home(), wants).await;
            }
            // Each shard reads its stores' wants; the answers go back in the wants' order.
            let mut per_shard: Vec<(Vec<usize>, Vec<StoreWant>)> =
                (0..self.n()).map(|_| (Vec::new(), Vec::new())).collect();
            for (i, want) in wants.into_iter().enumerate() {
                let store = match &want {
                    StoreWant::Get { store, .. } | StoreWant::Scan { store, .. } => store,
                };
                let k = shard_of(store, self.n());
                per_shard[k].0.push(i);
                per_shard[k].1.push(want);
            }
            let total: usize = per_shard.iter().map(|(at, _)| at.len()).sum();
            let mut answers: Vec<Option<Fetched>> = vec![None; total];
            for (k, (at, wants)) in per_shard.into_iter().enumerate() {
                if wants.is_empty() {
                    continue;
                }
                let fetched = StoreReadAhead::read_ahead(&self.shards()[k], wants).await?;
                for (i, f) in at.into_iter().zip(fetched) {
                    answers[i] = Some(f);
                }
            }
            Ok(answers
                .into_iter()
                .map(|a| a.unwrap_or(Fetched::Value(None)))
                .collect())
        })
    }
}

impl Replies for RedisBroker {
    fn reply_address(&self, id: &str) -> String {
        self.home().reply_address(id)
    }

    fn await_reply(&self, id: &str) -> oneshot::Receiver<ReplyResult> {
        self.home().await_reply(id)
    }

    fn forget_reply(&self, id: &str) {
        self.home().forget_reply(id);
    }
}

impl CommitInOrder for RedisBroker {
    fn commit_in_order<'a>(
        &'a self,
        runs: &'a [(&'a Delivery, &'a Effects)],
    ) -> BoxFuture<'a, Result<Vec<Result<(), BrokerError>>, BrokerError>> {
        CommitInOrder::commit_in_order(self.home(), runs)
    }
}

impl RetryableCommit for RedisBroker {
    fn commit_retryable<'a>(
        &'a self,
        delivery: &'a Delivery,
        effects: &'a Effects,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.commit_routed(delivery, effects))
    }
}

impl SharedHistory for RedisBroker {
    fn record(&self, entries: Vec<(String, String)>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            if self.n() == 1 {
                return self.home().record(entries).await;
            }
            let mut per_shard: Vec<Vec<(String, String)>> =
                (0..self.n()).map(|_| Vec::new()).collect();
            for entry in entries {
                per_shard[shard_of(&entry.0, self.n())].push(entry);
            }
            for (k, entries) in per_shard.into_iter().enumerate() {
                if !entries.is_empty() {
                    self.shards()[k].record(entries).await?;
                }
            }
            Ok(())
        })
    }

    fn entries<'a>(
        &'a self,
        correlation: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, BrokerError>> {
        self.shard_for(correlation).entries(correlation)
    }
}

impl TopicRetention for RedisBroker {
    fn set_retention(&self, topics: &[(String, Duration)]) {
        RedisBroker::set_retention(self, topics);
    }
}

impl crate::broker::capability::placement::TopicPlacement for RedisBroker {
    fn place_topics(&self, topics: &[(String, usize)]) {
        let mut placed = self
            .spread
            .placed
            .write()
            .unwrap_or_else(|e| e.into_inner());
        *placed = topics.iter().cloned().collect();
    }

    fn outboxes(&self) -> BoxFuture<'_, Vec<OutboxStats>> {
        Box::pin(async move {
            if self.n() == 1 {
                return Vec::new();
            }
            let asks = self
                .shards()
                .iter()
                .enumerate()
                .map(|(k, shard)| async move {
                    let key = shard.inner.keys.outbox();
                    let (waiting, oldest): (u64, redis::streams::StreamRangeReply) = redis::pipe()
                        .cmd("XLEN")
                        .arg(&key)
                        .cmd("XRANGE")
                        .arg(&key)
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut shard.conn())
                        .await
                        .ok()?;
                    // Outbox ids are the writing master's clock, in ms.
                    let since = oldest
                        .ids
                        .first()
                        .and_then(|e| e.id.split_once('-'))
                        .and_then(|(ms, _)| ms.parse::<u64>().ok())
                        .map_or(0, |ms| forwarder::now_ms().saturating_sub(ms));
                    Some(OutboxStats {
                        shard: k,
                        waiting,
                        oldest: Duration::from_millis(since),
                        forwarded: self.spread.forwarded[k]
                            .load(std::sync::atomic::Ordering::Relaxed),
                    })
                });
            join_all(asks).await.into_iter().flatten().collect()
        })
    }
}

impl WireFormat for RedisBroker {
    fn declare_wire(&self, wire: &crate::broker::capability::wire::WireSpec) {
        for shard in self.shards() {
            shard.declare_wire(wire);
        }
    }
}

/// Store reads, each from the shard holding its store.
struct SpreadStores {
    shards: Vec<Arc<dyn StoreRead>>,
}

impl StoreRead for SpreadStores {
    fn get(&self, store: &str, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        self.shards[shard_of(store, self.shards.len())].get(store, key)
    }

    fn scan(
        &self,
        store: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        self.shards[shard_of(store, self.shards.len())].scan(store, prefix, limit)
    }
}

impl ShardBroker {
    /// Hands a reply to whoever waits on it: this process's waiter, or the process named
    /// in its address through its reply channel. At most once, as replies are.
    async fn deliver_reply(&self, reply: &crate::broker::Reply) {
        let keys = &self.inner.keys;
        match replies::reply_to(keys, &self.inner.instance, &reply.to, &reply.result) {
            replies::ReplyTo::Here(id, answer) => {
                self.inner.waiting.answer(id, answer.clone());
            }
            replies::ReplyTo::Channel(channel, payload) => {
                let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async(&mut self.conn())
                    .await;
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "a reply could not be published");
                }
            }
            replies::ReplyTo::Nowhere => {}
        }
    }
}
