//! Token buckets: enrolments (globally and per source address) and events about one client.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tc_api::Timestamp;

/// A rate: `per_second` on average, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: f64,
    /// Most tokens held (and the first burst).
    pub burst: u32,
}

impl RateLimit {
    /// `per_second` on average, `burst` at once.
    pub const fn new(per_second: f64, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }
}

/// A token bucket over a millisecond clock (the caller passes the time, so that tests control
/// it). Starts full; the default bucket was last updated at the epoch, so it is full at its first
/// use.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenBucket {
    tokens: f32,
    /// When `tokens` was last brought up to date (unix milliseconds).
    updated: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(limit: &RateLimit, now: Timestamp) -> TokenBucket {
        TokenBucket {
            tokens: limit.burst as f32,
            updated: now.unix_millis(),
        }
    }

    fn refill(&mut self, limit: &RateLimit, now: Timestamp) {
        let elapsed = now.unix_millis().saturating_sub(self.updated);
        if elapsed > 0 {
            let added = elapsed as f64 / 1000.0 * limit.per_second;
            self.tokens = (f64::from(self.tokens) + added).min(f64::from(limit.burst)) as f32;
            self.updated = now.unix_millis();
        }
    }

    /// Takes a token; when there is none, says how long until there is one.
    pub fn take(&mut self, limit: &RateLimit, now: Timestamp) -> Result<(), Duration> {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - f64::from(self.tokens);
        let seconds = if limit.per_second > 0.0 {
            missing / limit.per_second
        } else {
            3600.0
        };
        Err(Duration::from_secs_f64(seconds.clamp(0.001, 86_400.0)))
    }

    /// True when the bucket is full at `now` (nothing to remember about it).
    fn is_full(&mut self, limit: &RateLimit, now: Timestamp) -> bool {
        self.refill(limit, now);
        self.tokens >= limit.burst as f32
    }
}

/// Most source addresses whose buckets are remembered; beyond this, full buckets are forgotten
/// (they would refill to full anyway), so the map cannot grow with the addresses of an attack
/// faster than their buckets refill.
const MAX_SOURCES: usize = 10_000;

/// Enrolment requests allowed globally and per source address.
#[derive(Debug)]
pub struct EnrollLimiter {
    global_limit: RateLimit,
    source_limit: RateLimit,
    global: Mutex<TokenBucket>,
    sources: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl EnrollLimiter {
    /// A limiter with full buckets.
    pub fn new(global: RateLimit, per_source: RateLimit, now: Timestamp) -> EnrollLimiter {
        EnrollLimiter {
            global_limit: global,
            source_limit: per_source,
            global: Mutex::new(TokenBucket::full(&global, now)),
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for a request from `source` (the source's bucket first, so that one source
    /// over its share does not drain the global bucket); when refused, how long to wait.
    pub fn check(&self, source: Option<IpAddr>, now: Timestamp) -> Result<(), Duration> {
        if let Some(source) = source {
            let mut sources = self.sources.lock().expect("limiter lock");
            if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
                let limit = self.source_limit;
                sources.retain(|_, bucket| !bucket.is_full(&limit, now));
            }
            sources
                .entry(source)
                .or_insert_with(|| TokenBucket::full(&self.source_limit, now))
                .take(&self.source_limit, now)?;
        }
        self.global
            .lock()
            .expect("limiter lock")
            .take(&self.global_limit, now)
    }
}

/// What the event budget of a client decides about one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventVerdict {
    /// Record it.
    Record,
    /// Record it, after an event saying that this many were dropped before it.
    RecordAfterDropped(u32),
    /// Drop it; the first dropped one of a run is recorded as an event saying that suppression
    /// started (`first`).
    Drop {
        /// The first event dropped since the last recorded one.
        first: bool,
    },
}

/// How many events about one client are recorded: a token bucket, and, once it ran dry, the count
/// of events dropped. Dropping goes on until the bucket has refilled to half its burst, so that a
/// client that keeps flapping stays quiet instead of getting one event (and two notes about it)
/// per token. 24 bytes per client; the default budget is full.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EventBudget {
    bucket: TokenBucket,
    /// Events dropped in the current run; 0 when not dropping.
    dropped: u32,
}

impl EventBudget {
    /// A full budget.
    pub fn new(limit: &RateLimit, now: Timestamp) -> EventBudget {
        EventBudget {
            bucket: TokenBucket::full(limit, now),
            dropped: 0,
        }
    }

