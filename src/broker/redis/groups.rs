//! Consumer groups on Redis: their records, their XGROUPs on the topic streams they read,
//! declaring and removing them, and making their consumers.
//!
//! A group is a record in `P groups` (its patterns, and `since`: the server time it was
//! declared at, so that a topic registered later is read from then on) and an XGROUP named
//! after it on its inbox and on every registered topic stream its patterns match (listed in
//! `P gs:{group}` with the id each started at). Topics are registered as they are first
//! published; the XGROUPs of every matching group are created then (`ensure_topics`), and a
//! consumer heals a topic registered by another process meanwhile (`refresh_group`).
//! Removing a group hands what waits for it to a successor's inbox (`handoff`).
//!
//! What consumers read and how is `consumer`'s; this module must not read entries.

use std::collections::{HashMap, HashSet};

use redis::Value;
use tracing::warn;

use super::consumer::{self, ShardConsumer};
use super::failure::unavailable;
use super::{scripts, wire, ShardBroker};
use crate::broker::{BrokerError, GroupSpec, Removed};
use crate::pattern::TopicPattern;

/// A group's record in `P groups`, as JSON.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct GroupRecord {
    pub(super) patterns: Vec<String>,
    pub(super) since: u64,
}

impl GroupRecord {
    /// The record as stored.
    pub(super) fn to_json(&self) -> String {
        // Strings and a number: serde_json writes them whatever they hold.
        serde_json::to_string(self).expect("a record of strings and a number serialises")
    }
}

/// The patterns of a record. They were checked when their flow was validated, before any
/// was written: one that does not parse was written by something else, and matches
/// nothing.
pub(super) fn parse_patterns(texts: &[String]) -> Vec<TopicPattern> {
    texts
        .iter()
        .filter_map(|t| TopicPattern::parse(t).ok())
        .collect()
}

