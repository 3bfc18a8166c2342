//! The process registry on Redis (`Processes`): one hash per namespace, `P processes`,
//! process id -> `{seen ms}\n{ProcessInfo JSON}`, where the seen time is Redis's clock when
//! the entry was last refreshed. Redis's clock, not each process's, so that processes on
//! machines whose clocks disagree still age each other's entries alike.
//!
//! A heartbeat rewrites the process's entry; a listing returns the entries seen within
//! `GONE_AFTER` with their age, and removes the others in the same script run, so that
//! whoever lists after a process vanished cleans up after it. The process's id is the
//! broker's `instance`, which its consumer names and reply channel also carry.
//!
//! Every call goes through the circuit (`guarded`) and waits at most `response_timeout`,
//! the reconnects of the shared connection included. This module must not decide anything
//! from the registry: it is informational.

use std::sync::LazyLock;

use redis::{Script, Value};
use tracing::debug;

use super::failure::{self, unavailable, unexpected};
use super::reply::{count, items, text};
use super::scripts::script;
use super::ShardBroker;
use crate::broker::capability::processes::GONE_AFTER;
use crate::broker::capability::BoxFuture;
use crate::broker::{BrokerError, ProcessInfo, Processes};

/// `heartbeat`: ARGV P, id, info JSON. The entry, seen now.
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
redis.call('HSET', P .. 'processes', ARGV[2], fmt(now_ms()) .. '\n' .. ARGV[3])
return {'ok'}
"#,
    )
});

/// `list`: ARGV P, gone ms. Removes the entries not seen within `gone` ms (and any whose
/// seen time cannot be read), and returns the others as {id, ms since seen, info JSON}...
static LIST: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local key, gone = P .. 'processes', tonumber(ARGV[2])
local now = now_ms()
local entries = redis.call('HGETALL', key)
local live = {}
for i = 1, #entries, 2 do
  local id, value = entries[i], entries[i + 1]
  local newline = string.find(value, '\n', 1, true)
  local seen = newline and tonumber(string.sub(value, 1, newline - 1))
  local age = seen and math.max(now - seen, 0)
  if age and age <= gone then
    table.insert(live, id)
    table.insert(live, fmt(age))
    table.insert(live, string.sub(value, newline + 1))
  else
    redis.call('HDEL', key, id)
  end
end
return live
"#,
    )
});

impl ShardBroker {
    /// Runs one registry command through the circuit, waiting at most `response_timeout`.
    async fn registry<T>(
        &self,
        command: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let wait = self.inner.options.response_timeout;
        self.guarded("process registry", async {
            tokio::time::timeout(wait, command)
                .await
                .unwrap_or_else(|_| {
                    Err(failure::unreachable(format!(
                        "no answer from the process registry within {} ms",
                        wait.as_millis()
                    )))
                })
        })
        .await
    }

    async fn refresh_process(&self, info: &ProcessInfo) -> Result<(), BrokerError> {
        let json = serde_json::to_string(info).map_err(|e| unexpected("a process entry", &e))?;
        HEARTBEAT
            .prepare_invoke()
            .arg(self.inner.keys.prefix())
            .arg(&info.id)
            .arg(json)
            .invoke_async::<Value>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        self.wrote();
        Ok(())
    }

    async fn remove_process(&self, id: &str) -> Result<(), BrokerError> {
        redis::cmd("HDEL")
            .arg(self.inner.keys.processes())
            .arg(id)
            .query_async::<Value>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn live_processes(&self) -> Result<Vec<ProcessInfo>, BrokerError> {
        let reply: Value = LIST
            .prepare_invoke()
            .arg(self.inner.keys.prefix())
            .arg(u64::try_from(GONE_AFTER.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut processes = Vec::new();
        for entry in items(&reply)?.chunks(3) {
            let [id, age, json] = entry else {
                return Err(unexpected("a process entry", &reply));
            };
            let id = text(id)?;
            let seen_ms_ago = count(age)?;
            // An entry edaflow did not write (or a later version's, changed beyond what
            // this one reads) is left out of the list, not fatal to it.
            match serde_json::from_str::<ProcessInfo>(&text(json)?) {
                Ok(info) => processes.push(ProcessInfo {
                    id,
                    seen_ms_ago,
                    this: false,
                    ..info
                }),
                Err(e) => {
                    debug!(process = %id, error = %e, "an unreadable process entry is left out")
                }
            }
        }
        Ok(processes)
    }
}

impl Processes for ShardBroker {
    fn process_id(&self) -> &str {
        &self.inner.instance
    }

    fn heartbeat<'a>(&'a self, info: &'a ProcessInfo) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.registry(self.refresh_process(info)))
    }

    fn deregister<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.registry(self.remove_process(id)))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ProcessInfo>, BrokerError>> {
        Box::pin(self.registry(self.live_processes()))
    }
}
