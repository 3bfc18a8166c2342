//! The reader task behind a subscriber's consumers (see `consumer`): how entries of a
//! group's or a queue's streams are taken.
//!
//! Asked for an entry, the task runs the `take` script (one round trip, atomic: the
//! entry is this consumer's once the script returns) and, when nothing is ready, blocks on
//! the group's streams with XREAD (no group: waiting claims nothing) on a connection of
//! its own. If the caller stops waiting (its future is dropped, as a draining worker does),
//! the reply cannot be delivered and the task gives the entry back with `nack`: cancelling
//! a read never strands an entry. The task ends when the consumer is dropped.
//!
//! A consumer of a group that reads one literal topic (the common case) takes with a plain
//! blocking `XREADGROUP` over the group's inbox and its topic stream instead: one native
//! command, no script, and Redis hands each new entry to one blocked consumer, where an
//! `XREAD` wakes every consumer of the group to race for it. A queue's consumers do the same
//! over its back and ready streams, when the queue's mover (which moves due items to the
//! ready stream, see `mover`) runs in the process. The take script still runs
//! every few takes (to claim entries of dead consumers, notice a removed group and work
//! out the fair share to take ahead) and whenever the blocking read finds nothing. A
//! blocking read whose caller stops waiting is ended with `CLIENT UNBLOCK`, and whatever it
//! took is given back.
//!
//! The workers of one subscriber share one reader task (see `consumer::spawn`): a worker's `next()`
//! waits its turn, and a fast read takes up to one entry for each worker waiting, so under
//! load one read and one reply serve them all, where a reader each would make Redis wake
//! and answer every worker apart.
//!
//! What a reader has taken and not handed out waits in `held`, earliest due first. A queue
//! item moved ahead of its due time (see "Taking ahead" in the parent module) is handed out
//! only once due; meanwhile the reader goes on reading, cut short when the item falls due,
//! so that an item due sooner can overtake it, and stops reading once it holds
//! `hold_ahead` items (a read takes up to `READ_AHEAD` entries meanwhile).
//!
//! Redis errors never reach the caller of `next()`: the task backs off (50 ms doubling to
//! 2 s, jittered) and retries, so a Redis outage pauses subscribers instead of stopping
//! them (while the circuit is open it sends nothing, see `circuit`). The outage is logged
//! once for the whole process (see `outage`), not per consumer or per retry. A group or
//! queue found gone (`gone`, or a blocked read ended by its stream's deletion) is checked
//! against the epoch marker: when Redis lost its state it is declared again and the reader
//! goes on at once (see `epoch`); only one another process removed ends the consumer.
//!
//! An entry that cannot be handed out (see `stored`) is dead-lettered on `dead.{group}`
//! (or `dead.{queue}`) with its ack, in one commit, never skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use super::blocking::{self, BlockingConn, Ended};
use super::consumer::{Request, Source};
use super::defaults::{
    CALLER_GONE_POLL, CLAIM_EVERY_MAX, CLAIM_EVERY_MIN, GIVE_BACK_AT_ONCE, READ_AHEAD,
    REFRESH_EVERY, REFUSED_PAUSE, SCRIPT_EVERY,
};
use super::failure::{self, unavailable, unexpected};
use super::held::Held;
use super::keys::QUEUE_GROUP;
use super::reply::{head, int, items, items_or_nil, nth, text};
use super::{outage, scripts, stored, ShardBroker};
use crate::broker::{BrokerError, Delivery, Effects};
use crate::event::Event;

