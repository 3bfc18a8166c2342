//! Redis's clock as seen from this process. Due times are Redis's (the scripts read `TIME`),
//! and a queue item taken ahead of its due time (see `take_ahead` in the parent module) is
//! held here until then, so this process needs Redis's "now". It learns the offset between
//! the two clocks from replies that carry Redis's time, and errs late: a reply's time is
//! compared with the local time of its arrival, so the reply's latency makes Redis look
//! behind, never ahead. A held item therefore starts at its due time or a little after,
//! never before, even when the machines' clocks disagree.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the best (least delayed) sample stands before a newer one replaces it anyway,
/// so that a clock step on either machine is followed.
const SAMPLE_LIFE: Duration = super::defaults::CLOCK_SAMPLE_LIFE;

#[derive(Default)]
pub(super) struct RedisClock {
    /// Redis ms minus local ms, and when that was learnt.
    offset: Mutex<Option<(i64, Instant)>>,
}

fn local_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl RedisClock {
    /// Notes that Redis read `server_ms` on its clock (in a reply that just arrived).
    pub(super) fn learn(&self, server_ms: i64) {
        let sample = server_ms - local_ms();
        let mut offset = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        let keep =
            matches!(*offset, Some((best, at)) if best >= sample && at.elapsed() < SAMPLE_LIFE);
        if !keep {
            *offset = Some((sample, Instant::now()));
        }
    }

    /// Redis's clock now, in ms, as best known here (a little behind, never ahead, once a
    /// reply has been timed; this machine's clock before that).
    pub(super) fn now_ms(&self) -> i64 {
        let offset = self
            .offset
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(0, |(o, _)| o);
        local_ms() + offset
    }

    /// How long until Redis's clock reads `due_ms` (zero when it has already).
    pub(super) fn until(&self, due_ms: i64) -> Duration {
        let left = due_ms - self.now_ms();
        Duration::from_millis(u64::try_from(left).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_time_is_timed_on_redis_clock() {
        let clock = RedisClock::default();
        // Redis 10 s ahead of this machine.
        clock.learn(local_ms() + 10_000);
        let left = clock.until(local_ms() + 10_500);
        assert!(
            left <= Duration::from_millis(500) && left >= Duration::from_millis(400),
            "{left:?}"
        );
        assert_eq!(clock.until(local_ms() + 9_000), Duration::ZERO);
    }

    #[test]
    fn the_least_delayed_sample_stands() {
        let clock = RedisClock::default();
        clock.learn(local_ms() + 1_000);
        // A reply delayed by 200 ms makes Redis look 200 ms behind: ignored.
        clock.learn(local_ms() + 800);
        let left = clock.until(local_ms() + 1_000);
        assert!(left <= Duration::from_millis(5), "{left:?}");
    }
}
