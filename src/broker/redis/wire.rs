//! The article's wire format on Redis, spoken next to edaflow's own streams so that the
//! article's `eda` tool, `redis-cli` and edaflow processes can share one Redis:
//!
//! - a topic in `pubsub` mode (`[topics.NAME] mode = "pubsub"`, or `[flow] topic_mode`) is
//!   a plain Redis channel named after the topic, with no key prefix. Publishing is
//!   `PUBLISH <topic> <payload>` where the payload is the event's raw JSON, not the
//!   CloudEvents envelope. A subscriber group whose topics are all pub/sub reads through a
//!   *hub*: one SUBSCRIBE (PSUBSCRIBE for patterns) per group and process, whose messages
//!   the group's workers in this process share. Pub/sub keeps nothing: a message published
//!   while nobody listens is gone, a process that is down misses what is published
//!   meanwhile, and there is no redelivery. Each process's group gets every message.
//! - a queue with `list = "KEY"` is the plain Redis list `KEY`, holding raw payloads. Items
//!   go in with LPUSH and come out with RPOP, the ends the article's tool uses (its master
//!   node LPUSHes into `message:queue`, its worker RPOPs), so the oldest item comes out
//!   first and processes of both tools can share the list. A list has no due times, no
//!   pending list and no capacity: a popped item is the worker's; it is pushed back (to
//!   the pop end) only when the worker gives it back unhandled.
//!
//! An incoming payload that is not JSON becomes an event whose `data` is the payload as a
//! string; the bytes are kept as they came either way (`Event::raw`), so what a client
//! sent is what the article's consumer prints.
//!
//! This module owns the wire settings of one broker, the split of a commit's effects into
//! what goes over this wire and what goes through the commit script, the hubs and the list
//! readers. It must not touch edaflow's stream keys or the commit script.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use futures_util::StreamExt;
use redis::aio::PubSubStream;
use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn, Instrument};

use super::consumer::{Request, ShardConsumer};
use super::defaults::{HUB_BUFFER, HUB_REQUESTS, LIST_POLL, RESUBSCRIBE_MAX, RESUBSCRIBE_START};
use super::failure::unavailable;
use super::ShardBroker;
use crate::broker::{BrokerError, Delivery, Effects, WireFormat, WireSpec};
use crate::event::{Event, RawPayload};
use crate::pattern::TopicPattern;

/// The delivery tag of a pub/sub message (nothing to ack).
const PUBSUB_TAG: &str = "p";
/// The delivery tag of a list item (nothing to ack: RPOP took it).
const LIST_TAG: &str = "l";

/// The wire settings of one broker and its running hubs.
#[derive(Default)]
pub(super) struct Wire {
    spec: RwLock<WireSpec>,
    hubs: Mutex<HashMap<String, HubHandle>>,
}

/// How consumers reach the hub of a group: requests (held weakly, so the hub ends with
/// its last consumer) and given-back deliveries.
struct HubHandle {
    requests: mpsc::WeakSender<Request>,
    given_back: mpsc::Sender<Delivery>,
}

/// One thing to send over the article's wire.
enum Op {
    Publish { channel: String, payload: String },
    Push { list: String, payload: String },
}

impl Wire {
    /// Replaces the settings (on every flow load).
    pub(super) fn set(&self, spec: &WireSpec) {
        *self.spec.write().unwrap_or_else(|e| e.into_inner()) = spec.clone();
    }

    fn spec(&self) -> std::sync::RwLockReadGuard<'_, WireSpec> {
        self.spec.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Does `topic` travel as plain pub/sub?
    pub(super) fn is_pubsub(&self, topic: &str) -> bool {
        self.spec().is_pubsub(topic)
    }

    /// The list key of a list queue.
    pub(super) fn list_of(&self, queue: &str) -> Option<String> {
        self.spec().lists.get(queue).cloned()
    }

