//! Replies to queries across processes: the process that serves `POST /query/…` waits here
//! for the handler's answer, which may come from any process sharing the Redis.
//!
//! Each broker instance listens on its own channel, `P reply:{instance}`. A query carries
//! the reply address `{instance}/{request id}`; the commit script of whichever process
//! handles it PUBLISHes `{"id": …, "ok": …}` or `{"id": …, "error": …}` there, in the same
//! atomic step as the handler's other effects. Pub/sub is fire-and-forget, which suits a
//! reply: nobody else wants it, and a requester that has gone (or a listener that was
//! reconnecting at that moment) simply times out with 504.
//!
//! A reply to a query this same process waits on is not published: the commit script runs
//! without it, and once the commit has landed (or was found settled already, when an earlier
//! attempt landed and its answer was lost) the broker hands it to the waiter directly
//! (`Waiting::answer`). The waiter sees it at the same point as it would a published one,
//! after the handler's effects are in Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::cluster::Node;
use super::defaults::{REPLY_LISTENER_TICK, RESUBSCRIBE_MAX, RESUBSCRIBE_START};
use super::keys::Keys;

/// What a waiting query receives: the reply, or the handler's failure message.
pub(crate) type Answer = Result<Value, String>;

/// Queries waiting in this process, by request id.
#[derive(Default)]
pub(crate) struct Waiting {
    senders: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
}

impl Waiting {
    pub(crate) fn register(&self, id: &str) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id.to_owned(), tx);
        rx
    }

    pub(crate) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Hands one published reply to its waiter (if it still waits).
    fn deliver(&self, payload: &[u8]) {
        let Ok(Value::Object(mut reply)) = serde_json::from_slice::<Value>(payload) else {
            warn!("a reply that is not a JSON object was ignored");
            return;
        };
        let Some(Value::String(id)) = reply.remove("id") else {
            warn!("a reply without an id was ignored");
            return;
        };
        let answer = match (reply.remove("ok"), reply.remove("error")) {
            (_, Some(Value::String(message))) => Err(message),
            (Some(data), _) => Ok(data),
            (None, _) => Ok(Value::Null),
        };
        self.answer(&id, answer);
    }

    /// Hands `answer` to the query `id` (if it still waits).
    pub(crate) fn answer(&self, id: &str, answer: Answer) {
        match self.lock().remove(id) {
            Some(waiting) => {
                let _ = waiting.send(answer);
            }
            None => debug!(id, "a reply came for a query that no longer waits"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Answer>>> {
        self.senders.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a reply goes, seen from the process of broker instance `here`.
pub(super) enum ReplyTo<'r> {
    /// The query waits in this process: the request id and the answer.
    Here(&'r str, &'r Answer),
    /// Another process's reply channel, and the message to publish there.
    Channel(String, String),
    /// An address this broker did not make: nobody can be waiting.
    Nowhere,
}

/// Where `answer`, addressed to `address`, goes (see `ReplyTo`).
pub(super) fn reply_to<'r>(
    keys: &Keys,
    here: &str,
    address: &'r str,
    answer: &'r Answer,
) -> ReplyTo<'r> {
    match split(address) {
        Some((instance, id)) if instance == here => ReplyTo::Here(id, answer),
        Some(_) => match route(keys, address) {
            Some((channel, id)) => ReplyTo::Channel(channel, payload(&id, answer)),
            None => ReplyTo::Nowhere,
        },
        None => ReplyTo::Nowhere,
    }
}

/// The channel a reply address `{instance}/{id}` is published on, and the id; `None` for
/// an address this broker did not make.
pub(super) fn route(keys: &Keys, address: &str) -> Option<(String, String)> {
    let (instance, id) = split(address)?;
    Some((keys.reply_channel(instance), id.to_owned()))
}

/// The instance and the request id of a reply address `{instance}/{id}`.
pub(crate) fn split(address: &str) -> Option<(&str, &str)> {
    let (instance, id) = address.split_once('/')?;
    if instance.is_empty() || id.is_empty() {
        return None;
    }
    Some((instance, id))
}

/// The message a commit publishes for one reply.
pub(crate) fn payload(id: &str, answer: &Answer) -> String {
    let mut reply = serde_json::Map::new();
    reply.insert("id".into(), id.into());
    match answer {
        Ok(data) => reply.insert("ok".into(), data.clone()),
        Err(message) => reply.insert("error".into(), message.clone().into()),
    };
    Value::Object(reply).to_string()
}

/// Subscribes to `channel` (returning once the subscription is live, so a query published
/// right after cannot miss its reply), then keeps listening, reconnecting with backoff,
/// until `waiting` is dropped with the broker.
pub(crate) async fn listen(
    node: Arc<Node>,
    channel: String,
    waiting: Weak<Waiting>,
) -> redis::RedisResult<()> {
    let first = subscribe(&node.client(), &channel).await?;
    tokio::spawn(async move {
        let mut stream = Some(first);
        let mut backoff = RESUBSCRIBE_START;
        loop {
            if let Some(messages) = stream.take() {
                backoff = RESUBSCRIBE_START;
                if !pump(messages, &waiting).await {
                    return;
                }
                warn!("the reply listener lost its Redis connection; reconnecting");
            }
            if waiting.strong_count() == 0 {
                return;
            }
            match subscribe(&node.client(), &channel).await {
                Ok(messages) => stream = Some(messages),
                Err(e) => {
                    debug!(error = %e, "the reply listener could not reconnect yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
                }
            }
        }
    });
    Ok(())
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> redis::RedisResult<redis::aio::PubSubStream> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub.into_on_message())
}

/// Delivers messages until the connection ends (`true`) or the broker is gone (`false`).
async fn pump(mut messages: redis::aio::PubSubStream, waiting: &Weak<Waiting>) -> bool {
    loop {
        // Wake now and then to notice that the broker has gone.
        match tokio::time::timeout(REPLY_LISTENER_TICK, messages.next()).await {
            Ok(Some(message)) => match waiting.upgrade() {
                Some(waiting) => waiting.deliver(message.get_payload_bytes()),
                None => return false,
            },
            Ok(None) => return waiting.strong_count() > 0,
            Err(_) => {
                if waiting.strong_count() == 0 {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn addresses_route_to_the_instance_channel() {
        let keys = Keys::new("edaflow:{x}:".to_owned());
        assert_eq!(
            route(&keys, "123-abc/01J"),
            Some(("edaflow:{x}:reply:123-abc".to_owned(), "01J".to_owned()))
        );
        assert_eq!(route(&keys, "no-slash"), None);
        assert_eq!(route(&keys, "/id"), None);
    }

    #[tokio::test]
    async fn payloads_reach_their_waiter_once() {
        let waiting = Arc::new(Waiting::default());
        let ok = waiting.register("a");
        let failed = waiting.register("b");
        waiting.deliver(payload("a", &Ok(json!({"n": 1}))).as_bytes());
        waiting.deliver(payload("b", &Err("boom".into())).as_bytes());
        // A second reply for the same id, and garbage, are ignored.
        waiting.deliver(payload("a", &Ok(json!(2))).as_bytes());
        waiting.deliver(b"not json");
        assert_eq!(ok.await.unwrap(), Ok(json!({"n": 1})));
        assert_eq!(failed.await.unwrap(), Err("boom".to_owned()));
        let forgotten = waiting.register("c");
        waiting.forget("c");
        assert!(forgotten.await.is_err());
    }
}
