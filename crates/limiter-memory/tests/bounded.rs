//! The store never tracks more than its cap, whatever arrives.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop the test loudly"
)]

use std::time::Duration;

use limiter_core::{ClientKeyHasher, ManualClock, Policy, Quota, Tier, TierPolicies};
use limiter_memory::{MemoryConfig, MemoryLimiter};

const SECRET: &[u8] = b"bounded-test-secret-0123456789";

#[test]
fn a_million_distinct_clients_leave_at_most_the_cap() {
    let cap = 10_000;
    let clock = ManualClock::new();
    let limiter =
        MemoryLimiter::with_clock(MemoryConfig { max_buckets: cap }, clock.clone()).unwrap();
    let hasher = ClientKeyHasher::new(SECRET).unwrap();
    let policy = TierPolicies::default().get(Tier::Anonymous).clone();
    for i in 0..1_000_000u32 {
        let key = hasher.hash(format!("198.51.{}.{}", i >> 8, i & 0xff));
        // Every newcomer is admitted: its bucket is fresh, whatever was evicted.
        assert!(limiter.check_sync(&key, &policy, 1).unwrap().allowed);
        if i % 50_000 == 0 {
            assert!(limiter.len() <= cap, "{} tracked after {i}", limiter.len());
            clock.advance(Duration::from_millis(1));
        }
    }
    assert!(limiter.len() <= cap);
    assert!(
        limiter.len() >= cap / 2,
        "the store should stay in use, not thrash"
    );
}

#[test]
fn idle_buckets_are_reclaimed_without_a_background_thread() {
    let clock = ManualClock::new();
    let limiter =
        MemoryLimiter::with_clock(MemoryConfig { max_buckets: 1_000 }, clock.clone()).unwrap();
    let policy = Policy::new("p", [Quota::per_second(10).unwrap()]).unwrap();
    for i in 0..1_000u128 {
        limiter.check_sync(&i.into(), &policy, 1).unwrap();
    }
    assert!(limiter.len() > 900, "{} tracked", limiter.len());
    clock.advance(Duration::from_millis(100)); // every bucket is full again
    // Newcomers arriving at full shards clear out the idle buckets, not just one each.
    for i in 1_000..1_500u128 {
        assert!(limiter.check_sync(&i.into(), &policy, 1).unwrap().allowed);
    }
    assert_eq!(limiter.len(), 500, "only the newcomers' buckets are live");
    // And a purge forgets every idle one at once.
    clock.advance(Duration::from_millis(100));
    assert_eq!(limiter.purge_idle(), 500);
    assert!(limiter.is_empty());
}

#[test]
fn newcomers_take_idle_places_not_drained_ones() {
    // A cap under 64 is a single shard, so "room" below means room in that shard.
    let cap = 60;
    let clock = ManualClock::new();
    let limiter =
        MemoryLimiter::with_clock(MemoryConfig { max_buckets: cap }, clock.clone()).unwrap();
    let policy = Policy::new("p", [Quota::per_minute(60).unwrap()]).unwrap();
    let hasher = ClientKeyHasher::new(SECRET).unwrap();
    // 10 abusers drain their buckets: they stay active for a minute.
    let abusers: Vec<_> = (0..10)
        .map(|i| hasher.hash(format!("abuser-{i}")))
        .collect();
    for key in &abusers {
        assert!(limiter.check_sync(key, &policy, 60).unwrap().allowed);
    }
    // 30 light clients take one token each, then everyone idles for 2 s: the light ones are
    // full again, the abusers are not.
    for i in 0..30 {
        limiter
            .check_sync(&hasher.hash(format!("light-{i}")), &policy, 1)
            .unwrap();
    }
    clock.advance(Duration::from_secs(2));
    // 50 newcomers fill the store: the 30 idle places and the 20 free ones take them all.
    for i in 0..50 {
        assert!(
            limiter
                .check_sync(&hasher.hash(format!("new-{i}")), &policy, 1)
                .unwrap()
                .allowed
        );
    }
    assert_eq!(limiter.len(), cap);
    for key in &abusers {
        // Two seconds refilled two tokens; a fresh bucket would have 59 left after this.
        let d = limiter.check_sync(key, &policy, 1).unwrap();
        assert_eq!(
            d.remaining, 1,
            "an abuser got a fresh bucket: its drained one was evicted"
        );
    }
}

#[test]
fn a_bucket_that_refills_for_weeks_is_not_forgotten_before_it_is_full() {
    // One token a week with a burst of 8: empty, it is full again after 56 days, longer than
    // the 49.7 days an entry's time-to-full can count. Forgetting it early would hand the
    // client a fresh burst.
    let clock = ManualClock::new();
    let limiter =
        MemoryLimiter::with_clock(MemoryConfig { max_buckets: 100 }, clock.clone()).unwrap();
    let week = Duration::from_secs(7 * 86_400);
    let quota = Quota::new(1, week).unwrap().allow_burst(8).unwrap();
    let policy = Policy::new("weekly", [quota]).unwrap();
    let key = ClientKeyHasher::new(SECRET)
        .unwrap()
        .hash("a slow refiller");
    for policy in [&policy, &Policy::new("weekly2", [quota, quota]).unwrap()] {
        assert!(limiter.check_sync(&key, policy, 8).unwrap().allowed);
        clock.advance(Duration::from_secs(50 * 86_400));
        assert_eq!(
            limiter.purge_idle(),
            0,
            "a bucket 7 tokens short was purged"
        );
        let d = limiter.check_sync(&key, policy, 8).unwrap();
        assert!(
            !d.allowed,
            "50 days after draining, 8 tokens were back: {d:?}"
        );
        assert_eq!(d.remaining, 7);
    }
}
