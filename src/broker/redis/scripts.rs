//! The Lua scripts of the Redis broker. Each one is a single atomic step on the server:
//! nothing else runs between its reads and its writes, which is what makes a commit land
//! whole, the queue mover safe to run from any number of processes, and a take hand each
//! entry to exactly one consumer.
//!
//! Every script gets the key prefix (`edaflow:{ns}:`) as `ARGV[1]` and builds its key
//! names from it (see the key layout in the parent module). Every key carries the
//! namespace's hash tag, so on a Redis Cluster all of them live in the slot of the master
//! the broker talks to (see `cluster`).
//!
//! Replies are arrays whose first element says what happened (`ok`, `full`, `gone`,
//! `entry`, `wait`, ...), so no error string has to be parsed.
//!
//! The helpers the scripts share (`HELPERS`) are put before each script's body as it
//! needs them: only those it names, and those they name.

use std::sync::LazyLock;

use redis::Script;

/// The helpers the scripts share, in an order where each comes after those it calls. A
/// script gets only those its body names, and those they name in turn (see `script`):
/// Lua creates every `local function` of a script on each run, so a helper a script never
/// calls would still cost it a closure per run.
const HELPERS: &[Helper] = &[
    Helper {
        defines: &["read_clock"],
        text: r#"
-- The server clock, read once per script run (a run is one atomic instant anyway).
local clock_s, clock_us = nil, nil
local function read_clock()
  if not clock_s then
    local t = redis.call('TIME')
    clock_s, clock_us = tonumber(t[1]), tonumber(t[2])
  end
end
"#,
    },
    Helper {
        defines: &["now_ms"],
        text: r#"
local function now_ms()
  read_clock()
  return clock_s * 1000 + math.floor(clock_us / 1000)
end
"#,
    },
    Helper {
        defines: &["fmt", "due_at"],
        text: r#"
-- Every number the scripts format is an integral ms count or sequence number; '%d' is
-- several times cheaper than '%.0f' in Redis's Lua.
local function fmt(n) return string.format('%d', n) end
-- When something `delay` ms from now falls due: never before the delay has fully passed,
-- though the clock is read in whole ms.
local function due_at(delay)
  read_clock()
  if delay <= 0 then return now_ms() end
  return clock_s * 1000 + math.ceil(clock_us / 1000) + delay
end
"#,
    },
    Helper {
        defines: &["next_seq"],
        text: r#"
-- The namespace's global sequence (event ids, item order), reserved 64 at a time: one
-- INCRBY per script run instead of one INCR per event. Unused numbers are just gaps.
local seq_next, seq_left = 0, 0
local function next_seq()
  if seq_left == 0 then
    seq_next = redis.call('INCRBY', P .. 'seq', 64) - 63
    seq_left = 64
  end
  local s = seq_next
  seq_next = seq_next + 1
  seq_left = seq_left - 1
  return s
end
"#,
    },
    Helper {
        defines: &["tap"],
        text: r#"
-- Shows an accepted event to taps (`edaflow tail`, `edaflow test`): published only when
-- someone listens, which is asked once per script run.
local tapped = nil
local function tap(json)
  if tapped == nil then tapped = redis.call('PUBSUB', 'NUMSUB', P .. 'tap')[2] > 0 end
  if tapped then redis.call('PUBLISH', P .. 'tap', json) end
end
"#,
    },
    Helper {
        defines: &["id_parts"],
        text: r#"
local function id_parts(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
"#,
    },
    Helper {
        defines: &["id_lt"],
        text: r#"
-- a < b for stream ids
local function id_lt(a, b)
  local am, as = id_parts(a)
  local bm, bs = id_parts(b)
  if am ~= bm then return am < bm end
  return as < bs
end
"#,
    },
    Helper {
        defines: &["group_info"],
        text: r#"
-- The fields of one XINFO GROUPS entry for `group`, or nil.
local function group_info(key, group)
  local groups = redis.pcall('XINFO', 'GROUPS', key)
  if type(groups) ~= 'table' or groups.err then return nil end
  for _, g in ipairs(groups) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == group then return info end
  end
  return nil
end
"#,
    },
    Helper {
        defines: &["lag_of"],
        text: r#"
-- Entries not yet delivered to a group (bounded by `limit`).
local function lag_of(key, info, limit)
  if info['lag'] then return info['lag'] end
  return #redis.call('XRANGE', key, '(' .. info['last-delivered-id'], '+', 'COUNT', limit)
end
"#,
    },
    Helper {
        defines: &["waiting_in"],
        text: r#"
-- Entries held by a stream that acks by deleting (inbox, ready, back) and not in flight.
local function waiting_in(key, group)
  local len = redis.call('XLEN', key)
  if len == 0 then return 0, 0 end
  local summary = redis.pcall('XPENDING', key, group)
  local pending = 0
  if type(summary) == 'table' and not summary.err then pending = summary[1] end
  return len - pending, pending
end
"#,
    },
    Helper {
        defines: &["append_event"],
        text: r#"
-- Appends an event to its topic stream with an id that orders it after every event
-- appended before it on any topic (server ms + one global sequence), and shows it to taps.
local topic_keys = {}
local function append_event(topic, json, now)
  local key = topic_keys[topic]
  if not key then
    key = P .. 't:' .. topic
    topic_keys[topic] = key
  end
  local id = string.format('%d-%d', now, next_seq())
  local added = redis.pcall('XADD', key, id, 'e', json)
  if type(added) == 'table' and added.err then
    -- The clock went back: let Redis pick an id after the last one.
    added = redis.call('XADD', key, '*', 'e', json)
  end
  tap(json)
  return added
end
"#,
    },
    Helper {
        defines: &["wake"],
        text: r#"
local function wake(key)
  redis.call('XADD', key, 'MAXLEN', '1', '*', 'w', '1')
end
"#,
    },
    Helper {
        defines: &["is_oom"],
        text: r#"
-- True for the error Redis answers a write with while it is out of memory (`maxmemory`
-- reached under a policy that refuses writes). Redis refuses such a write only while the
-- script has written nothing yet, so a refused first write leaves nothing half-done.
local function is_oom(reply)
  return type(reply) == 'table' and reply.err ~= nil and string.sub(reply.err, 1, 3) == 'OOM'
end
"#,
    },
    Helper {
        defines: &["move_due"],
        text: r#"
-- Moves up to `batch` items of a queue due within `ahead` ms to its ready stream, in due
-- order. An item not due yet carries its due time (field `d`, ms): whoever takes it holds
-- it until then. A member that is not `seq\njson` moves whole (its reader dead-letters
-- what it cannot read). Moves nothing while Redis is out of memory.
-- The items moved are the set's first by rank, so one ZREMRANGEBYRANK removes them all,
-- also when an append fails part way (what was appended is removed before the error).
local function move_due(queue, now, batch, ahead)
  local sched = P .. 'q:' .. queue .. ':sched'
  local ready = P .. 'q:' .. queue .. ':ready'
  local due = redis.call('ZRANGEBYSCORE', sched, '-inf', fmt(now + ahead), 'WITHSCORES', 'LIMIT', 0, batch)
  local moved = 0
  for k = 1, #due, 2 do
    local member, at = due[k], due[k + 1]
    local nl = string.find(member, '\n', 1, true)
    local json = member
    if nl then json = string.sub(member, nl + 1) end
    local added
    if tonumber(at) > now then
      added = redis.pcall('XADD', ready, '*', 'e', json, 'r', '0', 'd', at)
    else
      added = redis.pcall('XADD', ready, '*', 'e', json, 'r', '0')
    end
    if type(added) == 'table' and added.err then
      if moved > 0 then redis.call('ZREMRANGEBYRANK', sched, 0, moved - 1) end
      if is_oom(added) then return moved end
      error(added)
    end
    moved = moved + 1
  end
  if moved > 0 then redis.call('ZREMRANGEBYRANK', sched, 0, moved - 1) end
  return moved
end
"#,
    },
    Helper {
        defines: &["next_move"],
        text: r#"
-- Ms until the first item of a queue's sorted set comes within `ahead` ms of its due time
-- ('' when the set is empty).
local function next_move(queue, now, ahead)
  local first = redis.call('ZRANGE', P .. 'q:' .. queue .. ':sched', 0, 0, 'WITHSCORES')
  if #first == 0 then return '' end
  return fmt(math.max(0, tonumber(first[2]) - ahead - now))
end
"#,
    },
    Helper {
        defines: &["queue_depth"],
        text: r#"
local function queue_depth(queue)
  local q = P .. 'q:' .. queue
  local ready = waiting_in(q .. ':ready', 'workers')
  local back = waiting_in(q .. ':back', 'workers')
  return redis.call('ZCARD', q .. ':sched') + ready + back
end
"#,
    },
    Helper {
        defines: &["last_id"],
        text: r#"
local function last_id(key)
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #last == 0 then return '0-0' end
  return last[1][1]
end
"#,
    },
    Helper {
        defines: &["entry_reply"],
        text: r#"
-- The reply for one entry read from `key`: kind, id, fields, delivery count, key.
local function entry_reply(kind, key, group, entry)
  local id = entry[1]
  local count = 1
  local p = redis.call('XPENDING', key, group, id, id, 1)
  if #p > 0 then count = p[1][4] end
  return {'entry', kind, id, entry[2], count, key}
end
"#,
    },
    Helper {
        defines: &["claim_one"],
        text: r#"
-- Claims one entry idle for at least `idle` ms from any consumer of `group`.
local function claim_one(kind, key, group, me, idle)
  local claimed = redis.pcall('XAUTOCLAIM', key, group, me, idle, '0-0', 'COUNT', 1)
  if type(claimed) ~= 'table' or claimed.err then return nil end
  local entries = claimed[2]
  if #entries > 0 and entries[1] then return entry_reply(kind, key, group, entries[1]) end
  return nil
end
"#,
    },
    Helper {
        defines: &["read_n"],
        text: r#"
-- Up to `n` new entries ('>'): each on its first delivery to the group, so no need to ask
-- XPENDING. Reply: 'entries', kind, key, then (id, fields) pairs.
local function read_n(kind, key, group, me, n)
  local got = redis.pcall('XREADGROUP', 'GROUP', group, me, 'COUNT', n, 'STREAMS', key, '>')
  if type(got) ~= 'table' or got.err then return nil end
  local out = {'entries', kind, key}
  for _, entry in ipairs(got[1][2]) do
    table.insert(out, entry[1])
    table.insert(out, entry[2])
  end
  if #out == 3 then return nil end
  return out
end
"#,
    },
    Helper {
        defines: &["share_of"],
        text: r#"
-- How many to take of `waiting` entries shared by `consumers`: one unless at least `most`
-- wait (a consumer takes ahead only under load), and never more than a fair share, so the
-- other consumers of the group are not left idle while one works through a batch.
local function share_of(waiting, consumers, most)
  most = tonumber(most)
  if waiting < most then return 1 end
  return math.max(1, math.min(most, math.floor(waiting / math.max(1, consumers))))
end
"#,
    },
    Helper {
        defines: &["read_n_waiting"],
        text: r#"
-- As `read_n`, for a stream that acks by deleting (inbox, ready, back): skipped at once
-- when empty.
local function read_n_waiting(kind, key, group, me, n)
  local waiting = waiting_in(key, group)
  if waiting == 0 then return nil end
  if tonumber(n) > 1 then
    local info = group_info(key, group)
    n = share_of(waiting, info and info['consumers'] or 1, n)
  end
  return read_n(kind, key, group, me, n)
end
"#,
    },
    Helper {
        defines: &["read_n_lagging"],
        text: r#"
-- As `read_n`, for a topic stream (what waits is the group's lag).
local function read_n_lagging(kind, key, group, me, n)
  if tonumber(n) > 1 then
    local info = group_info(key, group)
    if info and info['lag'] then
      n = share_of(info['lag'], info['consumers'], n)
    else
      n = 1
    end
  end
  return read_n(kind, key, group, me, n)
end
"#,
    },
];

/// Lua shared by scripts: what it defines (its `local function`s), and its text.
struct Helper {
    defines: &'static [&'static str],
    text: &'static str,
}

/// Every script starts with the key prefix in `P`.
const PREAMBLE: &str = "local P = ARGV[1]\n";

/// A script of `body`, after the helpers it names (see `HELPERS`).
pub(super) fn script(body: &str) -> Script {
    Script::new(&source(body))
}

/// The text of a script of `body`: the preamble, then each helper that `body` names or that
/// a helper included names, in `HELPERS` order, then `body`.
fn source(body: &str) -> String {
    let mut wanted = vec![false; HELPERS.len()];
    let mut texts = vec![body];
    while let Some(text) = texts.pop() {
        for (k, helper) in HELPERS.iter().enumerate() {
            if !wanted[k] && helper.defines.iter().any(|name| names(text, name)) {
                wanted[k] = true;
                texts.push(helper.text);
            }
        }
    }
    let mut source = String::from(PREAMBLE);
    for (helper, _) in HELPERS.iter().zip(&wanted).filter(|(_, wanted)| **wanted) {
        source.push_str(helper.text);
        source.push('\n');
    }
    source.push_str(body);
    source
}

/// Whether `text` holds `name` as a whole word (a comment naming it counts too, which
/// includes a helper needlessly but never leaves one out).
fn names(text: &str, name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

/// `ensure`: ARGV P, group, start id ('$' or an id), stream keys... Creates the group's
/// XGROUP on each stream that lacks it (never for a group that no longer exists) and
/// records where it started, in `gs:{group}`, and wakes the group's waiting consumers. A
/// stream recorded there whose XGROUP is gone (the stream was deleted, or Redis lost it)
/// gets it again.
pub static ENSURE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local group, start = ARGV[2], ARGV[3]
if redis.call('HEXISTS', P .. 'groups', group) == 0 then return 0 end
local created = 0
for i = 4, #ARGV do
  local key = ARGV[i]
  if redis.call('HEXISTS', P .. 'gs:' .. group, key) == 0 or not group_info(key, group) then
    redis.pcall('XGROUP', 'CREATE', key, group, start, 'MKSTREAM')
    local since = start
    if start == '$' then
      local info = group_info(key, group)
      if info then since = info['last-delivered-id'] else since = '0-0' end
    end
    redis.call('HSET', P .. 'gs:' .. group, key, since)
    created = created + 1
  end
end
-- Consumers waiting on the group's other streams learn of the new ones.
if created > 0 then wake(P .. 'g:' .. group .. ':wake') end
return created
"#,
    )
});