    /// A group reads through a hub when every one of its patterns is pub/sub: a literal
    /// naming a pub/sub topic, or a wildcard under `topic_mode = "pubsub"` that no stream
    /// topic matches. A group mixing both reads its streams only (logged).
    pub(super) fn group_is_pubsub(&self, group: &str, patterns: &[TopicPattern]) -> bool {
        let spec = self.spec();
        let pubsub = |p: &TopicPattern| {
            if p.is_literal() {
                spec.is_pubsub(p.as_str())
            } else {
                spec.pubsub_by_default && !spec.streams.iter().any(|t| p.matches(t))
            }
        };
        let count = patterns.iter().filter(|p| pubsub(p)).count();
        if count > 0 && count < patterns.len() {
            warn!(
                group,
                "the group reads both pub/sub and stream topics; it gets the stream topics only (give the pub/sub topics a subscriber of their own)"
            );
        }
        count > 0 && count == patterns.len()
    }

    /// Whether anything of `effects` goes over the article's wire.
    pub(super) fn touches(&self, effects: &Effects) -> bool {
        let spec = self.spec();
        if !spec.pubsub_by_default && spec.pubsub.is_empty() && spec.lists.is_empty() {
            return false;
        }
        effects.publish.iter().any(|e| spec.is_pubsub(&e.topic))
            || effects
                .deferred
                .iter()
                .any(|(e, _)| spec.is_pubsub(&e.topic))
            || effects
                .enqueue
                .iter()
                .any(|(q, _, _)| spec.lists.contains_key(q))
    }

    /// Takes out of `effects` what goes over the article's wire; `None` when nothing does
    /// (the common case, with no copy made).
    ///
    /// # Errors
    /// `Undelayable` for a delayed event on a pub/sub topic or a delayed list item.
    fn split(&self, effects: &Effects) -> Result<Option<(Effects, Vec<Op>)>, BrokerError> {
        if !self.touches(effects) {
            return Ok(None);
        }
        let spec = self.spec();
        let mut rest = effects.clone();
        let mut ops = Vec::new();
        if let Some((event, _)) = rest.deferred.iter().find(|(e, _)| spec.is_pubsub(&e.topic)) {
            return Err(BrokerError::Undelayable {
                name: event.topic.clone(),
                wire: "pub/sub topic",
            });
        }
        rest.publish.retain(|event| {
            if !spec.is_pubsub(&event.topic) {
                return true;
            }
            ops.push(Op::Publish {
                channel: event.topic.clone(),
                payload: event.raw_payload(),
            });
            false
        });
        let mut refused = None;
        rest.enqueue.retain(|(queue, item, delay)| {
            let Some(list) = spec.lists.get(queue) else {
                return true;
            };
            if !delay.is_zero() {
                refused.get_or_insert_with(|| queue.clone());
            }
            ops.push(Op::Push {
                list: list.clone(),
                payload: item.raw_payload(),
            });
            false
        });
        if let Some(queue) = refused {
            return Err(BrokerError::Undelayable {
                name: queue,
                wire: "plain-list queue",
            });
        }
        Ok(Some((rest, ops)))
    }
}

/// Sends what `effects` holds for the article's wire (PUBLISH, LPUSH, each also shown to
/// taps) and returns the rest, for the commit script; `None` when nothing went over the
/// wire. This happens before the script acks, so a crash in between repeats these sends
/// when the event is redelivered (at least once, never lost).
pub(super) async fn send_effects(
    broker: &ShardBroker,
    effects: &Effects,
) -> Result<Option<Effects>, BrokerError> {
    let Some((rest, ops)) = broker.inner.wire.split(effects)? else {
        return Ok(None);
    };
    let tap = broker.inner.keys.tap();
    let mut pipe = redis::pipe();
    for op in &ops {
        match op {
            Op::Publish { channel, payload } => pipe.cmd("PUBLISH").arg(channel).arg(payload),
            Op::Push { list, payload } => pipe.cmd("LPUSH").arg(list).arg(payload),
        };
    }
    // Taps see the events as edaflow knows them (the envelope, topic and all).
    let shown = effects
        .publish
        .iter()
        .filter(|e| broker.inner.wire.is_pubsub(&e.topic))
        .chain(
            effects
                .enqueue
                .iter()
                .filter(|(q, _, _)| broker.inner.wire.list_of(q).is_some())
                .map(|(_, e, _)| e),
        );
    for event in shown {
        pipe.cmd("PUBLISH").arg(&tap).arg(event.to_stored_json());
    }
    pipe.query_async::<Value>(&mut broker.conn())
        .await
        .map_err(unavailable)?;
    Ok(Some(rest))
}

