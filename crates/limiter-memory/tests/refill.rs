//! Refill is exact: after a full drain the n-th token is back at exactly n / rate.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop the test loudly"
)]

use std::time::Duration;

use limiter_core::{ClientKey, ManualClock, Policy, Quota};
use limiter_memory::{MemoryConfig, MemoryLimiter};

fn limiter() -> (MemoryLimiter<ManualClock>, ManualClock) {
    let clock = ManualClock::new();
    let limiter =
        MemoryLimiter::with_clock(MemoryConfig { max_buckets: 16 }, clock.clone()).unwrap();
    (limiter, clock)
}

/// Drains the bucket, then walks the clock to one microsecond before and exactly at the
/// instant each token is due, and checks it appears then and not earlier.
fn assert_exact_refill(quota: Quota, tokens_to_watch: u64) {
    let (limiter, clock) = limiter();
    let policy = Policy::new("p", [quota]).unwrap();
    let key = ClientKey::from(1);
    let start = clock.now_micros_for_test();
    let d = limiter.check_sync(&key, &policy, quota.capacity()).unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
    assert_eq!(d.reset_after, quota.full_refill());

    let period = u128::from(quota.period_micros());
    let mut last_due = start;
    for n in 1..=tokens_to_watch {
        // n / rate = n × period / tokens microseconds after the drain, rounded up to the µs.
        let due = start + (u128::from(n) * period).div_ceil(u128::from(quota.tokens())) as u64;
        if due - 1 > last_due {
            clock.set(Duration::from_micros(due - 1));
            let early = limiter.check_sync(&key, &policy, 1).unwrap();
            assert!(
                !early.allowed,
                "token {n} of {quota} was back before {due} µs"
            );
            assert_eq!(
                early.retry_after,
                Some(Duration::from_micros(1)),
                "token {n}"
            );
        }
        clock.set(Duration::from_micros(due));
        let on_time = limiter.check_sync(&key, &policy, 1).unwrap();
        assert!(
            on_time.allowed,
            "token {n} of {quota} was not back at {due} µs"
        );
        assert_eq!(on_time.remaining, 0);
        last_due = due;
    }
}

trait NowMicros {
    fn now_micros_for_test(&self) -> u64;
}

impl NowMicros for ManualClock {
    fn now_micros_for_test(&self) -> u64 {
        limiter_core::Clock::now_micros(self)
    }
}

#[test]
fn whole_microsecond_rates_refill_exactly() {
    assert_exact_refill(Quota::per_minute(100).unwrap(), 100); // one every 600 ms
    assert_exact_refill(
        Quota::per_second(1_000_000)
            .unwrap()
            .allow_burst(10)
            .unwrap(),
        50,
    );
}

#[test]
fn fractional_rates_do_not_drift() {
    // 3/s, 7/min, 5000/h: intervals of 333 333.3 µs, 8 571 428.6 µs, 720 000 µs.
    assert_exact_refill(Quota::per_second(3).unwrap(), 30);
    assert_exact_refill(Quota::per_minute(7).unwrap(), 21);
    assert_exact_refill(Quota::per_hour(5_000).unwrap().allow_burst(3).unwrap(), 40);
}

#[test]
fn denied_checks_report_the_exact_wait() {
    let (limiter, clock) = limiter();
    let policy = Policy::new("p", [Quota::per_second(3).unwrap()]).unwrap();
    let key = ClientKey::from(2);
    limiter.check_sync(&key, &policy, 3).unwrap();
    let denied = limiter.check_sync(&key, &policy, 2).unwrap();
    assert!(!denied.allowed);
    let wait = denied.retry_after.unwrap();
    assert_eq!(wait, Duration::from_micros(666_667));
    clock.advance(wait - Duration::from_micros(1));
    assert!(!limiter.check_sync(&key, &policy, 2).unwrap().allowed);
    clock.advance(Duration::from_micros(1));
    assert!(limiter.check_sync(&key, &policy, 2).unwrap().allowed);
}
