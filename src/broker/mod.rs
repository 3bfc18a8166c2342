//! The broker boundary: how events travel between producers and subscriber groups.
//!
//! `Broker` is the contract every broker keeps (the memory broker and the Redis broker):
//! publish fans out to every group whose patterns match; within a group, consumers
//! compete; a delivery is settled by `commit` (its handler's effects land, then the ack) or
//! by `nack` (it goes back to the group untouched). The runtime is generic over this
//! trait and never sees a broker's internals. This module depends only on `event` (and the
//! pure topic-pattern syntax).
//!
//! What only some brokers offer (a shared history, shared chain state, the article's wire
//! format, retention, read-ahead, replies, a feed of accepted events, a registry of the
//! processes sharing it) is not part of the core contract: each is a small trait in
//! `capability`, reached through a `Broker` accessor that answers `None` when the broker
//! does not offer it.

pub(crate) mod backoff;
pub mod capability;
mod failure;
pub mod memory;
mod memory_queue;
pub mod redis;
pub(crate) mod tap;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::event::Event;
use crate::pattern::TopicPattern;

pub use capability::accept::{AcceptFeed, AcceptObserver};
pub use capability::chains::{ChainCounts, ChainSpec, ChainStep, ExpiredChain, SharedChains};
pub use capability::history::SharedHistory;
pub use capability::in_order::CommitInOrder;
pub use capability::processes::{ProcessInfo, Processes};
pub use capability::read_ahead::StoreReadAhead;
pub use capability::replies::{Replies, ReplyResult};
pub use capability::retention::TopicRetention;
pub use capability::retry::RetryableCommit;
pub use capability::wire::{WireFormat, WireSpec};
pub use failure::{FailureKind, ServerFailure};
pub use memory::{MemoryBroker, MemoryOptions};
pub use redis::{BrokerUrl, RedisBroker, RedisOptions, RedisUrl, SecretUrl, TrimReport};
pub use tap::TAP_BYTES;

/// Errors at the broker boundary.
#[derive(Debug, Clone, thiserror::Error, miette::Diagnostic)]
pub enum BrokerError {
    /// A bounded buffer is full; try again later (HTTP answers 503 with `Retry-After`).
    #[error("the buffer of group `{group}` is full")]
    #[diagnostic(
        code(edaflow::broker::full),
        help("slow down, or raise the subscriber's concurrency")
    )]
    Full { group: String },
    /// The group was never declared (or was removed).
    #[error("no consumer group named `{group}`")]
    #[diagnostic(code(edaflow::broker::unknown_group))]
    UnknownGroup { group: String },
    /// The queue was never declared (or was removed).
    #[error("no queue named `{queue}`")]
    #[diagnostic(code(edaflow::broker::unknown_queue))]
    UnknownQueue { queue: String },
    /// A queue holds `capacity` items already; enqueueing fails rather than dropping.
    #[error("queue `{queue}` is full ({capacity} items)")]
    #[diagnostic(
        code(edaflow::broker::queue_full),
        help("raise the queue's `capacity`, or add workers")
    )]
    QueueFull { queue: String, capacity: usize },
    /// Something held in memory (a queue's items, the delayed events) holds its byte
    /// budget already.
    #[error("{held} hold their budget of {bytes} bytes")]
    #[diagnostic(
        code(edaflow::broker::over_budget),
        help("add workers, or use the Redis broker for large backlogs")
    )]
    OverBudget { held: String, bytes: usize },
    /// A delay so long that its due time cannot be represented.
    #[error("a delay of {delay_ms} ms is too long")]
    #[diagnostic(code(edaflow::broker::delay_too_long))]
    DelayTooLong { delay_ms: u128 },
    /// The article's wire format (a pub/sub topic, a plain-list queue) has no due times.
    #[error("`{name}` is a {wire}: it cannot hold an event for later")]
    #[diagnostic(
        code(edaflow::broker::undelayable),
        help("publish or enqueue without a delay, or use a stream topic / a scheduled queue")
    )]
    Undelayable { name: String, wire: &'static str },
    /// The broker is shutting down.
    #[error("the broker is closed")]
    #[diagnostic(code(edaflow::broker::closed))]
    Closed,
    /// The broker's server (Redis) is out of memory (`maxmemory` reached with a policy
    /// that refuses writes): nothing new can be stored until memory is freed. HTTP answers
    /// 503 with its own code.
    #[error("the broker is out of memory")]
    #[diagnostic(
        code(edaflow::broker::out_of_memory),
        help("raise Redis's `maxmemory`, set `retention` on busy topics, or drain backlogs")
    )]
    OutOfMemory,
    /// The broker's server (Redis) cannot be reached or failed a command; try again later
    /// when it is transient (HTTP answers 503). `source` says what happened, in edaflow's
    /// words (no client library's types cross this boundary).
    #[error("the broker is unavailable")]
    #[diagnostic(
        code(edaflow::broker::unavailable),
        help("is Redis running and reachable at the broker URL?")
    )]
    Unavailable {
        #[source]
        source: ServerFailure,
    },
    /// A broker URL that cannot be used (shown with its password hidden).
    #[error("`{url}` is not a broker URL")]
    #[diagnostic(
        code(edaflow::broker::bad_url),
        help("use `memory`, `redis://[:password@]host:port/db` or `rediss://…` (TLS)")
    )]
    BadUrl { url: String },
    /// The first connection, at startup, failed (the URL is shown with its password hidden).
    #[error("cannot connect to Redis at `{url}`: {reason}")]
    #[diagnostic(
        code(edaflow::broker::connect),
        help("is Redis running and reachable at this URL (and the password right)? edaflow does not wait for Redis at startup: start it first, or let a supervisor restart edaflow")
    )]
    Connect { url: String, reason: String },
    /// The CA file for `rediss://` cannot be used.
    #[error("cannot use `{path}` as the Redis CA: {detail}")]
    #[diagnostic(
        code(edaflow::broker::tls_ca),
        help("give a PEM file holding the CA certificate(s) that signed the Redis server's certificate")
    )]
    TlsCa { path: String, detail: String },
    /// A Redis namespace that cannot be a hash tag (empty, or holding `{` or `}`).
    #[error("`{namespace}` is not a Redis namespace: {reason}")]
    #[diagnostic(
        code(edaflow::broker::bad_namespace),
        help("use a name without braces, e.g. the flow's name")
    )]
    BadNamespace { namespace: String, reason: String },
    /// A Redis Cluster this broker cannot use as it is (no owner of the namespace's slot,
    /// a database other than 0).
    #[error("Redis Cluster at `{url}`: {reason}")]
    #[diagnostic(code(edaflow::broker::cluster))]
    Cluster { url: String, reason: String },
    /// A shard count this process cannot use for its namespace: out of range, or not the
    /// one the namespace was spread with (on one Redis or a cluster alike).
    #[error("Redis at `{url}`: {reason}")]
    #[diagnostic(
        code(edaflow::broker::layout),
        help("give every process of a flow set the same --shards, or use a new namespace")
    )]
    Layout { url: String, reason: String },
}

