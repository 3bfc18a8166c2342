//! State loss on Redis, noticed and healed: the epoch marker and the broker's watcher.
//!
//! # The marker
//!
//! `P epoch` is a hash: `token`, a random id written by whichever process found the marker
//! missing (at connect, at a declaration, or when healing), and `n`, bumped by every
//! declaration. Each process remembers the token it adopted and the highest `n` it saw.
//! Every `CHECK_EVERY` (and at once when the circuit closes, Redis answering again after
//! an outage, or when a consumer finds its group gone) the watcher reads the marker. Redis lost the state edaflow keeps there
//! when the marker is:
//!
//! - **missing**: Redis restarted without persistence, was flushed (`FLUSHALL`,
//!   `FLUSHDB`), or failed over to a replica that never got the marker;
//! - **replaced** (another token): another process found it missing first and healed;
//! - **rolled back** (`n` lower than seen): a failover to a replica that missed the latest
//!   writes.
//!
//! A replica that missed only writes made after the last declaration still holds the
//! marker as it was: that loss is not seen here (what it lost is the last writes Redis
//! acknowledged before the failover, as with any Redis failover).
//!
//! # Healing
//!
//! The process then declares again everything it needs, as it declared it: the topics it
//! knows (`P topics`), its groups (their records, inbox XGROUPs and the XGROUPs on every
//! registered topic stream they read), its queues (records, ready and back XGROUPs, their
//! movers), and the XGROUPs of every registered group on the topics it knows, then writes
//! the marker again (last: a heal cut short is done again at the next check). A group
//! declared again reads its streams from their start: everything in them was published
//! after the loss, since the loss took the streams too, so every event accepted once
//! Redis is back is handled. It logs one error naming what it found missing (groups,
//! queues, topic streams; names, never contents) and what may have been lost with them
//! (events waiting or in flight, queue items, delayed events, dead letters, stores, chain
//! instances, journeys), and counts the loss for `/healthz` and `/metrics`
//! (`Broker::incidents`). Heals are serialised within a process and idempotent across
//! processes: each heals what it declared, and declaring twice changes nothing.
//!
//! # The watcher
//!
//! One task per broker: every `CHECK_EVERY` it reads the marker (skipped while the circuit
//! is open: the probe looks after reachability; after a failover on a cluster, the next
//! check reads the new master's), and while Redis is out of memory it tries one write, so
//! that the episode's end is noticed without traffic (see `oom`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, Weak};
use std::time::{Duration, SystemTime};

use redis::{Script, Value};
use tokio::sync::Notify;
use tracing::{debug, error};

use super::failure::unavailable;
use super::groups::{parse_patterns, GroupRecord};
use super::reply::{count, items, nth, text};
use super::{outage, Inner, ShardBroker};
use crate::broker::{BrokerError, QueueSpec, StateLoss};
use crate::pattern::TopicPattern;

/// How often the watcher reads the marker.
pub(super) const CHECK_EVERY: Duration = super::defaults::EPOCH_CHECK_EVERY;

/// `mark`: ARGV P, a fresh token. Writes the token unless the marker has one, bumps `n`;
/// replies the marker's token and `n`.
static MARK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local key = ARGV[1] .. 'epoch'
redis.call('HSETNX', key, 'token', ARGV[2])
local n = redis.call('HINCRBY', key, 'n', 1)
return {redis.call('HGET', key, 'token'), n}
",
    )
});

/// What a process knows of the marker, and the losses it healed.
#[derive(Default)]
pub(crate) struct Epoch {
    /// The token adopted (`None` before the first read).
    token: Mutex<Option<String>>,
    /// The highest `n` seen.
    seen: AtomicU64,
    /// Heals done so far (a consumer that found its group gone compares it).
    heals: AtomicU64,
    /// The last loss healed.
    last: Mutex<Option<StateLoss>>,
    /// One heal at a time.
    healing: tokio::sync::Mutex<()>,
    /// Poked for a check now (a reconnect, a failover, a group gone).
    pub(super) check_now: Notify,
}

impl Epoch {
    pub(super) fn heals(&self) -> u64 {
        self.heals.load(Ordering::Acquire)
    }

