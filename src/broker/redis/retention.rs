//! Per-topic retention on Redis: trimming the topic streams of entries every group is done
//! with, once they are older than the topic's `retention`.
//!
//! The rule, for a topic stream with retention `R`: an entry goes when it is older than
//! `R` (its id's millisecond part, the server's clock at publish, is before now − `R`) *and*
//! every group that reads the topic has read and acknowledged it. An entry some group has
//! not read yet, or read and not acknowledged (pending, so it may be claimed and run
//! again), is kept however old it is: trimming it would lose an event without any handler
//! having run. Such entries are counted on every pass and logged as a warning naming the
//! topic, the group and how many, so they are never kept (or lost) silently; the group's
//! `group_capacity` already bounds how many can pile up.
//!
//! "Every group that reads the topic" is every consumer group on the stream plus every
//! declared group whose patterns match the topic but whose XGROUP is not on the stream yet
//! (it will start at its declaration time). One Lua script reads the groups' positions and
//! trims (`XTRIM MINID`) in a single atomic step on the server, so any number of processes
//! may trim the same streams at once: each pass trims only what is safe at that instant, and
//! passes do not interfere.
//!
//! # Which retention applies
//!
//! - A topic with `retention` (`[topics.NAME] retention`) is trimmed by it, as above,
//!   whether any group reads it or not.
//! - A topic without one that **no group reads** (no consumer group on its stream, and no
//!   declared group whose patterns match it) is trimmed by the *unread retention*
//!   (`RedisOptions::unread_retention`, `edaflow run --unread-retention`, one minute by
//!   default): its entries older than that go, since no handler will ever run for them.
//!   Such a topic (an event nobody subscribes to, a dead-letter topic with no subscriber)
//!   would otherwise grow Redis without bound. The check that no group reads it is made in
//!   the same script as the trim, so a group that appears meanwhile loses nothing; a group
//!   declared later starts at its declaration anyway. `0` turns this off.
//! - A topic without `retention` that some group reads is never trimmed: its stream is the
//!   event history, kept until the flow's author sets a retention.
//!
//! The internal streams need no trimming: a group's inbox and a queue's ready and back
//! streams delete an entry when it is acked, wake streams hold one entry, and the
//! dead-letter stream is a store emptied by the admin commands.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::{Script, Value};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::failure::{unavailable, unexpected};
use super::groups::parse_patterns;
use super::reply::{count, items, nth, text};
use super::{Inner, ShardBroker};
use crate::broker::{BrokerError, TopicRetention};

use super::defaults::{
    RETENTION_COUNT_LIMIT as COUNT_LIMIT, RETENTION_IDLE_PASS, RETENTION_PASS_MAX,
    RETENTION_PASS_MIN, RETENTION_WARN_EVERY as WARN_EVERY,
};

/// The retention settings of this process and the trimmer's memory.
#[derive(Default)]
pub(super) struct Retention {
    topics: Mutex<BTreeMap<String, Duration>>,
    /// Poked when the settings change, so the trimmer picks up a shorter interval at once.
    changed: Notify,
    /// (topic, group) -> (count, when) of the last "kept" warning.
    warned: Mutex<HashMap<(String, String), (u64, Instant)>>,
    /// Unread topics whose trimming was logged at info level already.
    unread_logged: Mutex<HashSet<String>>,
}

