//! Peek is a dry run and refund gives back exactly what a check took, never more than a
//! bucket holds.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop the test loudly"
)]

use std::time::Duration;

use limiter_core::{ClientKey, Decision, ManualClock, Policy, Quota, RateLimiter};
use limiter_memory::{MemoryConfig, MemoryLimiter};

fn limiter() -> (MemoryLimiter<ManualClock>, ManualClock) {
    let clock = ManualClock::new();
    let limiter =
        MemoryLimiter::with_clock(MemoryConfig { max_buckets: 64 }, clock.clone()).unwrap();
    (limiter, clock)
}

/// 10 per second with bursts of 20, and 100 per hour.
fn policy() -> Policy {
    Policy::new(
        "pr",
        [
            Quota::per_second(10).unwrap().allow_burst(20).unwrap(),
            Quota::per_hour(100).unwrap(),
        ],
    )
    .unwrap()
}

#[test]
fn peeking_consumes_nothing() {
    let (limiter, _) = limiter();
    let policy = policy();
    let key = ClientKey::from(1);
    for _ in 0..1_000 {
        let d = limiter.peek_sync(&key, &policy, 1).unwrap();
        assert!(d.allowed);
        assert_eq!(
            (d.quota, d.remaining),
            (Some(0), 19),
            "as a check would report"
        );
    }
    assert!(limiter.is_empty(), "a peek tracks no bucket");
    for left in (0..20).rev() {
        let d = limiter.check_sync(&key, &policy, 1).unwrap();
        assert!(d.allowed, "the burst was cut short by peeks");
        assert_eq!(d.remaining, left);
    }
    // Denied now: a peek and a check agree, and the peek still takes nothing.
    for _ in 0..1_000 {
        let peeked = limiter.peek_sync(&key, &policy, 1).unwrap();
        assert!(!peeked.allowed);
        assert_eq!(peeked.retry_after, Some(Duration::from_millis(100)));
    }
    let checked = limiter.check_sync(&key, &policy, 1).unwrap();
    assert_eq!(limiter.peek_sync(&key, &policy, 1).unwrap(), checked);
}

#[test]
fn a_peek_answers_what_the_check_then_answers() {
    let (limiter, clock) = limiter();
    let policy = policy();
    let key = ClientKey::from(2);
    // Every few steps the clock moves; costs vary, so both quotas deny now and then.
    for step in 0..400u64 {
        clock.advance(Duration::from_micros(step * 7_919 % 150_000));
        let cost = 1 + step % 6;
        let peeked = limiter.peek_sync(&key, &policy, cost).unwrap();
        let checked = limiter.check_sync(&key, &policy, cost).unwrap();
        assert_eq!(peeked, checked, "step {step}");
    }
}

#[test]
fn a_refund_restores_exactly_what_a_check_took() {
    let (limiter, clock) = limiter();
    let policy = policy();
    let key = ClientKey::from(3);
    limiter.check_sync(&key, &policy, 7).unwrap();
    clock.advance(Duration::from_micros(123_457));
    let before: Vec<Decision> = (1..=20)
        .map(|cost| limiter.peek_sync(&key, &policy, cost).unwrap())
        .collect();
    let taken = limiter.check_sync(&key, &policy, 5).unwrap();
    assert!(taken.allowed);
    let given = limiter.refund_sync(&key, &policy, 5).unwrap();
    assert!(given.allowed);
    assert_eq!(given.retry_after, None);
    let after: Vec<Decision> = (1..=20)
        .map(|cost| limiter.peek_sync(&key, &policy, cost).unwrap())
        .collect();
    assert_eq!(after, before, "the refund did not undo the check");
    // What a refund reports is the state after: 20 - 7 + 1.23457 tokens in the per-second
    // bucket, full again once the 5.76543 missing come back at 10 a second.
    assert_eq!((given.quota, given.remaining), (Some(0), 14));
    assert_eq!(given.reset_after, Duration::from_micros(576_543));
}

#[test]
fn a_refund_never_fills_a_bucket_past_its_capacity() {
    let (limiter, _) = limiter();
    let policy = policy();
    let key = ClientKey::from(4);
    limiter.check_sync(&key, &policy, 3).unwrap();
    let d = limiter.refund_sync(&key, &policy, 20).unwrap();
    assert!(d.allowed);
    // Both quotas full again: the burst of 20 is reported, with nothing to wait for.
    assert_eq!((d.quota, d.limit, d.remaining), (Some(0), 20, 20));
    assert_eq!(d.reset_after, Duration::ZERO);
    for _ in 0..5 {
        limiter.refund_sync(&key, &policy, 20).unwrap();
    }
    for _ in 0..20 {
        assert!(limiter.check_sync(&key, &policy, 1).unwrap().allowed);
    }
    assert!(
        !limiter.check_sync(&key, &policy, 1).unwrap().allowed,
        "refunds raised the bucket past its burst"
    );
}

#[test]
fn a_refund_of_a_bucket_never_seen_changes_nothing() {
    let (limiter, _) = limiter();
    let policy = policy();
    let key = ClientKey::from(5);
    let d = limiter.refund_sync(&key, &policy, 4).unwrap();
    assert!(d.allowed);
    assert_eq!((d.remaining, d.reset_after), (20, Duration::ZERO));
    assert!(limiter.is_empty(), "a refund tracked a bucket");
}

#[test]
fn bad_costs_and_unlimited_policies_follow_check() {
    let (limiter, _) = limiter();
    let policy = policy();
    let key = ClientKey::from(6);
    for cost in [0, 21, u64::MAX] {
        let check = limiter.check_sync(&key, &policy, cost).unwrap_err();
        let peek = limiter.peek_sync(&key, &policy, cost).unwrap_err();
        let refund = limiter.refund_sync(&key, &policy, cost).unwrap_err();
        assert!(check.is_invalid_input(), "{check}");
        assert_eq!(peek.to_string(), check.to_string());
        assert_eq!(refund.to_string(), check.to_string());
    }
    let unlimited = Policy::unlimited("admin").unwrap();
    assert_eq!(
        limiter.peek_sync(&key, &unlimited, 0).unwrap(),
        Decision::unlimited()
    );
    assert_eq!(
        limiter.refund_sync(&key, &unlimited, u64::MAX).unwrap(),
        Decision::unlimited()
    );
    assert!(limiter.is_empty());
}

#[test]
fn the_trait_methods_are_the_sync_ones() {
    let (limiter, _) = limiter();
    let policy = policy();
    let key = ClientKey::from(7);
    let dynamic: &dyn RateLimiter = &limiter;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert!(dynamic.check(&key, &policy, 20).await.unwrap().allowed);
        let peeked = dynamic.peek(&key, &policy, 1).await.unwrap();
        assert!(!peeked.allowed);
        let refunded = dynamic.refund(&key, &policy, 2).await.unwrap();
        assert_eq!((refunded.allowed, refunded.remaining), (true, 2));
        assert!(dynamic.peek(&key, &policy, 2).await.unwrap().allowed);
    });
}