impl ShardBroker {
    /// Server time in unix ms.
    async fn server_ms(&self) -> Result<u64, BrokerError> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// Every group's record (this process's and the others'), but those that cannot be
    /// read (see `read_record`).
    pub(super) async fn group_records(&self) -> Result<Vec<(String, GroupRecord)>, BrokerError> {
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.inner.keys.groups())
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(all
            .into_iter()
            .filter_map(|(name, json)| {
                let record = self.read_record(&name, &json)?;
                Some((name, record))
            })
            .collect())
    }

    /// A group's record from its JSON. A record that is not edaflow's JSON (something else
    /// wrote it) is left out, as if the group were not declared, until a process declares
    /// the group again; this is logged once per group and process.
    fn read_record(&self, group: &str, json: &str) -> Option<GroupRecord> {
        match serde_json::from_str(json) {
            Ok(record) => Some(record),
            Err(e) => {
                let first = self
                    .inner
                    .unreadable_groups
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(group.to_owned());
                if first {
                    warn!(group, error = %e, "a group record in Redis that edaflow cannot read is left out until the group is declared again");
                }
                None
            }
        }
    }

    /// Creates `group`'s XGROUP on each of `keys` that lacks it, starting at `start`
    /// (see `scripts::ENSURE`).
    pub(super) async fn ensure(
        &self,
        group: &str,
        start: &str,
        keys: &[String],
    ) -> Result<(), BrokerError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut invocation = scripts::ENSURE.prepare_invoke();
        invocation
            .arg(self.inner.keys.prefix())
            .arg(group)
            .arg(start);
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
    pub(super) async fn ensure_topics<'a>(
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
            .arg(self.inner.keys.topics())
            .arg(&new)
            .query_async::<Value>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        for (group, record) in self.group_records().await? {
            let patterns = parse_patterns(&record.patterns);
            let keys: Vec<String> = new
                .iter()
                .filter(|t| patterns.iter().any(|p| p.matches(t)))
                .map(|t| self.inner.keys.topic(t))
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
        let keys = &self.inner.keys;
        let mut conn = self.conn();
        let record: Option<String> = redis::cmd("HGET")
            .arg(keys.groups())
            .arg(group)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        // No record: the group was removed (its consumers find that out from the take
        // script); an unreadable one is left out (see `read_record`).
        let Some(record) = record.and_then(|r| self.read_record(group, &r)) else {
            return Ok(());
        };
        let topics: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.topics())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let on: HashSet<String> = redis::cmd("HKEYS")
            .arg(keys.group_streams(group))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let patterns = parse_patterns(&record.patterns);
        let missing: Vec<String> = topics
            .iter()
            .filter(|t| patterns.iter().any(|p| p.matches(t)))
            .map(|t| keys.topic(t))
            .filter(|k| !on.contains(k))
            .collect();
        self.ensure(group, &format!("{}-0", record.since), &missing)
            .await
    }

    /// Creates the XGROUP `group` on the stream `key` (and the stream), reading from its
    /// start; nothing when it exists already.
    pub(super) async fn create_xgroup(&self, key: &str, group: &str) -> Result<(), BrokerError> {
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<Value>(&mut self.conn())
            .await;
        match created {
            Ok(_) => Ok(()),
            // It exists already: what was asked for is there.
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Creates the group's inbox and its XGROUP there (nothing when both exist).
    pub(super) async fn create_inbox(&self, group: &str) -> Result<(), BrokerError> {
        self.create_xgroup(&self.inner.keys.inbox(group), group)
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
            .arg(self.inner.keys.prefix())
            .arg(group)
            .arg(key)
            .arg(successor.unwrap_or(""))
            .arg(if itself { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(Removed { moved, dropped })
    }

    /// Writes the one-entry wake stream `key`, waking what blocks on it.
    pub(super) async fn wake(&self, key: String) -> Result<(), BrokerError> {
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

    /// Whether `group` exists: declared by this process, or registered in Redis by another
    /// (one synchronous round trip, see `connection`).
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
        let key = self.inner.keys.groups();
        self.with_sync(|conn| redis::cmd("HEXISTS").arg(&key).arg(group).query(conn))
    }
}

/// Declares a group (see `Broker::declare_group`): writes its record (keeping `since`
/// while its patterns are unchanged), creates its inbox, hands what waits on streams it no
/// longer reads to its inbox, and creates its XGROUP on every registered topic it reads,
/// from now on.
pub(super) async fn declare(broker: &ShardBroker, spec: &GroupSpec) -> Result<(), BrokerError> {
    let keys = &broker.inner.keys;
    let now = broker.server_ms().await?;
    let mut conn = broker.conn();
    let existing: Option<String> = redis::cmd("HGET")
        .arg(keys.groups())
        .arg(&spec.name)
        .query_async(&mut conn)
        .await
        .map_err(unavailable)?;
    // None: a new group; an unreadable record (see `read_record`) is written anew.
    let existing = existing.and_then(|json| broker.read_record(&spec.name, &json));
    let patterns: Vec<String> = spec.patterns.iter().map(|p| p.to_string()).collect();
    let changed = existing.as_ref().is_some_and(|r| r.patterns != patterns);
    let since = match &existing {
        Some(record) if !changed => record.since,
        _ => now,
    };
    let record = GroupRecord {
        patterns: patterns.clone(),
        since,
    }
    .to_json();
    redis::cmd("HSET")
        .arg(keys.groups())
        .arg(&spec.name)
        .arg(record)
        .query_async::<Value>(&mut conn)
        .await
        .map_err(unavailable)?;
    broker
        .inner
        .unreadable_groups
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&spec.name);
    broker.create_inbox(&spec.name).await?;
    if changed {
        // Streams the group no longer reads: what waits there moves to its inbox.
        let on: Vec<String> = redis::cmd("HKEYS")
            .arg(keys.group_streams(&spec.name))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        for key in on {
            let topic = key.strip_prefix(keys.topic_prefix()).unwrap_or("");
            if !spec.patterns.iter().any(|p| p.matches(topic)) {
                broker.handoff(&spec.name, &key, Some(&spec.name)).await?;
            }
        }
    }
    let topics: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.topics())
        .query_async(&mut conn)
        .await
        .map_err(unavailable)?;
    let streams: Vec<String> = topics
        .iter()
        .filter(|t| spec.patterns.iter().any(|p| p.matches(t)))
        .map(|t| keys.topic(t))
        .collect();
    broker.ensure(&spec.name, "$", &streams).await?;
    broker
        .inner
        .groups
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(spec.name.clone(), spec.patterns.clone());
    broker.mark_epoch(false).await
}

/// Removes a group (see `Broker::remove_group`): what waits for it, in its inbox and on its
/// topic streams, goes to `successor` (a declared group other than itself) or is dropped.
pub(super) async fn remove(
    broker: &ShardBroker,
    name: &str,
    successor: Option<&str>,
) -> Result<Removed, BrokerError> {
    let keys = &broker.inner.keys;
    broker
        .inner
        .groups
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(name);
    let mut conn = broker.conn();
    redis::cmd("HDEL")
        .arg(keys.groups())
        .arg(name)
        .query_async::<Value>(&mut conn)
        .await
        .map_err(unavailable)?;
    let successor = match successor {
        Some(s) if s != name => {
            let exists: bool = redis::cmd("HEXISTS")
                .arg(keys.groups())
                .arg(s)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            exists.then_some(s)
        }
        _ => None,
    };
    let streams: Vec<String> = redis::cmd("HKEYS")
        .arg(keys.group_streams(name))
        .query_async(&mut conn)
        .await
        .map_err(unavailable)?;
    let mut removed = broker.handoff(name, &keys.inbox(name), successor).await?;
    for key in streams {
        let more = broker.handoff(name, &key, successor).await?;
        removed.moved += more.moved;
        removed.dropped += more.dropped;
    }
    redis::cmd("DEL")
        .arg(keys.group_streams(name))
        .arg(keys.inbox(name))
        .query_async::<Value>(&mut conn)
        .await
        .map_err(unavailable)?;
    broker.wake(keys.group_wake(name)).await?;
    Ok(removed)
}

/// Whether `group` reads through the pub/sub hub (every one of its patterns pub/sub, see
/// `wire`) rather than from streams.
pub(super) fn reads_pubsub(broker: &ShardBroker, group: &str) -> bool {
    let groups = broker
        .inner
        .groups
        .read()
        .unwrap_or_else(|e| e.into_inner());
    groups
        .get(group)
        .is_some_and(|patterns| broker.inner.wire.group_is_pubsub(group, patterns))
}

/// The consumers of one subscriber of `group` (see `Broker::consumers`): hub consumers for
/// a group that reads pub/sub topics only (see `wire`), else `n` consumers sharing one
/// reader (see `consumer`).
pub(super) fn consumers(
    broker: &ShardBroker,
    group: &str,
    n: usize,
) -> Result<Vec<ShardConsumer>, BrokerError> {
    let n = n.max(1);
    if !broker.knows_group(group)? {
        return Err(BrokerError::UnknownGroup {
            group: group.to_owned(),
        });
    }
    let patterns = broker
        .inner
        .groups
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(group)
        .cloned();
    if let Some(patterns) = patterns {
        if broker.inner.wire.group_is_pubsub(group, &patterns) {
            return Ok((0..n)
                .map(|_| wire::group_consumer(broker, group, patterns.clone()))
                .collect());
        }
    }
    Ok(consumer::spawn(
        broker.clone(),
        consumer::Source::Group(group.into()),
        broker.new_consumer_name(),
        n,
    ))
}