impl Retention {
    fn topics(&self) -> BTreeMap<String, Duration> {
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What one pass did to one topic stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrimReport {
    pub topic: String,
    pub retention: Duration,
    /// Entries removed by this pass.
    pub trimmed: u64,
    /// Per group, the entries older than the retention that were kept because the group
    /// has not read them, or has not acknowledged them yet (at most `COUNT_LIMIT` each).
    pub kept: Vec<(String, u64)>,
}

/// `ARGV`: stream key, retention ms, count limit, '1' to trim only a stream no group reads
/// ('0' otherwise), then (group, since ms) of every declared group whose patterns match
/// the topic. Replies `{trimmed, group, kept, group, kept, …}`.
static TRIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local key, retention, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('EXISTS', key) == 0 then return {0} end
if ARGV[4] == '1' and (#ARGV > 4 or #redis.call('XINFO', 'GROUPS', key) > 0) then
  return {0}
end
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - retention
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return {tonumber(ms), tonumber(seq)}
end
local function before(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end
local function fmt(id) return string.format('%.0f-%.0f', id[1], id[2]) end
local cut = {cutoff, 0}
-- Everything before `keep` may go; it only moves down.
local keep = cut
local out = {0}
local function kept(group, n)
  if n > 0 then table.insert(out, group); table.insert(out, n) end
end
local on = {}
for _, info in ipairs(redis.call('XINFO', 'GROUPS', key)) do
  local g = {}
  for i = 1, #info, 2 do g[info[i]] = info[i + 1] end
  local name = g['name']
  on[name] = true
  local last = parse(g['last-delivered-id'])
  local unread = {last[1], last[2] + 1}
  local bound = unread
  local pending_old = 0
  if tonumber(g['pending']) > 0 then
    local summary = redis.call('XPENDING', key, name)
    local oldest = parse(summary[2])
    if before(oldest, bound) then bound = oldest end
    pending_old = #redis.call('XPENDING', key, name, '-', '(' .. fmt(cut), limit)
  end
  if before(bound, keep) then keep = bound end
  local unread_old = 0
  if before(unread, cut) then
    unread_old = #redis.call('XRANGE', key, fmt(unread), '(' .. fmt(cut), 'COUNT', limit)
  end
  kept(name, pending_old + unread_old)
end
for i = 5, #ARGV, 2 do
  local name, since = ARGV[i], tonumber(ARGV[i + 1])
  if not on[name] then
    local start = {since, 0}
    if before(start, keep) then keep = start end
    if before(start, cut) then
      kept(name, #redis.call('XRANGE', key, fmt(start), '(' .. fmt(cut), 'COUNT', limit))
    end
  end
end
out[1] = redis.call('XTRIM', key, 'MINID', fmt(keep))
return out
"#,
    )
});

impl ShardBroker {
    /// One trimming pass over every topic with a retention: what each lost and kept. The
    /// background trimmer calls this; tests and tools may too, from any process at once.
    ///
    /// # Errors
    /// `Unavailable` when Redis cannot be reached.
    pub(crate) async fn trim_now(&self) -> Result<Vec<TrimReport>, BrokerError> {
        let topics = self.inner.retention.topics();
        if topics.is_empty() {
            return Ok(Vec::new());
        }
        let records = self.group_records().await?;
        let mut reports = Vec::with_capacity(topics.len());
        for (topic, retention) in topics {
            let mut invocation = TRIM.prepare_invoke();
            invocation
                .arg(self.inner.keys.topic(&topic))
                .arg(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX))
                .arg(COUNT_LIMIT)
                .arg("0");
            for (group, record) in &records {
                if parse_patterns(&record.patterns)
                    .iter()
                    .any(|p| p.matches(&topic))
                {
                    invocation.arg(group).arg(record.since);
                }
            }
            let reply: Value = invocation
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let reply = items(&reply)?;
            let trimmed = count(nth(reply, 0)?)?;
            let pairs = &reply[1..];
            if pairs.len() % 2 != 0 {
                return Err(unexpected("the kept counts of a trimming pass", &reply));
            }
            let kept = pairs
                .chunks_exact(2)
                .map(|pair| Ok((text(&pair[0])?, count(&pair[1])?)))
                .collect::<Result<Vec<(String, u64)>, BrokerError>>()?;
            let report = TrimReport {
                topic,
                retention,
                trimmed,
                kept,
            };
            self.log_pass(&report);
            reports.push(report);
        }
        Ok(reports)
    }

    /// One trimming pass over every registered topic that has no retention of its own and
    /// that no group reads, by the unread retention (see "Which retention applies"): what
    /// each lost. Empty when the unread retention is off.
    ///
    /// # Errors
    /// `Unavailable` when Redis cannot be reached.
    pub(crate) async fn trim_unread_now(&self) -> Result<Vec<TrimReport>, BrokerError> {
        let Some(retention) = self.inner.options.unread_retention else {
            return Ok(Vec::new());
        };
        let with_retention = self.inner.retention.topics();
        let mut conn = self.conn();
        let mut topics: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.inner.keys.topics())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        topics.sort();
        let records = self.group_records().await?;
        let patterns: Vec<_> = records
            .iter()
            .flat_map(|(_, record)| parse_patterns(&record.patterns))
            .collect();
        let mut reports = Vec::new();
        for topic in topics {
            let read = patterns.iter().any(|p| p.matches(&topic));
            if read || with_retention.contains_key(&topic) || self.inner.wire.is_pubsub(&topic) {
                continue;
            }
            let trimmed: Value = TRIM
                .prepare_invoke()
                .arg(self.inner.keys.topic(&topic))
                .arg(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX))
                .arg(COUNT_LIMIT)
                .arg("1")
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let trimmed = count(nth(items(&trimmed)?, 0)?)?;
            if trimmed > 0 {
                self.log_unread(&topic, retention, trimmed);
            }
            reports.push(TrimReport {
                topic,
                retention,
                trimmed,
                kept: Vec::new(),
            });
        }
        Ok(reports)
    }

    /// Says once per topic and process that a topic nobody reads is trimmed.
    fn log_unread(&self, topic: &str, retention: Duration, trimmed: u64) {
        let first = self
            .inner
            .retention
            .unread_logged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_owned());
        let retention = crate::flow::duration::format_duration(retention);
        if first {
            info!(
                topic,
                trimmed,
                %retention,
                "retention: no group reads topic `{topic}`; its events older than {retention} are trimmed (--unread-retention)"
            );
        } else {
            debug!(topic, trimmed, %retention, "retention: trimmed an unread topic");
        }
    }

    fn log_pass(&self, report: &TrimReport) {
        let retention = crate::flow::duration::format_duration(report.retention);
        if report.trimmed > 0 {
            debug!(topic = %report.topic, trimmed = report.trimmed, %retention, "retention: trimmed");
        }
        let mut warned = self
            .inner
            .retention
            .warned
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (group, count) in &report.kept {
            let key = (report.topic.clone(), group.clone());
            let quiet = warned
                .get(&key)
                .is_some_and(|(n, at)| n == count && at.elapsed() < WARN_EVERY);
            if quiet {
                continue;
            }
            warned.insert(key, (*count, Instant::now()));
            let at_least = if *count >= COUNT_LIMIT as u64 {
                "at least "
            } else {
                ""
            };
            warn!(
                topic = %report.topic,
                group = %group,
                kept = count,
                %retention,
                "retention: kept {at_least}{count} entries of `{}` older than {retention} that group `{group}` has not read or acknowledged yet",
                report.topic
            );
        }
        warned.retain(|(topic, group), _| {
            topic != &report.topic || report.kept.iter().any(|(g, _)| g == group)
        });
    }

    /// Replaces the retention of every topic (`[topics.NAME] retention`); topics left out
    /// are no longer trimmed. (The same as `TopicRetention::set_retention`, callable without
    /// the trait.)
    pub(crate) fn set_retention(&self, topics: &[(String, Duration)]) {
        let retention = &self.inner.retention;
        *retention.topics.lock().unwrap_or_else(|e| e.into_inner()) =
            topics.iter().cloned().collect();
        retention.changed.notify_one();
    }
}

