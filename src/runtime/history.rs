//! A bounded history of recent journeys, for `edaflow trace`: every event published by a
//! producer, a handler, a relay or a chain tracker is recorded under its correlation id with
//! who emitted it, with which generation's code, and when. Old journeys are forgotten first.
//!
//! Sharded by correlation id so that recording from many workers does not contend on one
//! lock; each record is a short critical section with no `.await`. On a broker that keeps
//! a shared history (Redis) entries are also shipped there in batches, so a journey that
//! crossed processes can be traced from any of them.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{warn, Instrument};

use crate::broker::Broker;
use crate::event::Event;

const SHARDS: usize = 16;
/// Journeys kept (in total, across shards).
pub const MAX_JOURNEYS: usize = 10_000;
/// Events kept per journey.
pub const MAX_EVENTS_PER_JOURNEY: usize = 1_000;

/// One event of a journey.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct TraceEntry {
    pub id: String,
    pub causation_id: Option<String>,
    pub topic: String,
    /// The component that published it (a subscriber, producer, relay or chain).
    pub emitted_by: String,
    /// The flow generation whose code emitted it (none for producers' own events).
    pub generation: Option<u64>,
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
}

mod rfc3339 {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*t))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

/// An entry captured before its event is handed away.
#[derive(Debug)]
pub struct Pending {
    correlation: String,
    entry: TraceEntry,
}

impl Pending {
    /// Captures what the history keeps of `event`.
    pub fn of(event: &Event, emitted_by: &str, generation: Option<u64>) -> Pending {
        Pending {
            correlation: event.correlation_id.clone(),
            entry: TraceEntry {
                id: event.id.clone(),
                causation_id: event.causation_id.clone(),
                topic: event.topic.clone(),
                emitted_by: emitted_by.to_owned(),
                generation,
                time: event.time,
            },
        }
    }
}

#[derive(Default)]
struct Shard {
    journeys: HashMap<String, Vec<TraceEntry>>,
    order: VecDeque<String>,
}

/// The history.
pub struct History {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    /// On a broker that keeps a shared history (Redis): entries are also handed here, to be
    /// shipped in batches by `ship`. Lossy: when the shipper falls behind, entries are
    /// dropped (and counted) rather than slowing the handlers.
    shipping: Option<mpsc::Sender<(String, TraceEntry)>>,
    unshipped: AtomicU64,
}

impl Default for History {
    fn default() -> Self {
        History {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            shipping: None,
            unshipped: AtomicU64::new(0),
        }
    }
}

/// Entries waiting to be shipped before new ones are dropped.
const SHIPPING_BUFFER: usize = 65_536;
/// Entries per shipment.
const SHIPMENT: usize = 512;

impl History {
    /// A history that also ships its entries to `broker` (when it keeps a shared history
    /// and a tokio runtime is running); the shipper ends when the history is dropped.
    pub fn for_broker<B: Broker>(broker: &B) -> History {
        let mut history = History::default();
        if broker.keeps_history() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let (tx, rx) = mpsc::channel(SHIPPING_BUFFER);
                history.shipping = Some(tx);
                let span = tracing::info_span!("history_shipper", component = "history");
                handle.spawn(ship(broker.clone(), rx).instrument(span));
            }
        }
        history
    }

    /// Entries dropped because the shipper fell behind.
    pub fn unshipped(&self) -> u64 {
        self.unshipped.load(Ordering::Relaxed)
    }
}

/// Sends entries to the broker in batches until the history is dropped.
async fn ship<B: Broker>(broker: B, mut rx: mpsc::Receiver<(String, TraceEntry)>) {
    let mut taken = Vec::with_capacity(SHIPMENT);
    let mut failing = false;
    while rx.recv_many(&mut taken, SHIPMENT).await > 0 {
        let batch: Vec<(String, String)> = taken
            .drain(..)
            .filter_map(|(correlation, entry)| {
                Some((correlation, serde_json::to_string(&entry).ok()?))
            })
            .collect();
        match broker.record_history(batch).await {
            Ok(()) => failing = false,
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    warn!(error = %e, "could not ship history entries; some journeys will be incomplete");
                }
            }
        }
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").finish_non_exhaustive()
    }
}

impl History {
    fn shard(&self, correlation: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(correlation) as usize) % SHARDS]
    }

    /// Records an event as published by `emitted_by`.
    pub fn record(&self, event: &Event, emitted_by: &str, generation: Option<u64>) {
        self.insert(Pending::of(event, emitted_by, generation));
    }

    /// Records what `Pending::of` captured (for callers that hand the event away first and
    /// record only once it was accepted).
    pub fn insert(&self, pending: Pending) {
        let Pending { correlation, entry } = pending;
        if let Some(shipping) = &self.shipping {
            if shipping
                .try_send((correlation.clone(), entry.clone()))
                .is_err()
            {
                self.unshipped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut shard = self
            .shard(&correlation)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        match shard.journeys.get_mut(&correlation) {
            Some(events) => {
                if events.len() < MAX_EVENTS_PER_JOURNEY {
                    events.push(entry);
                }
            }
            None => {
                if shard.order.len() >= MAX_JOURNEYS / SHARDS {
                    if let Some(oldest) = shard.order.pop_front() {
                        shard.journeys.remove(&oldest);
                    }
                }
                shard.order.push_back(correlation.clone());
                shard.journeys.insert(correlation, vec![entry]);
            }
        }
    }

    /// The recorded events of one journey, in the order they were recorded.
    pub fn journey(&self, correlation: &str) -> Option<Vec<TraceEntry>> {
        let shard = self
            .shard(correlation)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shard.journeys.get(correlation).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn journeys_are_recorded_and_bounded() {
        let history = History::default();
        let first = Event::new("orderCreated", "test", json!({}));
        let second = first.caused("inventoryReserved", "test", json!({}));
        history.record(&first, "api", None);
        history.record(&second, "reserve", Some(2));
        let journey = history.journey(&first.id).expect("recorded");
        assert_eq!(journey.len(), 2);
        assert_eq!(journey[1].causation_id.as_deref(), Some(first.id.as_str()));
        assert_eq!(journey[1].emitted_by, "reserve");
        assert_eq!(journey[1].generation, Some(2));
        // Eviction is per shard: twice the limit overflows every shard.
        for _ in 0..2 * MAX_JOURNEYS {
            history.record(&Event::new("t", "test", json!({})), "x", None);
        }
        assert!(
            history.journey(&first.id).is_none(),
            "the oldest journeys are forgotten"
        );
    }
}
