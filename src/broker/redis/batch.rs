//! Group commit for the Redis broker: every publish, commit and enqueue of a process goes
//! through one batcher task, which packs the operations waiting at that moment into one run
//! of the `batch` script (see `scripts::BATCH`). A caller still waits for its own
//! operation's result, so nothing changes for it except cost: under load one script run,
//! one round trip and one clock read carry dozens of operations instead of one.
//!
//! Each operation in a run is independent (one refused by a full queue does not stop the
//! next) and keeps its own atomicity: the script runs as a whole, so a commit's effects and
//! its ack land together. Nothing waits to fill a batch: the task takes what is queued the
//! moment it has a free slot (`IN_FLIGHT` runs may be on the wire at once, so Redis is not
//! left idle while the previous reply is read). A failed run (Redis unreachable, a timeout)
//! fails each of its operations with the same transient error, and each caller retries as
//! it would have after a failed command of its own; commits are idempotent (the script's
//! guard), so a retry after a lost reply applies nothing twice.

use std::sync::Arc;

use redis::Value;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::failure::{unavailable, unexpected};
use super::{cluster, scripts};
use crate::broker::BrokerError;

use super::defaults::{
    ACKS_IN_FLIGHT, BATCH_IN_FLIGHT as IN_FLIGHT, BATCH_MAX_BYTES as MAX_BYTES,
    BATCH_QUEUE as QUEUE,
};

/// The arguments of one operation: its kind (`p` publish, `c` commit), then its own.
pub(super) struct OpArgs {
    args: Vec<Vec<u8>>,
    bytes: usize,
}

impl OpArgs {
    pub(super) fn new(kind: &str) -> OpArgs {
        let mut args = OpArgs {
            args: Vec::with_capacity(16),
            bytes: 0,
        };
        args.text(kind);
        args
    }

    /// Appends an argument given as text.
    pub(super) fn text(&mut self, arg: &str) -> &mut OpArgs {
        self.owned(arg.to_owned())
    }

    /// Appends an argument, without a copy.
    pub(super) fn owned(&mut self, arg: String) -> &mut OpArgs {
        self.bytes += arg.len();
        self.args.push(arg.into_bytes());
        self
    }

    pub(super) fn num(&mut self, n: impl std::fmt::Display) -> &mut OpArgs {
        self.owned(n.to_string())
    }

    /// A sequence (`s`) of commits (each built as a `c` operation), run in order as one
    /// operation (see `scripts::BATCH`).
    pub(super) fn sequence(commits: Vec<OpArgs>) -> OpArgs {
        let mut op = OpArgs::new("s");
        op.num(commits.len());
        for commit in commits {
            op.bytes += commit.bytes;
            // Each commit's own kind is left out.
            op.args.extend(commit.args.into_iter().skip(1));
        }
        op
    }
}

struct Op {
    args: OpArgs,
    reply: oneshot::Sender<Result<Value, BrokerError>>,
}

/// The handle on a process's batcher task; the task ends when the handle is dropped.
pub(super) struct Batcher {
    ops: mpsc::Sender<Op>,
}

impl Batcher {
    /// Must be called inside a tokio runtime. Starts the task, carrying at most `most` operations per script run.
    pub(super) fn start(node: Arc<cluster::Node>, prefix: String, most: usize) -> Batcher {
        let (tx, rx) = mpsc::channel(QUEUE);
        let span = tracing::info_span!("redis_batcher", component = "broker");
        // Tracked by ownership: the task ends once every sender (this handle) is gone.
        tokio::spawn(run(node, prefix, most.max(1), rx).instrument(span));
        Batcher { ops: tx }
    }

    /// Runs one operation (in some batch) and returns its result: the script's reply for it.
    pub(super) async fn run(&self, args: OpArgs) -> Result<Value, BrokerError> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Op { args, reply })
            .await
            .map_err(|_| BrokerError::Closed)?;
        answer.await.map_err(|_| BrokerError::Closed)?
    }
}