/// Gives back a delivery that came over the article's wire: a pub/sub message goes back
/// to its hub (for the next worker), a list item to the pop end of its list. `None` when
/// the delivery came from a stream.
pub(super) async fn nack(
    broker: &ShardBroker,
    delivery: &Delivery,
) -> Option<Result<(), BrokerError>> {
    match delivery.tag.as_str() {
        PUBSUB_TAG => {
            let back = broker
                .inner
                .wire
                .hubs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&*delivery.group)
                .map(|hub| hub.given_back.clone());
            let kept = match back {
                Some(back) => back.try_send(delivery.clone()).is_ok(),
                None => false,
            };
            if !kept {
                debug!(group = %delivery.group, "pub/sub message given back with no hub running; dropped");
            }
            Some(Ok(()))
        }
        LIST_TAG => {
            let Some(list) = broker.inner.wire.list_of(&delivery.group) else {
                return Some(Ok(()));
            };
            Some(push_back(broker, &list, &delivery.event).await)
        }
        _ => None,
    }
}

async fn push_back(broker: &ShardBroker, list: &str, event: &Event) -> Result<(), BrokerError> {
    redis::cmd("RPUSH")
        .arg(list)
        .arg(event.raw_payload())
        .query_async::<Value>(&mut broker.conn())
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// An event from a payload that arrived over the article's wire. Any bytes make one: a
/// payload that is not JSON, or JSON nested deeper than an event's data may be
/// (`event::limits::MAX_DATA_DEPTH`), is its data as a string.
fn incoming(topic: &str, source: String, bytes: &[u8]) -> Event {
    let text = String::from_utf8_lossy(bytes);
    let opened = bytes.iter().filter(|b| matches!(b, b'[' | b'{')).count();
    let data = serde_json::from_str(&text)
        .ok()
        .filter(|data| {
            opened <= crate::event::limits::MAX_DATA_DEPTH
                || crate::event::data_depth(data) <= crate::event::limits::MAX_DATA_DEPTH
        })
        .unwrap_or_else(|| serde_json::Value::String(text.clone().into_owned()));
    let mut event = Event::new(topic, source, data);
    event.raw = RawPayload(Some(Arc::from(text.as_ref())));
    event
}

/// A consumer of a pub/sub group: a handle on the group's hub in this process, started
/// with the first consumer and ended with the last.
pub(super) fn group_consumer(
    broker: &ShardBroker,
    group: &str,
    patterns: Vec<TopicPattern>,
) -> ShardConsumer {
    let mut hubs = broker
        .inner
        .wire
        .hubs
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(requests) = hubs.get(group).and_then(|h| h.requests.upgrade()) {
        return ShardConsumer::from_requests(requests, broker.clone());
    }
    let (requests, requests_rx) = mpsc::channel(HUB_REQUESTS);
    let (given_back, given_back_rx) = mpsc::channel(HUB_BUFFER);
    hubs.insert(
        group.to_owned(),
        HubHandle {
            requests: requests.downgrade(),
            given_back,
        },
    );
    drop(hubs);
    let hub = Hub {
        broker: broker.clone(),
        group: group.into(),
        patterns,
        waiting: VecDeque::new(),
        buffered: VecDeque::new(),
        dropped: 0,
    };
    let span = tracing::info_span!("redis_pubsub", group = %group);
    // Tracked by ownership: the hub ends when the last consumer (request sender) is gone.
    tokio::spawn(hub.run(requests_rx, given_back_rx).instrument(span));
    ShardConsumer::from_requests(requests, broker.clone())
}

struct Hub {
    broker: ShardBroker,
    group: Arc<str>,
    patterns: Vec<TopicPattern>,
    /// Workers waiting for a message, oldest first.
    waiting: VecDeque<oneshot::Sender<Result<Delivery, BrokerError>>>,
    /// Messages no worker has taken yet.
    buffered: VecDeque<Delivery>,
    dropped: u64,
}

impl Hub {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut given_back: mpsc::Receiver<Delivery>,
    ) {
        let mut stream: Option<PubSubStream> = None;
        let mut retry_at = tokio::time::Instant::now();
        let mut backoff = RESUBSCRIBE_START;
        let mut failing = false;
        loop {
            if stream.is_none() && tokio::time::Instant::now() >= retry_at {
                match self.subscribe().await {
                    Ok(subscribed) => {
                        stream = Some(subscribed);
                        backoff = RESUBSCRIBE_START;
                        failing = false;
                    }
                    Err(e) => {
                        if !failing {
                            warn!(error = %e, "cannot subscribe; retrying (messages published meanwhile are missed)");
                            failing = true;
                        }
                        retry_at = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
                    }
                }
            }
            tokio::select! {
                request = requests.recv() => match request {
                    None => return,
                    Some(request) => self.answer(request),
                },
                Some(delivery) = given_back.recv() => self.offer(delivery),
                message = next_message(&mut stream) => match message {
                    Some(message) => {
                        if let Some(delivery) = self.delivery(&message) {
                            self.offer(delivery);
                        }
                    }
                    None => {
                        warn!("pub/sub connection lost; subscribing again (messages published meanwhile are missed)");
                        stream = None;
                        retry_at = tokio::time::Instant::now();
                    }
                },
                _ = tokio::time::sleep_until(retry_at), if stream.is_none() => {}
            }
        }
    }

    /// SUBSCRIBEs to the group's literal topics and PSUBSCRIBEs to its patterns (as
    /// globs: `*` and `>` both become `*`, a superset filtered again on arrival).
    async fn subscribe(&self) -> Result<PubSubStream, BrokerError> {
        let mut pubsub = self
            .broker
            .inner
            .node
            .client()
            .get_async_pubsub()
            .await
            .map_err(unavailable)?;
        let mut channels = Vec::new();
        for pattern in &self.patterns {
            if pattern.is_literal() {
                pubsub
                    .subscribe(pattern.as_str())
                    .await
                    .map_err(unavailable)?;
            } else {
                let glob = pattern.as_str().replace('>', "*");
                pubsub.psubscribe(&glob).await.map_err(unavailable)?;
            }
            channels.push(pattern.as_str().to_owned());
        }
        info!(channels = %channels.join(","), "subscribed to redis pub/sub");
        Ok(pubsub.into_on_message())
    }

    fn delivery(&self, message: &redis::Msg) -> Option<Delivery> {
        let channel = message.get_channel_name();
        let wanted = self.patterns.iter().any(|p| p.matches(channel))
            && self.broker.inner.wire.is_pubsub(channel);
        if !wanted {
            return None;
        }
        let event = incoming(
            channel,
            format!("edaflow://pubsub/{channel}"),
            message.get_payload_bytes(),
        );
        if event.data.is_string() {
            debug!(
                channel,
                "a pub/sub payload that is not JSON is handled as a string"
            );
        }
        Some(Delivery {
            event: Arc::new(event),
            group: self.group.clone(),
            from_queue: false,
            redeliveries: 0,
            tag: PUBSUB_TAG.to_owned(),
        })
    }

    fn answer(&mut self, request: Request) {
        match request {
            Request::Next(reply) => match self.buffered.pop_front() {
                Some(delivery) => {
                    if let Err(Ok(delivery)) = reply.send(Ok(delivery)) {
                        self.buffered.push_front(delivery);
                    }
                }
                None => {
                    self.waiting.retain(|w| !w.is_closed());
                    self.waiting.push_back(reply);
                }
            },
            Request::TryNext(reply) => {
                let next = self.buffered.pop_front();
                if let Err(Ok(Some(delivery))) = reply.send(Ok(next)) {
                    self.buffered.push_front(delivery);
                }
            }
            // Never asked: the consumers of a hub ask for one delivery at a time.
            Request::NextRow(_, reply) => {
                let _ = reply.send(Err(BrokerError::Closed));
            }
            // The hub's buffer is shared by the group's workers: nothing is one worker's.
            Request::Close(reply) => {
                let _ = reply.send(());
            }
        }
    }

    /// Hands a message to the first waiting worker, else keeps it (up to `HUB_BUFFER`).
    fn offer(&mut self, mut delivery: Delivery) {
        while let Some(waiting) = self.waiting.pop_front() {
            match waiting.send(Ok(delivery)) {
                Ok(()) => return,
                Err(Ok(back)) => delivery = back,
                Err(Err(_)) => return,
            }
        }
        if self.buffered.len() >= HUB_BUFFER {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                warn!(
                    dropped = self.dropped,
                    "workers fall behind a pub/sub topic; messages dropped"
                );
            }
            return;
        }
        self.buffered.push_back(delivery);
    }
}

