//! A work queue of the memory broker: items wait in a `BTreeMap` keyed by due time (and a
//! sequence number, so equal due times keep their enqueue order) until they fall due;
//! consumers take due items in due order and compete for them. Given-back (nacked) items go
//! to a `ready` list that is served first.
//!
//! Waiting consumers sleep until the earliest due time or until an item arrives that is
//! due earlier than anything held, so a burst of items with the same delay wakes them once.
//!
//! Items due more than `COLD_AFTER` ahead are kept serialised (their JSON form is a
//! fraction of the in-memory event), so a million reminders due in an hour fit in a few
//! hundred MiB; they are decoded when taken. A queue holds at most its byte budget of items
//! (`MemoryOptions::queue_bytes`) besides its `capacity`. An item that cannot be decoded
//! (a bug: only this module writes them) goes to the dead-letter store, not away.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::error;

use crate::broker::{BrokerError, Delivery, QueueStats};
use crate::event::Event;

/// Items due further ahead than this are stored serialised.
const COLD_AFTER: Duration = Duration::from_secs(5);

/// A held item: ready to hand out, or serialised until it is taken.
enum Held {
    Hot(Arc<Event>),
    Cold(Box<[u8]>),
}

impl Held {
    fn new(item: Arc<Event>, due: Instant) -> Held {
        if due.saturating_duration_since(Instant::now()) > COLD_AFTER {
            if let Some(bytes) = freeze(&item) {
                return Held::Cold(bytes);
            }
        }
        Held::Hot(item)
    }

    /// What the item counts against the queue's byte budget.
    fn bytes(&self) -> usize {
        match self {
            Held::Hot(event) => event.approx_bytes(),
            Held::Cold(bytes) => bytes.len() + COLD_OVERHEAD,
        }
    }

    /// The item, or why it cannot be read back (with its bytes, for the dead letter).
    fn into_event(self) -> Result<Arc<Event>, (String, Box<[u8]>)> {
        match self {
            Held::Hot(event) => Ok(event),
            Held::Cold(bytes) => match serde_json::from_slice::<Event>(&thaw(&bytes)) {
                Ok(event) => Ok(Arc::new(event)),
                Err(e) => Err((e.to_string(), bytes)),
            },
        }
    }
}

/// A held cold item's bookkeeping (its map entry, its box) beside its bytes.
const COLD_OVERHEAD: usize = 64;

/// Where a queue sends an item it cannot decode: the broker's dead-letter store.
pub(crate) type DeadSink = Arc<dyn Fn(Event) + Send + Sync>;

/// The event's JSON, as held: without the two fields nearly every event has the same
/// (`"specversion":"1.0"` first, and `"datacontenttype":"application/json"` after `time`:
/// 57 bytes of some 300), in an allocation of exactly its size (shrinking the serialiser's
/// buffer in place would keep its larger size class under mimalloc). Together they took a
/// million held items from 607 to 327 MiB (`examples/queue_scale`).
fn freeze(item: &Event) -> Option<Box<[u8]>> {
    let json = serde_json::to_vec(item).ok()?;
    let Some(rest) = json.strip_prefix(SPEC_FIELD) else {
        return Some(Box::from(json.as_slice()));
    };
    let mut held = Vec::with_capacity(json.len());
    held.push(b'{');
    // The fields before `datacontenttype` are strings, whose quotes are escaped, so the
    // first unescaped occurrence is the field itself (`data` and extensions come after).
    match (item.datacontenttype == "application/json")
        .then(|| find(rest, DEFAULT_TYPE_FIELD))
        .flatten()
    {
        Some(at) => {
            held.extend_from_slice(&rest[..at]);
            held.extend_from_slice(&rest[at + DEFAULT_TYPE_FIELD.len()..]);
        }
        None => held.extend_from_slice(rest),
    }
    Some(Box::from(held.as_slice()))
}

/// `freeze`'s bytes back as the event's JSON (a missing `datacontenttype` reads as its
/// default).
fn thaw(held: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if held.starts_with(b"{\"specversion\"") {
        return std::borrow::Cow::Borrowed(held);
    }
    let mut json = Vec::with_capacity(held.len() + SPEC_FIELD.len());
    json.extend_from_slice(SPEC_FIELD);
    json.extend_from_slice(held.get(1..).unwrap_or_default());
    std::borrow::Cow::Owned(json)
}

const SPEC_FIELD: &[u8] = b"{\"specversion\":\"1.0\",";
const DEFAULT_TYPE_FIELD: &[u8] = b",\"datacontenttype\":\"application/json\"";

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub(crate) struct WorkQueue {
    pub name: Arc<str>,
    state: Mutex<QueueState>,
    changed: Notify,
    /// The byte budget (`MemoryOptions::queue_bytes`).
    budget: usize,
    dead: DeadSink,
}