/// Runs `ops` in one script run of their own, outside the batcher, and returns one reply
/// per operation: for callers whose operations must land in one run or not at all (a
/// shard's outbox forwarded in order, see `spread`).
pub(super) async fn run_once(
    node: &cluster::Node,
    prefix: &str,
    ops: &[OpArgs],
) -> Result<Vec<Value>, BrokerError> {
    let mut invocation = scripts::BATCH.prepare_invoke();
    invocation.arg(prefix).arg(ops.len());
    for op in ops {
        for arg in &op.args {
            invocation.arg(&arg[..]);
        }
    }
    match invocation
        .invoke_async::<Value>(&mut node.conn())
        .await
        .map_err(unavailable)?
    {
        Value::Array(replies) if replies.len() == ops.len() => Ok(replies),
        other => Err(unexpected("one reply per operation of a batch", &other)),
    }
}

async fn run(node: Arc<cluster::Node>, prefix: String, most: usize, mut ops: mpsc::Receiver<Op>) {
    let prefix: Arc<str> = prefix.into();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some((slot, batch)) = gather(&slots, &mut ops, most, |op| op.args.bytes).await {
        let mut conn = node.conn();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut invocation = scripts::BATCH.prepare_invoke();
            invocation.arg(&*prefix).arg(batch.len());
            for op in &batch {
                for arg in &op.args.args {
                    invocation.arg(&arg[..]);
                }
            }
            let result = invocation.invoke_async::<Value>(&mut conn).await;
            answer_all(
                batch,
                result,
                "one reply per operation of a batch",
                |op, r| {
                    let _ = op.reply.send(r);
                },
            );
        });
    }
}

/// The next batch: waits for a free slot and a first item, then takes whatever else is
/// waiting already (nothing waits to fill a batch), up to `most` items or `MAX_BYTES` as
/// `bytes` counts them. `None` once every sender is gone.
async fn gather<T>(
    slots: &Arc<Semaphore>,
    items: &mut mpsc::Receiver<T>,
    most: usize,
    bytes: impl Fn(&T) -> usize,
) -> Option<(OwnedSemaphorePermit, Vec<T>)> {
    let slot = slots.clone().acquire_owned().await.ok()?;
    let first = items.recv().await?;
    let mut total = bytes(&first);
    let mut batch = vec![first];
    while batch.len() < most && total < MAX_BYTES {
        match items.try_recv() {
            Ok(item) => {
                total += bytes(&item);
                batch.push(item);
            }
            Err(_) => break,
        }
    }
    Some((slot, batch))
}

/// Hands each item of a batch its own reply from `replies` (an array, one per item, in
/// order). A failed round trip fails every item with the same error (transient when Redis
/// could not be reached: each caller retries, as after a failed command of its own), and
/// so does a reply of another shape (`what` says which was expected).
fn answer_all<T>(
    batch: Vec<T>,
    replies: redis::RedisResult<Value>,
    what: &'static str,
    answer: impl Fn(T, Result<Value, BrokerError>),
) {
    let error = match replies {
        Ok(Value::Array(replies)) if replies.len() == batch.len() => {
            for (item, reply) in batch.into_iter().zip(replies) {
                answer(item, Ok(reply));
            }
            return;
        }
        Ok(other) => unexpected(what, &other),
        Err(e) => unavailable(e),
    };
    for item in batch {
        answer(item, Err(error.clone()));
    }
}

/// How many entries one `XACK` acked. A stream or group that is gone (removed, or Redis
/// lost its state) holds nothing pending: none.
fn acked(reply: Value) -> Result<i64, BrokerError> {
    match reply {
        Value::Int(n) => Ok(n),
        Value::ServerError(e) if e.code() == "NOGROUP" => Ok(0),
        Value::ServerError(e) => Err(unavailable(e.into())),
        other => Err(unexpected("the count of an XACK", &other)),
    }
}

/// One acknowledgement on a stream that acks by deleting (a queue's, an inbox): the whole
/// commit of a run that wrote nothing (see `ack_only` in the parent module).
struct Ack {
    key: String,
    group: String,
    id: String,
    reply: oneshot::Sender<Result<(), BrokerError>>,
}

