//! State stores: named key → JSON value maps that projections write and queries read.
//!
//! Handlers read through `StoreRead` while they run and record writes as `StoreWrite`
//! effects, which the broker applies with the rest of a successful run's effects (never
//! for a run that fails). `MemoryStores` is the memory broker's implementation.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use serde_json::Value;

/// Reading stores while a handler runs.
///
/// Reads can fail (a Redis store when Redis is unreachable): the handler's run then fails
/// and is retried, rather than acting on a value it could not see.
pub trait StoreRead: Send + Sync {
    /// The value under `key`, if any.
    ///
    /// # Errors
    /// `StoreError` when the store cannot be read.
    fn get(&self, store: &str, key: &str) -> Result<Option<Value>, StoreError>;
    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    ///
    /// # Errors
    /// `StoreError` when the store cannot be read.
    fn scan(
        &self,
        store: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError>;
}

/// A read a handler's run asked for and could not be answered from its `ReadAhead`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StoreWant {
    Get { store: String, key: String },
    Scan { store: String, prefix: String },
}

/// The answer to one `StoreWant`.
#[derive(Clone, Debug, PartialEq)]
pub enum Fetched {
    Value(Option<Value>),
    Entries(Vec<(String, Value)>),
}

/// Store reads made ahead of a run: what the run reads instead of the store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadAhead {
    /// (store, key) -> the value, or `None` for a missing key.
    pub values: HashMap<(String, String), Option<Value>>,
    /// (store, prefix) -> the entries a scan found, in key order.
    pub scans: HashMap<(String, String), Vec<(String, Value)>>,
}

impl ReadAhead {
    /// Records the answer to `want`.
    pub fn insert(&mut self, want: StoreWant, fetched: Fetched) {
        match (want, fetched) {
            (StoreWant::Get { store, key }, Fetched::Value(value)) => {
                self.values.insert((store, key), value);
            }
            (StoreWant::Scan { store, prefix }, Fetched::Entries(entries)) => {
                self.scans.insert((store, prefix), entries);
            }
            // A mismatched answer is a broker bug; the read is simply wanted again.
            _ => {}
        }
    }
}

/// A store that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("store `{store}` could not be read: {reason}")]
pub struct StoreError {
    pub store: String,
    pub reason: String,
}

/// One change to a store.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreOp {
    Set(Value),
    Remove,
    /// Add to an integer value (a missing key counts as 0).
    Incr(i64),
}

/// A write a handler made, applied when its run is committed.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreWrite {
    pub store: String,
    pub key: String,
    pub op: StoreOp,
}

/// Stores held in memory.
#[derive(Debug, Default)]
pub struct MemoryStores {
    stores: RwLock<HashMap<String, BTreeMap<String, Value>>>,
}

impl MemoryStores {
    /// Applies writes in order. An `Incr` on a value that is not an integer replaces it.
    pub fn apply(&self, writes: &[StoreWrite]) {
        if writes.is_empty() {
            return;
        }
        let mut stores = self.stores.write().unwrap_or_else(|e| e.into_inner());
        for write in writes {
            let store = stores.entry(write.store.clone()).or_default();
            match &write.op {
                StoreOp::Set(value) => {
                    store.insert(write.key.clone(), value.clone());
                }
                StoreOp::Remove => {
                    store.remove(&write.key);
                }
                StoreOp::Incr(n) => {
                    let now = store.get(&write.key).and_then(Value::as_i64).unwrap_or(0);
                    store.insert(write.key.clone(), Value::from(now.saturating_add(*n)));
                }
            }
        }
    }
}

impl StoreRead for MemoryStores {
    fn get(&self, store: &str, key: &str) -> Result<Option<Value>, StoreError> {
        let stores = self.stores.read().unwrap_or_else(|e| e.into_inner());
        Ok(stores.get(store).and_then(|s| s.get(key)).cloned())
    }

    fn scan(
        &self,
        store: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        let stores = self.stores.read().unwrap_or_else(|e| e.into_inner());
        let Some(store) = stores.get(store) else {
            return Ok(Vec::new());
        };
        Ok(store
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(key: &str, op: StoreOp) -> StoreWrite {
        StoreWrite {
            store: "s".into(),
            key: key.into(),
            op,
        }
    }

    #[test]
    fn writes_apply_in_order_and_scan_by_prefix() {
        let stores = MemoryStores::default();
        stores.apply(&[
            write("customer:ann", StoreOp::Set(json!({"orders": 1}))),
            write("customer:bob", StoreOp::Set(json!({"orders": 2}))),
            write("count", StoreOp::Incr(2)),
            write("count", StoreOp::Incr(3)),
            write("other", StoreOp::Set(json!(1))),
            write("other", StoreOp::Remove),
        ]);
        assert_eq!(stores.get("s", "count").unwrap(), Some(json!(5)));
        assert_eq!(stores.get("s", "other").unwrap(), None);
        let found = stores.scan("s", "customer:", 10).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, "customer:ann");
        assert_eq!(stores.scan("s", "customer:", 1).unwrap().len(), 1);
        assert!(stores.scan("nope", "", 10).unwrap().is_empty());
    }
}
