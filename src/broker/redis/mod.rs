//! The Redis broker: the same contract as the memory broker, durable, and shared by any
//! number of `edaflow` processes on one Redis, or on one master of a Redis Cluster.
//!
//! This module holds the `ShardBroker` type, its options and its `Broker` impl, which
//! hands each method to the module that owns its concern:
//!
//! | module | owns |
//! |---|---|
//! | `keys` | the name of every key and channel (the key layout) |
//! | `reply` | reading Redis replies |
//! | `failure` | what a Redis failure becomes as a `BrokerError` |
//! | `defaults` | every default and tuning constant of the broker |
//! | `connection` | clients (plain and TLS) and connections: shared, blocking reads, synchronous |
//! | `cluster` | which node connections go to, and following it on a Redis Cluster |
//! | `spread` | a namespace over several shards: routing, the outbox, the forwarder, merged consumers |
//! | `groups` | consumer groups: records, XGROUPs, declare and remove, making consumers |
//! | `consumer`, `reader`, `held`, `blocking`, `clock` | reading entries: consumers, their reader task, what it holds, blocking reads, Redis's clock |
//! | `tap` | taps: every accepted event, as Redis accepted them |
//! | `commit`, `batch`, `scripts` | publishes, commits and nacks; the batch task; the Lua scripts |
//! | `queues`, `mover` | queues: declare, remove, enqueue, making consumers; the movers of due items |
//! | `dead` | the dead-letter store |
//! | `replies` | replies to queries across processes |
//! | `stores` | reading the state stores |
//! | `chains`, `history` | chain instances; the journey history |
//! | `processes` | the registry of the processes sharing the namespace |
//! | `retention` | trimming topic streams |
//! | `stats` | counts of what waits, for the synchronous trait methods |
//! | `health`, `outage`, `circuit`, `oom`, `epoch` | what each command's outcome tells; outages; the circuit breaker; out of memory; state loss |
//! | `wire`, `stored`, `url` | the article's wire format; reading stored entries back; broker URLs |
//!
//! The key layout is in `keys`.
//!
//!
//! # Delivery guarantee
//!
//! Delivery is **at least once**: an entry read by a consumer stays in its group's pending
//! list until it is settled. `commit` is one Lua script that appends the published events,
//! schedules the deferred ones, enqueues the queue items (after checking every queue's
//! capacity), stores the dead letter, applies the store writes, publishes the query reply
//! and acks the delivery. Redis runs a script alone, so
//! either all of that happened or none of it did. A process that dies before its commit
//! leaves the entry pending; after `claim_idle` a live consumer claims it (XAUTOCLAIM) and
//! runs the handler again, whose earlier run wrote nothing. A process that dies after the
//! commit leaves nothing to redo. So the effects of one handler run land exactly once,
//! even though the handler may run more than once.
//!
//! The commit is idempotent: the script acks the entry first and applies nothing
//! (`settled`) when it was no longer pending for its group (a commit that enqueues checks
//! that before the queues' capacity, since a full queue leaves the entry pending). That covers a commit whose
//! reply was lost (a response timeout while Redis stalled, a dropped connection): the
//! command may have run, so the caller retries it, and the retry changes nothing. It also
//! covers a handler slower than `claim_idle`, claimed and run again by another consumer:
//! whichever run commits first lands, the other is skipped. (The handler still runs
//! twice then; keep `claim_idle` above the slowest handler.)
//!
//! A `take` whose reply is lost leaves its entry pending with this consumer, unseen; it is
//! claimed after `claim_idle`. A `publish` whose reply is lost may have run: ingest answers
//! 503 for an event that is in Redis (a client retrying it sends it twice). An event
//! answered 202 is in Redis: the script has run and replied. Durability across a Redis
//! restart is Redis's: with `appendonly yes` Redis writes the AOF before it replies, so a
//! killed Redis loses no acknowledged write (a machine crash can lose the last second
//! under `appendfsync everysec`).
//!
//! # When Redis is unreachable
//!
//! Every command fails with `Unavailable` (after `response_timeout` at worst). Nothing
//! here crashes or gives up: consumers back off and retry (see `consumer`), the runtime
//! retries commits, ingest answers 503, and `health` reports the outage. The outage is
//! logged once for the process (see `outage`). After two failures in a row the circuit
//! opens: commands are refused at once, without a connection attempt, until one probe
//! gets an answer (see `circuit`). `connect` alone does not retry: a Redis that is not
//! there at startup is an error for the caller.
//!
//! # When Redis loses its state, runs out of memory, or holds what it should not
//!
//! A Redis restarted without persistence, flushed, or failed over to a replica that
//! missed writes is noticed by the epoch marker within half a second (or at once, after a
//! reconnect or when a consumer finds its group gone), and everything this process
//! declared is declared again; the loss is logged once and counted (see `epoch`). Redis
//! refusing writes for lack of memory (`-OOM`) is `OutOfMemory`: ingest answers 503, the
//! commit script refuses a whole run before it writes anything, commits retry, and the
//! episode is logged once (see `oom`). An entry that cannot be read back is dead-lettered
//! with its ack (see `stored`), and a topic no group reads is trimmed by the unread
//! retention (see `retention`).
//!
//! # Batching
//!
//! Publishes, commits and enqueues of a process go to Redis together: one script run
//! carries every operation waiting at that moment (see `batch`), each still atomic on its
//! own. A consumer takes up to 16 entries in one run when at least that many wait for its
//! group (fewer waiting: one), and never more than its fair share of what waits (the
//! waiting count over the group's consumers); it holds them for its next `next()` calls,
//! and gives back what it has not handed out when its worker stops (`Consumer::close`)
//! or it is dropped.
//!
//! # Taking ahead
//!
//! A queue's mover moves items to the ready stream up to `take_ahead` before they fall due
//! (field `d`: the due time, Redis ms). A reader takes such an item like any other and
//! holds it (`held`) until Redis's clock, as this process knows it (`clock`), reaches `d`;
//! an item taken later and due sooner goes first. A reader goes on reading while what it
//! holds is not due yet, up to `hold_ahead` items, so that the whole work of moving,
//! reading and parsing a burst is done before it falls due, and only the handler and the
//! ack are left for its due time (W3: lateness p99 from about 80 ms to under 20 ms, see
//! BENCHMARKS.md). Readers in several processes take a burst in turns, one mover batch
//! each, as Redis serves blocked reads in order. A held item given back (`nack`) keeps `d`
//! in the back stream. `take_ahead` is capped at `claim_idle / 4`. A queue with `poll`
//! takes nothing ahead (a polling worker would sit on the item until its next look), nor
//! does one with a `capacity`: capacity counts the items not taken yet, as on the memory
//! broker, and up to `hold_ahead` held items would escape it. Waits for a due time are timed here, not by Redis's BLOCK timeout
//! (`blocking`).
//!
//! # Ordering
//!
//! Event ids are `{server ms}-{global sequence}`, so a group reading several topic streams
//! takes the earliest entry over all of them: one consumer sees events in publish order.
//! (The sequence is reserved 64 numbers at a time per script run; ids have gaps.)
//!
//! # Capacity
//!
//! `group_capacity` bounds, per group and topic stream, the entries not yet delivered:
//! `publish` fails with `Full` (`Reject`) or waits (`Wait`) past it. Commits are not
//! bounded (their events are durable, and the handler has already run).
//!
//! # Redis Cluster
//!
//! On a cluster a shard's broker connects to the master owning its slot; a failover or
//! resharding is followed within about a second (`cluster`); meanwhile the shard is
//! unavailable. A namespace is one shard by default (one slot, one master); `spread`
//! spreads it over several, with an outbox and a forwarder for the effects that cross
//! shards. Everything in this module below `spread` is one shard's.
//!
//! # What this module must not do
//!
//! Hold a lock across an `.await`, block a tokio worker for longer than one round trip on
//! the loopback (the trait's synchronous methods that must ask Redis use a synchronous
//! connection, see `connection`), or trim an entry a group has not read.

