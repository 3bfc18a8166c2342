//! The hand-off of chain steps from the broker to the chain trackers, on a broker that
//! does not keep chain state (memory). It owns the registry (topic -> the trackers that
//! have it as a step, and at which index) and each tracker's inbox; it does not track
//! instances (`chains` does) and never blocks or waits.
//!
//! The registry is the runtime's `AcceptObserver`: the broker calls it for every event it
//! accepts, on the publishing task, so a topic that is in no chain costs one atomic load
//! when no chain runs and one map miss when some do. A step is handed over as a compact
//! `Step` built there: the step's index, a seeded hash of the correlation id (the
//! instance's key), the event's time, the correlation id itself (inline, no allocation)
//! on a chain's first step only, and the event only to a chain whose `on_timeout` carries
//! the last event. So the tracker neither shares the event's reference count with the
//! subscribers nor frees it on its own thread. A push is one append under the inbox's
//! lock; the tracker is woken only when its inbox goes from empty to non-empty, and takes
//! everything waiting in one go.
//!
//! Each inbox holds at most `INBOX_LIMIT` steps. A tracker that falls that far behind
//! loses the newest steps (the push is refused; older ones stay), which it counts and
//! warns about after its next batch: bounded memory beats a complete count, and the
//! instances those steps belonged to simply do not complete (or time out).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::broker::AcceptObserver;
use crate::event::Event;

/// Steps waiting for one tracker, at most; past it the newest are dropped (and counted).
pub const INBOX_LIMIT: usize = 1 << 16;

/// A correlation id held without an allocation when it is short (ULIDs and UUIDs are).
#[derive(Clone, Debug)]
pub enum CorrelationId {
    Inline { len: u8, bytes: [u8; INLINE] },
    Boxed(Box<str>),
}

const INLINE: usize = 40;

impl CorrelationId {
    pub fn new(id: &str) -> Self {
        if id.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..id.len()].copy_from_slice(id.as_bytes());
            CorrelationId::Inline {
                len: id.len() as u8,
                bytes,
            }
        } else {
            CorrelationId::Boxed(id.into())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Copied whole from a `&str`, so always valid UTF-8.
            CorrelationId::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..*len as usize]).unwrap_or_default()
            }
            CorrelationId::Boxed(id) => id,
        }
    }
}

/// One step of one chain instance, as its tracker sees it.
#[derive(Debug)]
pub struct Step {
    /// Which step of the chain (index into its `steps`).
    pub index: usize,
    /// The instance's key: a hash of the correlation id, seeded per registry (two ids
    /// share a key with odds of about one in 10^9 at 100,000 instances in flight).
    pub key: u64,
    /// The event's own time.
    pub time: SystemTime,
    /// The correlation id, on the chain's first step only (it starts an instance).
    pub correlation: Option<CorrelationId>,
    /// The event, only for a chain whose `on_timeout` carries the last event.
    pub event: Option<Arc<Event>>,
}

