//! The Redis broker: the same contract as the memory broker, durable, and shared by any
//! number of `edaflow` processes on one Redis, or on one master of a Redis Cluster.
//!
//! # Key layout (`P` = `edaflow:{NS}:`, braces included)
//!
//! The namespace `NS` sits between literal braces: it is the hash tag of every key, so on a
//! Redis Cluster all the keys of a namespace share one slot, hence one master, and every
//! script below stays atomic there (see `cluster`). `{topic}`, `{group}`… in the table are
//! placeholders, without braces in the key: `edaflow:{orders}:t:orderCreated`.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P topics` | set | every topic ever published (so groups can find their streams) |
//! | `P t:{topic}` | stream | the topic's events (field `e`: CloudEvents JSON) |
//! | `P groups` | hash | group -> `{"patterns":[…],"since":ms}` |
//! | `P gs:{group}` | hash | topic stream -> the id the group's XGROUP started at |
//! | `P g:{group}:inbox` | stream | nacked and inherited entries of the group, read first |
//! | `P g:{group}:wake` | stream | a one-entry stream written to wake blocked consumers |
//! | `P queues` | hash | queue -> capacity (`""`: unbounded) |
//! | `P q:{queue}:sched` | zset | items by due unix ms (member `seq\njson`) |
//! | `P q:{queue}:ready` / `:back` | stream | due items (or due within `take_ahead`: field `d`) / given-back items, group `workers` |
//! | `P deferred` | zset | `publish_later` events by due unix ms (member `seq\ntopic\njson`) |
//! | `P dead` | stream | the dead-letter store |
//! | `P s:{store}` | hash | a state store: key -> JSON text |
//! | `P s:{store}:keys` | zset | the store's keys at score 0, for ordered prefix scans |
//! | channel `P reply:{instance}` | pub/sub | replies to the queries this process waits on |
//! | `P c:{chain}:…` | hashes, zset, lists | tracked chain instances and counters (see `chains`) |
//! | `P h:{correlation}`, `P h:index` | list, zset | the journey history (see `history`) |
//! | `P seq` | counter | orders events across streams and equal due times |
//! | `P epoch` | hash | the epoch marker: `token`, `n` (see `epoch`) |
//! | channel `P tap` | pub/sub | every accepted event and queue item, while a tap listens |
//! | channel `{topic}` | pub/sub | raw payloads of a `pubsub` topic (no prefix; see `wire`) |
//! | `{list}` | list | raw payloads of a queue declared `list = "…"` (no prefix; see `wire`) |
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
//! # Redis Cluster (first step)
//!
//! On a cluster the broker connects to the master owning the namespace's slot; one
//! namespace lives on one master, and several namespaces spread over the masters. A
//! failover or resharding is followed within about a second (`cluster`); meanwhile the
//! broker is unavailable. Spreading one namespace's topics over several slots (an outbox in
//! the handled topic's slot and a forwarder, as in DESIGN.md) is the next step, not done.
//!
//! # What this module must not do
//!
//! Hold a lock across an `.await`, block a tokio worker for longer than one round trip on
//! the loopback (the synchronous `stats`, `scheduled` and `queue_stats` of the trait use a
//! blocking connection), or trim an entry a group has not read.

mod batch;
mod blocking;
mod chains;
mod circuit;
mod clock;
mod cluster;
mod consumer;
mod epoch;
mod held;
mod history;
mod oom;
pub(crate) mod outage;
mod replies;
mod retention;
mod scripts;
mod stored;
mod stores;
mod url;
mod wire;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn, Instrument};

use crate::broker::{
    Backpressure, Broker, BrokerError, BrokerHealth, BrokerIncidents, ChainCounts, ChainSpec,
    ChainStep, DeadFilter, Delivery, Effects, ExpiredChain, GroupSpec, GroupStats, QueueSpec,
    QueueStats, Removed, WireSpec,
};
use crate::event::Event;
use crate::flow::pattern::TopicPattern;
use crate::store::{StoreOp, StoreRead};

pub use consumer::RedisConsumer;
pub use retention::TrimReport;
pub use url::{BrokerUrl, RedisUrl};

/// Settings of the Redis broker.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Key namespace: keys are `edaflow:{namespace}:…`, braces included (the hash tag), so
    /// it must be non-empty and hold no brace.
    pub namespace: String,
    /// Entries a group may have waiting on one topic stream before `publish` pushes back
    /// (`None`: unbounded).
    pub group_capacity: Option<usize>,
    /// How long an entry stays pending with a consumer before another may claim it.
    pub claim_idle: Duration,
    /// Longest a consumer blocks in one read before it looks again (claims, removals).
    pub block: Duration,
    /// Due items moved per script run.
    pub mover_batch: usize,
    /// How long before its due time a queue item may go to an idle worker, which holds it
    /// and starts it on time (see "Taking ahead"). Zero turns it off; it is capped at a
    /// quarter of `claim_idle`, and queues with `poll` or a `capacity` never take ahead.
    pub take_ahead: Duration,
    /// Most queue items not yet due one subscriber's reader holds (see "Taking ahead"):
    /// bounds the memory a burst taken ahead uses, about 1 KiB an item.
    pub hold_ahead: usize,
    /// Most entries a consumer takes in one script run, when at least that many wait
    /// (see "Batching"; 1 takes one at a time).
    pub prefetch: usize,
    /// Most publishes, commits and enqueues carried by one script run (1: one each).
    pub batch: usize,
    /// How long a command may wait for its reply before it fails (and is retried). A
    /// command that timed out may still have run (see "Delivery guarantee").
    pub response_timeout: Duration,
    /// For `rediss://`: trust this CA (a PEM file) instead of the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// How long events are kept on a topic stream that no group reads (no consumer group on
    /// it, no declared group matching the topic) and that has no `retention` of its own
    /// (see `retention`); `None` keeps them for ever.
    pub unread_retention: Option<Duration>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            namespace: "default".to_owned(),
            group_capacity: Some(100_000),
            claim_idle: Duration::from_secs(30),
            block: Duration::from_secs(1),
            mover_batch: 100,
            take_ahead: Duration::from_millis(500),
            hold_ahead: 50_000,
            prefetch: 16,
            batch: 256,
            response_timeout: Duration::from_secs(5),
            tls_ca: None,
            unread_retention: Some(Duration::from_secs(60)),
        }
    }
}