/// What a consumer reads with a blocking `XREADGROUP` (see the module docs): two streams, in
/// the order they are read, each with its kind (as the take script names them), and the
/// consumer group on both.
struct Fast {
    group: Arc<str>,
    streams: [(String, &'static str); 2],
}

/// The fast read of a source, if it has one: a group that reads exactly one literal topic
/// (its streams cannot change while it runs) reads its inbox and that topic's stream; a
/// queue whose mover runs in this process (it was declared here) reads its back and ready
/// streams, the mover moving due items to the ready one.
fn fast_read(broker: &ShardBroker, source: &Source) -> Option<Fast> {
    match source {
        Source::Group(group) => {
            let groups = broker
                .inner
                .groups
                .read()
                .unwrap_or_else(|e| e.into_inner());
            match groups.get(&**group).map(Vec::as_slice) {
                Some([only]) if only.is_literal() => Some(Fast {
                    group: group.clone(),
                    streams: [
                        (broker.inner.keys.inbox(group), "i"),
                        (broker.inner.keys.topic(only.as_str()), "t"),
                    ],
                }),
                _ => None,
            }
        }
        Source::Queue(queue) => {
            let moving = broker
                .inner
                .queue_movers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&**queue);
            moving.then(|| Fast {
                group: QUEUE_GROUP.into(),
                streams: [
                    (broker.inner.keys.queue(queue, "back"), "b"),
                    (broker.inner.keys.queue(queue, "ready"), "r"),
                ],
            })
        }
    }
}

impl Taken {
    /// Nothing handed out, but look again at once.
    fn again() -> Taken {
        Taken::Wait {
            next_due: Some(Duration::ZERO),
            keys: Vec::new(),
        }
    }
}

enum Taken {
    Entry(Delivery),
    Gone,
    /// Nothing to take: block on these (key, id) pairs, at most `next_due` for queues.
    Wait {
        next_due: Option<Duration>,
        keys: Vec<(String, String)>,
    },
}

/// One subscriber's reader task (see the module docs).
pub(super) struct Reader {
    broker: ShardBroker,
    source: Source,
    name: String,
    /// For blocking reads only, opened on first use.
    conn: Option<BlockingConn>,
    /// What a blocking `XREADGROUP` reads, when the source allows it (see `fast_read`).
    fast: Option<Fast>,
    /// How many a fast read takes: the fair share the take script last worked out, back to
    /// one as soon as a read finds fewer waiting.
    fast_count: usize,
    /// Fast reads since the take script last ran.
    fast_reads: u32,
    /// Redis refused a fast read (the group's stream was deleted, say): the take script
    /// alone reads until then.
    fast_refused_until: Instant,
    next_claim: Instant,
    /// The last take claimed an entry: look for more at once.
    claim_streak: bool,
    next_refresh: Instant,
    /// Entries taken and not yet handed out, earliest due first (they are this consumer's
    /// in Redis already; given back when the consumer goes away).
    taken: Held,
    /// Consumers waiting for an entry, the one being served included: a fast read takes at
    /// least this many, so that the workers sharing this reader are served by one read.
    waiting: usize,
}

/// Completes once the caller waiting on `reply` has gone (polled: `closed()` needs the
/// sender mutably).
async fn closed<T>(reply: &oneshot::Sender<T>) {
    while !reply.is_closed() {
        tokio::time::sleep(CALLER_GONE_POLL).await;
    }
}

impl Reader {
    /// A reader of `source` for the consumer `name`.
    pub(super) fn new(broker: ShardBroker, source: Source, name: String) -> Reader {
        let fast = fast_read(&broker, &source);
        Reader {
            broker,
            source,
            name,
            conn: None,
            fast,
            fast_count: 1,
            fast_reads: 0,
            fast_refused_until: Instant::now(),
            next_claim: Instant::now(),
            claim_streak: false,
            next_refresh: Instant::now(),
            taken: Held::default(),
            waiting: 1,
        }
    }

    /// Serves the consumers' requests until every consumer is gone, then gives back what
    /// it holds.
    pub(super) async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        while let Some(request) = requests.recv().await {
            self.waiting = 1 + requests.len();
            match request {
                Request::Next(reply) => {
                    let Some(result) = self.next(&reply).await else {
                        continue;
                    };
                    if let Err(Ok(delivery)) = reply.send(result) {
                        self.give_back(delivery).await;
                    }
                }
                Request::TryNext(reply) => {
                    let result = match self.taken.pop_due(&self.broker.inner.clock) {
                        Some(delivery) => Ok(Some(delivery)),
                        None => self.try_take().await,
                    };
                    if let Err(Ok(Some(delivery))) = reply.send(result) {
                        self.give_back(delivery).await;
                    }
                }
                Request::NextRow(most, reply) => {
                    let Some(result) = self.next(&reply).await else {
                        continue;
                    };
                    let result = result.map(|first| self.row(first, most));
                    if let Err(Ok(row)) = reply.send(result) {
                        for delivery in row {
                            self.give_back(delivery).await;
                        }
                    }
                }
                Request::Close(reply) => {
                    self.give_back_taken().await;
                    let _ = reply.send(());
                }
            }
        }
        // The consumer is gone: what it took and never handed out goes back at once
        // (rather than waiting out `claim_idle` for another consumer to claim it).
        self.give_back_taken().await;
    }