impl BrokerError {
    /// True when trying again later may succeed: the server is unreachable, stalled, busy
    /// loading its data, the connection dropped, or the server is out of memory (it takes
    /// writes again once memory is freed). A command the server refused (a script error, a
    /// wrong type) is not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            BrokerError::Unavailable { source } => source.is_transient(),
            BrokerError::OutOfMemory => true,
            _ => false,
        }
    }
}

/// Whether the broker can serve requests now (for `/healthz`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerHealth {
    Up,
    /// Reachable, but refusing some work for `for_ms`: `code` names why
    /// (`out_of_memory`), `reason` is safe to show.
    Degraded {
        code: &'static str,
        reason: String,
        for_ms: u64,
    },
    /// Unreachable (or not answering) for `for_ms`; `reason` is safe to show.
    Down {
        reason: String,
        for_ms: u64,
    },
}

/// What a broker noticed going wrong with its server over the life of the process, for
/// `/healthz` and `/metrics` (see `Broker::incidents`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BrokerIncidents {
    /// Times the server was found to have lost its state (restarted empty, failed over to
    /// a replica that missed writes, flushed) and the state was declared again.
    pub state_lost: u64,
    /// The last such time: when (RFC 3339) and what was found missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_state_loss: Option<StateLoss>,
    /// Episodes of the server refusing writes for lack of memory.
    pub out_of_memory_episodes: u64,
}

/// One time the broker's server was found to have lost its state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StateLoss {
    /// When it was noticed, RFC 3339.
    pub at: String,
    /// What was missing: consumer groups, queues, keys (names, not contents).
    pub missing: Vec<String>,
}

/// What to do when a group's buffer is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backpressure {
    /// Wait for room (handlers and internal producers).
    Wait,
    /// Fail at once with `BrokerError::Full` (HTTP ingest).
    Reject,
}

/// A consumer group: a name and what it receives.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSpec {
    pub name: String,
    pub patterns: Vec<TopicPattern>,
}

