//! The entries a subscriber's reader has taken from Redis and not handed out yet (they are
//! pending with its consumer already), earliest due first. Most are due when taken; a
//! queue item taken ahead of its due time (see "Taking ahead" in the parent module) waits
//! here until Redis's clock reaches it, and an item taken later but due sooner goes before
//! it. Equal due times keep the order they were taken in.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use super::clock::RedisClock;
use crate::broker::Delivery;

struct Item {
    /// Redis ms from which it may be handed out; for an item due when taken, Redis's time
    /// when it was taken (so it goes after items due before that).
    at: i64,
    order: u64,
    delivery: Delivery,
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Item {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

#[derive(Default)]
pub(super) struct Held {
    items: BinaryHeap<Reverse<Item>>,
    taken: u64,
}

/// The due time (Redis ms) a delivery's tag carries, for a queue item taken ahead.
pub(super) fn due_of(delivery: &Delivery) -> Option<i64> {
    delivery.tag.split('\n').nth(4)?.parse().ok()
}

impl Held {
    pub(super) fn push(&mut self, delivery: Delivery, clock: &RedisClock) {
        let at = due_of(&delivery).unwrap_or_else(|| clock.now_ms());
        self.taken += 1;
        self.items.push(Reverse(Item {
            at,
            order: self.taken,
            delivery,
        }));
    }

    /// How long until the earliest item may be handed out (zero: now); `None` when empty.
    pub(super) fn next_in(&self, clock: &RedisClock) -> Option<Duration> {
        self.items.peek().map(|Reverse(item)| clock.until(item.at))
    }

    /// The earliest item, if it may be handed out now.
    pub(super) fn pop_due(&mut self, clock: &RedisClock) -> Option<Delivery> {
        if self.next_in(clock)? > Duration::ZERO {
            return None;
        }
        self.items.pop().map(|Reverse(item)| item.delivery)
    }

    /// Any item, due or not (to give it back).
    pub(super) fn pop_any(&mut self) -> Option<Delivery> {
        self.items.pop().map(|Reverse(item)| item.delivery)
    }

    pub(super) fn len(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::Event;

    fn item(n: u64, due: Option<i64>) -> Delivery {
        let tag = match due {
            Some(due) => format!("r\n0-{n}\n\n\n{due}"),
            None => format!("r\n0-{n}\n\n"),
        };
        Delivery {
            event: Arc::new(Event::new("jobs", "test", serde_json::json!({ "n": n }))),
            group: "jobs".into(),
            from_queue: true,
            redeliveries: 0,
            tag,
        }
    }

    fn n(delivery: &Delivery) -> u64 {
        delivery.event.data["n"].as_u64().unwrap()
    }

    #[test]
    fn an_item_taken_ahead_waits_and_one_due_sooner_goes_first() {
        let clock = RedisClock::default();
        clock.learn(clock.now_ms());
        let now = clock.now_ms();
        let mut held = Held::default();
        held.push(item(1, Some(now + 60_000)), &clock);
        held.push(item(2, Some(now + 30_000)), &clock);
        assert!(held.pop_due(&clock).is_none(), "nothing is due yet");
        let left = held.next_in(&clock).unwrap();
        assert!(
            left > Duration::from_secs(29) && left <= Duration::from_secs(30),
            "{left:?}"
        );
        // Taken after both, due now: handed out at once.
        held.push(item(3, None), &clock);
        assert_eq!(held.pop_due(&clock).as_ref().map(n), Some(3));
        assert!(held.pop_due(&clock).is_none());
        // Given back, earliest first.
        assert_eq!(held.pop_any().as_ref().map(n), Some(2));
        assert_eq!(held.pop_any().as_ref().map(n), Some(1));
        assert_eq!(held.len(), 0);
    }

    #[test]
    fn items_due_when_taken_keep_their_order() {
        let clock = RedisClock::default();
        let past = clock.now_ms() - 1_000;
        let mut held = Held::default();
        for k in 0..5 {
            held.push(item(k, Some(past)), &clock);
        }
        let order: Vec<u64> = std::iter::from_fn(|| held.pop_due(&clock).map(|d| n(&d))).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
    }
}