/// The circuit breaker's state (see `RedisBroker::circuit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitState {
    /// Commands are refused at once until a probe gets an answer.
    pub open: bool,
    /// Times it opened so far.
    pub opened: u64,
    /// Commands refused at once so far (none of them tried to reach Redis).
    pub refused: u64,
}

/// The Redis broker. Clones share one set of connections.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    /// The server all connections go to (on a cluster: the master of the namespace's slot).
    node: Arc<cluster::Node>,
    url: RedisUrl,
    /// For the synchronous parts of the trait (`stats`, `queue_stats`, `scheduled`).
    sync: Mutex<Option<redis::Connection>>,
    prefix: String,
    /// `P t:`, what every topic stream's key starts with.
    topic_prefix: String,
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
    /// Queues whose mover runs in this process (see `run_mover`).
    queue_movers: Mutex<HashSet<String>>,
    /// Unique per broker instance: consumer names are `{instance}-{n}`, and replies to
    /// this process's queries come on `P reply:{instance}`.
    instance: String,
    /// Queries this process waits on (see `replies`).
    waiting: Arc<replies::Waiting>,
    /// Reads of the state stores (hashes `P s:{store}`).
    stores: Arc<stores::RedisStores>,
    /// Per-topic retention and the trimmer's state (see `retention`).
    retention: Arc<retention::Retention>,
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

/// Maps a Redis failure to the broker boundary: Redis out of memory (`-OOM`, see `oom`) is
/// `OutOfMemory`, anything else `Unavailable`.
fn unavailable(source: redis::RedisError) -> BrokerError {
    if source.code() == Some("OOM") {
        return BrokerError::OutOfMemory;
    }
    BrokerError::Unavailable { source }
}

/// The client for `secret`, one seed of `url`: plain, or TLS verified against the system's
/// roots or `ca` (a PEM file). The redis crate's own URL errors are not shown, since they
/// could quote the URL.
fn client_for(
    url: &RedisUrl,
    secret: &str,
    ca: Option<&std::path::Path>,
) -> Result<redis::Client, BrokerError> {
    let bad_url = || BrokerError::BadUrl {
        url: url.to_string(),
    };
    if !url.is_tls() {
        if let Some(ca) = ca {
            warn!(ca = %ca.display(), "a Redis CA is set but the broker URL is not rediss://; the CA is not used");
        }
        return redis::Client::open(secret).map_err(|_| bad_url());
    }
    // One crypto provider for rustls, chosen here rather than by feature unification
    // (fails harmlessly when one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(ca) = ca else {
        return redis::Client::open(secret).map_err(|_| bad_url());
    };
    let tls_ca = |detail: String| BrokerError::TlsCa {
        path: ca.display().to_string(),
        detail,
    };
    let pem = std::fs::read(ca).map_err(|e| tls_ca(e.to_string()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(tls_ca("no PEM certificate in it".to_owned()));
    }
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    };
    redis::Client::build_with_tls(secret, certificates).map_err(|e| match e.kind() {
        redis::ErrorKind::InvalidClientConfig => bad_url(),
        _ => tls_ca(e.to_string()),
    })
}

/// Bulk/simple string or integer reply as text.
fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        Value::Okay => "OK".to_owned(),
        _ => String::new(),
    }
}

fn int(value: &Value) -> i64 {
    match value {
        Value::Int(n) => *n,
        other => text(other).parse().unwrap_or(0),
    }
}

fn items(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) => items,
        _ => &[],
    }
}