mod batch;
mod blocking;
mod chains;
mod circuit;
mod clock;
mod cluster;
mod commit;
mod connection;
mod consumer;
mod dead;
pub mod defaults;
mod epoch;
mod failure;
mod groups;
mod health;
mod held;
mod history;
mod keys;
mod mover;
mod oom;
pub(crate) mod outage;
mod processes;
mod queues;
mod reader;
mod replies;
mod reply;
mod retention;
mod scripts;
mod spread;
mod stats;
mod stored;
mod stores;
mod tap;
mod url;
mod wire;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{warn, Instrument};

use crate::broker::{
    Backpressure, Broker, BrokerError, BrokerHealth, BrokerIncidents, CommitInOrder, DeadFilter,
    Delivery, Effects, GroupSpec, GroupStats, Processes, QueueSpec, QueueStats, Removed, Replies,
    ReplyResult, RetryableCommit, SharedChains, SharedHistory, StoreReadAhead, TopicRetention,
    WireFormat,
};
use crate::event::Event;
use crate::pattern::TopicPattern;
use crate::store::StoreRead;

pub use circuit::CircuitState;
pub(crate) use consumer::ShardConsumer;
pub use retention::TrimReport;
pub use spread::{RedisBroker, RedisConsumer, SpreadBy, MAX_SHARDS};
pub use url::{BrokerUrl, RedisUrl, SecretUrl};

