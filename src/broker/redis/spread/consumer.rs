//! Consumers of a spread namespace: a queue's consumer reads the one shard holding the
//! queue; a group's consumer reads every shard, merging what their consumers hand out.
//!
//! A merged `next()` asks every shard's consumer at once and takes the first answer; the
//! answers that are in by then are kept, in arrival order, for the next calls, and the
//! requests still open are withdrawn (a shard consumer whose request is withdrawn takes
//! nothing, or gives back at once what it took in that instant, see the shard `consumer`
//! module). So a worker holds entries only while it asked for one, as with one shard.
//! `close` and dropping give back what is kept.

use std::collections::VecDeque;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;

use super::RedisBroker;
use crate::broker::redis::ShardConsumer;
use crate::broker::{Broker, BrokerError, Consumer, Delivery};

/// One consumer of a Redis group or queue (see the module docs).
pub struct RedisConsumer {
    inner: Inner,
    broker: RedisBroker,
}

enum Inner {
    /// One shard's consumer; `Some(k)` prefixes tags with shard `k`.
    One(Option<usize>, ShardConsumer),
    /// Every shard's consumer, and what they answered beyond the delivery handed out.
    Merged(Vec<(usize, ShardConsumer)>, VecDeque<Delivery>),
}

fn tagged(shard: Option<usize>, mut delivery: Delivery) -> Delivery {
    if let Some(k) = shard {
        delivery.tag = format!("{k}|{}", delivery.tag);
    }
    delivery
}

impl RedisConsumer {
    pub(super) fn one(shard: Option<usize>, consumer: ShardConsumer, broker: RedisBroker) -> Self {
        RedisConsumer {
            inner: Inner::One(shard, consumer),
            broker,
        }
    }

    pub(super) fn merged(parts: Vec<(usize, ShardConsumer)>, broker: RedisBroker) -> Self {
        RedisConsumer {
            inner: Inner::Merged(parts, VecDeque::new()),
            broker,
        }
    }
}

/// Asks every shard at once (`next` or `try_next`): the first answer, and those in by
/// then go to `kept`.
async fn first_of(
    parts: &mut [(usize, ShardConsumer)],
    kept: &mut VecDeque<Delivery>,
    wait: bool,
) -> Result<Option<Delivery>, BrokerError> {
    let mut asks: FuturesUnordered<_> = parts
        .iter_mut()
        .map(|(k, consumer)| {
            let k = *k;
            async move {
                let got = if wait {
                    consumer.next().await.map(Some)
                } else {
                    consumer.try_next().await
                };
                got.map(|d| d.map(|d| tagged(Some(k), d)))
            }
        })
        .collect();
    let mut first: Option<Result<Option<Delivery>, BrokerError>> = None;
    while let Some(answer) = asks.next().await {
        match answer {
            Ok(Some(delivery)) => {
                first = Some(Ok(Some(delivery)));
                break;
            }
            Ok(None) => {}
            Err(e) => {
                first.get_or_insert(Err(e));
                if wait {
                    break;
                }
            }
        }
    }
    // What else is in already is kept; what is not is withdrawn with `asks`.
    while let Some(Some(answer)) = asks.next().now_or_never() {
        if let Ok(Some(delivery)) = answer {
            kept.push_back(delivery);
        }
    }
    first.unwrap_or(Ok(None))
}

impl Consumer for RedisConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        match &mut self.inner {
            Inner::One(shard, consumer) => consumer.next().await.map(|d| tagged(*shard, d)),
            Inner::Merged(parts, kept) => {
                if let Some(delivery) = kept.pop_front() {
                    return Ok(delivery);
                }
                first_of(parts, kept, true)
                    .await?
                    .ok_or(BrokerError::Closed)
            }
        }
    }

    async fn try_next(&mut self) -> Result<Option<Delivery>, BrokerError> {
        match &mut self.inner {
            Inner::One(shard, consumer) => {
                Ok(consumer.try_next().await?.map(|d| tagged(*shard, d)))
            }
            Inner::Merged(parts, kept) => {
                if let Some(delivery) = kept.pop_front() {
                    return Ok(Some(delivery));
                }
                first_of(parts, kept, false).await
            }
        }
    }

    async fn next_row(&mut self, most: usize) -> Result<Vec<Delivery>, BrokerError> {
        match &mut self.inner {
            Inner::One(shard, consumer) => Ok(consumer
                .next_row(most)
                .await?
                .into_iter()
                .map(|d| tagged(*shard, d))
                .collect()),
            // The first answer, and what the shards answered beyond it.
            Inner::Merged(..) => {
                let first = self.next().await?;
                let Inner::Merged(_, kept) = &mut self.inner else {
                    return Ok(vec![first]);
                };
                let more = (most.saturating_sub(1)).min(kept.len());
                Ok(std::iter::once(first).chain(kept.drain(..more)).collect())
            }
        }
    }

    async fn close(&mut self) {
        match &mut self.inner {
            Inner::One(_, consumer) => consumer.close().await,
            Inner::Merged(parts, kept) => {
                for (_, consumer) in parts.iter_mut() {
                    consumer.close().await;
                }
                while let Some(delivery) = kept.pop_front() {
                    let _ = self.broker.nack(delivery).await;
                }
            }
        }
    }
}

impl Drop for RedisConsumer {
    fn drop(&mut self) {
        let Inner::Merged(_, kept) = &mut self.inner else {
            return;
        };
        if kept.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let kept = std::mem::take(kept);
        let broker = self.broker.clone();
        runtime.spawn(async move {
            for delivery in kept {
                let _ = broker.nack(delivery).await;
            }
        });
    }
}
