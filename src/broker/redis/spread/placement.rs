//! Where things live when a namespace is spread over shards: each shard's namespace (a hash
//! tag chosen so the shards' slots fall in different parts of the cluster's slot range),
//! and which shard holds a topic, a queue, a store or a journey.
//!
//! Everything here is a pure function of names and the shard count, so every process of a
//! flow set agrees on it without asking Redis.

/// What decides the shard an event is published on, in a namespace of several shards. A
/// topic placed with `[topics.NAME] shard = K` stays on shard K either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpreadBy {
    /// Each topic lives on one shard, by the hash of its name: a topic's events keep their
    /// order, and a handler's emit to a topic on another shard goes through the outbox.
    #[default]
    Topic,
    /// Each journey lives on one shard, by the hash of its correlation id: every topic has
    /// a stream on every shard, a handler's emits land on its own shard with its
    /// acknowledgement (no outbox), and the shards share the load evenly. Events of one
    /// journey keep their order; events of different journeys on one topic do not.
    Journey,
}

/// Slots in a Redis Cluster.
const SLOTS: u32 = 16384;

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The cluster slot of a hash tag (the text between the braces of a key).
pub(crate) fn slot(tag: &str) -> u16 {
    // Below 16384, so it fits.
    (u32::from(crc16(tag.as_bytes())) % SLOTS) as u16
}

/// The namespace of shard `k` of `n` for `namespace`: the namespace itself for a single
/// shard; otherwise `{namespace}.{k}` with the first suffix (`.1`, `.2`…) that puts its
/// slot in the `k`-th of `n` equal parts of the slot range. A cluster made with `redis-cli
/// --cluster create` gives each master one such part, so the shards land on different
/// masters; on any other layout they still spread by hash.
pub(crate) fn shard_namespace(namespace: &str, k: usize, n: usize) -> String {
    if n <= 1 {
        return namespace.to_owned();
    }
    let part = |tag: &str| usize::from(slot(tag)) * n / SLOTS as usize;
    let base = format!("{namespace}.{k}");
    if part(&base) == k {
        return base;
    }
    (1u32..)
        .map(|salt| format!("{base}.{salt}"))
        .find(|tag| part(tag) == k)
        .unwrap_or(base)
}

/// The shard of a name (a topic, queue, store or correlation id) among `n`.
pub(crate) fn shard_of(name: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    usize::from(crc16(name.as_bytes())) % n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_ones_redis_cluster_documents() {
        // From the Redis Cluster specification's examples and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("user1000"), 3443);
    }

    #[test]
    fn each_shard_falls_in_its_own_part_of_the_slot_range() {
        for n in [2, 3, 4, 6] {
            for k in 0..n {
                let ns = shard_namespace("orders", k, n);
                assert!(ns.starts_with(&format!("orders.{k}")), "{ns}");
                assert_eq!(usize::from(slot(&ns)) * n / 16384, k, "{ns} of {n}");
            }
        }
        assert_eq!(shard_namespace("orders", 0, 1), "orders");
    }

    #[test]
    fn names_spread_over_every_shard() {
        let mut seen = [0usize; 3];
        for i in 0..300 {
            seen[shard_of(&format!("topic{i}"), 3)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 60), "{seen:?}");
        assert_eq!(shard_of("anything", 1), 0);
    }
}