    /// Decides about the next event.
    pub fn next(&mut self, limit: &RateLimit, now: Timestamp) -> EventVerdict {
        if self.dropped > 0 {
            self.bucket.refill(limit, now);
            if self.bucket.tokens < (limit.burst as f32 / 2.0).max(1.0) {
                self.dropped = self.dropped.saturating_add(1);
                return EventVerdict::Drop { first: false };
            }
            self.bucket.tokens -= 1.0;
            return EventVerdict::RecordAfterDropped(std::mem::take(&mut self.dropped));
        }
        match self.bucket.take(limit, now) {
            Ok(()) => EventVerdict::Record,
            Err(_) => {
                self.dropped = 1;
                EventVerdict::Drop { first: true }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: u64) -> Timestamp {
        Timestamp::from_unix_millis(millis)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limit = RateLimit::new(2.0, 3);
        let mut bucket = TokenBucket::full(&limit, at(0));
        for _ in 0..3 {
            assert_eq!(bucket.take(&limit, at(0)), Ok(()));
        }
        let wait = bucket.take(&limit, at(0)).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(bucket.take(&limit, at(250)).is_err());
        assert_eq!(bucket.take(&limit, at(500)), Ok(()));
        // Never more than the burst, however long it rested.
        let mut rested = 0;
        while bucket.take(&limit, at(1_000_000)).is_ok() {
            rested += 1;
        }
        assert_eq!(rested, 3);
    }

    #[test]
    fn enrolments_are_limited_per_source_and_globally() {
        let limiter = EnrollLimiter::new(RateLimit::new(0.0, 5), RateLimit::new(0.0, 2), at(0));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limiter.check(Some(a), at(0)).is_ok());
        assert!(limiter.check(Some(a), at(0)).is_ok());
        assert!(limiter.check(Some(a), at(0)).is_err(), "a's share is used");
        assert!(limiter.check(Some(b), at(0)).is_ok(), "b has its own");
        assert!(limiter.check(Some(b), at(0)).is_ok());
        assert!(limiter.check(None, at(0)).is_ok());
        assert!(
            limiter
                .check(Some("192.0.2.3".parse().unwrap()), at(0))
                .is_err(),
            "the global bucket is empty"
        );
    }

    #[test]
    fn remembered_sources_stay_bounded() {
        let limiter = EnrollLimiter::new(
            RateLimit::new(1e9, u32::MAX),
            RateLimit::new(1000.0, 2),
            at(0),
        );
        for i in 0..(3 * MAX_SOURCES as u32) {
            let source = IpAddr::from(i.to_be_bytes());
            limiter.check(Some(source), at(u64::from(i))).unwrap();
        }
        assert!(limiter.sources.lock().unwrap().len() <= MAX_SOURCES + 1);
    }

    #[test]
    fn an_event_budget_drops_the_excess_and_says_so() {
        let limit = RateLimit::new(1.0, 4);
        let mut budget = EventBudget::new(&limit, at(0));
        for _ in 0..4 {
            assert_eq!(budget.next(&limit, at(0)), EventVerdict::Record);
        }
        assert_eq!(
            budget.next(&limit, at(0)),
            EventVerdict::Drop { first: true }
        );
        assert_eq!(
            budget.next(&limit, at(0)),
            EventVerdict::Drop { first: false }
        );
        // One token back is not enough: dropping goes on until half the burst is back.
        assert_eq!(
            budget.next(&limit, at(1_000)),
            EventVerdict::Drop { first: false }
        );
        assert_eq!(
            budget.next(&limit, at(2_000)),
            EventVerdict::RecordAfterDropped(3)
        );
        assert_eq!(budget.next(&limit, at(2_000)), EventVerdict::Record);
        assert_eq!(
            budget.next(&limit, at(2_000)),
            EventVerdict::Drop { first: true }
        );
    }
}