    pub(super) fn last(&self) -> Option<StateLoss> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn token(&self) -> Option<String> {
        self.token.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes in a marker read from Redis: adopts it the first time (`adopt`), or when
    /// healing; otherwise only notes a higher `n` when the token is ours.
    fn note(&self, token: &str, n: u64, adopt: bool) {
        let mut ours = self.token.lock().unwrap_or_else(|e| e.into_inner());
        match ours.as_deref() {
            Some(t) if t == token => {
                self.seen.fetch_max(n, Ordering::AcqRel);
            }
            None => {
                *ours = Some(token.to_owned());
                self.seen.store(n, Ordering::Release);
            }
            Some(_) if adopt => {
                *ours = Some(token.to_owned());
                self.seen.store(n, Ordering::Release);
            }
            Some(_) => {}
        }
    }

    /// What is wrong with the marker as read (`token`, `n`), if anything. Before this
    /// process took in a marker (it could not write one at connect), nothing is.
    fn judge(&self, token: Option<&str>, n: u64) -> Option<&'static str> {
        let ours = self.token();
        match (token, ours.as_deref()) {
            (_, None) => None,
            (None, _) => Some("the epoch marker is missing"),
            (Some(t), Some(o)) if t != o => Some("the epoch marker was replaced"),
            _ if n < self.seen.load(Ordering::Acquire) => {
                Some("the epoch marker went back (a replica that missed writes)")
            }
            _ => None,
        }
    }
}

impl ShardBroker {
    /// Writes the marker unless it is there, bumps it, and takes in what it holds. At
    /// connect (`adopt`) and on heals the token read becomes this process's; at a
    /// declaration a token that is not ours is left for the watcher to find.
    pub(super) async fn mark_epoch(&self, adopt: bool) -> Result<(), BrokerError> {
        let reply: Value = MARK
            .prepare_invoke()
            .arg(self.inner.keys.prefix())
            .arg(crate::event::new_id())
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let reply = items(&reply)?;
        let token = text(nth(reply, 0)?)?;
        let n = count(nth(reply, 1)?)?;
        self.inner.epoch.note(&token, n, adopt);
        if !adopt && self.inner.epoch.token().as_deref() != Some(token.as_str()) {
            self.inner.epoch.check_now.notify_one();
        }
        Ok(())
    }

