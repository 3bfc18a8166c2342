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
//! hundred MiB; they are decoded when taken.

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
            if let Ok(bytes) = serde_json::to_vec(&*item) {
                return Held::Cold(bytes.into_boxed_slice());
            }
        }
        Held::Hot(item)
    }

    fn into_event(self) -> Option<Arc<Event>> {
        match self {
            Held::Hot(event) => Some(event),
            Held::Cold(bytes) => match serde_json::from_slice::<Event>(&bytes) {
                Ok(event) => Some(Arc::new(event)),
                Err(e) => {
                    // Only edaflow writes these bytes; failing to read them back is a bug.
                    error!(error = %e, "could not decode a stored queue item; it is skipped");
                    None
                }
            },
        }
    }
}

pub(crate) struct WorkQueue {
    pub name: Arc<str>,
    state: Mutex<QueueState>,
    changed: Notify,
}

struct QueueState {
    capacity: Option<usize>,
    scheduled: BTreeMap<(Instant, u64), (Held, u32)>,
    ready: VecDeque<(Arc<Event>, u32)>,
    seq: u64,
    in_flight: usize,
    removed: bool,
}

impl WorkQueue {
    pub fn new(name: &str, capacity: Option<usize>) -> WorkQueue {
        WorkQueue {
            name: name.into(),
            state: Mutex::new(QueueState {
                capacity,
                scheduled: BTreeMap::new(),
                ready: VecDeque::new(),
                seq: 0,
                in_flight: 0,
                removed: false,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_capacity(&self, capacity: Option<usize>) {
        self.lock().capacity = capacity;
    }

    pub fn remove(&self) {
        {
            let mut state = self.lock();
            state.removed = true;
            state.scheduled.clear();
            state.ready.clear();
        }
        self.changed.notify_waiters();
    }

    /// Fails with `QueueFull` unless `n` more items fit.
    pub fn check_room(&self, n: usize) -> Result<(), BrokerError> {
        let state = self.lock();
        if state.removed {
            return Err(BrokerError::UnknownQueue {
                queue: self.name.to_string(),
            });
        }
        match state.capacity {
            Some(capacity) if state.scheduled.len() + state.ready.len() + n > capacity => {
                Err(BrokerError::QueueFull {
                    queue: self.name.to_string(),
                    capacity,
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
            if let Some(capacity) = state.capacity.filter(|_| enforce) {
                if state.scheduled.len() + state.ready.len() >= capacity {
                    return Err(BrokerError::QueueFull {
                        queue: self.name.to_string(),
                        capacity,
                    });
                }
            }
            let earliest = state.scheduled.keys().next().map(|(at, _)| *at);
            state.seq += 1;
            let seq = state.seq;
            state
                .scheduled
                .insert((due, seq), (Held::new(item, due), 0));
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
            state.ready.push_front((item, redeliveries));
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
        let mut item = state.ready.pop_front();
        while item.is_none() {
            match state.scheduled.first_key_value() {
                Some(((due, _), _)) if *due <= now => {
                    if let Some((_, (held, redeliveries))) = state.scheduled.pop_first() {
                        item = held.into_event().map(|event| (event, redeliveries));
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
            depth: state.scheduled.len() + state.ready.len(),
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