/// Group commit for acknowledgements alone, on streams that ack by deleting: the acks
/// waiting at one moment go out as one `MULTI`, with one `XACK` and one `XDEL` for all the
/// ids of each stream, rather than four commands each (W3 with the handler recording in
/// process: CPU per job about 8 % less for edaflow and 10 % less for Redis than one
/// command each, and less again per ack since they share commands). No script runs. An
/// entry settled already (a lost-reply retry, another consumer) is acked and deleted by
/// nobody twice: `XACK` skips it, `XDEL` finds nothing. (A topic's ack, one `XACK`, goes
/// out on its own at once: batching it cost W1's 16 counting workers more in waiting than
/// it saved.)
pub(super) struct Acks {
    acks: mpsc::Sender<Ack>,
}

impl Acks {
    /// Must be called inside a tokio runtime. Starts the task, carrying at most `most` acks
    /// per pipeline.
    pub(super) fn start(node: Arc<cluster::Node>, most: usize) -> Acks {
        let (tx, rx) = mpsc::channel(QUEUE);
        let span = tracing::info_span!("redis_acks", component = "broker");
        // Tracked by ownership: the task ends once every sender (this handle) is gone.
        tokio::spawn(run_acks(node, most.max(1), rx).instrument(span));
        Acks { acks: tx }
    }

    /// Acks and deletes one entry (in some `MULTI`), or finds it settled already.
    pub(super) async fn ack(&self, key: &str, group: &str, id: &str) -> Result<(), BrokerError> {
        self.ack_all(key, group, &[id]).await
    }

    /// Acks and deletes entries of one stream, handed over together so that they mostly
    /// share one `MULTI` (the task carries at most its `most` per pipeline).
    pub(super) async fn ack_all(
        &self,
        key: &str,
        group: &str,
        ids: &[&str],
    ) -> Result<(), BrokerError> {
        let mut answers = Vec::with_capacity(ids.len());
        for id in ids {
            let (reply, answer) = oneshot::channel();
            let ack = Ack {
                key: key.to_owned(),
                group: group.to_owned(),
                id: (*id).to_owned(),
                reply,
            };
            self.acks.send(ack).await.map_err(|_| BrokerError::Closed)?;
            answers.push(answer);
        }
        for answer in answers {
            answer.await.map_err(|_| BrokerError::Closed)??;
        }
        Ok(())
    }
}

async fn run_acks(node: Arc<cluster::Node>, most: usize, mut acks: mpsc::Receiver<Ack>) {
    let slots = Arc::new(Semaphore::new(ACKS_IN_FLIGHT));
    while let Some((slot, mut batch)) = gather(&slots, &mut acks, most, |_| 0).await {
        let mut conn = node.conn();
        tokio::spawn(async move {
            let _slot = slot;
            // One XACK and one XDEL per stream (a process acks few streams: its queues
            // and inboxes).
            batch.sort_by(|a, b| (&a.key, &a.group).cmp(&(&b.key, &b.group)));
            let mut pipe = redis::pipe();
            pipe.atomic();
            let mut streams = 0;
            for same in batch.chunk_by(|a, b| a.key == b.key && a.group == b.group) {
                let (key, group) = (&same[0].key, &same[0].group);
                let ids: Vec<&String> = same.iter().map(|ack| &ack.id).collect();
                pipe.cmd("XACK").arg(key).arg(group).arg(&ids);
                pipe.cmd("XDEL").arg(key).arg(&ids).ignore();
                streams += 1;
            }
            pipe.ignore_errors();
            let replies = pipe
                .query_async::<Vec<Value>>(&mut conn)
                .await
                .map_err(unavailable)
                .and_then(|replies| {
                    replies
                        .into_iter()
                        .map(acked)
                        .collect::<Result<Vec<_>, _>>()
                });
            match replies {
                Ok(counts) if counts.len() == streams => {
                    let settled = batch.len() as i64 - counts.iter().sum::<i64>();
                    if settled > 0 {
                        // As the commit script's guard: settled already, by a lost-reply
                        // retry or another consumer. An ack applies nothing twice.
                        tracing::debug!(
                            settled,
                            of = batch.len(),
                            "acks found entries settled already"
                        );
                    }
                    for ack in batch {
                        let _ = ack.reply.send(Ok(()));
                    }
                }
                other => {
                    let error = match other {
                        Err(e) => e,
                        Ok(counts) => unexpected("one count per stream of the acks", &counts),
                    };
                    for ack in batch {
                        let _ = ack.reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}