/// The next message of a subscription; never resolves without one.
async fn next_message(stream: &mut Option<PubSubStream>) -> Option<redis::Msg> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// A consumer of a plain-list queue (see the module docs): RPOP, and when the list is
/// empty, a look again every `LIST_POLL`.
pub(super) fn list_consumer(broker: &ShardBroker, queue: &str, list: String) -> ShardConsumer {
    let (requests, rx) = mpsc::channel(1);
    let reader = ListReader {
        broker: broker.clone(),
        queue: queue.into(),
        list,
        failing: false,
    };
    let span = tracing::debug_span!("redis_list", queue = %queue);
    // Tracked by ownership: the task ends when the consumer (its request sender) is gone.
    tokio::spawn(reader.run(rx).instrument(span));
    ShardConsumer::from_requests(requests, broker.clone())
}

struct ListReader {
    broker: ShardBroker,
    queue: Arc<str>,
    list: String,
    failing: bool,
}

impl ListReader {
    async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        while let Some(request) = requests.recv().await {
            match request {
                Request::Next(reply) => {
                    let mut backoff = LIST_POLL;
                    while !reply.is_closed() {
                        match self.pop().await {
                            Ok(Some(delivery)) => {
                                if let Err(Ok(delivery)) = reply.send(Ok(delivery)) {
                                    self.give_back(&delivery).await;
                                }
                                break;
                            }
                            Ok(None) => tokio::time::sleep(LIST_POLL).await,
                            Err(e) => {
                                self.report(&e);
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
                            }
                        }
                    }
                }
                Request::TryNext(reply) => {
                    let next = match self.pop().await {
                        Ok(next) => next,
                        Err(e) => {
                            self.report(&e);
                            None
                        }
                    };
                    if let Err(Ok(Some(delivery))) = reply.send(Ok(next)) {
                        self.give_back(&delivery).await;
                    }
                }
                // Never asked: the consumers of a list ask for one item at a time.
                Request::NextRow(_, reply) => {
                    let _ = reply.send(Err(BrokerError::Closed));
                }
                // Pops one at a time: nothing taken ahead.
                Request::Close(reply) => {
                    let _ = reply.send(());
                }
            }
        }
    }

    fn report(&mut self, e: &BrokerError) {
        if !self.failing {
            warn!(error = %e, "redis unavailable; the list reader retries");
            self.failing = true;
        }
    }

    async fn pop(&mut self) -> Result<Option<Delivery>, BrokerError> {
        let item: Option<Vec<u8>> = redis::cmd("RPOP")
            .arg(&self.list)
            .query_async(&mut self.broker.conn())
            .await
            .map_err(unavailable)?;
        self.failing = false;
        Ok(item.map(|bytes| Delivery {
            event: Arc::new(incoming(
                &self.queue,
                format!("edaflow://list/{}", self.list),
                &bytes,
            )),
            group: self.queue.clone(),
            from_queue: true,
            redeliveries: 0,
            tag: LIST_TAG.to_owned(),
        }))
    }

    async fn give_back(&self, delivery: &Delivery) {
        if let Err(e) = push_back(&self.broker, &self.list, &delivery.event).await {
            warn!(error = %e, list = %self.list, "could not give back a list item; it is lost");
        }
    }
}