/// `take`: ARGV P, group, consumer, claim idle ms ('' for no claim), most to take. The next
/// entries of a topic group for this consumer: one claimed from a dead consumer, else the
/// inbox's (nacked and inherited entries), else undelivered ones from the stream with the
/// earliest. Otherwise `wait` with the (key, id) pairs to block on.
pub static TAKE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local group, me, idle, n = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('HEXISTS', P .. 'groups', group) == 0 then return {'gone'} end
local inbox = P .. 'g:' .. group .. ':inbox'
local streams = redis.call('HKEYS', P .. 'gs:' .. group)
if idle ~= '' then
  local got = claim_one('i', inbox, group, me, idle)
  if got then return got end
  for _, key in ipairs(streams) do
    got = claim_one('t', key, group, me, idle)
    if got then return got end
  end
end
local got = read_n_waiting('i', inbox, group, me, n)
if got then return got end
-- One stream (the common case): its next entry is the earliest; no need to compare heads.
if #streams == 1 then
  got = read_n_lagging('t', streams[1], group, me, n)
  if got then return got end
end
local waits = {P .. 'g:' .. group .. ':wake', last_id(P .. 'g:' .. group .. ':wake')}
local inbox_info = group_info(inbox, group)
if inbox_info then
  table.insert(waits, inbox)
  table.insert(waits, inbox_info['last-delivered-id'])
