//! The names of the Redis broker's keys and channels: the one place they are spelled out
//! on the Rust side (the Lua scripts build theirs from the same prefix, see `scripts`).
//!
//! # Key layout (`P` = `edaflow:{NS}:`, braces included)
//!
//! The namespace `NS` sits between literal braces: it is the hash tag of every key, so on a
//! Redis Cluster all the keys of a namespace share one slot, hence one master, and every
//! script stays atomic there (see `cluster`). `{topic}`, `{group}`… in the table are
//! placeholders, without braces in the key: `edaflow:{orders}:t:orderCreated`.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P topics` | set | every topic ever published (so groups can find their streams) |
//! | `P t:{topic}` | stream | the topic's events (field `e`: CloudEvents JSON) |
//! | `P groups` | hash | group -> `{"patterns":[…],"since":ms}` |
//! | `P gs:{group}` | hash | topic stream -> the id the group's XGROUP started at |
//! | `P g:{group}:inbox` | stream | nacked and inherited entries of the group, read first |
//! | `P g:{group}:wake` | stream | a one-entry stream written to wake blocked consumers |
//! | `P queues` | hash | queue -> capacity (`""`: unbounded) |
//! | `P q:{queue}:sched` | zset | items by due unix ms (member `seq\njson`) |
//! | `P q:{queue}:ready` / `:back` | stream | due items (or due within `take_ahead`: field `d`) / given-back items, group `workers` |
//! | `P q:{queue}:wake` | stream | written to wake the queue's mover and blocked workers |
//! | `P deferred` | zset | `publish_later` events by due unix ms (member `seq\ntopic\njson`) |
//! | `P deferred:wake` | stream | written to wake the deferred mover |
//! | `P dead` | stream | the dead-letter store |
//! | `P s:{store}` | hash | a state store: key -> JSON text |
//! | `P s:{store}:keys` | zset | the store's keys at score 0, for ordered prefix scans |
//! | channel `P reply:{instance}` | pub/sub | replies to the queries this process waits on |
//! | `P c:{chain}:…` | hashes, zset, lists | tracked chain instances and counters (see `chains`) |
//! | `P h:{correlation}`, `P h:index` | list, zset | the journey history (see `history`) |
//! | `P seq` | counter | orders events across streams and equal due times |
//! | `P epoch` | hash | the epoch marker: `token`, `n` (see `epoch`) |
//! | `P processes` | hash | process id -> `{seen ms}\n{ProcessInfo JSON}`: the process registry (see `processes`) |
//! | `P outbox` | stream | a spread namespace's effects bound for other shards (field `s`: shard, `b`: parcel; see `spread`) |
//! | `P fwd:lease` | string | the process forwarding this shard's outbox (expires) |
//! | `P fwd:{shard}` | string | the last outbox entry of shard `{shard}` that landed here |
//! | channel `P tap` | pub/sub | every accepted event and queue item, while a tap listens |
//! | channel `{topic}` | pub/sub | raw payloads of a `pubsub` topic (no prefix; see `wire`) |
//! | `{list}` | list | raw payloads of a queue declared `list = "…"` (no prefix; see `wire`) |
//!
//! This module only names keys; it must not talk to Redis.

/// The consumer group every queue's ready and back streams are read with.
pub(super) const QUEUE_GROUP: &str = "workers";

/// The key names of one namespace.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    /// `P`, what every key of the namespace starts with.
    prefix: String,
    /// `P t:`, what every topic stream's key starts with.
    topic_prefix: String,
}

impl Keys {
    /// The keys under `prefix` (`edaflow:{NS}:`, see `cluster::prefix`).
    pub(super) fn new(prefix: String) -> Keys {
        Keys {
            topic_prefix: format!("{prefix}t:"),
            prefix,
        }
    }