/// Settings of the Redis broker.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Key namespace: keys are `edaflow:{namespace}:…`, braces included (the hash tag), so
    /// it must be non-empty and hold no brace. Default: `defaults::NAMESPACE`.
    pub namespace: String,
    /// Entries a group may have waiting on one topic stream before `publish` pushes back
    /// (`None`: unbounded). Default: `defaults::GROUP_CAPACITY`.
    pub group_capacity: Option<usize>,
    /// How long an entry stays pending with a consumer before another may claim it.
    /// Default: `defaults::CLAIM_IDLE`.
    pub claim_idle: Duration,
    /// Longest a consumer blocks in one read before it looks again (claims, removals).
    /// Default: `defaults::BLOCK`.
    pub block: Duration,
    /// Due items moved per script run. Default: `defaults::MOVER_BATCH`.
    pub mover_batch: usize,
    /// How long before its due time a queue item may go to an idle worker, which holds it
    /// and starts it on time (see "Taking ahead"). Zero turns it off; it is capped at a
    /// quarter of `claim_idle`, and queues with `poll` or a `capacity` never take ahead.
    /// Default: `defaults::TAKE_AHEAD`.
    pub take_ahead: Duration,
    /// Most queue items not yet due one subscriber's reader holds (see "Taking ahead"):
    /// bounds the memory a burst taken ahead uses, about 1 KiB an item. Default:
    /// `defaults::HOLD_AHEAD`.
    pub hold_ahead: usize,
    /// Most entries a consumer takes in one script run, when at least that many wait
    /// (see "Batching"; 1 takes one at a time). Default: `defaults::PREFETCH`.
    pub prefetch: usize,
    /// Most publishes, commits and enqueues carried by one script run (1: one each).
    /// Default: `defaults::BATCH`.
    pub batch: usize,
    /// How long a command may wait for its reply before it fails (and is retried). A
    /// command that timed out may still have run (see "Delivery guarantee"). Default:
    /// `defaults::RESPONSE_TIMEOUT`.
    pub response_timeout: Duration,
    /// For `rediss://`: trust this CA (a PEM file) instead of the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// How long events are kept on a topic stream that no group reads (no consumer group on
    /// it, no declared group matching the topic) and that has no `retention` of its own
    /// (see `retention`); `None` keeps them for ever. Default:
    /// `defaults::UNREAD_RETENTION`.
    pub unread_retention: Option<Duration>,
    /// How many shards the namespace is spread over (see `spread`): 1 keeps every key in
    /// one slot; on a Redis Cluster, one per master spreads the flow set over them. Every
    /// process of a flow set must use the same. Default: 1.
    pub shards: usize,
    /// With several shards, what places an event (see `SpreadBy`). Processes that differ
    /// still deliver everything once, only less evenly. Default: by topic.
    pub spread_by: SpreadBy,
}