impl WireFormat for ShardBroker {
    fn declare_wire(&self, wire: &WireSpec) {
        self.inner.wire.set(wire);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn event(topic: &str) -> Event {
        Event::new(topic, "test", serde_json::json!({"n": 1}))
    }

    fn wire(spec: WireSpec) -> Wire {
        let wire = Wire::default();
        wire.set(&spec);
        wire
    }

    #[test]
    fn nothing_is_split_without_a_wire() {
        let effects = Effects {
            publish: vec![event("orderCreated")],
            ..Effects::default()
        };
        assert!(Wire::default().split(&effects).unwrap().is_none());
    }

    #[test]
    fn pubsub_events_and_list_items_leave_the_commit() {
        let wire = wire(WireSpec {
            pubsub: ["orderCreated".to_owned()].into(),
            lists: [("tasks".to_owned(), "message:queue".to_owned())].into(),
            ..WireSpec::default()
        });
        let mut raw = event("orderCreated");
        raw.raw = RawPayload(Some(Arc::from(r#"{"n":  1}"#)));
        let effects = Effects {
            publish: vec![raw, event("other")],
            enqueue: vec![
                ("tasks".to_owned(), event("tasks"), Duration::ZERO),
                ("later".to_owned(), event("later"), Duration::from_secs(1)),
            ],
            ..Effects::default()
        };
        let (rest, ops) = wire.split(&effects).unwrap().expect("split");
        assert_eq!(rest.publish.len(), 1);
        assert_eq!(rest.publish[0].topic, "other");
        assert_eq!(rest.enqueue.len(), 1);
        assert_eq!(rest.enqueue[0].0, "later");
        let sent: Vec<(String, String)> = ops
            .into_iter()
            .map(|op| match op {
                Op::Publish { channel, payload } => (channel, payload),
                Op::Push { list, payload } => (list, payload),
            })
            .collect();
        assert_eq!(
            sent,
            vec![
                ("orderCreated".to_owned(), r#"{"n":  1}"#.to_owned()),
                ("message:queue".to_owned(), r#"{"n":1}"#.to_owned()),
            ]
        );
    }

    #[test]
    fn delays_on_the_wire_are_refused() {
        let wire = wire(WireSpec {
            pubsub_by_default: true,
            lists: [("tasks".to_owned(), "message:queue".to_owned())].into(),
            ..WireSpec::default()
        });
        let deferred = Effects {
            deferred: vec![(event("x"), Duration::from_secs(1))],
            ..Effects::default()
        };
        assert!(matches!(
            wire.split(&deferred),
            Err(BrokerError::Undelayable { .. })
        ));
        let delayed = Effects {
            enqueue: vec![("tasks".to_owned(), event("tasks"), Duration::from_secs(1))],
            ..Effects::default()
        };
        assert!(matches!(
            wire.split(&delayed),
            Err(BrokerError::Undelayable { .. })
        ));
    }

    #[test]
    fn a_group_is_pubsub_when_all_its_patterns_are() {
        let pattern = |p: &str| TopicPattern::parse(p).unwrap();
        let wire = wire(WireSpec {
            pubsub: ["orderCreated".to_owned()].into(),
            ..WireSpec::default()
        });
        assert!(wire.group_is_pubsub("g", &[pattern("orderCreated")]));
        assert!(!wire.group_is_pubsub("g", &[pattern("orderCreated"), pattern("x")]));
        assert!(!wire.group_is_pubsub("g", &[pattern("order*")]));
        let by_default = self::wire(WireSpec {
            pubsub_by_default: true,
            streams: ["audit.log".to_owned()].into(),
            ..WireSpec::default()
        });
        assert!(by_default.group_is_pubsub("g", &[pattern("orders.*")]));
        assert!(!by_default.group_is_pubsub("g", &[pattern("audit.*")]));
        assert!(!by_default.group_is_pubsub("g", &[pattern("audit.log")]));
    }

    #[test]
    fn payloads_that_are_not_json_become_strings_kept_as_sent() {
        let event = incoming("t", "test".into(), b"hello there");
        assert_eq!(event.data, serde_json::json!("hello there"));
        assert_eq!(event.raw.get(), Some("hello there"));
        let event = incoming("t", "test".into(), br#"{"task_id": 456}"#);
        assert_eq!(event.data, serde_json::json!({"task_id": 456}));
        assert_eq!(event.article_payload(), r#"{"task_id": 456}"#);
    }

    #[test]
    fn any_bytes_make_an_event_that_reads_back() {
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        let deeper = format!("{}1{}", "[".repeat(1000), "]".repeat(1000));
        for payload in [deep.as_bytes(), deeper.as_bytes(), &[0xff, 0xfe, 0x00][..]] {
            let event = incoming("t", "test".into(), payload);
            assert!(event.data.is_string(), "{:?}", event.data);
            let again: Event = serde_json::from_str(&event.to_stored_json()).expect("reads back");
            assert_eq!(again.data, event.data);
        }
        let within = format!("{}1{}", "[".repeat(60), "]".repeat(60));
        assert!(incoming("t", "test".into(), within.as_bytes())
            .data
            .is_array());
    }
}