/// A delay in whole ms, refusing what a Lua number cannot add exactly.
fn delay_ms(delay: Duration) -> Result<u64, BrokerError> {
    const MAX_MS: u128 = 1 << 52;
    let ms = delay.as_millis();
    if ms > MAX_MS {
        return Err(BrokerError::DelayTooLong { delay_ms: ms });
    }
    // Bounded above by 2^52.
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct GroupRecord {
    patterns: Vec<String>,
    since: u64,
}

impl RedisBroker {
    /// Connects and starts the task that publishes deferred events when they fall due (it
    /// ends when the last clone of the broker is dropped). Must be called inside a tokio
    /// runtime. It does not wait for Redis: a server that is not there fails at once.
    ///
    /// # Errors
    /// `Connect` when Redis cannot be reached or refuses the password (the message never
    /// holds the password), `TlsCa` for an unusable CA file, `BadNamespace`, `BadUrl`, and
    /// `Cluster` when a cluster has no master for the namespace's slot.
    pub async fn connect(
        url: &RedisUrl,
        options: RedisOptions,
    ) -> Result<RedisBroker, BrokerError> {
        let prefix = cluster::prefix(&options.namespace)?;
        let seeds = url
            .seeds()
            .iter()
            .map(|seed| client_for(url, seed, options.tls_ca.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let node = cluster::Node::connect(url, seeds, &prefix, options.response_timeout)
            .await
            .map_err(|e| match e {
                BrokerError::Unavailable { source } => BrokerError::Connect {
                    url: url.to_string(),
                    reason: source.to_string(),
                },
                other => other,
            })?;
        let instance = format!("{}-{}", std::process::id(), &crate::event::new_id()[16..]);
        let waiting = Arc::new(replies::Waiting::default());
        replies::listen(
            node.clone(),
            replies::channel(&prefix, &instance),
            Arc::downgrade(&waiting),
        )
        .await
        .map_err(unavailable)?;
        let batcher = batch::Batcher::start(node.clone(), prefix.clone(), options.batch);
        let acks = batch::Acks::start(node.clone(), options.batch);
        let inner = Arc::new(Inner {
            batcher,
            acks,
            stores: Arc::new(stores::RedisStores::new(node.clone(), prefix.clone())),
            node,
            url: url.clone(),
            sync: Mutex::new(None),
            topic_prefix: format!("{prefix}t:"),
            prefix,
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
            .map_err(unavailable)?;
        if let [s, us] = time[..] {
            inner.clock.learn(s * 1000 + us / 1000);
        }
        let broker = RedisBroker { inner };
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
        tokio::spawn(run_mover(Arc::downgrade(&inner), Moving::Deferred).instrument(span));
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
        Ok(RedisBroker { inner })
    }

    /// The URL (password hidden when displayed).
    pub fn url(&self) -> &RedisUrl {
        &self.inner.url
    }

    /// The key prefix, `edaflow:{namespace}:` (braces included).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// On a Redis Cluster, the namespace's slot and the master serving it now.
    pub fn cluster_slot(&self) -> Option<(u16, String)> {
        self.inner.node.cluster_slot()
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.node.conn()
    }

    /// Notes the outcome of a command for the outage log, the circuit, the out-of-memory
    /// episode and `/healthz`: an unreachable Redis is logged once per outage, and Redis
    /// out of memory once per episode, not once per failed command.
    pub(crate) fn track<T>(
        &self,
        what: &str,
        result: Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        match &result {
            Ok(_) => {
                self.inner.circuit.answered();
                self.inner.outage.recovered();
            }
            Err(e @ BrokerError::Unavailable { source }) => {
                self.inner.outage.failed(what, e);
                if self.inner.circuit.failed(source) == circuit::Failed::Opened {
                    self.start_probe();
                }
            }
            Err(BrokerError::OutOfMemory) => {
                self.inner.circuit.answered();
                self.inner.outage.recovered();
                self.inner.oom.refused(what);
            }
            Err(_) => {}
        }
        result
    }

    /// Runs a command through the circuit: refused at once while it is open (see
    /// `circuit`), else run and its outcome noted (`track`).
    async fn guarded<T>(
        &self,
        what: &str,
        command: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        self.inner.circuit.admit()?;
        self.track(what, command.await)
    }

    /// A write that landed: ends an out-of-memory episode once writes settle.
    fn wrote(&self) {
        self.inner.oom.wrote();
    }

    /// Starts the probe that closes the circuit once Redis answers (one at a time).
    fn start_probe(&self) {
        if !self.inner.circuit.start_probing() {
            return;
        }
        let span = tracing::info_span!("redis_probe", component = "broker");
        // Tracked by ownership: it holds a Weak and ends once the broker is gone or the
        // circuit is closed.
        tokio::spawn(run_probe(Arc::downgrade(&self.inner)).instrument(span));
    }

    /// Whether the circuit is open, how many times it opened, and how many commands it
    /// refused at once (for tests and tools: see `circuit`).
    pub fn circuit(&self) -> CircuitState {
        let circuit = &self.inner.circuit;
        CircuitState {
            open: circuit.is_open(),
            opened: circuit.opened(),
            refused: circuit.refused(),
        }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.inner.prefix)
    }

    fn topic_key(&self, topic: &str) -> String {
        format!("{}{topic}", self.inner.topic_prefix)
    }

    /// `P t:`, what every topic stream's key starts with.
    fn topic_prefix(&self) -> &str {
        &self.inner.topic_prefix
    }

    fn inbox_key(&self, group: &str) -> String {
        format!("{}g:{group}:inbox", self.inner.prefix)
    }

    fn queue_key(&self, queue: &str, part: &str) -> String {
        format!("{}q:{queue}:{part}", self.inner.prefix)
    }

    /// A connection of its own, for a blocking read (which would hold up every other
    /// command on a shared one).
    async fn dedicated(&self) -> Result<MultiplexedConnection, BrokerError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(
                self.inner.options.block + self.inner.options.response_timeout,
            ));
        self.inner
            .node
            .client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable)
    }

    /// Runs `f` on the blocking connection, reconnecting once if it is broken (refused at
    /// once while the circuit is open).
    fn with_sync<T>(
        &self,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, BrokerError> {
        self.inner.circuit.admit()?;
        let mut guard = self.inner.sync.lock().unwrap_or_else(|e| e.into_inner());
        for attempt in 0..2 {
            if guard.is_none() {
                let conn = self
                    .inner
                    .node
                    .client()
                    .get_connection_with_timeout(Duration::from_secs(1))
                    .map_err(unavailable)?;
                conn.set_read_timeout(Some(self.inner.options.response_timeout))
                    .map_err(unavailable)?;
                *guard = Some(conn);
            }
            let Some(conn) = guard.as_mut() else { break };
            match f(conn) {
                Ok(value) => return Ok(value),
                Err(e) if attempt == 0 && (e.is_io_error() || e.is_connection_dropped()) => {
                    *guard = None;
                }
                Err(e) => {
                    *guard = None;
                    return Err(unavailable(e));
                }
            }
        }
        Err(BrokerError::Closed)
    }

    /// Server time in unix ms.
    async fn server_ms(&self) -> Result<u64, BrokerError> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(secs * 1000 + micros / 1000)
    }

    async fn group_records(&self) -> Result<Vec<(String, GroupRecord)>, BrokerError> {
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key("groups"))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(all
            .into_iter()
            .filter_map(|(name, json)| Some((name, serde_json::from_str(&json).ok()?)))
            .collect())
    }

    async fn ensure(&self, group: &str, start: &str, keys: &[String]) -> Result<(), BrokerError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut invocation = scripts::ENSURE.prepare_invoke();
        invocation.arg(&self.inner.prefix).arg(group).arg(start);
        for key in keys {
            invocation.arg(key);
        }
        invocation
            .invoke_async::<Value>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Registers topics this process has not seen yet and creates, on their streams, the
    /// XGROUP of every group whose patterns match (starting at the group's declaration
    /// time, so nothing published after it is missed).
    async fn ensure_topics<'a>(
        &self,
        topics: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), BrokerError> {
        let new: Vec<&str> = {
            let known = self
                .inner
                .known_topics
                .read()
                .unwrap_or_else(|e| e.into_inner());
            topics.into_iter().filter(|t| !known.contains(*t)).collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        redis::cmd("SADD")
            .arg(self.key("topics"))
            .arg(&new)
            .query_async::<Value>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        for (group, record) in self.group_records().await? {
            let patterns = parse_patterns(&record.patterns);
            let keys: Vec<String> = new
                .iter()
                .filter(|t| patterns.iter().any(|p| p.matches(t)))
                .map(|t| self.topic_key(t))
                .collect();
            self.ensure(&group, &format!("{}-0", record.since), &keys)
                .await?;
        }
        let mut known = self
            .inner
            .known_topics
            .write()
            .unwrap_or_else(|e| e.into_inner());
        known.extend(new.into_iter().map(str::to_owned));
        Ok(())
    }

    /// Creates the group's XGROUP on streams of matching topics it is not on yet (heals a
    /// topic registered by another process while this group was being declared).
    pub(crate) async fn refresh_group(&self, group: &str) -> Result<(), BrokerError> {
        let mut conn = self.conn();
        let record: Option<String> = redis::cmd("HGET")
            .arg(self.key("groups"))
            .arg(group)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let Some(record) = record.and_then(|r| serde_json::from_str::<GroupRecord>(&r).ok()) else {
            return Ok(());
        };
        let topics: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("topics"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let on: HashSet<String> = redis::cmd("HKEYS")
            .arg(self.key(&format!("gs:{group}")))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let patterns = parse_patterns(&record.patterns);
        let missing: Vec<String> = topics
            .iter()
            .filter(|t| patterns.iter().any(|p| p.matches(t)))
            .map(|t| self.topic_key(t))
            .filter(|k| !on.contains(k))
            .collect();
        self.ensure(group, &format!("{}-0", record.since), &missing)
            .await
    }

    /// Hands what waits for `group` on `key` to `successor` (see `scripts::HANDOFF`) and
    /// says how many entries moved and how many were dropped.
    async fn handoff(
        &self,
        group: &str,
        key: &str,
        successor: Option<&str>,
    ) -> Result<Removed, BrokerError> {
        let itself = successor == Some(group);
        let (moved, dropped): (u64, u64) = scripts::HANDOFF
            .prepare_invoke()
            .arg(&self.inner.prefix)
            .arg(group)
            .arg(key)
            .arg(successor.unwrap_or(""))
            .arg(if itself { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(Removed { moved, dropped })
    }

    async fn wake(&self, key: String) -> Result<(), BrokerError> {
        redis::cmd("XADD")
            .arg(key)
            .arg("MAXLEN")
            .arg(1)
            .arg("*")
            .arg("w")
            .arg(1)
            .query_async::<Value>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
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
        let acked = redis::cmd("XACK")
            .arg(key)
            .arg(group)
            .arg(id)
            .query_async(&mut self.conn())
            .await;
        let acked = match acked {
            // The stream or its group is gone (removed, or Redis lost its state): nothing
            // is pending any more, as when the commit script finds the entry settled.
            Err(e) if e.code() == Some("NOGROUP") => Ok(0),
            other => other.map_err(unavailable),
        };
        match acked {
            Ok(0) => {
                // As the script's guard: settled already, by a lost-reply retry or another
                // consumer. An ack applies nothing twice.
                debug!(entry = id, "commit skipped: the entry was settled already");
                Some(Ok(()))
            }
            Ok(_) => Some(Ok(())),
            Err(e) => Some(Err(e)),
        }
    }

    /// Runs the commit script: effects, then the ack of `ack` (kind, key, group, id). A
    /// queue this process declared that Redis does not know means Redis lost its state:
    /// it is healed (see `epoch`) and the commit tried once more.
    async fn run_commit(&self, ack: [&str; 4], effects: &Effects) -> Result<(), BrokerError> {
        let heals = self.heals();
        match self.run_commit_once(ack, effects).await {
            Err(BrokerError::UnknownQueue { queue }) if self.declared_queue(&queue) => {
                if self.state_check(heals).await? {
                    self.run_commit_once(ack, effects).await
                } else {
                    Err(BrokerError::UnknownQueue { queue })
                }
            }
            other => other,
        }
    }

    /// Whether this process declared `queue` in Redis (not a plain list).
    fn declared_queue(&self, queue: &str) -> bool {
        self.inner
            .queue_specs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(queue)
    }

    async fn run_commit_once(&self, ack: [&str; 4], effects: &Effects) -> Result<(), BrokerError> {
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
        if let Some(done) = self.ack_only(ack, effects).await {
            return done;
        }
        let topics = effects
            .publish
            .iter()
            .chain(effects.deferred.iter().map(|(e, _)| e))
            .chain(effects.dead_letter.iter())
            .map(|e| e.topic.as_str());
        self.ensure_topics(topics).await?;
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
        // A reply to a query of this process is handed over here once the commit landed,
        // not published (see `replies`).
        let mut local_reply = None;
        match effects
            .reply
            .as_ref()
            .and_then(|r| Some((replies::split(&r.to)?, r)))
        {
            Some(((instance, id), r)) if instance == self.inner.instance => {
                local_reply = Some((id, &r.result));
                op.text("").text("");
            }
            Some((_, r)) => match replies::route(&self.inner.prefix, &r.to) {
                Some((channel, id)) => {
                    op.owned(channel).owned(replies::payload(&id, &r.result));
                }
                None => {
                    op.text("").text("");
                }
            },
            None => {
                op.text("").text("");
            }
        }
        let reply = self.inner.batcher.run(op).await?;
        let reply = items(&reply);
        let landed = matches!(reply.first().map(text).as_deref(), Some("ok" | "settled"));
        if let (true, Some((id, answer))) = (landed, local_reply) {
            self.inner.waiting.answer(id, answer.clone());
        }
        if landed {
            self.wrote();
        }
        match reply.first().map(text).as_deref() {
            Some("ok") => Ok(()),
            Some("oom") => Err(BrokerError::OutOfMemory),
            // The entry is no longer pending: this commit ran already (its reply was lost
            // to a timeout) or another consumer settled the entry. Nothing applied twice.
            Some("settled") => {
                debug!(
                    entry = ack[3],
                    "commit skipped: the entry was settled already"
                );
                Ok(())
            }
            Some("unknown_queue") => Err(BrokerError::UnknownQueue {
                queue: reply.get(1).map(text).unwrap_or_default(),
            }),
            Some("queue_full") => Err(BrokerError::QueueFull {
                queue: reply.get(1).map(text).unwrap_or_default(),
                capacity: reply
                    .get(2)
                    .map(text)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0),
            }),
            other => {
                warn!(reply = ?other, "unexpected reply from the commit script");
                Ok(())
            }
        }
    }

    /// Where a delivery lives: (kind, stream key, XGROUP name, entry id, origin key, origin id).
    fn position(&self, delivery: &Delivery) -> Option<Position> {
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
                stream.map_or_else(|| self.topic_key(&delivery.event.topic), str::to_owned),
                delivery.group.to_string(),
            ),
            "i" => (self.inbox_key(&delivery.group), delivery.group.to_string()),
            "r" => (
                self.queue_key(&delivery.group, "ready"),
                "workers".to_owned(),
            ),
            "b" => (
                self.queue_key(&delivery.group, "back"),
                "workers".to_owned(),
            ),
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

    fn knows_group(&self, group: &str) -> Result<bool, BrokerError> {
        if self
            .inner
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(group)
        {
            return Ok(true);
        }
        let key = self.key("groups");
        self.with_sync(|conn| redis::cmd("HEXISTS").arg(&key).arg(group).query(conn))
    }

    /// `take_ahead` in ms, capped at a quarter of `claim_idle` (an item held until its due
    /// time must not look abandoned meanwhile).
    fn take_ahead_ms(&self) -> u64 {
        let options = &self.inner.options;
        let ahead = options.take_ahead.min(options.claim_idle / 4);
        u64::try_from(ahead.as_millis()).unwrap_or(u64::MAX)
    }

    /// How far ahead of their due time this queue's items may be taken, in ms.
    fn queue_ahead(&self, queue: &str) -> u64 {
        self.inner
            .queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
            .copied()
            .unwrap_or(0)
    }

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
        let key = self.key("queues");
        self.with_sync(|conn| redis::cmd("HEXISTS").arg(&key).arg(queue).query(conn))
    }

    fn new_consumer_name(&self) -> String {
        let n = self.inner.consumers.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.inner.instance)
    }

    async fn read_dead(&self) -> Result<Vec<(String, Event)>, BrokerError> {
        let entries: Value = redis::cmd("XRANGE")
            .arg(self.key("dead"))
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        for entry in items(&entries) {
            let parts = items(entry);
            let (Some(id), Some(fields)) = (parts.first(), parts.get(1)) else {
                continue;
            };
            let fields = items(fields);
            let json = fields
                .chunks(2)
                .find(|kv| kv.first().map(text).as_deref() == Some("e"))
                .and_then(|kv| kv.get(1))
                .map(text)
                .unwrap_or_default();
            match serde_json::from_str::<Event>(&json) {
                Ok(event) => out.push((text(id), event)),
                Err(e) => warn!(id = %text(id), error = %e, "unreadable dead letter skipped"),
            }
        }
        Ok(out)
    }
}