    /// `P`: the key prefix, what the scripts get as `ARGV[1]`.
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn named(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// `P topics`: every topic ever published.
    pub(super) fn topics(&self) -> String {
        self.named("topics")
    }

    /// `P groups`: the group records.
    pub(super) fn groups(&self) -> String {
        self.named("groups")
    }

    /// `P queues`: queue -> capacity.
    pub(super) fn queues(&self) -> String {
        self.named("queues")
    }

    /// `P deferred`: the events published for later.
    pub(super) fn deferred(&self) -> String {
        self.named("deferred")
    }

    /// `P deferred:wake`: wakes the deferred mover.
    pub(super) fn deferred_wake(&self) -> String {
        self.named("deferred:wake")
    }

    /// `P dead`: the dead-letter store.
    pub(super) fn dead(&self) -> String {
        self.named("dead")
    }

    /// `P seq`: the sequence counter.
    pub(super) fn seq(&self) -> String {
        self.named("seq")
    }

    /// `P epoch`: the epoch marker.
    pub(super) fn epoch(&self) -> String {
        self.named("epoch")
    }

    /// `P processes`: the process registry.
    pub(super) fn processes(&self) -> String {
        self.named("processes")
    }

    /// Channel `P tap`: what taps listen to.
    pub(super) fn tap(&self) -> String {
        self.named("tap")
    }

    /// `P t:{topic}`: a topic's stream.
    pub(super) fn topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_prefix)
    }

    /// `P t:`, what every topic stream's key starts with.
    pub(super) fn topic_prefix(&self) -> &str {
        &self.topic_prefix
    }

    /// `P gs:{group}`: the topic streams a group's XGROUP is on.
    pub(super) fn group_streams(&self, group: &str) -> String {
        format!("{}gs:{group}", self.prefix)
    }

    /// `P g:{group}:inbox`: a group's nacked and inherited entries.
    pub(super) fn inbox(&self, group: &str) -> String {
        format!("{}g:{group}:inbox", self.prefix)
    }

    /// `P g:{group}:wake`: wakes a group's blocked consumers.
    pub(super) fn group_wake(&self, group: &str) -> String {
        format!("{}g:{group}:wake", self.prefix)
    }

    /// `P q:{queue}:{part}`, `part` one of `sched`, `ready`, `back`, `wake`.
    pub(super) fn queue(&self, queue: &str, part: &str) -> String {
        format!("{}q:{queue}:{part}", self.prefix)
    }

    /// `P s:{store}`: a state store's hash.
    pub(super) fn store(&self, store: &str) -> String {
        format!("{}s:{store}", self.prefix)
    }

    /// `P s:{store}:keys`: a state store's ordered keys.
    pub(super) fn store_keys(&self, store: &str) -> String {
        format!("{}s:{store}:keys", self.prefix)
    }

    /// `P c:{chain}`: what every key of a tracked chain starts with.
    pub(super) fn chain(&self, chain: &str) -> String {
        format!("{}c:{chain}", self.prefix)
    }

    /// `P h:{correlation}`: one journey's history.
    pub(super) fn journey(&self, correlation: &str) -> String {
        format!("{}h:{correlation}", self.prefix)
    }

    /// `P outbox`: effects of this shard's commits bound for other shards (see `spread`).
    pub(super) fn outbox(&self) -> String {
        self.named("outbox")
    }

    /// `P fwd:lease`: which process forwards this shard's outbox now.
    pub(super) fn forward_lease(&self) -> String {
        self.named("fwd:lease")
    }

    /// `P fwd:{shard}`: the last entry of shard `source`'s outbox that landed here.
    pub(super) fn watermark(&self, source: usize) -> String {
        format!("{}fwd:{source}", self.prefix)
    }

    /// Channel `P reply:{instance}`: replies to one process's queries.
    pub(super) fn reply_channel(&self, instance: &str) -> String {
        format!("{}reply:{instance}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_carries_the_namespace_hash_tag() {
        let keys = Keys::new("edaflow:{orders}:".to_owned());
        for key in [
            keys.topics(),
            keys.groups(),
            keys.queues(),
            keys.deferred(),
            keys.deferred_wake(),
            keys.dead(),
            keys.seq(),
            keys.epoch(),
            keys.processes(),
            keys.tap(),
            keys.topic("orderCreated"),
            keys.group_streams("billing"),
            keys.inbox("billing"),
            keys.group_wake("billing"),
            keys.queue("mail", "ready"),
            keys.store("carts"),
            keys.store_keys("carts"),
            keys.chain("checkout"),
            keys.journey("c-1"),
            keys.reply_channel("42-ab"),
            keys.outbox(),
            keys.forward_lease(),
            keys.watermark(2),
        ] {
            assert!(key.starts_with("edaflow:{orders}:"), "{key}");
        }
        assert_eq!(
            keys.topic("orderCreated"),
            "edaflow:{orders}:t:orderCreated"
        );
        assert_eq!(keys.topic_prefix(), "edaflow:{orders}:t:");
        assert_eq!(keys.inbox("billing"), "edaflow:{orders}:g:billing:inbox");
        assert_eq!(keys.queue("mail", "back"), "edaflow:{orders}:q:mail:back");
        assert_eq!(keys.store_keys("carts"), "edaflow:{orders}:s:carts:keys");
    }
}