end
-- The stream with the earliest head, and the earliest head among the others (`next_id`).
local best_key, best_id, best_last, next_id = nil, nil, nil, nil
for _, key in ipairs(streams) do
  local info = group_info(key, group)
  if info then
    local last = info['last-delivered-id']
    local head = redis.call('XRANGE', key, '(' .. last, '+', 'COUNT', 1)
    if #head > 0 then
      local id = head[1][1]
      if best_id == nil or id_lt(id, best_id) then
        if best_id ~= nil then next_id = best_id end
        best_key, best_id, best_last = key, id, last
      elseif next_id == nil or id_lt(id, next_id) then
        next_id = id
      end
    end
    table.insert(waits, key)
    table.insert(waits, last)
  end
end
if best_key then
  -- Ids order events across topics (see `append_event`): taking several, take only those
  -- published before the other streams' next one, so the group gets its topics' events
  -- in the order they were published, a cause before what it caused.
  local most = n
  if next_id and tonumber(n) > 1 then
    local before = redis.call('XRANGE', best_key, '(' .. best_last, '(' .. next_id, 'COUNT', n)
    most = math.max(1, #before)
  end
  got = read_n_lagging('t', best_key, group, me, most)
  if got then return got end
end
return {'wait', '', waits}
"#,
    )
});

