//! Out-of-memory episodes of a Redis broker: Redis refusing writes (`-OOM`) because
//! `maxmemory` is reached under a policy that does not evict (`noeviction`, or a
//! `volatile-*` policy with nothing left to evict).
//!
//! An episode starts with the first refusal and is logged once, at error level, with what
//! edaflow does meanwhile (ingest answers 503 `broker_out_of_memory`, handlers' commits
//! wait and retry with backoff, movers of due items wait); `/healthz` says `degraded`
//! (`out_of_memory`) while it lasts. It ends once a write lands again and no write was
//! refused for `SETTLE` (so a Redis hovering at its limit, refusing one write and taking
//! the next, is one episode, not many), and that is logged once, at info level. While an
//! episode lasts the broker's watcher tries a write every half second (see `epoch`), so
//! the end is noticed with no traffic at all. Episodes are counted for `/metrics`.
//!
//! This module owns the episode's state and its log lines; the broker reports refusals
//! and writes to it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{error, info};

/// How long writes must go without a refusal before an episode counts as over.
pub(super) const SETTLE: Duration = super::defaults::OOM_SETTLE;

#[derive(Default)]
pub(crate) struct OutOfMemory {
    /// Fast path for `wrote`, called after every successful write.
    open: AtomicBool,
    episodes: AtomicU64,
    state: Mutex<Episode>,
}

#[derive(Default)]
struct Episode {
    since: Option<Instant>,
    last_refusal: Option<Instant>,
    refusals: u64,
}

impl OutOfMemory {
    /// Redis refused a write for lack of memory; `what` says whose ("ingest", "commit"...).
    pub(super) fn refused(&self, what: &str) {
        let now = Instant::now();
        let mut episode = self.state.lock().unwrap_or_else(|e| e.into_inner());
        episode.last_refusal = Some(now);
        episode.refusals += 1;
        if episode.since.is_some() {
            return;
        }
        episode.since = Some(now);
        self.open.store(true, Ordering::Release);
        self.episodes.fetch_add(1, Ordering::Relaxed);
        error!(
            first_refused = what,
            "redis is out of memory (maxmemory reached, and its policy refuses writes): ingest answers 503 broker_out_of_memory, handlers' commits and due items wait and retry until it takes writes again; raise maxmemory, set retention on busy topics, or drain backlogs"
        );
    }

    /// A write landed; ends the episode once no write was refused for `SETTLE`.
    pub(super) fn wrote(&self) {
        if !self.open.load(Ordering::Acquire) {
            return;
        }
        let mut episode = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(since) = episode.since else { return };
        if episode.last_refusal.is_some_and(|at| at.elapsed() < SETTLE) {
            return;
        }
        episode.since = None;
        self.open.store(false, Ordering::Release);
        info!(
            out_of_memory_for_ms = since.elapsed().as_millis() as u64,
            refused_writes = episode.refusals,
            "redis takes writes again: the out-of-memory episode is over"
        );
        episode.refusals = 0;
    }

    /// How long the current episode has lasted, if one is going on.
    pub(super) fn current(&self) -> Option<Duration> {
        if !self.open.load(Ordering::Acquire) {
            return None;
        }
        let episode = self.state.lock().unwrap_or_else(|e| e.into_inner());
        episode.since.map(|since| since.elapsed())
    }

    /// Episodes so far (the current one included).
    pub(super) fn episodes(&self) -> u64 {
        self.episodes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_in_a_row_are_one_episode() {
        let oom = OutOfMemory::default();
        assert!(oom.current().is_none());
        oom.refused("ingest");
        oom.refused("commit");
        oom.refused("ingest");
        assert!(oom.current().is_some());
        assert_eq!(oom.episodes(), 1);
    }

    #[test]
    fn a_write_soon_after_a_refusal_does_not_end_it() {
        let oom = OutOfMemory::default();
        oom.refused("ingest");
        // Hovering at the limit: one write lands, the next is refused. Still one episode.
        oom.wrote();
        assert!(oom.current().is_some());
        oom.refused("ingest");
        assert_eq!(oom.episodes(), 1);
    }

    #[test]
    fn a_write_after_the_settle_time_ends_it_and_the_next_refusal_starts_another() {
        let oom = OutOfMemory::default();
        oom.refused("ingest");
        // As if the last refusal were older than `SETTLE`.
        oom.state.lock().unwrap().last_refusal = Some(Instant::now() - SETTLE);
        oom.wrote();
        assert!(oom.current().is_none());
        oom.refused("ingest");
        assert_eq!(oom.episodes(), 2);
    }
}