    /// Reads the marker: what is wrong with it, if anything.
    async fn read_epoch(&self) -> Result<Option<&'static str>, BrokerError> {
        let (token, n): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.inner.keys.epoch())
            .arg("token")
            .arg("n")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        // A marker without `n` is missing (the token with it, see `judge`), or was never
        // bumped by a declaration: either way it has seen none.
        let n = n.unwrap_or(0);
        let wrong = self.inner.epoch.judge(token.as_deref(), n);
        if wrong.is_none() {
            if let Some(token) = token {
                self.inner.epoch.note(&token, n, false);
            }
        }
        Ok(wrong)
    }

    /// Heal count now, for `state_check` (taken before the command that may find
    /// something gone).
    pub(crate) fn heals(&self) -> u64 {
        self.inner.epoch.heals()
    }

    /// Something this process declared was found gone (a consumer's group, a queue):
    /// whether Redis lost its state, healed now or since `heals` was read (`true`: try
    /// again), or not (`false`: another process removed it).
    ///
    /// # Errors
    /// `Unavailable` when Redis cannot be reached.
    pub(crate) async fn state_check(&self, heals: u64) -> Result<bool, BrokerError> {
        let _one = self.inner.epoch.healing.lock().await;
        if self.inner.epoch.heals() != heals {
            return Ok(true);
        }
        match self.read_epoch().await? {
            Some(why) => {
                self.heal(why).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// One look at the marker, healing when it says the state was lost (or writing it,
    /// when it could not be written at connect).
    pub(super) async fn check_epoch(&self) -> Result<(), BrokerError> {
        let _one = self.inner.epoch.healing.lock().await;
        if self.inner.epoch.token().is_none() {
            return self.mark_epoch(true).await;
        }
        if let Some(why) = self.read_epoch().await? {
            self.heal(why).await?;
        }
        Ok(())
    }

    /// Declares again everything this process declared, then the marker (see the module
    /// docs); logs and counts the loss. Called with `healing` held.
    async fn heal(&self, why: &str) -> Result<(), BrokerError> {
        let declared = self.declared();
        let missing = self.find_missing(&declared).await?;
        self.declare_again(&declared).await?;
        let token_before = self.inner.epoch.token();
        self.mark_epoch(true).await?;

        let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let found_by_another = token_before.is_some() && why == "the epoch marker was replaced";
        let mut named = vec![why.to_owned()];
        named.extend(missing.groups.iter().map(|name| format!("group `{name}`")));
        named.extend(missing.queues.iter().map(|name| format!("queue `{name}`")));
        named.extend(
            missing
                .topics
                .iter()
                .map(|name| format!("topic stream `{name}`")),
        );
        error!(
            missing = %named.join(", "),
            may_be_lost = %may_be_lost(&missing.groups, &missing.queues, &missing.topics),
            healed_first_by_another_process = found_by_another,
            "redis lost its state (restarted without persistence, flushed, or failed over to a replica that missed writes); this process declared again its topics, groups and queues, and work goes on"
        );
        *self
            .inner
            .epoch
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(StateLoss { at, missing: named });
        self.inner.epoch.heals.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// What this process declared: its groups, its queues, and the topics it registered
    /// (sorted, for the log).
    fn declared(&self) -> Declared {
        let groups = self
            .inner
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, patterns)| (name.clone(), patterns.clone()))
            .collect();
        let queues = self
            .inner
            .queue_specs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut topics: Vec<String> = self
            .inner
            .known_topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        topics.sort();
        Declared {
            groups,
            queues,
            topics,
        }
    }

    /// Which of `declared` Redis no longer holds, for the log.
    async fn find_missing<'d>(&self, declared: &'d Declared) -> Result<Missing<'d>, BrokerError> {
        let keys = &self.inner.keys;
        let mut missing = Missing::default();
        if declared.groups.is_empty() && declared.queues.is_empty() && declared.topics.is_empty() {
            return Ok(missing);
        }
        let mut pipe = redis::pipe();
        for (name, _) in &declared.groups {
            pipe.cmd("HEXISTS").arg(keys.groups()).arg(name);
        }
        for queue in &declared.queues {
            pipe.cmd("HEXISTS").arg(keys.queues()).arg(&queue.name);
        }
        for topic in &declared.topics {
            pipe.cmd("EXISTS").arg(keys.topic(topic));
        }
        let present: Vec<bool> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut present = present.into_iter();
        for (name, _) in &declared.groups {
            if present.next() == Some(false) {
                missing.groups.push(name);
            }
        }
        for queue in &declared.queues {
            if present.next() == Some(false) {
                missing.queues.push(&queue.name);
            }
        }
        for topic in &declared.topics {
            if present.next() == Some(false) {
                missing.topics.push(topic);
            }
        }
        Ok(missing)
    }

    /// Declares `declared` again: topics, groups (records, inboxes, and the XGROUPs of every
    /// registered group on the topics it reads), queues and their movers; then wakes what
    /// waits on them.
    async fn declare_again(&self, declared: &Declared) -> Result<(), BrokerError> {
        let keys = &self.inner.keys;
        let mut conn = self.conn();
        if !declared.topics.is_empty() {
            redis::cmd("SADD")
                .arg(keys.topics())
                .arg(&declared.topics)
                .query_async::<Value>(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        let topics: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.topics())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        for (name, patterns) in &declared.groups {
            let record = GroupRecord {
                patterns: patterns.iter().map(|p| p.to_string()).collect(),
                // From the start of every stream: what they hold came after the loss.
                since: 0,
            }
            .to_json();
            redis::cmd("HSETNX")
                .arg(keys.groups())
                .arg(name)
                .arg(record)
                .query_async::<Value>(&mut conn)
                .await
                .map_err(unavailable)?;
            self.create_inbox(name).await?;
        }
        // Every registered group (this process's and the others') on every registered
        // topic it reads, from where its record says it started.
        for (group, record) in self.group_records().await? {
            let patterns = parse_patterns(&record.patterns);
            let streams: Vec<String> = topics
                .iter()
                .filter(|t| patterns.iter().any(|p| p.matches(t)))
                .map(|t| keys.topic(t))
                .collect();
            self.ensure(&group, &format!("{}-0", record.since), &streams)
                .await?;
        }
        for queue in &declared.queues {
            self.create_queue(queue).await?;
            self.start_queue_mover(&queue.name);
        }
        // Waiting consumers look again at once.
        for (name, _) in &declared.groups {
            self.wake(keys.group_wake(name)).await?;
        }
        for queue in &declared.queues {
            self.wake(keys.queue(&queue.name, "wake")).await?;
        }
        Ok(())
    }
}

