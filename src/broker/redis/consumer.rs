//! Consumers of the Redis broker: the handles workers read groups and queues through.
//!
//! A `ShardConsumer` is a handle on a reader task (see `reader`). Each `next()` sends the
//! task a request with a one-shot reply. If the caller stops waiting (its future is
//! dropped, as a draining worker does), the reply cannot be delivered and the task gives
//! the entry back with `nack`; an answer sent just before the caller stopped is given back
//! by the guard that awaited it (`Awaiting`): cancelling a read never strands an entry.
//! The task ends when the consumers are dropped.
//!
//! The workers of one subscriber share one reader task (see `spawn`): a worker's `next()`
//! waits its turn, and a fast read takes up to one entry for each worker waiting, so under
//! load one read and one reply serve them all, where a reader each would make Redis wake
//! and answer every worker apart. Hubs and list readers (see `wire`) answer the same
//! requests.
//!
//! How entries are read is `reader`'s; taps are `tap`'s.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, Instrument};

use super::reader::Reader;
use super::ShardBroker;
use crate::broker::{Broker, BrokerError, Consumer, Delivery};

/// What a consumer reads.
pub(crate) enum Source {
    Group(Arc<str>),
    Queue(Arc<str>),
}

/// What a consumer asks its reader task (stream reader, pub/sub hub or list reader) for.
pub(super) enum Request {
    Next(oneshot::Sender<Result<Delivery, BrokerError>>),
    TryNext(oneshot::Sender<Result<Option<Delivery>, BrokerError>>),
    /// As `Next`, and after it up to this many in all of the due deliveries the reader
    /// holds already (stream readers only).
    NextRow(usize, oneshot::Sender<Result<Vec<Delivery>, BrokerError>>),
    /// Give back what was taken ahead, then answer.
    Close(oneshot::Sender<()>),
}

/// One consumer of a Redis group or queue (see the module docs).
pub struct ShardConsumer {
    requests: mpsc::Sender<Request>,
    broker: ShardBroker,
    /// Its reader answers `NextRow` (a stream reader; the article's wire readers do not).
    rows: bool,
}

impl ShardConsumer {
    /// A consumer served by another kind of reader task (`wire`).
    pub(super) fn from_requests(
        requests: mpsc::Sender<Request>,
        broker: ShardBroker,
    ) -> ShardConsumer {
        ShardConsumer {
            requests,
            broker,
            rows: false,
        }
    }
}

/// A reader's answer being awaited. A worker stopped (its `next()` dropped) just after the
/// reader sent a delivery would drop that delivery with the future, leaving the entry
/// pending with this consumer until another process claims it after `--claim-idle`;
/// instead, the guard gives it back at once.
struct Awaiting<T: Handed> {
    answer: Option<oneshot::Receiver<Result<T, BrokerError>>>,
    broker: ShardBroker,
}

/// What an answer may hold to give back.
trait Handed: Send + 'static {
    fn into_deliveries(self) -> Vec<Delivery>;
}

impl Handed for Delivery {
    fn into_deliveries(self) -> Vec<Delivery> {
        vec![self]
    }
}

impl Handed for Option<Delivery> {
    fn into_deliveries(self) -> Vec<Delivery> {
        self.into_iter().collect()
    }
}

impl Handed for Vec<Delivery> {
    fn into_deliveries(self) -> Vec<Delivery> {
        self
    }
}

impl<T: Handed> Awaiting<T> {
    async fn get(mut self) -> Result<T, BrokerError> {
        let answer = match self.answer.as_mut() {
            Some(answer) => answer.await,
            None => return Err(BrokerError::Closed),
        };
        self.answer = None;
        answer.map_err(|_| BrokerError::Closed)?
    }
}

impl<T: Handed> Drop for Awaiting<T> {
    fn drop(&mut self) {
        let Some(mut answer) = self.answer.take() else {
            return;
        };
        let Some(deliveries) = answer
            .try_recv()
            .ok()
            .and_then(Result::ok)
            .map(Handed::into_deliveries)
        else {
            return;
        };
        let broker = self.broker.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                for delivery in deliveries {
                    if let Err(e) = broker.nack(delivery).await {
                        debug!(error = %e, "could not give back a delivery nobody took; it will be claimed");
                    }
                }
            });
        }
    }
}

impl ShardBroker {
    /// A consumer name unique in Redis: `{instance}-{n}`.
    pub(super) fn new_consumer_name(&self) -> String {
        let n = self.inner.consumers.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.inner.instance)
    }
}

/// Starts one reader task serving `n` consumers (the workers of one subscriber): its
/// fast reads fetch up to one entry for each consumer waiting (see `reader`).
pub(crate) fn spawn(
    broker: ShardBroker,
    source: Source,
    name: String,
    n: usize,
) -> Vec<ShardConsumer> {
    let (tx, rx) = mpsc::channel(n.max(1));
    let span = match &source {
        Source::Group(g) => tracing::debug_span!("redis_consumer", group = %g, consumer = %name),
        Source::Queue(q) => tracing::debug_span!("redis_consumer", queue = %q, consumer = %name),
    };
    let reader = Reader::new(broker.clone(), source, name);
    // Tracked by ownership: the task ends when the consumers (its request senders) are gone.
    tokio::spawn(reader.run(rx).instrument(span));
    (0..n.max(1))
        .map(|_| ShardConsumer {
            requests: tx.clone(),
            broker: broker.clone(),
            rows: true,
        })
        .collect()
}

impl Consumer for ShardConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let (reply, answer) = oneshot::channel();
        let awaiting = Awaiting {
            answer: Some(answer),
            broker: self.broker.clone(),
        };
        self.requests
            .send(Request::Next(reply))
            .await
            .map_err(|_| BrokerError::Closed)?;
        awaiting.get().await
    }

    async fn try_next(&mut self) -> Result<Option<Delivery>, BrokerError> {
        let (reply, answer) = oneshot::channel();
        let awaiting = Awaiting {
            answer: Some(answer),
            broker: self.broker.clone(),
        };
        self.requests
            .send(Request::TryNext(reply))
            .await
            .map_err(|_| BrokerError::Closed)?;
        awaiting.get().await
    }

    async fn next_row(&mut self, most: usize) -> Result<Vec<Delivery>, BrokerError> {
        if !self.rows || most <= 1 {
            return self.next().await.map(|delivery| vec![delivery]);
        }
        let (reply, answer) = oneshot::channel();
        let awaiting = Awaiting {
            answer: Some(answer),
            broker: self.broker.clone(),
        };
        self.requests
            .send(Request::NextRow(most, reply))
            .await
            .map_err(|_| BrokerError::Closed)?;
        awaiting.get().await
    }

    async fn close(&mut self) {
        let (reply, done) = oneshot::channel();
        if self.requests.send(Request::Close(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}
