//! Exponential backoff with jitter, used for every retry the agent makes.

use std::time::Duration;

/// An exponential backoff: `initial`, doubled on each attempt, never more than `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `initial` to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max }
    }

    /// The delay before retry number `attempt` (0 for the first retry), without jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry number `attempt`, with "equal jitter": between half of
    /// [`Backoff::delay`] and all of it, so that a fleet that lost its controller at the same
    /// moment does not come back at the same moment.
    pub fn delay_with_jitter(&self, attempt: u32) -> Duration {
        jitter(self.delay(attempt))
    }
}

/// A random duration between half of `delay` and `delay`.
pub fn jitter(delay: Duration) -> Duration {
    let half = delay / 2;
    let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    if spread == 0 {
        return delay;
    }
    half + Duration::from_millis(random_u64() % (spread + 1))
}

/// A random number from the operating system.
pub fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // The kernel's random source is unavailable; fall back to the clock, which is enough to
        // spread retries.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        return u64::from(nanos);
    }
    u64::from_le_bytes(bytes)
}

/// Tracks consecutive failures of one kind of request.
#[derive(Clone, Debug)]
pub struct Retry {
    backoff: Backoff,
    failures: u32,
}

impl Retry {
    /// No failure yet.
    pub fn new(backoff: Backoff) -> Self {
        Retry {
            backoff,
            failures: 0,
        }
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.backoff.delay_with_jitter(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Records a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_up_to_the_maximum() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<u64> = (0..9).map(|n| backoff.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_between_half_and_full_delay() {
        for _ in 0..200 {
            let delay = jitter(Duration::from_millis(1000));
            assert!(delay >= Duration::from_millis(500), "{delay:?}");
            assert!(delay <= Duration::from_millis(1000), "{delay:?}");
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn retry_counts_failures_and_resets() {
        let mut retry = Retry::new(Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(400),
        ));
        assert!(retry.next_delay() <= Duration::from_millis(100));
        assert!(retry.next_delay() <= Duration::from_millis(200));
        assert!(retry.next_delay() >= Duration::from_millis(200));
        assert_eq!(retry.failures(), 3);
        retry.reset();
        assert_eq!(retry.failures(), 0);
    }
}