struct QueueState {
    capacity: Option<usize>,
    /// Items not yet due: (held item, redeliveries, bytes counted).
    scheduled: BTreeMap<(Instant, u64), (Held, u32, usize)>,
    /// Items given back: (item, redeliveries, bytes counted).
    ready: VecDeque<(Arc<Event>, u32, usize)>,
    /// What `scheduled` and `ready` count against the budget.
    bytes: usize,
    seq: u64,
    in_flight: usize,
    removed: bool,
}

/// What a removed queue held, in order: see `WorkQueue::remove`.
pub(crate) struct Leftover {
    scheduled: Vec<(Instant, (Held, u32, usize))>,
    ready: VecDeque<(Arc<Event>, u32, usize)>,
    /// Items taken and not settled: a removed queue cannot take them back (the runtime
    /// stops a queue's workers before removing it, so on reload there are none).
    pub in_flight: usize,
}

impl Leftover {
    /// How many items are held (not counting those in flight).
    pub fn count(&self) -> usize {
        self.scheduled.len() + self.ready.len()
    }
}

impl QueueState {
    fn held(&self) -> usize {
        self.scheduled.len() + self.ready.len()
    }
}

impl WorkQueue {
    pub fn new(name: &str, capacity: Option<usize>, budget: usize, dead: DeadSink) -> WorkQueue {
        WorkQueue {
            name: name.into(),
            state: Mutex::new(QueueState {
                capacity,
                scheduled: BTreeMap::new(),
                ready: VecDeque::new(),
                bytes: 0,
                seq: 0,
                in_flight: 0,
                removed: false,
            }),
            changed: Notify::new(),
            budget,
            dead,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_capacity(&self, capacity: Option<usize>) {
        self.lock().capacity = capacity;
    }

    /// Marks the queue removed and hands back what it held (for a successor, or to drop).
    pub fn remove(&self) -> Leftover {
        let left = {
            let mut state = self.lock();
            state.removed = true;
            state.bytes = 0;
            Leftover {
                scheduled: std::mem::take(&mut state.scheduled)
                    .into_iter()
                    .map(|((due, _), held)| (due, held))
                    .collect(),
                ready: std::mem::take(&mut state.ready),
                in_flight: state.in_flight,
            }
        };
        self.changed.notify_waiters();
        left
    }

    /// Takes over what a removed queue held: given-back items stay first in line, the rest
    /// keep their due times (after this queue's items due at the same instant). Capacity and
    /// byte budget are not checked: the items were accepted once, and nothing is dropped.
    pub fn inherit(&self, left: Leftover) {
        {
            let mut state = self.lock();
            if state.removed {
                return;
            }
            for (item, redeliveries, bytes) in left.ready.into_iter().rev() {
                state.bytes += bytes;
                state.ready.push_front((item, redeliveries, bytes));
            }
            for (due, (held, redeliveries, bytes)) in left.scheduled {
                state.seq += 1;
                let seq = state.seq;
                state.bytes += bytes;
                state
                    .scheduled
                    .insert((due, seq), (held, redeliveries, bytes));
            }
        }
        self.changed.notify_waiters();
    }

    /// Fails with `QueueFull` unless `n` more items of `bytes` in all fit.
    pub fn check_room(&self, n: usize, bytes: usize) -> Result<(), BrokerError> {
        let state = self.lock();
        if state.removed {
            return Err(BrokerError::UnknownQueue {
                queue: self.name.to_string(),
            });
        }
        self.fits(&state, n, bytes)
    }

    fn fits(&self, state: &QueueState, n: usize, bytes: usize) -> Result<(), BrokerError> {
        match state.capacity {
            Some(capacity) if state.held() + n > capacity => Err(BrokerError::QueueFull {
                queue: self.name.to_string(),
                capacity,
            }),
            // An empty queue takes an item of any size.
            _ if state.held() > 0 && state.bytes + bytes > self.budget => {
                Err(BrokerError::OverBudget {
                    held: format!("the items of queue `{}`", self.name),
                    bytes: self.budget,
                })
            }
            _ => Ok(()),
        }
    }

    /// Adds an item due at `due`, refusing it past capacity.
    pub fn push(&self, item: Arc<Event>, due: Instant) -> Result<(), BrokerError> {
        self.insert(item, due, true)
    }

    /// Adds an item whose room was checked with `check_room` (a commit checks every queue
    /// first so that it lands whole or not at all).
    pub fn push_checked(&self, item: Arc<Event>, due: Instant) -> Result<(), BrokerError> {
        self.insert(item, due, false)
    }

    fn insert(&self, item: Arc<Event>, due: Instant, enforce: bool) -> Result<(), BrokerError> {
        let wake = {
            let mut state = self.lock();
            if state.removed {
                return Err(BrokerError::UnknownQueue {
                    queue: self.name.to_string(),
                });
            }
            let held = Held::new(item, due);
            let bytes = held.bytes();
            if enforce {
                self.fits(&state, 1, bytes)?;
            }
            let earliest = state.scheduled.keys().next().map(|(at, _)| *at);
            state.seq += 1;
            let seq = state.seq;
            state.bytes += bytes;
            state.scheduled.insert((due, seq), (held, 0, bytes));
            // Sleepers wait for the earliest due time: only an earlier item needs them.
            earliest.is_none_or(|at| due < at)
        };
        if wake {
            self.changed.notify_waiters();
        }
        Ok(())
    }

    /// Gives an item back, to be taken again first.
    pub fn give_back(&self, item: Arc<Event>, redeliveries: u32) {
        {
            let mut state = self.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.removed {
                return;
            }
            let bytes = item.approx_bytes();
            state.bytes += bytes;
            state.ready.push_front((item, redeliveries, bytes));
        }
        self.changed.notify_one();
    }

    pub fn settle(&self) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
    }

    /// Takes a due item if there is one; otherwise says when the next falls due.
    fn take(&self) -> Result<Result<Delivery, Option<Instant>>, BrokerError> {
        let mut state = self.lock();
        if state.removed {
            return Err(BrokerError::UnknownQueue {
                queue: self.name.to_string(),
            });
        }
        let now = Instant::now();
        let mut item = state.ready.pop_front().map(|(event, redeliveries, bytes)| {
            state.bytes = state.bytes.saturating_sub(bytes);
            (event, redeliveries)
        });
        while item.is_none() {
            match state.scheduled.first_key_value() {
                Some(((due, _), _)) if *due <= now => {
                    if let Some((_, (held, redeliveries, bytes))) = state.scheduled.pop_first() {
                        state.bytes = state.bytes.saturating_sub(bytes);
                        match held.into_event() {
                            Ok(event) => item = Some((event, redeliveries)),
                            Err((reason, raw)) => self.undecodable(&reason, &raw),
                        }
                    }
                }
                _ => break,
            }
        }
        match item {
            Some((event, redeliveries)) => {
                state.in_flight += 1;
                Ok(Ok(Delivery {
                    event,
                    group: self.name.clone(),
                    from_queue: true,
                    redeliveries,
                    tag: String::new(),
                }))
            }
            None => Ok(Err(state.scheduled.keys().next().map(|(at, _)| *at))),
        }
    }

    /// An item that cannot be read back: logged, and kept as a dead letter with its bytes
    /// as text, so that nothing accepted disappears without a trace.
    fn undecodable(&self, reason: &str, raw: &[u8]) {
        error!(queue = %self.name, %reason, "could not decode a stored queue item; it is dead-lettered");
        let text = String::from_utf8_lossy(&thaw(raw)).into_owned();
        let mut dead = Event::new(
            format!("dead.{}", self.name),
            format!("edaflow://queues/{}", self.name),
            serde_json::Value::String(text),
        );
        let reason = format!("undecodable queue item: {reason}");
        dead.extensions
            .insert(crate::event::dead_letter::REASON.into(), reason.into());
        dead.extensions.insert(
            crate::event::dead_letter::QUEUE.into(),
            self.name.to_string().into(),
        );
        (self.dead)(dead);
    }

    pub fn try_next(&self) -> Result<Option<Delivery>, BrokerError> {
        Ok(self.take()?.ok())
    }

    pub async fn next(&self) -> Result<Delivery, BrokerError> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.take()? {
                Ok(delivery) => return Ok(delivery),
                Err(Some(due)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        _ = &mut changed => {}
                    }
                }
                Err(None) => changed.await,
            }
        }
    }

    pub fn stats(&self) -> QueueStats {
        let state = self.lock();
        let now = Instant::now();
        let due_scheduled = state.scheduled.range(..(now, u64::MAX)).count();
        let next_due_ms = state
            .scheduled
            .keys()
            .map(|(at, _)| *at)
            .find(|at| *at > now)
            .map(|at| u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX));
        QueueStats {
            name: self.name.to_string(),
            depth: state.held(),
            due_now: due_scheduled + state.ready.len(),
            next_due_ms,
            in_flight: state.in_flight,
            capacity: state.capacity,
        }
    }

    /// Nothing taken and unsettled, nothing given back. Due items still waiting count as
    /// idle: on a `poll` queue they wait for the next look by design.
    pub fn is_idle(&self) -> bool {
        let state = self.lock();
        state.in_flight == 0 && state.ready.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The event after `freeze` and `thaw`, and after a plain JSON round trip (the wire
    /// form keeps the time to the millisecond).
    fn round_trip(event: &Event) -> (Event, Event) {
        let held = freeze(event).expect("serialisable");
        let plain = serde_json::to_vec(event).expect("serialisable");
        (
            serde_json::from_slice(&thaw(&held)).expect("readable"),
            serde_json::from_slice(&plain).expect("readable"),
        )
    }

    #[test]
    fn a_held_item_reads_back_as_it_was() {
        let plain = Event::new("jobs", "edaflow://t", json!({"n": 1}));
        let held = freeze(&plain).expect("serialisable");
        assert!(
            !held.starts_with(b"{\"specversion\""),
            "the constant fields are left out"
        );
        assert!(find(&held, b"datacontenttype").is_none());
        let (thawed, expected) = round_trip(&plain);
        assert_eq!(thawed, expected);

        // The left-out field's text inside the payload or an extension stays where it is.
        let mut tricky = Event::new(
            "jobs",
            "edaflow://t",
            json!({"datacontenttype": "application/json", "x": ",\"datacontenttype\":\"application/json\""}),
        );
        tricky.extensions.insert(
            "note".into(),
            json!({"datacontenttype": "application/json"}),
        );
        let (thawed, expected) = round_trip(&tricky);
        assert_eq!(thawed, expected);
        assert_eq!(thawed.data, tricky.data);

        // Fields that are not the usual ones are kept as they are.
        let mut other = Event::new("jobs", "edaflow://t", json!("text"));
        other.datacontenttype = "text/plain".into();
        other.specversion = "1.1".into();
        let (thawed, expected) = round_trip(&other);
        assert_eq!(thawed, expected);
        assert_eq!(
            (thawed.specversion.as_str(), thawed.datacontenttype.as_str()),
            ("1.1", "text/plain")
        );
    }

    fn sink() -> (DeadSink, Arc<Mutex<Vec<Event>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        (Arc::new(move |e| into.lock().unwrap().push(e)), seen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_holds_at_most_its_byte_budget() {
        let (dead, _) = sink();
        let queue = WorkQueue::new("q", None, 20_000, dead);
        let big = Arc::new(Event::new("q", "t", json!({"blob": "x".repeat(4_000)})));
        let mut taken = 0;
        let refused = loop {
            match queue.push(big.clone(), Instant::now()) {
                Ok(()) => taken += 1,
                Err(e) => break e,
            }
            assert!(taken < 100, "the budget never bound the queue");
        };
        assert!(
            matches!(refused, BrokerError::OverBudget { .. }),
            "{refused}"
        );
        assert!(
            (4..=5).contains(&taken),
            "{taken} items of about 4 KiB in 20,000 bytes"
        );
        assert!(queue.check_room(1, big.approx_bytes()).is_err());
        // Taking one makes room for one.
        assert!(queue.try_next().unwrap().is_some());
        queue.push(big.clone(), Instant::now()).expect("room again");
        // An empty queue takes an item of any size.
        let (dead, _) = sink();
        let small = WorkQueue::new("s", None, 10, dead);
        small
            .push(big, Instant::now())
            .expect("the first item always fits");
    }

    #[tokio::test(start_paused = true)]
    async fn an_item_that_cannot_be_read_back_is_dead_lettered() {
        let (dead, seen) = sink();
        let queue = WorkQueue::new("jobs", None, 1 << 20, dead);
        {
            let mut state = queue.lock();
            state.scheduled.insert(
                (Instant::now(), 1),
                (Held::Cold(Box::from(&b"{\"id\": 7, garbled"[..])), 0, 10),
            );
            state.bytes = 10;
            state.seq = 1;
        }
        queue
            .push(Arc::new(Event::new("jobs", "t", json!(1))), Instant::now())
            .unwrap();
        // The garbled item goes to the dead letters; the next one is handed out.
        let next = queue.try_next().unwrap().expect("the good item");
        assert_eq!(next.event.data, json!(1));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].topic, "dead.jobs");
        let reason = seen[0].extensions["deadletterreason"].as_str().unwrap();
        assert!(reason.starts_with("undecodable queue item: "), "{reason}");
        assert!(seen[0].data.as_str().unwrap().contains("garbled"));
    }
}