/// What a process declared, as `heal` declares it again.
struct Declared {
    groups: Vec<(String, Vec<TopicPattern>)>,
    queues: Vec<QueueSpec>,
    topics: Vec<String>,
}

/// What of `Declared` Redis no longer held, by name.
#[derive(Default)]
struct Missing<'d> {
    groups: Vec<&'d str>,
    queues: Vec<&'d str>,
    topics: Vec<&'d str>,
}

/// What may have gone with a loss, by name (never contents).
fn may_be_lost(groups: &[&str], queues: &[&str], topics: &[&str]) -> String {
    let list = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    if !topics.is_empty() {
        parts.push(format!("events not yet handled on topics {}", list(topics)));
    }
    if !groups.is_empty() {
        parts.push(format!(
            "events given back to or in flight in groups {}",
            list(groups)
        ));
    }
    if !queues.is_empty() {
        parts.push(format!("items of queues {}", list(queues)));
    }
    parts.push(
        "delayed events, dead letters, state stores, chain instances and journeys kept in Redis"
            .to_owned(),
    );
    parts.join("; ")
}

/// The watcher task (see the module docs): ends once the broker is dropped.
pub(super) async fn run(weak: Weak<Inner>) {
    let mut generation = None;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let broker = ShardBroker { inner };
        if !broker.inner.circuit.is_open() {
            let now = broker.inner.node.generation();
            if generation.is_some_and(|g| g != now) {
                debug!("connections moved to another master; checking the epoch marker");
            }
            generation = Some(now);
            let checked = broker.check_epoch().await;
            if let Err(e) = broker.track("state check", checked) {
                debug!(error = %outage::describe(&e), "state check failed; trying again");
            }
            if broker.inner.oom.current().is_some() {
                broker.probe_memory().await;
            }
        }
        let wake = broker.inner.clone();
        drop(broker);
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            () = wake.epoch.check_now.notified() => {}
        }
    }
}

impl ShardBroker {
    /// While Redis is out of memory: one write that needs memory (adding nothing to the
    /// sequence), to learn whether Redis takes writes again.
    async fn probe_memory(&self) {
        let wrote = redis::cmd("INCRBY")
            .arg(self.inner.keys.seq())
            .arg(0)
            .query_async::<Value>(&mut self.conn())
            .await
            .map(|_| ())
            .map_err(unavailable);
        let wrote = self.track("memory probe", wrote);
        if wrote.is_ok() {
            self.inner.oom.wrote();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_missing_replaced_or_rolled_back_is_a_loss() {
        let epoch = Epoch::default();
        // Before the first read, any marker is taken in, and none is no loss.
        assert_eq!(epoch.judge(Some("a"), 3), None);
        assert_eq!(epoch.judge(None, 0), None);
        epoch.note("a", 3, false);
        assert_eq!(epoch.judge(Some("a"), 3), None);
        assert_eq!(epoch.judge(Some("a"), 7), None);
        epoch.note("a", 7, false);
        assert!(epoch.judge(None, 0).unwrap().contains("missing"));
        assert!(epoch.judge(Some("b"), 9).unwrap().contains("replaced"));
        assert!(epoch.judge(Some("a"), 5).unwrap().contains("went back"));
        // A marker of another token met at a declaration is not adopted; at a heal it is.
        epoch.note("b", 1, false);
        assert_eq!(epoch.token().as_deref(), Some("a"));
        epoch.note("b", 1, true);
        assert_eq!(epoch.token().as_deref(), Some("b"));
        assert_eq!(epoch.judge(Some("b"), 1), None);
    }

    #[test]
    fn what_may_be_lost_is_named_never_shown() {
        let text = may_be_lost(&["work"], &["jobs"], &["job", "done"]);
        assert!(text.contains("topics `job`, `done`"), "{text}");
        assert!(text.contains("groups `work`"), "{text}");
        assert!(text.contains("queues `jobs`"), "{text}");
        let quiet = may_be_lost(&[], &[], &[]);
        assert!(quiet.starts_with("delayed events"), "{quiet}");
    }
}
