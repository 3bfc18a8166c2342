//! The hand-off of chain steps from the broker to the chain trackers, on a broker that
//! does not keep chain state (memory). It owns the registry (topic -> the trackers that
//! have it as a step) and each tracker's inbox; it does not track instances (`chains`
//! does) and never blocks or waits.
//!
//! The registry is the runtime's `AcceptObserver`: the broker calls it for every event it
//! accepts, on the publishing task, so a topic that is in no chain costs one atomic load
//! when no chain runs and one map miss when some do. A step costs an `Arc` clone and a
//! push under the inbox's lock; the tracker is woken only when its inbox goes from empty
//! to non-empty, and takes everything waiting in one go.
//!
//! Each inbox holds at most `INBOX_LIMIT` steps. A tracker that falls that far behind
//! loses the newest steps (the push is refused; older ones stay), which it counts and
//! warns about after its next batch: bounded memory beats a complete count, and the
//! instances those steps belonged to simply do not complete (or time out).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use crate::broker::AcceptObserver;
use crate::event::Event;

/// Steps waiting for one tracker, at most; past it the newest are dropped (and counted).
pub const INBOX_LIMIT: usize = 1 << 16;

/// The step events waiting for one chain tracker.
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
    steps: Vec<Arc<Event>>,
    /// The tracker stopped: nothing is kept any more.
    closed: bool,
}

impl StepInbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // A poisoned lock only means a panic elsewhere; the steps are still valid data.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a step for the tracker (refused, and counted, when the inbox is full).
    pub fn push(&self, event: &Arc<Event>) {
        let wake = {
            let mut waiting = self.lock();
            if waiting.closed {
                return;
            }
            if waiting.steps.len() >= INBOX_LIMIT {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            waiting.steps.push(event.clone());
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
    pub fn take(&self, batch: &mut Vec<Arc<Event>>) {
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
    /// Topic -> the inboxes of the chains it is a step of; rebuilt from `chains`.
    by_topic: RwLock<HashMap<String, Vec<Arc<StepInbox>>>>,
}

/// A chain's step topics and its tracker's inbox.
#[derive(Debug)]
struct Registered {
    steps: Vec<String>,
    inbox: Arc<StepInbox>,
}

impl StepRegistry {
    /// Starts handing the steps of `chain` to a new inbox, which replaces any earlier one
    /// of the same chain.
    pub fn register(&self, chain: &str, steps: &[String]) -> Arc<StepInbox> {
        let inbox = Arc::new(StepInbox::default());
        let mut chains = self.chains.lock().unwrap_or_else(|e| e.into_inner());
        chains.insert(
            chain.to_owned(),
            Registered {
                steps: steps.to_vec(),
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
        let mut by_topic: HashMap<String, Vec<Arc<StepInbox>>> = HashMap::new();
        for Registered { steps, inbox } in chains.values() {
            for topic in steps {
                let inboxes = by_topic.entry(topic.clone()).or_default();
                // A topic that appears twice in one chain is one step (its first place).
                if !inboxes.iter().any(|i| Arc::ptr_eq(i, inbox)) {
                    inboxes.push(inbox.clone());
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
        if let Some(inboxes) = by_topic.get(&event.topic) {
            for inbox in inboxes {
                inbox.push(event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic: &str) -> Arc<Event> {
        Arc::new(Event::new(topic, "edaflow://test", serde_json::Value::Null))
    }

    #[test]
    fn steps_reach_the_inboxes_of_the_chains_that_have_them() {
        let registry = StepRegistry::default();
        let a = registry.register("a", &["x".into(), "y".into(), "x".into()]);
        let b = registry.register("b", &["y".into(), "z".into()]);
        for topic in ["x", "y", "z", "other"] {
            registry.accepted(&event(topic));
        }
        let topics = |inbox: &StepInbox| {
            let mut batch = Vec::new();
            inbox.take(&mut batch);
            batch.iter().map(|e| e.topic.clone()).collect::<Vec<_>>()
        };
        assert_eq!(topics(&a), ["x", "y"]);
        assert_eq!(topics(&b), ["y", "z"]);

        registry.unregister("a");
        registry.accepted(&event("x"));
        registry.accepted(&event("y"));
        assert!(topics(&a).is_empty());
        assert_eq!(topics(&b), ["y"]);
        registry.unregister("b");
        assert!(!registry.any.load(Ordering::Acquire));
    }

    #[test]
    fn a_full_inbox_refuses_the_newest_steps_and_counts_them() {
        let inbox = StepInbox::default();
        let step = event("x");
        for _ in 0..INBOX_LIMIT + 3 {
            inbox.push(&step);
        }
        assert_eq!(inbox.take_dropped(), 3);
        assert_eq!(inbox.take_dropped(), 0);
        let mut batch = Vec::new();
        inbox.take(&mut batch);
        assert_eq!(batch.len(), INBOX_LIMIT);
        inbox.push(&step);
        batch.clear();
        inbox.take(&mut batch);
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn the_tracker_is_woken_once_per_empty_to_waiting() {
        use futures_util::FutureExt;
        let inbox = StepInbox::default();
        assert!(inbox.ready().now_or_never().is_none(), "nothing waits yet");
        inbox.push(&event("x"));
        inbox.push(&event("x"));
        // One stored wake-up for both pushes.
        assert!(inbox.ready().now_or_never().is_some());
        assert!(
            inbox.ready().now_or_never().is_none(),
            "no wake-up is left over"
        );
        let mut batch = Vec::new();
        inbox.take(&mut batch);
        assert_eq!(batch.len(), 2);
        inbox.push(&event("x"));
        assert!(
            inbox.ready().now_or_never().is_some(),
            "empty again, then a step"
        );
    }

    #[test]
    fn a_closed_inbox_keeps_nothing() {
        let inbox = StepInbox::default();
        inbox.push(&event("x"));
        inbox.close();
        inbox.push(&event("x"));
        let mut batch = Vec::new();
        inbox.take(&mut batch);
        assert!(batch.is_empty());
    }
}