/// `take_queue`: ARGV P, queue, consumer, claim idle ms ('' for none), mover batch, most to
/// take, take-ahead ms. Moves items due within the take-ahead to the ready stream, then hands
/// out: a claimed item, else given-back ones, else the next ready ones. Otherwise `wait` with
/// the ms until the next item comes within the take-ahead.
pub static TAKE_QUEUE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local queue, me, idle, batch, n = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local ahead = tonumber(ARGV[7])
if redis.call('HEXISTS', P .. 'queues', queue) == 0 then return {'gone'} end
local q = P .. 'q:' .. queue
local now = now_ms()
move_due(queue, now, batch, ahead)
if idle ~= '' then
  local got = claim_one('b', q .. ':back', 'workers', me, idle)
  if got then return got end
  got = claim_one('r', q .. ':ready', 'workers', me, idle)
  if got then return got end
end
local got = read_n_waiting('b', q .. ':back', 'workers', me, n)
if got then return got end
got = read_n_waiting('r', q .. ':ready', 'workers', me, n)
if got then return got end
local next_due = next_move(queue, now, ahead)
local waits = {q .. ':wake', last_id(q .. ':wake')}
for _, key in ipairs({q .. ':back', q .. ':ready'}) do
  local info = group_info(key, 'workers')
  if info then
    table.insert(waits, key)
    table.insert(waits, info['last-delivered-id'])
  end
end
return {'wait', next_due, waits}
"#,
    )
});

/// `batch`: ARGV P, n, then n operations, each a kind and its arguments; replies with one
/// result per operation, in order. Every publish, commit and enqueue of a process goes
/// through it (see `batch`), so that one script run carries what many callers wait on.
/// Operations are independent: one refused (a full group or queue) does not stop the next.
///
/// `p` publish: topic, json, capacity ('' for none). Replies `full` and the group when a
/// group reading the topic already has `capacity` entries waiting (counting this run's).
///
/// `s` sequence: n, then n commits' arguments (each as `c` takes them, without the kind).
/// Replies with one result per commit: they run in order, and once one is refused (any
/// outcome but `ok` or `settled`) the rest reply `skipped`, having applied nothing, so a
/// worker's commits never land out of order.
///
/// `c` commit: one handler run's effects and the ack of what it handled, all or nothing.
/// Arguments: ack kind (t|i|r|b|-|f), ack key, ack group, ack id, then
/// n, n × (topic, json) to publish; n, n × (topic, delay ms, json) to publish later;
/// n, n × (queue, delay ms, json) to enqueue; dead topic ('' for none), dead json;
/// n, n × (store, key, op s|r|i, JSON value or integer) to write; reply channel ('' for
/// none), reply payload; n, n × (shard, body) for the outbox (`P outbox`, effects bound for
/// other shards, see `spread`). A dead letter with topic '' is kept in `P dead` without
/// being published here. Queues are checked (existence, capacity) before anything is
/// written. A commit whose entry is no longer pending for its group applies nothing and
/// replies `settled`: it ran already (a retry after a lost reply) or another consumer
/// settled the entry.
///
/// Ack kind `f` is a forward from another shard's outbox: the ack key is the watermark of
/// that shard's outbox here, the ack group the outbox entry's id. An id at or below the
/// watermark applied already and replies `settled`; otherwise the effects land and the
/// watermark moves to the id, in the same run. Once a forward of a watermark is refused in
/// a run, the later forwards of that watermark in the run reply `blocked`, so a shard's
/// outbox lands in order.
///
/// While Redis is out of memory (`maxmemory` under a policy that refuses writes) the run's
/// first write is refused, and every operation replies `oom` with nothing written.
pub static BATCH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
-- Per operation this script allocates nothing it can avoid (no argument tables: the
-- lists are walked in ARGV where they lie), since Lua work per operation, not the
-- commands, is most of a run's cost.
local i = 3
local OK = {'ok'}
-- Per topic, over this run: the lag of its most-behind group, and that group.
local behind = {}
-- Per queue, over this run: its capacity ('' none) and depth (counting this run's
-- enqueues; what this run acks is not taken off, which errs on the side of full), or
-- false for no such queue.
local queues_seen = {}
-- Per sorted set, over this run: the score of its first member (false when empty), to
-- wake the set's waiters only when an item goes ahead of every other.
local firsts = {}
local function first_score(key)
  local first = firsts[key]
  if first == nil then
    local got = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    first = #got > 0 and tonumber(got[2]) or false
    firsts[key] = first
  end
  return first