/// Every default is a named constant of `defaults`.
impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            namespace: defaults::NAMESPACE.to_owned(),
            group_capacity: Some(defaults::GROUP_CAPACITY),
            claim_idle: defaults::CLAIM_IDLE,
            block: defaults::BLOCK,
            mover_batch: defaults::MOVER_BATCH,
            take_ahead: defaults::TAKE_AHEAD,
            hold_ahead: defaults::HOLD_AHEAD,
            prefetch: defaults::PREFETCH,
            batch: defaults::BATCH,
            response_timeout: defaults::RESPONSE_TIMEOUT,
            tls_ca: None,
            unread_retention: Some(defaults::UNREAD_RETENTION),
            shards: 1,
            spread_by: SpreadBy::Topic,
        }
    }
}

/// The broker of one shard of a namespace: all its keys in one slot (see `spread` for the
/// namespace spread over several). Clones share one set of connections.
#[derive(Clone)]
pub(crate) struct ShardBroker {
    inner: Arc<Inner>,
}

/// What the clones of one broker share. Each concern module reads the fields it needs;
/// the state a concern owns is a type of that module (`circuit::Circuit`, `epoch::Epoch`…).
struct Inner {
    /// The server all connections go to (on a cluster: the master of the namespace's slot).
    node: Arc<cluster::Node>,
    url: RedisUrl,
    /// For the synchronous parts of the trait (see `connection`).
    sync: Mutex<Option<redis::Connection>>,
    /// The names of the namespace's keys.
    keys: keys::Keys,
    options: RedisOptions,
    /// Topics this process has registered (and created its groups' XGROUPs on).
    known_topics: RwLock<HashSet<String>>,
    /// Groups and queues this process declared (for the synchronous `consumer` checks).
    groups: RwLock<HashMap<String, Vec<TopicPattern>>>,
    /// The queues this process declared in Redis, as declared (to declare them again when
    /// Redis lost its state, see `epoch`).
    queue_specs: RwLock<HashMap<String, QueueSpec>>,
    /// Per queue, how far ahead of their due time its items may be taken, in ms.
    queues: RwLock<HashMap<String, u64>>,
    /// Redis's clock as seen from here, to hold items taken ahead (see `clock`).
    clock: clock::RedisClock,
    /// Queues whose mover runs in this process (see `mover`).
    queue_movers: Mutex<HashSet<String>>,
    /// Unique per broker instance, `{host}-{pid}-{random}`: the process's id in the
    /// registry (see `processes`), consumer names are `{instance}-{n}`, and replies to
    /// this process's queries come on `P reply:{instance}`.
    instance: String,
    /// Queries this process waits on (see `replies`).
    waiting: Arc<replies::Waiting>,
    /// Reads of the state stores (hashes `P s:{store}`).
    stores: Arc<stores::RedisStores>,
    /// Per-topic retention and the trimmer's state (see `retention`).
    retention: Arc<retention::Retention>,
    /// Groups whose record in Redis could not be read, warned about once (see `groups`).
    unreadable_groups: Mutex<HashSet<String>>,
    /// Consumers made so far, for their names.
    consumers: AtomicU64,
    /// Whether Redis is down, shared by every task (see `outage`).
    outage: outage::Outage,
    /// Fast refusals while Redis cannot be reached (see `circuit`).
    circuit: circuit::Circuit,
    /// Redis refusing writes for lack of memory (see `oom`).
    oom: oom::OutOfMemory,
    /// The epoch marker and the state losses healed (see `epoch`).
    epoch: epoch::Epoch,
    /// The article's wire format: pub/sub topics and plain-list queues.
    wire: wire::Wire,
    /// Where publishes, commits and enqueues go to be run in batches (see `batch`).
    batcher: batch::Batcher,
    /// Where commits that are an ack alone go to be sent in pipelines (see `batch::Acks`).
    acks: batch::Acks,
}