/// One event handed to one consumer of a group, to be committed or nacked.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: Arc<Event>,
    /// The group (or queue) it was delivered from.
    pub group: Arc<str>,
    /// True when it came from a work queue rather than a topic group.
    pub from_queue: bool,
    /// How many times it was delivered before (0 the first time).
    pub redeliveries: u32,
    /// Broker-specific position (a stream entry id on Redis; empty in memory).
    pub tag: String,
}

/// The effects of one successful handler run, committed together with the ack.
///
/// New kinds of effect (queue items, store writes, replies) are added here as fields, so
/// every broker commits them in the same step.
#[derive(Debug, Default, Clone)]
pub struct Effects {
    /// Events to publish now.
    pub publish: Vec<Event>,
    /// Events to publish after a delay.
    pub deferred: Vec<(Event, Duration)>,
    /// Work items: (queue, item, delay before it is due).
    pub enqueue: Vec<(String, Event, Duration)>,
    /// A dead letter: published to its topic and kept in the dead-letter store.
    pub dead_letter: Option<Event>,
    /// State-store writes, applied in order.
    pub store_writes: Vec<crate::store::StoreWrite>,
    /// The answer to a query, delivered to whoever waits on `reply.to`.
    pub reply: Option<Reply>,
}

/// The answer to a request published by `POST /query/…`.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// The request id (the event's `replyto` extension).
    pub to: String,
    /// The handler's `reply(data)`, or a safe message when the handler failed.
    pub result: Result<serde_json::Value, String>,
}

impl Effects {
    /// True when there is nothing to commit but the ack.
    pub fn is_empty(&self) -> bool {
        self.writes_nothing() && self.reply.is_none()
    }

    /// True when nothing is written: no event, item, dead letter or store write (a reply
    /// may still be there).
    pub fn writes_nothing(&self) -> bool {
        self.publish.is_empty()
            && self.deferred.is_empty()
            && self.enqueue.is_empty()
            && self.dead_letter.is_none()
            && self.store_writes.is_empty()
    }

    /// Every event this commit makes visible (for counting).
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.publish
            .iter()
            .chain(self.deferred.iter().map(|(e, _)| e))
            .chain(self.enqueue.iter().map(|(_, e, _)| e))
            .chain(self.dead_letter.iter())
    }

    /// Every event the effects write, to change before the commit.
    pub fn events_mut(&mut self) -> impl Iterator<Item = &mut Event> {
        self.publish
            .iter_mut()
            .chain(self.deferred.iter_mut().map(|(e, _)| e))
            .chain(self.enqueue.iter_mut().map(|(_, e, _)| e))
            .chain(self.dead_letter.iter_mut())
    }
}

/// Settings of a work queue the broker enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    /// Most items held (scheduled + ready); `None` is unbounded.
    pub capacity: Option<usize>,
    /// Workers look only every `poll` (`[queues.X] poll`). A broker that hands items to
    /// idle workers ahead of their due time (Redis, see its `take_ahead`) does not for
    /// these: a polling worker could hold an item until its next look.
    pub poll: Option<Duration>,
}

/// A point-in-time view of one work queue.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    pub name: String,
    /// Items held: waiting for their due time or ready.
    pub depth: usize,
    /// Items due now (ready to be taken).
    pub due_now: usize,
    /// Milliseconds until the next item not yet due falls due.
    pub next_due_ms: Option<u64>,
    /// Items delivered and not yet settled.
    pub in_flight: usize,
    pub capacity: Option<usize>,
}

/// Which dead letters an admin command is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadFilter {
    /// Only dead letters whose original topic (or queue) matches this pattern.
    pub origin: Option<TopicPattern>,
    /// Only these dead-letter event ids (empty: any).
    pub ids: Vec<String>,
}

impl DeadFilter {
    /// Does a dead letter pass the filter?
    pub fn matches(&self, dead: &Event) -> bool {
        let origin = dead
            .extensions
            .get(crate::event::dead_letter::QUEUE)
            .or_else(|| dead.extensions.get(crate::event::dead_letter::TOPIC))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        self.origin
            .as_ref()
            .is_none_or(|p| p.matches(origin) || p.matches(&dead.topic))
            && (self.ids.is_empty() || self.ids.contains(&dead.id))
    }
}

/// What removing a group or a queue did with what waited in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    /// Events or items handed to the successor.
    pub moved: u64,
    /// Events or items dropped with the group or queue (no successor).
    pub dropped: u64,
}

impl Removed {
    /// True when nothing waited.
    pub fn is_empty(&self) -> bool {
        self.moved == 0 && self.dropped == 0
    }
}