end
-- Adds a member due at `due` to a sorted set; wakes `wake_key` when it becomes the first.
local function schedule(key, due, member, wake_key)
  local first = first_score(key)
  redis.call('ZADD', key, fmt(due), member)
  if first == false or due < first then
    firsts[key] = due
    wake(wake_key)
  end
end
local function publish_op()
  local topic, json, cap = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  if cap ~= '' then
    local key = P .. 't:' .. topic
    local most = behind[topic]
    if most == nil then
      most = {-1, ''}
      if redis.call('EXISTS', key) == 1 then
        for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
          local info = {}
          for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
          local lag = lag_of(key, info, tonumber(cap))
          if lag > most[1] then most = {lag, info['name']} end
        end
      end
      behind[topic] = most
    end
    if most[1] >= tonumber(cap) then return {'full', most[2]} end
    -- This event adds one to every group's lag.
    if most[1] >= 0 then most[1] = most[1] + 1 end
  end
  append_event(topic, json, now_ms())
  return OK
end
-- Per watermark key, over this run: a forward to it was refused (later ones wait).
local blocked = {}
local SKIPPED = {'skipped'}
-- One commit; with `skip`, its arguments are only stepped over.
local function commit_op(skip)
  local kind, key, group, id = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  -- Where each list starts in ARGV, and its length.
  local np = tonumber(ARGV[i + 4])
  local p0 = i + 5
  i = p0 + 2 * np
  local nd = tonumber(ARGV[i])
  local d0 = i + 1
  i = d0 + 3 * nd
  local nq = tonumber(ARGV[i])
  local q0 = i + 1
  i = q0 + 3 * nq
  local dead_topic, dead_json = ARGV[i], ARGV[i + 1]
  local nw = tonumber(ARGV[i + 2])
  local w0 = i + 3
  i = w0 + 4 * nw
  local reply_channel, reply_payload = ARGV[i], ARGV[i + 1]
  local no = tonumber(ARGV[i + 2])
  local o0 = i + 3
  i = o0 + 2 * no
  if skip then return SKIPPED end

  if kind == 'f' then
    if blocked[key] then return {'blocked'} end
    local mark = redis.call('GET', key)
    if mark and not id_lt(mark, group) then return {'settled'} end
  end

  -- The guard: an entry no longer pending for its group was settled already (this commit
  -- ran before and its reply was lost, or another consumer settled it): apply nothing.
  -- XACK's own answer is the guard, except when queues must be checked first (a full queue
  -- leaves the entry pending, to be retried).
  if nq > 0 then
    if kind ~= '-' and kind ~= 'f' then
      local p = redis.pcall('XPENDING', key, group, id, id, 1)
      if type(p) ~= 'table' or p.err or #p == 0 then return {'settled'} end
    end
    local per_queue = {}
    for j = q0, q0 + 3 * (nq - 1), 3 do per_queue[ARGV[j]] = (per_queue[ARGV[j]] or 0) + 1 end
    for queue, n in pairs(per_queue) do
      local known = queues_seen[queue]
      if known == nil then
        local cap = redis.call('HGET', P .. 'queues', queue)
        if cap and cap ~= '' then
          known = {cap, queue_depth(queue)}
        elseif cap then
          known = {cap, 0}
        else
          known = false
        end
        queues_seen[queue] = known
      end
      if not known then
        if kind == 'f' then blocked[key] = true end
        return {'unknown_queue', queue}
      end
      if known[1] ~= '' and known[2] + n > tonumber(known[1]) then
        if kind == 'f' then blocked[key] = true end
        return {'queue_full', queue, known[1]}
      end
    end
    for queue, n in pairs(per_queue) do queues_seen[queue][2] = queues_seen[queue][2] + n end
  end

  if kind == 'f' then
    redis.call('SET', key, group)
  elseif kind ~= '-' then
    local acked = redis.pcall('XACK', key, group, id)
    if nq == 0 and (type(acked) ~= 'number' or acked == 0) then return {'settled'} end
    if kind ~= 't' then redis.call('XDEL', key, id) end
  end

  local now = now_ms()
  for j = p0, p0 + 2 * (np - 1), 2 do append_event(ARGV[j], ARGV[j + 1], now) end
  for j = d0, d0 + 3 * (nd - 1), 3 do
    local member = string.format('%020d', next_seq()) .. '\n' .. ARGV[j] .. '\n' .. ARGV[j + 2]
    schedule(P .. 'deferred', due_at(tonumber(ARGV[j + 1])), member, P .. 'deferred:wake')
  end
  for j = q0, q0 + 3 * (nq - 1), 3 do
    local queue, delay, json = ARGV[j], tonumber(ARGV[j + 1]), ARGV[j + 2]
    local q = P .. 'q:' .. queue
    local member = string.format('%020d', next_seq()) .. '\n' .. json
    tap(json)
    if delay <= 0 then
      redis.call('ZADD', q .. ':sched', fmt(due_at(delay)), member)
      move_due(queue, now, 100, 0)
      -- The move may have taken the set's first member.
      firsts[q .. ':sched'] = nil
    else
      schedule(q .. ':sched', due_at(delay), member, q .. ':wake')
    end
  end
  if dead_json ~= '' then
    redis.call('XADD', P .. 'dead', '*', 'e', dead_json)
    if dead_topic ~= '' then append_event(dead_topic, dead_json, now) end
  end
  -- Store writes, in the order the handler made them: `s` set (JSON), `r` remove, `i` add
  -- to an integer (a missing or non-integer value counts as 0; overflow saturates).
  for j = w0, w0 + 4 * (nw - 1), 4 do
    local h, k, op, v = P .. 's:' .. ARGV[j], ARGV[j + 1], ARGV[j + 2], ARGV[j + 3]
    if op == 'r' then
      redis.call('HDEL', h, k)
      redis.call('ZREM', h .. ':keys', k)
    else
      if op == 's' then
        redis.call('HSET', h, k, v)
      else
        local cur = redis.call('HGET', h, k)
        if cur and string.match(cur, '^%-?%d+$') then
          local added = redis.pcall('HINCRBY', h, k, v)
          if type(added) == 'table' and added.err then
            if string.sub(v, 1, 1) == '-' then
              redis.call('HSET', h, k, '-9223372036854775808')
            else
              redis.call('HSET', h, k, '9223372036854775807')
            end
          end
        else
          redis.call('HSET', h, k, v)
        end
      end
      redis.call('ZADD', h .. ':keys', 0, k)
    end
  end
  if reply_channel ~= '' then redis.call('PUBLISH', reply_channel, reply_payload) end
  for j = o0, o0 + 2 * (no - 1), 2 do
    redis.call('XADD', P .. 'outbox', '*', 's', ARGV[j], 'b', ARGV[j + 1])
  end
  return OK