    /// `first` and the due deliveries held after it, `most` in all at most, and no more
    /// than this consumer's share of what is held among the consumers waiting.
    fn row(&mut self, first: Delivery, most: usize) -> Vec<Delivery> {
        let share = 1 + self.taken.len() / self.waiting.max(1);
        let mut row = vec![first];
        while row.len() < most.min(share) {
            match self.taken.pop_due(&self.broker.inner.clock) {
                Some(delivery) => row.push(delivery),
                None => break,
            }
        }
        row
    }

    /// One look for a polling worker: what a take finds, if it is due (an item another
    /// process's mover moved ahead of its due time is held for a later look).
    async fn try_take(&mut self) -> Result<Option<Delivery>, BrokerError> {
        if self.broker.inner.circuit.is_open() {
            return Ok(self.taken.pop_due(&self.broker.inner.clock));
        }
        let heals = self.broker.heals();
        let taken = self.take().await;
        match self.broker.track("consumer", taken) {
            Ok(Taken::Entry(delivery)) => {
                self.taken.push(delivery, &self.broker.inner.clock);
                Ok(self.taken.pop_due(&self.broker.inner.clock))
            }
            Ok(Taken::Wait { .. }) => Ok(self.taken.pop_due(&self.broker.inner.clock)),
            Ok(Taken::Gone) => match self.broker.state_check(heals).await {
                // Redis lost its state and it was declared again: the next poll takes.
                Ok(true) => Ok(None),
                Ok(false) => Err(self.gone()),
                Err(e) => {
                    debug!(error = %outage::describe(&e), "take failed; the next poll retries");
                    Ok(None)
                }
            },
            Err(e) => {
                debug!(error = %outage::describe(&e), "take failed; the next poll retries");
                Ok(None)
            }
        }
    }

    /// Gives back every entry taken and not handed out, `GIVE_BACK_AT_ONCE` on the wire at
    /// a time (a reader may hold a whole burst taken ahead).
    async fn give_back_taken(&mut self) {
        let mut all = Vec::with_capacity(self.taken.len());
        while let Some(delivery) = self.taken.pop_any() {
            all.push(delivery);
        }
        futures_util::stream::iter(all)
            .for_each_concurrent(GIVE_BACK_AT_ONCE, |delivery| self.give_back(delivery))
            .await;
    }

    fn gone(&self) -> BrokerError {
        match &self.source {
            Source::Group(g) => BrokerError::UnknownGroup {
                group: g.to_string(),
            },
            Source::Queue(q) => BrokerError::UnknownQueue {
                queue: q.to_string(),
            },
        }
    }

    async fn give_back(&self, delivery: Delivery) {
        if let Err(e) = crate::broker::Broker::nack(&self.broker, delivery).await {
            // Still pending with this consumer: claimed by another after `claim_idle`.
            warn!(error = %e, "could not give back an unclaimed delivery");
        }
    }