impl ShardBroker {
    /// Connects and starts the task that publishes deferred events when they fall due (it
    /// ends when the last clone of the broker is dropped). Must be called inside a tokio
    /// runtime. It does not wait for Redis: a server that is not there fails at once.
    ///
    /// # Errors
    /// `Connect` when Redis cannot be reached or refuses the password (the message never
    /// holds the password), `TlsCa` for an unusable CA file, `BadNamespace`, `BadUrl`, and
    /// `Cluster` when a cluster has no master for the namespace's slot.
    pub(crate) async fn connect(
        url: &RedisUrl,
        options: RedisOptions,
    ) -> Result<ShardBroker, BrokerError> {
        let keys = keys::Keys::new(cluster::prefix(&options.namespace)?);
        let node = connect_node(url, &options, keys.prefix()).await?;
        let instance = crate::broker::capability::processes::new_process_id();
        let waiting = Arc::new(replies::Waiting::default());
        replies::listen(
            node.clone(),
            keys.reply_channel(&instance),
            Arc::downgrade(&waiting),
        )
        .await
        .map_err(failure::unavailable)?;
        let batcher = batch::Batcher::start(node.clone(), keys.prefix().to_owned(), options.batch);
        let acks = batch::Acks::start(node.clone(), options.batch);
        let inner = Arc::new(Inner {
            batcher,
            acks,
            stores: Arc::new(stores::RedisStores::new(node.clone(), keys.clone())),
            node,
            url: url.clone(),
            sync: Mutex::new(None),
            keys,
            waiting,
            options,
            known_topics: RwLock::new(HashSet::new()),
            groups: RwLock::new(HashMap::new()),
            queue_specs: RwLock::new(HashMap::new()),
            queues: RwLock::new(HashMap::new()),
            clock: clock::RedisClock::default(),
            queue_movers: Mutex::new(HashSet::new()),
            instance,
            retention: Arc::default(),
            unreadable_groups: Mutex::new(HashSet::new()),
            consumers: AtomicU64::new(0),
            outage: outage::Outage::default(),
            circuit: circuit::Circuit::default(),
            oom: oom::OutOfMemory::default(),
            epoch: epoch::Epoch::default(),
            wire: wire::Wire::default(),
        });
        let time: Vec<i64> = redis::cmd("TIME")
            .query_async(&mut inner.node.conn())
            .await
            .map_err(failure::unavailable)?;
        let [s, us] = time[..] else {
            return Err(failure::unexpected(
                "TIME's seconds and microseconds",
                &time,
            ));
        };
        inner.clock.learn(s * 1000 + us / 1000);
        let broker = ShardBroker { inner };
        match broker.mark_epoch(true).await {
            // Redis is full: the watcher writes the marker once it takes writes again.
            Err(BrokerError::OutOfMemory) => {
                warn!("redis is out of memory at connect: the epoch marker is written once it takes writes again");
            }
            other => other?,
        }
        let inner = broker.inner;
        let span = tracing::info_span!("redis_mover", component = "broker");
        // Tracked by ownership: it holds a Weak and ends once the broker is gone.
        tokio::spawn(mover::run(Arc::downgrade(&inner), mover::Moving::Deferred).instrument(span));
        let span = tracing::info_span!("redis_trimmer", component = "broker");
        let trimmer = retention::run(
            Arc::downgrade(&inner),
            inner.retention.clone(),
            inner.options.unread_retention,
        );
        tokio::spawn(trimmer.instrument(span));
        let span = tracing::info_span!("redis_watcher", component = "broker");
        // Tracked by ownership: it holds a Weak and ends once the broker is gone.
        tokio::spawn(epoch::run(Arc::downgrade(&inner)).instrument(span));
        Ok(ShardBroker { inner })
    }

