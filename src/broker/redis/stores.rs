//! State stores on Redis: each store is a hash `P s:{store}` (field: the key, value: the
//! JSON text), with a sorted set `P s:{store}:keys` of its keys (all at score 0, so
//! ordered by bytes) that makes a prefix scan a range read in key order, as on the memory
//! broker. Writes are not made here: they are effects, applied by the commit script in
//! the same atomic step as the rest of a handler's run (see `scripts::BATCH`).
//!
//! Reads are synchronous (a handler reads while its script runs, on the worker thread), so
//! they go over a small pool of blocking connections: one loopback round trip each, and a
//! clear error, failing the handler's run, when Redis cannot be reached.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::cluster::Node;
use crate::store::{StoreError, StoreRead};

/// Blocking connections kept for reuse; more may be opened under load, and the surplus is
/// closed when returned.
const POOL_SIZE: usize = 8;

/// Reads the stores of one namespace.
pub(crate) struct RedisStores {
    node: Arc<Node>,
    prefix: String,
    /// Connections with the node generation they were opened in.
    pool: Mutex<Vec<(u64, redis::Connection)>>,
}

impl RedisStores {
    pub(crate) fn new(node: Arc<Node>, prefix: String) -> RedisStores {
        RedisStores {
            node,
            prefix,
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
                    .get_connection_with_timeout(Duration::from_secs(1))
                    .map_err(failed)?;
                conn.set_read_timeout(Some(Duration::from_secs(2)))
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

    fn hash(&self, store: &str) -> String {
        format!("{}s:{store}", self.prefix)
    }
}

fn parse(store: &str, key: &str, text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError {
        store: store.to_owned(),
        reason: format!("the value under {key:?} is not JSON: {e}"),
    })
}

impl StoreRead for RedisStores {
    fn get(&self, store: &str, key: &str) -> Result<Option<Value>, StoreError> {
        let hash = self.hash(store);
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
        let hash = self.hash(store);
        let index = format!("{hash}:keys");
        let (from, to): (Vec<u8>, Vec<u8>) = if prefix.is_empty() {
            (b"-".to_vec(), b"+".to_vec())
        } else {
            // Every key starting with `prefix` sorts in [prefix, prefix 0xFF): no UTF-8
            // text has a 0xFF byte.
            let mut to = b"(".to_vec();
            to.extend_from_slice(prefix.as_bytes());
            to.push(0xFF);
            (format!("[{prefix}").into_bytes(), to)
        };
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