    /// The next delivery; `None` when the caller stopped waiting.
    async fn next<T>(
        &mut self,
        reply: &oneshot::Sender<T>,
    ) -> Option<Result<Delivery, BrokerError>> {
        let mut backoff = outage::BACKOFF_START;
        // The take script just found nothing: block in the fast read rather than run it again.
        let mut script_found_nothing = false;
        loop {
            if reply.is_closed() {
                return None;
            }
            if let Some(delivery) = self.taken.pop_due(&self.broker.inner.clock) {
                return Some(Ok(delivery));
            }
            // An item taken ahead is held: wait for something new no longer than until it
            // falls due (something due sooner may come meanwhile).
            let held = self.taken.next_in(&self.broker.inner.clock);
            if let Some(left) = held {
                // Enough held already (an item due sooner than those may wait behind them;
                // see "Taking ahead"): no more reads until the earliest falls due.
                let most = self.broker.inner.options.hold_ahead.max(self.waiting);
                if self.taken.len() >= most {
                    tokio::select! {
                        () = tokio::time::sleep(left) => {}
                        () = closed(reply) => return None,
                    }
                    continue;
                }
            }
            if self.broker.inner.circuit.is_open() {
                // Redis is unreachable: nothing is sent until the probe gets an answer.
                self.pause(&unreachable(), &mut backoff, reply).await;
                continue;
            }
            // Heals so far: a group or queue found gone after one more was lost and
            // declared again, not removed.
            let heals = self.broker.heals();
            if self.fast_turn(script_found_nothing) {
                script_found_nothing = false;
                let read = self.read_fast(reply, held).await;
                match self.broker.track("consumer", read) {
                    Ok(true) => {
                        backoff = outage::BACKOFF_START;
                        continue;
                    }
                    // Cut short as a held item fell due.
                    Ok(false) if held.is_some() => continue,
                    // Nothing within the block time, or the group's streams changed: the
                    // take script looks at everything.
                    Ok(false) => {}
                    Err(e) => {
                        self.conn = None;
                        self.pause(&e, &mut backoff, reply).await;
                        continue;
                    }
                }
            }
            let taken = self.take().await;
            match self.broker.track("consumer", taken) {
                Ok(Taken::Entry(delivery)) => {
                    self.taken.push(delivery, &self.broker.inner.clock);
                    continue;
                }
                Ok(Taken::Gone) => match self.broker.state_check(heals).await {
                    // Redis lost its state, and it was declared again: take again at once.
                    Ok(true) => continue,
                    Ok(false) => return Some(Err(self.gone())),
                    Err(e) => self.pause(&e, &mut backoff, reply).await,
                },
                Ok(Taken::Wait { next_due, keys }) => {
                    if self.fast_turn(true) {
                        // The fast read blocks instead (it wakes one consumer per entry).
                        script_found_nothing = next_due != Some(Duration::ZERO);
                        continue;
                    }
                    let block = self.broker.inner.options.block;
                    let wait = next_due.map_or(block, |d| d.min(block));
                    let wait = held.map_or(wait, |h| h.min(wait));
                    if wait.is_zero() {
                        continue;
                    }
                    let waited = self.wait(&keys, wait, reply).await;
                    match self.broker.track("consumer", waited) {
                        Ok(()) => backoff = outage::BACKOFF_START,
                        Err(e) => {
                            self.conn = None;
                            self.pause(&e, &mut backoff, reply).await;
                        }
                    }
                }
                Err(e) => self.pause(&e, &mut backoff, reply).await,
            }
        }
    }

