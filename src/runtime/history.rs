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
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use crate::broker::Broker;
use crate::event::Event;

const SHARDS: usize = 16;
/// Journeys kept (in total, across shards).
pub const MAX_JOURNEYS: usize = 10_000;
/// Events kept per journey.
pub const MAX_EVENTS_PER_JOURNEY: usize = 1_000;
/// Bytes of entries kept (in total, across shards): past them the oldest journeys go
/// first, whatever their count. Client-chosen ids are bounded (`event::limits`), so this
/// holds about 200,000 entries of long ids, or more of ULIDs.
pub const MAX_BYTES: usize = 64 << 20;

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
    /// Its W3C `traceparent`, when it carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
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
    kept: Kept,
}

impl Pending {
    /// Captures what the history keeps of `event`.
    pub fn of(event: &Event, emitted_by: &str, generation: Option<u64>) -> Pending {
        Pending {
            correlation: event.correlation_id.clone(),
            kept: Kept::of(event, emitted_by, generation),
        }
    }
}

/// What the history keeps of one event (a `TraceEntry` when read): its strings back to
/// back in one heap block. Every handled event is recorded, and every recorded journey is
/// forgotten again within seconds under load, so five strings an entry were five blocks to
/// make and, later and cold in the cache, five to free.
#[derive(Clone, Debug)]
struct Kept {
    /// The id, causation id, topic, emitter and `traceparent`, back to back.
    text: Box<str>,
    /// Where each of them but the id (which starts at 0) starts in `text`.
    starts: [usize; 4],
    has_causation: bool,
    has_traceparent: bool,
    generation: Option<u64>,
    time: SystemTime,
}

impl Kept {
    fn of(event: &Event, emitted_by: &str, generation: Option<u64>) -> Kept {
        let causation = event.causation_id.as_deref();
        let traceparent = event
            .extensions
            .get(crate::tracecontext::TRACEPARENT)
            .and_then(|v| v.as_str());
        let parts = [
            event.id.as_str(),
            causation.unwrap_or(""),
            event.topic.as_str(),
            emitted_by,
            traceparent.unwrap_or(""),
        ];
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut starts = [0; 4];
        for (k, part) in parts.iter().enumerate() {
            if k > 0 {
                starts[k - 1] = text.len();
            }
            text.push_str(part);
        }
        Kept {
            text: text.into_boxed_str(),
            starts,
            has_causation: causation.is_some(),
            has_traceparent: traceparent.is_some(),
            generation,
            time: event.time,
        }
    }

    /// The `k`th string: 0 the id, 1 the causation id, 2 the topic, 3 the emitter, 4 the
    /// `traceparent`.
    fn part(&self, k: usize) -> &str {
        let start = if k == 0 { 0 } else { self.starts[k - 1] };
        let end = self.starts.get(k).copied().unwrap_or(self.text.len());
        &self.text[start..end]
    }

    fn entry(&self) -> TraceEntry {
        TraceEntry {
            id: self.part(0).to_owned(),
            causation_id: self.has_causation.then(|| self.part(1).to_owned()),
            topic: self.part(2).to_owned(),
            emitted_by: self.part(3).to_owned(),
            generation: self.generation,
            time: self.time,
            traceparent: self.has_traceparent.then(|| self.part(4).to_owned()),
        }
    }

    /// About how much memory the entry holds (and its share of its journey's key,
    /// counted by the caller).
    fn bytes(&self) -> usize {
        const FIXED: usize = 160;
        FIXED + self.text.len()
    }
}

#[derive(Default)]
struct Shard {
    journeys: HashMap<String, Vec<Kept>>,
    order: VecDeque<String>,
    /// The entries' sizes (`Kept::bytes` and the key's length), summed over every journey.
    bytes: usize,
}

impl Shard {
    fn forget_oldest(&mut self) {
        let Some(oldest) = self.order.pop_front() else {
            return;
        };
        if let Some(events) = self.journeys.remove(&oldest) {
            let freed: usize = events.iter().map(|e| e.bytes() + oldest.len()).sum();
            self.bytes = self.bytes.saturating_sub(freed);
        }
    }
}

