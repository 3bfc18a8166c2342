//! The dead-letter store on Redis: the stream `P dead`, where commits put the dead letters
//! of handlers that gave up (and the movers those of entries that cannot be read), read
//! and emptied by the admin commands.
//!
//! Writing dead letters is the commit script's (see `commit`); this module only reads and
//! takes them.

use redis::Value;
use tracing::warn;

use super::failure::{unavailable, unexpected};
use super::reply::{items, text};
use super::ShardBroker;
use crate::broker::{BrokerError, DeadFilter};
use crate::event::Event;

/// Every dead letter, with its entry id, oldest first.
async fn read(broker: &ShardBroker) -> Result<Vec<(String, Event)>, BrokerError> {
    let entries: Value = redis::cmd("XRANGE")
        .arg(broker.inner.keys.dead())
        .arg("-")
        .arg("+")
        .query_async(&mut broker.conn())
        .await
        .map_err(unavailable)?;
    let mut out = Vec::new();
    for entry in items(&entries)? {
        let [id, fields] = items(entry)? else {
            return Err(unexpected("a dead letter's id and fields", entry));
        };
        let id = text(id)?;
        let mut json = None;
        for pair in items(fields)?.chunks(2) {
            if let [name, value] = pair {
                if text(name)? == "e" {
                    json = Some(text(value)?);
                    break;
                }
            }
        }
        // What the dead-letter stream holds is edaflow's, but anything can write to Redis:
        // an entry that is not a dead letter is left there, and said so.
        let Some(json) = json else {
            warn!(%id, "unreadable dead letter skipped: it has no `e` field (the event)");
            continue;
        };
        match serde_json::from_str::<Event>(&json) {
            Ok(event) => out.push((id, event)),
            Err(e) => warn!(%id, error = %e, "unreadable dead letter skipped"),
        }
    }
    Ok(out)
}

/// The dead letters `filter` selects, left in the store (see `Broker::dead_letters`).
pub(super) async fn list(
    broker: &ShardBroker,
    filter: &DeadFilter,
) -> Result<Vec<Event>, BrokerError> {
    Ok(read(broker)
        .await?
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| filter.matches(e))
        .collect())
}

/// Takes the dead letters `filter` selects out of the store (see
/// `Broker::take_dead_letters`).
pub(super) async fn take(
    broker: &ShardBroker,
    filter: &DeadFilter,
) -> Result<Vec<Event>, BrokerError> {
    let selected: Vec<(String, Event)> = read(broker)
        .await?
        .into_iter()
        .filter(|(_, e)| filter.matches(e))
        .collect();
    if selected.is_empty() {
        return Ok(Vec::new());
    }
    // One XDEL per entry: whoever deletes an entry is the one who took it, so two
    // concurrent takers never both return the same dead letter.
    let key = broker.inner.keys.dead();
    let mut pipe = redis::pipe();
    for (id, _) in &selected {
        pipe.cmd("XDEL").arg(&key).arg(id);
    }
    let deleted: Vec<i64> = pipe
        .query_async(&mut broker.conn())
        .await
        .map_err(unavailable)?;
    Ok(selected
        .into_iter()
        .zip(deleted)
        .filter(|(_, n)| *n == 1)
        .map(|((_, e), _)| e)
        .collect())
}