struct Position {
    kind: String,
    key: String,
    xgroup: String,
    id: String,
    origin_key: String,
    origin_id: String,
    /// A queue item taken ahead: its due time (Redis ms); empty otherwise.
    due: String,
}

fn parse_patterns(texts: &[String]) -> Vec<TopicPattern> {
    texts
        .iter()
        .filter_map(|t| TopicPattern::parse(t).ok())
        .collect()
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
        "undecodable delayed event: a stored member that is not `seq\\ntopic\\njson`".into(),
    );
    dead
}

/// What a mover moves as it falls due: the namespace's deferred events (published to their
/// topics), or one queue's items (moved to its ready stream, so that the queue's consumers
/// can block in `XREADGROUP` there, see `consumer`, rather than each run the take script).
enum Moving {
    Deferred,
    Queue(String),
}

/// Moves what falls due, in batches. Any number of processes may run a mover for the same
/// thing: the script moves each item once. It sleeps until the next due time, or until a
/// commit scheduling an earlier item writes the wake stream. The deferred mover runs as long
/// as the broker; a queue's runs in each process that declared the queue, and ends when the
/// queue is removed (or the broker dropped).
async fn run_mover(weak: Weak<Inner>, moving: Moving) {
    let what = match &moving {
        Moving::Deferred => "deferred mover",
        Moving::Queue(_) => "queue mover",
    };
    let mut conn: Option<blocking::BlockingConn> = None;
    let mut backoff = outage::BACKOFF_START;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let broker = RedisBroker { inner };
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
        let step = async {
            let batch = broker.inner.options.mover_batch;
            let reply: Value = match &moving {
                Moving::Deferred => {
                    scripts::MOVE_DEFERRED
                        .prepare_invoke()
                        .arg(&broker.inner.prefix)
                        .arg(batch)
                        .arg(undecodable_deferred().to_stored_json())
                        .invoke_async(&mut broker.conn())
                        .await
                }
                Moving::Queue(queue) => {
                    scripts::MOVE_QUEUE
                        .prepare_invoke()
                        .arg(&broker.inner.prefix)
                        .arg(queue)
                        .arg(batch)
                        .arg(broker.queue_ahead(queue))
                        .invoke_async(&mut broker.conn())
                        .await
                }
            }
            .map_err(unavailable)?;
            let reply = items(&reply).to_vec();
            if reply.first().map(text).as_deref() == Some("gone") {
                return Ok(None);
            }
            let moved = reply.first().map(int).unwrap_or(0);
            let next_due = reply.get(1).map(text).and_then(|t| t.parse::<u64>().ok());
            let wake_id = reply.get(2).map(text).unwrap_or_else(|| "0-0".to_owned());
            if let Some(now) = reply.get(3).map(text).and_then(|t| t.parse::<i64>().ok()) {
                broker.inner.clock.learn(now);
            }
            if conn.is_none() {
                conn = Some(blocking::BlockingConn::open(&broker).await?);
            }
            Ok::<_, BrokerError>(Some((moved, next_due, wake_id)))
        };
        let (moved, next_due, wake_id) = match broker.track(what, step.await) {
            Ok(Some(found)) => {
                backoff = outage::BACKOFF_START;
                found
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
        if moved >= broker.inner.options.mover_batch as i64 {
            continue;
        }
        let block = broker.inner.options.block;
        let wake_key = match &moving {
            Moving::Deferred => broker.key("deferred:wake"),
            Moving::Queue(queue) => broker.queue_key(queue, "wake"),
        };
        let wait = next_due.map_or(block, |ms| Duration::from_millis(ms).min(block));
        if wait.is_zero() {
            continue;
        }
        let Some(c) = conn.as_mut() else { continue };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("BLOCK")
            .arg(u64::try_from(wait.as_millis()).unwrap_or(1000))
            .arg("STREAMS")
            .arg(&wake_key)
            .arg(&wake_id);
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

/// The circuit's probe (see `circuit`): tries Redis every `PROBE_EVERY` until it answers,
/// then closes the circuit and has the watcher check at once whether Redis kept its state.
async fn run_probe(weak: Weak<Inner>) {
    loop {
        tokio::time::sleep(circuit::PROBE_EVERY).await;
        let Some(inner) = weak.upgrade() else { return };
        let broker = RedisBroker { inner };
        let circuit = &broker.inner.circuit;
        if !circuit.is_open() {
            circuit.stop_probing();
            return;
        }
        if broker.probe().await {
            // Stopped first: a failure once closed opens it again with a probe of its own.
            circuit.stop_probing();
            circuit.close();
            broker.inner.epoch.check_now.notify_one();
            return;
        }
    }
}

impl RedisBroker {
    /// One `PING` on a connection of its own, within a short timeout: does Redis answer?
    async fn probe(&self) -> bool {
        let wait = self
            .inner
            .options
            .response_timeout
            .min(Duration::from_secs(1));
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(wait))
            .set_response_timeout(Some(wait));
        let connected = self
            .inner
            .node
            .client()
            .get_multiplexed_async_connection_with_config(&config)
            .await;
        match connected {
            Ok(mut conn) => redis::cmd("PING")
                .query_async::<Value>(&mut conn)
                .await
                .is_ok(),
            Err(e) => {
                debug!(error = %e, "probe: redis still unreachable");
                false
            }
        }
    }

    /// Starts the queue's mover in this process, unless it runs already.
    fn start_queue_mover(&self, queue: &str) {
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
                run_mover(Arc::downgrade(&self.inner), Moving::Queue(queue.to_owned()))
                    .instrument(span),
            );
        }
    }

    fn forget_queue_mover(&self, queue: &str) {
        self.inner
            .queue_movers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(queue);
    }
}