/// The history.
pub struct History {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    /// On a broker that keeps a shared history (Redis): entries are also handed here, to be
    /// shipped in batches by `ship`. Lossy: when the shipper falls behind, entries are
    /// dropped (and counted) rather than slowing the handlers.
    shipping: Option<mpsc::Sender<(String, Kept)>>,
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
        if broker.history().is_some() {
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

/// Entries a second a process ships to the shared history before it ships a sample (see
/// `Sampler`).
const SHIP_BUDGET: u64 = 500;
/// How often the sampler looks at the rate again.
const SAMPLE_WINDOW: Duration = Duration::from_millis(250);

/// Which journeys go to the shared history. While entries come at up to `SHIP_BUDGET` a
/// second, all of them. Above that, only the journeys whose correlation id hashes into one
/// in 2^k, with k set every `SAMPLE_WINDOW` from the rate just seen: at 20,000 entries a
/// second the shared history keeps one journey in 64, and a journey kept is kept whole.
/// Within a window, a burst past the window's share of the budget raises the level at once
/// (a burst of 20,000 enqueues fits in one window).
/// (Under such load the history's 10,000 journeys would be overwritten within a second
/// anyway; recording every one of them was half the Redis commands of a chain.) The hash
/// is the same in every process, so processes at one level keep the same journeys; a
/// busier process keeps a subset of a quieter one's. A journey left out is still traced
/// from the local history of the process that handled it.
#[derive(Debug)]
struct Sampler {
    /// Keep one journey in 2^level.
    level: u32,
    since: Instant,
    seen: u64,
}

impl Sampler {
    fn new(now: Instant) -> Sampler {
        Sampler {
            level: 0,
            since: now,
            seen: 0,
        }
    }

    fn keeps(&mut self, correlation: &str, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= SAMPLE_WINDOW {
            let per_second =
                self.seen * 1000 / u64::try_from(elapsed.as_millis()).unwrap_or(1).max(1);
            let level = (0..16)
                .find(|k| per_second >> k <= SHIP_BUDGET)
                .unwrap_or(16);
            if level != self.level {
                debug!(
                    entries_per_second = per_second,
                    keep_one_journey_in = 1u64 << level,
                    "shared history sampling"
                );
            }
            self.level = level;
            self.since = now;
            self.seen = 0;
        }
        self.seen += 1;
        // A burst does not wait for the window's end: past the window's share of the
        // budget at this level, the next level applies at once.
        if self.seen >> self.level > SHIP_BUDGET * SAMPLE_WINDOW.as_millis() as u64 / 1000
            && self.level < 16
        {
            self.level += 1;
        }
        self.level == 0 || fnv1a(correlation.as_bytes()) & ((1 << self.level) - 1) == 0
    }
}

/// FNV-1a, 64 bits: a hash that is the same in every process and every build.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Sends entries to the broker in batches until the history is dropped.
async fn ship<B: Broker>(broker: B, mut rx: mpsc::Receiver<(String, Kept)>) {
    let mut taken = Vec::with_capacity(SHIPMENT);
    let mut failing = false;
    let mut sampler = Sampler::new(Instant::now());
    while rx.recv_many(&mut taken, SHIPMENT).await > 0 {
        let now = Instant::now();
        let batch: Vec<(String, String)> = taken
            .drain(..)
            .filter(|(correlation, _)| sampler.keeps(correlation, now))
            .filter_map(|(correlation, kept)| {
                Some((correlation, serde_json::to_string(&kept.entry()).ok()?))
            })
            .collect();
        if batch.is_empty() {
            continue;
        }
        // Spawned only for a broker that keeps a shared history (see `for_broker`).
        let Some(shared) = broker.history() else {
            return;
        };
        match shared.record(batch).await {
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
        let Pending { correlation, kept } = pending;
        if let Some(shipping) = &self.shipping {
            if shipping
                .try_send((correlation.clone(), kept.clone()))
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
        let bytes = kept.bytes() + correlation.len();
        match shard.journeys.get_mut(&correlation) {
            Some(events) => {
                if events.len() >= MAX_EVENTS_PER_JOURNEY {
                    return;
                }
                events.push(kept);
            }
            None => {
                if shard.order.len() >= MAX_JOURNEYS / SHARDS {
                    shard.forget_oldest();
                }
                shard.order.push_back(correlation.clone());
                shard.journeys.insert(correlation, vec![kept]);
            }
        }
        shard.bytes += bytes;
        // The journey just written is the newest: older ones go first, and it goes last.
        while shard.bytes > MAX_BYTES / SHARDS && shard.order.len() > 1 {
            shard.forget_oldest();
        }
    }

    /// The recorded events of one journey, in the order they were recorded.
    pub fn journey(&self, correlation: &str) -> Option<Vec<TraceEntry>> {
        let shard = self
            .shard(correlation)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shard
            .journeys
            .get(correlation)
            .map(|events| events.iter().map(Kept::entry).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_shared_history_gets_every_journey_at_a_low_rate_and_whole_journeys_at_a_high_one() {
        let start = Instant::now();
        let mut sampler = Sampler::new(start);
        // 100 entries in one window: 400 a second, within the budget.
        let quiet: Vec<String> = (0..100).map(|n| format!("quiet-{n}")).collect();
        assert!(quiet.iter().all(|c| sampler.keeps(c, start)));
        let later = start + SAMPLE_WINDOW;
        assert!(sampler.keeps("quiet-next", later), "still every journey");
        // 5,000 entries in the next window: 20,000 a second, forty times the budget, so one
        // journey in 64 is kept from the window after.
        for n in 0..4_999 {
            sampler.keeps(&format!("busy-{n}"), later);
        }
        let busy = later + SAMPLE_WINDOW;
        // (3,000 and their 3,000 repeats below stay within this window's share at that
        // level, so the level holds through the window.)
        let journeys: Vec<String> = (0..3_000).map(|n| format!("journey-{n}")).collect();
        let kept: Vec<&String> = journeys.iter().filter(|c| sampler.keeps(c, busy)).collect();
        assert_eq!(sampler.level, 6, "{sampler:?}");
        assert!(
            (25..80).contains(&kept.len()),
            "about one in 64 kept: {}",
            kept.len()
        );
        // The decision is the journey's: every event of a kept journey is kept, and every
        // event of a dropped one dropped.
        for journey in &journeys {
            let first = kept.contains(&journey);
            assert_eq!(sampler.keeps(journey, busy), first, "{journey}");
        }
        // The rate falls: every journey again.
        sampler.keeps("any", busy + SAMPLE_WINDOW * 40);
        let quiet_again = busy + SAMPLE_WINDOW * 41;
        sampler.keeps("any", quiet_again);
        assert_eq!(sampler.level, 0);
        assert!(sampler.keeps("journey-1", quiet_again));
    }

    /// A burst within one window (20,000 enqueues at once, say) does not wait for the
    /// window's end: the level rises as it goes, and little more than the window's share
    /// of the budget is shipped.
    #[test]
    fn a_burst_is_sampled_within_its_window() {
        let start = Instant::now();
        let mut sampler = Sampler::new(start);
        let kept = (0..20_000)
            .filter(|n| sampler.keeps(&format!("burst-{n}"), start))
            .count();
        assert!(sampler.level >= 7, "{sampler:?}");
        assert!((125..1_500).contains(&kept), "kept {kept} of 20,000");
    }

    #[test]
    fn the_history_is_bounded_by_bytes_whatever_the_ids() {
        let history = History::default();
        // Journeys of long ids (256 bytes each, the most a client may choose): the count
        // bound alone would let them hold far more than the byte budget.
        let long = "x".repeat(240);
        // 5,000 journeys (half the count bound) of 40 entries: some 180 MB at that size.
        for n in 0..5_000 {
            let mut event = Event::new("t", "test", json!({}));
            event.correlation_id = format!("{long}{n:016}");
            event.id = event.correlation_id.clone();
            for _ in 0..40 {
                history.record(&event, &long, None);
            }
        }
        let bytes: usize = history.shards.iter().map(|s| s.lock().unwrap().bytes).sum();
        assert!(bytes <= MAX_BYTES, "{bytes}");
        assert!(
            bytes > MAX_BYTES / 2,
            "the budget, not the count, bounded it: {bytes}"
        );
        let counted: usize = history
            .shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.journeys
                    .iter()
                    .flat_map(|(c, events)| events.iter().map(move |e| e.bytes() + c.len()))
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(bytes, counted, "the running sum matches the entries");
        // The newest journey is kept.
        let newest = format!("{long}{:016}", 4_999);
        assert_eq!(history.journey(&newest).map(|j| j.len()), Some(40));
        assert!(history.journey(&format!("{long}{:016}", 0)).is_none());
    }

    #[test]
    fn an_entry_reads_back_as_it_was_recorded() {
        let mut first = Event::new("orderCreated", "test", json!({}));
        first.extensions.insert(
            crate::tracecontext::TRACEPARENT.into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        let mut second = first.caused("inventoryReserved", "test", json!({}));
        second.causation_id = Some(String::new());
        second.extensions.clear();
        for (event, by, generation) in [(&first, "api", None), (&second, "", Some(7))] {
            let kept = Kept::of(event, by, generation);
            let expected = TraceEntry {
                id: event.id.clone(),
                causation_id: event.causation_id.clone(),
                topic: event.topic.clone(),
                emitted_by: by.to_owned(),
                generation,
                time: event.time,
                traceparent: event
                    .extensions
                    .get(crate::tracecontext::TRACEPARENT)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned),
            };
            assert_eq!(kept.entry(), expected);
        }
        // An empty causation id is kept as one, not as none.
        assert_eq!(
            Kept::of(&second, "x", None).entry().causation_id.as_deref(),
            Some("")
        );
        assert_eq!(Kept::of(&first, "x", None).entry().causation_id, None);
    }

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
