//! The journey history on Redis, shared by every process, for `edaflow trace`: one list
//! per journey, `P h:{correlation}` (entry JSON, in the order recorded), and an index
//! `P h:index` (journeys by the unix ms they were first seen) that bounds how many are
//! kept. Entries arrive in batches from each process's history shipper, off the hot path.
//!
//! Bounds: `MAX_JOURNEYS` journeys (the oldest are deleted first), `MAX_EVENTS` entries per
//! journey, and each journey expires `HISTORY_TTL` after its first entry (set once, not on every
//! entry: a journey is short, and one command fewer per event counts on the hot path).

use std::sync::LazyLock;

use redis::{Script, Value};

use super::failure::unavailable;
use super::scripts::script;
use super::ShardBroker;
use crate::broker::capability::BoxFuture;
use crate::broker::{BrokerError, SharedHistory};

use super::defaults::{
    HISTORY_EVENTS as MAX_EVENTS, HISTORY_JOURNEYS as MAX_JOURNEYS, HISTORY_TTL,
};

/// `history`: ARGV P, max journeys, max events, ttl ms, n, n × (correlation, entry json).
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local max_journeys, max_events, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local index = P .. 'h:index'
local now = now_ms()
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  local corr, json = ARGV[i], ARGV[i + 1]
  i = i + 2
  local key = P .. 'h:' .. corr
  local len = redis.call('RPUSH', key, json)
  if len > max_events then
    redis.call('RPOP', key)
  end
  if len == 1 then
    redis.call('ZADD', index, now, corr)
    redis.call('PEXPIRE', key, ttl)
  end
end
local over = redis.call('ZCARD', index) - max_journeys
if over > 0 then
  for _, corr in ipairs(redis.call('ZRANGE', index, 0, over - 1)) do
    redis.call('DEL', P .. 'h:' .. corr)
  end
  redis.call('ZREMRANGEBYRANK', index, 0, over - 1)
end
-- Journeys that expired on their own leave index entries: drop those older than the ttl.
redis.call('ZREMRANGEBYSCORE', index, '-inf', now - tonumber(ttl))
return {'ok'}
"#,
    )
});

impl ShardBroker {
    pub(super) async fn record_history_entries(
        &self,
        entries: &[(String, String)],
    ) -> Result<(), BrokerError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut invocation = RECORD.prepare_invoke();
        invocation
            .arg(self.inner.keys.prefix())
            .arg(MAX_JOURNEYS)
            .arg(MAX_EVENTS)
            .arg(HISTORY_TTL.as_millis() as u64)
            .arg(entries.len());
        for (correlation, json) in entries {
            invocation.arg(correlation).arg(json);
        }
        invocation
            .invoke_async::<Value>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(super) async fn journey(&self, correlation: &str) -> Result<Vec<String>, BrokerError> {
        redis::cmd("LRANGE")
            .arg(self.inner.keys.journey(correlation))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }
}

impl SharedHistory for ShardBroker {
    fn record(&self, entries: Vec<(String, String)>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.guarded("history", async move {
            self.record_history_entries(&entries).await
        }))
    }

    fn entries<'a>(
        &'a self,
        correlation: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, BrokerError>> {
        Box::pin(self.guarded("history", self.journey(correlation)))
    }
}
