//! Splitting a handler's effects by shard: what lands with the commit in the handled
//! entry's shard, and the parcels the commit writes to that shard's outbox for the others
//! (one parcel per destination shard, carried there by the `forwarder`).
//!
//! A parcel holds the effects in the form the batch script takes them (stored JSON,
//! delays in ms), so forwarding parses no event.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::placement::shard_of;
use crate::broker::redis::commit::{delay_ms, Outbound};
use crate::broker::redis::failure::unexpected;
use crate::broker::{BrokerError, Effects};
use crate::event::Event;
use crate::store::{StoreOp, StoreWrite};

/// The effects of one commit bound for one other shard.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Parcel {
    /// Publish now: (topic, stored JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) p: Vec<(String, String)>,
    /// Publish later: (topic, delay ms from the commit, stored JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) d: Vec<(String, u64, String)>,
    /// Enqueue: (queue, delay ms from the commit, stored JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) q: Vec<(String, u64, String)>,
    /// Store writes: (store, key, op `s`|`r`|`i`, JSON value or integer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) w: Vec<(String, String, String, String)>,
}

impl Parcel {
    fn is_empty(&self) -> bool {
        self.p.is_empty() && self.d.is_empty() && self.q.is_empty() && self.w.is_empty()
    }
}

/// Whether every effect of a commit on shard `here` of `n` stays there, as `split` places
/// them: then there is nothing to split.
pub(crate) fn all_here(
    effects: &Effects,
    here: usize,
    n: usize,
    event_shard: &dyn Fn(&Event) -> usize,
) -> bool {
    let stays = |e: &Event| event_shard(e) == here;
    effects.publish.iter().all(stays)
        && effects.deferred.iter().all(|(e, _)| stays(e))
        && effects
            .enqueue
            .iter()
            .all(|(q, _, _)| shard_of(q, n) == here)
        && effects
            .store_writes
            .iter()
            .all(|w| shard_of(&w.store, n) == here)
        && effects.dead_letter.as_ref().is_none_or(stays)
}

/// Splits `effects` of a commit on shard `here` of `n`: the effects that stay (the rest of
/// `effects`, returned) and the outbound parcels. `event_shard` places events (queues and
/// stores go by the hash of their name). The reply and the dead-letter record stay
/// here; a dead letter whose topic lies elsewhere is published there through the outbox.
pub(crate) fn split(
    mut effects: Effects,
    here: usize,
    n: usize,
    event_shard: &dyn Fn(&Event) -> usize,
) -> Result<(Effects, Outbound), BrokerError> {
    // Every delay is checked before anything is split, as a commit on one shard does.
    for (_, delay) in &effects.deferred {
        delay_ms(*delay)?;
    }
    for (_, _, delay) in &effects.enqueue {
        delay_ms(*delay)?;
    }
    let ms = |delay: &Duration| delay_ms(*delay).unwrap_or(0);
    let mut parcels: Vec<Parcel> = (0..n).map(|_| Parcel::default()).collect();
    let mut outbound = Outbound::default();
    effects.publish.retain(|event| {
        let to = event_shard(event);
        if to == here {
            return true;
        }
        parcels[to]
            .p
            .push((event.topic.clone(), event.to_stored_json()));
        false
    });
    effects.deferred.retain(|(event, delay)| {
        let to = event_shard(event);
        if to == here {
            return true;
        }
        parcels[to]
            .d
            .push((event.topic.clone(), ms(delay), event.to_stored_json()));
        false
    });
    effects.enqueue.retain(|(queue, item, delay)| {
        let to = shard_of(queue, n);
        if to == here {
            return true;
        }
        parcels[to]
            .q
            .push((queue.clone(), ms(delay), item.to_stored_json()));
        false
    });
    effects.store_writes.retain(|write| {
        let to = shard_of(&write.store, n);
        if to == here {
            return true;
        }
        parcels[to].w.push(store_write(write));
        false
    });
    if let Some(dead) = &effects.dead_letter {
        let to = event_shard(dead);
        if to != here {
            parcels[to]
                .p
                .push((dead.topic.clone(), dead.to_stored_json()));
            outbound.dead_elsewhere = true;
        }
    }
    for (to, parcel) in parcels.into_iter().enumerate() {
        if !parcel.is_empty() {
            let body = serde_json::to_string(&parcel)
                .map_err(|e| unexpected("a parcel that serialises", &e))?;
            outbound.entries.push((to, body));
        }
    }
    Ok((effects, outbound))
}

