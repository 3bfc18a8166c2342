//! Chain instances on Redis, shared by the trackers of every process: each process's
//! tracker reads its share of the step events (the `chain:NAME` group competes like any
//! other), so the state of an instance cannot live in one tracker's memory.
//!
//! | key (`C` = `P c:{chain}`) | type | holds |
//! |---|---|---|
//! | `C:i:{correlation}` | hash | one instance: `t{i}` (step i's event time, unix ms), `last_step`, `last` (event JSON); `done` once finished |
//! | `C:due` | zset | instances by the unix ms they time out at |
//! | `C:stats` | hash | `started`, `completed`, `timed_out`, `in_flight` |
//! | `C:ms` / `C:ms:{step}` | list | recent durations (newest first, capped) |
//!
//! Step durations are taken from the step events' own times (set by the process that
//! emitted each), since two trackers may see the steps of one instance in any order and
//! at different moments; timeouts run on the Redis server's clock. A redelivered step is
//! not counted twice. Instances without a timeout expire from Redis after a day
//! (their `in_flight` count is then stale; give chains a timeout).

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, Value};

use super::failure::{unavailable, unexpected};
use super::reply::{int, items, text};
use super::scripts::script;
use super::ShardBroker;
use crate::broker::capability::BoxFuture;
use crate::broker::{BrokerError, ChainCounts, ChainSpec, ChainStep, ExpiredChain, SharedChains};
use crate::event::Event;

use super::defaults::{CHAIN_SAMPLES as SAMPLES, CHAIN_UNTIMED_TTL};

/// `SharedChains::observe`: ARGV P, chain, steps, timeout ms ('' for none), samples,
/// untimed ttl, n, n × (correlation, step, event time unix ms, event json).
///
/// Steps may arrive in any order (two trackers read different steps of one instance), so
/// an instance is a set of step times `t{i}` (the events' own times) filled in as they
/// come; it is started by step 0 and complete once step 0 and the last step are both in.
/// A completed instance leaves a short-lived tombstone (`done`) so that a redelivered step
/// does not start it again.
static OBSERVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local chain, nsteps, timeout = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local samples, untimed = tonumber(ARGV[5]), tonumber(ARGV[6])
local base = P .. 'c:' .. chain
local stats = base .. ':stats'
local now = now_ms()
local function sample(key, ms)
  if ms < 0 then ms = 0 end
  redis.call('LPUSH', key, fmt(ms))
  redis.call('LTRIM', key, 0, samples - 1)
end
local i = 8
for _ = 1, tonumber(ARGV[7]) do
  local corr, step, t, json = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  local key = base .. ':i:' .. corr
  if not redis.call('HGET', key, 'done') and redis.call('HSETNX', key, 't' .. step, t) == 1 then
    local last_step = tonumber(redis.call('HGET', key, 'last_step') or '-1')
    if step > last_step then redis.call('HSET', key, 'last_step', step, 'last', json) end
    if step == 0 then
      redis.call('HINCRBY', stats, 'started', 1)
      redis.call('HINCRBY', stats, 'in_flight', 1)
      if timeout ~= '' then
        local due = now + tonumber(timeout)
        redis.call('ZADD', base .. ':due', due, corr)
        redis.call('PEXPIREAT', key, due + 60000)
      else
        redis.call('PEXPIRE', key, untimed)
      end
    elseif redis.call('HEXISTS', key, 't0') == 0 then
      -- A later step seen first: kept until step 0 comes, or forgotten.
      if timeout ~= '' then redis.call('PEXPIRE', key, tonumber(timeout) + 60000)
      else redis.call('PEXPIRE', key, untimed) end
    end
    local t0 = redis.call('HGET', key, 't0')
    local tl = redis.call('HGET', key, 't' .. (nsteps - 1))
    if t0 and tl then
      sample(base .. ':ms', tonumber(tl) - tonumber(t0))
      for s = 1, nsteps - 1 do
        local a = redis.call('HGET', key, 't' .. (s - 1))
        local b = redis.call('HGET', key, 't' .. s)
        if a and b then sample(base .. ':ms:' .. s, tonumber(b) - tonumber(a)) end
      end
      redis.call('DEL', key)
      redis.call('HSET', key, 'done', '1')
      redis.call('PEXPIRE', key, 60000)
      redis.call('ZREM', base .. ':due', corr)
      redis.call('HINCRBY', stats, 'completed', 1)
      redis.call('HINCRBY', stats, 'in_flight', -1)
    end
  end
end
return {'ok'}
"#,
    )
});

/// `SharedChains::expire`: ARGV P, chain, steps, limit. Takes instances past due: each one's
/// (correlation, reached step indexes joined by ',', waited ms, last event json).
static EXPIRE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local base = P .. 'c:' .. ARGV[2]
local nsteps = tonumber(ARGV[3])
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', base .. ':due', '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, corr in ipairs(due) do
  redis.call('ZREM', base .. ':due', corr)
  local key = base .. ':i:' .. corr
  local got = redis.call('HMGET', key, 't0', 'last', 'done')
  if got[1] and not got[3] then
    local reached = {}
    for s = 0, nsteps - 1 do
      if redis.call('HEXISTS', key, 't' .. s) == 1 then table.insert(reached, tostring(s)) end
    end
    redis.call('DEL', key)
    redis.call('HSET', key, 'done', '1')
    redis.call('PEXPIRE', key, 60000)
    redis.call('HINCRBY', base .. ':stats', 'timed_out', 1)
    redis.call('HINCRBY', base .. ':stats', 'in_flight', -1)
    table.insert(out, {corr, table.concat(reached, ','), fmt(now - tonumber(got[1])), got[2]})
  end
