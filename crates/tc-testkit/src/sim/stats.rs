//! Latency histograms with bounded memory and relative precision, mergeable across tasks.

use std::time::Duration;

/// Sub-bucket bits: every power-of-two range is split into 64 buckets, so a recorded value is
/// known to within 1/64 (1.6 %).
const SUB_BITS: u32 = 7;
const SUB_COUNT: u64 = 1 << SUB_BITS;
const HALF: u64 = SUB_COUNT / 2;
/// Values up to 2^40 µs (12 days) are kept apart; larger ones share the last bucket.
const MAX_EXPONENT: u32 = 40;
const BUCKETS: usize = (SUB_COUNT + (MAX_EXPONENT - SUB_BITS + 1) as u64 * HALF) as usize;

/// A histogram of durations in microseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
            sum: 0,
        }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < SUB_COUNT {
        return value as usize;
    }
    let exponent = (63 - value.leading_zeros()).min(MAX_EXPONENT);
    let shift = exponent + 1 - SUB_BITS;
    let top = (value >> shift).min(SUB_COUNT - 1);
    let index = SUB_COUNT + u64::from(exponent - SUB_BITS) * HALF + (top - HALF);
    (index as usize).min(BUCKETS - 1)
}

/// The middle of a bucket's range.
fn value_of(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < SUB_COUNT {
        return bucket;
    }
    let exponent = (bucket - SUB_COUNT) / HALF + u64::from(SUB_BITS);
    let top = (bucket - SUB_COUNT) % HALF + HALF;
    let shift = exponent + 1 - u64::from(SUB_BITS);
    let low = top << shift;
    low + (1 << shift) / 2
}

impl Histogram {
    /// Records one duration.
    pub fn record(&mut self, duration: Duration) {
        self.record_micros(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one value in microseconds.
    pub fn record_micros(&mut self, micros: u64) {
        self.counts[bucket_of(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
        self.sum += u128::from(micros);
    }

    /// Adds another histogram's values.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0.0..=1.0), in microseconds; 0 when empty. The maximum is
    /// exact; other quantiles are within the bucket precision.
    pub fn quantile_micros(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        if rank >= self.total {
            return self.max;
        }
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return value_of(bucket).min(self.max);
            }
        }
        self.max
    }

    /// [`Histogram::quantile_micros`] in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.quantile_micros(q) as f64 / 1000.0
    }

    /// The largest value, in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.max as f64 / 1000.0
    }

    /// The mean, in milliseconds.
    pub fn mean_ms(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64 / 1000.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_bucket_precision() {
        let mut histogram = Histogram::default();
        for micros in 1..=100_000u64 {
            histogram.record_micros(micros);
        }
        for (q, exact) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.001, 100.0)] {
            let got = histogram.quantile_micros(q) as f64;
            assert!(
                (got - exact).abs() / exact < 0.02,
                "q={q}: {got} vs {exact}"
            );
        }
        assert_eq!(histogram.quantile_micros(1.0), 100_000);
        assert_eq!(histogram.count(), 100_000);
        assert!((histogram.mean_ms() - 50.0).abs() < 0.01);
    }

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut previous = 0;
        for value in (0..64)
            .map(|e| 1u64 << e)
            .chain([u64::MAX, 3, 127, 129, 1000])
        {
            let bucket = bucket_of(value);
            assert!(bucket < BUCKETS);
            if value < (1 << MAX_EXPONENT) && value.is_power_of_two() {
                assert!(bucket >= previous);
                previous = bucket;
                let middle = value_of(bucket) as f64;
                assert!(
                    (middle - value as f64).abs() / value as f64 <= 0.02,
                    "{value}"
                );
            }
        }
    }

    #[test]
    fn merge_adds_counts_and_keeps_the_max() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record_micros(10);
        b.record_micros(2_000);
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.max_ms(), 2.0);
        assert_eq!(Histogram::default().quantile_micros(0.5), 0);
    }
}