/// The steps waiting for one chain tracker.
#[derive(Debug, Default)]
pub struct StepInbox {
    waiting: Mutex<Waiting>,
    /// Notified when the inbox goes from empty to non-empty.
    ready: Notify,
    /// Steps refused because the inbox was full, since the tracker last looked.
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Waiting {
    steps: Vec<Step>,
    /// The tracker stopped: nothing is kept any more.
    closed: bool,
}

impl StepInbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // A poisoned lock only means a panic elsewhere; the steps are still valid data.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a step for the tracker (refused, and counted, when the inbox is full).
    pub fn push(&self, step: Step) {
        let wake = {
            let mut waiting = self.lock();
            if waiting.closed {
                return;
            }
            if waiting.steps.len() >= INBOX_LIMIT {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            waiting.steps.push(step);
            waiting.steps.len() == 1
        };
        if wake {
            self.ready.notify_one();
        }
    }

    /// Waits until steps may be waiting (a wake-up can find the inbox empty).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Moves every waiting step into `batch` (which should be empty: its allocation is
    /// handed back to the inbox for the next steps).
    pub fn take(&self, batch: &mut Vec<Step>) {
        std::mem::swap(&mut self.lock().steps, batch);
    }

    /// Steps refused since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// The tracker stopped: drops what waits and refuses what comes.
    pub fn close(&self) {
        let mut waiting = self.lock();
        waiting.closed = true;
        waiting.steps = Vec::new();
    }
}

/// Which trackers have each topic as a step.
#[derive(Debug, Default)]
pub struct StepRegistry {
    /// Set while any chain is registered: the fast path for everything else.
    any: AtomicBool,
    /// By chain name; changed on reload only.
    chains: Mutex<BTreeMap<String, Registered>>,
    /// Topic -> where it is a step; rebuilt from `chains`.
    by_topic: RwLock<HashMap<String, Vec<Target>, foldhash::fast::RandomState>>,
    /// Seeds the instance keys (`Step::key`).
    keys: foldhash::quality::RandomState,
}

/// A chain's step topics and its tracker's inbox.
#[derive(Debug)]
struct Registered {
    steps: Vec<String>,
    keeps_events: bool,
    inbox: Arc<StepInbox>,
}

/// One chain a topic is a step of.
#[derive(Debug)]
struct Target {
    inbox: Arc<StepInbox>,
    index: usize,
    keeps_events: bool,
}

impl StepRegistry {
    /// Starts handing the steps of `chain` to a new inbox, which replaces any earlier one
    /// of the same chain; `keeps_events` hands the step events over too (for a chain whose
    /// `on_timeout` carries the last event).
    pub fn register(&self, chain: &str, steps: &[String], keeps_events: bool) -> Arc<StepInbox> {
        let inbox = Arc::new(StepInbox::default());
        let mut chains = self.chains.lock().unwrap_or_else(|e| e.into_inner());
        chains.insert(
            chain.to_owned(),
            Registered {
                steps: steps.to_vec(),
                keeps_events,
                inbox: inbox.clone(),
            },
        );
        self.rebuild(&chains);
        inbox
    }

    /// Stops handing steps to `chain` (its inbox, if any, is closed by its tracker).
    pub fn unregister(&self, chain: &str) {
        let mut chains = self.chains.lock().unwrap_or_else(|e| e.into_inner());
        if chains.remove(chain).is_some() {
            self.rebuild(&chains);
        }
    }