end
return out
"#,
    )
});

impl ShardBroker {
    pub(super) async fn observe_chain(
        &self,
        chain: &ChainSpec,
        steps: &[ChainStep],
    ) -> Result<(), BrokerError> {
        if steps.is_empty() {
            return Ok(());
        }
        let mut invocation = OBSERVE.prepare_invoke();
        invocation
            .arg(self.inner.keys.prefix())
            .arg(&chain.name)
            .arg(chain.steps)
            // '' for a chain without a timeout.
            .arg(
                chain
                    .timeout
                    .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).to_string())
                    .unwrap_or_default(),
            )
            .arg(SAMPLES)
            .arg(CHAIN_UNTIMED_TTL.as_millis() as u64)
            .arg(steps.len());
        for step in steps {
            let time_ms = step
                .event
                .time
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            invocation
                .arg(&step.event.correlation_id)
                .arg(step.step)
                .arg(time_ms)
                .arg(step.event.to_stored_json());
        }
        invocation
            .invoke_async::<Value>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(super) async fn expire_chains(
        &self,
        chain: &ChainSpec,
        limit: usize,
    ) -> Result<Vec<ExpiredChain>, BrokerError> {
        let reply: Value = EXPIRE
            .prepare_invoke()
            .arg(self.inner.keys.prefix())
            .arg(&chain.name)
            .arg(chain.steps)
            .arg(limit)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut expired = Vec::new();
        for entry in items(&reply)? {
            let [correlation, reached, waited, last] = items(entry)? else {
                return Err(unexpected("a timed-out chain instance", entry));
            };
            let correlation = text(correlation)?;
            let reached = text(reached)?
                .split(',')
                .map(|step| {
                    step.parse()
                        .map_err(|_| unexpected("the steps a chain instance reached", entry))
                })
                .collect::<Result<Vec<usize>, BrokerError>>()?;
            // The first step's time is the emitting process's clock, which may run ahead
            // of Redis's: a wait below zero is none.
            let waited = u64::try_from(int(waited)?).unwrap_or(0);
            // A last event that is missing (nil) or not JSON was not written by edaflow.
            let last = text(last)
                .ok()
                .and_then(|json| serde_json::from_str::<Event>(&json).ok());
            let Some(last) = last else {
                tracing::warn!(chain = %chain.name, %correlation, "a timed-out chain instance had an unreadable last event");
                continue;
            };
            expired.push(ExpiredChain {
                correlation,
                reached,
                waited: Duration::from_millis(waited),
                last,
            });
        }
        Ok(expired)
    }

    pub(super) async fn counts_of_chain(
        &self,
        chain: &ChainSpec,
    ) -> Result<ChainCounts, BrokerError> {
        let base = self.inner.keys.chain(&chain.name);
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(format!("{base}:stats"));
        pipe.cmd("LRANGE").arg(format!("{base}:ms")).arg(0).arg(-1);
        for step in 1..chain.steps {
            pipe.cmd("LRANGE")
                .arg(format!("{base}:ms:{step}"))
                .arg(0)
                .arg(-1);
        }
        let replies: Vec<Value> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        // One reply per command of the pipeline: the stats, then `chain.steps` lists.
        if replies.len() != chain.steps.max(1) + 1 {
            return Err(unexpected("a chain's counts and durations", &replies));
        }
        let mut replies = replies.into_iter();
        let mut next = || {
            replies
                .next()
                .ok_or_else(|| unexpected("a chain's counts and durations", &chain.name))
        };
        let stats: std::collections::HashMap<String, i64> = redis::from_redis_value(next()?)
            .map_err(|e| unexpected("a chain's counts", &e.to_string()))?;
        // Lists are newest first; reports want newest last.
        let sample = |v: Value| -> Result<Vec<f64>, BrokerError> {
            let mut ms: Vec<f64> = redis::from_redis_value(v)
                .map_err(|e| unexpected("a chain's durations", &e.to_string()))?;
            ms.reverse();
            Ok(ms)
        };
        let durations_ms = sample(next()?)?;
        let mut step_ms = Vec::new();
        for step in 1..chain.steps {
            let sampled = sample(next()?)?;
            if !sampled.is_empty() {
                step_ms.push((step, sampled));
            }
        }
        // A counter never incremented is not in the hash yet: none. Counters only count up
        // from zero, bar `in_flight`, which each instance raises before it lowers it.
        let get = |k: &str| -> Result<u64, BrokerError> {
            let n = stats.get(k).copied().unwrap_or(0);
            u64::try_from(n).map_err(|_| unexpected("a chain's counter", &(k, n)))
        };
        Ok(ChainCounts {
            started: get("started")?,
            completed: get("completed")?,
            timed_out: get("timed_out")?,
            in_flight: get("in_flight")?,
            durations_ms,
            step_ms,
        })
    }
}

impl SharedChains for ShardBroker {
    fn observe<'a>(
        &'a self,
        chain: &'a ChainSpec,
        steps: &'a [ChainStep],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.guarded("chains", self.observe_chain(chain, steps)))
    }

    fn expire<'a>(
        &'a self,
        chain: &'a ChainSpec,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ExpiredChain>, BrokerError>> {
        Box::pin(self.guarded("chains", self.expire_chains(chain, limit)))
    }

    fn counts<'a>(
        &'a self,
        chain: &'a ChainSpec,
    ) -> BoxFuture<'a, Result<ChainCounts, BrokerError>> {
        Box::pin(self.guarded("chains", self.counts_of_chain(chain)))
    }
}