/// A point-in-time view of one group, for metrics and `/healthz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStats {
    pub name: String,
    /// Events waiting in the group's buffer.
    pub queued: usize,
    /// Events delivered and not yet settled.
    pub in_flight: usize,
    pub capacity: usize,
}

/// The broker contract. See the module docs; `tests/broker_contract.rs` holds the tests every
/// implementation must pass.
pub trait Broker: Clone + Send + Sync + 'static {
    /// A consumer of one group; each worker holds its own.
    type Consumer: Consumer;

    /// Creates the group, or updates the patterns of an existing one. Events published
    /// before a group exists are not delivered to it.
    fn declare_group(
        &self,
        spec: &GroupSpec,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Removes a group. What waits in it moves to `successor` (an existing group) when
    /// given, so a subscriber that changes its group or is renamed loses nothing; otherwise
    /// it is dropped. Says how many events moved and how many were dropped, for the reload
    /// report. Removing a group the broker does not know is not an error (nothing moves).
    fn remove_group(
        &self,
        name: &str,
        successor: Option<&str>,
    ) -> impl Future<Output = Result<Removed, BrokerError>> + Send;

    /// Publishes an event to every group whose patterns match its topic.
    fn publish(
        &self,
        event: Event,
        mode: Backpressure,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Publishes an event after `delay`.
    fn publish_later(
        &self,
        event: Event,
        delay: Duration,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// A new consumer of the named group.
    fn consumer(&self, group: &str) -> Result<Self::Consumer, BrokerError>;

    /// `n` consumers of the named group for the workers of one subscriber. They compete
    /// as `n` calls of `consumer` would; a broker may serve them from one reader, so that
    /// one read fetches entries for every worker that waits (Redis does).
    fn consumers(&self, group: &str, n: usize) -> Result<Vec<Self::Consumer>, BrokerError> {
        (0..n).map(|_| self.consumer(group)).collect()
    }

    /// Settles a delivery: the effects are made visible, then the delivery is acked.
    fn commit(
        &self,
        delivery: Delivery,
        effects: Effects,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Returns a delivery to its group unhandled (a draining worker gives back what it
    /// holds, so nothing is lost).
    fn nack(&self, delivery: Delivery) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// A lossy live view of the events on matching topics, and of the items entering
    /// matching queues (for `edaflow tail` and tests).
    /// At most `buffer` events and `TAP_BYTES` of them wait for the reader; past that,
    /// events are dropped for it.
    fn tap(&self, pattern: TopicPattern, buffer: usize) -> tokio::sync::mpsc::Receiver<Arc<Event>> {
        self.tap_within(pattern, buffer, TAP_BYTES)
    }

    /// `tap`, holding at most `bytes` of events for the reader.
    fn tap_within(
        &self,
        pattern: TopicPattern,
        buffer: usize,
        bytes: usize,
    ) -> tokio::sync::mpsc::Receiver<Arc<Event>>;

    /// The state of every group (empty when it cannot be read: a remote broker that is
    /// unreachable).
    fn stats(&self) -> impl Future<Output = Vec<GroupStats>> + Send;

    /// Events scheduled by `publish_later` that have not been published yet (0 when it
    /// cannot be read).
    fn scheduled(&self) -> impl Future<Output = usize> + Send;

    /// Creates a work queue, or updates the settings of an existing one.
    fn declare_queue(
        &self,
        spec: &QueueSpec,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Removes a queue. The items it holds move to `successor` (an existing queue) when
    /// given, each keeping its due time; otherwise they are dropped. Says how many, as
    /// `remove_group` does.
    fn remove_queue(
        &self,
        name: &str,
        successor: Option<&str>,
    ) -> impl Future<Output = Result<Removed, BrokerError>> + Send;

    /// Adds an item to a queue, due after `delay`.
    ///
    /// # Errors
    /// `UnknownQueue`, or `QueueFull` past the queue's capacity.
    fn enqueue(
        &self,
        queue: &str,
        item: Event,
        delay: Duration,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// A new consumer of a queue's due items (they compete).
    fn queue_consumer(&self, queue: &str) -> Result<Self::Consumer, BrokerError>;

    /// `n` consumers of a queue for the workers of one subscriber (see `consumers`).
    fn queue_consumers(&self, queue: &str, n: usize) -> Result<Vec<Self::Consumer>, BrokerError> {
        (0..n).map(|_| self.queue_consumer(queue)).collect()
    }

    /// The state of every queue (empty when it cannot be read).
    fn queue_stats(&self) -> impl Future<Output = Vec<QueueStats>> + Send;

    /// Dead letters kept in the store, oldest first.
    fn dead_letters(
        &self,
        filter: &DeadFilter,
    ) -> impl Future<Output = Result<Vec<Event>, BrokerError>> + Send;

    /// Removes dead letters from the store and returns them (for replay or drop).
    fn take_dead_letters(
        &self,
        filter: &DeadFilter,
    ) -> impl Future<Output = Result<Vec<Event>, BrokerError>> + Send;

    /// Commits a worker retries while they fail transiently, when this broker's can (see
    /// `RetryableCommit`).
    fn retryable_commit(&self) -> Option<&dyn RetryableCommit> {
        None
    }

    /// Several runs of one worker committed as one, in order, when this broker's commits
    /// cross the network (see `CommitInOrder`).
    fn ordered_commit(&self) -> Option<&dyn CommitInOrder> {
        None
    }

    /// What kind of broker this is, as the console shows it: `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Checks, within about a second, that the broker answers (`/healthz`). An embedded
    /// broker is always up.
    fn health(&self) -> impl Future<Output = BrokerHealth> + Send {
        async { BrokerHealth::Up }
    }

    /// What went wrong with the broker's server so far (state lost, out of memory). An
    /// embedded broker has no server to lose.
    fn incidents(&self) -> BrokerIncidents {
        BrokerIncidents::default()
    }

    /// The article's wire format, when this broker can carry it (see `WireFormat`).
    fn wire(&self) -> Option<&dyn WireFormat> {
        None
    }

    /// Per-topic retention, when this broker keeps events after delivery (see
    /// `TopicRetention`).
    fn retention(&self) -> Option<&dyn TopicRetention> {
        None
    }

    /// Topic placement, when this broker can spread topics over shards (see
    /// `capability::placement::TopicPlacement`).
    fn placement(&self) -> Option<&dyn capability::placement::TopicPlacement> {
        None
    }

    /// The state stores handlers read while they run; `None` when this broker keeps none.
    fn stores(&self) -> Option<Arc<dyn crate::store::StoreRead>> {
        None
    }

    /// Store reads made ahead of a handler run, when this broker's reads cross the
    /// network (see `StoreReadAhead`); handlers of other brokers read through `stores()`.
    fn read_ahead(&self) -> Option<&dyn StoreReadAhead> {
        None
    }

    /// Replies to waiting requests (`POST /query/…`), when this broker carries them (see
    /// `Replies`).
    fn replies(&self) -> Option<&dyn Replies> {
        None
    }

    /// The journey history shared by every process, when this broker keeps one (see
    /// `SharedHistory`).
    fn history(&self) -> Option<&dyn SharedHistory> {
        None
    }

    /// Chain instances kept in the broker and shared by every process's tracker, when
    /// this broker keeps them (see `SharedChains`).
    fn chains(&self) -> Option<&dyn SharedChains> {
        None
    }

    /// A report of every event this broker accepts for delivery, when it can make one
    /// (see `AcceptFeed`).
    fn accept_feed(&self) -> Option<&dyn AcceptFeed> {
        None
    }

    /// The registry of the processes sharing this broker, when several can (see
    /// `Processes`).
    fn processes(&self) -> Option<&dyn Processes> {
        None
    }
}

/// Receives deliveries from one group.
pub trait Consumer: Send + 'static {
    /// The next delivery, waiting as long as it takes.
    ///
    /// # Errors
    /// `BrokerError::UnknownGroup` once the group is removed, or `Closed`.
    fn next(&mut self) -> impl Future<Output = Result<Delivery, BrokerError>> + Send;

    /// The next delivery if one is ready now, without waiting (queues with `poll`).
    fn try_next(&mut self) -> impl Future<Output = Result<Option<Delivery>, BrokerError>> + Send;

    /// Gives back whatever the consumer took ahead and has not handed out (a consumer that
    /// reads in batches), so that a stopping worker leaves nothing pending with it. Called
    /// by a worker as it stops; a consumer dropped without it gives back on its own, as
    /// far as the process lives on.
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The next delivery, waiting as long as it takes, and after it the due deliveries
    /// this consumer holds already, `most` in all at most (a consumer that reads in
    /// batches hands out the rest of its last read, within its share among the consumers
    /// waiting). A worker handles them in a row and commits them together where the
    /// broker offers `CommitInOrder`. One at a time by default.
    ///
    /// # Errors
    /// As `next`.
    fn next_row(
        &mut self,
        most: usize,
    ) -> impl Future<Output = Result<Vec<Delivery>, BrokerError>> + Send {
        let _ = most;
        async { self.next().await.map(|delivery| vec![delivery]) }
    }
}