impl Broker for RedisBroker {
    type Consumer = RedisConsumer;

    async fn declare_group(&self, spec: &GroupSpec) -> Result<(), BrokerError> {
        self.guarded("declare", async {
            let now = self.server_ms().await?;
            let mut conn = self.conn();
            let groups_key = self.key("groups");
            let existing: Option<String> = redis::cmd("HGET")
                .arg(&groups_key)
                .arg(&spec.name)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let existing: Option<GroupRecord> =
                existing.and_then(|json| serde_json::from_str(&json).ok());
            let patterns: Vec<String> = spec.patterns.iter().map(|p| p.to_string()).collect();
            let changed = existing.as_ref().is_some_and(|r| r.patterns != patterns);
            let since = match &existing {
                Some(record) if !changed => record.since,
                _ => now,
            };
            let record = serde_json::to_string(&GroupRecord {
                patterns: patterns.clone(),
                since,
            })
            .unwrap_or_default();
            redis::cmd("HSET")
                .arg(&groups_key)
                .arg(&spec.name)
                .arg(record)
                .query_async::<Value>(&mut conn)
                .await
                .map_err(unavailable)?;
            // BUSYGROUP when it exists already: fine.
            let _ = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(self.inbox_key(&spec.name))
                .arg(&spec.name)
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<Value>(&mut conn)
                .await;
            if changed {
                // Streams the group no longer reads: what waits there moves to its inbox.
                let on: Vec<String> = redis::cmd("HKEYS")
                    .arg(self.key(&format!("gs:{}", spec.name)))
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                let topic_prefix = self.topic_key("");
                for key in on {
                    let topic = key.strip_prefix(&topic_prefix).unwrap_or("");
                    if !spec.patterns.iter().any(|p| p.matches(topic)) {
                        self.handoff(&spec.name, &key, Some(&spec.name)).await?;
                    }
                }
            }
            let topics: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.key("topics"))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let keys: Vec<String> = topics
                .iter()
                .filter(|t| spec.patterns.iter().any(|p| p.matches(t)))
                .map(|t| self.topic_key(t))
                .collect();
            self.ensure(&spec.name, "$", &keys).await?;
            self.inner
                .groups
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(spec.name.clone(), spec.patterns.clone());
            self.mark_epoch(false).await
        })
        .await
    }

    async fn remove_group(
        &self,
        name: &str,
        successor: Option<&str>,
    ) -> Result<Removed, BrokerError> {
        self.guarded("remove", async {
            self.inner
                .groups
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
            let mut conn = self.conn();
            redis::cmd("HDEL")
                .arg(self.key("groups"))
                .arg(name)
                .query_async::<Value>(&mut conn)
                .await
                .map_err(unavailable)?;
            let successor = match successor {
                Some(s) if s != name => {
                    let exists: bool = redis::cmd("HEXISTS")
                        .arg(self.key("groups"))
                        .arg(s)
                        .query_async(&mut conn)
                        .await
                        .map_err(unavailable)?;
                    exists.then_some(s)
                }
                _ => None,
            };
            let streams: Vec<String> = redis::cmd("HKEYS")
                .arg(self.key(&format!("gs:{name}")))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let mut removed = self.handoff(name, &self.inbox_key(name), successor).await?;
            for key in streams {
                let more = self.handoff(name, &key, successor).await?;
                removed.moved += more.moved;
                removed.dropped += more.dropped;
            }
            redis::cmd("DEL")
                .arg(self.key(&format!("gs:{name}")))
                .arg(self.inbox_key(name))
                .query_async::<Value>(&mut conn)
                .await
                .map_err(unavailable)?;
            self.wake(self.key(&format!("g:{name}:wake"))).await?;
            Ok(removed)
        })
        .await
    }

    async fn publish(&self, event: Event, mode: Backpressure) -> Result<(), BrokerError> {
        self.guarded("ingest", async {
            if self.inner.wire.is_pubsub(&event.topic) {
                let effects = Effects {
                    publish: vec![event],
                    ..Effects::default()
                };
                wire::send_effects(self, &effects).await?;
                return Ok(());
            }
            self.ensure_topics([event.topic.as_str()]).await?;
            let json = event.to_stored_json();
            let capacity = self
                .inner
                .options
                .group_capacity
                .map(|c| c.to_string())
                .unwrap_or_default();
            let mut backoff = Duration::from_millis(1);
            loop {
                let mut op = batch::OpArgs::new("p");
                op.text(&event.topic).text(&json).text(&capacity);
                let reply = self.inner.batcher.run(op).await?;
                let reply = items(&reply);
                match reply.first().map(text).as_deref() {
                    Some("full") => {}
                    Some("oom") => return Err(BrokerError::OutOfMemory),
                    _ => {
                        self.wrote();
                        return Ok(());
                    }
                }
                let group = reply.get(1).map(text).unwrap_or_default();
                if mode == Backpressure::Reject {
                    return Err(BrokerError::Full { group });
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
        })
        .await
    }

    async fn publish_later(&self, event: Event, delay: Duration) -> Result<(), BrokerError> {
        self.guarded("ingest", async {
            if delay.is_zero() {
                return self.publish(event, Backpressure::Wait).await;
            }
            let effects = Effects {
                deferred: vec![(event, delay)],
                ..Effects::default()
            };
            self.run_commit(["-", "", "", ""], &effects).await
        })
        .await
    }

    fn consumer(&self, group: &str) -> Result<RedisConsumer, BrokerError> {
        Ok(self.consumers(group, 1)?.swap_remove(0))
    }

    /// The workers of one subscriber share one reader (see `consumer`'s module docs): one
    /// blocking read fetches an entry for each worker waiting, where one reader per worker
    /// would make Redis wake and answer each of them apart.
    fn consumers(&self, group: &str, n: usize) -> Result<Vec<RedisConsumer>, BrokerError> {
        let n = n.max(1);
        if !self.knows_group(group)? {
            return Err(BrokerError::UnknownGroup {
                group: group.to_owned(),
            });
        }
        let patterns = self
            .inner
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(group)
            .cloned();
        if let Some(patterns) = patterns {
            if self.inner.wire.group_is_pubsub(group, &patterns) {
                return Ok((0..n)
                    .map(|_| wire::group_consumer(self, group, patterns.clone()))
                    .collect());
            }
        }
        Ok(consumer::spawn(
            self.clone(),
            consumer::Source::Group(group.into()),
            self.new_consumer_name(),
            n,
        ))
    }

    async fn commit(&self, delivery: Delivery, effects: Effects) -> Result<(), BrokerError> {
        self.commit_retryable(&delivery, &effects).await
    }

    async fn commit_retryable(
        &self,
        delivery: &Delivery,
        effects: &Effects,
    ) -> Result<(), BrokerError> {
        self.guarded("commit", async {
            match self.position(delivery) {
                Some(at) => {
                    self.run_commit([&at.kind, &at.key, &at.xgroup, &at.id], effects)
                        .await
                }
                None => self.run_commit(["-", "", "", ""], effects).await,
            }
        })
        .await
    }

    async fn nack(&self, delivery: Delivery) -> Result<(), BrokerError> {
        self.guarded("nack", async {
            if let Some(done) = wire::nack(self, &delivery).await {
                return done;
            }
            let Some(at) = self.position(&delivery) else {
                return Ok(());
            };
            let dest = if delivery.from_queue {
                self.queue_key(&delivery.group, "back")
            } else {
                self.inbox_key(&delivery.group)
            };
            let (origin_key, origin_id) = match at.kind.as_str() {
                "t" => (at.key.clone(), at.id.clone()),
                _ => (at.origin_key.clone(), at.origin_id.clone()),
            };
            scripts::NACK
                .prepare_invoke()
                .arg(&self.inner.prefix)
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
                .invoke_async::<Value>(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn health(&self) -> BrokerHealth {
        let down_for = || {
            self.inner
                .outage
                .down()
                .map_or(0, |(d, _)| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        if self.inner.circuit.is_open() {
            let reason = self
                .inner
                .outage
                .down()
                .map_or_else(|| "no answer".to_owned(), |(_, reason)| reason);
            return BrokerHealth::Down {
                reason: format!(
                    "redis unreachable: {reason} (commands are refused at once; a probe tries Redis every {} ms)",
                    circuit::PROBE_EVERY.as_millis()
                ),
                for_ms: down_for(),
            };
        }
        let wait = self
            .inner
            .options
            .response_timeout
            .min(Duration::from_secs(1));
        let mut conn = self.conn();
        let ping = redis::cmd("PING");
        let result = match tokio::time::timeout(wait, ping.query_async::<Value>(&mut conn)).await {
            Ok(answered) => answered.map(|_| ()).map_err(unavailable),
            Err(_) => Err(unavailable(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer to PING within {} ms", wait.as_millis()),
            )))),
        };
        match self.track("health check", result) {
            Ok(()) => match self.inner.oom.current() {
                Some(lasted) => BrokerHealth::Degraded {
                    code: "out_of_memory",
                    reason: "redis is out of memory (maxmemory): it refuses writes, so ingest answers 503 and commits wait".to_owned(),
                    for_ms: u64::try_from(lasted.as_millis()).unwrap_or(u64::MAX),
                },
                None => BrokerHealth::Up,
            },
            Err(e) => BrokerHealth::Down {
                reason: format!("redis unreachable: {}", outage::describe(&e)),
                for_ms: down_for(),
            },
        }
    }

    fn incidents(&self) -> BrokerIncidents {
        BrokerIncidents {
            state_lost: self.inner.epoch.heals(),
            last_state_loss: self.inner.epoch.last(),
            out_of_memory_episodes: self.inner.oom.episodes(),
        }
    }

    fn tap_within(
        &self,
        pattern: TopicPattern,
        buffer: usize,
        bytes: usize,
    ) -> mpsc::Receiver<Arc<Event>> {
        consumer::tap(self, pattern, buffer, bytes)
    }

    fn stats(&self) -> Vec<GroupStats> {
        let prefix = self.inner.prefix.clone();
        let reply = self.with_sync(|conn| {
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
        let capacity = self.inner.options.group_capacity.unwrap_or(usize::MAX);
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

    fn scheduled(&self) -> usize {
        let key = self.key("deferred");
        match self.with_sync(|conn| redis::cmd("ZCARD").arg(&key).query::<usize>(conn)) {
            Ok(n) => n,
            Err(e) => {
                debug!(error = %e, "scheduled count unavailable");
                0
            }
        }
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        self.guarded("declare", async {
            if self.inner.wire.list_of(&spec.name).is_some() {
                // A plain list needs no keys of edaflow's: it exists once something is pushed.
                self.inner
                    .queues
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(spec.name.clone(), 0);
                return Ok(());
            }
            let mut conn = self.conn();
            redis::cmd("HSET")
                .arg(self.key("queues"))
                .arg(&spec.name)
                .arg(spec.capacity.map(|c| c.to_string()).unwrap_or_default())
                .query_async::<Value>(&mut conn)
                .await
                .map_err(unavailable)?;
            for part in ["ready", "back"] {
                // BUSYGROUP when it exists already: fine.
                let _ = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.queue_key(&spec.name, part))
                    .arg("workers")
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async::<Value>(&mut conn)
                    .await;
            }
            // See "Taking ahead" for why these two never do.
            let ahead = if spec.poll.is_some() || spec.capacity.is_some() {
                0
            } else {
                self.take_ahead_ms()
            };
            self.inner
                .queues
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(spec.name.clone(), ahead);
            self.inner
                .queue_specs
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(spec.name.clone(), spec.clone());
            self.start_queue_mover(&spec.name);
            self.mark_epoch(false).await
        })
        .await
    }

    async fn remove_queue(
        &self,
        name: &str,
        successor: Option<&str>,
    ) -> Result<Removed, BrokerError> {
        self.guarded("remove", async {
            self.inner
                .queues
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
            self.inner
                .queue_specs
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
            let mut conn = self.conn();
            let (moved, dropped): (u64, u64) = scripts::REHOME_QUEUE
                .prepare_invoke()
                .arg(&self.inner.prefix)
                .arg(name)
                .arg(successor.unwrap_or(""))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            redis::cmd("HDEL")
                .arg(self.key("queues"))
                .arg(name)
                .query_async::<Value>(&mut conn)
                .await
                .map_err(unavailable)?;
            redis::cmd("DEL")
                .arg(self.queue_key(name, "sched"))
                .arg(self.queue_key(name, "ready"))
                .arg(self.queue_key(name, "back"))
                .query_async::<Value>(&mut conn)
                .await
                .map_err(unavailable)?;
            self.wake(self.queue_key(name, "wake")).await?;
            Ok(Removed { moved, dropped })
        })
        .await
    }

    async fn enqueue(&self, queue: &str, item: Event, delay: Duration) -> Result<(), BrokerError> {
        self.guarded("ingest", async {
            let effects = Effects {
                enqueue: vec![(queue.to_owned(), item, delay)],
                ..Effects::default()
            };
            self.run_commit(["-", "", "", ""], &effects).await
        })
        .await
    }

    fn queue_consumer(&self, queue: &str) -> Result<RedisConsumer, BrokerError> {
        Ok(self.queue_consumers(queue, 1)?.swap_remove(0))
    }

    /// One reader for the workers of one subscriber, as `consumers`.
    fn queue_consumers(&self, queue: &str, n: usize) -> Result<Vec<RedisConsumer>, BrokerError> {
        let n = n.max(1);
        if let Some(list) = self.inner.wire.list_of(queue) {
            return Ok((0..n)
                .map(|_| wire::list_consumer(self, queue, list.clone()))
                .collect());
        }
        if !self.knows_queue(queue)? {
            return Err(BrokerError::UnknownQueue {
                queue: queue.to_owned(),
            });
        }
        Ok(consumer::spawn(
            self.clone(),
            consumer::Source::Queue(queue.into()),
            self.new_consumer_name(),
            n,
        ))
    }

    fn queue_stats(&self) -> Vec<QueueStats> {
        let prefix = self.inner.prefix.clone();
        let ahead = self.take_ahead_ms();
        let reply = self.with_sync(|conn| {
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

    fn stores(&self) -> Option<Arc<dyn StoreRead>> {
        Some(self.inner.stores.clone())
    }

    fn commit_may_fail_transiently(&self) -> bool {
        true
    }

    fn reads_ahead(&self) -> bool {
        true
    }

    async fn read_ahead(
        &self,
        wants: Vec<crate::store::StoreWant>,
    ) -> Result<Vec<crate::store::Fetched>, crate::store::StoreError> {
        let mut conn = self.conn();
        self.inner
            .stores
            .read_ahead(&mut conn, &wants, crate::script::host::SCAN_LIMIT)
            .await
    }

    fn keeps_history(&self) -> bool {
        true
    }

    async fn record_history(&self, entries: Vec<(String, String)>) -> Result<(), BrokerError> {
        self.guarded("history", async {
            self.record_history_entries(&entries).await
        })
        .await
    }

    async fn history(&self, correlation: &str) -> Result<Option<Vec<String>>, BrokerError> {
        self.guarded("history", async {
            self.journey(correlation).await.map(Some)
        })
        .await
    }

    fn tracks_chains(&self) -> bool {
        true
    }

    async fn chain_observe(
        &self,
        chain: &ChainSpec,
        steps: &[ChainStep],
    ) -> Result<(), BrokerError> {
        self.guarded("chains", async { self.observe_chain(chain, steps).await })
            .await
    }

    async fn chain_expire(
        &self,
        chain: &ChainSpec,
        limit: usize,
    ) -> Result<Vec<ExpiredChain>, BrokerError> {
        self.guarded("chains", async { self.expire_chains(chain, limit).await })
            .await
    }

    async fn chain_counts(&self, chain: &ChainSpec) -> Result<Option<ChainCounts>, BrokerError> {
        self.guarded("chains", async {
            self.counts_of_chain(chain).await.map(Some)
        })
        .await
    }

    fn set_retention(&self, topics: &[(String, Duration)]) {
        self.replace_retention(topics);
    }

    fn reply_address(&self, id: &str) -> String {
        format!("{}/{id}", self.inner.instance)
    }

    fn await_reply(&self, id: &str) -> Option<oneshot::Receiver<replies::Answer>> {
        Some(self.inner.waiting.register(id))
    }

    fn forget_reply(&self, id: &str) {
        self.inner.waiting.forget(id);
    }

    fn declare_wire(&self, wire: &WireSpec) -> bool {
        self.inner.wire.set(wire);
        true
    }

    async fn dead_letters(&self, filter: &DeadFilter) -> Result<Vec<Event>, BrokerError> {
        self.guarded("dead letters", async {
            Ok(self
                .read_dead()
                .await?
                .into_iter()
                .map(|(_, e)| e)
                .filter(|e| filter.matches(e))
                .collect())
        })
        .await
    }

    async fn take_dead_letters(&self, filter: &DeadFilter) -> Result<Vec<Event>, BrokerError> {
        self.guarded("dead letters", async {
            let selected: Vec<(String, Event)> = self
                .read_dead()
                .await?
                .into_iter()
                .filter(|(_, e)| filter.matches(e))
                .collect();
            if selected.is_empty() {
                return Ok(Vec::new());
            }
            // One XDEL per entry: whoever deletes an entry is the one who took it, so two
            // concurrent takers never both return the same dead letter.
            let mut pipe = redis::pipe();
            for (id, _) in &selected {
                pipe.cmd("XDEL").arg(self.key("dead")).arg(id);
            }
            let deleted: Vec<i64> = pipe
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Ok(selected
                .into_iter()
                .zip(deleted)
                .filter(|(_, n)| *n == 1)
                .map(|((_, e), _)| e)
                .collect())
        })
        .await
    }
}