    /// Backs off after a failed command (see the module docs).
    async fn pause<T>(
        &self,
        error: &BrokerError,
        backoff: &mut Duration,
        reply: &oneshot::Sender<T>,
    ) {
        let pause = outage::jittered(backoff);
        debug!(error = %outage::describe(error), retry_in_ms = pause.as_millis() as u64, "consumer retry");
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = closed(reply) => {}
        }
    }

    /// Blocks until one of `keys` gets an entry after its id, `wait` passes (timed here, see
    /// `blocking`), or the caller stops waiting (XREAD without a group claims nothing, so it
    /// may be cut short at any time).
    async fn wait<T>(
        &mut self,
        keys: &[(String, String)],
        wait: Duration,
        reply: &oneshot::Sender<T>,
    ) -> Result<(), BrokerError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(u64::try_from(wait.as_millis()).unwrap_or(1000).max(1))
            .arg("STREAMS");
        for (key, _) in keys {
            cmd.arg(key);
        }
        for (_, id) in keys {
            cmd.arg(id);
        }
        // A wait shorter than the block time ends at a due time: timed here.
        let due = (wait < self.broker.inner.options.block).then_some(wait);
        let cut = async {
            tokio::select! {
                () = closed(reply) => {}
                () = blocking::after(due) => {}
            }
        };
        self.blocking_read(&cmd, cut).await?.map_err(unavailable)?;
        Ok(())
    }

    /// Runs a blocking read on this reader's own connection (opened on first use), cut short
    /// when `cut` completes. Inside: Redis's answer (`None` when the read was cut short and
    /// the connection had to go), or the error Redis answered; outside: the connection
    /// could not be opened. A broken connection is dropped, to be opened by the next read.
    async fn blocking_read(
        &mut self,
        cmd: &redis::Cmd,
        cut: impl std::future::Future<Output = ()>,
    ) -> Result<redis::RedisResult<Option<Value>>, BrokerError> {
        if self.conn.is_none() {
            self.conn = Some(BlockingConn::open(&self.broker).await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Ok(None));
        };
        Ok(match conn.read(self.broker.conn(), cmd, cut).await {
            Ok(Ended::Reply(value)) => Ok(Some(value)),
            Ok(Ended::Abandoned) => {
                self.conn = None;
                Ok(None)
            }
            Err(e) => {
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                    self.conn = None;
                }
                Err(e)
            }
        })
    }

    /// Whether the next take is a fast read: the group allows it, no claim is due, and the
    /// take script ran recently enough (or has just found nothing).
    fn fast_turn(&self, script_found_nothing: bool) -> bool {
        let now = Instant::now();
        self.fast.is_some()
            && now >= self.fast_refused_until
            && !self.claim_streak
            && now < self.next_claim
            && (script_found_nothing || self.fast_reads < SCRIPT_EVERY)
    }

    /// How many entries a fast read takes: one for each worker waiting (or the fair share
    /// the take script worked out), and up to `READ_AHEAD` while what is held is not due
    /// yet, within `hold_ahead`.
    fn read_count(&self, holding_ahead: bool) -> usize {
        let count = self.fast_count.max(self.waiting);
        if !holding_ahead {
            return count;
        }
        count.max(READ_AHEAD.min(self.room_ahead()))
    }

    /// How many more items not yet due this reader may hold (see `hold_ahead`).
    fn room_ahead(&self) -> usize {
        self.broker
            .inner
            .options
            .hold_ahead
            .saturating_sub(self.taken.len())
    }

    /// One blocking `XREADGROUP` over the source's two streams (see `fast_read`); what it
    /// takes goes to `taken`, the first stream's entries (given back or inherited) first. `Ok(false)`: nothing came
    /// within the block time, or Redis refused the read (the group was removed, the stream
    /// deleted) and the take script should look.
    async fn read_fast<T>(
        &mut self,
        reply: &oneshot::Sender<T>,
        held: Option<Duration>,
    ) -> Result<bool, BrokerError> {
        let Some(fast) = &self.fast else {
            return Ok(false);
        };
        let (streams, xgroup) = (fast.streams.clone(), fast.group.clone());
        let source = match &self.source {
            Source::Group(name) | Source::Queue(name) => name.clone(),
        };
        self.fast_reads += 1;
        let block = self.broker.inner.options.block.as_millis().max(1);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&*xgroup)
            .arg(&self.name)
            .arg("COUNT")
            .arg(self.read_count(held.is_some()))
            .arg("BLOCK")
            .arg(u64::try_from(block).unwrap_or(1000))
            .arg("STREAMS")
            .arg(&streams[0].0)
            .arg(&streams[1].0)
            .arg(">")
            .arg(">");
        // Cut short when the caller stops waiting; an entry Redis handed over meanwhile
        // still arrives in the reply, and goes to `taken` to be given back. (A read that
        // could not be ended leaves what it took pending with this consumer: claimed after
        // `claim_idle`.)
        // Also cut short when a held item falls due (see `next`).
        let cut = async {
            tokio::select! {
                () = closed(reply) => {}
                () = blocking::after(held) => {}
            }
        };
        let done = match self.blocking_read(&cmd, cut).await? {
            Ok(None) => return Ok(false),
            Ok(Some(value)) => Ok(value),
            Err(e) => Err(e),
        };
        let reply = match done {
            Ok(reply) => reply,
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                return Err(unavailable(e));
            }
            Err(e) => {
                debug!(error = %e, "fast read refused; the take script reads for a while");
                self.fast_refused_until = Instant::now() + REFUSED_PAUSE;
                return Ok(false);
            }
        };
        let mut got = 0;
        // Nil: nothing came within the block time, or the read was cut short.
        for stream in items_or_nil(&reply)? {
            let [key, entries] = items(stream)? else {
                return Err(unexpected("a stream and its entries", stream));
            };
            let key = text(key)?;
            let Some((_, kind)) = streams.iter().find(|(k, _)| *k == key) else {
                return Err(unexpected("one of the streams read", &key));
            };
            for entry in items(entries)? {
                let [id, fields] = items(entry)? else {
                    return Err(unexpected("an entry's id and fields", entry));
                };
                got += 1;
                let id = text(id)?;
                if let Some(delivery) = self.delivery(kind, &key, id, fields, 1, source.clone()) {
                    self.taken.push(delivery, &self.broker.inner.clock);
                }
            }
        }
        if got < self.fast_count {
            self.fast_count = 1;
        }
        Ok(got > 0)
    }

    /// Runs the take script; entries it takes in a batch go to `taken`.
    async fn take(&mut self) -> Result<Taken, BrokerError> {
        self.fast_reads = 0;
        let now = Instant::now();
        let options = &self.broker.inner.options;
        let claim = self.claim_streak || now >= self.next_claim;
        if claim && !self.claim_streak {
            let every = (options.claim_idle / 4).clamp(CLAIM_EVERY_MIN, CLAIM_EVERY_MAX);
            self.next_claim = now + every;
        }
        let idle = if claim {
            options.claim_idle.as_millis().to_string()
        } else {
            String::new()
        };
        let (reply, name): (Value, Arc<str>) = match &self.source {
            Source::Group(group) => {
                if now >= self.next_refresh {
                    self.next_refresh = now + REFRESH_EVERY;
                    self.broker.refresh_group(group).await?;
                }
                let reply = scripts::TAKE
                    .prepare_invoke()
                    .arg(self.broker.inner.keys.prefix())
                    .arg(&**group)
                    .arg(&self.name)
                    .arg(&idle)
                    .arg(options.prefetch.max(1))
                    .invoke_async(&mut self.broker.conn())
                    .await
                    .map_err(unavailable)?;
                (reply, group.clone())
            }
            Source::Queue(queue) => {
                // Within `hold_ahead` (what is held is not due yet, or it would have been
                // handed out before a take).
                let room = self.room_ahead();
                let reply = scripts::TAKE_QUEUE
                    .prepare_invoke()
                    .arg(self.broker.inner.keys.prefix())
                    .arg(&**queue)
                    .arg(&self.name)
                    .arg(&idle)
                    .arg(options.mover_batch)
                    .arg(options.prefetch.min(room).max(1))
                    .arg(self.broker.queue_ahead(queue))
                    .invoke_async(&mut self.broker.conn())
                    .await
                    .map_err(unavailable)?;
                (reply, queue.clone())
            }
        };
        self.taken_from(&reply, claim, name)
    }

    /// What the take script's `reply` hands out (`claim`: whether it was asked to claim;
    /// `name`: the group or queue); entries it took in a batch go to `taken`.
    fn taken_from(
        &mut self,
        reply: &Value,
        claim: bool,
        name: Arc<str>,
    ) -> Result<Taken, BrokerError> {
        let reply = items(reply)?;
        match head(reply)?.as_str() {
            "gone" => Ok(Taken::Gone),
            "entry" => {
                self.fast_count = 1;
                let kind = text(nth(reply, 1)?)?;
                let id = text(nth(reply, 2)?)?;
                let Some(fields) = reply.get(3) else {
                    // A claimed entry deleted meanwhile: Redis before 7.0 claims it with no
                    // fields (a Lua nil, which ends the reply there). Nothing to hand out.
                    self.claim_streak = false;
                    return Ok(Taken::again());
                };
                // Keep claiming at once only while claims find entries (a claimed entry has
                // been delivered before); a fresh entry ends the streak.
                let count = int(nth(reply, 4)?)?;
                self.claim_streak = claim && count > 1;
                let key = text(nth(reply, 5)?)?;
                match self.delivery(&kind, &key, id, fields, count, name) {
                    Some(delivery) => Ok(Taken::Entry(delivery)),
                    // Unreadable: dead-lettered; look again at once.
                    None => Ok(Taken::again()),
                }
            }
            "entries" => {
                self.claim_streak = false;
                let kind = text(nth(reply, 1)?)?;
                let key = text(nth(reply, 2)?)?;
                let pairs = &reply[3..];
                if pairs.len() % 2 != 0 {
                    return Err(unexpected("entries' ids and fields", &reply));
                }
                for pair in pairs.chunks_exact(2) {
                    let id = text(&pair[0])?;
                    if let Some(delivery) =
                        self.delivery(&kind, &key, id, &pair[1], 1, name.clone())
                    {
                        self.taken.push(delivery, &self.broker.inner.clock);
                    }
                }
                // The fair share just worked out: what fast reads take until the next look.
                self.fast_count = (pairs.len() / 2).max(1);
                // Handed out from `taken`, earliest due first.
                Ok(Taken::again())
            }
            "wait" => {
                self.claim_streak = false;
                let next_due = match text(nth(reply, 1)?)?.as_str() {
                    // A group's take, or a queue with nothing scheduled: no due time.
                    "" => None,
                    ms => Some(Duration::from_millis(ms.parse().map_err(|_| {
                        unexpected("the ms until the next due item", &reply)
                    })?)),
                };
                let waits = items(nth(reply, 2)?)?;
                if waits.len() % 2 != 0 {
                    return Err(unexpected("the streams to wait on and their ids", &reply));
                }
                let keys = waits
                    .chunks_exact(2)
                    .map(|pair| Ok((text(&pair[0])?, text(&pair[1])?)))
                    .collect::<Result<Vec<_>, BrokerError>>()?;
                Ok(Taken::Wait { next_due, keys })
            }
            _ => Err(unexpected("the outcome of a take", &reply)),
        }
    }

    /// Builds a delivery from an entry: its kind, the stream it was read from, its id,
    /// fields and delivery count. An entry that cannot be handed out (see `stored`) is
    /// dead-lettered instead, and `None` returned.
    fn delivery(
        &self,
        kind: &str,
        key: &str,
        id: String,
        fields: &Value,
        count: i64,
        group: Arc<str>,
    ) -> Option<Delivery> {
        let count = count.max(1);
        // The event's JSON is parsed where it lies in the reply, without a copy.
        let mut json: Option<Result<std::borrow::Cow<'_, [u8]>, String>> = None;
        let mut earlier = 0i64;
        let mut origin = (String::new(), String::new());
        let mut due = String::new();
        let from_queue = matches!(self.source, Source::Queue(_));
        // Fields that are not a list of names and values were not written by edaflow: read
        // as no fields, the entry has no event and is dead-lettered below, its fields shown.
        let pairs = match fields {
            Value::Array(pairs) => pairs.as_slice(),
            _ => &[],
        };
        for pair in pairs.chunks(2) {
            let (Some(field), Some(value)) = (pair.first(), pair.get(1)) else {
                continue;
            };
            // A name that is not text names no field edaflow reads.
            let name: &[u8] = match field {
                Value::BulkString(bytes) => bytes,
                Value::SimpleString(name) => name.as_bytes(),
                _ => &[],
            };
            match name {
                b"e" => {
                    json = Some(match value {
                        Value::BulkString(bytes) => {
                            Ok(std::borrow::Cow::Borrowed(bytes.as_slice()))
                        }
                        Value::SimpleString(s) => Ok(std::borrow::Cow::Borrowed(s.as_bytes())),
                        other => Err(format!(
                            "its `e` field is not text: {}",
                            stored::excerpt(format!("{other:?}").as_bytes(), 256)
                        )),
                    })
                }
                // The times it was given back before, written by edaflow's nack; a count
                // that is not a number (written by something else) counts as none, and the
                // entry is still handed out.
                b"r" => earlier = int(value).map_or(0, |n| n.max(0)),
                // Where an inherited entry came from: a stream key and an id, never a
                // line break (the tag is made of lines); a value holding one is not kept.
                b"os" => origin.0 = one_line(value),
                b"oi" => origin.1 = one_line(value),
                // Only a queue's items are held for a due time.
                b"d" if from_queue => due = self.due_time(value),
                _ => {}
            }
        }
        let stream = if kind == "t" { key } else { "" };
        let tag = format!("{kind}\n{id}\n{}\n{}\n{due}\n{stream}", origin.0, origin.1);
        let read = match json {
            None => Err("it has no `e` field (the event)".to_owned()),
            Some(Ok(json)) => stored::read(&json),
            Some(Err(reason)) => Err(reason),
        };
        let read = read.and_then(|event| {
            // A topic's entry must hold an event of that topic: it is acked on its stream.
            match key.strip_prefix(self.broker.inner.keys.topic_prefix()) {
                Some(topic) if kind == "t" && topic != event.topic => Err(format!(
                    "it holds an event of topic `{}` in the stream of `{topic}`",
                    stored::excerpt(event.topic.as_bytes(), 256)
                )),
                _ => Ok(event),
            }
        });
        match read {
            Ok(event) => Some(Delivery {
                event: Arc::new(event),
                group,
                from_queue,
                redeliveries: u32::try_from(earlier.saturating_add(count - 1)).unwrap_or(u32::MAX),
                tag,
            }),
            Err(reason) => {
                self.dead_letter(kind, key, &id, fields, &reason, group, tag);
                None
            }
        }
    }

    /// The due time field `d` of a queue item as the tag carries it: empty (due now) when it
    /// is not a time, or lies further ahead than any item is moved ahead of its due time
    /// (`claim_idle`, past which it would be claimed anyway).
    fn due_time(&self, value: &Value) -> String {
        let Some(due) = text(value).ok().and_then(|t| t.parse::<i64>().ok()) else {
            return String::new();
        };
        let most =
            i64::try_from(self.broker.inner.options.claim_idle.as_millis()).unwrap_or(i64::MAX);
        if due > self.broker.inner.clock.now_ms().saturating_add(most) {
            debug!(
                due,
                "a queue item due further ahead than it can be taken; handed out now"
            );
            return String::new();
        }
        due.to_string()
    }

    /// Dead-letters an entry that cannot be handed out (see `stored`): a dead letter on
    /// `dead.{group}` (or `dead.{queue}`) carrying the entry's fields as text and why, kept
    /// in the dead-letter store, committed with the entry's ack. The commit is retried while
    /// Redis is unreachable or out of memory; until it lands the entry stays pending.
    #[allow(clippy::too_many_arguments)]
    fn dead_letter(
        &self,
        kind: &str,
        key: &str,
        id: &str,
        fields: &Value,
        reason: &str,
        group: Arc<str>,
        tag: String,
    ) {
        let (name, is_queue) = match &self.source {
            Source::Group(name) => (name.clone(), false),
            Source::Queue(name) => (name.clone(), true),
        };
        error!(entry = %id, stream = %key, %reason, "could not read a stored entry; it is dead-lettered");
        let topic = match kind {
            "t" => key
                .strip_prefix(self.broker.inner.keys.topic_prefix())
                .map(str::to_owned),
            _ => None,
        };
        let dead = stored::dead_letter(&name, is_queue, id, topic.as_deref(), fields, reason);
        let stub = Delivery {
            event: Arc::new(Event::new("", "", serde_json::Value::Null)),
            group,
            from_queue: is_queue,
            redeliveries: 0,
            tag,
        };
        let broker = self.broker.clone();
        let Some(at) = broker.position(&stub) else {
            return;
        };
        let effects = Effects {
            dead_letter: Some(dead),
            ..Effects::default()
        };
        tokio::spawn(async move {
            let mut backoff = outage::BACKOFF_START;
            loop {
                match broker
                    .run_commit(at.ack(), &effects, &super::commit::Outbound::default())
                    .await
                {
                    Err(e) if e.is_transient() => {
                        debug!(error = %outage::describe(&e), "dead letter of an unreadable entry not committed yet; retrying");
                        tokio::time::sleep(outage::jittered(&mut backoff)).await;
                    }
                    Err(e) => {
                        warn!(error = %e, "could not dead-letter an unreadable entry; it stays pending and is claimed later");
                        return;
                    }
                    Ok(()) => return,
                }
            }
        });
    }
}

/// A field's text, or nothing when it is not text or holds a line break (neither was
/// written by edaflow, and the tag is made of lines).
fn one_line(value: &Value) -> String {
    match text(value) {
        Ok(text) if !text.contains('\n') => text,
        _ => String::new(),
    }
}

/// The error a consumer pauses on while the circuit is open.
fn unreachable() -> BrokerError {
    failure::unreachable("the circuit is open")
}
