//! The backoff every retry against a broker uses (Redis consumers, the deferred mover, and
//! the runtime retrying a commit): 50 ms doubling to 2 s, each pause a random point in the
//! upper half of its step, so that many retrying tasks do not move in step.

use std::time::Duration;

/// First and longest pause between two retries.
pub(crate) const BACKOFF_START: Duration = Duration::from_millis(50);
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// The pause before the next retry: a random point in the upper half of `backoff` (so that
/// consumers failing together do not retry together); doubles `backoff` up to `BACKOFF_CAP`.
pub(crate) fn jittered(backoff: &mut Duration) -> Duration {
    let base = *backoff;
    *backoff = (base * 2).min(BACKOFF_CAP);
    let half = base / 2;
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(random % nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        let mut backoff = BACKOFF_START;
        let mut seen = Vec::new();
        for _ in 0..10 {
            let before = backoff;
            let pause = jittered(&mut backoff);
            assert!(
                pause >= before / 2 && pause <= before,
                "{pause:?} for {before:?}"
            );
            seen.push(before);
        }
        assert_eq!(seen[0], Duration::from_millis(50));
        assert_eq!(seen[1], Duration::from_millis(100));
        assert_eq!(*seen.last().unwrap(), BACKOFF_CAP);
        // Two pauses for the same step differ (jitter), almost surely.
        let pauses: Vec<Duration> = (0..5)
            .map(|_| jittered(&mut Duration::from_secs(1)))
            .collect();
        assert!(pauses.windows(2).any(|w| w[0] != w[1]), "{pauses:?}");
    }
}
