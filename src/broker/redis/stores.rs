//! State stores on Redis: each store is a hash `P s:{store}` (field: the key, value: the
//! JSON text), with a sorted set `P s:{store}:keys` of its keys (all at score 0, so
//! ordered by bytes) that makes a prefix scan a range read in key order, as on the memory
//! broker. Writes are not made here: they are effects, applied by the commit script in
//! the same atomic step as the rest of a handler's run (see `scripts::BATCH`).
//!
//! Handlers read ahead (`read_ahead`, see `crate::store`): the reads a run wanted are made
//! together, pipelined on the broker's shared asynchronous connection, and the handler runs
//! again with the answers, so no run waits on the network while it holds a worker thread.
//! What reads while it runs without reading ahead (`GET /stores/...`, `edaflow test`) goes
//! through `StoreRead`: synchronous, over a small pool of blocking connections, one round
//! trip each. Either way a read that fails (Redis unreachable) fails the handler's run,
//! which is retried, rather than reading as empty.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use redis::Value as Reply;

use super::cluster::Node;
use super::defaults;
use super::keys::Keys;
use super::stored::excerpt;
use crate::store::{Fetched, StoreError, StoreRead, StoreWant};

/// Blocking connections kept for reuse; more may be opened under load, and the surplus is
/// closed when returned.
const POOL_SIZE: usize = defaults::STORE_POOL;

/// Reads the stores of one namespace.
pub(crate) struct RedisStores {
    node: Arc<Node>,
    keys: Keys,
    /// Connections with the node generation they were opened in.
    pool: Mutex<Vec<(u64, redis::Connection)>>,
}