/// A store write as the batch script takes it.
fn store_write(write: &StoreWrite) -> (String, String, String, String) {
    let (op, value) = match &write.op {
        StoreOp::Set(value) => ("s", value.to_string()),
        StoreOp::Remove => ("r", String::new()),
        StoreOp::Incr(n) => ("i", n.to_string()),
    };
    (write.store.clone(), write.key.clone(), op.to_owned(), value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn event(topic: &str) -> Event {
        Event::new(topic, "test", serde_json::json!({"n": 1}))
    }

    /// Two topics that lie on different shards of 3, and the shard of each.
    fn two_shards() -> ((String, usize), (String, usize)) {
        let names: Vec<String> = (0..50).map(|i| format!("t{i}")).collect();
        let a = names[0].clone();
        let sa = shard_of(&a, 3);
        let b = names
            .iter()
            .find(|t| shard_of(t, 3) != sa)
            .cloned()
            .unwrap_or_default();
        let sb = shard_of(&b, 3);
        ((a, sa), (b, sb))
    }

    #[test]
    fn all_here_agrees_with_what_split_keeps() {
        let ((here_topic, here), (there_topic, _)) = two_shards();
        let by_topic = |e: &Event| shard_of(&e.topic, 3);
        let local = Effects {
            publish: vec![event(&here_topic)],
            dead_letter: Some(event(&here_topic)),
            ..Effects::default()
        };
        assert!(all_here(&local, here, 3, &by_topic));
        let (_, outbound) = split(local, here, 3, &by_topic).expect("split");
        assert!(
            outbound.entries.is_empty() && !outbound.dead_elsewhere,
            "nothing leaves"
        );
        let mixed = Effects {
            publish: vec![event(&here_topic), event(&there_topic)],
            ..Effects::default()
        };
        assert!(!all_here(&mixed, here, 3, &by_topic));
    }

    #[test]
    fn what_lies_here_stays_and_the_rest_goes_to_its_shard() {
        let ((here_topic, here), (there_topic, there)) = two_shards();
        let effects = Effects {
            publish: vec![event(&here_topic), event(&there_topic)],
            deferred: vec![(event(&there_topic), Duration::from_millis(1500))],
            store_writes: vec![StoreWrite {
                store: there_topic.clone(),
                key: "k".into(),
                op: StoreOp::Incr(2),
            }],
            dead_letter: Some(event(&there_topic)),
            ..Effects::default()
        };
        let (kept, outbound) =
            split(effects, here, 3, &|e: &Event| shard_of(&e.topic, 3)).expect("split");
        assert_eq!(kept.publish.len(), 1);
        assert_eq!(kept.publish[0].topic, here_topic);
        assert!(kept.deferred.is_empty() && kept.store_writes.is_empty());
        assert!(kept.dead_letter.is_some(), "the dead letter is kept here");
        assert!(outbound.dead_elsewhere);
        assert_eq!(outbound.entries.len(), 1);
        let (to, body) = &outbound.entries[0];
        assert_eq!(*to, there);
        let parcel: Parcel = serde_json::from_str(body).expect("a parcel");
        assert_eq!(parcel.p.len(), 2, "the event and the dead letter");
        assert_eq!(parcel.d[0].1, 1500);
        assert_eq!(parcel.w[0].2, "i");
        assert_eq!(parcel.w[0].3, "2");
    }

    #[test]
    fn a_single_shard_sends_nothing_out() {
        let effects = Effects {
            publish: vec![event("a"), event("b")],
            ..Effects::default()
        };
        let (kept, outbound) = split(effects, 0, 1, &|_| 0).expect("split");
        assert_eq!(kept.publish.len(), 2);
        assert!(outbound.entries.is_empty() && !outbound.dead_elsewhere);
    }
}