end
-- Commits of one worker, in order: after the first that neither landed nor was settled
-- already, the rest are skipped (their worker commits them one by one, in order).
local function sequence_op()
  local n = tonumber(ARGV[i])
  i = i + 1
  local out = {}
  local stopped = false
  for k = 1, n do
    local r = commit_op(stopped)
    out[k] = r
    if r[1] ~= 'ok' and r[1] ~= 'settled' then stopped = true end
  end
  return out
end
local results = {}
-- The run's first write reserves its sequence numbers. While Redis is out of memory that
-- write is refused, and so is every operation of the run, before anything is written:
-- each replies `oom` (the callers retry, or answer 503).
local reserved = redis.pcall('INCRBY', P .. 'seq', 64)
if is_oom(reserved) then
  for k = 1, tonumber(ARGV[2]) do results[k] = {'oom'} end
  return results
end
if type(reserved) ~= 'number' then error(reserved) end
seq_next, seq_left = reserved - 63, 64
for k = 1, tonumber(ARGV[2]) do
  local op = ARGV[i]
  i = i + 1
  if op == 'p' then
    results[k] = publish_op()
  elseif op == 's' then
    results[k] = sequence_op()
  else
    results[k] = commit_op(false)
  end
end
return results
"#,
    )
});

/// `nack`: ARGV P, kind, key, group, id, return key (inbox or back), json, redeliveries,
/// origin key, origin id, due ms ('' for an item due already). Acks the entry and appends
/// it to the return stream, to be taken again before anything else (a queue item taken
/// ahead keeps its due time); does nothing when the entry is no longer pending.
pub static NACK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local kind, key, group, id, dest = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local json, r, origin_key, origin_id, due = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local acked = redis.pcall('XACK', key, group, id)
if type(acked) ~= 'number' or acked == 0 then return 0 end
if kind ~= 't' then redis.call('XDEL', key, id) end
if redis.call('EXISTS', dest) == 0 then return 0 end
if due ~= '' then
  redis.call('XADD', dest, '*', 'e', json, 'r', r, 'os', origin_key, 'oi', origin_id, 'd', due)
else
  redis.call('XADD', dest, '*', 'e', json, 'r', r, 'os', origin_key, 'oi', origin_id)
end
return 1
"#,
    )
});

/// `handoff`: ARGV P, group, key, successor ('' for none), '1' when the successor is the
/// group itself. Moves what waits for `group` on `key` (pending and undelivered entries)
/// to the successor's inbox, skipping entries the successor already received on their
/// origin stream, then destroys the group's XGROUP there. Replies how many entries waited
/// and moved (the successor holds them now) and how many were dropped (no successor).
pub static HANDOFF: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local group, key, dest, itself = ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1'
local info = group_info(key, group)
if not info then
  redis.call('HDEL', P .. 'gs:' .. group, key)
  return {0, 0}
end
local moved, dropped = 0, 0
if dest == '' then
  dropped = info['pending'] + lag_of(key, info, 1000000)