impl RedisStores {
    pub(super) fn new(node: Arc<Node>, keys: Keys) -> RedisStores {
        RedisStores {
            node,
            keys,
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a pooled connection. A connection that failed, or that goes to a master
    /// the namespace has moved away from, is dropped, not returned.
    fn with_conn<T>(
        &self,
        store: &str,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let failed = |e: redis::RedisError| StoreError {
            store: store.to_owned(),
            reason: e.to_string(),
        };
        let generation = self.node.generation();
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .filter(|(g, _)| *g == generation);
        let mut conn = match pooled {
            Some((_, conn)) => conn,
            None => {
                let conn = self
                    .node
                    .client()
                    .get_connection_with_timeout(defaults::SYNC_CONNECT_TIMEOUT)
                    .map_err(failed)?;
                conn.set_read_timeout(Some(defaults::STORE_READ_TIMEOUT))
                    .map_err(failed)?;
                conn
            }
        };
        let value = f(&mut conn).map_err(failed)?;
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_SIZE {
            pool.push((generation, conn));
        }
        Ok(value)
    }

    /// Makes `wants` on `conn`: one pipelined round trip, and a second one for the values
    /// of the keys that scans found. Scans return at most `scan_limit` entries each.
    pub(crate) async fn read_ahead(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        wants: &[StoreWant],
        scan_limit: usize,
    ) -> Result<Vec<Fetched>, StoreError> {
        if wants.is_empty() {
            return Ok(Vec::new());
        }
        let store_of = |want: &StoreWant| match want {
            StoreWant::Get { store, .. } | StoreWant::Scan { store, .. } => store.clone(),
        };
        // `wants` is not empty here: the first want names the store in errors.
        let failed = |e: redis::RedisError| StoreError {
            store: wants.first().map(store_of).unwrap_or_default(),
            reason: e.to_string(),
        };
        let mut reads = redis::pipe();
        for want in wants {
            match want {
                StoreWant::Get { store, key } => {
                    reads.cmd("HGET").arg(self.keys.store(store)).arg(key);
                }
                StoreWant::Scan { store, prefix } => {
                    let (from, to) = lex_range(prefix);
                    reads
                        .cmd("ZRANGE")
                        .arg(self.keys.store_keys(store))
                        .arg(from)
                        .arg(to)
                        .arg("BYLEX")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(scan_limit.max(1));
                }
            }
        }
        let replies: Vec<Reply> = reads.query_async(conn).await.map_err(failed)?;
        if replies.len() != wants.len() {
            return Err(StoreError {
                store: wants.first().map(store_of).unwrap_or_default(),
                reason: format!("{} replies to {} reads", replies.len(), wants.len()),
            });
        }
        // The keys each scan found, and one HMGET for the values of each scan that found any.
        let mut found_keys: Vec<Vec<String>> = Vec::new();
        let mut values = redis::pipe();
        let mut hmgets = 0;
        for (want, reply) in wants.iter().zip(&replies) {
            if let StoreWant::Scan { store, .. } = want {
                let Reply::Array(keys) = reply else {
                    return Err(unexpected_reply(store, reply));
                };
                let keys = keys
                    .iter()
                    .map(|key| bulk_text(store, key)?.ok_or_else(|| unexpected_reply(store, key)))
                    .collect::<Result<Vec<String>, StoreError>>()?;
                if !keys.is_empty() {
                    values.cmd("HMGET").arg(self.keys.store(store)).arg(&keys);
                    hmgets += 1;
                }
                found_keys.push(keys);
            }
        }
        let mut scanned: Vec<Reply> = if hmgets > 0 {
            values.query_async(conn).await.map_err(failed)?
        } else {
            Vec::new()
        };
        scanned.reverse();
        found_keys.reverse();
        let mut out = Vec::with_capacity(wants.len());
        for (want, reply) in wants.iter().zip(replies) {
            match want {
                StoreWant::Get { store, key } => {
                    // Nil: no value under the key.
                    let value = bulk_text(store, &reply)?
                        .map(|t| parse(store, key, &t))
                        .transpose()?;
                    out.push(Fetched::Value(value));
                }
                StoreWant::Scan { store, .. } => {
                    // One list of keys was pushed for each scan above, in this order.
                    let keys = found_keys.pop().unwrap_or_default();
                    let texts = if keys.is_empty() {
                        Vec::new()
                    } else {
                        match scanned.pop() {
                            Some(Reply::Array(texts)) if texts.len() == keys.len() => texts,
                            other => return Err(unexpected_reply(store, &other)),
                        }
                    };
                    let mut entries = Vec::with_capacity(keys.len());
                    for (key, text) in keys.into_iter().zip(texts) {
                        // A key removed between the two reads is skipped (nil).
                        if let Some(text) = bulk_text(store, &text)? {
                            let value = parse(store, &key, &text)?;
                            entries.push((key, value));
                        }
                    }
                    out.push(Fetched::Entries(entries));
                }
            }
        }
        Ok(out)
    }
}

/// A string reply as text; `None` for nil (a key or field that does not exist).
///
/// # Errors
/// A reply of another kind, which no read of a store answers.
fn bulk_text(store: &str, reply: &Reply) -> Result<Option<String>, StoreError> {
    match reply {
        Reply::BulkString(bytes) => Ok(Some(String::from_utf8_lossy(bytes).into_owned())),
        Reply::SimpleString(s) => Ok(Some(s.clone())),
        Reply::Nil => Ok(None),
        other => Err(unexpected_reply(store, other)),
    }
}

/// The error for a reply of a shape no read of a store answers.
fn unexpected_reply(store: &str, reply: &impl std::fmt::Debug) -> StoreError {
    StoreError {
        store: store.to_owned(),
        reason: format!(
            "unexpected reply from Redis: {}",
            excerpt(format!("{reply:?}").as_bytes(), 256)
        ),
    }
}

/// The ZRANGE BYLEX bounds of the keys starting with `prefix`: every such key sorts in
/// [prefix, prefix 0xFF), as no UTF-8 text has a 0xFF byte.
fn lex_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (b"-".to_vec(), b"+".to_vec());
    }
    let mut to = b"(".to_vec();
    to.extend_from_slice(prefix.as_bytes());
    to.push(0xFF);
    (format!("[{prefix}").into_bytes(), to)
}

fn parse(store: &str, key: &str, text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError {
        store: store.to_owned(),
        reason: format!("the value under {key:?} is not JSON: {e}"),
    })
}

impl StoreRead for RedisStores {
    fn get(&self, store: &str, key: &str) -> Result<Option<Value>, StoreError> {
        let hash = self.keys.store(store);
        let text: Option<String> = self.with_conn(store, |conn| {
            redis::cmd("HGET").arg(&hash).arg(key).query(conn)
        })?;
        text.map(|t| parse(store, key, &t)).transpose()
    }

    fn scan(
        &self,
        store: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let hash = self.keys.store(store);
        let index = self.keys.store_keys(store);
        let (from, to) = lex_range(prefix);
        let (keys, values): (Vec<String>, Vec<Option<String>>) = self.with_conn(store, |conn| {
            let keys: Vec<String> = redis::cmd("ZRANGE")
                .arg(&index)
                .arg(&from)
                .arg(&to)
                .arg("BYLEX")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query(conn)?;
            if keys.is_empty() {
                return Ok((keys, Vec::new()));
            }
            let values: Vec<Option<String>> =
                redis::cmd("HMGET").arg(&hash).arg(&keys).query(conn)?;
            Ok((keys, values))
        })?;
        let mut found = Vec::with_capacity(keys.len());
        for (key, text) in keys.into_iter().zip(values) {
            // A key removed between the two reads is skipped.
            if let Some(text) = text {
                let value = parse(store, &key, &text)?;
                found.push((key, value));
            }
        }
        Ok(found)
    }
}
