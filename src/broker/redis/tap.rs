//! Taps of the Redis broker: every event accepted (published, committed, enqueued, or sent
//! over the article's wire), as Redis accepted them, for `edaflow tail` and `edaflow test`.
//!
//! The scripts and `wire` PUBLISH each accepted event on the namespace's tap channel
//! (`P tap`) while a tap listens. A tap is a thread subscribed to that channel. It is a
//! thread, not a task, so that `start` (behind the synchronous `Broker::tap_within`) can
//! return only once the subscription is in place: every event accepted after it returns is
//! seen, in the order Redis accepted them. Its connection is synchronous, on the thread of
//! its own, never on a tokio worker.
//!
//! A tap is lossy by contract (see `broker::tap`); this module must not hold events back.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::cluster::Node;
use super::defaults::{
    RESUBSCRIBE_MAX, RESUBSCRIBE_START, SYNC_CONNECT_TIMEOUT, TAP_SUBSCRIBE_WAIT, TAP_TICK,
};
use super::ShardBroker;
use crate::broker::tap::TapFeed;
use crate::event::Event;
use crate::pattern::TopicPattern;

/// Starts a tap thread (see the module docs).
pub(super) fn start(
    broker: &ShardBroker,
    pattern: TopicPattern,
    buffer: usize,
    bytes: usize,
) -> mpsc::Receiver<Arc<Event>> {
    let (mut feed, rx) = TapFeed::channel(buffer, bytes);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let node = broker.inner.node.clone();
    let channel = broker.inner.keys.tap();
    let spawned = std::thread::Builder::new()
        .name("edaflow-redis-tap".to_owned())
        .spawn(move || run_tap(&node, &channel, &pattern, &mut feed, ready_tx));
    if spawned.is_ok() {
        // The thread signals once subscribed (or gives up, dropping the sender).
        let _ = ready_rx.recv_timeout(TAP_SUBSCRIBE_WAIT);
    }
    rx
}

fn run_tap(
    node: &Node,
    channel: &str,
    pattern: &TopicPattern,
    feed: &mut TapFeed,
    ready: std::sync::mpsc::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = RESUBSCRIBE_START;
    while !feed.is_closed() {
        let mut subscribed = || {
            let mut conn = node
                .client()
                .get_connection_with_timeout(SYNC_CONNECT_TIMEOUT)?;
            let mut pubsub = conn.as_pubsub();
            pubsub.subscribe(channel)?;
            pubsub.set_read_timeout(Some(TAP_TICK))?;
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            backoff = RESUBSCRIBE_START;
            while !feed.is_closed() {
                let message = match pubsub.get_message() {
                    Ok(message) => message,
                    Err(e) if e.is_timeout() => continue,
                    Err(e) => return Err(e),
                };
                let payload: Vec<u8> = message.get_payload_bytes().to_vec();
                // Only edaflow publishes on the tap channel; a message that is not an
                // event (something else published it) is not shown.
                if let Ok(event) = serde_json::from_slice::<Event>(&payload) {
                    if pattern.matches(&event.topic) {
                        // Lossy by contract: a full tap drops the event for its reader.
                        feed.offer(&Arc::new(event));
                    }
                }
            }
            Ok::<(), redis::RedisError>(())
        };
        if subscribed().is_err() {
            // Give up waiting for the first subscription; keep trying in the background.
            ready.take();
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
        }
    }
}