/// The wait between passes: a quarter of the shortest retention, between 50 ms and a minute
/// (a second when nothing is to be trimmed, to notice the broker going away).
fn pass_interval(topics: &BTreeMap<String, Duration>) -> Duration {
    topics
        .values()
        .min()
        .map_or(RETENTION_IDLE_PASS, |shortest| {
            (*shortest / 4).clamp(RETENTION_PASS_MIN, RETENTION_PASS_MAX)
        })
}

/// The trimmer task: a pass, then a wait, until the broker is dropped. Every process runs
/// one; see the module docs for why that is safe. `unread` is the unread retention.
pub(super) async fn run(weak: Weak<Inner>, retention: Arc<Retention>, unread: Option<Duration>) {
    // Unread topics are looked at every quarter of the unread retention, whatever the
    // passes for topics with a retention of their own.
    let unread_every = unread.map(|u| pass_interval(&BTreeMap::from([(String::new(), u)])));
    let mut next_unread = Instant::now();
    loop {
        let topics = retention.topics();
        let Some(inner) = weak.upgrade() else { return };
        let broker = ShardBroker { inner };
        if !broker.inner.circuit.is_open() {
            if !topics.is_empty() {
                if let Err(e) = broker.trim_now().await {
                    debug!(error = %e, "retention: redis unavailable; trying again later");
                }
            }
            if let Some(every) = unread_every.filter(|_| Instant::now() >= next_unread) {
                next_unread = Instant::now() + every;
                if let Err(e) = broker.trim_unread_now().await {
                    debug!(error = %e, "retention: redis unavailable; trying again later");
                }
            }
        }
        drop(broker);
        let mut wait = pass_interval(&topics);
        if unread_every.is_some() {
            wait = wait.min(next_unread.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            () = retention.changed.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

impl TopicRetention for ShardBroker {
    fn set_retention(&self, topics: &[(String, Duration)]) {
        ShardBroker::set_retention(self, topics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_follow_the_shortest_retention_within_bounds() {
        let topics = |ms: &[u64]| -> BTreeMap<String, Duration> {
            ms.iter()
                .enumerate()
                .map(|(i, ms)| (format!("t{i}"), Duration::from_millis(*ms)))
                .collect()
        };
        assert_eq!(pass_interval(&topics(&[])), Duration::from_secs(1));
        assert_eq!(
            pass_interval(&topics(&[400, 3_600_000])),
            Duration::from_millis(100)
        );
        assert_eq!(pass_interval(&topics(&[10])), Duration::from_millis(50));
        assert_eq!(
            pass_interval(&topics(&[86_400_000])),
            Duration::from_secs(60)
        );
    }
}