else
  local entries = {}
  local pending = redis.call('XPENDING', key, group, '-', '+', 1000000)
  for _, p in ipairs(pending) do
    local e = redis.call('XRANGE', key, p[1], p[1])
    if #e > 0 then table.insert(entries, {e[1], p[4]}) end
  end
  for _, e in ipairs(redis.call('XRANGE', key, '(' .. info['last-delivered-id'], '+')) do
    table.insert(entries, {e, 0})
  end
  local inbox = P .. 'g:' .. dest .. ':inbox'
  for _, pair in ipairs(entries) do
    local e, count = pair[1], pair[2]
    local fields = {}
    for j = 1, #e[2], 2 do fields[e[2][j]] = e[2][j + 1] end
    local origin_key, origin_id = key, e[1]
    if fields['os'] and fields['os'] ~= '' then origin_key, origin_id = fields['os'], fields['oi'] end
    local has = false
    if not itself then
      local since = redis.call('HGET', P .. 'gs:' .. dest, origin_key)
      has = since and id_lt(since, origin_id)
    end
    if not has then
      local r = (tonumber(fields['r'] or '0') or 0) + count
      redis.call('XADD', inbox, '*', 'e', fields['e'] or '', 'r', r, 'os', origin_key, 'oi', origin_id)
    end
    moved = moved + 1
  end
end
redis.pcall('XGROUP', 'DESTROY', key, group)
redis.call('HDEL', P .. 'gs:' .. group, key)
return {moved, dropped}
"#,
    )
});

/// `rehome_queue`: ARGV P, queue, successor ('' for none). Moves every item of a queue that
/// is being removed to the successor queue (scheduled items keep their member and due time;
/// ready and given-back entries keep their fields) and wakes its workers. The ready and
/// back streams ack by deleting, so what they hold is exactly what waits or is in flight.
/// Replies how many items moved and how many are left to be dropped (no successor).
pub static REHOME_QUEUE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local queue, dest = ARGV[2], ARGV[3]
local q = P .. 'q:' .. queue
local n = redis.call('ZCARD', q .. ':sched') + redis.call('XLEN', q .. ':ready') + redis.call('XLEN', q .. ':back')
if dest == '' or dest == queue or redis.call('HEXISTS', P .. 'queues', dest) == 0 then
  return {0, n}
end
local d = P .. 'q:' .. dest
local members = redis.call('ZRANGE', q .. ':sched', 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  redis.call('ZADD', d .. ':sched', members[i + 1], members[i])
end
for _, part in ipairs({':ready', ':back'}) do
  for _, e in ipairs(redis.call('XRANGE', q .. part, '-', '+')) do
    redis.call('XADD', d .. part, '*', unpack(e[2]))
  end
end
wake(d .. ':wake')
return {n, 0}
"#,
    )
});

/// `move_deferred`: ARGV P, batch, dead-letter template. Publishes due deferred events;
/// replies with how many, the ms until the next one ('' for none), and the wake stream's
/// last id. A member that is not `seq\ntopic\njson`, or whose topic is not a valid topic
/// name (no subscriber could ever read it), cannot be published: it becomes a dead
/// letter (the template, a CloudEvents JSON object, with the member as its data, at most
/// 64 KiB of it, bytes past ASCII shown as `?`), kept in the dead-letter store and
/// published on the template's topic.
pub static MOVE_DEFERRED: LazyLock<Script> = LazyLock::new(|| {
    script(&format!(
        r#"
-- The rules of `pattern::validate_topic`: dot-separated segments of ASCII letters,
-- digits, `_`, `-` and `:`, none empty, at most {max} bytes in all.
local function valid_topic(name)
  if #name == 0 or #name > {max} then return false end
  if string.find(name, '[^%w_:%.%-]') then return false end
  if string.sub(name, 1, 1) == '.' or string.sub(name, -1) == '.' then return false end
  return not string.find(name, '..', 1, true)
end
local batch = tonumber(ARGV[2])
local key = P .. 'deferred'
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', key, '-inf', fmt(now), 'LIMIT', 0, batch)
for k, member in ipairs(due) do
  local a = string.find(member, '\n', 1, true)
  local b = a and string.find(member, '\n', a + 1, true)
  if b and valid_topic(string.sub(member, a + 1, b - 1)) then
    append_event(string.sub(member, a + 1, b - 1), string.sub(member, b + 1), now)
  else
    local dead = cjson.decode(ARGV[3])
    dead['id'] = dead['id'] .. '-' .. k
    dead['correlationid'] = dead['id']
    dead['data'] = string.gsub(string.sub(member, 1, 65536), '[\128-\255]', '?')
    local json = cjson.encode(dead)
    redis.call('XADD', P .. 'dead', '*', 'e', json)
    redis.call('SADD', P .. 'topics', dead['type'])
    append_event(dead['type'], json, now)
  end
  redis.call('ZREM', key, member)
end
local next_due = ''
local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
if #first > 0 then next_due = fmt(math.max(0, tonumber(first[2]) - now)) end
return {{#due, next_due, last_id(P .. 'deferred:wake')}}
"#,
        max = crate::event::limits::MAX_TOPIC_BYTES,
    ))
});

/// `hold_lease`: ARGV P, lease key, holder, ms. Takes a lease (a shard's forwarding lease,
/// `P fwd:lease`) when it is free, or renews it when `holder` has it; replies 1 when `holder` holds it now,
/// else 0. One script, so a lease that expires between the look and the renewal is never
/// renewed for whoever took it meanwhile.
pub static HOLD_LEASE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local key, me, ms = ARGV[2], ARGV[3], ARGV[4]
if redis.call('SET', key, me, 'NX', 'PX', ms) then return 1 end
if redis.call('GET', key) == me then
  redis.call('PEXPIRE', key, ms)
  return 1
end
return 0
"#,
    )
});

