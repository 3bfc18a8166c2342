//! Every default and tuning constant of the Redis broker, in one place: what
//! `RedisOptions::default()` holds, and the timings, sizes and bounds the broker's modules
//! use, each with why it is what it is. `edaflow run`'s flags keep their own defaults in
//! its argument parser; they match the option defaults here.
//!
//! The option defaults are public, for tools and tests building `RedisOptions`; the rest
//! are the broker's own. This module holds values only; it must not hold logic.

use std::time::Duration;

// ---------------------------------------------------------------------------------------
// `RedisOptions::default()`
// ---------------------------------------------------------------------------------------

/// Key namespace when none is given (`edaflow run` uses the first flow's name).
pub const NAMESPACE: &str = "default";
/// Entries a group may have waiting on one topic stream before `publish` pushes back.
pub const GROUP_CAPACITY: usize = 100_000;
/// How long an entry stays pending with a consumer before another may claim it (keep it
/// above the slowest handler).
pub const CLAIM_IDLE: Duration = Duration::from_secs(30);
/// Longest a consumer (or a mover) blocks in one read before it looks again.
pub const BLOCK: Duration = Duration::from_secs(1);
/// Due items moved per script run.
pub const MOVER_BATCH: usize = 100;
/// How long before its due time a queue item may go to an idle worker (see "Taking
/// ahead" in the broker's docs).
pub const TAKE_AHEAD: Duration = Duration::from_millis(500);
/// Most queue items not yet due one subscriber's reader holds, about 1 KiB each.
pub const HOLD_AHEAD: usize = 50_000;
/// Most entries a consumer takes in one script run, when at least that many wait.
pub const PREFETCH: usize = 16;
/// Most publishes, commits and enqueues carried by one script run.
pub const BATCH: usize = 256;
/// How long a command may wait for its reply before it fails (and is retried).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long events are kept on a topic no group reads and without a retention of its own.
pub const UNREAD_RETENTION: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Connections (`connection`, `cluster`, `stores`, `tap`)
// ---------------------------------------------------------------------------------------