    fn rebuild(&self, chains: &BTreeMap<String, Registered>) {
        let mut by_topic: HashMap<String, Vec<Target>, foldhash::fast::RandomState> =
            HashMap::default();
        for registered in chains.values() {
            for (index, topic) in registered.steps.iter().enumerate() {
                let targets = by_topic.entry(topic.clone()).or_default();
                // A topic that appears twice in one chain is one step (its first place).
                if !targets
                    .iter()
                    .any(|t| Arc::ptr_eq(&t.inbox, &registered.inbox))
                {
                    targets.push(Target {
                        inbox: registered.inbox.clone(),
                        index,
                        keeps_events: registered.keeps_events,
                    });
                }
            }
        }
        let any = !by_topic.is_empty();
        *self.by_topic.write().unwrap_or_else(|e| e.into_inner()) = by_topic;
        self.any.store(any, Ordering::Release);
    }
}

impl AcceptObserver for StepRegistry {
    fn accepted(&self, event: &Arc<Event>) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let by_topic = self.by_topic.read().unwrap_or_else(|e| e.into_inner());
        let Some(targets) = by_topic.get(&event.topic) else {
            return;
        };
        let key = self.keys.hash_one(&event.correlation_id);
        for target in targets {
            target.inbox.push(Step {
                index: target.index,
                key,
                time: event.time,
                correlation: (target.index == 0).then(|| CorrelationId::new(&event.correlation_id)),
                event: target.keeps_events.then(|| event.clone()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic: &str) -> Arc<Event> {
        Arc::new(Event::new(topic, "edaflow://test", serde_json::Value::Null))
    }

    fn step() -> Step {
        Step {
            index: 0,
            key: 1,
            time: SystemTime::UNIX_EPOCH,
            correlation: None,
            event: None,
        }
    }

    #[test]
    fn steps_reach_the_inboxes_of_the_chains_that_have_them() {
        let registry = StepRegistry::default();
        let a = registry.register("a", &["x".into(), "y".into(), "x".into()], false);
        let b = registry.register("b", &["y".into(), "z".into()], true);
        for topic in ["x", "y", "z", "other"] {
            registry.accepted(&event(topic));
        }
        let indexes = |inbox: &StepInbox| {
            let mut batch = Vec::new();
            inbox.take(&mut batch);
            batch.iter().map(|s| s.index).collect::<Vec<_>>()
        };
        assert_eq!(indexes(&a), [0, 1]);
        assert_eq!(indexes(&b), [0, 1]);

        registry.unregister("a");
        registry.accepted(&event("x"));
        registry.accepted(&event("y"));
        assert!(indexes(&a).is_empty());
        assert_eq!(indexes(&b), [0]);
        registry.unregister("b");
        assert!(!registry.any.load(Ordering::Acquire));
    }

    #[test]
    fn a_step_carries_the_correlation_on_the_first_step_and_the_event_only_when_kept() {
        let registry = StepRegistry::default();
        let lean = registry.register("lean", &["x".into(), "y".into()], false);
        let keeping = registry.register("keeping", &["x".into(), "y".into()], true);
        let first = event("x");
        let next = Arc::new(first.caused("y", "edaflow://test", serde_json::Value::Null));
        let other = event("y");
        for e in [&first, &next, &other] {
            registry.accepted(e);
        }
        let mut batch = Vec::new();
        lean.take(&mut batch);
        assert_eq!(batch.len(), 3);
        assert_eq!(
            batch[0].correlation.as_ref().map(CorrelationId::as_str),
            Some(first.correlation_id.as_str())
        );
        assert!(batch[1].correlation.is_none() && batch[2].correlation.is_none());
        assert_eq!(batch[0].key, batch[1].key, "one journey, one key");
        assert_ne!(batch[0].key, batch[2].key, "another journey");
        assert_eq!(batch[1].time, next.time);
        assert!(batch.iter().all(|s| s.event.is_none()));
        assert_eq!(
            Arc::strong_count(&next),
            2,
            "kept only by the keeping chain"
        );

        let mut kept = Vec::new();
        keeping.take(&mut kept);
        assert!(Arc::ptr_eq(kept[1].event.as_ref().unwrap(), &next));
        assert_eq!(kept[0].key, batch[0].key, "keys do not depend on the chain");
    }

    #[test]
    fn correlation_ids_of_any_length_come_back_whole() {
        for id in [
            "",
            "01J0000000000000000000000A",
            &"é".repeat(20),
            &"x".repeat(41),
            &"y".repeat(300),
        ] {
            assert_eq!(CorrelationId::new(id).as_str(), id);
        }
        assert!(matches!(
            CorrelationId::new(&"x".repeat(40)),
            CorrelationId::Inline { .. }
        ));
        assert!(matches!(
            CorrelationId::new(&"x".repeat(41)),
            CorrelationId::Boxed(_)
        ));
    }

    #[test]
    fn a_full_inbox_refuses_the_newest_steps_and_counts_them() {
        let inbox = StepInbox::default();
        for _ in 0..INBOX_LIMIT + 3 {
            inbox.push(step());
        }
        assert_eq!(inbox.take_dropped(), 3);
        assert_eq!(inbox.take_dropped(), 0);
        let mut batch = Vec::new();
        inbox.take(&mut batch);
        assert_eq!(batch.len(), INBOX_LIMIT);
        inbox.push(step());
        batch.clear();
        inbox.take(&mut batch);
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn the_tracker_is_woken_once_per_empty_to_waiting() {
        use futures_util::FutureExt;
        let inbox = StepInbox::default();
        assert!(inbox.ready().now_or_never().is_none(), "nothing waits yet");
        inbox.push(step());
        inbox.push(step());
        // One stored wake-up for both pushes.
        assert!(inbox.ready().now_or_never().is_some());
        assert!(
            inbox.ready().now_or_never().is_none(),
            "no wake-up is left over"
        );
        let mut batch = Vec::new();
        inbox.take(&mut batch);
        assert_eq!(batch.len(), 2);
        inbox.push(step());
        assert!(
            inbox.ready().now_or_never().is_some(),
            "empty again, then a step"
        );
    }

    #[test]
    fn a_closed_inbox_keeps_nothing() {
        let inbox = StepInbox::default();
        inbox.push(step());
        inbox.close();
        inbox.push(step());
        let mut batch = Vec::new();
        inbox.take(&mut batch);
        assert!(batch.is_empty());
    }
}
