//! The Redis check latency a worker sees, as a p99 over the last sampling interval: a
//! histogram of atomic counters (powers of two in microseconds) that the check path adds
//! to without a lock, and the sampler reads and empties.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets: `[2^i, 2^(i+1))` µs for i in 0..BUCKETS, the last one open-ended (2^23 µs ≈ 8 s).
const BUCKETS: usize = 24;

#[derive(Debug, Default)]
pub(crate) struct Latencies {
    counts: [AtomicU64; BUCKETS],
}

impl Latencies {
    /// Adds one check's latency.
    pub(crate) fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let i = (63 - us.leading_zeros() as usize).min(BUCKETS - 1);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The p99 since the last call, in milliseconds (the upper edge of its bucket, so
    /// never below the true value); `None` when no check was recorded.
    pub(crate) fn take_p99_ms(&self) -> Option<f64> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = total - total / 100; // the 99th percentile's rank, from the bottom
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some((1u64 << (i + 1)) as f64 / 1000.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p99_is_the_upper_edge_of_its_bucket_and_the_window_empties() {
        let l = Latencies::default();
        assert_eq!(l.take_p99_ms(), None);
        for _ in 0..990 {
            l.record(Duration::from_micros(300)); // [256, 512) µs
        }
        for _ in 0..10 {
            l.record(Duration::from_millis(30)); // [16.4, 32.8) ms
        }
        assert_eq!(l.take_p99_ms(), Some(0.512));
        for _ in 0..10 {
            l.record(Duration::from_millis(30));
        }
        assert_eq!(l.take_p99_ms(), Some(32.768));
        assert_eq!(l.take_p99_ms(), None);
    }
}