/// `move_queue`: ARGV P, queue, batch, take-ahead ms. Moves up to `batch` items of a queue
/// due within the take-ahead to its ready stream; replies `gone` for a queue no longer
/// declared, else: how many moved, the ms until the next item comes within the take-ahead
/// ('' for none), the queue's wake stream's last id, and the server's time (ms).
pub static MOVE_QUEUE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local queue, batch, ahead = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('HEXISTS', P .. 'queues', queue) == 0 then return {'gone'} end
local q = P .. 'q:' .. queue
local now = now_ms()
local moved = move_due(queue, now, batch, ahead)
return {moved, next_move(queue, now, ahead), last_id(q .. ':wake'), fmt(now)}
"#,
    )
});

/// `stats`: ARGV P. Per group: name, queued, in flight.
pub static STATS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {}
for _, group in ipairs(redis.call('HKEYS', P .. 'groups')) do
  local queued, in_flight = waiting_in(P .. 'g:' .. group .. ':inbox', group)
  for _, key in ipairs(redis.call('HKEYS', P .. 'gs:' .. group)) do
    local info = group_info(key, group)
    if info then
      queued = queued + lag_of(key, info, 1000000)
      in_flight = in_flight + info['pending']
    end
  end
  table.insert(out, group)
  table.insert(out, queued)
  table.insert(out, in_flight)
end
return out
"#,
    )
});

/// `queue_stats`: ARGV P, take-ahead ms. Per queue: name, capacity ('' none), depth, due
/// now, ms to the next item not yet due ('' none), in flight. Items taken ahead of their due
/// time count as not due (and not in flight while a reader holds them): they are found
/// among the entries of the ready and back streams added within the take-ahead.
pub static QUEUE_STATS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {}
local now = now_ms()
local ahead = tonumber(ARGV[2])
-- Entries of `key` not due yet (field `d` after now): how many were delivered (held by a
-- reader) and how many wait, and the earliest due time among them (or nil).
local function not_due_in(key)
  local held, waiting, first = 0, 0, nil
  if ahead <= 0 then return held, waiting, first end
  local info = group_info(key, 'workers')
  local last = info and info['last-delivered-id'] or '0-0'
  for _, e in ipairs(redis.call('XRANGE', key, fmt(now - ahead), '+')) do
    local f = e[2]
    for j = 1, #f, 2 do
      local d = f[j] == 'd' and tonumber(f[j + 1])
      if d and d > now then
        if id_lt(last, e[1]) then waiting = waiting + 1 else held = held + 1 end
        if not first or d < first then first = d end
      end
    end
  end
  return held, waiting, first
end
local queues = redis.call('HGETALL', P .. 'queues')
for i = 1, #queues, 2 do
  local queue, cap = queues[i], queues[i + 1]
  local q = P .. 'q:' .. queue
  local ready, ready_flight = waiting_in(q .. ':ready', 'workers')
  local back, back_flight = waiting_in(q .. ':back', 'workers')
  local sched = redis.call('ZCARD', q .. ':sched')
  local due = redis.call('ZCOUNT', q .. ':sched', '-inf', fmt(now))
  local first = nil
  local later = redis.call('ZRANGEBYSCORE', q .. ':sched', '(' .. fmt(now), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #later > 0 then first = tonumber(later[2]) end
  local held, waiting = 0, 0
  for _, key in ipairs({q .. ':ready', q .. ':back'}) do
    local h, w, f = not_due_in(key)
    held, waiting = held + h, waiting + w
    if f and (not first or f < first) then first = f end
  end
  local next_due = ''
  if first then next_due = fmt(first - now) end
  table.insert(out, queue)
  table.insert(out, cap)
  -- A held item is one not due yet, not one being handled.
  table.insert(out, sched + ready + back + held)
  table.insert(out, due + ready + back - waiting)
  table.insert(out, next_due)
  table.insert(out, ready_flight + back_flight - held)
end
return out
"#,
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_gets_the_helpers_it_names_and_theirs_and_no_others() {
        let text = source("return due_at(5)");
        for defined in ["fmt", "due_at", "read_clock", "now_ms"] {
            assert!(
                text.contains(&format!("local function {defined}(")),
                "{defined}"
            );
        }
        for absent in ["read_n", "claim_one", "append_event", "next_seq"] {
            assert!(
                !text.contains(&format!("local function {absent}(")),
                "{absent}"
            );
        }
        assert!(text.starts_with(PREAMBLE) && text.ends_with("return due_at(5)"));
        // A name inside a longer word is not a use.
        assert!(!source("return read_n_lagging_x").contains("local function read_n("));
    }

    #[test]
    fn every_helper_a_script_can_reach_is_defined_before_its_first_call() {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        for helper in HELPERS {
            for name in helper.defines {
                let text = source(&format!("return {name}()"));
                for defined in HELPERS.iter().flat_map(|h| h.defines.iter()) {
                    let call = format!("{defined}(");
                    let first = text
                        .match_indices(&call)
                        .find(|(at, _)| !text[..*at].chars().next_back().is_some_and(word));
                    if let Some((at, _)) = first {
                        assert!(
                            text[..at].ends_with("local function "),
                            "{name} reaches {defined}, which is called before it is defined"
                        );
                    }
                }
            }
        }
    }
}