    /// The URL (password hidden when displayed).
    pub(crate) fn url(&self) -> &RedisUrl {
        &self.inner.url
    }

    /// The key prefix, `edaflow:{namespace}:` (braces included).
    pub(crate) fn prefix(&self) -> &str {
        self.inner.keys.prefix()
    }

    /// On a Redis Cluster, the namespace's slot and the master serving it now.
    pub(crate) fn cluster_slot(&self) -> Option<(u16, String)> {
        self.inner.node.cluster_slot()
    }
}

/// The node serving the keys under `prefix` (on a cluster, the master of its slot), reached
/// through the URL's seeds; a server that is not there is a `Connect` error.
async fn connect_node(
    url: &RedisUrl,
    options: &RedisOptions,
    prefix: &str,
) -> Result<Arc<cluster::Node>, BrokerError> {
    let seeds = url
        .seeds()
        .iter()
        .map(|seed| connection::client_for(url, seed, options.tls_ca.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    cluster::Node::connect(url, seeds, prefix, options.response_timeout)
        .await
        .map_err(|e| match e {
            BrokerError::Unavailable { source } => BrokerError::Connect {
                url: url.to_string(),
                reason: source.to_string(),
            },
            other => other,
        })
}

/// Each method is guarded by the circuit (see `health`) and handed to the module that owns
/// its concern.
impl Broker for ShardBroker {
    type Consumer = ShardConsumer;

    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn declare_group(&self, spec: &GroupSpec) -> Result<(), BrokerError> {
        self.guarded("declare", groups::declare(self, spec)).await
    }

    async fn remove_group(
        &self,
        name: &str,
        successor: Option<&str>,
    ) -> Result<Removed, BrokerError> {
        self.guarded("remove", groups::remove(self, name, successor))
            .await
    }

    async fn publish(&self, event: Event, mode: Backpressure) -> Result<(), BrokerError> {
        self.guarded("ingest", commit::publish(self, event, mode))
            .await
    }

    async fn publish_later(&self, event: Event, delay: Duration) -> Result<(), BrokerError> {
        self.guarded("ingest", commit::publish_later(self, event, delay))
            .await
    }

    fn consumer(&self, group: &str) -> Result<ShardConsumer, BrokerError> {
        Ok(self.consumers(group, 1)?.swap_remove(0))
    }

    /// The workers of one subscriber share one reader (see `consumer`'s module docs): one
    /// blocking read fetches an entry for each worker waiting, where one reader per worker
    /// would make Redis wake and answer each of them apart.
    fn consumers(&self, group: &str, n: usize) -> Result<Vec<ShardConsumer>, BrokerError> {
        groups::consumers(self, group, n)
    }

    async fn commit(&self, delivery: Delivery, effects: Effects) -> Result<(), BrokerError> {
        self.guarded("commit", commit::commit(self, &delivery, &effects))
            .await
    }

    async fn nack(&self, delivery: Delivery) -> Result<(), BrokerError> {
        self.guarded("nack", commit::nack(self, delivery)).await
    }

    async fn health(&self) -> BrokerHealth {
        health::report(self).await
    }

    fn incidents(&self) -> BrokerIncidents {
        health::incidents(self)
    }

    fn tap_within(
        &self,
        pattern: TopicPattern,
        buffer: usize,
        bytes: usize,
    ) -> mpsc::Receiver<Arc<Event>> {
        tap::start(self, pattern, buffer, bytes)
    }

    async fn stats(&self) -> Vec<GroupStats> {
        stats::groups(self).await
    }

    async fn scheduled(&self) -> usize {
        stats::scheduled(self).await
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        self.guarded("declare", queues::declare(self, spec)).await
    }

    async fn remove_queue(
        &self,
        name: &str,
        successor: Option<&str>,
    ) -> Result<Removed, BrokerError> {
        self.guarded("remove", queues::remove(self, name, successor))
            .await
    }

    async fn enqueue(&self, queue: &str, item: Event, delay: Duration) -> Result<(), BrokerError> {
        self.guarded("ingest", queues::enqueue(self, queue, item, delay))
            .await
    }

    fn queue_consumer(&self, queue: &str) -> Result<ShardConsumer, BrokerError> {
        Ok(self.queue_consumers(queue, 1)?.swap_remove(0))
    }

    /// One reader for the workers of one subscriber, as `consumers`.
    fn queue_consumers(&self, queue: &str, n: usize) -> Result<Vec<ShardConsumer>, BrokerError> {
        queues::consumers(self, queue, n)
    }

    async fn queue_stats(&self) -> Vec<QueueStats> {
        stats::queues(self).await
    }

    fn stores(&self) -> Option<Arc<dyn StoreRead>> {
        Some(self.inner.stores.clone())
    }

    fn retryable_commit(&self) -> Option<&dyn RetryableCommit> {
        Some(self)
    }

    fn ordered_commit(&self) -> Option<&dyn CommitInOrder> {
        Some(self)
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
        Some(self)
    }

    fn processes(&self) -> Option<&dyn Processes> {
        Some(self)
    }

    fn retention(&self) -> Option<&dyn TopicRetention> {
        Some(self)
    }

    fn wire(&self) -> Option<&dyn WireFormat> {
        Some(self)
    }

    async fn dead_letters(&self, filter: &DeadFilter) -> Result<Vec<Event>, BrokerError> {
        self.guarded("dead letters", dead::list(self, filter)).await
    }

    async fn take_dead_letters(&self, filter: &DeadFilter) -> Result<Vec<Event>, BrokerError> {
        self.guarded("dead letters", dead::take(self, filter)).await
    }
}

impl StoreReadAhead for ShardBroker {
    fn read_ahead(
        &self,
        wants: Vec<crate::store::StoreWant>,
    ) -> crate::broker::capability::BoxFuture<
        '_,
        Result<Vec<crate::store::Fetched>, crate::store::StoreError>,
    > {
        Box::pin(async move {
            let mut conn = self.conn();
            self.inner
                .stores
                .read_ahead(&mut conn, &wants, crate::script::host::SCAN_LIMIT)
                .await
        })
    }
}

impl Replies for ShardBroker {
    fn reply_address(&self, id: &str) -> String {
        format!("{}/{id}", self.inner.instance)
    }

    fn await_reply(&self, id: &str) -> oneshot::Receiver<ReplyResult> {
        self.inner.waiting.register(id)
    }

    fn forget_reply(&self, id: &str) {
        self.inner.waiting.forget(id);
    }
}

impl CommitInOrder for ShardBroker {
    fn commit_in_order<'a>(
        &'a self,
        runs: &'a [(&'a Delivery, &'a Effects)],
    ) -> crate::broker::capability::BoxFuture<'a, Result<Vec<Result<(), BrokerError>>, BrokerError>>
    {
        Box::pin(self.guarded("commit", self.commit_sequence(runs)))
    }
}

impl RetryableCommit for ShardBroker {
    fn commit_retryable<'a>(
        &'a self,
        delivery: &'a Delivery,
        effects: &'a Effects,
    ) -> crate::broker::capability::BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.guarded("commit", commit::commit(self, delivery, effects)))
    }
}