/// How long opening an asynchronous connection may take (the shared one, blocking reads',
/// a cluster node's).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a question to a cluster node (`INFO`, `CLUSTER SLOTS`) may wait for its reply.
pub(super) const CLUSTER_QUESTION_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times the shared connection retries reconnecting before a command fails, and
/// the longest pause between two tries.
pub(super) const RECONNECT_RETRIES: usize = 2;
pub(super) const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);
/// How long opening a synchronous connection may take (the synchronous trait methods',
/// store reads', a tap's): they block their caller, so briefly.
pub(super) const SYNC_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a store read over a synchronous connection may wait for its reply.
pub(super) const STORE_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Synchronous store-read connections kept for reuse (more are opened under load, the
/// surplus closed when returned).
pub(super) const STORE_POOL: usize = 8;
/// Longest wait for a `PING` (the health check, the circuit's probe), below
/// `response_timeout`: a health check must answer quickly, whatever commands may wait.
pub(super) const PING_WAIT: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// Outages, the circuit, out of memory, state loss, cluster failover
// ---------------------------------------------------------------------------------------

/// How often a warning repeats while Redis stays unreachable.
pub(super) const OUTAGE_REMIND_EVERY: Duration = Duration::from_secs(30);
/// How long commands must keep succeeding before an outage counts as over (a reply
/// already on its way when Redis went away must not end it).
pub(super) const OUTAGE_SETTLE: Duration = Duration::from_millis(500);
/// Failed commands in a row that open the circuit.
pub(super) const CIRCUIT_OPEN_AFTER: u32 = 2;
/// How often the probe tries Redis while the circuit is open.
pub(super) const CIRCUIT_PROBE_EVERY: Duration = Duration::from_millis(200);
/// How long writes must go without a refusal before an out-of-memory episode counts as
/// over (a Redis hovering at its limit is one episode, not many).
pub(super) const OOM_SETTLE: Duration = Duration::from_secs(1);
/// How often the watcher reads the epoch marker (how soon a lost state is noticed).
pub(super) const EPOCH_CHECK_EVERY: Duration = Duration::from_millis(500);
/// How often a cluster's watcher asks who owns the namespace's slot (how soon a failover
/// or resharding is followed).
pub(super) const CLUSTER_CHECK_EVERY: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// Batching (`batch`, `commit`)
// ---------------------------------------------------------------------------------------

/// Stop adding operations to a script run past this many argument bytes.
pub(super) const BATCH_MAX_BYTES: usize = 1 << 20;
/// Script runs on the wire at once. With 2, workers whose commits emit waited on round
/// trips, Redis and edaflow each about half busy. 8 against 2, the same hour: W3 (a `done`
/// event per job) drained 92k against 74k jobs/s, lateness p99 64 against 118 ms; W2 with 8
/// workers 25.2k against 22.8k chains/s. The price is smaller runs while Redis keeps up: W1
/// on Redis costs 4.5 commands per event instead of 2.9 (Redis CPU / edaflow CPU 0.56
/// against 0.50), for the same accepted rate. Once Redis is the limit, runs fill up again.
pub(super) const BATCH_IN_FLIGHT: usize = 8;
/// Ack pipelines on the wire at once.
pub(super) const ACKS_IN_FLIGHT: usize = 8;
/// Operations that may wait for the batch task before callers wait to hand theirs over.
pub(super) const BATCH_QUEUE: usize = 8192;
/// A publish refused by a full group (`Backpressure::Wait`) tries again after this, doubling
/// up to `PUBLISH_RETRY_MAX`.
pub(super) const PUBLISH_RETRY_START: Duration = Duration::from_millis(1);
pub(super) const PUBLISH_RETRY_MAX: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------
// Reading (`reader`)
// ---------------------------------------------------------------------------------------

/// How often a group consumer re-checks which topic streams its group reads.
pub(super) const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// Fast reads between two runs of the take script (which claims, notices removals and
/// works out the fair share).
pub(super) const SCRIPT_EVERY: u32 = 8;
/// Most entries one fast read takes while the reader holds items not due yet: large reads
/// are cheap on both sides, and done before due.
pub(super) const READ_AHEAD: usize = 500;
/// Give-backs on the wire at once when a reader lets go of all it holds.
pub(super) const GIVE_BACK_AT_ONCE: usize = 64;
/// How long the take script alone reads after Redis refused a fast read. A group's topic
/// stream gets its consumer group when the topic is first published to, so a consumer that
/// starts first is refused until then.
pub(super) const REFUSED_PAUSE: Duration = Duration::from_millis(200);
/// Claims are looked for every quarter of `claim_idle`, within these bounds.
pub(super) const CLAIM_EVERY_MIN: Duration = Duration::from_millis(50);
pub(super) const CLAIM_EVERY_MAX: Duration = Duration::from_secs(5);
/// How often a reader looks whether the worker it serves stopped waiting.
pub(super) const CALLER_GONE_POLL: Duration = Duration::from_millis(20);
/// How long Redis's clock as last learnt stands before a newer sample replaces it anyway,
/// so that a clock step on either machine is followed (see `clock`).
pub(super) const CLOCK_SAMPLE_LIFE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Pub/sub and lists (`wire`, `replies`, `tap`)
// ---------------------------------------------------------------------------------------

/// Messages a pub/sub hub holds for its workers before it drops new ones (pub/sub cannot
/// push back on the publisher).
pub(super) const HUB_BUFFER: usize = 10_000;
/// Requests a hub's workers may have waiting for it.
pub(super) const HUB_REQUESTS: usize = 64;
/// How often a waiting plain-list reader looks at its list again.
pub(super) const LIST_POLL: Duration = Duration::from_millis(50);
/// A lost subscription (a hub's, the reply listener's, a tap's) or a failing list read is
/// tried again after this, doubling up to `RESUBSCRIBE_MAX`.
pub(super) const RESUBSCRIBE_START: Duration = Duration::from_millis(50);
pub(super) const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);
/// How often the reply listener wakes with no reply, to notice the broker has gone.
pub(super) const REPLY_LISTENER_TICK: Duration = Duration::from_secs(1);
/// Longest `tap_within` waits for its subscription before it returns anyway.
pub(super) const TAP_SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);
/// How often a tap's thread wakes with no event, to notice its reader has gone.
pub(super) const TAP_TICK: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------
// Retention, chains, history
// ---------------------------------------------------------------------------------------

/// How long a "kept" retention warning for one topic and group stays quiet when nothing
/// changed.
pub(super) const RETENTION_WARN_EVERY: Duration = Duration::from_secs(60);
/// Most overdue entries counted per group and trimming pass (the count says "at least"
/// past it).
pub(super) const RETENTION_COUNT_LIMIT: usize = 10_000;
/// Trimming passes run every quarter of the shortest retention, within these bounds, and
/// every `RETENTION_IDLE_PASS` when no topic has one (to notice the broker going away).
pub(super) const RETENTION_PASS_MIN: Duration = Duration::from_millis(50);
pub(super) const RETENTION_PASS_MAX: Duration = Duration::from_secs(60);
pub(super) const RETENTION_IDLE_PASS: Duration = Duration::from_secs(1);
/// Durations kept per chain and step list (as the memory tracker keeps per chain).
pub(super) const CHAIN_SAMPLES: usize = 1024;
/// How long a chain instance without a timeout is kept.
pub(super) const CHAIN_UNTIMED_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Journeys the history keeps (the oldest are deleted first).
pub(super) const HISTORY_JOURNEYS: usize = 10_000;
/// Entries kept per journey.
pub(super) const HISTORY_EVENTS: usize = 1_000;
/// How long a journey is kept after its first entry.
pub(super) const HISTORY_TTL: Duration = Duration::from_secs(60 * 60);
